"""FSQ (Mentzer et al., arXiv 2309.15505; vector-quantize-pytorch's arithmetic): bounding formulas,
LSB-first digits, layouts, compat structures."""

import itertools
import math

import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.base import codebook_metrics
from vqtok.quantizers.compat.fsq import FSQ
from vqtok.quantizers.fsq import FiniteScalarQuantizer

COSMOS_LEVELS = [8, 8, 8, 5, 5, 5]


def _expected_bound(x: float, level: int) -> float:
    """A.7 in float64: tanh(z + atanh(offset / half_l)) * half_l - offset."""
    half_l = (level - 1) * (1 + 1e-3) / 2
    offset = 0.5 if level % 2 == 0 else 0.0
    return math.tanh(x + math.atanh(offset / half_l)) * half_l - offset


@pytest.mark.parametrize("level", [2, 3, 4, 5, 7, 8])
def test_codes_follow_the_bound_round_normalise_formula(level):
    fsq = FiniteScalarQuantizer(dim=1, levels=[level])
    z = torch.linspace(-4, 4, 101).reshape(-1, 1)
    codes = fsq(z).codes.reshape(-1)
    expected = [round(_expected_bound(x, level)) / (level // 2) for x in z.reshape(-1).tolist()]
    assert codes.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "level, grid",
    [
        (2, [-1.0, 0.0]),
        (3, [-1.0, 0.0, 1.0]),
        (4, [-1.0, -0.5, 0.0, 0.5]),  # even: asymmetric
        (5, [-1.0, -0.5, 0.0, 0.5, 1.0]),
        (8, [k / 4 for k in range(-4, 4)]),
    ],
)
def test_every_level_reaches_exactly_its_grid(level, grid):
    fsq = FiniteScalarQuantizer(dim=1, levels=[level])
    out = fsq(torch.linspace(-8, 8, 2001).reshape(-1, 1))
    assert sorted(set(out.codes.reshape(-1).tolist())) == grid
    assert sorted(set(out.indices.tolist())) == list(range(level))


def test_first_channel_is_the_least_significant_digit():
    fsq = FiniteScalarQuantizer(dim=2, levels=[3, 4])  # basis [1, 3]
    # digits (2, 1): codes (2-1)/1 = 1 and (1-2)/2 = -0.5 -> index 2*1 + 1*3 = 5
    assert fsq.codes_to_indices(torch.tensor([[1.0, -0.5]])).tolist() == [5]
    # saturating inputs: +inf-ish -> top digit, -inf-ish -> digit 0
    z = torch.tensor([[10.0, -10.0], [-10.0, 10.0], [10.0, 10.0], [0.0, 0.0]])
    # (2,0) -> 2; (0,3) -> 9; (2,3) -> 11; (1,2) -> 1 + 6 = 7 (0 lands on the middle digit)
    assert fsq(z).indices.tolist() == [2, 9, 11, 7]
    assert fsq.indices_to_digits(torch.tensor([5, 11])).tolist() == [[2, 1], [2, 3]]


def test_implicit_codebook_enumerates_every_code_once():
    fsq = FiniteScalarQuantizer(dim=3, levels=[2, 3, 4])
    book = fsq.implicit_codebook
    assert book.shape == (24, 3) and book.dtype == torch.float32
    assert torch.unique(book, dim=0).shape[0] == 24
    assert torch.equal(fsq.codes_to_indices(book), torch.arange(24))
    # row 1 differs from row 0 only in the first channel (LSB)
    assert torch.equal(book[1] - book[0], torch.tensor([1.0, 0.0, 0.0]))


def test_cosmos_levels_give_64000_distinct_codes():
    fsq = FiniteScalarQuantizer(dim=6, levels=COSMOS_LEVELS)
    assert fsq.codebook_size == 64000
    book = fsq.implicit_codebook
    assert torch.unique(book, dim=0).shape[0] == 64000
    assert torch.equal(fsq.codes_to_indices(book), torch.arange(64000))
    assert fsq._basis.tolist() == [1, 8, 64, 512, 2560, 12800]
    # digits (7, 0, 0, 0, 0, 4): 7 + 4 * 12800
    code = torch.tensor([[0.75, -1.0, -1.0, -1.0, -1.0, 1.0]])
    assert fsq.codes_to_indices(code).tolist() == [7 + 4 * 12800]
    z = torch.randn(2, 6, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2
    out = fsq(z)
    assert torch.equal(fsq.indices_to_codes(out.indices), out.codes)


@pytest.mark.parametrize("level", [26, 27, 38, 51])
def test_digits_are_rounded_so_large_levels_stay_injective(level):
    # the reference's int32 truncation of code * (L // 2) + L // 2 collides for these L
    fsq = FiniteScalarQuantizer(dim=1, levels=[level])
    book = fsq.implicit_codebook
    assert torch.equal(fsq.codes_to_indices(book), torch.arange(level))


LAYOUTS = [
    # (input shape, channel_last, index shape for one codebook)
    ((2, 4, 3, 5), None, (2, 3, 5)),
    ((2, 4, 2, 3, 5), None, (2, 2, 3, 5)),
    ((7, 4), None, (7,)),
    ((2, 7, 4), None, (2, 7)),
    ((2, 3, 5, 4), True, (2, 3, 5)),
]


@pytest.mark.parametrize("shape, channel_last, grid", LAYOUTS)
@pytest.mark.parametrize("num_codebooks, dim", [(1, 4), (2, 4), (1, 6)])
def test_indices_to_codes_round_trips_every_layout(shape, channel_last, grid, num_codebooks, dim):
    levels = [5, 4] if num_codebooks == 2 else [3, 4, 5, 2]
    torch.manual_seed(0)
    fsq = FiniteScalarQuantizer(dim=dim, levels=levels, num_codebooks=num_codebooks)
    assert fsq.has_projections == (dim != len(levels) * num_codebooks)
    shape = tuple(dim if s == 4 else s for s in shape)
    z = torch.randn(shape) * 2
    out = fsq(z, channel_last=channel_last)
    assert out.codes.shape == z.shape
    expected = grid + ((num_codebooks,) if num_codebooks > 1 else ())
    assert out.indices.shape == expected and out.indices.dtype == torch.int64
    assert int(out.indices.max()) < fsq.codebook_size
    back = fsq.indices_to_codes(out.indices, channel_last=channel_last)
    torch.testing.assert_close(back, out.codes, rtol=0, atol=1e-6)


def test_codebooks_own_contiguous_channel_blocks():
    fsq = FiniteScalarQuantizer(dim=4, levels=[3, 3], num_codebooks=2)
    z = torch.tensor([[10.0, -10.0, 0.0, 10.0]])  # cb0 digits (2, 0) -> 2; cb1 (1, 2) -> 7
    assert fsq(z).indices.tolist() == [[2, 7]]


def test_straight_through_gradient_is_the_bound_derivative():
    level = 5
    fsq = FiniteScalarQuantizer(dim=1, levels=[level])
    z = torch.linspace(-2, 2, 9).reshape(-1, 1).requires_grad_()
    fsq(z).codes.sum().backward()
    half_l = (level - 1) * 1.001 / 2
    expected = (1 - torch.tanh(z.detach()) ** 2) * half_l / (level // 2)  # odd L: shift 0
    torch.testing.assert_close(z.grad, expected)


def test_loss_is_zero_and_metrics_match_the_histogram():
    fsq = FiniteScalarQuantizer(dim=2, levels=[3, 3])
    out = fsq(torch.randn(5, 2, 4, 4))
    assert out.loss.dtype == torch.float32 and out.loss.item() == 0.0
    expected = codebook_metrics(out.indices, 9)
    for key in ("perplexity", "usage", "bits_per_index"):
        assert torch.equal(out.metrics[key], expected[key])


def test_bf16_input_is_quantized_in_float32():
    fsq = FiniteScalarQuantizer(dim=6, levels=COSMOS_LEVELS)
    z = (torch.randn(2, 6, 4, 4) * 2).to(torch.bfloat16)
    out = fsq(z)
    ref = fsq(z.float())
    assert out.codes.dtype == torch.bfloat16
    assert torch.equal(out.indices, ref.indices)
    assert torch.equal(out.codes.float(), ref.codes)  # grid values are exact in bf16


def test_module_cast_to_bf16_still_projects_in_float32():
    torch.manual_seed(0)
    ref = FiniteScalarQuantizer(dim=8, levels=[4, 4, 3])
    # weights representable in bf16, so both modules hold the same numbers
    ref.load_state_dict({k: v.bfloat16().float() for k, v in ref.state_dict().items()})
    cast = FiniteScalarQuantizer(dim=8, levels=[4, 4, 3])
    cast.load_state_dict(ref.state_dict())
    cast = cast.to(torch.bfloat16)
    z = torch.randn(2, 8, 3, 3).bfloat16()
    out, expected = cast(z), ref(z.float())
    assert out.codes.dtype == torch.bfloat16
    assert torch.equal(out.indices, expected.indices)  # same float32 arithmetic
    assert cast._levels.dtype == torch.int32  # integer buffers survive the cast
    torch.testing.assert_close(cast.indices_to_codes(out.indices), expected.codes)


def test_autocast_cannot_change_an_index():
    torch.manual_seed(0)
    fsq = FiniteScalarQuantizer(dim=8, levels=[8, 5, 5])
    z = torch.randn(4, 8, 6, 6)
    expected = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsq(z)
        back = fsq.indices_to_codes(out.indices)
    assert torch.equal(out.indices, expected.indices)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, expected.codes, rtol=0, atol=1e-6)


def test_init_from_samples_spreads_every_channel_over_its_levels():
    # correlated 12-dim latents with most variance in 3 directions, far from the origin
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 12, generator=g)
    z = torch.randn(6000, 3, generator=g) * torch.tensor([4.0, 2.0, 1.0]) @ basis
    z = z + 5.0 + 0.05 * torch.randn(6000, 12, generator=g)
    q = FiniteScalarQuantizer(12, [8, 5, 3])
    before = ((q(z).codes - z) ** 2).mean()
    q.init_from_samples(z)
    out = q(z)
    digits = q.indices_to_digits(out.indices)  # (M, 3)
    for channel, level in enumerate([8, 5, 3]):
        counts = torch.bincount(digits[:, channel], minlength=level)
        assert (counts > 0).all(), (channel, counts)
    # the widest direction went to the 8-level channel: it alone explains most of the variance
    spread = q.project_in.weight.norm(dim=1)  # per channel: gain / std, smallest for widest
    assert spread[0] < spread[1] < spread[2]
    after = ((out.codes - z) ** 2).mean()
    assert after < 0.1 * before and after < 0.2 * z.var(0).sum() / 12


def test_init_from_samples_with_more_code_channels_than_input_dims():
    q = FiniteScalarQuantizer(2, [3, 3], num_codebooks=2)  # 4 code channels from 2 dims
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    q.init_from_samples(z)
    assert torch.isfinite(q.project_in.weight).all()
    assert ((q(z).codes - z) ** 2).mean() < z.var(0).mean()


def test_bad_configuration_and_inputs_raise_typed_errors():
    for levels in ([], [1, 4], [2.5], "88"):
        with pytest.raises(ConfigError):
            FiniteScalarQuantizer(dim=2, levels=levels)
    fsq = FiniteScalarQuantizer(dim=2, levels=[3, 3])
    with pytest.raises(QuantizerError, match="channels"):
        fsq(torch.randn(4, 3))
    with pytest.raises(QuantizerError):
        fsq.indices_to_codes(torch.tensor([9]))
    assert isinstance(build_quantizer("fsq", dim=2, levels=[3, 3]), FiniteScalarQuantizer)


# --- compatibility class -------------------------------------------------------------------


def test_compat_returns_out_and_int32_indices_with_reference_shapes():
    fsq = FSQ([8, 5, 5, 5])
    assert (fsq.dim, fsq.codebook_size, fsq.has_projections) == (4, 1000, False)
    out, idx = fsq(torch.randn(2, 4, 3, 5))
    assert out.shape == (2, 4, 3, 5) and idx.shape == (2, 3, 5) and idx.dtype == torch.int32
    out, idx = fsq(torch.randn(2, 7, 4))
    assert out.shape == (2, 7, 4) and idx.shape == (2, 7)
    multi = FSQ([5, 4], num_codebooks=3, dim=10)
    assert multi.keep_num_codebooks_dim and multi.has_projections
    out, idx = multi(torch.randn(2, 10, 2, 3, 3))
    assert out.shape == (2, 10, 2, 3, 3) and idx.shape == (2, 2, 3, 3, 3)
    _, idx = FSQ([3, 3], keep_num_codebooks_dim=True)(torch.randn(2, 7, 2))
    assert idx.shape == (2, 7, 1)


@pytest.mark.parametrize(
    "keep, index_shape, codes_shape",
    [
        (False, (2, 7), (2, 7, 3)),
        (False, (2, 4, 5), (2, 3, 4, 5)),
        (False, (2, 2, 4, 5), (2, 3, 2, 4, 5)),
        (True, (2, 7, 1), (2, 7, 3)),
        (True, (2, 4, 5, 1), (2, 3, 4, 5)),
    ],
)
def test_compat_indices_to_codes_layouts(keep, index_shape, codes_shape):
    fsq = FSQ([2, 3, 4], keep_num_codebooks_dim=keep)
    idx = torch.randint(0, 24, index_shape, dtype=torch.int32)
    codes = fsq.indices_to_codes(idx)
    assert codes.shape == codes_shape and codes.dtype == torch.float32
    flat = codes.movedim(1, -1) if len(codes_shape) > 3 else codes
    assert torch.equal(fsq.codes_to_indices(flat), idx.reshape(flat.shape[:-1]))


def test_compat_matches_core_and_shares_its_state_dict():
    torch.manual_seed(0)
    compat = FSQ([5, 4, 3], dim=5, num_codebooks=2)
    core = FiniteScalarQuantizer(dim=5, levels=[5, 4, 3], num_codebooks=2)
    assert set(compat.state_dict()) == set(core.state_dict()) == {
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    core.load_state_dict(compat.state_dict())
    z = torch.randn(2, 5, 3, 4)
    out, idx = compat(z)
    ref = core(z)
    assert torch.equal(idx.long(), ref.indices)
    torch.testing.assert_close(out, ref.codes)
    torch.testing.assert_close(compat.indices_to_codes(idx), ref.codes)
    no_proj = compat.indices_to_codes(idx, project_out=False)
    assert no_proj.shape == (2, 6, 3, 4)


def test_compat_codes_to_indices_and_implicit_codebook():
    fsq = FSQ([3, 4])
    assert fsq.codes_to_indices(torch.tensor([1.0, -0.5])).item() == 5
    assert fsq.codes_to_indices(torch.tensor([1.0, -0.5])).dtype == torch.int32
    book = fsq.implicit_codebook
    assert book.shape == (12, 2)
    assert torch.equal(fsq.codes_to_indices(book), torch.arange(12, dtype=torch.int32))
    expected = [[a - 1.0, (b - 2) / 2] for b, a in itertools.product(range(4), range(3))]
    assert book.tolist() == expected
    with pytest.raises(QuantizerError):
        fsq.codes_to_indices(torch.zeros(3))


def test_compat_bf16_input_keeps_its_dtype_and_the_float32_indices():
    fsq = FSQ([8, 8, 8, 5, 5, 5])
    z = (torch.randn(2, 6, 3, 3) * 2).bfloat16()
    out, idx = fsq(z)
    ref_out, ref_idx = fsq(z.float())
    assert out.dtype == torch.bfloat16 and torch.equal(idx, ref_idx)
    assert torch.equal(out.float(), ref_out)


def test_compat_validation():
    with pytest.raises(ConfigError):
        FSQ([3, 3], num_codebooks=2, keep_num_codebooks_dim=False)
    with pytest.raises(ConfigError):
        FSQ([2**16, 2**16])  # beyond int32 indices
    assert FSQ([3, 3], scale=0.5).scale == 0.5
    with pytest.raises(QuantizerError):
        FSQ([3, 3])(torch.randn(2, 3, 4, 4))
