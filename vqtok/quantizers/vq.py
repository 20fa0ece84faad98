"""Nearest-neighbour vector quantization with a learned codebook (kind ``"vq"``).

VQ-VAE (van den Oord et al., "Neural Discrete Representation Learning", arXiv 1711.00937): each
latent vector is replaced by its nearest codebook entry, gradients pass straight through to the
encoder, and two loss terms train the codebook (``mse(zq, sg(z))``) and keep the encoder committed
to it (``mse(sg(zq), z)``). The ``legacy`` switch reproduces taming-transformers' weighting
(Esser et al., arXiv 2012.09841), where beta multiplies the codebook term instead of the
commitment term; both forms have the value ``(1 + beta) * mse(zq, z)`` and differ only in
where the gradient goes (`vq_losses`).

Beyond the reference: the search is the bounded-memory, batch-independent `nearest_codes`
(float32 even under bf16 autocast); with a remap file the search is *restricted* to the used
codes, so the compact indices never hold an unknown; and the codebook can be re-seeded and
k-means initialised from encoder outputs (`vqtok.quantizers.usage`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import (
    Layout,
    Quantizer,
    QuantizerOutput,
    check_indices,
    codebook_metrics,
)
from vqtok.quantizers.remap import IndexRemap, UsedLike
from vqtok.quantizers.search import BLOCK_ELEMENTS, nearest_codes
from vqtok.quantizers.usage import kmeans_init
from vqtok.quantizers.usage import reseed_dead_codes as reseed_rows


def vq_losses(z: Tensor, zq: Tensor, beta: float, legacy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The VQ-VAE loss with taming's ``legacy`` split, in float32.

    Args:
        z: (N, D) encoder output (gradient goes to the encoder through the commitment term).
        zq: (N, D) chosen codes, differentiable w.r.t. the codebook.
        beta: weight of the commitment term (legacy=False) or of the codebook term (True).
        legacy: taming's default formula, ``commit + beta * codebook``.

    Returns:
        ``(loss, commitment, codebook)`` float32 scalars; commitment = mse(sg(zq), z),
        codebook = mse(zq, sg(z)), equal in value.
    """
    z32, zq32 = z.float(), zq.float()
    commitment = F.mse_loss(z32, zq32.detach())
    codebook = F.mse_loss(zq32, z32.detach())
    loss = commitment + beta * codebook if legacy else beta * commitment + codebook
    return loss, commitment, codebook


def straight_through(z: Tensor, zq: Tensor) -> Tensor:
    """``z + sg(zq - z)`` in ``z``'s dtype: forward value zq, gradient identity to z."""
    return z + (zq.to(z.dtype) - z).detach()


