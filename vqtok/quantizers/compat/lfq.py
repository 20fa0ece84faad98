"""`LFQ` with the reference call signature and return structures, for porting code.

Reproduces the lookup-free quantizer of vector-quantize-pytorch v1.12.10 as copied into
CogVideo's sgm regularizers (MAGVIT-v2, arXiv 2310.05737): keyword-only constructor,
``forward(x, inv_temperature, return_loss_breakdown, mask)`` returning the namedtuple
``Return(quantized, indices, entropy_aux_loss)`` (the third field is the *total weighted* aux
loss, entropy plus commitment) and optionally ``LossBreakdown(per_sample_entropy,
batch_entropy, commitment)`` (unweighted), the persistent ``mask`` buffer of MSB-first place
values, and the reference index layouts. The math is the core's (`vqtok.quantizers.lfq`).

Deliberate differences from the reference (each tested):

- No (N, 2^d) softmax: the per-sample entropy is the exact factorised one, equal to the
  reference wherever no code probability is below its 1e-5 log clamp and larger by at most
  sum_{p_k < 1e-5} p_k·ln(1e-5/p_k) otherwise (see `vqtok.quantizers.entropy`). The batch
  entropy is exact and uses the reference clamp, so it matches the reference value.
- An empty masked / sub-sampled batch gives 0 entropies and commitment, not NaN.
- Works when the module is cast to bf16/fp16: projections and codes run in float32.
- Bad input raises `QuantizerError` / `ConfigError` instead of failing an assert;
  ``indices_to_codes`` rejects out-of-range indices.
- ``straight_through_activation`` defaults to None (a fresh ``nn.Identity``), not a shared
  module instance; there is no ``codebook`` buffer (a property computes it) and no ``zero``
  buffer (neither is in the reference state_dict).
"""

from __future__ import annotations

from collections import namedtuple

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import check_indices
from vqtok.quantizers.entropy import MAX_EXACT_BITS, REFERENCE_CLAMP, EntropySettings
from vqtok.quantizers.lfq import (
    bit_weights,
    check_power_of_two,
    lfq_step,
    linear_f32,
    token_mask,
    unpack_codes,
)

Return = namedtuple("Return", ["quantized", "indices", "entropy_aux_loss"])
LossBreakdown = namedtuple("LossBreakdown", ["per_sample_entropy", "batch_entropy", "commitment"])


