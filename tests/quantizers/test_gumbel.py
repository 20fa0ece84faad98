"""Gumbel VQ (the reference's GumbelQuantize + the README's fixes): KL formula, ST sampling, eval
argmax, remap."""

import math

import numpy as np
import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.compat.gumbel import GumbelQuantize
from vqtok.quantizers.gumbel import GumbelQuantizer, gumbel_softmax, kl_to_uniform
from vqtok.quantizers.remap import IndexRemap


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _direct_kl(logits: torch.Tensor, k: int) -> float:
    """mean over rows of sum_j q_j ln(q_j k + 1e-10), in float64 loops."""
    rows = []
    for row in logits.double().tolist():
        m = max(row)
        e = [math.exp(v - m) for v in row]
        q = [v / sum(e) for v in e]
        rows.append(sum(p * math.log(p * k + 1e-10) for p in q))
    return sum(rows) / len(rows)


def test_kl_to_uniform_matches_direct_evaluation():
    logits = torch.randn(7, 5, generator=_gen()) * 3
    assert kl_to_uniform(logits, 5).item() == pytest.approx(_direct_kl(logits, 5), rel=1e-5)
    # uniform logits: KL(Uniform || Uniform) = 0; subset of 3 of 8 codes: ln(8/3)
    assert kl_to_uniform(torch.zeros(2, 8), 8).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(torch.zeros(2, 3), 8).item() == pytest.approx(math.log(8 / 3), rel=1e-6)


def test_forward_loss_is_weighted_kl_of_the_projection_logits():
    q = GumbelQuantizer(dim=4, codebook_size=6, kl_weight=0.25)
    z = torch.randn(2, 4, 3, 3, generator=_gen(1))
    out = q(z, generator=_gen(2))
    logits = q.proj(z.movedim(1, -1).reshape(-1, 4))
    assert out.loss.item() == pytest.approx(0.25 * _direct_kl(logits.detach(), 6), rel=1e-5)
    assert out.metrics["kl"].item() == pytest.approx(_direct_kl(logits.detach(), 6), rel=1e-5)


def test_straight_through_forward_is_one_hot_and_gradient_is_the_soft_samples():
    torch.manual_seed(0)
    q = GumbelQuantizer(dim=3, codebook_size=5, codebook_dim=2, kl_weight=0.0, temperature=0.7)
    z = torch.randn(6, 3)
    out = q(z, generator=_gen(3))
    torch.testing.assert_close(out.codes, q.embed.weight[out.indices], rtol=0, atol=1e-6)
    out.codes.square().sum().backward()
    grad = q.proj.weight.grad.clone()
    assert grad.abs().sum() > 0
    # the same noise, soft sample written out: its gradient is what ST must pass on
    q.zero_grad()
    logits = q.proj(z)
    gumbels = -torch.empty_like(logits).exponential_(generator=_gen(3)).log()
    soft = ((logits + gumbels) / 0.7).softmax(-1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), 5).float()
    assert torch.equal(hard.argmax(-1), out.indices)
    y = hard - soft.detach() + soft
    (y @ q.embed.weight).square().sum().backward()
    torch.testing.assert_close(grad, q.proj.weight.grad)


def test_soft_training_output_is_the_temperature_scaled_mixture():
    torch.manual_seed(0)
    q = GumbelQuantizer(dim=3, codebook_size=4, straight_through=False, temperature=2.0)
    z = torch.randn(5, 3)
    out = q(z, generator=_gen(4))
    logits = q.proj(z).detach()
    gumbels = -torch.empty_like(logits).exponential_(generator=_gen(4)).log()
    soft = ((logits + gumbels) / 2.0).softmax(-1)
    torch.testing.assert_close(out.codes, soft @ q.embed.weight)
    assert torch.equal(out.indices, soft.argmax(-1))


def test_generator_makes_training_samples_reproducible():
    q = GumbelQuantizer(dim=4, codebook_size=32, temperature=5.0)
    z = torch.randn(64, 4, generator=_gen(5))
    a, b = q(z, generator=_gen(6)).indices, q(z, generator=_gen(6)).indices
    assert torch.equal(a, b)
    assert not torch.equal(a, q(z, generator=_gen(7)).indices)  # it really samples


