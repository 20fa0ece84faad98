"""Frame handling that needs no decoder: file facts, picture geometry, frame rate, windows.

`vqtok.io.video` decodes with PyAV and passes each frame on as (seconds from the first frame, frame
duration, (H, W, 3) uint8 RGB); everything after that lives here, so none of it imports PyAV:

- `VideoInfo`: what `vqtok.io.video.probe` learns about a file;
- geometry (`_plan_geometry`): resize (``size=(H, W)`` exactly, aspect not kept, like
  torchvision's ``Resize((H, W))``; or ``short_side=N`` keeping the aspect), then centre-crop H
  and W down to multiples of ``crop_multiple`` (the model's spatial factor);
- frame rate (`_FrameRateResampler`, `as_fps`): resample to ``fps`` by timestamp, dropping or
  repeating frames; without ``fps``, every frame is kept while the stream keeps its nominal
  (average) rate, and a variable-frame-rate stream is resampled to that rate from its first
  gap that is off by more than half a frame, so the clip keeps its duration (a note says so);
- `WindowedFrames`, the base of `vqtok.io.video.VideoReader`: stops after ``max_frames``, yields
  uint8 RGB windows (T_i, H, W, 3) of at most ``window`` frames and warns when the file ends
  early: fewer frames than its exact frame count, or (no exact count, e.g. MKV; or resampled)
  frames that stop showing well before its duration, which also holds for variable frame rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path

import numpy as np

from vqtok.errors import ConfigError, VideoError
from vqtok.io.sources import ClipSource

__all__ = ["MAX_PIXELS", "VideoInfo", "WindowedFrames", "as_fps", "check_picture_size"]

MAX_PIXELS = 8192 * 8192
"""The largest picture (width x height) vqtok reads. 8K (7680x4320) fits with room to spare; a
larger frame costs hundreds of megabytes as RGB and gigabytes in the model."""


@dataclass(frozen=True)
class VideoInfo:
    """What `vqtok.io.video.probe` learns about a video file.

    Attributes:
        path: the file.
        frames: number of video frames; exact when ``frames_exact``, else estimated from the
            duration and frame rate (containers such as MKV or MPEG-TS do not store a count).
        frames_exact: whether ``frames`` comes from the container's frame count.
        fps: average frame rate as an exact fraction (e.g. ``Fraction(30000, 1001)``).
        width, height: size of the displayed picture, i.e. after ``rotation`` is applied.
        duration: seconds.
        rotation: counter-clockwise display rotation in degrees (0, 90, 180 or -90).
        codec: decoder name, e.g. ``"h264"``.
        pix_fmt: stored pixel format, e.g. ``"yuv420p"``.
        has_audio: whether the file also has an audio stream (never read).
        start: presentation time of the first frame in seconds, exact (the origin of a
            clip's ``start`` / ``end``; usually 0).
    """

    path: str
    frames: int
    frames_exact: bool
    fps: Fraction
    width: int
    height: int
    duration: float
    rotation: int
    codec: str
    pix_fmt: str
    has_audio: bool
    start: Fraction = Fraction(0)


def check_picture_size(width: int, height: int, path: str | Path) -> None:
    """Refuse a picture of more than `MAX_PIXELS` before any frame of it is converted.

    Raises:
        VideoError: naming the size and the limit.
    """
    if width * height > MAX_PIXELS:
        raise VideoError(
            f"the picture is {height}x{width} ({width * height / 1e6:.0f} megapixels), more than "
            f"the {MAX_PIXELS / 1e6:.0f} megapixels (8192x8192) vqtok reads; scale it down "
            "first (e.g. ffmpeg -vf scale=-2:2160)",
            path,
        )


@dataclass(frozen=True)
class _Geometry:
    """How one decoded frame becomes an output frame."""

    scaled: tuple[int, int]  # (H, W) after the scaler, displayed orientation
    crop: tuple[int, int]  # (top, left) of the centre crop
    size: tuple[int, int]  # (H, W) of the output frames


def _plan_geometry(
    source: tuple[int, int],
    size: tuple[int, int] | None,
    short_side: int | None,
    crop_multiple: int,
) -> _Geometry:
    """Resize then centre-crop to a multiple of ``crop_multiple``; sizes are (H, W)."""
    if size is not None and short_side is not None:
        raise ConfigError("give either size or short_side, not both")
    if crop_multiple < 1:
        raise ConfigError(f"crop_multiple must be >= 1, got {crop_multiple}")
    height, width = source
    if size is not None:
        if min(size) < 1:
            raise ConfigError(f"size must be positive, got {size}")
        height, width = size
    elif short_side is not None:
        if short_side < 1:
            raise ConfigError(f"short_side must be positive, got {short_side}")
        scale = short_side / min(height, width)
        # the short side is exactly N; the long side rounds to the nearest pixel
        height, width = (
            (short_side, max(1, round(width * scale)))
            if height <= width
            else (max(1, round(height * scale)), short_side)
        )
    out_h, out_w = height // crop_multiple * crop_multiple, width // crop_multiple * crop_multiple
    if out_h == 0 or out_w == 0:
        raise ConfigError(
            f"frames of {height}x{width} are smaller than the crop multiple {crop_multiple}; "
            "use a larger size"
        )
    return _Geometry((height, width), ((height - out_h) // 2, (width - out_w) // 2), (out_h, out_w))


class _FrameRateResampler:
    """Drops / repeats frames so that output frame k shows what is on screen at time k / fps.

    Output slot k takes the last source frame whose timestamp is <= k / fps, with a tolerance
    of a quarter frame so that timestamps rounded to the container's time base (29.97 fps in
    1/90000 s ticks) still land in the right slot.
    """

    def __init__(self, fps: Fraction, source_fps: Fraction) -> None:
        self.step = 1 / fps
        self.tolerance = min(self.step, 1 / source_fps) / 4
        self.slot = 0
        self.previous: np.ndarray | None = None

    def push(self, time: Fraction, frame: np.ndarray) -> list[np.ndarray]:
        """Frames to emit now that a frame with timestamp ``time`` (seconds from start) came."""
        out = self.flush(time)
        self.previous = frame
        return out

    def flush(self, end: Fraction) -> list[np.ndarray]:
        """The previous frame, once per slot before ``end`` (at the end: when it stops showing)."""
        out = []
        while self.previous is not None and self.slot * self.step < end - self.tolerance:
            out.append(self.previous)
            self.slot += 1
        return out


class WindowedFrames:
    """Decoded frames as windows: the decoder-independent half of `vqtok.io.video.VideoReader`.

    A subclass sets the attributes below in its ``__init__`` and implements `_decoded`;
    iterating yields (T_i, H, W, 3) uint8 arrays. See `vqtok.io.video.VideoReader` for their
    meaning.
    """

    path: Path | ClipSource
    info: VideoInfo
    fps: Fraction
    max_frames: int | None
    window: int
    on_warning: Callable[[str], None] | None
    warnings: list[str]
    notes: list[str]
    frames_read: int
    start: Fraction | None  # a clip's range in seconds from the first frame; None: open
    end: Fraction | None
    _video_duration: float  # the whole video's duration in seconds (``info`` is the clip's)
    _resample: bool  # resample to ``fps`` by timestamp; else keep frames at the nominal rate
    _variable: bool  # the last iteration found a variable frame rate and resampled it
    _decoded_until: Fraction  # seconds from the first frame to the end of the last decoded one

    @property
    def expected_frames(self) -> int:
        """Frames an iteration should yield (estimated for a clip, or when the container has no
        count)."""
        if self.start is not None or self.end is not None:
            span = self._clip_end() - (self.start or 0)
            count = max(1, math.ceil(span * self.fps))
        else:
            count = self.info.frames
            if self._resample:
                count = math.ceil(self.info.frames * self.fps / self.info.fps)
        return count if self.max_frames is None else min(count, self.max_frames)

    def _clip_end(self) -> Fraction:
        """Where a clip stops: its end, or the video's end if that comes first."""
        duration = Fraction(self._video_duration).limit_denominator(1_000_000)
        return duration if self.end is None else min(self.end, duration)

    def _check_range(self) -> None:
        """Refuse a clip that starts after the video; make ``info`` describe the clip's frames
        and duration, which the end-of-file checks compare with."""
        self._video_duration = self.info.duration
        if self.start is not None and self.info.duration > 0 and self.start >= self._clip_end():
            raise VideoError(
                f"the clip starts at {float(self.start):g} s but the video lasts "
                f"{self.info.duration:.3f} s; check the clip's start", str(self.path))
        if self.start is not None or self.end is not None:
            self.info = replace(self.info, frames=self.expected_frames, frames_exact=False,
                                duration=float(self._clip_end() - (self.start or 0)))

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield (T_i, H, W, 3) uint8 arrays, T_i <= window, in display order."""
        self.warnings, self.notes = [], []
        self.frames_read = 0
        batch: list[np.ndarray] = []
        self._decoded_until = Fraction(0)
        self._variable = False
        # closing() shuts the container as soon as max_frames is reached or the caller stops
        with closing(self._decoded()) as decoded:
            timed = self._timed(decoded)
            frames = self._resampled(timed) if self._resample else self._steady(timed)
            for frame in islice(frames, self.max_frames):
                batch.append(frame)
                self.frames_read += 1
                if len(batch) == self.window:
                    yield np.stack(batch)
                    batch = []
        if batch:
            yield np.stack(batch)
        if self.frames_read == 0:
            raise VideoError("no video frame could be decoded; the file is damaged",
                             str(self.path))
        self._check_count()

    def _timed(
        self, decoded: Iterator[tuple[Fraction, Fraction, np.ndarray]]
    ) -> Iterator[tuple[Fraction, Fraction, np.ndarray]]:
        """Pass frames on, recording in ``_decoded_until`` when the last one stops showing."""
        for time, duration, frame in decoded:
            self._decoded_until = time + duration
            yield time, duration, frame

    def _resampled(
        self, decoded: Iterator[tuple[Fraction, Fraction, np.ndarray]]
    ) -> Iterator[np.ndarray]:
        resampler = _FrameRateResampler(self.fps, self.info.fps)
        for time, _, frame in decoded:
            yield from resampler.push(time, frame)
        yield from resampler.flush(self._decoded_until)

    def _steady(
        self, decoded: Iterator[tuple[Fraction, Fraction, np.ndarray]]
    ) -> Iterator[np.ndarray]:
        """Every frame while frame k shows within half a frame of k / fps (fps: the nominal
        rate); from the first that does not (variable frame rate), frames resampled by timestamp
        to that rate, so that the clip keeps its duration and decodes at the right speed."""
        step = 1 / self.info.fps
        resampler: _FrameRateResampler | None = None
        kept, last, origin = 0, None, Fraction(0)
        for time, _, frame in decoded:
            if resampler is None and self.warnings:
                origin = time - kept * step  # frames lost to damage leave a gap, not a new rate
            if resampler is None and abs(time - origin - kept * step) > step / 2:
                resampler = _FrameRateResampler(self.info.fps, self.info.fps)
                resampler.slot, resampler.previous = kept, last  # slot k shows time k * step
                self._variable = True
                self.notes.append(
                    f"variable frame rate (from {float(time):.2f} s on): resampled by timestamp "
                    f"to its average {float(self.info.fps):.4g} fps, so it keeps its duration "
                    "(pass --fps to choose the rate)"
                )
            if resampler is not None:
                yield from resampler.push(time - origin, frame)
                continue
            kept, last = kept + 1, frame
            yield frame
        if resampler is not None:
            yield from resampler.flush(self._decoded_until - origin)

    def _decoded(self) -> Generator[tuple[Fraction, Fraction, np.ndarray], None, None]:
        """(seconds from the first frame, frame duration, RGB frame) for every decodable frame."""
        raise NotImplementedError

    def _check_count(self) -> None:
        info = self.info
        if self.max_frames is not None and self.frames_read >= self.max_frames:
            return
        if info.frames_exact and not self._resample and not self._variable:
            if self.frames_read < info.frames:
                self._warn(
                    f"decoded {_frames(self.frames_read)} but the file says it has {info.frames}; "
                    "it is truncated or damaged"
                )
            return
        # Without an exact count (MKV, MPEG-TS) or after resampling, compare times: a count
        # estimated from the average rate is wrong for variable-frame-rate video. Allow 2 frames
        # or 5 % of slack.
        missing = info.duration - float(self._decoded_until)
        if missing > max(float(2 / info.fps), info.duration / 20):
            self._warn(
                f"decoded {_frames(self.frames_read)} lasting {float(self._decoded_until):.2f} s "
                f"but the file lasts {info.duration:.2f} s; it is truncated or damaged"
            )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)


def as_fps(value: Fraction | int | float | str) -> Fraction:
    """A positive frame rate as an exact fraction: 30, 29.97, "30000/1001", Fraction(...)."""
    try:
        fps = Fraction(value).limit_denominator(1_000_000)
    except (ValueError, ZeroDivisionError, TypeError) as e:
        raise ConfigError(f"not a frame rate: {value!r}") from e
    if fps <= 0:
        raise ConfigError(f"frame rate must be positive, got {value!r}")
    return fps


def _normalise_rotation(degrees: float | int | None) -> int:
    """Display rotation snapped to one of 0, 90, 180, -90 (FFmpeg reports [-180, 180])."""
    if not degrees:
        return 0
    turns = round(degrees / 90) % 4
    return (0, 90, 180, -90)[turns]


def _frames(count: int) -> str:
    """``1 frame``, ``2 frames``."""
    return f"{count} frame" if count == 1 else f"{count} frames"
