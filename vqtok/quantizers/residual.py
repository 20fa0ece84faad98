"""Residual vector quantization: L codebooks, each quantizing what the previous ones left.

Level l quantizes the residual r_l to its nearest code q_l and passes on
``r_{l+1} = r_l - sg(q_l)``; the output is the sum of the level codes, with one straight-through
estimator over the whole stack (Zeghidour et al., SoundStream, arXiv 2107.03312; Lee et al.,
RQ-VAE, arXiv 2203.01941). Two codebook kinds:

- `ResidualQuantizer` (``"rvq"``): gradient-trained codebooks, per-level loss
  ``beta * mse(sg(q_l), r_l) + mse(q_l, sg(r_l))``;
- `EMAResidualQuantizer` (``"ema_rvq"``, `vqtok.quantizers.ema_residual`): one EMA codebook per
  level (helia_edge's EmaResidualVectorQuantizer), per-level loss ``beta * mse(sg(q_l), r_l)``
  only.

Both are a `ResidualStack`: the level loop, restricted search, reseeding and index layout they
share; a subclass says how one level looks up, learns and reseeds its codebook.

Both take ``beam_width``: 1 (default) encodes greedily; W > 1 searches the levels jointly with
a beam of W paths (`vqtok.quantizers.beam`) outside training. A beam code's first k levels are
not the best k-level code, so ``levels=k`` runs a k-level search.

Both accept per-level codebook sizes. Indices carry a trailing level axis (…, L) when L > 1.
Metrics follow helia_edge's names, levels counted from 1: ``rvq_l{l}_perplexity`` (2**bits),
``rvq_l{l}_usage`` (fraction of the level's codes used in the batch), ``rvq_l{l}_bits_per_index``
(log2 entropy of the batch histogram), ``rvq_l{l}_commitment_loss`` (unweighted mse), and the
aggregates ``rvq_perplexity_mean``, ``rvq_usage_mean``, ``rvq_bits_per_index_sum``.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    level_columns,
)
from vqtok.quantizers.beam import beam_codes, restricted_beam_codes
from vqtok.quantizers.ema import mse
from vqtok.quantizers.search import nearest_codes
from vqtok.quantizers.usage import kmeans_init, reseed_dead_codes


def level_sizes(num_levels: int, codebook_sizes: int | list[int] | tuple[int, ...]) -> list[int]:
    """Per-level codebook sizes from one int (same K everywhere) or one size per level."""
    if num_levels < 1:
        raise ConfigError(f"num_levels must be >= 1, got {num_levels}")
    if isinstance(codebook_sizes, int):
        sizes = [codebook_sizes] * num_levels
    else:
        sizes = [int(k) for k in codebook_sizes]
    if len(sizes) != num_levels:
        raise ConfigError(f"got {len(sizes)} codebook sizes for {num_levels} levels")
    if min(sizes) < 1:
        raise ConfigError(f"codebook sizes must be >= 1, got {sizes}")
    return sizes


class ResidualStack(Quantizer):
    """The residual loop shared by both codebook kinds; subclasses provide one level's step
    and its codes (`level_weight`), and override `_level_reseeded` and `_set_level` where a
    codebook holds more than those rows (EMA statistics)."""

    def __init__(
        self, dim: int, num_levels: int, codebook_sizes: int | list[int], beta: float,
        beam_width: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.set_beam_width(beam_width)
        self.dim = dim
        self.num_levels = num_levels
        self.codebook_sizes = level_sizes(num_levels, codebook_sizes)
        self.codebook_size = max(self.codebook_sizes)
        self.num_codebooks = num_levels
        self.beta = beta

    restricts_search = True
    residual = True
    beam_search = True

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """K_l of each level."""
        return tuple(self.codebook_sizes)

    def level_weight(self, level: int) -> Tensor:
        """(K_l, D) codes of level ``level`` (0-based)."""
        raise NotImplementedError

    @torch.no_grad()
    def restricted_indices(
        self, z: Tensor, allowed: Sequence[Tensor], channel_last: bool | None = None
    ) -> Tensor:
        """Residual search where level l looks only at the codes ``allowed[l]``.

        Level l quantizes what the allowed codes of the levels before it left, so the
        residuals are those of the codes really stored. When the unrestricted code is allowed
        anyway (used sets built from the same videos), the result is exactly it, in compact ids.

        Returns:
            int64 (*grid, L) compact ids (just the grid when L = 1), level l's in [0, U_l).
        """
        layout = self._layout(z, channel_last)
        r = layout.to_tokens(z).float()  # (N, D)
        used = self.check_allowed(allowed, z.device)
        if self.beam_width > 1:
            books = [self.level_weight(i) for i in range(self.num_levels)]
            found = restricted_beam_codes(r, books, used, self.beam_width)
            return self._grid_indices(layout, found)
        out = []
        for level, ids in enumerate(used):
            weight = self.level_weight(level)
            rows = weight[ids.to(weight.device)]  # (U_l, D) the allowed codes, in order
            idx = nearest_codes(r, rows)
            r = r - F.embedding(idx, rows).float()  # the same values as the full lookup's
            out.append(idx)
        return self._grid_indices(layout, torch.stack(out, dim=1))

    def _level_step(self, level: int, r: Tensor, update: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize residual ``r`` (N, D) float32 -> (q (N, D), idx (N,), loss scalar)."""
        raise NotImplementedError

    def _reseed(
        self, samples: Tensor, counts: Tensor, threshold: float, generator: torch.Generator | None
    ) -> int:
        """Re-seed every level's rarely used codes from the residuals that level sees.

        Level l is re-seeded from ``r_l`` of the samples (after levels < l, already re-seeded,
        took their share), so a new code lands where that level's inputs really are.
        ``counts``: (L, K) usage per level (row l uses its first K_l entries); a (K,) tensor is
        accepted when L = 1. Returns the number of codes re-seeded over all levels.
        """
        counts = counts.reshape(self.num_levels, -1)
        r, total = samples.float(), 0
        for level in range(self.num_levels):
            k = self.codebook_sizes[level]
            weight = self.level_weight(level)
            dead = reseed_dead_codes(weight.data, counts[level, :k], r, threshold, generator)
            self._level_reseeded(level, dead, threshold)
            total += int(dead.sum())
            weight = weight.float()
            r = r - weight[nearest_codes(r, weight)]
        return total

    def _level_reseeded(self, level: int, dead: Tensor, threshold: float) -> None:
        """Level ``level``'s codes ``dead`` ((K_l,) bool) were just moved to new rows of
        `level_weight`; this default has nothing more to update (codebooks that hold no
        statistics besides those rows)."""

    @torch.no_grad()
    def init_from_samples(
        self, samples: Tensor, iters: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Residual k-means: level l's codes become k-means centroids of the residuals
        ``r_l`` of ``samples`` (M, dim), M >= max K_l, after levels < l took their share."""
        r = samples.detach().float()
        for level in range(self.num_levels):
            centroids = kmeans_init(r, self.codebook_sizes[level], iters, generator)
            self._set_level(level, centroids)
            r = r - centroids[nearest_codes(r, centroids)]

    def _set_level(self, level: int, codes: Tensor) -> None:
        """Replace level ``level``'s (K_l, D) codes (this default: the rows of `level_weight`)."""
        self.level_weight(level).data.copy_(codes)

    def quantize_tokens(
        self, tokens: Tensor, update: bool, levels: int | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor], dict[str, Tensor]]:
        """Run the residual stack on a token matrix.

        Args:
            tokens: (N, D) inputs, any float dtype, may require grad.
            update: EMA codebooks update after each level's lookup (ignored by gradient ones).
            levels: run only the first k levels (quantizer dropout, a coarser rung of the
                quality ladder); None runs all L.

        Returns:
            ``(codes, indices, losses, metrics)``: (N, D) straight-through codes in the input
            dtype, (N, k) int64 indices, k float32 per-level losses, the metrics dict.
        """
        r = tokens.float()
        q_sum = torch.zeros_like(r, requires_grad=False)
        all_idx, losses = [], []
        per_level: list[dict[str, Tensor]] = []
        count = self.check_levels(levels)
        searched = None if self.training or self.beam_width == 1 else self._beam(r.detach(), count)
        for level in range(count):
            if searched is None:
                q, idx, level_loss = self._level_step(level, r, update)
            else:
                idx = searched[:, level]
                q = F.embedding(idx, self.level_weight(level)).float()
                level_loss = self.beta * mse(r, q)
            stats = codebook_metrics(idx, self.codebook_sizes[level])
            stats["commitment_loss"] = mse(r, q).detach()
            per_level.append(stats)
            losses.append(level_loss)
            all_idx.append(idx)
            q_sum = q_sum + q.detach()
            r = r - q.detach()  # r_{l+1} = r_l - sg(q_l), with the pre-update q_l
        codes = tokens + (q_sum.to(tokens.dtype) - tokens).detach()  # ST over the whole stack
        return codes, torch.stack(all_idx, dim=1), losses, _rvq_metrics(per_level)

    def forward(
        self, z: Tensor, channel_last: bool | None = None, levels: int | None = None
    ) -> QuantizerOutput:
        """Quantize ``z`` through all levels (or the first ``levels``).

        Args:
            z: (B, D, H, W), (B, D, T, H, W), (N, D), (B, N, D) or channel-last (..., D).
            channel_last: see `Layout.of`.
            levels: k in 1..L: only the first k levels run and the indices have k columns.

        Returns:
            `QuantizerOutput`: codes like ``z`` (ST of the summed level codes), int64 indices
            (*grid, L) (just the grid when L = 1), level l's values in [0, K_l), the float32
            summed loss, the metrics named in the module docstring.
        """
        layout = self._layout(z, channel_last)
        tokens = layout.to_tokens(z)
        codes, idx, losses, metrics = self.quantize_tokens(tokens, self.training, levels)
        loss = torch.stack(losses).sum()
        return QuantizerOutput(
            layout.from_tokens(codes), self._grid_indices(layout, idx), loss, metrics
        )

    @torch.no_grad()
    def encode(self, z: Tensor, channel_last: bool | None = None) -> list[Tensor]:
        """Per-level indices of ``z``: no loss, no update, no metrics.

        Returns:
            L int64 tensors of the grid shape (z's shape without the channel axis).
        """
        layout = self._layout(z, channel_last)
        r = layout.to_tokens(z).float()
        if self.beam_width > 1:
            return list(map(layout.restore_indices, self._beam(r, self.num_levels).unbind(1)))
        out = []
        for level in range(self.num_levels):
            weight = self.level_weight(level)
            idx = nearest_codes(r, weight)
            r = r - F.embedding(idx, weight).float()
            out.append(layout.restore_indices(idx))
        return out

    def _beam(self, r: Tensor, levels: int) -> Tensor:
        """(N, D) tokens -> (N, levels) indices, beam-searched over the first levels."""
        return beam_codes(r, [self.level_weight(i) for i in range(levels)], self.beam_width)

    def decode(self, indices: list[Tensor], channel_last: bool | None = None) -> Tensor:
        """Sum of the level codes of per-level index grids (the inverse of `encode`)."""
        if len(indices) != self.num_levels:
            raise QuantizerError(f"expected {self.num_levels} index tensors, got {len(indices)}")
        return self.indices_to_codes(torch.stack(indices, dim=-1), channel_last)

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """Sum over levels of the codes of ``indices``.

        Args:
            indices: integer (*grid, k) for the first k <= L levels (or just the grid when
                L = 1), level l's values in [0, K_l).
            channel_last: see `Layout.for_indices`.

        Returns:
            float32 codes (B, D, *S) for a rank-3/4 grid unless ``channel_last``, else
            (*grid, D).
        """
        indices = level_columns(indices, self.num_levels)
        layout = Layout.for_indices(indices, 2, channel_last)
        levels = indices.shape[-1]
        flat = indices.reshape(-1, levels)  # (N, k)
        total = torch.zeros(flat.shape[0], self.dim, device=indices.device)
        for level in range(levels):
            idx = check_indices(flat[:, level], self.codebook_sizes[level])
            total = total + F.embedding(idx, self.level_weight(level)).float()
        return layout.from_tokens(total)

    def _layout(self, z: Tensor, channel_last: bool | None) -> Layout:
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} channels, got {layout.dim}")
        return layout

    def _grid_indices(self, layout: Layout, idx: Tensor) -> Tensor:
        """(N, L) -> (*grid, L), or (*grid,) when L = 1 (the base contract)."""
        return layout.restore_indices(idx if self.num_levels > 1 else idx[:, 0])


