"""Open-MAGVIT2 video tokenizer (LFQ, 2^18 codes), family ``"open-magvit2-video"``.

Open-MAGVIT2 (Luo et al., arXiv 2409.04410; TencentARC SEED-Voken) re-implements MAGVIT-v2
(Yu et al., arXiv 2310.05737): a 3-D conv encoder with causal zero padding in time and strided
downsampling, lookup-free quantization of 18 channels (one bit each), and a decoder whose
GroupNorms are modulated by statistics of the codes (adaptive GroupNorm) and that upsamples by
depth-to-space. 17 frames at 128x128 become 5x16x16 tokens.

Re-implemented from the architecture description in
``tests/fixtures/open-magvit2-video/README.md`` and checked against the reference's activations,
indices and outputs. Its GroupNorms pool statistics over all frames of the clip, so the model is
not causal: it declares the 17-frame window it was trained on, and long videos are encoded as
independent windows [0:17], [17:34], ... (as the official scripts do); each full window gives 5
latent frames, and decode cuts the index grid back into windows of 5.

Index order: the release packs bit d of a token from channel d (channel 0 least significant),
so the quantizer is `LookupFreeQuantizer` with ``bit_order="lsb"`` (simpler than permuting
the latent channels of three layers in the converter).

Parameter names are the release's with the ``.conv_1`` level of its conv wrapper removed
(`vqtok.convert` maps them); the causal zero-padded conv is
`vqtok.families.layers.CausalConv3d`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.errors import ConfigError, VqtokError
from vqtok.families.base import FamilyConfig, TokenizerModel, check_video
from vqtok.families.layers import CausalConv3d
from vqtok.quantizers.base import QuantizerOutput
from vqtok.quantizers.lfq import LookupFreeQuantizer

GROUPS = 32
EPS = 1e-6


@dataclass(frozen=True)
class Magvit2Config(FamilyConfig):
    """Architecture of the Open-MAGVIT2 video tokenizer (defaults: the released model).

    Attributes:
        ch: base width (128 released; a multiple of 32, the GroupNorm group count).
        ch_mult: width of each level as a multiple of ``ch``; a level with multiplier 1
            downsamples space only, the others time and space (the last level: none).
        num_res_blocks: ResBlocks per level and in the middle block.
        z_channels: latent channels = LFQ bits (vocabulary 2^z_channels).
        window: frames of the independent windows a long video is cut into.
        native_size: (H, W) the model was trained at (information only).
    """

    family: ClassVar[str] = "open-magvit2-video"

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 4
    z_channels: int = 18
    window: int = 17
    native_size: tuple[int, int] = (128, 128)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "native_size", tuple(self.native_size))
        if self.ch < GROUPS or any(self.ch * m % GROUPS for m in self.ch_mult):
            raise ConfigError(f"every width must be a multiple of {GROUPS}, got ch={self.ch}")
        if len(self.ch_mult) < 2 or self.num_res_blocks < 1 or not 1 <= self.z_channels <= 30:
            raise ConfigError("need >= 2 levels, >= 1 ResBlock and 1..30 latent channels")
        if (self.window - 1) % self.temporal_factor:
            raise ConfigError(f"window must be 1 + k*{self.temporal_factor}, got {self.window}")

    @property
    def widths(self) -> list[int]:
        return [self.ch * m for m in self.ch_mult]

    def temporal_down(self, level: int) -> bool:
        """Whether encoder level ``level``'s downsample (and decoder level ``level + 1``'s
        upsample) also works in time."""
        return self.ch_mult[level] != 1

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_down(i) for i in range(len(self.ch_mult) - 1))

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def swish(x: Tensor) -> Tensor:
    # x * sigmoid(x) as the release computes it (F.silu differs in the last bits)
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) over (C/32, T, H, W): statistics span all frames of the clip."""
    return nn.GroupNorm(GROUPS, channels, eps=EPS)


def conv(cin: int, cout: int, kernel: int, stride: tuple[int, int, int] = (1, 1, 1),
         bias: bool = True) -> CausalConv3d:
    """Causal conv with zero padding: kt - 1 zero frames in front, k // 2 zeros around H, W."""
    return CausalConv3d(cin, cout, kernel, stride, temporal_pad="zeros", bias=bias)


