"""Video files in through PyAV: open, probe, stream RGB frames in windows.

With `vqtok.io.video_writer` (H.264 out), the only module that imports PyAV (FFmpeg bindings);
every FFmpeg failure becomes a `VideoError` naming the file, with ``raise ... from e`` (every
failure to open is put in words here). What needs no decoder (`VideoInfo`, resize and crop
planning, frame-rate resampling, windowing, `as_fps`) is in `vqtok.io.frames`, re-exported here.

Reading never holds the whole file. `VideoReader` decodes with FFmpeg's threaded decoder, scales
in swscale (``VideoFrame.reformat``), applies the container's display rotation, then centre-crops,
resamples and windows the displayed picture as `vqtok.io.frames` describes. A damaged stream yields
what decodes and records a warning; a file without one decodable video frame is a `VideoError`.
Sample aspect ratio (anamorphic video) is not applied.

Besides a path, the reader takes a `vqtok.io.sources.ClipSource`: a URL (read through fsspec as
a seekable file object), a member of a tar shard (a window of the shard), and a time range
``[start, end)``: exactly the frames whose presentation time ``t`` (seconds from the video's
first frame) satisfies ``start <= t < end``. It seeks to the key frame at or before ``start``
(``container.seek``) and drops the frames before ``start`` (counted in ``frames_skipped``);
where the container's index puts that key frame after ``start``, or seeking fails, it reads
from the beginning instead, so the frames are exact either way.
"""

from __future__ import annotations

import errno
import itertools
import math
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from vqtok.errors import ConfigError, VideoError
from vqtok.io.frames import (
    VideoInfo,
    WindowedFrames,
    _normalise_rotation,
    _plan_geometry,
    as_fps,
    check_picture_size,
)
from vqtok.io.sniff import file_kind
from vqtok.io.sources import ClipSource

__all__ = [
    "Source",
    "VideoInfo",
    "VideoReader",
    "as_fps",
    "probe",
    "read_frames",
]


Source = str | Path | ClipSource
"""What the reader opens: a local path, or a `ClipSource` (URL, tar member, time range)."""


@contextmanager
def _open(source: Source) -> Iterator[av.container.InputContainer]:
    """Open for reading, closing the container (and a URL's file) after; every failure to
    open becomes a VideoError that says what to do."""
    if isinstance(source, ClipSource) and not source.is_local_file:
        with source.open() as file:
            container = _open_file(file, str(source))
            with container:
                yield container
        return
    path = Path(source.location) if isinstance(source, ClipSource) else Path(source)
    with _open_path(path, str(source)) as container:
        yield container


def _open_file(file: str | IO[bytes], where: str) -> av.container.InputContainer:
    """Open a file object (a URL, a tar member) with FFmpeg."""
    try:
        return av.open(file, "r")
    except (av.FFmpegError, OSError) as e:
        raise VideoError(_unreadable(e), where) from e


def _open_path(file: Path, path: str) -> av.container.InputContainer:
    """Open a local file by name."""
    try:
        if file.is_file() and file.stat().st_size == 0:
            raise VideoError("the file is empty (0 bytes), not a video", path)
        return av.open(str(file), "r")
    except FileNotFoundError as e:
        raise VideoError("no such file; check the path", path) from e
    except IsADirectoryError as e:
        raise VideoError("is a directory, not a video file; pass the files in it", path) from e
    except PermissionError as e:
        raise VideoError("permission denied; check the file's read permission", path) from e
    except (av.FFmpegError, OSError) as e:
        if getattr(e, "errno", None) == errno.ELOOP:
            raise VideoError("is a symbolic link loop; point the link at a video file", path) from e
        raise VideoError(_unreadable(e, file), path) from e


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def _unreadable(error: BaseException, file: Path | None = None) -> str:
    """Why FFmpeg cannot open a file, in words: what the file is when its first bytes tell
    (``a text file``), else FFmpeg's own reason (never a Python class name)."""
    kind = None if file is None else file_kind(file)
    if kind is not None and "video" not in kind:
        return f"not a readable video: this is {kind}; pass a video file"
    reason = _reason(error)
    return (f"not a readable video (FFmpeg: {reason[:1].lower() + reason[1:]}); check that it "
            "is a complete video file")


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        audio = len(container.streams.audio)
        if not audio and _cut_mp4(container):
            raise VideoError(_CUT_MP4, path)
        what = f"only audio ({audio} stream{'s' * (audio != 1)})" if audio else "no video stream"
        raise VideoError(f"the file has {what}; pass a video file", path)
    return container.streams.video[0]


