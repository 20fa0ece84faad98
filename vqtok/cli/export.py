"""``vqtok export``: a model for runtimes without PyTorch (ONNX).

Registered on the main app by `vqtok.cli.app`. Parses, calls `vqtok.export.export_onnx` and
prints one result line (or ``--json``: the export's ``export.json`` and its files); a spinner on
stderr while the graphs are traced and checked, only on a terminal.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from vqtok.cli.support import (
    DebugOpt,
    JsonOpt,
    ModelDirOpt,
    QuietOpt,
    emit_json,
    err,
    handle_errors,
    out,
    usage_error,
)


class ExportFormat(str, Enum):
    onnx = "onnx"


# an -o that names one file: the export is a folder of several
_FILE_SUFFIXES = (".onnx", ".json", ".py", ".npy", ".safetensors")


def export(
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="Model name, directory or Hugging Face repository (owner/name"
        "[@revision]).")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="DIR",
        help="Folder to write: encoder.onnx, decoder.onnx, export.json, vqtok_onnx.py.")],
    export_format: Annotated[ExportFormat, typer.Option(
        "--format", help="What to export to.")] = ExportFormat.onnx,
    beam: Annotated[int | None, typer.Option(
        min=1, metavar="W", help="Residual VQ models: the encoder's beam width (1: greedy; "
        "default: the model's).")] = None,
    opset: Annotated[int, typer.Option(metavar="N", help="ONNX opset (18 or later).")] = 18,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an export already in the folder.")] = False,
    model_dir: ModelDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a model to ONNX: the encoder with its quantizer's search (video in, int64
    indices out) and the decoder (indices in, video out), with dynamic batch, frames, height
    and width.

    The graphs take 1 + k*tau frames and sizes that are multiples of the spatial factor;
    vqtok_onnx.py, written beside them, pads and trims other sizes as vqtok encode does and
    needs only numpy and onnxruntime. Before writing, the export runs both graphs with ONNX
    Runtime on a test clip and compares them with PyTorch. Needs pip install 'vqtok[onnx]'.
    """
    if output.suffix.lower() in _FILE_SUFFIXES:
        raise usage_error("--output", f"an export is a folder (encoder.onnx, decoder.onnx, "
                                      f"export.json, vqtok_onnx.py), not a {output.suffix} "
                                      "file; give a folder name")
    if output.exists() and not output.is_dir():
        raise usage_error("--output", f"{output} is a file; an export is a folder")
    from vqtok.export import export_onnx

    with handle_errors(debug), _spinner(quiet or as_json, f"exporting {model} to ONNX"):
        result = export_onnx(model, output, beam=beam, opset=opset, overwrite=overwrite,
                             extra_dirs=model_dir or [])
    if as_json:
        emit_json({"output": str(result.directory),
                   "files": [str(path) for path in result.files],
                   "export": result.description})
        return
    out.print(_summary(result.directory, result.description), markup=False)


def _summary(directory: Path, description: dict[str, Any]) -> str:
    """One line: what was written and how well it agreed with PyTorch."""
    check = description["verified"]
    sizes = ", ".join(
        f"{name} ({(directory / name).stat().st_size / 2**20:.1f} MiB)"
        for name in (description["encoder"]["file"], description["decoder"]["file"]))
    batch, frames, height, width = check["clip"]
    return (f"{description['model']['name']} -> {directory}: {sizes}, export.json, "
            f"{description['runner']}; search {description['model']['search']}; checked with "
            f"onnxruntime on a {batch}x{frames}x{height}x{width} clip: "
            f"{check['indices_identical']:.2%} of the indices identical, frames within "
            f"{check['max_abs_diff']:.2g}")



def _spinner(disable: bool, text: str) -> contextlib.AbstractContextManager[Any]:
    """A status line on stderr while the export runs (not drawn off a terminal)."""
    return contextlib.nullcontext() if disable or not err.is_terminal else err.status(text)
