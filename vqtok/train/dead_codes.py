"""Dead codes: the code usage of a training run between re-seedings, and the re-seeding.

A code no batch has used for ``dead_code_every`` steps restarts at a random recent quantizer
input (`LatentTap`); with ``init_codebook_from_data`` (and no k-means start) every code restarts
from the first batch's latents: by default only in a codebook the run starts fresh, never in one
inherited with ``--init-from`` (re-seeding it would throw the trained codes away). The draws
are seeded from (seed, step), so a resumed run re-seeds exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vqtok.families.vqtok import VideoTokenizer
from vqtok.train.config import TrainConfig
from vqtok.train.eval import code_counts

__all__ = ["DeadCodes", "LatentTap"]


class LatentTap:
    """Keeps a random subset of the latest quantizer inputs, for dead-code re-seeding."""

    def __init__(self, model: VideoTokenizer, keep: int = 4096) -> None:
        self.keep, self.samples = keep, torch.empty(0)
        model.quantizer.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if module.training:
            z = args[0].detach()
            flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B, D, t, h, w) -> (N, D)
            idx = torch.randperm(flat.shape[0], device=flat.device)[: self.keep]
            self.samples = flat[idx].float()


class DeadCodes:
    """Counts the codes a run uses and re-seeds the unused ones when it is their turn."""

    def __init__(self, model: VideoTokenizer, cfg: TrainConfig, inherited: bool = False) -> None:
        """``inherited``: the quantizer's codebooks came with the weights (``--init-from``)."""
        self.quantizer: Any = model.quantizer
        self.cfg = cfg
        self.tap = LatentTap(model)
        q = self.quantizer
        self.counts = torch.zeros(q.num_codebooks, q.codebook_size, dtype=torch.long)
        wanted = cfg.init_codebook_from_data
        wanted = not inherited if wanted is None else wanted
        self.reseed_first = wanted and not cfg.kmeans_init_batches

    def after_step(self, indices: Tensor | None, done: int) -> dict[str, Any]:
        """Count a step's indices (None: a quantizer-dropout step, not counted) and re-seed
        when due; returns ``{"reseeded": n}`` when it did, for the step's log record."""
        q, cfg, samples = self.quantizer, self.cfg, self.tap.samples
        if indices is not None:
            self.counts += code_counts(indices, q.num_codebooks, q.codebook_size)
        if done == 1 and self.reseed_first:
            # data-dependent init: every code restarts at a random latent of the first batch
            self.counts.zero_()
            g = torch.Generator(device=samples.device).manual_seed(cfg.seed)
            counts = self.counts.squeeze(0).to(samples.device)
            return {"reseeded": q.reseed_dead_codes(samples, counts, 1.0, g)}
        if cfg.dead_code_every and done % cfg.dead_code_every == 0:
            g = torch.Generator(device=samples.device).manual_seed(cfg.seed + done)
            counts = self.counts.squeeze(0).to(samples.device)
            reseeded = q.reseed_dead_codes(samples, counts, cfg.dead_code_threshold, g)
            self.counts.zero_()
            return {"reseeded": reseeded}
        return {}
