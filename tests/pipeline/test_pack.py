"""``vqtok pack`` (vqtok.pipeline.pack): Parquet token datasets, exact round trips, resume, bad
input.

Index files are written directly with `vqtok.io.tokens.save_tokens` (no model runs): single- and
multi-level, remapped, a uint32 vocabulary, ``.safetensors`` beside ``.npy``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.invoke import invoker
from vqtok.cli.app import app
from vqtok.errors import VqtokError
from vqtok.io.tokens import (
    EncodedInfo,
    RemapInfo,
    SourceInfo,
    TokenMetadata,
    load_tokens,
    save_tokens,
    sidecar_path,
)

pq = pytest.importorskip("pyarrow.parquet", reason="token datasets need pyarrow (vqtok[data])")

from vqtok.io.datasets import TokenDataset  # noqa: E402 - needs pyarrow
from vqtok.io.shards import MANIFEST  # noqa: E402
from vqtok.pipeline.pack import PackProgress, pack_dataset  # noqa: E402

SHA = "ab" * 32


def make_meta(codebooks: int = 1, vocab: int = 1024, t: int = 3, **changes: object
              ) -> TokenMetadata:
    meta = TokenMetadata(
        model="tiny", model_sha256=SHA, family="vqtok",
        quantizer="ema_rvq" if codebooks > 1 else "ema_vq", codebook_size=vocab,
        num_codebooks=codebooks, grid=(t, 4, 6),
        source=SourceInfo(file="clip.mp4", frames=4 * t - 3, fps="30000/1001", size=(32, 48)),
        encoded=EncodedInfo(frames=4 * t - 3 - (t > 1), size=(32, 48), resize="none",
                            padding=int(t > 1), fps="30000/1001"),
    )
    return replace(meta, **changes)  # type: ignore[arg-type]


def write_clips(directory: Path, count: int, seed: int = 0, **meta_args: object) -> list[Path]:
    """``count`` index files of 1..4 latent frames with random indices; every third one is a
    ``.safetensors`` file."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        meta = make_meta(t=1 + i % 4, **meta_args)  # type: ignore[arg-type]
        meta = replace(meta, source=replace(meta.source, file=f"clip{i}.mp4"))
        indices = rng.integers(0, meta.vocab, size=meta.shape)
        suffix = ".safetensors" if i % 3 == 2 else ".npy"
        paths.append(save_tokens(directory / f"c{i:03d}{suffix}", indices, meta))
    return paths


def read_plain(dataset: Path) -> dict[str, np.ndarray]:
    """index_file -> indices, read with plain pyarrow (no vqtok code)."""
    table = pq.read_table(sorted(dataset.glob("*.parquet")))
    rows = table.select(["index_file", "indices", "shape"]).to_pylist()
    return {r["index_file"]: np.asarray(r["indices"]).reshape(r["shape"]) for r in rows}


CASES = {
    "single-level": {},
    "multi-level": {"codebooks": 4},
    "remapped": {"remap": RemapInfo(sha256="cd" * 32, size=300)},
    "uint32": {"vocab": 2**18, "quantizer": "lfq", "bit_order": "msb"},
    "uint8": {"vocab": 256},
    "remapped-uint8": {"remap": RemapInfo(sha256="cd" * 32, size=100)},  # vocab: the remap's
}
DTYPES = {"uint32": np.uint32, "uint8": np.uint8, "remapped-uint8": np.uint8}


def test_every_facts_column_is_read_from_a_sidecar_field() -> None:
    """The shards' facts columns come from the sidecar's dataclass (`Column.field`): each path
    names a field of `TokenMetadata` or of one of its parts (or its ``vocab`` property), so a
    renamed sidecar field fails here instead of writing a column of Nones."""
    from vqtok.io.shards import COLUMNS, SHARED_COLUMNS

    def unwrap(hint: object) -> object:  # X | None -> X
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint

    for column in COLUMNS:
        owner: object = TokenMetadata
        for part in column.field.split(".") if column.field else []:
            if part.isdigit():
                assert typing.get_origin(owner) is tuple, column
                owner = typing.get_args(owner)[int(part)]
                continue
            hints = typing.get_type_hints(owner)
            if part not in hints:
                assert isinstance(getattr(owner, part, None), property), column
                break
            owner = unwrap(hints[part])
    assert [c.name for c in COLUMNS if c.field is None] == ["index_file", "metadata"]
    assert SHARED_COLUMNS == ("model", "model_sha256", "family", "quantizer", "codebook_size",
                              "num_codebooks", "vocab", "remap_sha256", "remap_size", "levels")


