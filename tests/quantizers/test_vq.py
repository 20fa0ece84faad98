"""Nearest-neighbour VQ: core VectorQuantizer, VectorQuantizer2 compatibility, usage tools."""

import math

import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.compat.vq import VectorQuantizer2
from vqtok.quantizers.search import nearest_codes
from vqtok.quantizers.usage import CodeUsage, kmeans_init, reseed_dead_codes
from vqtok.quantizers.vq import VectorQuantizer

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
    mask = reseed_dead_codes(
        codebook, counts, samples, threshold=1.0, generator=torch.Generator().manual_seed(0)
    )
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
        reseed_dead_codes(
            codebook,
            torch.zeros(6),
            torch.randn(10, 3, generator=torch.Generator().manual_seed(1)),
            generator=torch.Generator().manual_seed(2),
        )
        outs.append(codebook.detach().clone())
    assert torch.equal(outs[0], outs[1])


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = centers.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen)
    found = kmeans_init(samples, 3, iters=10, generator=torch.Generator().manual_seed(3))
    assert found.shape == (3, 2) and found.dtype == torch.float32
    # every true centre has a centroid within 0.1 (means of 50 points with sigma 0.1)
    dist = torch.cdist(centers, found)
    assert dist.min(1).values.max() < 0.1
    with pytest.raises(QuantizerError):
        kmeans_init(samples[:2], 3)


# ---------------------------------------------------------------- core VectorQuantizer


def make_vq(dim=4, k=16, seed=0, **kw):
    torch.manual_seed(seed)
    return VectorQuantizer(dim, k, init="normal", **kw)


@pytest.mark.parametrize("legacy", [True, False])
def test_loss_value_and_gradient_split(legacy):
    beta = 0.25
    vq = make_vq(legacy=legacy, beta=beta)
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    out = vq(z)
    flat = z.detach().movedim(1, -1).reshape(-1, 4)
    zq = vq.embedding.weight.detach()[out.indices.reshape(-1)]
    mse = (flat - zq).square().mean()
    assert torch.allclose(out.loss, (1 + beta) * mse)
    assert torch.allclose(out.metrics["commitment_loss"], mse)
    out.loss.backward()
    enc_w, code_w = (1.0, beta) if legacy else (beta, 1.0)
    grad_z = enc_w * 2 * (flat - zq) / flat.numel()  # (N, D)
    assert torch.allclose(z.grad.movedim(1, -1).reshape(-1, 4), grad_z, atol=1e-7)
    grad_w = torch.zeros_like(vq.embedding.weight).index_add_(
        0, out.indices.reshape(-1), code_w * 2 * (zq - flat) / flat.numel()
    )
    assert torch.allclose(vq.embedding.weight.grad, grad_w, atol=1e-7)


def test_straight_through_gradient_is_identity():
    vq = make_vq()
    z = torch.randn(6, 4, requires_grad=True)
    out = vq(z)
    (out.codes * torch.arange(4.0)).sum().backward()
    assert torch.equal(z.grad, torch.arange(4.0).expand(6, 4))
    assert vq.embedding.weight.grad is None  # codes alone reach only the encoder


@pytest.mark.parametrize(
    "shape, channel_last, grid",
    [
        ((2, 4, 3, 5), None, (2, 3, 5)),
        ((2, 4, 2, 3, 5), None, (2, 2, 3, 5)),
        ((7, 4), None, (7,)),
        ((2, 7, 4), None, (2, 7)),
        ((2, 2, 3, 5, 4), True, (2, 2, 3, 5)),
    ],
)
def test_every_layout_round_trips(shape, channel_last, grid):
    vq = make_vq()
    z = torch.randn(shape)
    out = vq(z, channel_last=channel_last)
    assert out.indices.shape == grid and out.indices.dtype == torch.int64
    assert out.codes.shape == z.shape
    flat = z.movedim(1, -1) if (len(shape) in (4, 5) and not channel_last) else z
    want = nearest_codes(flat.reshape(-1, 4), vq.embedding.weight)
    assert torch.equal(out.indices.reshape(-1), want)
    back = vq.indices_to_codes(out.indices, channel_last=channel_last)
    assert back.shape == z.shape and torch.allclose(back, out.codes, atol=1e-6)
    assert set(out.metrics) >= {"perplexity", "usage", "bits_per_index", "codebook_loss"}


