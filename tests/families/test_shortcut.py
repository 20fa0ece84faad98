"""The parameter-free encoder / decoder shortcuts: exact pooling, causal, streamable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.families.test_streaming import chunked, clip, tiny, uneven
from vqtok.errors import ConfigError
from vqtok.families.layers import StreamState
from vqtok.families.shortcut import (
    PoolShortcut,
    UnpoolShortcut,
    block_vectors,
    fit_linear_shortcut,
    shortcut_groups,
)
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer


def test_groups_cover_every_entry_in_consecutive_runs() -> None:
    groups = shortcut_groups(16, 8)  # 3*8*8 = 192 entries -> 16 runs of 12
    assert groups.shape == (192,)
    assert torch.equal(torch.bincount(groups), torch.full((16,), 12))
    assert torch.all(groups.diff() >= 0)


def test_pool_is_the_causal_block_mean_of_each_group() -> None:
    f, tau, d = 4, 2, 6  # 48 entries -> 6 groups of 8 = (colour c, rows 2c'..2c'+1) runs
    video = torch.randn(2, 3, 5, 8, 12)
    z = PoolShortcut(d, f, tau)(video)
    assert z.shape == (2, d, 3, 2, 3)
    blocks = video.reshape(2, 3, 5, 2, f, 3, f).permute(0, 1, 4, 6, 2, 3, 5).reshape(2, 48, 5, 2, 3)
    groups = shortcut_groups(d, f)
    for k in range(d):
        members = blocks[:, groups == k]  # (B, 8, T, 2, 3)
        torch.testing.assert_close(z[:, k, 0], members[:, :, 0].mean(1))  # frame 0 alone
        torch.testing.assert_close(z[:, k, 1], members[:, :, 1:3].mean((1, 2)))
        torch.testing.assert_close(z[:, k, 2], members[:, :, 3:5].mean((1, 2)))


def test_unpool_inverts_pool_on_block_constant_video() -> None:
    """A video constant over each group's pixels and each tau-frame block comes back exactly."""
    f, tau, d = 4, 4, 12
    codes = torch.randn(1, d, 3, 2, 2)
    video = UnpoolShortcut(d, f, tau)(codes)
    assert video.shape == (1, 3, 9, 8, 8)
    torch.testing.assert_close(PoolShortcut(d, f, tau)(video), codes)


def test_unpool_stream_equals_one_shot() -> None:
    up = UnpoolShortcut(4, 8, 4)
    codes = torch.randn(1, 4, 5, 2, 2)
    state = StreamState()
    parts = [up(c, state) for c in uneven(codes, [1, 2, 2], 2)]
    assert [p.shape[2] for p in parts] == [1, 8, 8]
    assert torch.equal(torch.cat(parts, dim=2), up(codes))


@pytest.mark.parametrize("mode", ["encoder", "both"])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_model_with_shortcut_streams_exactly(mode: str, chunk: int) -> None:
    model = tiny(shortcut=mode)
    video = clip(2, 13)
    with torch.no_grad():
        one_shot = model.encode(video)
        streamed = torch.cat(list(model.encode_stream(chunked(video, chunk, 2))), dim=1)
        assert torch.equal(streamed, one_shot)
        decoded = torch.cat(list(model.decode_stream(chunked(one_shot, 2, 1))), dim=2)
        torch.testing.assert_close(decoded, model.decode(one_shot), atol=1e-5, rtol=1e-5)


def test_shortcut_starts_the_model_near_the_pooling_baseline() -> None:
    """With zeroed networks, "both" reconstructs a block-constant clip up to the quantizer's
    rounding; "none" reconstructs zeros."""
    smooth = UnpoolShortcut(4, 8, 4)(torch.rand(1, 4, 2, 2, 2) - 0.5)  # (1, 3, 5, 16, 16)
    errors = {}
    for mode in ("none", "both"):
        model = tiny("fsq", {"levels": [15] * 4}, shortcut=mode)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "encoder.conv_out" in name or "decoder.conv_out" in name:
                    p.zero_()
            recon, _ = model(smooth)
        errors[mode] = F.mse_loss(recon, smooth).item()
    assert errors["both"] < errors["none"] / 4


