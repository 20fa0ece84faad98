"""Training footage: decoded clips held in memory, random clips sampled from them.

Footage is decoded once, in worker threads, at a fixed working resolution (short side
``short_side``), and kept as uint8 arrays: a 190-frame 256-pixel clip is ~37 MB, so a few
minutes of footage fit in memory and sampling a batch costs a few array copies. A batch is then
built from a per-step seed (`sample_batch(step)`), so a resumed run sees exactly the batches an
uninterrupted run would have seen, whatever the prefetch depth.

Still images (one decoded frame) become clips by panning and zooming a crop window across them
(Ken Burns style), which gives smooth synthetic motion over real texture.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqtok.errors import ConfigError, VideoError, VqtokError
from vqtok.io.pixels import frames_to_clip
from vqtok.io.video import read_frames

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".ts"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ClipSpec:
    """What a training clip looks like.

    Attributes:
        frames: F, frames per clip (1 + k * tau for the model).
        size: side of the square crop, pixels.
        strides: temporal strides to draw from (2 = every other frame; 0 = one frame held for
            the whole clip, a still scene, where any change in the output is flicker).
        flip: random horizontal flips.
        grey: probability that a clip is made grey (its luma in every channel), so that the
            model learns to give grey footage back without colour.
    """

    frames: int
    size: int
    strides: tuple[int, ...] = (1,)
    flip: bool = True
    grey: float = 0.0


@dataclass
class Footage:
    """One decoded source: uint8 frames (T, H, W, 3) and where they came from."""

    name: str
    frames: np.ndarray

    @property
    def is_still(self) -> bool:
        return self.frames.shape[0] == 1


def find_sources(paths: Sequence[str | Path]) -> list[Path]:
    """Video and image files under ``paths`` (files or directories, recursive), sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [
                f
                for f in sorted(p.rglob("*"))
                if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
            ]
        elif p.is_file():
            found.append(p)
        else:
            raise VideoError("no such file or directory", p)
    if not found:
        raise ConfigError(f"no video or image files found in {', '.join(map(str, paths))}")
    return found


def load_footage(
    paths: Sequence[str | Path],
    short_side: int,
    max_frames: int | None = None,
    workers: int = 2,
    on_skip: Callable[[str], None] | None = None,
) -> list[Footage]:
    """Decode every source (threads in parallel) at ``short_side`` pixels on the short side.

    A source that cannot be decoded (damaged, not a video, unreadable) is skipped, like
    ``vqtok encode`` does: ``on_skip`` gets a line ``"<path>: <reason>; skipped"``.

    Raises:
        VideoError: no source could be decoded (naming the first one's reason).
    """

    def decode(path: Path) -> Footage | VqtokError:
        try:
            windows = list(
                read_frames(path, short_side=short_side, max_frames=max_frames, window=64)
            )
        except VqtokError as e:
            return e if e.path is not None else VqtokError(e.message, path)
        return Footage(path.name, np.concatenate(windows, axis=0))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(decode, find_sources(paths)))
    footage = [item for item in decoded if isinstance(item, Footage)]
    failed = [item for item in decoded if not isinstance(item, Footage)]
    if not footage:
        first = failed[0]
        raise VideoError(
            f"none of the {len(failed)} file(s) could be read (first: {first.message})",
            first.path,
        )
    for error in failed:
        if on_skip is not None:
            on_skip(f"{error}; skipped")
    return footage


def split_holdout(
    footage: list[Footage], holdout_frames: int
) -> tuple[list[Footage], list[Footage]]:
    """Hold out the last ``holdout_frames`` of every video (stills are all training).

    Returns:
        (training footage, held-out footage); a video shorter than 2 * holdout_frames is kept
        whole for training.
    """
    train, held = [], []
    for item in footage:
        t = item.frames.shape[0]
        if holdout_frames > 0 and not item.is_still and t >= 2 * holdout_frames:
            train.append(Footage(item.name, item.frames[: t - holdout_frames]))
            held.append(Footage(item.name, item.frames[t - holdout_frames :]))
        else:
            train.append(item)
    return train, held


