"""Cosmos DV family: Haar patcher, resampling flags, fixture activations, exact streaming and
tiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vqtok.families.tiling as tiling_module
from vqtok.api import Tokenizer
from vqtok.errors import ConfigError, VqtokError
from vqtok.families.cosmos import CosmosConfig, CosmosTokenizer
from vqtok.families.haar import (
    HaarPatcher,
    HaarUnpatcher,
    haar_analysis,
    haar_signs,
    haar_synthesis,
)
from vqtok.families.memory import MemoryPlan
from vqtok.families.tiling import Tiling

FIXTURE = Path(__file__).parents[1] / "fixtures" / "cosmos-dv4x8x8"
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "reference.safetensors")


@pytest.fixture(scope="module")
def model(ref: dict[str, torch.Tensor]) -> CosmosTokenizer:
    """The reduced fixture model; its parameter names are the release's, buffers aside."""
    m = CosmosTokenizer(CosmosConfig(channels=16)).eval()
    m.load_state_dict({k: ref[k] for k in m.state_dict()}, strict=True)
    return m


def test_resampling_flags_match_reference_table() -> None:
    table = json.loads((FIXTURE / "config.json").read_text())["compression_flags"]
    for key, entry in table.items():
        variant = key.split("_")[0]
        config = CosmosConfig(variant=variant, legacy_mode=key.endswith("legacy_mode_true"))
        down = [(d["spatial_down"], d["temporal_down"]) for d in entry["encoder_downsample"]]
        ups = entry["decoder_upsample_in_execution_order"]
        up = [(d["spatial_up"], d["temporal_up"]) for d in ups]
        assert config.down_flags() == down, key
        assert config.up_flags() == up, key


def test_haar_signs_are_orthogonal_and_lll_is_the_block_mean() -> None:
    s = haar_signs()
    assert torch.equal(s @ s.T, 8 * torch.eye(8))
    x = torch.randn(2, 3, 4, 6, 8)
    bands = haar_analysis(x)
    assert bands.shape == (2, 24, 2, 3, 4)
    block_mean = torch.nn.functional.avg_pool3d(x, 2)
    torch.testing.assert_close(bands[:, :3], block_mean)
    # band 1 (LLH) of channel 0: (even w - odd w) / 8 summed over the 2x2x2 block
    d = x[..., 0::2] - x[..., 1::2]
    llh = d.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))[:, :, :, :, :] / 8
    torch.testing.assert_close(bands[:, 3:6], llh)
    torch.testing.assert_close(haar_synthesis(bands), x)


def test_patcher_matches_fixture_and_inverts(ref: dict[str, torch.Tensor]) -> None:
    patched = HaarPatcher(4)(ref["input"])
    torch.testing.assert_close(patched, ref["debug.enc_patched"], atol=ATOL, rtol=0)
    torch.testing.assert_close(HaarUnpatcher(4)(patched), ref["input"], atol=1e-5, rtol=0)


def test_activations_latents_and_output_match_fixture(
    model: CosmosTokenizer, ref: dict[str, torch.Tensor]
) -> None:
    check_main_case(model, ref)


