"""Blocked nearest-neighbour search: exact argmin, ties, batch independence, dtypes."""

import pytest
import torch

import vqtok.quantizers.search as search
from vqtok.errors import QuantizerError
from vqtok.quantizers.search import nearest_codes


def exact_argmin(x, codebook):
    """Float64 brute force, ties to the lowest index (torch.argmin returns the first)."""
    d = (x.double().unsqueeze(1) - codebook.double().unsqueeze(0)).square().sum(-1)
    return d.argmin(1)


def hard_case(n=300, k=40, d=16, seed=0):
    """Codes with a large common offset (float32 cancellation), duplicates and near-duplicates."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(k, d, generator=gen)
    base[5] = base[3]  # exact duplicate: ties must go to 3
    base[9] = base[8]  # a duplicate inside one column group of 4
    base[7] = base[6] + 1e-6 * torch.randn(d, generator=gen)  # near duplicate
    codebook = base + 300.0
    # tokens near codes, so best and second best are close in relative terms
    pick = torch.randint(0, k, (n,), generator=gen)
    x = codebook[pick] + 0.01 * torch.randn(n, d, generator=gen)
    x[:10] = (codebook[3] + codebook[6]) / 2  # equidistant-ish rows
    x[40:50] = codebook[9] + 0.01 * torch.randn(10, d, generator=gen)
    mid = (codebook[0] + codebook[1]) / 2  # near-ties far below float32 resolution at 300
    x[10:40] = mid + 1e-3 * torch.randn(30, d, generator=gen)
    return x, codebook


def test_matches_float64_brute_force_on_random_data():
    gen = torch.Generator().manual_seed(1)
    x, codebook = torch.randn(200, 8, generator=gen), torch.randn(50, 8, generator=gen)
    assert torch.equal(nearest_codes(x, codebook), exact_argmin(x, codebook))


def test_exact_under_cancellation_and_ties():
    x, codebook = hard_case()
    got = nearest_codes(x, codebook)
    assert torch.equal(got, exact_argmin(x, codebook))
    assert 5 not in got.tolist() and 9 not in got.tolist()  # ties go to the lower index
    assert 8 in got.tolist()
    assert got.dtype == torch.int64


def test_plain_float32_would_get_some_of_these_wrong():
    # guards the test above: the case is hard enough that a naive float32 argmin differs
    x, codebook = hard_case()
    naive = torch.addmm(codebook.square().sum(1), x, codebook.t(), alpha=-2.0).argmin(1)
    assert not torch.equal(naive, exact_argmin(x, codebook))


@pytest.mark.parametrize("group", [4, 64])
@pytest.mark.parametrize("block", [1, 7, 64, 1000, search.BLOCK_ELEMENTS])
def test_independent_of_block_size_and_batch(block, group, monkeypatch):
    x, codebook = hard_case(n=60)
    want = exact_argmin(x, codebook)
    monkeypatch.setattr(search, "CODE_TILE", 16)  # several code tiles per row: 16, 16, 8
    monkeypatch.setattr(search, "GROUP", group)  # 4: the two-level min; 64: the plain one
    assert torch.equal(nearest_codes(x, codebook, block_elements=block), want)
    singles = torch.cat([nearest_codes(x[i : i + 1], codebook, block) for i in range(len(x))])
    assert torch.equal(singles, want)


def test_single_code_and_empty_batch():
    codebook = torch.randn(1, 4)
    assert nearest_codes(torch.randn(5, 4), codebook).tolist() == [0] * 5
    out = nearest_codes(torch.empty(0, 4), torch.randn(3, 4))
    assert out.shape == (0,) and out.dtype == torch.int64


def test_bf16_inputs_and_autocast_match_float32():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(256, 8, generator=gen).bfloat16()
    codebook = torch.randn(64, 8, generator=gen).bfloat16()
    want = nearest_codes(x.float(), codebook.float())
    assert torch.equal(nearest_codes(x, codebook), want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_codes(x.float(), codebook.float()), want)
    assert torch.equal(want, exact_argmin(x.float(), codebook.float()))


def test_no_gradient_and_errors():
    x = torch.randn(4, 3, requires_grad=True)
    assert not nearest_codes(x, torch.randn(5, 3)).requires_grad
    with pytest.raises(QuantizerError, match="codebook"):
        nearest_codes(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(QuantizerError, match="empty"):
        nearest_codes(torch.randn(4, 3), torch.randn(0, 3))
