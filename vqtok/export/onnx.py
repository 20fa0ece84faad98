"""ONNX export of a vqtok-family model: ``encoder.onnx``, ``decoder.onnx``, ``export.json``.

The encoder graph includes the quantizer's search (video in, int64 indices out), the decoder
graph the code lookup (indices in, video out); see `vqtok.export.graphs` for the shapes they
take and `vqtok.export.search` for how the search stays exact in a static graph. The graphs are
traced by ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), the exporter
PyTorch develops and the only one that states derived dynamic sizes (frames = 1 + k*tau,
height = f*h) instead of leaving any size open. ``export.json`` describes the inputs and
outputs, their value ranges, the model's name and its weights' SHA-256, and how the export was
checked: the graphs are run with ONNX Runtime (CPU) on a small synthetic clip and compared
with PyTorch before anything is written. ``vqtok_onnx.py`` (a copy of
`vqtok.export.onnx_runner`) runs the folder with only numpy and onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vqtok.api import Tokenizer, load
from vqtok.disk import atomic_bytes, remove_stale
from vqtok.errors import MissingDependencyError, OptionError, VqtokError
from vqtok.export import onnx_runner
from vqtok.export.graphs import build_graphs, dynamic_shapes
from vqtok.export.search import search_name

__all__ = ["DEFAULT_OPSET", "FILES", "OnnxExport", "export_onnx", "require_onnx"]

DEFAULT_OPSET = 18
ENCODER_FILE, DECODER_FILE, RUNNER_FILE = "encoder.onnx", "decoder.onnx", "vqtok_onnx.py"
FILES = (ENCODER_FILE, DECODER_FILE, onnx_runner.DESCRIPTION, RUNNER_FILE)
# the decoded frames of the same indices may differ by at most one 8-bit level
FRAME_TOLERANCE = 1.0 / 255.0


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote.

    Attributes:
        directory: the export folder.
        files: the files written in it (graphs, description, runner).
        description: ``export.json`` as a dict (``["verified"]``: the check's results).
    """

    directory: Path
    files: tuple[Path, ...]
    description: dict[str, Any]


