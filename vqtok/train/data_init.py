"""Data-dependent initialisation of a tokenizer before training.

- `fit_shortcut`: the principal components of the footage's pixel blocks become the linear
  shortcuts' basis (``shortcut: "linear"``), so the untrained model is already a linear
  tokenizer fitted to the data;
- `init_codebooks`: residual k-means of the encoder's latents becomes the codebooks, so
  training starts from codes where the latents are instead of from random ones.

Both draw their own batches from the sampler at negative step numbers, which training never
uses, so they neither change nor depend on the training batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqtok.errors import ConfigError
from vqtok.families.shortcut import block_vectors, fit_linear_shortcut
from vqtok.families.vqtok import VideoTokenizer
from vqtok.train.dataset import ClipSampler


def _batches(sampler: ClipSampler, count: int, first: int) -> list[Tensor]:
    return [sampler.sample_batch(-(first + i)) for i in range(count)]


@torch.no_grad()
def fit_shortcut(model: VideoTokenizer, sampler: ClipSampler, batches: int) -> int:
    """Fit the linear shortcuts of ``model`` to ``batches`` sampled batches.

    Returns:
        The number of pixel blocks the principal components were computed from.
    """
    cfg = model.config
    if cfg.shortcut != "linear":
        raise ConfigError(f"fit_shortcut needs shortcut 'linear', got {cfg.shortcut!r}")
    blocks = torch.cat(
        [
            block_vectors(b, cfg.spatial_factor, cfg.temporal_factor)
            for b in _batches(sampler, batches, 1)
        ]
    )
    basis, mean = fit_linear_shortcut(blocks, cfg.latent_dim)
    for shortcut in (model.encoder.shortcut, model.decoder.shortcut):
        shortcut.set_basis(basis, mean)  # type: ignore[union-attr, operator]
    return int(blocks.shape[0])


@torch.no_grad()
def init_codebooks(
    model: VideoTokenizer,
    sampler: ClipSampler,
    batches: int,
    samples: int = 32768,
    iters: int = 10,
    seed: int = 0,
) -> int:
    """Codebooks from (residual) k-means of ``model``'s latents on ``batches`` batches.

    Returns:
        The number of latent vectors k-means ran on.
    """
    init = model.quantizer.init_from_samples  # ConfigError for quantizers without one
    device = next(model.parameters()).device
    latents = []
    for batch in _batches(sampler, batches, 1000):
        z = model.latents(batch.to(device)).float()  # (B, D, t, h, w)
        latents.append(z.movedim(1, -1).reshape(-1, z.shape[1]))
    flat = torch.cat(latents)
    g = torch.Generator().manual_seed(seed)
    flat = flat[torch.randperm(flat.shape[0], generator=g)[:samples].to(flat.device)]
    init(flat, iters, g)
    return int(flat.shape[0])
