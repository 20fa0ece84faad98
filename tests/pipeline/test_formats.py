"""``vqtok pack --format megatron|mds|litdata|webdataset|parquet --flatten ...`` (issue #32).

Real encodes of two tiny models (EMA-VQ with one codebook; residual VQ with 3 levels), one model
per dataset, packed in every format under every flattening, then read back with THAT format's
own reader (megatron-core's ``IndexedDataset``, ``litdata.StreamingDataset``,
``webdataset.WebDataset``, pyarrow) and turned back into (t, h, w[, L]) with the convention the
manifest records, written out here (not vqtok's code): every clip's exact indices. MDS has no
installable reader beside vqtok (mosaicml-streaming pins transformers<5), so its writer is
checked byte for byte against files streaming's own ``MDSWriter`` wrote
(``tests/fixtures/mds-streaming``), and streaming reads it when it happens to be installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.clips import make_clip
from tests.invoke import invoker
from tests.pipeline.test_pack import write_clips
from tests.tiny import tiny_config
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.tokens import load_tokens
from vqtok.io.video import read_frames

pa = pytest.importorskip("pyarrow", reason="token datasets need pyarrow (vqtok[data])")
import pyarrow.dataset  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from vqtok.data import Flattening, TokenDataset, open_rows, read_row  # noqa: E402
from vqtok.data.formats import mds  # noqa: E402
from vqtok.data.records import ClipRecord  # noqa: E402
from vqtok.errors import VqtokError  # noqa: E402
from vqtok.io.shards import LEGACY_MANIFEST, MANIFEST  # noqa: E402
from vqtok.pipeline.pack import pack_dataset  # noqa: E402

MODELS = {"vq": ("ema_vq", {"codebook_size": 16}), "rvq": ("ema_rvq", {"num_levels": 3,
                                                                       "codebook_sizes": 16})}
CASES = [(layout, flatten, model)
         for layout in ("parquet", "megatron", "mds", "litdata", "webdataset")
         for flatten in ("interleave", "offset", "levels")
         for model in MODELS
         if not (flatten == "levels" and layout in ("megatron", "litdata"))]
FIXTURE = Path(__file__).parents[1] / "fixtures" / "mds-streaming"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    models = tmp_path_factory.mktemp("models")
    for name, (kind, options) in MODELS.items():
        save_pretrained(VideoTokenizer(tiny_config(kind, options)), models / f"tiny-{name}")
    return invoker({"VQTOK_MODELS": str(models)})


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, cli) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Two clips encoded with each model: ``<root>/<model>/{a,b}.npy`` (+ sidecars)."""
    videos = tmp_path_factory.mktemp("videos")
    make_clip(videos / "a.mp4", frames=9, size=(32, 48), fps=8)
    make_clip(videos / "b.mp4", frames=5, size=(32, 48), fps=8)
    root = tmp_path_factory.mktemp("codes")
    for name in MODELS:
        cli("encode", videos, "-o", root / name, "-m", f"tiny-{name}", "--device", "cpu", "-q")
    return {name: root / name for name in MODELS}


def originals(codes: Path) -> dict[str, np.ndarray]:
    """Key (as pack names it) -> the index array of the file."""
    return {f"{codes.name}/{p.name}": load_tokens(p)[0] for p in sorted(codes.glob("*.npy"))}


def unflatten(tokens: np.ndarray, shape: list[int], manifest: dict) -> np.ndarray:  # type: ignore[type-arg]
    """The documented conventions, written out: C order over (t, h, w, level); ``offset``
    moved level l's ids up by l * level_stride."""
    values = np.asarray(tokens).astype(np.int64).reshape(shape)
    if manifest["flatten"] == "offset" and len(shape) == 4:
        values = values - np.arange(shape[3]) * manifest["level_stride"]
    return values


# ------------------------------------------------------------- each format's own reader


def read_parquet(ds: Path) -> list[tuple[str, np.ndarray, list[int]]]:
    table = pq.read_table(ds)  # the folder as it is: _vqtok.json is skipped
    assert pyarrow.dataset.dataset(ds).count_rows() == table.num_rows
    return [(r["index_file"], np.asarray(r["indices"]), r["shape"])
            for r in table.select(["index_file", "indices", "shape"]).to_pylist()]