def require_onnx() -> None:
    """Import the exporter's libraries, or raise one line saying what to install.

    Raises:
        MissingDependencyError: onnx, onnxscript or onnxruntime is not installed.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is not installed); "
            "install them with: pip install 'vqtok[onnx]'") from e


def export_onnx(
    model: str | Path | Tokenizer | None,
    directory: str | Path,
    *,
    beam: int | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    extra_dirs: Iterable[str | Path] = (),
) -> OnnxExport:
    """Export a vqtok-family model to ONNX: ``DIR/encoder.onnx``, ``DIR/decoder.onnx``,
    ``DIR/export.json`` and the runner ``DIR/vqtok_onnx.py``.

    Args:
        model: a loaded `Tokenizer`, or a model name / directory / Hub repository for
            `vqtok.load` (None: the default model).
        directory: the folder to write (created if missing).
        beam: residual VQ models: the encoder's beam width (1: greedy); None: the model's.
        opset: the ONNX opset (18 or later).
        overwrite: replace export files already in ``directory``.
        extra_dirs: more directories to look model names up in.

    Returns:
        `OnnxExport`; its ``description["verified"]`` gives the agreement with PyTorch.

    Raises:
        MissingDependencyError: the ``onnx`` extra is not installed.
        ConfigError: a family or quantizer without an export graph; `OptionError`: a bad
            ``beam`` or ``opset``.
        VqtokError: files of an export already there (pass ``overwrite=True``), or graphs
            that disagree with PyTorch on the check clip (nothing is written then).
    """
    require_onnx()
    if opset < DEFAULT_OPSET:
        raise OptionError("--opset", f"ONNX export needs opset {DEFAULT_OPSET} or later, "
                                     f"got {opset}")
    target = Path(directory)
    _check_target(target, overwrite)
    tok = model if isinstance(model, Tokenizer) else load(model, device="cpu",
                                                          extra_dirs=extra_dirs)
    net = tok.model.eval()
    if tok.device.type != "cpu" or any(p.dtype != torch.float32 for p in net.parameters()):
        net = copy.deepcopy(net).cpu().float()  # the graphs are float32; leave tok as it is
    encoder, decoder = build_graphs(net, beam)
    video_dims, index_dims = dynamic_shapes(net.temporal_factor, net.spatial_factor)
    sample = synthetic_clip(2, 1 + 2 * net.temporal_factor, 2 * net.spatial_factor,
                            3 * net.spatial_factor)
    with torch.no_grad():
        sample_indices = encoder(sample)
    graphs = {
        ENCODER_FILE: _to_onnx(encoder, sample, "video", "indices", video_dims, opset),
        DECODER_FILE: _to_onnx(decoder, sample_indices, "indices", "video", index_dims, opset),
    }
    description = describe(tok, net, encoder.search, opset, graphs)
    description["verified"] = verify(graphs, Tokenizer(net, tok.name), beam)
    return _write(target, graphs, description)


def synthetic_clip(batch: int, frames: int, height: int, width: int) -> Tensor:
    """A smooth moving test pattern (B, 3, T, H, W) float32 in [-1, 1], no randomness."""
    t = torch.arange(frames, dtype=torch.float32).view(1, 1, -1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, 1, 1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, 1, 1, -1)
    b = torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1, 1)
    phase = torch.tensor([0.0, 2.1, 4.2]).view(1, 3, 1, 1, 1)
    wave = torch.sin(6.0 * x + 4.0 * y + 0.3 * t + phase + b) * torch.cos(3.0 * y - 0.2 * t)
    return (0.9 * wave).contiguous()


def _to_onnx(graph: nn.Module, example: Tensor, input_name: str, output_name: str,
             dims: dict[str, Any], opset: int) -> bytes:
    """Trace ``graph`` with the dynamo exporter and return the serialised model."""
    # the exporter prints its progress to stdout and warns about its own internals
    with torch.no_grad(), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (example,), None, dynamo=True, opset_version=opset,
            input_names=[input_name], output_names=[output_name],
            dynamic_shapes=dims,
            external_data=False, optimize=True, verbose=False,
        )
    assert program is not None
    data: bytes = program.model_proto.SerializeToString()
    return data


def describe(tok: Tokenizer, net: Any, search: nn.Module, opset: int,
             graphs: dict[str, bytes]) -> dict[str, Any]:
    """``export.json``: the model, the graphs' inputs and outputs, their value ranges."""
    import onnx

    tau, f = net.temporal_factor, net.spatial_factor
    sizes = [int(k) for k in net.quantizer.vocab_sizes]
    level_axis = int(net.quantizer.num_codebooks) > 1
    grid = ["batch", "latent_frames", "latent_height", "latent_width"]
    index_shape = grid + [len(sizes)] if level_axis else grid
    video_shape = ["batch", 3, "frames", "height", "width"]
    accepts = (f"frames = 1 + {tau}*k (k >= 0), height and width multiples of {f}, not "
               f"checked by the graph; {RUNNER_FILE} pads other sizes as vqtok does (the last "
               "frame, the bottom row and the right column repeated)")
    made = (f"frames = 1 + {tau}*(latent_frames - 1), height = {f}*latent_height, "
            f"width = {f}*latent_width")
    index_range = {"min": 0, "max": max(sizes) - 1, "level_sizes": sizes}
    video = {"name": "video", "dtype": "float32", "shape": video_shape, "range": [-1.0, 1.0],
             "layout": "RGB, channels first"}
    indices = {"name": "indices", "dtype": "int64", "shape": index_shape, "range": index_range}
    return {
        "format": onnx_runner.FORMAT,
        "format_version": onnx_runner.FORMAT_VERSION,
        "model": {"name": tok.name, "family": net.family, "weights_sha256": tok.weights_sha256,
                  "quantizer": net.config.quantizer, "search": search_name(search)},
        "temporal_factor": tau,
        "spatial_factor": f,
        "codebook_sizes": sizes,
        "level_axis": level_axis,
        "encoder": {"file": ENCODER_FILE, "sha256": _sha256(graphs[ENCODER_FILE]),
                    "inputs": [dict(video, accepts=accepts)],
                    "outputs": [dict(indices, sizes="latent_frames = 1 + k")]},
        "decoder": {"file": DECODER_FILE, "sha256": _sha256(graphs[DECODER_FILE]),
                    "inputs": [dict(indices, accepts="latent sizes >= 1")],
                    "outputs": [dict(video, sizes=made, note="clamped to [-1, 1]")]},
        "runner": RUNNER_FILE,
        "opset": opset,
        "exported_with": {"vqtok": _vqtok_version(), "torch": torch.__version__,
                          "onnx": onnx.__version__},
    }