@pytest.mark.parametrize("case", CASES)
def test_round_trip_exact(tmp_path: Path, case: str) -> None:
    paths = write_clips(tmp_path / "codes", 12, **CASES[case])
    dtype = DTYPES.get(case, np.uint16)
    shard_mb = 0.0005 * np.dtype(dtype).itemsize / 2  # about the same clips per shard
    report = pack_dataset([tmp_path / "codes"], tmp_path / "ds", shard_size_mb=shard_mb)
    assert report.shards >= 3 and report.written == report.shards and report.rows == 12
    manifest = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    originals = {f"codes/{p.name}": load_tokens(p) for p in paths}
    assert report.tokens == manifest["tokens"] == sum(a.size for a, _ in originals.values())
    assert manifest["dtype"] == np.dtype(dtype).name
    schema = pq.read_schema(tmp_path / "ds" / manifest["shards"][0]["file"])
    assert schema.field("indices").type.value_type.to_pandas_dtype() == dtype

    plain = read_plain(tmp_path / "ds")
    dataset = TokenDataset(tmp_path / "ds")
    assert len(dataset) == len(plain) == 12
    for i in range(len(dataset)):
        item = dataset[i]
        array, meta = originals[item["index_file"]]
        assert item["indices"].dtype == torch_int64() and item["indices"].shape == array.shape
        assert np.array_equal(item["indices"].numpy(), array)
        assert np.array_equal(plain[item["index_file"]], array)
        assert dataset.token_metadata(i) == meta
        assert item["source"] == meta.source.file and item["frames"] == meta.encoded.frames
        assert item["padding"] == meta.encoded.padding and item["fps"] == meta.encoded.fps
    assert dataset.manifest["vocab"] == meta.vocab
    assert dataset.manifest["num_codebooks"] == meta.num_codebooks
    assert dataset.manifest["remap"] == (None if meta.remap is None else {
        "sha256": meta.remap.sha256, "size": meta.remap.size})
    table = pq.read_table(tmp_path / "ds" / manifest["shards"][-1]["file"])
    assert set(table.column("vocab").to_pylist()) == {meta.vocab}
    assert set(table.column("remap_sha256").to_pylist()) == {
        meta.remap.sha256 if meta.remap else None}
    assert list(originals) == [dataset[i]["index_file"] for i in range(12)]  # input order


def torch_int64():  # type: ignore[no-untyped-def]
    import torch

    return torch.int64


def test_uint16_files_of_earlier_versions_pack_as_uint8_and_new_keys(tmp_path: Path) -> None:
    """Files of <= 256 codes that an earlier vqtok wrote as uint16 still pack (as uint8), and
    a dataset packed as uint16 is not taken for this one: the shard key names the dtype."""
    paths = write_clips(tmp_path / "codes", 4, vocab=16)
    for path in paths:
        if path.suffix == ".npy":
            np.save(path, np.load(path).astype(np.uint16))
    originals = [load_tokens(p)[0] for p in paths]
    cli = CliRunner().invoke(app, ["pack", str(tmp_path / "codes"), "-o", str(tmp_path / "ds")])
    assert cli.exit_code == 0, cli.stderr
    assert "16 (uint8)" in cli.stdout
    dataset = TokenDataset(tmp_path / "ds")
    assert dataset.manifest["dtype"] == "uint8"
    for i, original in enumerate(originals):
        assert np.array_equal(dataset[i]["indices"].numpy(), original)


