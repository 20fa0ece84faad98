"""Building blocks of the NVIDIA Cosmos discrete video tokenizers (arXiv 2501.03575).

Every block is causal in time: convolutions replicate frame 0 in front instead of zero padding,
norms act per frame, temporal attention is masked. So each block can also run on a long video
chunk by chunk: pass the same `vqtok.families.layers.StreamState` to every call, and each block
keeps in it what it needs from earlier chunks (the last input frames of a causal conv, the keys and
values of the temporal attention, whether it has seen the first chunk). ``state=None`` is a
one-shot call. Chunks must keep the temporal strides aligned (the model's encode_stream feeds
1 + k*tau frames first and multiples of tau afterwards).

The convolutions differ from `vqtok.families.layers.CausalConv3d` in their padding (``kt - st``
leading frames, per-layer spatial padding independent of the kernel), so they are defined here; they
share its batch-independent `vqtok.families.layers.conv3d` kernel, which keeps streaming bit-exact.

Module and parameter names mirror the released TorchScript files (``conv3d`` inside a causal
conv, ``norm`` inside a norm, factorised pairs ``.0`` / ``.1``, ``attn_1.0`` / ``attn_1.1``), so a
converted state dict keeps the release's keys and `vqtok.convert` needs no renaming table.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.families.layers import StreamState, conv3d
from vqtok.families.tiling import Part, conv3d_tiled, time_tail


def swish(x: Tensor) -> Tensor:
    # x * sigmoid(x) exactly as the release computes it (F.silu differs in the last bits)
    return x * torch.sigmoid(x)


def is_first(module: nn.Module, state: StreamState | None) -> bool:
    """Whether ``module`` is about to see the first frames of the video; marks it started."""
    if state is None:
        return True
    first = not state.started(module)
    state.put(module, torch.empty(0))
    return first


class CausalConv3d(nn.Module):
    """Conv3d that pads time with copies of frame 0 in front and H, W with zeros.

    Args:
        cin, cout: channels.
        kernel: (kt, kh, kw).
        stride: (st, sh, sw).
        padding: zeros added on both sides of H and W.

    (B, cin, T, H, W) -> (B, cout, ceil(T / st), ...): ``kt - st`` frames are prepended, which
    are copies of frame 0 on the first chunk and the previous chunk's last frames afterwards.
    In a tiled stream (``state.tiling``) it runs tile by tile (`vqtok.families.tiling`), with
    the same result.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride)
        self.time_pad = kernel[0] - stride[0]
        self.space_pad = padding

    @property
    def carried_frames(self) -> int:
        """Input frames a stream keeps from one chunk for the next (`vqtok.families.memory`)."""
        return self.time_pad

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if state is not None and state.tiling is not None:
            return self._forward_tiled(x, state)
        if self.time_pad:
            front = None if state is None else state.take(self)
            assert front is None or isinstance(front, Tensor)
            if front is None:
                front = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([front, x], dim=2)
            if state is not None:
                state.put(self, x[:, :, x.shape[2] - self.time_pad :].clone())
        p = self.space_pad
        conv = self.conv3d
        stride = (conv.stride[0], conv.stride[1], conv.stride[2])
        return conv3d(x, conv.weight, conv.bias, stride, (0, p, p))

    def _forward_tiled(self, x: Tensor, state: StreamState) -> Tensor:
        """The next chunk of a tiled stream: tile by tile, the carried frames as parts that
        may sit on disk (`vqtok.families.tiling`)."""
        assert state.tiling is not None
        parts: list[Part] = [x]
        if self.time_pad:
            carry = state.take(self)
            assert carry is None or isinstance(carry, list)
            front = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            parts = [front, x] if carry is None else [*carry, x]
        frames = sum(part.shape[2] for part in parts)
        if self.time_pad:
            state.put(self, time_tail(parts, frames - self.time_pad, state.tiling.spill_dir))
        conv, p = self.conv3d, self.space_pad
        spec = SimpleNamespace(weight=conv.weight, bias=conv.bias, kernel=conv.kernel_size,
                               stride=conv.stride, padding=(0, p, p))
        w_out = (x.shape[4] + 2 * p - conv.kernel_size[2]) // conv.stride[2] + 1
        return conv3d_tiled(parts, frames, spec, state.tile_at(w_out))


