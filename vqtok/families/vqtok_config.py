"""`TokenizerConfig`: the architecture of a vqtok tokenizer (`vqtok.families.vqtok`), the
``config.json`` of its model directory."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from vqtok.errors import ConfigError
from vqtok.jsonfields import dataclass_from_json, dataclass_to_json
from vqtok.quantizers import KINDS

__all__ = ["SHORTCUTS", "TokenizerConfig"]

SHORTCUTS = ("none", "encoder", "both", "linear")


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of a `VideoTokenizer` (run-time choices such as device are not here).

    Attributes:
        channels: base width; stage i has ``channels * channel_multipliers[i]`` channels.
        channel_multipliers: one per encoder stage; exactly log2(spatial_factor / patch_size)
            + 1 of them (every stage but the last halves H and W).
        num_res_blocks: residual blocks per stage.
        spatial_factor: 8 or 16; H and W of a clip must be multiples of it.
        patch_size: 1, 2 or 4; the encoder starts by folding p x p pixel patches into channels
            (space-to-depth) and the decoder ends by unfolding them, so the convolutions run at
            1/p of the resolution (a large saving on CPU); the stages then downsample by
            spatial_factor / p.
        temporal_factor: tau in (1, 2, 4, 8); at most len(channel_multipliers) - 1.
        latent_dim: channels of the latent that enters the quantizer.
        quantizer: a kind of `vqtok.quantizers.KINDS`.
        quantizer_options: keyword arguments of that quantizer (``dim`` is ``latent_dim``).
        pre_quant_norm: per-token LayerNorm of the latent before the quantizer; None means
            "on for LFQ, off otherwise" (LFQ's sign quantiser and entropy terms want latents
            of a fixed scale).
        norm_groups: GroupNorm groups; must divide every stage's width.
        shortcut: shortcuts around the networks (`vqtok.families.shortcut`) so they learn only the
            residual detail: "both" (block averages around encoder and decoder), "encoder"
            (its average only, for sign quantizers such as LFQ, whose codes carry no
            brightness to spread back), "linear" (a principal-component projection of each
            pixel block and its transpose, fitted to footage by `vqtok train`; the networks'
            last convolutions then start at zero, so an untrained model is that linear
            tokenizer) or "none".
        deblock: strength in [0, 0.5] of the fixed filter that softens the decoder's output at
            block boundaries (`vqtok.families.deblock`); 0 (default) leaves it as is. With a
            residual quantizer it may be a list, one strength per count of levels kept
            (entry k-1 for codes of the first k levels; coarser codes leave larger steps).
    """

    channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    spatial_factor: int = 8
    patch_size: int = 1
    temporal_factor: int = 4
    latent_dim: int = 6
    quantizer: str = "fsq"
    quantizer_options: dict[str, Any] = field(
        default_factory=lambda: {"levels": [8, 8, 8, 5, 5, 5]}
    )
    pre_quant_norm: bool | None = None
    norm_groups: int = 32
    shortcut: str = "none"
    deblock: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        for name in ("channels", "num_res_blocks", "latent_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.spatial_factor not in (8, 16):
            raise ConfigError(f"spatial_factor must be 8 or 16, got {self.spatial_factor}")
        if self.temporal_factor not in (1, 2, 4, 8):
            raise ConfigError(f"temporal_factor must be 1, 2, 4 or 8, got {self.temporal_factor}")
        if self.patch_size not in (1, 2, 4):
            raise ConfigError(f"patch_size must be 1, 2 or 4, got {self.patch_size}")
        stages = int(math.log2(self.spatial_factor // self.patch_size)) + 1
        if len(self.channel_multipliers) != stages:
            raise ConfigError(
                f"spatial_factor {self.spatial_factor} with patch_size {self.patch_size} needs "
                f"{stages} channel_multipliers, "
                f"got {len(self.channel_multipliers)}"
            )
        if self.temporal_stages > stages - 1:
            raise ConfigError(
                f"temporal_factor {self.temporal_factor} needs at least "
                f"{self.temporal_stages + 1} stages, got {stages}"
            )
        if any(m < 1 for m in self.channel_multipliers):
            raise ConfigError(f"channel_multipliers must be >= 1, got {self.channel_multipliers}")
        for width in self.widths:
            if width % self.norm_groups:
                raise ConfigError(f"norm_groups {self.norm_groups} does not divide width {width}")
        if self.quantizer not in KINDS:
            raise ConfigError(
                f"unknown quantizer {self.quantizer!r}; choose one of {sorted(KINDS)}"
            )
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        strengths = self.deblock_strengths
        if not strengths or not all(0.0 <= s <= 0.5 for s in strengths):
            raise ConfigError(f"deblock must be in [0, 0.5] (or a list of such), "
                              f"got {self.deblock}")
        if "dim" in self.quantizer_options:
            raise ConfigError("quantizer_options must not set 'dim'; it is latent_dim")

    def __hash__(self) -> int:
        # the generated hash would fail on the quantizer_options dict
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=repr))

    @property
    def widths(self) -> list[int]:
        """Channel width of each stage."""
        return [self.channels * m for m in self.channel_multipliers]

    @property
    def temporal_stages(self) -> int:
        """Number of stages that halve time (log2 tau)."""
        return int(math.log2(self.temporal_factor))

    @property
    def deblock_strengths(self) -> tuple[float, ...]:
        """``deblock`` as a tuple: one strength, or one per count of residual levels kept."""
        return self.deblock if isinstance(self.deblock, tuple) else (self.deblock,)

    @property
    def uses_pre_quant_norm(self) -> bool:
        return self.quantizer == "lfq" if self.pre_quant_norm is None else self.pre_quant_norm

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        """Build from a JSON-style dict; unknown keys and wrong types are a `ConfigError`."""
        config: TokenizerConfig = dataclass_from_json(cls, data, "tokenizer config key")
        return config

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that `from_dict` turns back into an equal config."""
        return dataclass_to_json(self)
