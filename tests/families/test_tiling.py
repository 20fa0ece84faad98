"""Spatial tiling (`vqtok.families.tiling`): the same indices and frames as an untiled pass.

A tiny model with the shipped models' features (patch size 2, a linear shortcut, deblocking, a
residual quantizer) on frames whose size is not a multiple of the tile, nor of the model's
spatial factor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vqtok.families.tiling as tiling_module
from vqtok.api import Tokenizer
from vqtok.errors import ConfigError
from vqtok.families.magvit2 import Magvit2Config, Magvit2Tokenizer
from vqtok.families.tiling import Tiling
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer

CONFIG = TokenizerConfig(
    channels=8,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    spatial_factor=8,
    patch_size=2,
    temporal_factor=4,
    latent_dim=4,
    quantizer="ema_rvq",
    quantizer_options={"num_levels": 2, "codebook_sizes": 16},
    norm_groups=4,
    shortcut="linear",
    deblock=(0.4, 0.3),
)
TILES = [Tiling(16, 16), Tiling(24, 40), Tiling(16, 1000), Tiling(1000, 1000)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(VideoTokenizer(CONFIG).eval())


def clip(batch: int = 1, frames: int = 9, height: int = 37, width: int = 53) -> torch.Tensor:
    """A moving gradient with noise, (B, 3, T, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(batch * 100 + frames)
    t = torch.arange(frames).view(1, 1, frames, 1, 1)
    y = torch.arange(height).view(1, 1, 1, height, 1)
    x = torch.arange(width).view(1, 1, 1, 1, width)
    wave = torch.sin((x + 2 * t) / 5.0) * torch.cos((y - t) / 7.0)
    noise = torch.rand(batch, 3, frames, height, width, generator=g) * 0.6 - 0.3
    return (wave * 0.6 + noise).clamp(-1, 1)


@pytest.mark.parametrize("tiling", TILES, ids=lambda t: f"{t.height}x{t.width}")
def test_tiled_encode_gives_the_untiled_indices(tok: Tokenizer, tiling: Tiling) -> None:
    video = clip()
    assert torch.equal(tok.encode(video, tiling=tiling), tok.encode(video))


@pytest.mark.parametrize("tiling", TILES[:2], ids=lambda t: f"{t.height}x{t.width}")
def test_tiled_decode_gives_the_untiled_frames(tok: Tokenizer, tiling: Tiling) -> None:
    indices = tok.encode(clip())
    untiled = tok.decode(indices, frames=9, size=(37, 53))
    tiled = tok.decode(indices, frames=9, size=(37, 53), tiling=tiling)
    assert tiled.shape == (1, 3, 9, 37, 53)
    assert torch.equal(tiled, untiled)


def test_tiled_indices_do_not_depend_on_chunks_or_batch(tok: Tokenizer) -> None:
    video = clip(batch=2, frames=13)
    expected = tok.encode(video)
    tiling = Tiling(16, 24)
    for size in (1, 3, 5, 13):
        stream = tok.encode_stream(video.split(size, dim=2), tiling=tiling)
        assert torch.equal(torch.cat(list(stream), dim=1), expected), size
    for b in range(2):
        assert torch.equal(tok.encode(video[b : b + 1], tiling=tiling), expected[b : b + 1])


def test_spilled_carry_gives_the_same_result_and_leaves_no_file(
    tok: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiling_module, "_SPILL_MIN_BYTES", 0)  # spill every carried tensor
    spilled = Tiling(16, 16, spill_dir=str(tmp_path))
    video = clip()
    indices = tok.encode(video)
    assert torch.equal(tok.encode(video, tiling=spilled), indices)
    assert torch.equal(tok.decode(indices, tiling=spilled), tok.decode(indices))
    assert list(tmp_path.iterdir()) == []


def test_images_encode_tiled(tok: Tokenizer) -> None:
    images = clip(batch=2, frames=1)[:, :, 0]  # (B, 3, H, W)
    assert torch.equal(tok.encode(images, tiling=Tiling(16, 16)), tok.encode(images))


def test_tiles_below_16_pixels_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16x16"):
        Tiling(8, 64)


def test_families_without_tiling_refuse_it() -> None:
    tok = Tokenizer(Magvit2Tokenizer(Magvit2Config(ch=32, num_res_blocks=1, z_channels=4)))
    with pytest.raises(ConfigError, match="cannot work in spatial tiles: its norms pool"):
        tok.encode(torch.zeros(1, 3, 5, 16, 16), tiling=Tiling())


@pytest.mark.parametrize(("spatial", "temporal"), [(True, True), (True, False), (False, True)])
def test_upsample_alone_in_a_tiled_stream_equals_untiled(spatial: bool, temporal: bool) -> None:
    from vqtok.families.layers import StreamState, Upsample

    torch.manual_seed(0)
    layer = Upsample(4, spatial=spatial, temporal=temporal).eval()
    x = torch.randn(1, 4, 3, 10, 13)
    with torch.no_grad():
        whole = layer(x, StreamState())
        state = StreamState(Tiling(16, 16))
        state.video_width = 13 * (1 + spatial)
        tiled = torch.cat([layer(part, state) for part in x.split([1, 2], dim=2)], dim=2)
    assert torch.equal(tiled, whole)
