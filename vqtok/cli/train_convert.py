"""The commands that make model directories: ``vqtok train`` and ``vqtok convert``.

Registered on the main app by `vqtok.cli.app`. Like the other commands they only parse options, call
the library (`vqtok.train.loop.train`, `vqtok.convert`) and render; the training progress
bar is drawn here from the records `train` reports.
"""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vqtok.cli.support import (
    DebugOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    check_runtime,
    download_bar,
    emit_json,
    err,
    handle_errors,
    interrupted_exit,
    out,
    plural,
)
from vqtok.convert import CONVERTERS

# the registered converters' source names (vqtok.convert.CONVERTERS; importing it loads no torch)
Source = Enum("Source", {name: name for name in CONVERTERS}, type=str)  # type: ignore[misc]


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def _train_bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=disable,
    )


def _stats(record: dict[str, Any]) -> str:
    parts = [f"loss {record['loss']:.4f}", f"PSNR {record['psnr']:.2f}"]
    for key, label in (("usage", "usage"), ("perplexity", "ppl")):
        if key in record:
            parts.append(f"{label} {record[key]:.3g}")
    return "  ".join(parts)


def train(
    config: Annotated[Path, typer.Argument(help="Training config JSON (model + train options).")],
    data: Annotated[list[Path], typer.Argument(help="Video / image files or directories.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory.")],
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o.")] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            metavar="NAME|DIR|OWNER/REPO",
            help="Fine-tune: start from this model's weights (encoder and decoder must match; "
            "the quantizer's are kept only if its config is the same).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for torch.")
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train or fine-tune a tokenizer on a folder of videos (and photos, panned into clips).

    Writes RUN/checkpoint/ (latest, atomic), RUN/metrics.jsonl and, at the end, RUN/model/ (a
    model directory with its card). Ctrl-C saves a checkpoint; --resume continues exactly.
    """
    import torch

    from vqtok.pipeline.outputs import check_folder_output
    from vqtok.train.config import RunConfig
    from vqtok.train.loop import train as run_training

    if threads:
        torch.set_num_threads(threads)
    with handle_errors(debug):
        check_folder_output(output, "a training run")
        check_runtime(device, None, quiet)
        cfg = RunConfig.from_file(config)
        bar = _train_bar(quiet or as_json or not err.is_terminal)
        with bar:
            task = bar.add_task("train", total=cfg.train.steps, stats="")

            def report(record: dict[str, Any]) -> None:
                if "warning" in record:  # e.g. an unreadable file that was skipped
                    if not quiet:
                        err.print(f"warning: {record['warning']}", markup=False)
                elif "loss" in record:
                    bar.update(task, completed=record["step"], stats=_stats(record))
                elif "eval_psnr" in record:
                    err.print(
                        f"step {record['step']}: held-out PSNR {record['eval_psnr']:.2f} "
                        f"dB, SSIM {record['eval_ssim']:.4f}, usage "
                        f"{record['eval_usage']:.3f}",
                        markup=False,
                    )

            result = run_training(
                cfg,
                data,
                output,
                device=device,
                resume=resume,
                init_from=init_from,
                on_progress=report,
            )
    if result.interrupted:
        err.print(
            f"interrupted at step {result.step}; checkpoint saved in "
            f"{output / 'checkpoint'} (continue with --resume)",
            markup=False,
        )
        raise interrupted_exit(result.interruption)
    if as_json:
        emit_json({"model_dir": str(result.model_dir), "steps": result.step})
        return
    out.print(f"{result.model_dir}: trained {plural(result.step, 'step')}", markup=False)


def convert(
    source_kind: Annotated[Source, typer.Argument(help="Which public tokenizer.")],
    source: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoint file(s) or directory, or a Hugging Face repository owner/name"
            "[@revision] (fetched into the Hugging Face cache)."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write.")],
    variant: Annotated[
        str | None, typer.Option(
            help="Cosmos: DV4x8x8, DV8x8x8 or DV8x16x16 (default: read from the source's name).")
    ] = None,
    legacy_mode: Annotated[bool, typer.Option("--legacy-mode", help="Cosmos legacy_mode.")] = False,
    dtype: Annotated[Precision, typer.Option(help="Stored weight dtype.")] = Precision.fp32,
    name: Annotated[str | None, typer.Option(help="Model name (default: directory).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a public checkpoint (Open-MAGVIT2 .ckpt, Cosmos .jit) into a model directory.

    The only command that reads pickle (torch.load weights_only=True) or TorchScript; the result
    is an ordinary safetensors model directory usable with --model. SOURCE may be a Hugging Face
    repository (nvidia/Cosmos-0.1-Tokenizer-DV4x8x8,
    TencentARC/Open-MAGVIT2-Tokenizer-262144-Video): only the files needed are downloaded;
    HF_HUB_OFFLINE=1 uses only cached files.
    """
    import torch

    from vqtok.convert import convert as run_converter
    from vqtok.convert.common import ConvertOptions

    weight_dtype = torch.bfloat16 if dtype is Precision.bf16 else torch.float32
    extra = {k: v for k, v in (("variant", variant), ("legacy_mode", legacy_mode)) if v}
    words = ["vqtok", "convert", source_kind.value, *map(str, source), "-o", str(output)]
    words += ["--variant", variant] if variant else []
    words += ["--legacy-mode"] if legacy_mode else []
    words += ["--dtype", dtype.value] if dtype is not Precision.fp32 else []
    words += ["--name", name] if name else []
    with handle_errors(debug), download_bar(quiet or not err.is_terminal) as fetched:
        options = ConvertOptions(weight_dtype, name, shlex.join(words), fetched, extra)
        result = run_converter(source_kind.value, source, output, options)
    if as_json:
        emit_json({"output": str(result.out_dir), "family": result.family,
                   "sources": [{"file": f, "sha256": h} for f, h in result.sources],
                   "tensors_used": result.used, "ignored": result.ignored_by_reason()})
        return
    out.print(result.summary(), markup=False)