def test_eval_is_deterministic_argmax_unless_asked_to_sample():
    q = GumbelQuantizer(dim=4, codebook_size=32, temperature=5.0).eval()
    z = torch.randn(64, 4, generator=_gen(8))
    out = q(z, generator=_gen(9))
    assert torch.equal(out.indices, q.proj(z).argmax(-1))
    assert torch.equal(out.codes, q.indices_to_codes(out.indices))  # exact
    assert torch.equal(q(z, generator=_gen(10)).indices, out.indices)
    q.sample_in_eval = True
    sampled = q(z, generator=_gen(9)).indices
    assert not torch.equal(sampled, out.indices)
    assert torch.equal(q(z, generator=_gen(9)).codes, q.embed.weight[sampled])  # hard


def test_eval_indices_ignore_autocast_and_input_dtype():
    torch.manual_seed(0)
    q = GumbelQuantizer(dim=16, codebook_size=64).eval()
    z = torch.randn(256, 16).bfloat16()
    expected = q.proj(z.float()).argmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q(z).indices, expected)
    assert torch.equal(q(z).indices, expected)


def test_temperature_is_a_saved_buffer():
    q = GumbelQuantizer(dim=2, codebook_size=3, temperature=0.9)
    assert q.state_dict()["temperature"].item() == pytest.approx(0.9)
    q.set_temperature(0.25)
    fresh = GumbelQuantizer(dim=2, codebook_size=3)
    fresh.load_state_dict(q.state_dict())
    assert fresh.temperature.item() == 0.25
    assert q(torch.randn(3, 2)).metrics["temperature"].item() == 0.25
    with pytest.raises(ConfigError):
        q.set_temperature(0.0)


@pytest.mark.parametrize(
    "shape, channel_last, grid",
    [
        ((2, 4, 3, 5), None, (2, 3, 5)),
        ((2, 4, 2, 3, 5), None, (2, 2, 3, 5)),
        ((7, 4), None, (7,)),
        ((2, 7, 4), None, (2, 7)),
        ((2, 3, 5, 4), True, (2, 3, 5)),
    ],
)
def test_every_layout_round_trips_in_eval(shape, channel_last, grid):
    q = GumbelQuantizer(dim=4, codebook_size=9, codebook_dim=6).eval()
    z = torch.randn(shape, generator=_gen(11))
    out = q(z, channel_last=channel_last)
    assert out.indices.shape == grid and out.indices.dtype == torch.int64
    channel_axis = -1 if (channel_last or len(shape) < 4) else 1
    expected_shape = list(shape)
    expected_shape[channel_axis] = 6
    assert list(out.codes.shape) == expected_shape
    assert torch.equal(q.indices_to_codes(out.indices, channel_last=channel_last), out.codes)


def test_remap_restricts_logits_and_returns_compact_ids(tmp_path):
    used = np.array([1, 3, 4], dtype=np.int64)
    np.save(tmp_path / "used.npy", used)
    q = GumbelQuantizer(dim=3, codebook_size=6, remap=tmp_path / "used.npy")
    with torch.no_grad():
        q.proj.bias.copy_(torch.tensor([50.0, 0, 0, 0, 0, 0]))  # code 0 would always win
    assert q.vocab_size == 3 and q.state_dict()["remap.used"].tolist() == [1, 3, 4]
    z = torch.randn(40, 3, generator=_gen(12))
    for training in (True, False):
        out = q.train(training)(z, generator=_gen(13))
        assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 3
        full = torch.tensor(used)[out.indices]
        torch.testing.assert_close(out.codes, q.embed.weight[full], rtol=0, atol=1e-6)
        torch.testing.assert_close(q.indices_to_codes(out.indices), out.codes, rtol=0, atol=1e-6)
    logits = q.proj(z)[:, [1, 3, 4]].detach()
    assert out.loss.item() == pytest.approx(5e-4 * _direct_kl(logits, 6), rel=1e-5)
    assert torch.equal(out.indices, logits.argmax(-1))
    with pytest.raises(QuantizerError):
        q.indices_to_codes(torch.tensor([3]))
    assert GumbelQuantizer(dim=3, codebook_size=6, remap=IndexRemap(used)).vocab_size == 3


def test_gumbel_softmax_rows_and_hard_values():
    logits = torch.randn(4, 6, generator=_gen(14))
    soft = gumbel_softmax(logits, 1.0, hard=False, generator=_gen(15))
    torch.testing.assert_close(soft.sum(-1), torch.ones(4))
    hard = gumbel_softmax(logits, 1.0, hard=True, generator=_gen(15))
    torch.testing.assert_close(hard, torch.nn.functional.one_hot(soft.argmax(-1), 6).float())


