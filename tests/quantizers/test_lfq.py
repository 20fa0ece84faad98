"""Lookup-free quantization: bit order, layouts, exact entropies, gradients, dtypes, compat API."""

import math

import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import LFQ, LookupFreeQuantizer, build_quantizer
from vqtok.quantizers.compat.lfq import LossBreakdown, Return
from vqtok.quantizers.entropy import (
    REFERENCE_CLAMP,
    TINY,
    EntropySettings,
    bit_logits,
    codebook_entropy,
    mean_code_distribution,
    naive_entropies,
    per_sample_entropy,
)
from vqtok.quantizers.lfq import pack_bits, unpack_codes, usage_metrics


def naive_terms(h, tau, scale=1.0, clamp=TINY):
    """Per-sample and codebook entropy through the full softmax over 2^d codes."""
    return naive_entropies(h, tau, scale, clamp)


def exact_terms(h, tau, scale=1.0, chunk=4096, mode="exact", group_bits=9, clamp=TINY):
    settings = EntropySettings(tau, scale, mode, group_bits, chunk, clamp)
    a = bit_logits(h, tau, scale)
    return per_sample_entropy(a), codebook_entropy(a, settings)


# --- bit order and layouts -------------------------------------------------------------


def test_msb_bit_order_and_zero_is_bit_zero():
    q = LookupFreeQuantizer(dim=4, codebook_size=16).eval()
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 0.5, 0.5, 0.5]])
    out = q(x)
    # index = sum_j [x_j > 0] 2^(d-1-j): first channel is the most significant bit
    assert out.indices.tolist() == [8 + 1, 0, 4 + 2 + 1]
    assert torch.equal(out.codes, torch.where(x > 0, 1.0, -1.0))


def test_lsb_bit_order():
    q = LookupFreeQuantizer(dim=4, codebook_size=16, bit_order="lsb").eval()
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, 0.5, 0.5, 0.5]])
    assert q(x).indices.tolist() == [1 + 8, 2 + 4 + 8]
    codes = q.indices_to_codes(torch.tensor([1 + 8]))
    assert codes.tolist() == [[1.0, -1.0, -1.0, 1.0]]


def test_pack_unpack_every_code():
    for order in ("msb", "lsb"):
        idx = torch.arange(32)
        codes = unpack_codes(idx, 5, order, 0.5)
        assert set(codes.unique().tolist()) == {-0.5, 0.5}
        assert torch.equal(pack_bits(codes, order), idx)


@pytest.mark.parametrize("num_codebooks, dim", [(1, 3), (1, 5), (2, 6), (2, 7)])
@pytest.mark.parametrize(
    "shape",
    [(2, "D", 3, 4), (2, "D", 2, 3, 2), (7, "D"), (2, 5, "D")],
    ids=["image", "video", "tokens", "batched-tokens"],
)
def test_core_round_trip_every_layout(num_codebooks, dim, shape):
    torch.manual_seed(0)
    q = LookupFreeQuantizer(dim=dim, codebook_size=8, num_codebooks=num_codebooks)
    z = torch.randn(*[dim if s == "D" else s for s in shape])
    grid = tuple(s for s in shape if s != "D")
    for training in (False, True):
        out = q.train(training)(z)
        assert out.codes.shape == z.shape
        expect = grid + ((num_codebooks,) if num_codebooks > 1 else ())
        assert out.indices.shape == expect and out.indices.dtype == torch.long
        assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 8
        back = q.indices_to_codes(out.indices)
        if training:  # ST value = q up to one rounding
            torch.testing.assert_close(back, out.codes, atol=1e-6, rtol=0)
        else:
            assert torch.equal(back, out.codes)