class LFQ(nn.Module):
    """Reference-compatible lookup-free quantizer.

    Args (keyword-only):
        dim: input channels; defaults to codebook_dim·num_codebooks.
        codebook_size: 2^codebook_dim; defaults to 2^dim. At least one of the two is needed.
        entropy_loss_weight, commitment_loss_weight, diversity_gamma: loss weights.
        straight_through_activation: module applied before the straight-through estimator.
        num_codebooks: c.
        keep_num_codebooks_dim: keep the trailing c axis of the indices (default c > 1;
            False with c > 1 is an error).
        codebook_scale: code magnitude.
        frac_per_sample_entropy: fraction in (0, 1] of tokens the entropies use.
    """

    mask: Tensor  # (codebook_dim,) int64 place values 2^(d-1), ..., 1 (persistent buffer)

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int | None = None,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        straight_through_activation: nn.Module | None = None,
        num_codebooks: int = 1,
        keep_num_codebooks_dim: bool | None = None,
        codebook_scale: float = 1.0,
        frac_per_sample_entropy: float = 1.0,
    ) -> None:
        super().__init__()
        if dim is None and codebook_size is None:
            raise ConfigError("LFQ needs either dim or codebook_size")
        codebook_size = codebook_size if codebook_size is not None else 2 ** int(dim or 0)
        self.codebook_dim = check_power_of_two(codebook_size)
        if self.codebook_dim > MAX_EXACT_BITS:
            raise ConfigError(
                f"LFQ with 2^{self.codebook_dim} codes needs the full batch distribution; use "
                "vqtok.quantizers.LookupFreeQuantizer(codebook_entropy='grouped') instead"
            )
        if keep_num_codebooks_dim is None:
            keep_num_codebooks_dim = num_codebooks > 1
        if num_codebooks > 1 and not keep_num_codebooks_dim:
            raise ConfigError("keep_num_codebooks_dim=False needs num_codebooks == 1")
        if not 0 < frac_per_sample_entropy <= 1:
            raise ConfigError(
                f"frac_per_sample_entropy must be in (0, 1], got {frac_per_sample_entropy}"
            )
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.codebook_dims = self.codebook_dim * num_codebooks
        self.dim = dim if dim is not None else self.codebook_dims
        self.keep_num_codebooks_dim = keep_num_codebooks_dim
        self.codebook_scale = codebook_scale
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.frac_per_sample_entropy = frac_per_sample_entropy
        self.activation = straight_through_activation or nn.Identity()
        self.has_projections = self.dim != self.codebook_dims
        self.project_in: nn.Module = (
            nn.Linear(self.dim, self.codebook_dims) if self.has_projections else nn.Identity()
        )
        self.project_out: nn.Module = (
            nn.Linear(self.codebook_dims, self.dim) if self.has_projections else nn.Identity()
        )
        self.register_buffer("mask", bit_weights(self.codebook_dim, "msb"), persistent=True)

    @property
    def codebook(self) -> Tensor:
        """(codebook_size, codebook_dim) float32; row i is the ±scale code of index i."""
        indices = torch.arange(self.codebook_size, device=self.mask.device)
        return unpack_codes(indices, self.codebook_dim, "msb", self.codebook_scale)

    def forward(
        self,
        x: Tensor,
        inv_temperature: float = 100.0,
        return_loss_breakdown: bool = False,
        mask: Tensor | None = None,
    ) -> Return | tuple[Return, LossBreakdown]:
        """Quantize x: (b, n, dim) channel-last or (b, dim, *spatial) channel-first.

        Args:
            x: any float dtype; computed in float32.
            inv_temperature: tau of the entropy softmax.
            return_loss_breakdown: also return the unweighted `LossBreakdown`.
            mask: bool (b, n) (spatial dims packed row-major), True = token counts in the
                losses.

        Returns:
            ``Return(quantized float32 like x, indices int64 (b, n | *spatial[, c]),
            total weighted aux loss)``, plus ``LossBreakdown`` if asked.
        """
        if x.ndim < 3:
            raise QuantizerError(
                f"LFQ expects (b, n, dim) or (b, dim, *spatial), got shape {tuple(x.shape)}"
            )
        x = x.float()
        spatial = tuple(x.shape[2:]) if x.ndim >= 4 else None
        if spatial is not None:
            x = x.flatten(2).transpose(1, 2)  # (b, dim, *spatial) -> (b, n, dim)
        b, n, channels = x.shape
        if channels != self.dim:
            raise QuantizerError(f"LFQ expects {self.dim} channels, got {channels}")
        h = linear_f32(self.project_in, x.reshape(b * n, channels))
        h = h.reshape(b * n, self.num_codebooks, self.codebook_dim)
        settings = EntropySettings(inv_temperature, self.codebook_scale, clamp=REFERENCE_CLAMP)
        step = lfq_step(
            h,
            settings,
            "msb",
            self.training,
            token_mask(mask, b * n),
            self.frac_per_sample_entropy,
            activation=self.activation,
        )
        out = linear_f32(self.project_out, step.codes.flatten(1)).reshape(b, n, self.dim)
        indices = step.indices.reshape(b, n, self.num_codebooks)
        if spatial is not None:
            out = out.transpose(1, 2).reshape(b, self.dim, *spatial)
            indices = indices.reshape(b, *spatial, self.num_codebooks)
        if not self.keep_num_codebooks_dim:
            indices = indices[..., 0]
        per_sample, batch, commit = step.terms
        entropy_aux = per_sample - self.diversity_gamma * batch
        aux = entropy_aux * self.entropy_loss_weight + commit * self.commitment_loss_weight
        result = Return(out, indices, aux)
        if return_loss_breakdown:
            return result, LossBreakdown(per_sample, batch, commit)
        return result

    def indices_to_codes(self, indices: Tensor, project_out: bool = True) -> Tensor:
        """Codes of ``indices`` in the reference layouts.

        keep_num_codebooks_dim False: (b, n) -> (b, n, dim); (b, h, w) -> (b, dim, h, w);
        (b, f, h, w) -> (b, dim, f, h, w). True: (b, n, c) -> (b, n, dim);
        (b, h, w, c) -> (b, dim, h, w). ``project_out=False`` gives c·codebook_dim channels.
        """
        is_img_or_video = indices.ndim >= 3 + int(self.keep_num_codebooks_dim)
        if not self.keep_num_codebooks_dim:
            indices = indices[..., None]
        if indices.shape[-1] != self.num_codebooks:
            raise QuantizerError(
                f"indices need a trailing axis of {self.num_codebooks} codebooks, "
                f"got shape {tuple(indices.shape)}"
            )
        indices = check_indices(indices, self.codebook_size)
        codes = unpack_codes(indices, self.codebook_dim, "msb", self.codebook_scale)
        codes = codes.flatten(-2)  # (..., c, d) -> (..., c·d)
        if project_out:
            codes = linear_f32(self.project_out, codes)
        if is_img_or_video:
            codes = codes.movedim(-1, 1)  # (b, ..., dim) -> (b, dim, ...)
        return codes
