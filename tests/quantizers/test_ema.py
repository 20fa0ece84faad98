"""EMA vector quantization: EMACodebook statistics, EMAQuantizer, CogVideo compatibility."""

import math

import numpy as np
import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.base import codebook_metrics
from vqtok.quantizers.compat.ema import EMAVectorQuantizer, EmbeddingEMA
from vqtok.quantizers.ema import EMACodebook, EMAQuantizer

# ---------------------------------------------------------------- EMA statistics

W0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
TOKENS = torch.tensor([[0.2, 0.0], [0.0, -0.2], [1.2, 1.0]])  # nearest codes 0, 0, 1


def _codebook(legacy_init: bool) -> EMACodebook:
    cb = EMACodebook(3, 2, decay=0.5, eps=0.1, legacy_init=legacy_init)
    cb.weight.copy_(W0)
    cb.embed_avg.copy_(W0)
    return cb


def test_ema_step_matches_hand_computation_default_init():
    cb = _codebook(legacy_init=False)
    assert cb.cluster_size.tolist() == [1.0, 1.0, 1.0]
    cb.ema_step(TOKENS, torch.tensor([0, 0, 1]))
    # counts [2, 1, 0]: c = 0.5 * 1 + 0.5 * counts
    assert torch.allclose(cb.cluster_size, torch.tensor([1.5, 1.0, 0.5]))
    # sums [[0.2, -0.2], [1.2, 1.0], [0, 0]]: s = 0.5 * W0 + 0.5 * sums
    expected_avg = torch.tensor([[0.1, -0.1], [1.1, 1.0], [2.5, 2.5]])
    assert torch.allclose(cb.embed_avg, expected_avg)
    # n = 3; smoothed = (c + 0.1) / (3 + 3 * 0.1) * 3
    smoothed = torch.tensor([1.6, 1.1, 0.6]) / 3.3 * 3.0
    assert torch.allclose(cb.smoothed_sizes(), smoothed)
    assert torch.allclose(cb.weight, expected_avg / smoothed[:, None])
    assert cb.weight[2, 0].item() == pytest.approx(2.5 / (0.6 / 1.1))  # 4.58, near its 5


def test_ema_step_matches_hand_computation_legacy_init():
    cb = _codebook(legacy_init=True)
    assert cb.cluster_size.tolist() == [0.0, 0.0, 0.0]
    cb.ema_step(TOKENS, torch.tensor([0, 0, 1]))
    assert torch.allclose(cb.cluster_size, torch.tensor([1.0, 0.5, 0.0]))
    expected_avg = torch.tensor([[0.1, -0.1], [1.1, 1.0], [2.5, 2.5]])
    assert torch.allclose(cb.embed_avg, expected_avg)
    # n = 1.5; smoothed = (c + 0.1) / (1.5 + 0.3) * 1.5
    smoothed = torch.tensor([1.1, 0.6, 0.1]) / 1.8 * 1.5
    assert torch.allclose(cb.weight, expected_avg / smoothed[:, None])
    assert cb.weight[2, 0].item() == pytest.approx(30.0, rel=1e-5)  # unused code thrown out


def test_legacy_init_blows_up_unused_codes_default_does_not():
    gamma, eps = 0.99, 1e-5
    tokens = torch.full((64, 2), 0.3)
    for legacy, lo, hi in ((True, 0.99 * gamma / eps, 1.01 * gamma / eps), (False, 0.99, 1.02)):
        cb = EMACodebook(4, 2, decay=gamma, eps=eps, legacy_init=legacy)
        w0 = cb.weight.clone()
        cb.ema_step(tokens, torch.zeros(64, dtype=torch.long))  # only code 0 is used
        ratio = cb.weight[1:] / w0[1:]
        assert lo < ratio.min().item() and ratio.max().item() < hi


def test_ema_statistics_stay_float32_under_casts_and_half_inputs():
    cb = EMACodebook(4, 3)
    cb.half()
    cb.to(torch.bfloat16)
    assert {t.dtype for t in cb.buffers()} == {torch.float32}
    before = cb.weight.clone()
    cb.ema_step(torch.randn(10, 3).to(torch.bfloat16), torch.randint(0, 4, (10,)))
    assert cb.weight.dtype == torch.float32 and not torch.equal(cb.weight, before)
    cb.update = False  # frozen: no change
    frozen = cb.weight.clone()
    cb.ema_step(torch.randn(10, 3), torch.randint(0, 4, (10,)))
    assert torch.equal(cb.weight, frozen)