class FactorizedConv(nn.Sequential):
    """A (1,3,3) conv cin -> cout (zero pad 1) then a causal (3,1,1) conv cout -> cout."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            CausalConv3d(cin, cout, (1, 3, 3), padding=1), CausalConv3d(cout, cout, (3, 1, 1))
        )

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:  # type: ignore[override]
        return self[1](self[0](x, state), state)  # type: ignore[no-any-return]


class FrameNorm(nn.Module):
    """GroupNorm with one group (eps 1e-6, affine) applied to each frame on its own."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class ResBlock(nn.Module):
    """norm -> swish -> factorised conv, twice, plus a 1x1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = FrameNorm(cin)
        self.conv1 = FactorizedConv(cin, cout)
        self.norm2 = FrameNorm(cout)
        self.conv2 = FactorizedConv(cout, cout)
        self.nin_shortcut = CausalConv3d(cin, cout, (1, 1, 1)) if cin != cout else None

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv1(swish(self.norm1(x)), state)
        h = self.conv2(swish(self.norm2(h)), state)
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class _Attention(nn.Module):
    """Single-head attention with 1x1x1 q/k/v/out projections and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = FrameNorm(channels)
        self.q = CausalConv3d(channels, channels, (1, 1, 1))
        self.k = CausalConv3d(channels, channels, (1, 1, 1))
        self.v = CausalConv3d(channels, channels, (1, 1, 1))
        self.proj_out = CausalConv3d(channels, channels, (1, 1, 1))

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = self.norm(x)
        return self.q(n), self.k(n), self.v(n)


class SpatialAttention(_Attention):
    """Each frame's H*W positions attend to each other (softmax(q k^T / sqrt(C)))."""

    def forward(self, x: Tensor) -> Tensor:
        b, _, t, h, w = x.shape
        # contiguous: PyTorch's CPU flash kernel, O(h*w) memory; strided views fall back to
        # the kernel that holds the (h*w)^2 matrix (6.7 GB for 4 frames at 720p)
        q, k, v = (rearrange(z, "b c t h w -> (b t) 1 (h w) c").contiguous()
                   for z in self.qkv(x))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "(b t) 1 (h w) c -> b c t h w", b=b, t=t, h=h, w=w)
        return x + self.proj_out(out)


class TemporalAttention(_Attention):
    """At each (h, w), frame i attends to frames 0..i; earlier chunks' keys/values are cached."""

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        b, _, t, h, w = x.shape
        q, k, v = (rearrange(z, "b c t h w -> (b h w) 1 t c") for z in self.qkv(x))
        past = 0
        if state is not None:
            carried = state.take(self)  # (2, B*h*w, 1, past, C): earlier keys and values
            assert carried is None or isinstance(carried, Tensor)
            if carried is not None:
                past = carried.shape[3]
                k, v = torch.cat([carried[0], k], dim=2), torch.cat([carried[1], v], dim=2)
            state.put(self, torch.stack([k, v]))
        # query i (global index past + i) sees keys 0..past + i
        mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "(b h w) 1 t c -> b c t h w", b=b, h=h, w=w)
        return x + self.proj_out(out)


class HybridDownsample(nn.Module):
    """Learned + average-pooled downsampling by 2 in space and/or time (identity if neither).

    Space: pad one zero row/column at the bottom/right, then conv1 (1,3,3, stride 2) + 2x2 mean.
    Time: prepend a copy of frame 0 (first chunk only), then causal conv2 (3,1,1, stride 2) +
    mean of frame pairs, so T = 1 + 2m becomes 1 + m. Then the 1x1x1 conv3.
    """

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2))
        self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1))
        self.conv3 = CausalConv3d(channels, channels, (1, 1, 1))

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if not (self.spatial or self.temporal):
            return x
        if self.spatial:
            x = F.pad(x, (0, 1, 0, 1))
            x = self.conv1(x, state) + F.avg_pool3d(x, (1, 2, 2), stride=(1, 2, 2))
        if self.temporal:
            if is_first(self, state):
                x = torch.cat([x[:, :, :1], x], dim=2)
            x = self.conv2(x, state) + F.avg_pool3d(x, (2, 1, 1), stride=(2, 1, 1))
        return self.conv3(x)  # type: ignore[no-any-return]


class HybridUpsample(nn.Module):
    """Upsampling by 2 in time and/or space with learned residual refinement (identity if neither).

    Time: repeat every frame twice and drop the very first frame (T -> 2T - 1), then
    x + conv1(x) with a causal (3,1,1) conv. Space: nearest x2, then x + conv2(x) with a (1,3,3)
    conv. Then the 1x1x1 conv3.
    """

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(channels, channels, (3, 1, 1))
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1)
        self.conv3 = CausalConv3d(channels, channels, (1, 1, 1))

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if not (self.spatial or self.temporal):
            return x
        if self.temporal:
            x = x.repeat_interleave(2, dim=2)
            if is_first(self, state):
                x = x[:, :, 1:]
            x = self.conv1(x, state) + x
        if self.spatial:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x = self.conv2(x, state) + x
        return self.conv3(x)  # type: ignore[no-any-return]