def test_bad_configuration_and_input():
    with pytest.raises(ConfigError):
        GumbelQuantizer(dim=2, codebook_size=3, temperature=-1.0)
    with pytest.raises(ConfigError):
        GumbelQuantizer(dim=0, codebook_size=3)
    with pytest.raises(QuantizerError, match="channels"):
        GumbelQuantizer(dim=2, codebook_size=3)(torch.randn(4, 3))
    assert isinstance(build_quantizer("gumbel", dim=2, codebook_size=3), GumbelQuantizer)


# --- compatibility class -------------------------------------------------------------------


def test_compat_return_structures_and_shapes():
    q = GumbelQuantize(num_hiddens=4, embedding_dim=3, n_embed=7)
    z = torch.randn(2, 4, 3, 5, generator=_gen(16))
    z_q, diff, (a, b, ind) = q(z)
    assert a is None and b is None
    assert z_q.shape == (2, 3, 3, 5) and diff.ndim == 0 and ind.shape == (2, 3, 5)
    out = q(z, return_logits=True)
    assert len(out) == 4 and out[3].shape == (2, 7, 3, 5)
    q.use_vqinterface = False
    out = q(z, return_logits=True)  # silently ignored, as in the reference
    assert len(out) == 3 and out[2].shape == (2, 3, 5)
    video = q(torch.randn(2, 4, 2, 3, 5))
    assert video[0].shape == (2, 3, 2, 3, 5) and video[2].shape == (2, 2, 3, 5)


def test_compat_eval_is_argmax_and_get_codebook_entry_inverts_it():
    q = GumbelQuantize(4, 3, 7, kl_weight=0.5).eval()
    z = torch.randn(2, 4, 3, 5, generator=_gen(17))
    z_q, diff, (_, _, ind), logits = q(z, return_logits=True)
    assert torch.equal(ind, logits.argmax(1))
    conv_logits = torch.nn.functional.conv2d(z, q.proj.weight, q.proj.bias)
    torch.testing.assert_close(logits, conv_logits)
    flat = conv_logits.movedim(1, -1).reshape(-1, 7).detach()
    assert diff.item() == pytest.approx(0.5 * _direct_kl(flat, 7), rel=1e-5)
    entry = q.get_codebook_entry(ind.reshape(-1), (2, 3, 5, 3))
    assert torch.equal(entry, z_q)
    with pytest.raises(QuantizerError):
        q.get_codebook_entry(ind.reshape(-1), (2, 3, 4, 3))


def test_compat_temperature_saved_and_reference_checkpoint_loads():
    q = GumbelQuantize(4, 3, 7, temp_init=0.5)
    assert q.state_dict()["temperature"].item() == 0.5
    reference_keys = {k: v for k, v in q.state_dict().items() if k != "temperature"}
    assert reference_keys["proj.weight"].shape == (7, 4, 1, 1)
    fresh = GumbelQuantize(4, 3, 7, temp_init=2.0)
    fresh.load_state_dict(reference_keys)  # strict, no temperature key
    assert fresh.temperature.item() == 2.0
    assert torch.equal(fresh.embed.weight, q.embed.weight)
    # temp argument overrides the buffer: a near-zero temperature makes soft ~ hard
    soft = GumbelQuantize(4, 3, 7, straight_through=False)
    z_q, _, (_, _, ind) = soft(torch.randn(2, 4, 2, 2), temp=1e-4)
    torch.testing.assert_close(z_q, soft.embed.weight[ind].movedim(-1, 1))


def test_compat_remap_returns_compact_ids_and_saves_used(tmp_path):
    np.save(tmp_path / "used.npy", np.array([0, 2, 5], dtype=np.int64))
    q = GumbelQuantize(4, 3, 6, remap=str(tmp_path / "used.npy"), unknown_index="extra")
    assert q.state_dict()["used"].tolist() == [0, 2, 5] and q.re_embed == 4
    z = torch.randn(2, 4, 3, 3, generator=_gen(18))
    z_q, _, (_, _, ind), logits = q(z, return_logits=True)
    assert logits.shape == (2, 3, 3, 3) and int(ind.max()) < 3
    torch.testing.assert_close(q.get_codebook_entry(ind.reshape(-1), (2, 3, 3, 3)), z_q)
    assert q.remap_to_used(torch.tensor([[5, 1]])).tolist() == [[2, 3]]  # 1 unknown -> extra
    assert q.unmap_to_all(torch.tensor([[2, 0]])).tolist() == [[5, 0]]
