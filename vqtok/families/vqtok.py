"""The vqtok causal 3D tokenizer: causal conv encoder -> quantizer -> causal conv decoder.

The architecture is the MAGVIT-v2 family (Yu et al., arXiv 2310.05737) in its causal form
(VidTok, arXiv 2412.13061; Cosmos Tokenizer, arXiv 2501.03575): a 3D-conv residual encoder that
downsamples space by 8 or 16 and time by 1, 2, 4 or 8, any vqtok quantizer (VQ, EMA VQ, Gumbel,
LFQ, residual VQ, FSQ), and a mirrored decoder. Everything is causal in time and normalises per
frame, so

- a clip of 1 + k*tau frames gives 1 + k latent frames, the first from frame 0 alone;
- a long video can be encoded chunk by chunk (`encode_stream`) with exactly the indices of a
  one-shot encode, in memory bounded by the chunk size.

Temporal downsampling happens in the first log2(tau) encoder stages (cheapest: later stages
see fewer frames); the decoder mirrors it in its last stages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from vqtok.errors import ConfigError, VqtokError
from vqtok.families.base import TokenizerModel
from vqtok.families.deblock import deblock
from vqtok.families.layers import (
    CausalConv3d,
    Downsample,
    FrameGroupNorm,
    LatentNorm,
    ResBlock,
    StreamState,
    Upsample,
    zero_init,
)
from vqtok.families.shortcut import (
    LinearPoolShortcut,
    LinearUnpoolShortcut,
    PoolShortcut,
    UnpoolShortcut,
)
from vqtok.families.tiling import Tiling
from vqtok.families.vqtok_config import TokenizerConfig
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.base import QuantizerOutput

__all__ = ["Decoder", "Encoder", "LatentNorm", "TokenizerConfig", "VideoTokenizer"]

class Encoder(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> latents (B, D, 1 + (T-1)/tau, H/f, W/f)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        self.patch_size = config.patch_size
        self.conv_in = CausalConv3d(3 * config.patch_size**2, widths[0], 3)
        # stage i: num_res_blocks ResBlocks at widths[i], then a Downsample (not after the last)
        self.blocks = nn.ModuleList()
        prev = widths[0]
        for i, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                self.blocks.append(ResBlock(prev, width, groups))
                prev = width
            if i < len(widths) - 1:
                temporal = i < config.temporal_stages
                self.blocks.append(Downsample(width, spatial=True, temporal=temporal))
        self.mid = ResBlock(prev, prev, groups)
        self.norm_out = FrameGroupNorm(groups, prev)
        self.conv_out = CausalConv3d(prev, config.latent_dim, 3)
        self.shortcut: nn.Module | None = None
        sizes = (config.latent_dim, config.spatial_factor, config.temporal_factor)
        if config.shortcut == "linear":
            self.shortcut = LinearPoolShortcut(*sizes)
            zero_init(self.conv_out)  # start as the linear tokenizer
        elif config.shortcut != "none":
            self.shortcut = PoolShortcut(*sizes)

    def forward(self, video: Tensor, state: StreamState | None = None) -> Tensor:
        if state is not None and state.tiling is not None:
            state.video_width = video.shape[4]
            if video.shape[2] > 1:  # tiled: one frame at a time through every layer
                return torch.cat([self(video[:, :, j : j + 1], state)
                                  for j in range(video.shape[2])], dim=2)
        p = self.patch_size
        # space-to-depth: (B, 3, T, H, W) -> (B, 3*p*p, T, H/p, W/p)
        h = self.conv_in(
            rearrange(video, "b c t (h p1) (w p2) -> b (c p1 p2) t h w", p1=p, p2=p), state
        )
        for block in self.blocks:
            h = block(h, state)
        h = self.mid(h, state)
        z = self.conv_out(self.norm_out.swish(h, state), state)
        return z if self.shortcut is None else z + self.shortcut(video, state)


class Decoder(nn.Module):
    """Latents (B, D, t, h, w) -> video (B, 3, 1 + (t-1)*tau, h*f, w*f), unclamped."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        top = widths[-1]
        self.conv_in = CausalConv3d(config.latent_dim, top, 3)
        self.mid = ResBlock(top, top, groups)
        # the encoder's stages in reverse, each followed by an Upsample (not after the last)
        self.blocks = nn.ModuleList()
        prev = top
        for i in reversed(range(len(widths))):
            for _ in range(config.num_res_blocks):
                self.blocks.append(ResBlock(prev, widths[i], groups))
                prev = widths[i]
            if i > 0:
                # undo encoder stage i-1, which halved time iff i-1 < temporal_stages
                temporal = i - 1 < config.temporal_stages
                self.blocks.append(Upsample(prev, spatial=True, temporal=temporal))
        self.norm_out = FrameGroupNorm(groups, prev)
        self.patch_size = config.patch_size
        self.deblock, self.spatial_factor = config.deblock_strengths, config.spatial_factor
        self.conv_out = CausalConv3d(prev, 3 * config.patch_size**2, 3)
        self.shortcut: nn.Module | None = None
        sizes = (config.latent_dim, config.spatial_factor, config.temporal_factor)
        if config.shortcut == "linear":
            self.shortcut = LinearUnpoolShortcut(*sizes)
            zero_init(self.conv_out)  # start as the linear tokenizer
        elif config.shortcut == "both":
            self.shortcut = UnpoolShortcut(*sizes)

    def forward(
        self, codes: Tensor, state: StreamState | None = None, levels: int | None = None
    ) -> Tensor:
        """``levels``: how many residual levels made ``codes`` (None: all); it picks the
        deblocking strength."""
        if state is not None and state.tiling is not None:
            return torch.cat(list(self.frames_tiled(codes, state, levels)), dim=2)
        h = self.mid(self.conv_in(codes, state), state)
        out = self._blocks(h, state)
        video = self._depth_to_space(out)
        if self.shortcut is not None:
            video = video + self.shortcut(codes, state)
        return deblock(video, self._strength(levels), self.spatial_factor)

    def frames_tiled(
        self, codes: Tensor, state: StreamState, levels: int | None = None
    ) -> Iterator[Tensor]:
        """`forward` in a tiled stream, frame by frame (B, 3, 1, H, W): after the last
        temporal upsampling each frame goes to the end alone, so no whole chunk of
        full-resolution frames is alive at once. Drain it before the next chunk."""
        state.video_width = codes.shape[4] * self.spatial_factor
        shortcut = None if self.shortcut is None else self.shortcut(codes, state)
        outs = self._blocks_from(0, self.mid(self.conv_in(codes, state), state), state)
        for j, out in enumerate(outs):
            video = self._depth_to_space(out)
            del out  # nothing of frame j but what is yielded stays alive while j + 1 is made
            if shortcut is not None:
                video = video + shortcut[:, :, j : j + 1]
            frame = deblock(video, self._strength(levels), self.spatial_factor)
            del video
            yield frame
            del frame

    def _depth_to_space(self, out: Tensor) -> Tensor:
        """(B, 3*p*p, T, h, w) -> (B, 3, T, h*p, w*p)."""
        p = self.patch_size
        return rearrange(out, "b (c p1 p2) t h w -> b c t (h p1) (w p2)", p1=p, p2=p)

    def _strength(self, levels: int | None) -> float:
        return self.deblock[-1 if levels is None else min(levels, len(self.deblock)) - 1]

    def _blocks(self, h: Tensor, state: StreamState | None) -> Tensor:
        """The blocks after ``mid``, then the output conv: (B, top, t, h, w) -> (B, 3pp, T, H/p,
        W/p)."""
        for block in self.blocks:
            h = block(h, state)
        return self.conv_out(self.norm_out.swish(h), state)

    def _blocks_from(self, start: int, h: Tensor, state: StreamState) -> Iterator[Tensor]:
        """`_blocks` from block ``start`` on, in a tiled stream, output frame by output frame:
        after a temporal upsampling each of its frames goes through the rest alone, so one
        frame is alive per layer."""
        for i in range(start, len(self.blocks)):
            block = self.blocks[i]
            if isinstance(block, Upsample):
                for frame in block.repeat_time(h, state):
                    yield from self._blocks_from(i + 1, block.enlarge(frame, state), state)
                return
            h = block(h, state)
        yield self.conv_out(self.norm_out.swish(h, state), state)


