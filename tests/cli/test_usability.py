"""What a new user trips over (issue 14): resume, sizes, the Python API's input checks, dtype
fallback, folders, unreadable training files, name collisions, exit codes, flags, messages.

CLI cases go through the real command (Typer's CliRunner) with a tiny model on disk."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vqtok
from tests.clips import make_clip, make_text
from tests.tiny import save_tiny_model
from vqtok.cli.app import app
from vqtok.errors import ConfigError, VideoError, VqtokError
from vqtok.io.tokens import load_tokens
from vqtok.io.video import probe
from vqtok.runtime import SlowDtypeWarning, resolve_dtype
from vqtok.train.dataset import load_footage


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root / "tiny", seed=0)
    save_tiny_model(root / "tiny2", seed=1)
    return root


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """11 frames of 36x50: neither side a multiple of the model's factor 8."""
    return make_clip(tmp_path_factory.mktemp("clips") / "odd.mp4", frames=11, size=(36, 50),
                     fps=8)


CPU = ("--device", "cpu", "--model", "tiny")


# ----------------------------------------------------------------------- 1. resume


def test_resume_redoes_outputs_made_differently(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "c.npy"
    run("encode", clip, "-o", out, *CPU)
    assert "skipped (already done)" in run("encode", clip, "-o", out, *CPU).stdout
    cases = [  # each run differs from the previous one in one setting
        (("--max-frames", "5"), "--max-frames not given (this run: 5)"),
        (("--max-frames", "5", "--fps", "4"), "--fps not given (this run: 4/1)"),
        (("--max-frames", "5", "--fps", "4", "--size", "16x24"), "--size not given"),
        (("--max-frames", "5", "--fps", "4", "--short-side", "16"), "--short-side not given"),
    ]
    for flags, why in cases:
        result = run("encode", clip, "-o", out, *CPU, *flags)
        assert "skipped" not in result.stdout and why in result.stdout, result.stdout
        assert why in result.stderr  # the note line
    assert load_tokens(out)[1].encoded.size == (16, 22)  # the last run's --short-side 16
    same = run("encode", clip, "-o", out, *CPU, "--max-frames", "5", "--fps", "4",
               "--short-side", "16")
    assert "skipped (already done)" in same.stdout
    # another model (other weights) is redone too, and --json says what was replaced
    other = run("encode", clip, "-o", out, "--device", "cpu", "--model", "tiny2", "--json")
    row = json.loads(other.stdout)[0]
    assert row["status"] == "ok" and "model tiny " in row["replaced"]
    assert load_tokens(out)[1].model == "tiny2"


def test_resume_redoes_remap_changes_and_old_sidecars(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "c.npy"
    run("encode", clip, "-o", out, *CPU)
    used = tmp_path / "used.npy"
    np.save(used, np.arange(16, dtype=np.int64))
    result = run("encode", clip, "-o", out, *CPU, "--remap", used)
    assert "remap none" in result.stdout and load_tokens(out)[1].remap is not None
    assert "skipped" in run("encode", clip, "-o", out, *CPU, "--remap", used).stdout
    # a sidecar written before the settings were recorded cannot prove it matches: redone
    sidecar = json.loads(out.with_suffix(".json").read_text())
    del sidecar["settings"]
    out.with_suffix(".json").write_text(json.dumps(sidecar))
    result = run("encode", clip, "-o", out, *CPU, "--remap", used)
    assert "settings not recorded" in result.stdout


# ----------------------------------------------------------------------- 2. no silent crop


@pytest.mark.parametrize(("flags", "size"), [((), (36, 50)), (("--size", "20x30"), (20, 30))])
def test_decoded_video_has_the_encoded_size(tmp_path: Path, clip: Path, run,  # type: ignore[no-untyped-def]
                                            flags: tuple[str, ...], size: tuple[int, int]) -> None:
    run("encode", clip, "-o", tmp_path / "c.npy", *CPU, *flags)
    meta = load_tokens(tmp_path / "c.npy")[1]
    padded = (-(-size[0] // 8) * 8, -(-size[1] // 8) * 8)
    assert meta.encoded.size == size
    assert meta.encoded.spatial_padding == (padded[0] - size[0], padded[1] - size[1])
    assert meta.grid[1:] == (padded[0] // 8, padded[1] // 8)
    result = run("decode", tmp_path / "c.npy", "-o", tmp_path / "d.mp4", "--device", "cpu")
    info = probe(tmp_path / "d.mp4")
    assert (info.height, info.width, info.frames) == (*size, 11)
    assert f"{size[0]}x{size[1]}" in result.stdout


def test_old_sidecars_without_spatial_padding_still_decode(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    source = make_clip(tmp_path / "even.mp4", frames=5, size=(32, 48), fps=8)
    run("encode", source, "-o", tmp_path / "c.npy", *CPU)
    sidecar = json.loads((tmp_path / "c.json").read_text())
    del sidecar["encoded"]["spatial_padding"], sidecar["settings"]  # as an older vqtok wrote
    (tmp_path / "c.json").write_text(json.dumps(sidecar))
    run("decode", tmp_path / "c.npy", "-o", tmp_path / "d.mp4", "--device", "cpu")
    assert (probe(tmp_path / "d.mp4").height, probe(tmp_path / "d.mp4").width) == (32, 48)


# ----------------------------------------------------------------------- 3. Python API


def test_api_refuses_0_255_pixels_and_names_the_shape_given(models: Path) -> None:
    tok = vqtok.load(models / "tiny", device="cpu")
    with pytest.raises(VqtokError, match=r"values in \[0, 255\].*127.5"):
        tok.encode(torch.full((1, 3, 1, 16, 16), 255.0).index_fill_(4, torch.tensor([0]), 0.0))
    with pytest.raises(VqtokError, match=r"got shape \(3, 5, 16, 24\).*unsqueeze\(0\)"):
        tok.encode(torch.zeros(3, 5, 16, 24))
    with pytest.raises(VqtokError, match=r"uint8 tensor of shape \(1, 3, 1, 16, 16\)"):
        tok.encode(torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(VqtokError, match="NaN|nan"):
        tok.encode(torch.full((1, 3, 1, 16, 16), float("nan")))


def test_read_video_and_write_video_round_trip(tmp_path: Path, clip: Path, models: Path) -> None:
    video = vqtok.read_video(clip)
    assert video.shape == (1, 3, 11, 36, 50) and video.dtype == torch.float32
    assert -1.0 <= float(video.min()) and float(video.max()) <= 1.0
    tok = vqtok.load(models / "tiny", device="cpu")
    indices = tok.encode(video)  # 36x50 is padded to 40x56 inside
    assert indices.shape == (1, *tok.latent_shape(11, 36, 50)) == (1, 4, 5, 7)
    decoded = tok.decode(indices, frames=11, size=(36, 50))
    assert decoded.shape == video.shape
    written = vqtok.write_video(video[0], tmp_path / "new" / "r.mp4", fps=8)
    again = vqtok.read_video(written)
    assert again.shape == video.shape and probe(written).fps == 8
    assert float((again - video).abs().mean()) < 0.03  # H.264 at crf 18
    with pytest.raises(VqtokError, match=r"got \(2, 3, 11, 36, 50\)"):
        vqtok.write_video(torch.cat([video, video]), tmp_path / "two.mp4")
    assert vqtok.read_video(clip, size=(16, 24), max_frames=3).shape == (1, 3, 3, 16, 24)


# ----------------------------------------------------------------------- 4. bf16 on a CPU


def _no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clip: Path, run  # type: ignore[no-untyped-def]
) -> None:
    _no_native_bf16(monkeypatch)
    with pytest.warns(SlowDtypeWarning, match="using fp32"):
        assert resolve_dtype("bf16", torch.device("cpu")) == torch.float32
    result = run("encode", clip, "-o", tmp_path / "c.npy", *CPU, "--dtype", "bf16")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no native bfloat16" in warnings[0]
    quiet = run("encode", clip, "-o", tmp_path / "c.npy", *CPU, "--dtype", "bf16", "--quiet",
                "--overwrite")
    assert "warning" not in quiet.stderr
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_fp16_on_a_cpu_is_a_usage_error_that_does_not_recommend_bf16(
    tmp_path: Path, clip: Path, run  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_dtype("fp16", torch.device("cpu"))
    assert "bf16" not in str(info.value)
    result = run("encode", clip, "-o", tmp_path / "c.npy", *CPU, "--dtype", "fp16", code=2)
    assert "CUDA only" in result.stderr and not (tmp_path / "c.npy").exists()


# ----------------------------------------------------------------------- 5, 7, 11, 12, 13


def test_reconstruct_creates_the_output_folder(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "missing" / "dir" / "x.mp4"
    result = run("reconstruct", clip, "-o", target, *CPU, "--quiet")
    assert "PSNR" in result.stdout
    info = probe(target)
    assert (info.height, info.width, info.frames) == (36, 50, 11)


def test_colliding_output_names_fail_alone(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    clips = tmp_path / "clips"
    clips.mkdir()
    make_clip(clips / "a.mp4", frames=3, size=(16, 16), fps=8)
    make_clip(clips / "a.mkv", frames=3, size=(16, 16), fps=8, codec="mpeg4")
    make_clip(clips / "b.mp4", frames=3, size=(16, 16), fps=8)
    result = run("encode", clips, "-o", tmp_path / "codes", *CPU, "--json", code=1)
    rows = {Path(r["input"]).name: r for r in json.loads(result.stdout)}
    assert rows["b.mp4"]["status"] == "ok" and (tmp_path / "codes" / "b.npy").exists()
    for name in ("a.mp4", "a.mkv"):
        assert rows[name]["status"] == "failed" and "both be written" in rows[name]["error"]
    assert not (tmp_path / "codes" / "a.npy").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2


def test_device_and_dtype_usage_errors_exit_2(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    for command in (["encode", clip, "-o", tmp_path / "c.npy"],
                    ["reconstruct", clip], ["decode", tmp_path / "c.npy", "-o", tmp_path / "x"]):
        result = run(*command, "--device", "gpu", code=2)
        assert result.stderr.strip().splitlines() == [
            "error: --device: unknown device 'gpu'; use auto, cpu, cuda or cuda:N"]
    if not torch.cuda.is_available():
        assert "CUDA is not available" in run("encode", clip, "-o", tmp_path / "c.npy",
                                              "--device", "cuda", code=2).stderr
    assert not (tmp_path / "c.npy").exists()


def test_every_command_takes_quiet_and_json(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    commands = [["encode"], ["decode"], ["remap", "build"], ["info"], ["models"],
                ["reconstruct"], ["train"], ["convert"]]
    for command in commands:
        text = run(*command, "--help").stdout
        assert "--quiet" in text and "--json" in text, command
    run("encode", clip, "-o", tmp_path / "c.npy", *CPU, "--quiet")
    built = run("remap", "build", tmp_path / "c.npy", "-o", tmp_path / "u.npy", "--quiet")
    assert "written" in built.stdout and (tmp_path / "u.npy").exists()
    assert json.loads(run("info", tmp_path / "c.npy", "--quiet", "--json").stdout)["kind"] == (
        "index")


def test_wrong_kind_of_file_says_what_it_is(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    decode = run("decode", clip, "-o", tmp_path / "x.mp4", "--device", "cpu", code=1)
    assert "this is an MP4 / MOV video, not an index file" in decode.stderr
    assert "sidecar" not in decode.stderr.replace(".json sidecar", "")
    used = tmp_path / "used.npy"
    np.save(used, np.array([1, 4, 9], dtype=np.int64))
    info = run("info", used, "--json")  # a remap file is described, not called a bad index
    assert json.loads(info.stdout)["kind"] == "remap" and "sidecar" not in info.stdout
    convert = run("convert", "open-magvit2", clip, "-o", tmp_path / "m", code=1)
    assert "this is an MP4 / MOV video, not a PyTorch checkpoint" in convert.stderr
    assert "pickle" not in convert.stderr and "weights_only" not in convert.stderr
    for result in (decode, convert):
        assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------- 6. training data


def test_unreadable_training_files_are_skipped(tmp_path: Path) -> None:
    make_clip(tmp_path / "a.mp4", frames=4, size=(16, 24), fps=8)
    make_text(tmp_path / "notes.mp4")
    skipped: list[str] = []
    footage = load_footage([tmp_path], short_side=16, on_skip=skipped.append)
    assert [f.name for f in footage] == ["a.mp4"]
    assert len(skipped) == 1 and "notes.mp4" in skipped[0] and skipped[0].endswith("skipped")
    (tmp_path / "a.mp4").unlink()
    with pytest.raises(VideoError, match="none of the 1 file"):
        load_footage([tmp_path], short_side=16)


def test_train_skips_unreadable_files_and_needs_one_readable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_text(data / "notes.mp4")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({
        "name": "t",
        "model": {"channels": 8, "channel_multipliers": [1, 1, 2, 2], "num_res_blocks": 1,
                  "temporal_factor": 2, "latent_dim": 4, "norm_groups": 4,
                  "quantizer": "fsq", "quantizer_options": {"levels": [5, 5, 5, 5]}},
        "train": {"clip_frames": 5, "crop_size": 16, "short_side": 32, "steps": 1,
                  "batch_size": 1, "holdout_frames": 0, "eval_every": 1, "save_every": 1},
    }))

    def train(run_dir: Path):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, ["train", str(config), str(data), "-o", str(run_dir),
                                        "--device", "cpu", "--threads", "1"])

    nothing = train(tmp_path / "run0")
    assert nothing.exit_code == 1 and "none of the 1 file" in nothing.stderr
    assert not (tmp_path / "run0").exists()  # no empty run folder
    make_clip(data / "a.mp4", frames=8, size=(32, 32), fps=8)
    result = train(tmp_path / "run1")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "notes.mp4" in warnings[0] and "skipped" in warnings[0]
    assert (tmp_path / "run1" / "model" / "config.json").exists()