def test_reseed_dead_resets_statistics_consistently():
    cb = EMACodebook(4, 2, decay=0.5, eps=1e-5)
    cb.cluster_size.copy_(torch.tensor([5.0, 0.1, 3.0, 0.2]))
    samples = torch.tensor([[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])
    kept = cb.weight[[0, 2]].clone()
    dead = cb.reseed_dead(samples, threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert dead.tolist() == [False, True, False, True]
    assert torch.equal(cb.weight[[0, 2]], kept)
    rows = {tuple(r) for r in cb.weight[dead].tolist()}
    assert len(rows) == 2 and rows <= {tuple(r) for r in samples.tolist()}
    assert cb.cluster_size[dead].tolist() == [1.0, 1.0]
    assert torch.equal(cb.embed_avg[dead], cb.weight[dead])  # sum = count (1) * code
    # the next update of a re-seeded code that is not chosen keeps it near its sample
    seeded = cb.weight[1].clone()
    cb.ema_step(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    assert torch.allclose(cb.weight[1], seeded, rtol=0.5)


def test_codebook_validates_options():
    with pytest.raises(ConfigError, match="decay"):
        EMACodebook(4, 2, decay=1.0)
    with pytest.raises(ConfigError, match="eps"):
        EMACodebook(4, 2, eps=0.0)
    with pytest.raises(ConfigError, match="init"):
        EMACodebook(4, 2, init="kmeans")


# ---------------------------------------------------------------- EMAQuantizer


def _quantizer(**kw) -> EMAQuantizer:
    return EMAQuantizer(3, 6, generator=torch.Generator().manual_seed(1), **kw)


def test_forward_uses_pre_update_codebook_and_updates_in_training():
    q = _quantizer(beta=0.5)
    z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    w_before = q.codebook.weight.clone()
    out = q(z)
    assert not torch.equal(q.codebook.weight, w_before)  # the EMA step ran
    zq = w_before[out.indices].movedim(-1, 1)  # (B, H, W, D) -> (B, D, H, W)
    assert torch.allclose(out.codes, zq, atol=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * ((zq - z) ** 2).mean().item(), rel=1e-5)
    expected_idx = torch.cdist(z.movedim(1, -1).reshape(-1, 3), w_before).argmin(1)
    assert torch.equal(out.indices.reshape(-1), expected_idx)


def test_eval_does_not_update():
    q = _quantizer().eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(4, 3))
    assert all(torch.equal(state[k], v) for k, v in q.state_dict().items())
    assert sorted(state) == ["codebook.cluster_size", "codebook.embed_avg", "codebook.weight"]


def test_gradients_reach_z_only_as_commitment():
    q = _quantizer(beta=0.25)
    assert list(q.parameters()) == []  # the codebook is learned by EMA, not by gradients
    z = torch.randn(5, 3, requires_grad=True)
    w_before = q.codebook.weight.clone()
    out = q(z)
    out.loss.backward()
    zq = w_before[out.indices]
    assert torch.allclose(z.grad, 0.25 * 2 * (z - zq).detach() / z.numel(), atol=1e-7)
    z.grad = None
    weights = torch.randn(5, 3)
    (q(z).codes * weights).sum().backward()  # straight-through: identity
    assert torch.allclose(z.grad, weights)
    assert all(b.grad is None and not b.requires_grad for b in q.buffers())


@pytest.mark.parametrize(
    "shape, channel_last, grid",
    [
        ((2, 3, 4, 5), None, (2, 4, 5)),
        ((2, 3, 2, 4, 5), None, (2, 2, 4, 5)),
        ((7, 3), None, (7,)),
        ((2, 7, 3), None, (2, 7)),
        ((2, 4, 5, 3), True, (2, 4, 5)),
    ],
)
def test_layouts_and_indices_to_codes_round_trip(shape, channel_last, grid):
    q = _quantizer().eval()
    z = torch.randn(shape)
    out = q(z, channel_last=channel_last)
    assert out.codes.shape == z.shape and out.indices.shape == grid
    assert out.indices.dtype == torch.int64
    back = q.indices_to_codes(out.indices, channel_last=channel_last)
    assert torch.allclose(back, out.codes, atol=1e-6)


def test_metrics_values():
    q = _quantizer().eval()
    z = torch.randn(40, 3)
    out = q(z)
    expected = codebook_metrics(out.indices, 6)
    for key in ("perplexity", "usage", "bits_per_index"):
        assert out.metrics[key].item() == pytest.approx(expected[key].item())
    p = torch.bincount(out.indices, minlength=6).float() / 40
    h = -(p[p > 0] * p[p > 0].log()).sum().item()
    assert out.metrics["bits_per_index"].item() == pytest.approx(h / math.log(2), rel=1e-5)
    commit = ((q.indices_to_codes(out.indices) - z) ** 2).mean().item()
    assert out.metrics["commitment_loss"].item() == pytest.approx(commit, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.25 * commit, rel=1e-5)


def test_bf16_input():
    q = _quantizer()
    z = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    ref = _quantizer().eval()(z.float())
    out = q(z)
    assert out.codes.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.equal(out.indices, ref.indices)  # the search runs in float32
    assert {b.dtype for b in q.buffers()} == {torch.float32}
    assert torch.isfinite(q.codebook.weight).all()


def test_remap_restricts_search_to_used_codes():
    used = torch.tensor([1, 3, 4])
    q = _quantizer(remap=used).eval()
    assert q.codebook_size == 3 and q.full_codebook_size == 6
    z = torch.randn(50, 3)
    out = q(z)
    full = q.codebook.weight[used]
    assert torch.equal(out.indices, torch.cdist(z, full).argmin(1))  # compact ids, no unknown
    assert torch.allclose(q.indices_to_codes(out.indices), out.codes, atol=1e-6)
    assert out.metrics["usage"].item() == pytest.approx(out.indices.unique().numel() / 3)
    with pytest.raises(QuantizerError):
        q.indices_to_codes(torch.tensor([3]))
    q.train()
    before = q.codebook.weight.clone()
    q(z)  # training: only used rows are chosen, so only they move towards the data
    moved = (q.codebook.weight - before).abs().sum(1) > 1e-3
    assert not moved[[0, 2, 5]].any()


def test_quantizer_reseeds_only_searchable_codes():
    used = torch.tensor([0, 2, 3])
    q = _quantizer(remap=used)
    samples = torch.full((4, 3), 9.0)
    n = q.reseed_dead_codes(samples, counts=torch.tensor([5, 0, 2]), threshold=1.0)
    assert n == 1
    assert torch.equal(q.codebook.weight[2], torch.full((3,), 9.0))  # compact id 1 -> row 2
    assert q.codebook.cluster_size[2].item() == 1.0
    assert not (q.codebook.weight[[0, 1, 3, 4, 5]] == 9.0).any()
    plain = _quantizer()
    plain.codebook.cluster_size.copy_(torch.tensor([2.0, 0.5, 2.0, 2.0, 0.1, 2.0]))
    assert plain.reseed_dead_codes(samples) == 2  # default counts: EMA cluster sizes
    assert (plain.codebook.weight[[1, 4]] == 9.0).all()


def test_build_and_errors():
    q = build_quantizer("ema_vq", dim=3, codebook_size=5, decay=0.9)
    assert isinstance(q, EMAQuantizer) and q.codebook.decay == 0.9
    with pytest.raises(QuantizerError, match="channels"):
        q(torch.randn(2, 4))
    with pytest.raises(QuantizerError):
        q.indices_to_codes(torch.tensor([5]))
    empty = q(torch.randn(0, 3))
    assert empty.loss.item() == 0.0 and empty.indices.shape == (0,)


# ---------------------------------------------------------------- CogVideo compatibility


def test_compat_dict_keys_shapes_and_perplexity():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(6, 3, beta=0.25, loss_key="loss/vq")
    z = torch.randn(2, 3, 4, 5)
    w_before = vq.embedding.weight.clone()
    z_q, out = vq(z)
    assert set(out) == {"loss/vq", "encodings", "encoding_indices", "perplexity"}
    assert z_q.shape == z.shape
    assert out["encodings"].shape == (40, 6) and out["encoding_indices"].shape == (40,)
    idx = out["encoding_indices"]
    assert torch.equal(out["encodings"].argmax(1), idx) and out["encodings"].sum() == 40
    p = out["encodings"].mean(0)
    expected = torch.exp(-(p * torch.log(p + 1e-10)).sum())  # natural log, A.1
    assert out["perplexity"].item() == pytest.approx(expected.item(), rel=1e-6)
    zq = w_before[idx].reshape(2, 4, 5, 3).movedim(-1, 1)  # (B, H, W, C) -> (B, C, H, W)
    assert torch.allclose(z_q, zq, atol=1e-6)  # pre-update codebook
    assert out["loss/vq"].item() == pytest.approx(0.25 * ((zq - z) ** 2).mean().item(), rel=1e-5)
    assert not torch.equal(vq.embedding.weight, w_before)  # training: updated
    assert sorted(vq.state_dict()) == [
        "embedding.cluster_size", "embedding.embed_avg", "embedding.weight"
    ]


def test_compat_accepts_video_and_channel_last_and_update_flag():
    vq = EMAVectorQuantizer(5, 4, beta=1.0)
    video = torch.randn(1, 4, 2, 3, 3)
    z_q, out = vq.eval()(video)
    assert z_q.shape == video.shape and out["encoding_indices"].shape == (18,)
    tokens = torch.randn(2, 7, 4)
    z_q, out = vq(tokens)
    assert z_q.shape == tokens.shape and out["encodings"].shape == (14, 5)
    vq.train()
    vq.embedding.update = False  # the reference's freeze flag
    before = vq.embedding.weight.clone()
    vq(tokens)
    assert torch.equal(vq.embedding.weight, before)


def test_compat_embedding_ema_reference_methods_and_legacy_init():
    emb = EmbeddingEMA(3, 2, decay=0.5, eps=0.1, legacy_init=True)
    emb.weight.copy_(W0)
    emb.embed_avg.copy_(W0)
    emb.cluster_size_ema_update(torch.tensor([2.0, 1.0, 0.0]))
    emb.embed_avg_ema_update(torch.tensor([[0.2, -0.2], [1.2, 1.0], [0.0, 0.0]]))
    emb.weight_update(3)
    ref = _codebook(legacy_init=True)
    ref.ema_step(TOKENS, torch.tensor([0, 0, 1]))
    assert torch.allclose(emb.weight, ref.weight)
    assert torch.equal(emb(torch.tensor([[1, 2]])), emb.weight[[1, 2]].unsqueeze(0))
    assert EmbeddingEMA(4, 2).cluster_size.tolist() == [1.0] * 4  # the fixed default


def test_compat_remap_and_get_codebook_entry(tmp_path):
    used = np.array([0, 2, 5], dtype=np.int64)
    path = tmp_path / "used.npy"
    np.save(path, used)
    vq = EMAVectorQuantizer(6, 3, beta=0.25, remap=str(path), unknown_index="extra").eval()
    assert vq.re_embed == 4 and vq.unknown_index == 3 and vq.remap == str(path)
    z = torch.randn(1, 3, 6, 6)
    z_q, out = vq(z)
    full = out["encodings"].argmax(1)
    idx = out["encoding_indices"]
    known = torch.isin(full, torch.from_numpy(used))
    assert known.any() and (~known).any()
    assert torch.equal(torch.from_numpy(used)[idx[known]], full[known])
    assert (idx[~known] == 3).all()
    # known ids decode to the codes forward produced
    codes = vq.get_codebook_entry(idx, shape=(1, 6, 6, 3))
    assert codes.shape == (1, 3, 6, 6)
    mask = known.reshape(1, 1, 6, 6).expand_as(z_q)
    assert torch.allclose(codes[mask], z_q[mask], atol=1e-6)
    # the used table is saved under the reference key `used` and loads back
    state = vq.state_dict()
    assert torch.equal(state["used"], torch.from_numpy(used)) and "remapper.used" not in state
    twin = EMAVectorQuantizer(6, 3, beta=0.25, remap=used, unknown_index="extra")
    twin.load_state_dict(state)
    assert torch.equal(twin.embedding.weight, vq.embedding.weight)
    # restricted search: never the unknown id, and every id decodes to its code
    strict = EMAVectorQuantizer(6, 3, beta=0.25, remap=used, restrict_search=True).eval()
    z_q, out = strict(z)
    assert out["encoding_indices"].max().item() < 3
    codes = strict.get_codebook_entry(out["encoding_indices"], shape=(1, 6, 6, 3))
    assert torch.allclose(codes, z_q, atol=1e-6)


def test_compat_get_codebook_entry_shapes_without_remap():
    vq = EMAVectorQuantizer(6, 3, beta=0.25).eval()
    video = torch.randn(2, 3, 2, 3, 4)
    z_q, out = vq(video)
    idx = out["encoding_indices"]
    assert torch.allclose(vq.get_codebook_entry(idx, (2, 2, 3, 4, 3)), z_q, atol=1e-6)
    assert vq.get_codebook_entry(idx.reshape(2, 24)).shape == (2, 24, 3)
    with pytest.raises(QuantizerError):
        vq.get_codebook_entry(idx, (48, 3))
    with pytest.raises(QuantizerError):
        vq.get_codebook_entry(torch.tensor([6]))


def test_compat_bf16_input():
    vq = EMAVectorQuantizer(6, 3, beta=0.25)
    z = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    z_q, out = vq(z)
    assert z_q.dtype == torch.bfloat16 and out["encodings"].dtype == torch.bfloat16
    assert out["loss/vq"].dtype == torch.float32 and torch.isfinite(out["loss/vq"])
    assert {b.dtype for b in vq.buffers()} == {torch.float32}
