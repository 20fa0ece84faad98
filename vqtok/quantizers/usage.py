"""Codebook usage over a dataset, dead-code re-seeding and k-means initialisation.

Codebook collapse (most codes never chosen) is the common failure of VQ training (van den Oord
et al., "Neural Discrete Representation Learning", arXiv 1711.00937). Two standard remedies live
here: re-seeding codes that go unused with recent encoder outputs (as in Jukebox, Dhariwal et
al., arXiv 2005.00341) and initialising the codebook with k-means on encoder outputs (Lloyd's
algorithm). `CodeUsage` aggregates the usage statistics of `codebook_metrics` over many batches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import check_indices
from vqtok.quantizers.search import nearest_codes


class CodeUsage:
    """Accumulates how often each code is chosen, over any number of batches.

    Args:
        codebook_size: K.

    Attributes:
        counts: (K,) int64 CPU tensor, the number of times each code was seen.
    """

    def __init__(self, codebook_size: int) -> None:
        if codebook_size < 1:
            raise ConfigError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)

    def update(self, indices: Tensor) -> None:
        """Add a batch of indices (integer, any shape, values in [0, K))."""
        flat = check_indices(indices, self.codebook_size).reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.codebook_size).cpu()

    def reset(self) -> None:
        self.counts.zero_()

    def metrics(self) -> dict[str, float]:
        """Statistics of everything seen so far.

        Returns:
            ``perplexity`` = exp(H), H the natural-log entropy of the empirical distribution;
            ``usage`` = fraction of the K codes seen at least once; ``bits_per_index`` = H/ln 2;
            ``codes_used`` = how many codes were seen; ``tokens`` = how many indices were seen.
            With nothing seen: perplexity 1, the rest 0.
        """
        total = int(self.counts.sum())
        p = self.counts.double() / max(total, 1)
        nz = p[p > 0]
        entropy = float(-(nz * nz.log()).sum())
        used = int((self.counts > 0).sum())
        return {
            "perplexity": math.exp(entropy),
            "usage": used / self.codebook_size,
            "bits_per_index": entropy / math.log(2.0),
            "codes_used": float(used),
            "tokens": float(total),
        }


@torch.no_grad()
def reseed_dead_codes(
    codebook: Tensor,
    counts: Tensor,
    samples: Tensor,
    threshold: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace rarely used codes by random recent encoder outputs, in place.

    Args:
        codebook: (K, D) float codebook (a Parameter or buffer); modified in place.
        counts: (K,) usage counts (any numeric dtype), e.g. `CodeUsage.counts` or EMA sizes.
        samples: (M, D) recent encoder outputs to draw from.
        threshold: codes with ``counts < threshold`` are re-seeded.
        generator: optional generator (on ``samples``' device) for reproducible draws.

    Returns:
        (K,) bool mask of the re-seeded codes. Distinct samples are used when M is at least
        the number of dead codes, otherwise draws are with replacement.

    Raises:
        QuantizerError: shapes do not match, or there are dead codes but no samples.
    """
    k, d = codebook.shape
    if counts.shape != (k,) or samples.ndim != 2 or samples.shape[1] != d:
        raise QuantizerError(
            f"expected codebook (K, D), counts (K,), samples (M, D); got "
            f"{tuple(codebook.shape)}, {tuple(counts.shape)}, {tuple(samples.shape)}"
        )
    dead = counts.to(codebook.device).double() < threshold
    n_dead = int(dead.sum())
    if n_dead == 0:
        return dead
    m = samples.shape[0]
    if m == 0:
        raise QuantizerError(f"{n_dead} dead codes to re-seed but no samples were given")
    gen_device = generator.device if generator is not None else samples.device
    if m >= n_dead:
        pick = torch.randperm(m, generator=generator, device=gen_device)[:n_dead]
    else:
        pick = torch.randint(0, m, (n_dead,), generator=generator, device=gen_device)
    codebook[dead] = samples[pick.to(samples.device)].to(codebook.device, codebook.dtype)
    return dead


@torch.no_grad()
def kmeans_init(
    samples: Tensor, codebook_size: int, iters: int = 10, generator: torch.Generator | None = None
) -> Tensor:
    """K-means centroids of ``samples``, to initialise a codebook.

    Seeding is k-means++ (Arthur & Vassilvitskii, 2007: each new seed drawn with probability
    proportional to its squared distance to the nearest seed so far), which avoids two seeds in
    one cluster; then Lloyd iterations, where a cluster that becomes empty keeps its centroid.
    Cost O(M·K·D) per iteration and for the seeding; meant for a few thousand samples.

    Args:
        samples: (M, D) float encoder outputs, M >= codebook_size.
        codebook_size: K.
        iters: Lloyd iterations (>= 0).
        generator: optional CPU generator for reproducible seeding.

    Returns:
        (K, D) float32 centroids on ``samples``' device.
    """
    m = samples.shape[0] if samples.ndim == 2 else 0
    if samples.ndim != 2 or m < codebook_size or iters < 0:
        raise QuantizerError(
            f"k-means needs samples (M, D) with M >= K={codebook_size} and iters >= 0; got "
            f"{tuple(samples.shape)}, iters={iters}"
        )
    x = samples.float()
    return lloyd(x, _kmeans_pp_seeds(x, codebook_size, generator), iters)


@torch.no_grad()
def lloyd(samples: Tensor, centroids: Tensor, iters: int) -> Tensor:
    """``iters`` Lloyd iterations on ``samples`` (M, D) float32 from ``centroids`` (K, D),
    updated in place and returned; a cluster that becomes empty keeps its centroid."""
    for _ in range(iters):
        assign = nearest_codes(samples, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        sizes = torch.bincount(assign, minlength=centroids.shape[0])
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled].unsqueeze(1).to(samples.dtype)
    return centroids


def _kmeans_pp_seeds(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    m = x.shape[0]
    seeds = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    first = int(torch.randint(0, m, (1,), generator=generator))
    seeds[0] = x[first]
    min_d2 = (x - seeds[0]).square().sum(1).double()
    for j in range(1, k):
        weights = min_d2.cpu()
        if not float(weights.sum()) > 0:
            weights = torch.ones(m, dtype=torch.float64)  # all points coincide with seeds
        pick = int(torch.multinomial(weights, 1, generator=generator))
        seeds[j] = x[pick]
        min_d2 = torch.minimum(min_d2, (x - seeds[j]).square().sum(1).double())
    return seeds
