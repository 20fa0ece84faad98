"""Code usage over a set of index files, and the used-index (remap) file built from it.

``vqtok remap build`` counts how often each codebook entry occurs in the index files of a data
set, level by level for files with several codebooks / residual levels, keeps the codes seen at
least ``min_count`` times and writes the remap file of `vqtok.io.remap`: the sorted 1-D int64
``.npy`` of taming-transformers (Esser et al., arXiv 2012.09841) for one level, a
``.safetensors`` with one used set per level for several. The report gives, per level, the
numbers a user picks ``min_count`` by: codes used, perplexity exp(H) and bits per index
H / ln 2 of the empirical code distribution, and the most frequent codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqtok.errors import ConfigError, OptionError, TokenFileError, VqtokError
from vqtok.io.remap import is_remap_file, load_used_sets, save_used_sets
from vqtok.io.tokens import TokenMetadata, load_metadata, load_tokens, sidecar_path
from vqtok.pipeline.outputs import INDEX_SUFFIXES, check_parents
from vqtok.quantizers.remap import UsedSets

__all__ = [
    "LevelUsage",
    "UsageReport",
    "UsedSets",
    "build_remap",
    "count_codes",
    "index_files",
    "load_used_sets",
    "save_used_sets",
]


@dataclass(frozen=True)
class LevelUsage:
    """Code usage of one codebook / residual level over index files.

    Attributes:
        level: the level (0-based; 0 for single-codebook files).
        codebook_size: K, the level's full vocabulary.
        used: codes kept (seen at least ``min_count`` times).
        seen: distinct codes seen at all.
        min_count: the threshold.
        perplexity: exp(entropy) of the level's code distribution (natural log).
        bits_per_index: that entropy in bits.
        top: the most frequent codes as (code, count), most frequent first.
    """

    level: int
    codebook_size: int
    used: int
    seen: int
    min_count: int
    perplexity: float
    bits_per_index: float
    top: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["top"] = [{"code": c, "count": n} for c, n in self.top]
        return out


@dataclass(frozen=True)
class UsageReport:
    """Code usage over index files, one `LevelUsage` per codebook / level counted.

    Attributes:
        files: index files counted.
        tokens: index positions counted (each holds one index per level).
        model: model name recorded in the files.
        levels: per codebook / level (one entry for single-codebook files or ``--level``).
        output: the remap file written, if any.

    The single-vocabulary properties (``used``, ``perplexity``, ...) are the level's own for
    one level; for several, ``used``, ``seen``, ``codebook_size`` and ``bits_per_index`` are
    sums over the levels (bits per position), ``perplexity`` is 2**bits_per_index and ``top``
    is empty.
    """

    files: int
    tokens: int
    model: str
    levels: tuple[LevelUsage, ...]
    output: Path | None = None

    @property
    def codebook_size(self) -> int:
        return sum(level.codebook_size for level in self.levels)

    @property
    def used(self) -> int:
        return sum(level.used for level in self.levels)

    @property
    def seen(self) -> int:
        return sum(level.seen for level in self.levels)

    @property
    def min_count(self) -> int:
        return max(level.min_count for level in self.levels)

    @property
    def bits_per_index(self) -> float:
        return sum(level.bits_per_index for level in self.levels)

    @property
    def perplexity(self) -> float:
        if len(self.levels) == 1:
            return self.levels[0].perplexity
        return float(2.0**self.bits_per_index)

    @property
    def top(self) -> tuple[tuple[int, int], ...]:
        return self.levels[0].top if len(self.levels) == 1 else ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict: files, tokens, model, output, ``levels`` (one dict per level),
        and for one level its values at the top too (the single-vocabulary layout)."""
        out: dict[str, object] = {
            "files": self.files, "tokens": self.tokens, "model": self.model,
            "output": None if self.output is None else str(self.output),
        }
        if len(self.levels) == 1:
            single = self.levels[0].to_dict()
            single.pop("level")
            out.update(single)
        else:
            out.update(used=self.used, bits_per_index=self.bits_per_index)
        out["levels"] = [level.to_dict() for level in self.levels]
        return out


def index_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Index files named or below directories (``.npy`` with a ``.json`` sidecar, and
    ``.safetensors`` other than remap files), sorted within each directory; files given by
    name are kept as given.

    Raises:
        VqtokError: a directory with no index file in it.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            found.append(item)
            continue
        inside = sorted(
            p for p in item.rglob("*")
            if p.is_file() and (
                (p.suffix == ".safetensors" and not is_remap_file(p))
                or (p.suffix == ".npy" and sidecar_path(p).is_file())
            )
        )
        if not inside:
            raise VqtokError("no index files (.npy + .json, or .safetensors) below it", item)
        found += inside
    return found


