"""Building blocks of causal 3D convolutional video tokenizers, with exact streaming.

The blocks follow the causal-convolution design of MAGVIT-v2 (Yu et al., "Language Model Beats
Diffusion -- Tokenizer is Key to Visual Generation", arXiv 2310.05737) and VidTok (arXiv
2412.13061): every temporal convolution only looks at the current and past frames, and every
normalisation works on one frame at a time, so output frame ``t`` never depends on a later input
frame.

Streaming. Each block's ``forward(x, state=None)`` takes an optional `StreamState`. Without it the
block sees the whole clip (one-shot). With it, the block is fed consecutive time chunks and keeps
what it needs from one chunk to the next in ``state``: a causal convolution carries the input
frames its next output still needs (``kernel - stride`` frames, plus the stride phase when the
length of a chunk is not a multiple of the temporal stride); an upsampler remembers that the
stream has started. Convolution is local, so the concatenated chunk outputs equal the one-shot
output. To make them equal *bit for bit* (and independent of batch size and thread count),
float32 convolutions on CPU always run through oneDNN: PyTorch's default dispatch switches to a
different kernel for batch-1 or small inputs, whose results differ in the last bits; and
`swish` is evaluated so that an element's value does not depend on where it sits in the tensor.

Layout: video tensors are (B, C, T, H, W) throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.errors import ConfigError
from vqtok.families.tiling import Part, StreamState, conv3d_tiled, time_tail

__all__ = [
    "CausalConv3d",
    "Downsample",
    "FrameGroupNorm",
    "LatentNorm",
    "ResBlock",
    "StreamState",
    "Upsample",
    "conv3d",
    "swish",
    "zero_init",
]


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x) (SiLU), the activation of MAGVIT-v2 and taming-style autoencoders.

    For float32 CPU inference (no autograd) it is evaluated in float64 and rounded back:
    PyTorch's CPU kernel computes the SIMD body and the leftover tail of a tensor with different
    ``exp`` implementations, so an element's last bit would depend on its position in the
    flattened tensor, i.e. on batch size, chunk length and thread count. Rounded from float64,
    both agree (about 4x the cost of this cheap op; training keeps the fast float32 kernel).
    """
    if _exact_cpu_path(x):
        return F.silu(x.double()).float()
    return F.silu(x)


