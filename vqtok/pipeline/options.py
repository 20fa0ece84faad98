"""What an encode is asked to do and what it records: `EncodeOptions` (how frames are read and
indices stored), `EncodeResult` (what one file's encode did), `ReadFacts` (how a video's frames
were read) and `build_metadata`, the index file's sidecar made from them.

The per-file and many-file encodes are in `vqtok.pipeline.encode`; a resumed run compares an
existing sidecar's settings with `EncodeOptions.settings` (`vqtok.pipeline.resume`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vqtok.errors import ConfigError
from vqtok.families.memory import MemoryPlan
from vqtok.io.sources import ClipSource
from vqtok.io.token_meta import vocabulary_of
from vqtok.io.tokens import (
    EncodedInfo,
    EncodeSettings,
    SourceInfo,
    TokenFormat,
    TokenMetadata,
)
from vqtok.io.video import Source, VideoInfo, as_fps

if TYPE_CHECKING:
    from vqtok.api import Tokenizer
    from vqtok.pipeline.remap import RemapPlan

__all__ = [
    "DEFAULT_CHUNK", "EncodeOptions", "EncodeResult", "ProgressFn", "ReadFacts", "build_metadata",
    "check_frame_size",
]

ProgressFn = Callable[[int, int], None]
"""Called as frames are processed: (frames since the previous call, frames expected in all)."""

DEFAULT_CHUNK = 16


@dataclass(frozen=True)
class EncodeOptions:
    """How frames are read and indices stored.

    Attributes:
        size: (H, W) to resize every frame to (the tokenizer pads it to the spatial factor).
        short_side: resize so the shorter side is this many pixels, keeping the aspect ratio.
        fps: resample to this frame rate; None keeps every frame.
        max_frames: encode at most this many frames.
        chunk: frames per streaming step; bounds memory.
        format: ``"npy"`` (+ ``.json`` sidecar) or ``"safetensors"``.
        remap: a remap file (``vqtok remap build``: ``.npy`` for one codebook, ``.safetensors``
            with one used set per codebook / level); indices are stored as compact ids.
        strict: a damaged input (truncated, corrupt packets) is an error, not a warning.
        levels: residual models: keep the first k levels (``--levels``); None keeps all.
        beam: residual models: search the levels with a beam of this many paths (``--beam``;
            1 is greedy); None keeps the model's own search.
        memory: ``--tile`` / ``--max-memory``: when to work in spatial tiles (same indices).
    """

    size: tuple[int, int] | None = None
    short_side: int | None = None
    fps: Fraction | int | float | str | None = None
    max_frames: int | None = None
    chunk: int = DEFAULT_CHUNK
    format: TokenFormat = "npy"
    remap: Path | None = None
    strict: bool = False
    levels: int | None = None
    beam: int | None = None
    memory: MemoryPlan = MemoryPlan()

    def settings(self, model_beam: int = 1) -> EncodeSettings:
        """What an index file records of these options (a resumed run compares them); its
        ``beam`` is the search used: ``--beam``, else ``model_beam`` (the model's own beam
        width) when above 1, so a change of the model's search is seen on resume."""
        beam = self.beam if self.beam is not None else (model_beam if model_beam > 1 else None)
        return EncodeSettings(
            size=None if self.size is None else (int(self.size[0]), int(self.size[1])),
            short_side=self.short_side,
            fps=None if self.fps is None else _fraction(as_fps(self.fps)),
            max_frames=self.max_frames,
            levels=self.levels,
            beam=beam,
        )


@dataclass(frozen=True)
class EncodeResult:
    """What `encode_file` did: the index file, its metadata, frames, time, input warnings."""

    source: Path | ClipSource
    target: Path
    meta: TokenMetadata
    seconds: float
    warnings: tuple[str, ...] = ()


class ReadFacts(Protocol):
    """How a video's frames were read: what `encode_windows` records in the metadata. A
    `VideoReader` has it all; frames decoded elsewhere (a Ray task) carry the same facts."""

    @property
    def path(self) -> Path | ClipSource: ...
    @property
    def name(self) -> str: ...
    @property
    def info(self) -> VideoInfo: ...
    @property
    def size(self) -> tuple[int, int]: ...
    @property
    def fps(self) -> Fraction: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def expected_frames(self) -> int: ...


def build_metadata(
    tokenizer: Tokenizer,
    reader: ReadFacts,
    frames: int,
    grid: tuple[int, ...],
    options: EncodeOptions,
    plan: RemapPlan | None,
    model_sha256: str | None,
) -> TokenMetadata:
    """The index-file metadata of ``frames`` real frames read by ``reader``, encoded to
    a (t, h, w) ``grid`` by ``tokenizer``, whose weights' SHA-256 is ``model_sha256``."""
    model, info = tokenizer.model, reader.info
    total = tokenizer.padded_frames(frames)
    windows = None
    if model.window is not None:
        windows = tuple((a, min(model.window, total - a)) for a in range(0, total, model.window))
    resize = "size" if options.size else "short_side" if options.short_side else "none"
    padded = tokenizer.padded_size(*reader.size)
    return TokenMetadata(
        model=tokenizer.name,
        model_sha256=model_sha256,
        family=model.family,
        **vocabulary_of(model.quantizer),
        grid=(grid[0], grid[1], grid[2]),
        source=SourceInfo(
            reader.name, info.frames, _fraction(info.fps), (info.height, info.width)
        ),
        encoded=EncodedInfo(
            frames, reader.size, resize, total - frames, _fraction(reader.fps),
            (padded[0] - reader.size[0], padded[1] - reader.size[1]),
        ),
        windows=windows,
        remap=None if plan is None else plan.info,
        settings=options.settings(model.quantizer.beam_width),
    )


def _fraction(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def check_frame_size(size: tuple[int, int], model: Any, source: Source) -> None:
    """Refuse frames of (H, W) ``size`` smaller than one latent cell of ``model``.

    Raises:
        ConfigError: naming the size, the model's spatial factor and ``--size``.
    """
    factor = model.spatial_factor
    if min(size) < factor:
        raise ConfigError(
            f"frames of {size[1]}x{size[0]} are smaller than the model's spatial "
            f"factor {factor}; use a larger --size",
            str(source),
        )
