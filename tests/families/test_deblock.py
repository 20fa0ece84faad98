"""The decoder's fixed deblocking filter: what it moves, what it leaves, and the config bounds."""

from __future__ import annotations

import pytest
import torch

from vqtok.errors import ConfigError
from vqtok.families.deblock import deblock
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer


def blocks(values: list[list[float]], period: int) -> torch.Tensor:
    """(1, 1, 1, H, W): each value fills a period x period block."""
    grid = torch.tensor(values)
    return grid.repeat_interleave(period, 0).repeat_interleave(period, 1)[None, None, None]


def test_a_step_at_a_block_boundary_is_spread_over_three_differences():
    video = blocks([[0.0, 1.0]], 4)  # one step of 1 between columns 3 and 4
    out = deblock(video, 0.2, 4)[0, 0, 0, 0]
    torch.testing.assert_close(out, torch.tensor([0, 0, 0, 0.2, 0.8, 1, 1, 1]))
    assert torch.equal(deblock(video, 0.0, 4), video)
    assert torch.equal(deblock(video, 0.5, 4)[..., 3], deblock(video, 0.5, 4)[..., 4])


def test_only_the_excess_over_the_neighbouring_steps_is_softened():
    row = torch.tensor([0.0, 1, 2, 3, 6, 7, 8, 9])  # slope 1, and a step of 3 at the boundary
    out = deblock(row[None, None, None, None], 0.25, 4)[0, 0, 0, 0]
    # excess 3 - (1 + 1) / 2 = 2; each side moves by 0.25 * 2
    torch.testing.assert_close(out, torch.tensor([0.0, 1, 2, 3.5, 5.5, 7, 8, 9]))


def test_it_leaves_what_does_not_step_at_a_boundary():
    g = torch.Generator().manual_seed(0)
    ramp = torch.arange(16.0).expand(2, 3, 5, 16, 16)  # the same step everywhere
    torch.testing.assert_close(deblock(ramp, 0.3, 8), ramp)
    inside = torch.zeros(1, 3, 1, 16, 16)
    inside[..., 2:6, 2:6] = torch.rand(4, 4, generator=g)  # detail away from the boundaries
    assert torch.equal(deblock(inside, 0.3, 8), inside)
    small = torch.rand(1, 3, 1, 7, 7, generator=g)  # smaller than one block: no boundary
    assert torch.equal(deblock(small, 0.3, 8), small)


def test_rows_and_columns_are_both_softened_and_the_filter_is_differentiable():
    video = blocks([[0.0, 1.0], [1.0, 0.0]], 8).requires_grad_()
    out = deblock(video, 0.25, 8)
    image = out.detach()[0, 0, 0]
    steps = image.diff(dim=0).abs().max(), image.diff(dim=1).abs().max()
    assert max(float(s) for s in steps) < 1.0
    out.square().sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0


@pytest.mark.parametrize("strength", [-0.1, 0.6])
def test_the_config_rejects_a_strength_outside_zero_to_one_half(strength):
    with pytest.raises(ConfigError, match="deblock"):
        TokenizerConfig(deblock=strength)


def test_a_model_with_deblock_decodes_its_own_decoder_output_softened():
    fields = dict(channels=8, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, latent_dim=4,
                  norm_groups=4)
    torch.manual_seed(0)
    plain = VideoTokenizer(TokenizerConfig(**fields)).eval()
    soft = VideoTokenizer(TokenizerConfig(**fields, deblock=0.2)).eval()
    soft.load_state_dict(plain.state_dict())  # no weights of its own
    indices = plain.encode(torch.rand(1, 3, 5, 16, 16) * 2 - 1)
    with torch.no_grad():
        torch.testing.assert_close(soft.decode(indices), deblock(plain.decode(indices), 0.2, 8))
    assert TokenizerConfig.from_dict(soft.config.to_dict()) == soft.config


def _residual(deblock):
    options = {"num_levels": 2, "codebook_sizes": 16}
    return TokenizerConfig(channels=8, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1,
                           latent_dim=4, norm_groups=4, quantizer="ema_rvq",
                           quantizer_options=options, deblock=deblock)


def test_a_strength_per_level_count_softens_coarser_codes_more():
    torch.manual_seed(0)
    plain = VideoTokenizer(_residual(0.0)).eval()
    ladder = VideoTokenizer(_residual((0.4, 0.1))).eval()
    ladder.load_state_dict(plain.state_dict())
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        for levels, strength in ((1, 0.4), (2, 0.1)):
            indices = plain.encode(video, levels=levels)
            expected = deblock(plain.decode(indices), strength, 8)
            torch.testing.assert_close(ladder.decode(indices), expected)
            streamed = torch.cat(list(ladder.decode_stream(indices.split(1, dim=1))), dim=2)
            torch.testing.assert_close(streamed, expected)
            trained, _ = ladder(video, levels=levels)
            torch.testing.assert_close(trained, expected)
    config = TokenizerConfig.from_dict(ladder.config.to_dict())
    assert config == ladder.config and config.deblock == (0.4, 0.1)


@pytest.mark.parametrize("deblock", [(0.2,), (0.2, 0.1, 0.1), (0.2, 0.7), ()])
def test_a_strength_list_needs_one_valid_entry_per_level_count(deblock):
    with pytest.raises(ConfigError, match="deblock"):
        VideoTokenizer(_residual(deblock))
