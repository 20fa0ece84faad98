"""The GPU path, on tiny models: CUDA against the CPU reference, streaming, autocast.

Marked ``cuda`` and skipped without a GPU; ``benchmarks/gpu_check.sh`` runs them
(``pytest -m cuda``). On the CPU every index is bit-exact across batch sizes, chunks and
threads; on CUDA the convolutions come from cuDNN, so latents agree with the CPU's to float
tolerance and indices may differ only where two codes are nearly tied.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vqtok
from tests.tiny import TINY_CONFIG, save_tiny_model
from vqtok.api import Tokenizer
from vqtok.families.vqtok import VideoTokenizer
from vqtok.quantizers import build_quantizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine"),
]


def _pair() -> tuple[Tokenizer, Tokenizer]:
    torch.manual_seed(0)
    model = VideoTokenizer(TINY_CONFIG).eval()
    cpu = Tokenizer(model, name="tiny")
    gpu = Tokenizer(VideoTokenizer(TINY_CONFIG).eval(), name="tiny")
    gpu.model.load_state_dict(model.state_dict())
    gpu.model.to("cuda")
    return cpu, gpu


def _video(frames: int = 9, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, frames, size, size, generator=generator) * 2 - 1


def test_cuda_indices_match_the_cpu() -> None:
    cpu, gpu = _pair()
    video = _video()
    with torch.inference_mode():
        latents_cpu = cpu.model.encoder(video, None)
        latents_gpu = gpu.model.encoder(video.cuda(), None).cpu()
    torch.testing.assert_close(latents_gpu, latents_cpu, atol=1e-4, rtol=1e-4)
    reference, indices = cpu.encode(video), gpu.encode(video).cpu()
    assert indices.dtype == torch.int64 and indices.shape == reference.shape
    assert (indices == reference).float().mean().item() >= 0.99


def test_cuda_streaming_equals_one_shot() -> None:
    _, gpu = _pair()
    video = _video(frames=13).cuda()
    whole = gpu.encode(video)
    pieces = torch.cat(list(gpu.encode_stream(video.split([1, 4, 3, 5], dim=2))), dim=1)
    assert torch.equal(pieces, whole)


def test_cuda_tiles_agree_with_whole_frames(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vqtok.families.tiling as tiling

    monkeypatch.setattr(tiling, "_SPILL_MIN_BYTES", 0)  # carried frames go through the disk
    _, gpu = _pair()
    video = _video(frames=9, size=48).cuda()
    whole = gpu.encode(video)
    spill = tiling.Tiling(16, 32, spill_dir=str(tmp_path))
    tiled = gpu.encode(video, tiling=spill)
    assert tiled.device.type == "cuda" and tiled.shape == whole.shape
    assert (tiled == whole).float().mean().item() >= 0.99  # cuDNN picks kernels per shape
    frames = gpu.decode(whole, tiling=spill)
    torch.testing.assert_close(frames, gpu.decode(whole), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cuda_autocast_keeps_indices_in_range(dtype: str) -> None:
    cpu, gpu = _pair()
    half = Tokenizer(gpu.model, name="tiny", dtype=vqtok.runtime.resolve_dtype(dtype, gpu.device))
    video = _video()
    indices = half.encode(video)
    assert indices.dtype == torch.int64 and indices.shape == cpu.encode(video).shape
    assert 0 <= int(indices.min()) and int(indices.max()) < half.codebook_size
    decoded = half.decode(indices, frames=9)
    assert decoded.dtype == torch.float32 and bool(decoded.isfinite().all())


def test_nearest_neighbour_search_is_the_same_on_cuda() -> None:
    torch.manual_seed(0)
    quantizer = build_quantizer("vq", 8, codebook_size=512).eval()
    z = torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        on_cpu = quantizer(z).indices
        on_gpu = quantizer.to("cuda")(z.cuda()).indices.cpu()
    assert torch.equal(on_gpu, on_cpu)


def test_load_on_cuda_from_a_directory(tmp_path: Path) -> None:
    directory = save_tiny_model(tmp_path / "tiny")
    tok = vqtok.load(directory, device="cuda")
    assert tok.device.type == "cuda"
    on_cpu = vqtok.load(directory, device="cpu").encode(_video())
    assert (tok.encode(_video()).cpu() == on_cpu).float().mean().item() >= 0.99
