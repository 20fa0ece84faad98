"""Remap files: the used sets of a remap (`vqtok.quantizers.remap.UsedSets`) on disk.

A model with L codebooks or residual levels (residual VQ, multi-codebook LFQ or FSQ) has one
vocabulary per level, so its remap holds L used sets: level l's sorted original ids, and compact
id ``j`` at level l stands for code ``used[l][j]``. Two layouts:

- ``used.npy``: one level, the 1-D int64 array of taming-transformers (Esser et al., arXiv
  2012.09841), `load_used` / `save_used`; unchanged for single-codebook models;
- ``used.safetensors``: L >= 1 levels, tensors ``level0`` ... ``level{L-1}`` (1-D int64, strictly
  increasing) and the header metadata key ``"vqtok_remap"`` holding JSON
  ``{"format_version": 1, "num_levels": L, "codebook_size": K}`` (K: the vocabulary of one level
  of the index files it was built from; every id is below it).

Neither layout can hold pickled objects: ``.npy`` is read with ``allow_pickle=False`` and
safetensors has no object type. Loading checks everything (level count, names, dtype, order,
range) and every problem is one `RemapError` naming the file and, where it applies, the level.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from tokenize import TokenError

import numpy as np
import safetensors
import safetensors.numpy
from torch import Tensor

from vqtok.disk import atomic_bytes
from vqtok.errors import RemapError, check_version
from vqtok.io.header_json import header_json
from vqtok.quantizers.remap import UsedSets, validate_used

METADATA_KEY = "vqtok_remap"
FORMAT_VERSION = 1  # one per file kind: README, "File formats and their versions"
MULTI_SUFFIX = ".safetensors"


def output_path(path: str | os.PathLike, num_levels: int) -> Path:
    """Where `save_used_sets` writes: one level keeps ``path`` (``used`` -> ``used.npy``);
    several levels need ``.safetensors`` (``used.npy`` -> ``used.safetensors``, ``used`` ->
    ``used.safetensors``; `vqtok.pipeline.remap_build.build_remap` refuses the ``.npy`` name
    instead)."""
    path = Path(path)
    if num_levels == 1 and path.suffix == "":
        return path.with_name(path.name + ".npy")
    if num_levels == 1 or path.suffix == MULTI_SUFFIX:
        return path
    if path.suffix == ".npy":
        return path.with_suffix(MULTI_SUFFIX)
    return path.with_name(path.name + MULTI_SUFFIX)


def require_remap_file(path: str | os.PathLike) -> None:
    """Check that a remap file exists before any work, naming the file of the other suffix
    where that one exists (``used.npy`` given, ``used.safetensors`` there).

    Raises:
        RemapError: no file at ``path``.
    """
    path = Path(path)
    if path.is_file():
        return
    if path.is_dir():
        raise RemapError("is a folder, not a remap file", path)
    for suffix in (".npy", MULTI_SUFFIX):
        other = path.with_suffix(suffix)
        if other != path and other.is_file():
            raise RemapError(f"remap file not found; did you mean {other}?", path)
    raise RemapError("remap file not found; check the path (vqtok remap build writes one)", path)


def load_used(path: str | os.PathLike, codebook_size: int | None = None) -> Tensor:
    """Read and validate a remap ``.npy`` file (never unpickles).

    Args:
        path: a 1-D int64 ``.npy`` as written by `save_used` or the reference tools.
        codebook_size: K of the full codebook, or None to skip the upper-bound check.

    Returns:
        (U,) int64 CPU tensor, strictly increasing.

    Raises:
        RemapError: the file is missing, unreadable, pickled, an ``.npz``, or fails
            `validate_used`.
    """
    where = os.fspath(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise RemapError("remap file not found", where) from e
    except (ValueError, SyntaxError, TokenError, zipfile.BadZipFile) as e:
        # numpy raises ValueError for object (pickled) arrays when allow_pickle=False,
        # tokenize / ast errors for a damaged header and BadZipFile for a damaged .npz.
        raise RemapError(f"remap file is not a plain .npy integer array ({e})", where) from e
    except (OSError, EOFError) as e:
        raise RemapError(f"cannot read remap file ({e})", where) from e
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise RemapError("remap file is an .npz archive; expected a single 1-D .npy array", where)
    return validate_used(arr, codebook_size, path)


def save_used(path: str | os.PathLike, used: Tensor | np.ndarray) -> None:
    """Write a validated used-index array as a 1-D int64 ``.npy``, atomically.

    The data goes to a temporary file in the same directory, is flushed to disk, and then
    replaces ``path`` in one rename, so a crash leaves the old file or the new one.

    Raises:
        RemapError: ``used`` fails `validate_used`.
    """
    arr = validate_used(used, path=path).numpy()
    target = Path(path)
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    atomic_bytes(target, buffer.getvalue())



def save_used_sets(
    path: str | os.PathLike, sets: UsedSets, codebook_size: int
) -> Path:
    """Write used sets atomically: a 1-D ``.npy`` for one level (unless ``path`` ends in
    ``.safetensors``), else ``.safetensors`` at `output_path`.

    Args:
        path: the requested file name.
        sets: the used sets.
        codebook_size: K of one level (recorded; every id must be below it).

    Returns:
        the path written.

    Raises:
        RemapError: an id at or beyond ``codebook_size``, or a failed write.
    """
    target = output_path(path, sets.num_levels)
    sets = UsedSets.of(sets.levels, codebook_size, target)
    if target.suffix != MULTI_SUFFIX:
        save_used(target, sets.levels[0])
        return target
    header = {"format_version": FORMAT_VERSION, "num_levels": sets.num_levels,
              "codebook_size": int(codebook_size)}
    tensors = {f"level{i}": level.numpy() for i, level in enumerate(sets.levels)}
    data = safetensors.numpy.save(tensors, metadata={METADATA_KEY: json.dumps(header)})
    try:
        atomic_bytes(target, data)
    except OSError as e:
        raise RemapError(f"cannot write the remap file: {e}", target) from e
    return target


def load_used_sets(path: str | os.PathLike, codebook_size: int | None = None) -> UsedSets:
    """Read and check a remap file: ``.safetensors`` (L levels) or ``.npy`` (one level).

    Args:
        path: the file.
        codebook_size: K of one level, or None to check only the recorded bound.

    Raises:
        RemapError: missing, unreadable, truncated, pickled, or not a valid remap file (see
            the module docstring); the message names the level where one is at fault.
    """
    require_remap_file(path)
    if Path(path).suffix != MULTI_SUFFIX:
        return UsedSets((load_used(path, codebook_size),))
    where = os.fspath(path)
    try:
        with safetensors.safe_open(where, framework="numpy") as file:
            metadata = file.metadata() or {}
            arrays = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise RemapError(
            f"not a readable .safetensors remap file ({e}); rebuild it with vqtok remap build",
            where,
        ) from e
    recorded = _read_header(metadata, where)
    count = recorded["num_levels"]
    expected = [f"level{i}" for i in range(count)]
    if sorted(arrays) != sorted(expected):
        raise RemapError(
            f"holds tensors {sorted(arrays)} but its header says {count} level(s): expected "
            f"{', '.join(expected)}",
            where,
        )
    bound = recorded["codebook_size"]
    if codebook_size is not None:
        bound = min(bound, codebook_size)
    return UsedSets.of([arrays[name] for name in expected], bound, where)


def is_remap_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.safetensors`` remap file (its header has ``vqtok_remap``), so
    a directory walk for index files can pass it by. Reads only the header."""
    if Path(path).suffix != MULTI_SUFFIX:
        return False
    try:
        with safetensors.safe_open(os.fspath(path), framework="numpy") as file:
            return METADATA_KEY in (file.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError):
        return False


def _read_header(metadata: dict[str, str], where: str) -> dict[str, int]:
    """The checked ``vqtok_remap`` header: format_version, num_levels, codebook_size."""
    header = header_json(metadata, METADATA_KEY, RemapError, where, ": not a vqtok remap file",
                         repr(METADATA_KEY))
    keys = ("format_version", "num_levels", "codebook_size")
    if not isinstance(header, dict) or sorted(header) != sorted(keys):
        raise RemapError(f"the {METADATA_KEY!r} metadata must hold exactly {keys}", where)
    if not all(isinstance(header[k], int) and not isinstance(header[k], bool) for k in keys):
        raise RemapError(f"the {METADATA_KEY!r} metadata values must be integers", where)
    check_version(header["format_version"], FORMAT_VERSION, "remap file format version",
                  RemapError, where)
    if header["num_levels"] < 1 or header["codebook_size"] < 1:
        raise RemapError("num_levels and codebook_size must be >= 1", where)
    return header
