"""Token datasets: index files packed into Parquet shards that training code reads directly.

One ``.npy`` + ``.json`` per clip is right for encoding and resuming, wrong for training
(millions of small files, no random access across them, no standard reader). `pack_dataset`
(``vqtok pack``) writes the index files of one model (and one remap) as Parquet shards, zstd
compressed, one row per clip, plus ``manifest.json``:

- ``index_file``: the index file's path below the directory given (its name for a file given
  by name); ``source``: the video's file name from the sidecar;
- ``indices``: the clip's indices flattened in C order, a list of the smallest unsigned type
  that holds the vocabulary (uint16 up to 65 536 codes, else uint32); ``shape``: their shape,
  (t, h, w) or (t, h, w, L);
- the sidecar's facts (`COLUMNS`): model name and sha256, family, quantizer, codebook size,
  codebooks / levels, vocabulary, remap hash and size, FSQ levels, the source's and the encoded
  frames' frame count, fps (exact ``"num/den"``), size and padding; ``metadata``: the whole
  sidecar as JSON (``TokenMetadata.from_dict(json.loads(...))`` gives it back for decoding).

Shards are plain Parquet, so pyarrow, Hugging Face ``datasets``, DuckDB and Spark read them
as they are; `vqtok.data` reads them as PyTorch datasets. Files are assigned to shards in input
order (directories sorted), a new shard starting when the index bytes reach ``shard_size_mb``,
so the plan depends only on the inputs. Each shard is written to a temporary file and renamed,
and carries a key (a hash of its planned files' paths, sizes and metadata) in its footer; the
manifest is written last. A killed run leaves whole shards and no manifest, and a rerun keeps
the shards whose key matches and writes the rest: the same bytes as an uninterrupted run
(nothing in the files depends on time). Every sidecar and ``.npy`` header is checked before
anything is written, so a missing or mismatched sidecar, a damaged header or another model's
file stops the run with nothing written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok import __version__
from vqtok.codeusage import index_files
from vqtok.errors import ConfigError, TokenFileError, VqtokError
from vqtok.tokens import (
    TokenMetadata,
    _atomic_write,  # the index files' atomic write (temp, fsync, rename)
    index_dtype,
    load_metadata,
    load_tokens,
)

MANIFEST = "manifest.json"
DATASET_FORMAT = "vqtok-dataset"
DATASET_VERSION = 1
KEY_FIELD = b"vqtok.shard_key"
ROW_GROUP_BYTES = 1 << 20  # index bytes per Parquet row group: the unit a random read decodes
SHARD_NAME = re.compile(r"^shard-\d{5}-of-\d{5}\.parquet$")
TEMP_NAME = re.compile(r"^\.shard-\d{5}-of-\d{5}\.parquet\.[0-9a-f]{8}\.tmp$")
# the per-row facts besides indices / shape, with their Arrow type names (see _schema)
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


@dataclass(frozen=True)
class PackProgress:
    """What `pack_dataset` reports to its callback after each file.

    Attributes:
        stage: ``"check"`` (reading sidecars and headers) or ``"pack"`` (writing shards).
        files: files done in this stage (files of reused shards count as done).
        total: files in the dataset.
        rows: rows written or reused so far (pack stage).
        index_bytes: index bytes packed so far, uncompressed (pack stage).
    """

    stage: str
    files: int
    total: int
    rows: int = 0
    index_bytes: int = 0


@dataclass(frozen=True)
class PackReport:
    """What `pack_dataset` did.

    Attributes:
        output: the dataset directory.
        shards: shards in the dataset; ``written`` of them written now, the others kept from
            an earlier run with the same inputs.
        rows: clips; tokens: indices in all of them; index_bytes: their uncompressed size.
        bytes: size of the shard files; model / vocab / dtype: the dataset's model, vocabulary
            and index type.
    """

    output: Path
    shards: int
    written: int
    rows: int
    tokens: int
    index_bytes: int
    bytes: int
    model: str
    vocab: int
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["output"] = str(self.output)
        return out


@dataclass(frozen=True)
class _Clip:
    path: Path
    name: str  # the index_file column
    file_size: int
    index_bytes: int
    tokens: int
    digest: str  # sha256 of the metadata JSON: the file must not change between the stages


@dataclass(frozen=True)
class _Shard:
    name: str
    clips: tuple[_Clip, ...]
    key: str


ProgressFn = Callable[[PackProgress], None]


def pack_dataset(
    inputs: Sequence[str | Path],
    output: str | Path,
    shard_size_mb: float = 256,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> PackReport:
    """Pack index files of one model into a Parquet token dataset (see the module docstring).

    Args:
        inputs: index files (``.npy`` with sidecar, ``.safetensors``) and directories of them.
        output: the dataset directory; created, or resumed when it holds an unfinished pack of
            the same inputs.
        shard_size_mb: start a new shard when its uncompressed index bytes reach this (MB).
        overwrite: replace a dataset of other inputs in ``output``.
        progress: called after each file with a `PackProgress`.

    Returns:
        `PackReport`.

    Raises:
        ConfigError: ``shard_size_mb`` not positive, or no inputs.
        TokenFileError: a bad index file or sidecar, or one from another model / remap.
        VqtokError: pyarrow missing; ``output`` holds other files, or another dataset without
            ``overwrite``.
    """
    pa = require_pyarrow()
    if not shard_size_mb > 0:
        raise ConfigError(f"--shard-size must be positive, got {shard_size_mb}")
    report = progress or (lambda p: None)
    output = Path(output)
    clips, meta = _check_inputs(_named_files(inputs), report)
    plan = _plan(clips, int(shard_size_mb * 1e6))
    keep = _prepare_output(output, plan, overwrite)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        entries = _write_shards(pa, output, plan, keep, _schema(pa, meta), report)
    except BaseException:
        if created and not any(output.iterdir()):
            output.rmdir()  # nothing was written: leave no trace; whole shards stay for a rerun
        raise
    manifest = _manifest(meta, entries)
    _atomic_write(output / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                  .encode())
    return PackReport(
        output=output, shards=len(plan), written=len(plan) - len(keep), rows=manifest["rows"],
        tokens=manifest["tokens"], index_bytes=manifest["index_bytes"], bytes=manifest["bytes"],
        model=meta.model, vocab=meta.vocab, dtype=manifest["dtype"],
    )


def _write_shards(pa: ModuleType, output: Path, plan: list[_Shard], keep: set[str], schema: Any,
                  report: ProgressFn) -> list[dict[str, Any]]:
    """Write the planned shards not in ``keep``; returns every shard's manifest entry."""
    total = sum(len(shard.clips) for shard in plan)
    entries: list[dict[str, Any]] = []
    files, index_bytes = 0, 0
    for shard in plan:
        path = output / shard.name
        if shard.name in keep:
            files += len(shard.clips)
            index_bytes += sum(c.index_bytes for c in shard.clips)
            report(PackProgress("pack", files, total, files, index_bytes))
        else:
            for nbytes in _write_shard(pa, path, shard, schema):
                files, index_bytes = files + 1, index_bytes + nbytes
                report(PackProgress("pack", files, total, files, index_bytes))
        entries.append(_shard_entry(path, shard))
    return entries