def count_codes(
    files: Iterable[Path], level: int | None = None
) -> tuple[np.ndarray, TokenMetadata, int]:
    """Sum code counts, per codebook / level, over index files of one model and vocabulary.

    Args:
        files: index files.
        level: for files with several codebooks / residual levels (trailing axis L), count
            only this one (0-based); None counts every level.

    Returns:
        (counts, meta, files): int64 (L, K) counts (L = 1 for single-codebook files or a
        ``level``), the first file's metadata, files read.

    Raises:
        TokenFileError: a bad file, remapped indices, a ``level`` the files do not have, or
            files from different models / vocabularies / level counts.
    """
    counts: np.ndarray | None = None
    first: TokenMetadata | None = None
    n = 0
    for path in files:
        indices, meta = load_tokens(path)
        if meta.remap is not None:
            raise TokenFileError("holds remapped indices; count the full-codebook files", path)
        if level is not None and not 0 <= level < meta.num_codebooks:
            raise TokenFileError(
                f"has {meta.num_codebooks} codebook(s) / level(s); level={level} is not one",
                path,
                cli_message=f"has {meta.num_codebooks} codebook(s) / level(s); --level {level} "
                "is not one",
            )
        # (t, h, w[, L]) -> (L', positions): one row per level counted
        if meta.num_codebooks == 1:
            rows = indices.reshape(1, -1)
        elif level is not None:
            rows = indices[..., level].reshape(1, -1)
        else:
            rows = indices.reshape(-1, meta.num_codebooks).T
        if first is None:
            first = meta
            counts = np.zeros((rows.shape[0], meta.codebook_size), dtype=np.int64)
        elif _vocabulary(meta) != _vocabulary(first):
            raise TokenFileError(
                f"comes from model {meta.model!r} ({meta.quantizer}, {meta.num_codebooks} x "
                f"{meta.codebook_size} codes) but earlier files from {first.model!r} "
                f"({first.quantizer}, {first.num_codebooks} x {first.codebook_size} codes); "
                "count one model's files at a time",
                path,
            )
        assert counts is not None  # set with ``first``
        for row, values in enumerate(rows):
            counts[row] += np.bincount(values, minlength=first.codebook_size)
        n += 1
    if first is None or counts is None:
        raise ConfigError("no index files given")
    return counts, first, n


def _vocabulary(meta: TokenMetadata) -> tuple[object, ...]:
    return (meta.model_sha256 or meta.model, meta.family, meta.quantizer, meta.codebook_size,
            meta.num_codebooks)


def build_remap(
    inputs: Sequence[str | Path],
    output: str | Path | None,
    min_count: int | Sequence[int] = 1,
    top: int = 10,
    level: int | None = None,
) -> UsageReport:
    """Count code usage over index files and write the remap file, one used set per level.

    Args:
        inputs: index files and directories of them.
        output: the remap file to write atomically; None only reports. One level (a
            single-codebook model, or ``level``) gives the 1-D ``.npy``; several need
            ``.safetensors``, see `vqtok.io.remap` (a name without a suffix gets the one
            that fits).
        min_count: keep codes seen at least this many times (>= 1), at each level; or one
            threshold per level.
        top: how many of the most frequent codes to report per level.
        level: count only this codebook / level of multi-level files (a one-level file).

    Returns:
        `UsageReport` (``output`` is the path written).

    Raises:
        OptionError: an ``output`` named other than ``.npy`` / ``.safetensors``, a ``.npy``
            for several levels, or a file where its folder must be (before any counting).
        ConfigError: a threshold < 1, or another number of thresholds than levels.
        TokenFileError: see `count_codes`.
        VqtokError: at some level no code reaches its threshold (nothing is written).
    """
    named = index_files(inputs)
    if output is not None:
        _check_output(output, named, level)
    counts, meta, files = count_codes(named, level)
    thresholds = _thresholds(min_count, counts.shape[0])
    used = [np.flatnonzero(c >= m).astype(np.int64) for c, m in zip(counts, thresholds,
                                                                     strict=True)]
    written = None
    if output is not None:
        for row, (kept, m) in enumerate(zip(used, thresholds, strict=True)):
            if kept.size == 0:
                where = f" at level {row}" if len(used) > 1 else ""
                raise VqtokError(
                    f"no code occurs {m} times or more{where}; lower --min-count", output
                )
        sets = UsedSets.of(used, meta.codebook_size, output)
        written = save_used_sets(output, sets, meta.codebook_size)
    first = 0 if level is None else level
    levels = tuple(
        _level_usage(first + row, c, m, top) for row, (c, m) in enumerate(zip(counts, thresholds,
                                                                              strict=True))
    )
    return UsageReport(files, int(counts[0].sum()), meta.model, levels, written)


def _check_output(output: str | Path, files: list[Path], level: int | None) -> None:
    """The remap file's name, checked before counting: ``.npy`` holds one level only."""
    path = Path(output)
    check_parents(output)
    if path.is_dir() or path.suffix.lower() not in ("", *INDEX_SUFFIXES):
        raise OptionError("-o", "not a name for a remap file: use .npy (one level) or "
                          ".safetensors (any number of levels)", output)
    if path.suffix.lower() != ".npy" or level is not None or not files:
        return
    levels = load_metadata(files[0]).num_codebooks
    if levels > 1:
        raise OptionError(
            "-o", f"the index files have {levels} codebooks / levels and a .npy remap file "
            f"holds one: name it {path.with_suffix('.safetensors')} (or count one level with "
            "--level)", output,
        )


def _thresholds(min_count: int | Sequence[int], levels: int) -> list[int]:
    values = [min_count] * levels if isinstance(min_count, int) else list(min_count)
    if len(values) != levels:
        raise ConfigError(
            f"--min-count gives {len(values)} thresholds but the files have {levels} "
            "level(s): give one, or one per level"
        )
    if min(values) < 1:
        raise ConfigError(f"--min-count must be >= 1, got {min(values)}")
    return values


def _level_usage(level: int, counts: np.ndarray, min_count: int, top: int) -> LevelUsage:
    total = int(counts.sum())
    p = counts[counts > 0] / max(total, 1)
    entropy = float(-(p * np.log(p)).sum())
    order = np.argsort(-counts, kind="stable")[:top]
    return LevelUsage(
        level=level,
        codebook_size=int(counts.size),
        used=int((counts >= min_count).sum()),
        seen=int((counts > 0).sum()),
        min_count=min_count,
        perplexity=math.exp(entropy),
        bits_per_index=entropy / math.log(2),
        top=tuple((int(c), int(counts[c])) for c in order if counts[c] > 0),
    )
