"""``vqtok pack``: index files of one model packed into a token dataset (Parquet by default).

One ``.npy`` + ``.json`` per clip is right for encoding and resuming, wrong for training
(millions of small files, no random access across them, no standard reader). `pack_dataset`
writes the index files of one model (and one remap) as a dataset in the format of
`vqtok.io.shards`: zstd Parquet shards, one row per clip, plus the manifest ``_vqtok.json``;
`vqtok.data` reads it as PyTorch datasets, and pyarrow, Hugging Face ``datasets``, DuckDB or
Spark read the folder as it is. ``format`` picks another training stack's layout (Megatron,
MDS, LitData, WebDataset: `vqtok.pipeline.pack_formats`) and ``flatten`` how multi-level
indices become tokens (`vqtok.data.flatten`); the checks below are the same for every layout.

Files are assigned to shards in input order (directories sorted), a new shard starting when
the index bytes reach ``shard_size_mb``, so the plan depends only on the inputs. Every sidecar
and ``.npy`` header is checked before anything is written, so a missing or mismatched sidecar,
a damaged header or another model's file stops the run with nothing written. Each shard is
written to a temporary file and renamed, and carries a key (a hash of its files' names, sizes
and metadata, and of the index dtype) in its footer; the manifest is written last. A killed run
leaves whole shards and no manifest, and a rerun keeps the shards whose key matches and writes
the rest: the same bytes as an uninterrupted run (nothing in the files depends on time).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.data.flatten import Flattening
from vqtok.data.formats import flattening_for, layout_module
from vqtok.errors import ConfigError, TokenFileError, VqtokError
from vqtok.io.shards import (
    DATASET_VERSION,
    LEGACY_MANIFEST,
    MANIFEST,
    SHARD_NAME,
    TEMP_NAME,
    Row,
    ShardWriter,
    manifest_keys,
    manifest_path,
    other_layout_files,
    require_pyarrow,
    schema,
    shard_entry,
    shard_key,
    write_manifest,
)
from vqtok.io.tokens import (
    TokenMetadata,
    index_dtype,
    load_metadata,
    load_tokens,
    stored_dtypes,
)
from vqtok.pipeline.outputs import check_folder_output
from vqtok.pipeline.remap_build import index_files


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
        layout / flatten / token_vocab: the format, the flattening and the vocabulary of the
            tokens stored (``vocab`` times the levels for ``offset``).
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
    layout: str = "parquet"
    flatten: str = "levels"
    token_vocab: int = 0

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
    *,
    format: str = "parquet",
    flatten: str | None = None,
) -> PackReport:
    """Pack index files of one model into a token dataset (see the module docstring).

    Args:
        inputs: index files (``.npy`` with sidecar, ``.safetensors``) and directories of them.
        output: the dataset directory; created, or resumed when it holds an unfinished pack of
            the same inputs.
        shard_size_mb: start a new shard when its uncompressed index bytes reach this (MB).
        overwrite: replace a dataset of other inputs in ``output``.
        progress: called after each file with a `PackProgress`.
        format: ``parquet``, ``megatron``, ``mds``, ``litdata`` or ``webdataset``
            (`vqtok.data.formats`).
        flatten: ``interleave``, ``offset`` or ``levels`` (`vqtok.data.flatten`; ``levels``
            only for parquet, mds and webdataset); default ``levels`` where it fits, else
            ``interleave``.

    Returns:
        `PackReport`.

    Raises:
        ConfigError: ``shard_size_mb`` not positive, or no inputs.
        TokenFileError: a bad index file or sidecar, or one from another model / remap.
        OptionError: an ``output`` named like a file, or a file where it must be; ``levels``
            for a format of flat streams.
        MissingDependencyError: the format's library is not installed (names the extra).
        VqtokError: ``output`` holds other files, or another dataset without ``overwrite``.
    """
    if format == "parquet":
        require_pyarrow()
    elif hasattr(layout_module(format), "require"):
        layout_module(format).require()  # before minutes of checking: the library is there
    if not shard_size_mb > 0:
        raise ConfigError(f"shard_size_mb must be positive, got {shard_size_mb}",
                          cli_message=f"--shard-size must be positive, got {shard_size_mb}")
    check_folder_output(output, "a token dataset")
    report = progress or (lambda p: None)
    output = Path(output)
    clips, meta = _check_inputs(_named_files(inputs), report)
    flattening = flattening_for(format, flatten, meta)
    if format != "parquet":
        from vqtok.pipeline.pack_formats import pack_layout  # it imports this module

        return pack_layout(clips, meta, output, format, flattening, int(shard_size_mb * 1e6),
                           overwrite, report)
    dtype = index_dtype(flattening.token_vocab)
    plan = _plan(clips, int(shard_size_mb * 1e6), str(dtype), flattening.how)
    keep = _prepare_output(output, plan, overwrite)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        entries = _write_shards(output, plan, keep, schema(meta, dtype),
                                lambda clip: _row(clip, flattening, dtype), report)
    except BaseException:
        if created and not any(output.iterdir()):
            output.rmdir()  # nothing was written: leave no trace; whole shards stay for a rerun
        raise
    manifest = write_manifest(output, meta, entries, flattening=flattening.to_dict(),
                              dtype=dtype)
    return PackReport(
        output=output, shards=len(plan), written=len(plan) - len(keep), rows=manifest["rows"],
        tokens=manifest["tokens"], index_bytes=manifest["index_bytes"], bytes=manifest["bytes"],
        model=meta.model, vocab=meta.vocab, dtype=manifest["dtype"],
        flatten=flattening.how, token_vocab=flattening.token_vocab,
    )



def _write_shards(output: Path, plan: list[_Shard], keep: set[str], dataset_schema: Any,
                  row: Callable[[_Clip], Row], report: ProgressFn) -> list[dict[str, Any]]:
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
            with ShardWriter(path, dataset_schema, shard.key) as writer:
                for clip in shard.clips:
                    writer.add(row(clip))
                    files, index_bytes = files + 1, index_bytes + clip.index_bytes
                    report(PackProgress("pack", files, total, files, index_bytes))
        entries.append(shard_entry(path, shard.key, len(shard.clips),
                                   sum(c.tokens for c in shard.clips),
                                   sum(c.index_bytes for c in shard.clips)))
    return entries


def _row(clip: _Clip, flattening: Flattening, dtype: np.dtype) -> Row:
    """A clip's Parquet row: its tokens (flattened as asked) in its index array's shape."""
    name, indices, meta, text = _load(clip)
    return name, flattening.flatten(indices).reshape(indices.shape).astype(dtype), meta, text


def _load(clip: _Clip) -> tuple[str, np.ndarray, TokenMetadata, str]:
    """A clip's row for `ShardWriter`: its indices in their storage dtype, checked to be the
    file the check stage saw."""
    indices, meta = load_tokens(clip.path)
    text = json.dumps(meta.to_dict(), sort_keys=True)
    if hashlib.sha256(text.encode()).hexdigest() != clip.digest:
        raise TokenFileError("changed while it was being packed; pack again", clip.path)
    return clip.name, indices.astype(index_dtype(meta.vocab)), meta, text


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
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, found = read(file)
            good = (shape == meta.shape and found in stored_dtypes(meta.vocab)
                    and file.tell() + math.prod(shape) * found.itemsize == path.stat().st_size)
    except Exception:  # numpy raises many kinds for a damaged header (ValueError, EOFError, ...)
        good = False
    if not good:
        load_tokens(path)  # raises the reader's own message
        raise TokenFileError("the index array cannot be read; encode the video again", path)


def _plan(clips: list[_Clip], shard_bytes: int, dtype: str, flatten: str = "levels"
          ) -> list[_Shard]:
    """Consecutive clips per shard; a shard closes when its index bytes reach shard_bytes.
    A shard's key names its files, the dtype its indices are stored in and their flattening."""
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
        text = json.dumps({"format_version": DATASET_VERSION, "shard": name, "dtype": dtype,
                           "flatten": flatten,
                           "files": [[c.name, c.file_size, c.digest] for c in group]})
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
    other = other_layout_files(output)  # a dataset of another format: replaced on overwrite
    foreign = [n for n in names if n not in (MANIFEST, LEGACY_MANIFEST, *other)
               and not SHARD_NAME.match(n) and not TEMP_NAME.match(n)]
    if foreign:
        raise VqtokError(f"is not empty and not a vqtok dataset (it holds {foreign[0]!r}); "
                         "pack into a new or empty directory", output)
    keys = {s.name: s.key for s in plan}
    found = {n: shard_key(output / n) for n in names if SHARD_NAME.match(n)}
    keep = {n for n, key in found.items() if key is not None and keys.get(n) == key}
    # a planned shard that cannot be read is rewritten; any other shard is another dataset's
    stale = [n for n, key in found.items() if n not in keep and (n not in keys or key)]
    old = manifest_keys(manifest_path(output))
    if (stale or (old is not None and old != keys)) and not overwrite:
        what = (f"holds another dataset ({stale[0] if stale else manifest_path(output).name} "
                "is not from these inputs)")
        raise VqtokError(f"{what}; pass overwrite=True to replace it, or pack into a new directory",
                         output, cli_message=f"{what}; pass --overwrite to replace it, or pack "
                         "into a new directory")
    if overwrite:
        for name in (MANIFEST, LEGACY_MANIFEST, *other):  # no longer describe what is there
            (output / name).unlink(missing_ok=True)
    for name in names:
        if TEMP_NAME.match(name) or (SHARD_NAME.match(name) and name not in keys):
            (output / name).unlink()
    return set() if overwrite else keep

