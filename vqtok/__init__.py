"""vqtok: turn video into discrete tokens and back.

The package is a small library (quantizers, causal 3D tokenizer, video and index-file I/O) with a
thin command line on top (`vqtok.cli`).
"""

from vqtok.errors import (
    CheckpointError,
    ConfigError,
    QuantizerError,
    RemapError,
    TokenFileError,
    VideoError,
    VqtokError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "QuantizerError",
    "RemapError",
    "TokenFileError",
    "VideoError",
    "VqtokError",
    "__version__",
]