def _crop_video_clip(item: Footage, spec: ClipSpec, g: torch.Generator) -> Tensor:
    t, h, w, _ = item.frames.shape
    strides = [s for s in spec.strides if (spec.frames - 1) * s < t] or [1]
    stride = strides[int(torch.randint(len(strides), (1,), generator=g))]
    span = (spec.frames - 1) * stride + 1  # 1 for a held frame (stride 0)
    if span > t or h < spec.size or w < spec.size:
        raise ConfigError(
            f"{item.name}: {t} frames of {h}x{w} cannot give a {spec.frames}-frame "
            f"{spec.size}px clip; lower clip_frames / crop_size or raise short_side"
        )
    t0 = int(torch.randint(t - span + 1, (1,), generator=g))
    y0 = int(torch.randint(h - spec.size + 1, (1,), generator=g))
    x0 = int(torch.randint(w - spec.size + 1, (1,), generator=g))
    rows = np.arange(spec.frames) * stride + t0  # (F,) frame numbers; all t0 when held
    clip = item.frames[rows, y0 : y0 + spec.size, x0 : x0 + spec.size]
    return frames_to_clip(clip)


def _pan_still_clip(item: Footage, spec: ClipSpec, g: torch.Generator) -> Tensor:
    """A clip that pans and zooms a crop window linearly across a still image."""
    image = frames_to_clip(item.frames)[:, 0]  # (3, H, W)
    h, w = image.shape[1:]
    side = min(h, w)
    u = torch.rand(6, generator=g, dtype=torch.float64).tolist()
    scales = [side * (0.5 + 0.5 * u[0]), side * (0.5 + 0.5 * u[1])]  # window side, start / end
    frames = []
    for i in range(spec.frames):
        a = i / max(spec.frames - 1, 1)
        s = scales[0] + a * (scales[1] - scales[0])
        cy = s / 2 + (u[2] + a * (u[3] - u[2])) * (h - s)
        cx = s / 2 + (u[4] + a * (u[5] - u[4])) * (w - s)
        y0, x0, si = int(cy - s / 2), int(cx - s / 2), max(1, int(s))
        window = image[:, y0 : y0 + si, x0 : x0 + si].unsqueeze(0)
        frames.append(
            F.interpolate(
                window,
                size=(spec.size, spec.size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
        )
    return torch.stack(frames, dim=1).clamp(-1, 1)  # (3, F, size, size)


def sample_clip(item: Footage, spec: ClipSpec, g: torch.Generator) -> Tensor:
    """One random clip (3, F, size, size) float32 in [-1, 1] from ``item``."""
    clip = _pan_still_clip(item, spec, g) if item.is_still else _crop_video_clip(item, spec, g)
    return _grey(_flip(clip, spec, g), spec, g)


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)  # BT.601, as video decoders use


def _grey(clip: Tensor, spec: ClipSpec, g: torch.Generator) -> Tensor:
    """``clip`` (3, F, H, W) with its luma in all three channels, with probability
    ``spec.grey`` (no random draw at all when it is 0, so other runs' batches stay the same)."""
    if spec.grey > 0 and float(torch.rand((), generator=g)) < spec.grey:
        clip = (clip * _LUMA).sum(0, keepdim=True).expand_as(clip).contiguous()
    return clip


def _flip(clip: Tensor, spec: ClipSpec, g: torch.Generator) -> Tensor:
    """``clip`` mirrored left-right with probability 1/2 when ``spec.flip``."""
    if spec.flip and bool(torch.randint(2, (1,), generator=g)):
        clip = clip.flip(-1)
    return clip


class ClipSampler:
    """Random training batches, reproducible per step.

    Sources are drawn in proportion to their frame count (stills count as ``still_weight``
    frames), so a long video is not drowned by many photos; with ``frame_cap`` > 0 a source
    counts at most that many frames, so one long film does not drown the other videos.

    Args:
        footage: training sources.
        spec: clip shape.
        batch_size: clips per batch.
        seed: base seed; batch ``step`` depends only on (seed, step).
        image_every: > 0: batch ``step`` is an image batch when ``(step + 1) % image_every ==
            0``: one-frame crops (B', 3, 1, S, S), cut at native scale from a random frame of a
            video or from a still (not panned).
        image_size: side S of an image step's crops (0 = ``spec.size``); B' is
            ``batch_size * spec.frames * (spec.size / S) ** 2`` rounded (at least 1), so an image
            step holds about as many pixels as a clip step.
        frame_cap: > 0: the most frames a source counts for when drawing sources.
    """

    def __init__(
        self,
        footage: list[Footage],
        spec: ClipSpec,
        batch_size: int,
        seed: int = 0,
        still_weight: float = 32.0,
        image_every: int = 0,
        image_size: int = 0,
        frame_cap: int = 0,
    ) -> None:
        if not footage:
            raise ConfigError("no training footage")
        self.footage, self.spec, self.batch_size, self.seed = footage, spec, batch_size, seed
        self.image_every = image_every
        self.image_spec = replace(spec, frames=1, strides=(1,), size=image_size or spec.size)
        pixels = batch_size * spec.frames * spec.size**2
        self.image_count = max(1, round(pixels / self.image_spec.size**2))
        cap = frame_cap or float("inf")
        weights = [still_weight if f.is_still else float(min(f.frames.shape[0], cap))
                   for f in footage]
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def is_image_step(self, step: int) -> bool:
        """Whether batch ``step`` is made of one-frame crops (see ``image_every``)."""
        return self.image_every > 0 and step >= 0 and (step + 1) % self.image_every == 0

    def sample_batch(self, step: int) -> Tensor:
        """Batch for training step ``step``: (B, 3, F, size, size) float32 in [-1, 1]
        (an image step: (B', 3, 1, S, S), see ``image_size``)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if self.is_image_step(step):
            spec = self.image_spec
            picks = torch.multinomial(self.weights, self.image_count, replacement=True, generator=g)
            return torch.stack([_flip(_crop_video_clip(self.footage[int(i)], spec, g), spec, g)
                                for i in picks])
        picks = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
        return torch.stack([sample_clip(self.footage[int(i)], self.spec, g) for i in picks])

    def prefetch(self, start: int, stop: int, depth: int = 4) -> Iterator[tuple[int, Tensor]]:
        """Yield (step, batch) for steps [start, stop), built ``depth`` ahead in a thread."""
        q: queue.Queue[tuple[int, Tensor] | BaseException | None] = queue.Queue(maxsize=depth)
        stop_event = threading.Event()

        def work() -> None:
            try:
                for step in range(start, stop):
                    if stop_event.is_set():
                        return
                    q.put((step, self.sample_batch(step)))
                q.put(None)
            except BaseException as e:  # handed to the consumer, re-raised there
                q.put(e)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_event.set()
            while not q.empty():  # unblock a producer waiting on a full queue
                q.get_nowait()


def heldout_clips(footage: list[Footage], frames: int, size: int) -> list[Tensor]:
    """Deterministic evaluation clips: for each held-out source, consecutive non-overlapping
    ``frames``-frame windows, centre-cropped to ``size`` x ``size``; each (1, 3, F, size, size)."""
    clips = []
    for item in footage:
        t, h, w, _ = item.frames.shape
        y0, x0 = (h - size) // 2, (w - size) // 2
        if y0 < 0 or x0 < 0:
            continue
        for t0 in range(0, t - frames + 1, frames):
            window = item.frames[t0 : t0 + frames, y0 : y0 + size, x0 : x0 + size]
            clips.append(frames_to_clip(window).unsqueeze(0))
    return clips
