"""What a new user trips over (issue 35): output names checked before any work, mistyped local
model paths, several inputs into one file name, remap file names, the wrong file given to
``convert``, the ETA, uint8 index files, help text and plain-word messages.

CLI cases go through the real command (Typer's CliRunner) with a tiny model on disk; nothing
here needs the network (the Hub is never reached: sockets are refused where it matters)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.clips import make_clip, make_random_bytes, make_text
from vqtok.cli.app import app
from vqtok.cli.runs import RunProgress, eta_seconds
from vqtok.errors import HubError
from vqtok.io.hub import parse_hub_ref
from vqtok.pipeline.plan import Job


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    make_clip(root / "a.mp4", frames=9, size=(32, 48), fps=8)
    make_clip(root / "b.mp4", frames=5, size=(32, 48), fps=8)
    return root


def one_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ------------------------------------------------ 5. every output checked before any work

# (command words, arguments before -o, output name, words the error line must hold). The
# inputs and models do not exist: an error about -o proves it came before reading or loading.
BAD_NAMES = [
    (["reconstruct"], ["CLIP", "-m", "no-such-model"], "out.npy",
     "not a name for a video: use .mp4, .m4v, .mov or .mkv"),
    (["encode"], ["CLIP", "-m", "no-such-model"], "out.mp4",
     "not a name for an index file: use .npy or .safetensors"),
    (["decode"], ["missing.npy", "-m", "no-such-model"], "out.npy",
     "not a name for a video: use .mp4, .m4v, .mov or .mkv"),
    (["decode"], ["missing.npy"], "out", "not a name for a video"),
    (["remap", "build"], ["missing.npy"], "used.txt",
     "not a name for a remap file: use .npy (one level) or .safetensors (any number of levels)"),
    (["pack"], ["missing.npy"], "data.parquet", "names a .parquet file, but a token dataset is "
     "a folder"),
    (["convert", "cosmos"], ["missing.jit"], "model.safetensors", "names a .safetensors file, "
     "but a model directory is a folder"),
    (["train"], ["missing.json", "CLIP"], "run.json", "names a .json file, but a training run "
     "is a folder"),
]


@pytest.mark.parametrize(("words", "before", "name", "reason"), BAD_NAMES,
                         ids=[f"{' '.join(w)}-{n}" for w, _, n, _ in BAD_NAMES])
def test_outputs_are_checked_before_any_work(
    tmp_path: Path, clips: Path, run, words: list[str], before: list[str], name: str,  # type: ignore[no-untyped-def]
    reason: str,
) -> None:
    args = [str(clips / "a.mp4") if a == "CLIP" else str(tmp_path / a)
            if a.startswith("missing") else a for a in before]
    out = tmp_path / name
    line = one_line(run(*words, *args, "-o", out, code=2))
    assert line.startswith(f"error: -o {out}: ") and reason in line, line
    assert "[" not in line and "'" not in line  # no Python list in the message
    assert not out.exists()


@pytest.mark.parametrize(("words", "before", "name"), [
    (["encode"], ["CLIP"], "x.npy"), (["encode"], ["CLIPS"], "codes"),
    (["decode"], ["missing.npy"], "x.mp4"), (["reconstruct"], ["CLIP"], "x.mp4"),
    (["remap", "build"], ["missing.npy"], "used.npy"), (["pack"], ["missing.npy"], "ds"),
    (["convert", "cosmos"], ["missing.jit"], "model"), (["train"], ["missing.json", "CLIP"], "r"),
])
def test_a_file_where_an_output_folder_must_go_is_named_in_words(
    tmp_path: Path, clips: Path, run, words: list[str], before: list[str], name: str,  # type: ignore[no-untyped-def]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    args = [str(clips / "a.mp4") if a == "CLIP" else str(clips) if a == "CLIPS"
            else str(tmp_path / a) for a in before]
    if words[0] in ("encode", "reconstruct"):
        args += ["-m", "tiny", "--device", "cpu"]
    out = afile / name
    line = one_line(run(*words, *args, "-o", out, code=2))
    assert line == (f"error: -o {out}: {afile} is a file, not a folder, so nothing can be "
                    "written below it; choose another output path"), line
    assert "File exists" not in line and "Errno" not in line
    assert afile.read_text() == "not a folder"


def test_reconstruct_with_a_wrong_suffix_stops_before_encoding(
    tmp_path: Path, clips: Path, run  # type: ignore[no-untyped-def]
) -> None:
    """The reported case: a working model and clip, an .npy output: exit 2 at once."""
    result = run("reconstruct", clips / "a.mp4", "-o", tmp_path / "out.npy", "-m", "tiny",
                 "--device", "cpu", code=2)
    assert one_line(result) == (f"error: -o {tmp_path / 'out.npy'}: not a name for a video: "
                                "use .mp4, .m4v, .mov or .mkv")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


# ------------------------------------------------ 6. a mistyped local model path stays local


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse every socket, and record what the Hub would have been asked for."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("vqtok tried to open a network connection")

    for name in ["socket", "create_connection", "getaddrinfo", "socketpair"]:
        monkeypatch.setattr(socket, name, refuse)
    asked: list[str] = []

    def fetch(ref: Any, *args: object, **kwargs: object) -> list[Path]:
        asked.append(str(ref))
        raise HubError("the fake Hub has nothing", str(ref))

    monkeypatch.setattr("vqtok.io.model_dirs.fetch_files", fetch)
    return asked


@pytest.mark.parametrize("given", ["run-lr0/model", "a/b/c", "./run-lr1", "~/no-such-vqtok-model",
                                   "/no/such/model", "run-lr0/model@main"])
def test_a_mistyped_local_model_path_never_goes_to_the_hub(
    tmp_path: Path, clips: Path, run, no_network: list[str], monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    given: str,
) -> None:
    (tmp_path / "run-lr0").mkdir()  # the run folder exists; its model/ does not (yet)
    monkeypatch.chdir(tmp_path)
    assert parse_hub_ref(given) is None
    result = run("encode", clips / "a.mp4", "-o", tmp_path / "a.npy", "-m", given,
                 "--device", "cpu", code=1)
    line = one_line(result)
    assert "no model directory here" in line and "Hub" not in line.split("(")[0], line
    if given.startswith("run-lr0/"):
        assert "run-lr0/ is a folder here, so this is a path" in line
    assert no_network == [] and not (tmp_path / "a.npy").exists()


def test_an_owner_name_without_a_local_folder_still_goes_to_the_hub(
    tmp_path: Path, clips: Path, run, no_network: list[str], monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line(run("encode", clips / "a.mp4", "-o", tmp_path / "a.npy", "-m",
                        "someone/vqtok-model", "--device", "cpu", code=1))
    assert no_network == ["someone/vqtok-model"]
    assert line == "error: someone/vqtok-model: the fake Hub has nothing"


# ------------------------------------------------ 7. several inputs, one file name


@pytest.mark.parametrize("name", ["one.npy", "one.safetensors"])
def test_a_directory_encoded_into_an_index_file_name_is_a_usage_error(
    tmp_path: Path, clips: Path, run, name: str  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / name
    line = one_line(run("encode", clips, "-o", out, "-m", "tiny", "--device", "cpu", code=2))
    assert line == (f"error: -o {out}: names one file, but {clips} is a folder: give a folder, "
                    f"which gets an index file per input (e.g. {tmp_path / 'one'}/)")
    assert not out.exists()
    two = one_line(run("encode", clips / "a.mp4", clips / "b.mp4", "-o", out, "-m", "tiny",
                       code=2))
    assert "2 inputs are given" in two and not out.exists()
    # a folder given as a folder is fine, whatever its name
    run("encode", clips, "-o", f"{out}/", "-m", "tiny", "--device", "cpu", "--quiet")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.npy", "b.json", "b.npy"]


def test_a_directory_decoded_into_a_video_name_is_a_usage_error(
    tmp_path: Path, clips: Path, run  # type: ignore[no-untyped-def]
) -> None:
    run("encode", clips, "-o", tmp_path / "codes", "-m", "tiny", "--device", "cpu", "--quiet")
    out = tmp_path / "x.mp4"
    line = one_line(run("decode", tmp_path / "codes", "-o", out, "--device", "cpu", code=2))
    assert line.startswith(f"error: -o {out}: names one file, but {tmp_path / 'codes'} is a "
                           "folder: give a folder, which gets a video per input"), line
    assert not out.exists()


# ------------------------------------------------ 8. remap file names


def test_a_missing_remap_file_names_its_sibling_with_the_other_suffix(
    tmp_path: Path, clips: Path, run  # type: ignore[no-untyped-def]
) -> None:
    used = tmp_path / "used.safetensors"
    used.write_bytes(b"")  # only its name matters: the error comes before it is read
    given = tmp_path / "used.npy"
    line = one_line(run("encode", clips / "a.mp4", "-o", tmp_path / "a.npy", "-m",
                        "no-such-model", "--remap", given, code=1))
    assert line == f"error: {given}: remap file not found; did you mean {used}?"
    used.unlink()
    line = one_line(run("encode", clips / "a.mp4", "-o", tmp_path / "a.npy", "-m", "tiny",
                        "--remap", given, code=1))
    assert line == (f"error: {given}: remap file not found; check the path (vqtok remap build "
                    "writes one)")


# ------------------------------------------------ 9. the wrong file given to convert


@pytest.mark.parametrize("variant", [[], ["--variant", "DV4x8x8"]])
def test_convert_says_what_a_video_is(tmp_path: Path, run, variant: list[str]) -> None:  # type: ignore[no-untyped-def]
    clip = make_clip(tmp_path / "clip.webm", frames=3, container_format="matroska")
    line = one_line(run("convert", "cosmos", clip, "-o", tmp_path / "conv", *variant, code=1))
    assert line == (f"error: {clip}: this is a Matroska / WebM video, not a TorchScript "
                    "archive; expected Cosmos's encoder.jit and decoder.jit (or autoencoder.jit), "
                    "or the folder that holds them")
    assert "--variant" not in line and "miniz" not in line
    text = make_text(tmp_path / "notes.jit")
    line = one_line(run("convert", "cosmos", text, "-o", tmp_path / "conv", code=1))
    assert line.startswith(f"error: {text}: this is a text file, not a TorchScript archive")
    assert not (tmp_path / "conv").exists()


# ------------------------------------------------ 10. the ETA follows frames/s


def test_eta_is_frames_left_at_the_measured_frames_per_second() -> None:
    # 100 frames in 10 s: 10 frames/s. 50 frames left in the file in flight; 2 MB of files not
    # started at the 100 frames per MB seen so far: 200 frames. 250 frames: 25 s.
    assert eta_seconds(frames=100, busy=10.0, left_in_flight=50, bytes_left=2_000_000,
                       frames_per_byte=100 / 1e6, files_left=3, frames_per_file=40.0) == 25.0
    # no sizes known: the mean frames per file started
    assert eta_seconds(frames=100, busy=10.0, left_in_flight=0, bytes_left=0,
                       frames_per_byte=None, files_left=3, frames_per_file=40.0) == 12.0
    assert eta_seconds(frames=0, busy=0.0, left_in_flight=9, bytes_left=0, frames_per_byte=None,
                       files_left=0, frames_per_file=None) is None


def test_run_progress_times_a_long_file_by_its_frames_not_by_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten short files done at 10 frames/s, then a long one (10x their bytes) starts: the ETA
    is its expected frames at that speed, not one file's share of the time so far."""
    now = [0.0]
    monkeypatch.setattr("vqtok.cli.runs.time.perf_counter", lambda: now[0])
    short = [Job(Path(f"s{i}.mp4"), Path(f"s{i}.npy"), size=1000) for i in range(10)]
    long = [Job(Path("long.mp4"), Path("long.npy"), size=10_000),
            Job(Path("next.mp4"), Path("next.npy"), size=10_000)]
    bar = RunProgress(console=None, files=12, disable=True, pending_bytes=30_000)  # type: ignore[arg-type]
    for job in short:
        bar.start([job])
        now[0] += 1.0
        bar.advance(10, 10)
        bar.finish()
    bar.start(long[:1])
    now[0] += 1.0
    bar.advance(10, 100)  # the reader expects 100 frames of it
    # 110 frames in 11 s; 90 left of long.mp4, next.mp4 ~ 10_000 bytes at 1 frame / 100 bytes
    assert bar.eta(11.0) == pytest.approx((90 + 100) / 10)
    assert bar.progress.tasks[0].fields["eta"] == pytest.approx(19.0)


