"""The vqtok command line as real processes: console script, ``python -m vqtok``, exit codes,
stderr, and the work split between processes (``--shard``, torchrun).

Each process pays the torch import, so there are few of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.clips import make_clip
from tests.tiny import tiny_config
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.tokens import load_tokens
from vqtok.io.video import probe

pytestmark = pytest.mark.slow  # spawns processes; `make test-fast` skips them

BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, directory of three clips)."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    config = tiny_config("fsq", {"levels": [5, 4, 4, 3]})
    model = save_pretrained(VideoTokenizer(config), root / "tiny")
    clips = root / "clips"
    clips.mkdir()
    for name, frames in (("a", 9), ("b", 5), ("c", 7)):
        make_clip(clips / f"{name}.mp4", frames=frames, size=(16, 24), fps=6)
    return model, clips


def _run(args: list[object], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_round_trip_and_errors(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    model, clips = setup
    encoded = _run([sys.executable, "-m", "vqtok", "encode", clips / "a.mp4", "-o",
                    tmp_path / "a.npy", "--model", model, "--device", "cpu"])
    assert encoded.returncode == 0, encoded.stderr
    assert "a.mp4 -> " in encoded.stdout
    assert "9 frames -> indices 3x2x3 (+0 padding)" in encoded.stdout
    decoded = _run([*VQTOK, "decode", tmp_path / "a.npy", "-o", tmp_path / "a.mp4",
                    "--model", model])
    assert decoded.returncode == 0, decoded.stderr
    info = probe(tmp_path / "a.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (9, 6, 24, 16)
    # a bad input: exit 1, one line on stderr, no traceback, nothing written
    missing = _run([*VQTOK, "encode", tmp_path / "nope.mp4", "-o", tmp_path / "n.npy",
                    "--model", model])
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.mp4'}: no such file; check the path"]
    assert not (tmp_path / "n.npy").exists()
    # a usage error: Typer's exit 2
    usage = _run([*VQTOK, "encode", clips / "a.mp4", "-o", tmp_path / "x.npy", "--size", "big"])
    assert usage.returncode == 2 and "--size" in usage.stderr


def _outputs(stdout: str) -> set[str]:
    return {row["input"] for row in json.loads(stdout) if row["status"] == "ok"}


def test_two_shard_processes_split_the_files(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    model, clips = setup
    procs = [
        subprocess.Popen(
            [*VQTOK, "encode", str(clips), "-o", str(tmp_path / "out"), "--model", str(model),
             "--shard", f"{i}/2", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    shares = [_outputs(out) for out, _ in results]
    assert shares[0] and shares[1] and shares[0].isdisjoint(shares[1])
    assert shares[0] | shares[1] == {str(clips / f"{n}.mp4") for n in "abc"}
    for name, frames in (("a", 9), ("b", 5), ("c", 7)):
        assert load_tokens(tmp_path / "out" / f"{name}.npy")[1].encoded.frames == frames


@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="no torchrun")
def test_torchrun_two_processes(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    model, clips = setup
    logs = tmp_path / "logs"
    ran = _run([BIN / "torchrun", "--standalone", "--nproc-per-node", "2", "--log-dir", logs,
                "--redirects", "1", "-m", "vqtok", "encode", clips, "-o", tmp_path / "out",
                "--model", model, "--json"])
    assert ran.returncode == 0, ran.stderr[-2000:]
    per_rank = [_outputs(p.read_text()) for p in sorted(logs.rglob("stdout.log"))]
    assert len(per_rank) == 2 and all(per_rank)
    assert per_rank[0].isdisjoint(per_rank[1])
    assert per_rank[0] | per_rank[1] == {str(clips / f"{n}.mp4") for n in "abc"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.json", "a.npy", "b.json", "b.npy", "c.json", "c.npy"]
