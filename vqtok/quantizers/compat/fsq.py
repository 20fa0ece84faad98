"""`FSQ` with the reference constructor, call signature and return structure.

For porting code written against vector-quantize-pytorch's / CogVideo's ``FSQ`` (finite scalar
quantization, Mentzer et al., arXiv 2309.15505): ``forward(z)`` returns
``(out, indices)`` with int32 indices, ``indices_to_codes`` and ``codes_to_indices`` keep the
reference layouts, and the state_dict has the same keys (``project_in``/``project_out`` only;
the level buffers are not persistent). The math is `vqtok.quantizers.fsq`'s.

Differences from the reference, all deliberate: the computation runs in float32 whatever the
input dtype (``out`` is returned in the input's dtype); digits are rounded rather than truncated
(identical where the reference is correct, see `vqtok.quantizers.fsq`); channel-last input of
any rank (..., dim) is accepted, not only (b, n, dim); ``scale`` is stored and, as in the
reference, unused; a codebook beyond int32 is refused instead of overflowing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import Layout, check_indices
from vqtok.quantizers.fsq import (
    BOUND_EPS,
    basis_tensor,
    bound,
    check_levels,
    codes_to_digits,
    digits_to_codes,
    fsq_linear,
    levels_tensor,
    quantize,
)

_INT32_MAX = 2**31 - 1


class FSQ(nn.Module):
    """Reference-compatible finite scalar quantizer.

    Args:
        levels: levels per code channel, each an int >= 2; prod(levels) <= 2**31 - 1.
        dim: input channels; defaults to len(levels) * num_codebooks (no projections).
        num_codebooks: c groups of len(levels) channels.
        keep_num_codebooks_dim: keep a trailing codebook axis on the indices; defaults to
            num_codebooks > 1 and must be True when num_codebooks > 1.
        scale: stored, unused (as in the reference).
    """

    _levels: Tensor  # (d,) int32
    _basis: Tensor  # (d,) int64 place values, first channel least significant

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        num_codebooks: int = 1,
        keep_num_codebooks_dim: bool | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        levels = check_levels(levels)
        if math.prod(levels) > _INT32_MAX:
            raise ConfigError(f"FSQ levels {levels} give more codes than int32 indices can hold")
        if num_codebooks < 1:
            raise ConfigError(f"num_codebooks must be >= 1, got {num_codebooks}")
        if keep_num_codebooks_dim is None:
            keep_num_codebooks_dim = num_codebooks > 1
        if num_codebooks > 1 and not keep_num_codebooks_dim:
            raise ConfigError("keep_num_codebooks_dim must be True when num_codebooks > 1")
        self.register_buffer("_levels", levels_tensor(levels), persistent=False)
        self.register_buffer("_basis", basis_tensor(levels), persistent=False)
        self.scale = scale
        self.codebook_dim = len(levels)
        self.num_codebooks = num_codebooks
        self.effective_codebook_dim = self.codebook_dim * num_codebooks
        self.keep_num_codebooks_dim = keep_num_codebooks_dim
        self.dim = self.effective_codebook_dim if dim is None else dim
        self.has_projections = self.dim != self.effective_codebook_dim
        self.project_in: nn.Module = nn.Identity()
        self.project_out: nn.Module = nn.Identity()
        if self.has_projections:
            self.project_in = nn.Linear(self.dim, self.effective_codebook_dim)
            self.project_out = nn.Linear(self.effective_codebook_dim, self.dim)
        self.codebook_size = math.prod(levels)

    @property
    def implicit_codebook(self) -> Tensor:
        """(codebook_size, len(levels)) float32 normalised codes, row i = index i."""
        all_indices = torch.arange(self.codebook_size, device=self._basis.device)
        return digits_to_codes(self._digits(all_indices), self._levels)

    def _digits(self, indices: Tensor) -> Tensor:
        """int64 indices (...) -> digits (..., len(levels)), digit j = idx // basis_j % L_j."""
        return torch.div(indices.unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels

    def bound(self, z: Tensor, eps: float = BOUND_EPS) -> Tensor:
        """Squash ``z`` (..., len(levels)) into (-L/2, L/2); float32."""
        return bound(z.float(), self._levels, eps)

    def quantize(self, z: Tensor) -> Tensor:
        """Bounded, straight-through rounded codes in [-1, 1]; float32."""
        return quantize(z.float(), self._levels)

    def codes_to_indices(self, zhat: Tensor) -> Tensor:
        """Normalised codes (..., len(levels)) -> int32 indices (...), first channel LSB."""
        if zhat.shape[-1] != self.codebook_dim:
            raise QuantizerError(
                f"codes need a last axis of {self.codebook_dim}, got shape {tuple(zhat.shape)}"
            )
        digits = codes_to_digits(zhat, self._levels)
        return (digits * self._basis).sum(-1).to(torch.int32)

    def indices_to_codes(self, indices: Tensor, project_out: bool = True) -> Tensor:
        """Indices -> codes, with the reference layout rules.

        Args:
            indices: integer tensor in [0, codebook_size): (b, n) or (n,), or an image/video
                grid (b, h, w) / (b, f, h, w); with a trailing codebook axis c when
                ``keep_num_codebooks_dim``. Rank >= 3 (+1 with the codebook axis) means
                image/video.
            project_out: apply ``project_out`` (to ``dim`` channels) or return code space.

        Returns:
            float32 codes: channel-last (..., channels) for sequences, channel-first
            (b, channels, ...) for images/videos.
        """
        is_img_or_video = indices.ndim >= 3 + int(self.keep_num_codebooks_dim)
        indices = check_indices(indices, self.codebook_size)
        if not self.keep_num_codebooks_dim:
            indices = indices.unsqueeze(-1)
        # (..., c) -> (..., c, d) digits -> codes -> (..., c*d)
        codes = digits_to_codes(self._digits(indices), self._levels).flatten(-2)
        if project_out:
            codes = fsq_linear(codes, self.project_out)
        if is_img_or_video:
            codes = codes.movedim(-1, 1)  # (b, ..., d) -> (b, d, ...)
        return codes

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantize ``z``.

        Args:
            z: (b, dim, h, w) / (b, dim, f, h, w) (any rank >= 4 is channel-first), or
                channel-last (..., dim).

        Returns:
            ``(out, indices)``: ``out`` in z's layout and dtype (straight-through);
            ``indices`` int32 of z's shape without the channel axis, plus a trailing
            num_codebooks axis when ``keep_num_codebooks_dim``.
        """
        layout = Layout.of(z, channel_last=z.ndim < 4)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} input channels, got {layout.dim}")
        flat = fsq_linear(layout.to_tokens(z).float(), self.project_in)
        # (N, c*d) -> (N, c, d)
        codes = self.quantize(flat.reshape(-1, self.num_codebooks, self.codebook_dim))
        indices = self.codes_to_indices(codes)  # (N, c)
        out = fsq_linear(codes.flatten(1), self.project_out)
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)
        return layout.from_tokens(out).to(z.dtype), layout.restore_indices(indices)

    def extra_repr(self) -> str:
        return (
            f"levels={self._levels.tolist()}, dim={self.dim}, num_codebooks={self.num_codebooks}"
        )
