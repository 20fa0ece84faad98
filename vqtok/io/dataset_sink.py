"""A token dataset written clip by clip, resumable, in a folder or at a URL (the Ray engine).

`DatasetSink` writes the format of `vqtok.io.shards` (the ``vqtok pack`` format: the same schema,
row facts and manifest, so `vqtok.io.datasets.TokenDataset`, pyarrow and Hugging Face ``datasets``
read it) from rows that arrive in any order, one row per key (``index_file`` holds the key):

- shards are ``part-NNNNN.parquet``, numbered on from the shards already there; each is written
  with `vqtok.io.shards.ShardWriter` (to a local staging folder, then uploaded through fsspec for
  a URL) and the manifest is rewritten after each one, so a run stopped at any point leaves a
  readable dataset of whole shards;
- resume: `DatasetSink.open` reads the keys of the shards the manifest lists and refuses a
  dataset made with another model, remap file or settings (what its ``differences`` callback,
  `vqtok.pipeline.resume.Resume.differences`, finds in the first row's metadata);
  shards that no manifest lists (a run stopped between a shard and its manifest) are deleted,
  so their keys are encoded again and no key is ever in the dataset twice; `add` drops a key
  already written (a retried task's duplicate);
- ``_errors.csv`` (``key,input,reason``, one line per clip that failed in this run; rewritten
  by every run, since a rerun tries failed keys again). Its name starts with ``_``, like the
  temporary files' with ``.``, so pyarrow's dataset discovery skips it.

One sink (one process) writes a dataset at a time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.errors import VqtokError
from vqtok.io.remote import local_path, remote_fs, wrap_os_error
from vqtok.io.shards import (
    DATASET_FORMAT,
    LEGACY_MANIFEST,
    MANIFEST,
    SHARD_NAME,
    ShardWriter,
    require_pyarrow,
    schema,
    shard_entry,
    write_manifest,
)
from vqtok.io.tokens import TokenMetadata, index_dtype

__all__ = ["ERRORS", "DatasetSink", "SinkReport"]

ERRORS = "_errors.csv"
PART_NAME = re.compile(r"^part-(\d{5,})\.parquet$")
_TEMP = re.compile(r"^\..+\.tmp$")


@dataclass
class SinkReport:
    """What a sink holds and did: ``rows`` in the dataset (``written`` of them now, one per
    key), ``shards`` (``shards_written`` now), ``failed`` clips in the errors table."""

    output: str
    rows: int = 0
    written: int = 0
    shards: int = 0
    shards_written: int = 0
    failed: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "rows": self.rows, "written": self.written,
                "shards": self.shards, "shards_written": self.shards_written,
                "failed": self.failed, "errors": ERRORS}


class DatasetSink:
    """Write clips' indices into a token dataset at ``output`` (a folder or URL).

    Args:
        output: the dataset folder or URL (created when missing).
        shard_size_mb: a shard closes when its uncompressed index bytes reach this (MB).
    """

    def __init__(self, output: str | Path, shard_size_mb: float = 256) -> None:
        require_pyarrow()
        self.output = str(output)
        self.folder = local_path(self.output)
        self._staging = self.folder or Path(tempfile.mkdtemp(prefix="vqtok-sink-"))
        self.shard_bytes = max(1, int(shard_size_mb * 1e6))
        self.keys: set[str] = set()
        self.entries: list[dict[str, Any]] = []
        self.report = SinkReport(self.output)
        self._writer: ShardWriter | None = None
        self._rows: list[str] = []
        self._counts = [0, 0]  # tokens, index bytes of the open shard
        self._meta: TokenMetadata | None = None
        self._next = 0
        self._legacy = False  # the dataset has a manifest under its format-1 name

    # ----------------------------------------------------------------------------- resume

    def open(self, differences: Callable[[TokenMetadata], list[str]] | None,
             overwrite: bool = False) -> set[str]:
        """Prepare the output and return the keys already in it (none with ``overwrite``).

        Args:
            differences: how an existing row's metadata differs from what this run makes, one
                phrase each (none: the dataset can be added to); None: not checked.
            overwrite: delete an existing dataset first.

        Raises:
            VqtokError: the output holds other files, or a dataset made another way (without
                ``overwrite``), or cannot be listed / read.
        """
        names = self._names()
        ours = [n for n in names if n in (MANIFEST, LEGACY_MANIFEST, ERRORS) or PART_NAME.match(n)
                or SHARD_NAME.match(n) or _TEMP.match(n)]
        foreign = sorted(set(names) - set(ours))
        if foreign:
            raise VqtokError(f"is not empty and not a vqtok dataset (it holds {foreign[0]!r}); "
                             "write the dataset to a new or empty folder", self.output)
        if overwrite:
            for name in ours:
                self._remove(name)
            return set()
        named = [n for n in (MANIFEST, LEGACY_MANIFEST) if n in names]  # the current name first
        manifest = self._manifest(named[0]) if named else None
        self._legacy = LEGACY_MANIFEST in names
        listed = [] if manifest is None else [s["file"] for s in manifest["shards"]]
        for name in ours:  # unlisted shards (a stopped run) and temporary files
            if name not in listed and name not in (MANIFEST, LEGACY_MANIFEST, ERRORS):
                self._remove(name)
        if manifest is None:
            return set()
        self.entries = list(manifest["shards"])
        numbers = [int(m.group(1)) for m in map(PART_NAME.match, listed) if m]
        self._next = max(numbers, default=-1) + 1
        for name in listed:
            self.keys.update(self._column(name, "index_file"))
        if differences is not None and listed:
            self._check_made(differences, listed[0])
        self.report.rows, self.report.shards = len(self.keys), len(self.entries)
        return set(self.keys)

    def _check_made(self, differences: Callable[[TokenMetadata], list[str]], first: str
                    ) -> None:
        text = self._column(first, "metadata", rows=1)[0]
        found = differences(TokenMetadata.from_dict(json.loads(text), first))
        if found:
            what = f"holds a dataset made with {'; '.join(found)}"
            raise VqtokError(f"{what}; pass overwrite=True to replace it, or choose a new "
                             "output", self.output, cli_message=f"{what}; pass --overwrite to "
                             "replace it, or choose a new output")

    def _manifest(self, name: str) -> dict[str, Any]:
        try:
            manifest = json.loads(self._read(name))
            if manifest.get("format") != DATASET_FORMAT or not isinstance(manifest["shards"],
                                                                           list):
                raise ValueError("not a vqtok dataset manifest")
        except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise VqtokError(f"{name} is damaged ({e}); write the dataset again with "
                             "--overwrite", self.output) from e
        layout = manifest.get("layout", "parquet")
        if layout != "parquet":
            raise VqtokError(f"holds a {layout} dataset; this run writes Parquet shards: choose "
                             "a new output", self.output)
        return manifest

    # ----------------------------------------------------------------------------- writing

    def add(self, key: str, indices: np.ndarray, meta: TokenMetadata) -> bool:
        """Write one clip's row, unless its key is in the dataset already.

        Args:
            key: the row's ``index_file``.
            indices: (t, h, w[, L]) integer indices of the clip.
            meta: its index-file metadata.

        Returns:
            whether the row was written (False: a duplicate key, dropped).
        """
        if key in self.keys:
            return False
        if self._writer is None:
            self._staging.mkdir(parents=True, exist_ok=True)
            name = f"part-{self._next:05d}.parquet"
            self._writer = ShardWriter(self._staging / name, schema(meta), name).__enter__()
            self._meta, self._rows, self._counts = meta, [], [0, 0]
        stored = indices.astype(index_dtype(meta.vocab))
        self._writer.add((key, stored, meta, json.dumps(meta.to_dict(), sort_keys=True)))
        self.keys.add(key)
        self._rows.append(key)
        self._counts[0] += int(stored.size)
        self._counts[1] += int(stored.nbytes)
        self.report.written += 1
        if self._counts[1] >= self.shard_bytes:
            self.flush()
        return True

    def fail(self, key: str, source: str, reason: str) -> None:
        """Record a clip that failed (a row of the errors table)."""
        self.report.errors.append((key, source, " ".join(reason.split())))

    def flush(self) -> None:
        """Close the open shard: write it (upload it), then the manifest listing it."""
        writer, meta = self._writer, self._meta
        if writer is None or meta is None:
            return
        self._writer = None
        writer.__exit__(None, None, None)
        path = writer.path
        digest = hashlib.sha256("\n".join(sorted(self._rows)).encode()).hexdigest()
        self.entries.append(shard_entry(path, digest, len(self._rows), *self._counts))
        self._upload(path)
        self._next, self._rows = self._next + 1, []
        self.report.shards_written += 1
        write_manifest(self._staging, meta, self.entries)  # a local legacy one goes with it
        self._upload(self._staging / MANIFEST)
        if self._legacy and self.folder is None:
            self._remove(LEGACY_MANIFEST)
        self._legacy = False

    def close(self, error: BaseException | None = None) -> SinkReport:
        """Finish: the last shard and manifest (unless ``error``: the open shard is dropped,
        whole shards stay), and the errors table."""
        if error is None:
            self.flush()
        elif self._writer is not None:
            self._writer.__exit__(type(error), error, None)
            self._writer = None
        self._write_errors()
        if self.folder is None:
            shutil.rmtree(self._staging, ignore_errors=True)
        report = self.report
        report.rows, report.shards, report.failed = len(self.keys), len(self.entries), len(
            report.errors)
        if error is not None:  # the dropped shard's rows are not in the dataset
            report.rows -= len(self._rows)
        return report

    def _write_errors(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("key", "input", "reason"))
        writer.writerows(self.report.errors)
        local = self._staging / ERRORS
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        local.write_text(buffer.getvalue())
        self._upload(local)

    # ----------------------------------------------------------------------------- storage

    def _names(self) -> list[str]:
        if self.folder is not None:
            if self.folder.exists() and not self.folder.is_dir():
                raise VqtokError("exists and is not a folder; give a folder for the dataset",
                                 self.output)
            return sorted(p.name for p in self.folder.iterdir()) if self.folder.exists() else []
        fs, root = remote_fs(self.output)
        fs.invalidate_cache()  # another process (an earlier run) may have written here
        try:
            listed = fs.ls(root.rstrip("/"), detail=False) if fs.exists(root) else []
        except Exception as e:  # the backend's own error kinds
            raise wrap_os_error(self.output, e, "listing the dataset") from e
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def _read(self, name: str) -> bytes:
        if self.folder is not None:
            return (self.folder / name).read_bytes()
        fs, root = remote_fs(self.output)
        try:
            return bytes(fs.cat_file(f"{root.rstrip('/')}/{name}"))
        except Exception as e:  # the backend's own error kinds
            raise wrap_os_error(self.output, e, f"reading {name}") from e

    def _column(self, name: str, column: str, rows: int | None = None) -> list[Any]:
        pa = require_pyarrow()
        try:
            table = pa.parquet.read_table(pa.BufferReader(self._read(name)), columns=[column])
        except pa.ArrowException as e:
            raise VqtokError(f"{name} is not a readable shard ({e}); write the dataset again "
                             "with --overwrite", self.output) from e
        values = table.column(column).to_pylist()
        return values if rows is None else values[:rows]

    def _remove(self, name: str) -> None:
        if self.folder is not None:
            (self.folder / name).unlink(missing_ok=True)
            return
        fs, root = remote_fs(self.output)
        try:
            fs.rm_file(f"{root.rstrip('/')}/{name}")
        except FileNotFoundError:
            pass
        except Exception as e:  # the backend's own error kinds
            raise wrap_os_error(self.output, e, f"deleting {name}") from e

    def _upload(self, path: Path) -> None:
        """Put a staged file at the URL (a local folder's file is in place already)."""
        if self.folder is not None:
            return
        fs, root = remote_fs(self.output)
        try:
            fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")
        except Exception as e:  # the backend's own error kinds
            raise wrap_os_error(self.output, e, f"writing {path.name}") from e
        if path.name != MANIFEST:
            path.unlink(missing_ok=True)