def _exact_cpu_path(x: Tensor) -> bool:
    """Whether ``x`` takes the float64-rounded swish: float32 CPU inference (no autograd), not
    under tracing (see `traced`)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not traced())


def traced() -> bool:
    """Whether the model is being traced (``torch.export``, the ONNX exporter built on it, or
    ``torch.compile``): then `conv3d` and `swish` use the portable ``F.conv3d`` / ``F.silu``,
    which a graph can hold (a oneDNN call cannot be traced at all), and the graph's runtime
    brings its own kernels anyway (`vqtok.export`)."""
    return torch.compiler.is_compiling()


def conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> Tensor:
    """3D convolution whose float32 CPU results do not depend on batch size, length or threads.

    Float32 CPU tensors go straight to oneDNN (``torch.mkldnn_convolution``), which computes each
    output element the same way whatever the batch size, number of frames or thread count
    (PyTorch's default dispatch picks a different kernel for batch 1 or small inputs). Anything
    else (CUDA, autocast, other dtypes, a model being `traced`) uses ``F.conv3d``.
    """
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
        and not traced()
    ):
        return torch.mkldnn_convolution(
            x.contiguous(), weight.contiguous(), bias, padding, stride, (1, 1, 1), 1
        )
    return F.conv3d(x, weight, bias, stride, padding)


class CausalConv3d(nn.Module):
    """A 3D convolution that is causal in time and "same"-padded (zeros) in space.

    The clip is padded at the front with ``kt - 1`` frames (copies of frame 0, or zeros), so
    output frame ``j`` sees input frames ``j*st - kt + 1 .. j*st``. With temporal stride ``st``
    and ``kt = st + 1`` (or any ``kt >= st``), a clip of ``1 + k*st`` frames gives ``1 + k``
    frames, and output frame 0 depends only on input frame 0.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: ``k`` (cube) or ``(kt, kh, kw)``; spatial sizes odd.
        stride: ``(st, sh, sw)`` or one int for all three.
        temporal_pad: ``"replicate"`` (copies of the first frame, default) or ``"zeros"``.
        bias: add a learned bias.

    Shapes: (B, C_in, T, H, W) -> (B, C_out, T', ceil(H/sh), ceil(W/sw)) with
    T' = (T - 1) // st + 1 one-shot. Parameters are ``weight`` (C_out, C_in, kt, kh, kw) and
    ``bias`` (C_out,), as in ``nn.Conv3d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        temporal_pad: str = "replicate",
        bias: bool = True,
    ) -> None:
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        if kernel[1] % 2 == 0 or kernel[2] % 2 == 0:
            raise ConfigError(f"spatial kernel sizes must be odd, got {kernel}")
        if kernel[0] < strides[0]:
            raise ConfigError(f"temporal kernel {kernel[0]} is shorter than stride {strides[0]}")
        if temporal_pad not in ("replicate", "zeros"):
            raise ConfigError(f"temporal_pad must be 'replicate' or 'zeros', got {temporal_pad!r}")
        self.kernel: tuple[int, int, int] = (kernel[0], kernel[1], kernel[2])
        self.stride: tuple[int, int, int] = (strides[0], strides[1], strides[2])
        self.temporal_pad = temporal_pad
        self.padding = (0, kernel[1] // 2, kernel[2] // 2)
        conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.weight = conv.weight
        self.bias = conv.bias
        self.out_channels = out_channels

    @property
    def carried_frames(self) -> int:
        """Input frames a stream keeps from one chunk for the next (`vqtok.families.memory`)."""
        return self.kernel[0] - 1

    def _front_pad(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, C, kt - 1 + T, H, W): the causal padding before frame 0."""
        n = self.kernel[0] - 1
        if self.temporal_pad == "replicate":
            pad = x[:, :, :1].expand(-1, -1, n, -1, -1)
        else:
            pad = x.new_zeros(x.shape[0], x.shape[1], n, *x.shape[3:])
        return torch.cat([pad, x], dim=2)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        """Convolve one clip (``state=None``) or the next chunk of a stream."""
        if state is not None and state.tiling is not None:
            return self.forward_tiled(x, state)
        kt, st = self.kernel[0], self.stride[0]
        carry = None if state is None else state.take(self)
        assert carry is None or isinstance(carry, Tensor)
        if carry is None:
            if x.shape[2] == 0:  # the stream has not reached this layer yet
                return self._empty_output(x)
            x = self._front_pad(x)
        else:
            x = torch.cat([carry, x], dim=2)
        frames = x.shape[2]
        n_out = (frames - kt) // st + 1 if frames >= kt else 0
        if state is not None:
            # Input frames from the next output's first tap onwards (at most kt - 1 + st - 1).
            state.put(self, x[:, :, n_out * st :].clone())
        if n_out == 0:
            return self._empty_output(x)
        x = x[:, :, : (n_out - 1) * st + kt]
        return conv3d(x, self.weight, self.bias, self.stride, self.padding)

    def forward_tiled(self, x: Tensor, state: StreamState, upsample: int = 1) -> Tensor:
        """The next chunk of a tiled stream (`vqtok.families.tiling`); ``x`` is enlarged
        ``upsample``-fold (nearest) on the fly, so the carried frames stay small."""
        kt, st = self.kernel[0], self.stride[0]
        carry = state.take(self)
        if carry is None:
            if x.shape[2] == 0:
                return self._empty_output(x, upsample)
            parts: list[Part] = [self._front_pad_view(x), x]
        else:
            assert isinstance(carry, list)
            parts = [*carry, x]
        frames = sum(part.shape[2] for part in parts)
        n_out = (frames - kt) // st + 1 if frames >= kt else 0
        assert state.tiling is not None
        state.put(self, time_tail(parts, n_out * st, state.tiling.spill_dir))
        if n_out == 0:
            return self._empty_output(x, upsample)
        w_out = (x.shape[4] * upsample - 1) // self.stride[2] + 1
        return conv3d_tiled(parts, (n_out - 1) * st + kt, self, state.tile_at(w_out), upsample)

    def _front_pad_view(self, x: Tensor) -> Tensor:
        """The ``kt - 1`` causal padding frames alone, a view where possible."""
        n = self.kernel[0] - 1
        if self.temporal_pad == "replicate":
            return x[:, :, :1].expand(-1, -1, n, -1, -1)
        return x.new_zeros(x.shape[0], x.shape[1], n, *x.shape[3:])

    def _empty_output(self, x: Tensor, upsample: int = 1) -> Tensor:
        h = (x.shape[3] * upsample - 1) // self.stride[1] + 1
        w = (x.shape[4] * upsample - 1) // self.stride[2] + 1
        return x.new_zeros(x.shape[0], self.out_channels, 0, h, w)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (C/G, H, W) of each frame separately, so it never mixes frames.

    A plain ``GroupNorm`` on a (B, C, T, H, W) tensor pools statistics over all T frames, which
    breaks causality (frame 0 would depend on frame T-1) and makes streaming impossible.

    Args:
        num_groups: G, must divide ``num_channels``.
        num_channels: C.
        eps: added to the variance.

    Shapes: (B, C, T, H, W) or (B, C, H, W) -> same shape.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6) -> None:
        if num_groups < 1 or num_channels % num_groups:
            raise ConfigError(f"{num_channels} channels cannot be split into {num_groups} groups")
        super().__init__(num_groups, num_channels, eps=eps, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            return super().forward(x)
        if x.shape[2] == 0:
            return x
        out = rearrange(self._norm_frames(x), "(b t) c h w -> b c t h w", b=x.shape[0])
        return out.contiguous()

    def swish(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        """``swish(self(x))``; for float32 CPU inference in two fewer passes over the activations.

        On that path `swish` runs in float64, so the transpose back to (B, C, T, H, W) and the
        rounding to float32 share one copy; in a tiled stream (``state.tiling``) it runs band
        by band in place, with the same values. Shapes: (B, C, T, H, W) -> same.
        """
        if not _exact_cpu_path(x) or x.ndim != 5 or x.shape[2] == 0:
            return swish(self(x))
        if state is not None and state.tiling is not None:
            normed = self._norm_frames(x)  # (B·T, C, H, W), the only whole-frame copy
            rows = state.tile_at(x.shape[4])[0]
            for r0 in range(0, normed.shape[2], rows):
                band = normed[:, :, r0 : r0 + rows]
                band.copy_(F.silu(band.double()))  # rounds to float32 like .to(float32)
            return rearrange(normed, "(b t) c h w -> b c t h w", b=x.shape[0]).contiguous()
        out = F.silu(self._norm_frames(x).double(), inplace=True)
        out = rearrange(out, "(b t) c h w -> b c t h w", b=x.shape[0])
        return out.to(torch.float32, memory_format=torch.contiguous_format)

    def _norm_frames(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> the normalised frames, (B·T, C, H, W) contiguous."""
        # contiguous: for B = 1 the rearrange is a strided view whose layout depends on T, and
        # group_norm's result would depend on that layout in the last bits
        frames = rearrange(x, "b c t h w -> (b t) c h w").contiguous()
        return F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm, swish, causal conv 3x3x3) twice, plus a skip.

    The skip is a 1x1x1 convolution when the channel count changes, else the identity.

    Args:
        in_channels, out_channels: C_in, C_out.
        groups: GroupNorm groups (must divide both channel counts).
        temporal_pad: padding of the causal convolutions, see `CausalConv3d`.

    Shapes: (B, C_in, T, H, W) -> (B, C_out, T, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, temporal_pad: str = "replicate"
    ) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, temporal_pad=temporal_pad)
        self.norm2 = FrameGroupNorm(groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, temporal_pad=temporal_pad)
        self.skip = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv1(self.norm1.swish(x, state), state)
        h = self.conv2(self.norm2.swish(h, state), state)
        skip = x if self.skip is None else self.skip(x, state)
        return skip + h


