"""Plain descriptions of what a path holds, for ``vqtok info`` and ``vqtok models``.

`describe_path` tells a model directory, an index file, a remap file, a token dataset and a
video apart and returns a JSON-ready dict of what each is, nested like the sidecar (nothing is
decoded beyond a video's first frame, no model weights are loaded); `describe_models` lists the
models found in the search directories.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.disk import file_sha256
from vqtok.errors import CheckpointError, VqtokError
from vqtok.io.checkpoint import list_models, parameter_count, read_info, weights_sha256
from vqtok.io.model_dirs import CONFIG_FILE, resolve_model
from vqtok.io.remap import is_remap_file, load_used_sets
from vqtok.io.shards import describe_dataset, looks_like_dataset
from vqtok.io.tokens import load_stored, sidecar_path
from vqtok.io.video import probe

INDEX_SUFFIXES = (".npy", ".safetensors", ".json")


def describe_path(path: str | Path) -> dict[str, Any]:
    """What ``path`` is: ``{"kind": "model" | "index" | "remap" | "dataset" | "video", ...}``.

    A ``path`` that does not exist but names a model (``vqtok-ema``) describes that model.

    Raises:
        VqtokError: the path does not exist or is none of the three (the message says why).
    """
    path = Path(path)
    if not path.exists():
        named = _named_model(str(path))
        if named is None:
            raise VqtokError("no such file or directory (nor a model name); check the path",
                             path)
        return describe_model(named)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file() and looks_like_dataset(path):
            return describe_dataset(path)
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"a directory without {CONFIG_FILE}, not a model", path)
        return describe_model(path)
    if is_remap_file(path) or (path.suffix == ".npy" and not sidecar_path(path).exists()
                               and _loads_as_remap(path)):
        return describe_remap(path)
    if path.suffix in INDEX_SUFFIXES:
        return describe_index(path)
    return describe_video(path)


def _named_model(text: str) -> Path | None:
    """The directory of the model called ``text`` (shipped or on $VQTOK_MODELS), if any."""
    if "/" in text or os.sep in text:
        return None  # a path, or a Hub reference: never fetched here
    try:
        return resolve_model(text)
    except CheckpointError:
        return None


def _loads_as_remap(path: Path) -> bool:
    try:
        load_used_sets(path)
    except VqtokError:
        return False
    return True


def describe_remap(path: str | Path) -> dict[str, Any]:
    """A remap file: its levels, the used codes per level and its SHA-256 (what index files
    encoded with it record)."""
    used = load_used_sets(path)
    return {
        "kind": "remap",
        "path": str(path),
        "num_levels": used.num_levels,
        "used_per_level": list(used.sizes),
        "id_range_per_level": [[int(u[0]), int(u[-1])] for u in used.levels],
        "sha256": file_sha256(path),
    }


def describe_model(directory: str | Path) -> dict[str, Any]:
    """A model directory: name, family, config, parameter count and weights hash."""
    info = read_info(directory)
    out: dict[str, Any] = {
        "kind": "model",
        "path": str(directory),
        "name": info.name,
        "family": info.family,
        "parameters": parameter_count(directory),
        "weights_sha256": weights_sha256(directory),
        **({"decodes_indices_of": list(info.decodes_indices_of)} if info.decodes_indices_of
           else {}),
        "config": info.config,
        "input": info.input,
    }
    return out


def describe_index(path: str | Path) -> dict[str, Any]:
    """An index file: array shape, stored dtype, codes used and its metadata (the sidecar's
    nested objects as they are)."""
    indices, meta = load_stored(path)
    out: dict[str, Any] = {
        "kind": "index",
        "path": str(path),
        "shape": list(indices.shape),
        "dtype": str(indices.dtype),  # uint16 in a file of <= 256 codes an earlier vqtok wrote
        "distinct_codes": int(len(set(indices.reshape(-1).tolist()))),
    }
    if meta.num_codebooks > 1:
        out["distinct_codes_per_level"] = [
            int(np.unique(indices[..., level]).size) for level in range(meta.kept_levels)
        ]
    out.update(meta.to_dict())
    return out


def describe_video(path: str | Path) -> dict[str, Any]:
    """A video: frames, fps (exact), size, duration, rotation, codec."""
    info = probe(path)
    return {
        "kind": "video",
        "path": str(path),
        "frames": info.frames,
        "frames_exact": info.frames_exact,
        "fps": f"{info.fps.numerator}/{info.fps.denominator}",
        "fps_float": round(float(info.fps), 3),
        "width": info.width,
        "height": info.height,
        "duration": round(info.duration, 3),
        "rotation": info.rotation,
        "codec": info.codec,
        "pix_fmt": info.pix_fmt,
        "has_audio": info.has_audio,
    }


def describe_models(extra_dirs: Iterable[str | Path] = ()) -> list[dict[str, Any]]:
    """Every model in the search directories: name, family, quantizer, path."""
    rows = []
    for info in list_models(extra_dirs):
        config = info.config
        rows.append(
            {
                "name": info.name,
                "family": info.family,
                "quantizer": config.get("quantizer", _family_quantizer(info.family)),
                "temporal_factor": config.get("temporal_factor"),
                "spatial_factor": config.get("spatial_factor"),
                "path": str(info.path),
            }
        )
    return rows


def _family_quantizer(family: str) -> str | None:
    # the converted families fix their quantizer; their configs do not name it
    return {"cosmos-dv": "fsq", "open-magvit2-video": "lfq"}.get(family)
