"""The vqtok command line through Typer's CliRunner: exit codes, outputs, error lines."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.clips import make_audio_only, make_clip, make_text, make_truncated, make_zero_frames
from tests.tiny import tiny_config
from vqtok.cli.app import app
from vqtok.errors import VqtokError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.tokens import load_tokens
from vqtok.io.video import probe

KINDS = {"fsq": {"levels": [5, 4, 4, 3]}, "ema_vq": {"codebook_size": 16}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for kind, options in KINDS.items():
        torch.manual_seed(0)
        save_pretrained(VideoTokenizer(tiny_config(kind, options)), root / f"tiny-{kind}")
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_clip(root / "a.mp4", frames=11, size=(32, 48), fps=8)
    (root / "sub").mkdir()
    make_clip(root / "sub" / "b.mkv", frames=6, size=(24, 16), fps=5, codec="mpeg4")
    return root


def _error_line(result, path: Path) -> str:  # type: ignore[no-untyped-def]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_encode_decode_round_trip(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    result = run("encode", videos / "a.mp4", "-o", tmp_path / "a.npy", "--model", "tiny-fsq",
                 "--device", "cpu", "--chunk", "4")
    assert "11 frames -> indices 4x4x6 (+2 padding)" in result.stdout
    sidecar = json.loads((tmp_path / "a.json").read_text())
    assert sidecar["model"] == "tiny-fsq" and len(sidecar["model_sha256"]) == 64
    assert sidecar["encoded"] == {"fps": "8/1", "frames": 11, "padding": 2, "resize": "none",
                                  "size": [32, 48], "spatial_padding": [0, 0]}
    assert sidecar["settings"] == {"size": None, "short_side": None, "fps": None,
                                   "max_frames": None, "levels": None, "beam": None}
    assert sidecar["source"] == {"file": "a.mp4", "fps": "8/1", "frames": 11, "size": [32, 48]}
    assert (sidecar["quantizer"], sidecar["codebook_size"], sidecar["levels"]) == (
        "fsq", 240, [5, 4, 4, 3])
    assert np.load(tmp_path / "a.npy").dtype == np.uint8  # 240 codes fit a byte
    # decode finds the model by the name in the sidecar ($VQTOK_MODELS)
    result = run("decode", tmp_path / "a.npy", "-o", tmp_path / "a.mp4", "--device", "cpu")
    info = probe(tmp_path / "a.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (11, 8, 48, 32)
    result = run("decode", tmp_path / "a.npy", "-o", tmp_path / "slow.mp4", "--fps", "2")
    assert probe(tmp_path / "slow.mp4").fps == 2


def test_directory_mode_resume_and_json(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "codes"
    first = json.loads(run("encode", videos, "-o", out, "-m", "tiny-fsq", "--json").stdout)
    assert [(r["status"], Path(r["output"]).relative_to(out)) for r in first] == [
        ("ok", Path("a.npy")), ("ok", Path("sub/b.npy"))]
    assert first[1]["frames"] == 6 and first[1]["grid"] == [3, 3, 2]  # 6 -> 9 frames
    again = json.loads(run("encode", videos, "-o", out, "-m", "tiny-fsq", "--json").stdout)
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    (out / "sub" / "b.json").unlink()  # an incomplete output (array without sidecar) is redone
    redo = json.loads(run("encode", videos, "-o", out, "-m", "tiny-fsq", "--json").stdout)
    assert [r["status"] for r in redo] == ["skipped", "ok"]
    table = run("encode", videos, "-o", out, "-m", "tiny-fsq", "--overwrite", "--batch", "2").stdout
    assert "2 done, 0 skipped, 0 failed" in table
    # decode a directory of index files, mirrored
    decoded = json.loads(run("decode", out, "-o", tmp_path / "videos", "--json").stdout)
    assert [r["frames"] for r in decoded] == [11, 6]
    assert probe(tmp_path / "videos" / "sub" / "b.mp4").fps == 5


def test_batch_finishes_other_inputs_then_fails(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "good.mp4", frames=5, size=(16, 16))
    make_text(folder / "bad.mp4")
    result = run("encode", folder, "-o", tmp_path / "out", "-m", "tiny-fsq", code=1)
    _error_line(result, folder / "bad.mp4")
    assert (tmp_path / "out" / "good.npy").is_file()
    assert not (tmp_path / "out" / "bad.npy").exists()
    assert "1 done, 0 skipped, 1 failed" in result.stdout


def test_shards_split_the_work(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "o"
    done = []
    for spec in ("0/2", "1/2"):
        rows = json.loads(run("encode", videos, "-o", out, "-m", "tiny-fsq", "--shard", spec,
                              "--json").stdout)
        done.append({r["input"] for r in rows})
    assert done[0].isdisjoint(done[1])
    assert done[0] | done[1] == {str(videos / "a.mp4"), str(videos / "sub" / "b.mkv")}
    assert sorted(p.name for p in out.rglob("*.npy")) == ["a.npy", "b.npy"]
    run("encode", videos, "-o", out, "--shard", "2/2", code=2)


def test_remap_build_encode_decode(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    run("encode", videos, "-o", tmp_path / "full", "-m", "tiny-ema_vq")
    report = json.loads(run("remap", "build", tmp_path / "full", "-o", tmp_path / "used.npy",
                            "--min-count", "2", "--json").stdout)
    used = np.load(tmp_path / "used.npy")
    assert used.dtype == np.int64 and np.all(np.diff(used) > 0) and report["used"] == len(used)
    assert report["files"] == 2 and report["perplexity"] >= 1
    table = run("remap", "build", tmp_path / "full", "-o", tmp_path / "u2.npy").stdout
    assert "perplexity" in table and "bits per index" in table
    run("encode", videos / "a.mp4", "-o", tmp_path / "r.npy", "-m", "tiny-ema_vq",
        "--remap", tmp_path / "used.npy")
    indices, meta = load_tokens(tmp_path / "r.npy")
    assert meta.remap is not None and meta.remap.size == len(used) and indices.max() < len(used)
    failed = run("decode", tmp_path / "r.npy", "-o", tmp_path / "r.mp4", code=1)
    assert "--remap" in _error_line(failed, tmp_path / "r.npy")
    assert not (tmp_path / "r.mp4").exists()
    run("decode", tmp_path / "r.npy", "-o", tmp_path / "r.mp4", "--remap", tmp_path / "used.npy")
    assert probe(tmp_path / "r.mp4").frames == 11


def test_info_models_reconstruct_json(tmp_path: Path, videos: Path, models: Path, run) -> None:  # type: ignore[no-untyped-def]
    video = json.loads(run("info", videos / "a.mp4", "--json").stdout)
    assert (video["kind"], video["frames"], video["fps"], video["width"]) == (
        "video", 11, "8/1", 48)
    run("encode", videos / "a.mp4", "-o", tmp_path / "a.npy", "-m", "tiny-fsq")
    index = json.loads(run("info", tmp_path / "a.npy", "--json").stdout)
    assert (index["kind"], index["shape"], index["model"]) == ("index", [4, 4, 6], "tiny-fsq")
    model = json.loads(run("info", models / "tiny-fsq", "--json").stdout)
    assert model["kind"] == "model" and model["parameters"] > 0
    assert json.loads(run("info", "tiny-fsq", "--json").stdout) == model  # a model's name
    assert "frames" in run("info", videos / "a.mp4").stdout  # the table form
    listed = json.loads(run("models", "--json").stdout)
    assert {"tiny-fsq", "tiny-ema_vq"} <= {m["name"] for m in listed}
    extra = tmp_path / "more"
    shutil.copytree(models / "tiny-fsq", extra / "copy-fsq")
    listed = json.loads(run("models", "--model-dir", extra, "--json").stdout)
    assert "copy-fsq" in {Path(m["path"]).name for m in listed}
    assert "tiny-fsq" in run("models").stdout
    quality = json.loads(run("reconstruct", videos / "a.mp4", "-m", "tiny-fsq", "--per-frame",
                             "-o", tmp_path / "sbs.mp4", "--side-by-side", "--json").stdout)
    assert quality["frames"] == 11 and len(quality["per_frame"]) == 11
    frame_psnr = [f["psnr"] for f in quality["per_frame"]]
    assert min(frame_psnr) - 1e-3 <= quality["psnr"] <= max(frame_psnr) + 1e-3
    assert 0 < quality["ssim"] <= 1
    assert probe(tmp_path / "sbs.mp4").width == 96
    text = run("reconstruct", videos / "a.mp4", "-m", "tiny-fsq").stdout
    assert "PSNR" in text and "SSIM" in text


@pytest.mark.parametrize(
    "maker, reason",
    [
        (lambda p: p / "missing.mp4", "no such file"),
        (lambda p: make_text(p / "text.mp4"), "not a readable video"),
        (lambda p: make_truncated(p / "cut.mp4", container_format="mp4"), "not a readable video"),
        (lambda p: make_audio_only(p / "sound.m4a"), "only audio"),
        # FFmpeg cannot even open a Matroska file whose only track never got a frame
        (lambda p: make_zero_frames(p / "empty.mkv"), "no frames|not a readable video"),
    ],
)
def test_bad_videos(tmp_path: Path, run, maker, reason: str) -> None:  # type: ignore[no-untyped-def]
    source = maker(tmp_path)
    result = run("encode", source, "-o", tmp_path / "out.npy", "-m", "tiny-fsq", code=1)
    assert re.search(reason, _error_line(result, source))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in [source] if p.exists())  # nothing written, not even a temp file


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, videos: Path, models: Path) -> Path:
    root = tmp_path_factory.mktemp("encoded")
    runner = CliRunner(env={"VQTOK_MODELS": str(models)})
    result = runner.invoke(app, ["encode", str(videos / "a.mp4"), "-o", str(root / "a.npy"),
                                 "-m", "tiny-fsq"])
    assert result.exit_code == 0, result.stderr
    return root


def _copy_pair(encoded: Path, tmp_path: Path, array: np.ndarray | None = None) -> Path:
    target = tmp_path / "c.npy"
    np.save(target, np.load(encoded / "a.npy") if array is None else array)
    (tmp_path / "c.json").write_text((encoded / "a.json").read_text())
    return target


def _bad_indices(encoded: Path, tmp_path: Path, case: str) -> Path:
    good = np.load(encoded / "a.npy")
    if case == "dtype":
        return _copy_pair(encoded, tmp_path, good.astype(np.float32))
    if case == "range":
        bad = good.copy()
        bad[0, 0, 0] = 240  # the vocabulary is 5*4*4*3 = 240
        return _copy_pair(encoded, tmp_path, bad)
    if case == "pickle":
        target = _copy_pair(encoded, tmp_path)
        np.save(target, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        return target
    if case == "sidecar":
        target = _copy_pair(encoded, tmp_path)
        (tmp_path / "c.json").unlink()
        return target
    if case == "hash":
        target = _copy_pair(encoded, tmp_path)
        meta = json.loads((tmp_path / "c.json").read_text())
        meta["model_sha256"] = "0" * 64
        (tmp_path / "c.json").write_text(json.dumps(meta))
        return target
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("dtype", "dtype float32"),
        ("range", "out of range"),
        ("pickle", "pickled"),
        ("sidecar", "sidecar"),
        ("hash", "--force"),
    ],
)
def test_bad_index_files(tmp_path: Path, encoded: Path, run, case: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    source = _bad_indices(encoded, tmp_path, case)
    result = run("decode", source, "-o", tmp_path / "out.mp4", "-m", "tiny-fsq", code=1)
    assert reason in _error_line(result, source)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".mp4", ".tmp")]
    if case == "hash":
        run("decode", source, "-o", tmp_path / "out.mp4", "-m", "tiny-fsq", "--force")
        assert probe(tmp_path / "out.mp4").frames == 11


def test_usage_errors_and_debug(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    clip = videos / "a.mp4"
    run("encode", clip, "-o", tmp_path / "x.npy", "--size", "12", code=2)
    run("encode", clip, "-o", tmp_path / "x.npy", "--size", "16x16", "--short-side", "8", code=2)
    run("encode", clip, "-o", tmp_path / "x.npy", "--dtype", "fp64", code=2)
    run("encode", clip, code=2)  # -o is required
    run("encode", clip, "-o", tmp_path / "x.npy", "--shard", "1-2", code=2)
    result = run("encode", tmp_path / "nope.mp4", "-o", tmp_path / "x.npy", "-m", "tiny-fsq",
                 "--debug", code=1)
    assert isinstance(result.exception, VqtokError)  # --debug lets the error propagate
    assert not list(tmp_path.iterdir())


def test_progress_bar_on_a_terminal(tmp_path: Path, videos: Path, run,  # type: ignore[no-untyped-def]
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    import vqtok.cli.runs as runs
    import vqtok.cli.support as support

    screen = io.StringIO()
    for module in (support, runs):  # the consoles' home, and the batch runs that draw the bar
        monkeypatch.setattr(module, "err", Console(file=screen, force_terminal=True, width=120))
    result = run("encode", videos / "a.mp4", "-o", tmp_path / "codes", "-m", "tiny-fsq")
    assert (tmp_path / "codes.npy").is_file()  # the format suffix is added to a bare name
    assert "skipped" in run("encode", videos / "a.mp4", "-o", tmp_path / "codes",
                            "-m", "tiny-fsq").stdout
    drawn = screen.getvalue()
    assert "1/1" in drawn and "files" in drawn and "11 frames" in drawn and "frames/s" in drawn
    assert "frames/s" not in result.stdout  # the bar is not on stdout
    quiet = io.StringIO()
    for module in (support, runs):
        monkeypatch.setattr(module, "err", Console(file=quiet, force_terminal=True))
    run("encode", videos / "a.mp4", "-o", tmp_path / "q.npy", "-m", "tiny-fsq", "--quiet")
    assert quiet.getvalue() == ""


def test_bad_remap_file_fails_once(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "used.npy", np.array([3, 1, 2]))
    result = run("encode", videos, "-o", tmp_path / "out", "-m", "tiny-ema_vq", "--remap",
                 tmp_path / "used.npy", code=1)
    assert "not sorted" in _error_line(result, tmp_path / "used.npy")
    assert not (tmp_path / "out").exists()


def test_unexpected_errors_are_one_line_and_do_not_stop_the_run(
    tmp_path: Path, videos: Path, run, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    import vqtok.pipeline.encode

    real = vqtok.pipeline.encode.encode_file

    def flaky(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(source).name == "a.mp4":
            raise RuntimeError("out of memory")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(vqtok.pipeline.encode, "encode_file", flaky)
    result = run("encode", videos, "-o", tmp_path / "o", "-m", "tiny-fsq", code=1)
    line = _error_line(result, videos / "a.mp4")
    assert "RuntimeError: out of memory (rerun with --debug" in line
    assert (tmp_path / "o" / "sub" / "b.npy").is_file()
    result = run("encode", videos, "-o", tmp_path / "o", "-m", "tiny-fsq", "--debug", code=1)
    assert isinstance(result.exception, RuntimeError)


def test_trailing_slash_makes_the_output_a_directory(tmp_path: Path, videos: Path, run) -> None:  # type: ignore[no-untyped-def]
    run("encode", videos / "a.mp4", "-o", f"{tmp_path / 'new'}/", "-m", "tiny-fsq")
    assert (tmp_path / "new" / "a.npy").is_file()
    run("decode", tmp_path / "new" / "a.npy", "-o", f"{tmp_path / 'vid'}/")
    assert probe(tmp_path / "vid" / "a.mp4").frames == 11
