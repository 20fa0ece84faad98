"""Training checkpoints: a model directory plus the optimizer state, replaced atomically.

    checkpoint/
      model/                   ordinary model directory (config.json + model.safetensors)
      optimizer.safetensors    AdamW moments, flattened to "state.{i}.{name}" tensors
      state.json               step, elapsed seconds, the run config, the optimizer's
                               hyper-parameters per group

Everything is written to a sibling temporary directory first and renamed into place, so a crash
(or Ctrl-C) while saving leaves the previous checkpoint intact. No pickle: tensors go through
safetensors, everything else through JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqtok.errors import CheckpointError, check_version
from vqtok.families.base import TokenizerModel
from vqtok.io.checkpoint import load_pretrained, save_pretrained
from vqtok.train.config import RunConfig

STATE_VERSION = 1


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors (for safetensors) and the rest (for JSON)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = t.detach().cpu().contiguous().clone()
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    model: TokenizerModel,
    opt: torch.optim.Optimizer,
    config: RunConfig,
    step: int,
    elapsed: float,
    extra: dict[str, torch.Tensor] | None = None,
    decodes_indices_of: Sequence[str] = (),
) -> Path:
    """Write the checkpoint for ``step`` to ``directory``, replacing an older one atomically.

    ``extra``: more training state (the weight average), saved as ``extra.safetensors``;
    ``decodes_indices_of``: written into the model's ``config.json`` (`save_pretrained`).
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", suffix=".tmp", dir=target.parent))
    try:
        save_pretrained(model, tmp / "model", name=config.name,
                        decodes_indices_of=decodes_indices_of)
        tensors, rest = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        if extra:
            save_file(extra, str(tmp / "extra.safetensors"))
        state = {
            "version": STATE_VERSION,
            "step": step,
            "elapsed": elapsed,
            "config": config.to_dict(),
            **rest,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".checkpoint.", suffix=".old", dir=target.parent))
            os.replace(target, old / "c")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(
    directory: str | Path, model: TokenizerModel, opt: torch.optim.Optimizer, config: RunConfig
) -> tuple[int, float, dict[str, torch.Tensor]]:
    """Restore ``model`` and ``opt`` in place from a checkpoint.

    Returns:
        (step, elapsed seconds, the ``extra`` tensors saved with it, empty if none).

    Raises:
        CheckpointError: missing / corrupt files, or a checkpoint made with another config.
    """
    path = Path(directory)
    try:
        state: dict[str, Any] = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "optimizer.safetensors"))
        extra_file = path / "extra.safetensors"
        extra = load_file(str(extra_file)) if extra_file.exists() else {}
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume: {e}", path) from e
    check_version(state.get("version"), STATE_VERSION, "training checkpoint version",
                  CheckpointError, path)
    if state.get("config", {}).get("model") != config.model.to_dict():
        raise CheckpointError("was trained with a different model config; cannot resume", path)
    saved = load_pretrained(path / "model")
    model.load_state_dict(saved.state_dict())
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        opt_state.setdefault(int(index), {})[name] = value
    device = next(model.parameters()).device
    for entry in opt_state.values():
        for name, value in entry.items():
            entry[name] = value if name == "step" else value.to(device)
    opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return int(state["step"]), float(state.get("elapsed", 0.0)), extra
