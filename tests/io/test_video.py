"""Video I/O (vqtok.io.video) on synthetic clips written with PyAV into tmp_path."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.clips import (
    chmod_unreadable,
    clip_frames,
    frame_index,
    lavfi_available,
    make_audio_only,
    make_clip,
    make_corrupted,
    make_empty,
    make_random_bytes,
    make_testsrc,
    make_text,
    make_truncated,
    make_zero_frames,
)
from vqtok.errors import ConfigError, VideoError
from vqtok.io.frames import _FrameRateResampler
from vqtok.io.video import VideoReader, as_fps, probe, read_frames
from vqtok.io.video_writer import VideoWriter, default_codec, write_video


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def test_probe(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=9, size=(32, 48), fps=Fraction(30000, 1001))
    info = probe(path)
    assert (info.frames, info.frames_exact) == (9, True)
    assert info.fps == Fraction(30000, 1001)
    assert (info.height, info.width, info.rotation) == (32, 48, 0)
    assert info.duration == pytest.approx(9 * 1001 / 30000, abs=1e-3)
    assert (info.codec, info.pix_fmt, info.has_audio) == ("mpeg4", "yuv420p", False)
    assert info.path == str(path)


def test_probe_estimates_count_without_index(tmp_path: Path) -> None:
    info = probe(make_clip(tmp_path / "a.mkv", frames=12, size=(16, 16), fps=8, audio=True))
    assert not info.frames_exact and info.frames == 12 and info.has_audio


def test_windows_concatenate_to_clip(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=11, size=(32, 48))
    windows = list(read_frames(path, window=4))
    assert [w.shape for w in windows] == [(4, 32, 48, 3)] * 2 + [(3, 32, 48, 3)]
    assert all(w.dtype == np.uint8 for w in windows)
    frames = np.concatenate(windows)
    assert mean_error(frames, clip_frames(11, 32, 48)) < 10
    assert [frame_index(f) for f in frames] == list(range(11))


def test_odd_size_clip(tmp_path: Path) -> None:
    path = make_clip(
        tmp_path / "odd.avi", frames=3, size=(15, 17), codec="mjpeg", pix_fmt="yuvj420p"
    )
    frames = np.concatenate(list(read_frames(path)))
    assert frames.shape == (3, 15, 17, 3)
    assert mean_error(frames, clip_frames(3, 15, 17)) < 15


def test_resize_to_size(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=2, size=(32, 48))
    reader = VideoReader(path, size=(16, 24))
    frames = np.concatenate(list(reader))
    assert reader.size == (16, 24) and frames.shape == (2, 16, 24, 3)
    # the counter block halves to 4x4; a 2x2 box average of the source is what swscale gives
    small = clip_frames(2, 32, 48).reshape(2, 16, 2, 24, 2, 3).mean(axis=(2, 4))
    assert mean_error(frames, small) < 12


def test_short_side_and_crop_multiple(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=2, size=(40, 64))
    # short side 20 -> 20 x 32; crop to multiples of 8 -> 16 x 32, centred (2 rows off the top)
    frames = np.concatenate(list(read_frames(path, short_side=20, crop_multiple=8)))
    assert frames.shape == (2, 16, 32, 3)
    full = np.concatenate(list(read_frames(path, short_side=20)))
    assert full.shape == (2, 20, 32, 3)
    np.testing.assert_array_equal(frames, full[:, 2:18])
    # no resize: 40 x 64 cropped to multiples of 16 -> 32 x 64, rows 4..36
    native = np.concatenate(list(read_frames(path, crop_multiple=16)))
    assert native.shape == (2, 32, 64, 3)
    assert mean_error(native, clip_frames(2, 40, 64)[:, 4:36]) < 10


def test_portrait_short_side(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "p.mp4", frames=1, size=(48, 32))
    assert next(read_frames(path, short_side=16)).shape == (1, 24, 16, 3)


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (5, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),
        (20, [i // 2 for i in range(40)]),
        (Fraction(10, 3), [0, 3, 6, 9, 12, 15, 18]),
    ],
)
def test_fps_resampling(tmp_path: Path, fps: Fraction | int, expected: list[int]) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=20, size=(16, 16), fps=10)
    reader = VideoReader(path, fps=fps, window=7)
    frames = np.concatenate(list(reader))
    assert [frame_index(f) for f in frames] == expected
    assert reader.fps == Fraction(fps) and reader.expected_frames == len(expected)


def test_resampler_tolerates_rounded_timestamps() -> None:
    # 29.97 fps stamped in Matroska's millisecond ticks: 0, 33, 67, 100, 133, 167, ...
    fps = Fraction(30000, 1001)
    times = [Fraction(round(i * 1000 / fps), 1000) for i in range(60)]
    frames = [np.full((1, 1, 3), i, np.uint8) for i in range(60)]

    def run(target: Fraction) -> list[int]:
        resampler = _FrameRateResampler(target, fps)
        out = [f for t, f in zip(times, frames, strict=True) for f in resampler.push(t, f)]
        out += resampler.flush(times[-1] + 1 / fps)
        return [int(f[0, 0, 0]) for f in out]

    assert run(fps) == list(range(60))
    assert run(fps / 2) == list(range(0, 60, 2))
    assert run(fps * 2) == [i // 2 for i in range(120)]


@settings(max_examples=60, deadline=None)
@given(
    source=st.integers(1, 60),
    target=st.integers(1, 60),
    den=st.sampled_from([1, 1001]),
    count=st.integers(1, 40),
)
def test_resampler_picks_frame_on_screen(source: int, target: int, den: int, count: int) -> None:
    scale = 1000 if den == 1001 else 1  # 1001 -> NTSC-style rates such as 30000/1001
    src, dst = Fraction(source * scale, den), Fraction(target * scale, den)
    resampler = _FrameRateResampler(dst, src)
    frames = [np.full((1, 1, 1), i, np.int32) for i in range(count)]
    out = [f for i, frame in enumerate(frames) for f in resampler.push(i / src, frame)]
    out += resampler.flush(count / src)
    picked = [int(f[0, 0, 0]) for f in out]
    duration = count / src
    slots = duration * dst
    if slots % 1 == 0 or slots % 1 > Fraction(1, 4):  # else the last slot is within tolerance
        assert len(picked) == math.ceil(slots)
    for k, index in enumerate(picked):
        on_screen = k * src / dst  # in source frames; the frame shown is its floor
        if on_screen % 1 < Fraction(3, 4):  # away from the rounding tolerance
            assert index == math.floor(on_screen)
        else:
            assert index in (math.floor(on_screen), math.floor(on_screen) + 1)


def test_max_frames(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=12, size=(16, 16), fps=10)
    reader = VideoReader(path, max_frames=5, window=2)
    frames = np.concatenate(list(reader))
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3, 4]
    assert reader.warnings == [] and reader.expected_frames == 5
    resampled = np.concatenate(list(read_frames(path, fps=20, max_frames=5)))
    assert [frame_index(f) for f in resampled] == [0, 0, 1, 1, 2]


@pytest.mark.parametrize(("rotation", "turns"), [(90, 1), (-90, -1), (180, 2)])
def test_rotation_applied(tmp_path: Path, rotation: int, turns: int) -> None:
    path = make_clip(tmp_path / "r.mp4", frames=2, size=(16, 32), rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.height, info.width) == ((16, 32) if turns == 2 else (32, 16))
    frames = np.concatenate(list(read_frames(path)))
    expected = np.rot90(clip_frames(2, 16, 32), k=turns, axes=(1, 2))
    assert frames.shape == expected.shape
    assert mean_error(frames, expected) < 15


@pytest.mark.skipif(not lavfi_available(), reason="PyAV built without lavfi")
def test_lavfi_testsrc(tmp_path: Path) -> None:
    path = make_testsrc(tmp_path / "t.mp4", frames=6, size=(24, 32), fps=10)
    info = probe(path)
    assert (info.frames, info.fps, info.width, info.height) == (6, 10, 32, 24)
    assert sum(len(w) for w in read_frames(path)) == 6


def test_truncated_stream_yields_what_it_can(tmp_path: Path) -> None:
    path = make_truncated(tmp_path / "cut.mkv", frames=24, keep=0.5)
    seen: list[str] = []
    reader = VideoReader(path, on_warning=seen.append)
    frames = np.concatenate(list(reader))
    assert 0 < len(frames) < 24
    assert [frame_index(f) for f in frames] == list(range(len(frames)))
    assert seen == reader.warnings and len(seen) == 1 and "truncated" in seen[0]


def test_corrupt_packet_is_skipped(tmp_path: Path) -> None:
    reader = VideoReader(make_corrupted(tmp_path / "bad.mp4", frames=24))
    frames = np.concatenate(list(reader))
    assert 12 <= len(frames) < 24
    assert any("corrupt packet" in w for w in reader.warnings)
    assert any("says it has 24" in w for w in reader.warnings)


def test_clean_file_has_no_warnings(tmp_path: Path) -> None:
    reader = VideoReader(make_clip(tmp_path / "a.mkv", frames=12, size=(16, 16)))
    assert sum(len(w) for w in reader) == 12 and reader.warnings == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: make_empty(d / "empty.mp4"), "empty"),
        (lambda d: make_random_bytes(d / "noise.mp4"), "not a readable video"),
        (lambda d: make_text(d / "notes.mp4"), "not a readable video"),
        (lambda d: make_truncated(d / "cut.mp4", container_format="mp4"), "not a readable video"),
        (lambda d: make_audio_only(d / "song.m4a"), "only audio"),
        (lambda d: d, "is a directory"),
    ],
)
def test_video_errors(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    for call in (probe, read_frames):
        with pytest.raises(VideoError, match=message) as info:
            call(path)
        assert info.value.path == str(path) and str(path) in str(info.value)
        if "readable" in message or "no such" in message or "directory" in message:
            assert info.value.__cause__ is not None  # raised from the FFmpeg / OS error


@pytest.mark.parametrize("keep", [0.85, 0.9])
def test_mp4_cut_inside_its_track_table_says_truncated(tmp_path: Path, keep: float) -> None:
    # Cut at 90 % the MP4 still opens, but its video track has no codec entry and no frames:
    # FFmpeg's own words ("Decoder not found") would send the user hunting for a codec.
    path = make_truncated(tmp_path / "cut.mp4", frames=12, keep=keep, container_format="mp4")
    for call in (probe, read_frames):
        with pytest.raises(VideoError) as info:
            call(path)
        reason = str(info.value).removeprefix(f"{path}: ")
        assert reason.startswith("truncated or damaged MP4/MOV: its track table (moov box)")
        assert "decoder" not in reason.lower() and "no video stream" not in reason


def test_permission_denied(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=1, size=(16, 16))
    if not chmod_unreadable(path):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(VideoError, match="permission denied"):
        probe(path)


def test_ffmpeg_permission_error_is_wrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=1, size=(16, 16))

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("vqtok.io.video.av.open", denied)
    with pytest.raises(VideoError, match="permission denied") as info:
        probe(path)
    assert isinstance(info.value.__cause__, PermissionError)


def test_zero_frame_video(tmp_path: Path) -> None:
    path = make_zero_frames(tmp_path / "none.mkv")
    assert path.stat().st_size > 0
    with pytest.raises(VideoError, match="not a readable video|no frames") as info:
        read_frames(path)
    assert info.value.path == str(path)


def test_bad_arguments(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "a.mp4", frames=1, size=(16, 16))
    with pytest.raises(ConfigError, match="not both"):
        VideoReader(path, size=(8, 8), short_side=8)
    with pytest.raises(ConfigError, match="smaller than the crop multiple"):
        VideoReader(path, crop_multiple=32)
    with pytest.raises(ConfigError, match="window"):
        VideoReader(path, window=0)
    assert as_fps("30000/1001") == Fraction(30000, 1001) and as_fps(29.97) == Fraction(2997, 100)
    with pytest.raises(ConfigError):
        as_fps("fast")


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(12)])
def test_writer_round_trip(tmp_path: Path, fps: Fraction) -> None:
    frames = clip_frames(10, 32, 48)
    count = write_video(tmp_path / "out.mp4", iter([frames[:4], frames[4:9], frames[9]]), fps)
    assert count == 10
    info = probe(tmp_path / "out.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (10, fps, 48, 32)
    assert info.codec == ("h264" if default_codec() == "libx264" else "mpeg4")
    assert info.pix_fmt == "yuv420p"
    back = np.concatenate(list(read_frames(tmp_path / "out.mp4")))
    assert mean_error(back, frames) < 10  # mostly 4:2:0 chroma on a sharp colour pattern
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_writer_mpeg4_fallback_and_containers(tmp_path: Path, suffix: str) -> None:
    frames = clip_frames(5, 32, 32)
    path = tmp_path / f"out{suffix}"
    with VideoWriter(path, 10, 32, 32, codec="mpeg4") as writer:
        writer.write(frames[:2])
        writer.write(frames[2:])
    info = probe(path)
    assert (info.codec, info.fps, info.pix_fmt) == ("mpeg4", 10, "yuv420p")
    back = np.concatenate(list(read_frames(path)))
    assert [frame_index(f) for f in back] == list(range(5))
    assert mean_error(back, frames) < 10


def test_writer_pads_odd_sizes(tmp_path: Path) -> None:
    frames = clip_frames(3, 15, 17)
    with VideoWriter(tmp_path / "odd.mp4", 8, width=17, height=15) as writer:
        writer.write(frames)
    assert writer.encoded_size == (16, 18)
    back = np.concatenate(list(read_frames(tmp_path / "odd.mp4")))
    assert back.shape == (3, 16, 18, 3)
    assert mean_error(back[:, :15, :17], frames) < 12
    # the padding repeats the edge, so the extra row looks like the last real one
    assert mean_error(back[:, 15, :17], frames[:, 14]) < 12


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")

    def broken() -> Iterator[np.ndarray]:
        yield clip_frames(2, 16, 16)
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        write_video(target, broken(), 8)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="extension"):
        VideoWriter(tmp_path / "out.gif", 8, 16, 16)
    with pytest.raises(VideoError, match="cannot create"):
        VideoWriter(tmp_path / "no" / "dir.mp4", 8, 16, 16)
    writer = VideoWriter(tmp_path / "a.mp4", 8, 16, 16)
    with pytest.raises(ConfigError, match=r"\(T, 16, 16, 3\)"):
        writer.write(np.zeros((1, 16, 17, 3), np.uint8))
    with pytest.raises(VideoError, match="no frames"):
        writer.close()
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "b.mp4", iter([]), 8)
    assert list(tmp_path.iterdir()) == []


def test_the_same_frames_give_the_same_video_bytes(tmp_path: Path) -> None:
    """libx264 with its default macroblock-tree rate control wrote different bytes (frames up
    to 19 levels apart) for the same frames from one run to the next; `VideoWriter` turns it
    off."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:160].astype(np.float32)
    frames = np.stack([
        np.clip(np.stack([np.sin((x + 7 * t) / (23 + 9 * c)) * np.cos((y - 5 * t) / (31 + 7 * c))
                          for c in range(3)], -1) * 90 + 128 + rng.normal(0, 12, (128, 160, 3)),
                0, 255).astype(np.uint8)
        for t in range(17)
    ])
    written = []
    for i in range(4):
        with VideoWriter(tmp_path / f"{i}.mp4", 25, 160, 128, threads=1) as writer:
            writer.write(frames)
        written.append((tmp_path / f"{i}.mp4").read_bytes())
    assert all(data == written[0] for data in written[1:])
