"""Held-out evaluation during training, codebook usage counts, and the run's model card."""

from __future__ import annotations

import json

import torch
from torch import Tensor

from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.pixels import video_to_pixels
from vqtok.metrics import psnr, ssim_per_frame
from vqtok.train.config import RunConfig


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


def evaluate(model: VideoTokenizer, clips: list[Tensor], device: torch.device) -> dict[str, float]:
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
            ref, out = (video_to_pixels(x).float() for x in (clip, recon.cpu()))
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


def model_card(
    config: RunConfig, step: int, seconds: float, last_eval: dict[str, float], parameters: int
) -> str:
    lines = [
        f"# {config.name}",
        "",
        f"Trained with `vqtok train` for {step} steps ({seconds / 3600:.2f} h).",
        "",
        f"Parameters: {parameters:,} (`vqtok.io.checkpoint.parameter_count`: every value in "
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
