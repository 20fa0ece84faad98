"""Opening a video with PyAV for `vqtok.io.video`: containers, the video stream, its first
frame, frame rate and duration, and every failure to open put in words (`VideoError`).

With `vqtok.io.video` and `vqtok.io.video_writer`, the only modules that import PyAV.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import IO

import av

from vqtok.errors import VideoError
from vqtok.io.sniff import file_kind
from vqtok.io.sources import ClipSource

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
