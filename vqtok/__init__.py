"""vqtok: turn video into discrete tokens and back.

The package is a small library (quantizers, causal 3D tokenizer, video and index-file I/O) with a
thin command line on top (`vqtok.cli.app`).
"""

import importlib
from typing import TYPE_CHECKING, Any

from vqtok.errors import (
    CheckpointError,
    ConfigError,
    HubError,
    OptionError,
    QuantizerError,
    RemapError,
    TokenFileError,
    VideoError,
    VqtokError,
)

if TYPE_CHECKING:
    from vqtok.api import Tokenizer, load
    from vqtok.families.tiling import Tiling
    from vqtok.io.checkpoint import load_pretrained, save_pretrained
    from vqtok.io.videotensor import read_video, write_video
    from vqtok.pipeline.decode import DecodeResult, DecodeRun, decode_files
    from vqtok.pipeline.encode import EncodeOptions, EncodeResult, EncodeRun, encode_files
    from vqtok.pipeline.plan import Job

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `import vqtok` stays light (no torch) for the CLI.
_LAZY = {
    "load": "vqtok.api",
    "Tokenizer": "vqtok.api",
    "Tiling": "vqtok.families.tiling",
    "read_video": "vqtok.io.videotensor",
    "write_video": "vqtok.io.videotensor",
    "load_pretrained": "vqtok.io.checkpoint",
    "save_pretrained": "vqtok.io.checkpoint",
    "EncodeOptions": "vqtok.pipeline.encode",
    "EncodeResult": "vqtok.pipeline.encode",
    "DecodeRun": "vqtok.pipeline.decode",
    "DecodeResult": "vqtok.pipeline.decode",
    "decode_files": "vqtok.pipeline.decode",
    "Job": "vqtok.pipeline.plan",
    "EncodeRun": "vqtok.pipeline.encode",
    "encode_files": "vqtok.pipeline.encode",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqtok' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "HubError",
    "OptionError",
    "QuantizerError",
    "RemapError",
    "TokenFileError",
    "VideoError",
    "VqtokError",
    "__version__",
    "DecodeResult",
    "DecodeRun",
    "EncodeOptions",
    "EncodeResult",
    "EncodeRun",
    "Job",
    "Tiling",
    "Tokenizer",
    "decode_files",
    "encode_files",
    "load",
    "load_pretrained",
    "read_video",
    "save_pretrained",
    "write_video",
]