def read_megatron(ds: Path) -> list[tuple[str, np.ndarray, list[int]]]:
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    data = indexed.IndexedDataset(str(ds / "tokens"))
    clips = [json.loads(line) for line in (ds / "_vqtok_clips.jsonl").read_text().splitlines()]
    # one document per clip: the document index marks where each clip starts
    assert list(data.document_indices) == list(range(len(clips) + 1))
    assert [int(n) for n in data.sequence_lengths] == [c["tokens"] for c in clips]
    # copies: the arrays are views of a memory map that closes with ``data``
    return [(c["key"], np.array(data[i]), c["shape"]) for i, c in enumerate(clips)]


def read_mds(ds: Path) -> list[tuple[str, np.ndarray, list[int]]]:
    reader = mds.Reader(ds)  # the layout is checked against streaming's bytes below
    return [(s["key"], s["tokens"], s["shape"]) for s in map(reader.sample, range(len(reader)))]


def read_litdata(ds: Path) -> list[tuple[str, np.ndarray, list[int]]]:
    litdata = pytest.importorskip("litdata")
    data = litdata.StreamingDataset(input_dir=str(ds))
    return [(s["key"], s["tokens"], [int(v) for v in s["shape"]])
            for s in (data[i] for i in range(len(data)))]


def read_webdataset(ds: Path) -> list[tuple[str, np.ndarray, list[int]]]:
    wds = pytest.importorskip("webdataset")
    shards = [str(p) for p in sorted(ds.glob("shard-*.tar"))]
    samples = wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode()
    return [(s["json"]["key"], s["tokens.npy"], s["json"]["shape"]) for s in samples]


READERS = {"parquet": read_parquet, "megatron": read_megatron, "mds": read_mds,
           "litdata": read_litdata, "webdataset": read_webdataset}


@pytest.mark.parametrize(("layout", "flatten", "model"), CASES)
def test_every_format_round_trips_with_its_own_reader(
        tmp_path: Path, encoded: dict[str, Path], layout: str, flatten: str, model: str) -> None:
    ds = tmp_path / "ds"
    report = pack_dataset([encoded[model]], ds, shard_size_mb=0.0005, format=layout,
                          flatten=flatten)
    manifest = json.loads((ds / MANIFEST).read_text())
    want = originals(encoded[model])
    levels = 3 if model == "rvq" else 1
    assert report.rows == len(want) == 2 and report.layout == layout
    assert manifest["layout"] == layout and manifest["flatten"] == flatten
    assert manifest["level_stride"] == 16 and manifest["codes_per_position"] == levels
    assert manifest["token_vocab"] == (16 * levels if flatten == "offset" else 16)
    assert manifest["model_sha256"] and manifest["remap"] is None
    rows = READERS[layout](ds)
    assert [key for key, _, _ in rows] == list(want)  # input order
    for key, tokens, shape in rows:
        assert list(shape) == list(want[key].shape)
        # Parquet: a flat list and its shape in every convention; elsewhere levels keeps arrays
        assert tokens.ndim == (len(shape) if flatten == "levels" != layout != "parquet" else 1)
        assert np.array_equal(unflatten(tokens, shape, manifest), want[key])
        assert int(np.asarray(tokens).max()) < manifest["token_vocab"]
    for i, row in enumerate(open_rows(ds)):  # and vqtok's reader of every layout
        assert row.key == rows[i][0] and np.array_equal(row.indices, want[row.key])
        assert row.meta == load_tokens(encoded[model] / Path(row.key).name)[1]


def test_offset_tokens_name_their_position_and_level(encoded: dict[str, Path]) -> None:
    indices, meta = load_tokens(encoded["rvq"] / "a.npy")
    flat = Flattening.of("offset", meta)
    tokens = flat.flatten(indices)
    assert tokens.shape == (indices.size,) and flat.token_vocab == 48
    for j in (0, 1, 2, 5, tokens.size - 1):
        t, h, w, level = flat.locate(j, meta.grid)
        assert level == tokens[j] // flat.level_stride
        assert indices[t, h, w, level] == tokens[j] - level * flat.level_stride
    assert np.array_equal(flat.unflatten(tokens, indices.shape), indices)


@pytest.mark.parametrize(("vocab", "codebooks", "flatten", "dtype"), [
    (65_499, 1, "interleave", np.uint16),
    (65_500, 1, "interleave", np.int32),
    (32_768, 2, "interleave", np.uint16),
    (32_768, 2, "offset", np.int32),  # 65,536 ids in one vocabulary
])
def test_megatron_vocabularies_from_65500_ids_are_int32(
        tmp_path: Path, vocab: int, codebooks: int, flatten: str, dtype: type) -> None:
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    paths = write_clips(tmp_path / "codes", 3, vocab=vocab, codebooks=codebooks)
    pack_dataset([tmp_path / "codes"], tmp_path / "ds", format="megatron", flatten=flatten)
    manifest = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    data = indexed.IndexedDataset(str(tmp_path / "ds" / "tokens"))
    assert data.index.dtype == dtype and manifest["dtype"] == np.dtype(dtype).name
    for i, path in enumerate(paths):
        want = load_tokens(path)[0]
        assert np.array_equal(unflatten(data[i], list(want.shape), manifest), want)
    if flatten == "offset":
        assert int(max(data[i].max() for i in range(3))) >= 32_768  # level 1 moved up


