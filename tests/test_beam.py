"""Beam search over residual levels (`vqtok.quantizers.beam`): optimality when the beam holds
every path, never worse than greedy on average, ties, and independence of batch and block."""

from __future__ import annotations

import itertools

import pytest
import torch

from vqtok.errors import QuantizerError
from vqtok.quantizers.beam import beam_codes


def _error(x: torch.Tensor, books: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    total = sum(book.double()[idx[:, level]] for level, book in enumerate(books))
    return (x.double() - total).pow(2).sum(1)


def _greedy(x: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
    r, out = x.double(), []
    for book in books:
        idx = torch.cdist(r, book.double()).argmin(1)
        out.append(idx)
        r = r - book.double()[idx]
    return torch.stack(out, 1)


def test_a_beam_holding_every_path_finds_the_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    books = [torch.randn(4, 3, generator=g) / (level + 1) for level in range(3)]
    x = torch.randn(50, 3, generator=g)
    idx = beam_codes(x, books, width=16)  # 4 x 4 = 16 partial paths: nothing is pruned
    every = torch.tensor(list(itertools.product(range(4), repeat=3)))  # (64, 3)
    best = torch.stack([_error(x[i:i + 1].expand(64, 3), books, every).min()
                        for i in range(50)])
    assert torch.allclose(_error(x, books, idx), best, rtol=0, atol=1e-12)


def test_beam_beats_greedy_and_width_one_is_greedy() -> None:
    g = torch.Generator().manual_seed(1)
    books = [torch.randn(32, 8, generator=g) * 0.7**level for level in range(4)]
    x = torch.randn(2000, 8, generator=g)
    greedy = _greedy(x, books)
    assert torch.equal(beam_codes(x, books, width=1), greedy)
    errors = [_error(x, books, beam_codes(x, books, width=w)).mean() for w in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.9 * errors[0]


def test_indices_do_not_depend_on_batch_or_block() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(16, 6, generator=g)
    books = [base, base[torch.randperm(16, generator=g)] * 0.5, torch.randn(16, 6, generator=g)]
    # rows on exact ties: tokens equal to codes and midway between two codes
    x = torch.cat([torch.randn(300, 6, generator=g), base[:5], (base[:5] + base[5:10]) / 2])
    whole = beam_codes(x, books, width=5)
    assert torch.equal(beam_codes(x, books, width=5, block_rows=7), whole)
    singles = torch.cat([beam_codes(x[i:i + 1], books, width=5) for i in range(len(x))])
    assert torch.equal(singles, whole)
    shuffled = torch.randperm(len(x), generator=g)
    assert torch.equal(beam_codes(x[shuffled], books, width=5), whole[shuffled])
    assert torch.equal(beam_codes(x.half().float(), books, width=5),
                       beam_codes(x.half(), books, width=5))


def test_exact_ties_go_to_the_lowest_position() -> None:
    code = torch.tensor([[1.0, 0.0]])
    books = [torch.cat([code, code, -code]), torch.zeros(3, 2)]  # codes 0 and 1 are equal
    idx = beam_codes(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), books, width=2)
    assert idx.tolist() == [[0, 0], [2, 0]]


def test_bad_arguments_are_quantizer_errors() -> None:
    books = [torch.randn(4, 3)]
    with pytest.raises(QuantizerError, match="width"):
        beam_codes(torch.randn(2, 3), books, width=0)
    with pytest.raises(QuantizerError, match="expected tokens"):
        beam_codes(torch.randn(2, 4), books, width=2)
    with pytest.raises(QuantizerError, match="non-empty"):
        beam_codes(torch.randn(2, 3), [torch.zeros(0, 3)], width=2)
    assert beam_codes(torch.randn(0, 3), books, width=2).shape == (0, 1)
