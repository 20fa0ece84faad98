"""Train or fine-tune a vqtok tokenizer on a folder of videos and images.

    result = vqtok.train.train(RunConfig.from_file("cfg.json"), ["footage/"], "runs/lfq")

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

from vqtok.checkpoint import load_pretrained, parameter_count, save_pretrained
from vqtok.dataset import ClipSampler, ClipSpec, heldout_clips, load_footage, split_holdout
from vqtok.errors import ConfigError
from vqtok.metrics import psnr, ssim_per_frame
from vqtok.model import VideoTokenizer
from vqtok.train_config import RunConfig, TrainConfig
from vqtok.train_state import load_checkpoint, save_checkpoint

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    model_dir: Path | None
    step: int
    last_eval: dict[str, float]
    interrupted: bool


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
    (and the pre-quantizer norm's) is copied too when the quantizer config is the same;
    otherwise it is left as initialised, so a backbone trained with one quantizer can be
    fine-tuned with another (EMA VQ -> LFQ).

    Returns:
        The keys left at their initial values (the quantizer's, when it changed).

    Raises:
        ConfigError: the source is another family or its backbone does not fit.
    """
    src = load_pretrained(source)
    if not isinstance(src, VideoTokenizer):
        raise ConfigError(f"--init-from needs a vqtok-family model, not {src.family!r}", source)
    theirs = src.state_dict()
    same_q = (src.config.quantizer, src.config.quantizer_options) == (
        model.config.quantizer,
        model.config.quantizer_options,
    )
    if not same_q:
        theirs = {k: v for k, v in theirs.items() if not k.startswith(_QUANTIZER_SIDE)}
    ours = model.state_dict()
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
    if hasattr(q, "set_temperature") and cfg.gumbel_anneal_steps > 0:
        start, end = cfg.gumbel_temperature
        a = min(step / cfg.gumbel_anneal_steps, 1.0)
        q.set_temperature(start * (end / start) ** a)
    if "entropy_loss_weight" in base and cfg.entropy_warmup_steps > 0:
        q.entropy_loss_weight = base["entropy_loss_weight"] * min(
            1.0, step / cfg.entropy_warmup_steps
        )


class _LatentTap:
    """Keeps a random subset of the latest quantizer inputs, for dead-code re-seeding."""

    def __init__(self, model: VideoTokenizer, keep: int = 4096) -> None:
        self.keep, self.samples = keep, torch.empty(0)
        model.quantizer.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if module.training:
            z = args[0].detach()
            flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B, D, t, h, w) -> (N, D)
            idx = torch.randperm(flat.shape[0], device=flat.device)[: self.keep]
            self.samples = flat[idx].float()


def code_counts(indices: Tensor, num_codebooks: int, codebook_size: int) -> Tensor:
    """(L, K) int64 usage counts per codebook / level (the trailing index axis when L > 1)."""
    flat = indices.reshape(-1, num_codebooks).long().cpu()
    return torch.stack(
        [torch.bincount(flat[:, i], minlength=codebook_size) for i in range(num_codebooks)]
    )


def usage_stats(counts: Tensor) -> dict[str, float]:
    """Mean over codebooks of the used fraction and the perplexity of (L, K) counts."""
    p = counts.double() / counts.sum(1, keepdim=True).clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1)
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp().mean())}


def _eval(model: VideoTokenizer, clips: list[Tensor], device: torch.device) -> dict[str, float]:
    """Held-out PSNR / SSIM (on uint8-rounded frames) and codebook usage."""
    if not clips:
        return {}
    model.eval()
    q = model.quantizer
    counts = torch.zeros(q.num_codebooks, q.codebook_size, dtype=torch.long)
    psnrs, ssims = [], []
    with torch.inference_mode():
        for clip in clips:
            indices = model.encode(clip.to(device))
            counts += code_counts(indices, q.num_codebooks, q.codebook_size)
            recon = model.decode(indices)
            ref, out = (_to_uint8(x) for x in (clip, recon.cpu()))
            psnrs.append(float(psnr(ref, out)))
            ssims.append(float(ssim_per_frame(ref, out).mean()))
    model.train()
    m = usage_stats(counts)
    return {
        "eval_psnr": sum(psnrs) / len(psnrs),
        "eval_ssim": sum(ssims) / len(ssims),
        "eval_usage": m["usage"],
        "eval_perplexity": m["perplexity"],
    }


