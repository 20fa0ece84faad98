"""The two exported graphs of a vqtok-family model: video -> indices, and indices -> video.

`EncoderGraph` is the encoder *with* its quantizer's search (`vqtok.export.search`), so an
exported encoder gives the integer indices themselves; `DecoderGraph` looks the codes up and
runs the decoder. Both take what the model takes (no padding: `vqtok.export.onnx_runner` pads
and trims as `vqtok.Tokenizer` does), with batch, time, height and width dynamic:

- encoder: float32 video (B, 3, 1 + k*tau, f*h, f*w), k >= 0, h, w >= 1, in [-1, 1] ->
  int64 indices (B, 1 + k, h, w[, L]);
- decoder: int64 indices (B, t, h, w[, L]), t, h, w >= 1 -> float32 video
  (B, 3, 1 + (t-1)*tau, f*h, f*w) clamped to [-1, 1].

The model's convolutions and activations are traced as plain ``F.conv3d`` / ``F.silu``
(`vqtok.families.layers.traced`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError
from vqtok.export.search import code_lookup, quantizer_search

__all__ = ["DecoderGraph", "EncoderGraph", "build_graphs", "dynamic_shapes"]


class EncoderGraph(nn.Module):
    """Video (B, 3, 1 + k*tau, f*h, f*w) float32 in [-1, 1] -> int64 (B, 1 + k, h, w[, L])."""

    def __init__(self, model: Any, search: nn.Module, level_axis: bool) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.pre_quant_norm = model.pre_quant_norm
        self.search = search
        self.level_axis = level_axis

    def forward(self, video: Tensor) -> Tensor:
        z = self.encoder(video, None)
        if self.pre_quant_norm is not None:
            z = self.pre_quant_norm(z)
        b, d, t, h, w = z.shape
        tokens = z.permute(0, 2, 3, 4, 1).reshape(-1, d)  # (B, D, t, h, w) -> (B*t*h*w, D)
        found = self.search(tokens)  # (B*t*h*w, L)
        return found.reshape(b, t, h, w, -1) if self.level_axis else found.reshape(b, t, h, w)


class DecoderGraph(nn.Module):
    """int64 (B, t, h, w[, L]) -> video (B, 3, 1 + (t-1)*tau, f*h, f*w) float32 in [-1, 1]."""

    def __init__(self, model: Any, lookup: nn.Module, level_axis: bool) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.lookup = lookup
        self.level_axis = level_axis
        self.latent_dim = int(model.config.latent_dim)

    def forward(self, indices: Tensor) -> Tensor:
        b, t, h, w = indices.shape[:4]
        flat = indices.reshape(b * t * h * w, -1)  # (B, t, h, w[, L]) -> (B*t*h*w, L)
        codes = self.lookup(flat).reshape(b, t, h, w, self.latent_dim)
        codes = codes.permute(0, 4, 1, 2, 3).contiguous()  # -> (B, D, t, h, w)
        # levels=None: every level is present, so the deblocking strength of a full code
        return self.decoder(codes, None, None).clamp(-1.0, 1.0)


def build_graphs(model: Any, beam: int | None = None) -> tuple[EncoderGraph, DecoderGraph]:
    """The encoder and decoder graphs of a vqtok-family model (eval mode, float32, CPU).

    Args:
        model: a `vqtok.families.vqtok.VideoTokenizer`.
        beam: residual VQ models: the beam width the encoder searches with (1: greedy); None:
            the model's own ``beam_width``.

    Raises:
        ConfigError: another family, or a quantizer without an export graph.
    """
    if getattr(model, "family", None) != "vqtok":
        raise ConfigError(f"ONNX export supports the vqtok family; this model's is "
                          f"{getattr(model, 'family', type(model).__name__)!r}")
    kind = model.config.quantizer
    search = quantizer_search(model.quantizer, kind, beam)
    level_axis = int(model.quantizer.num_codebooks) > 1
    encoder = EncoderGraph(model, search, level_axis).eval()
    decoder = DecoderGraph(model, code_lookup(model.quantizer, kind, search), level_axis).eval()
    return encoder, decoder


def dynamic_shapes(temporal_factor: int, spatial_factor: int
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``torch.export`` dynamic shapes of the encoder's ``video`` and the decoder's
    ``indices``: batch, time, height and width, the video's as multiples of what the model
    needs (1 + k*tau frames, f*h pixels)."""
    dim = torch.export.Dim
    batch = dim("batch", min=1)
    k = dim("k", min=0)
    frames = k + 1 if temporal_factor == 1 else temporal_factor * k + 1
    rows, cols = dim("latent_height", min=1), dim("latent_width", min=1)
    video = {0: batch, 2: frames, 3: spatial_factor * rows, 4: spatial_factor * cols}
    indices = {0: batch, 1: dim("latent_frames", min=1), 2: rows, 3: cols}
    return {"video": video}, {"indices": indices}