def _first_frame(
    container: av.container.InputContainer, stream: av.VideoStream, path: str | Path
) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as e:
        if _cut_mp4(container):  # FFmpeg says "Decoder not found": the codec entry is missing
            raise VideoError(_CUT_MP4, path) from e
        raise VideoError(f"the video stream cannot be decoded: {_reason(e)}", path) from e
    raise VideoError("the video stream has no frames; the file is empty or truncated", path)


# MP4 / MOV keep every track's codec parameters and frame table in one box (moov), often at the
# end of the file; a copy cut inside it still opens, with tracks that list no frames at all.
_CUT_MP4 = (
    "truncated or damaged MP4/MOV: its track table (moov box) is incomplete, so no frame can be "
    "decoded; check that it is a complete video file"
)


def _cut_mp4(container: av.container.InputContainer) -> bool:
    """An MP4-family file none of whose tracks lists or indexes a frame (complete ones do)."""
    is_mp4 = "mp4" in container.format.name.split(",")
    return is_mp4 and all(
        s.frames == 0 and not len(getattr(s, "index_entries", ())) for s in container.streams
    )


def _stream_fps(stream: av.VideoStream, path: str | Path) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("the video has no frame rate; re-mux it with one (ffmpeg -r)", path)
    return Fraction(rate)


