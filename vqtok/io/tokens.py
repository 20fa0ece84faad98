"""The index file format: one video's codebook indices plus the metadata to decode them.

Two layouts hold the same array and metadata (README, "Index files"):

- ``codes.npy`` + ``codes.json`` (same stem): the array in NumPy's format, the metadata as JSON
  beside it;
- ``codes.safetensors``: the array as tensor ``"indices"`` and the same JSON under the header
  metadata key ``"vqtok"``.

The metadata dataclasses and their strict JSON parser are in `vqtok.io.token_meta` (re-exported
here); this module reads and writes the files.

The array is (t, h, w), or (t, h, w, L) for L codebooks / residual levels, stored in the
smallest unsigned dtype that holds the vocabulary (`index_dtype`: uint8 up to 256 codes, uint16
up to 65 536, else uint32), and read back as int64. Files of up to 256 codes written as uint16 by
earlier versions still read (`stored_dtypes`).

Writes are atomic: each file is written to a temporary file in the same directory and renamed
into place. For the two-file layout the sidecar is removed first and written last, so a crash at
any point leaves either the old pair, the new pair, or a ``.npy`` without a valid sidecar, which
`is_complete` reports as incomplete (a resumed run writes it again). Reads never unpickle
(``np.load(..., allow_pickle=False)``) and check dtype, rank, shape, value range and metadata;
every problem is a `TokenFileError` naming the file and saying what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from tokenize import TokenError
from typing import Literal

import numpy as np
import safetensors
import safetensors.numpy

from vqtok.disk import atomic_bytes, file_sha256
from vqtok.errors import TokenFileError
from vqtok.io.header_json import header_json
from vqtok.io.sniff import file_kind
from vqtok.io.token_meta import (
    FORMAT_VERSION,
    RESIZE_MODES,
    EncodedInfo,
    EncodeSettings,
    RemapInfo,
    SourceInfo,
    TokenMetadata,
    fps_from_text,
    fps_to_text,
)

__all__ = [
    "FORMAT_VERSION",
    "RESIZE_MODES",
    "SAFETENSORS_KEY",
    "TENSOR_NAME",
    "EncodeSettings",
    "EncodedInfo",
    "RemapInfo",
    "SourceInfo",
    "TokenFormat",
    "TokenMetadata",
    "fps_from_text",
    "format_of",
    "fps_to_text",
    "index_dtype",
    "index_path",
    "index_sha256",
    "is_complete",
    "load_metadata",
    "load_stored",
    "load_tokens",
    "save_tokens",
    "sidecar_path",
    "stored_dtypes",
]

SAFETENSORS_KEY = "vqtok"  # header metadata key holding the JSON metadata
TENSOR_NAME = "indices"

TokenFormat = Literal["npy", "safetensors"]


def index_dtype(vocab: int) -> np.dtype:
    """Smallest unsigned dtype for indices in [0, vocab): uint8 up to 256 codes, uint16 up to
    65 536, else uint32. ``vocab`` is what the metadata records: the remap size of remapped
    indices, else the codebook size.

    Raises:
        TokenFileError: vocab < 1 or above 2**32.
    """
    if not 1 <= vocab <= 2**32:
        raise TokenFileError(f"vocabulary of {vocab} codes cannot be stored (1 .. 2**32)")
    return np.dtype(np.uint8 if vocab <= 2**8 else np.uint16 if vocab <= 2**16 else np.uint32)


def stored_dtypes(vocab: int) -> tuple[np.dtype, ...]:
    """The dtypes an index file of ``vocab`` codes may hold: `index_dtype`, and uint16 for
    up to 256 codes, as vqtok wrote those before it stored uint8."""
    dtype = index_dtype(vocab)
    return (dtype, np.dtype(np.uint16)) if dtype == np.uint8 else (dtype,)


def sidecar_path(path: str | Path) -> Path:
    """The ``.json`` beside an ``.npy`` index file (same stem)."""
    return Path(path).with_suffix(".json")


def save_tokens(
    path: str | Path,
    indices: np.ndarray,
    meta: TokenMetadata,
    format: TokenFormat | None = None,
) -> Path:
    """Write one video's indices and metadata atomically.

    Args:
        path: target file; a ``.npy`` / ``.safetensors`` / ``.json`` suffix is replaced to
            match the format, any other name gets it appended (``out/clip`` -> ``out/clip.npy``).
        indices: integer array of shape ``meta.shape`` ((t, h, w) or (t, h, w, L)), values in
            [0, meta.vocab); any integer dtype (int64 from the model is typical).
        meta: its metadata.
        format: ``"npy"`` (+ ``.json`` sidecar) or ``"safetensors"``; None picks by the suffix
            of ``path`` (``.safetensors``, else npy).

    Returns:
        the path of the index file written.

    Raises:
        TokenFileError: indices that do not match ``meta`` (shape, dtype, range), or a write
            failure (nothing is left half-written).
    """
    if format is None:
        format = format_of(path) or "npy"
    if format not in ("npy", "safetensors"):
        raise TokenFileError(f"unknown index file format {format!r}; use 'npy' or 'safetensors'")
    target = index_path(path, format)
    meta.validate(target)
    array = _to_storage(np.asarray(indices), meta, target)
    text = json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n"
    try:
        if format == "safetensors":
            data = safetensors.numpy.save({TENSOR_NAME: array}, metadata={SAFETENSORS_KEY: text})
            atomic_bytes(target, data)
        else:
            # the old sidecar must not outlive its array: remove it first, write the new one last
            sidecar_path(target).unlink(missing_ok=True)
            atomic_bytes(target, _npy_bytes(array))
            atomic_bytes(sidecar_path(target), text.encode())
    except OSError as e:
        raise TokenFileError(f"cannot write the index file: {e}", target) from e
    return target


def index_path(path: str | Path, format: str) -> Path:
    """The index file a ``format`` writes for ``path``: ``codes``, ``codes.npy`` or ``codes.json``
    -> ``codes.<format>``. The one home of index-file suffixes (`save_tokens`, planning runs).

    Only index-file suffixes are replaced, so a dotted name keeps its dots: ``a.b`` -> ``a.b.npy``.
    """
    path = Path(path)
    if path.suffix in (".npy", ".safetensors", ".json"):
        return path.with_suffix(f".{format}")
    return path.with_name(f"{path.name}.{format}")


def format_of(path: str | Path) -> TokenFormat | None:
    """The index format a name asks for by its suffix (``x.safetensors``, ``x.npy``); None for
    any other name and for a directory (``out/``)."""
    text = str(path)
    if text.endswith(("/", "\\")):
        return None
    suffix = Path(text).suffix
    return "npy" if suffix == ".npy" else "safetensors" if suffix == ".safetensors" else None


def _to_storage(indices: np.ndarray, meta: TokenMetadata, path: Path) -> np.ndarray:
    if indices.dtype.kind not in "iu":
        raise TokenFileError(f"indices must be integers, got {indices.dtype}", path)
    if indices.shape != meta.shape:
        raise TokenFileError(
            f"indices have shape {indices.shape} but the metadata grid says {meta.shape}", path
        )
    if indices.size and (indices.min() < 0 or indices.max() >= meta.vocab):
        raise TokenFileError(
            f"indices must be in [0, {meta.vocab}), got [{indices.min()}, {indices.max()}]", path
        )
    _check_levels(indices, meta, path)
    return np.ascontiguousarray(indices, dtype=index_dtype(meta.vocab))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def index_sha256(path: str | Path) -> str:
    """The SHA-256 of what an index file says: a ``.safetensors`` file's bytes; for a ``.npy``
    (or its ``.json`` sidecar) the SHA-256 of both files' hashes, indices then sidecar.

    Raises:
        OSError: a file cannot be read.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return file_sha256(path)
    parts = (path.with_suffix(".npy"), sidecar_path(path))
    return hashlib.sha256("".join(file_sha256(p) for p in parts).encode()).hexdigest()