def _rvq_metrics(per_level: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """helia_edge's metric names and order: perplexities, usages, bits, then aggregates."""
    metrics: dict[str, Tensor] = {}
    for key in ("perplexity", "usage", "bits_per_index", "commitment_loss"):
        for level, stats in enumerate(per_level, start=1):
            metrics[f"rvq_l{level}_{key}"] = stats[key]
    metrics["rvq_perplexity_mean"] = torch.stack([s["perplexity"] for s in per_level]).mean()
    metrics["rvq_usage_mean"] = torch.stack([s["usage"] for s in per_level]).mean()
    metrics["rvq_bits_per_index_sum"] = torch.stack([s["bits_per_index"] for s in per_level]).sum()
    return metrics


class ResidualQuantizer(ResidualStack):
    """Residual VQ with gradient-trained codebooks (kind ``"rvq"``).

    Args:
        dim: D, channels of the latent.
        num_levels: L >= 1.
        codebook_sizes: K for every level, or a list of L sizes.
        beta: weight of each level's commitment term.
        generator: optional CPU generator for the U(-1/K_l, 1/K_l) initial codes.
        beam_width: 1 for greedy encoding, W > 1 for a beam of W paths outside training.

    Attributes:
        codebooks: L trainable (K_l, D) parameters.
    """

    kind = "rvq"

    codebooks: nn.ParameterList

    def __init__(
        self,
        dim: int,
        num_levels: int,
        codebook_sizes: int | list[int],
        beta: float = 0.25,
        generator: torch.Generator | None = None,
        beam_width: int = 1,
    ) -> None:
        super().__init__(dim, num_levels, codebook_sizes, beta, beam_width)
        self.codebooks = nn.ParameterList(
            nn.Parameter((torch.rand(k, dim, generator=generator) * 2 - 1) / k)
            for k in self.codebook_sizes
        )

    def level_weight(self, level: int) -> Tensor:
        return self.codebooks[level]

    def _level_step(self, level: int, r: Tensor, update: bool) -> tuple[Tensor, Tensor, Tensor]:
        weight = self.codebooks[level]
        idx = nearest_codes(r, weight)
        q = F.embedding(idx, weight).float()  # gradient reaches the codebook through q
        loss = self.beta * mse(r, q.detach()) + mse(q, r.detach())
        return q, idx, loss
