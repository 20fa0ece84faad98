"""A tiny real vqtok model saved to disk, for tests that drive the CLI or the file pipeline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer
from vqtok.io.checkpoint import save_pretrained

TINY_CONFIG = TokenizerConfig(
    channels=8,
    channel_multipliers=(1, 1, 2, 2),
    num_res_blocks=1,
    temporal_factor=4,
    latent_dim=4,
    quantizer="ema_vq",
    quantizer_options={"codebook_size": 16},
    norm_groups=4,
)


def tiny_config(quantizer: str, options: dict[str, Any], **fields: Any) -> TokenizerConfig:
    """`TINY_CONFIG` with another quantizer and its options, and any other field changed."""
    return replace(TINY_CONFIG, quantizer=quantizer, quantizer_options=options, **fields)


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 4x8x8 EMA-VQ model (16 codes) as a model directory."""
    torch.manual_seed(seed)
    return save_pretrained(VideoTokenizer(TINY_CONFIG), directory)