def check_main_case(model: CosmosTokenizer, ref: dict[str, torch.Tensor]) -> None:
    """The 17-frame case: the nine intermediate activations in execution order (so the first
    failure says where a mismatch starts), latents, codes, indices and output."""
    probes = {
        "debug.enc_patched": model.encoder.patcher3d,
        "debug.enc_conv_in": model.encoder.conv_in,
        "debug.enc_down0_downsample": model.encoder.down[0].downsample,
        "debug.enc_mid": model.encoder.mid,
        "debug.enc_z": model.encoder,
        "debug.dec_post_quant": model.post_quant_conv,
        "debug.dec_mid": model.decoder.mid,
        "debug.dec_up2_upsample": model.decoder.up[2].upsample,
        "debug.dec_pre_unpatch": model.decoder.conv_out,
    }
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
        for name, module in probes.items()
    ]
    try:
        with torch.no_grad():
            latents = model.latents(ref["input"])
            out = model.quantize(latents)
            video = model.decode(ref["indices"].long())
    finally:
        for hook in hooks:
            hook.remove()
    for name in probes:  # in execution order, so the first failure says where it starts
        torch.testing.assert_close(seen[name], ref[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(latents, ref["latent"], atol=ATOL, rtol=0)
    assert torch.equal(out.codes, ref["codes"])
    assert torch.equal(out.indices, ref["indices"].long())
    torch.testing.assert_close(video, ref["output"], atol=ATOL, rtol=0)


def test_causal_prefixes_match_fixture(
    model: CosmosTokenizer, ref: dict[str, torch.Tensor]
) -> None:
    with torch.no_grad():
        for frames, prefix in ((1, "t1."), (9, "t9.")):
            indices = model.encode(ref["input"][:, :, :frames])
            assert torch.equal(indices, ref[f"{prefix}indices"].long())
            assert torch.equal(indices, ref["indices"][:, : indices.shape[1]].long())


def test_stream_equals_one_shot_on_fixture(
    model: CosmosTokenizer, ref: dict[str, torch.Tensor]
) -> None:
    video = ref["input"]
    with torch.no_grad():
        whole = model.encode(video)
        for sizes in ([1, 4, 8, 4], [3, 14]):
            chunks = model.encode_stream(video.split(sizes, dim=2))
            assert torch.equal(torch.cat(list(chunks), dim=1), whole), sizes
        decoded = model.decode(whole)
        streamed = torch.cat(list(model.decode_stream(whole.split([1, 2, 2], dim=1))), dim=2)
    torch.testing.assert_close(streamed, decoded, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("variant", "legacy"), [("DV8x8x8", False), ("DV8x8x8", True), ("DV8x16x16", False)]
)
def test_8x_variants_stream_exactly(variant: str, legacy: bool) -> None:
    torch.manual_seed(0)
    model = CosmosTokenizer(CosmosConfig(variant=variant, channels=4, legacy_mode=legacy)).eval()
    size = model.spatial_factor
    video = torch.rand(1, 3, 25, size, size) * 2 - 1
    with torch.no_grad():
        whole = model.encode(video)
        assert whole.shape == (1, 4, 1, 1)
        streamed = torch.cat(list(model.encode_stream(video.split([2, 7, 16], dim=2))), dim=1)
        assert torch.equal(streamed, whole)
        decoded = model.decode(whole)
        assert decoded.shape == video.shape
        parts = list(model.decode_stream(whole.split([1, 1, 2], dim=1)))
    assert [p.shape[2] for p in parts] == [1, 8, 16]
    torch.testing.assert_close(torch.cat(parts, dim=2), decoded, atol=1e-5, rtol=0)


def test_config_round_trip_and_errors() -> None:
    config = CosmosConfig(variant="DV8x16x16", channels=8)
    assert CosmosConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.temporal_factor, config.spatial_factor) == (8, 16)
    with pytest.raises(ConfigError, match="unknown cosmos-dv config key"):
        CosmosConfig.from_dict({"variant": "DV4x8x8", "chanels": 8})
    with pytest.raises(ConfigError, match="variant"):
        CosmosConfig(variant="DV4x8x16")
    with pytest.raises(ConfigError, match="compression"):
        CosmosConfig(variant="DV4x32x32")


def test_bad_clip_lengths_are_refused(model: CosmosTokenizer) -> None:
    with pytest.raises(VqtokError, match="1 \\+ k\\*4 frames"):
        model.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(VqtokError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 1, 12, 16))


@pytest.mark.parametrize(("variant", "spill"), [("DV4x8x8", False), ("DV8x16x16", True)])
def test_tiled_stream_gives_the_untiled_indices_and_frames(
    ref: dict[str, torch.Tensor], variant: str, spill: bool, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Convolutions in tiles, norms and attention on whole frames: bit-identical, on a frame
    that is not a multiple of the tile (DV8x16x16 adds the spatial and temporal resampling),
    with the carried frames on disk or not."""
    monkeypatch.setattr(tiling_module, "_SPILL_MIN_BYTES", 0)  # spill every carried tensor
    model = CosmosTokenizer(CosmosConfig(variant=variant, channels=16)).eval()
    model.load_state_dict({k: ref[k] for k in model.state_dict()}, strict=True)
    f, tau = model.spatial_factor, model.temporal_factor
    torch.manual_seed(3)
    video = torch.rand(1, 3, 1 + 2 * tau, 3 * f, 5 * f) * 2 - 1
    tiling = Tiling(16, 24, spill_dir=str(tmp_path) if spill else None)
    with torch.no_grad():
        whole = model.encode(video)
        tiled = torch.cat(list(model.encode_stream(video.split([3, 2 * tau - 2], dim=2),
                                                   tiling=tiling)), dim=1)
        assert torch.equal(tiled, whole)
        per_frame = list(model.decode_stream(whole.split(1, dim=1)))
        tiled_frames = list(model.decode_stream([whole], tiling=tiling))
    assert [p.shape[2] for p in tiled_frames] == [1, tau, tau]
    assert all(torch.equal(a, b) for a, b in zip(tiled_frames, per_frame, strict=True))
    assert list(tmp_path.iterdir()) == []  # spilled frames are removed


def test_tokenizer_tiles_a_cosmos_model_and_the_planner_probes_it(model: CosmosTokenizer) -> None:
    tok = Tokenizer(model)
    video = torch.rand(1, 3, 5, 24, 40) * 2 - 1
    assert torch.equal(tok.encode(video, tiling=Tiling(16, 16)), tok.encode(video))
    plan = MemoryPlan(max_memory=0.5)
    assert plan.tiling_for(model, 256, 256, 16) is None  # small frames fit the budget
    assert plan.tiling_for(model, 2160, 3840, 16).height == 512  # type: ignore[union-attr]
    assert MemoryPlan(tile=(64, 96)).tiling_for(model, 64, 64, 4, decode=True) == Tiling(64, 96)
