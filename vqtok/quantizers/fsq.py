"""Finite scalar quantization (FSQ): round each channel of a bounded latent to a few levels.

Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv 2309.15505. There is no
learned codebook: channel j of a (projected) latent is squashed by ``tanh`` into L_j levels and
rounded with a straight-through gradient, and the implicit codebook is the grid of all
prod(L) combinations. No auxiliary loss.

The arithmetic follows the reference (lucidrains' vector-quantize-pytorch FSQ, as copied into
CogVideo and Cosmos) to the letter, so indices match it bit for bit:

- ``half_l = (L - 1)(1 + 1e-3) / 2``, ``offset = 0.5`` for even L else 0,
  ``shift = atanh(offset / half_l)``, ``bounded = tanh(z + shift) * half_l - offset``;
- ``code = round_st(bounded) / (L // 2)``, so codes lie in [-1, 1] (even L: asymmetric,
  L = 4 gives {-1, -0.5, 0, 0.5});
- ``digit = code * (L // 2) + L // 2`` in [0, L) and ``index = sum_j digit_j * basis_j`` with
  ``basis = cumprod([1, L_0, L_1, ...])``: the FIRST channel is the LEAST significant digit.

Two deliberate differences, neither visible where the reference is correct: digits are rounded
to integers (the reference truncates ``code * (L // 2) + L // 2`` to int32, which for some
L >= 26 lands one below the true digit and makes two codes share an index), and the index sum
runs in int64 (the reference sums in float32, inexact beyond 2**24 codes). Everything runs in
float32 whatever the input or parameter dtype.
"""

from __future__ import annotations

import math
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

# The reference's margin that keeps tanh's range strictly inside the outermost levels.
BOUND_EPS = 1e-3


