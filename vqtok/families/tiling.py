"""Spatial tiling for the causal conv families: large frames in bounded memory, exactly.

A one-shot or chunked pass holds every layer's activations for a whole chunk of frames at
once (17 frames of 1080p: 8-10 GB). Tiled, a model works one frame at a time, layer by layer,
and every layer computes its output in tiles of at most ``Tiling.height x Tiling.width`` video
pixels (scaled to the layer's own grid), each read from the layer's input with the halo its
kernel needs. So the only whole-frame tensors are one frame of the current layer's input and
output, and the causal convolutions' carried frames (`StreamState`).

Why the result is *identical* to an untiled pass, bit for bit:

- every normalisation (`FrameGroupNorm`) still sees the whole frame: its input is the previous
  layer's full output, assembled from tiles before it runs; only convolutions and the swish
  after a norm are tiled;
- a convolution's output element is computed by oneDNN from the same inputs in the same order
  whatever the extent of the tensor it sits in (`vqtok.families.layers.conv3d`), and a tile's
  input is an exact copy of the rows and columns it needs, with the zeros of "same" padding
  added where the tile meets the frame's edge, so every tile equals the matching block of the
  whole-frame convolution;
- processing one frame at a time is the streaming the layers already do exactly;
- nearest-neighbour upsampling is done per tile, from the carried low-resolution frames.

The carried frames of large layers can be kept on disk (``Tiling.spill_dir``): at 4K they are
several GB. They are written once per frame and read back tile by tile.

`StreamState` (what the causal blocks carry from chunk to chunk, tiled or not) lives here too.
Shapes are (B, C, T, H, W) throughout.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError

__all__ = ["SpilledFrames", "StreamState", "Tiling", "conv3d_tiled", "part_slice", "time_tail"]

# carried tensors smaller than this stay in memory even when spilling
_SPILL_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class Tiling:
    """How a model cuts frames into tiles.

    Attributes:
        height, width: a tile's size in video pixels (>= 16); a layer at 1/s of the video's
            resolution uses tiles of height/s x width/s positions (at least 8 x 8).
        spill_dir: a folder for carried frames larger than 8 MB (None: keep them in memory).
    """

    height: int = 512
    width: int = 512
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ConfigError(f"a tile must be at least 16x16 pixels, got "
                              f"{self.height}x{self.width}")


class StreamState:
    """What the causal blocks of one model carry between the chunks of one stream.

    Create one per stream (one video), pass the same object to every chunk's forward, and drop
    it afterwards. Entries are keyed by module identity; a missing entry means "the stream has
    not reached this module yet".
    """

    def __init__(self, tiling: Tiling | None = None) -> None:
        self._carry: dict[int, Tensor | list[Part]] = {}
        self.tiling = tiling  # None: whole frames; else see `vqtok.families.tiling`
        self.video_width: int | None = None  # set by a tiled model: scales the tile per layer

    def tile_at(self, width: int) -> tuple[int, int]:
        """(rows, cols) of a tile for a layer whose grid is ``width`` positions wide."""
        assert self.tiling is not None and self.video_width is not None
        scale = self.video_width / width
        return (max(8, int(self.tiling.height / scale)), max(8, int(self.tiling.width / scale)))

    def take(self, module: nn.Module) -> Tensor | list[Part] | None:
        """Remove and return ``module``'s carried tensor (None at stream start)."""
        return self._carry.pop(id(module), None)

    def put(self, module: nn.Module, value: Tensor | list[Part]) -> None:
        """Store ``value`` for ``module``'s next chunk."""
        self._carry[id(module)] = value

    def started(self, module: nn.Module) -> bool:
        return id(module) in self._carry


