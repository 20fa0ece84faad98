"""How many of a residual model's codes the held-out footage can use, and at what cost.

Issue 12 asks the default model to use >= 90 % of every level's codes on the held-out sources
(`quality.py`'s files, 17 latent frames of 32 x 32 positions at 256^2). This script measures
what stands between a codebook and that target, in the latent space of a trained encoder:

- ``pruned``: each level keeps only its K' codes used most often on *training* latents
  (greedy residual coding with the smaller codebooks); reported: the held-out latent MSE after
  all levels and the share of each level's K' codes the held-out latents use;
- ``layouts``: residual k-means codebooks of other shapes (levels x codes, the same or fewer
  bits) fitted to the training latents, greedy and beam-searched;
- the shipped codebooks on the training latents, for comparison with the held-out use;
- ``--health``: any model (FSQ, LFQ, residual): per level, the share of its codes that the
  training-distribution positions use and their perplexity (issue 30's health figure), then
  stop.

Training latents come from random 256^2 crops of the footage (``make footage``) with the
last ``--holdout-frames`` of every video left out, as `vqtok train` does. The latent MSE is a
proxy for the pixels: on vqtok-ema, levels 1..4 give 0.152 / 0.086 / 0.058 / 0.041 and
23.6 / 25.95 / 27.2 / 28.04 dB.

    .venv/bin/python benchmarks/code_use.py [--model vqtok-ema] [--layouts 256x5 32x8 16x10]
    .venv/bin/python benchmarks/code_use.py --model models/vqtok-fsq --health
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from quality import HELDOUT, load_source, to_tensor
from torch import Tensor

import vqtok
from vqtok.quantizers.beam import beam_codes
from vqtok.quantizers.search import nearest_codes
from vqtok.quantizers.usage import CodeUsage, kmeans_init, lloyd
from vqtok.train.dataset import ClipSampler, ClipSpec, load_footage, split_holdout

ROOT = Path(__file__).resolve().parent.parent


def flat(z: Tensor) -> Tensor:
    """(B, D, t, h, w) latents -> (N, D) float32 rows."""
    return z.float().movedim(1, -1).reshape(-1, z.shape[1])


@torch.no_grad()
def training_latents(tok: vqtok.Tokenizer, footage: Path, batches: int, holdout: int) -> Tensor:
    """(N, D) quantizer inputs of ``batches`` x 4 random 9-frame 256^2 training clips."""
    train, _ = split_holdout(load_footage([footage], short_side=256), holdout)
    sampler = ClipSampler(train, ClipSpec(9, 256, (1, 2)), batch_size=4, seed=7)
    return torch.cat([flat(tok.model.latents(sampler.sample_batch(i))) for i in range(batches)])


@torch.no_grad()
def heldout_latents(tok: vqtok.Tokenizer) -> Tensor:
    """(N, D) quantizer inputs of every held-out source, whole."""
    return torch.cat([flat(tok.model.latents(to_tensor(load_source(p)))) for p in HELDOUT])


def code(x: Tensor, codebooks: list[Tensor], beam: int = 1) -> tuple[float, list[float]]:
    """Residual-code ``x`` (N, D): (latent MSE after all levels, share of codes used per level)."""
    idx = beam_codes(x, codebooks, beam)  # (N, L)
    r, used = x.double(), []
    for level, c in enumerate(codebooks):
        used.append(len(torch.unique(idx[:, level])) / c.shape[0])
        r = r - c.double()[idx[:, level]]
    return float(r.square().mean()), used


def pruned(codebooks: list[Tensor], train: Tensor, keep: int) -> list[Tensor]:
    """Each level's ``keep`` codes used most on ``train`` (residuals re-computed level by level)."""
    r, out = train, []
    for c in codebooks:
        counts = torch.bincount(nearest_codes(r, c), minlength=c.shape[0])
        kept = c[torch.argsort(counts, descending=True, stable=True)[:keep]]
        r = r - kept[nearest_codes(r, kept)]
        out.append(kept)
    return out


def fitted(layout: list[int], train: Tensor, seed: int, iters: int = 12) -> list[Tensor]:
    """Residual k-means codebooks of sizes ``layout`` fitted to ``train`` (N, D)."""
    g = torch.Generator().manual_seed(seed)
    r, out = train, []
    for k in layout:
        seeds = r[torch.randperm(len(r), generator=g)[: max(20 * k, 4096)]]
        c = lloyd(r, kmeans_init(seeds, k, 3, g), iters)  # seeded on a subset, then all rows
        r = r - c[nearest_codes(r, c)]
        out.append(c)
    return out


