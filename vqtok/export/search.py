"""The quantizers' searches and code lookups as plain tensor graphs, for export (ONNX).

The library's searches (`vqtok.quantizers.search`, `vqtok.quantizers.beam`) prove a float32
distance close enough and re-score near ties in float64 one row at a time: data-dependent
control flow that a static graph cannot hold. The graphs here reach the same indices another
way: every candidate distance is computed in float64 (``||c||^2 - 2 x.c``, the codebook and its
squared norms stored in float64), which is within a few float64 ulps of the exact distance the
library's near-tie re-scoring uses, and ties go to the lowest index (ONNX ``ArgMin`` / ``TopK``
keep the first of equal values). What is carried between levels is carried as the library
carries it: the greedy residual in float32 (``r - c`` rounded as `ResidualStack` rounds it),
the beam's residuals in float64, the residual LFQ's in float32.

Supported quantizer kinds: ``vq`` and ``ema_vq`` (one codebook, with or without ``remap``),
``rvq`` and ``ema_rvq`` (greedy, or the beam search of `vqtok.quantizers.beam` with its width),
``residual_lfq``. Every module maps (N, D) float32 tokens to (N, L) int64 indices, or (N, L)
int64 indices to (N, D) float32 codes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, OptionError
from vqtok.quantizers.base import Quantizer

__all__ = [
    "SUPPORTED_KINDS",
    "BeamSearch",
    "CodeTables",
    "LFQLookup",
    "NearestSearch",
    "ResidualLFQSearch",
    "TableLookup",
    "code_lookup",
    "quantizer_search",
    "search_name",
]

SUPPORTED_KINDS = ("vq", "ema_vq", "rvq", "ema_rvq", "residual_lfq")


class CodeTables(nn.Module):
    """L codebooks held as buffers: ``c32_l`` (K_l, D) float32, ``c64_l`` the same in
    float64 and ``sq_l`` (K_l,) their float64 squared norms."""

    def __init__(self, codebooks: list[Tensor]) -> None:
        super().__init__()
        self.levels = len(codebooks)
        for level, codes in enumerate(codebooks):
            codes = codes.detach().float().cpu().clone()
            self.register_buffer(f"c32_{level}", codes)
            self.register_buffer(f"c64_{level}", codes.double())
            self.register_buffer(f"sq_{level}", codes.double().square().sum(1))

    def tables(self, level: int) -> tuple[Tensor, Tensor, Tensor]:
        """Level ``level``'s (float32 codes, float64 codes, float64 squared norms)."""
        return (self.get_buffer(f"c32_{level}"), self.get_buffer(f"c64_{level}"),
                self.get_buffer(f"sq_{level}"))


class NearestSearch(CodeTables):
    """Greedy residual nearest-code search (one level: plain VQ): (N, D) -> (N, L) int64.

    Level l takes the code nearest the float32 residual r_l (float64 distances, ties to the
    lowest index) and passes on ``r_{l+1} = r_l - c`` in float32, as `ResidualStack.encode`.
    """

    def forward(self, tokens: Tensor) -> Tensor:
        r = tokens.float()
        found = []
        for level in range(self.levels):
            c32, c64, sq = self.tables(level)
            # ||r - c||^2 - ||r||^2 = ||c||^2 - 2 r.c: (N, K) float64
            idx = (sq - 2.0 * (r.double() @ c64.T)).argmin(dim=1)
            r = r - c32[idx]
            found.append(idx)
        return torch.stack(found, dim=1)


class BeamSearch(CodeTables):
    """`vqtok.quantizers.beam.beam_codes` as a graph: (N, D) -> (N, L) int64.

    After every level the ``width`` (beam, code) extensions with the lowest float64 error are
    kept, ties to the lowest position, listed in ascending position order; the last level
    keeps the single best path. Residuals are float64.
    """

    def __init__(self, codebooks: list[Tensor], width: int) -> None:
        super().__init__(codebooks)
        if width < 1:
            raise ConfigError(f"beam width must be >= 1, got {width}")
        self.width = width

    def forward(self, tokens: Tensor) -> Tensor:
        n, d = tokens.shape
        res = tokens.double().unsqueeze(1)  # (N, B, D) residual of each kept path; B = 1
        paths = tokens.new_zeros((n, 1, 0), dtype=torch.long)
        beams = 1
        for level in range(self.levels):
            _, c64, sq = self.tables(level)
            k = c64.shape[0]
            keep = min(1 if level == self.levels - 1 else self.width, beams * k)
            # ||r - c||^2 = ||r||^2 + ||c||^2 - 2 r.c for every path and code: (N, B * K)
            err = (res.square().sum(2, keepdim=True) + sq - 2.0 * (res @ c64.T))
            err = err.reshape(n, beams * k)
            if keep == beams * k:  # everything is kept: no choice to make
                chosen = torch.arange(keep, device=tokens.device).expand(n, keep)
            else:
                chosen = err.topk(keep, dim=1, largest=False, sorted=True).indices
                chosen = chosen.sort(dim=1).values  # ascending (beam, code), as the library
            beam, code = chosen // k, chosen % k  # (N, keep) each
            res = res.gather(1, beam.unsqueeze(2).expand(n, keep, d)) - c64[code]
            paths = torch.cat(
                [paths.gather(1, beam.unsqueeze(2).expand(n, keep, level)), code.unsqueeze(2)],
                dim=2,
            )
            beams = keep
        return paths[:, 0]


