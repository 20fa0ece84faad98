"""The contract every vqtok quantizer follows, and the layout bookkeeping they share.

A quantizer maps continuous latents to discrete indices and back:

    out = quantizer(z)                     # QuantizerOutput(codes, indices, loss, metrics)
    quantizer.indices_to_codes(out.indices) == out.codes   # up to float rounding of the ST path

Accepted input layouts (the same rule everywhere, see `Layout.of`):

- channel-first image (B, D, H, W) or video (B, D, T, H, W): rank 4 or 5;
- channel-last tokens (N, D) or (B, N, D): rank 2 or 3;
- anything else channel-last by passing ``channel_last=True``.

Indices are int64 with the input's shape minus the channel axis, plus a trailing axis of length
L when the quantizer has L > 1 codebooks or residual levels (``num_codebooks``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.remap import UsedSets


class QuantizerOutput(NamedTuple):
    """What every quantizer's ``forward`` returns, always these four fields in this order.

    Attributes:
        codes: quantized latents, same shape and layout as the input; in training the
            straight-through value ``z + sg(q - z)``, so gradients reach the encoder.
        indices: int64 codebook indices; input shape without the channel axis
            (+ trailing L axis for L > 1 codebooks / levels), values in [0, codebook_size).
        loss: float32 scalar, the total weighted auxiliary loss (commitment, codebook,
            entropy, KL); zero when the quantizer has none in the current mode.
        metrics: detached float32 scalars for logging (perplexity, usage, loss parts, ...).
    """

    codes: Tensor
    indices: Tensor
    loss: Tensor
    metrics: dict[str, Tensor]


@dataclass(frozen=True)
class Layout:
    """How an input tensor maps to a flat (N, D) token matrix and back.

    ``grid`` is the input shape without the channel axis: (B, H, W), (B, T, H, W), (N,),
    (B, N) or a custom channel-last prefix.
    """

    grid: tuple[int, ...]
    dim: int
    channel_last: bool

    @classmethod
    def of(cls, z: Tensor, channel_last: bool | None = None) -> Layout:
        """Describe ``z``; ``channel_last=None``: rank 4/5 is channel-first, else channel-last."""
        if z.ndim < 2:
            raise QuantizerError(f"expected at least 2 dims (N, D), got shape {tuple(z.shape)}")
        if channel_last is None:
            channel_last = z.ndim not in (4, 5)
        if channel_last:
            return cls(tuple(z.shape[:-1]), z.shape[-1], True)
        return cls((z.shape[0], *z.shape[2:]), z.shape[1], False)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def to_tokens(self, z: Tensor) -> Tensor:
        """(B, D, *S) or (*G, D) -> (N, D), rows in row-major (b, *s) order."""
        if not self.channel_last:
            z = z.movedim(1, -1)  # (B, D, *S) -> (B, *S, D)
        return z.reshape(-1, self.dim)

    def from_tokens(self, flat: Tensor) -> Tensor:
        """(N, D') -> the input layout with D' channels (D' may differ from D)."""
        out = flat.reshape(*self.grid, flat.shape[-1])
        if not self.channel_last:
            out = out.movedim(-1, 1).contiguous()  # (B, *S, D) -> (B, D, *S)
        return out

    def restore_indices(self, idx: Tensor) -> Tensor:
        """(N,) -> grid, or (N, L) -> (*grid, L)."""
        return idx.reshape(*self.grid, *idx.shape[1:])

    @staticmethod
    def for_indices(indices: Tensor, num_codebooks: int, channel_last: bool | None) -> Layout:
        """The layout that ``indices_to_codes`` should produce for these indices.

        Mirrors ``Layout.of``: an index grid of rank 3 or 4, i.e. (B, H, W) or (B, T, H, W),
        decodes channel-first unless ``channel_last=True``; rank 1 or 2 decodes channel-last.
        """
        grid = tuple(indices.shape[:-1]) if num_codebooks > 1 else tuple(indices.shape)
        if not grid:
            raise QuantizerError(f"indices need at least 1 grid dim, got {tuple(indices.shape)}")
        if channel_last is None:
            channel_last = len(grid) not in (3, 4)
        return Layout(grid, 0, channel_last)


def check_indices(indices: Tensor, codebook_size: int) -> Tensor:
    """Validate an index tensor (integer dtype, values in [0, codebook_size)) and return int64."""
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
        raise QuantizerError(f"indices must be an integer tensor, got {indices.dtype}")
    indices = indices.long()
    if indices.numel():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= codebook_size:
            raise QuantizerError(
                f"indices must lie in [0, {codebook_size}), found values in [{lo}, {hi}]"
            )
    return indices


def level_count(levels: int | None, num_levels: int) -> int:
    """The number of leading levels to run: ``levels`` (1..L) or all L when None."""
    if levels is None:
        return num_levels
    if not 1 <= levels <= num_levels:
        raise QuantizerError(f"levels must be in 1..{num_levels}, got {levels}")
    return levels


def level_columns(indices: Tensor, num_levels: int) -> Tensor:
    """Indices of the first k <= L levels as (..., k): a trailing axis added when L = 1."""
    if num_levels == 1:
        indices = indices.unsqueeze(-1)
    if indices.ndim < 2 or not 1 <= indices.shape[-1] <= num_levels:
        raise QuantizerError(
            f"expected indices (..., k) with k in 1..{num_levels} levels, "
            f"got shape {tuple(indices.shape)}"
        )
    return indices


def codebook_metrics(indices: Tensor, codebook_size: int, prefix: str = "") -> dict[str, Tensor]:
    """Usage statistics of a batch of indices over one codebook.

    Args:
        indices: integer tensor of any shape, values in [0, codebook_size).
        codebook_size: K.
        prefix: prepended to each key (e.g. ``"rvq_l0_"``).

    Returns:
        ``perplexity`` = exp(H) with H the natural-log entropy of the empirical code
        distribution (= 2**bits_per_index), ``usage`` = fraction of the K codes hit at least
        once, ``bits_per_index`` = H / ln 2. Float32 scalars, detached. An empty batch gives
        perplexity 1, usage 0, bits 0.
    """
    flat = indices.detach().reshape(-1).long()
    counts = torch.bincount(flat, minlength=codebook_size).float()
    total = counts.sum().clamp_min(1.0)
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return {
        f"{prefix}perplexity": entropy.exp(),
        f"{prefix}usage": (counts > 0).float().mean(),
        f"{prefix}bits_per_index": entropy / math.log(2.0),
    }


class Quantizer(nn.Module):
    """Base class of the core quantizers (not of the compatibility wrappers).

    Subclasses set ``kind`` (class variable), ``dim`` (input channels), ``codebook_size``
    (vocabulary of one index position) and ``num_codebooks`` (L; indices get a trailing axis
    when L > 1), and implement ``forward`` and ``indices_to_codes``. The optional hooks below
    default to "not supported" (a typed error, 0, None or a no-op); a subclass overrides those
    it supports, and callers use them without probing (`hasattr` / `getattr`):
    ``residual`` + `check_levels`, ``beam_search`` + `set_beam_width`, `init_from_samples`,
    `reseed_dead_codes`, `set_temperature`, ``bit_order``, ``levels``.
    """

    kind: ClassVar[str]
    """The name model configs and index files use (a key of `vqtok.quantizers.KINDS`); each
    core class sets its own."""
    dim: int
    codebook_size: int
    num_codebooks: int = 1
    restricts_search: ClassVar[bool] = False
    """Whether `restricted_indices` searches only the allowed codes (else it checks them)."""
    residual: ClassVar[bool] = False
    """Whether the first k of the L levels are a coarser code (``levels=k``, `check_levels`)."""
    beam_search: ClassVar[bool] = False
    """Whether `set_beam_width` can widen the search to a beam (residual VQ)."""
    beam_width: int = 1
    """Paths of the search outside training (1: greedy)."""
    bit_order: str | None = None
    """LFQ index packing, ``"msb"`` or ``"lsb"``; None for quantizers without sign bits."""
    levels: Sequence[int] | None = None
    """FSQ: the values of each latent channel; None for the other kinds."""

    @property
    def vocab_size(self) -> int:
        """Number of distinct values one index position can take (= codebook_size)."""
        return self.codebook_size

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """The values an index of each codebook / level can take (L entries)."""
        return (self.vocab_size,) * self.num_codebooks

    def restricted_indices(
        self, z: Tensor, allowed: Sequence[Tensor], channel_last: bool | None = None
    ) -> Tensor:
        """Indices of ``z`` when codebook / level l may only use the codes ``allowed[l]``.

        Inference only: no loss, no codebook update. Quantizers with a search over a codebook
        (``restricts_search``) look only at the allowed codes, level by level, so every index
        is an allowed one and residual levels quantize what the allowed codes left. The others
        (LFQ, FSQ: no search to restrict) quantize as usual and refuse a code that is not
        allowed, never substituting one silently.

        Args:
            z: latents in any layout ``forward`` takes.
            allowed: L int64 tensors (U_l,) of distinct ids in [0, vocab_sizes[l]), usually
                sorted (a remap file's used sets, `vqtok.quantizers.remap.UsedSets`).
            channel_last: see `Layout.of`.

        Returns:
            int64 compact ids of ``forward``'s index shape: j at level l means
            ``allowed[l][j]``, so level l's values lie in [0, U_l).

        Raises:
            QuantizerError: ``allowed`` does not fit the quantizer.
            RemapError: (quantizers that do not restrict their search) a code outside its
                level's allowed set; the message names the level.
        """
        levels = self.check_allowed(allowed, z.device)
        indices = self(z, channel_last).indices
        return UsedSets(tuple(levels)).to_compact(indices)

    def check_allowed(self, allowed: Sequence[Tensor], device: torch.device) -> list[Tensor]:
        """``allowed`` as L int64 tensors on ``device``, checked against `vocab_sizes`.

        Raises:
            QuantizerError: another number of levels, or a level that is not a non-empty 1-D
                integer tensor of ids in range.
        """
        sizes = self.vocab_sizes
        if len(allowed) != len(sizes):
            raise QuantizerError(
                f"expected {len(sizes)} allowed code sets (one per codebook / level), "
                f"got {len(allowed)}"
            )
        levels = []
        for level, (ids, size) in enumerate(zip(allowed, sizes, strict=True)):
            ids = torch.as_tensor(ids)
            if ids.ndim != 1 or ids.numel() == 0 or ids.dtype.is_floating_point:
                raise QuantizerError(f"allowed codes of level {level} must be a non-empty 1-D "
                                     f"integer tensor, got {ids.dtype} {tuple(ids.shape)}")
            ids = check_indices(ids, size)
            levels.append(ids.to(device))
        return levels

    def nearest_allowed(
        self,
        z: Tensor,
        allowed: Sequence[Tensor],
        channel_last: bool | None,
        rows: Callable[[Tensor], Tensor],
        block_elements: int | None = None,
    ) -> Tensor:
        """`restricted_indices` of a one-codebook nearest-code quantizer (``vq``, ``ema_vq``):
        the nearest of the allowed codes, as compact ids.

        Args:
            rows: allowed ids (U,) -> their code vectors (U, D), as the quantizer stores them.
            block_elements: the search's block size (`vqtok.quantizers.search.nearest_codes`).
        """
        from vqtok.quantizers.search import BLOCK_ELEMENTS, nearest_codes

        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} channels, got shape {tuple(z.shape)}")
        (ids,) = self.check_allowed(allowed, z.device)
        flat = layout.to_tokens(z)  # (N, D)
        found = nearest_codes(flat, rows(ids), block_elements or BLOCK_ELEMENTS)
        return layout.restore_indices(found)

    def forward(self, z: Tensor, channel_last: bool | None = None) -> QuantizerOutput:
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reseed_dead_codes(
        self,
        samples: Tensor,
        counts: Tensor,
        threshold: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Move codes used fewer than ``threshold`` times onto random recent latents.

        Runs without autograd on detached ``samples``; the quantizer's `_reseed` does the work.

        Args:
            samples: (M, dim) recent quantizer inputs (channel-last tokens), float.
            counts: how often each index was chosen since the last call (e.g.
                `CodeUsage.counts`): (codebook_size,), compact ids with a remap; residual
                quantizers take (L, K), one row per level (see their `_reseed`).
            threshold: codes with ``counts < threshold`` are re-seeded.
            generator: optional, on ``samples``' device, for reproducible choices.

        Returns:
            The number of codes re-seeded; 0 for quantizers without a learned codebook
            (LFQ, FSQ).
        """
        return self._reseed(samples.detach(), counts, threshold, generator)

    def _reseed(
        self, samples: Tensor, counts: Tensor, threshold: float, generator: torch.Generator | None
    ) -> int:
        """`reseed_dead_codes`' work (no autograd, ``samples`` detached); this default, for
        quantizers without a learned codebook, re-seeds nothing and returns 0."""
        return 0

    def check_levels(self, levels: int | None) -> int:
        """The number of leading levels to run: ``levels`` (1..L) or all L when None.

        Raises:
            QuantizerError: a quantizer without residual levels (``residual`` False), or
                ``levels`` outside 1..L.
        """
        if not self.residual:
            raise QuantizerError(f"levels needs a residual quantizer; this one is {self.kind!r}")
        return level_count(levels, self.num_codebooks)

    def set_beam_width(self, width: int) -> None:
        """Search with a beam of ``width`` paths outside training from now on (1: greedy).

        Raises:
            ConfigError: a quantizer without beam search (``beam_search`` False), or ``width``
                not an int >= 1.
        """
        if not self.beam_search:
            raise ConfigError(f"beam search needs a residual VQ quantizer; this one is "
                              f"{self.kind!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"beam width (beam_width) must be an integer >= 1, got {width!r}")
        self.beam_width = width

    def set_temperature(self, value: float) -> None:
        """Set a sampling temperature (Gumbel); quantizers without one ignore it."""

    def init_from_samples(
        self, samples: Tensor, iters: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Fit the codebook(s) to ``samples`` (M, dim) float latents before training.

        Raises:
            ConfigError: this default, for quantizers without such an initialisation.
        """
        raise ConfigError(f"quantizer {self.kind!r} has no k-means initialisation")

    def zero_loss(self, like: Tensor) -> Tensor:
        """A float32 scalar zero on ``like``'s device (the loss when there is none)."""
        return torch.zeros((), dtype=torch.float32, device=like.device)
