"""Synthetic test clips written with PyAV, and the bad files a video reader must refuse.

Every clip is deterministic: frame i of a clip of size (H, W) is `clip_frame(i, H, W)`, a
diagonal colour gradient that drifts with i plus a bright square moving left to right, so
tests can compare decoded pixels with what was written (within codec error) and see motion.
An 8x8 grey block in the top-left corner counts frames: `frame_index` reads it back, so a test
can tell exactly which source frame a decoded (resampled, truncated) frame is.

The bad files: `make_empty`, `make_random_bytes`, `make_text`, `make_truncated` (Matroska: opens
and decodes partly; MP4: does not open), `make_cut_mp4` (an MP4 cut before, inside or after its
moov box), `make_corrupted` (a damaged packet mid-stream), `make_audio_only`, `make_zero_frames`,
`make_oversized` (a picture too large to read), `make_symlink_loop`; `chmod_unreadable` for
permission errors. `make_vfr` writes a good clip with a variable frame rate.

Usage from any test module (``tests`` is a package; pytest puts the repository on ``sys.path``)::

    from tests.clips import make_clip, make_truncated
    path = make_clip(tmp_path / "a.mp4", frames=9, size=(32, 48), fps=8)
"""

from __future__ import annotations

import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "VFR_GAPS_MS",
    "chmod_unreadable",
    "clip_frame",
    "clip_frames",
    "counter_level",
    "frame_index",
    "lavfi_available",
    "make_audio_only",
    "make_clip",
    "make_corrupted",
    "make_cut_mp4",
    "make_empty",
    "make_oversized",
    "make_random_bytes",
    "make_symlink_loop",
    "make_testsrc",
    "make_text",
    "make_truncated",
    "make_vfr",
    "make_zero_frames",
    "mp4_boxes",
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
    muxer_options: dict[str, str] | None = None,
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
        muxer_options: FFmpeg muxer options, e.g. ``{"movflags": "faststart"}`` to put an MP4's
            moov box before its frames (PyAV writes it at the end by default).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    height, width = size
    with av.open(str(path), "w", format=container_format, options=muxer_options) as container:
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


def mp4_boxes(path: str | Path) -> dict[str, tuple[int, int]]:
    """The top-level boxes of an MP4 / MOV file: {type: (offset, size in bytes)}."""
    data = Path(path).read_bytes()
    boxes: dict[str, tuple[int, int]] = {}
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes[kind.decode("latin-1")] = (offset, size)
        offset += max(size, 8)
    return boxes


def make_cut_mp4(path: str | Path, cut: str, *, frames: int = 12, faststart: bool = False) -> Path:
    """An MP4 clip (32x32) cut short at a point named by its boxes, like a stopped download.

    PyAV writes the moov box (codec parameters and the frame table) after the frames (mdat);
    ``faststart`` moves it first. ``cut`` is one of ``"mid_mdat"`` (half-way through the
    frames), ``"before_moov"`` (everything but moov), ``"moov_header"`` (moov's first 8 bytes
    only), ``"mid_moov"``. Without faststart none of these can be read; with it, ``"mid_mdat"``
    opens and decodes its first frames.
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else None
    make_clip(path, frames=frames, size=(32, 32), container_format="mp4", muxer_options=options)
    boxes = mp4_boxes(path)
    (mdat, mdat_size), (moov, moov_size) = boxes["mdat"], boxes["moov"]
    at = {
        "mid_mdat": mdat + mdat_size // 2,
        "before_moov": moov,
        "moov_header": moov + 8,
        "mid_moov": moov + moov_size // 2,
    }[cut]
    path.write_bytes(path.read_bytes()[:at])
    return path


VFR_GAPS_MS = (125, 75, 300, 60, 315, 125, 60, 315, 65, 60, 125, 125)
"""How long each frame of `make_vfr` shows, in ms: frame i starts at sum(VFR_GAPS_MS[:i]) ms
and the clip lasts 1.75 s. Every start is a multiple of 125 ms (1/8 s) or at least 50 ms from
one, so resampling to 8 fps picks frames without ties."""


def make_vfr(
    path: str | Path,
    *,
    gaps_ms: tuple[int, ...] = VFR_GAPS_MS,
    size: tuple[int, int] = (32, 48),
    container_format: str | None = None,
) -> Path:
    """A variable-frame-rate clip: frame i (`clip_frame`) shows for ``gaps_ms[i]`` ms.

    Timestamps are in milliseconds (time base 1/1000); the stream's nominal rate is 8 fps,
    which is what Matroska then reports while MP4 reports the average rate.
    """
    path = Path(path)
    height, width = size
    with av.open(str(path), "w", format=container_format) as container:
        stream = _add_video(container, "mpeg4", 8)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.bit_rate = 4_000_000
        stream.codec_context.time_base = Fraction(1, 1000)
        start = 0
        for index, gap in enumerate(gaps_ms):
            frame = av.VideoFrame.from_ndarray(clip_frame(index, height, width), format="rgb24")
            frame.pts = start
            start += gap
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_oversized(path: str | Path, size: tuple[int, int] = (9000, 9000), *, frames: int = 2,
                   complete: bool = True) -> Path:
    """A QuickTime file of black greyscale PNG frames of ``size`` (H, W, each < 65536).

    The PNG data compresses 1000:1, so a 9000x9000 file is ~160 kB and takes ~0.3 s to make;
    decoded, each frame is 81 MB grey (243 MB as RGB). ``complete=False`` keeps only the first
    kilobyte of each frame's data: the headers claim ``size``, the pixels are missing (FFmpeg's
    encoders refuse sizes beyond ~16000x16000, so the file's sample description is patched).
    """
    path = Path(path)
    height, width = size
    image = _black_png(height, width, keep=None if complete else 1024)
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("png", rate=8)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "gray"  # patched below
        container.start_encoding()
        for index in range(frames):
            packet = av.Packet(image)
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = Fraction(1, 8)
            container.mux(packet)
    data = bytearray(path.read_bytes())
    entry = data.index(b"png ") - 4  # the visual sample entry: width, height at bytes 32..35
    data[entry + 32 : entry + 36] = struct.pack(">HH", width, height)
    path.write_bytes(bytes(data))
    return path


def _black_png(height: int, width: int, keep: int | None) -> bytes:
    """An 8-bit greyscale PNG of zeros; ``keep`` cuts its compressed pixel data to that length."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    rows = height if keep is None else min(height, 1 + keep)  # enough rows to fill ``keep``
    pixels = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels[:keep])
        + chunk(b"IEND", b"")
    )


def make_symlink_loop(path: str | Path) -> Path:
    """``path`` -> ``path.loop`` -> ``path``: a name no open can follow (ELOOP)."""
    path = Path(path)
    partner = path.with_name(path.name + ".loop")
    os.symlink(partner.name, path)
    os.symlink(path.name, partner)
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