class ResBlock(nn.Module):
    """(GN, swish, conv 3x3x3 without bias) twice, plus a 1x1x1 ``nin_shortcut`` when the
    widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = conv(cin, cout, 3, bias=False)
        self.norm2 = group_norm(cout)
        self.conv2 = conv(cout, cout, 3, bias=False)
        self.nin_shortcut = conv(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, scaled and shifted per sample from statistics of the codes.

    scale = gamma(sqrt(var(q) + 1e-6)) and shift = beta(mean(q)), with the mean and the
    unbiased variance of each code channel over all its (t, h, w) positions.
    """

    def __init__(self, z_channels: int, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: Tensor, codes: Tensor) -> Tensor:
        flat = codes.flatten(2)  # (B, D, t, h, w) -> (B, D, t*h*w)
        scale = self.gamma((flat.var(dim=-1) + EPS).sqrt())
        shift = self.beta(flat.mean(dim=-1))
        y = F.group_norm(x, GROUPS, eps=EPS)
        return y * scale[:, :, None, None, None] + shift[:, :, None, None, None]


class Upsampler(nn.Module):
    """conv C -> C*bt*bh*bw, depth-to-space with the sub-position as the OUTER channel factor
    (not pixel_shuffle's order), then drop frame 1 when upsampling time (T -> 2T - 1)."""

    def __init__(self, channels: int, factor: tuple[int, int, int]) -> None:
        super().__init__()
        self.factor = factor
        self.conv1 = conv(channels, channels * factor[0] * factor[1] * factor[2], 3)

    def forward(self, x: Tensor) -> Tensor:
        bt, bh, bw = self.factor
        x = rearrange(
            self.conv1(x), "b (i j k c) t h w -> b c (t i) (h j) (w k)", i=bt, j=bh, k=bw
        )
        if bt > 1:  # the second copy of frame 0 has no input frame behind it
            x = torch.cat([x[:, :, :1], x[:, :, 2:]], dim=2)
        return x


class DownLevel(nn.Module):
    """An encoder level: ResBlocks, then the strided conv (none on the last level)."""

    def __init__(self, blocks: list[ResBlock], downsample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    """A decoder level after its adaptive norm: ResBlocks, then the upsampler (not on level 0)."""

    def __init__(self, blocks: list[ResBlock], upsample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Magvit2Encoder(nn.Module):
    """(B, 3, T, H, W) -> latents (B, z, 1 + (T-1)//4, H/8, W/8) (released config)."""

    def __init__(self, config: Magvit2Config) -> None:
        super().__init__()
        widths, n = config.widths, config.num_res_blocks
        self.conv_in = conv(3, config.ch, 3, bias=False)
        levels, block_in = [], config.ch
        for i, width in enumerate(widths):
            blocks = [ResBlock(block_in if j == 0 else width, width) for j in range(n)]
            stride = (2 if config.temporal_down(i) else 1, 2, 2)
            down = conv(width, width, 3, stride) if i < len(widths) - 1 else None
            levels.append(DownLevel(blocks, down))
            block_in = width
        self.down = nn.ModuleList(levels)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in) for _ in range(n))
        self.norm_out = group_norm(block_in)
        self.conv_out = conv(block_in, config.z_channels, 1)

    def forward(self, video: Tensor) -> Tensor:
        x = self.conv_in(video)
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))  # type: ignore[no-any-return]


class Magvit2Decoder(nn.Module):
    """codes (B, z, t, h, w) -> video (B, 3, 1 + 4(t-1), 8h, 8w), unbounded; ``up.0`` runs last."""

    def __init__(self, config: Magvit2Config) -> None:
        super().__init__()
        widths, n, z = config.widths, config.num_res_blocks, config.z_channels
        block_in = widths[-1]
        self.conv_in = conv(z, block_in, 3)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in) for _ in range(n))
        adaptive: list[AdaptiveGroupNorm] = []
        levels: list[UpLevel] = []
        for i in reversed(range(len(widths))):
            adaptive.insert(0, AdaptiveGroupNorm(z, block_in))
            blocks = [ResBlock(block_in if j == 0 else widths[i], widths[i]) for j in range(n)]
            factor = (2 if config.temporal_down(i - 1) else 1, 2, 2)
            up = Upsampler(widths[i], factor) if i > 0 else None
            levels.insert(0, UpLevel(blocks, up))
            block_in = widths[i]
        self.adaptive = nn.ModuleList(adaptive)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = conv(block_in, 3, 3)

    def forward(self, codes: Tensor) -> Tensor:
        x = self.conv_in(codes)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](self.adaptive[i](x, codes))
        return self.conv_out(swish(self.norm_out(x)))  # type: ignore[no-any-return]


