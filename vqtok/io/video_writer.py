"""Video files out through PyAV: H.264 MP4 / MOV / MKV, written atomically.

`VideoWriter` and `write_video` make H.264 (libx264; MPEG-4 part 2 where the PyAV build
lacks it) in yuv420p, which needs even sizes: an odd height or width is padded by one row or
column repeating the edge, so no pixel is lost. The file appears atomically: a temporary file in
the same directory is renamed over the target only when the writer closes without error. Every
FFmpeg failure becomes a `VideoError` naming the file. Reading is `vqtok.io.video`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from vqtok.disk import temp_path
from vqtok.errors import ConfigError, VideoError
from vqtok.io.frames import as_fps

__all__ = ["VIDEO_SUFFIXES", "VideoWriter", "default_codec", "read_comment", "write_video"]

# Output container by file extension; the writer refuses anything else rather than guessing.
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
VIDEO_SUFFIXES = tuple(_MUXERS)  # what a video vqtok writes may be named


class VideoWriter:
    """Writes uint8 RGB frames to an H.264 MP4, atomically; use as a context manager.

    Args:
        path: output file; ``.mp4``/``.m4v`` (MP4), ``.mov`` or ``.mkv``.
        fps: frame rate, stored exactly (``Fraction(30000, 1001)`` stays 29.97...).
        width, height: size of the frames given to `write`; odd sizes are padded to even.
        codec: encoder name; default `default_codec()` (libx264, else mpeg4).
        crf: libx264 constant rate factor (0 lossless ... 51 worst; 18 is visually lossless).
        threads: encoder threads; 0 lets FFmpeg choose.
        comment: stored as the container's ``comment`` tag (`read_comment`).

    Attributes:
        encoded_size: (H, W) stored in the file (the given size rounded up to even).
        frames_written: frames encoded so far.

    Raises:
        VideoError: the file cannot be created (missing directory, unsupported extension,
            encoder failure); nothing is left at ``path`` and no temporary file remains.
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction | int | float | str,
        width: int,
        height: int,
        *,
        codec: str | None = None,
        crf: int = 18,
        threads: int = 0,
        comment: str | None = None,
    ) -> None:
        self.path = Path(path)
        muxer = _MUXERS.get(self.path.suffix.lower())
        if muxer is None:
            raise VideoError("cannot write a video with this extension: use .mp4, .m4v, .mov "
                             "or .mkv", path)
        if width < 1 or height < 1:
            raise ConfigError(f"frame size must be positive, got {height}x{width}")
        if not self.path.parent.is_dir():
            # FFmpeg opens the file lazily: fail now, not after the first frame was computed
            raise VideoError("cannot create the video file: its directory does not exist", path)
        self.fps = as_fps(fps)
        self.size = (height, width)
        self.encoded_size = (height + height % 2, width + width % 2)
        self.frames_written = 0
        self._tmp = temp_path(self.path)
        try:
            self._container = av.open(str(self._tmp), "w", format=muxer)
            if comment is not None:
                self._container.metadata["comment"] = comment
            stream = self._container.add_stream(codec or default_codec(), rate=self.fps)
            assert isinstance(stream, av.VideoStream)  # a video encoder gives a video stream
            self._stream = stream
            self._stream.height, self._stream.width = self.encoded_size
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.time_base = 1 / self.fps
            self._stream.codec_context.thread_count = threads
            if self._stream.codec_context.name == "libx264":
                # without macroblock-tree rate control x264 writes the same bytes for the same
                # frames, run after run and whatever the thread count; with it, small frames
                # came out different from one run to the next (README, Reliability)
                self._stream.options = {"crf": str(crf), "preset": "medium",
                                        "x264-params": "mbtree=0"}
            else:
                # mpeg4 has no crf: ask for a generous bit rate so round trips stay close
                self._stream.bit_rate = max(1_000_000, int(width * height * self.fps * 2))
        except (av.FFmpegError, OSError) as e:
            self.abort()
            raise VideoError(f"cannot create the video file: {e}", path) from e

    def write(self, frames: np.ndarray) -> None:
        """Encode one frame (H, W, 3) or a window (T, H, W, 3) of uint8 RGB frames."""
        batch = frames[None] if frames.ndim == 3 else frames
        if batch.ndim != 4 or batch.shape[1:] != (*self.size, 3) or batch.dtype != np.uint8:
            raise ConfigError(
                f"expected uint8 frames of shape (T, {self.size[0]}, {self.size[1]}, 3), "
                f"got {batch.dtype} {tuple(frames.shape)}"
            )
        pad_h, pad_w = self.encoded_size[0] - self.size[0], self.encoded_size[1] - self.size[1]
        if pad_h or pad_w:
            batch = np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        try:
            for rgb in batch:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = self.frames_written
                self._container.mux(self._stream.encode(frame))
                self.frames_written += 1
        except av.FFmpegError as e:
            raise VideoError(f"encoding failed: {e}", self.path) from e

    def close(self) -> None:
        """Flush the encoder and move the finished file into place."""
        if self.frames_written == 0:
            self.abort()
            raise VideoError("no frames were written, so no video was made", self.path)
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except (av.FFmpegError, OSError) as e:
            self.abort()
            raise VideoError(f"finishing the video failed: {e}", self.path) from e
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise VideoError(f"cannot move the finished video into place: {e}", self.path) from e

    def abort(self) -> None:
        """Stop without producing a file; an existing file at ``path`` is left untouched."""
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except (av.FFmpegError, OSError):
                pass  # already broken; the temporary file is removed below either way
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: Fraction | int | float | str
) -> int:
    """Write uint8 RGB frames or windows ((H, W, 3) or (T, H, W, 3)) to ``path``; see `VideoWriter`.

    Returns:
        the number of frames written.

    Raises:
        VideoError: no frames, or the file cannot be written (nothing is left behind).
    """
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise VideoError("no frames to write", path)
    height, width = first.shape[-3:-1]
    with VideoWriter(path, fps, width, height) as writer:
        writer.write(first)
        for batch in iterator:
            writer.write(batch)
    return writer.frames_written


def default_codec() -> str:
    """``"libx264"`` when this PyAV build can encode H.264 with it, else ``"mpeg4"``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def read_comment(path: str | Path) -> str | None:
    """The container's ``comment`` tag (what `VideoWriter` stores from ``comment=``); None
    when the file has none or cannot be opened as a video."""
    try:
        with av.open(str(path), "r") as container:
            tags = {key.lower(): value for key, value in container.metadata.items()}
    except (av.FFmpegError, OSError):
        return None
    return tags.get("comment")
