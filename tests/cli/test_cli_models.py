"""`vqtok convert` and `vqtok train` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.clips import make_clip
from tests.convert.test_convert import (
    COSMOS,
    MAGVIT,
    cosmos_keys,
    magvit_state,
    save_ckpt,
    write_jit,
)
from vqtok.cli.app import app

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def test_convert_cosmos_then_encode_and_decode_a_clip(tmp_path: Path, runner: CliRunner) -> None:
    ref = load_file(COSMOS / "reference.safetensors")
    release = tmp_path / "Cosmos-0.1-Tokenizer-DV4x8x8"
    release.mkdir()
    for part in ("encoder", "decoder"):
        write_jit(release / f"{part}.jit", {k: ref[k] for k in cosmos_keys(part)})
    model = tmp_path / "cosmos"
    result = runner.invoke(app, ["convert", "cosmos", str(release), "-o", str(model)])
    assert result.exit_code == 0, result.output
    assert "cosmos-dv model" in result.stdout
    assert "vqtok convert cosmos" in (model / "README.md").read_text()

    clip = make_clip(tmp_path / "clip.mp4", frames=9, size=(64, 64), fps=8)
    codes = tmp_path / "codes.npy"
    result = runner.invoke(app, ["encode", str(clip), "-o", str(codes), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert np.load(codes).shape == (3, 8, 8)
    meta = json.loads(codes.with_suffix(".json").read_text())
    assert meta["codebook_size"] == 64000
    video = tmp_path / "back.mp4"
    result = runner.invoke(app, ["decode", str(codes), "-o", str(video), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert video.stat().st_size > 0


def test_convert_open_magvit2_and_its_errors(tmp_path: Path, runner: CliRunner) -> None:
    ckpt = save_ckpt(tmp_path / "video_128_262144.ckpt",
                     magvit_state(load_file(MAGVIT / "reference.safetensors")))
    model = tmp_path / "magvit"
    result = runner.invoke(app, ["convert", "open-magvit2", str(ckpt), "-o", str(model)])
    assert result.exit_code == 0, result.output
    assert (model / "model.safetensors").exists()
    # a usage error: --variant belongs to cosmos
    bad = runner.invoke(app, ["convert", "open-magvit2", str(ckpt), "-o", str(tmp_path / "x"),
                              "--variant", "DV4x8x8"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()
    # bad data: a truncated checkpoint is one error line, exit 1, nothing written
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:5000])
    bad = runner.invoke(app, ["convert", "open-magvit2", str(cut), "-o", str(tmp_path / "y")])
    assert bad.exit_code == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cut.ckpt" in lines[0]
    assert not (tmp_path / "y").exists()


def test_train_command_writes_a_model_and_resumes(tmp_path: Path, runner: CliRunner) -> None:
    footage = tmp_path / "footage"
    footage.mkdir()
    make_clip(footage / "a.mp4", frames=20, size=(32, 48), fps=10)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({
        "name": "cli-tiny",
        "model": {"channels": 8, "channel_multipliers": [1, 1, 2, 2], "num_res_blocks": 1,
                  "temporal_factor": 2, "latent_dim": 4, "norm_groups": 4,
                  "quantizer": "fsq", "quantizer_options": {"levels": [5, 5, 5, 5]}},
        "train": {"clip_frames": 5, "crop_size": 16, "short_side": 32, "holdout_frames": 5,
                  "eval_size": 16, "steps": 3, "batch_size": 2, "log_every": 1,
                  "eval_every": 3, "save_every": 3, "warmup_steps": 1},
    }))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), str(footage), "-o", str(run),
                                 "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "trained 3 steps" in result.stdout
    assert (run / "model" / "config.json").exists()
    assert "held-out PSNR" in result.stderr
    again = runner.invoke(app, ["train", str(config), str(footage), "-o", str(run)])
    assert again.exit_code == 1 and "--resume" in again.stderr
    bad = runner.invoke(app, ["train", str(tmp_path / "nope.json"), str(footage), "-o", str(run)])
    assert bad.exit_code == 1 and bad.stderr.startswith("error:")
