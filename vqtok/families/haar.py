"""3-D Haar wavelet patching, the input/output stage of the NVIDIA Cosmos tokenizers.

Cosmos Tokenizer (arXiv 2501.03575) replaces a pixel-unshuffle patch embedding by ``levels``
levels of a 3-D Haar analysis: each level splits every channel into 8 sub-bands at half the
resolution in T, H and W. With patch size 4 (two levels) RGB becomes 192 channels at a quarter
of the resolution. Before analysis, frame 0 is repeated so that it fills a whole temporal patch
on its own (causality: latent frame 0 depends on frame 0 only).

Band order and scale (what the released checkpoints were trained with):
- sub-bands are ordered (T-band, H-band, W-band), low before high: LLL, LLH, ..., HHH;
- channels are band-major: new channel = band * C + c, so after two levels
  channel = band2 * 8C + band1 * C + c;
- each coefficient is (1/8) * sum over the 2x2x2 block of s * x, with the sign
  s = (-1)^(dt*bT + dh*bH + dw*bW) (b = 1 for a high band): LLL is the block mean.
The synthesis is the exact inverse: each voxel is the signed sum of its 8 coefficients.
"""

from __future__ import annotations

import itertools

import torch
from einops import rearrange
from torch import Tensor, nn

from vqtok.errors import VqtokError


def haar_signs() -> Tensor:
    """(8, 8) float32 sign matrix S[band, offset] = (-1)^(dt*bT + dh*bH + dw*bW).

    Rows are bands (bT, bH, bW) and columns voxel offsets (dt, dh, dw), both in the order
    (0,0,0), (0,0,1), ..., (1,1,1). S @ S.T = 8 I, so analysis is S / 8 and synthesis S.T.
    """
    triples = list(itertools.product((0, 1), repeat=3))
    signs = [
        [(-1.0) ** (b[0] * o[0] + b[1] * o[1] + b[2] * o[2]) for o in triples] for b in triples
    ]
    return torch.tensor(signs, dtype=torch.float32)


def haar_analysis(x: Tensor) -> Tensor:
    """One 3-D Haar level: (B, C, T, H, W) -> (B, 8C, T/2, H/2, W/2); T, H, W must be even."""
    if any(n % 2 for n in x.shape[2:]):
        raise VqtokError(f"Haar analysis needs even T, H, W, got {tuple(x.shape[2:])}")
    blocks = rearrange(x, "b c (t i) (h j) (w k) -> b c t h w (i j k)", i=2, j=2, k=2)
    bands = torch.einsum("bcthwo,no->bncthw", blocks, haar_signs().to(x) / 8)
    # (B, band, C, T, H, W) -> (B, band*C, T, H, W): band-major channels
    return rearrange(bands, "b n c t h w -> b (n c) t h w")


def haar_synthesis(x: Tensor) -> Tensor:
    """Inverse of `haar_analysis`: (B, 8C, T, H, W) -> (B, C, 2T, 2H, 2W)."""
    bands = rearrange(x, "b (n c) t h w -> b n c t h w", n=8)
    blocks = torch.einsum("bncthw,no->bcthwo", bands, haar_signs().to(x))
    return rearrange(blocks, "b c t h w (i j k) -> b c (t i) (h j) (w k)", i=2, j=2, k=2)


class HaarPatcher(nn.Module):
    """Repeat frame 0, then ``log2(patch_size)`` Haar levels.

    (B, C, T, H, W) with T = 1 + k * patch_size -> (B, C * 8^L, 1 + k, H/p, W/p).

    In streaming use (``first=False``) the chunk holds ``k * patch_size`` frames that follow
    earlier ones, and frame 0 is not repeated.
    """

    def __init__(self, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.levels = patch_size.bit_length() - 1
        if 2**self.levels != patch_size:
            raise VqtokError(f"Haar patch size must be a power of two, got {patch_size}")

    def forward(self, x: Tensor, first: bool = True) -> Tensor:
        if first:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.patch_size - 1, -1, -1), x], dim=2)
        if x.shape[2] % self.patch_size:
            raise VqtokError(
                f"frame count does not fit patch size {self.patch_size}: got {x.shape[2]} "
                "frames after repeating frame 0 (expected 1 + k * patch_size in total)"
            )
        for _ in range(self.levels):
            x = haar_analysis(x)
        return x


class HaarUnpatcher(nn.Module):
    """Inverse of `HaarPatcher`: synthesis levels, then drop the repeated copies of frame 0."""

    def __init__(self, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.levels = patch_size.bit_length() - 1

    def forward(self, x: Tensor, first: bool = True) -> Tensor:
        for _ in range(self.levels):
            x = haar_synthesis(x)
        return x[:, :, self.patch_size - 1 :] if first else x