def test_core_channel_last_video_and_mask_shapes():
    q = LookupFreeQuantizer(dim=4, codebook_size=16)
    z = torch.randn(2, 3, 2, 2, 4)
    out = q(z, channel_last=True, mask=torch.ones(2, 12, dtype=torch.bool))
    assert out.indices.shape == (2, 3, 2, 2)
    assert q.indices_to_codes(out.indices, channel_last=True).shape == z.shape
    with pytest.raises(QuantizerError):
        q(z, channel_last=True, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(QuantizerError):
        q(z, channel_last=True, mask=torch.ones(2, 12))


@pytest.mark.parametrize(
    "keep, num_codebooks, x_shape, idx_shape",
    [
        (False, 1, (2, 5, "D"), (2, 5)),
        (False, 1, (2, "D", 3, 4), (2, 3, 4)),
        (False, 1, (2, "D", 2, 3, 4), (2, 2, 3, 4)),
        (True, 2, (2, 5, "D"), (2, 5, 2)),
        (True, 2, (2, "D", 3, 4), (2, 3, 4, 2)),
        (True, 1, (2, "D", 3, 4), (2, 3, 4, 1)),
    ],
)
@pytest.mark.parametrize("dim", [None, 5])
def test_compat_indices_to_codes_table(keep, num_codebooks, x_shape, idx_shape, dim):
    torch.manual_seed(1)
    lfq = LFQ(dim=dim, codebook_size=8, num_codebooks=num_codebooks, keep_num_codebooks_dim=keep)
    lfq.eval()
    x = torch.randn(*[lfq.dim if s == "D" else s for s in x_shape])
    ret = lfq(x)
    assert isinstance(ret, Return) and ret.indices.shape == idx_shape
    assert ret.quantized.shape == x.shape and ret.quantized.dtype == torch.float32
    assert torch.equal(lfq.indices_to_codes(ret.indices), ret.quantized)
    raw = lfq.indices_to_codes(ret.indices, project_out=False)
    assert raw.shape[1 if len(x_shape) > 3 else -1] == 3 * num_codebooks


def test_compat_rejects_bad_input_and_config():
    with pytest.raises(QuantizerError):
        LFQ(dim=4)(torch.randn(3, 4))
    with pytest.raises(QuantizerError):
        LFQ(dim=4)(torch.randn(2, 3, 5))
    with pytest.raises(QuantizerError):
        LFQ(dim=4).indices_to_codes(torch.tensor([[16]]))
    with pytest.raises(ConfigError):
        LFQ()
    with pytest.raises(ConfigError, match="power of two"):
        LFQ(codebook_size=12)
    with pytest.raises(ConfigError):
        LFQ(codebook_size=16, num_codebooks=2, keep_num_codebooks_dim=False)
    with pytest.raises(ConfigError):
        LFQ(codebook_size=16, frac_per_sample_entropy=0.0)


def test_compat_sizes_buffers_and_state_dict():
    lfq = LFQ(codebook_size=16, num_codebooks=2, dim=6)
    assert (lfq.codebook_dim, lfq.codebook_dims, lfq.keep_num_codebooks_dim) == (4, 8, True)
    assert lfq.mask.tolist() == [8, 4, 2, 1] and lfq.mask.dtype == torch.long
    keys = set(lfq.state_dict())
    assert keys == {
        "mask",
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    assert set(LFQ(dim=4).state_dict()) == {"mask"}
    assert LFQ(dim=4).codebook_size == 16
    # row i of the codebook is the code of index i
    book = LFQ(dim=3, codebook_scale=2.0).codebook
    assert book[6].tolist() == [2.0, 2.0, -2.0]


def test_config_errors_core():
    with pytest.raises(ConfigError):
        LookupFreeQuantizer(dim=4, codebook_size=10)
    with pytest.raises(ConfigError):
        LookupFreeQuantizer(dim=4, codebook_size=16, frac_per_sample_entropy=1.5)
    with pytest.raises(ConfigError, match="grouped"):
        LookupFreeQuantizer(dim=40, codebook_size=2**40)
    with pytest.raises(ConfigError):
        build_quantizer("lfq", dim=4, codebook_size=16, bogus=1)
    assert isinstance(build_quantizer("lfq", dim=4, codebook_size=16), LookupFreeQuantizer)


# --- entropies against the full softmax ------------------------------------------------


@pytest.mark.parametrize("num_codebooks", [1, 3])
@pytest.mark.parametrize("tau", [0.3, 100.0])
@pytest.mark.parametrize("chunk", [4096, 7])
def test_exact_entropies_equal_naive_softmax(num_codebooks, tau, chunk):
    torch.manual_seed(2)
    h = torch.randn(40, num_codebooks, 5)
    ps, cb = exact_terms(h, tau, scale=0.7, chunk=chunk)
    ref_ps, ref_cb = naive_terms(h, tau, scale=0.7)
    torch.testing.assert_close(ps, ref_ps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cb, ref_cb, atol=1e-5, rtol=1e-5)


def test_mean_distribution_is_the_softmax_average_in_msb_order():
    torch.manual_seed(3)
    h = torch.randn(9, 2, 5)
    book = unpack_codes(torch.arange(32), 5, "msb", 1.0)  # (32, 5), row i = code of index i
    expect = (2 * 0.5 * h @ book.t()).softmax(-1).mean(0)  # (2, 32)
    got = mean_code_distribution(bit_logits(h, 0.5, 1.0), chunk=4)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-5)


def test_reference_clamp_relation():
    torch.manual_seed(4)
    h = torch.randn(30, 1, 6)
    # low temperature: every p >= 1e-5, so the reference clamp is inactive and values agree
    ps, cb = exact_terms(h, 0.2)
    ref_ps, ref_cb = naive_terms(h, 0.2, clamp=REFERENCE_CLAMP)
    torch.testing.assert_close((ps, cb), (ref_ps, ref_cb), atol=1e-5, rtol=1e-5)
    # tau = 100: the clamp is active; the exact value exceeds it by at most K·1e-5/e
    ps, _ = exact_terms(h, 100.0)
    ref_ps, _ = naive_terms(h, 100.0, clamp=REFERENCE_CLAMP)
    assert 0 <= float(ps - ref_ps) <= 64 * 1e-5 / math.e + 1e-6
    # the codebook entropy with the reference clamp is the reference value
    _, cb = exact_terms(h, 100.0, clamp=REFERENCE_CLAMP)
    _, ref_cb = naive_terms(h, 100.0, clamp=REFERENCE_CLAMP)
    torch.testing.assert_close(cb, ref_cb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [4096, 6])
def test_exact_gradient_equals_naive_gradient(chunk):
    torch.manual_seed(5)
    h = torch.randn(20, 2, 4, dtype=torch.float32)
    grads = []
    for fn in (lambda x: exact_terms(x, 0.8, chunk=chunk), lambda x: naive_terms(x, 0.8)):
        x = h.clone().requires_grad_()
        ps, cb = fn(x)
        (0.3 * ps - 1.7 * cb).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_grouped_equals_exact_with_one_group_and_bounds_it_otherwise():
    torch.manual_seed(6)
    h = torch.randn(25, 2, 6)
    _, exact = exact_terms(h, 0.5)
    _, one_group = exact_terms(h, 0.5, mode="grouped", group_bits=6)
    _, three_groups = exact_terms(h, 0.5, mode="grouped", group_bits=2)
    torch.testing.assert_close(one_group, exact)
    assert float(three_groups) >= float(exact) - 1e-6  # entropy is subadditive
    # with independent groups of bits the grouped value is exact
    h_ind = torch.zeros(4, 1, 2)
    h_ind[:, 0, 0] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    h_ind[:, 0, 1] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    _, g = exact_terms(h_ind, 100.0, mode="grouped", group_bits=1)
    torch.testing.assert_close(g, torch.tensor(2 * math.log(2.0)))


def test_module_entropies_with_mask_match_naive_on_valid_tokens():
    torch.manual_seed(7)
    q = LookupFreeQuantizer(dim=8, codebook_size=16, num_codebooks=2, inv_temperature=0.5)
    z = torch.randn(2, 8, 3, 4)
    mask = torch.rand(2, 3, 4) > 0.4
    out = q(z, mask=mask)
    h = z.movedim(1, -1).reshape(-1, 2, 4)[mask.reshape(-1)]  # valid tokens, (M, c, d)
    ref_ps, ref_cb = naive_terms(h, 0.5)
    torch.testing.assert_close(out.metrics["per_sample_entropy"], ref_ps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.metrics["codebook_entropy"], ref_cb, atol=1e-5, rtol=1e-5)
    commit = (h - torch.where(h > 0, 1.0, -1.0)).square().mean()
    torch.testing.assert_close(out.metrics["commitment"], commit)
    expect = 0.1 * (ref_ps - ref_cb) + 0.25 * commit
    torch.testing.assert_close(out.loss, expect, atol=1e-5, rtol=1e-5)


def test_frac_subsample_uses_one_subset_for_both_entropies():
    torch.manual_seed(8)
    q = LookupFreeQuantizer(
        dim=4, codebook_size=16, frac_per_sample_entropy=0.3, inv_temperature=0.5
    )
    z = torch.randn(20, 4)
    out = q(z, generator=torch.Generator().manual_seed(11))
    rows = torch.randperm(20, generator=torch.Generator().manual_seed(11))[:6]
    ref_ps, ref_cb = naive_terms(z[rows].reshape(6, 1, 4), 0.5)
    torch.testing.assert_close(out.metrics["per_sample_entropy"], ref_ps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.metrics["codebook_entropy"], ref_cb, atol=1e-5, rtol=1e-5)
    # the commitment still covers every token
    commit = (z - torch.where(z > 0, 1.0, -1.0)).square().mean()
    torch.testing.assert_close(out.metrics["commitment"], commit)


@pytest.mark.parametrize("case", ["empty-mask", "tiny-frac"])
def test_empty_subset_gives_zero_not_nan(case):
    z = torch.randn(2, 4, 3, requires_grad=True)
    if case == "empty-mask":
        q = LookupFreeQuantizer(dim=3, codebook_size=8)
        out = q(z, mask=torch.zeros(2, 4, dtype=torch.bool))
        assert float(out.metrics["commitment"]) == 0.0
    else:
        q = LookupFreeQuantizer(dim=3, codebook_size=8, frac_per_sample_entropy=0.01)
        out = q(z)
        assert float(out.metrics["commitment"]) > 0
    assert float(out.metrics["per_sample_entropy"]) == 0.0
    assert float(out.metrics["codebook_entropy"]) == 0.0
    (out.loss + out.codes.sum()).backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all()
    lfq = LFQ(dim=3, frac_per_sample_entropy=0.01)
    ret, parts = lfq(z, return_loss_breakdown=True)
    assert float(ret.entropy_aux_loss.detach()) == pytest.approx(
        0.25 * float(parts.commitment.detach())
    )
    assert not any(torch.isnan(t) for t in parts)


# --- losses, gradients, modes ----------------------------------------------------------


def test_eval_losses_are_zero():
    q = LookupFreeQuantizer(dim=5, codebook_size=8).eval()
    out = q(torch.randn(2, 5, 3, 3))
    assert out.loss.dtype == torch.float32 and float(out.loss) == 0.0
    assert all(
        float(out.metrics[k]) == 0.0
        for k in ("per_sample_entropy", "codebook_entropy", "commitment")
    )
    lfq = LFQ(dim=5, codebook_size=8).eval()
    ret, parts = lfq(torch.randn(2, 5, 3, 3), return_loss_breakdown=True)
    assert float(ret.entropy_aux_loss) == 0.0 and all(float(t) == 0.0 for t in parts)


def test_compat_return_is_weighted_total_and_breakdown_unweighted():
    torch.manual_seed(9)
    lfq = LFQ(dim=4, entropy_loss_weight=0.3, commitment_loss_weight=0.7, diversity_gamma=1.5)
    x = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True, False] * 3])
    ret, parts = lfq(x, inv_temperature=0.5, return_loss_breakdown=True, mask=mask)
    assert isinstance(parts, LossBreakdown)
    h = x.reshape(-1, 1, 4)[mask.reshape(-1)]
    ref_ps, ref_cb = naive_terms(h, 0.5, clamp=REFERENCE_CLAMP)
    commit = (h - torch.where(h > 0, 1.0, -1.0)).square().mean()
    torch.testing.assert_close(parts.per_sample_entropy, ref_ps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts.batch_entropy, ref_cb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts.commitment, commit)
    total = 0.3 * (ref_ps - 1.5 * ref_cb) + 0.7 * commit
    torch.testing.assert_close(ret.entropy_aux_loss, total, atol=1e-5, rtol=1e-5)
    plain = lfq(x, inv_temperature=0.5, mask=mask)
    assert isinstance(plain, Return)


