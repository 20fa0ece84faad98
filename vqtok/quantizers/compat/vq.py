"""``VectorQuantizer2``: taming-transformers' / CogVideo's VQ module, same calls and tuples.

For code ported from taming-transformers (Esser et al., arXiv 2012.09841) or CogVideo's ``sat/sgm``
copy: the constructor, ``forward`` and ``get_codebook_entry`` signatures, the ``(z_q, loss, (None,
None, indices))`` return, the index shapes ((N,), (N, 1) with remap, the grid with
``sane_index_shape``), ``legacy=True`` by default and the state-dict keys (``embedding.weight``,
``used``) are the reference's (README, "Compatibility with the reference modules"). The math is the
core `VectorQuantizer`'s (`vq_losses`, `straight_through`, `nearest_codes`).

Deliberate differences (README, compatibility section):

- accepts video (B, C, T, H, W) and channel-last (N, C) / (B, N, C) input, not only images;
- ``sane_index_shape`` works for every input rank, with or without remap;
- the search runs in float32 under autocast, in bounded memory, batch-independent;
- remapping is O(N log U), ``unknown_index="random"`` takes a generator, ``unmap_to_all`` does
  not mutate its argument; ``restrict_search=True`` searches only the used codes (never an
  unknown index; the reference searches all K codes and maps misses by ``unknown_index``);
- bad arguments raise `QuantizerError` instead of failing an assert.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.errors import QuantizerError
from vqtok.quantizers.base import Layout
from vqtok.quantizers.remap import IndexRemap, UsedLike
from vqtok.quantizers.search import nearest_codes
from vqtok.quantizers.vq import straight_through, vq_losses


class RemapMixin(nn.Module):
    """The reference classes' remap surface over a
    `vqtok.quantizers.remap.IndexRemap`: ``remap``, ``remapper``, ``re_embed``, ``unknown_index``,
    ``used``, ``remap_to_used``, ``unmap_to_all``; the table is saved under the reference's
    state-dict key ``used``."""

    remapper: IndexRemap | None

    def _setup_remap(
        self,
        remap: Any,
        codebook_size: int,
        unknown_index: str | int,
        generator: torch.Generator | None,
    ) -> None:
        self.remap = remap
        self.remapper = (
            None if remap is None
            else IndexRemap(remap, codebook_size, unknown_index, generator)
        )
        self.re_embed = codebook_size if self.remapper is None else self.remapper.re_embed
        self.unknown_index = unknown_index
        if self.remapper is not None:
            self.unknown_index = self.remapper.unknown_index
            self.register_state_dict_post_hook(_used_out)
            self.register_load_state_dict_pre_hook(_used_in)

    @property
    def used(self) -> Tensor:
        """(U,) int64 used-code table of the remap."""
        if self.remapper is None:
            raise QuantizerError(f"this {type(self).__name__} has no remap, so no `used` table")
        return self.remapper.used

    def remap_to_used(self, inds: Tensor) -> Tensor:
        """Full ids -> compact ids (same shape); see `IndexRemap.remap_to_used`."""
        if self.remapper is None:
            raise QuantizerError("remap_to_used needs a remap file")
        return self.remapper.remap_to_used(inds)

    def unmap_to_all(self, inds: Tensor) -> Tensor:
        """Compact ids -> full ids (same shape), without mutating ``inds``."""
        if self.remapper is None:
            raise QuantizerError("unmap_to_all needs a remap file")
        return self.remapper.unmap_to_all(inds)


class VectorQuantizer2(RemapMixin):
    """taming's ``VectorQuantizer2`` (n_e codes of dimension e_dim).

    Args:
        n_e: K, number of codes.
        e_dim: D, code dimension (= input channels).
        beta: loss weight (of the codebook term when ``legacy``, else of the commitment term).
        remap: used-index ``.npy`` path (or array/tensor); indices are then compact ids of
            shape (N, 1).
        unknown_index: ``"random"``, ``"extra"`` or an int, for codes outside ``used``.
        sane_index_shape: return indices in the input's grid shape, e.g. (B, H, W).
        legacy: taming's default loss weighting (beta on the codebook term).
        restrict_search: with remap, search only the used codes (vqtok extension).
        generator: optional CPU generator for ``unknown_index="random"``.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float,
        remap: UsedLike | None = None,
        unknown_index: str | int = "random",
        sane_index_shape: bool = False,
        legacy: bool = True,
        restrict_search: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy
        self.sane_index_shape = sane_index_shape
        self.restrict_search = restrict_search
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)
        self._setup_remap(remap, n_e, unknown_index, generator)

    def forward(
        self,
        z: Tensor,
        temp: float | None = None,
        rescale_logits: bool = False,
        return_logits: bool = False,
    ) -> tuple[Tensor, Tensor, tuple[None, None, Tensor]]:
        """Quantize ``z``.

        Args:
            z: (B, C, H, W), (B, C, T, H, W) or channel-last (N, C) / (B, N, C), C = e_dim.
            temp, rescale_logits, return_logits: Gumbel-interface placeholders; only
                ``None``/1.0, False, False are accepted (as the reference asserts).

        Returns:
            ``(z_q, loss, (None, None, indices))``: z_q in z's shape (straight-through), the
            float32 loss ``(1 + beta) * mse`` and int64 indices: (N,) by default, (N, 1) with
            remap, the input grid ((B, H, W), (B, T, H, W), ...) with ``sane_index_shape``.
        """
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise QuantizerError("VectorQuantizer2 only supports temp=None/1.0 and no logits")
        layout = Layout.of(z)
        if layout.dim != self.e_dim:
            raise QuantizerError(f"expected {self.e_dim} channels, got shape {tuple(z.shape)}")
        flat = layout.to_tokens(z)  # (N, C)
        full, ids = self._search(flat)
        zq = F.embedding(full, self.embedding.weight)
        loss, _, _ = vq_losses(flat, zq, self.beta, self.legacy)
        z_q = layout.from_tokens(straight_through(flat, zq))
        if self.remapper is not None:
            ids = ids.reshape(-1, 1)  # the reference's (N, 1)
        if self.sane_index_shape:
            ids = layout.restore_indices(ids.reshape(-1))
        return z_q, loss, (None, None, ids)

    def _search(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C) -> (rows of the full codebook, returned ids), both (N,)."""
        weight = self.embedding.weight.detach()
        if self.remapper is None:
            full = nearest_codes(flat, weight)
            return full, full
        if self.restrict_search:
            ids = nearest_codes(flat, weight[self.remapper.used])
            return self.remapper.unmap_to_all(ids), ids
        full = nearest_codes(flat, weight)
        return full, self.remapper.remap_to_used(full)

    def get_codebook_entry(self, indices: Tensor, shape: tuple[int, ...] | None) -> Tensor:
        """Indices -> codes.

        Args:
            indices: int ids (compact ids with remap), any shape with ``prod(shape[:-1])``
                elements when ``shape`` is given.
            shape: channel-last ``(B, H, W, C)`` or ``(B, T, H, W, C)``: the result is then
                channel-first (B, C, H, W) / (B, C, T, H, W); None: ``indices.shape + (C,)``.

        Returns:
            Float codes in the codebook's dtype.
        """
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise QuantizerError(f"indices must be an integer tensor, got {indices.dtype}")
        full = indices.long() if self.remapper is None else self.unmap_to_all(indices)
        if full.numel() and (int(full.min()) < 0 or int(full.max()) >= self.n_e):
            raise QuantizerError(f"indices must lie in [0, {self.n_e})")
        codes = F.embedding(full, self.embedding.weight)
        if shape is None:
            return codes
        if len(shape) < 2 or math.prod(shape[:-1]) != full.numel():
            raise QuantizerError(
                f"shape {tuple(shape)} does not fit {full.numel()} indices (expected "
                "(B, H, W, C) or (B, T, H, W, C))"
            )
        # (B, *S, C) -> (B, C, *S)
        return codes.reshape(*shape[:-1], self.e_dim).movedim(-1, 1).contiguous()


def _used_out(module: nn.Module, state_dict: dict[str, Any], prefix: str, _meta: Any) -> None:
    # the reference family saves the used table as a top-level buffer named `used`
    key = prefix + "remapper.used"
    if key in state_dict:
        state_dict[prefix + "used"] = state_dict.pop(key)


def _used_in(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any) -> None:
    if prefix + "used" in state_dict:
        state_dict[prefix + "remapper.used"] = state_dict.pop(prefix + "used")
