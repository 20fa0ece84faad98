"""The index file format: one video's codebook indices plus the metadata to decode them.

Two layouts hold the same array and metadata (design.md §4):

- ``codes.npy`` + ``codes.json`` (same stem): the array in NumPy's format, the metadata as JSON
  beside it;
- ``codes.safetensors``: the array as tensor ``"indices"`` and the same JSON under the header
  metadata key ``"vqtok"``.

The array is (t, h, w), or (t, h, w, L) for L codebooks / residual levels, stored in the
smallest unsigned dtype that holds the vocabulary (`index_dtype`: uint16 up to 65 536 codes,
else uint32), and read back as int64.

Writes are atomic: each file is written to a temporary file in the same directory and renamed
into place. For the two-file layout the sidecar is removed first and written last, so a crash at
any point leaves either the old pair, the new pair, or a ``.npy`` without a valid sidecar, which
`is_complete` reports as incomplete (a resumed run writes it again). Reads never unpickle
(``np.load(..., allow_pickle=False)``) and check dtype, rank, shape, value range and metadata;
every problem is a `TokenFileError` naming the file and saying what to do.
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from tokenize import TokenError
from typing import Any, Literal

import numpy as np
import safetensors
import safetensors.numpy

from vqtok import __version__
from vqtok.errors import TokenFileError

FORMAT_VERSION = 1
SAFETENSORS_KEY = "vqtok"  # header metadata key holding the JSON metadata
TENSOR_NAME = "indices"
RESIZE_MODES = ("none", "size", "short_side")

TokenFormat = Literal["npy", "safetensors"]


@dataclass(frozen=True)
class SourceInfo:
    """The video the indices came from.

    Attributes:
        file: its file name (no directories, so index files can move between machines).
        frames: its frame count.
        fps: its frame rate, exact, as ``"num/den"`` (e.g. ``"30000/1001"``).
        size: its (H, W) as displayed.
    """

    file: str
    frames: int
    fps: str
    size: tuple[int, int]


@dataclass(frozen=True)
class EncodedInfo:
    """The frames that were actually encoded.

    Attributes:
        frames: number of real frames encoded (after fps resampling and max_frames); decode
            trims its output to this.
        size: (H, W) of the encoded frames.
        resize: how frames were resized: ``"none"``, ``"size"`` or ``"short_side"`` (then
            centre-cropped to the model's spatial factor).
        padding: frames appended by repeating the last one to fit 1 + k * tau.
        fps: frame rate of the encoded frames, ``"num/den"``.
    """

    frames: int
    size: tuple[int, int]
    resize: str
    padding: int
    fps: str


@dataclass(frozen=True)
class RemapInfo:
    """The used-index file the indices were remapped with.

    Attributes:
        sha256: hex SHA-256 of the remap ``.npy`` file.
        size: number of used codes in it; the stored indices are in [0, size).
    """

    sha256: str
    size: int


@dataclass(frozen=True)
class TokenMetadata:
    """Everything needed to decode an index file, stored beside (or inside) it.

    Attributes:
        model: model name (directory name or shipped name).
        model_sha256: hex SHA-256 of the model's ``model.safetensors``; None if unsaved.
        family: model family, e.g. ``"vqtok"`` (see `vqtok.family.FAMILIES`).
        quantizer: quantizer kind, a key of `vqtok.quantizers.KINDS`.
        codebook_size: the model's vocabulary (per codebook); indices are below it.
        num_codebooks: L; the array has a trailing L axis when L > 1.
        grid: latent grid (t, h, w).
        source: the input video.
        encoded: the frames encoded.
        bit_order: LFQ index packing, ``"msb"`` (first channel = most significant bit).
        levels: FSQ levels per channel.
        windows: for non-causal families, the (first frame, frame count) of each
            independently encoded window; None for causal families.
        remap: the remap file, when the indices are compact used-code ids.
        format_version: version of this format.
        vqtok_version: the vqtok that wrote the file.
    """

    model: str
    model_sha256: str | None
    family: str
    quantizer: str
    codebook_size: int
    num_codebooks: int
    grid: tuple[int, int, int]
    source: SourceInfo
    encoded: EncodedInfo
    bit_order: str | None = None
    levels: tuple[int, ...] | None = None
    windows: tuple[tuple[int, int], ...] | None = None
    remap: RemapInfo | None = None
    format_version: int = FORMAT_VERSION
    vqtok_version: str = __version__

    @property
    def vocab(self) -> int:
        """Stored values are below this: the remap size if remapped, else codebook_size."""
        return self.remap.size if self.remap is not None else self.codebook_size

    @property
    def shape(self) -> tuple[int, ...]:
        """The array shape this metadata promises: grid, plus (L,) when L > 1."""
        return self.grid if self.num_codebooks == 1 else (*self.grid, self.num_codebooks)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Any, path: str | Path | None = None) -> TokenMetadata:
        """Parse and check a dict; unknown keys, missing keys or wrong types are refused.

        Raises:
            TokenFileError: naming the offending key, with ``path`` when given.
        """
        if not isinstance(data, dict):
            raise TokenFileError("metadata must be a JSON object", path)
        if "format_version" not in data:
            raise TokenFileError("no format_version: this is not a vqtok index sidecar", path)
        version = data["format_version"]
        if version != FORMAT_VERSION:
            raise TokenFileError(
                f"index file format version {version!r} is not supported (this vqtok "
                f"{__version__} reads version {FORMAT_VERSION}); use the vqtok that wrote it",
                path,
            )
        meta = _parse_dataclass(cls, data, "", path)
        meta.validate(path)
        return meta

    def validate(self, path: str | Path | None = None) -> None:
        """Value checks the types alone cannot express; `save_tokens` runs them too.

        Raises:
            TokenFileError: listing every violated expectation.
        """
        levels, windows, remap = self.levels, self.windows or (), self.remap
        problems = [
            name
            for name, ok in [
                ("codebook_size >= 1", self.codebook_size >= 1),
                ("num_codebooks >= 1", self.num_codebooks >= 1),
                ("grid entries >= 1", min(self.grid) >= 1),
                ("model_sha256 of 64 hex digits", _is_sha256(self.model_sha256)),
                ("bit_order 'msb', 'lsb' or null", self.bit_order in (None, "msb", "lsb")),
                ("levels >= 2 whose product is codebook_size", levels is None or _fsq_ok(self)),
                (
                    "windows of (first frame >= 0, frames >= 1)",
                    all(a >= 0 and n >= 1 for a, n in windows),
                ),
                ("source.frames >= 1", self.source.frames >= 1),
                (
                    "positive source.size and encoded.size",
                    min(*self.source.size, *self.encoded.size) >= 1,
                ),
                ("source.fps 'num/den' > 0", _valid_fps(self.source.fps)),
                ("encoded.fps 'num/den' > 0", _valid_fps(self.encoded.fps)),
                ("encoded.frames >= 1", self.encoded.frames >= 1),
                ("encoded.padding >= 0", self.encoded.padding >= 0),
                (f"encoded.resize in {RESIZE_MODES}", self.encoded.resize in RESIZE_MODES),
                ("remap.sha256 of 64 hex digits", remap is None or _is_sha256(remap.sha256)),
                ("remap.size >= 1", remap is None or remap.size >= 1),
                ("vocabulary <= 2**32", self.vocab <= 2**32),
            ]
            if not ok
        ]
        if problems:
            raise TokenFileError(f"invalid metadata: expected {'; '.join(problems)}", path)


def _is_sha256(text: str | None) -> bool:
    return text is None or (len(text) == 64 and all(c in "0123456789abcdef" for c in text))


def _fsq_ok(meta: TokenMetadata) -> bool:
    levels = meta.levels or ()
    return min(levels, default=0) >= 2 and math.prod(levels) == meta.codebook_size


def fps_to_text(fps: Fraction) -> str:
    """A frame rate as the metadata stores it: ``Fraction(30000, 1001)`` -> ``"30000/1001"``."""
    return f"{fps.numerator}/{fps.denominator}"


def fps_from_text(text: str) -> Fraction:
    """Inverse of `fps_to_text` (also accepts ``"30"``).

    Raises:
        TokenFileError: not a positive rational number.
    """
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError) as e:
        raise TokenFileError(f"not a frame rate: {text!r}") from e
    if fps <= 0:
        raise TokenFileError(f"frame rate must be positive, got {text!r}")
    return fps


def _valid_fps(text: str) -> bool:
    try:
        fps_from_text(text)
    except TokenFileError:
        return False
    return True


# Field annotations are strings (``from __future__ import annotations``); these map each one
# TokenMetadata uses to a nested dataclass or to a checker returning the value (lists become
# tuples) or None when the JSON value has the wrong type.
_NESTED: dict[str, type] = {
    "SourceInfo": SourceInfo,
    "EncodedInfo": EncodedInfo,
    "RemapInfo": RemapInfo,
}
_CHECKERS: dict[str, Callable[[Any], Any]] = {
    "str": lambda v: v if isinstance(v, str) else None,
    "int": lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None,
    "tuple[int, int]": lambda v: _int_tuple(v, 2),
    "tuple[int, int, int]": lambda v: _int_tuple(v, 3),
    "tuple[int, ...]": lambda v: _int_tuple(v, None),
    "tuple[tuple[int, int], ...]": lambda v: _pairs(v),
}


def _parse_dataclass(cls: type, data: Any, where: str, path: str | Path | None) -> Any:
    if not isinstance(data, dict):
        raise TokenFileError(f"metadata field {where.rstrip('.')!r} must be an object", path)
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TokenFileError(
            f"unknown metadata key(s): {', '.join(where + k for k in unknown)}", path
        )
    values = {}
    for name, spec in names.items():
        if name not in data:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise TokenFileError(f"metadata key {where + name!r} is missing", path)
            continue
        values[name] = _parse_value(str(spec.type), data[name], where + name, path)
    return cls(**values)


def _parse_value(annotation: str, value: Any, where: str, path: str | Path | None) -> Any:
    """Check ``value`` against a field annotation string and convert lists to tuples."""
    options = [part.strip() for part in annotation.split("|")]
    if value is None:
        if "None" in options:
            return None
        raise TokenFileError(f"metadata key {where!r} must not be null", path)
    kind = options[0]
    if kind in _NESTED:
        return _parse_dataclass(_NESTED[kind], value, where + ".", path)
    parsed = _CHECKERS[kind](value)
    if parsed is None:
        raise TokenFileError(
            f"metadata key {where!r} must be {kind.replace('tuple', 'list')}, got {value!r}", path
        )
    return parsed


def _int_tuple(value: Any, length: int | None) -> tuple[int, ...] | None:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return tuple(value)


def _pairs(value: Any) -> tuple[tuple[int, int], ...] | None:
    if not isinstance(value, list):
        return None
    pairs = [_int_tuple(v, 2) for v in value]
    if any(p is None for p in pairs):
        return None
    return tuple((p[0], p[1]) for p in pairs if p is not None)


def index_dtype(vocab: int) -> np.dtype:
    """Smallest unsigned dtype for indices in [0, vocab): uint16 up to 65 536 codes, else uint32.

    Raises:
        TokenFileError: vocab < 1 or above 2**32.
    """
    if not 1 <= vocab <= 2**32:
        raise TokenFileError(f"vocabulary of {vocab} codes cannot be stored (1 .. 2**32)")
    return np.dtype(np.uint16 if vocab <= 2**16 else np.uint32)


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
        format = "safetensors" if Path(path).suffix == ".safetensors" else "npy"
    if format not in ("npy", "safetensors"):
        raise TokenFileError(f"unknown index file format {format!r}; use 'npy' or 'safetensors'")
    target = _with_format_suffix(Path(path), format)
    meta.validate(target)
    array = _to_storage(np.asarray(indices), meta, target)
    text = json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n"
    try:
        if format == "safetensors":
            data = safetensors.numpy.save({TENSOR_NAME: array}, metadata={SAFETENSORS_KEY: text})
            _atomic_write(target, data)
        else:
            # the old sidecar must not outlive its array: remove it first, write the new one last
            sidecar_path(target).unlink(missing_ok=True)
            _atomic_write(target, _npy_bytes(array))
            _atomic_write(sidecar_path(target), text.encode())
    except OSError as e:
        raise TokenFileError(f"cannot write the index file: {e}", target) from e
    return target


def _with_format_suffix(path: Path, format: str) -> Path:
    """``codes``, ``codes.npy`` or ``codes.json`` -> ``codes.<format>``.

    Only index-file suffixes are replaced, so a dotted name keeps its dots: ``a.b`` -> ``a.b.npy``.
    """
    if path.suffix in (".npy", ".safetensors", ".json"):
        return path.with_suffix(f".{format}")
    return path.with_name(f"{path.name}.{format}")


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
    return np.ascontiguousarray(indices, dtype=index_dtype(meta.vocab))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    return array.astype(np.int64), meta


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
    except (ValueError, SyntaxError, TokenError) as e:
        # numpy parses a damaged header with tokenize / ast, which raise their own errors.
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            reason = "it holds pickled Python objects, which vqtok never loads"
        else:
            reason = f"it is not a complete .npy array ({e})"
        raise TokenFileError(
            f"cannot read the index array: {reason}; encode the video again", path
        ) from e
    except (OSError, EOFError) as e:
        raise TokenFileError(
            f"cannot read the index array ({e}); encode the video again", path
        ) from e
    if not isinstance(array, np.ndarray):
        raise TokenFileError("expected one .npy array, found an .npz archive", path)
    return array


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
    if SAFETENSORS_KEY not in header:
        raise TokenFileError(f"no {SAFETENSORS_KEY!r} metadata in the safetensors header", path)
    try:
        data = json.loads(header[SAFETENSORS_KEY])
    except json.JSONDecodeError as e:
        raise TokenFileError(f"the header metadata is not valid JSON ({e})", path) from e
    return array, TokenMetadata.from_dict(data, path)


def _check_array(array: np.ndarray, meta: TokenMetadata, path: Path) -> None:
    expected = index_dtype(meta.vocab)
    if array.dtype.kind != "u" or array.dtype.itemsize != expected.itemsize:
        raise TokenFileError(
            f"index array has dtype {array.dtype}, expected {expected} for a vocabulary of "
            f"{meta.vocab}; write it with vqtok.tokens.save_tokens",
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


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole, valid index file (for resuming an interrupted run)."""
    try:
        load_tokens(path)
    except TokenFileError:
        return False
    return True
