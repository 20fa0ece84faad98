"""Tokenizer speed and memory: encode / decode frames per second, peak memory, FLOPs per frame.

For each model (the shipped ones by default) and each size (128², 256², 512² by default; ``HxW``
for other shapes, e.g. 360x640), one 17-frame clip (the 4x8x8 models' 5 latent frames; ``--frames``
for another length) is encoded and decoded in a freshly spawned child process
(`measure.run_in_child`): median time of the repeats, peak extra resident memory, and the
model's FLOPs per frame counted with `torch.utils.flop_counter` (convolutions and matmuls). The
achieved rate is compared with the machine's float32 matmul rate measured in the same run
(a 2048 x 2048 x 2048 `torch.mm`). On a machine with CUDA the same runs repeat on the GPU in
the ``--dtypes`` (float32 and bf16 by default; fp16 too on request) under autocast (CUDA
memory: `torch.cuda.max_memory_allocated`).

    .venv/bin/python benchmarks/model.py                    # shipped models, writes RESULTS.md
    .venv/bin/python benchmarks/model.py --sizes 128 --quick   # smoke run, no RESULTS.md
    .venv/bin/python benchmarks/model.py --models DIR ...   # any model directories
    .venv/bin/python benchmarks/model.py --devices cuda --dtypes fp32 bf16 fp16   # GPU only
    .venv/bin/python benchmarks/model.py --sizes 256 360x640 720x1280 1080x1920 --frames 9
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Result, Settings, loadavg, run_in_child, write_section  # noqa: E402

from vqtok.io.checkpoint import list_models, load_pretrained  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
FRAMES = 17
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


Size = tuple[int, int]  # (H, W)


def parse_size(text: str) -> Size:
    """``"256"`` -> (256, 256); ``"360x640"`` -> (360, 640)."""
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def show_size(size: Size) -> str:
    return f"{size[0]}²" if size[0] == size[1] else f"{size[0]}×{size[1]}"


def _inputs(model_dir: str, size: Size, device: str, dtype: str,
            frames: int) -> tuple[Any, Any, Any, Any]:
    model = load_pretrained(model_dir, device=device)
    video = torch.rand(1, 3, frames, *size, device=device) * 2 - 1
    autocast = torch.autocast(torch.device(device).type, dtype=AUTOCAST.get(dtype, torch.bfloat16),
                              enabled=dtype in AUTOCAST)
    with torch.inference_mode(), autocast:
        indices = model.encode(video)
    return model, video, indices, autocast


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_encode(model_dir: str, size: Size, device: str, dtype: str, frames: int) -> Any:
    model, video, _, autocast = _inputs(model_dir, size, device, dtype, frames)

    def step() -> Any:
        with torch.inference_mode(), autocast:
            out = model.encode(video)
        _sync(device)
        return out

    return step, lambda out: tuple(out.shape)


def build_decode(model_dir: str, size: Size, device: str, dtype: str, frames: int) -> Any:
    model, _, indices, autocast = _inputs(model_dir, size, device, dtype, frames)

    def step() -> Any:
        with torch.inference_mode(), autocast:
            out = model.decode(indices)
        _sync(device)
        return out

    return step, lambda out: tuple(out.shape)


class ConvFlops:
    """Counts 3D-convolution FLOPs with forward hooks: vqtok's convolutions call oneDNN
    directly (`vqtok.families.layers.conv3d`), which `FlopCounterMode` does not see."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.total = 0
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim == 5:
                module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        w = module.weight  # (C_out, C_in / groups, kt, kh, kw)
        if isinstance(out, torch.Tensor):
            self.total += 2 * out.numel() * w[0].numel()


def count_flops(model_dir: str, size: Size, frames: int) -> tuple[float, float]:
    """(encode, decode) FLOPs per frame of a ``frames``-frame clip of ``size`` (H, W): 3D
    convolutions (hooks) plus matmuls / other convolutions (`FlopCounterMode`)."""
    model = load_pretrained(model_dir)
    convs = ConvFlops(model)
    video = torch.rand(1, 3, frames, *size) * 2 - 1
    with torch.inference_mode():
        with FlopCounterMode(display=False) as enc:
            indices = model.encode(video)
        encode, convs.total = convs.total + enc.get_total_flops(), 0
        with FlopCounterMode(display=False) as dec:
            model.decode(indices)
        decode = convs.total + dec.get_total_flops()
    return encode / frames, decode / frames


