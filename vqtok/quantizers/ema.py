"""Vector quantization with an exponential-moving-average codebook (VQ-VAE with EMA updates).

The codebook is not trained by gradients: each training step moves every code towards the mean
of the encoder outputs assigned to it, through exponential moving averages of the per-code
counts and sums with Laplace smoothing (van den Oord et al., "Neural Discrete Representation
Learning", arXiv 1711.00937, appendix A.1; Razavi et al., VQ-VAE-2, arXiv 1906.00446). The only
loss is the commitment term ``beta * mse(sg(zq), z)``.

Update equations (the papers' appendix; `EMACodebook.ema_step`), with gamma the decay, K codes and
epsilon the smoothing:

    c_k <- gamma c_k + (1 - gamma) #{n : idx_n = k}
    s_k <- gamma s_k + (1 - gamma) sum_{n : idx_n = k} z_n
    n = sum_k c_k;   c~_k = (c_k + eps) / (n + K eps) * n;   e_k <- s_k / c~_k

Deliberate choices (README, "Compatibility with the reference modules"):

- the counts start at 1 and the sums at the codebook (helia_edge's start), so a code that is
  never chosen keeps its initial value; ``legacy_init=True`` gives CogVideo's zero counts, where
  such a code is scaled by about gamma / eps after the first update and effectively dies;
- the quantized value and the loss use the codebook from *before* the update;
- the statistics are float32 buffers whatever the input dtype or a module-wide ``.half()``;
- dead codes can be re-seeded from recent encoder outputs with their statistics reset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import (
    Layout,
    Quantizer,
    QuantizerOutput,
    check_indices,
    codebook_metrics,
)
from vqtok.quantizers.remap import IndexRemap, UsedLike
from vqtok.quantizers.search import nearest_codes
from vqtok.quantizers.usage import reseed_dead_codes

INITS = ("normal", "uniform")


class EMACodebook(nn.Module):
    """A (K, D) codebook learned by exponential moving averages, with its statistics.

    Args:
        codebook_size: K >= 1.
        dim: D >= 1.
        decay: gamma in [0, 1); the weight of the old statistics.
        eps: epsilon > 0 of the Laplace smoothing.
        legacy_init: False: counts start at 1 (stable); True: counts start at 0 (CogVideo).
        init: ``"normal"`` codes ~ N(0, 1) (CogVideo) or ``"uniform"`` ~ U(-1/K, 1/K)
            (helia_edge).
        generator: optional CPU generator for the initial codes.

    Attributes:
        weight: (K, D) float32 buffer, the codes.
        cluster_size: (K,) float32 buffer, the EMA of the per-code counts.
        embed_avg: (K, D) float32 buffer, the EMA of the per-code sums of inputs.
        update: set False to freeze the codebook (`ema_step` then does nothing).

    There is no cross-process reduction of the statistics: under DDP (default
    ``broadcast_buffers=True``) every rank's buffers are overwritten by rank 0's at each
    forward, so the codebook follows rank 0's batches.
    """

    weight: Tensor
    cluster_size: Tensor
    embed_avg: Tensor

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        legacy_init: bool = False,
        init: str = "normal",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ConfigError(f"need codebook_size >= 1 and dim >= 1, got {codebook_size}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must lie in [0, 1), got {decay}")
        if eps <= 0.0:
            raise ConfigError(f"EMA eps must be > 0, got {eps}")
        if init not in INITS:
            raise ConfigError(f"unknown codebook init {init!r}; choose one of {INITS}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.legacy_init = legacy_init
        self.update = True
        if init == "normal":
            weight = torch.randn(codebook_size, dim, generator=generator)
        else:
            bound = 1.0 / codebook_size
            weight = torch.rand(codebook_size, dim, generator=generator) * 2 * bound - bound
        counts = torch.zeros if legacy_init else torch.ones
        self.register_buffer("weight", weight)
        self.register_buffer("cluster_size", counts(codebook_size))
        self.register_buffer("embed_avg", weight.clone())

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, decay={self.decay}, "
            f"eps={self.eps}, legacy_init={self.legacy_init}"
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> EMACodebook:
        # Device moves apply, dtype casts do not: bf16 keeps 8 significant bits (relative
        # spacing up to 0.8%), the size of one EMA step's 1% change, so the statistics would
        # stall or drift in half precision.
        def keep_float32(t: Tensor) -> Tensor:
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(moved.device)

        return super()._apply(keep_float32, recurse)

    def forward(self, indices: Tensor) -> Tensor:
        """Codes of ``indices`` (any shape, int64 in [0, K)) -> indices.shape + (D,), float32."""
        return F.embedding(indices, self.weight)

    @torch.no_grad()
    def ema_step(self, tokens: Tensor, indices: Tensor) -> None:
        """One EMA update from a batch (the equations in the module docstring); no-op when
        ``update`` is False.

        Args:
            tokens: (N, D) encoder outputs, any float dtype (accumulated in float32).
            indices: (N,) int64 code chosen for each token, in [0, K).
        """
        if not self.update:
            return
        tokens = tokens.detach().float()
        counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
        sums = torch.zeros_like(self.embed_avg).index_add_(0, indices, tokens)  # (K, D)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        self.weight.copy_(self.embed_avg / self.smoothed_sizes().unsqueeze(1))

    def smoothed_sizes(self) -> Tensor:
        """(K,) Laplace-smoothed counts ``(c + eps) / (n + K eps) * n``, n = sum(c)."""
        n = self.cluster_size.sum()
        return (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n

    @torch.no_grad()
    def reseed_dead(
        self,
        samples: Tensor,
        counts: Tensor | None = None,
        threshold: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Re-seed rarely used codes with random recent encoder outputs.

        A re-seeded code k gets ``weight_k = x``, ``cluster_size_k = r`` and
        ``embed_avg_k = r x`` with ``r = max(threshold, 1)``, so the next update treats it as
        a code that has just been seen ``r`` times at ``x`` (and, with r >= threshold, it is not
        flagged again before it had a chance to be chosen).

        Args:
            samples: (M, D) recent encoder outputs, any float dtype.
            counts: (K,) usage counts; defaults to the EMA ``cluster_size``.
            threshold: codes with ``counts < threshold`` are re-seeded.
            generator: optional generator on ``samples``' device.

        Returns:
            (K,) bool mask of the re-seeded codes.
        """
        counts = self.cluster_size if counts is None else counts
        dead = reseed_dead_codes(self.weight, counts, samples, threshold, generator)
        self.restart_statistics(dead, threshold)
        return dead

    @torch.no_grad()
    def restart_statistics(self, dead: Tensor, threshold: float) -> None:
        """Statistics of the codes ``dead`` ((K,) bool) just moved to new rows of ``weight``:
        each seen ``max(threshold, 1)`` times at its row (see `reseed_dead`)."""
        reset = max(float(threshold), 1.0)
        self.cluster_size[dead] = reset
        self.embed_avg[dead] = self.weight[dead] * reset


