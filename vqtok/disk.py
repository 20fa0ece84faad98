"""Files on disk: written atomically (a file vqtok writes appears whole under its name, or not
at all) and hashed (`file_sha256`, the hash index files, manifests, model cards and remap
checks record).

Every writer (index files and sidecars, videos, remap files) writes to a temporary file beside
its target and renames it over the target once complete (`atomic_bytes`, or `temp_path` for a
writer that streams, such as a video encoder). The temporary name says who made it:
``.NAME.HOST-PID-RAND.tmp``. A process stopped before the rename (``kill -9``, a power cut)
leaves its temporary file behind; `remove_stale` deletes those of processes of this host that
are gone (and the temporary folders of that name a whole-dataset write leaves: ``vqtok pack
--format megatron``...), and the commands call it on their output folders before writing, so a
rerun cleans up after a crashed one. Temporaries of the older naming (``.NAME.RAND.tmp``, no
process id, NAME an index file, sidecar, remap file or video) are removed once untouched for
`LEGACY_AGE` seconds; another host's are never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["LEGACY_AGE", "atomic_bytes", "file_sha256", "is_sha256", "remove_stale", "temp_path"]

LEGACY_AGE = 600.0
"""Seconds since its last change after which a temporary file without a process id is stale."""

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OURS = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_LEGACY = re.compile(
    r"^\..+\.(?:npy|json|safetensors|mp4|m4v|mov|mkv)\.(?:[0-9a-f]{8}|\d+|[a-z0-9_]{8})\.tmp$"
)


def temp_path(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``target`` (``.NAME.HOST-PID-RAND.tmp``)."""
    path = Path(target)
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically: a temporary file, fsync, rename.

    Raises:
        OSError: the file cannot be written (no temporary file is left behind).
    """
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(folders: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Delete the temporary files crashed vqtok processes left directly in ``folders``.

    A file (or folder) named ``.NAME.HOST-PID-RAND.tmp`` is removed when HOST is this host and
    no process PID runs here; one of the older naming, once untouched for `LEGACY_AGE` seconds.
    Folders that do not exist are skipped.

    Returns:
        the files removed.
    """
    removed = []
    for folder in {Path(f) for f in folders}:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and _stale(entry):
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError:
                    continue
                removed.append(path)
    return sorted(removed)


def _stale(entry: os.DirEntry[str]) -> bool:
    ours = _OURS.match(entry.name)
    if ours is not None:
        return ours["host"] == _HOST and not _running(int(ours["pid"]))
    if _LEGACY.match(entry.name) is None:
        return False
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_AGE
    except OSError:
        return False


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a digest as `file_sha256` writes it: 64 lowercase hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)


_HEX = frozenset("0123456789abcdef")
