"""Clip manifests: a table of clips to encode, one row each (``.csv``, ``.jsonl``, ``.parquet``).

Columns (others, such as captions, are ignored):

- ``path`` (or ``url``): the video, a local path or an fsspec URL; a relative path is relative
  to the manifest's own folder (or URL);
- ``start``, ``end`` (optional): the clip, in seconds from the video's first frame: exactly the
  frames whose presentation time ``t`` satisfies ``start <= t < end``; empty: from the first /
  to the last frame;
- ``key`` (optional): the clip's output key (``vqtok encode``'s output name below ``-o``, or the
  dataset row's ``index_file``); default: the video's name without its suffix, plus
  ``_<start>-<end>`` for a clip (``a_1.5-3``).

A ``.csv`` has a header line; a ``.jsonl`` one JSON object per line; a ``.parquet`` is read with
pyarrow. `read_manifest_rows` refuses a manifest without a ``path`` / ``url`` column or with a
bad value, naming the manifest and the row (1-based, the header not counted).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

from vqtok.errors import ConfigError, MissingDependencyError, VqtokError
from vqtok.io.remote import is_url, join, local_path, open_binary
from vqtok.io.sources import ClipSource, as_seconds, format_seconds

__all__ = ["MANIFEST_SUFFIXES", "ManifestRow", "is_manifest", "read_manifest_rows"]

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class ManifestRow:
    """One clip of a manifest: its source (with the range) and its key; ``row`` is 1-based."""

    row: int
    source: ClipSource
    key: str


def is_manifest(name: str) -> bool:
    """Whether an input names a clip manifest (by its suffix)."""
    return str(name).lower().endswith(MANIFEST_SUFFIXES)


def read_manifest_rows(manifest: str) -> list[ManifestRow]:
    """The clips a manifest lists, in its order.

    Raises:
        ConfigError: no ``path`` / ``url`` column, a row without a path, a start or end that is
            not a number of seconds, an end not after its start.
        VqtokError: the manifest cannot be read (missing, not valid CSV / JSON / Parquet).
    """
    records = _records(manifest)
    rows = []
    for number, record in enumerate(records, start=1):
        try:
            rows.append(_row(manifest, number, record))
        except ConfigError as e:
            raise ConfigError(f"row {number}: {e.message}", manifest) from None
    return rows


def _records(manifest: str) -> list[dict[str, Any]]:
    """The manifest's rows as dicts of column -> value."""
    lower = manifest.lower()
    try:
        with open_binary(manifest) as file:
            data = file.read()
    except OSError as e:
        raise VqtokError(f"cannot read the manifest ({e.strerror or e})", manifest) from e
    try:
        if lower.endswith(".parquet"):
            records = _parquet_records(data)
        elif lower.endswith(".jsonl"):
            records = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            if not all(isinstance(r, dict) for r in records):
                raise ValueError("every line must be a JSON object")
        else:
            records = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (ValueError, UnicodeDecodeError, csv.Error) as e:
        raise VqtokError(f"not a readable {PurePosixPath(lower).suffix} manifest ({e})",
                         manifest) from e
    columns = set().union(*(r.keys() for r in records)) if records else set()
    if records and not columns & {"path", "url"}:
        raise ConfigError(f"has no 'path' or 'url' column (columns: {', '.join(sorted(columns))}"
                          "); name the videos' column path", manifest)
    if not records:
        raise ConfigError("lists no clips", manifest)
    return records


def _parquet_records(data: bytes) -> list[dict[str, Any]]:
    pa = MissingDependencyError.require(("pyarrow", "pyarrow.parquet"),
                                        "Parquet manifests need pyarrow", "data")
    try:
        table = pa.parquet.read_table(pa.BufferReader(data))
    except pa.ArrowException as e:
        raise ValueError(str(e)) from e
    return list(table.to_pylist())


def _row(manifest: str, number: int, record: dict[str, Any]) -> ManifestRow:
    where = record.get("path") or record.get("url")
    if not isinstance(where, str) or not where.strip():
        raise ConfigError("has no path (the path or url column is empty)")
    location = _resolve(manifest, where.strip())
    start = as_seconds(record.get("start"), "start")
    end = as_seconds(record.get("end"), "end")
    source = ClipSource(location, start=start, end=end)
    key = record.get("key")
    if key is None or (isinstance(key, str) and not key.strip()):
        key = default_key(location, start, end)
    return ManifestRow(number, source, str(key).strip())


def _resolve(manifest: str, where: str) -> str:
    """A manifest's path: a URL or absolute path as it is; a relative one below the manifest's
    folder."""
    if is_url(where) or PurePosixPath(where).is_absolute():
        return where
    folder = local_path(manifest)
    if folder is not None:
        return str(folder.parent / where)
    return join(manifest.rsplit("/", 1)[0], where)


def default_key(location: str, start: Fraction | None, end: Fraction | None) -> str:
    """A clip's key when the manifest gives none: the video's stem, plus ``_<start>-<end>``
    for a range (``a_1.5-3``, ``a_0-2``, ``a_4-``)."""
    stem = PurePosixPath(location.rstrip("/").replace("\\", "/")).stem
    if start is None and end is None:
        return stem
    low = format_seconds(start) if start is not None else "0"
    high = format_seconds(end) if end is not None else ""
    return f"{stem}_{low}-{high}"

