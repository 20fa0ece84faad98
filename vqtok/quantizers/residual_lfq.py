"""Residual lookup-free quantization: L LFQ levels, each quantizing what the previous ones left.

One LFQ level (`vqtok.quantizers.lfq`) keeps only the sign of each projected channel, so 40
bits spent as one 40-channel sign pattern cannot say how far a latent is from the origin.
Stacking levels on the residual, as residual VQ does with codebooks, can: level l projects the
residual r_l (D channels) to d = log2(K) channels, quantizes them to their signs and maps the
signs back,

    h_l = W_in_l r_l + b_in_l                     (d,)
    q_l = sign(h_l) * s                           (d,)  index: the packed bits [h_l > 0]
    y_l = W_out_l q_l + b_out_l                   (D,)
    r_{l+1} = r_l - sg(y_l)

and the code is y_1 + ... + y_L, so later levels refine what earlier ones said, with smaller
steps. Each level has its own straight-through estimator (q_l takes h_l's gradient) and
LFQ's loss, ``entropy_loss_weight · (per_sample - diversity_gamma · codebook entropy) +
commitment_loss_weight · mean((h_l - sg(q_l))^2)``; the level losses are summed. The first k
levels alone are a coarser code (``levels=k``, the quality ladder, quantizer dropout).

On the latents of vqtok-ema's encoder, 4 × 10 bits fitted this way leave a held-out latent MSE
of 0.14, one 40-bit LFQ level 0.65 (``models/vqtok-lfq/README.md``).

All math runs in float32 whatever the input dtype; codes come back in the input's dtype.
Metrics, levels counted from 1: ``lfq_l{l}_usage`` / ``_perplexity`` / ``_bits_per_index``
(of the batch's indices), ``lfq_l{l}_per_sample_entropy`` / ``_codebook_entropy`` /
``_commitment`` (unweighted, 0 in eval), and ``usage`` / ``perplexity``, their means over levels.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from vqtok.errors import QuantizerError
from vqtok.quantizers.base import (
    Layout,
    Quantizer,
    QuantizerOutput,
    check_indices,
    level_columns,
)
from vqtok.quantizers.base import codebook_metrics as dense_codebook_metrics
from vqtok.quantizers.entropy import EntropySettings
from vqtok.quantizers.lfq import (
    check_options,
    check_power_of_two,
    lfq_step,
    linear_f32,
    unpack_codes,
)


class ResidualLFQ(Quantizer):
    """Residual lookup-free quantizer (kind ``"residual_lfq"``).

    Args:
        dim: input channels D.
        codebook_size: K = 2^d codes per level (a power of two >= 2, d <= 26).
        num_levels: L >= 1; indices get a trailing axis of length L when L > 1.
        codebook_scale: s > 0; a level's signs are {-s, +s}^d before its output map.
        entropy_loss_weight, commitment_loss_weight, diversity_gamma, inv_temperature:
            LFQ's, per level (`vqtok.quantizers.lfq.LookupFreeQuantizer`).
        bit_order: ``"msb"`` (default) or ``"lsb"`` index packing, as LFQ.
    """

    kind = "residual_lfq"
    bit_order: str  # "msb" or "lsb", set by __init__
    residual = True

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_levels: int = 4,
        codebook_scale: float = 1.0,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        bit_order: str = "msb",
    ) -> None:
        super().__init__()
        self.bits = check_power_of_two(codebook_size)
        self.settings = EntropySettings(
            inv_temperature=inv_temperature, scale=codebook_scale, mode="exact", group_bits=9,
            chunk=4096,
        )
        check_options(num_levels, codebook_scale, inv_temperature, 1.0, self.settings.mode,
                      self.settings.group_bits, self.settings.chunk, bit_order, self.bits,
                      count_name="num_levels")
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_levels = self.num_codebooks = num_levels
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.bit_order = bit_order
        self.project_in = nn.ModuleList(nn.Linear(dim, self.bits) for _ in range(num_levels))
        self.project_out = nn.ModuleList(nn.Linear(self.bits, dim) for _ in range(num_levels))

    def forward(
        self, z: Tensor, channel_last: bool | None = None, levels: int | None = None
    ) -> QuantizerOutput:
        """Quantize ``z`` through all levels (or the first ``levels``).

        Args:
            z: (B, D, H, W) / (B, D, T, H, W) channel-first or channel-last tokens (see
                `Layout.of`), any float dtype.
            channel_last: force the layout (None: by rank).
            levels: k in 1..L: only the first k levels run and the indices have k columns.

        Returns:
            `QuantizerOutput`: codes like ``z`` (in eval exactly `indices_to_codes` of the
            indices), int64 indices (*grid, k) (just the grid when L = 1) in [0, K), the
            float32 summed level losses (0 in eval), the metrics of the module docstring.
        """
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"residual LFQ expects {self.dim} channels, "
                                 f"got shape {tuple(z.shape)}")
        count = self.check_levels(levels)
        r = layout.to_tokens(z).float()  # (N, D)
        codes = torch.zeros_like(r)
        loss = r.new_zeros(())
        indices, metrics = [], {}
        for level in range(count):
            h = linear_f32(self.project_in[level], r)[:, None]  # (N, 1, d)
            step = lfq_step(h, self.settings, self.bit_order, self.training)
            y = linear_f32(self.project_out[level], step.codes[:, 0])  # (N, D)
            codes = codes + y
            r = r - y.detach()  # r_{l+1} = r_l - sg(y_l)
            loss = loss + step.terms.weighted(
                self.entropy_loss_weight, self.diversity_gamma, self.commitment_loss_weight
            )
            indices.append(step.indices[:, 0])
            metrics.update(level_metrics(level + 1, step.indices, step.terms, self.codebook_size))
        metrics["usage"] = torch.stack([metrics[f"lfq_l{i}_usage"] for i in
                                        range(1, count + 1)]).mean()
        metrics["perplexity"] = torch.stack([metrics[f"lfq_l{i}_perplexity"] for i in
                                             range(1, count + 1)]).mean()
        idx = torch.stack(indices, dim=1)  # (N, k)
        if z.is_floating_point():
            codes = codes.to(z.dtype)
        return QuantizerOutput(
            layout.from_tokens(codes),
            layout.restore_indices(idx if self.num_levels > 1 else idx[:, 0]),
            loss,
            metrics,
        )

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """Sum over the first k levels of their codes: the eval forward's output, float32.

        Args:
            indices: integer (*grid, k), k in 1..L (just the grid when L = 1), values in
                [0, K).
            channel_last: output layout; None: a grid of rank 3 / 4 gives (B, D, *S).

        Returns:
            float32 codes, (B, D, *S) or (*grid, D).
        """
        indices = level_columns(check_indices(indices, self.codebook_size), self.num_levels)
        layout = Layout.for_indices(indices, 2, channel_last)
        flat = indices.reshape(-1, indices.shape[-1])  # (N, k)
        total = torch.zeros(flat.shape[0], self.dim, device=indices.device)
        for level in range(flat.shape[1]):
            signs = unpack_codes(flat[:, level], self.bits, self.bit_order, self.settings.scale)
            total = total + linear_f32(self.project_out[level], signs)
        return layout.from_tokens(total)

    @torch.no_grad()
    def init_from_samples(
        self, samples: Tensor, iters: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Fit every level to ``samples`` (M, D) latents, M > d, in closed form, level by level:
        the input map takes the d principal directions of the centred residual (so each bit
        halves the residual along one of them), the output map is the least-squares fit of
        the residual from the level's signs, and the next level sees what is left.

        ``iters`` and ``generator`` are unused (no iterations, nothing random); they keep the
        signature `vqtok.train.data_init.init_codebooks` calls.
        """
        r = samples.detach().float()
        scale = self.settings.scale
        for level in range(self.num_levels):
            mean = r.mean(0)
            _, _, vh = torch.linalg.svd(r - mean, full_matrices=False)
            directions = vh[: self.bits]  # (d, D)
            signs = torch.where((r - mean) @ directions.T > 0, scale, -scale)  # (M, d)
            design = torch.cat([signs, torch.ones_like(signs[:, :1])], dim=1)  # (M, d + 1)
            fit = torch.linalg.lstsq(design, r).solution  # (d + 1, D)
            into, back = self.maps(level)
            into.weight.copy_(directions)
            into.bias.copy_(-(directions @ mean))
            back.weight.copy_(fit[:-1].T)
            back.bias.copy_(fit[-1])
            r = r - design @ fit

    def maps(self, level: int) -> tuple[nn.Linear, nn.Linear]:
        """Level ``level``'s input map (D -> d) and output map (d -> D)."""
        return cast(nn.Linear, self.project_in[level]), cast(nn.Linear, self.project_out[level])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, num_levels={self.num_levels}"


def level_metrics(level: int, indices: Tensor, terms: tuple[Tensor, ...], size: int
                  ) -> dict[str, Tensor]:
    """One level's usage statistics and unweighted loss terms, keys ``lfq_l{level}_*``."""
    out = dense_codebook_metrics(indices, size, prefix=f"lfq_l{level}_")
    for name, value in zip(("per_sample_entropy", "codebook_entropy", "commitment"), terms,
                           strict=True):
        out[f"lfq_l{level}_{name}"] = value.detach()
    return out
