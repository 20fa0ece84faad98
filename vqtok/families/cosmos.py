"""NVIDIA Cosmos discrete video tokenizers (DV4x8x8, DV8x8x8, DV8x16x16), family ``"cosmos-dv"``.

Cosmos Tokenizer (NVIDIA, arXiv 2501.03575): a 3-D Haar patcher, a causal encoder of factorised
(1,3,3) + (3,1,1) convolutions with per-frame norms and a spatial + causal temporal attention
block in the middle, a 1x1x1 projection to 6 channels, FSQ with levels [8, 8, 8, 5, 5, 5]
(64 000 codes; arXiv 2309.15505), and the mirrored decoder. Every layer is causal in time, so a
long video streams chunk by chunk with exactly the indices of a one-shot encode.

Re-implemented from the architecture description in ``tests/fixtures/cosmos-dv4x8x8/README.md``
and checked against the reference's activations, indices and outputs. Parameter names are the
release's (see `vqtok.families.cosmos_layers`); `vqtok.convert.cosmos.convert_cosmos` turns the
released TorchScript files into a vqtok model directory.

Index order: the FSQ digits are least-significant first (channel 0 has place value 1), which is
`vqtok.quantizers.FiniteScalarQuantizer`'s own order, so the indices equal the release's as they
are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, VqtokError
from vqtok.families.base import FamilyConfig, TokenizerModel, check_video
from vqtok.families.cosmos_layers import (
    CausalConv3d,
    FactorizedConv,
    FrameNorm,
    HybridDownsample,
    HybridUpsample,
    ResBlock,
    SpatialAttention,
    TemporalAttention,
    is_first,
    swish,
)
from vqtok.families.haar import HaarPatcher, HaarUnpatcher
from vqtok.families.layers import StreamState
from vqtok.families.tiling import Tiling
from vqtok.quantizers.base import QuantizerOutput
from vqtok.quantizers.fsq import FiniteScalarQuantizer

VARIANTS = ("DV4x8x8", "DV8x8x8", "DV8x16x16")
_VARIANT = re.compile(r"DV(\d+)x(\d+)x(\d+)")


@dataclass(frozen=True)
class CosmosConfig(FamilyConfig):
    """Architecture of a Cosmos DV tokenizer (defaults: the released DV4x8x8).

    Attributes:
        variant: ``"DV<t>x<s>x<s>"``: temporal and spatial compression (DV4x8x8, DV8x8x8,
            DV8x16x16). Not recorded in the weights: all three have the same tensors.
        channels: base width c (128 released).
        channel_mult: width of each resolution level as a multiple of c.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        z_channels: encoder output / decoder input channels before the 1x1x1 projections.
        levels: FSQ levels; the code has ``len(levels)`` channels.
        patch_size: Haar patch (4 = two wavelet levels).
        legacy_mode: the older placement of the decoder's upsampling (8x variants only).
        native_frames: the clip length the official pipeline works on (information only:
            the model is causal and streams any length).
    """

    family: ClassVar[str] = "cosmos-dv"

    variant: str = "DV4x8x8"
    channels: int = 128
    channel_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    patch_size: int = 4
    legacy_mode: bool = False
    native_frames: int = 17

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "levels", tuple(self.levels))
        match = _VARIANT.fullmatch(self.variant)
        if match is None or match[2] != match[3]:
            raise ConfigError(f"variant must look like DV4x8x8, got {self.variant!r}")
        ups = len(self.channel_mult) - 1
        for name, factor in (("temporal", self.temporal_factor), ("spatial", self.spatial_factor)):
            steps = factor // self.patch_size
            if factor % self.patch_size or steps & (steps - 1) or steps.bit_length() - 1 > ups:
                raise ConfigError(
                    f"{name} compression {factor} needs a power-of-two multiple of the patch "
                    f"size {self.patch_size} and at most {ups} resampling levels"
                )

    @property
    def temporal_factor(self) -> int:
        return int(_VARIANT.fullmatch(self.variant)[1])  # type: ignore[index]

    @property
    def spatial_factor(self) -> int:
        return int(_VARIANT.fullmatch(self.variant)[2])  # type: ignore[index]

    @property
    def widths(self) -> list[int]:
        return [self.channels * m for m in self.channel_mult]

    def down_flags(self) -> list[tuple[bool, bool]]:
        """(spatial, temporal) of encoder level i's downsample, for i < len(channel_mult) - 1."""
        s, t = self._resampling_steps()
        return [(i < s, i < t) for i in range(len(self.channel_mult) - 1)]

    def up_flags(self) -> list[tuple[bool, bool]]:
        """(spatial, temporal) of the decoder upsamples in execution order (level n-1 .. 1)."""
        s, t = self._resampling_steps()
        n = len(self.channel_mult) - 1
        if self.legacy_mode:
            return [(j < s, j < t) for j in range(n)]
        # temporal steps come last; spatial steps go with them, the rest come first
        flags = []
        for j in range(n):
            temporal = j >= n - t
            flags.append((temporal or j < s - t, temporal))
        return flags

    def _resampling_steps(self) -> tuple[int, int]:
        spatial = (self.spatial_factor // self.patch_size).bit_length() - 1
        temporal = (self.temporal_factor // self.patch_size).bit_length() - 1
        return spatial, temporal


class MidBlock(nn.Module):
    """ResBlock, spatial attention, causal temporal attention, ResBlock (keys ``attn_1.0/1``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels)
        self.attn_1 = nn.ModuleList([SpatialAttention(channels), TemporalAttention(channels)])
        self.block_2 = ResBlock(channels, channels)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        x = self.block_1(x, state)
        x = self.attn_1[0](x)
        x = self.attn_1[1](x, state)
        return self.block_2(x, state)  # type: ignore[no-any-return]


class Level(nn.Module):
    """One resolution level: ResBlocks, then an optional resampling block."""

    def __init__(self, blocks: list[ResBlock], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = name
        if resample is not None:
            self.add_module(name, resample)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        for block in self.block:
            x = block(x, state)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x, state)


class CosmosEncoder(nn.Module):
    """(B, 3, T, H, W) -> (B, z_channels, 1 + (T-1)/tau, H/f, W/f)."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        p, widths, n = config.patch_size, config.widths, config.num_res_blocks
        self.patcher3d = HaarPatcher(p)
        self.conv_in = FactorizedConv(3 * p**3, config.channels)
        flags = config.down_flags()
        levels, block_in = [], config.channels
        for i, width in enumerate(widths):
            blocks = [ResBlock(block_in if j == 0 else width, width) for j in range(n)]
            down = HybridDownsample(width, *flags[i]) if i < len(widths) - 1 else None
            levels.append(Level(blocks, down, "downsample"))
            block_in = width
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(block_in)
        self.norm_out = FrameNorm(block_in)
        self.conv_out = FactorizedConv(block_in, config.z_channels)

    def forward(self, video: Tensor, state: StreamState | None = None) -> Tensor:
        x = self.patcher3d(video, first=is_first(self.patcher3d, state))
        x = self.conv_in(x, state)
        for level in self.down:
            x = level(x, state)
        x = self.mid(x, state)
        return self.conv_out(swish(self.norm_out(x)), state)  # type: ignore[no-any-return]


class CosmosDecoder(nn.Module):
    """(B, z_channels, t, h, w) -> (B, 3, 1 + (t-1)*tau, h*f, w*f); ``up.0`` runs last."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        p, widths, n = config.patch_size, config.widths, config.num_res_blocks
        block_in = widths[-1]
        self.conv_in = FactorizedConv(config.z_channels, block_in)
        self.mid = MidBlock(block_in)
        flags = config.up_flags()
        levels: list[Level] = []
        for i in reversed(range(len(widths))):
            blocks = [ResBlock(block_in if j == 0 else widths[i], widths[i]) for j in range(n + 1)]
            j = len(widths) - 1 - i  # execution position
            up = HybridUpsample(widths[i], *flags[j]) if i > 0 else None
            levels.insert(0, Level(blocks, up, "upsample"))
            block_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = FrameNorm(block_in)
        self.conv_out = FactorizedConv(block_in, 3 * p**3)
        self.unpatcher3d = HaarUnpatcher(p)

    def forward(self, z: Tensor, state: StreamState | None = None) -> Tensor:
        x = self.mid(self.conv_in(z, state), state)
        for level in reversed(self.up):
            x = level(x, state)
        x = self.conv_out(swish(self.norm_out(x)), state)
        return self.unpatcher3d(x, first=is_first(self.unpatcher3d, state))  # type: ignore[no-any-return]


class CosmosTokenizer(TokenizerModel):
    """A Cosmos DV tokenizer: video (B, 3, T, H, W) in [-1, 1] <-> FSQ indices in [0, 64000).

    Args:
        config: `CosmosConfig`.

    T must be 1 + k*tau and H, W multiples of the spatial factor f (8 or 16); the index grid
    is (B, 1 + k, H/f, W/f), int64. Causal: ``encode_stream`` equals ``encode`` exactly.
    """

    family: ClassVar[str] = "cosmos-dv"
    config_class: ClassVar[Any] = CosmosConfig
    tiles: ClassVar[bool] = True

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.config = config
        self.temporal_factor = config.temporal_factor
        self.spatial_factor = config.spatial_factor
        code_dim = len(config.levels)
        self.encoder = CosmosEncoder(config)
        self.quant_conv = CausalConv3d(config.z_channels, code_dim, (1, 1, 1))
        self.quantizer = FiniteScalarQuantizer(code_dim, list(config.levels))
        self.post_quant_conv = CausalConv3d(code_dim, config.z_channels, (1, 1, 1))
        self.decoder = CosmosDecoder(config)

    def _check_video(self, video: Tensor, stream: bool = False) -> Tensor:
        video = check_video(video, self.spatial_factor)
        if not stream and (video.shape[2] - 1) % self.temporal_factor:
            raise VqtokError(
                f"a clip needs 1 + k*{self.temporal_factor} frames, got {video.shape[2]}; "
                "pad it by repeating the last frame"
            )
        return video

    def latents(self, video: Tensor, state: StreamState | None = None) -> Tensor:
        """Pre-quantizer latents (B, len(levels), t, h, w) of a valid clip (or stream chunk)."""
        return self.quant_conv(self.encoder(video, state))  # type: ignore[no-any-return]

    def encode(
        self, video: Tensor, allowed: Sequence[Tensor] | None = None, levels: int | None = None
    ) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1], T = 1 + k*tau -> int64 indices (B, 1 + k, H/f, W/f);
        compact ids of the ``allowed`` codes when given (`TokenizerModel.indices_of`)."""
        return self.indices_of(self.latents(self._check_video(video)), allowed, levels)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """int64 (B, t, h, w) -> FSQ codes (B, len(levels), t, h, w) in the decoder's dtype."""
        if indices.ndim != 4:
            raise VqtokError(f"expected indices (B, t, h, w), got shape {tuple(indices.shape)}")
        codes = self.quantizer.indices_to_codes(indices, channel_last=False)
        return codes.to(self.post_quant_conv.conv3d.weight.dtype)

    def decode(self, indices: Tensor) -> Tensor:
        """int64 (B, t, h, w) -> video (B, 3, 1 + (t-1)*tau, h*f, w*f), unclamped."""
        return self.decode_codes(self.indices_to_codes(indices))

    def decode_codes(self, codes: Tensor, state: StreamState | None = None) -> Tensor:
        """FSQ codes (B, len(levels), t, h, w) -> video, unclamped."""
        return self.decoder(self.post_quant_conv(codes), state)  # type: ignore[no-any-return]

    def forward(self, video: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Training pass: (reconstruction, quantizer output with straight-through codes)."""
        out = self.quantize(self.latents(self._check_video(video)))
        return self.decode_codes(out.codes.to(video.dtype)), out

    def encode_stream(
        self, chunks: Iterable[Tensor], allowed: Sequence[Tensor] | None = None,
        levels: int | None = None, tiling: Tiling | None = None,
    ) -> Iterator[Tensor]:
        """Encode consecutive chunks (B, 3, T_i, H, W) of one video, any T_i >= 1 (compact
        ids of the ``allowed`` codes when given).

        Frames are buffered so the network sees 1 + k*tau frames first and multiples of tau
        afterwards; each step yields (B, t, h, w) indices, and their concatenation along dim 1
        equals ``encode`` of the whole video. Frames after the last complete 1 + k*tau are
        dropped, so pad the video first. With ``tiling``, the steps are the shortest ones (1
        frame, then tau) and convolutions run in spatial tiles (`vqtok.families.tiling`);
        norms and attention see whole frames, so the indices are the same.
        """
        state, tau = StreamState(tiling), self.temporal_factor
        pending: Tensor | None = None
        started = False
        for chunk in chunks:
            chunk = self._check_video(chunk, stream=True)
            pending = chunk if pending is None else torch.cat([pending, chunk], dim=2)
            state.video_width = pending.shape[4]
            while True:
                frames = pending.shape[2]
                usable = frames // tau * tau if started else 1 + (frames - 1) // tau * tau
                if tiling is not None:
                    usable = min(usable, tau if started else 1)
                if usable <= 0:
                    break
                yield self.indices_of(self.latents(pending[:, :, :usable], state), allowed,
                                      levels)
                pending, started = pending[:, :, usable:], True

    def decode_stream(
        self, chunks: Iterable[Tensor], tiling: Tiling | None = None
    ) -> Iterator[Tensor]:
        """Decode consecutive index chunks (B, t_i, h, w): 1 + (t_1 - 1)*tau frames for the
        first, t_i*tau after; their concatenation matches ``decode`` within float tolerance.
        With ``tiling``, one latent frame at a time with convolutions in spatial tiles: the
        same frames as an untiled stream of one latent frame per chunk."""
        state = StreamState(tiling)
        for chunk in chunks:
            state.video_width = chunk.shape[3] * self.spatial_factor
            steps = chunk.split(1, dim=1) if tiling is not None else [chunk]
            for step in steps:
                if step.shape[1]:
                    yield self.decode_codes(self.indices_to_codes(step), state)