def verify(graphs: dict[str, bytes], reference: Tokenizer, beam: int | None) -> dict[str, Any]:
    """Run both graphs with ONNX Runtime (CPU) on a synthetic clip and compare with PyTorch.

    Returns:
        ``{"clip": [B, T, H, W], "indices_identical": share, "max_abs_diff": max |frame
        difference| decoding the same indices, "onnxruntime": version}``.

    Raises:
        VqtokError: the decoded frames differ by more than 1/255, or under 99 % of the indices
            agree (an exporter fault; nothing is written).
    """
    import onnxruntime as ort

    tau, f = reference.temporal_factor, reference.spatial_factor
    clip = synthetic_clip(2, 1 + 3 * tau, 3 * f, 5 * f)
    with torch.no_grad():
        ref = reference.encode(clip, beam=beam)
        ref_video = reference.decode(ref).numpy()
    sessions = {name: ort.InferenceSession(data, providers=["CPUExecutionProvider"])
                for name, data in graphs.items()}
    got = sessions[ENCODER_FILE].run(None, {"video": clip.numpy()})[0]
    video = sessions[DECODER_FILE].run(None, {"indices": ref.numpy()})[0]
    same = float(np.mean(got == ref.numpy())) if got.shape == tuple(ref.shape) else 0.0
    diff = float(np.abs(video - ref_video).max()) if video.shape == ref_video.shape else 2.0
    result = {"clip": [clip.shape[0], *clip.shape[2:]], "indices_identical": same,
              "max_abs_diff": diff, "onnxruntime": ort.__version__}
    if diff > FRAME_TOLERANCE or same < 0.99:
        raise VqtokError(f"the exported graphs disagree with PyTorch on a test clip "
                         f"({same:.2%} of the indices equal, frames up to {diff:.3g} apart); "
                         "nothing was written")
    return result


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise VqtokError("exists and is not a folder; an ONNX export is a folder", target)
    present = [name for name in FILES if (target / name).exists()]
    if present and not overwrite:
        raise VqtokError(f"already holds an export ({', '.join(present)}); pass "
                         "overwrite=True to replace it", target,
                         cli_message=f"already holds an export ({', '.join(present)}); add "
                         "--overwrite to replace it")


def _write(target: Path, graphs: dict[str, bytes], description: dict[str, Any]) -> OnnxExport:
    """The graphs, the runner, then the description last (a folder with ``export.json`` is
    complete); each file atomically."""
    target.mkdir(parents=True, exist_ok=True)
    remove_stale([target])
    runner = Path(onnx_runner.__file__).read_bytes()
    contents = {**graphs, RUNNER_FILE: runner,
                onnx_runner.DESCRIPTION: (json.dumps(description, indent=2) + "\n").encode()}
    (target / onnx_runner.DESCRIPTION).unlink(missing_ok=True)
    for name in (ENCODER_FILE, DECODER_FILE, RUNNER_FILE, onnx_runner.DESCRIPTION):
        atomic_bytes(target / name, contents[name])
    return OnnxExport(target, tuple(target / name for name in FILES), description)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vqtok_version() -> str:
    from vqtok import __version__

    return __version__
