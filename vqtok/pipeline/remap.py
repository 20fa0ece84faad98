"""Remap during a run: a remap file applied to every file a run encodes or decodes.

- `RemapPlan`: encode with a remap file (``vqtok encode --remap``), one used set per codebook /
  level (`vqtok.io.remap`). Quantizers with a nearest-code search (``vq``, ``ema_vq``,
  ``gumbel``, ``rvq``, ``ema_rvq``) search only the used codes, level by level, as
  taming-transformers' ``VectorQuantizer2`` can (Esser et al., arXiv 2012.09841), so every
  index is a used one and residual levels stay consistent. Others (FSQ, LFQ) have no codebook
  search to restrict: their indices are mapped to compact ids and a code outside its level's
  used set is an error naming the level, never a silent substitute.
- `load_remap_for`: the used sets to decode a remapped index file, checked against the SHA-256
  and per-level sizes its metadata recorded.

The used sets in memory are `vqtok.quantizers.remap.UsedSets`; building a remap file from index
files is `vqtok.pipeline.remap_build`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from vqtok.disk import file_sha256
from vqtok.errors import RemapError, TokenFileError
from vqtok.io.remap import load_used_sets
from vqtok.io.tokens import RemapInfo, TokenMetadata
from vqtok.quantizers.remap import UsedSets


@dataclass(frozen=True)
class RemapPlan:
    """A remap file applied while encoding.

    Attributes:
        path: the remap file (``.npy``: one level; ``.safetensors``: one used set per level).
        used: its used sets, checked against the model.
        info: what the index file records (SHA-256 of the file, used codes per level).
        restricted: the model's quantizer restricts its search to the used codes (see
            `vqtok.quantizers.base.Quantizer.restricted_indices`); otherwise its indices are
            checked and mapped afterwards, per video (`to_compact`).
    """

    path: Path
    used: UsedSets
    info: RemapInfo
    restricted: bool

    @classmethod
    def open(cls, path: str | Path, model: Any) -> RemapPlan:
        """Load and check a remap file for ``model``.

        Raises:
            RemapError: missing, pickled, truncated, unsorted, ids beyond a level's codebook,
                or another number of levels than the model has.
        """
        used = load_used_sets(path)
        used.check_for(model.quantizer.vocab_sizes, path)
        info = RemapInfo(sha256=file_sha256(path), size=max(used.sizes), sizes=used.sizes)
        return cls(Path(path), used, info, bool(model.quantizer.restricts_search))

    @property
    def search(self) -> UsedSets | None:
        """What the encoder's search is restricted to: the used sets, or None when the
        quantizer cannot restrict its search."""
        return self.used if self.restricted else None

    def to_compact(self, indices: Tensor, source: str | Path) -> Tensor:
        """Full ids -> compact ids for an unrestricted search; a restricted one already gave them.

        Raises:
            RemapError: an index whose code is not in its level's used set (naming the level).
        """
        if self.restricted:
            return indices
        try:
            return self.used.to_compact(indices, self.path.name)
        except RemapError as e:
            raise RemapError(
                f"{e.message}; this quantizer cannot restrict its search, so rebuild the remap "
                "file including this video (vqtok remap build)",
                source,
            ) from e


def load_remap_for(
    meta: TokenMetadata, remap: str | Path | None, path: str | Path
) -> UsedSets | None:
    """The used sets a remapped index file needs, or None if it is not remapped.

    Args:
        meta: the index file's metadata.
        remap: the remap file given by the user (``--remap``), or None.
        path: the index file, for messages.

    Raises:
        TokenFileError: a remapped file without ``remap``, a plain file with one, or a remap
            file whose levels, SHA-256 or sizes differ from the recorded ones.
        RemapError: a remap file that is not valid.
    """
    if meta.remap is None:
        if remap is not None:
            raise TokenFileError("the indices are not remapped; pass no remap file", path,
                                 cli_message="the indices are not remapped; drop --remap")
        return None
    if remap is None:
        what = (f"the indices are remapped ({_sizes(meta.remap.sizes or (meta.remap.size,))} "
                f"used codes, remap file sha256 {meta.remap.sha256[:12]}...); pass that file")
        raise TokenFileError(f"{what} as remap=", path, cli_message=f"{what} with --remap")
    used = load_used_sets(remap, meta.codebook_size)
    expected = meta.remap.sizes or (meta.remap.size,)
    digest = file_sha256(remap)
    if digest != meta.remap.sha256 or used.sizes != tuple(expected):
        raise TokenFileError(
            f"{Path(remap).name} ({_sizes(used.sizes)} codes, sha256 {digest[:12]}...) is not "
            f"the remap file these indices were made with ({_sizes(expected)} codes, sha256 "
            f"{meta.remap.sha256[:12]}...)",
            path,
        )
    return used


def _sizes(sizes: tuple[int, ...] | list[int]) -> str:
    """``(3,)`` -> ``"3"``; ``(297, 300)`` -> ``"297/300 (per level)"``."""
    text = "/".join(str(n) for n in sizes)
    return text if len(sizes) == 1 else f"{text} (per level)"
