"""Quantizer benchmark: vqtok against vector-quantize-pytorch, time and peak extra memory.

Measures the cases of issue 2 ("Memory and speed") on the CPU:

- VQ inference (eval), nearest-code search of N tokens against K codes (VQ-VAE, van den Oord
  et al., arXiv 1711.00937): vqtok `VectorQuantizer` vs the peer's `VectorQuantize`, and a
  plain ``torch.mm`` of the same (N, D) x (D, K) as the machine's matmul rate (2·N·K·D FLOPs);
- LFQ training step with the entropy loss (MAGVIT-v2, Yu et al., arXiv 2310.05737):
  `LookupFreeQuantizer` vs the peer's `LFQ`;
- EMA VQ and residual VQ training steps (SoundStream, Zeghidour et al., arXiv 2107.03312):
  `EMAQuantizer` vs `VectorQuantize` (EMA), `EMAResidualQuantizer` vs `ResidualVQ`.

Every (case, runner) pair runs in its own freshly spawned child process (`measure.py`), one
after the other, all in one run of this script: the peaks of one runner cannot pile onto the
next, and a peer that runs out of memory under the child's address-space cap is recorded as
such. Both sides get the same inputs, 2 threads, and (VQ eval) the same codebook.

Run by hand, not in CI (see benchmarks/README.md): ``python benchmarks/quantizers.py --quick``.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from measure import Result, Settings, Step, loadavg, meminfo_gib, run_in_child, write_section

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Quantizers"


@dataclass(frozen=True)
class Case:
    """One benchmark case: a workload and the runners that perform it."""

    name: str
    kind: str  # "matmul" | "vq_eval" | "lfq_train" | "ema_train" | "rvq_train"
    n: int  # tokens
    k: int  # codes per codebook (LFQ: 2^bits)
    d: int  # channels (LFQ: bits)
    levels: int = 1
    runners: tuple[str, ...] = ("vqtok", "peer")


def build_cases(quick: bool) -> list[Case]:
    """The issue's sizes, or small ones for a smoke run (``--quick``)."""
    n, k, lfq_n, k_small, k_ema = (4096, 1024, 512, 128, 1024) if quick else (
        65536, 16384, 4096, 1024, 16384)
    d_big = 64 if quick else 256
    bits = (10, 12) if quick else (14, 18)
    cases = [
        Case(f"vq-eval-d8-k{k}", "vq_eval", n, k, 8),
        Case(f"matmul-d{d_big}-k{k}", "matmul", n, k, d_big, runners=("mm", "mm-tiled")),
        Case(f"vq-eval-d{d_big}-k{k}", "vq_eval", n, k, d_big),
        *(Case(f"lfq-train-2^{b}", "lfq_train", lfq_n, 2**b, b) for b in bits),
        Case(f"ema-train-d8-k{k_small}", "ema_train", n, k_small, 8),
        Case(f"ema-train-d{d_big}-k{k_small}", "ema_train", n, k_small, d_big),
        Case(f"ema-train-d{d_big}-k{k_ema}", "ema_train", n, k_ema, d_big),
        Case(f"rvq-train-d8-k{k_small}-l4", "rvq_train", n, k_small, 8, levels=4),
        Case(f"rvq-train-d{d_big}-k{k_small}-l4", "rvq_train", n, k_small, d_big, levels=4),
    ]
    return cases