class Magvit2Tokenizer(TokenizerModel):
    """Open-MAGVIT2 video: video (B, 3, T, H, W) in [-1, 1] <-> LFQ indices in [0, 2^18).

    Args:
        config: `Magvit2Config`.

    Not causal: a clip is encoded in independent windows of ``window`` (17) frames. A window
    of 1 + 4k frames gives 1 + k latent frames (any length works, as in the reference: 10
    frames give 3 latent frames, which decode to 9). H and W should be multiples of 8.
    Indices are int64 (B, t, h, w).
    """

    family: ClassVar[str] = "open-magvit2-video"
    config_class: ClassVar[Any] = Magvit2Config
    # every GroupNorm (and the decoder's code statistics) pools a whole window of frames, so
    # no tile sees what the untiled pass sees, and holding the window is the memory itself
    untiled_why: ClassVar[str] = ("its norms pool statistics over a whole window of frames, "
                                  "so no tile can give the untiled indices")

    def __init__(self, config: Magvit2Config) -> None:
        super().__init__()
        self.config = config
        self.temporal_factor = config.temporal_factor
        self.spatial_factor = config.spatial_factor
        self.window = config.window
        self.latent_window = 1 + (config.window - 1) // config.temporal_factor
        self.encoder = Magvit2Encoder(config)
        self.quantizer = LookupFreeQuantizer(
            config.z_channels, 2**config.z_channels, codebook_scale=1.0, bit_order="lsb"
        )
        self.decoder = Magvit2Decoder(config)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the index grid: windows of ``window`` frames, encoded independently."""
        full, rest = divmod(frames, self.config.window)
        t = full * self.latent_window + (1 + (rest - 1) // self.temporal_factor if rest else 0)
        return t, height // self.spatial_factor, width // self.spatial_factor

    def latents(self, video: Tensor) -> Tensor:
        """Pre-quantizer latents (B, z, t, h, w) of ONE window (B, 3, T <= window, H, W)."""
        return self.encoder(check_video(video, self.spatial_factor))  # type: ignore[no-any-return]

    def encode(
        self, video: Tensor, allowed: Sequence[Tensor] | None = None, levels: int | None = None
    ) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> int64 indices (B, t, H/8, W/8), window by window;
        compact ids of the ``allowed`` codes when given (`TokenizerModel.indices_of`)."""
        video = check_video(video, self.spatial_factor)
        windows = video.split(self.config.window, dim=2)
        return torch.cat([self.indices_of(self.latents(w), allowed, levels) for w in windows],
                         dim=1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """int64 (B, t, h, w) -> codes (B, z, t, h, w) in {-1, +1}, the decoder's dtype."""
        if indices.ndim != 4:
            raise VqtokError(f"expected indices (B, t, h, w), got shape {tuple(indices.shape)}")
        codes = self.quantizer.indices_to_codes(indices, channel_last=False)
        return codes.to(self.decoder.conv_in.weight.dtype)

    def decode(self, indices: Tensor) -> Tensor:
        """int64 (B, t, h, w) -> video (B, 3, T, 8h, 8w), unclamped; windows of 5 latent
        frames decode independently (5 -> 17 frames, a last partial t' -> 1 + 4(t' - 1))."""
        chunks = self.indices_to_codes(indices).split(self.latent_window, dim=2)
        return torch.cat([self.decoder(c) for c in chunks], dim=2)

    def forward(self, video: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Training pass on one window: (reconstruction, quantizer output)."""
        out = self.quantize(self.latents(video))
        return self.decoder(out.codes.to(video.dtype)), out

    def encode_stream(
        self, chunks: Iterable[Tensor], allowed: Sequence[Tensor] | None = None,
        levels: int | None = None,
    ) -> Iterator[Tensor]:
        """Encode consecutive chunks (B, 3, T_i, H, W): each full window as soon as it is
        complete, the rest at the end; the concatenation equals ``encode`` of the whole."""
        for window in _windows(chunks, self.config.window, dim=2):
            yield self.indices_of(self.latents(window), allowed, levels)

    def decode_stream(self, chunks: Iterable[Tensor]) -> Iterator[Tensor]:
        """Decode consecutive index chunks (B, t_i, h, w) window by window; the concatenation
        equals ``decode`` of all indices."""
        for window in _windows(chunks, self.latent_window, dim=1):
            yield self.decoder(self.indices_to_codes(window))


def _windows(chunks: Iterable[Tensor], size: int, dim: int) -> Iterator[Tensor]:
    """Regroup consecutive chunks along ``dim`` into pieces of ``size`` (the last: the rest)."""
    pending: Tensor | None = None
    for chunk in chunks:
        pending = chunk if pending is None else torch.cat([pending, chunk], dim=dim)
        while pending.shape[dim] >= size:
            yield pending.narrow(dim, 0, size)
            pending = pending.narrow(dim, size, pending.shape[dim] - size)
    if pending is not None and pending.shape[dim]:
        yield pending