def check_levels(levels: Sequence[int]) -> list[int]:
    """Validate FSQ levels (a non-empty list of ints >= 2) and return them as a list."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ConfigError(f"FSQ levels must be a non-empty list of ints, got {levels!r}")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int) or level < 2:
            raise ConfigError(f"every FSQ level must be an int >= 2, got {list(levels)!r}")
        out.append(level)
    return out


def levels_tensor(levels: Sequence[int]) -> Tensor:
    """(d,) int32 levels, the dtype the reference buffers use."""
    return torch.tensor(list(levels), dtype=torch.int32)


def basis_tensor(levels: Sequence[int]) -> Tensor:
    """(d,) int64 mixed-radix place values ``cumprod([1, L_0, ..., L_{d-2}])``."""
    places = [1]
    for level in list(levels)[:-1]:
        places.append(places[-1] * level)
    return torch.tensor(places, dtype=torch.int64)


def bound(z: Tensor, levels: Tensor, eps: float = BOUND_EPS) -> Tensor:
    """Squash float32 ``z`` (..., d) into (-L/2, L/2) so rounding gives exactly L values."""
    half_l = (levels - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = (offset / half_l).atanh()
    return (z + shift).tanh() * half_l - offset


def quantize(z: Tensor, levels: Tensor) -> Tensor:
    """Bounded, rounded (straight-through) and normalised codes in [-1, 1], shape of ``z``."""
    bounded = bound(z, levels)
    rounded = bounded + (bounded.round() - bounded).detach()
    return rounded / (levels // 2)


def codes_to_digits(codes: Tensor, levels: Tensor) -> Tensor:
    """Normalised codes (..., d) -> int64 digits in [0, L) (rounded, see module docstring)."""
    half_width = levels // 2
    return (codes.detach().float() * half_width + half_width).round().long()


def digits_to_codes(digits: Tensor, levels: Tensor) -> Tensor:
    """Integer digits (..., d) in [0, L) -> float32 normalised codes, the exact inverse."""
    half_width = levels // 2
    return (digits - half_width) / half_width


def fsq_linear(x: Tensor, layer: nn.Module) -> Tensor:
    """Apply an ``nn.Linear`` (or Identity) to ``x`` in float32.

    Whatever dtype the module was cast to, and with autocast off, so a bf16 context cannot
    move a latent across a rounding boundary and change an index.
    """
    if not isinstance(layer, nn.Linear):
        return x.float()
    bias = None if layer.bias is None else layer.bias.float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), bias)


class FiniteScalarQuantizer(Quantizer):
    """FSQ with the uniform vqtok contract (kind ``"fsq"``).

    Args:
        dim: input channels D. When D != len(levels) * num_codebooks, a Linear projects in to
            the code channels and another projects back out (``project_in``/``project_out``).
        levels: levels per code channel, e.g. [8, 5, 5, 5] (1000 codes) or Cosmos'
            [8, 8, 8, 5, 5, 5] (64 000 codes); each an int >= 2.
        num_codebooks: L groups of ``len(levels)`` channels, each quantized on the same
            grid; indices get a trailing axis of length L when L > 1.

    Attributes:
        codebook_size: prod(levels), the vocabulary of one index position.
    """

    kind = "fsq"

    _levels: Tensor  # (d,) int32
    _basis: Tensor  # (d,) int64

    def __init__(self, dim: int, levels: Sequence[int], num_codebooks: int = 1) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        if num_codebooks < 1 or dim < 1:
            raise ConfigError(
                f"FSQ needs dim >= 1 and num_codebooks >= 1, got {dim} and {num_codebooks}"
            )
        self.dim = dim
        self.num_codebooks = num_codebooks
        self.codebook_dim = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        code_channels = self.codebook_dim * num_codebooks
        self.has_projections = dim != code_channels
        self.project_in: nn.Module = nn.Identity()
        self.project_out: nn.Module = nn.Identity()
        if self.has_projections:
            self.project_in = nn.Linear(dim, code_channels)
            self.project_out = nn.Linear(code_channels, dim)
        # Integer buffers are never cast by module.to(dtype); non-persistent like the reference.
        self.register_buffer("_levels", levels_tensor(self.levels), persistent=False)
        self.register_buffer("_basis", basis_tensor(self.levels), persistent=False)

    def forward(self, z: Tensor, channel_last: bool | None = None) -> QuantizerOutput:
        """Quantize ``z``.

        Args:
            z: (B, D, H, W), (B, D, T, H, W), or channel-last (N, D) / (B, N, D); any float
                dtype (computed in float32).
            channel_last: force the layout, see `Layout.of`.

        Returns:
            `QuantizerOutput`: codes in z's layout and dtype (straight-through in training);
            int64 indices in [0, prod(levels)) of shape grid (+ (L,) for L > 1 codebooks);
            loss 0; metrics perplexity, usage, bits_per_index.
        """
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} input channels, got {layout.dim}")
        flat = fsq_linear(layout.to_tokens(z).float(), self.project_in)
        # (N, L*d) -> (N, L, d): each codebook owns a contiguous block of channels
        grouped = flat.reshape(-1, self.num_codebooks, self.codebook_dim)
        codes = quantize(grouped, self._levels)
        indices = self.codes_to_indices(codes)  # (N, L)
        out = fsq_linear(codes.reshape(codes.shape[0], -1), self.project_out)
        if self.num_codebooks == 1:
            indices = indices.squeeze(-1)
        indices = layout.restore_indices(indices)
        metrics = codebook_metrics(indices, self.codebook_size)
        codes_out = layout.from_tokens(out).to(z.dtype)
        return QuantizerOutput(codes_out, indices, self.zero_loss(z), metrics)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Normalised codes (..., len(levels)) -> int64 indices (...), first channel LSB."""
        digits = codes_to_digits(codes, self._levels)
        return (digits * self._basis).sum(-1)

    def indices_to_digits(self, indices: Tensor) -> Tensor:
        """int64 indices (...) -> digits (..., len(levels)), digit j = idx // basis_j % L_j."""
        return torch.div(indices.unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """The exact inverse of ``forward``'s hard path.

        Args:
            indices: integer tensor of ``forward``'s index shape, values in [0, prod(levels)).
            channel_last: ``None`` decodes an index grid of rank 3/4 ((B, H, W), (B, T, H, W))
                channel-first, other ranks channel-last (see `Layout.for_indices`).

        Returns:
            float32 codes with D channels (after ``project_out``) in the chosen layout.
        """
        indices = check_indices(indices, self.codebook_size)
        layout = Layout.for_indices(indices, self.num_codebooks, channel_last)
        # grid (+ (L,)) -> (N, L) -> codes (N, L, d) -> (N, L*d)
        flat = indices.reshape(-1, self.num_codebooks)
        codes = digits_to_codes(self.indices_to_digits(flat), self._levels)
        out = fsq_linear(codes.reshape(flat.shape[0], -1), self.project_out)
        return layout.from_tokens(out)

    @torch.no_grad()
    def init_from_samples(
        self, samples: Tensor, iters: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Fit both projections to ``samples`` (M, D) latents in closed form, so every code
        channel starts out spread over all its levels.

        ``project_in`` takes the principal directions of the centred latents (the widest to the
        channel with the most levels), each scaled by the gain that maximises the entropy of
        its digits on the samples; ``project_out`` is the least-squares fit of the latents from
        the resulting codes. ``iters`` and ``generator`` are unused (nothing iterates or draws);
        they keep the signature `vqtok.train.data_init.init_codebooks` calls.

        Raises:
            ConfigError: without projections (D == code channels) there is nothing to fit.
        """
        if not isinstance(self.project_in, nn.Linear) or not isinstance(
            self.project_out, nn.Linear
        ):
            raise ConfigError("quantizer 'fsq' without projections has nothing to fit to samples")
        z = samples.detach().float().cpu()  # (M, D); fitted on the CPU, copied to the device
        levels = self._levels.cpu()
        mean = z.mean(0)
        _, _, vh = torch.linalg.svd(z - mean, full_matrices=False)
        channels = self.codebook_dim * self.num_codebooks
        # the k-th widest direction goes to the channel with the k-th most levels
        channel_levels = levels.repeat(self.num_codebooks)  # (L*d,)
        order = sorted(range(channels), key=lambda c: -int(channel_levels[c]))
        directions = torch.zeros(channels, z.shape[1])
        found = min(channels, vh.shape[0])  # fewer when D < L*d: the rest stay zero
        directions[order[:found]] = vh[:found]
        coords = (z - mean) @ directions.T  # (M, L*d)
        scale = coords.std(0).clamp_min(1e-6)
        gains = torch.tensor([best_gain(coords[:, c] / scale[c], int(channel_levels[c]))
                              for c in range(channels)])
        weight = directions * (gains / scale)[:, None]  # (L*d, D)
        bias = -(weight @ mean)
        codes = quantize((z @ weight.T + bias).reshape(-1, self.num_codebooks, self.codebook_dim),
                         levels)
        design = torch.cat([codes.reshape(z.shape[0], -1), torch.ones_like(z[:, :1])], dim=1)
        fit = torch.linalg.lstsq(design, z).solution  # (L*d + 1, D)
        self.project_in.weight.copy_(weight)
        self.project_in.bias.copy_(bias)
        self.project_out.weight.copy_(fit[:-1].T)
        self.project_out.bias.copy_(fit[-1])

    @property
    def implicit_codebook(self) -> Tensor:
        """(prod(levels), len(levels)) float32: row i holds the normalised code of index i."""
        all_indices = torch.arange(self.codebook_size, device=self._basis.device)
        return digits_to_codes(self.indices_to_digits(all_indices), self._levels)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}, num_codebooks={self.num_codebooks}"


def best_gain(x: Tensor, level: int, candidates: int = 64) -> float:
    """The gain g in [0.05, 5] whose digits of ``g * x`` have the most entropy (perplexity).

    Args:
        x: (M,) float32 standardised coordinates (zero mean, unit std).
        level: L, the channel's number of levels.
    """
    levels = levels_tensor([level])
    best, best_perplexity = 1.0, 0.0
    for g in torch.logspace(math.log10(0.05), math.log10(5.0), candidates).tolist():
        digits = codes_to_digits(quantize(g * x[:, None], levels), levels)  # (M, 1) in [0, L)
        perplexity = float(codebook_metrics(digits, level)["perplexity"])
        if perplexity > best_perplexity:
            best, best_perplexity = g, perplexity
    return best
