"""Residual LFQ: exact codes of its indices, the level ladder, gradients, the closed-form fit,
errors, and a tiny tokenizer that uses it."""

import pytest
import torch

from tests.tiny import tiny_config
from vqtok.errors import ConfigError, QuantizerError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.quantizers import ResidualLFQ, build_quantizer
from vqtok.quantizers.lfq import pack_bits


def anisotropic(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """(n, dim) Gaussian samples whose channel scales fall from 4 to 0.5."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) * torch.linspace(4.0, 0.5, dim)


def test_eval_codes_are_the_codes_of_the_indices() -> None:
    torch.manual_seed(0)
    q = ResidualLFQ(dim=8, codebook_size=16, num_levels=3).eval()
    z = torch.randn(2, 8, 3, 4, 5)
    out = q(z)
    assert out.indices.shape == (2, 3, 4, 5, 3) and out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 16
    assert torch.equal(q.indices_to_codes(out.indices), out.codes)
    assert float(out.loss) == 0.0


def test_level_one_indices_are_the_bits_of_the_projected_input() -> None:
    torch.manual_seed(1)
    q = ResidualLFQ(dim=6, codebook_size=8, num_levels=2).eval()
    z = torch.randn(50, 6)
    out = q(z, channel_last=True)
    expected = pack_bits(q.project_in[0](z), "msb")
    assert torch.equal(out.indices[:, 0], expected)


def test_first_k_levels_are_a_prefix_of_the_full_code() -> None:
    torch.manual_seed(2)
    q = ResidualLFQ(dim=8, codebook_size=16, num_levels=4).eval()
    x = anisotropic(4000)
    q.init_from_samples(x)
    with torch.no_grad():
        full = q(x, channel_last=True)
    errors = []
    for k in range(1, 5):
        with torch.no_grad():
            out = q(x, channel_last=True, levels=k)
        assert torch.equal(out.indices, full.indices[:, :k])
        assert torch.equal(q.indices_to_codes(out.indices, channel_last=True), out.codes)
        errors.append(float((out.codes - x).square().mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_closed_form_fit_beats_random_projections() -> None:
    torch.manual_seed(3)
    x = anisotropic(6000)
    q = ResidualLFQ(dim=8, codebook_size=16, num_levels=2).eval()
    with torch.no_grad():
        before = float((q(x, channel_last=True).codes - x).square().mean())
        q.init_from_samples(x[:4000])
        after = float((q(x[4000:], channel_last=True).codes - x[4000:]).square().mean())
    assert after < 0.3 * x.var(0).mean() and after < 0.3 * before


def test_training_pass_has_gradients_and_the_eval_value() -> None:
    torch.manual_seed(4)
    q = ResidualLFQ(dim=8, codebook_size=16, num_levels=2)
    z = torch.randn(2, 8, 2, 3, 3, requires_grad=True)
    out = q.train()(z)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    (out.codes.square().mean() + out.loss).backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    for layer in [*q.project_in, *q.project_out]:
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    with torch.no_grad():
        assert torch.allclose(out.codes, q.eval()(z).codes, atol=1e-6)
    for key in ("lfq_l1_usage", "lfq_l2_commitment", "lfq_l2_codebook_entropy", "usage"):
        assert key in out.metrics


def test_build_by_kind_and_errors() -> None:
    q = build_quantizer("residual_lfq", 4, codebook_size=4, num_levels=2)
    assert isinstance(q, ResidualLFQ) and q.vocab_sizes == (4, 4)
    with pytest.raises(ConfigError, match="power of two"):
        ResidualLFQ(dim=4, codebook_size=12)
    with pytest.raises(ConfigError, match="num_levels must be >= 1"):
        ResidualLFQ(dim=4, codebook_size=4, num_levels=0)
    with pytest.raises(QuantizerError, match="4 channels"):
        q(torch.zeros(3, 5), channel_last=True)
    with pytest.raises(QuantizerError, match="levels must be in 1..2"):
        q(torch.zeros(3, 4), channel_last=True, levels=3)
    with pytest.raises(QuantizerError, match="k in 1..2"):
        q.indices_to_codes(torch.zeros(1, 2, 2, 2, 3, dtype=torch.long))
    with pytest.raises(QuantizerError, match="\\[0, 4\\)"):
        q.indices_to_codes(torch.full((1, 2, 2, 2, 2), 4, dtype=torch.long))


def test_tiny_tokenizer_encodes_levels_and_decodes() -> None:
    torch.manual_seed(5)
    config = tiny_config("residual_lfq", {"codebook_size": 16, "num_levels": 3})
    model = VideoTokenizer(config).eval()
    assert model.pre_quant_norm is None and model.max_levels == 3
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        full = model.encode(video)
        two = model.encode(video, levels=2)
        alone = model.encode(video[1:])
        assert full.shape == (2, 3, 2, 2, 3)
        assert torch.equal(two, full[..., :2])
        assert torch.equal(alone, full[1:])  # the batch does not change the indices
        assert model.decode(two).shape == (2, 3, 9, 16, 16)
