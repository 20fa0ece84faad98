"""The shared quantizer contract: layouts, index validation, usage metrics."""

import math

import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.base import Layout, check_indices, codebook_metrics
from vqtok.quantizers.search import nearest_codes


@pytest.mark.parametrize(
    "shape, channel_last, grid",
    [
        ((2, 3, 4, 5), None, (2, 4, 5)),
        ((2, 3, 6, 4, 5), None, (2, 6, 4, 5)),
        ((7, 3), None, (7,)),
        ((2, 7, 3), None, (2, 7)),
        ((2, 4, 5, 3), True, (2, 4, 5)),
    ],
)
def test_layout_round_trip(shape, channel_last, grid):
    z = torch.randn(shape)
    layout = Layout.of(z, channel_last)
    assert layout.grid == grid and layout.dim == 3
    flat = layout.to_tokens(z)
    assert flat.shape == (math.prod(grid), 3)
    assert torch.equal(layout.from_tokens(flat), z)


def test_layout_token_order_is_row_major_over_batch_and_space():
    z = torch.randn(2, 3, 4, 5)
    flat = Layout.of(z).to_tokens(z)
    # token n = ((b * H) + h) * W + w
    assert torch.equal(flat[1 * 20 + 2 * 5 + 3], z[1, :, 2, 3])


def test_check_indices_rejects_floats_and_out_of_range():
    with pytest.raises(QuantizerError, match="integer"):
        check_indices(torch.zeros(3), 4)
    with pytest.raises(QuantizerError, match=r"\[0, 4\)"):
        check_indices(torch.tensor([0, 4]), 4)
    with pytest.raises(QuantizerError):
        check_indices(torch.tensor([-1, 2]), 4)
    assert check_indices(torch.tensor([0, 3], dtype=torch.int32), 4).dtype == torch.int64


def test_codebook_metrics_values():
    m = codebook_metrics(torch.tensor([0, 0, 1, 1]), 4)
    assert m["perplexity"].item() == pytest.approx(2.0)
    assert m["usage"].item() == pytest.approx(0.5)
    assert m["bits_per_index"].item() == pytest.approx(1.0)
    uniform = codebook_metrics(torch.arange(8), 8)
    assert uniform["bits_per_index"].item() == pytest.approx(3.0)


def test_nearest_codes_matches_brute_force_in_small_blocks():
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(300, 5, generator=g), torch.randn(37, 5, generator=g)
    expected = torch.cdist(x.double(), cb.double()).argmin(1)
    assert torch.equal(nearest_codes(x, cb, block_elements=37 * 7), expected)


def test_build_quantizer_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="unknown quantizer kind"):
        build_quantizer("nope", dim=4)


# ---------------------------------------------------------------- registry and capabilities

def test_kinds_are_built_from_the_classes_in_core_modules():
    from vqtok import quantizers

    kinds = quantizers.KINDS
    assert sorted(kinds) == ["ema_rvq", "ema_vq", "fsq", "gumbel", "lfq", "residual_lfq", "rvq",
                             "vq"]
    homes = {cls.__module__.rsplit(".", 1)[1] for cls in kinds.values()}
    assert homes == set(quantizers.CORE_MODULES)
    for kind, cls in kinds.items():
        assert cls.kind == kind and quantizers.quantizer_class(kind) is cls
        assert getattr(quantizers, cls.__name__) is cls  # importable by class name
    with pytest.raises(ConfigError, match="unknown quantizer kind 'nope'"):
        quantizers.quantizer_class("nope")


QUANTIZERS = {
    "vq": {"codebook_size": 4}, "ema_vq": {"codebook_size": 4}, "gumbel": {"codebook_size": 4},
    "lfq": {"codebook_size": 4}, "fsq": {"levels": [3, 3]},
    "rvq": {"num_levels": 2, "codebook_sizes": 4},
    "ema_rvq": {"num_levels": 2, "codebook_sizes": 4},
    "residual_lfq": {"codebook_size": 4, "num_levels": 2},
}


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_optional_hooks_have_defaults_that_say_what_is_not_supported(kind):
    q = build_quantizer(kind, 2, **QUANTIZERS[kind])
    assert q.kind == kind
    if q.residual:
        assert q.check_levels(None) == 2 and q.check_levels(1) == 1
        with pytest.raises(QuantizerError, match="levels must be in 1..2"):
            q.check_levels(3)
    else:
        with pytest.raises(QuantizerError, match="levels needs a residual quantizer"):
            q.check_levels(1)
    if q.beam_search:
        q.set_beam_width(3)
        assert q.beam_width == 3
    else:
        assert q.beam_width == 1
        with pytest.raises(ConfigError, match="beam search needs"):
            q.set_beam_width(2)
    assert q.bit_order == ("msb" if kind in ("lfq", "residual_lfq") else None)
    assert q.levels == ([3, 3] if kind == "fsq" else None)
    samples = torch.randn(16, 2)
    if kind in ("vq", "rvq", "ema_rvq", "residual_lfq"):
        q.init_from_samples(samples, 2, torch.Generator().manual_seed(0))
    elif kind == "fsq":  # dim == code channels: no projections to fit
        with pytest.raises(ConfigError, match="nothing to fit"):
            q.init_from_samples(samples)
    else:
        with pytest.raises(ConfigError, match="has no k-means initialisation"):
            q.init_from_samples(samples)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.set_temperature(0.5)  # Gumbel's buffer; a no-op elsewhere
    changed = [k for k, v in q.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == (["temperature"] if kind == "gumbel" else [])
