"""Nearest-neighbour search of tokens against a codebook, in bounded memory.

Never materialises more than a ``block`` of the N x K distance matrix; distances and argmin run
in float32 whatever the input dtype (so bf16 autocast cannot change an index).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Budget for one block of the distance matrix, in float32 elements (64 MiB).
BLOCK_ELEMENTS = 16 * 1024 * 1024


@torch.no_grad()
def nearest_codes(x: Tensor, codebook: Tensor, block_elements: int = BLOCK_ELEMENTS) -> Tensor:
    """Index of the nearest code (squared Euclidean distance) for every row of ``x``.

    Args:
        x: (N, D) tokens, any float dtype.
        codebook: (K, D) codes.
        block_elements: at most this many distances are held at once.

    Returns:
        (N,) int64 indices in [0, K); ties go to the lowest index.
    """
    x = x.float()
    codebook = codebook.float()
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    code_sq = codebook.square().sum(1)  # (K,)
    rows = max(1, block_elements // max(k, 1))
    for start in range(0, n, rows):
        xb = x[start : start + rows]
        # ||x||^2 is constant per row and cannot change the argmin.
        dist = torch.addmm(code_sq.unsqueeze(0), xb, codebook.t(), alpha=-2.0)  # (n_b, K)
        out[start : start + rows] = dist.argmin(1)
    return out
