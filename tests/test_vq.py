"""Nearest-neighbour VQ: core VectorQuantizer, VectorQuantizer2 compatibility, usage tools."""

import math

import pytest
import torch

from vqtok.errors import QuantizerError
from vqtok.quantizers.usage import CodeUsage, kmeans_init, reseed_dead_codes

# ---------------------------------------------------------------- usage statistics


def test_code_usage_accumulates_and_matches_formulas():
    usage = CodeUsage(4)
    usage.update(torch.tensor([[0, 0], [1, 1]]))
    usage.update(torch.tensor([0, 2], dtype=torch.int32))
    assert usage.counts.tolist() == [3, 2, 1, 0]
    m = usage.metrics()
    p = torch.tensor([3, 2, 1], dtype=torch.float64) / 6
    h = float(-(p * p.log()).sum())
    assert m["perplexity"] == pytest.approx(math.exp(h))
    assert m["bits_per_index"] == pytest.approx(h / math.log(2))
    assert m["usage"] == 0.75 and m["codes_used"] == 3 and m["tokens"] == 6
    with pytest.raises(QuantizerError):
        usage.update(torch.tensor([4]))


def test_code_usage_empty_and_uniform():
    usage = CodeUsage(8)
    assert usage.metrics()["perplexity"] == 1.0 and usage.metrics()["tokens"] == 0
    usage.update(torch.arange(8))
    assert usage.metrics()["perplexity"] == pytest.approx(8.0)
    assert usage.metrics()["bits_per_index"] == pytest.approx(3.0)


def test_reseed_dead_codes_in_place():
    codebook = torch.zeros(5, 2)
    counts = torch.tensor([3, 0, 1, 0, 2])
    samples = torch.tensor([[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]])
    mask = reseed_dead_codes(codebook, counts, samples, threshold=1.0,
                             generator=torch.Generator().manual_seed(0))
    assert mask.tolist() == [False, True, False, True, False]
    assert torch.equal(codebook[~mask], torch.zeros(3, 2))
    rows = {tuple(r) for r in codebook[mask].tolist()}
    assert len(rows) == 2 and rows <= {tuple(r) for r in samples.tolist()}  # distinct samples
    mask2 = reseed_dead_codes(codebook, counts, samples, threshold=2.0)
    assert mask2.tolist() == [False, True, True, True, False]
    with pytest.raises(QuantizerError, match="no samples"):
        reseed_dead_codes(codebook, counts, samples[:0])


def test_reseed_reproducible_and_parameter_safe():
    outs = []
    for _ in range(2):
        codebook = torch.nn.Parameter(torch.zeros(6, 3))
        reseed_dead_codes(codebook, torch.zeros(6), torch.randn(10, 3, generator=torch.
                          Generator().manual_seed(1)), generator=torch.Generator().manual_seed(2))
        outs.append(codebook.detach().clone())
    assert torch.equal(outs[0], outs[1])


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = (centers.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen))
    found = kmeans_init(samples, 3, iters=10, generator=torch.Generator().manual_seed(3))
    assert found.shape == (3, 2) and found.dtype == torch.float32
    # every true centre has a centroid within 0.1 (means of 50 points with sigma 0.1)
    dist = torch.cdist(centers, found)
    assert dist.min(1).values.max() < 0.1
    with pytest.raises(QuantizerError):
        kmeans_init(samples[:2], 3)