def test_rerun_gives_the_same_bytes(tmp_path: Path) -> None:
    write_clips(tmp_path / "codes", 9)
    first = pack_dataset([tmp_path / "codes"], tmp_path / "a", shard_size_mb=0.0005)
    pack_dataset([tmp_path / "codes"], tmp_path / "b", shard_size_mb=0.0005)
    again = pack_dataset([tmp_path / "codes"], tmp_path / "a", shard_size_mb=0.0005)
    assert again.written == 0 and again.shards == first.shards
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_progress_reports_files_rows_and_bytes(tmp_path: Path) -> None:
    write_clips(tmp_path / "codes", 7)
    seen: list[PackProgress] = []
    report = pack_dataset([tmp_path / "codes"], tmp_path / "ds", 0.0005, progress=seen.append)
    checks = [p for p in seen if p.stage == "check"]
    packs = [p for p in seen if p.stage == "pack"]
    assert [p.files for p in checks] == list(range(1, 8)) and seen[:7] == checks
    assert [p.files for p in packs] == [p.rows for p in packs] == list(range(1, 8))
    assert all(p.total == 7 for p in seen)
    assert packs[-1].index_bytes == report.index_bytes and report.index_bytes > 0
    assert [p.index_bytes for p in packs] == sorted(p.index_bytes for p in packs)
    seen.clear()
    pack_dataset([tmp_path / "codes"], tmp_path / "ds", 0.0005, progress=seen.append)
    packs = [p for p in seen if p.stage == "pack"]  # kept shards: one record each
    assert len(packs) == report.shards and packs[-1].files == packs[-1].rows == 7


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


KILLED = """
import os, sys
from vqtok.pipeline.pack import pack_dataset
def stop(p):
    if p.stage == "pack" and p.files == int(sys.argv[3]):
        os._exit(9)  # as abrupt as a kill: no cleanup, no finally
pack_dataset([sys.argv[1]], sys.argv[2], shard_size_mb=0.0005, progress=stop)
"""


@pytest.mark.slow  # spawns a process
def test_killed_pack_leaves_no_torn_shard_and_resumes(tmp_path: Path) -> None:
    write_clips(tmp_path / "codes", 12)
    whole = pack_dataset([tmp_path / "codes"], tmp_path / "whole", shard_size_mb=0.0005)
    cut = tmp_path / "cut"
    # stop in the middle of the third shard (the bar reports each file as it is read)
    stop_at = sum(json.loads((tmp_path / "whole" / MANIFEST).read_text())["shards"][i]["rows"]
                  for i in range(2)) + 1
    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "codes"), str(cut),
                           str(stop_at)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    left = files(cut)
    assert MANIFEST not in left
    shards = [n for n in left if n.startswith("shard-")]
    assert len(shards) == 2  # whole shards only, each identical to the uninterrupted run's
    assert all(left[n] == (tmp_path / "whole" / n).read_bytes() for n in shards)
    with pytest.raises(VqtokError, match="unfinished pack"):
        TokenDataset(cut)
    resumed = pack_dataset([tmp_path / "codes"], cut, shard_size_mb=0.0005)
    assert resumed.written == whole.shards - 2
    assert files(cut) == files(tmp_path / "whole")  # leftover temp files are gone too


def test_overwrite_replaces_another_dataset(tmp_path: Path) -> None:
    write_clips(tmp_path / "one", 6)
    write_clips(tmp_path / "two", 2, seed=1)
    pack_dataset([tmp_path / "one"], tmp_path / "ds", shard_size_mb=0.0005)
    with pytest.raises(VqtokError, match="holds another dataset"):
        pack_dataset([tmp_path / "two"], tmp_path / "ds", shard_size_mb=0.0005)
    report = pack_dataset([tmp_path / "two"], tmp_path / "ds", shard_size_mb=1, overwrite=True)
    assert report.shards == 1 and report.rows == 2
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        MANIFEST, "shard-00000-of-00001.parquet"]  # the old shards are gone


