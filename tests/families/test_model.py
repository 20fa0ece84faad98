"""The vqtok causal 3D tokenizer: config validation, shapes for every quantizer kind, causality."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vqtok.errors import ConfigError, VqtokError
from vqtok.families.layers import CausalConv3d, Downsample, FrameGroupNorm, Upsample, swish
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer
from vqtok.quantizers import KINDS

# Tiny options per kind, for a latent_dim of 4.
KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "vq": {"codebook_size": 16},
    "ema_vq": {"codebook_size": 16},
    "gumbel": {"codebook_size": 16},
    "lfq": {"codebook_size": 16},
    "rvq": {"num_levels": 2, "codebook_sizes": 16},
    "ema_rvq": {"num_levels": 2, "codebook_sizes": 16},
    "residual_lfq": {"codebook_size": 16, "num_levels": 2},
    "fsq": {"levels": [5, 4, 4, 3]},
}
PRESENT_KINDS = list(KINDS)


def tiny(kind: str = "fsq", temporal_factor: int = 4, **overrides: Any) -> TokenizerConfig:
    fields: dict[str, Any] = dict(
        channels=8, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, spatial_factor=8,
        temporal_factor=temporal_factor, latent_dim=4, quantizer=kind,
        quantizer_options=KIND_OPTIONS[kind], norm_groups=4,
    )
    fields.update(overrides)
    return TokenizerConfig(**fields)


def build(config: TokenizerConfig, seed: int = 0) -> VideoTokenizer:
    torch.manual_seed(seed)
    return VideoTokenizer(config).eval()


def clip(b: int = 2, t: int = 9, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


# ---------------------------------------------------------------- config


def test_config_round_trips_through_dict() -> None:
    config = tiny("fsq", pre_quant_norm=True)
    data = config.to_dict()
    assert data["channel_multipliers"] == [1, 1, 2, 2]  # JSON-friendly
    assert TokenizerConfig.from_dict(data) == config


def test_config_is_hashable_and_frozen() -> None:
    assert hash(tiny()) == hash(tiny())
    assert tiny() != tiny(num_res_blocks=2)
    with pytest.raises(AttributeError):
        tiny().channels = 4  # type: ignore[misc]


def test_config_rejects_unknown_keys_by_name() -> None:
    data = tiny().to_dict() | {"chanels": 8, "zeta": 1}
    with pytest.raises(ConfigError, match="chanels, zeta"):
        TokenizerConfig.from_dict(data)


@pytest.mark.parametrize(
    ("key", "value"),
    [("channels", "8"), ("channels", True), ("channel_multipliers", [1, 1.5, 2, 2]),
     ("quantizer", 3), ("quantizer_options", [1]), ("pre_quant_norm", "yes")],
)
def test_config_rejects_wrong_types(key: str, value: Any) -> None:
    data = tiny().to_dict() | {key: value}
    with pytest.raises(ConfigError, match=key):
        TokenizerConfig.from_dict(data)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"spatial_factor": 4}, "spatial_factor"), ({"temporal_factor": 3}, "temporal_factor"),
     ({"spatial_factor": 16}, "channel_multipliers"), ({"norm_groups": 3}, "norm_groups"),
     ({"quantizer": "pq"}, "unknown quantizer"),
     ({"quantizer_options": {"dim": 4, "levels": [5]}}, "dim")],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)


def test_unknown_quantizer_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        VideoTokenizer(tiny(quantizer_options={"levels": [5, 4, 4, 3], "bogus": 1}))


def test_pre_quant_norm_defaults_on_for_lfq_only() -> None:
    assert tiny("fsq").uses_pre_quant_norm is False
    assert tiny("fsq", pre_quant_norm=True).uses_pre_quant_norm is True
    if "lfq" in PRESENT_KINDS:
        assert tiny("lfq").uses_pre_quant_norm is True
        assert build(tiny("lfq")).pre_quant_norm is not None


def test_default_config_is_cpu_sized() -> None:
    model = VideoTokenizer(TokenizerConfig())
    params = sum(p.numel() for p in model.parameters())
    assert params <= 20_000_000
    assert (model.spatial_factor, model.temporal_factor) == (8, 4)


# ---------------------------------------------------------------- shapes, every quantizer kind


@pytest.mark.parametrize("kind", PRESENT_KINDS)
def test_shapes_for_every_quantizer_kind(kind: str) -> None:
    model = build(tiny(kind))
    video = clip(b=2, t=9, h=16, w=24)
    levels = model.quantizer.num_codebooks
    with torch.no_grad():
        indices = model.encode(video)
        expected = (2, 3, 2, 3) + ((levels,) if levels > 1 else ())
        assert indices.shape == expected
        assert indices.dtype == torch.int64
        assert 0 <= int(indices.min()) and int(indices.max()) < model.quantizer.codebook_size
        assert model.latent_shape(9, 16, 24) == (3, 2, 3)
        recon = model.decode(indices)
        assert recon.shape == (2, 3, 9, 16, 24)
        assert torch.isfinite(recon).all()
        train_recon, out = model(video)
    assert train_recon.shape == video.shape
    assert out.loss.shape == () and torch.isfinite(out.loss)
    # the training pass quantizes to the same indices as encode (eval mode)
    assert torch.equal(out.indices, indices)


@pytest.mark.parametrize("tau", [1, 2, 8])
def test_temporal_factors_give_one_plus_k_latent_frames(tau: int) -> None:
    model = build(tiny("fsq", temporal_factor=tau, channel_multipliers=(1, 1, 1, 1)))
    frames = 1 + 2 * tau
    with torch.no_grad():
        indices = model.encode(clip(b=1, t=frames))
        assert indices.shape == (1, 3, 2, 2)
        assert model.decode(indices).shape == (1, 3, frames, 16, 16)


def test_spatial_factor_16() -> None:
    model = build(tiny("fsq", spatial_factor=16, channel_multipliers=(1, 1, 1, 1, 1)))
    with torch.no_grad():
        indices = model.encode(clip(b=1, t=5, h=32, w=16))
    assert indices.shape == (1, 2, 2, 1)


def test_images_are_one_frame_videos() -> None:
    model = build(tiny("fsq"))
    images = clip(b=2, t=1)[:, :, 0]  # (B, 3, H, W)
    with torch.no_grad():
        from_images = model.encode(images)
        from_video = model.encode(images.unsqueeze(2))
        assert from_images.shape == (2, 1, 2, 2)
        assert torch.equal(from_images, from_video)
        assert model.decode(from_images).shape == (2, 3, 1, 16, 16)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 3, 8, 16, 16), "1 \\+ k\\*4"), ((1, 3, 9, 16, 12), "multiples of 8"),
     ((1, 4, 9, 16, 16), "expected video"), ((3, 9, 16, 16), "expected video")],
)
def test_bad_video_shapes_are_errors(shape: tuple[int, ...], message: str) -> None:
    model = build(tiny("fsq"))
    with pytest.raises(VqtokError, match=message):
        model.encode(torch.zeros(shape))


def test_bad_indices_are_errors() -> None:
    model = build(tiny("fsq"))
    with pytest.raises(VqtokError, match="4 dims"):
        model.decode(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(VqtokError, match="240"):  # 5*4*4*3 codes
        model.decode(torch.full((1, 1, 2, 2), 240, dtype=torch.long))


def test_gradients_reach_the_encoder_through_the_quantizer() -> None:
    model = build(tiny("fsq")).train()
    recon, out = model(clip(b=1, t=5))
    (recon.square().mean() + out.loss).backward()
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("k", [0, 1, 4, 5, 8])
def test_encoder_is_causal(k: int) -> None:
    """Changing frame k changes no latent frame j with j*tau < k (frame 0 alone makes latent 0)."""
    model = build(tiny("fsq", temporal_factor=4))
    video = clip(b=1, t=9)
    changed = video.clone()
    changed[:, :, k] = -changed[:, :, k]
    with torch.no_grad():
        z0, z1 = model.encoder(video), model.encoder(changed)
    first_affected = -(-k // 4)  # ceil(k / tau)
    assert torch.equal(z0[:, :, :first_affected], z1[:, :, :first_affected])
    assert not torch.equal(z0[:, :, first_affected:], z1[:, :, first_affected:])


@pytest.mark.parametrize("j", [1, 2])
def test_decoder_is_causal(j: int) -> None:
    """Changing latent frame j changes no output frame before 1 + (j-1)*tau."""
    model = build(tiny("fsq", temporal_factor=4))
    with torch.no_grad():
        indices = model.encode(clip(b=1, t=9))
        changed = indices.clone()
        changed[:, j] = (changed[:, j] + 7) % model.quantizer.codebook_size
        x0, x1 = model.decode(indices), model.decode(changed)
    first_affected = 1 + (j - 1) * 4
    assert torch.equal(x0[:, :, :first_affected], x1[:, :, :first_affected])
    assert not torch.equal(x0[:, :, first_affected:], x1[:, :, first_affected:])


# ---------------------------------------------------------------- layers


def test_causal_conv_pads_with_copies_of_frame_zero() -> None:
    conv = CausalConv3d(2, 3, (3, 1, 1))
    x = torch.randn(1, 2, 4, 2, 2)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
    expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), expected)


def test_strided_causal_conv_maps_1_plus_2k_frames_to_1_plus_k() -> None:
    down = Downsample(4, spatial=True, temporal=True)
    up = Upsample(4, spatial=True, temporal=True)
    x = torch.randn(1, 4, 7, 8, 8)
    y = down(x)
    assert y.shape == (1, 4, 4, 4, 4)
    assert up(y).shape == (1, 4, 7, 8, 8)


def test_frame_group_norm_normalises_each_frame_alone() -> None:
    norm = FrameGroupNorm(2, 4)
    x = torch.randn(2, 4, 3, 5, 5)
    x[:, :, 2] *= 100  # a loud last frame must not change the first frames' statistics
    y = norm(x)
    for t in range(3):
        frame = y[:, :2, t].reshape(2, -1)  # group 0 of frame t
        torch.testing.assert_close(frame.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(frame.var(1, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)


def test_fused_norm_swish_is_bit_identical_to_norm_then_swish() -> None:
    norm = FrameGroupNorm(2, 4)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 3, 5, 7)
    with torch.inference_mode():  # the fused float64 path
        assert torch.equal(norm.swish(x), swish(norm(x)))
        assert norm.swish(x).is_contiguous()
    x.requires_grad_(True)  # training takes the plain path
    torch.testing.assert_close(norm.swish(x), swish(norm(x)), rtol=0, atol=0)


def test_spatial_upsampling_repeats_each_pixel_into_a_2x2_block() -> None:
    up = Upsample(1, spatial=True, temporal=False)
    torch.nn.init.zeros_(up.conv.weight)
    with torch.no_grad():
        up.conv.weight[0, 0, -1, 1, 1] = 1.0  # identity: the current frame's centre tap
        up.conv.bias.zero_()
    x = torch.arange(12.0).reshape(1, 1, 2, 2, 3)
    expected = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    assert torch.equal(up(x), expected)


@pytest.mark.parametrize("patch", [2, 4])
def test_patch_size_folds_pixels_and_keeps_the_latent_grid(patch: int) -> None:
    stages = {2: (1, 1, 2), 4: (1, 2)}[patch]
    tau = 4 if patch == 2 else 2
    config = tiny("fsq", patch_size=patch, channel_multipliers=stages, temporal_factor=tau)
    model = build(config)
    video = clip(b=2, t=1 + 2 * tau)
    with torch.no_grad():
        indices = model.encode(video)
        assert indices.shape == (2, 3, 2, 2)
        assert model.decode(indices).shape == video.shape
        pieces = list(model.encode_stream(video.split(3, dim=2)))
    assert torch.equal(torch.cat(pieces, dim=1), indices)
    # the first conv sees each p x p patch as 3*p*p channels
    assert model.encoder.conv_in.weight.shape[1] == 3 * patch * patch


def test_patch_size_must_match_the_number_of_stages() -> None:
    with pytest.raises(ConfigError, match="patch_size 2 needs 3 channel_multipliers"):
        tiny(patch_size=2)
    with pytest.raises(ConfigError, match="patch_size"):
        tiny(patch_size=3)
    with pytest.raises(ConfigError, match="temporal_factor 4 needs at least 3 stages"):
        tiny(patch_size=4, channel_multipliers=(1, 2))
