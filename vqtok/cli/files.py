"""The commands that run over files: ``vqtok encode``, ``decode`` and ``reconstruct``.

Each parses its options, calls the library (`vqtok.pipeline.encode.EncodeRun`,
`vqtok.pipeline.decode.decode_file`, `vqtok.pipeline.reconstruct.reconstruct_file`) and renders
the outcome: a summary on stdout (a table, or JSON with ``--json``), the progress bar and
messages on stderr; exit status 0 when everything worked, 1 when an input failed (after the
other inputs were done), 2 for usage errors. Registered on the app by `vqtok.cli.app`.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vqtok.cli.ray_encode import (
    AddressOpt,
    Engine,
    EngineOpt,
    GpusOpt,
    WorkersOpt,
    check_ray_flags,
    encode_on_ray,
)
from vqtok.cli.runs import JobReport, exit_for, one_by_one, print_summary, run_jobs
from vqtok.cli.support import (
    ChunkOpt,
    DebugOpt,
    DeviceOpt,
    DTypeOpt,
    Format,
    JsonOpt,
    MaxMemoryOpt,
    ModelDirOpt,
    ModelOpt,
    QuietOpt,
    TileOpt,
    as_usage_error,
    check_runtime,
    download_bar,
    emit_json,
    err,
    handle_errors,
    load_tokenizer,
    out,
    parse_size,
    plural,
    print_table,
    shard_option,
    usage_error,
)
from vqtok.io.tokens import format_of
from vqtok.pipeline.plan import Job

Flag = typer.Option  # a bool option given by its one name is a plain flag (no --no-x)
SizeOpt = Annotated[
    str | None, typer.Option(metavar="HxW", help="Resize to height x width, e.g. 256x448.")
]
ShortSideOpt = Annotated[
    int | None, typer.Option(min=1, help="Resize so the short side is N (keeps aspect).")
]
FpsOpt = Annotated[
    str | None, typer.Option(metavar="RATE", help="Frame rate, e.g. 8 or 30000/1001.")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        metavar="i/n",
        help="Process share i of n of the files, 0-based: 0/4 to 3/4 (torchrun: automatic).",
    ),
]
MaxFramesOpt = Annotated[int | None, typer.Option(min=1, help="Encode at most N frames.")]


def _memory_plan(tile: str, max_memory: float | None, output: str | Path | None) -> Any:
    """``--tile`` / ``--max-memory`` -> a `vqtok.families.memory.MemoryPlan`; carried frames
    spill beside ``output`` when it is a local path (else into the temporary folder)."""
    from vqtok.errors import ConfigError
    from vqtok.families.memory import MemoryPlan, parse_tile

    folder = None
    if output is not None and "://" not in str(output):
        folder = Path(output) if str(output).endswith(("/", os.sep)) else Path(output).parent
    spill = str(folder) if folder is not None and folder.is_dir() else None
    try:  # not as_usage_error: the one step of the walk from here to the model (code_walk.md)
        return MemoryPlan(parse_tile(tile), max_memory, spill)
    except ConfigError as e:
        raise usage_error("--tile", e.cli_message) from None


def _encode_options(
    size: str | None, short_side: int | None, fps: str | None, max_frames: int | None,
    chunk: int, fmt: Format = Format.npy, remap: Path | None = None, strict: bool = False,
    levels: int | None = None, beam: int | None = None, memory: Any = None,
) -> Any:
    from vqtok.io.video import as_fps
    from vqtok.pipeline.encode import EncodeOptions

    parsed = as_usage_error(lambda: parse_size(size), "--size")
    if parsed is not None and short_side is not None:
        raise usage_error("--size", "give --size or --short-side, not both")
    rate: Fraction | None = None if fps is None else as_usage_error(lambda: as_fps(fps), "--fps")
    if levels is not None and remap is not None:
        raise usage_error("--levels", "cannot be combined with --remap yet; encode all levels")
    return EncodeOptions(parsed, short_side, rate, max_frames, chunk, fmt.value, remap, strict,
                         levels, beam, *([] if memory is None else [memory]))


def encode(
    inputs: Annotated[list[str], typer.Argument(
        help="Video files, directories, URLs (s3://...), .tar shards or clip manifests "
        "(.csv, .jsonl, .parquet: path, start, end, key).")],
    output: Annotated[str, typer.Option(
        "--output", "-o",
        help="Index file, or directory/; --engine ray: a dataset folder or URL.")],
    model: ModelOpt = None,
    model_dir: ModelDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = None,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = 1,
    gpus_per_worker: GpusOpt = 0,
    size: SizeOpt = None,
    short_side: ShortSideOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    chunk: ChunkOpt = 16,
    tile: TileOpt = "auto",
    max_memory: MaxMemoryOpt = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Encode up to N videos of the same size together.")
    ] = 1,
    remap: Annotated[Path | None, typer.Option(
        help="Remap file (vqtok remap build): store compact ids, per level.")] = None,
    format: Annotated[
        Format | None,
        typer.Option("--format", help="Index file format (default: -o's suffix, else npy)."),
    ] = None,
    levels: Annotated[int | None, typer.Option(
        min=1, metavar="K", help="Residual models: keep the first K levels, a shorter, coarser "
        "code (default: all).")] = None,
    beam: Annotated[int | None, typer.Option(
        min=1, metavar="W", help="Residual models: search the levels with a beam of W paths, "
        "a closer code for the same bits and a slower encode (1: greedy; default: the "
        "model's own).")] = None,
    overwrite: Annotated[bool, Flag("--overwrite", help="Redo outputs that are complete.")] = False,
    strict: Annotated[bool, Flag("--strict", help="Treat a damaged input as an error.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Encode videos into index files (.npy + .json sidecar, or .safetensors); with --engine
    ray, on a Ray cluster into a token dataset."""
    from vqtok.pipeline.encode import EncodeRun

    check_ray_flags(engine, address, workers, gpus_per_worker, shard, format)
    fmt = _index_format(output, format)
    options = _encode_options(size, short_side, fps, max_frames, chunk, fmt, remap, strict, levels,
                              beam, _memory_plan(tile, max_memory, output))
    with handle_errors(debug):
        if engine is Engine.ray:  # a token dataset, written by a Ray cluster's workers
            encode_on_ray(inputs, output, model=model, model_dirs=model_dir, options=options,
                          address=address, workers=workers, gpus=gpus_per_worker, device=device,
                          dtype=dtype, overwrite=overwrite, quiet=quiet, as_json=as_json)
            return
        compute = check_runtime(device, dtype, quiet or as_json)
        run = EncodeRun.plan(inputs, output, model=model, model_dirs=model_dir or [],
                             options=options, batch=batch, overwrite=overwrite,
                             shard=shard_option(shard))
        with download_bar(not err.is_terminal) as on_download:
            tokenizer = run.load(device, compute, on_download)  # None: every output complete
        with JobReport(run.jobs, quiet or as_json, debug) as report:
            for job, result in run.results(tokenizer, report.bar.advance, report.bar.start):
                report.record(job, result)
    print_summary(report.outcomes, _describe_encoded, as_json)
    exit_for(report.outcomes)