def load_tokens(path: str | Path) -> tuple[np.ndarray, TokenMetadata]:
    """Read and validate an index file.

    Args:
        path: a ``.npy`` (its ``.json`` sidecar must be beside it), the ``.json`` sidecar
            itself, or a ``.safetensors`` file.

    Returns:
        (indices, meta): int64 array of shape ``meta.shape`` with values in [0, meta.vocab),
        and the metadata.

    Raises:
        TokenFileError: missing or unreadable file, pickled or truncated array, missing /
            malformed sidecar, unsupported version, or an array that contradicts the metadata
            (dtype, rank, shape, values out of range).
    """
    array, meta = load_stored(path)
    return array.astype(np.int64), meta


def load_stored(path: str | Path) -> tuple[np.ndarray, TokenMetadata]:
    """As `load_tokens`, with the array in the dtype the file stores (`stored_dtypes`: uint8,
    uint16 or uint32), not int64."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".npy")
    if not path.is_file():
        raise TokenFileError("no such index file; check the path", path)
    if path.suffix == ".safetensors":
        array, meta = _read_safetensors(path)
    else:
        meta = load_metadata(path)
        array = _read_npy(path)
    _check_array(array, meta, path)
    return array, meta


def load_metadata(path: str | Path) -> TokenMetadata:
    """Only the metadata of an index file (``.npy`` -> its sidecar, or ``.safetensors``).

    Raises:
        TokenFileError: as `load_tokens`, for the metadata part.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[1]
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        kind = file_kind(path)
        if kind is not None and not kind.startswith("a NumPy .npy array"):
            raise TokenFileError(
                f"this is {kind}, not an index file; expected the .npy (with its .json "
                "sidecar) or .safetensors that `vqtok encode` writes",
                path,
            )
        raise TokenFileError(
            f"the metadata sidecar {sidecar.name} is missing, so the file is incomplete or was "
            "copied without it; encode the video again or copy the .json too",
            path,
        )
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenFileError(
            f"the sidecar is not valid JSON ({e}); encode the video again", sidecar
        ) from e
    return TokenMetadata.from_dict(data, sidecar)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, SyntaxError, TokenError, zipfile.BadZipFile) as e:
        raise TokenFileError(
            f"cannot read the index array: {_unreadable_npy(path, e)}; encode the video again",
            path,
        ) from e
    except (OSError, EOFError) as e:
        raise TokenFileError(
            f"cannot read the index array ({e}); encode the video again", path
        ) from e
    if not isinstance(array, np.ndarray):
        array.close()
        raise TokenFileError("expected one .npy array, found an .npz archive", path)
    return array


