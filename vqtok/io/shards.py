"""The token dataset format: Parquet shards of one model's index files, and their manifest.

A dataset directory holds ``shard-NNNNN-of-MMMMM.parquet`` files (zstd) and the manifest,
``_vqtok.json``: ``pyarrow.parquet.read_table(DIR)`` and Spark skip files whose names start with
``_``, so they read the folder as it is (format 1 named it ``manifest.json``, which pyarrow cannot
parse; such folders are still read, and a pack into one renames it).
Each shard has one row per clip (`COLUMNS`, plus ``indices``: the clip's indices flattened in C
order as a list of the smallest unsigned type that holds the vocabulary, uint8 up to 256 codes,
uint16 up to 65 536, else uint32; and ``shape``: (t, h, w) or (t, h, w, L)), in row groups of
about `ROW_GROUP_BYTES` of indices, and a key in its footer (`KEY_FIELD`) that
`vqtok.pipeline.pack` uses to resume. The manifest names the model, vocabulary and index type,
the totals and every shard (rows, tokens, bytes, SHA-256, key); it is written last, so a
directory without one is an unfinished pack. Shards are plain Parquet: pyarrow, Hugging Face
``datasets``, DuckDB and Spark read them as they are. This module owns the format:
`vqtok.pipeline.pack` writes datasets through it, `vqtok.data` reads them.

The manifest is the same for every layout ``vqtok pack`` writes (``layout``: parquet, megatron,
mds, litdata, webdataset; `vqtok.data.formats`): the model and remap, how multi-level indices
were flattened (``flatten``, ``codes_per_position``, ``level_stride``, ``token_vocab``:
`vqtok.data.flatten`), the tokens' dtype, the totals and every file with its size and SHA-256;
the layouts other than Parquet also list their clips (``clips``: `vqtok.data.records`).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok import __version__
from vqtok.disk import atomic_bytes, file_sha256
from vqtok.errors import MissingDependencyError, VqtokError
from vqtok.io.tokens import TokenMetadata, index_dtype

MANIFEST = "_vqtok.json"
LEGACY_MANIFEST = "manifest.json"  # dataset format 1's name: pyarrow cannot read a folder with it
DATASET_FORMAT = "vqtok-dataset"
DATASET_VERSION = 2  # one per file kind: README, "File formats and their versions"
READ_VERSIONS = (1, 2)
KEY_FIELD = b"vqtok.shard_key"
# Index bytes per Parquet row group: the unit a random read decodes. 64 KB reads ~7x faster
# than 1 MB groups in random order (benchmarks/pack.py) for ~15% more bytes on disk.
ROW_GROUP_BYTES = 64 << 10
SHARD_NAME = re.compile(r"^shard-\d{5}-of-\d{5}\.parquet$")
TEMP_NAME = re.compile(r"^\.shard-\d{5}-of-\d{5}\.parquet\.[0-9a-f]{8}\.tmp$")


@dataclass(frozen=True)
class Column:
    """One facts column of a shard: a field of the index file's sidecar (`TokenMetadata`).

    Attributes:
        name: the column's name.
        field: where its value is in `TokenMetadata`: a field (``"model"``), a field of one of
            its parts (``"source.frames"``), an item of a pair (``"encoded.size.0"``) or the
            ``vocab`` property; None for the two that are not in the sidecar (``index_file``,
            the file's name in the pack, and ``metadata``, the sidecar as JSON text). A part
            that is None (no remap) gives None.
        arrow: its Arrow type's name (see `schema`).
        shared: every row of a dataset has the same value (one model, one remap); also in
            the manifest.
    """

    name: str
    field: str | None
    arrow: str
    shared: bool = False


# the per-row facts besides indices / shape, in the shards' column order
COLUMNS = (
    Column("index_file", None, "string"), Column("source", "source.file", "string"),
    Column("model", "model", "string", True),
    Column("model_sha256", "model_sha256", "string", True),
    Column("family", "family", "string", True), Column("quantizer", "quantizer", "string", True),
    Column("codebook_size", "codebook_size", "int64", True),
    Column("num_codebooks", "num_codebooks", "int32", True),
    Column("vocab", "vocab", "int64", True),
    Column("remap_sha256", "remap.sha256", "string", True),
    Column("remap_size", "remap.size", "int64", True),
    Column("levels", "levels", "list<int32>", True),
    Column("source_frames", "source.frames", "int32"),
    Column("source_fps", "source.fps", "string"),
    Column("source_height", "source.size.0", "int32"),
    Column("source_width", "source.size.1", "int32"),
    Column("frames", "encoded.frames", "int32"), Column("fps", "encoded.fps", "string"),
    Column("height", "encoded.size.0", "int32"), Column("width", "encoded.size.1", "int32"),
    Column("resize", "encoded.resize", "string"), Column("padding", "encoded.padding", "int32"),
    Column("metadata", None, "string"),
)
SHARED_COLUMNS = tuple(column.name for column in COLUMNS if column.shared)


def sidecar_value(meta: TokenMetadata, field: str) -> Any:
    """The value at a `Column.field` path of ``meta`` (a tuple as a list, for Arrow)."""
    value: Any = meta
    for part in field.split("."):
        if value is None:
            return None
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def require_pyarrow() -> ModuleType:
    """pyarrow (with its Parquet module) or a clear error saying how to install it."""
    return MissingDependencyError.require(("pyarrow", "pyarrow.parquet"),
                                          "token datasets need pyarrow", "data")


def manifest_path(directory: Path) -> Path:
    """A dataset's manifest: ``_vqtok.json``, or a format-1 dataset's ``manifest.json``."""
    legacy = directory / LEGACY_MANIFEST
    return legacy if legacy.is_file() and not (directory / MANIFEST).is_file() else (
        directory / MANIFEST)


def looks_like_dataset(directory: Path) -> bool:
    """Whether a directory holds a token dataset's manifest or shards (finished or not)."""
    return manifest_path(directory).is_file() or any(
        SHARD_NAME.match(p.name) for p in directory.iterdir())


def other_layout_files(directory: Path) -> list[str]:
    """The files the manifest of a dataset of a layout other than Parquet lists ([] for none,
    a Parquet dataset or a damaged manifest)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("layout", "parquet") == "parquet":
            return []
        return [s["file"] for s in manifest["shards"] + [manifest["clips"]]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def shard_key(path: Path) -> str | None:
    """The key in a shard's footer; None when the file is not a readable shard."""
    pa = require_pyarrow()
    try:
        schema = pa.parquet.read_schema(path)
    except (OSError, pa.ArrowException):
        return None
    value = (schema.metadata or {}).get(KEY_FIELD)
    return None if value is None else value.decode()


def manifest_keys(path: Path) -> dict[str, str] | None:
    """Shard name -> key listed in a manifest; None without one, {} for a damaged one."""
    if not path.is_file():
        return None
    try:
        return {s["file"]: s["key"] for s in json.loads(path.read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged manifest matches no plan



# ------------------------------------------------------------------------------- writing


def schema(meta: TokenMetadata, dtype: np.dtype | None = None) -> Any:
    """The Arrow schema of a dataset of ``meta``'s model: `COLUMNS` plus indices and shape;
    the indices are ``dtype`` (default: `index_dtype` of the model's vocabulary)."""
    pa = require_pyarrow()
    types = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
             "list<int32>": pa.list_(pa.int32())}
    value = pa.from_numpy_dtype(index_dtype(meta.vocab) if dtype is None else dtype)
    fields = [pa.field("index_file", pa.string(), nullable=False),
              pa.field("source", pa.string(), nullable=False),
              pa.field("indices", pa.list_(value), nullable=False),
              pa.field("shape", pa.list_(pa.int32()), nullable=False)]
    fields += [pa.field(column.name, types[column.arrow]) for column in COLUMNS
               if column.name not in ("index_file", "source")]
    return pa.schema(fields)


def _row(name: str, meta: TokenMetadata, text: str) -> dict[str, Any]:
    """The facts columns of one clip (`COLUMNS`); ``text`` is its metadata JSON."""
    row = {column.name: sidecar_value(meta, column.field) for column in COLUMNS
           if column.field is not None}
    return {**row, "index_file": name, "metadata": text}


Row = tuple[str, np.ndarray, TokenMetadata, str]
"""(index_file, indices in their storage dtype, metadata, the metadata's JSON text)."""


def _table(pa: ModuleType, schema: Any, rows: list[Row]) -> Any:
    """One row group: rows -> an Arrow table."""
    sizes = [indices.size for _, indices, _, _ in rows]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    flat = np.concatenate([indices.reshape(-1) for _, indices, _, _ in rows])
    facts = [_row(name, meta, text) for name, _, meta, text in rows]
    columns = {
        "indices": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "shape": pa.array([list(indices.shape) for _, indices, _, _ in rows],
                          type=pa.list_(pa.int32())),
    }
    for field in schema:
        if field.name not in columns:
            columns[field.name] = pa.array([f[field.name] for f in facts], type=field.type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


class ShardWriter:
    """Write one shard atomically: rows go to a temporary file, row group by row group (about
    `ROW_GROUP_BYTES` of indices each); a clean exit fsyncs it and renames it to ``path``, an
    exception removes it.

    Args:
        path: the shard's final path.
        schema: `schema` of the dataset.
        key: stored in the footer (`KEY_FIELD`), so that a rerun can recognise the shard.
    """

    def __init__(self, path: Path, schema: Any, key: str) -> None:
        self.pa = require_pyarrow()
        self.path = path
        self.schema = schema.with_metadata({KEY_FIELD: key.encode()})
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.rows: list[Row] = []
        self.size = 0

    def __enter__(self) -> ShardWriter:
        self.writer = self.pa.parquet.ParquetWriter(self.tmp, self.schema, compression="zstd")
        return self

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.size += row[1].nbytes
        if self.size >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            table = _table(self.pa, self.schema, self.rows)
            self.writer.write_table(table, row_group_size=len(self.rows))
        self.rows, self.size = [], 0

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            if kind is None:
                self._flush()
            self.writer.close()
            if kind is None:
                with open(self.tmp, "rb+") as file:
                    os.fsync(file.fileno())
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def shard_entry(path: Path, key: str, rows: int, tokens: int, index_bytes: int
                ) -> dict[str, Any]:
    """A written shard's line in the manifest (with its size and SHA-256)."""
    return {"file": path.name, "key": key, "rows": rows, "tokens": tokens,
            "index_bytes": index_bytes, "bytes": path.stat().st_size,
            "sha256": file_sha256(path)}


def write_manifest(directory: Path, meta: TokenMetadata, shards: list[dict[str, Any]], *,
                   layout: str = "parquet", flattening: dict[str, Any] | None = None,
                   dtype: np.dtype | None = None, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Write (atomically) and return the manifest of a dataset of ``shards`` (`shard_entry`).

    Args:
        layout: the dataset's format (``parquet``, ``megatron``, ...).
        flattening: `vqtok.data.flatten.Flattening.to_dict` (default: the arrays as they are).
        dtype: the tokens' dtype (default: `index_dtype` of the vocabulary).
        extra: more fields (``clips``: the clip list of the layouts other than Parquet).
    """
    remap = meta.remap
    codes = meta.kept_levels if meta.num_codebooks > 1 else 1
    manifest = {
        "format": DATASET_FORMAT, "format_version": DATASET_VERSION,
        "vqtok_version": __version__, "model": meta.model, "model_sha256": meta.model_sha256,
        "family": meta.family, "quantizer": meta.quantizer,
        "codebook_size": meta.codebook_size, "num_codebooks": meta.num_codebooks,
        "levels": None if meta.levels is None else list(meta.levels),
        "bit_order": meta.bit_order,
        "remap": None if remap is None else {"sha256": remap.sha256, "size": remap.size},
        "vocab": meta.vocab,
        "dtype": str(index_dtype(meta.vocab) if dtype is None else np.dtype(dtype)),
        "layout": layout, **(flattening or {"flatten": "levels", "codes_per_position": codes,
                                            "level_stride": meta.vocab,
                                            "token_vocab": meta.vocab}),
        "rows": sum(s.get("rows", 0) for s in shards),
        "tokens": sum(s.get("tokens", 0) for s in shards),
        "index_bytes": sum(s.get("index_bytes", 0) for s in shards),
        "bytes": sum(s["bytes"] for s in shards), "shards": shards, **(extra or {}),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_bytes(directory / MANIFEST, text.encode())
    (directory / LEGACY_MANIFEST).unlink(missing_ok=True)  # it would stop pyarrow reading
    return manifest


# ------------------------------------------------------------------------------- reading


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a finished dataset of any layout, its files checked to exist at their
    size. A format-1 manifest (``manifest.json``, Parquet, arrays as they are) gets the fields
    format 2 added: ``layout`` ``"parquet"`` and ``flatten`` ``"levels"``.

    Raises:
        VqtokError: not a dataset, an unfinished pack, a damaged manifest or a missing /
            resized shard (the message says what to do).
    """
    directory = Path(directory)
    path = manifest_path(directory)
    if not path.is_file():
        if directory.is_dir() and any(SHARD_NAME.match(p.name) for p in directory.iterdir()):
            raise VqtokError(f"an unfinished pack (no {MANIFEST}); run vqtok pack again with "
                             "the same inputs to finish it", directory)
        raise VqtokError(f"not a token dataset (no {MANIFEST}); make one with vqtok pack",
                         directory)
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == DATASET_FORMAT and isinstance(manifest["shards"], list)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError) as e:
        raise VqtokError(f"unreadable manifest ({e}); pack the dataset again", path) from e
    if not ok:
        raise VqtokError("not a vqtok dataset manifest", path)
    if manifest.get("format_version") not in READ_VERSIONS:
        raise VqtokError(f"dataset format version {manifest.get('format_version')!r} is not "
                         f"supported (this vqtok reads {READ_VERSIONS[-1]})", path)
    if manifest["format_version"] == 1:
        codes = manifest.get("num_codebooks") or 1
        manifest.update(layout="parquet", flatten="levels", codes_per_position=codes,
                        level_stride=manifest["vocab"], token_vocab=manifest["vocab"])
    for shard in manifest["shards"] + ([manifest["clips"]] if "clips" in manifest else []):
        file = directory / shard["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != shard["bytes"]:
            what = "is missing" if size is None else f"has {size} bytes, not {shard['bytes']}"
            raise VqtokError(f"{what}; the dataset is damaged: pack it again", file)
    return manifest


def describe_dataset(directory: str | Path) -> dict[str, Any]:
    """A token dataset for ``vqtok info``: layout, rows, tokens, model, vocabulary and
    flattening, the data files' sizes and rows, the first few clips' keys."""
    manifest = read_manifest(directory)
    remap = manifest["remap"]
    shards = [s for s in manifest["shards"] if "rows" in s]  # not indexes (tokens.idx, ...)
    return {
        "kind": "dataset", "path": str(directory), "layout": manifest["layout"],
        "flatten": manifest["flatten"], "codes_per_position": manifest["codes_per_position"],
        "token_vocab": manifest["token_vocab"], "rows": manifest["rows"],
        "tokens": manifest["tokens"], "model": manifest["model"],
        "model_sha256": manifest["model_sha256"], "quantizer": manifest["quantizer"],
        "codebook_size": manifest["codebook_size"],
        "num_codebooks": manifest["num_codebooks"], "vocab": manifest["vocab"],
        "dtype": manifest["dtype"], "remap_sha256": None if remap is None else remap["sha256"],
        "shards": len(shards), "bytes": manifest["bytes"],
        "index_bytes": manifest["index_bytes"],
        "shard_bytes": [s["bytes"] for s in shards],
        "shard_rows": [s["rows"] for s in shards],
        "first_keys": _first_keys(Path(directory), manifest, 3),
    }


def _first_keys(directory: Path, manifest: dict[str, Any], count: int) -> list[str]:
    """The keys of the first ``count`` clips (``index_file``; the clip list's ``key``)."""
    if "clips" in manifest:
        with open(directory / manifest["clips"]["file"]) as file:
            return [json.loads(line)["key"] for line, _ in zip(file, range(count), strict=False)]
    if not manifest["shards"]:
        return []
    table = require_pyarrow().parquet.read_table(directory / manifest["shards"][0]["file"],
                                                 columns=["index_file"])
    return table.column(0).to_pylist()[:count]
