"""Crash safety (README, "Reliability"): ``kill -9`` in the middle of a directory encode loses
nothing.

A real ``vqtok encode`` process is killed with SIGKILL once it has written part of its
outputs. While it runs and after it dies, every output under its final name must be complete
(index files are written to a temporary name and renamed, sidecar last). Rerunning the same
command finishes the rest, and the final set of files is byte-identical to an uninterrupted
run: the sidecar holds no timestamps or host names, so equal work gives equal bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clips import make_clip
from tests.tiny import save_tiny_model
from vqtok.errors import VqtokError
from vqtok.io.tokens import load_tokens, sidecar_path

pytestmark = pytest.mark.slow  # spawns processes; `make test-fast` skips them

BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]
CLIPS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, directory of CLIPS clips)."""
    root = tmp_path_factory.mktemp("crash")
    model = save_tiny_model(root / "tiny")
    clips = root / "clips"
    clips.mkdir()
    for i in range(CLIPS):
        make_clip(clips / f"c{i}.mp4", frames=9 + 2 * i, size=(32, 48), fps=8)
    return model, clips


def _encode(model: Path, clips: Path, out: Path) -> list[str]:
    return [*VQTOK, "encode", str(clips), "-m", str(model), "-o", str(out), "-q", "--chunk", "4"]


def _finished(out: Path) -> dict[str, bytes]:
    """Every visible file under its final name (temporary files are dot-prefixed)."""
    if not out.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def _assert_no_torn_files(out: Path) -> None:
    for path in sorted(out.glob("*.npy")) if out.exists() else []:
        # The array lands before its sidecar; without the sidecar it is not complete yet, and a
        # rerun redoes it. The encoder keeps running, so look at the sidecar before loading:
        # once it is there, the pair must load whole (a later check would race the writer).
        had_sidecar = sidecar_path(path).is_file()
        try:
            indices, meta = load_tokens(path)
        except VqtokError:
            assert not had_sidecar, path
            continue
        assert indices.shape == meta.shape


def test_kill_9_then_rerun_gives_identical_outputs(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    model, clips = setup
    reference = tmp_path / "reference"
    subprocess.run(_encode(model, clips, reference), check=True, capture_output=True)
    expected = _finished(reference)
    assert len(expected) == 2 * CLIPS

    out = tmp_path / "killed"
    process = subprocess.Popen(_encode(model, clips, out), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        _assert_no_torn_files(out)
        if len(_finished(out)) >= 4:  # at least two clips done: kill mid-run
            break
        time.sleep(0.02)
    killed = process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert killed, "the encode finished before it could be killed; make the clips longer"
    _assert_no_torn_files(out)
    partial = _finished(out)
    assert 0 < len(partial) < 2 * CLIPS
    for name, data in partial.items():
        if name.endswith(".json"):  # a sidecar is written last: its array is final too
            assert data == expected[name]

    subprocess.run(_encode(model, clips, out), check=True, capture_output=True)
    assert _finished(out) == expected
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
