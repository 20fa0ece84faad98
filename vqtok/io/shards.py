"""The token dataset format: Parquet shards of one model's index files, and their manifest.

A dataset directory holds ``shard-NNNNN-of-MMMMM.parquet`` files (zstd) and ``manifest.json``.
Each shard has one row per clip (`COLUMNS`, plus ``indices``: the clip's indices flattened in
C order as a list of the smallest unsigned type that holds the vocabulary, uint16 up to 65 536
codes, else uint32; and ``shape``: (t, h, w) or (t, h, w, L)), in row groups of about
`ROW_GROUP_BYTES` of indices, and a key in its footer (`KEY_FIELD`) that `vqtok.pipeline.pack` uses
to resume. The manifest names the model, vocabulary and index type, the totals and every shard
(rows, tokens, bytes, SHA-256, key); it is written last, so a directory without one is an
unfinished pack. Shards are plain Parquet: pyarrow, Hugging Face ``datasets``, DuckDB and Spark
read them as they are. This module owns the format: `vqtok.pipeline.pack` writes datasets through
it, `vqtok.io.datasets` reads them.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok import __version__
from vqtok.atomic import atomic_bytes
from vqtok.errors import VqtokError
from vqtok.io.digest import file_sha256
from vqtok.io.tokens import TokenMetadata, index_dtype

MANIFEST = "manifest.json"
DATASET_FORMAT = "vqtok-dataset"
DATASET_VERSION = 1
KEY_FIELD = b"vqtok.shard_key"
# Index bytes per Parquet row group: the unit a random read decodes. 64 KB reads ~7x faster
# than 1 MB groups in random order (benchmarks/pack.py) for ~15% more bytes on disk.
ROW_GROUP_BYTES = 64 << 10
SHARD_NAME = re.compile(r"^shard-\d{5}-of-\d{5}\.parquet$")
TEMP_NAME = re.compile(r"^\.shard-\d{5}-of-\d{5}\.parquet\.[0-9a-f]{8}\.tmp$")
# the per-row facts besides indices / shape, with their Arrow type names (see `schema`)
COLUMNS = {
    "index_file": "string", "source": "string", "model": "string", "model_sha256": "string",
    "family": "string", "quantizer": "string", "codebook_size": "int64",
    "num_codebooks": "int32", "vocab": "int64", "remap_sha256": "string", "remap_size": "int64",
    "levels": "list<int32>", "source_frames": "int32", "source_fps": "string",
    "source_height": "int32", "source_width": "int32", "frames": "int32", "fps": "string",
    "height": "int32", "width": "int32", "resize": "string", "padding": "int32",
    "metadata": "string",
}
# the columns every row of a dataset shares (one model, one remap), also in the manifest
SHARED_COLUMNS = ("model", "model_sha256", "family", "quantizer", "codebook_size",
                  "num_codebooks", "vocab", "remap_sha256", "remap_size", "levels")


def require_pyarrow() -> ModuleType:
    """pyarrow (with its Parquet module) or a clear error saying how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - loads the submodule
    except ImportError as e:
        raise VqtokError(
            "token datasets need pyarrow, which is not installed; "
            "install it with: pip install 'vqtok[data]'"
        ) from e
    return pyarrow


def looks_like_dataset(directory: Path) -> bool:
    """Whether a directory holds a token dataset's manifest or shards (finished or not)."""
    return (directory / MANIFEST).is_file() or any(
        SHARD_NAME.match(p.name) for p in directory.iterdir())


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


def schema(meta: TokenMetadata) -> Any:
    """The Arrow schema of a dataset of ``meta``'s model: `COLUMNS` plus indices and shape."""
    pa = require_pyarrow()
    types = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
             "list<int32>": pa.list_(pa.int32())}
    value = pa.from_numpy_dtype(index_dtype(meta.vocab))
    fields = [pa.field("index_file", pa.string(), nullable=False),
              pa.field("source", pa.string(), nullable=False),
              pa.field("indices", pa.list_(value), nullable=False),
              pa.field("shape", pa.list_(pa.int32()), nullable=False)]
    fields += [pa.field(name, types[kind]) for name, kind in COLUMNS.items()
               if name not in ("index_file", "source")]
    return pa.schema(fields)


