"""Used-index remapping: a compact vocabulary made of the codes a tokenizer actually uses.

A trained VQ tokenizer rarely uses its whole codebook. Remapping keeps only the U used codes and
renumbers them 0..U-1, which shrinks the vocabulary a downstream token model must learn. The
mechanism and the file format follow taming-transformers' ``VectorQuantizer2`` (Esser et al.,
"Taming Transformers for High-Resolution Image Synthesis", arXiv 2012.09841): a 1-D ``.npy`` of
int64 original ids, strictly increasing; compact id ``j`` <-> original code ``used[j]``.

Deliberate fixes over the reference (quantizers.md Part 1):

- the full -> compact map is a binary search on the sorted array, O(N log U) time and O(N)
  memory, instead of an (N, U) match tensor;
- ``unknown_index="random"`` takes an optional ``torch.Generator`` so results are reproducible;
- ``unmap_to_all`` never mutates its argument and rejects out-of-range ids with a clear error;
- a remap file is validated on load (sorted, unique, 1-D, integer, in range, not pickled).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from tokenize import TokenError

import numpy as np
import torch
from torch import Tensor, nn

from vqtok.atomic import atomic_bytes
from vqtok.errors import ConfigError, QuantizerError, RemapError

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