# ----------------------------------------------------------------------------- workloads
def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def build_matmul(case: Case, runner: str) -> Step:
    x, codes_t = _randn(case.n, case.d, seed=0), _randn(case.k, case.d, seed=1).t()
    if runner == "mm":
        out = torch.empty(case.n, case.k)
        return lambda: torch.mm(x, codes_t, out=out), lambda _: None
    from vqtok.quantizers.search import BLOCK_ELEMENTS, CODE_TILE

    # vqtok's tiling (rows x codes tiles of BLOCK_ELEMENTS), without the min: the matmul rate
    # that does not pay for writing a (N, K) output to memory
    kc = min(case.k, CODE_TILE)
    rows = max(1, BLOCK_ELEMENTS // kc)
    buf = torch.empty(rows * kc)

    def tiled() -> None:
        for r0 in range(0, case.n, rows):
            r1 = min(case.n, r0 + rows)
            for c0 in range(0, case.k, kc):
                c1 = min(case.k, c0 + kc)
                tile = buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch.mm(x[r0:r1], codes_t[:, c0:c1], out=tile)

    return tiled, lambda _: None


def build_vq_eval(case: Case, runner: str) -> Step:
    x, codebook = _randn(case.n, case.d, seed=0), _randn(case.k, case.d, seed=1)
    if runner == "vqtok":
        from vqtok.quantizers import VectorQuantizer

        vq = VectorQuantizer(case.d, case.k).eval()
        vq.embedding.weight.data.copy_(codebook)
        return lambda: vq(x).indices, lambda ids: ids.reshape(-1).numpy().copy()
    from vector_quantize_pytorch import VectorQuantize

    peer = VectorQuantize(dim=case.d, codebook_size=case.k).eval()
    peer._codebook.embed.data.copy_(codebook[None])  # (heads=1, K, D)
    tokens = x[None]  # (1, N, D): the peer takes (B, N, D)
    return lambda: peer(tokens)[1], lambda ids: ids.reshape(-1).numpy().copy()


def _train_step(module: torch.nn.Module, x: torch.Tensor, parts: Callable[[Any], Any]) -> Step:
    """Forward + backward of ``loss + mean(codes^2)``: the gradient reaches ``x`` through the
    straight-through codes, as it reaches an encoder."""
    module.train()

    def step() -> float:
        z = x.detach().requires_grad_(True)
        codes, aux = parts(module(z))
        total = aux + codes.square().mean()
        total.backward()
        return float(aux.detach())

    return step, lambda loss: loss


def build_lfq_train(case: Case, runner: str) -> Step:
    x = _randn(1, case.n, case.d, seed=0)  # (1, N, bits), channel-last for both
    options: dict[str, Any] = {
        "entropy_loss_weight": 0.1, "commitment_loss_weight": 0.25, "diversity_gamma": 1.0
    }
    if runner == "vqtok":
        from vqtok.quantizers import LookupFreeQuantizer

        lfq = LookupFreeQuantizer(case.d, case.k, inv_temperature=100.0, **options)
        return _train_step(lfq, x, lambda out: (out.codes, out.loss))
    from vector_quantize_pytorch import LFQ

    peer = LFQ(dim=case.d, codebook_size=case.k, **options)  # inv_temperature=100 by default
    return _train_step(peer, x, lambda out: (out[0], out[2]))


def build_ema_train(case: Case, runner: str) -> Step:
    x = _randn(case.n, case.d, seed=0)
    if runner == "vqtok":
        from vqtok.quantizers import EMAQuantizer

        ema = EMAQuantizer(case.d, case.k, beta=0.25, decay=0.99)
        return _train_step(ema, x, lambda out: (out.codes, out.loss))
    from vector_quantize_pytorch import VectorQuantize

    # straight-through + commitment like vqtok (the peer's default is the rotation trick)
    peer = VectorQuantize(dim=case.d, codebook_size=case.k, decay=0.99,
                          commitment_weight=0.25, rotation_trick=False)
    return _train_step(peer, x[None], lambda out: (out[0], out[2].sum()))


def build_rvq_train(case: Case, runner: str) -> Step:
    x = _randn(case.n, case.d, seed=0)
    if runner == "vqtok":
        from vqtok.quantizers import EMAResidualQuantizer

        rvq = EMAResidualQuantizer(case.d, case.levels, case.k, beta=0.25, decay=0.99)
        return _train_step(rvq, x, lambda out: (out.codes, out.loss))
    from vector_quantize_pytorch import ResidualVQ

    peer = ResidualVQ(dim=case.d, num_quantizers=case.levels, codebook_size=case.k,
                      decay=0.99, commitment_weight=0.25, rotation_trick=False)
    return _train_step(peer, x[None], lambda out: (out[0], out[2].sum()))


NO_GRAD = ("matmul", "vq_eval")  # inference workloads; the others are training steps
BUILDERS: dict[str, Callable[[Case, str], Step]] = {
    "matmul": build_matmul,
    "vq_eval": build_vq_eval,
    "lfq_train": build_lfq_train,
    "ema_train": build_ema_train,
    "rvq_train": build_rvq_train,
}


# ----------------------------------------------------------------------------- report
def _fmt(value: float, spec: str) -> str:
    return "—" if value != value else format(value, spec)  # NaN -> dash


def describe(case: Case) -> str:
    if case.kind == "lfq_train":
        return f"LFQ train step, N={case.n}, K=2^{case.d}"
    what = {"matmul": "torch.mm", "vq_eval": "VQ eval", "ema_train": "EMA VQ train step",
            "rvq_train": f"EMA residual VQ ({case.levels} levels) train step"}[case.kind]
    return f"{what}, N={case.n}, K={case.k}, D={case.d}"


def runner_rows(cases: list[Case], results: dict[tuple[str, str], Result]) -> list[str]:
    rows = ["| case | runner | median s | runs | tokens/s | peak extra MiB | status |",
            "|---|---|---:|---:|---:|---:|---|"]
    for case in cases:
        for runner in case.runners:
            r = results.get((case.name, runner))
            if r is None:
                continue
            rate = case.n / r.median_s if r.times else float("nan")
            status = r.status + (f" (cap {r.cap_gib:g} GiB)" if r.status != "ok" else "")
            rows.append(f"| {case.name} | {runner} | {_fmt(r.median_s, '.3f')} | {len(r.times)} "
                        f"| {_fmt(rate, '.3g')} | {_fmt(r.peak_mib, '.0f')} | {status} |")
    return rows


def agreement(a: Result | None, b: Result | None) -> str:
    """How the first-call outputs of vqtok and the peer compare."""
    if a is None or b is None or a.check is None or b.check is None:
        return "—"
    if not isinstance(a.check, float):
        same = float((a.check == b.check).mean())
        return f"{100 * same:.2f} % equal indices"
    return f"aux loss {a.check:.4f} vs {b.check:.4f}"


def ratio_rows(cases: list[Case], results: dict[tuple[str, str], Result]) -> list[str]:
    rows = ["| case | vqtok s | peer s | speed-up | vqtok MiB | peer MiB | check | targets |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
    mm_rate = matmul_rates(cases, results)
    for case in cases:
        if "peer" not in case.runners:
            continue
        ours, peer = results.get((case.name, "vqtok")), results.get((case.name, "peer"))
        if ours is None and peer is None:
            continue
        t_ours = ours.median_s if ours else float("nan")
        t_peer = peer.median_s if peer and peer.times else float("nan")
        peer_s = _fmt(t_peer, ".3f") if peer is None or peer.status == "ok" else peer.status
        speedup = _fmt(t_peer / t_ours, ".1f") + "x" if t_peer == t_peer else "—"
        rows.append(
            f"| {describe(case)} | {_fmt(t_ours, '.3f')} | {peer_s} | {speedup} "
            f"| {_fmt(ours.peak_mib if ours else float('nan'), '.0f')} "
            f"| {_fmt(peer.peak_mib if peer else float('nan'), '.0f')} "
            f"| {agreement(ours, peer)} | {targets(case, ours, peer, mm_rate)} |")
    return rows


def matmul_rates(cases: list[Case], results: dict[tuple[str, str], Result]) -> dict[int, float]:
    """Best measured FLOP/s of the matmul runners, by D."""
    rates: dict[int, float] = {}
    for case in cases:
        for runner in case.runners if case.kind == "matmul" else ():
            r = results.get((case.name, runner))
            if r is not None and r.times:
                flops = 2.0 * case.n * case.k * case.d
                rates[case.d] = max(rates.get(case.d, 0.0), flops / r.median_s)
    return rates


def targets(case: Case, ours: Result | None, peer: Result | None, mm: dict[int, float]) -> str:
    """The issue's targets for this case, each with 'met' or 'MISSED'."""
    if ours is None or not ours.times:
        return "—"
    verdict = {True: "met", False: "MISSED"}
    parts = []
    if case.kind == "vq_eval":
        if peer is not None and peer.times:
            parts.append(f">= 10x: {verdict[peer.median_s / ours.median_s >= 10]}")
        parts.append(f"<= 512 MiB: {verdict[ours.peak_mib <= 512]}")
        if case.d in mm:
            frac = 2.0 * case.n * case.k * case.d / ours.median_s / mm[case.d]
            parts.append(f"{100 * frac:.0f} % of matmul ({mm[case.d] / 1e9:.0f} GFLOP/s), "
                         f">= 80 %: {verdict[frac >= 0.8]}")
    if case.kind == "lfq_train" and case.k >= 2**18:
        parts.append(f"< 2 GiB: {verdict[ours.peak_mib < 2048]}")
    return "; ".join(parts) or "— (speed-up reported)"


def machine_lines(settings: Settings, command: str, loads: tuple[str, str]) -> list[str]:
    from importlib.metadata import version

    return [
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{meminfo_gib('MemTotal'):.0f} GiB RAM, Linux {platform.release()}, Python "
        f"{platform.python_version()}",
        f"- torch {torch.__version__}, {settings.threads} threads per side; "
        f"vector-quantize-pytorch {version('vector-quantize-pytorch')}",
        f"- load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}",
        f"- each runner in its own spawned child, address space capped at "
        f"{settings.mem_cap_gib:g} GiB (less if less was free); {settings.warmup} warm-up + "
        f"up to {settings.repeats} repeats within {settings.budget_s:g} s (median); a call "
        "slower than that is timed once",
    ]


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--cases", nargs="*", default=["*"], help="case name patterns (fnmatch)")
    p.add_argument("--runners", nargs="*", default=["*"], help="runner patterns: vqtok peer mm*")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=20.0, help="seconds of repeats per runner")
    p.add_argument("--mem-cap-gb", type=float, default=20.0, help="child address-space cap, GiB")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per runner")
    p.add_argument("--results", type=Path, default=None,
                   help=f"markdown file to update (default {RESULTS.name}; none with --quick)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cases = [c for c in build_cases(args.quick)
             if any(fnmatch.fnmatch(c.name, pat) for pat in args.cases)]
    if args.list:
        print("\n".join(f"{c.name}: {describe(c)} [{', '.join(c.runners)}]" for c in cases))
        return
    settings = Settings(args.threads, args.warmup, args.repeats, args.budget, args.mem_cap_gb,
                        args.timeout)
    load_start = loadavg()
    results: dict[tuple[str, str], Result] = {}
    for case in cases:
        for runner in case.runners:
            if not any(fnmatch.fnmatch(runner, pat) for pat in args.runners):
                continue
            build = functools.partial(BUILDERS[case.kind], case, runner)
            r = run_in_child(build, (case.name, runner), settings, no_grad=case.kind in NO_GRAD)
            results[(case.name, runner)] = r
            print(f"{case.name:28s} {runner:9s} {_fmt(r.median_s, '9.3f')} s  "
                  f"{_fmt(r.peak_mib, '8.0f')} MiB  {r.status}", file=sys.stderr, flush=True)
    command = "python benchmarks/quantizers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = [SECTION, "", *machine_lines(settings, command.strip(), (load_start, loadavg())), "",
            *ratio_rows(cases, results), "", *runner_rows(cases, results)]
    print("\n".join(body))
    path = args.results if args.results is not None else (None if args.quick else RESULTS)
    if path is not None:
        write_section(path, SECTION, body)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