def _to_uint8(video: Tensor) -> Tensor:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8-valued float."""
    return ((video[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0)


def _step(
    model: VideoTokenizer,
    opt: torch.optim.Optimizer,
    batch: Tensor,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """One optimisation step; returns the logged scalars."""
    batch = batch.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        recon, out = model(batch)
    recon = recon.float()
    l1, mse = F.l1_loss(recon, batch), F.mse_loss(recon, batch)
    loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.quantizer_weight * out.loss
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
        q_loss=out.loss.item(),
        grad_norm=float(grad_norm),
        psnr=float(10 * torch.log10(4 / mse.detach())),
    )
    return {"indices": out.indices.detach(), **metrics}


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
        run_dir: where checkpoints, metrics and the final model go.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        resume: continue from ``run_dir/checkpoint`` (exactly).
        init_from: fine-tune: start from this model directory's weights (`transfer_weights`).
        on_progress: called with a dict of scalars after every logged step / evaluation.

    Returns:
        A `TrainResult`. Ctrl-C saves a checkpoint and returns with ``interrupted=True``.
    """
    cfg, run = config.train, Path(run_dir)
    dev = torch.device(
        "cuda"
        if device == "auto" and torch.cuda.is_available()
        else ("cpu" if device == "auto" else device)
    )
    torch.manual_seed(cfg.seed)
    model = VideoTokenizer(config.model)
    if init_from is not None:
        transfer_weights(model, init_from)
    model.to(dev).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )
    start, elapsed = 0, 0.0
    if resume:
        start, elapsed = load_checkpoint(run / "checkpoint", model, opt, config)
    elif (run / "checkpoint").exists():
        raise ConfigError(
            "already holds a checkpoint; pass resume=True or choose a new run directory",
            run,
            cli_message="already holds a checkpoint; add --resume or choose a new -o directory",
        )
    run.mkdir(parents=True, exist_ok=True)

    spec = ClipSpec(cfg.clip_frames, cfg.crop_size, cfg.temporal_strides, cfg.flip)
    footage, held = split_holdout(load_footage(data, cfg.short_side), cfg.holdout_frames)
    sampler = ClipSampler(footage, spec, cfg.batch_size, cfg.seed)
    eval_clips = heldout_clips(held, cfg.clip_frames, cfg.eval_size)
    base = {
        k: float(getattr(model.quantizer, k))
        for k in ("entropy_loss_weight",)
        if hasattr(model.quantizer, k)
    }
    q = model.quantizer
    tap = _LatentTap(model)
    counts = torch.zeros(q.num_codebooks, q.codebook_size, dtype=torch.long)
    log = (run / "metrics.jsonl").open("a")
    done, last_eval, interrupted, t0 = start, {}, False, time.monotonic() - elapsed
    try:
        for step, batch in sampler.prefetch(start, cfg.steps, cfg.prefetch):
            torch.manual_seed(cfg.seed * 1_000_003 + step + 7)  # quantizer noise, per step
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            _schedule_quantizer(model, cfg, base, step)
            logged = _step(model, opt, batch, cfg, dev)
            done = step + 1  # steps completed; what a checkpoint records
            counts += code_counts(logged.pop("indices"), q.num_codebooks, q.codebook_size)
            if done == 1 and cfg.init_codebook_from_data:
                # data-dependent init: every code restarts at a random latent of the first batch
                counts.zero_()
                g = torch.Generator(device=tap.samples.device).manual_seed(cfg.seed)
                logged["reseeded"] = q.reseed_dead_codes(
                    tap.samples, counts.squeeze(0).to(tap.samples.device), 1.0, g
                )
            elif cfg.dead_code_every and done % cfg.dead_code_every == 0:
                g = torch.Generator(device=tap.samples.device).manual_seed(cfg.seed + done)
                logged["reseeded"] = q.reseed_dead_codes(
                    tap.samples,
                    counts.squeeze(0).to(tap.samples.device),
                    cfg.dead_code_threshold,
                    g,
                )
                counts.zero_()
            if done % cfg.log_every == 0 or done == cfg.steps:
                _log(
                    log,
                    on_progress,
                    {
                        "step": done,
                        "lr": learning_rate(cfg, step),
                        "time": time.monotonic() - t0,
                        **logged,
                    },
                )
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                last_eval = _eval(model, eval_clips, dev)
                _log(log, on_progress, {"step": done, **last_eval})
            if done % cfg.save_every == 0 or done == cfg.steps:
                save_checkpoint(run / "checkpoint", model, opt, config, done, time.monotonic() - t0)
    except KeyboardInterrupt:
        interrupted = True
        save_checkpoint(run / "checkpoint", model, opt, config, done, time.monotonic() - t0)
    finally:
        log.close()
    model_dir = None
    if not interrupted:
        model_dir = save_pretrained(
            model.cpu(),
            run / "model",
            name=config.name,
            card=_card(config, done, time.monotonic() - t0, last_eval, parameter_count(model)),
        )
    return TrainResult(run, model_dir, done, last_eval, interrupted)


def _log(log: Any, on_progress: ProgressFn | None, record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    if on_progress is not None:
        on_progress(record)


def _card(
    config: RunConfig, step: int, seconds: float, last_eval: dict[str, float], parameters: int
) -> str:
    lines = [
        f"# {config.name}",
        "",
        f"Trained with `vqtok train` for {step} steps ({seconds / 3600:.2f} h).",
        "",
        f"Parameters: {parameters:,} (`vqtok.checkpoint.parameter_count`: every value in "
        "model.safetensors).",
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
        "",
    ]
    if last_eval:
        lines += ["## Held-out evaluation at the last step", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in last_eval.items()]
    return "\n".join(lines) + "\n"
