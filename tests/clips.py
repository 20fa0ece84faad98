"""Synthetic test clips written with PyAV, and the bad files a video reader must refuse.

Every clip is deterministic: frame i of a clip of size (H, W) is `clip_frame(i, H, W)`, a
diagonal colour gradient that drifts with i plus a bright square moving left to right, so
tests can compare decoded pixels with what was written (within codec error) and see motion.
An 8x8 grey block in the top-left corner counts frames: `frame_index` reads it back, so a test
can tell exactly which source frame a decoded (resampled, truncated) frame is.

The bad files: `make_empty`, `make_random_bytes`, `make_text`, `make_truncated` (Matroska: opens
and decodes partly; MP4: does not open), `make_corrupted` (a damaged packet mid-stream),
`make_audio_only`, `make_zero_frames`; `chmod_unreadable` for permission errors.

Usage from any test module (pytest puts ``tests/`` on ``sys.path``)::

    from clips import make_clip, make_truncated
    path = make_clip(tmp_path / "a.mp4", frames=9, size=(32, 48), fps=8)
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "chmod_unreadable",
    "clip_frame",
    "clip_frames",
    "counter_level",
    "frame_index",
    "lavfi_available",
    "make_audio_only",
    "make_clip",
    "make_corrupted",
    "make_empty",
    "make_random_bytes",
    "make_testsrc",
    "make_text",
    "make_truncated",
    "make_zero_frames",
]


def clip_frame(index: int, height: int, width: int) -> np.ndarray:
    """Frame ``index`` of every synthetic clip: (height, width, 3) uint8 RGB; H, W >= 8."""
    y, x = np.meshgrid(
        np.linspace(0.0, 1.0, height, dtype=np.float32),
        np.linspace(0.0, 1.0, width, dtype=np.float32),
        indexing="ij",
    )
    shift = 0.05 * index
    red = (x + shift) % 1.0
    green = (y + shift) % 1.0
    blue = 0.5 + 0.25 * np.sin(2 * np.pi * (x + y + shift))
    frame = (np.stack([red, green, blue], axis=-1) * 200 + 20).astype(np.uint8)
    side = max(2, min(height, width) // 4)
    left = (2 * index) % max(1, width - side)
    top = (height - side) // 2
    frame[top : top + side, left : left + side] = 250
    # a flat 8x8 block whose grey level counts frames, so tests can tell which frame they got
    frame[:8, :8] = counter_level(index)
    return frame


def counter_level(index: int) -> int:
    """Grey level of the frame-counter block of frame ``index`` (unique for 29 frames)."""
    return 12 + 8 * (index % 29)


def frame_index(frame: np.ndarray) -> int:
    """Which frame (mod 29) a decoded clip frame is, from its counter block."""
    return round((float(frame[:8, :8].mean()) - 12) / 8) % 29


def clip_frames(frames: int, height: int, width: int) -> np.ndarray:
    """The first ``frames`` frames of the synthetic clip: (T, H, W, 3) uint8."""
    return np.stack([clip_frame(i, height, width) for i in range(frames)])


def make_clip(
    path: str | Path,
    *,
    frames: int = 8,
    size: tuple[int, int] = (32, 48),
    fps: int | Fraction = 8,
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    audio: bool = False,
    container_format: str | None = None,
) -> Path:
    """Write the synthetic clip with PyAV.

    Args:
        path: output file; its extension picks the container unless ``container_format``.
        frames: number of frames.
        size: (H, W); odd sizes work with mpeg4 / mjpeg (libx264 + yuv420p needs even).
        fps: frame rate.
        codec: any PyAV encoder (``"mpeg4"`` is always built in; ``"libx264"`` often is).
        pix_fmt: the stream's pixel format.
        rotation: counter-clockwise display rotation stored in the container (0, 90, 180, -90).
        audio: also add a short silent AAC track.
        container_format: FFmpeg muxer name, e.g. ``"mpegts"`` for a streamable file.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    height, width = size
    with av.open(str(path), "w", format=container_format) as container:
        stream = _add_video(container, codec, fps)
        stream.height, stream.width = height, width
        stream.pix_fmt = pix_fmt
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000  # high quality so pixel comparisons are meaningful
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=8000) if audio else None
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(clip_frame(index, height, width), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            _write_silence(container, sound)
    return path


def _add_video(
    container: av.container.OutputContainer, codec: str, fps: int | Fraction
) -> av.VideoStream:
    stream = container.add_stream(codec, rate=fps)
    assert isinstance(stream, av.VideoStream), f"{codec} is not a video encoder"
    return stream


def make_audio_only(path: str | Path, seconds: float = 0.5) -> Path:
    """An .m4a-style file with one AAC stream and no video stream."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        _write_silence(container, container.add_stream("aac", rate=8000), seconds)
    return path


def _write_silence(
    container: av.container.OutputContainer, stream: av.AudioStream, seconds: float = 0.5
) -> None:
    samples = 1024
    for chunk in range(max(1, int(seconds * 8000) // samples)):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, samples), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        frame.pts = chunk * samples
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_truncated(
    path: str | Path, *, frames: int = 24, keep: float = 0.5, container_format: str = "matroska"
) -> Path:
    """A clip cut to its first ``keep`` fraction of bytes, like a download that stopped.

    Matroska (the default) stores its duration at the start, so a truncated file still opens,
    decodes its first frames and says how many there should have been; MPEG-TS opens too but
    cannot tell; a truncated MP4 (``container_format="mp4"``) does not open (its index is at
    the end).
    """
    path = Path(path)
    make_clip(path, frames=frames, size=(32, 32), container_format=container_format)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_corrupted(path: str | Path, *, frames: int = 24, seed: int = 1) -> Path:
    """An MP4 clip with 600 random bytes written over the middle of its frame data.

    It opens and most frames decode; the damaged packet fails to decode (a bad packet, not a
    bad file).
    """
    path = Path(path)
    make_clip(path, frames=frames, size=(32, 32), container_format="mp4")
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start : start + 600] = np.random.default_rng(seed).bytes(600)
    path.write_bytes(bytes(data))
    return path


def make_zero_frames(path: str | Path) -> Path:
    """A Matroska file with a video track header and not a single frame."""
    path = Path(path)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
        container.start_encoding()
    return path


def make_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_random_bytes(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """A file of ``size`` random bytes (no container FFmpeg recognises)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def make_text(path: str | Path) -> Path:
    """A text file with a video extension."""
    path = Path(path)
    path.write_text("this is not a video\n" * 20)
    return path


def lavfi_available() -> bool:
    """Whether this PyAV build has FFmpeg's lavfi input device (``testsrc`` and friends)."""
    return "lavfi" in av.formats_available


def make_testsrc(
    path: str | Path, *, frames: int = 10, size: tuple[int, int] = (24, 32), fps: int = 10
) -> Path:
    """Copy FFmpeg's ``testsrc`` pattern (lavfi) into an mpeg4 file; needs `lavfi_available`."""
    path = Path(path)
    height, width = size
    spec = f"testsrc=size={width}x{height}:rate={fps}"
    with av.open(spec, format="lavfi") as source, av.open(str(path), "w") as target:
        stream = target.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index == frames:
                break
            out = frame.reformat(format="yuv420p")
            out.pts = index
            target.mux(stream.encode(out))
        target.mux(stream.encode(None))
    return path


def chmod_unreadable(path: str | Path) -> bool:
    """Remove read permission; False when that has no effect (running as root)."""
    os.chmod(path, 0)
    return not os.access(path, os.R_OK)