def build_matmul(device: str) -> Any:
    a = torch.rand(2048, 2048, device=device)
    b = torch.rand(2048, 2048, device=device)

    def step() -> Any:
        out = a @ b
        _sync(device)
        return out

    return step, lambda out: None


def cuda_peak_mib(build: Any) -> float:
    """Peak CUDA memory of one call of ``build()``'s step, in this process."""
    step, _ = build()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(model_dir: str, size: Size, device: str, dtype: str, settings: Settings,
            mm_rate: float, frames: int = FRAMES) -> list[str]:
    name = Path(model_dir).name
    if device.startswith("cuda"):
        settings = dataclasses.replace(settings, cap_address_space=False)
    enc_flops, dec_flops = count_flops(model_dir, size, frames)
    cells = []
    for what, builder, flops in (("encode", build_encode, enc_flops),
                                 ("decode", build_decode, dec_flops)):
        build = functools.partial(builder, model_dir, size, device, dtype, frames)
        result: Result = run_in_child(build, (f"{name}-{show_size(size)}", what), settings,
                                      no_grad=True)
        if result.status != "ok":
            cells += [result.status, "", "", ""]
            continue
        fps = frames / result.median_s
        peak = cuda_peak_mib(build) if device.startswith("cuda") else result.peak_mib
        cells += [f"{fps:.2f}", f"{peak:.0f}", f"{flops / 1e9:.1f}",
                  f"{100 * flops * fps / mm_rate:.0f} %"]
    return [f"| {name} | {device} {dtype} | {show_size(size)} | " + " | ".join(cells) + " |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="model directories (default: shipped)")
    parser.add_argument("--sizes", nargs="*", type=parse_size,
                        default=[(128, 128), (256, 256), (512, 512)],
                        help="N for N x N, or HxW (e.g. 360x640)")
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames per clip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repeat, no RESULTS.md")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--devices", nargs="*", choices=["cpu", "cuda"], default=None,
                        help="default: cpu, and cuda when available")
    parser.add_argument("--dtypes", nargs="*", choices=["fp32", "bf16", "fp16"],
                        default=["fp32", "bf16"], help="CUDA compute dtypes (CPU: fp32)")
    args = parser.parse_args()
    models = args.models or [str(info.path) for info in list_models()]
    settings = Settings(threads=args.threads, warmup=0 if args.quick else 1,
                        repeats=1 if args.quick else 3, budget_s=60.0, mem_cap_gib=16.0,
                        timeout_s=1800.0)
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: CUDA is not available on this machine")
    targets = [("cpu", "fp32")] if "cpu" in devices else []
    targets += [("cuda", dtype) for dtype in args.dtypes if "cuda" in devices]
    started = time.time()
    header = ["| model | device | size | encode frames/s | encode peak MiB | encode GFLOP/frame "
              "| encode % of matmul | decode frames/s | decode peak MiB | decode GFLOP/frame "
              "| decode % of matmul |", "|" + "---|" * 11]
    rows, rates = [], {}
    for device, dtype in targets:
        if device not in rates:
            mm = run_in_child(functools.partial(build_matmul, device), ("matmul", device),
                              dataclasses.replace(settings, cap_address_space=device == "cpu"),
                              no_grad=True)
            rates[device] = 2 * 2048**3 / mm.median_s
            print(f"{device} float32 matmul: {rates[device] / 1e9:.1f} GFLOP/s", flush=True)
        for model_dir in models:
            for size in args.sizes:
                rows += measure(model_dir, size, device, dtype, settings, rates[device],
                                args.frames)
                print(rows[-1], flush=True)
    body = [
        "## Model", "",
        f"`{' '.join(['python', *sys.argv])}` — {datetime.date.today()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} threads, load average before the run "
        f"{loadavg()}, {time.time() - started:.0f} s.", "",
        f"One {args.frames}-frame clip per size; frames/s is the median of the repeats; peak is "
        "the extra resident memory of the measuring process (CUDA: max allocated); GFLOP/frame "
        "counts convolutions and matmuls (`torch.utils.flop_counter`); % of matmul compares "
        "the achieved FLOP rate with this machine's float32 matmul rate ("
        + ", ".join(f"{d}: {r / 1e9:.0f} GFLOP/s" for d, r in rates.items()) + ").", "",
        *header, *rows,
    ]
    path = args.results if args.results is not None else (None if args.quick else RESULTS)
    if path is not None:
        write_section(path, "## Model", body)
        print(f"wrote {path}")
    else:
        print("\n".join(body))


if __name__ == "__main__":
    main()