# ------------------------------------------------ 11. uint8 index files


def test_index_files_of_small_vocabularies_are_uint8(tmp_path: Path, clips: Path, run) -> None:  # type: ignore[no-untyped-def]
    run("encode", clips / "a.mp4", "-o", tmp_path / "a.npy", "-m", "tiny", "--device", "cpu")
    assert np.load(tmp_path / "a.npy").dtype == np.uint8  # 16 codes
    info = json.loads(run("info", tmp_path / "a.npy", "--json").stdout)
    assert info["dtype"] == "uint8" and info["codebook_size"] == 16
    np.save(tmp_path / "a.npy", np.load(tmp_path / "a.npy").astype(np.uint16))  # as before
    assert json.loads(run("info", tmp_path / "a.npy", "--json").stdout)["dtype"] == "uint16"
    decoded = run("decode", tmp_path / "a.npy", "-o", tmp_path / "a.mp4", "--device", "cpu")
    assert "9 frames 32x48" in decoded.stdout


# ------------------------------------------------ 12. help text and messages


@pytest.mark.parametrize("columns", [80, 100])
@pytest.mark.parametrize("words", [["train"], ["convert"], ["remap", "build"], ["pack"]])
def test_help_paragraphs_wrap_at_the_terminal_width_not_mid_sentence(
    words: list[str], columns: int
) -> None:
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    prose = [line.rstrip() for line in lines[: next(i for i, line in enumerate(lines)
                                                     if line.startswith("╭"))]]
    for line, after in zip(prose, prose[1:], strict=False):
        if line and after and not line.lstrip().startswith("Usage:"):
            # the next line's first word would have fit: the line was broken early
            assert len(line) + 1 + len(after.split()[0]) > columns - 1, (line, after)


