"""The used sets of a remap, one per codebook / residual level, in memory.

A model with L codebooks or residual levels has one vocabulary per level, so a remap holds L
used sets: level l's sorted original ids; compact id ``j`` at level l stands for code
``used[l][j]``. `UsedSets` maps indices between full and compact ids, level by level; the
remap files that store them are `vqtok.io.usedsets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vqtok.errors import RemapError
from vqtok.quantizers.remap import validate_used

__all__ = ["UsedSets", "describe_levels"]


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare ``levels`` yourself
class UsedSets:
    """The used codes of each codebook / level.

    Attributes:
        levels: L CPU int64 tensors (U_l,), each strictly increasing and non-empty; build one
            with `UsedSets.of` to have them checked.
    """

    levels: tuple[Tensor, ...]

    @classmethod
    def of(
        cls,
        arrays: Sequence[Tensor | np.ndarray],
        codebook_size: int | None = None,
        path: str | os.PathLike | None = None,
    ) -> UsedSets:
        """Check per-level arrays (see `vqtok.quantizers.remap.validate_used`) and hold them.

        Raises:
            RemapError: no level, or a level that is not a sorted, unique, in-range 1-D
                integer array (the message names the level when there are several).
        """
        where = None if path is None else os.fspath(path)
        if not arrays:
            raise RemapError("no used set: a remap file needs at least one level", where)
        levels = []
        for level, array in enumerate(arrays):
            try:
                levels.append(validate_used(array, codebook_size, path))
            except RemapError as e:
                if len(arrays) == 1:
                    raise
                raise RemapError(f"level {level}: {e.message}", where) from e
        return cls(tuple(levels))

    @property
    def num_levels(self) -> int:
        """L."""
        return len(self.levels)

    @property
    def sizes(self) -> tuple[int, ...]:
        """U_l, the number of used codes of each level: compact ids of level l are below it."""
        return tuple(int(level.numel()) for level in self.levels)

    def check_for(self, vocab_sizes: Sequence[int], path: str | os.PathLike | None) -> None:
        """Refuse a file that does not fit a quantizer with these per-level vocabularies.

        Raises:
            RemapError: another number of levels, or an id beyond its level's vocabulary.
        """
        where = None if path is None else os.fspath(path)
        if len(vocab_sizes) != self.num_levels:
            raise RemapError(
                f"holds {describe_levels(self.num_levels)} but the model has {len(vocab_sizes)} "
                f"codebook(s) / level(s); build the remap file from this model's index files "
                f"(vqtok remap build, without --level)",
                where,
            )
        for level, (used, size) in enumerate(zip(self.levels, vocab_sizes, strict=True)):
            if int(used[-1]) >= size:
                level_name = f"level {level} " if self.num_levels > 1 else ""
                raise RemapError(
                    f"{level_name}holds id {int(used[-1])}, beyond the codebook of {size} codes",
                    where,
                )

    def to_compact(self, indices: Tensor, name: str | None = None) -> Tensor:
        """Full ids -> compact ids, level by level; same shape, int64.

        Args:
            indices: integer (..., L), or any shape when L = 1.
            name: the remap file's name, for the error message.

        Raises:
            RemapError: a code that is not in its level's used set, naming the level, how
                many indices and a few of the codes.
        """
        out = indices.long().clone()
        for level, used, column in self._columns(out):
            used = used.to(column.device)
            pos = torch.searchsorted(used, column.contiguous())
            found = used[pos.clamp_max(used.numel() - 1)] == column
            if not bool(found.all()):
                missing = column[~found]
                codes = sorted({int(c) for c in missing[:1000].tolist()})[:5]
                where = f"level {level}: " if self.num_levels > 1 else ""
                if self.num_levels > 1:
                    what = "that level's used set" + ("" if name is None else f" in {name}")
                else:
                    what = "the used set" if name is None else f"the remap file {name}"
                raise RemapError(
                    f"{where}{int(missing.numel())} indices use codes that are not in {what} "
                    f"(e.g. {codes})"
                )
            column.copy_(pos)
        return out

    def to_full(self, compact: Tensor) -> Tensor:
        """Compact ids -> full ids, level by level; same shape, int64; never mutates ``compact``.

        Raises:
            RemapError: an id at level l that is not below U_l.
        """
        out = compact.long().clone()
        for level, used, column in self._columns(out):
            if column.numel() and (int(column.min()) < 0 or int(column.max()) >= used.numel()):
                where = f"level {level}: " if self.num_levels > 1 else ""
                raise RemapError(
                    f"{where}remapped indices must lie in [0, {used.numel()}), found values in "
                    f"[{int(column.min())}, {int(column.max())}]"
                )
            column.copy_(used.to(column.device)[column])
        return out

    def _columns(self, indices: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """(level, used, view of that level's ids in ``indices``) for each level."""
        if self.num_levels == 1:
            return [(0, self.levels[0], indices)]
        if indices.ndim < 1 or indices.shape[-1] != self.num_levels:
            raise RemapError(
                f"indices of shape {tuple(indices.shape)} have no trailing axis of "
                f"{self.num_levels} levels"
            )
        return [(level, used, indices[..., level]) for level, used in enumerate(self.levels)]


def describe_levels(count: int) -> str:
    return "1 used set (one level)" if count == 1 else f"{count} used sets (one per level)"
