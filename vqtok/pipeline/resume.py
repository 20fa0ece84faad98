"""Resuming a run: which existing outputs are this run's and can be kept.

Encode (`Resume`):
An index file is kept (the input skipped) only if it is complete (`vqtok.io.tokens.load_tokens`
reads it) and was made the way this run would make it: the same model weights (SHA-256), the
same remap file (SHA-256, or none) and the same `EncodeSettings` (``--size``,
``--short-side``, ``--fps``, ``--max-frames``, the search: ``--beam`` or the model's own
``beam_width``, ...). Any other existing file is encoded again
and the run says why (`Resume.check`). Settings that cannot change an index (``--chunk``,
``--batch``, ``--device``) are not compared; neither is ``--dtype``.

Decode (`DecodeRecord`): a video records what it was made from in its ``comment`` tag, and a
rerun keeps it only when the index file (its hash), the model weights and the frame rate are
still the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vqtok.disk import file_sha256
from vqtok.errors import TokenFileError
from vqtok.io.checkpoint import read_info, weights_sha256
from vqtok.io.model_dirs import resolve_model
from vqtok.io.tokens import EncodeSettings, TokenMetadata, load_tokens
from vqtok.io.video_writer import read_comment
from vqtok.pipeline.options import EncodeOptions

__all__ = ["DecodeRecord", "Resume"]


@dataclass(frozen=True)
class Resume:
    """What an existing output must match to be kept.

    Attributes:
        model_sha256: the SHA-256 of this run's model weights.
        remap_sha256: the SHA-256 of this run's remap file, or None without ``--remap``.
        settings: this run's settings.
    """

    model_sha256: str
    remap_sha256: str | None
    settings: EncodeSettings

    @classmethod
    def for_run(cls, model: str | Path, extra_dirs: list[Path], options: EncodeOptions) -> Resume:
        """Hash the model's weights and the remap file, and read the search its config.json
        sets (``beam_width``; no model is loaded).

        Raises:
            CheckpointError: the model cannot be found. OSError: the remap file cannot be read.
        """
        directory = resolve_model(model, extra_dirs)
        quantizer = read_info(directory).config.get("quantizer_options")
        width = quantizer.get("beam_width", 1) if isinstance(quantizer, dict) else 1
        settings = options.settings(width if isinstance(width, int) else 1)
        remap = None if options.remap is None else file_sha256(options.remap)
        return cls(weights_sha256(directory), remap, settings)

    def check(self, path: Path) -> tuple[bool, str | None]:
        """Whether ``path`` can be kept, and if an existing file will be replaced, why.

        Returns:
            (True, None): complete and made this way; (False, None): missing or incomplete;
            (False, reason): complete but made differently, e.g. ``"made with --short-side
            256 (this run: 128)"``.
        """
        if not path.exists():
            return False, None
        try:
            _, meta = load_tokens(path)
        except TokenFileError:
            return False, None
        differences = self.differences(meta)
        if not differences:
            return True, None
        return False, "made with " + "; ".join(differences)

    def differences(self, meta: TokenMetadata) -> list[str]:
        """How ``meta`` differs from this run, one phrase per difference."""
        out = []
        if meta.model_sha256 != self.model_sha256:
            sha, ours = (meta.model_sha256 or "unknown")[:12], self.model_sha256[:12]
            out.append(f"model {meta.model} (weights {sha}..., this run: {ours}...)")
        recorded_remap = None if meta.remap is None else meta.remap.sha256
        if recorded_remap != self.remap_sha256:
            out.append(f"remap {_short(recorded_remap)} (this run: {_short(self.remap_sha256)})")
        if meta.settings is None:
            out.append("settings not recorded (an older vqtok)")
            return out
        recorded, wanted = asdict(meta.settings), asdict(self.settings)
        for key in wanted:
            if recorded.get(key) != wanted[key]:
                flag = "--" + key.replace("_", "-")
                out.append(f"{flag} {_show(recorded.get(key))} (this run: {_show(wanted[key])})")
        return out


def _short(sha: str | None) -> str:
    return "none" if sha is None else f"{sha[:12]}..."


def _show(value: Any) -> str:
    if value is None:
        return "not given"
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


RECORD_FORMAT = "vqtok-decode/1"  # one per file kind: README, "File formats and their versions"


@dataclass(frozen=True)
class DecodeRecord:
    """What a decoded video was made from, stored as JSON in its ``comment`` tag.

    Attributes:
        index_sha256: `vqtok.io.tokens.index_sha256` of the index file (indices + sidecar).
        model_sha256: SHA-256 of the decoding model's weights (None: unsaved weights).
        fps: the video's frame rate, ``"num/den"``.
    """

    index_sha256: str
    model_sha256: str | None
    fps: str

    def to_text(self) -> str:
        return json.dumps({"format": RECORD_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def read(cls, video: str | Path) -> DecodeRecord | None:
        """The record of a video `decode_file` wrote; None for any other file."""
        try:
            data = json.loads(read_comment(video) or "")
            if data.pop("format") != RECORD_FORMAT:
                return None
            record = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        types_ok = isinstance(record.index_sha256, str) and isinstance(record.fps, str)
        return record if types_ok else None

    def differences(self, made: DecodeRecord) -> list[str]:
        """How the video ``made`` differs from what this record asks for, one phrase each."""
        out = []
        if made.index_sha256 != self.index_sha256:
            out.append(f"from other indices ({made.index_sha256[:12]}..., this run: "
                       f"{self.index_sha256[:12]}...)")
        if made.model_sha256 != self.model_sha256:
            out.append(f"with other model weights ({(made.model_sha256 or 'unknown')[:12]}..., "
                       f"this run: {(self.model_sha256 or 'unknown')[:12]}...)")
        if made.fps != self.fps:
            out.append(f"at {made.fps} fps (this run: {self.fps})")
        return out