def test_remapped_offset_strides_by_the_remap_size(tmp_path: Path) -> None:
    from vqtok.io.tokens import RemapInfo

    paths = write_clips(tmp_path / "codes", 3, codebooks=3, remap=RemapInfo("cd" * 32, 300))
    report = pack_dataset([tmp_path / "codes"], tmp_path / "ds", format="mds", flatten="offset")
    manifest = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert report.token_vocab == manifest["token_vocab"] == 900
    assert manifest["level_stride"] == 300 and manifest["remap"]["sha256"] == "cd" * 32
    reader = mds.Reader(tmp_path / "ds")
    for row, path in enumerate(paths):
        sample, want = reader.sample(row), load_tokens(path)[0]
        assert np.array_equal(unflatten(sample["tokens"], sample["shape"], manifest), want)


# ---------------------------------------------------------------------------------- MDS


def golden_samples() -> list[tuple[np.ndarray, ClipRecord]]:
    """tests/fixtures/mds-streaming/make.py's samples, as (tokens, record)."""
    out, start = [], 0
    for i, t in enumerate((2, 1, 3)):
        tokens = ((np.arange(t * 18) * 37 + i) % 1000).astype(np.uint16).reshape(t, 2, 3, 3)
        out.append((tokens, ClipRecord(f"codes/clip{i}.npy", (t, 2, 3, 3), "30000/1001", start,
                                       tokens.size, json.dumps({"clip": i}))))
        start += tokens.size
    return out


def test_mds_writer_gives_the_bytes_streaming_writes(tmp_path: Path) -> None:
    writer = mds.Writer(tmp_path, np.dtype(np.uint16), 700)
    for tokens, record in golden_samples():
        writer.add(tokens, record)
    files = [f["file"] for f in writer.close()]
    assert files == ["shard.00000.mds", "shard.00001.mds", "index.json"]
    for name in files:
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), name
    reader = mds.Reader(FIXTURE)  # and streaming's files read back here
    assert len(reader) == 3
    for row, (tokens, record) in enumerate(golden_samples()):
        sample = reader.sample(row)
        assert np.array_equal(sample["tokens"], tokens) and sample["tokens"].dtype == np.uint16
        assert {k: sample[k] for k in record.fields()} == record.fields()


def test_streaming_reads_mds_when_installed(tmp_path: Path, encoded: dict[str, Path]) -> None:
    streaming = pytest.importorskip("streaming", reason="mosaicml-streaming (not installable "
                                    "beside vqtok: pins transformers<5)")
    pack_dataset([encoded["rvq"]], tmp_path / "ds", format="mds", flatten="levels")
    data = streaming.StreamingDataset(local=str(tmp_path / "ds"), shuffle=False, batch_size=1)
    want = originals(encoded["rvq"])
    assert [data[i]["key"] for i in range(len(data))] == list(want)
    for i in range(len(data)):
        assert np.array_equal(data[i]["tokens"], want[data[i]["key"]])


# ------------------------------------------------------------------- Parquet folder as is


