"""Entropy terms of lookup-free quantization, without an N x 2^bits tensor.

LFQ (MAGVIT-v2, Yu et al., arXiv 2310.05737) scores a token x (d channels of one codebook)
against every hypercube code c_k in {-s, +s}^d with logits 2·tau·<x, c_k> and adds

    per-sample entropy  = mean_n H(softmax_k(logits_nk))
    codebook entropy    = H(mean_n softmax_k(logits_nk))

to the loss (the first pushes each token to a confident code, the second spreads tokens over the
vocabulary). The reference materialises the (N, 2^d) softmax. Here:

- The softmax factorises over bits: logits_k = sum_j 2·tau·s·x_j·sign_kj, so the code
  distribution is a product of independent bits with p(bit_j = 1) = sigmoid(a_j),
  a_j = 4·tau·s·x_j. The per-sample entropy is therefore *exactly* the sum of d binary
  entropies, H_b(sigmoid(a)) = softplus(a) - a·sigmoid(a) (stable for |a| in the hundreds).
- The average distribution over 2^d codes is accumulated exactly without the (N, 2^d) tensor:
  a code is (high bits, low bits) and p(code) = p(high)·p(low), so the sum over tokens of the
  joint is one matrix product of the (N, 2^(d/2)) half-distributions, (2^(d/2) x N) @ (N x 2^(d/2)).
  Memory O(chunk · 2^(d/2) + 2^d); chunks beyond the first are recomputed in backward
  (activation checkpointing), so only the (c, 2^d) accumulator stays alive.
- ``grouped``: the BSQ / Open-MAGVIT2 approximation (arXiv 2406.07548, 2409.04410) sums the
  codebook entropies of consecutive groups of bits (each group's marginal averaged over
  tokens). It equals the exact value when there is one group and is an upper bound otherwise
  (subadditivity of entropy); it needs only 2^group_bits floats per group.

Relation to the reference clamp: the reference evaluates H(p) = -sum p·ln(max(p, 1e-5)). Where
every p >= 1e-5 this is the true entropy, which is what both exact paths here compute. Where some
codes have p < 1e-5 the clamped value is smaller by sum_{p_k < 1e-5} p_k·ln(1e-5 / p_k) (each
term at most 1e-5/e). The factorised per-sample entropy is always the true entropy; for the
codebook entropy the average distribution is materialised, so `entropy` accepts the reference
clamp and the compatibility class `LFQ` uses it to reproduce the reference value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Floor inside the log: small enough that the entropy is the true one to float32 precision,
# large enough that d/dp of p·ln p stays finite at p = 0.
TINY = 1e-30
# The reference's clamp (vector-quantize-pytorch v1.12.10).
REFERENCE_CLAMP = 1e-5
# Largest per-codebook bit count for the exact codebook entropy: 2^26 float32 = 256 MiB.
MAX_EXACT_BITS = 26


@dataclass(frozen=True)
class EntropySettings:
    """How the LFQ entropy terms are evaluated.

    Attributes:
        inv_temperature: tau > 0; logits are 2·tau·<x, code>.
        scale: s > 0, the code magnitude (codebook_scale).
        mode: ``"exact"`` (full average distribution) or ``"grouped"`` (per-group marginals).
        group_bits: bits per group in ``"grouped"`` mode (the last group may be smaller).
        chunk: tokens per accumulation chunk (bounds memory).
        clamp: floor of p inside the log of the codebook entropy (``TINY`` = true entropy,
            ``REFERENCE_CLAMP`` = the reference's value).
    """

    inv_temperature: float
    scale: float
    mode: str = "exact"
    group_bits: int = 9
    chunk: int = 4096
    clamp: float = TINY


def bit_logits(h: Tensor, inv_temperature: float, scale: float) -> Tensor:
    """Per-bit logits a with p(bit = 1) = sigmoid(a) = sigmoid(4·tau·s·h); same shape as h."""
    return (4.0 * inv_temperature * scale) * h.float()


def binary_entropy(a: Tensor) -> Tensor:
    """Natural-log entropy of Bernoulli(sigmoid(a)), elementwise; finite for any finite a."""
    return F.softplus(a) - a * torch.sigmoid(a)


def per_sample_entropy(a: Tensor) -> Tensor:
    """Mean over tokens and codebooks of the entropy of each token's code distribution.

    Args:
        a: (M, c, d) float32 bit logits.

    Returns:
        float32 scalar in [0, d·ln 2]; 0 when M == 0.
    """
    if a.shape[0] == 0:
        return a.new_zeros(())
    return binary_entropy(a).sum(-1).mean()


def entropy(p: Tensor, clamp: float = TINY) -> Tensor:
    """-sum_k p_k·ln(max(p_k, clamp)) over the last axis."""
    return -(p * p.clamp_min(clamp).log()).sum(-1)


def code_table(bits: int, device: torch.device | None = None) -> Tensor:
    """(2^bits, bits) float32 0/1 table; row k holds k's bits, most significant first."""
    shifts = torch.arange(bits - 1, -1, -1, device=device)
    return ((torch.arange(2**bits, device=device)[:, None] >> shifts) & 1).float()


def _code_probs(a: Tensor) -> Tensor:
    """(m, c, b) bit logits -> (m, c, 2^b) code probabilities (MSB-first code order)."""
    table = code_table(a.shape[-1], a.device)
    # ln p(code) = sum_j [bit ? ln sigmoid(a_j) : ln sigmoid(-a_j)]: a sum of non-positive
    # terms, so there is no cancellation even when |a| is in the thousands.
    log_bits = torch.cat([F.logsigmoid(a), F.logsigmoid(-a)], dim=-1)  # (m, c, 2b)
    select = torch.cat([table, 1.0 - table], dim=1)  # (2^b, 2b)
    return (log_bits @ select.t()).exp()


def _distribution_sum(a: Tensor) -> Tensor:
    """(m, c, b) bit logits -> (c, 2^b): the sum over tokens of each token's code distribution."""
    high = a.shape[-1] // 2
    p_high = _code_probs(a[..., :high])  # (m, c, 2^high)
    p_low = _code_probs(a[..., high:])  # (m, c, 2^(b - high))
    # code = high·2^(b-high) + low and p(code) = p(high)·p(low), so summing the outer
    # products over tokens is one batched matmul over the codebook axis.
    joint = torch.einsum("mci,mcj->cij", p_high, p_low)
    return joint.reshape(joint.shape[0], -1)


def mean_code_distribution(a: Tensor, chunk: int = 4096) -> Tensor:
    """The average over tokens of the factorised code distribution, exactly.

    Args:
        a: (M, c, b) float32 bit logits, M >= 1.
        chunk: tokens per chunk; every chunk after the first is recomputed in backward.

    Returns:
        (c, 2^b) float32, rows sum to 1, codes in MSB-first order.
    """
    m = a.shape[0]
    if m <= chunk:
        return _distribution_sum(a) / m
    total = _distribution_sum(a[:chunk])
    for start in range(chunk, m, chunk):
        part = a[start : start + chunk]
        if part.requires_grad:
            total = total + checkpoint(_distribution_sum, part, use_reentrant=False)
        else:
            total = total + _distribution_sum(part)
    return total / m


def codebook_entropy(a: Tensor, settings: EntropySettings) -> Tensor:
    """Entropy of the token-averaged code distribution, mean over codebooks.

    Args:
        a: (M, c, d) float32 bit logits.
        settings: ``mode`` picks exact or grouped; ``chunk`` and ``clamp`` as documented there.

    Returns:
        float32 scalar in [0, d·ln 2]; 0 when M == 0.
    """
    if a.shape[0] == 0:
        return a.new_zeros(())
    bits = a.shape[-1]
    step = bits if settings.mode == "exact" else settings.group_bits
    total = a.new_zeros(a.shape[1])
    for start in range(0, bits, step):
        p = mean_code_distribution(a[..., start : start + step], settings.chunk)
        total = total + entropy(p, settings.clamp)
    return total.mean()


def naive_entropies(
    h: Tensor, inv_temperature: float, scale: float, clamp: float = REFERENCE_CLAMP
) -> tuple[Tensor, Tensor]:
    """The reference evaluation through the full (M, c, 2^d) softmax, for tests and benchmarks.

    Args:
        h: (M, c, d) projected tokens.

    Returns:
        (per-sample entropy, codebook entropy), float32 scalars, with the given clamp.
    """
    d = h.shape[-1]
    codebook = code_table(d, h.device) * (2 * scale) - scale  # (2^d, d), MSB-first
    prob = (2 * inv_temperature * h.float() @ codebook.t()).softmax(-1)  # (M, c, 2^d)
    per_sample = entropy(prob, clamp).mean()
    return per_sample, entropy(prob.mean(0), clamp).mean()
