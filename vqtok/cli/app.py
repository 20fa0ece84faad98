"""The ``vqtok`` command line (design.md §3): a thin Typer skin over the library.

Each command parses its options, calls `vqtok.pipeline.encode` (encode, decode),
`vqtok.pipeline.reconstruct`, `vqtok.pipeline.remap_build` (remap build) or
`vqtok.pipeline.describe` (info, models) and renders the result: results on stdout (a table, or
JSON with ``--json``), the progress bar and messages on stderr. Exit status 0 when everything
worked, 1 when an input failed or held bad data (after the other inputs were done, with a summary),
2 for usage errors. Shared machinery is in `vqtok.cli.support`; commands are small functions so
that later ones (``train``, ``convert``) register the same way.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vqtok.cli.help import Command, Group
from vqtok.cli.pack import pack
from vqtok.cli.support import (
    ChunkOpt,
    DebugOpt,
    DeviceOpt,
    DType,
    Format,
    JsonOpt,
    ModelDirOpt,
    ModelOpt,
    QuietOpt,
    as_usage_error,
    check_runtime,
    emit_json,
    err,
    exit_for,
    handle_errors,
    load_tokenizer,
    my_share,
    one_by_one,
    out,
    parse_size,
    print_summary,
    print_table,
    run_jobs,
    usage_error,
)
from vqtok.cli.train_convert import convert, train
from vqtok.io.tokens import sidecar_path
from vqtok.pipeline.plan import INDEX_EXTENSIONS, Job, plan_inputs

app = typer.Typer(
    name="vqtok",
    cls=Group,
    help="Turn video into discrete tokens and back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
remap_app = typer.Typer(help="Used-index (remap) files.", no_args_is_help=True, cls=Group)


def _version(value: bool) -> None:
    if value:
        from vqtok import __version__

        typer.echo(f"vqtok {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Turn video into discrete tokens and back."""
app.add_typer(remap_app, name="remap")
app.command(cls=Command)(train)
app.command(cls=Command)(convert)
app.command(cls=Command)(pack)

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


def _encode_options(
    size: str | None, short_side: int | None, fps: str | None, max_frames: int | None,
    chunk: int, fmt: Format = Format.npy, remap: Path | None = None, strict: bool = False,
    levels: int | None = None,
) -> Any:
    from vqtok.io.video import as_fps
    from vqtok.pipeline.encode import EncodeOptions

    parsed = as_usage_error(lambda: parse_size(size), "--size")
    if parsed is not None and short_side is not None:
        raise usage_error("--size", "give --size or --short-side, not both")
    rate: Fraction | None = None if fps is None else as_usage_error(lambda: as_fps(fps), "--fps")
    if levels is not None and remap is not None:
        raise usage_error("--levels", "cannot be combined with --remap yet; encode all levels")
    return EncodeOptions(
        parsed, short_side, rate, max_frames, chunk, fmt.value, remap, strict, levels
    )