def test_parquet_folder_reads_as_it_is_and_old_folders_still_read(
        tmp_path: Path, encoded: dict[str, Path], cli) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path / "ds"
    pack_dataset([encoded["rvq"]], ds)
    assert sorted(p.name for p in ds.iterdir())[0] == MANIFEST == "_vqtok.json"
    assert pq.read_table(ds).num_rows == pyarrow.dataset.dataset(ds).count_rows() == 2
    # a folder vqtok format 1 wrote: manifest.json, no flattening fields
    manifest = json.loads((ds / MANIFEST).read_text())
    for name in ("layout", "flatten", "codes_per_position", "level_stride", "token_vocab"):
        del manifest[name]
    (ds / LEGACY_MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    (ds / MANIFEST).unlink()
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(ds)  # what format 2 fixes
    want = originals(encoded["rvq"])
    dataset = TokenDataset(ds)
    assert [np.array_equal(dataset[i]["indices"].numpy(), want[dataset[i]["index_file"]])
            for i in range(2)] == [True, True]
    info = json.loads(cli("info", ds, "--json").stdout)
    assert info["layout"] == "parquet" and info["flatten"] == "levels" and info["rows"] == 2
    pack_dataset([encoded["rvq"]], ds, overwrite=True)  # packing again renames the manifest
    assert LEGACY_MANIFEST not in {p.name for p in ds.iterdir()}
    assert pq.read_table(ds).num_rows == 2


# ------------------------------------------------------------------ CLI: pack, info, decode


def test_cli_pack_info_and_decode_a_row(tmp_path: Path, encoded: dict[str, Path], cli) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path / "ds"
    out = cli("pack", encoded["rvq"], "-o", ds, "--format", "megatron", "--flatten", "offset")
    assert "megatron, flatten offset" in out.stdout and "tokens 48 (uint16)" in out.stdout
    info = json.loads(cli("info", ds, "--json").stdout)
    assert (info["kind"], info["layout"], info["flatten"]) == ("dataset", "megatron", "offset")
    assert info["token_vocab"] == 48 and info["codes_per_position"] == 3 and info["rows"] == 2
    assert info["first_keys"] == ["rvq/a.npy", "rvq/b.npy"] and info["shard_rows"] == [2]
    assert "layout" in cli("info", ds).stdout
    key = "rvq/a.npy"
    indices, meta = read_row(ds, key)
    assert np.array_equal(indices, load_tokens(encoded["rvq"] / "a.npy")[0])
    common = ("-m", "tiny-rvq", "--device", "cpu")
    done = cli("decode", ds, "--key", key, "-o", tmp_path / "row.mp4", *common)
    assert f"{ds / key} -> {tmp_path / 'row.mp4'}: 9 frames" in done.stdout
    cli("decode", encoded["rvq"] / "a.npy", "-o", tmp_path / "file.mp4", *common, "-q")
    row, file = (np.concatenate(list(read_frames(tmp_path / f"{n}.mp4"))) for n in ("row", "file"))
    assert row.shape == (9, 32, 48, 3) and np.array_equal(row, file)
    again = cli("decode", ds, "--key", key, "-o", tmp_path / "row.mp4", *common)
    assert "skipped (already done)" in again.stdout
    # a key that is not there, and two datasets: one line each
    missing = cli("decode", ds, "--key", "rvq/zz.npy", "-o", tmp_path / "x.mp4", *common, code=1)
    assert "no clip 'rvq/zz.npy'" in missing.stderr and "rvq/a.npy" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    cli("decode", ds, ds, "--key", key, "-o", tmp_path / "x.mp4", *common, code=2)
    no_key = cli("decode", ds, "-o", tmp_path / "x.mp4", *common, code=2).stderr
    assert "is a token dataset: add --key KEY" in no_key and not (tmp_path / "x.mp4").exists()


def test_cli_refuses_levels_for_flat_formats_and_names_missing_extras(
        tmp_path: Path, encoded: dict[str, Path], cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    bad = cli("pack", encoded["vq"], "-o", tmp_path / "ds", "--format", "litdata",
              "--flatten", "levels", code=2)
    assert "interleave or offset" in bad.stderr and not (tmp_path / "ds").exists()
    for layout, module in (("webdataset", "webdataset"), ("litdata", "litdata"),
                           ("megatron", "megatron.core.datasets")):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            line = cli("pack", encoded["vq"], "-o", tmp_path / "ds", "--format", layout,
                       code=1).stderr.strip()
        assert line.count("\n") == 0 and f"pip install 'vqtok[{layout}]'" in line, line
        assert not (tmp_path / "ds").exists()
    cli("pack", encoded["vq"], "-o", tmp_path / "ds", "--format", "webdataset", "-q")
    again = json.loads(cli("pack", encoded["vq"], "-o", tmp_path / "ds", "--format",
                           "webdataset", "--json").stdout)
    assert again["written"] == 0  # the same inputs: kept
    other = cli("pack", encoded["rvq"], "-o", tmp_path / "ds", "--format", "webdataset", code=1)
    assert "holds another dataset" in other.stderr and "--overwrite" in other.stderr
    cli("pack", encoded["rvq"], "-o", tmp_path / "ds", "--format", "mds", "--overwrite", "-q")
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text())["layout"] == "mds"
    assert not list((tmp_path / "ds").glob("*.tar"))


def test_old_import_path_and_errors(tmp_path: Path) -> None:
    from vqtok.io.datasets import TokenDataset as Old

    assert Old is TokenDataset
    with pytest.raises(VqtokError, match="not a token dataset"):
        open_rows(tmp_path)