class VideoTokenizer(TokenizerModel):
    """The vqtok tokenizer (family ``"vqtok"``): video <-> integer indices, causal in time.

    Args:
        config: the architecture, see `TokenizerConfig`.

    Video tensors are (B, 3, T, H, W) float in [-1, 1] with T = 1 + k*tau and H, W multiples
    of ``spatial_factor``; images (B, 3, H, W) are one-frame videos. Indices are int64
    (B, t, h, w), with a trailing axis L when the quantizer has several codebooks / levels.
    ``encode`` and ``decode`` use the modules' current mode: call ``.eval()`` for inference
    (EMA quantizers update their codebooks in training mode).
    """

    family: ClassVar[str] = "vqtok"
    config_class: ClassVar[Any] = TokenizerConfig
    tiles: ClassVar[bool] = True

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.temporal_factor = config.temporal_factor
        self.spatial_factor = config.spatial_factor
        self.encoder = Encoder(config)
        self.pre_quant_norm = LatentNorm(config.latent_dim) if config.uses_pre_quant_norm else None
        self.quantizer = build_quantizer(
            config.quantizer, config.latent_dim, **config.quantizer_options
        )
        self.decoder = Decoder(config)
        if isinstance(config.deblock, tuple) and len(config.deblock) != (self.max_levels or 1):
            raise ConfigError(f"deblock lists one strength per count of residual levels kept, "
                              f"so needs {self.max_levels or 1}, got {len(config.deblock)}")

    def _as_video(self, video: Tensor) -> Tensor:
        """Validate a clip; (B, 3, H, W) images become one-frame videos (B, 3, 1, H, W)."""
        if video.ndim == 4:
            video = video.unsqueeze(2)
        if video.ndim != 5 or video.shape[1] != 3:
            raise VqtokError(f"expected video (B, 3, T, H, W) or images (B, 3, H, W), "
                             f"got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise VqtokError(f"expected a float video in [-1, 1], got dtype {video.dtype}")
        h, w, f = video.shape[3], video.shape[4], self.spatial_factor
        if h % f or w % f:
            raise VqtokError(f"height and width must be multiples of {f}, got {h}x{w}")
        return video

    def _check_frames(self, frames: int) -> None:
        if frames < 1 or (frames - 1) % self.temporal_factor:
            raise VqtokError(
                f"a clip needs 1 + k*{self.temporal_factor} frames, got {frames}; "
                "pad it by repeating the last frame (vqtok.Tokenizer.encode does)"
            )

    def latents(self, video: Tensor) -> Tensor:
        """(B, 3, 1 + k*tau, H, W) in [-1, 1] -> the quantizer's input (B, D, 1 + k, h, w)."""
        return self._latents(self._as_video(video), None)

    def _latents(self, video: Tensor, state: StreamState | None) -> Tensor:
        # follow the weights' dtype (a model loaded with dtype=bfloat16 takes any float video)
        z = self.encoder(video.to(self.encoder.conv_in.weight.dtype), state)
        if self.pre_quant_norm is not None:
            z = self.pre_quant_norm(z)
        return z

    def _quantize(self, z: Tensor, levels: int | None = None) -> QuantizerOutput:
        # Index math in float32 even under bf16/fp16 autocast, so indices do not depend on it.
        with torch.autocast(z.device.type, enabled=False):
            if levels is None:
                return self.quantizer(z.float())
            return self.quantizer(z.float(), levels=self.check_levels(levels))

    @property
    def max_levels(self) -> int | None:
        """L for a residual quantizer (whose first k levels make a coarser code), else None."""
        return self.quantizer.check_levels(None) if self.quantizer.residual else None

    def check_levels(self, levels: int) -> int:
        """Validate a count k of leading residual levels to keep; a `VqtokError` if unusable."""
        if self.max_levels is None:
            raise VqtokError(f"levels needs a residual quantizer; this model's is "
                             f"{self.config.quantizer!r}")
        if not 1 <= levels <= self.max_levels:
            raise VqtokError(f"levels must be in 1..{self.max_levels}, got {levels}")
        return levels

    def encode(
        self, video: Tensor, allowed: Sequence[Tensor] | None = None, levels: int | None = None
    ) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1], T = 1 + k*tau -> int64 indices (B, 1 + k, H/f, W/f[, L]);
        compact ids of the ``allowed`` codes when given, the first ``levels`` residual levels
        only when given (`TokenizerModel.indices_of`)."""
        video = self._as_video(video)
        self._check_frames(video.shape[2])
        return self.indices_of(self._latents(video, None), allowed, levels)

    def decode(self, indices: Tensor) -> Tensor:
        """int64 indices (B, t, h, w[, L]) -> video (B, 3, 1 + (t-1)*tau, h*f, w*f), unclamped."""
        return self.decoder(self._codes(indices), None, self._levels_in(indices))

    def _levels_in(self, indices: Tensor) -> int | None:
        """The number of residual levels in (B, t, h, w, k) indices; None otherwise."""
        return indices.shape[-1] if self.max_levels is not None and indices.ndim == 5 else None

    def _codes(self, indices: Tensor) -> Tensor:
        rank = 5 if self.quantizer.num_codebooks > 1 else 4
        if indices.ndim != rank:
            raise VqtokError(f"expected indices with {rank} dims (B, t, h, w"
                             f"{', L' if rank == 5 else ''}), got shape {tuple(indices.shape)}")
        codes = self.quantizer.indices_to_codes(indices, channel_last=False)
        return codes.to(self.decoder.conv_in.weight.dtype)

    def forward(
        self, video: Tensor, levels: int | None = None
    ) -> tuple[Tensor, QuantizerOutput]:
        """Training pass: (reconstruction (B, 3, T, H, W), quantizer output on the latents).

        ``levels`` runs only the first k residual levels (quantizer dropout).
        """
        video = self._as_video(video)
        self._check_frames(video.shape[2])
        out = self._quantize(self._latents(video, None), levels)
        codes = out.codes.to(self.decoder.conv_in.weight.dtype)
        return self.decoder(codes, None, levels), out

    def encode_stream(
        self, chunks: Iterable[Tensor], allowed: Sequence[Tensor] | None = None,
        levels: int | None = None, tiling: Tiling | None = None,
    ) -> Iterator[Tensor]:
        """Encode consecutive chunks (B, 3, T_i, H, W) of one video, any T_i >= 1.

        Yields index chunks (B, t_i, h, w[, L]) as soon as latent frames are complete (a chunk
        that completes none yields nothing); their concatenation along dim 1 equals
        ``encode`` of the whole video (with the same ``allowed``). Frames after the last
        complete 1 + k*tau are dropped, so pad the video first
        (`vqtok.Tokenizer.encode_stream` does). With ``tiling``, frames are processed one at
        a time in spatial tiles (`vqtok.families.tiling`): the same indices, bounded memory.
        """
        state = StreamState(tiling)
        for chunk in chunks:
            z = self._latents(self._as_video(chunk), state)
            if z.shape[2]:
                yield self.indices_of(z, allowed, levels)

    def decode_stream(
        self, chunks: Iterable[Tensor], tiling: Tiling | None = None
    ) -> Iterator[Tensor]:
        """Decode consecutive index chunks (B, t_i, h, w[, L]) of one video.

        Yields video chunks: 1 + (t_1 - 1)*tau frames for the first, t_i*tau after; their
        concatenation matches ``decode`` of all indices within float tolerance. With
        ``tiling``, one latent frame at a time in spatial tiles, the same frames as an untiled
        stream of one latent frame per chunk.
        """
        state = StreamState(tiling)
        for chunk in chunks:
            if chunk.shape[1] == 0:
                continue
            if tiling is None:
                yield self.decoder(self._codes(chunk), state, self._levels_in(chunk))
                continue
            for piece in chunk.split(1, dim=1):  # a latent frame, yielded frame by frame
                yield from self.decoder.frames_tiled(self._codes(piece), state,
                                                     self._levels_in(piece))
