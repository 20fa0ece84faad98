"""`vqtok.train.loop`: a tiny model learns, checkpoints resume exactly, configs are strict."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.clips import make_clip
from vqtok.errors import ConfigError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import load_pretrained, read_info, weights_sha256
from vqtok.train.config import RunConfig, TrainConfig
from vqtok.train.dataset import ClipSampler, ClipSpec, Footage, load_footage, split_holdout
from vqtok.train.loop import learning_rate, train

TINY_MODEL = {
    "channels": 8,
    "channel_multipliers": [1, 1, 2, 2],
    "num_res_blocks": 1,
    "temporal_factor": 2,
    "latent_dim": 4,
    "norm_groups": 4,
    "quantizer": "fsq",
    "quantizer_options": {"levels": [5, 5, 5, 5]},
}


def tiny_run(steps: int, **train) -> RunConfig:
    options = {
        "clip_frames": 5,
        "crop_size": 16,
        "short_side": 32,
        "holdout_frames": 5,
        "eval_size": 16,
        "steps": steps,
        "batch_size": 2,
        "lr": 3e-3,
        "warmup_steps": 2,
        "log_every": 1,
        "eval_every": steps,
        "save_every": 2,
        "dead_code_every": 3,
        "prefetch": 2,
        **train,
    }
    return RunConfig.from_dict({"name": "tiny", "model": TINY_MODEL, "train": options})


@pytest.fixture(scope="module")
def footage_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("footage")
    make_clip(d / "a.mp4", frames=20, size=(32, 48), fps=10)
    return d


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_a_loadable_model(footage_dir, tmp_path):
    config = tiny_run(60, lr=3e-3)
    result = train(config, [footage_dir], tmp_path / "run", device="cpu")
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(records) == 60 and all(np.isfinite(r["loss"]) for r in records)
    # reconstruction error on fixed clips: the initial model (same seed) vs the trained one
    footage, _ = split_holdout(load_footage([footage_dir], 32), 5)
    probe = ClipSampler(footage, ClipSpec(5, 16), batch_size=4, seed=123).sample_batch(0)
    torch.manual_seed(config.train.seed)
    untrained = VideoTokenizer(config.model).eval()
    trained = load_pretrained(result.model_dir)
    with torch.no_grad():
        before = F.l1_loss(untrained(probe)[0], probe).item()
        after = F.l1_loss(trained(probe)[0], probe).item()
    assert after < 0.85 * before
    assert "eval_psnr" in result.last_eval and result.last_eval["eval_usage"] > 0
    assert trained.config.to_dict() == config.model.to_dict()
    assert "tiny" in (result.model_dir / "README.md").read_text()


def test_resume_continues_exactly(footage_dir, tmp_path):
    straight = train(tiny_run(6), [footage_dir], tmp_path / "a", device="cpu")
    # the same run, interrupted (Ctrl-C) after step 4, then resumed to 6

    def interrupt(record):
        if record.get("step") == 4 and "loss" in record:
            raise KeyboardInterrupt

    cut = train(tiny_run(6), [footage_dir], tmp_path / "b", device="cpu", on_progress=interrupt)
    assert cut.interrupted and cut.step == 4 and cut.model_dir is None
    resumed = train(tiny_run(6), [footage_dir], tmp_path / "b", device="cpu", resume=True)
    assert resumed.step == 6
    a = load_pretrained(straight.model_dir).state_dict()
    b = load_pretrained(resumed.model_dir).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_existing_checkpoint_needs_resume(footage_dir, tmp_path):
    train(tiny_run(2), [footage_dir], tmp_path / "run", device="cpu")
    with pytest.raises(ConfigError, match="resume"):
        train(tiny_run(2), [footage_dir], tmp_path / "run", device="cpu")


def test_config_rejects_unknown_and_mistyped_options():
    with pytest.raises(ConfigError, match="bogus"):
        RunConfig.from_dict({"model": TINY_MODEL, "train": {"bogus": 1}})
    with pytest.raises(ConfigError, match="steps"):
        RunConfig.from_dict({"model": TINY_MODEL, "train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="extra"):
        RunConfig.from_dict({"model": TINY_MODEL, "extra": {}})
    cfg = tiny_run(3)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9) == pytest.approx(1.0)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 100) == pytest.approx(0.1)
    assert 0.1 < learning_rate(cfg, 55) < 1.0


def test_sampler_is_reproducible_per_step_and_holds_out_the_tail():
    frames = np.random.default_rng(0).integers(0, 255, (30, 20, 24, 3), dtype=np.uint8)
    train_part, held = split_holdout([Footage("v", frames)], holdout_frames=10)
    assert train_part[0].frames.shape[0] == 20 and held[0].frames.shape[0] == 10
    still = Footage("still", frames[:1])
    sampler = ClipSampler(train_part + [still], ClipSpec(5, 16, (1, 2)), batch_size=3, seed=1)
    a, b = sampler.sample_batch(7), sampler.sample_batch(7)
    assert a.shape == (3, 3, 5, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, sampler.sample_batch(8))
    assert a.min() >= -1 and a.max() <= 1
    steps = [s for s, _ in sampler.prefetch(3, 6, depth=2)]
    assert steps == [3, 4, 5]


def test_frame_cap_limits_a_long_source_s_share():
    frames = np.zeros((400, 8, 8, 3), dtype=np.uint8)
    sources = [Footage("film", frames), Footage("short", frames[:40])]
    spec = ClipSpec(5, 8)
    assert ClipSampler(sources, spec, 1).weights.tolist() == [400.0, 40.0]
    assert ClipSampler(sources, spec, 1, frame_cap=100).weights.tolist() == [100.0, 40.0]


def test_image_steps_cut_one_frame_crops_at_native_scale(footage_dir, tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, (12, 20, 24, 3), dtype=np.uint8)
    still = np.random.default_rng(2).integers(0, 255, (1, 18, 22, 3), dtype=np.uint8)
    sources = [Footage("v", frames), Footage("still", still)]
    sampler = ClipSampler(sources, ClipSpec(5, 8, flip=False), batch_size=2, seed=3,
                          image_every=3)
    flags = [sampler.is_image_step(s) for s in range(-3, 6)]
    assert flags == [False] * 5 + [True, False, False, True]  # steps 2 and 5; init batches never
    assert sampler.sample_batch(0).shape == (2, 3, 5, 8, 8)
    images = sampler.sample_batch(2)
    assert images.shape == (10, 3, 1, 8, 8)
    # every crop is an unscaled 8x8 window of one source frame (no pan, no zoom)
    windows = {}
    for name, src in (("v", frames), ("still", still)):
        clip = torch.from_numpy(src).permute(3, 0, 1, 2).float() / 127.5 - 1
        windows[name] = clip.unfold(2, 8, 1).unfold(3, 8, 1)  # (3, T, y, x, 8, 8)
    for crop in images[:, :, 0]:
        hits = [(w.permute(1, 2, 3, 0, 4, 5) - crop).abs().amax(dim=(-3, -2, -1)).min()
                for w in windows.values()]
        assert min(hits) < 1e-5
    # larger image crops: fewer of them, about the pixels of a clip step
    wide = ClipSampler(sources, ClipSpec(5, 8, flip=False), batch_size=2, seed=3,
                       image_every=3, image_size=16)
    assert wide.sample_batch(2).shape == (2, 3, 1, 16, 16)  # round(2 * 5 * 64 / 256) = 2
    assert wide.sample_batch(0).shape == (2, 3, 5, 8, 8)
    train(tiny_run(4, image_every=2, image_crop_size=32), [footage_dir], tmp_path / "run",
          device="cpu")
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(records) == 4 and all(np.isfinite(r["loss"]) for r in records)


def test_residual_ema_model_trains_with_dead_code_reseeding(footage_dir, tmp_path):
    model = {**TINY_MODEL, "quantizer": "ema_rvq",
             "quantizer_options": {"num_levels": 2, "codebook_sizes": [16, 8]}}
    options = {**tiny_run(4).to_dict()["train"], "dead_code_every": 2, "eval_every": 4}
    config = RunConfig.from_dict({"name": "rvq", "model": model, "train": options})
    result = train(config, [footage_dir], tmp_path / "run", device="cpu")
    reseeded = [r["reseeded"] for r in read_metrics(tmp_path / "run") if "reseeded" in r]
    # step 1: every code starts from the data (16 + 8); steps 2 and 4: the unused ones
    assert len(reseeded) == 3 and reseeded[0] == 24
    assert 0 < result.last_eval["eval_usage"] <= 1


def test_transfer_weights_keeps_the_backbone_and_swaps_the_quantizer(tmp_path):
    from vqtok.families.vqtok import TokenizerConfig
    from vqtok.io.checkpoint import save_pretrained
    from vqtok.train.loop import transfer_weights

    torch.manual_seed(0)
    source = VideoTokenizer(TokenizerConfig.from_dict(TINY_MODEL))
    save_pretrained(source, tmp_path / "src")
    lfq = {**TINY_MODEL, "quantizer": "lfq", "quantizer_options": {"codebook_size": 16}}
    target = VideoTokenizer(TokenizerConfig.from_dict(lfq))
    fresh = transfer_weights(target, tmp_path / "src")
    assert fresh == ["pre_quant_norm.bias", "pre_quant_norm.weight"]  # LFQ's own, left as is
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    wider = VideoTokenizer(TokenizerConfig.from_dict({**TINY_MODEL, "channels": 16}))
    with pytest.raises(ConfigError, match="do not fit"):
        transfer_weights(wider, tmp_path / "src")


def linear_rvq_run(steps: int) -> RunConfig:
    model = {**TINY_MODEL, "quantizer": "ema_rvq", "latent_dim": 6, "shortcut": "linear",
             "quantizer_options": {"num_levels": 3, "codebook_sizes": 8}}
    options = {**tiny_run(steps).to_dict()["train"], "ssim_weight": 0.5,
               "seam_weight": 1.0, "temporal_weight": 1.0, "boundary_weight": 1.0,
               "kmeans_init_batches": 4, "fit_shortcut_batches": 4,
               "quantizer_dropout": 0.5, "weight_ema": 0.9, "eval_every": 2,
               "dead_code_every": 2}  # a multiple of save_every: resume is exact
    return RunConfig.from_dict({"name": "lin", "model": model, "train": options})


def test_linear_recipe_starts_fitted_and_keeps_its_best_model(footage_dir, tmp_path):
    seen = []
    result = train(linear_rvq_run(4), [footage_dir], tmp_path / "run", device="cpu",
                   on_progress=seen.append)
    setup = seen[0]
    assert setup["step"] == 0 and setup["shortcut_blocks"] > 0 and setup["kmeans_samples"] > 0
    steps = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert {r["levels"] for r in steps} - {0} <= {1, 2}  # dropout runs a prefix of 3 levels
    assert all(0 <= r["ssim_loss"] <= 2 for r in steps)
    assert all(r["seam_loss"] > 0 for r in steps)
    assert all(r["temporal_loss"] > 0 and r["boundary_loss"] > 0 for r in steps)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    evals = [r["eval_psnr"] for r in read_metrics(tmp_path / "run") if "eval_psnr" in r]
    assert best["eval_psnr"] == max(evals)
    shipped = load_pretrained(result.model_dir)
    basis = shipped.state_dict()["encoder.shortcut.basis"]
    torch.testing.assert_close(basis @ basis.T, torch.eye(6), atol=1e-5, rtol=0)


def test_fine_tune_keeps_the_codebooks_unless_their_shape_changes(footage_dir, tmp_path):
    source = train(linear_rvq_run(1), [footage_dir], tmp_path / "src", device="cpu").model_dir
    same, seen = linear_rvq_run(1), []
    train(same, [footage_dir], tmp_path / "same", device="cpu", init_from=source,
          on_progress=seen.append)
    assert "kmeans_samples" not in seen[0]  # the codebooks came with the weights
    data = same.to_dict()
    data["model"]["quantizer_options"]["beta"] = 0.1  # a loss weight: the same codebooks
    seen = []
    train(RunConfig.from_dict(data), [footage_dir], tmp_path / "beta", device="cpu",
          init_from=source, on_progress=seen.append)
    assert "kmeans_samples" not in seen[0]
    data["model"]["quantizer_options"] = {"num_levels": 2, "codebook_sizes": 16}
    seen = []
    train(RunConfig.from_dict(data), [footage_dir], tmp_path / "new", device="cpu",
          init_from=source, on_progress=seen.append)
    assert seen[0]["step"] == 0 and seen[0]["kmeans_samples"] > 0
    assert "shortcut_blocks" not in seen[0]  # the fitted basis came with the backbone


def test_linear_recipe_resumes_exactly_with_the_weight_average(footage_dir, tmp_path):
    straight = train(linear_rvq_run(4), [footage_dir], tmp_path / "a", device="cpu")

    def interrupt(record):
        if record.get("step") == 2 and "loss" in record:
            raise KeyboardInterrupt

    train(linear_rvq_run(4), [footage_dir], tmp_path / "b", device="cpu", on_progress=interrupt)
    resumed = train(linear_rvq_run(4), [footage_dir], tmp_path / "b", device="cpu", resume=True)
    a = load_pretrained(straight.model_dir).state_dict()
    b = load_pretrained(resumed.model_dir).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_decoder_only_finish_keeps_the_encoder_and_codebooks(footage_dir, tmp_path):
    source = train(linear_rvq_run(1), [footage_dir], tmp_path / "src", device="cpu").model_dir
    data = linear_rvq_run(3).to_dict()
    data["train"].update(trainable="decoder", dead_code_every=0)
    finish = RunConfig.from_dict(data)
    result = train(finish, [footage_dir], tmp_path / "dec", device="cpu", init_from=source)
    before = load_pretrained(source).state_dict()
    after = load_pretrained(result.model_dir).state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quantizer."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any("codebooks" in k for k in frozen)  # the EMA codebooks and their statistics
    decoder = [k for k in before if k.startswith("decoder.") and "shortcut" not in k]
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    # every model it writes says its index files are the source's (decode takes them)
    for written in (result.model_dir, tmp_path / "dec" / "best", tmp_path / "dec" / "checkpoint"
                    / "model"):
        assert read_info(written).decodes_indices_of == (weights_sha256(source),)
    assert read_info(source).decodes_indices_of == ()
    with pytest.raises(ConfigError, match="init-from"):
        train(finish, [footage_dir], tmp_path / "fresh", device="cpu")


def test_decoder_only_finish_rejects_codebook_reseeding():
    data = linear_rvq_run(3).to_dict()
    data["train"].update(trainable="decoder")
    with pytest.raises(ConfigError, match="dead_code_every"):
        RunConfig.from_dict(data)
    data["train"].update(trainable="encoder", dead_code_every=0)
    with pytest.raises(ConfigError, match="trainable"):
        RunConfig.from_dict(data)


def test_grey_clips_have_equal_channels_and_other_clips_are_unchanged():
    frames = np.random.default_rng(1).integers(0, 255, (30, 20, 24, 3), dtype=np.uint8)
    sources = [Footage("v", frames)]
    plain = ClipSampler(sources, ClipSpec(5, 16), batch_size=1, seed=2).sample_batch(3)
    grey = ClipSampler(sources, ClipSpec(5, 16, grey=1.0), batch_size=1, seed=2).sample_batch(3)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    luma = (plain * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)).sum(1)
    assert torch.allclose(grey[:, 0], luma, atol=1e-6)
    none = ClipSampler(sources, ClipSpec(5, 16, grey=0.0), batch_size=1, seed=2).sample_batch(3)
    assert torch.equal(none, plain)
    half = ClipSampler(sources, ClipSpec(5, 16, grey=0.5), batch_size=64, seed=2).sample_batch(0)
    greyed = sum(bool(torch.equal(c[0], c[2])) for c in half)
    assert 16 <= greyed <= 48


def test_stride_zero_holds_one_frame_and_negative_strides_are_refused():
    frames = np.random.default_rng(4).integers(0, 255, (30, 20, 24, 3), dtype=np.uint8)
    sources = [Footage("v", frames)]
    held = ClipSampler(sources, ClipSpec(5, 16, (0,)), batch_size=3, seed=5).sample_batch(0)
    assert held.shape == (3, 3, 5, 16, 16)
    assert all(torch.equal(held[:, :, t], held[:, :, 0]) for t in range(1, 5))
    moving = ClipSampler(sources, ClipSpec(5, 16, (1,)), batch_size=3, seed=5).sample_batch(0)
    assert not torch.equal(moving[:, :, 1], moving[:, :, 0])
    assert TrainConfig(temporal_strides=(0, 1)).temporal_strides == (0, 1)
    with pytest.raises(ConfigError, match="temporal_strides"):
        TrainConfig(temporal_strides=(1, -1))
