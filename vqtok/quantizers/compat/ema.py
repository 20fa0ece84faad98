"""CogVideo / taming-transformers ``EmbeddingEMA`` and ``EMAVectorQuantizer``, for porting code.

Same constructor and ``forward`` signatures and the same output dict as the reference,
built on the core `vqtok.quantizers.ema` module (VQ-VAE with EMA
codebook updates, van den Oord et al., arXiv 1711.00937). Deliberate differences, all listed in
the README's compatibility section:

- the EMA counts start at 1 (``legacy_init=True`` restores the reference's zero start, where an
  unused code is scaled by about decay / eps on the first update);
- ``remap`` works (the reference crashes at construction) and ``encoding_indices`` are then the
  remapped ids (the used table is saved under the key ``used``, as in the sibling quantizers);
  ``restrict_search=True`` searches only the used codes, so no id is unknown;
  ``get_codebook_entry`` is implemented (the reference raises);
- image (B, C, H, W), video (B, C, T, H, W) and channel-last (..., C) inputs are accepted;
- the EMA statistics are float32 buffers (not frozen Parameters), so they stay float32 under
  ``.half()`` and are broadcast by DDP like other buffers; the loss is float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vqtok.errors import QuantizerError
from vqtok.quantizers.base import Layout, check_indices
from vqtok.quantizers.compat.vq import RemapMixin
from vqtok.quantizers.ema import EMACodebook, ema_lookup, mse
from vqtok.quantizers.remap import UsedLike


class EmbeddingEMA(EMACodebook):
    """The reference's EMA embedding: ``weight`` (K, D) ~ N(0, 1), ``cluster_size``, ``embed_avg``.

    Args:
        num_tokens: K.
        codebook_dim: D.
        decay: gamma in [0, 1).
        eps: Laplace smoothing epsilon.
        legacy_init: counts start at 0 as in the reference (default: at 1).

    ``forward(ids)`` is the embedding lookup; ``update`` (bool) freezes the EMA when False.
    The three reference update methods are kept for code that calls them one by one.
    """

    def __init__(
        self,
        num_tokens: int,
        codebook_dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        legacy_init: bool = False,
    ) -> None:
        super().__init__(num_tokens, codebook_dim, decay, eps, legacy_init, init="normal")
        self.num_tokens = num_tokens
        self.codebook_dim = codebook_dim

    @torch.no_grad()
    def cluster_size_ema_update(self, new_cluster_size: Tensor) -> None:
        """``cluster_size <- decay * cluster_size + (1 - decay) * new_cluster_size`` (K,)."""
        self.cluster_size.mul_(self.decay).add_(new_cluster_size.float(), alpha=1 - self.decay)

    @torch.no_grad()
    def embed_avg_ema_update(self, new_embed_avg: Tensor) -> None:
        """``embed_avg <- decay * embed_avg + (1 - decay) * new_embed_avg`` (K, D)."""
        self.embed_avg.mul_(self.decay).add_(new_embed_avg.float(), alpha=1 - self.decay)

    @torch.no_grad()
    def weight_update(self, num_tokens: int) -> None:
        """``weight <- embed_avg / smoothed`` with Laplace smoothing over ``num_tokens`` codes."""
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + num_tokens * self.eps) * n
        self.weight.copy_(self.embed_avg / smoothed.unsqueeze(1))


class EMAVectorQuantizer(RemapMixin):
    """The reference ``EMAVectorQuantizer``: EMA codebook, commitment loss, dict output.

    Args:
        n_embed: K, number of codes.
        embedding_dim: D.
        beta: commitment weight (required, as in the reference).
        decay: EMA decay.
        eps: Laplace smoothing epsilon.
        remap: optional path to a used-index ``.npy`` (or the array itself).
        unknown_index: ``"random"``, ``"extra"`` or an int (see
        `vqtok.quantizers.remap.IndexRemap`). loss_key: the loss's key in the output dict.
        legacy_init: EMA counts start at 0 as in the reference.
        restrict_search: with remap, search only the used codes (vqtok extension).
        generator: optional CPU generator for ``unknown_index="random"``.
    """

    def __init__(
        self,
        n_embed: int,
        embedding_dim: int,
        beta: float,
        decay: float = 0.99,
        eps: float = 1e-5,
        remap: UsedLike | None = None,
        unknown_index: str | int = "random",
        loss_key: str = "loss/vq",
        legacy_init: bool = False,
        restrict_search: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.codebook_dim = embedding_dim
        self.num_tokens = n_embed
        self.beta = beta
        self.loss_key = loss_key
        self.embedding = EmbeddingEMA(n_embed, embedding_dim, decay, eps, legacy_init)
        self.restrict_search = restrict_search
        self._setup_remap(remap, n_embed, unknown_index, generator)

    def forward(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Quantize ``z`` and, in training with ``embedding.update``, update the codebook.

        Args:
            z: (B, C, H, W), (B, C, T, H, W) or channel-last (..., C) with C = embedding_dim.

        Returns:
            ``(z_q, out)``: ``z_q`` like ``z`` (straight-through, computed with the codebook
            before the update); ``out`` = {loss_key: float32 ``beta * mse(sg(z_q), z)``,
            ``"encodings"``: (N, K) one-hot in z's dtype, ``"encoding_indices"``: (N,) int64
            (remapped when a remap is set), ``"perplexity"``: float32
            ``exp(-sum p ln(p + 1e-10))`` of the batch}.
        """
        layout = Layout.of(z)
        if layout.dim != self.codebook_dim:
            raise QuantizerError(f"expected {self.codebook_dim} channels, got {layout.dim}")
        tokens = layout.to_tokens(z)  # (N, D)
        used = None
        if self.remapper is not None and self.restrict_search:
            used = self.remapper.used
        q, idx = ema_lookup(self.embedding, tokens, self.training, used)
        encodings = F.one_hot(idx, self.num_tokens).to(z.dtype)
        p = torch.bincount(idx, minlength=self.num_tokens).float() / max(idx.numel(), 1)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        loss = self.beta * mse(tokens, q)
        z_q = tokens + (q.to(tokens.dtype) - tokens).detach()
        if self.remapper is not None:
            idx = self.remapper.remap_to_used(idx)
        out = {
            self.loss_key: loss,
            "encodings": encodings,
            "encoding_indices": idx,
            "perplexity": perplexity,
        }
        return layout.from_tokens(z_q), out

    def get_codebook_entry(self, indices: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
        """Codes of ``indices`` (remapped ids when a remap is set).

        Args:
            indices: integer tensor of any shape.
            shape: None -> ``indices.shape + (D,)``; (B, H, W, C) -> (B, C, H, W);
                (B, T, H, W, C) -> (B, C, T, H, W) (the reference's channel-last shape).

        Returns:
            float32 codes.
        """
        if self.remapper is not None:
            indices = self.remapper.unmap_to_all(indices)
        codes = self.embedding(check_indices(indices, self.num_tokens))
        if shape is None:
            return codes
        if len(shape) not in (4, 5):
            raise QuantizerError(f"shape must be (B, H, W, C) or (B, T, H, W, C), got {shape}")
        # (N, C) -> (B, [T,] H, W, C) -> (B, C, [T,] H, W)
        return codes.reshape(shape).movedim(-1, 1).contiguous()



