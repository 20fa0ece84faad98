"""Residual VQ: gradient and EMA codebooks, per-level sizes, metrics, helia compatibility."""

import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.compat.helia import EmaResidualVectorQuantizer, ResidualVectorQuantizer
from vqtok.quantizers.ema import EMACodebook
from vqtok.quantizers.ema_residual import EMAResidualQuantizer
from vqtok.quantizers.residual import ResidualQuantizer

SIZES = [8, 4, 3]


def _make(cls, **kw):
    return cls(3, 3, SIZES, generator=torch.Generator().manual_seed(0), **kw)


def _manual_levels(weights, tokens):
    """Reference residual loop: per-level (r_l, idx_l, q_l) from brute-force distances."""
    r, out = tokens.float(), []
    for w in weights:
        idx = torch.cdist(r.double(), w.double()).argmin(1)
        q = w[idx]
        out.append((r, idx, q))
        r = r - q
    return out


@pytest.mark.parametrize("cls", [ResidualQuantizer, EMAResidualQuantizer])
def test_output_is_sum_of_level_codes_and_residual_recursion(cls):
    q = _make(cls).eval()
    z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    out = q(z)
    assert out.indices.shape == (2, 4, 5, 3) and out.indices.dtype == torch.int64
    weights = [q.level_weight(level).detach().clone() for level in range(3)]
    tokens = z.movedim(1, -1).reshape(-1, 3)  # (B, D, H, W) -> (B*H*W, D)
    levels = _manual_levels(weights, tokens)
    flat_idx = out.indices.reshape(-1, 3)
    for level, (r, idx, _) in enumerate(levels):
        assert torch.equal(flat_idx[:, level], idx)
        if level:  # r_{l+1} = r_l - q_l
            prev_r, _, prev_q = levels[level - 1]
            assert torch.allclose(r, prev_r - prev_q)
    total = sum(q_l for _, _, q_l in levels)
    assert torch.allclose(out.codes.movedim(1, -1).reshape(-1, 3), total, atol=1e-6)


@pytest.mark.parametrize("cls", [ResidualQuantizer, EMAResidualQuantizer])
def test_per_level_sizes_and_round_trips(cls):
    q = _make(cls).eval()
    assert q.codebook_sizes == SIZES and q.codebook_size == 8 and q.num_codebooks == 3
    assert [tuple(q.level_weight(i).shape) for i in range(3)] == [(8, 3), (4, 3), (3, 3)]
    z = torch.randn(2, 3, 2, 3, 3)  # video
    out = q(z)
    for level, k in enumerate(SIZES):
        assert out.indices[..., level].max().item() < k
    assert torch.allclose(q.indices_to_codes(out.indices), out.codes, atol=1e-6)
    levels = q.encode(z)
    assert len(levels) == 3 and all(idx.shape == (2, 2, 3, 3) for idx in levels)
    assert torch.equal(torch.stack(levels, -1), out.indices)
    assert torch.allclose(q.decode(levels), out.codes, atol=1e-6)
    bad = out.indices.clone()
    bad[0, 0, 0, 0, 2] = 3  # level 3 has only 3 codes
    with pytest.raises(QuantizerError, match=r"\[0, 3\)"):
        q.indices_to_codes(bad)


def test_single_level_has_no_trailing_axis():
    q = ResidualQuantizer(3, 1, 5).eval()
    z = torch.randn(4, 7, 3)
    out = q(z)
    assert out.indices.shape == (4, 7)
    assert torch.allclose(q.indices_to_codes(out.indices), out.codes, atol=1e-6)


