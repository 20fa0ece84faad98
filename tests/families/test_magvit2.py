"""Open-MAGVIT2 video family: fixture activations, LSB-first LFQ bits, depth-to-space order,
adaptive GroupNorm formula, windows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vqtok.errors import ConfigError
from vqtok.families.magvit2 import AdaptiveGroupNorm, Magvit2Config, Magvit2Tokenizer, Upsampler

FIXTURE = Path(__file__).parents[1] / "fixtures" / "open-magvit2-video"
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "reference.safetensors")


@pytest.fixture(scope="module")
def model(ref: dict[str, torch.Tensor]) -> Magvit2Tokenizer:
    """The reduced fixture model (ch 32, one ResBlock per level), weights upcast from F16."""
    m = Magvit2Tokenizer(Magvit2Config(ch=32, num_res_blocks=1)).eval()
    weights = {
        re.sub(r"\.conv_1\.(weight|bias)$", r".\1", k): v.float()
        for k, v in ref.items()
        if k.startswith(("encoder.", "decoder."))
    }
    m.load_state_dict(weights, strict=True)
    return m


def test_every_module_activation_matches_fixture(
    model: Magvit2Tokenizer, ref: dict[str, torch.Tensor]
) -> None:
    check_activations(model, ref)


def check_activations(model: Magvit2Tokenizer, ref: dict[str, torch.Tensor]) -> None:
    """The 26 per-module outputs on the debug clip (encoder) and its codes (decoder)."""
    wanted = [k for k in ref if k.startswith("act.")]
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[name[4:]].register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out)
        )
        for name in wanted
    ]
    try:
        with torch.no_grad():
            latents = model.latents(ref["debug_input"])
            model.decoder(ref["debug_codes"])
    finally:
        for hook in hooks:
            hook.remove()
    assert len(wanted) == 26
    for name in wanted:
        torch.testing.assert_close(seen[name], ref[name], atol=ATOL, rtol=0, msg=name)
    assert torch.equal(model.quantize(latents).codes, ref["debug_codes"])


def test_ten_frame_case_matches_fixture(
    model: Magvit2Tokenizer, ref: dict[str, torch.Tensor]
) -> None:
    with torch.no_grad():
        latents = model.latents(ref["case_t10_input"])
        out = model.quantize(latents)
        indices = model.encode(ref["case_t10_input"])
        video = model.decode(indices)
    torch.testing.assert_close(latents, ref["case_t10_latent"], atol=ATOL, rtol=0)
    assert torch.equal(out.codes, ref["case_t10_codes"])
    assert torch.equal(indices.flatten(), ref["case_t10_indices"])
    assert video.shape == (1, 3, 9, 32, 32)  # 10 frames -> 3 latent frames -> 9 frames
    torch.testing.assert_close(video, ref["case_t10_output"], atol=ATOL, rtol=0)


def test_indices_pack_channel_0_as_least_significant_bit(model: Magvit2Tokenizer) -> None:
    latents = torch.randn(2, 18, 1, 2, 3)
    latents[0, :, 0, 0, 0] = 0.0  # exactly 0 is bit 0 (-1)
    out = model.quantize(latents)
    bits = (latents > 0).long()
    expected = (bits * (2 ** torch.arange(18))[None, :, None, None, None]).sum(1)
    assert torch.equal(out.indices, expected)
    assert out.indices[0, 0, 0, 0] == 0
    assert torch.equal(out.codes, torch.where(latents > 0, 1.0, -1.0))
    assert torch.equal(model.indices_to_codes(out.indices), out.codes)


def test_depth_to_space_puts_the_sub_position_outermost() -> None:
    up = Upsampler(2, (2, 2, 2))
    up.conv1 = nn.Identity()  # type: ignore[assignment]
    x = torch.arange(16 * 3 * 1 * 1, dtype=torch.float32).reshape(1, 16, 3, 1, 1)
    y = up(x)
    assert y.shape == (1, 2, 5, 2, 2)  # 3 frames -> 2*3 - 1
    full = torch.empty(1, 2, 6, 2, 2)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                for c in range(2):
                    full[0, c, i::2, j, k] = x[0, ((i * 2 + j) * 2 + k) * 2 + c, :, 0, 0]
    assert torch.equal(y, torch.cat([full[:, :, :1], full[:, :, 2:]], dim=2))


def test_adaptive_group_norm_uses_unbiased_code_statistics() -> None:
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(4, 64)
    x, codes = torch.randn(2, 64, 3, 4, 4), torch.randn(2, 4, 2, 2, 2)
    mean = codes.mean(dim=(2, 3, 4))
    var = ((codes - mean[..., None, None, None]) ** 2).sum(dim=(2, 3, 4)) / 7  # N - 1
    scale = norm.gamma((var + 1e-6).sqrt())[..., None, None, None]
    shift = norm.beta(mean)[..., None, None, None]
    expected = F.group_norm(x, 32, eps=1e-6) * scale + shift
    torch.testing.assert_close(norm(x, codes), expected)


def test_long_clips_are_independent_windows(model: Magvit2Tokenizer) -> None:
    torch.manual_seed(0)
    video = torch.rand(1, 3, 26, 16, 16) * 2 - 1
    with torch.no_grad():
        indices = model.encode(video)
        assert indices.shape == (1, *model.latent_shape(26, 16, 16)) == (1, 8, 2, 2)
        assert torch.equal(indices[:, :5], model.encode(video[:, :, :17]))
        assert torch.equal(indices[:, 5:], model.encode(video[:, :, 17:]))
        streamed = torch.cat(list(model.encode_stream(video.split([3, 10, 13], dim=2))), dim=1)
        assert torch.equal(streamed, indices)
        decoded = model.decode(indices)
        assert decoded.shape[2] == 17 + 9
        torch.testing.assert_close(decoded[:, :, 17:], model.decode(indices[:, 5:]))
        parts = list(model.decode_stream(indices.split([2, 6], dim=1)))
    assert [p.shape[2] for p in parts] == [17, 9]
    assert torch.equal(torch.cat(parts, dim=2), decoded)


def test_config_round_trip_and_errors() -> None:
    config = Magvit2Config(ch=64, num_res_blocks=2)
    assert Magvit2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.temporal_factor, config.spatial_factor) == (4, 8)
    with pytest.raises(ConfigError, match="unknown open-magvit2-video config key"):
        Magvit2Config.from_dict({"ch": 32, "bits": 18})
    with pytest.raises(ConfigError, match="multiple of 32"):
        Magvit2Config(ch=48)
    with pytest.raises(ConfigError, match="window"):
        Magvit2Config(window=16)
