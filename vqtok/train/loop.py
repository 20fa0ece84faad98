"""Train or fine-tune a vqtok tokenizer on a folder of videos and images.

    result = vqtok.train.loop.train(RunConfig.from_file("cfg.json"), ["footage/"], "runs/lfq")

A run directory holds:

- ``checkpoint/``: the latest checkpoint, replaced atomically: ``model/`` (an ordinary model
  directory), ``optimizer.safetensors`` and ``state.json`` (step, config, elapsed time);
- ``metrics.jsonl``: one JSON object per logged step and per evaluation;
- ``model/``: the final model directory (with a model card), written when the run ends.

Every batch and every random draw of step ``s`` is seeded from (seed, s), so ``resume=True``
continues exactly where the checkpoint left off: the same weights as an uninterrupted run.
Loss: L1 + MSE reconstruction plus the quantizer's own weighted loss; AdamW with linear warm-up
and a cosine decay; global gradient clipping. Progress goes to a callback, never to the
terminal.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vqtok.errors import ConfigError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import index_lineage, load_pretrained, parameter_count, save_pretrained
from vqtok.metrics import seam_loss, ssim_loss, temporal_loss
from vqtok.runtime import resolve_device
from vqtok.train.config import RunConfig, TrainConfig
from vqtok.train.data_init import fit_shortcut, init_codebooks
from vqtok.train.dataset import ClipSampler, ClipSpec, heldout_clips, load_footage, split_holdout
from vqtok.train.dead_codes import DeadCodes
from vqtok.train.eval import model_card
from vqtok.train.run import RunState
from vqtok.train.weight_ema import WeightEMA

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    model_dir: Path | None
    step: int
    last_eval: dict[str, float]
    interrupted: bool
    interruption: KeyboardInterrupt | None = None  # what stopped it (Ctrl-C, or the CLI's SIGTERM)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


_QUANTIZER_SIDE = ("quantizer.", "pre_quant_norm.")


def transfer_weights(model: VideoTokenizer, source: str | Path) -> list[str]:
    """Start ``model`` from the weights of the model directory (or name) ``source``.

    The encoder and decoder must match exactly (same keys and shapes). The quantizer's state
    (and the pre-quantizer norm's) is copied too when the quantizer is of the same kind and
    its state has the same keys and shapes (so its loss weights may change); otherwise it is
    left as initialised, so a backbone trained with one quantizer can be fine-tuned with
    another (EMA VQ -> LFQ) or a new codebook shape.

    Returns:
        The keys left at their initial values (the quantizer's, when it changed).

    Raises:
        ConfigError: the source is another family or its backbone does not fit.
    """
    src = load_pretrained(source)
    if not isinstance(src, VideoTokenizer):
        raise ConfigError(f"--init-from needs a vqtok-family model, not {src.family!r}", source)
    theirs, ours = src.state_dict(), model.state_dict()

    def quantizer_side(state: dict[str, Tensor]) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in state.items() if k.startswith(_QUANTIZER_SIDE)}

    same_q = (src.config.quantizer == model.config.quantizer
              and quantizer_side(theirs) == quantizer_side(ours))
    if not same_q:
        theirs = {k: v for k, v in theirs.items() if not k.startswith(_QUANTIZER_SIDE)}
    backbone = {k for k in ours if same_q or not k.startswith(_QUANTIZER_SIDE)}
    bad = sorted(backbone ^ set(theirs)) + sorted(
        k for k in backbone & set(theirs) if ours[k].shape != theirs[k].shape
    )
    if bad:
        raise ConfigError(f"--init-from: weights do not fit this architecture ({bad[0]})", source)
    model.load_state_dict(theirs, strict=same_q)
    return sorted(set(ours) - backbone)


def _schedule_quantizer(
    model: VideoTokenizer, cfg: TrainConfig, base: dict[str, float], step: int
) -> None:
    """Gumbel temperature annealing and LFQ entropy-weight warm-up for this step."""
    q: Any = model.quantizer
    if cfg.gumbel_anneal_steps > 0:  # a no-op for quantizers without a temperature
        start, end = cfg.gumbel_temperature
        a = min(step / cfg.gumbel_anneal_steps, 1.0)
        q.set_temperature(start * (end / start) ** a)
    if "entropy_loss_weight" in base and cfg.entropy_warmup_steps > 0:
        q.entropy_loss_weight = base["entropy_loss_weight"] * min(
            1.0, step / cfg.entropy_warmup_steps
        )


def _levels_for_step(model: VideoTokenizer, cfg: TrainConfig) -> int | None:
    """Quantizer dropout: with probability p run only the first k < L levels (k uniform)."""
    top = model.max_levels
    if not cfg.quantizer_dropout or top is None or top < 2:
        return None
    if float(torch.rand(())) >= cfg.quantizer_dropout:
        return None
    return int(torch.randint(1, top, ()))


def _step(
    model: VideoTokenizer,
    opt: torch.optim.Optimizer,
    batch: Tensor,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """One optimisation step; returns the logged scalars."""
    batch = batch.to(device, non_blocking=True)
    levels = _levels_for_step(model, cfg)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        recon, out = model(batch, levels)
    recon = recon.float()
    l1, mse = F.l1_loss(recon, batch), F.mse_loss(recon, batch)
    loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.quantizer_weight * out.loss
    ssim_term = ssim_loss(batch, recon) if cfg.ssim_weight else torch.zeros(())
    seam_term = (seam_loss(batch, recon, model.config.spatial_factor) if cfg.seam_weight
                 else torch.zeros(()))
    time_term = temporal_loss(batch, recon) if cfg.temporal_weight else torch.zeros(())
    edge_term = (temporal_loss(batch, recon, model.config.temporal_factor)
                 if cfg.boundary_weight else torch.zeros(()))
    loss = (loss + cfg.ssim_weight * ssim_term + cfg.seam_weight * seam_term
            + cfg.temporal_weight * time_term + cfg.boundary_weight * edge_term)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if cfg.grad_clip > 0
        else torch.tensor(0.0)
    )
    opt.step()
    metrics = {k: float(v) for k, v in out.metrics.items()}
    metrics.update(
        loss=loss.item(),
        l1=l1.item(),
        mse=mse.item(),
        ssim_loss=ssim_term.item(),
        seam_loss=seam_term.item(),
        temporal_loss=time_term.item(),
        boundary_loss=edge_term.item(),
        q_loss=out.loss.item(),
        grad_norm=float(grad_norm),
        psnr=float(10 * torch.log10(4 / mse.detach())),
        levels=levels or 0,
    )
    # indices of a dropout step have fewer columns: count them only on full steps
    return {"indices": None if levels else out.indices.detach(), **metrics}


def _initialise(
    model: VideoTokenizer,
    sampler: ClipSampler,
    cfg: TrainConfig,
    fine_tune: bool,
    new_quantizer: bool,
) -> dict[str, Any]:
    """Data-dependent start of a run: shortcut basis (fresh runs), then k-means codebooks
    (fresh runs, and fine-tunes whose quantizer did not come with the weights)."""
    done: dict[str, Any] = {}
    if model.config.shortcut == "linear" and not fine_tune and cfg.fit_shortcut_batches:
        done["shortcut_blocks"] = fit_shortcut(model, sampler, cfg.fit_shortcut_batches)
    if cfg.kmeans_init_batches and (new_quantizer or not fine_tune):
        done["kmeans_samples"] = init_codebooks(
            model, sampler, cfg.kmeans_init_batches, seed=cfg.seed
        )
    return done


def train(
    config: RunConfig,
    data: Sequence[str | Path],
    run_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    init_from: str | Path | None = None,
    on_progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``config.model`` on the footage under ``data``, writing into ``run_dir``.

    Args:
        config: architecture + training options.
        data: video / image files or directories.
        run_dir: where checkpoints, metrics and the final model go (``best/``: the model of
            the best held-out PSNR so far, updated at each evaluation; ``best.json``: its
            step and metrics).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        resume: continue from ``run_dir/checkpoint`` (exactly).
        init_from: fine-tune: start from this model directory's weights (`transfer_weights`).
        on_progress: called with a dict of scalars after every logged step / evaluation,
            and with ``{"warning": "<path>: <reason>; skipped"}`` for an unreadable file.

    Returns:
        A `TrainResult`. Ctrl-C saves a checkpoint and returns with ``interrupted=True``.
    """
    cfg, run = config.train, Path(run_dir)
    if not resume and (run / "checkpoint").exists():
        raise ConfigError(
            "already holds a checkpoint; pass resume=True or choose a new run directory",
            run,
            cli_message="already holds a checkpoint; add --resume or choose a new -o directory",
        )
    sampler, eval_clips = _footage(cfg, data, run, on_progress)
    torch.manual_seed(cfg.seed)
    state = RunState(config, run, resolve_device(device))
    start, elapsed, inherited = _start(state, sampler, resume, init_from, on_progress)
    run.mkdir(parents=True, exist_ok=True)
    return _loop(state, sampler, eval_clips, (start, elapsed, inherited), on_progress)


def _footage(
    cfg: TrainConfig, data: Sequence[str | Path], run: Path, on_progress: ProgressFn | None
) -> tuple[ClipSampler, list[Tensor]]:
    """The sampler of training clips and the held-out clips; the run directory is made only
    once there is footage to train on."""

    def skipped(line: str) -> None:
        if on_progress is not None:
            on_progress({"warning": line})

    spec = ClipSpec(cfg.clip_frames, cfg.crop_size, cfg.temporal_strides, cfg.flip,
                    cfg.grey_fraction)
    footage, held = split_holdout(
        load_footage(data, cfg.short_side, on_skip=skipped), cfg.holdout_frames
    )
    run.mkdir(parents=True, exist_ok=True)
    sampler = ClipSampler(footage, spec, cfg.batch_size, cfg.seed, image_every=cfg.image_every,
                          image_size=cfg.image_crop_size, frame_cap=cfg.source_frame_cap)
    return sampler, heldout_clips(held, cfg.clip_frames, cfg.eval_size)


def _start(
    state: RunState,
    sampler: ClipSampler,
    resume: bool,
    init_from: str | Path | None,
    on_progress: ProgressFn | None,
) -> tuple[int, float, bool]:
    """(step, elapsed seconds) the run starts from: the checkpoint's when resuming, else 0
    after the data-dependent initialisation; and whether the quantizer came with the weights
    of ``init_from``. Leaves the model on the run's device."""
    model, cfg = state.model, state.cfg
    untouched = transfer_weights(model, init_from) if init_from is not None else []
    start, elapsed = 0, 0.0
    new_quantizer = any(k.startswith("quantizer.") for k in untouched)
    if cfg.trainable == "decoder" and not resume and (init_from is None or new_quantizer):
        raise ConfigError("train.trainable 'decoder' trains on a frozen encoder and quantizer: "
                          "start it with --init-from a model that has both")
    if resume:
        start, elapsed = state.resume()
    else:
        if cfg.trainable == "decoder" and init_from is not None:  # its indices are init_from's
            state.decodes_indices_of = index_lineage(init_from)
        setup = _initialise(model, sampler, cfg, init_from is not None, new_quantizer)
        if state.ema is not None:
            state.ema = WeightEMA(model, cfg.weight_ema)  # average from the initialised weights
        if setup and on_progress is not None:
            on_progress({"step": 0, **setup})
    model.to(state.dev).train()
    if state.ema is not None:
        state.ema.shadow = {k: v.to(state.dev) for k, v in state.ema.shadow.items()}
    return start, elapsed, init_from is not None and not new_quantizer


def _loop(
    state: RunState,
    sampler: ClipSampler,
    eval_clips: list[Tensor],
    begin: tuple[int, float, bool],
    on_progress: ProgressFn | None,
) -> TrainResult:
    """The optimisation loop from step ``start`` to ``steps``, then the final model; ``begin``
    is what `_start` returns."""
    cfg, (start, elapsed, inherited) = state.cfg, begin
    quantizer = state.model.quantizer
    base = {k: float(getattr(quantizer, k)) for k in ("entropy_loss_weight",)
            if hasattr(quantizer, k)}
    dead_codes = DeadCodes(state.model, cfg, inherited)
    done, last_eval, stop, t0 = start, {}, None, time.monotonic() - elapsed
    with (state.run / "metrics.jsonl").open("a") as log:
        try:
            for step, batch in sampler.prefetch(start, cfg.steps, cfg.prefetch):
                logged = _optimise(state, batch, step, base)
                done = step + 1  # steps completed; what a checkpoint records
                logged.update(dead_codes.after_step(logged.pop("indices"), done))
                record = {"step": done, "lr": learning_rate(cfg, step),
                          "time": time.monotonic() - t0, **logged}
                result = _log_eval_save(state, log, on_progress, record, eval_clips, t0)
                if result is not None:
                    last_eval = result
        except KeyboardInterrupt as e:
            stop = e
            state.save(done, time.monotonic() - t0)
    model_dir = None if stop else _ship(state, done, time.monotonic() - t0, last_eval)
    return TrainResult(state.run, model_dir, done, last_eval, stop is not None, stop)


def _optimise(state: RunState, batch: Tensor, step: int, base: dict[str, float]
              ) -> dict[str, Any]:
    """Step ``step``: its seed, learning rate and quantizer schedules, one optimisation step
    (`_step`), then the weight average."""
    cfg = state.cfg
    torch.manual_seed(cfg.seed * 1_000_003 + step + 7)  # quantizer noise, per step
    for group in state.opt.param_groups:
        group["lr"] = learning_rate(cfg, step)
    _schedule_quantizer(state.model, cfg, base, step)
    state.train_mode()
    logged = _step(state.model, state.opt, batch, cfg, state.dev)
    if state.ema is not None:
        state.ema.update()
    return logged


def _log_eval_save(
    state: RunState,
    log: Any,
    on_progress: ProgressFn | None,
    record: dict[str, Any],
    eval_clips: list[Tensor],
    t0: float,
) -> dict[str, float] | None:
    """After a step: log ``record``, evaluate and checkpoint when it is their turn.

    Returns:
        the held-out metrics when evaluated at this step, else None.
    """
    cfg, done = state.cfg, record["step"]
    last = done == cfg.steps
    if done % cfg.log_every == 0 or last:
        _log(log, on_progress, record)
    result = None
    if cfg.eval_every and (done % cfg.eval_every == 0 or last):
        result = state.evaluate(eval_clips, done)
        _log(log, on_progress, {"step": done, **result})
    if done % cfg.save_every == 0 or last:
        state.save(done, time.monotonic() - t0)
    return result


def _ship(state: RunState, done: int, seconds: float, last_eval: dict[str, float]) -> Path:
    """Write the final model (the weight average when there is one) with its model card."""
    model = state.model
    with state.shipped():
        return save_pretrained(
            model.cpu(),
            state.run / "model",
            name=state.config.name,
            decodes_indices_of=state.decodes_indices_of,
            card=model_card(state.config, done, seconds, last_eval, parameter_count(model)),
        )


def _log(log: Any, on_progress: ProgressFn | None, record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    if on_progress is not None:
        on_progress(record)