def test_commitment_gradient_reaches_only_the_input_side():
    torch.manual_seed(10)
    q = LookupFreeQuantizer(
        dim=4, codebook_size=16, entropy_loss_weight=0.0, commitment_loss_weight=0.5
    )
    z = torch.randn(6, 4, requires_grad=True)
    q(z).loss.backward()
    # d/dz 0.5·mean((z - sg(q))^2) = (z - q) / numel
    torch.testing.assert_close(z.grad, (z - torch.where(z > 0, 1.0, -1.0)).detach() / z.numel())
    proj = LookupFreeQuantizer(dim=6, codebook_size=16, entropy_loss_weight=0.0)
    proj(torch.randn(5, 6)).loss.backward()
    assert proj.project_in.weight.grad is not None and proj.project_out.weight.grad is None


def test_straight_through_gradient_is_identity():
    q = LookupFreeQuantizer(dim=4, codebook_size=16)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn_like(z)
    (q(z).codes * w).sum().backward()
    torch.testing.assert_close(z.grad, w)
    lfq = LFQ(dim=4, straight_through_activation=torch.nn.Tanh())
    x = torch.randn(2, 5, 4, requires_grad=True)
    lfq(x).quantized.sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_module_cast_to_half_keeps_float32_index_math(dtype):
    torch.manual_seed(12)
    z = torch.randn(2, 6, 3, 4)
    plain = LookupFreeQuantizer(dim=4, codebook_size=16)
    half = LookupFreeQuantizer(dim=4, codebook_size=16).to(dtype)
    assert torch.equal(half(z[:, :4]).indices, plain(z[:, :4]).indices)
    proj = LookupFreeQuantizer(dim=6, codebook_size=16)
    cast = LookupFreeQuantizer(dim=6, codebook_size=16)
    cast.load_state_dict(proj.state_dict())
    cast.to(dtype)
    proj.load_state_dict({k: v.to(dtype).float() for k, v in proj.state_dict().items()})
    out, ref = cast(z.to(dtype)), proj(z.to(dtype).float())
    assert torch.equal(out.indices, ref.indices)
    assert out.codes.dtype == dtype and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss)
    lfq = LFQ(dim=6, codebook_size=16).to(dtype)
    ret = lfq(z.to(dtype))
    assert ret.quantized.dtype == torch.float32 and ret.indices.dtype == torch.long
    assert lfq.indices_to_codes(ret.indices).dtype == torch.float32