@app.command(cls=Command)
def encode(
    inputs: Annotated[list[Path], typer.Argument(help="Video files or directories.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Index file, or directory/.")],
    model: ModelOpt = None,
    model_dir: ModelDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: Annotated[DType | None, typer.Option(help="Compute dtype (default fp32).")] = None,
    size: SizeOpt = None,
    short_side: ShortSideOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    chunk: ChunkOpt = 16,
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
    overwrite: Annotated[bool, Flag("--overwrite", help="Redo outputs that are complete.")] = False,
    strict: Annotated[bool, Flag("--strict", help="Treat a damaged input as an error.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Encode videos into index files (.npy + .json sidecar, or .safetensors)."""
    from vqtok.pipeline.batching import encode_files

    fmt = _index_format(output, format)
    options = _encode_options(size, short_side, fps, max_frames, chunk, fmt, remap, strict, levels)
    with handle_errors(debug):
        compute = check_runtime(device, dtype, quiet or as_json)
        jobs = plan_inputs(inputs, output, f".{fmt.value}", overwrite=True)
        jobs = [_with_index_suffix(job, fmt.value) for job in my_share(jobs, shard)]
        if not overwrite:
            jobs = _resume(jobs, model, model_dir, options)
        # no model is loaded when every job is already done (a finished resume)
        pending = any(not job.done for job in jobs)
        tokenizer: Any = load_tokenizer(model, model_dir, device, compute) if pending else None
        if pending and levels is not None:
            as_usage_error(lambda: tokenizer.check_levels(levels), "--levels")  # fail once
        if pending and remap is not None:
            from vqtok.pipeline.matching import RemapPlan

            RemapPlan.open(remap, tokenizer.model)  # a bad remap file fails once, not per video
        outcomes = run_jobs(
            jobs,
            lambda bar: encode_files(jobs, tokenizer, options, batch, bar.advance,
                                     lambda group: bar.start([j.source.name for j in group])),
            quiet or as_json,
            debug,
        )
    print_summary(outcomes, _describe_encoded, as_json)
    exit_for(outcomes)


def _index_format(output: str, given: Format | None) -> Format:
    """``--format``, else the format ``-o``'s suffix names (``x.safetensors``), else npy.

    An ``-o`` suffix that contradicts ``--format`` (``-o x.npy --format safetensors``) is a
    usage error: writing another file than the one named would surprise.
    """
    named = {".npy": Format.npy, ".safetensors": Format.safetensors}.get(Path(output).suffix)
    if output.endswith(("/", "\\")):  # a directory, whatever its name
        named = None
    if given is not None and named is not None and given is not named:
        raise typer.BadParameter(
            f"-o {output} names a .{named.value} file but --format is {given.value}; "
            f"drop --format or name the output .{given.value}",
            param_hint="--format",
        )
    return given or named or Format.npy


def _with_index_suffix(job: Job, fmt: str) -> Job:
    """``-o codes`` names ``codes.npy`` (the file `save_tokens` writes), so resume finds it."""
    target = job.target
    if target.suffix == f".{fmt}":
        return job
    if target.suffix in (".npy", ".safetensors", ".json"):
        target = target.with_suffix(f".{fmt}")
    else:
        target = target.with_name(f"{target.name}.{fmt}")
    return replace(job, target=target)


def _resume(jobs: list[Job], model: str | None, model_dir: list[Path] | None,
            options: Any) -> list[Job]:
    """Mark the jobs whose output exists, is complete and was made by this model with these
    settings as done; an output made differently is replaced, with a note saying why."""
    if not any(job.error is None and job.target.exists() for job in jobs):
        return jobs
    from vqtok.api import DEFAULT_MODEL
    from vqtok.pipeline.resume import Resume

    resume = Resume.for_run(model or DEFAULT_MODEL, model_dir or [], options.remap,
                            options.settings())
    planned = []
    for job in jobs:
        if job.error is None:
            keep, note = resume.check(job.target)
            job = replace(job, done=keep, note=note)
        planned.append(job)
    return planned


def _describe_encoded(result: Any) -> str:
    meta = result.meta
    grid = "x".join(str(v) for v in meta.shape)
    return (f"{meta.encoded.frames} frames -> indices {grid} "
            f"(+{meta.encoded.padding} padding) in {result.seconds:.1f} s")


@app.command(cls=Command)
def decode(
    codes: Annotated[list[Path], typer.Argument(help="Index files or directories.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Video file, or directory/.")],
    model: ModelOpt = None,
    model_dir: ModelDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: Annotated[DType | None, typer.Option(help="Compute dtype (default fp32).")] = None,
    fps: FpsOpt = None,
    remap: Annotated[Path | None, typer.Option(help="The remap file of remapped indices.")] = None,
    chunk: ChunkOpt = 16,
    force: Annotated[bool, Flag("--force", help="Decode despite a model hash mismatch.")] = False,
    overwrite: Annotated[bool, Flag("--overwrite", help="Replace existing videos.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Decode index files into MP4 videos, with the model each file names (or --model)."""
    from vqtok.io.tokens import load_metadata
    from vqtok.io.video import as_fps
    from vqtok.pipeline.encode import decode_file

    rate = None if fps is None else as_usage_error(lambda: as_fps(fps), "--fps")
    loaded: dict[str, Any] = {}
    compute: str | None = None

    def tokenizer_for(path: Path) -> Any:
        name = model or load_metadata(path).model
        if name not in loaded:
            loaded[name] = load_tokenizer(name, model_dir, device, compute)
        return loaded[name]

    def work(job: Any, progress: Any) -> Any:
        return decode_file(job.source, job.target, tokenizer_for(job.source), fps=rate,
                           remap=remap, force=force, chunk=chunk, progress=progress)

    with handle_errors(debug):
        compute = check_runtime(device, dtype, quiet or as_json)
        jobs = plan_inputs(codes, output, ".mp4", extensions=INDEX_EXTENSIONS,
                           select=_is_index_file, overwrite=overwrite)
        jobs = my_share(jobs, shard)
        outcomes = run_jobs(jobs, one_by_one(jobs, work), quiet or as_json, debug)
    print_summary(outcomes, _describe_decoded, as_json)
    exit_for(outcomes)


def _is_index_file(path: Path) -> bool:
    from vqtok.io.usedsets import is_remap_file

    if path.suffix == ".safetensors":
        return not is_remap_file(path)
    return sidecar_path(path).is_file()


def _describe_decoded(result: Any) -> str:
    height, width = result.size
    return f"{result.frames} frames {height}x{width} at {float(result.fps):g} fps"


@remap_app.command("build", cls=Command)
def remap_build(
    codes: Annotated[list[Path], typer.Argument(help="Index files or directories.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="The remap file: .npy (one level) or .safetensors (several).")],
    min_count: Annotated[str, typer.Option(
        metavar="N|N0,N1,...",
        help="Keep codes seen N times or more, at each level; or one N per level.")] = "1",
    top: Annotated[int, typer.Option(min=0, help="How many top codes to show.")] = 10,
    level: Annotated[
        int | None,
        typer.Option(min=0, help="Files with several codebooks / levels: count only this one."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Count code usage over index files and write the used-index (remap) file, one used set
    per codebook / level."""
    from vqtok.pipeline.remap_build import build_remap

    thresholds = as_usage_error(lambda: _parse_counts(min_count), "--min-count")
    with handle_errors(debug):
        report = build_remap(codes, output, thresholds, top, level)
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [("model", report.model), ("files", str(report.files))]
    if len(report.levels) == 1:
        rows += [("indices", str(report.tokens)), *_level_rows(report.levels[0])]
    else:
        rows.append(("indices", f"{report.tokens} per level, {len(report.levels)} levels"))
    rows.append(("written", str(report.output)))
    for key, value in rows:
        table.add_row(key, value)
    print_table(table)
    if len(report.levels) > 1:
        print_table(_levels_table(report.levels))


def _parse_counts(text: str) -> int | list[int]:
    """``"2"`` -> 2; ``"4,2,1,1"`` -> [4, 2, 1, 1] (one threshold per level)."""
    from vqtok.errors import ConfigError

    try:
        values = [int(part) for part in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"expected N or N0,N1,... (integers >= 1), got {text!r}") from e
    if min(values) < 1:
        raise ConfigError(f"thresholds must be >= 1, got {text!r}")
    return values[0] if len(values) == 1 else values


def _used_text(level: Any) -> str:
    share = level.used / level.codebook_size
    threshold = f", min count {level.min_count}" if level.min_count > 1 else ""
    return f"{level.used} of {level.codebook_size} ({share:.1%}){threshold}"


def _level_rows(level: Any) -> list[tuple[str, str]]:
    return [
        ("codes used", _used_text(level)),
        ("perplexity", f"{level.perplexity:.2f}"),
        ("bits per index", f"{level.bits_per_index:.3f}"),
        ("top codes", ", ".join(f"{c} ({n})" for c, n in level.top)),
    ]


def _levels_table(levels: Any) -> Table:
    table = Table()
    for column in ("level", "codes used", "perplexity", "bits per index", "top codes"):
        table.add_column(column)
    for level in levels:
        top = ", ".join(f"{c} ({n})" for c, n in level.top[:3])
        table.add_row(str(level.level), _used_text(level), f"{level.perplexity:.2f}",
                      f"{level.bits_per_index:.3f}", top)
    return table


@app.command(cls=Command)
def info(
    path: Annotated[
        Path, typer.Argument(help="A model directory, an index file, a token dataset or a video.")
    ],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Describe a model directory, an index file, a token dataset or a video."""
    from vqtok.pipeline.describe import describe_path

    with handle_errors(debug):
        facts = describe_path(path)
    if as_json:
        emit_json(facts)
        return
    table = Table(title=f"{facts['kind']}: {path}", show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    if "parameters" in facts:  # as the model cards write it (checkpoint.parameter_count)
        facts["parameters"] = f"{facts['parameters']:,} (every value in model.safetensors)"
    for key, value in _table_rows(facts):
        if key not in ("kind", "path"):
            table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    print_table(table)


def _table_rows(facts: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as dotted rows (``source.file``) for the table; ``--json`` keeps them
    nested."""
    rows: list[tuple[str, Any]] = []
    for key, value in facts.items():
        if isinstance(value, dict) and value:
            rows += _table_rows(value, f"{prefix}{key}.")
        else:
            rows.append((prefix + key, value))
    return rows


@app.command(cls=Command)
def models(
    model_dir: ModelDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the models found (shipped models/, --model-dir, $VQTOK_MODELS)."""
    from vqtok.pipeline.describe import describe_models

    with handle_errors(debug):
        rows = describe_models(model_dir or [])
    if as_json:
        emit_json(rows)
        return
    if not rows:
        if not quiet:
            err.print("no models found; add a directory with --model-dir or $VQTOK_MODELS")
        return
    table = Table()
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    print_table(table)


@app.command(cls=Command)
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
    dtype: Annotated[DType | None, typer.Option(help="Compute dtype (default fp32).")] = None,
    size: SizeOpt = None,
    short_side: ShortSideOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    chunk: ChunkOpt = 16,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Encode and decode a video; print PSNR / SSIM (optionally write the result)."""
    from vqtok.pipeline.reconstruct import reconstruct_file

    options = _encode_options(size, short_side, fps, max_frames, chunk)
    with handle_errors(debug):
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
    out.print(f"{result.source}: {result.frames} frames, PSNR {result.psnr:.2f} dB, "
              f"SSIM {result.ssim:.4f}", markup=False)
    if per_frame:
        table = Table()
        for column in ("frame", "PSNR (dB)", "SSIM"):
            table.add_column(column, justify="right")
        for row in facts["per_frame"]:
            table.add_row(str(row["frame"]), f"{row['psnr']:.2f}", f"{row['ssim']:.4f}")
        print_table(table)