@pytest.mark.parametrize("cls", [ResidualQuantizer, EMAResidualQuantizer])
def test_metrics_keys_and_values(cls):
    q = _make(cls).eval()
    out = q(torch.randn(30, 3))
    m = out.metrics
    bits, perps, usages = [], [], []
    for level, k in enumerate(SIZES, start=1):
        counts = torch.bincount(out.indices[:, level - 1], minlength=k).double()
        p = counts / counts.sum()
        h = -(p[p > 0] * torch.log2(p[p > 0])).sum().item()  # log2 entropy of the batch
        assert m[f"rvq_l{level}_bits_per_index"].item() == pytest.approx(h, abs=1e-5)
        assert m[f"rvq_l{level}_perplexity"].item() == pytest.approx(2**h, rel=1e-5)
        assert m[f"rvq_l{level}_usage"].item() == pytest.approx((counts > 0).sum().item() / k)
        bits.append(h), perps.append(2**h), usages.append((counts > 0).sum().item() / k)
    assert m["rvq_bits_per_index_sum"].item() == pytest.approx(sum(bits), abs=1e-5)
    assert m["rvq_perplexity_mean"].item() == pytest.approx(sum(perps) / 3, rel=1e-5)
    assert m["rvq_usage_mean"].item() == pytest.approx(sum(usages) / 3)
    assert list(m)[:9] == [
        f"rvq_l{level}_{key}"
        for key in ("perplexity", "usage", "bits_per_index")
        for level in (1, 2, 3)
    ]


def test_rvq_loss_value_and_gradient_split():
    q = _make(ResidualQuantizer, beta=0.25)
    z = torch.randn(6, 3, requires_grad=True)
    out = q(z)
    weights = [w.detach().clone() for w in q.codebooks]
    levels = _manual_levels(weights, z.detach())
    expected = sum(1.25 * ((r - ql) ** 2).mean() for r, _, ql in levels)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    # z: beta * commitment of every level (each r_l = z - sum of detached codes)
    z_grad = sum(0.25 * 2 * (r - ql) / r.numel() for r, _, ql in levels)
    assert torch.allclose(z.grad, z_grad, atol=1e-6)
    # codebook l: the codebook term mse(q_l, sg(r_l)) only, weight 1
    for (r, idx, ql), w in zip(levels, q.codebooks, strict=True):
        g = torch.zeros_like(w).index_add_(0, idx, 2 * (ql - r) / r.numel())
        assert torch.allclose(w.grad, g, atol=1e-6)


def test_ema_rvq_updates_each_level_from_its_residual_and_loss_is_commitment_only():
    q = _make(EMAResidualQuantizer, beta=0.5)
    assert list(q.parameters()) == []
    mirrors = []
    for cb in q.codebooks:
        twin = EMACodebook(cb.codebook_size, 3, cb.decay, cb.eps)
        twin.load_state_dict(cb.state_dict())
        mirrors.append(twin)
    z = torch.randn(10, 3, requires_grad=True)
    levels = _manual_levels([m.weight.clone() for m in mirrors], z.detach())
    out = q(z)
    for (r, idx, _), twin in zip(levels, mirrors, strict=True):
        twin.ema_step(r, idx)
    for cb, twin in zip(q.codebooks, mirrors, strict=True):
        assert torch.allclose(cb.weight, twin.weight)
        assert torch.allclose(cb.embed_avg, twin.embed_avg)
        assert torch.allclose(cb.cluster_size, twin.cluster_size)
    # loss and codes use the pre-update codebooks
    expected = sum(0.5 * ((r - ql) ** 2).mean() for r, _, ql in levels)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(out.codes, sum(ql for _, _, ql in levels), atol=1e-6)
    out.loss.backward()
    z_grad = sum(0.5 * 2 * (r - ql) / r.numel() for r, _, ql in levels)
    assert torch.allclose(z.grad, z_grad, atol=1e-6)


def test_ema_rvq_eval_does_not_update_and_bf16_input():
    q = _make(EMAResidualQuantizer).eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    out = q(z)
    assert all(torch.equal(state[k], v) for k, v in q.state_dict().items())
    assert out.codes.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.equal(out.indices, q(z.float()).indices)
    q.train()
    q(z)
    assert {b.dtype for b in q.buffers()} == {torch.float32}
    assert not torch.equal(state["codebooks.0.weight"], q.codebooks[0].weight)


