"""`vqtok encode --levels K`: one residual model, a ladder of code lengths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vqtok
from tests.clips import make_clip
from tests.tiny import TINY_CONFIG, save_tiny_model
from vqtok.cli.app import app
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.tokens import load_tokens

RVQ = dataclasses.replace(TINY_CONFIG, quantizer="ema_rvq",
                          quantizer_options={"num_levels": 3, "codebook_sizes": 16})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("levels")
    torch.manual_seed(0)
    save_pretrained(VideoTokenizer(RVQ), root / "models" / "rvq")
    save_tiny_model(root / "models" / "vq")
    make_clip(root / "clip.mp4", frames=9, size=(16, 24))
    return root, root / "clip.mp4"


def run(root: Path, *args: object, code: int = 0):  # type: ignore[no-untyped-def]
    runner = CliRunner(env={"VQTOK_MODELS": str(root / "models")})
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_levels_keep_a_prefix_that_decodes(setup: tuple[Path, Path]) -> None:
    root, clip = setup
    cpu = ("-m", "rvq", "--device", "cpu", "-q")
    run(root, "encode", clip, "-o", root / "full.npy", *cpu)
    run(root, "encode", clip, "-o", root / "two.npy", *cpu, "--levels", "2")
    full, _ = load_tokens(root / "full.npy")
    two, meta = load_tokens(root / "two.npy")
    assert full.shape[-1] == 3 and two.shape == (*full.shape[:-1], 2)
    assert np.array_equal(two, full[..., :2]) and meta.settings.levels == 2
    sidecar = json.loads((root / "two.json").read_text())
    assert sidecar["settings"]["levels"] == 2
    run(root, "decode", root / "two.npy", "-o", root / "two.mp4", *cpu)
    assert (root / "two.mp4").stat().st_size > 0
    info = json.loads(run(root, "info", root / "two.npy", "--json").stdout)
    assert info["shape"][-1] == 2
    # resume: the same output without --levels is made again with every level
    again = run(root, "encode", clip, "-o", root / "two.npy", *cpu)
    assert "replaced" in again.stdout and load_tokens(root / "two.npy")[0].shape[-1] == 3


@pytest.mark.parametrize(("model", "levels", "message"), [
    ("rvq", 4, "levels must be in 1..3"),
    ("vq", 1, "residual"),
])
def test_bad_levels_are_usage_errors(setup: tuple[Path, Path], model: str, levels: int,
                                     message: str) -> None:
    root, clip = setup
    out = root / f"bad-{model}.npy"
    result = run(root, "encode", clip, "-o", out, "-m", model, "--device", "cpu", "-q",
                 "--levels", levels, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_beam_option_is_recorded_resumed_and_refused_where_it_means_nothing(
    setup: tuple[Path, Path]
) -> None:
    root, clip = setup
    cpu = ("-m", "rvq", "--device", "cpu", "-q")
    run(root, "encode", clip, "-o", root / "b.npy", *cpu, "--beam", "4")
    beam, meta = load_tokens(root / "b.npy")
    assert meta.settings.beam == 4
    assert json.loads((root / "b.json").read_text())["settings"]["beam"] == 4
    tok = vqtok.load(root / "models" / "rvq", device="cpu").set_beam_width(4)
    video = vqtok.read_video(clip)
    assert np.array_equal(beam, tok.encode(video)[0].numpy())
    again = run(root, "encode", clip, "-o", root / "b.npy", *cpu, "--beam", "4")
    assert "skipped" in again.stdout
    greedy = run(root, "encode", clip, "-o", root / "b.npy", *cpu)  # other settings: redone
    assert "replaced" in greedy.stdout and load_tokens(root / "b.npy")[1].settings.beam is None
    refused = run(root, "encode", clip, "-o", root / "v.npy", "-m", "vq", "--device", "cpu",
                  "--beam", "2", code=2)
    assert refused.stderr.startswith("error: --beam:") and len(refused.stderr.splitlines()) == 1
    assert not (root / "v.npy").exists()
    with pytest.raises(vqtok.ConfigError, match="beam width"):
        tok.set_beam_width(0)


def test_the_models_own_beam_is_recorded_and_a_change_of_it_is_not_kept(
    setup: tuple[Path, Path]
) -> None:
    root, clip = setup
    models = root / "beam-models"
    config = json.loads((root / "models" / "rvq" / "config.json").read_text())
    for width in (1, 3):  # the same weights, the search set in config.json
        directory = models / "rvq"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.safetensors").write_bytes(
            (root / "models" / "rvq" / "model.safetensors").read_bytes())
        config["config"]["quantizer_options"]["beam_width"] = width
        (directory / "config.json").write_text(json.dumps(config))
        runner = CliRunner(env={"VQTOK_MODELS": str(models)})
        result = runner.invoke(app, ["encode", str(clip), "-o", str(root / "own.npy"), "-m",
                                     "rvq", "--device", "cpu"])
        assert result.exit_code == 0, result.stderr
        indices, meta = load_tokens(root / "own.npy")
        assert meta.settings.beam == (None if width == 1 else width)
        if width == 3:  # made greedily before: encoded again, with the model's beam
            assert "replaced" in result.stdout or "replacing" in result.stderr
            tok = vqtok.load(root / "models" / "rvq", device="cpu").set_beam_width(3)
            assert np.array_equal(indices, tok.encode(vqtok.read_video(clip))[0].numpy())
    same = CliRunner(env={"VQTOK_MODELS": str(models)}).invoke(
        app, ["encode", str(clip), "-o", str(root / "own.npy"), "-m", "rvq", "--device", "cpu",
              "--beam", "3"])
    assert same.exit_code == 0 and "skipped" in same.stdout  # --beam 3 is the search it records
