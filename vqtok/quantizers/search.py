"""Nearest-neighbour search of tokens against a codebook, in bounded memory, batch-independent.

The search behind every nearest-code quantizer (VQ-VAE, van den Oord et al., arXiv 1711.00937).
Squared distances use the expansion ``||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c``; ``||x||^2`` is
constant per row and dropped, and the rest is one ``addmm`` per tile: ``||c||^2 - 2 x.c`` with
the -2 as the GEMM's alpha (exact) and ``||c||^2`` as its bias. (Folding both into one GEMM on
augmented operands ``[x, 1] . [-2c, ||c||^2]`` was measured 10-15 % slower: the inner size
D + 1 is not a multiple of the kernel's blocking.) A vectorised two-level min reduces each tile.
Only a ``rows x codes`` tile of the N x K matrix exists at any time, reused between tiles.

Batch independence. A BLAS result for one row can depend on the shape of the block it is
computed in, so a row whose two best codes are almost tied could flip between a batched call and
a single-row call. Every float32 distance here is within a proven bound ``eps_n`` of the exact
value (``(D + 4) u (max||c||^2 + 2 ||x_n|| max||c||)``, doubled for safety, u the unit
roundoff), so a row whose best and second-best distances differ by more than ``2 eps_n`` has the
same argmin under any summation order. The other rows are settled exactly: their candidates
(codes within ``2 eps_n`` of the best) are re-scored in float64 as ``sum((x - c)^2)``, which is
exact up to the last float64 bit, and ties go to the lowest index.

Distances run in float32 whatever the input dtype, with autocast disabled, so bf16 inputs and
bf16 autocast give the indices of float32 inputs of the same values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vqtok.errors import QuantizerError

# Budget for one tile of the distance matrix, in float32 elements (128 MiB). Measured on the
# 2-core development machine (D=256, K=16384): smaller, cache-sized tiles are ~10 % faster when
# the cores are idle, but every tile costs a few parallel regions, and on a loaded machine
# those synchronisations dominate (4 Mi-element tiles fell to ~30 % of the matmul rate where
# these reached 65-85 %). Large tiles are the robust choice; memory stays far below 512 MiB.
BLOCK_ELEMENTS = 32 * 1024 * 1024
# Codes per tile (a whole codebook up to this size); tokens per tile = block_elements // this.
CODE_TILE = 16384
# Columns per group in the two-level min of a tile (see `_tile_best_two`).
GROUP = 64


def nearest_codes(x: Tensor, codebook: Tensor, block_elements: int = BLOCK_ELEMENTS) -> Tensor:
    """Index of the nearest code (squared Euclidean distance) for every row of ``x``.

    Args:
        x: (N, D) tokens, any float dtype.
        codebook: (K, D) codes, any float dtype, K >= 1.
        block_elements: at most this many float32 distances are held at once (>= 1).

    Returns:
        (N,) int64 indices in [0, K) on ``x``'s device; ties go to the lowest index, and the
        index of a row does not depend on N, on the other rows or on ``block_elements``.

    Raises:
        QuantizerError: shapes do not match, or the codebook is empty.
    """
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise QuantizerError(
            f"expected tokens (N, D) and codebook (K, D), got {tuple(x.shape)} and "
            f"{tuple(codebook.shape)}"
        )
    if codebook.shape[0] == 0:
        raise QuantizerError("the codebook is empty")
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return _search(x.float().contiguous(), codebook.float().contiguous(), block_elements)


def _search(x: Tensor, codebook: Tensor, block_elements: int) -> Tensor:
    n, d = x.shape
    k = codebook.shape[0]
    kc = min(k, CODE_TILE)
    rows = max(1, max(block_elements, 1) // kc)
    codes = _Codes(codebook)
    margin = _error_bound(x, codes.sq, d)  # (N,)
    best = torch.empty(n, dtype=torch.long, device=x.device)
    unsure = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_val = torch.empty(n, device=x.device)
    buf = torch.empty(min(rows, n) * kc, device=x.device)
    for start in range(0, n, rows):
        idx, val, second = _best_two(x[start : start + rows], codes, buf, kc)
        best[start : start + rows] = idx
        best_val[start : start + rows] = val
        unsure[start : start + rows] = second - val <= 2 * margin[start : start + rows]
    # near-ties are rare: settle them all at the end, in as few codebook passes as possible
    rows_u = torch.nonzero(unsure).reshape(-1)
    if rows_u.numel():
        # every code that can truly be the best has a computed distance at or below this
        limit = best_val[rows_u] + 2 * margin[rows_u]
        best[rows_u] = _settle_exactly(x[rows_u], codes, limit, buf, kc)
    return best


class _Codes:
    """The codebook as the tiles use it: (K, D) codes and their squared norms (K,)."""

    def __init__(self, codebook: Tensor) -> None:
        self.weight = codebook
        self.sq = codebook.square().sum(1)


def _error_bound(x: Tensor, code_sq: Tensor, d: int) -> Tensor:
    """Per-row bound on |float32 distance - exact distance| (see the module docstring)."""
    unit = 2.0**-24
    if torch.get_float32_matmul_precision() != "highest" or (
        x.is_cuda and torch.backends.cuda.matmul.allow_tf32
    ):
        unit = 2.0**-8  # TF32 / bf16 internal precision: keep the bound honest
    c_max_sq = float(code_sq.max())
    x_norm = x.norm(dim=1)
    return 2.0 * (d + 4) * unit * (c_max_sq + 2.0 * x_norm * math.sqrt(c_max_sq)) + 1e-30


def _best_two(xb: Tensor, codes: _Codes, buf: Tensor, kc: int) -> tuple[Tensor, Tensor, Tensor]:
    """Argmin over all codes of a row block (r, D), its distance, and the second-best distance."""
    k = codes.weight.shape[0]
    best_val = best_idx = second = None
    for c0 in range(0, k, kc):
        tile = _tile(xb, codes, buf, c0, min(k, c0 + kc))
        val, idx, sec = _tile_best_two(tile)
        idx = idx + c0
        if best_val is None or best_idx is None or second is None:
            best_val, best_idx, second = val, idx, sec
            continue
        # strict < keeps the earlier (lower-index) code on equal values
        take = val < best_val
        second = torch.minimum(torch.minimum(second, sec), torch.maximum(best_val, val))
        best_idx = torch.where(take, idx, best_idx)
        best_val = torch.minimum(best_val, val)
    assert best_idx is not None and best_val is not None and second is not None
    return best_idx, best_val, second


def _tile_best_two(tile: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(r, w) distances -> best value, its first index, second-best value; tile is clobbered.

    A value-only min (``amin``) is vectorised and ~20x faster on CPU than ``min`` with
    indices, so the full tile gets one ``amin`` over groups of ``GROUP`` columns and the
    index-returning reductions run only on (r, w / GROUP) group minima and one (r, GROUP) group.
    """
    r, w = tile.shape
    if w % GROUP or w == GROUP:
        val, idx = tile.min(1)
        tile.scatter_(1, idx.unsqueeze(1), math.inf)
        return val, idx, tile.amin(1)
    groups = tile.view(r, w // GROUP, GROUP)
    group_min = groups.amin(2)  # (r, w / GROUP)
    val, g = group_min.min(1)  # first group holding the minimum
    inside = groups[torch.arange(r, device=tile.device), g]  # (r, GROUP) copy
    j = inside.argmin(1)
    inside.scatter_(1, j.unsqueeze(1), math.inf)
    group_min.scatter_(1, g.unsqueeze(1), math.inf)
    second = torch.minimum(inside.amin(1), group_min.amin(1))
    return val, g * GROUP + j, second


def _settle_exactly(xu: Tensor, codes: _Codes, limit: Tensor, buf: Tensor, kc: int) -> Tensor:
    """Exact argmin for near-tied rows: float64 re-scoring of the codes at or below ``limit``.

    ``xu`` is (M, D) float32 tokens, ``limit`` (M,) the float32 distance under which the true
    best code must lie.
    """
    codebook = codes.weight
    k, d = codebook.shape
    rows = max(1, buf.numel() // kc)
    step = max(1, buf.numel() // (2 * d))  # pairs per float64 batch, within the tile budget
    out = torch.empty(xu.shape[0], dtype=torch.long, device=xu.device)
    for start in range(0, xu.shape[0], rows):
        xb, lim = xu[start : start + rows], limit[start : start + rows]
        best_d = torch.full((xb.shape[0],), math.inf, dtype=torch.float64, device=xu.device)
        best_i = torch.full((xb.shape[0],), k, dtype=torch.long, device=xu.device)
        for c0 in range(0, k, kc):
            tile = _tile(xb, codes, buf, c0, min(k, c0 + kc))
            r_idx, c_idx = torch.nonzero(tile <= lim.unsqueeze(1), as_tuple=True)
            for p0 in range(0, r_idx.numel(), step):
                r, c = r_idx[p0 : p0 + step], c_idx[p0 : p0 + step] + c0
                exact = (xb[r].double() - codebook[c].double()).square().sum(1)
                better = (exact < best_d[r]) | ((exact == best_d[r]) & (c < best_i[r]))
                _merge(best_d, best_i, r[better], exact[better], c[better])
        out[start : start + rows] = best_i
    return out


def _tile(xb: Tensor, codes: _Codes, buf: Tensor, c0: int, c1: int) -> Tensor:
    """(r, D) tokens x codes [c0, c1) -> ``||c||^2 - 2 x.c`` (r, c1 - c0), written into ``buf``."""
    tile = buf[: xb.shape[0] * (c1 - c0)].view(xb.shape[0], c1 - c0)
    bias = codes.sq[c0:c1].unsqueeze(0)
    return torch.addmm(bias, xb, codes.weight[c0:c1].t(), alpha=-2.0, out=tile)


def _merge(best_d: Tensor, best_i: Tensor, r: Tensor, dist: Tensor, code: Tensor) -> None:
    """best_(d, i)[row] <- the lexicographic min of (dist, code) over the old best and the pairs.

    Every pair given must already be at least as good as its row's old best.
    """
    if r.numel() == 0:
        return
    best_d.scatter_reduce_(0, r, dist, reduce="amin")
    winner = dist == best_d[r]
    rows_won = r[winner]
    best_i[rows_won] = torch.iinfo(torch.long).max  # the old index lost or tied a lower code
    best_i.scatter_reduce_(0, rows_won, code[winner], reduce="amin")