class SpilledFrames:
    """A float tensor (B, C, T, H, W) kept in a file; `part_slice` reads parts of it back.

    The file is removed when the object is dropped.
    """

    def __init__(self, tensor: Tensor, folder: str) -> None:
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype
        self.device = tensor.device
        fd, name = tempfile.mkstemp(prefix=".vqtok-carry-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            for t in range(self.shape[2]):  # one frame at a time: no second whole copy
                f.write(tensor[:, :, t].contiguous().cpu().numpy().tobytes())
        self.path = Path(name)

    def read(self, t0: int, t1: int, rows: slice, cols: slice) -> Tensor:
        """Frames t0..t1-1, the given rows and columns, as a new (B, C, t, h, w) tensor."""
        b, c, t, h, w = self.shape
        dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        # stored frame-major: (T, B, C, H, W)
        data = np.memmap(self.path, dtype=dtype, mode="r", shape=(t, b, c, h, w))
        part = np.array(data[t0:t1, :, :, rows, cols])
        del data
        return torch.from_numpy(part).permute(1, 2, 0, 3, 4).to(self.device)

    def __del__(self) -> None:
        self.path.unlink(missing_ok=True)


Part = Tensor | SpilledFrames


def part_slice(part: Part, t0: int, t1: int, rows: slice, cols: slice) -> Tensor:
    """``part[:, :, t0:t1, rows, cols]`` as a tensor, read from disk when spilled."""
    if isinstance(part, SpilledFrames):
        return part.read(t0, t1, rows, cols)
    return part[:, :, t0:t1, rows, cols]


def time_tail(parts: Sequence[Part], start: int, spill_dir: str | None) -> list[Part]:
    """Frames ``start..`` of the time-concatenation of ``parts``, as a list of parts.

    Whole parts are kept as they are (a carried frame is never copied again); a tensor cut at
    ``start`` becomes a view. With ``spill_dir``, tensors of 8 MB or more are written to a
    file there, once.
    """
    tail: list[Part] = []
    offset = 0
    for part in parts:
        lo = max(start - offset, 0)
        offset += part.shape[2]
        if lo >= part.shape[2]:
            continue
        if lo:
            everything = slice(None)
            part = part_slice(part, lo, part.shape[2], everything, everything)
        if (spill_dir is not None and isinstance(part, Tensor)
                and part.numel() * part.element_size() >= _SPILL_MIN_BYTES):
            part = SpilledFrames(part, spill_dir)
        tail.append(part)
    return tail


@dataclass(frozen=True)
class _Window:
    """Where the (padded, enlarged) input rows ``start..stop-1`` of one tile come from."""

    source: slice  # rows of the stored (not enlarged) input
    offset: int  # first wanted row within the enlarged source rows
    count: int  # wanted rows inside the frame
    before: int  # zero rows above the frame
    after: int  # zero rows below it


def _window(start: int, stop: int, size: int, up: int) -> _Window:
    """Rows ``start..stop-1`` of the input enlarged ``up``-fold (``size * up`` rows, zero
    outside), for a frame whose stored input has ``size`` rows."""
    lo, hi = max(start, 0), min(stop, size * up)
    source = slice(lo // up, (hi - 1) // up + 1)
    return _Window(source, lo - source.start * up, hi - lo, lo - start, stop - hi)


def conv3d_tiled(
    parts: Sequence[Part],
    frames: int,
    conv: object,
    tile: tuple[int, int],
    upsample: int = 1,
) -> Tensor:
    """A `CausalConv3d` over the time-concatenation of ``parts``, tile by tile.

    Args:
        parts: consecutive pieces (B, C, T_i, h, w) of the layer's input, front padding
            included; spatially the input *before* nearest ``upsample``-fold enlargement.
        frames: use the first ``frames`` frames of the concatenation (a whole number of
            outputs: (n_out - 1) * stride + kt).
        conv: the `CausalConv3d` (its weight, bias, kernel, stride, padding).
        tile: (rows, cols) of output positions per tile.

    Returns:
        (B, C_out, n_out, H', W'), equal to the untiled convolution.
    """
    from vqtok.families.layers import conv3d

    weight, bias = conv.weight, conv.bias  # type: ignore[attr-defined]
    (kt, kh, kw), (st, sh, sw) = conv.kernel, conv.stride  # type: ignore[attr-defined]
    ph, pw = conv.padding[1], conv.padding[2]  # type: ignore[attr-defined]
    b, _, _, h, w = parts[0].shape
    h_in, w_in = h * upsample, w * upsample
    h_out, w_out = (h_in + 2 * ph - kh) // sh + 1, (w_in + 2 * pw - kw) // sw + 1
    n_out = (frames - kt) // st + 1
    if kh == kw == 1:
        # oneDNN computes 1x1 convolutions by a matrix product whose blocking depends on the
        # frame's extent: only a whole frame gives the untiled pass's last bits
        tile = (h_out, w_out)
        whole = [part for part in parts if part.shape[2]]
        if kt == 1 and upsample == 1 and len(whole) == 1 and isinstance(whole[0], Tensor):
            # a pointwise conv of one stored tensor: no halo, no carried frame, no copy
            return conv3d(whole[0][:, :, :frames], weight, bias, (st, sh, sw), (0, 0, 0))
    out = torch.empty(b, weight.shape[0], n_out, h_out, w_out, dtype=weight.dtype,
                      device=weight.device)
    for r0 in range(0, h_out, tile[0]):
        r1 = min(h_out, r0 + tile[0])
        rows = _window(r0 * sh - ph, (r1 - 1) * sh - ph + kh, h, upsample)
        for c0 in range(0, w_out, tile[1]):
            c1 = min(w_out, c0 + tile[1])
            cols = _window(c0 * sw - pw, (c1 - 1) * sw - pw + kw, w, upsample)
            piece = _gather(parts, frames, rows, cols, upsample)
            out[:, :, :, r0:r1, c0:c1] = conv3d(piece, weight, bias, (st, sh, sw), (0, 0, 0))
    return out


def _gather(parts: Sequence[Part], frames: int, rows: _Window, cols: _Window, up: int) -> Tensor:
    """The input block one tile needs: frames 0..frames-1, enlarged, cropped and zero-padded,
    written into one new contiguous tensor."""
    first = parts[0]
    block = torch.empty(first.shape[0], first.shape[1], frames,
                        rows.before + rows.count + rows.after,
                        cols.before + cols.count + cols.after, dtype=first.dtype,
                        device=first.device)
    # zeros only where the tile runs past the frame's edge
    block[:, :, :, : rows.before].zero_()
    block[:, :, :, rows.before + rows.count :].zero_()
    block[:, :, :, :, : cols.before].zero_()
    block[:, :, :, :, cols.before + cols.count :].zero_()
    inside = block[:, :, :, rows.before : rows.before + rows.count,
                   cols.before : cols.before + cols.count]
    offset = 0
    for part in parts:
        take = min(part.shape[2], frames - offset)
        if take > 0:
            piece = part_slice(part, 0, take, rows.source, cols.source)
            if up > 1:
                piece = _enlarge(piece, up, rows, cols)
            inside[:, :, offset : offset + take] = piece
        offset += part.shape[2]
    return block


def _enlarge(x: Tensor, up: int, rows: _Window, cols: _Window) -> Tensor:
    """Nearest ``up``-fold enlargement of ``x`` (B, C, T, h, w), cropped to the window, as a
    broadcast view (no copy)."""
    b, c, t, h, w = x.shape
    x = x[:, :, :, :, None, :, None].expand(b, c, t, h, up, w, up)
    x = x.reshape(b, c, t, h * up, w * up)
    return x[:, :, :, rows.offset : rows.offset + rows.count,
             cols.offset : cols.offset + cols.count]