class ResidualLFQSearch(nn.Module):
    """`vqtok.quantizers.residual_lfq.ResidualLFQ` in eval: (N, D) -> (N, L) int64.

    Level l: ``h = W_in r + b_in`` (float32), index = the packed bits [h > 0], signs
    ``+-s`` mapped back by ``W_out``, ``r <- r - y``.
    """

    bit_weights: Tensor

    def __init__(self, quantizer: Any) -> None:
        super().__init__()
        self.levels = int(quantizer.num_levels)
        self.scale = float(quantizer.settings.scale)
        weights = [2 ** (quantizer.bits - 1 - j) for j in range(quantizer.bits)]
        if quantizer.bit_order == "lsb":
            weights = weights[::-1]
        self.register_buffer("bit_weights", torch.tensor(weights, dtype=torch.long))
        pairs = [quantizer.maps(level) for level in range(self.levels)]
        self.into = nn.ModuleList(_float_copy(into) for into, _ in pairs)
        self.back = nn.ModuleList(_float_copy(back) for _, back in pairs)

    def forward(self, tokens: Tensor) -> Tensor:
        r = tokens.float()
        found = []
        for into, back in zip(self.into, self.back, strict=True):
            on = into(r) > 0  # (N, d) the level's bits
            found.append((on.long() * self.bit_weights).sum(1))
            r = r - back(torch.where(on, self.scale, -self.scale))
        return torch.stack(found, dim=1)


class TableLookup(nn.Module):
    """Codes of indices by table: (N, L) int64 -> (N, D) float32, the sum over levels."""

    def __init__(self, codebooks: list[Tensor]) -> None:
        super().__init__()
        self.levels = len(codebooks)
        for level, codes in enumerate(codebooks):
            self.register_buffer(f"c32_{level}", codes.detach().float().cpu().clone())

    def forward(self, indices: Tensor) -> Tensor:
        total = self.get_buffer("c32_0")[indices[:, 0]]
        for level in range(1, self.levels):
            total = total + self.get_buffer(f"c32_{level}")[indices[:, level]]
        return total


class LFQLookup(nn.Module):
    """Residual LFQ codes of indices: (N, L) int64 -> (N, D) float32 (``indices_to_codes``)."""

    bit_weights: Tensor

    def __init__(self, search: ResidualLFQSearch) -> None:
        super().__init__()
        self.scale = search.scale
        self.register_buffer("bit_weights", search.bit_weights.clone())
        self.backs = search.back

    def forward(self, indices: Tensor) -> Tensor:
        total: Tensor | None = None
        for level, back in enumerate(self.backs):
            on = (indices[:, level : level + 1] & self.bit_weights) != 0  # (N, d)
            y = back(torch.where(on, self.scale, -self.scale))
            total = y if total is None else total + y
        assert total is not None
        return total


def _float_copy(layer: nn.Linear) -> nn.Linear:
    """A float32 copy of one of a residual LFQ level's maps, without gradients."""
    copy = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        copy.weight.copy_(layer.weight.float())
        copy.bias.copy_(layer.bias.float())
    return copy.requires_grad_(False)


def _codebooks(quantizer: Quantizer, kind: str) -> list[Tensor]:
    """The searchable codebooks, one (K_l, D) per level, in index order (compact ids of a
    ``remap`` option index into the used rows)."""
    q: Any = quantizer
    if kind == "vq":
        return [q.searchable_codes()]
    if kind == "ema_vq":
        weight = q.codebook.weight
        return [weight if q.remapper is None else weight[q.remapper.used.to(weight.device)]]
    return [q.level_weight(level) for level in range(q.num_levels)]


def _check_kind(kind: str) -> None:
    if kind not in SUPPORTED_KINDS:
        raise ConfigError(f"ONNX export supports the quantizers {', '.join(SUPPORTED_KINDS)}; "
                          f"this model's is {kind!r}")


def quantizer_search(quantizer: Quantizer, kind: str, beam: int | None = None) -> nn.Module:
    """The search graph of a model's quantizer: (N, D) float32 -> (N, L) int64.

    Args:
        quantizer: the model's quantizer (``model.quantizer``).
        kind: its kind name (``config.quantizer``).
        beam: residual VQ: the beam width (1: greedy); None: the quantizer's ``beam_width``.

    Raises:
        ConfigError: a kind without an export graph. OptionError: ``beam`` on a model without
            residual VQ levels, or not an int >= 1.
    """
    _check_kind(kind)
    if beam is not None and (kind not in ("rvq", "ema_rvq") or isinstance(beam, bool)
                             or not isinstance(beam, int) or beam < 1):
        why = ("an integer >= 1" if kind in ("rvq", "ema_rvq") else
               f"a residual VQ model; this one's quantizer is {kind!r}")
        raise OptionError("--beam", f"beam search needs {why}, got beam={beam!r}")
    if kind == "residual_lfq":
        return ResidualLFQSearch(quantizer)
    width = quantizer.beam_width if beam is None else beam
    books = _codebooks(quantizer, kind)
    return NearestSearch(books) if width == 1 else BeamSearch(books, width)


def code_lookup(quantizer: Quantizer, kind: str, search: nn.Module) -> nn.Module:
    """The decode-side graph: (N, L) int64 indices -> (N, D) float32 codes, the sum of the
    levels' codes as ``quantizer.indices_to_codes``."""
    _check_kind(kind)
    if isinstance(search, ResidualLFQSearch):
        return LFQLookup(search)
    return TableLookup(_codebooks(quantizer, kind))


def search_name(search: nn.Module) -> str:
    """How a search graph searches, for the export's description: greedy / beam W / signs."""
    if isinstance(search, BeamSearch):
        return f"beam {search.width}"
    if isinstance(search, ResidualLFQSearch):
        return "signs"
    return "greedy"
