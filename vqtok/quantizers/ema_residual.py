"""Residual VQ with one EMA codebook per level (kind ``"ema_rvq"``).

helia_edge's EmaResidualVectorQuantizer: level l's codebook is an `EMACodebook` updated from
(r_l, idx_l) in training mode, after its lookup; the per-level loss is the commitment term
``beta * mse(sg(q_l), r_l)`` only. The level loop, metrics and index layout are the
`vqtok.quantizers.residual.ResidualStack`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqtok.quantizers.ema import EMACodebook, ema_lookup, mse
from vqtok.quantizers.residual import ResidualStack

__all__ = ["EMAResidualQuantizer"]


class EMAResidualQuantizer(ResidualStack):
    """Residual VQ with one EMA codebook per level (kind ``"ema_rvq"``; helia_edge's
    EmaResidualVectorQuantizer).

    Args:
        dim: D, channels of the latent.
        num_levels: L >= 1.
        codebook_sizes: K for every level, or a list of L sizes.
        beta: weight of each level's commitment loss ``beta * mse(sg(q_l), r_l)``.
        decay: EMA decay gamma in [0, 1).
        eps: Laplace smoothing epsilon.
        legacy_init: start the EMA counts at 0 (CogVideo) instead of 1 (helia_edge).
        generator: optional CPU generator for the U(-1/K_l, 1/K_l) initial codes.
        beam_width: 1 for greedy encoding, W > 1 for a beam of W paths outside training.

    Level l's codebook is updated from (r_l, idx_l) in training mode, after its lookup.

    Attributes:
        codebooks: L `EMACodebook` modules.
    """

    kind = "ema_rvq"

    codebooks: nn.ModuleList

    def __init__(
        self,
        dim: int,
        num_levels: int,
        codebook_sizes: int | list[int],
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        legacy_init: bool = False,
        generator: torch.Generator | None = None,
        beam_width: int = 1,
    ) -> None:
        super().__init__(dim, num_levels, codebook_sizes, beta, beam_width)
        self.codebooks = nn.ModuleList(
            EMACodebook(k, dim, decay, eps, legacy_init, "uniform", generator)
            for k in self.codebook_sizes
        )

    def level_weight(self, level: int) -> Tensor:
        codebook: EMACodebook = self.codebooks[level]  # type: ignore[assignment]
        return codebook.weight

    def _level_reseeded(self, level: int, dead: Tensor, threshold: float) -> None:
        codebook: EMACodebook = self.codebooks[level]  # type: ignore[assignment]
        codebook.restart_statistics(dead, threshold)

    def _set_level(self, level: int, codes: Tensor) -> None:
        codebook: EMACodebook = self.codebooks[level]  # type: ignore[assignment]
        codebook.weight.copy_(codes)
        codebook.embed_avg.copy_(codes * codebook.cluster_size.unsqueeze(1))

    def _level_step(self, level: int, r: Tensor, update: bool) -> tuple[Tensor, Tensor, Tensor]:
        codebook: EMACodebook = self.codebooks[level]  # type: ignore[assignment]
        q, idx = ema_lookup(codebook, r, update)
        return q, idx, self.beta * mse(r, q)