def row(
    name: str,
    bits: float,
    held: Tensor,
    cbs: list[Tensor],
    beam: int,
    on_train: tuple[float, list[float]],
) -> dict:
    """One result line: held-out coding with ``beam``; ``on_train`` is `code` of the training
    latents (greedy), computed once per set of codebooks."""
    mse, used = code(held, cbs, beam)
    train_mse, train_used = on_train
    print(
        f"{name:22s} {bits:4.0f} {beam:4d}  {mse:.4f}  {train_mse:.4f}  "
        f"{' '.join(f'{u:4.0%}' for u in used):40s} {' '.join(f'{u:4.0%}' for u in train_used)}",
        flush=True,
    )
    return {
        "name": name,
        "bits": bits,
        "beam": beam,
        "heldout_mse": mse,
        "train_mse": train_mse,
        "heldout_used": used,
        "train_used": train_used,
    }


def parse_layout(text: str) -> list[int]:
    """'256x5' -> [256] * 5; '1024,256,64' -> those sizes."""
    if "x" in text:
        k, n = text.split("x")
        return [int(k)] * int(n)
    return [int(v) for v in text.split(",")]


@torch.no_grad()
def health(tok: vqtok.Tokenizer, train: Tensor) -> list[dict[str, float]]:
    """Per level of ``tok``'s quantizer on ``train`` (N, D) latents: share of codes used and
    perplexity (exp of the entropy of their use)."""
    indices = tok.model.quantizer(train, channel_last=True).indices  # (N,) or (N, L)
    levels = indices.reshape(len(train), -1)
    out = []
    for level in range(levels.shape[1]):
        usage = CodeUsage(tok.model.quantizer.codebook_size)
        usage.update(levels[:, level])
        m = usage.metrics()
        out.append({"used": m["usage"], "perplexity": m["perplexity"],
                    "codes": usage.codebook_size, "positions": int(m["tokens"])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="a model (a residual quantizer unless --health; default model)")
    parser.add_argument("--footage", type=Path, default=ROOT / ".data" / "footage")
    parser.add_argument("--batches", type=int, default=24, help="training batches of 4 clips")
    parser.add_argument("--holdout-frames", type=int, default=25)
    parser.add_argument("--keep", type=int, nargs="*", default=[768, 512, 256, 128])
    parser.add_argument(
        "--layouts", nargs="*", default=["1024x4", "256x5", "64x6", "32x8", "16x10"]
    )
    parser.add_argument("--beams", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--health", action="store_true",
                        help="only per-level code use on the training positions (any model)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tok = vqtok.load(args.model, device="cpu")
    if args.health:
        train = training_latents(tok, args.footage, args.batches, args.holdout_frames)
        rows = health(tok, train)
        for level, r in enumerate(rows):
            print(f"{tok.name} level {level}: {r['used']:.1%} of {r['codes']:,} codes used, "
                  f"perplexity {r['perplexity']:,.0f}, over {r['positions']:,} positions")
        if args.json:
            args.json.write_text(json.dumps({"model": tok.name, "health": rows}, indent=1) + "\n")
        return
    q = tok.model.quantizer
    shipped = [q.level_weight(i).detach().float() for i in range(q.num_levels)]
    train = training_latents(tok, args.footage, args.batches, args.holdout_frames)
    held = heldout_latents(tok)
    print(f"{tok.name}: {len(train)} training and {len(held)} held-out positions per level")
    print(
        f"{'codebooks':22s} bits beam  held-out MSE  train MSE  "
        f"{'held-out use per level':40s} training use per level"
    )
    bits = sum(math.log2(c.shape[0]) for c in shipped)
    rows = [row("shipped", bits, held, shipped, 1, code(train, shipped))]
    for keep in args.keep:
        cbs = pruned(shipped, train, keep)
        bits = len(cbs) * math.log2(keep)
        rows.append(row(f"shipped, top {keep}", bits, held, cbs, 1, code(train, cbs)))
    for text in args.layouts:
        layout = parse_layout(text)
        cbs = fitted(layout, train, seed=0)
        on_train = code(train, cbs)
        for beam in args.beams:
            bits = sum(map(math.log2, layout))
            rows.append(row(f"k-means {text}", bits, held, cbs, beam, on_train))
    if args.json:
        args.json.write_text(json.dumps({"model": tok.name, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
