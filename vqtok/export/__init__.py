"""Model export for runtimes without PyTorch: ONNX (`export_onnx`, ``vqtok export``).

`vqtok.export.onnx` writes ``encoder.onnx`` (video -> indices, the quantizer's search
included), ``decoder.onnx`` (indices -> video) and ``export.json``; `vqtok.export.graphs` and
`vqtok.export.search` are the traced modules; `vqtok.export.onnx_runner` runs an export with
only numpy and onnxruntime (it is copied into the export folder as ``vqtok_onnx.py``).
"""

from __future__ import annotations

from vqtok.export.onnx import OnnxExport, export_onnx, require_onnx

__all__ = ["OnnxExport", "export_onnx", "require_onnx"]