def test_build_and_config_errors():
    q = build_quantizer("ema_rvq", dim=3, num_levels=2, codebook_sizes=[4, 2])
    assert isinstance(q, EMAResidualQuantizer) and q.codebook_sizes == [4, 2]
    assert isinstance(
        build_quantizer("rvq", dim=3, num_levels=2, codebook_sizes=4), ResidualQuantizer
    )
    with pytest.raises(ConfigError, match="2 codebook sizes for 3 levels"):
        ResidualQuantizer(3, 3, [4, 4])
    with pytest.raises(ConfigError):
        EMAResidualQuantizer(3, 0, 4)
    with pytest.raises(QuantizerError, match="channels"):
        q(torch.randn(5, 4))


# ---------------------------------------------------------------- helia compatibility


def test_helia_ema_call_signature_indices_and_losses():
    layer = EmaResidualVectorQuantizer(2, [6, 4], 3, beta=0.5, name="rvq")
    assert (layer.M, layer.D, layer.Ks, layer.ema_decay, layer.epsilon) == (
        2,
        3,
        [6, 4],
        0.99,
        1e-5,
    )
    assert len(layer.non_trainable_weights) == 6 and layer.trainable_weights == []
    cb = layer.core.codebooks[0]
    assert torch.equal(cb.cluster_size, torch.ones(6)) and torch.equal(cb.embed_avg, cb.weight)
    x = torch.randn(2, 5, 3)
    before = [w.clone() for w in layer.non_trainable_weights]
    y, idx = layer(x, training=False, return_indices=True)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.non_trainable_weights, strict=True))
    assert y.shape == x.shape and [i.shape for i in idx] == [(10,), (10,)]
    assert len(layer.losses) == 2
    levels = _manual_levels(before[0::3], x.reshape(-1, 3))
    for loss, (r, _, ql) in zip(layer.losses, levels, strict=True):
        assert loss.item() == pytest.approx(0.5 * ((r - ql) ** 2).mean().item(), rel=1e-5)
    decoded = layer.decode(layer.encode(x), x.shape)
    assert torch.allclose(decoded, y, atol=1e-6)
    layer(x, training=True)
    assert not torch.equal(before[0], layer.non_trainable_weights[0])
    layer.eval()
    state = [w.clone() for w in layer.non_trainable_weights]
    layer(x)  # training=None follows eval mode
    assert all(torch.equal(a, b) for a, b in zip(state, layer.non_trainable_weights, strict=True))


def test_helia_metrics_are_running_means_in_reference_order():
    layer = EmaResidualVectorQuantizer(2, 4, 3).eval()
    a, b = torch.zeros(4, 3), torch.randn(64, 3)
    ma, mb = layer.core(a).metrics, layer.core(b).metrics  # eval: fixed codebooks
    layer(a)
    layer(b)
    assert list(layer.metrics) == [
        "rvq_l1_perplexity",
        "rvq_l2_perplexity",
        "rvq_l1_usage",
        "rvq_l2_usage",
        "rvq_l1_bits_per_index",
        "rvq_l2_bits_per_index",
        "rvq_perplexity_mean",
        "rvq_usage_mean",
        "rvq_bits_per_index_sum",
    ]
    for key, value in layer.metrics.items():
        assert value == pytest.approx((ma[key].item() + mb[key].item()) / 2, rel=1e-5)
    layer.reset_metrics()
    layer(a)  # every token on one code per level: perplexity 1, usage 1/4, 0 bits
    assert layer.metrics["rvq_l1_perplexity"] == pytest.approx(1.0)
    assert layer.metrics["rvq_l2_usage"] == pytest.approx(0.25)
    assert layer.metrics["rvq_bits_per_index_sum"] == pytest.approx(0.0, abs=1e-6)