def _row(name: str, meta: TokenMetadata, text: str) -> dict[str, Any]:
    """The facts columns of one clip (`COLUMNS`); ``text`` is its metadata JSON."""
    source, encoded = meta.source, meta.encoded
    return {
        "index_file": name, "source": source.file, "model": meta.model,
        "model_sha256": meta.model_sha256, "family": meta.family, "quantizer": meta.quantizer,
        "codebook_size": meta.codebook_size, "num_codebooks": meta.num_codebooks,
        "vocab": meta.vocab, "remap_sha256": meta.remap.sha256 if meta.remap else None,
        "remap_size": meta.remap.size if meta.remap else None,
        "levels": None if meta.levels is None else list(meta.levels),
        "source_frames": source.frames, "source_fps": source.fps,
        "source_height": source.size[0], "source_width": source.size[1],
        "frames": encoded.frames, "fps": encoded.fps, "height": encoded.size[0],
        "width": encoded.size[1], "resize": encoded.resize, "padding": encoded.padding,
        "metadata": text,
    }


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


def write_manifest(directory: Path, meta: TokenMetadata, shards: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    """Write (atomically) and return the manifest of a dataset of ``shards`` (`shard_entry`)."""
    remap = meta.remap
    manifest = {
        "format": DATASET_FORMAT, "format_version": DATASET_VERSION,
        "vqtok_version": __version__, "model": meta.model, "model_sha256": meta.model_sha256,
        "family": meta.family, "quantizer": meta.quantizer,
        "codebook_size": meta.codebook_size, "num_codebooks": meta.num_codebooks,
        "levels": None if meta.levels is None else list(meta.levels),
        "bit_order": meta.bit_order,
        "remap": None if remap is None else {"sha256": remap.sha256, "size": remap.size},
        "vocab": meta.vocab, "dtype": str(index_dtype(meta.vocab)),
        "rows": sum(s["rows"] for s in shards), "tokens": sum(s["tokens"] for s in shards),
        "index_bytes": sum(s["index_bytes"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards), "shards": shards,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_bytes(directory / MANIFEST, text.encode())
    return manifest


# ------------------------------------------------------------------------------- reading


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a finished dataset, its shard files checked to exist at their size.

    Raises:
        VqtokError: not a dataset, an unfinished pack, a damaged manifest or a missing /
            resized shard (the message says what to do).
    """
    directory = Path(directory)
    path = directory / MANIFEST
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
    if manifest.get("format_version") != DATASET_VERSION:
        raise VqtokError(f"dataset format version {manifest.get('format_version')!r} is not "
                         f"supported (this vqtok reads {DATASET_VERSION})", path)
    for shard in manifest["shards"]:
        file = directory / shard["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != shard["bytes"]:
            what = "is missing" if size is None else f"has {size} bytes, not {shard['bytes']}"
            raise VqtokError(f"{what}; the dataset is damaged: pack it again", file)
    return manifest


def describe_dataset(directory: str | Path) -> dict[str, Any]:
    """A token dataset for ``vqtok info``: rows, tokens, model, vocabulary, shard sizes."""
    manifest = read_manifest(directory)
    remap = manifest["remap"]
    return {
        "kind": "dataset", "path": str(directory), "rows": manifest["rows"],
        "tokens": manifest["tokens"], "model": manifest["model"],
        "model_sha256": manifest["model_sha256"], "quantizer": manifest["quantizer"],
        "codebook_size": manifest["codebook_size"],
        "num_codebooks": manifest["num_codebooks"], "vocab": manifest["vocab"],
        "dtype": manifest["dtype"], "remap_sha256": None if remap is None else remap["sha256"],
        "shards": len(manifest["shards"]), "bytes": manifest["bytes"],
        "index_bytes": manifest["index_bytes"],
        "shard_bytes": [s["bytes"] for s in manifest["shards"]],
        "shard_rows": [s["rows"] for s in manifest["shards"]],
    }