def test_help_names_units_and_the_hub() -> None:
    def help_text(*words: str) -> str:
        result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*words, "--help"])
        return " ".join(result.stdout.split())

    assert "--shard-size MB" in help_text("pack")
    for command in ("encode", "decode", "reconstruct"):
        assert "--model -m NAME|DIR|OWNER/REPO" in help_text(command)
    assert "--init-from NAME|DIR|OWNER/REPO" in help_text("train")
    assert "owner/name[@revision]" in help_text("convert")  # shown, not eaten as markup


def test_counts_of_one_are_singular(tmp_path: Path, clips: Path, run) -> None:  # type: ignore[no-untyped-def]
    out = run("encode", clips / "a.mp4", "-o", tmp_path / "a.npy", "-m", "tiny", "--device",
              "cpu", "--max-frames", "1").stdout
    assert ": 1 frame -> indices 1x4x6" in out
    decoded = run("decode", tmp_path / "a.npy", "-o", tmp_path / "a.mp4").stdout
    assert ": 1 frame 32x48 at 8 fps" in decoded
    assert re.search(r"\b1 frames\b", out + decoded) is None


def test_unreadable_videos_are_described_in_words(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    text = make_text(tmp_path / "notes.mp4")
    noise = make_random_bytes(tmp_path / "noise.mp4")
    line = one_line(run("info", text, code=1))
    assert line == f"error: {text}: not a readable video: this is a text file; pass a video file"
    line = one_line(run("info", noise, code=1))
    assert line.startswith(f"error: {noise}: not a readable video (FFmpeg: "), line
    assert not re.search(r"[A-Z]\w+Error", line), line  # no Python / PyAV class names