def test_shortcut_adds_no_weights_and_config_checks_the_mode() -> None:
    assert tiny(shortcut="both").state_dict().keys() == tiny().state_dict().keys()
    with pytest.raises(ConfigError, match="shortcut"):
        TokenizerConfig(shortcut="yes")


# ---------------------------------------------------------------- linear (PCA) shortcuts


def test_block_vectors_repeat_frame_zero_for_the_first_latent_frame() -> None:
    video = torch.randn(1, 3, 5, 8, 8)
    rows = block_vectors(video, 8, 2)  # (1 + 2 latent frames) x 1 x 1 positions
    assert rows.shape == (3, 3 * 64 * 2)
    first = rows[0].view(3 * 64, 2)
    torch.testing.assert_close(first[:, 0], first[:, 1])  # frame 0 seen twice
    torch.testing.assert_close(rows[1].view(3, 8, 8, 2)[..., 1], video[0, :, 2])


def test_fit_gives_orthonormal_principal_components() -> None:
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(5, 40, generator=g)
    blocks = torch.randn(2000, 5, generator=g) @ mixing + 3.0  # rank-5 data
    basis, mean = fit_linear_shortcut(blocks, 5)
    torch.testing.assert_close(basis @ basis.T, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(mean, blocks.mean(0), atol=1e-4, rtol=0)
    # five components hold rank-5 data exactly
    centred = blocks - mean
    torch.testing.assert_close(centred @ basis.T @ basis, centred, atol=1e-3, rtol=1e-3)


def linear_model() -> VideoTokenizer:
    return tiny("ema_rvq", {"num_levels": 2, "codebook_sizes": 8}, latent_dim=6,
                shortcut="linear")


def test_untrained_linear_model_is_the_fitted_linear_tokenizer() -> None:
    model = linear_model()
    video = clip(2, 9)
    basis, mean = fit_linear_shortcut(block_vectors(video, 8, 4), 6)
    for shortcut in (model.encoder.shortcut, model.decoder.shortcut):
        shortcut.set_basis(basis, mean)
    latents = model.latents(video)  # networks start silent: the projection alone
    rows = (block_vectors(video, 8, 4) - mean) @ basis.T
    torch.testing.assert_close(latents.movedim(1, -1).reshape(-1, 6), rows, atol=1e-5, rtol=0)
    out = model.decoder(latents)
    torch.testing.assert_close(out, model.decoder.shortcut(latents))
    # the decoder's shortcut maps each later latent back to its block, basis.T z + mean
    blocks = rows @ basis + mean  # (B * t * h * w, 3ff*tau), rows ordered (b, t, h, w)
    latent1 = blocks.view(2, 3, 2, 2, 3, 8, 8, 4)[0, 1, 0, 0]  # clip 0, latent frame 1, (0, 0)
    torch.testing.assert_close(out[0, :, 1:5, :8, :8], latent1.permute(0, 3, 1, 2), atol=1e-5,
                               rtol=0)


def test_linear_shortcuts_stream_exactly_and_survive_save_load(tmp_path) -> None:
    from vqtok.io.checkpoint import load_pretrained, save_pretrained

    model = linear_model()
    video = clip(1, 13)
    basis, mean = fit_linear_shortcut(block_vectors(video, 8, 4), 6)
    for shortcut in (model.encoder.shortcut, model.decoder.shortcut):
        shortcut.set_basis(basis, mean)
    whole = model.encode(video)
    streamed = torch.cat(list(model.encode_stream(uneven(video, [1, 6, 6], 2))), dim=1)
    assert torch.equal(whole, streamed)
    decoded = model.decode(whole)
    parts = torch.cat(list(model.decode_stream(chunked(whole, 1, 1))), dim=2)
    torch.testing.assert_close(parts, decoded, atol=1e-5, rtol=1e-5)
    save_pretrained(model, tmp_path / "m")
    again = load_pretrained(tmp_path / "m")
    assert torch.equal(again.encode(video), whole)
