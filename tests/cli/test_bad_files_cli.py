"""Bad index files, model directories and remap files run through the real ``vqtok`` process
(README, "Reliability"; issue 6).

Processes are few because each pays the torch import:

- one ``vqtok decode`` over two directories: bad index files next to good ones, and index files
  whose sidecars name bad models (decode loads the model each file names, found through
  ``--model-dir``, so every bad model is tried in the same run); plus a ``.npy`` without its
  sidecar named on the command line (a directory walk only takes ``.npy`` files with one);
- one process per case where the whole run stops at the bad file (``encode -m DIR``,
  ``encode --remap FILE``, ``info``, ``decode --remap``, ``remap build``), two at a time.

Every bad file must give exactly one ``error: PATH: reason`` line naming it, no traceback, exit
status 1 and no output left behind, while good inputs of the same run are still done.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors.torch import load_file, save_file

from tests.clips import make_clip
from tests.tiny import save_tiny_model
from vqtok.api import load
from vqtok.io.remap import save_used
from vqtok.io.video import probe
from vqtok.pipeline.encode import EncodeOptions, encode_file

pytestmark = pytest.mark.slow  # spawns processes; `make test-fast` skips them

BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
FRAMES = 5  # 5 frames of 32x48 -> a 2x4x6 grid; the tiny model has 16 codes (uint8 files)
DROP = object()  # a sidecar change that deletes the key

# ------------------------------------------------------------------------ bad index files

# sidecar changes (dotted keys) -> the reason the error line must give
SIDECARS: dict[str, tuple[dict[str, Any], str]] = {
    "sidecar_unknown_key": ({"colour": "red"}, r"unknown metadata key\(s\): colour"),
    "sidecar_missing_key": ({"grid": DROP}, r"metadata key 'grid' is missing"),
    "sidecar_wrong_type": ({"grid": "2x4x6"}, r"'grid' must be list"),
    "sidecar_nested_type": ({"source.fps": 8}, r"'source.fps' must be str"),
    "sidecar_version_2": ({"format_version": 2}, r"format version 2 is not supported"),
    "sidecar_no_version": ({"format_version": DROP}, r"no format_version"),
    "sidecar_bad_value": ({"encoded.frames": 0}, r"invalid metadata: expected encoded.frames"),
    "other_vocabulary": (
        {"quantizer": "fsq", "codebook_size": 240, "levels": [5, 4, 4, 3]},
        r"the model cannot decode these indices \(quantizer 'fsq' vs 'ema_vq'",
    ),
    "other_weights": ({"model_sha256": "0" * 64}, r"weights sha256 000000000000.*--force"),
    "unknown_model": ({"model": "no-such-model"}, r"no model named 'no-such-model'"),
}
RAW_SIDECARS = {
    "sidecar_not_json": ("{not json", r"the sidecar is not valid JSON"),
    "sidecar_empty": ("", r"the sidecar is not valid JSON"),
    "sidecar_list": ("[1, 2]", r"metadata must be a JSON object"),
}


def _changed(meta: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(meta))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = data
        for parent in parents:
            node = node[parent]
        if value is DROP:
            del node[key]
        else:
            node[key] = value
    return data


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _bad_arrays(good: np.ndarray, good_bytes: bytes) -> dict[str, tuple[bytes, str]]:
    """``.npy`` contents (each with a valid sidecar) -> reason; ``good`` is (2, 4, 6) uint8."""
    negative = good.astype(np.int64)
    negative[0, 0, 0] = -1
    beyond = good.copy()
    beyond[1, 3, 5] = 16
    npz = io.BytesIO()
    np.savez(npz, indices=good)
    unreadable = r"cannot read the index array"
    return {
        "float32": (_npy_bytes(good.astype(np.float32)),
                    r"dtype float32, expected uint8 or uint16"),
        "signed_negative": (_npy_bytes(negative), r"dtype int64, expected uint8 or uint16"),
        "uint32": (_npy_bytes(good.astype(np.uint32)), r"dtype uint32, expected uint8 or uint16"),
        "rank_2": (_npy_bytes(good.reshape(2, -1)), r"rank 2, expected 3"),
        "rank_4": (_npy_bytes(good[..., None]), r"rank 4, expected 3"),
        "wrong_shape": (_npy_bytes(good[:, :, :5]), r"shape \(2, 4, 5\), the metadata grid"),
        "beyond_vocabulary": (_npy_bytes(beyond), r"index 16 is out of range for a vocab"),
        "pickled": (_npy_bytes(np.array([{"x": 1}], dtype=object)), r"pickled Python objects"),
        "raw_pickle": (pickle.dumps({"not": "an array"}), r"pickled Python objects"),
        "truncated": (good_bytes[:-7], unreadable),
        "header_only": (good_bytes[:40], unreadable),
        "empty": (b"", unreadable),
        "text": (b"just some text\n", r"not a .npy file \(it does not start with the NumPy"),
        "npz": (npz.getvalue(), r"found an .npz archive"),
        "npz_truncated": (npz.getvalue()[:-30], r"it is a damaged zip / .npz archive"),
    }


def _bad_safetensors(
    good: np.ndarray, header: str, good_bytes: bytes
) -> dict[str, tuple[bytes, str]]:
    """``.safetensors`` contents -> reason; ``header`` is the good metadata JSON."""
    save = safetensors.numpy.save
    unreadable = r"not a readable safetensors file"
    return {
        "st_garbage": (np.random.default_rng(0).bytes(256), unreadable),
        "st_truncated": (good_bytes[:-9], unreadable),
        "st_no_metadata": (save({"indices": good}), r"no 'vqtok' metadata"),
        "st_wrong_tensor": (save({"codes": good}, {"vqtok": header}), r"no tensor named 'indices'"),
        "st_float": (save({"indices": good.astype(np.float32)}, {"vqtok": header}),
                     r"dtype float32, expected uint8 or uint16"),
        "st_bad_json": (save({"indices": good}, {"vqtok": "{"}), r"header metadata is not valid"),
    }


def _index_corpus(codes: Path, source: Path) -> dict[str, str]:
    """Write bad index files into ``codes`` beside the good ones in it; returns stem -> reason.

    ``source`` holds ``good.npy/.json``, ``good_st.safetensors`` and ``remapped.npy/.json``.
    """
    good_bytes = (source / "good.npy").read_bytes()
    good = np.load(source / "good.npy")
    meta = json.loads((source / "good.json").read_text())
    bad: dict[str, str] = {}
    for name, (changes, reason) in SIDECARS.items():
        (codes / f"{name}.npy").write_bytes(good_bytes)
        (codes / f"{name}.json").write_text(json.dumps(_changed(meta, changes)))
        bad[name] = reason
    for name, (text, reason) in RAW_SIDECARS.items():
        (codes / f"{name}.npy").write_bytes(good_bytes)
        (codes / f"{name}.json").write_text(text)
        bad[name] = reason
    for name, (data, reason) in _bad_arrays(good, good_bytes).items():
        (codes / f"{name}.npy").write_bytes(data)
        (codes / f"{name}.json").write_text(json.dumps(meta))
        bad[name] = reason
    st_bytes = (source / "good_st.safetensors").read_bytes()
    header = json.dumps(_changed(meta, {}))
    for name, (data, reason) in _bad_safetensors(good, header, st_bytes).items():
        (codes / f"{name}.safetensors").write_bytes(data)
        bad[name] = reason
    for suffix in (".npy", ".json"):
        shutil.copy(source / f"remapped{suffix}", codes / f"remapped_without_remap{suffix}")
    bad["remapped_without_remap"] = r"the indices are remapped .*pass that file with --remap"
    return bad


# ---------------------------------------------------------------------------- bad models


def _edit_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        tensors = load_file(str(directory / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(directory / "model.safetensors"))

    return apply


def _edit_config(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        edit(config)
        (directory / "config.json").write_text(json.dumps(config))

    return apply


def _patch_bytes(name: str, start: int, data: bytes | None) -> Callable[[Path], None]:
    """Overwrite ``name`` from ``start`` with ``data``, or cut it at ``start`` (data None)."""

    def apply(directory: Path) -> None:
        raw = bytearray((directory / name).read_bytes())
        raw = raw[:start] if data is None else raw[:start] + data + raw[start + len(data):]
        (directory / name).write_bytes(bytes(raw))

    return apply


CONV_OUT = "decoder.conv_out"
MODELS: dict[str, tuple[Callable[[Path], None], str]] = {
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), r"has no weights"),
    "missing-tensor": (_edit_weights(lambda t: t.pop(f"{CONV_OUT}.bias")),
                       rf"missing tensor\(s\): {CONV_OUT}.bias"),
    "extra-tensor": (_edit_weights(lambda t: t.update({"bogus.weight": torch.zeros(2)})),
                     r"unexpected tensor\(s\): bogus.weight"),
    "wrong-shape": (_edit_weights(lambda t: t.update({f"{CONV_OUT}.bias": torch.zeros(4)})),
                    rf"mis-shaped tensor\(s\): {CONV_OUT}.bias \(4,\) \(model expects \(3,\)\)"),
    "nan-weights": (_edit_weights(lambda t: t[f"{CONV_OUT}.weight"].view(-1)[7:9].fill_(np.nan)),
                    rf"NaN or infinite values in: {CONV_OUT}.weight"),
    "inf-weights": (_edit_weights(lambda t: t[f"{CONV_OUT}.bias"].fill_(np.inf)),
                    rf"NaN or infinite values in: {CONV_OUT}.bias"),
    "corrupt-header": (_patch_bytes("model.safetensors", 8, b"\x00garbage{[" * 4),
                       r"corrupt or unreadable safetensors file"),
    "huge-header": (_patch_bytes("model.safetensors", 0, struct.pack("<Q", 2**60)),
                    r"corrupt or unreadable safetensors file"),
    "truncated-weights": (_patch_bytes("model.safetensors", 5000, None),
                          r"corrupt or unreadable safetensors file"),
    "config-unknown-key": (_edit_config(lambda c: c.update(colour="red")),
                           r"config.json: unknown key\(s\) colour"),
    "config-missing-key": (_edit_config(lambda c: c.pop("config")),
                           r"config.json: missing key\(s\) config"),
    "config-unknown-option": (_edit_config(lambda c: c["config"].update(colour="red")),
                              r"config.json: unknown tokenizer config key\(s\): colour"),
    "config-wrong-type": (_edit_config(lambda c: c["config"].update(channels="8")),
                          r"config.json: tokenizer config key 'channels' must be an integer"),
    "config-wrong-list": (_edit_config(lambda c: c["config"].update(channel_multipliers=2)),
                          r"'channel_multipliers' must be a list"),
    "config-not-object": (_edit_config(lambda c: c.update(config=[1, 2])),
                          r"config.json: 'config' must be an object"),
    "config-version-2": (_edit_config(lambda c: c.update(format_version=2)),
                         r"config.json: format_version 2 is not supported"),
    "config-family": (_edit_config(lambda c: c.update(family="nope")),
                      r"config.json: unknown family 'nope'"),
    "config-input": (_edit_config(lambda c: c["input"].update(value_range=[0, 1])),
                     r"config.json: input convention \{'value_range': \[0, 1\]\} does not match"),
    "config-bad-json": (_patch_bytes("config.json", 0, b"{{{"), r"unreadable JSON"),
    "config-list": (lambda d: (d / "config.json").write_text("[]"), r"must hold a JSON object"),
    "no-config": (lambda d: (d / "config.json").unlink(),
                  r"config.json: missing; this is not a model directory"),
}
# found by name (decode) only with a config.json: these go through ``encode -m DIR`` instead
BY_DIRECTORY_ONLY = ("no-config",)
BY_DIRECTORY = ("no-config", "nan-weights")

# -------------------------------------------------------------------------- bad remap files

REMAPS: dict[str, tuple[np.ndarray | None, str]] = {  # None: a cut .npz
    "unsorted": (np.array([3, 1, 2]), r"not sorted \(id 1 follows 3\)"),
    "duplicates": (np.array([1, 2, 2, 5]), r"duplicate id 2"),
    "negative": (np.array([-1, 2, 3]), r"negative id \(-1\)"),
    "two_d": (np.array([[1, 2], [3, 4]]), r"must be 1-D, got shape \(2, 2\)"),
    "float": (np.array([1.0, 2.0]), r"dtype float64; expected an integer dtype"),
    "beyond_codebook": (np.array([1, 16]), r"holds id 16, beyond the codebook of 16 codes"),
    "pickled": (np.array([{"x": 1}], dtype=object), r"not a plain .npy integer array"),
    "truncated_npz": (None, r"not a plain .npy integer array \(File is not a zip file\)"),
}


@dataclass(frozen=True)
class Case:
    """One process that must fail on one file: its arguments, the path the single error line
    starts with, the reason (a regex) and an output path that must not exist afterwards."""

    args: tuple[str, ...]
    names: Path
    reason: str
    output: Path


@dataclass
class Setup:
    """The files of the module: ``codes`` (bad and good index files), ``orphan`` (a ``.npy``
    without sidecar), ``model_codes`` (an index file per bad model in ``models``), where the
    decoded videos go, and the one-failure-per-process cases."""

    codes: Path
    orphan: Path
    index_bad: dict[str, str]
    models: Path
    model_codes: Path
    decoded: Path
    cases: dict[str, Case]


def _encode_sources(root: Path, model: Path) -> Path:
    """Good index files of one clip: ``good.npy``, ``good_st.safetensors``, ``remapped.npy``."""
    clip = make_clip(root / "clip.mp4", frames=FRAMES, size=(32, 48))
    tokenizer = load(model, device="cpu")
    source = root / "source"
    encode_file(clip, source / "good.npy", tokenizer)
    as_safetensors = EncodeOptions(format="safetensors")
    encode_file(clip, source / "good_st.safetensors", tokenizer, as_safetensors)
    save_used(root / "used.npy", np.unique(np.load(source / "good.npy")).astype(np.int64))
    encode_file(clip, source / "remapped.npy", tokenizer, EncodeOptions(remap=root / "used.npy"))
    return source


def _model_corpus(models: Path, source: Path, codes: Path) -> None:
    """A broken copy of the tiny model per case in ``models``, and in ``codes`` an index file
    naming each (by the sidecar's ``model``), plus a good one naming ``tiny``."""
    meta = json.loads((source / "good.json").read_text())
    codes.mkdir()
    for name, (damage, _) in MODELS.items():
        shutil.copytree(models / "tiny", models / name)
        damage(models / name)
        if name not in BY_DIRECTORY_ONLY:
            shutil.copy(source / "good.npy", codes / f"{name}.npy")
            (codes / f"{name}.json").write_text(json.dumps(_changed(meta, {"model": name})))
    shutil.copy(source / "good.npy", codes / "good.npy")
    shutil.copy(source / "good.json", codes / "good.json")


def _single_cases(root: Path, models: Path, source: Path, clip: Path) -> dict[str, Case]:
    out = root / "single"
    tiny = ["-m", str(models / "tiny"), "--device", "cpu", "-q"]
    cases = {
        f"model-{name}": Case(
            ("encode", str(clip), "-m", str(models / name), "-o", str(out / name / "c.npy")),
            models / name, MODELS[name][1], out / name)
        for name in BY_DIRECTORY
    }
    weights = models / "tiny" / "model.safetensors"
    cases["model-not-a-directory"] = Case(
        ("encode", str(clip), "-m", str(weights), "-o", str(out / "nd" / "c.npy")),
        weights, r"no model directory here", out / "nd")
    cases["info-corrupt-header"] = Case(
        ("info", str(models / "corrupt-header")), models / "corrupt-header" / "model.safetensors",
        r"unreadable weights", out / "none")
    (root / "remaps").mkdir()
    for name, (array, reason) in REMAPS.items():
        path = root / "remaps" / f"{name}.npy"
        if array is None:
            np.savez(path.with_suffix(".npz"), used=np.arange(3))
            path.write_bytes(path.with_suffix(".npz").read_bytes()[:-30])
        else:
            np.save(path, array, allow_pickle=True)
        cases[f"remap-{name}"] = Case(
            ("encode", str(clip), *tiny, "--remap", str(path), "-o", str(out / name / "c.npy")),
            path, reason, out / name)
    other = root / "remaps" / "other.npy"
    save_used(other, np.array([0, 1, 2], dtype=np.int64))  # valid, but not the one used
    cases["decode-other-remap"] = Case(
        ("decode", str(source / "remapped.npy"), *tiny, "--remap", str(other),
         "-o", str(out / "dr" / "v.mp4")),
        source / "remapped.npy", r"other.npy \(3 codes, .*\) is not the remap file", out / "dr")
    return cases


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("badfiles")
    models = root / "models"
    save_tiny_model(models / "tiny")
    source = _encode_sources(root, models / "tiny")
    codes = root / "codes"
    codes.mkdir()
    for name in ("good.npy", "good.json", "good_st.safetensors"):
        shutil.copy(source / name, codes / name)
    shutil.copy(root / "used.npy", codes / "used.npy")  # no sidecar: not an index file, skipped
    index_bad = _index_corpus(codes, source)
    (root / "lonely").mkdir()
    orphan = Path(shutil.copy(source / "good.npy", root / "lonely" / "orphan.npy"))
    _model_corpus(models, source, root / "model_codes")
    cases = _single_cases(root, models, source, root / "clip.mp4")
    cases["remap-build-over-bad-files"] = Case(
        ("remap", "build", str(codes), "-o", str(root / "built.npy")), codes,
        r"", root / "built.npy")
    return Setup(codes, orphan, index_bad, models, root / "model_codes", root / "decoded", cases)


def _run(args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VQTOK, *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def runs(setup: Setup) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every process of the module, two at a time (the machine's cores)."""
    commands = {name: case.args for name, case in setup.cases.items()}
    # one decode over both directories and the orphan: per-file errors, the run goes on
    commands["corpus"] = ("decode", str(setup.codes), str(setup.model_codes), str(setup.orphan),
                          "-o", str(setup.decoded), "--model-dir", str(setup.models),
                          "--device", "cpu")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def _only_line_for(errors: list[str], stem: Path, then: str = r"(\.\w+)?: ") -> str:
    """The single error line naming ``stem`` followed by ``then`` (by default any suffix:
    ``x.npy`` or its sidecar ``x.json``)."""
    mine = [line for line in errors if re.match(rf"error: {re.escape(str(stem))}{then}", line)]
    assert len(mine) == 1, (stem, errors)
    return mine[0]


def test_corpus_exit_code_summary_and_outputs(setup: Setup, runs: dict[str, Any]) -> None:
    result = runs["corpus"]
    assert result.returncode == 1, result.stderr
    errors = _error_lines(result)
    assert len(result.stderr.splitlines()) == len(errors)  # nothing but the error lines
    # used.npy in codes/ has no sidecar: not an index file, so skipped, not reported
    assert len(errors) == len(setup.index_bad) + 1 + len(MODELS) - len(BY_DIRECTORY_ONLY)
    assert f"3 done, 0 skipped, {len(errors)} failed" in result.stdout
    written = sorted(
        p.relative_to(setup.decoded) for p in setup.decoded.rglob("*") if not p.is_dir()
    )
    assert written == [Path("codes/good.mp4"), Path("codes/good_st.mp4"),
                       Path("model_codes/good.mp4")]  # no temp or partial file
    for video in written:
        assert probe(setup.decoded / video).frames == FRAMES


def test_each_bad_index_file_has_its_line(setup: Setup, runs: dict[str, Any]) -> None:
    errors = _error_lines(runs["corpus"])
    for name, reason in setup.index_bad.items():
        assert re.search(reason, _only_line_for(errors, setup.codes / name)), (name, errors)
    orphan = _only_line_for(errors, setup.orphan.with_suffix(""))
    assert "the metadata sidecar orphan.json is missing" in orphan


def test_each_bad_model_has_its_line(setup: Setup, runs: dict[str, Any]) -> None:
    errors = _error_lines(runs["corpus"])
    for name, (_, reason) in MODELS.items():
        if name not in BY_DIRECTORY_ONLY:
            # the line names the model directory (or its bad file): the model is the problem
            line = _only_line_for(errors, setup.models / name, "[:/]")
            assert re.search(reason, line), (name, line)


@pytest.mark.parametrize(
    "name",
    [f"model-{n}" for n in BY_DIRECTORY]
    + ["model-not-a-directory", "info-corrupt-header"]
    + [f"remap-{n}" for n in REMAPS]
    + ["decode-other-remap", "remap-build-over-bad-files"],
)
def test_run_stops_with_one_line(setup: Setup, runs: dict[str, Any], name: str) -> None:
    case, result = setup.cases[name], runs[name]
    assert result.returncode == 1, (name, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and _error_lines(result) == lines, (name, result.stderr)
    assert re.match(rf"error: {re.escape(str(case.names))}[:/]", lines[0]), lines[0]
    assert re.search(case.reason, lines[0]), lines[0]
    assert not case.output.exists() or not any(p.is_file() for p in case.output.rglob("*"))