class VectorQuantizer(Quantizer):
    """Nearest-code VQ with a learned (gradient) codebook.

    Args:
        dim: D, channels of the latent (and of each code).
        codebook_size: K, number of codes in the codebook.
        beta: weight of the commitment term (``legacy=False``, the paper) or of the codebook
            term (``legacy=True``, taming's default); >= 0.
        legacy: use taming's weighting (see the module docstring).
        remap: used codes (tensor, array or ``.npy`` path, see `vqtok.quantizers.remap`): the
        search is
            restricted to them and indices are compact ids in [0, U); ``codebook_size`` is U.
        init: ``"uniform"`` (U(-1/K, 1/K), as the reference) or ``"normal"`` (N(0, 1)).
        block_elements: distance-tile budget of the search (see `nearest_codes`).

    Attributes:
        embedding: ``nn.Embedding(K, D)``, the full codebook (state-dict key
            ``embedding.weight``, as in the reference).
        remapper: the `IndexRemap` (key ``remapper.used``) or None.
        codebook_size: the vocabulary of the indices: U with remap, else K.
    """

    kind = "vq"

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        beta: float = 0.25,
        legacy: bool = False,
        remap: UsedLike | None = None,
        init: str = "uniform",
        block_elements: int = BLOCK_ELEMENTS,
    ) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 1 or beta < 0:
            raise ConfigError(
                f"need dim >= 1, codebook_size >= 1, beta >= 0; got {dim}, {codebook_size}, {beta}"
            )
        if init not in ("uniform", "normal"):
            raise ConfigError(f'init must be "uniform" or "normal", got {init!r}')
        self.dim = dim
        self.full_codebook_size = codebook_size
        self.beta = float(beta)
        self.legacy = legacy
        self.block_elements = block_elements
        self.embedding = nn.Embedding(codebook_size, dim)
        if init == "uniform":
            nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        else:
            nn.init.normal_(self.embedding.weight)
        self.remapper = None if remap is None else IndexRemap(remap, codebook_size)
        self.codebook_size = codebook_size if self.remapper is None else self.remapper.num_used

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}, "
            f"legacy={self.legacy}"
        )

    def searchable_codes(self) -> Tensor:
        """(codebook_size, D) the codes the search may pick (the used rows with remap)."""
        weight = self.embedding.weight
        return weight if self.remapper is None else weight[self.remapper.used]

    def to_full_ids(self, indices: Tensor) -> Tensor:
        """Indices in [0, codebook_size) -> rows of ``embedding.weight`` (same shape)."""
        return indices if self.remapper is None else self.remapper.unmap_to_all(indices)

    def quantize_tokens(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) tokens -> (ids in [0, codebook_size) (N,), chosen codes (N, D) float32).

        The codes are differentiable w.r.t. ``embedding.weight``; the ids carry no gradient.
        """
        ids = nearest_codes(flat, self.searchable_codes().detach(), self.block_elements)
        zq = F.embedding(self.to_full_ids(ids), self.embedding.weight)
        return ids, zq

    restricts_search = True

    def restricted_indices(
        self, z: Tensor, allowed: Sequence[Tensor], channel_last: bool | None = None
    ) -> Tensor:
        """Nearest code among ``allowed[0]`` only (see `Quantizer.restricted_indices`)."""
        codes = self.searchable_codes().detach()
        return self.nearest_allowed(z, allowed, channel_last,
                                    lambda ids: codes[ids.to(codes.device)], self.block_elements)

    def forward(self, z: Tensor, channel_last: bool | None = None) -> QuantizerOutput:
        """Quantize ``z``.

        Args:
            z: (B, D, H, W), (B, D, T, H, W), or channel-last (N, D) / (B, N, D) / (..., D)
                with ``channel_last=True``; any float dtype.
            channel_last: layout override (see `Layout.of`).

        Returns:
            `QuantizerOutput`: codes in ``z``'s shape and dtype (straight-through), int64
            indices of shape grid in [0, codebook_size), the float32 loss, and metrics
            (perplexity, usage, bits_per_index, commitment_loss, codebook_loss).
        """
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} channels, got shape {tuple(z.shape)}")
        flat = layout.to_tokens(z)  # (N, D)
        ids, zq = self.quantize_tokens(flat)
        loss, commitment, codebook = vq_losses(flat, zq, self.beta, self.legacy)
        codes = layout.from_tokens(straight_through(flat, zq))
        metrics = codebook_metrics(ids, self.codebook_size)
        metrics["commitment_loss"] = commitment.detach()
        metrics["codebook_loss"] = codebook.detach()
        return QuantizerOutput(codes, layout.restore_indices(ids), loss, metrics)

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """Indices (any grid, values in [0, codebook_size)) -> codes in the forward layout.

        A grid of rank 3 or 4 gives channel-first (B, D, H, W) / (B, D, T, H, W) unless
        ``channel_last=True``; rank 1 or 2 gives (N, D) / (B, N, D). Float32 (the codebook's
        dtype).
        """
        ids = check_indices(indices, self.codebook_size)
        layout = Layout.for_indices(ids, 1, channel_last)
        codes = F.embedding(self.to_full_ids(ids.reshape(-1)), self.embedding.weight)
        return layout.from_tokens(codes)

    def _reseed(
        self, samples: Tensor, counts: Tensor, threshold: float, generator: torch.Generator | None
    ) -> int:
        """Re-seed the searchable codes; ``counts`` (codebook_size,) are per index (compact
        ids with remap), so codes outside the used set are never moved."""
        rows = self.searchable_codes().detach().clone()
        dead = reseed_rows(rows, counts, samples, threshold, generator)
        self._write_rows(rows, dead)
        return int(dead.sum())

    @torch.no_grad()
    def init_from_samples(
        self, samples: Tensor, iters: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Set the searchable codes to k-means centroids of ``samples`` (M, dim), M >= K."""
        centroids = kmeans_init(samples.detach(), self.codebook_size, iters, generator)
        self._write_rows(centroids, torch.ones(self.codebook_size, dtype=torch.bool))

    def _write_rows(self, rows: Tensor, mask: Tensor) -> None:
        weight = self.embedding.weight
        mask = mask.to(weight.device)
        full = torch.arange(self.codebook_size, device=weight.device)
        full = self.to_full_ids(full)[mask]
        weight.data[full] = rows[mask].to(weight.device, weight.dtype)