def _unreadable_npy(path: Path, error: Exception) -> str:
    """Why ``np.load(path, allow_pickle=False)`` failed, in words, told by the first bytes.

    numpy calls any file without the NumPy or zip magic "pickled (object) data" (it would try
    to unpickle it), raises BadZipFile for a damaged zip (.npz), and parses a damaged .npy
    header with tokenize / ast, which raise their own errors.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(6)
    except OSError:
        head = b""
    pickled = "it holds pickled Python objects, which vqtok never loads"
    if head == b"\x93NUMPY":
        text = str(error).lower()
        return pickled if "object" in text or "pickle" in text else (
            f"it is not a complete .npy array ({error})")
    if head.startswith(b"\x80"):  # the PROTO opcode every pickle of protocol >= 2 starts with
        return pickled
    if head.startswith(b"PK"):
        return f"it is a damaged zip / .npz archive ({error}), not an .npy array"
    return "it is not a .npy file (it does not start with the NumPy header)"


def _read_safetensors(path: Path) -> tuple[np.ndarray, TokenMetadata]:
    try:
        with safetensors.safe_open(str(path), framework="numpy") as file:
            header = file.metadata() or {}
            if TENSOR_NAME not in file.keys():
                raise TokenFileError(f"no tensor named {TENSOR_NAME!r} in the file", path)
            array = file.get_tensor(TENSOR_NAME)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise TokenFileError(
            f"not a readable safetensors file ({e}); encode the video again", path
        ) from e
    data = header_json(header, SAFETENSORS_KEY, TokenFileError, path,
                       " in the safetensors header", "header")
    return array, TokenMetadata.from_dict(data, path)


def _check_array(array: np.ndarray, meta: TokenMetadata, path: Path) -> None:
    allowed = stored_dtypes(meta.vocab)
    if array.dtype.kind != "u" or array.dtype.itemsize not in {d.itemsize for d in allowed}:
        expected = " or ".join(str(d) for d in allowed)
        raise TokenFileError(
            f"index array has dtype {array.dtype}, expected {expected} for a vocabulary of "
            f"{meta.vocab}; write it with vqtok.io.tokens.save_tokens",
            path,
        )
    if array.ndim != len(meta.shape):
        raise TokenFileError(
            f"index array has rank {array.ndim}, expected {len(meta.shape)} for "
            f"{meta.num_codebooks} codebook(s) (shape {meta.shape})",
            path,
        )
    if array.shape != meta.shape:
        raise TokenFileError(
            f"index array has shape {array.shape}, the metadata grid says {meta.shape}", path
        )
    if array.size and int(array.max()) >= meta.vocab:
        raise TokenFileError(
            f"index {int(array.max())} is out of range for a vocabulary of {meta.vocab}", path
        )
    _check_levels(array, meta, path)


def _check_levels(array: np.ndarray, meta: TokenMetadata, path: Path) -> None:
    """Per-level bound of remapped multi-level indices: level l's values < remap.sizes[l]."""
    sizes = None if meta.remap is None else meta.remap.sizes
    if not array.size or sizes is None or meta.num_codebooks == 1:
        return
    for level, size in enumerate(sizes):
        top = int(array[..., level].max())
        if top >= size:
            raise TokenFileError(
                f"level {level}: remapped index {top} is out of range for its {size} used codes",
                path,
            )


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole, valid index file (for resuming an interrupted run)."""
    try:
        load_tokens(path)
    except TokenFileError:
        return False
    return True