def ema_lookup(
    codebook: EMACodebook, tokens: Tensor, update: bool, candidates: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Nearest codes of a token matrix in an EMA codebook, then (optionally) the EMA step.

    Args:
        codebook: the EMA codebook (K, D).
        tokens: (N, D) inputs, any float dtype.
        update: run `EMACodebook.ema_step` after the lookup (training).
        candidates: optional (U,) sorted code ids the search is restricted to.

    Returns:
        ``(q, indices)``: (N, D) float32 codes from the codebook *before* the update (a copy,
        no grad) and (N,) int64 indices into the full codebook.
    """
    if candidates is None:
        indices = nearest_codes(tokens, codebook.weight)
    else:
        indices = candidates[nearest_codes(tokens, codebook.weight[candidates])]
    q = codebook(indices)  # (N, D) float32, a copy: the update below does not change it
    if update:
        codebook.ema_step(tokens, indices)
    return q, indices


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Float32 mean of ``(a - b)**2`` over all elements; 0 for empty tensors (not NaN)."""
    if a.numel() == 0:
        return a.new_zeros((), dtype=torch.float32)
    return F.mse_loss(a.float(), b.float())


class EMAQuantizer(Quantizer):
    """Vector quantizer with an EMA codebook (kind ``"ema_vq"``).

    Args:
        dim: D, channels of the latent.
        codebook_size: K.
        beta: weight of the commitment loss ``beta * mse(sg(zq), z)``; >= 0.
        decay: EMA decay gamma in [0, 1).
        eps: Laplace smoothing epsilon.
        legacy_init: start the EMA counts at 0 as CogVideo does (see the module docstring).
        remap: used codes (tensor, array or ``.npy`` path, see `vqtok.quantizers.remap`): as in
            `VectorQuantizer`, the search is restricted to them and indices are compact ids in
            [0, U); ``codebook_size`` is then U.
        init: initial codes, ``"normal"`` (N(0, 1), CogVideo) or ``"uniform"`` (U(-1/K, 1/K)).
        generator: optional CPU generator for the initial codes.

    ``forward(z)`` accepts every layout of `Layout.of`; the EMA update runs only in training
    mode, without autograd, after the lookup. Metrics: ``perplexity``, ``usage``,
    ``bits_per_index`` (over the index vocabulary) and ``commitment_loss`` (unweighted mse).

    Attributes:
        codebook: the `EMACodebook` over all K codes (keys ``codebook.weight``,
            ``codebook.cluster_size``, ``codebook.embed_avg``).
        remapper: the `IndexRemap` (key ``remapper.used``) or None.
    """

    kind = "ema_vq"

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        legacy_init: bool = False,
        remap: UsedLike | None = None,
        init: str = "normal",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.dim = dim
        self.full_codebook_size = codebook_size
        self.beta = float(beta)
        self.codebook = EMACodebook(codebook_size, dim, decay, eps, legacy_init, init, generator)
        self.remapper = None if remap is None else IndexRemap(remap, codebook_size)
        self.codebook_size = codebook_size if self.remapper is None else self.remapper.num_used

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}"

    restricts_search = True

    def restricted_indices(
        self, z: Tensor, allowed: Sequence[Tensor], channel_last: bool | None = None
    ) -> Tensor:
        """Nearest code among ``allowed[0]`` only (see `Quantizer.restricted_indices`)."""
        return self.nearest_allowed(z, allowed, channel_last, self._allowed_rows)

    def _allowed_rows(self, ids: Tensor) -> Tensor:
        """Compact allowed ids (U,) -> their codebook rows (U, D)."""
        ids = ids.to(self.codebook.weight.device)
        full = ids if self.remapper is None else self.remapper.used.to(ids.device)[ids]
        return self.codebook.weight[full]

    def forward(self, z: Tensor, channel_last: bool | None = None) -> QuantizerOutput:
        """Quantize ``z``.

        Args:
            z: (B, D, H, W), (B, D, T, H, W), (N, D), (B, N, D) or channel-last (..., D); any
                float dtype.
            channel_last: see `Layout.of`.

        Returns:
            `QuantizerOutput`: codes like ``z`` (ST value, z's dtype), int64 indices of the
            grid shape in [0, codebook_size), float32 loss ``beta * commitment``, metrics.
        """
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} channels, got {layout.dim}")
        tokens = layout.to_tokens(z)  # (N, D)
        used = None if self.remapper is None else self.remapper.used
        q, full_ids = ema_lookup(self.codebook, tokens, self.training, used)
        commitment = mse(tokens, q)  # q carries no grad: only z is pulled (commitment)
        codes = tokens + (q.to(tokens.dtype) - tokens).detach()  # straight-through
        ids = full_ids if self.remapper is None else self.remapper.remap_to_used(full_ids)
        metrics = codebook_metrics(ids, self.codebook_size)
        metrics["commitment_loss"] = commitment.detach()
        return QuantizerOutput(
            layout.from_tokens(codes),
            layout.restore_indices(ids),
            self.beta * commitment,
            metrics,
        )

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """Codes of ``indices`` (as returned by ``forward``), float32, in the input's layout.

        Args:
            indices: integer grid (B, H, W), (B, T, H, W), (N,), (B, N) or any channel-last
                grid, values in [0, codebook_size) (compact ids with a remap).
            channel_last: see `Layout.for_indices`.

        Returns:
            (B, D, *S) for a rank-3/4 grid unless ``channel_last``, else (*grid, D).
        """
        indices = check_indices(indices, self.codebook_size)
        layout = Layout.for_indices(indices, 1, channel_last)
        if self.remapper is not None:
            indices = self.remapper.unmap_to_all(indices)
        return layout.from_tokens(self.codebook(indices.reshape(-1)))

    @torch.no_grad()
    def reseed_dead_codes(
        self,
        samples: Tensor,
        counts: Tensor | None = None,
        threshold: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Re-seed rarely used codes with random recent latents (`EMACodebook.reseed_dead`).

        Args:
            samples: (M, dim) recent quantizer inputs (channel-last tokens).
            counts: (codebook_size,) usage per index (compact ids with a remap), e.g.
                `CodeUsage.counts`; None uses the EMA cluster sizes.
            threshold: codes with ``counts < threshold`` are re-seeded.
            generator: optional, on ``samples``' device.

        Returns:
            The number of codes re-seeded.
        """
        if self.remapper is None:
            full = counts
        else:
            # Codes outside the used set are never searched: never re-seed them.
            used = self.remapper.used.to(self.codebook.weight.device)
            full = torch.full_like(self.codebook.cluster_size, float("inf"))
            given = self.codebook.cluster_size[used] if counts is None else counts
            full[used] = given.to(full.device, full.dtype)
        return int(self.codebook.reseed_dead(samples, full, threshold, generator).sum())
