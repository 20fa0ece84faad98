"""Code usage over a set of index files, and the used-index (remap) file built from it.

``vqtok remap build`` counts how often each codebook entry occurs in the index files of a data
set, keeps the codes seen at least ``min_count`` times and writes them as the sorted 1-D int64
``.npy`` that `vqtok.remap` reads (the taming-transformers remap format, Esser et al., arXiv
2012.09841). The report gives the numbers a user picks ``min_count`` by: codes used, perplexity
exp(H) and bits per index H / ln 2 of the empirical code distribution, and the most frequent
codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqtok.errors import ConfigError, TokenFileError, VqtokError
from vqtok.remap import save_used
from vqtok.tokens import TokenMetadata, load_tokens, sidecar_path


@dataclass(frozen=True)
class UsageReport:
    """Code usage over index files.

    Attributes:
        files: index files counted.
        tokens: indices counted.
        model: model name recorded in the files.
        codebook_size: K, the full vocabulary.
        used: codes kept (seen at least ``min_count`` times).
        seen: distinct codes seen at all.
        min_count: the threshold.
        perplexity: exp(entropy) of the code distribution over all tokens (natural log).
        bits_per_index: entropy in bits.
        top: the most frequent codes as (code, count), most frequent first.
        output: the remap file written, if any.
    """

    files: int
    tokens: int
    model: str
    codebook_size: int
    used: int
    seen: int
    min_count: int
    perplexity: float
    bits_per_index: float
    top: tuple[tuple[int, int], ...]
    output: Path | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["top"] = [{"code": c, "count": n} for c, n in self.top]
        out["output"] = None if self.output is None else str(self.output)
        return out


def index_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Index files named or below directories (``.npy`` with a ``.json`` sidecar, and
    ``.safetensors``), sorted within each directory; files given by name are kept as given.

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
                p.suffix == ".safetensors" or (p.suffix == ".npy" and sidecar_path(p).is_file())
            )
        )
        if not inside:
            raise VqtokError("no index files (.npy + .json, or .safetensors) below it", item)
        found += inside
    return found


def count_codes(
    files: Iterable[Path], level: int | None = None
) -> tuple[np.ndarray, TokenMetadata, int]:
    """Sum code counts over index files of one model and vocabulary.

    Args:
        files: index files.
        level: for files with several codebooks / residual levels (trailing axis L), count
            this one (0-based); required for such files, refused for single-codebook ones.

    Returns:
        (counts, meta, files): int64 (K,) counts, the first file's metadata, files read.

    Raises:
        TokenFileError: a bad file, remapped indices, several codebooks, or files from
            different models / vocabularies.
    """
    counts: np.ndarray | None = None
    first: TokenMetadata | None = None
    n = 0
    for path in files:
        indices, meta = load_tokens(path)
        if meta.remap is not None:
            raise TokenFileError("holds remapped indices; count the full-codebook files", path)
        if meta.num_codebooks > 1 and level is None:
            raise TokenFileError(
                f"has {meta.num_codebooks} codebooks / levels; a remap file is one vocabulary: "
                "pick one with level=",
                path,
                cli_message=f"has {meta.num_codebooks} codebooks / levels; a remap file is one "
                "vocabulary: pick one with --level",
            )
        if level is not None and not 0 <= level < meta.num_codebooks:
            raise TokenFileError(
                f"has {meta.num_codebooks} codebook(s) / level(s); level={level} is not one",
                path,
                cli_message=f"has {meta.num_codebooks} codebook(s) / level(s); --level {level} "
                "is not one",
            )
        if level is not None and meta.num_codebooks > 1:
            indices = indices[..., level]
        if first is None:
            first = meta
            counts = np.zeros(meta.codebook_size, dtype=np.int64)
        elif _vocabulary(meta) != _vocabulary(first):
            raise TokenFileError(
                f"comes from model {meta.model!r} ({meta.quantizer}, {meta.codebook_size} codes) "
                f"but earlier files from {first.model!r} ({first.quantizer}, "
                f"{first.codebook_size} codes); count one model's files at a time",
                path,
            )
        assert counts is not None  # set with ``first``
        counts += np.bincount(indices.reshape(-1), minlength=first.codebook_size)
        n += 1
    if first is None or counts is None:
        raise ConfigError("no index files given")
    return counts, first, n


def _vocabulary(meta: TokenMetadata) -> tuple[object, ...]:
    return (meta.model_sha256 or meta.model, meta.family, meta.quantizer, meta.codebook_size)


def build_remap(
    inputs: Sequence[str | Path],
    output: str | Path | None,
    min_count: int = 1,
    top: int = 10,
    level: int | None = None,
) -> UsageReport:
    """Count code usage over index files and write the used-index file.

    Args:
        inputs: index files and directories of them.
        level: which codebook / residual level of multi-codebook files to count.
        output: the remap ``.npy`` to write atomically; None only reports.
        min_count: keep codes seen at least this many times (>= 1).
        top: how many of the most frequent codes to report.

    Returns:
        `UsageReport`.

    Raises:
        ConfigError: ``min_count < 1``.
        TokenFileError: see `count_codes`.
        VqtokError: no code reaches ``min_count`` (nothing is written).
    """
    if min_count < 1:
        raise ConfigError(f"min_count must be >= 1, got {min_count}",
                          cli_message=f"--min-count must be >= 1, got {min_count}")
    counts, meta, files = count_codes(index_files(inputs), level)
    used = np.flatnonzero(counts >= min_count).astype(np.int64)
    if output is not None:
        if used.size == 0:
            raise VqtokError(
                f"no code occurs {min_count} times or more; lower min_count", output,
                cli_message=f"no code occurs {min_count} times or more; lower --min-count",
            )
        save_used(output, used)
    total = int(counts.sum())
    p = counts[counts > 0] / max(total, 1)
    entropy = float(-(p * np.log(p)).sum())
    order = np.argsort(-counts, kind="stable")[:top]
    return UsageReport(
        files=files,
        tokens=total,
        model=meta.model,
        codebook_size=meta.codebook_size,
        used=int(used.size),
        seen=int((counts > 0).sum()),
        min_count=min_count,
        perplexity=math.exp(entropy),
        bits_per_index=entropy / math.log(2),
        top=tuple((int(c), int(counts[c])) for c in order if counts[c] > 0),
        output=None if output is None else Path(output),
    )
