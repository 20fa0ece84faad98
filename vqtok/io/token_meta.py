"""Index-file metadata: the dataclasses stored beside (or inside) an index file, and their parser.

`TokenMetadata` (with `SourceInfo`, `EncodedInfo`, `RemapInfo`) is what `vqtok.io.tokens` writes as
JSON in the ``.json`` sidecar or the safetensors header (README, "Index files").
`TokenMetadata.from_dict` parses that JSON strictly: unknown or missing keys, wrong types and a
different `FORMAT_VERSION` are refused, and `TokenMetadata.validate` checks the values; every
problem is a `TokenFileError` naming the offending key. Frame rates are stored exactly as
``"num/den"`` (`fps_to_text`, `fps_from_text`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from vqtok import __version__
from vqtok.disk import is_sha256
from vqtok.errors import TokenFileError, check_version

__all__ = [
    "FORMAT_VERSION",
    "RESIZE_MODES",
    "EncodeSettings",
    "EncodedInfo",
    "RemapInfo",
    "SourceInfo",
    "TokenMetadata",
    "fps_from_text",
    "fps_to_text",
    "vocabulary_of",
]

FORMAT_VERSION = 1  # one per file kind: README, "File formats and their versions"
RESIZE_MODES = ("none", "size", "short_side")


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
        size: (H, W) of the encoded frames before spatial padding: what decode returns.
        resize: how frames were resized: ``"none"``, ``"size"`` or ``"short_side"``.
        padding: frames appended by repeating the last one to fit 1 + k * tau.
        fps: frame rate of the encoded frames, ``"num/den"``.
        spatial_padding: (rows, columns) appended at the bottom and right by repeating the
            edge, so that H and W are multiples of the model's spatial factor; decode crops
            them off. (0, 0) in files written before it was recorded (those were cropped).
    """

    frames: int
    size: tuple[int, int]
    resize: str
    padding: int
    fps: str
    spatial_padding: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class EncodeSettings:
    """The choices of the encode run that made the file, as given (None: not given).

    A resumed run keeps an existing file only when these, the model's weights and the remap
    file all match its own (`vqtok.pipeline.resume`); a new setting is one more field here.

    Attributes:
        size: ``--size`` (H, W).
        short_side: ``--short-side``.
        fps: ``--fps`` as ``"num/den"``.
        max_frames: ``--max-frames``.
        levels: ``--levels`` k: the file keeps the first k residual levels (its trailing axis
            has k entries); None: all of the model's levels.
        beam: the residual levels were searched with a beam of W paths: ``--beam`` W, or the
            model's own ``beam_width`` when above 1 (files of earlier vqtok versions record
            only ``--beam``); None: greedy.
    """

    size: tuple[int, int] | None = None
    short_side: int | None = None
    fps: str | None = None
    max_frames: int | None = None
    levels: int | None = None
    beam: int | None = None


@dataclass(frozen=True)
class RemapInfo:
    """The used-index file the indices were remapped with.

    Attributes:
        sha256: hex SHA-256 of the remap file (``.npy`` or ``.safetensors``).
        size: number of used codes in it (the largest level's); stored indices are below it.
        sizes: used codes per codebook / level (L entries): level l's indices are below
            ``sizes[l]``; None in files written before per-level remap files.
    """

    sha256: str
    size: int
    sizes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenMetadata:
    """Everything needed to decode an index file, stored beside (or inside) it.

    Attributes:
        model: model name (directory name or shipped name).
        model_sha256: hex SHA-256 of the model's ``model.safetensors``; None if unsaved.
        family: model family, e.g. ``"vqtok"`` (see `vqtok.families.base.FAMILIES`).
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
        settings: the encode run's settings; None in files written before they were recorded.
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
    settings: EncodeSettings | None = None
    format_version: int = FORMAT_VERSION
    vqtok_version: str = __version__

    @property
    def vocab(self) -> int:
        """Stored values are below this: the remap size if remapped, else codebook_size."""
        return self.remap.size if self.remap is not None else self.codebook_size

    @property
    def shape(self) -> tuple[int, ...]:
        """The array shape this metadata promises: grid, plus (L,) when L > 1 ((k,) for a
        file that keeps the first k residual levels)."""
        if self.num_codebooks == 1:
            return self.grid
        return (*self.grid, self.kept_levels)

    @property
    def kept_levels(self) -> int:
        """Codebooks / levels stored per position: ``settings.levels`` or all of them."""
        kept = self.settings.levels if self.settings is not None else None
        return self.num_codebooks if kept is None else kept

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
        check_version(version, FORMAT_VERSION, "index file format version", TokenFileError,
                      path, f"use the vqtok that wrote it (this is vqtok {__version__})")
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
                ("settings.levels in 1..num_codebooks", 0 < self.kept_levels <= self.num_codebooks),
                ("grid entries >= 1", min(self.grid) >= 1),
                ("model_sha256 of 64 hex digits",
                 self.model_sha256 is None or is_sha256(self.model_sha256)),
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
                ("encoded.spatial_padding >= 0", min(self.encoded.spatial_padding) >= 0),
                (f"encoded.resize in {RESIZE_MODES}", self.encoded.resize in RESIZE_MODES),
                ("remap.sha256 of 64 hex digits", remap is None or is_sha256(remap.sha256)),
                ("remap.size >= 1", remap is None or remap.size >= 1),
                (
                    "remap.sizes: one size >= 1 per codebook, the largest equal to remap.size",
                    remap is None or _remap_sizes_ok(self),
                ),
                ("vocabulary <= 2**32", self.vocab <= 2**32),
            ]
            if not ok
        ]
        if problems:
            raise TokenFileError(f"invalid metadata: expected {'; '.join(problems)}", path)


def vocabulary_of(quantizer: Any) -> dict[str, Any]:
    """The `TokenMetadata` fields that describe a quantizer's vocabulary, as index files record
    them: ``quantizer`` (its kind), ``codebook_size``, ``num_codebooks``, ``bit_order`` (LFQ)
    and ``levels`` (FSQ), from a `vqtok.quantizers.base.Quantizer`'s class-level facts."""
    levels = quantizer.levels
    return {
        "quantizer": quantizer.kind,
        "codebook_size": int(quantizer.codebook_size),
        "num_codebooks": int(quantizer.num_codebooks),
        "bit_order": quantizer.bit_order,
        "levels": None if levels is None else tuple(int(v) for v in levels),
    }


def _remap_sizes_ok(meta: TokenMetadata) -> bool:
    assert meta.remap is not None
    sizes = meta.remap.sizes
    if sizes is None:
        return True
    return len(sizes) == meta.num_codebooks and min(sizes) >= 1 and max(sizes) == meta.remap.size


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
    "EncodeSettings": EncodeSettings,
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
