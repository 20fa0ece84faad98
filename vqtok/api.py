"""The high-level Python API: load a tokenizer by name or path, turn video into indices and back.

Three lines do what ``vqtok encode`` / ``vqtok decode`` do::

    tok = vqtok.load("vqtok-ema")          # or a model directory; device="auto", dtype=None
    indices = tok.encode(video)                # (B, 3, T, H, W) in [-1, 1] -> (B, t, h, w[, L])
    video = tok.decode(indices, frames=T)      # -> (B, 3, T, H, W) in [-1, 1]

``tok.encode(video, remap="used.safetensors")`` gives compact ids of a remap file's used codes
(per level for residual / multi-codebook models); ``tok.unmap(ids, remap)`` turns them back.

`Tokenizer` wraps any `TokenizerModel` family: it checks its input (`vqtok.clips`), pads clips
to what the model takes and trims decoded clips back, runs under ``torch.inference_mode()``
(with ``dtype=bfloat16/float16``, the convolutions under autocast; the quantizer's distances
stay float32), and streams long videos in bounded memory (`EncodeStream`, ``decode_stream``).
`vqtok.io.videotensor` reads a video file into the tensor `encode` takes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqtok.clips import check_video, crop_padding, pad_frames, pad_size, padded_length
from vqtok.errors import ConfigError, VqtokError
from vqtok.families.base import TokenizerModel
from vqtok.families.tiling import Tiling
from vqtok.io.checkpoint import load_pretrained, read_info, weights_sha256
from vqtok.io.hub import DownloadFn, parse_hub_ref
from vqtok.io.model_dirs import resolve_model
from vqtok.io.usedsets import load_used_sets
from vqtok.quantizers.used_sets import UsedSets
from vqtok.runtime import resolve_device, resolve_dtype

__all__ = [
    "DEFAULT_MODEL",
    "EncodeStream",
    "Tokenizer",
    "load",
]

DEFAULT_MODEL = "vqtok-ema-video-2"

RemapLike = str | os.PathLike[str] | UsedSets
"""A remap file (``.npy``: one codebook; ``.safetensors``: one used set per level) or its sets."""

def load(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    extra_dirs: Iterable[str | Path] = (),
    on_download: DownloadFn | None = None,
) -> Tokenizer:
    """Load a tokenizer from a model directory, a Hugging Face Hub repository or by name.

    Args:
        name_or_path: a model directory; a Hub repository ``"owner/name"`` or
            ``"owner/name@revision"`` holding ``config.json`` + ``model.safetensors`` (fetched
            into the Hugging Face cache; ``HF_HUB_OFFLINE=1`` uses only cached files); or a
            name looked up in the repository's ``models/``, then ``extra_dirs``, then
            ``$VQTOK_MODELS``; None means `DEFAULT_MODEL` (``"vqtok-ema-video-2"``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: None / ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (CUDA only) autocast.
        extra_dirs: more directories to search for names (the CLI's ``--model-dir``).
        on_download: progress of a Hub download: (file name, bytes done, bytes in the file).

    Returns:
        A `Tokenizer` with float32 weights on ``device``, in eval mode. A Hub model's name is
        its repository reference, so index files name where to fetch it again.

    Raises:
        CheckpointError: the model cannot be found or loaded exactly (`HubError`: the Hub
            repository cannot be fetched).
        ConfigError: a bad device or dtype.
    """
    target = DEFAULT_MODEL if name_or_path is None else name_or_path
    ref = parse_hub_ref(target)
    directory = resolve_model(target, list(extra_dirs), on_download)
    resolved = resolve_device(device)
    compute = resolve_dtype(dtype, resolved)
    model = load_pretrained(directory, device=resolved)
    name = read_info(directory).name if ref is None else str(ref)
    return Tokenizer(model, name=name, path=directory, dtype=compute)


class Tokenizer:
    """A loaded tokenizer model: video tensors <-> index tensors, for inference.

    Args:
        model: any `TokenizerModel`; it is put in eval mode.
        name: the model's name (for index-file metadata).
        path: its model directory, if it came from disk (gives ``weights_sha256``).
        dtype: compute dtype (float32, or bfloat16 / float16 autocast).

    Videos are float (B, 3, T, H, W) in [-1, 1] (images (B, 3, H, W) are one-frame videos),
    any T, H, W >= 1 (padded to what the model takes, see `encode`). Indices are int64
    (B, t, h, w) or (B, t, h, w, L), on the model's device.
    """

    def __init__(
        self,
        model: TokenizerModel,
        name: str = "unnamed",
        path: Path | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model.eval()
        self.name = name
        self.path = path
        self.dtype = dtype
        self._sha256: str | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"Tokenizer(name={self.name!r}, family={self.model.family!r}, "
                f"device={str(self.device)!r}, dtype={self.dtype})")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def config(self) -> Any:
        """The model's config object (``config.to_dict()`` gives the JSON form)."""
        return self.model.config

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def codebook_size(self) -> int:
        """Values one index position can take: indices lie in [0, codebook_size)."""
        return int(self.model.quantizer.codebook_size)

    @property
    def num_codebooks(self) -> int:
        """L: indices have a trailing axis of this length when L > 1."""
        return int(self.model.quantizer.num_codebooks)

    @property
    def temporal_factor(self) -> int:
        return self.model.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.model.spatial_factor

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of ``model.safetensors`` (None for a model that was not loaded from disk)."""
        if self._sha256 is None and self.path is not None:
            self._sha256 = weights_sha256(self.path)
        return self._sha256

    def padded_frames(self, frames: int) -> int:
        """The clip length ``frames`` is padded to (1 + k*tau; per window for windowed models)."""
        return padded_length(frames, self.temporal_factor, self.model.window)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) a frame is padded to: each rounded up to a multiple of ``spatial_factor``."""
        f = self.spatial_factor
        return -(-height // f) * f, -(-width // f) * f

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the indices of a clip of ``frames`` frames (after padding)."""
        return self.model.latent_shape(self.padded_frames(frames), *self.padded_size(height, width))

    def encode(
        self, video: Tensor, remap: RemapLike | None = None, levels: int | None = None,
        beam: int | None = None, tiling: Tiling | None = None,
    ) -> Tensor:
        """Video (B, 3, T, H, W) or images (B, 3, H, W) in [-1, 1] -> int64 indices.

        T is padded to `padded_frames` by repeating the last frame, H and W to `padded_size`
        by repeating the bottom row and right column; pass T and (H, W) to `decode` to trim.
        Returns (B, t, h, w[, L]) with (t, h, w) = ``latent_shape(T, H, W)``.

        Args:
            video: the clip.
            remap: a remap file (``.npy`` / ``.safetensors`` from ``vqtok remap build``) or
                `vqtok.io.usedsets.UsedSets`, one used set per codebook / level: the indices are
                then compact ids (level l's in [0, U_l)), and quantizers with a codebook search
                look only at the used codes, level by level.
            levels: residual models: keep the first k levels, (..., k); a coarser code of
                k * log2(K) bits per position that `decode` takes as it is.
            beam: residual models: search the levels with a beam of this many paths for this
                call (1: greedy); None: the model's own ``beam_width``.
            tiling: work one frame at a time in spatial tiles (`vqtok.Tiling`), in memory
                bounded by the tile, not the frame: the same indices (vqtok family only).

        Raises:
            VqtokError: not a float tensor of that shape, or values clearly outside [-1, 1]
                (such as 0-255 pixels; `vqtok.read_video` gives the right range).
            RemapError: a remap file that does not fit the model, or (LFQ, FSQ: no search to
                restrict) a code outside its level's used set.
        """
        if tiling is not None:  # the tiled pass is a stream of one frame at a time
            return torch.cat(list(self.encode_stream([video], remap, levels, beam, tiling)), 1)
        video = self._prepare(video)
        allowed = self._allowed(remap)
        with self._running(beam):
            # a k-level search, not the first k columns of an L-level one (a beam-searched
            # code's prefix is not the best k-level code)
            levels = None if levels is None else self.check_levels(levels)
            return self.model.encode(pad_frames(video, self.padded_frames(video.shape[2])),
                                     allowed, levels)

    def check_levels(self, levels: int) -> int:
        """``levels`` if the model can keep that many residual levels, else a `ConfigError`."""
        if not self.model.quantizer.residual:
            raise ConfigError(f"levels needs a residual-quantizer model; {self.name} is not one")
        try:
            return int(self.model.quantizer.check_levels(levels))
        except VqtokError as e:
            raise ConfigError(e.message) from None

    def set_beam_width(self, width: int) -> Tokenizer:
        """Search the residual levels with a beam of ``width`` paths from now on (1: greedy),
        in place of the model's ``beam_width``; returns the tokenizer. For one call, pass
        ``beam=`` to `encode` / `encode_stream` instead.

        Raises:
            ConfigError: the model has no residual quantizer, or ``width`` is not an int >= 1.
        """
        self.model.quantizer.set_beam_width(self.check_beam(width))
        return self

    def check_beam(self, width: int) -> int:
        """``width`` if the model can search its residual levels with that beam, else a
        `ConfigError`."""
        if not self.model.quantizer.beam_search:
            raise ConfigError(f"beam search needs a residual-quantizer model; {self.name} "
                              "is not one")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ConfigError(f"beam width must be an integer >= 1, got {width!r}")
        return width

    def check_tiling(self, tiling: Tiling) -> Tiling:
        """``tiling`` if the model can work in spatial tiles, else a `ConfigError`."""
        if not self.model.tiles:
            raise ConfigError(f"{self.name} cannot work in spatial tiles: {self.model.untiled_why}"
                              " (use a smaller --chunk to save memory)")
        return tiling

    def unmap(self, indices: Tensor, remap: RemapLike) -> Tensor:
        """Compact ids (from ``encode(..., remap=...)``) -> full ids that `decode` takes."""
        return self._used_sets(remap).to_full(indices)

    def decode(
        self, indices: Tensor, frames: int | None = None, size: tuple[int, int] | None = None,
        tiling: Tiling | None = None,
    ) -> Tensor:
        """int64 indices (B, t, h, w[, L]) -> float32 video (B, 3, T, H, W) clamped to [-1, 1].

        Args:
            indices: as `encode` returns them (any integer dtype).
            frames: the real frame count to trim to (what was passed to `encode`); None keeps
                every decoded frame.
            size: the (H, W) passed to `encode`, to crop its spatial padding off; None keeps
                the padded size.
            tiling: decode one latent frame at a time in spatial tiles (`vqtok.Tiling`): the
                same frames in memory bounded by the tile (vqtok family only).
        """
        if tiling is not None:
            return torch.cat(list(self.decode_stream([indices], frames, size, tiling)), dim=2)
        with self._running():
            video = self.model.decode(indices.to(self.device).long()).float().clamp_(-1.0, 1.0)
        if frames is not None:
            if not 1 <= frames <= video.shape[2]:
                raise VqtokError(f"cannot trim {video.shape[2]} decoded frames to {frames}")
            video = video[:, :, :frames]
        return crop_padding(video, size)

    def encode_stream(
        self, chunks: Iterable[Tensor], remap: RemapLike | None = None, levels: int | None = None,
        beam: int | None = None, tiling: Tiling | None = None,
    ) -> EncodeStream:
        """Encode a long video given as consecutive chunks (B, 3, T_i, H, W), any T_i >= 1.

        Returns an iterator of index chunks (B, t_i, h, w[, L]) whose concatenation along
        dim 1 equals ``encode`` of the whole video (with the same ``remap``, ``levels`` and
        ``beam``), exactly; the end is padded like ``encode`` does. After exhaustion its
        ``frames`` and ``padding`` say how many real frames it read and how many copies of the
        last one it appended. ``tiling``: as in `encode`.
        """
        return EncodeStream(self, chunks, self._allowed(remap), levels, beam, tiling)

    def decode_stream(
        self,
        chunks: Iterable[Tensor],
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        tiling: Tiling | None = None,
    ) -> Iterator[Tensor]:
        """Decode consecutive index chunks; yields float32 video chunks clamped to [-1, 1].

        Their concatenation matches ``decode`` of all indices (within float tolerance),
        trimmed to ``frames`` in total and cropped to ``size`` (H, W) when given.
        ``tiling``: as in `decode`.
        """
        tiled = {} if tiling is None else {"tiling": self.check_tiling(tiling)}
        inner = self.model.decode_stream((c.to(self.device).long() for c in chunks), **tiled)
        emitted = 0
        while frames is None or emitted < frames:
            with self._running():
                video = next(inner, None)
                if video is None:
                    return
                video = video.float().clamp_(-1.0, 1.0)
            if frames is not None:
                video = video[:, :, : frames - emitted]
            emitted += video.shape[2]
            yield crop_padding(video, size)

    def _used_sets(self, remap: RemapLike) -> UsedSets:
        if isinstance(remap, UsedSets):
            used, path = remap, None
        else:
            used, path = load_used_sets(remap), remap
        used.check_for(self.model.quantizer.vocab_sizes, path)
        return used

    def _allowed(self, remap: RemapLike | None) -> list[Tensor] | None:
        """The used sets as per-level tensors on the model's device (None without a remap)."""
        if remap is None:
            return None
        return [level.to(self.device) for level in self._used_sets(remap).levels]

    def _prepare(self, video: Tensor) -> Tensor:
        """Check a video as given, then (B, 3, T, H, W) float32 on the device, H and W padded
        to `padded_size` by repeating the edge."""
        check_video(video)
        if video.ndim == 4:
            video = video.unsqueeze(2)  # (B, 3, H, W) -> (B, 3, 1, H, W)
        video = video.to(self.device, torch.float32)
        return pad_size(video, self.padded_size(*video.shape[3:]))

    @contextlib.contextmanager
    def _running(self, beam: int | None = None) -> Iterator[None]:
        """inference_mode, plus autocast to ``dtype`` when it is not float32, and the beam
        width ``beam`` (None: the model's) for this step only. One step at a time (a lock), so
        threads sharing the tokenizer never see each other's beam."""
        with self._lock, contextlib.ExitStack() as stack:
            if beam is not None:
                quantizer = self.model.quantizer
                stack.callback(quantizer.set_beam_width, quantizer.beam_width)
                quantizer.set_beam_width(self.check_beam(beam))
            stack.enter_context(torch.inference_mode())
            if self.dtype != torch.float32:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
            yield


class EncodeStream(Iterator[Tensor]):
    """Iterator of index chunks from `Tokenizer.encode_stream`: feeds the chunks through the
    model's streaming encoder, pads the video's end as `Tokenizer.encode` does, and runs each
    step under the tokenizer's settings and the stream's own beam (so streams interleave).

    Attributes:
        frames: real frames read so far.
        padding: frames appended after the last real one (set once the input is exhausted).
    """

    def __init__(self, tokenizer: Tokenizer, chunks: Iterable[Tensor],
                 allowed: list[Tensor] | None, levels: int | None, beam: int | None,
                 tiling: Tiling | None) -> None:
        self.tokenizer, self.frames, self.padding = tokenizer, 0, 0
        self.beam = None if beam is None else tokenizer.check_beam(beam)
        levels = None if levels is None else tokenizer.check_levels(levels)
        tiled = {} if tiling is None else {"tiling": tokenizer.check_tiling(tiling)}
        self._inner = tokenizer.model.encode_stream(self._padded(iter(chunks)), allowed, levels,
                                                    **tiled)

    def _padded(self, chunks: Iterator[Tensor]) -> Iterator[Tensor]:
        last = None
        for chunk in map(self.tokenizer._prepare, chunks):
            if chunk.shape[2]:
                self.frames += chunk.shape[2]
                last = chunk[:, :, -1:]
                yield chunk
        if last is None:
            raise VqtokError("the video has no frames")
        self.padding = self.tokenizer.padded_frames(self.frames) - self.frames
        if self.padding:
            yield last.expand(-1, -1, self.padding, -1, -1)

    def __next__(self) -> Tensor:
        # enter inference/autocast per step: a generator holding the context across ``yield``
        # would leak it into the caller's code between chunks
        with self.tokenizer._running(self.beam):
            return next(self._inner)