def _index_format(output: str, given: Format | None) -> Format:
    """``--format``, else the format ``-o``'s suffix names (``x.safetensors``), else npy.

    An ``-o`` suffix that contradicts ``--format`` (``-o x.npy --format safetensors``) is a
    usage error: writing another file than the one named would surprise.
    """
    suffix = format_of(output)
    named = None if suffix is None else Format(suffix)
    if given is not None and named is not None and given is not named:
        raise typer.BadParameter(
            f"-o {output} names a .{named.value} file but --format is {given.value}; "
            f"drop --format or name the output .{given.value}",
            param_hint="--format",
        )
    return given or named or Format.npy


def _describe_encoded(result: Any) -> str:
    meta = result.meta
    grid = "x".join(str(v) for v in meta.shape)
    return (f"{plural(meta.encoded.frames, 'frame')} -> indices {grid} "
            f"(+{meta.encoded.padding} padding) in {result.seconds:.1f} s")


def decode(
    codes: Annotated[list[Path], typer.Argument(help="Index files or directories.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Video file, or directory/.")],
    model: ModelOpt = None,
    model_dir: ModelDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = None,
    fps: FpsOpt = None,
    remap: Annotated[Path | None, typer.Option(help="The remap file of remapped indices.")] = None,
    chunk: ChunkOpt = 16,
    tile: TileOpt = "auto",
    max_memory: MaxMemoryOpt = None,
    force: Annotated[bool, Flag("--force", help="Decode despite a model hash mismatch.")] = False,
    overwrite: Annotated[bool, Flag("--overwrite", help="Replace existing videos.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    key: Annotated[str | None, typer.Option(
        help="Decode this clip of the token dataset given (its key: the packed index file's "
        "path, e.g. codes/a.npy; vqtok info DATASET shows the first few).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Decode index files (or a token dataset's row: --key) into MP4 videos, with the model
    each file names (or --model)."""
    from vqtok.io.video import as_fps
    from vqtok.pipeline.decode_rows import plan_decode

    rate = None if fps is None else as_usage_error(lambda: as_fps(fps), "--fps")
    memory = _memory_plan(tile, max_memory, output)
    with handle_errors(debug):
        compute = check_runtime(device, dtype, quiet or as_json)
        run = plan_decode(codes, key, output, model=model, model_dirs=model_dir or [], fps=rate,
                          remap=remap, force=force, chunk=chunk, memory=memory,
                          overwrite=overwrite,
                          shard=shard_option(shard))
        with download_bar(not err.is_terminal) as on_download, \
                JobReport(run.jobs, quiet or as_json, debug) as report:
            for job, result in run.results(device, compute, on_download, report.bar.advance,
                                           report.bar.start):
                report.record(job, result)
    print_summary(report.outcomes, _describe_decoded, as_json)
    exit_for(report.outcomes)


def _describe_decoded(result: Any) -> str:
    height, width = result.size
    return f"{plural(result.frames, 'frame')} {height}x{width} at {float(result.fps):g} fps"


def reconstruct(
    video: Annotated[Path, typer.Argument(help="The video to round-trip.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the reconstruction here.")
    ] = None,
    side_by_side: Annotated[bool, Flag("--side-by-side", help="Write source | result.")] = False,
    per_frame: Annotated[bool, Flag("--per-frame", help="Also report every frame.")] = False,
    model: ModelOpt = None,
    model_dir: ModelDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = None,
    size: SizeOpt = None,
    short_side: ShortSideOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    chunk: ChunkOpt = 16,
    tile: TileOpt = "auto",
    max_memory: MaxMemoryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Encode and decode a video; print PSNR / SSIM (optionally write the result)."""
    from vqtok.pipeline.outputs import VIDEO_SUFFIXES, check_file_output
    from vqtok.pipeline.reconstruct import reconstruct_file

    options = _encode_options(size, short_side, fps, max_frames, chunk,
                              memory=_memory_plan(tile, max_memory, output))
    with handle_errors(debug):
        if output is not None:  # before the model is loaded: fail before any work
            check_file_output(output, VIDEO_SUFFIXES, "a video")
        tokenizer = load_tokenizer(model, model_dir, device,
                                   check_runtime(device, dtype, quiet or as_json))
        jobs = [Job(video, output or video)]
        work = one_by_one(jobs, lambda job, progress: reconstruct_file(
            video, tokenizer, options, output, side_by_side, progress))
        outcomes = run_jobs(jobs, work, quiet or as_json, debug)
    exit_for(outcomes)
    _print_quality(outcomes[0].result, per_frame, as_json)


def _print_quality(result: Any, per_frame: bool, as_json: bool) -> None:
    facts: dict[str, Any] = {
        "video": str(result.source), "frames": result.frames,
        "psnr": round(result.psnr, 4), "ssim": round(result.ssim, 5),
        "output": None if result.target is None else str(result.target),
    }
    if per_frame:
        facts["per_frame"] = [
            {"frame": i, "psnr": round(p, 4), "ssim": round(s, 5)}
            for i, (p, s) in enumerate(zip(result.psnr_per_frame, result.ssim_per_frame,
                                           strict=True))
        ]
    if as_json:
        emit_json(facts)
        return
    out.print(f"{result.source}: {plural(result.frames, 'frame')}, PSNR {result.psnr:.2f} dB, "
              f"SSIM {result.ssim:.4f}", markup=False)
    if per_frame:
        table = Table()
        for column in ("frame", "PSNR (dB)", "SSIM"):
            table.add_column(column, justify="right")
        for row in facts["per_frame"]:
            table.add_row(str(row["frame"]), f"{row['psnr']:.2f}", f"{row['ssim']:.4f}")
        print_table(table)
