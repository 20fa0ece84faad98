"""Silent wrong results a new user met (issue #35, items 1-4), each through the real CLI or API.

- ``decode`` keeps an existing video only when it was made from the same index file, model and
  frame rate (the video's record); a re-encoded index file is decoded again.
- ``--init-from`` keeps the inherited codebooks (no re-seeding from the first batch).
- a variable-frame-rate clip keeps its duration through encode and decode, and says so.
- SIGTERM stops a command like Ctrl-C (exit 143, no temporary file left), and a rerun removes
  the temporary files a killed run left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.clips import VFR_GAPS_MS, make_clip, make_vfr
from tests.tiny import save_tiny_model
from tests.train.test_train import tiny_run
from vqtok.disk import LEGACY_AGE, remove_stale, temp_path
from vqtok.io.checkpoint import load_pretrained
from vqtok.pipeline.resume import DecodeRecord
from vqtok.train.config import RunConfig
from vqtok.train.loop import train

pytestmark = pytest.mark.slow  # spawns processes; `make test-fast` skips them

BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]


def vqtok(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VQTOK, *map(str, args)], capture_output=True, text=True, **kwargs)


def video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stale")
    model = save_tiny_model(root / "tiny")
    return model, make_clip(root / "clip.mp4", frames=17, size=(32, 48), fps=8)


def test_decode_redoes_a_video_whose_index_file_changed(setup, tmp_path) -> None:
    model, clip = setup
    codes, video = tmp_path / "c.npy", tmp_path / "c.mp4"
    assert vqtok("encode", clip, "-o", codes, "-m", model, "--max-frames", "17").returncode == 0
    first = vqtok("decode", codes, "-o", video, "-m", model)
    assert first.returncode == 0, first.stderr
    assert video_frames(video) == 17
    again = vqtok("decode", codes, "-o", video, "-m", model)
    assert "skipped (already done)" in again.stdout  # the same index file: kept

    assert vqtok("encode", clip, "-o", codes, "-m", model, "--max-frames", "5").returncode == 0
    redo = vqtok("decode", codes, "-o", video, "-m", model)
    assert redo.returncode == 0, redo.stderr
    assert "skipped" not in redo.stdout and "made from other indices" in redo.stderr
    assert video_frames(video) == 5

    rate = vqtok("decode", codes, "-o", video, "-m", model, "--fps", "4")
    assert "made at 8/1 fps (this run: 4/1)" in rate.stderr and rate.returncode == 0
    record = DecodeRecord.read(video)
    assert record is not None and record.fps == "4/1"


def test_decode_replaces_a_video_it_did_not_make(setup, tmp_path) -> None:
    model, clip = setup
    codes = tmp_path / "c.npy"
    assert vqtok("encode", clip, "-o", codes, "-m", model).returncode == 0
    other = make_clip(tmp_path / "c.mp4", frames=3, size=(16, 16), fps=8)
    result = vqtok("decode", codes, "-o", other, "-m", model)
    assert result.returncode == 0 and "made without a record of its index file" in result.stderr
    assert video_frames(other) == 17


def ema_tiny(steps: int, **train_options) -> RunConfig:
    config = tiny_run(steps, lr=1e-12, warmup_steps=1, dead_code_every=0, **train_options)
    data = config.to_dict()
    data["model"]["quantizer"] = "ema_vq"
    data["model"]["quantizer_options"] = {"codebook_size": 16}
    return RunConfig.from_dict(data)


def test_init_from_keeps_the_inherited_codebook(tmp_path) -> None:
    footage = tmp_path / "footage"
    footage.mkdir()
    make_clip(footage / "a.mp4", frames=20, size=(32, 48), fps=10)
    source = train(ema_tiny(2), [footage], tmp_path / "src", device="cpu").model_dir
    codebook = load_pretrained(source).state_dict()["quantizer.codebook.weight"]

    kept = train(ema_tiny(2), [footage], tmp_path / "kept", device="cpu", init_from=source)
    after = load_pretrained(kept.model_dir).state_dict()["quantizer.codebook.weight"]
    # EMA updates move codes a little; re-seeding would replace them by random latents
    assert (after - codebook).norm() < 0.1 * codebook.norm()
    assert "reseeded" not in (tmp_path / "kept" / "metrics.jsonl").read_text()

    asked = train(ema_tiny(2, init_codebook_from_data=True), [footage], tmp_path / "asked",
                  device="cpu", init_from=source)
    reseeded = load_pretrained(asked.model_dir).state_dict()["quantizer.codebook.weight"]
    assert '"reseeded": 16' in (tmp_path / "asked" / "metrics.jsonl").read_text()
    assert not torch.allclose(reseeded, after)


def test_variable_frame_rate_keeps_its_duration_through_encode_and_decode(setup, tmp_path):
    model, _ = setup
    clip = make_vfr(tmp_path / "phone.mp4")
    result = vqtok("encode", clip, "-o", tmp_path / "c.npy", "-m", model)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "variable frame rate" in result.stderr
    assert vqtok("decode", tmp_path / "c.npy", "-o", tmp_path / "c.mp4", "-m", model
                 ).returncode == 0
    with av.open(str(tmp_path / "c.mp4")) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate  # read while open: PyAV >= 18.1.1 refuses a closed stream's
        frames = sum(1 for _ in container.decode(stream))
    seconds = frames / rate
    assert abs(seconds - sum(VFR_GAPS_MS) / 1000) < 1 / rate


def test_sigterm_stops_decode_cleanly_and_a_rerun_removes_old_temporaries(setup, tmp_path):
    model, _ = setup
    long = make_clip(tmp_path / "long.mp4", frames=400, size=(64, 96), fps=25)
    codes = tmp_path / "codes" / "long.npy"
    assert vqtok("encode", long, "-o", codes, "-m", model).returncode == 0
    out = tmp_path / "videos"
    out.mkdir()
    process = subprocess.Popen([*VQTOK, "decode", str(codes), "-o", str(out / "long.mp4"),
                                "-m", str(model), "--chunk", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(".*.tmp")):
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "error: terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []  # no video, no temporary file

    # what kill -9 leaves: a temporary of a dead process, and one of an older vqtok's naming
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = temp_path(out / "long.mp4")
    orphan = orphan.with_name(orphan.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    orphan.write_bytes(b"partial")
    legacy = out / ".long.mp4.0123abcd.tmp"
    legacy.write_bytes(b"partial")
    old = time.time() - LEGACY_AGE - 60
    os.utime(legacy, (old, old))
    live = temp_path(out / "other.mp4")  # this process is running: never removed
    live.write_bytes(b"in progress")
    mine = (out / "notes.tmp", out / ".notes.txt.tmp")  # not our naming: never removed
    for path in mine:
        path.write_bytes(b"user file")
    result = vqtok("decode", codes, "-o", out / "long.mp4", "-m", model)
    assert result.returncode == 0, result.stderr
    assert not orphan.exists() and not legacy.exists()
    assert live.exists() and all(p.exists() for p in mine)
    assert video_frames(out / "long.mp4") == 400


def test_another_hosts_temporaries_are_left_alone(tmp_path) -> None:
    name = temp_path(tmp_path / "a.npy").name
    here = socket.gethostname()
    foreign = tmp_path / name.replace(name.split(".")[-2].split("-")[0], "elsewhere1")
    assert "elsewhere1" in foreign.name and here != "elsewhere1"
    foreign.write_bytes(b"x")
    assert remove_stale([tmp_path]) == [] and foreign.exists()


def test_sigterm_during_training_saves_a_checkpoint(tmp_path) -> None:
    footage = tmp_path / "footage"
    footage.mkdir()
    make_clip(footage / "a.mp4", frames=20, size=(32, 48), fps=10)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_run(100_000, save_every=100_000).to_dict()))
    process = subprocess.Popen([*VQTOK, "train", str(config), str(footage), "-o",
                                str(tmp_path / "run")], stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.stat().st_size):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert (tmp_path / "run" / "checkpoint").is_dir() and "--resume" in stderr


def test_frames_are_unchanged_for_a_constant_rate_clip(setup) -> None:
    """The VFR detection keeps every frame of a constant-rate clip, in order."""
    from tests.clips import frame_index
    from vqtok.io.video import VideoReader

    _, clip = setup
    reader = VideoReader(clip, window=4)
    frames = np.concatenate(list(reader))
    assert [frame_index(f) for f in frames] == list(range(17)) and reader.notes == []
