"""Lookup-free quantization (LFQ): each latent channel becomes one bit.

MAGVIT-v2 (Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key to Visual
Generation", arXiv 2310.05737). A token of d = log2(codebook_size) channels (per codebook) is
quantized to the hypercube corner sign(x)·codebook_scale, and its index packs the bits
[x_j > 0]. There is no codebook to search; the training loss is

    entropy_loss_weight · (per_sample_entropy - diversity_gamma · codebook_entropy)
    + commitment_loss_weight · mean((h - sg(q))^2)

with the entropies computed without an N x 2^d tensor (see `vqtok.quantizers.entropy`).

Bit order: MSB-first by default, index = sum_j [x_j > 0]·2^(d-1-j), as in the reference LFQ;
``bit_order="lsb"`` gives index = sum_j [x_j > 0]·2^j. A channel exactly 0 is bit 0 (-scale).
With several codebooks, codebook i owns channels [i·d, (i+1)·d) of the projected latent.

All quantization, index and entropy math runs in float32, whatever the input dtype or the
dtype the module was cast to; the codes come back in the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import Layout, Quantizer, QuantizerOutput, check_indices
from vqtok.quantizers.base import codebook_metrics as dense_codebook_metrics
from vqtok.quantizers.entropy import (
    MAX_EXACT_BITS,
    EntropySettings,
    bit_logits,
    codebook_entropy,
    per_sample_entropy,
)

# Above this vocabulary the usage histogram is built from the codes present, not a K-bin count.
DENSE_METRICS_MAX = 2**22


class LossTerms(NamedTuple):
    """Unweighted LFQ loss terms (float32 scalars, attached to the graph in training)."""

    per_sample_entropy: Tensor
    codebook_entropy: Tensor
    commitment: Tensor

    def weighted(self, entropy_weight: float, gamma: float, commitment_weight: float) -> Tensor:
        """LFQ's loss: entropy_weight · (per_sample − gamma · codebook) + commitment_weight ·
        commitment."""
        entropy = self.per_sample_entropy - gamma * self.codebook_entropy
        return entropy_weight * entropy + commitment_weight * self.commitment


class LFQStep(NamedTuple):
    """`lfq_step`'s result on flat tokens."""

    codes: Tensor  # (M, c, d) float32: straight-through codes in training, hard codes in eval
    indices: Tensor  # (M, c) int64
    terms: LossTerms


def bit_weights(bits: int, bit_order: str, device: torch.device | None = None) -> Tensor:
    """(bits,) int64 place values: 2^(d-1-j) for ``"msb"``, 2^j for ``"lsb"``."""
    powers = torch.arange(bits, device=device)
    if bit_order == "msb":
        powers = bits - 1 - powers
    return torch.ones((), dtype=torch.long, device=device) << powers


def pack_bits(h: Tensor, bit_order: str) -> Tensor:
    """(..., d) float -> (...,) int64 index of the bits [h_j > 0]."""
    weights = bit_weights(h.shape[-1], bit_order, h.device)
    return ((h > 0).long() * weights).sum(-1)


def unpack_codes(indices: Tensor, bits: int, bit_order: str, scale: float) -> Tensor:
    """(...,) int64 -> (..., bits) float32 hypercube codes (bit 1 -> +scale, bit 0 -> -scale)."""
    weights = bit_weights(bits, bit_order, indices.device)
    on = (indices.long()[..., None] & weights) != 0
    return torch.where(on, scale, -scale).float()


def linear_f32(layer: nn.Module | None, x: Tensor) -> Tensor:
    """Apply an optional Linear (or Identity) in float32, whatever dtype its weights are."""
    if not isinstance(layer, nn.Linear):
        return x.float()
    bias = None if layer.bias is None else layer.bias.float()
    with torch.autocast(x.device.type, enabled=False):  # indices must not depend on autocast
        return F.linear(x.float(), layer.weight.float(), bias)


