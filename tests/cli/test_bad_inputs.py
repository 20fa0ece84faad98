"""The bad-input corpus (README, "Reliability"; issue 6) run through the real ``vqtok`` CLI process.

Three ``vqtok encode`` processes run side by side (each pays the torch import):

- the corpus: one directory that holds every bad video next to good ones. Each bad file must
  give exactly one ``error: PATH: reason`` line, no traceback and no output file, while the
  good files of the same run are still encoded and the exit code is 1;
- damaged videos (truncated, a corrupt packet, an MP4 cut in its frames) next to good
  variable-frame-rate ones, without ``--strict``: what decodes is encoded, each damaged file
  gets a warning line, exit 0;
- the same directory with ``--strict``: each damaged file is one error line and no output,
  the variable-frame-rate files are still encoded, exit 1.

A file that vanishes between planning and reading is tested in-process, where the moment it
disappears can be chosen exactly.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clips import (
    VFR_GAPS_MS,
    chmod_unreadable,
    frame_index,
    make_audio_only,
    make_clip,
    make_corrupted,
    make_cut_mp4,
    make_empty,
    make_oversized,
    make_random_bytes,
    make_symlink_loop,
    make_text,
    make_truncated,
    make_vfr,
    make_zero_frames,
)
from tests.tiny import save_tiny_model
from vqtok.api import load
from vqtok.cli.runs import run_jobs
from vqtok.io.tokens import fps_from_text, load_tokens
from vqtok.io.video import VideoReader
from vqtok.pipeline.batching import encode_jobs
from vqtok.pipeline.encode import EncodeOptions
from vqtok.pipeline.plan import Job, plan_inputs

pytestmark = pytest.mark.slow  # spawns processes; `make test-fast` skips them

BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # three processes share the cores

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
VFR = ("vfr_matroska.mkv", "vfr_mp4.mp4")  # the good files of the damaged runs
DAMAGED = ("cut.mkv", "corrupt.mp4", "faststart_cut.mp4")
MOOV_LAST_CUTS = ("before_moov", "moov_header", "mid_moov")  # mid_mdat: cut_10/50/90.mp4


def _make_bad(root: Path) -> dict[str, str]:
    """Write the bad files; returns {name: a regex its error line's reason must match}."""
    make_empty(root / "empty.mp4")
    make_random_bytes(root / "random.mp4")
    make_text(root / "text.mp4")
    make_zero_frames(root / "zero_frames.mkv")
    make_audio_only(root / "audio_only.mp4")
    bad = dict.fromkeys(["empty.mp4", "random.mp4", "text.mp4", "zero_frames.mkv",
                         "audio_only.mp4"], "")
    # MP4 keeps its frame table (moov) after the frames: a copy cut anywhere cannot be read
    for keep in (0.1, 0.5, 0.9):
        name = f"cut_{int(keep * 100)}.mp4"
        make_truncated(root / name, frames=12, keep=keep, container_format="mp4")
        bad[name] = ""
    for cut in MOOV_LAST_CUTS:
        make_cut_mp4(root / f"moov_last_{cut}.mp4", cut)
        bad[f"moov_last_{cut}.mp4"] = ""
    # 1x1 decodes but is smaller than the model's spatial factor: one clear error, not a crash.
    make_clip(root / "tiny_1x1.avi", frames=5, size=(1, 1), codec="mjpeg", pix_fmt="yuvj444p")
    bad["tiny_1x1.avi"] = "smaller than the model.s spatial factor"
    # 9000x9000 decodes (81 MB a frame); as RGB and in the model it would take gigabytes
    make_oversized(root / "huge_9000x9000.mov")
    bad["huge_9000x9000.mov"] = r"9000x9000 \(81 megapixels\).*scale it down"
    # headers claiming 30000x30000 with the pixels missing: FFmpeg refuses to decode
    make_oversized(root / "claims_30000x30000.mov", (30000, 30000), complete=False)
    bad["claims_30000x30000.mov"] = "cannot be decoded"
    # loop.mp4 -> loop.mp4.loop -> loop.mp4: the walk takes it (named like a video), no hang
    make_symlink_loop(root / "loop.mp4")
    bad["loop.mp4"] = "symbolic link loop"
    unreadable = make_clip(root / "unreadable.mp4", frames=5)
    if chmod_unreadable(unreadable):
        bad["unreadable.mp4"] = "permission denied"
    else:  # running as root, chmod 0 does not stop reading: the case cannot be made here
        unreadable.unlink()
    # A directory named like a video is walked (it holds nothing to encode), not opened.
    (root / "folder.mp4").mkdir()
    (root / "folder.mp4" / "x.txt").write_text("not a video")
    return bad


def _make_damaged(root: Path) -> None:
    """Damaged files that still decode in part, next to good variable-frame-rate clips."""
    root.mkdir()
    for name in VFR:
        make_vfr(root / name)
    make_truncated(root / "cut.mkv", frames=24)  # Matroska: opens, decodes its first frames
    make_corrupted(root / "corrupt.mp4", frames=24)
    make_cut_mp4(root / "faststart_cut.mp4", "mid_mdat", faststart=True)  # moov first: opens


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three processes' results, output directories and inputs."""
    root = tmp_path_factory.mktemp("bad")
    model = save_tiny_model(root / "tiny")
    videos, damaged = root / "videos", root / "damaged"
    videos.mkdir()
    for name, options in GOOD.items():
        make_clip(videos / name, size=options.get("size", (32, 48)),
                  **{k: v for k, v in options.items() if k != "size"})
    bad = _make_bad(videos)
    _make_damaged(damaged)
    commands = {
        "corpus": [videos, "-o", root / "out", "-q"],
        "lenient": [damaged, "-o", root / "lenient"],  # no -q: warnings are printed
        "strict": [damaged, "-o", root / "strict", "-q", "--strict"],
    }
    processes = {
        key: subprocess.Popen(
            [*VQTOK, "encode", *map(str, args), "-m", str(model)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        for key, args in commands.items()
    }
    results = {}
    for key, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return {"root": root, "videos": videos, "damaged": damaged, "bad": bad, **results}


def _lines(result: subprocess.CompletedProcess[str], prefix: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(prefix)]


def test_corpus_exit_code_and_no_traceback(runs: dict[str, Any]) -> None:
    result = runs["corpus"]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_each_bad_file_has_one_error_line_and_no_output(runs: dict[str, Any]) -> None:
    videos, bad, result = runs["videos"], runs["bad"], runs["corpus"]
    out = runs["root"] / "out"
    errors = _lines(result, "error: ")
    for name, reason in sorted(bad.items()):
        head = f"error: {videos / name}: "
        mine = [line for line in errors if line.startswith(head)]
        assert len(mine) == 1, (name, result.stderr)
        assert len(mine[0]) > len(head) + 5
        assert "--debug" not in mine[0], mine[0]  # a VqtokError, not a bug's one-line summary
        assert re.search(reason, mine[0][len(head):]), (name, mine[0])
        assert not list(out.glob(f"{Path(name).stem}.*")), name
    assert len(errors) == len(bad), result.stderr
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers


def test_good_files_of_the_same_run_are_encoded(runs: dict[str, Any]) -> None:
    out, result = runs["root"] / "out", runs["corpus"]
    for name, options in GOOD.items():
        indices, meta = load_tokens(out / f"{Path(name).stem}.npy")
        assert meta.source.frames == options["frames"], (name, result.stderr)
        assert indices.shape == meta.shape


def test_damaged_files_are_encoded_with_a_warning(runs: dict[str, Any]) -> None:
    """Without --strict a damaged file gives what decodes, and says so."""
    damaged, result = runs["damaged"], runs["lenient"]
    out = runs["root"] / "lenient"
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and not _lines(result, "error: ")
    warnings = _lines(result, "warning: ")
    for name in DAMAGED:
        assert [w for w in warnings if w.startswith(f"warning: {damaged / name}: ")], name
        _, meta = load_tokens(out / f"{Path(name).stem}.npy")
        assert 0 < meta.encoded.frames < meta.source.frames, name
    assert len(warnings) == sum(w.count("warning: ") for w in warnings)  # one per line
    for name in VFR:  # VFR is not damage: one line says it was resampled, nothing else
        mine = [w for w in warnings if w.startswith(f"warning: {damaged / name}: ")]
        assert len(mine) == 1 and "variable frame rate" in mine[0], mine


def test_strict_refuses_damaged_files(runs: dict[str, Any]) -> None:
    """With --strict each damaged file is one error line and no output; the rest is encoded."""
    damaged, result = runs["damaged"], runs["strict"]
    out = runs["root"] / "strict"
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = _lines(result, "error: ")
    for name in DAMAGED:
        mine = [e for e in errors if e.startswith(f"error: {damaged / name}: ")]
        assert len(mine) == 1 and "damaged input (--strict)" in mine[0], (name, result.stderr)
        assert not list(out.glob(f"{Path(name).stem}.*")), name
    assert len(errors) == len(DAMAGED), result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        Path(name).stem + suffix for name in VFR for suffix in (".json", ".npy"))


def test_variable_frame_rate_keeps_its_duration(runs: dict[str, Any]) -> None:
    """A VFR clip (no --fps) is resampled to its average rate, so frames / fps is its 1.75 s
    and a decode plays for as long as the source; in both runs (--strict does not refuse it)."""
    for key in ("lenient", "strict"):
        for name in VFR:
            _, meta = load_tokens(runs["root"] / key / f"{Path(name).stem}.npy")
            seconds = meta.encoded.frames / fps_from_text(meta.encoded.fps)
            assert abs(seconds - sum(VFR_GAPS_MS) / 1000) < 1 / fps_from_text(meta.encoded.fps)


@pytest.mark.parametrize("container", ["matroska", "mp4"])
def test_variable_frame_rate_resamples_by_timestamp(tmp_path: Path, container: str) -> None:
    """--fps 8 shows, at each 1/8 s, the frame on screen then: repeats and drops by time."""
    path = make_vfr(tmp_path / "vfr", container_format=container)
    starts = [0, *accumulate(VFR_GAPS_MS)][:-1]
    slots = math.ceil(sum(VFR_GAPS_MS) / 125)
    expected = [max(i for i, s in enumerate(starts) if s <= k * 125) for k in range(slots)]
    reader = VideoReader(path, fps=8)
    frames = np.concatenate(list(reader))
    assert [frame_index(f) for f in frames] == expected
    assert reader.warnings == [] and reader.notes == []
    whole = VideoReader(path)  # no --fps: the average rate, every slot the frame on screen then
    frames = np.concatenate(list(whole))
    step, ends = 1000 / whole.fps, [*starts[1:], sum(VFR_GAPS_MS)]
    for k, frame in enumerate(frames):  # on screen within half a frame of k / fps
        i = frame_index(frame)
        assert starts[i] <= k * step + step / 2 and ends[i] > k * step - step / 2, (k, i)
    assert len(frames) == round(sum(VFR_GAPS_MS) / step)
    assert whole.warnings == [] and len(whole.notes) == 1, whole.notes


@pytest.mark.parametrize("batch", [1, 2])
def test_a_file_that_vanishes_mid_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], batch: int
) -> None:
    """c.mp4 is deleted when the first video starts (with --batch 2: after c was probed)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        make_clip(videos / name, frames=5)
    model = save_tiny_model(tmp_path / "tiny")
    jobs = plan_inputs([videos], tmp_path / "out", ".npy")
    vanish = videos / "c.mp4"

    def on_start(group: list[Job]) -> None:
        vanish.unlink(missing_ok=True)

    tokenizer = load(str(model), device="cpu")
    outcomes = run_jobs(
        jobs,
        lambda bar: encode_jobs(jobs, tokenizer, EncodeOptions(), batch, bar.advance, on_start),
        quiet=True,
        debug=False,
    )
    assert [o.status for o in outcomes] == ["ok", "ok", "failed", "ok"]
    stderr = capsys.readouterr().err
    assert stderr.splitlines() == [f"error: {vanish}: no such file; check the path"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{s}.{x}" for s in "abd" for x in ("json", "npy")
    ]