def test_indices_to_codes_rejects_bad_ids_and_wrong_channels():
    vq = make_vq()
    with pytest.raises(QuantizerError, match="lie in"):
        vq.indices_to_codes(torch.tensor([16]))
    with pytest.raises(QuantizerError, match="channels"):
        vq(torch.randn(3, 5))
    with pytest.raises(ConfigError):
        VectorQuantizer(4, 8, init="xavier")


def test_uniform_init_and_registry():
    vq = build_quantizer("vq", dim=3, codebook_size=10, beta=0.5)
    assert isinstance(vq, VectorQuantizer) and vq.embedding.weight.shape == (10, 3)
    assert vq.embedding.weight.abs().max() <= 0.1


def test_restricted_search_with_remap(tmp_path):
    used = torch.tensor([2, 5, 11])
    vq = make_vq(remap=used)
    assert vq.codebook_size == 3 and "remapper.used" in vq.state_dict()
    z = torch.randn(2, 4, 4, 4)
    out = vq(z)
    assert out.indices.min() >= 0 and out.indices.max() < 3
    flat = z.movedim(1, -1).reshape(-1, 4)
    d = torch.cdist(flat.double(), vq.embedding.weight.double()[used])
    assert torch.equal(out.indices.reshape(-1), d.argmin(1))
    assert torch.allclose(vq.indices_to_codes(out.indices), out.codes, atol=1e-6)
    with pytest.raises(QuantizerError):
        vq.indices_to_codes(torch.tensor([[[3]]]))


def test_bf16_input_same_indices_as_float32():
    vq = make_vq(dim=8, k=64)
    z = torch.randn(2, 8, 4, 4).bfloat16()
    want = vq(z.float()).indices
    out = vq(z)
    assert torch.equal(out.indices, want) and out.codes.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq(z.float()).indices, want)


def test_module_methods_reseed_and_kmeans():
    vq = make_vq(dim=2, k=4, remap=torch.tensor([0, 2, 3]))
    before = vq.embedding.weight.detach().clone()
    samples = torch.tensor([[5.0, 5.0], [6.0, 6.0]])
    n = vq.reseed_dead_codes(
        samples, torch.tensor([0, 3, 0]), 1.0, torch.Generator().manual_seed(0)
    )
    after = vq.embedding.weight.detach()
    assert n == 2
    assert torch.equal(after[[1, 2]], before[[1, 2]])  # unused row 1 and live compact id 1
    assert {tuple(after[0].tolist()), tuple(after[3].tolist())} == {(5.0, 5.0), (6.0, 6.0)}
    pts = torch.tensor([[0.0, 0.0], [0.1, 0.0], [9.0, 9.0], [9.1, 9.0], [-9.0, 9.0], [-9.1, 9.0]])
    vq.init_from_samples(pts, iters=5, generator=torch.Generator().manual_seed(1))
    got = sorted(tuple(round(v, 2) for v in r) for r in vq.searchable_codes().tolist())
    assert got == [(-9.05, 9.0), (0.05, 0.0), (9.05, 9.0)]


# ---------------------------------------------------------------- VectorQuantizer2


