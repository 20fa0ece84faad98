"""``vqtok pack --format megatron|mds|litdata|webdataset``: one dataset written whole, atomically.

`vqtok.pipeline.pack.pack_dataset` checks the inputs (every sidecar and header, one model) and
hands them here for the layouts other than Parquet. `pack_layout` writes the whole dataset into
a temporary folder beside ``output`` (``.NAME.HOST-PID-RAND.tmp``) through the layout's
``Writer`` (`vqtok.data.formats`), each clip's indices flattened as asked
(`vqtok.data.flatten`), then the clip list (`vqtok.data.records`) and the manifest
``_vqtok.json`` last, and renames the folder into place: a reader sees a whole dataset or none,
and a killed run leaves only its temporary folder, which the next run removes. There is no
per-shard resume (the libraries write their own shard names and indexes); a rerun with the same
inputs, format, flattening and shard size keeps the finished dataset (the manifest records a key
of them), and ``overwrite`` replaces another dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.data.flatten import Flattening
from vqtok.data.formats import layout_module
from vqtok.data.records import CLIPS_FILE, ClipRecord, write_records
from vqtok.disk import file_sha256, remove_stale, temp_path
from vqtok.errors import VqtokError
from vqtok.io.shards import DATASET_VERSION, looks_like_dataset, manifest_path, write_manifest
from vqtok.io.token_meta import TokenMetadata
from vqtok.pipeline.pack import PackProgress, PackReport, ProgressFn, _Clip, _load

__all__ = ["pack_layout"]


def pack_layout(clips: list[_Clip], meta: TokenMetadata, output: Path, layout: str,
                flattening: Flattening, shard_bytes: int, overwrite: bool,
                report: ProgressFn) -> PackReport:
    """Write checked clips as a ``layout`` dataset in ``output`` (see the module docstring).

    Raises:
        VqtokError: the layout's library missing; ``output`` holds other files, or another
            dataset without ``overwrite``.
        TokenFileError: a file changed since it was checked, or holds an index out of range.
    """
    module = layout_module(layout)
    dtype = module.storage_dtype(flattening.token_vocab)
    key = _inputs_key(clips, layout, flattening, shard_bytes, dtype)
    kept = _kept(output, key, overwrite)
    if kept is not None:
        report(PackProgress("pack", len(clips), len(clips), kept["rows"], kept["index_bytes"]))
        return _report(output, kept, meta, written=0)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale([output.parent])
    tmp = temp_path(output)
    tmp.mkdir()
    try:
        writer = module.Writer(tmp, dtype, shard_bytes)
        records = _write_clips(writer, clips, flattening, dtype, report)
        files = [_entry(tmp, f, dtype.itemsize) for f in writer.close()]
        write_records(tmp / CLIPS_FILE, records)
        manifest = write_manifest(
            tmp, meta, files, layout=layout, flattening=flattening.to_dict(), dtype=dtype,
            extra={"clips": _entry(tmp, {"file": CLIPS_FILE}, 0), "inputs_key": key})
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    written = sum("rows" in f for f in files)
    return _report(output, manifest, meta, written)


def _write_clips(writer: Any, clips: list[_Clip], flattening: Flattening, dtype: np.dtype,
                 report: ProgressFn) -> list[ClipRecord]:
    """Every clip's tokens to ``writer``, in input order; returns the clip list."""
    records: list[ClipRecord] = []
    start = index_bytes = 0
    for number, clip in enumerate(clips, 1):
        name, indices, clip_meta, text = _load(clip)
        tokens = flattening.flatten(indices).astype(dtype, copy=False)
        record = ClipRecord(name, tuple(indices.shape), clip_meta.encoded.fps, start,
                            int(tokens.size), text)
        writer.add(tokens, record)
        records.append(record)
        start, index_bytes = start + tokens.size, index_bytes + tokens.nbytes
        report(PackProgress("pack", number, len(clips), number, index_bytes))
    return records


def _entry(directory: Path, file: dict[str, Any], itemsize: int) -> dict[str, Any]:
    """A written file's line in the manifest: what the writer said, its size and SHA-256."""
    path = directory / file["file"]
    out = {**file, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    if "tokens" in file:
        out["index_bytes"] = file["tokens"] * itemsize
    return out


def _inputs_key(clips: list[_Clip], layout: str, flattening: Flattening, shard_bytes: int,
                dtype: np.dtype) -> str:
    """A hash of everything that decides the dataset's contents."""
    text = json.dumps({"format_version": DATASET_VERSION, "layout": layout,
                       **flattening.to_dict(), "shard_bytes": shard_bytes, "dtype": str(dtype),
                       "files": [[c.name, c.file_size, c.digest] for c in clips]})
    return hashlib.sha256(text.encode()).hexdigest()


def _kept(output: Path, key: str, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of a finished dataset of the same inputs in ``output`` (kept as it is);
    None when ``output`` is to be written. Refuses a folder of other files, and another
    dataset without ``overwrite``."""
    if not output.is_dir() or not any(output.iterdir()):
        return None
    if not looks_like_dataset(output):
        name = sorted(p.name for p in output.iterdir())[0]
        raise VqtokError(f"is not empty and not a vqtok dataset (it holds {name!r}); pack "
                         "into a new or empty directory", output)
    try:
        old = json.loads(manifest_path(output).read_text())
    except (OSError, ValueError):
        old = {}
    if not overwrite and isinstance(old, dict) and old.get("inputs_key") == key:
        return old
    if not overwrite:
        what = "holds another dataset (not of these inputs, format and flattening)"
        raise VqtokError(f"{what}; pass overwrite=True to replace it, or pack into a new "
                         "directory", output, cli_message=f"{what}; pass --overwrite to replace "
                         "it, or pack into a new directory")
    return None


def _move_into_place(tmp: Path, output: Path) -> None:
    """Rename the finished folder to ``output``, replacing what is there."""
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if output.exists():
        old = temp_path(output)
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output)


def _report(output: Path, manifest: dict[str, Any], meta: TokenMetadata,
            written: int) -> PackReport:
    return PackReport(
        output=output, shards=sum("rows" in f for f in manifest["shards"]), written=written,
        rows=manifest["rows"], tokens=manifest["tokens"], index_bytes=manifest["index_bytes"],
        bytes=manifest["bytes"], model=meta.model, vocab=meta.vocab, dtype=manifest["dtype"],
        layout=manifest["layout"], flatten=manifest["flatten"],
        token_vocab=manifest["token_vocab"])