def looks_like_dataset(directory: Path) -> bool:
    """Whether a directory holds a token dataset's manifest or shards (finished or not)."""
    return (directory / MANIFEST).is_file() or any(
        SHARD_NAME.match(p.name) for p in directory.iterdir())


def _named_files(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(index file, its index_file name): the path below a directory given, prefixed with the
    directory's name, or the file name; duplicates (the same file twice) are dropped."""
    if not inputs:
        raise ConfigError("no index files given")
    seen: set[Path] = set()
    named: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.suffix == ".json":  # a sidecar named for its index file, as load_tokens takes
            item = item.with_suffix(".npy")
        for path in index_files([item]):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            if item.is_dir():
                name = (Path(item.resolve().name) / path.relative_to(item)).as_posix()
            else:
                name = path.name
            named.append((path, name))
    return named


def _check_inputs(
    files: list[tuple[Path, str]], report: ProgressFn
) -> tuple[list[_Clip], TokenMetadata]:
    """Read every sidecar and check every ``.npy`` header against it (no array is read)."""
    clips: list[_Clip] = []
    first: TokenMetadata | None = None
    for path, name in files:
        if not path.is_file():
            raise TokenFileError("no such index file; check the path", path)
        if path.suffix not in (".npy", ".safetensors"):
            raise TokenFileError("not an index file (.npy with a .json sidecar, or "
                                 ".safetensors)", path)
        meta = load_metadata(path)
        if first is None:
            first = meta
        elif _identity(meta) != _identity(first):
            raise TokenFileError(f"comes from {_describe(meta)} but earlier files from "
                                 f"{_describe(first)}; a dataset holds one model's indices "
                                 "(and one remap): pack them separately", path)
        _check_header(path, meta)
        text = json.dumps(meta.to_dict(), sort_keys=True)
        tokens = math.prod(meta.shape)
        clips.append(_Clip(path, name, path.stat().st_size,
                           tokens * index_dtype(meta.vocab).itemsize, tokens,
                           hashlib.sha256(text.encode()).hexdigest()))
        report(PackProgress("check", len(clips), len(files)))
    assert first is not None  # _named_files gives at least one file or raises
    return clips, first


def _identity(meta: TokenMetadata) -> tuple[object, ...]:
    return (meta.model, meta.model_sha256, meta.family, meta.quantizer, meta.codebook_size,
            meta.num_codebooks, meta.levels, meta.bit_order, meta.remap)


def _describe(meta: TokenMetadata) -> str:
    sha = (meta.model_sha256 or "no hash")[:8]
    remap = f", remap {meta.remap.sha256[:8]}" if meta.remap else ", no remap"
    return (f"model {meta.model!r} ({sha}, {meta.quantizer}, {meta.num_codebooks} x "
            f"{meta.codebook_size} codes{remap})")


def _check_header(path: Path, meta: TokenMetadata) -> None:
    """An ``.npy`` whose header (dtype, shape) and length agree with its sidecar, checked
    without reading the data; on any doubt `load_tokens` runs and raises its precise error."""
    if path.suffix != ".npy":
        return  # load_metadata has read and checked the safetensors header already
    dtype = index_dtype(meta.vocab)
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, found = read(file)
            good = (shape == meta.shape and found == dtype
                    and file.tell() + math.prod(shape) * dtype.itemsize == path.stat().st_size)
    except Exception:  # numpy raises many kinds for a damaged header (ValueError, EOFError, ...)
        good = False
    if not good:
        load_tokens(path)  # raises the reader's own message
        raise TokenFileError("the index array cannot be read; encode the video again", path)


def _plan(clips: list[_Clip], shard_bytes: int) -> list[_Shard]:
    """Consecutive clips per shard; a shard closes when its index bytes reach shard_bytes."""
    groups: list[list[_Clip]] = [[]]
    size = 0
    for clip in clips:
        if groups[-1] and size >= shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(clip)
        size += clip.index_bytes
    plan = []
    for i, group in enumerate(groups):
        name = f"shard-{i:05d}-of-{len(groups):05d}.parquet"
        text = json.dumps({"format_version": DATASET_VERSION, "shard": name, "files": [
            [c.name, c.file_size, c.digest] for c in group]})
        plan.append(_Shard(name, tuple(group), hashlib.sha256(text.encode()).hexdigest()))
    return plan


def _prepare_output(output: Path, plan: list[_Shard], overwrite: bool) -> set[str]:
    """Check ``output`` and clear what must go; returns the names of shards to keep."""
    if not output.exists():
        return set()
    if not output.is_dir():
        raise VqtokError("exists and is not a directory; give a directory for the dataset",
                         output)
    names = sorted(p.name for p in output.iterdir())
    foreign = [n for n in names if n != MANIFEST and not SHARD_NAME.match(n)
               and not TEMP_NAME.match(n)]
    if foreign:
        raise VqtokError(f"is not empty and not a vqtok dataset (it holds {foreign[0]!r}); "
                         "pack into a new or empty directory", output)
    keys = {s.name: s.key for s in plan}
    found = {n: _shard_key(output / n) for n in names if SHARD_NAME.match(n)}
    keep = {n for n, key in found.items() if key is not None and keys.get(n) == key}
    # a planned shard that cannot be read is rewritten; any other shard is another dataset's
    stale = [n for n, key in found.items() if n not in keep and (n not in keys or key)]
    old = _manifest_keys(output / MANIFEST)
    if (stale or (old is not None and old != keys)) and not overwrite:
        raise VqtokError(f"holds another dataset ({stale[0] if stale else MANIFEST} is not "
                         "from these inputs); pass --overwrite to replace it, or pack into a "
                         "new directory", output)
    if overwrite:
        (output / MANIFEST).unlink(missing_ok=True)  # no longer describes what is there
    for name in names:
        if TEMP_NAME.match(name) or (SHARD_NAME.match(name) and name not in keys):
            (output / name).unlink()
    return set() if overwrite else keep


def _shard_key(path: Path) -> str | None:
    pa = require_pyarrow()
    try:
        schema = pa.parquet.read_schema(path)
    except (OSError, pa.ArrowException):
        return None
    value = (schema.metadata or {}).get(KEY_FIELD)
    return None if value is None else value.decode()


def _manifest_keys(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    try:
        return {s["file"]: s["key"] for s in json.loads(path.read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged manifest matches no plan


# ------------------------------------------------------------------------------- writing


def _schema(pa: ModuleType, meta: TokenMetadata) -> Any:
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


def _row(clip: _Clip, meta: TokenMetadata, text: str) -> dict[str, Any]:
    """The facts columns of one clip (`COLUMNS`)."""
    source, encoded = meta.source, meta.encoded
    return {
        "index_file": clip.name, "source": source.file, "model": meta.model,
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


_Loaded = tuple[_Clip, np.ndarray, TokenMetadata, str]  # the indices in their storage dtype,
# the metadata and its JSON text


def _table(pa: ModuleType, schema: Any, rows: list[_Loaded]) -> Any:
    """One row group: loaded clips -> an Arrow table."""
    sizes = [indices.size for _, indices, _, _ in rows]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    flat = np.concatenate([indices.reshape(-1) for _, indices, _, _ in rows])
    facts = [_row(clip, meta, text) for clip, _, meta, text in rows]
    columns = {
        "indices": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "shape": pa.array([list(indices.shape) for _, indices, _, _ in rows],
                          type=pa.list_(pa.int32())),
    }
    for field in schema:
        if field.name not in columns:
            columns[field.name] = pa.array([f[field.name] for f in facts], type=field.type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _write_shard(pa: ModuleType, path: Path, shard: _Shard, schema: Any) -> Iterator[int]:
    """Write one shard atomically, row group by row group; yields each file's index bytes."""
    schema = schema.with_metadata({KEY_FIELD: shard.key.encode()})
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pa.parquet.ParquetWriter(tmp, schema, compression="zstd") as writer:
            rows: list[_Loaded] = []
            size = 0
            for clip in shard.clips:
                indices, meta = load_tokens(clip.path)
                text = json.dumps(meta.to_dict(), sort_keys=True)
                if hashlib.sha256(text.encode()).hexdigest() != clip.digest:
                    raise TokenFileError("changed while it was being packed; pack again",
                                         clip.path)
                rows.append((clip, indices.astype(index_dtype(meta.vocab)), meta, text))
                size += clip.index_bytes
                yield clip.index_bytes
                if size >= ROW_GROUP_BYTES:
                    writer.write_table(_table(pa, schema, rows), row_group_size=len(rows))
                    rows, size = [], 0
            if rows:
                writer.write_table(_table(pa, schema, rows), row_group_size=len(rows))
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shard_entry(path: Path, shard: _Shard) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"file": shard.name, "key": shard.key, "rows": len(shard.clips),
            "tokens": sum(c.tokens for c in shard.clips),
            "index_bytes": sum(c.index_bytes for c in shard.clips),
            "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _manifest(meta: TokenMetadata, shards: list[dict[str, Any]]) -> dict[str, Any]:
    remap = meta.remap
    return {
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