def _duration(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def probe(path: Source) -> VideoInfo:
    """Describe a video file, decoding only its first frame (for rotation and to prove it decodes).

    A `ClipSource` is described as its whole video (its range is the reader's business).

    Raises:
        VideoError: missing, a directory, unreadable, no video stream (e.g. audio-only), no
            decodable video frame, or a picture larger than `vqtok.io.frames.MAX_PIXELS`.
    """
    where = str(path)
    with _open(path) as container:
        stream = _video_stream(container, where)
        header = stream.codec_context  # None when FFmpeg has no decoder for the stream
        if header is not None:
            check_picture_size(header.width, header.height, where)
        first = _first_frame(container, stream, where)
        check_picture_size(first.width, first.height, where)  # the stream may disagree
        rotation = _normalise_rotation(getattr(first, "rotation", 0))  # PyAV < 13: no .rotation
        fps = _stream_fps(stream, where)
        base = stream.time_base or Fraction(1, 1)
        origin = Fraction(first.pts) * base if first.pts is not None else Fraction(0)
        duration = _duration(container, stream)
        exact = stream.frames > 0
        frames = stream.frames if exact else max(1, round(duration * fps))
        if duration <= 0:
            duration = float(frames / fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, -90):
            width, height = height, width
        return VideoInfo(
            path=where,
            frames=frames,
            frames_exact=exact,
            fps=fps,
            width=width,
            height=height,
            duration=duration,
            rotation=rotation,
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt or "unknown",
            has_audio=len(container.streams.audio) > 0,
            start=origin,
        )


class VideoReader(WindowedFrames):
    """Streams a video as uint8 RGB windows; iterate it (again) to read from the start.

    Args:
        path: the video file, or a `ClipSource` (a URL, a tar member, a time range).
        size: (H, W) to scale every frame to; or None.
        short_side: scale so the shorter side is this many pixels, keeping the aspect ratio.
        crop_multiple: centre-crop H and W down to multiples of this (the model's spatial
            factor); 1 crops nothing.
        fps: resample to this frame rate by timestamp (drop / repeat frames); None keeps every
            decoded frame.
        max_frames: stop after this many output frames.
        window: frames per yielded array (the last one may be shorter).
        threads: FFmpeg decoder threads; 0 lets FFmpeg choose.
        on_warning: called with each warning message as it happens (also kept in ``warnings``).

    Attributes:
        info: `probe` result for the file (the whole video, also for a clip of it).
        name: the video's file name, ``a.mp4#t=1.5,3`` for a clip (what index files record).
        start, end: the clip's range in seconds (`ClipSource`); None: the whole video.
        size: (H, W) of the frames yielded.
        fps: frame rate of the frames yielded (``info.fps`` unless resampled).
        warnings: messages about damaged input from the last iteration (truncated, corrupt
            packets); empty when the file read cleanly.
        notes: what the last iteration did that is not damage (a variable frame rate resampled).
        frames_read: frames yielded by the last iteration.
        frames_skipped: frames the last iteration decoded before a clip's start and dropped.

    Raises:
        VideoError: the file cannot be opened, has no decodable video frame, or a clip starts
            after the video's end.
        ConfigError: impossible arguments (both size and short_side, window < 1, ...).
    """

    def __init__(
        self,
        path: Source,
        *,
        size: tuple[int, int] | None = None,
        short_side: int | None = None,
        crop_multiple: int = 1,
        fps: Fraction | int | float | str | None = None,
        max_frames: int | None = None,
        window: int = 16,
        threads: int = 0,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {max_frames}")
        self.path = path if isinstance(path, ClipSource) else Path(path)
        self.name = path.name if isinstance(path, ClipSource) else Path(path).name
        clip = path if isinstance(path, ClipSource) else None
        self.start = None if clip is None else clip.start
        self.end = None if clip is None else clip.end
        self.info = probe(path)
        self._geometry = _plan_geometry(
            (self.info.height, self.info.width), size, short_side, crop_multiple
        )
        self.size = self._geometry.size
        self._resample = fps is not None
        self.fps = self.info.fps if fps is None else as_fps(fps)
        self.max_frames = max_frames
        self.window = window
        self.threads = threads
        self.on_warning = on_warning
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.frames_read = 0
        self.frames_skipped = 0
        self._check_range()

    def _decoded(self) -> Generator[tuple[Fraction, Fraction, np.ndarray], None, None]:
        """(seconds from the first frame yielded, frame duration, RGB frame) for every decodable
        frame (of the clip: ``start <= t < end``, t in seconds from the video's first frame)."""
        self.frames_skipped = 0
        with _open(self.path) as container:
            stream = _video_stream(container, str(self.path))
            stream.thread_type = "AUTO"  # frame + slice threads: FFmpeg's fastest safe choice
            stream.codec_context.thread_count = self.threads
            base = stream.time_base or Fraction(1, 1)
            nominal = 1 / self.info.fps
            frames = self._decode_packets(container, stream)
            if self.start:
                frames = self._seek(container, stream, base)
            start: Fraction | None = None
            index = 0
            for frame in frames:
                time = Fraction(frame.pts) * base if frame.pts is not None else index * nominal
                index += 1
                if self.start is not None or self.end is not None:
                    time -= self.info.start  # seconds from the video's first frame
                    if self.start is not None and time < self.start:
                        self.frames_skipped += 1
                        continue
                    if self.end is not None and time >= self.end:
                        return
                start = time if start is None else start
                duration = Fraction(frame.duration) * base if frame.duration else nominal
                yield time - start, duration, self._convert(frame)

    def _seek(self, container: av.container.InputContainer, stream: av.VideoStream,
              base: Fraction) -> Iterator[av.VideoFrame]:
        """Frames from the key frame at or before the clip's start; from the beginning when
        seeking fails or lands after the start (an inexact index), so no frame is lost."""
        assert self.start is not None
        target = self.info.start + self.start
        try:
            container.seek(math.floor(target / base), stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0)
            return self._decode_packets(container, stream)
        frames = self._decode_packets(container, stream)
        first = next(frames, None)
        if first is None or (first.pts is not None and Fraction(first.pts) * base > target):
            container.seek(0)
            return self._decode_packets(container, stream)
        return itertools.chain([first], frames)

    def _decode_packets(
        self, container: av.container.InputContainer, stream: av.VideoStream
    ) -> Iterator[av.VideoFrame]:
        """Decode packet by packet so one corrupt packet costs a warning, not the whole file."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:
                self._warn(f"reading stopped early: {e}; the file is truncated or damaged")
                return
            try:
                yield from packet.decode()
            except av.FFmpegError as e:
                self._warn(f"skipped a corrupt packet at pts {packet.pts}: {e}")

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        """Scale in swscale, rotate to display orientation, centre-crop: (H, W, 3) uint8."""
        geometry = self._geometry
        height, width = geometry.scaled
        quarter_turns = _normalise_rotation(getattr(frame, "rotation", 0)) // 90
        if quarter_turns % 2:
            height, width = width, height  # the coded picture is transposed w.r.t. the display
        rgb = frame.to_ndarray(width=width, height=height, format="rgb24")
        if quarter_turns:
            rgb = np.rot90(rgb, k=quarter_turns)  # rotation is counter-clockwise, like rot90
        top, left = geometry.crop
        out_h, out_w = geometry.size
        return rgb[top : top + out_h, left : left + out_w]


def read_frames(path: Source, **options: Any) -> Iterator[np.ndarray]:
    """Stream a video as uint8 RGB windows (T_i, H, W, 3): ``iter(VideoReader(path, ...))``,
    ``options`` being `VideoReader`'s keyword arguments (size, short_side, crop_multiple, fps,
    max_frames, window, threads, on_warning).

    Opening errors (missing file, not a video, audio-only) raise here, before the first window.
    """
    return iter(VideoReader(path, **options))
