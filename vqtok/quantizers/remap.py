"""Remap in memory: a compact vocabulary made of the codes a tokenizer actually uses.

A trained VQ tokenizer rarely uses its whole codebook. A remap keeps only the U used codes and
renumbers them 0..U-1, which shrinks the vocabulary a downstream token model must learn. The
mechanism follows taming-transformers' ``VectorQuantizer2`` (Esser et al., "Taming Transformers
for High-Resolution Image Synthesis", arXiv 2012.09841): compact id ``j`` <-> original code
``used[j]``, ``used`` strictly increasing.

- `IndexRemap`: one used set as an ``nn.Module``, the reference's ``remap`` option;
- `UsedSets`: a remap of a model with L codebooks / residual levels, one used set per level
  (compact id ``j`` at level l stands for code ``used[l][j]``);
- `validate_used`, `build_used`: check a used set, count one from index arrays.

Remap files are `vqtok.io.remap`; a remap applied to a run of files is `vqtok.pipeline.remap`.
Deliberate fixes over the reference:

- the full -> compact map is a binary search on the sorted array, O(N log U) time and O(N)
  memory, instead of an (N, U) match tensor;
- ``unknown_index="random"`` takes an optional ``torch.Generator`` so results are reproducible;
- ``unmap_to_all`` never mutates its argument and rejects out-of-range ids with a clear error;
- a used set is validated (sorted, unique, 1-D, integer, in range).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError, RemapError

__all__ = ["IndexRemap", "UsedLike", "UsedSets", "build_used", "describe_levels", "validate_used"]

UsedLike = Tensor | np.ndarray | str | os.PathLike


def validate_used(
    used: Tensor | np.ndarray,
    codebook_size: int | None = None,
    path: str | os.PathLike | None = None,
) -> Tensor:
    """Check a used-index array and return it as a CPU int64 tensor.

    Args:
        used: the array: 1-D, integer dtype, values >= 0, strictly increasing (so sorted and
            without duplicates), and < ``codebook_size`` when that is given.
        codebook_size: K of the full codebook, or None to skip the upper-bound check.
        path: the file the array came from, named in the error.

    Returns:
        (U,) int64 tensor on the CPU.

    Raises:
        RemapError: naming the first problem found.
    """
    where = None if path is None else os.fspath(path)
    arr = used.detach().cpu().numpy() if isinstance(used, Tensor) else np.asarray(used)
    if arr.dtype == object:
        raise RemapError("remap array holds Python objects; expected 1-D int64", where)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise RemapError(f"remap array has dtype {arr.dtype}; expected an integer dtype", where)
    if arr.ndim != 1:
        raise RemapError(f"remap array must be 1-D, got shape {arr.shape}", where)
    if arr.size == 0:
        raise RemapError("remap array is empty; it must list at least one used code", where)
    if np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > np.iinfo(np.int64).max:
        raise RemapError("remap array holds values beyond int64", where)
    arr = arr.astype(np.int64, copy=False)
    if int(arr.min()) < 0:
        raise RemapError(f"remap array holds a negative id ({int(arr.min())})", where)
    steps = np.diff(arr)
    if (steps == 0).any():
        dup = int(arr[1:][steps == 0][0])
        raise RemapError(f"remap array holds duplicate id {dup}; ids must be unique", where)
    if (steps < 0).any():
        at = int(np.argmax(steps < 0))
        raise RemapError(
            f"remap array is not sorted (id {int(arr[at + 1])} follows {int(arr[at])}); "
            "ids must be strictly increasing",
            where,
        )
    if codebook_size is not None and int(arr[-1]) >= codebook_size:
        raise RemapError(
            f"remap array holds id {int(arr[-1])}, beyond the codebook of {codebook_size} codes",
            where,
        )
    return torch.from_numpy(np.ascontiguousarray(arr)).clone()



def build_used(
    indices_iter: Iterable[Tensor | np.ndarray], codebook_size: int, min_count: int = 1
) -> Tensor:
    """The sorted codes that occur at least ``min_count`` times in a stream of index arrays.

    Args:
        indices_iter: index tensors or arrays of any shape, integer values in
            [0, codebook_size) (e.g. every ``codes.npy`` of a dataset).
        codebook_size: K.
        min_count: a code is kept if it occurs at least this many times in total (>= 1).

    Returns:
        (U,) int64 CPU tensor, strictly increasing; may be empty if nothing qualifies.

    Raises:
        QuantizerError: an array is not integer or holds ids outside [0, codebook_size).
        ConfigError: ``min_count < 1`` or ``codebook_size < 1``.
    """
    if min_count < 1 or codebook_size < 1:
        raise ConfigError(
            f"need min_count >= 1 and codebook_size >= 1, got {min_count}, {codebook_size}"
        )
    counts = torch.zeros(codebook_size, dtype=torch.int64)
    for item in indices_iter:
        t = torch.as_tensor(np.asarray(item)) if not isinstance(item, Tensor) else item
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise QuantizerError(f"indices must be integers, got {t.dtype}")
        flat = t.detach().reshape(-1).to(device="cpu", dtype=torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
            raise QuantizerError(
                f"indices must lie in [0, {codebook_size}), found values in "
                f"[{int(flat.min())}, {int(flat.max())}]"
            )
        counts += torch.bincount(flat, minlength=codebook_size)
    return torch.nonzero(counts >= min_count).reshape(-1)


class IndexRemap(nn.Module):
    """Maps full codebook ids to compact ids of the used codes and back.

    Args:
        used: (U,) strictly increasing original ids, as a tensor, an array or a ``.npy`` path.
        codebook_size: K of the full codebook (checks ``used < K``), or None.
        unknown_index: what `remap_to_used` gives an id that is not in ``used``:
            ``"random"`` a uniform draw from [0, U) (from ``generator`` if given, else the
            global CPU RNG, like the reference); ``"extra"`` the extra id U (so ``re_embed``
            is U + 1); an int in [0, U) that fixed id.
        generator: optional CPU generator for ``"random"``.

    Attributes:
        used: persistent int64 buffer (U,), in the state_dict as ``used``.
        re_embed: size of the compact id space, U or U + 1 with ``"extra"``.
        unknown_index: the resolved policy, ``"random"`` or an int.
    """

    used: Tensor

    def __init__(
        self,
        used: UsedLike,
        codebook_size: int | None = None,
        unknown_index: str | int = "random",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(used, str | os.PathLike):
            # The reference's signature takes a file name; the file format is vqtok.io's, so
            # it is imported on use (quantizers/ sits below io/ and does no file I/O itself).
            from vqtok.io.remap import load_used

            table = load_used(used, codebook_size)
        else:
            table = validate_used(used, codebook_size)
        self.register_buffer("used", table)
        self.codebook_size = codebook_size
        self.generator = generator
        n_used = table.numel()
        self.re_embed = n_used
        self.unknown_index: str | int
        if unknown_index == "extra":
            self.unknown_index = n_used
            self.re_embed = n_used + 1
        elif unknown_index == "random":
            self.unknown_index = "random"
        elif isinstance(unknown_index, int) and not isinstance(unknown_index, bool):
            if not 0 <= unknown_index < n_used:
                # The reference accepts any int and then fails in unmap_to_all; refuse early.
                raise ConfigError(
                    f"unknown_index={unknown_index} must lie in [0, {n_used}) (U used codes); "
                    'use "extra" for a dedicated unknown id'
                )
            self.unknown_index = unknown_index
        else:
            raise ConfigError(
                f'unknown_index must be "random", "extra" or an int, got {unknown_index!r}'
            )

    @property
    def num_used(self) -> int:
        """U, the number of used codes."""
        return self.used.numel()

    def extra_repr(self) -> str:
        return (
            f"num_used={self.num_used}, re_embed={self.re_embed}, "
            f"unknown_index={self.unknown_index!r}"
        )

    def remap_to_used(self, inds: Tensor) -> Tensor:
        """Full ids -> compact ids, same shape (any rank), int64.

        Args:
            inds: integer tensor of original codebook ids (>= 0).

        Returns:
            int64 tensor of the same shape with values in [0, re_embed); ids not in ``used``
            follow the ``unknown_index`` policy.
        """
        flat = _as_ids(inds).reshape(-1)
        used = self.used.to(flat.device)
        # used is sorted: the left insertion point is the match position if the id is present.
        pos = torch.searchsorted(used, flat)
        found = used[pos.clamp_max(used.numel() - 1)] == flat
        if self.unknown_index == "random":
            n_unknown = int((~found).sum())
            if n_unknown:
                draw = torch.randint(0, self.re_embed, (n_unknown,), generator=self.generator)
                pos = pos.clone()
                pos[~found] = draw.to(pos.device)
        else:
            pos = torch.where(found, pos, torch.full_like(pos, int(self.unknown_index)))
        return pos.reshape(inds.shape)

    def unmap_to_all(self, inds: Tensor) -> Tensor:
        """Compact ids -> full ids, same shape (any rank), int64; never mutates ``inds``.

        The ``"extra"`` id U decodes to ``used[0]``, as in the reference.

        Raises:
            QuantizerError: an id is outside [0, re_embed) or the tensor is not integer.
        """
        flat = _as_ids(inds).reshape(-1)
        if flat.numel():
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= self.re_embed:
                raise QuantizerError(
                    f"remapped indices must lie in [0, {self.re_embed}), found values in "
                    f"[{lo}, {hi}]"
                )
        used = self.used.to(flat.device)
        if self.re_embed > used.numel():
            flat = torch.where(flat >= used.numel(), torch.zeros_like(flat), flat)
        return used[flat].reshape(inds.shape)


def _as_ids(inds: Tensor) -> Tensor:
    if inds.dtype.is_floating_point or inds.dtype == torch.bool or inds.is_complex():
        raise QuantizerError(f"indices must be an integer tensor, got {inds.dtype}")
    return inds.long()


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
        """Check per-level arrays (see `validate_used`) and hold them.

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