def test_missing_pyarrow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    write_clips(tmp_path / "codes", 1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(VqtokError, match=r"pip install 'vqtok\[data\]'"):
        pack_dataset([tmp_path / "codes"], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


# ----------------------------------------------------------------------------- through the CLI


@pytest.fixture()
def cli():  # type: ignore[no-untyped-def]
    return invoker()


def error_line(result, path: Path) -> str:  # type: ignore[no-untyped-def]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    return lines[0]


def test_cli_pack_and_info(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_clips(tmp_path / "codes", 8, codebooks=2)
    result = cli("pack", tmp_path / "codes", "-o", tmp_path / "ds", "--shard-size", "0.0005")
    manifest = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert "│ rows       │ 8 " in result.stdout
    assert f"│ tokens     │ {manifest['tokens']:,} " in result.stdout
    assert f"│ shards     │ {len(manifest['shards'])} " in result.stdout
    again = json.loads(cli("pack", tmp_path / "codes", "-o", tmp_path / "ds", "--shard-size",
                           "0.0005", "--json").stdout)
    assert again["written"] == 0 and again["rows"] == 8 and again["bytes"] == manifest["bytes"]
    info = json.loads(cli("info", tmp_path / "ds", "--json").stdout)
    assert info["kind"] == "dataset" and info["rows"] == 8 and info["model"] == "tiny"
    assert info["vocab"] == 1024 and info["num_codebooks"] == 2
    assert info["shard_bytes"] == [(tmp_path / "ds" / s["file"]).stat().st_size
                                   for s in manifest["shards"]]
    assert "dataset:" in cli("info", tmp_path / "ds").stdout
    (tmp_path / "ds" / MANIFEST).unlink()  # as a killed pack leaves it
    line = error_line(cli("info", tmp_path / "ds", code=1), tmp_path / "ds")
    assert "an unfinished pack" in line and "vqtok pack again" in line
    cli("pack", tmp_path / "codes", "-o", tmp_path / "x", "--shard-size", "0", code=2)


def corrupt(directory: Path, case: str) -> Path:
    """Make one bad file among good ones; returns the file the error must name."""
    good = write_clips(directory, 4)
    if case == "missing sidecar":
        sidecar_path(good[1]).unlink()
        return good[1]
    if case == "mismatched sidecar":
        data = json.loads(sidecar_path(good[1]).read_text())
        data["grid"][0] += 1
        sidecar_path(good[1]).write_text(json.dumps(data))
        return good[1]
    if case == "another model":
        return write_clips(directory / "later", 1, model_sha256="ef" * 32)[0]
    if case == "another remap":
        return write_clips(directory / "later", 1, remap=RemapInfo("cd" * 32, 500))[0]
    if case == "damaged npy":
        data = good[1].read_bytes()
        good[1].write_bytes(data[: len(data) - 7])
        return good[1]
    assert case == "index out of range"  # a whole, well-formed .npy with a bad value
    array = np.load(good[3])
    array.flat[5] = 2000  # the vocabulary has 1024 codes
    np.save(good[3], array)
    return good[3]


@pytest.mark.parametrize("case", ["missing sidecar", "mismatched sidecar", "another model",
                                  "another remap", "damaged npy", "index out of range"])
def test_cli_bad_input_one_line_nothing_written(tmp_path: Path, cli, case: str) -> None:  # type: ignore[no-untyped-def]
    bad = corrupt(tmp_path / "codes", case)
    files = sorted((tmp_path / "codes").rglob("*.npy")) + sorted(
        (tmp_path / "codes").rglob("*.safetensors"))
    result = cli("pack", *files, "-o", tmp_path / "ds", code=1)
    line = error_line(result, bad)
    if case == "another model":
        assert "comes from model 'tiny' (efefefef" in line and "pack them separately" in line
    if case == "index out of range":
        assert "out of range" in line
    assert not (tmp_path / "ds").exists()


def test_cli_refuses_a_non_empty_output(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_clips(tmp_path / "codes", 3)
    write_clips(tmp_path / "other", 3, seed=5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    line = error_line(cli("pack", tmp_path / "codes", "-o", tmp_path / "busy", code=1),
                      tmp_path / "busy")
    assert "not empty and not a vqtok dataset" in line
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    cli("pack", tmp_path / "codes", "-o", tmp_path / "ds", "-q")
    before = files(tmp_path / "ds")
    line = error_line(cli("pack", tmp_path / "other", "-o", tmp_path / "ds", code=1),
                      tmp_path / "ds")
    assert "holds another dataset" in line and "--overwrite" in line
    assert files(tmp_path / "ds") == before
    cli("pack", tmp_path / "other", "-o", tmp_path / "ds", "--overwrite", "-q")
    assert files(tmp_path / "ds") != before