class Downsample(nn.Module):
    """Halve H and W (and T, causally, when ``temporal``) with one strided causal 3x3x3 conv.

    Shapes: (B, C, T, H, W) -> (B, C, T', ceil(H/2), ceil(W/2)), T' = (T - 1) // 2 + 1 when
    ``temporal`` (1 + 2k frames -> 1 + k), else T.
    """

    def __init__(
        self, channels: int, spatial: bool = True, temporal: bool = False,
        temporal_pad: str = "replicate",
    ) -> None:
        super().__init__()
        stride = (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1)
        self.conv = CausalConv3d(channels, channels, 3, stride, temporal_pad=temporal_pad)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        return self.conv(x, state)


class Upsample(nn.Module):
    """Double H and W (and T, causally, when ``temporal``): nearest repeat, then causal 3x3x3 conv.

    Temporal upsampling repeats every frame twice and drops the first copy of frame 0, so
    1 + k frames -> 1 + 2k, the inverse of `Downsample`'s frame count. In a stream only the very
    first chunk loses that frame.

    Shapes: (B, C, T, H, W) -> (B, C, T', 2H, 2W), T' = 2T - 1 when ``temporal`` else T.
    """

    def __init__(
        self, channels: int, spatial: bool = True, temporal: bool = False,
        temporal_pad: str = "replicate",
    ) -> None:
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels, 3, temporal_pad=temporal_pad)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if state is not None and state.tiling is not None:
            frames = [self.enlarge(frame, state) for frame in self.repeat_time(x, state)]
            if not frames:
                return self.conv._empty_output(x, 2 if self.spatial else 1)
            return torch.cat(frames, dim=2)
        if self.temporal and x.shape[2] > 0:
            x = x.repeat_interleave(2, dim=2)  # (B, C, T, H, W) -> (B, C, 2T, H, W)
            first_chunk = state is None or not state.started(self)
            if first_chunk:
                x = x[:, :, 1:]
            if state is not None:
                state.put(self, x.new_empty(0))  # marks "stream started"
        if self.spatial:
            # (B, C, T, H, W) -> (B, C, T, H, 2, W, 2) view -> (B, C, T, 2H, 2W): one copy
            b, c, t, h, w = x.shape
            x = x[:, :, :, :, None, :, None].expand(b, c, t, h, 2, w, 2)
            x = x.reshape(b, c, t, 2 * h, 2 * w)
        return self.conv(x, state)

    def repeat_time(self, x: Tensor, state: StreamState) -> list[Tensor]:
        """Tiled streams, step 1: the temporal repeat alone, as a list of one-frame views of
        ``x`` (each frame twice; the stream's very first once), so nothing is copied."""
        frames = list(x.split(1, dim=2))
        if not self.temporal or not frames:
            return frames
        first = not state.started(self)
        state.put(self, x.new_empty(0))
        return [frame for t, frame in enumerate(frames) for _ in range(1 if first and t == 0
                                                                         else 2)]

    def enlarge(self, x: Tensor, state: StreamState) -> Tensor:
        """Tiled streams, step 2: the spatial doubling and the convolution, tile by tile."""
        return self.conv.forward_tiled(x, state, upsample=2 if self.spatial else 1)


class LatentNorm(nn.LayerNorm):
    """LayerNorm over the channels of each latent position (token-local: causal, streamable).

    Shapes: (B, D, t, h, w) -> same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def zero_init(conv: CausalConv3d) -> None:
    """Zero a convolution's weights and bias: the network's branch starts silent."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