def test_large_vocabulary_grouped_and_usage_metrics():
    q = LookupFreeQuantizer(
        dim=40, codebook_size=2**40, codebook_entropy="grouped", entropy_group_bits=8
    )
    z = torch.randn(3, 40)
    out = q(z)
    assert out.indices.max() < 2**40 and torch.isfinite(out.loss)
    assert torch.equal(q.indices_to_codes(out.indices), torch.where(z > 0, 1.0, -1.0))
    # a small histogram through the dense path and the sparse one agree
    idx = torch.tensor([0, 3, 3, 5])
    dense, sparse = usage_metrics(idx, 8), usage_metrics(idx, 2**30)
    torch.testing.assert_close(dense["perplexity"], sparse["perplexity"])
    assert float(sparse["usage"]) == 3 / 2**30 and float(dense["usage"]) == 3 / 8


def test_autocast_does_not_change_indices_or_losses():
    torch.manual_seed(13)
    q = LookupFreeQuantizer(dim=6, codebook_size=32, inv_temperature=0.5)
    z = torch.randn(2, 6, 3, 4)
    ref = q(z, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.loss.dtype == torch.float32


def test_compat_dim_only_with_several_codebooks_keeps_reference_sizes():
    # reference quirk: dim alone sets codebook_dim = dim and projects dim -> dim·c
    lfq = LFQ(dim=3, num_codebooks=2)
    assert (lfq.codebook_size, lfq.codebook_dim, lfq.codebook_dims) == (8, 3, 6)
    assert lfq.has_projections and lfq.project_in.weight.shape == (6, 3)
    ret = lfq(torch.randn(2, 4, 3))
    assert ret.indices.shape == (2, 4, 2) and ret.quantized.shape == (2, 4, 3)
