"""The bad-input corpus (design.md §6, issue 6) run through the real ``vqtok`` CLI process.

One ``vqtok encode`` subprocess runs over a directory that holds every bad video next to good
ones (each process pays the torch import, so one process covers the whole corpus). Each bad
file must give exactly one ``error: PATH: reason`` line, no traceback and no output file,
while the good files of the same run are still encoded and the exit code is 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clips import (
    make_audio_only,
    make_clip,
    make_empty,
    make_random_bytes,
    make_text,
    make_truncated,
    make_zero_frames,
)

from tests.tiny import save_tiny_model
from vqtok.tokens import load_tokens

BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]

GOOD: dict[str, dict[str, Any]] = {
    "good.mp4": {"frames": 9},
    "single_frame.mp4": {"frames": 1},
    "odd_33x17.mp4": {"frames": 5, "size": (33, 17)},
    "rotated.mp4": {"frames": 5, "rotation": 90},
    "yuv444p.mkv": {"frames": 5, "codec": "libx264", "pix_fmt": "yuv444p"},
    "ten_bit.mkv": {"frames": 5, "codec": "libx264", "pix_fmt": "yuv420p10le"},
    "alpha.mov": {"frames": 5, "codec": "png", "pix_fmt": "rgba"},
    "with_audio.mp4": {"frames": 5, "audio": True},
}


def _make_bad(root: Path) -> set[str]:
    make_empty(root / "empty.mp4")
    make_random_bytes(root / "random.mp4")
    make_text(root / "text.mp4")
    make_zero_frames(root / "zero_frames.mkv")
    make_audio_only(root / "audio_only.mp4")
    for keep in (0.1, 0.5, 0.9):
        make_truncated(
            root / f"cut_{int(keep * 100)}.mp4", frames=12, keep=keep, container_format="mp4"
        )
    # 1x1 decodes but is smaller than the model's crop multiple: one clear error, not a crash.
    make_clip(root / "tiny_1x1.avi", frames=5, size=(1, 1), codec="mjpeg", pix_fmt="yuvj444p")
    # A directory named like a video is walked (it holds nothing to encode), not opened.
    (root / "folder.mp4").mkdir()
    (root / "folder.mp4" / "x.txt").write_text("not a video")
    return {
        "empty.mp4",
        "random.mp4",
        "text.mp4",
        "zero_frames.mkv",
        "audio_only.mp4",
        "cut_10.mp4",
        "cut_50.mp4",
        "cut_90.mp4",
        "tiny_1x1.avi",
    }


@pytest.fixture(scope="module")
def corpus_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, set[str], subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("bad")
    model = save_tiny_model(root / "tiny")
    videos = root / "videos"
    videos.mkdir()
    for name, options in GOOD.items():
        make_clip(videos / name, size=options.pop("size", (32, 48)), **options)
    bad = _make_bad(videos)
    out = root / "out"
    result = subprocess.run(
        [*VQTOK, "encode", str(videos), "-m", str(model), "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return videos, out, bad, result


def test_corpus_exit_code_and_no_traceback(corpus_run) -> None:  # type: ignore[no-untyped-def]
    _, _, _, result = corpus_run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_each_bad_file_has_one_error_line_and_no_output(corpus_run) -> None:  # type: ignore[no-untyped-def]
    videos, out, bad, result = corpus_run
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for name in sorted(bad):
        mine = [line for line in errors if line.startswith(f"error: {videos / name}: ")]
        assert len(mine) == 1, (name, result.stderr)
        assert len(mine[0]) > len(f"error: {videos / name}: ") + 5
        assert not list(out.glob(f"{Path(name).stem}.*")), name
    assert len(errors) == len(bad), result.stderr


def test_good_files_of_the_same_run_are_encoded(corpus_run) -> None:  # type: ignore[no-untyped-def]
    _, out, _, result = corpus_run
    for name, options in GOOD.items():
        indices, meta = load_tokens(out / f"{Path(name).stem}.npy")
        assert meta.source.frames == options["frames"], (name, result.stderr)
        assert indices.shape == meta.shape