@pytest.mark.parametrize("remap", [False, True])
@pytest.mark.parametrize("sane", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (2, 4, 2, 3, 5), (6, 4), (2, 6, 4)])
def test_vq2_index_shapes(remap, sane, shape):
    torch.manual_seed(0)
    used = torch.arange(0, 16, 2) if remap else None
    vq = VectorQuantizer2(16, 4, 0.25, remap=used, sane_index_shape=sane, unknown_index="extra")
    z = torch.randn(shape)
    z_q, loss, (perp, enc, idx) = vq(z)
    assert perp is None and enc is None and z_q.shape == z.shape
    n = z.numel() // 4
    grid = (shape[0], *shape[2:]) if len(shape) in (4, 5) else shape[:-1]
    expect = grid if sane else ((n, 1) if remap else (n,))
    assert idx.shape == expect
    full = nearest_codes(
        z.movedim(1, -1).reshape(-1, 4) if len(shape) > 3 else z.reshape(-1, 4), vq.embedding.weight
    )
    if remap:  # unrestricted search: odd codes are unknown -> "extra" id 8
        want = torch.where(full % 2 == 0, full // 2, torch.tensor(8))
        assert torch.equal(idx.reshape(-1), want)
    else:
        assert torch.equal(idx.reshape(-1), full)


def test_vq2_loss_legacy_default_and_restricted_search():
    torch.manual_seed(0)
    vq = VectorQuantizer2(16, 4, beta=0.5)
    assert vq.legacy
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, loss, (_, _, idx) = vq(z)
    zq = vq.embedding.weight[idx].detach()
    flat = z.detach().movedim(1, -1).reshape(-1, 4)
    assert torch.allclose(loss, 1.5 * (flat - zq).square().mean())
    loss.backward()  # legacy: the encoder gets the unweighted commitment gradient
    assert torch.allclose(z.grad.movedim(1, -1).reshape(-1, 4), 2 * (flat - zq) / flat.numel())
    vq_r = VectorQuantizer2(16, 4, 0.25, remap=torch.tensor([1, 7]), restrict_search=True)
    _, _, (_, _, idx_r) = vq_r(torch.randn(50, 4))
    assert idx_r.shape == (50, 1) and set(idx_r.reshape(-1).tolist()) <= {0, 1}


def test_vq2_get_codebook_entry():
    torch.manual_seed(0)
    vq = VectorQuantizer2(16, 4, 0.25, remap=torch.arange(16), sane_index_shape=False)
    for shape in [(2, 4, 3, 5), (2, 4, 2, 3, 5)]:
        z = torch.randn(shape)
        z_q, _, (_, _, idx) = vq(z)
        cl_shape = (shape[0], *shape[2:], 4)  # channel-last, as the reference expects
        assert torch.allclose(vq.get_codebook_entry(idx, cl_shape), z_q, atol=1e-6)
    flat = vq.get_codebook_entry(torch.tensor([3, 0]), None)
    assert torch.equal(flat, vq.embedding.weight[[3, 0]])
    with pytest.raises(QuantizerError):
        vq.get_codebook_entry(torch.tensor([1, 2]), (1, 3, 1, 4))
    with pytest.raises(QuantizerError):
        vq(torch.randn(2, 4, 3, 3), temp=0.5)


def test_vq2_state_dict_uses_reference_keys():
    used = torch.tensor([0, 3, 9])
    vq = VectorQuantizer2(16, 4, 0.25, remap=used)
    sd = vq.state_dict()
    assert sorted(sd) == ["embedding.weight", "used"]
    other = VectorQuantizer2(16, 4, 0.25, remap=torch.tensor([1, 2, 4]))
    other.load_state_dict(sd)
    assert torch.equal(other.used, used)
    assert torch.equal(other.embedding.weight, vq.embedding.weight)
    plain = VectorQuantizer2(16, 4, 0.25)
    assert sorted(plain.state_dict()) == ["embedding.weight"]


def test_indices_do_not_depend_on_batch():
    vq = make_vq(dim=8, k=32)
    with torch.no_grad():  # near-duplicate codes make near-ties likely
        vq.embedding.weight[1] = vq.embedding.weight[0] + 1e-7
        z = torch.cat(
            [vq.embedding.weight[:2].mean(0, keepdim=True).repeat(5, 1), torch.randn(20, 8)]
        )
    whole = vq(z).indices
    assert torch.equal(whole, torch.cat([vq(z[i : i + 1]).indices for i in range(len(z))]))
    assert whole[:5].tolist() == [0] * 5 or whole[:5].tolist() == [1] * 5