def select_rows(
    n: int,
    mask: Tensor | None,
    frac: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor | None:
    """Token rows the entropies use: the valid ones, then floor(T·frac) of them at random.

    The random draw runs on the generator's device (CPU by default), so a seeded CPU generator
    picks the same rows whatever device the tokens are on.

    Returns:
        None for "all rows", else an int64 index tensor on ``device`` (possibly empty).
    """
    rows = None if mask is None else mask.nonzero().squeeze(1)
    if frac >= 1.0:
        return rows
    total = n if rows is None else rows.numel()
    keep = math.floor(total * frac)
    rng_device = generator.device if generator is not None else torch.device("cpu")
    pick = torch.randperm(total, generator=generator, device=rng_device)[:keep]
    pick = pick.sort().values.to(device)
    return pick if rows is None else rows[pick]


def lfq_step(
    h: Tensor,
    settings: EntropySettings,
    bit_order: str,
    training: bool,
    mask: Tensor | None = None,
    frac: float = 1.0,
    generator: torch.Generator | None = None,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> LFQStep:
    """Quantize projected tokens and, in training, compute the unweighted loss terms.

    Args:
        h: (M, c, d) float32 projected tokens.
        settings: entropy evaluation (temperature, scale, exact/grouped, chunk, clamp).
        bit_order: ``"msb"`` or ``"lsb"``.
        training: eval returns the hard codes and zero terms.
        mask: (M,) bool, True = token counts in the losses (quantization covers every token).
        frac: fraction of the (valid) tokens the entropies use, in (0, 1].
        generator: RNG for that subset (CPU generator unless tokens live elsewhere).
        activation: applied before the straight-through estimator (reference option).
    """
    scale = settings.scale
    q = torch.where(h > 0, scale, -scale)  # (M, c, d)
    indices = pack_bits(h, bit_order)  # (M, c)
    zero = h.new_zeros(())
    if not training:
        return LFQStep(q, indices, LossTerms(zero, zero, zero))
    x = h if activation is None else activation(h)
    codes = x + (q - x).detach()
    valid = h if mask is None else h[mask]  # (M', c, d)
    commit = F.mse_loss(valid, q[mask] if mask is not None else q) if valid.numel() else zero
    rows = select_rows(h.shape[0], mask, frac, generator, h.device)
    a = bit_logits(h if rows is None else h[rows], settings.inv_temperature, scale)
    # autocast would run the entropy matmuls in bf16/fp16; the spec keeps LFQ in float32
    with torch.autocast(h.device.type, enabled=False):
        terms = LossTerms(per_sample_entropy(a), codebook_entropy(a, settings), commit)
    return LFQStep(codes, indices, terms)


def usage_metrics(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """perplexity / usage / bits_per_index of the indices (all codebooks pooled), any K."""
    if codebook_size <= DENSE_METRICS_MAX:
        return dense_codebook_metrics(indices, codebook_size)
    _, counts = torch.unique(indices.detach().reshape(-1), return_counts=True)
    p = counts.float() / counts.sum().clamp_min(1)
    ent = -(p * p.log()).sum()
    return {
        "perplexity": ent.exp(),
        "usage": torch.tensor(counts.numel() / codebook_size),
        "bits_per_index": ent / math.log(2.0),
    }


def check_power_of_two(codebook_size: int) -> int:
    """log2(codebook_size), or a ConfigError naming the nearest valid sizes."""
    if codebook_size < 2 or codebook_size & (codebook_size - 1):
        low = 2 ** max(1, int(math.log2(max(codebook_size, 1))))
        raise ConfigError(
            f"LFQ codebook_size must be a power of two >= 2, got {codebook_size}; "
            f"try {low} or {2 * low}"
        )
    return codebook_size.bit_length() - 1


class LookupFreeQuantizer(Quantizer):
    """Lookup-free quantizer (kind ``"lfq"``), MAGVIT-v2 (arXiv 2310.05737).

    Args:
        dim: input channels D. Linear projections D -> bits·num_codebooks -> D are added
            iff D != bits·num_codebooks.
        codebook_size: K = 2^bits codes per codebook (a power of two >= 2).
        num_codebooks: c; indices get a trailing axis of length c when c > 1.
        codebook_scale: s > 0; codes are in {-s, +s}^bits.
        entropy_loss_weight: weight of (per_sample - diversity_gamma·codebook) entropy.
        commitment_loss_weight: weight of mean((h - sg(q))^2) over valid tokens.
        diversity_gamma: weight of the codebook entropy inside the entropy term.
        inv_temperature: tau > 0 of the code distribution softmax(2·tau·<h, code>).
        frac_per_sample_entropy: fraction in (0, 1] of valid tokens both entropies use.
        codebook_entropy: ``"exact"`` (full average distribution, bits <= 26) or
            ``"grouped"`` (sum over groups of ``entropy_group_bits`` bits; an upper bound).
        entropy_group_bits: group size for ``"grouped"``.
        entropy_chunk: tokens per chunk when accumulating the average distribution.
        bit_order: ``"msb"`` (reference, default) or ``"lsb"`` index packing.
    """

    kind = "lfq"
    bit_order: str  # "msb" or "lsb", set by __init__

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_codebooks: int = 1,
        codebook_scale: float = 1.0,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        frac_per_sample_entropy: float = 1.0,
        codebook_entropy: str = "exact",
        entropy_group_bits: int = 9,
        entropy_chunk: int = 4096,
        bit_order: str = "msb",
    ) -> None:
        super().__init__()
        self.bits = check_power_of_two(codebook_size)
        check_options(
            num_codebooks,
            codebook_scale,
            inv_temperature,
            frac_per_sample_entropy,
            codebook_entropy,
            entropy_group_bits,
            entropy_chunk,
            bit_order,
            self.bits,
        )
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.frac_per_sample_entropy = frac_per_sample_entropy
        self.bit_order = bit_order
        self.settings = EntropySettings(
            inv_temperature=inv_temperature,
            scale=codebook_scale,
            mode=codebook_entropy,
            group_bits=entropy_group_bits,
            chunk=entropy_chunk,
        )
        code_dim = self.bits * num_codebooks
        project = dim != code_dim
        self.project_in = nn.Linear(dim, code_dim) if project else None
        self.project_out = nn.Linear(code_dim, dim) if project else None

    def forward(
        self,
        z: Tensor,
        channel_last: bool | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> QuantizerOutput:
        """Quantize ``z``.

        Args:
            z: (B, D, H, W) / (B, D, T, H, W) channel-first or (N, D) / (B, N, D) / (..., D)
                channel-last (see `Layout.of`), any float dtype.
            channel_last: force the layout (None: by rank).
            mask: bool with one entry per token (the grid shape, (B, N) or (N,)); True =
                the token counts in the losses. Quantization covers every token.
            generator: RNG for the ``frac_per_sample_entropy`` subset.

        Returns:
            `QuantizerOutput`: codes in z's layout and dtype; indices int64 (grid, + c axis
            if c > 1) in [0, codebook_size); float32 loss (0 in eval); metrics
            per_sample_entropy, codebook_entropy, commitment (unweighted; 0 in eval),
            perplexity, usage, bits_per_index.
        """
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"LFQ expects {self.dim} channels, got shape {tuple(z.shape)}")
        valid = token_mask(mask, layout.num_tokens)
        flat = layout.to_tokens(z)  # (N, D)
        h = linear_f32(self.project_in, flat).reshape(-1, self.num_codebooks, self.bits)
        step = lfq_step(
            h,
            self.settings,
            self.bit_order,
            self.training,
            valid,
            self.frac_per_sample_entropy,
            generator,
        )
        codes = linear_f32(self.project_out, step.codes.flatten(1))  # (N, c·d) -> (N, D)
        if z.is_floating_point():
            codes = codes.to(z.dtype)
        terms = step.terms
        loss = terms.weighted(
            self.entropy_loss_weight, self.diversity_gamma, self.commitment_loss_weight
        )
        indices = step.indices if self.num_codebooks > 1 else step.indices[:, 0]
        metrics = {name: value.detach() for name, value in terms._asdict().items()}
        metrics.update(usage_metrics(step.indices, self.codebook_size))
        return QuantizerOutput(
            layout.from_tokens(codes), layout.restore_indices(indices), loss, metrics
        )

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """The exact codes of ``indices`` (the eval forward's output), float32.

        Args:
            indices: integer (*grid) or (*grid, c) when c > 1, values in [0, codebook_size).
            channel_last: output layout; None: a grid of rank 3 / 4 gives (B, D, *S).

        Returns:
            float32 codes, (B, D, *S) or (*grid, D).
        """
        indices = check_indices(indices, self.codebook_size)
        if self.num_codebooks > 1 and (indices.ndim < 2 or indices.shape[-1] != self.num_codebooks):
            raise QuantizerError(
                f"indices need a trailing axis of {self.num_codebooks} codebooks, "
                f"got shape {tuple(indices.shape)}"
            )
        layout = Layout.for_indices(indices, self.num_codebooks, channel_last)
        flat = indices.reshape(-1, self.num_codebooks)  # (N, c)
        codes = unpack_codes(flat, self.bits, self.bit_order, self.settings.scale)  # (N, c, d)
        return layout.from_tokens(linear_f32(self.project_out, codes.flatten(1)))



def token_mask(mask: Tensor | None, num_tokens: int) -> Tensor | None:
    """Validate a token mask (bool, one entry per token, True = valid) and flatten it to (N,)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.numel() != num_tokens:
        raise QuantizerError(
            f"mask must be a bool tensor with one entry per token ({num_tokens}), "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    return mask.reshape(-1)


def check_options(
    num_codebooks: int,
    scale: float,
    inv_temperature: float,
    frac: float,
    mode: str,
    group_bits: int,
    chunk: int,
    bit_order: str,
    bits: int,
    count_name: str = "num_codebooks",
) -> None:
    """ConfigError for every constructor argument out of its range (``count_name``: what the
    caller calls its number of codebooks, in the message)."""
    checks = [
        (num_codebooks >= 1, f"{count_name} must be >= 1, got {num_codebooks}"),
        (scale > 0, f"codebook_scale must be > 0, got {scale}"),
        (inv_temperature > 0, f"inv_temperature must be > 0, got {inv_temperature}"),
        (0 < frac <= 1, f"frac_per_sample_entropy must be in (0, 1], got {frac}"),
        (mode in ("exact", "grouped"), f"codebook_entropy must be exact|grouped, got {mode!r}"),
        (group_bits >= 1, f"entropy_group_bits must be >= 1, got {group_bits}"),
        (chunk >= 1, f"entropy_chunk must be >= 1, got {chunk}"),
        (bit_order in ("msb", "lsb"), f"bit_order must be msb|lsb, got {bit_order!r}"),
        (
            mode != "exact" or bits <= MAX_EXACT_BITS,
            f"codebook_entropy='exact' needs 2^{bits} floats per codebook; "
            f"use codebook_entropy='grouped' above 2^{MAX_EXACT_BITS} codes",
        ),
        (bits <= 62, f"at most 2^62 codes per codebook fit an int64 index, got 2^{bits}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
