"""How a clip's multi-level indices become one stream of tokens (``vqtok pack --flatten``).

A clip's index array is (t, h, w) for a model with one codebook, or (t, h, w, L) for L
residual levels / codebooks. Training stacks that read flat token streams (Megatron, LitData)
need one sequence per clip, and every stack needs to know which vocabulary a token is from. One
convention, recorded in the dataset's manifest (`Flattening.to_dict`):

- ``interleave``: the indices in C order over (t, h, w, level), each position's L levels one
  after another; ids unchanged, so the vocabulary is the per-level one (``level_stride``) and a
  token's level is its position modulo L.
- ``offset``: the same order, and level l's ids become ``l * level_stride + id``, so one
  vocabulary of ``L * level_stride`` ids covers every level and a token names its level
  (``token // level_stride``).
- ``levels``: the array as it is, its last axis kept: for the formats that store arrays
  (Parquet, MDS, WebDataset).

``level_stride`` is the per-level vocabulary: the model's codebook size, or the remap file's
size when the indices are remapped (`vqtok.io.token_meta.TokenMetadata.vocab`). With one
codebook (L = 1) the three conventions give the same tokens. Token j of a flat clip of grid
(t, h, w) is at ``(t, h, w) = unravel(j // L)``, level ``j % L`` (`Flattening.locate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vqtok.errors import ConfigError
from vqtok.io.token_meta import TokenMetadata

__all__ = ["FLATTENINGS", "Flattening"]

FLATTENINGS = ("interleave", "offset", "levels")


@dataclass(frozen=True)
class Flattening:
    """A flattening convention for one dataset.

    Attributes:
        how: ``"interleave"``, ``"offset"`` or ``"levels"``.
        codes_per_position: L, the index values per (t, h, w) position (1: one codebook).
        level_stride: the per-level vocabulary; every stored id of a level is below it.
    """

    how: str
    codes_per_position: int
    level_stride: int

    def __post_init__(self) -> None:
        if self.how not in FLATTENINGS:
            raise ConfigError(f"flatten must be one of {', '.join(FLATTENINGS)}, got {self.how!r}",
                              cli_message=f"--flatten must be one of {', '.join(FLATTENINGS)}, "
                              f"got {self.how!r}")

    @classmethod
    def of(cls, how: str, meta: TokenMetadata) -> Flattening:
        """The convention ``how`` for index files of ``meta``'s model (and remap)."""
        return cls(how, meta.kept_levels if meta.num_codebooks > 1 else 1, meta.vocab)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Flattening:
        """The convention a manifest records; a manifest of before ``--flatten`` (vqtok
        dataset format 1) holds the index arrays as they are: ``levels``."""
        if "flatten" not in manifest:
            codes = manifest.get("num_codebooks") or 1
            return cls("levels", codes, manifest["vocab"])
        return cls(manifest["flatten"], manifest["codes_per_position"],
                   manifest["level_stride"])

    @property
    def token_vocab(self) -> int:
        """The size of the id space the tokens live in: ``L * level_stride`` for ``offset``,
        ``level_stride`` otherwise."""
        if self.how == "offset":
            return self.codes_per_position * self.level_stride
        return self.level_stride

    @property
    def flat(self) -> bool:
        """Whether a clip's tokens are one 1-D stream (``interleave``, ``offset``)."""
        return self.how != "levels"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's fields for this convention."""
        return {"flatten": self.how, "codes_per_position": self.codes_per_position,
                "level_stride": self.level_stride, "token_vocab": self.token_vocab}

    def flatten(self, indices: np.ndarray) -> np.ndarray:
        """A clip's index array -> its tokens.

        Args:
            indices: (t, h, w) or (t, h, w, L) integer ids, each below ``level_stride``.

        Returns:
            ``levels``: ``indices`` as they are; otherwise a 1-D array of t*h*w*L tokens, int64
            (the caller casts to its storage dtype).
        """
        if self.how == "levels":
            return indices
        values = indices.astype(np.int64)
        if self.how == "offset" and self.codes_per_position > 1:
            # (t, h, w, L) + (L,): level l's ids move up by l * stride
            values = values + np.arange(self.codes_per_position) * self.level_stride
        return values.reshape(-1)

    def unflatten(self, tokens: np.ndarray, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        """A clip's tokens -> its index array of ``shape`` ((t, h, w) or (t, h, w, L)), int64,
        the ids each level had in the index file."""
        values = np.asarray(tokens).astype(np.int64).reshape(tuple(shape))
        if self.how == "offset" and self.codes_per_position > 1:
            values = values - np.arange(self.codes_per_position) * self.level_stride
        return values

    def locate(self, position: int, grid: tuple[int, int, int]) -> tuple[int, int, int, int]:
        """Token ``position`` of a flat clip of latent ``grid`` (t, h, w) -> (t, h, w, level)."""
        cell, level = divmod(position, self.codes_per_position)
        t, h, w = (int(v) for v in np.unravel_index(cell, grid))
        return t, h, w, level
