"""What the commands promise a shell user, through the real Typer app: output formats, sizes
written H x W, nested ``--json``, help text, tables in logs and CLI wording in errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.clips import make_clip
from tests.invoke import invoker
from tests.tiny import save_tiny_model
from vqtok.cli.app import app


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # portrait, so that H x W and W x H differ
    return make_clip(tmp_path_factory.mktemp("videos") / "a.mp4", frames=5, size=(48, 32))


@pytest.fixture()
def run(models: Path):  # type: ignore[no-untyped-def]
    return invoker({"VQTOK_MODELS": str(models), "COLUMNS": "80"})


def test_output_suffix_contradicting_format_is_a_usage_error(tmp_path: Path, clip: Path,
                                                             run) -> None:  # type: ignore[no-untyped-def]
    result = run("encode", clip, "-o", tmp_path / "x.npy", "--format", "safetensors",
                 "--model", "tiny", "--device", "cpu", code=2)
    assert "--format" in result.stderr and "x.npy" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_suffix_chooses_the_format(tmp_path: Path, clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    run("encode", clip, "-o", tmp_path / "x.safetensors", "--model", "tiny", "--device", "cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    run("encode", clip, "-o", tmp_path / "y.npy", "--format", "npy", "--model", "tiny",
        "--device", "cpu")
    assert (tmp_path / "y.npy").is_file() and (tmp_path / "y.json").is_file()


def test_sizes_are_height_x_width_in_decode_output_as_in_flags_and_sidecars(
    tmp_path: Path, clip: Path, run  # type: ignore[no-untyped-def]
) -> None:
    run("encode", clip, "-o", tmp_path / "a.npy", "--model", "tiny", "--device", "cpu")
    sidecar = json.loads((tmp_path / "a.json").read_text())
    assert sidecar["source"]["size"] == [48, 32]  # [H, W]
    result = run("decode", tmp_path / "a.npy", "-o", tmp_path / "a.mp4", "--device", "cpu")
    assert "5 frames 48x32 at 8 fps" in result.stdout, result.stdout


def test_size_messages_are_height_x_width() -> None:
    from vqtok.errors import VqtokError
    from vqtok.io.frames import check_picture_size

    with pytest.raises(VqtokError, match=r"picture is 8000x9000 \("):
        check_picture_size(width=9000, height=8000, path="wide.mp4")


def test_info_json_nests_objects_like_the_sidecar(tmp_path: Path, clip: Path, models: Path,
                                                  run) -> None:  # type: ignore[no-untyped-def]
    run("encode", clip, "-o", tmp_path / "a.npy", "--model", "tiny", "--device", "cpu")
    index = json.loads(run("info", tmp_path / "a.npy", "--json").stdout)
    sidecar = json.loads((tmp_path / "a.json").read_text())
    assert not any("." in key for key in index)
    assert index["source"] == sidecar["source"] and index["encoded"] == sidecar["encoded"]
    model = json.loads(run("info", models / "tiny", "--json").stdout)
    assert not any("." in key for key in model)
    assert model["config"]["quantizer"] == "ema_vq" and model["input"]["value_range"] == [-1, 1]
    table = run("info", tmp_path / "a.npy").stdout  # the table keeps one row per leaf
    assert "source.file" in table and "encoded.padding" in table


@pytest.mark.slow  # spawns a process
def test_tables_to_a_pipe_are_not_folded_at_80_columns(tmp_path: Path, models: Path) -> None:
    deep = tmp_path / ("long-folder-name-" * 4) / ("another-long-folder-name-" * 3)
    shutil.copytree(models / "tiny", deep / "tiny")
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("VQTOK_MODELS", None)
    run = subprocess.run([sys.executable, "-m", "vqtok", "models", "--model-dir", str(deep)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert any(str(deep / "tiny") in line for line in run.stdout.splitlines()), run.stdout


def test_errors_name_flags_on_the_command_line_and_arguments_in_python(
    tmp_path: Path, models: Path, clip: Path, run  # type: ignore[no-untyped-def]
) -> None:
    from vqtok.errors import VqtokError
    from vqtok.train.config import RunConfig
    from vqtok.train.loop import train

    tiny = json.loads((models / "tiny" / "config.json").read_text())["config"]
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"name": "t", "model": tiny, "train": {"steps": 1}}))
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)  # a run that was started before
    result = run("train", config, clip, "-o", tmp_path / "run", "--device", "cpu", code=1)
    assert "--resume" in result.stderr and "resume=True" not in result.stderr
    with pytest.raises(VqtokError) as caught:
        train(RunConfig.from_file(config), [clip], tmp_path / "run", device="cpu")
    assert "resume=True" in str(caught.value) and "--resume" not in str(caught.value)
    # decode with other weights than the file records
    run("encode", clip, "-o", tmp_path / "a.npy", "--model", "tiny", "--device", "cpu")
    save_tiny_model(tmp_path / "other", seed=1)
    result = run("decode", tmp_path / "a.npy", "-o", tmp_path / "a.mp4",
                 "--model", tmp_path / "other", "--device", "cpu", code=1)
    assert "--force" in result.stderr and "force=True" not in result.stderr


def _command_paths() -> list[list[str]]:
    """Every command and group of the app, as the words that name it."""
    import typer.main

    paths: list[list[str]] = []

    def walk(command: object, words: list[str]) -> None:
        paths.append(words)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("words", _command_paths(), ids=lambda w: " ".join(w) or "vqtok")
def test_help_shows_what_to_type_not_python_types(words: list[str]) -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for python in ("<bool>", "<str>", "<path>", "<int", "list[", "{", "}"):
        assert python not in text, (python, text)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    if words in (["encode"], ["decode"]):
        assert "[OPTIONS] INPUTS..." in usage or "[OPTIONS] CODES..." in usage
        assert "--shard" in text and "0-based" in text and "Do share" not in text
    if words == ["encode"]:
        assert "--size HxW" in " ".join(text.split())
        flag_row = next(line for line in text.splitlines() if "--overwrite" in line)
        assert flag_row.split("--overwrite")[1].split()[0] == "Redo", flag_row


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["encode", "a.mp4", "--bogus"], ["vqtok encode", "no such option: --bogus"]),
        (["decode"], ["vqtok decode", "missing argument 'CODES...'"]),
        (["encode", "a.mp4", "--chunk", "abc"], ["vqtok encode", "'--chunk'"]),
        (["encode", "a.mp4", "--format", "zz"], ["'zz' is not one of 'npy', 'safetensors'"]),
        (["frob"], ["vqtok:", "no such command 'frob'"]),
        (["remap", "frob"], ["vqtok remap:", "no such command 'frob'"]),
    ],
)
def test_command_line_mistakes_are_one_line_with_status_2(
    args: list[str], words: list[str], run  # type: ignore[no-untyped-def]
) -> None:
    result = run(*args, code=2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert lines[0].endswith("--help)") and "╭" not in result.stderr
    assert result.stdout == ""


def test_no_arguments_still_prints_the_help(run) -> None:  # type: ignore[no-untyped-def]
    result = run(code=2)
    assert "Usage:" in result.stdout and "encode" in result.stdout