def test_helia_config_round_trip_and_validation():
    layer = EmaResidualVectorQuantizer(3, 8, 4, beta=0.3, ema_decay=0.9, epsilon=1e-4, name="q")
    config = layer.get_config()
    assert config == {
        "name": "q",
        "num_levels": 3,
        "num_embeddings": [8, 8, 8],
        "embedding_dim": 4,
        "beta": 0.3,
        "ema_decay": 0.9,
        "epsilon": 1e-4,
    }
    clone = EmaResidualVectorQuantizer.from_config({**config, "trainable": True})
    assert clone.get_config() == config
    with pytest.raises(ConfigError):
        EmaResidualVectorQuantizer(2, [4], 3)
    with pytest.raises(ConfigError):
        EmaResidualVectorQuantizer(2, 4, 3, beta=0.0)
    with pytest.raises(ConfigError, match="bogus"):
        EmaResidualVectorQuantizer(2, 4, 3, bogus=1)
    with pytest.raises(QuantizerError):
        layer(torch.randn(2, 3))


def test_helia_gradient_rvq():
    layer = ResidualVectorQuantizer(2, [5, 3], 3, beta=0.25)
    assert len(layer.trainable_weights) == 2 and layer.non_trainable_weights == []
    assert "ema_decay" not in layer.get_config()
    x = torch.randn(4, 2, 3, requires_grad=True)
    y, idx = layer(x, return_indices=True)
    sum(layer.losses).backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in layer.trainable_weights)
    assert len(idx) == 2 and idx[0].shape == (8,)
    assert torch.allclose(layer.decode(idx, x.shape), y, atol=1e-6)


@pytest.mark.parametrize("cls", [ResidualQuantizer, EMAResidualQuantizer])
def test_reseed_dead_codes_moves_unused_codes_onto_each_levels_residuals(cls):
    torch.manual_seed(0)
    q = cls(dim=3, num_levels=2, codebook_sizes=[4, 6])
    samples = torch.randn(64, 3) * 5
    counts = torch.zeros(2, 6, dtype=torch.long)
    counts[0, :2] = 10  # level 0: codes 0 and 1 alive, 2 and 3 dead; level 1: all dead
    before0 = q.level_weight(0).detach().clone()
    g = torch.Generator().manual_seed(1)
    assert q.reseed_dead_codes(samples, counts, threshold=1.0, generator=g) == 2 + 6
    w0 = q.level_weight(0).detach()
    assert torch.equal(w0[:2], before0[:2])
    # re-seeded level-0 codes are sample rows; level-1 codes are level-1 residual rows
    assert all(any(torch.equal(w0[k], row) for row in samples) for k in (2, 3))
    residuals = samples - w0[torch.cdist(samples, w0).argmin(1)]
    w1 = q.level_weight(1).detach()
    assert all(any(torch.allclose(w1[k], row) for row in residuals) for k in range(6))


@pytest.mark.parametrize("cls", [ResidualQuantizer, EMAResidualQuantizer])
def test_first_k_levels_are_a_prefix_of_the_full_code(cls):
    q = _make(cls).eval()
    z = torch.randn(2, 3, 4, 5)
    full = q(z).indices  # (2, 4, 5, 3)
    for k in (1, 2, 3):
        out = q(z, levels=k)
        assert out.indices.shape == (2, 4, 5, k)
        assert torch.equal(out.indices, full[..., :k])
        torch.testing.assert_close(q.indices_to_codes(out.indices), out.codes)
    with pytest.raises(QuantizerError, match="levels"):
        q(z, levels=4)
    with pytest.raises(QuantizerError, match="levels"):
        q.indices_to_codes(torch.zeros(2, 4, 5, 4, dtype=torch.long))


@pytest.mark.parametrize("cls", [ResidualQuantizer, EMAResidualQuantizer])
def test_residual_kmeans_init_lowers_the_error_level_by_level(cls):
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(600, 3, generator=g) * torch.tensor([4.0, 2.0, 0.5])
    q = _make(cls).eval()
    before = (q(samples).codes - samples).square().mean()
    q.init_from_samples(samples, iters=5, generator=g)
    errors = [(q(samples, levels=k).codes - samples).square().mean() for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < before / 4
