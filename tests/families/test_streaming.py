"""Streaming == one-shot, and indices that do not depend on batch size, chunking or threads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.tiny import tiny_config
from vqtok.families.layers import CausalConv3d, ResBlock, StreamState, Upsample
from vqtok.families.vqtok import VideoTokenizer


def tiny(kind: str = "fsq", options: dict[str, Any] | None = None, **kw: Any) -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(tiny_config(kind, options or {"levels": [5, 4, 4, 3]}, **kw)).eval()


def clip(b: int, t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, 16, 16, generator=g) * 2 - 1


def chunked(x: torch.Tensor, size: int, dim: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[dim], size):
        yield x.narrow(dim, start, min(size, x.shape[dim] - start))


def uneven(x: torch.Tensor, sizes: list[int], dim: int) -> list[torch.Tensor]:
    return list(torch.split(x, sizes, dim=dim))


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("sizes", [[1] * 9, [2, 3, 4], [4, 5], [1, 7, 1], [9]])
def test_causal_conv_stream_equals_one_shot(stride: int, sizes: list[int]) -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, stride=(stride, 1, 1))
    x = torch.randn(2, 3, 9, 6, 6)
    state = StreamState()
    parts = [conv(c, state) for c in uneven(x, sizes, 2)]
    assert torch.equal(torch.cat(parts, dim=2), conv(x))


def test_causal_conv_carries_a_bounded_number_of_frames() -> None:
    """Memory is bounded by the chunk: at most kt - 1 + st - 1 input frames are carried."""
    conv = CausalConv3d(2, 2, 3, stride=(2, 1, 1))
    state = StreamState()
    for _ in range(7):
        conv(torch.randn(1, 2, 1, 4, 4), state)
        carried = state.take(conv)
        assert carried is not None and carried.shape[2] <= 3
        state.put(conv, carried)


def test_upsample_drops_the_leading_frame_only_once_per_stream() -> None:
    torch.manual_seed(0)
    up = Upsample(4, spatial=False, temporal=True)
    x = torch.randn(1, 4, 5, 4, 4)
    state = StreamState()
    parts = [up(c, state) for c in uneven(x, [1, 1, 3], 2)]
    assert [p.shape[2] for p in parts] == [1, 2, 6]
    assert torch.equal(torch.cat(parts, dim=2), up(x))


def test_resblock_stream_equals_one_shot() -> None:
    torch.manual_seed(0)
    block = ResBlock(4, 8, groups=2)
    x = torch.randn(1, 4, 7, 5, 5)
    state = StreamState()
    with torch.no_grad():
        parts = [block(c, state) for c in uneven(x, [2, 2, 3], 2)]
        assert torch.equal(torch.cat(parts, dim=2), block(x))


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 13])
def test_encode_stream_gives_exactly_the_one_shot_indices(chunk: int) -> None:
    model = tiny()
    video = clip(2, 13)  # 1 + 3*4 frames: 4 latent frames
    with torch.no_grad():
        one_shot = model.encode(video)
        pieces = list(model.encode_stream(chunked(video, chunk, 2)))
    assert all(p.shape[1] > 0 for p in pieces)
    assert torch.equal(torch.cat(pieces, dim=1), one_shot)


def test_encode_stream_first_chunk_of_one_frame_yields_the_first_latent_frame() -> None:
    model = tiny()
    video = clip(1, 9)
    with torch.no_grad():
        pieces = list(model.encode_stream(uneven(video, [1, 3, 1, 4], 2)))
        one_shot = model.encode(video)
    # frame 0 alone completes latent 0; frames 1-4 complete latent 1; 5-8 latent 2
    assert [p.shape[1] for p in pieces] == [1, 1, 1]
    assert torch.equal(torch.cat(pieces, dim=1), one_shot)


@pytest.mark.parametrize("deblock", [0.0, 0.2])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_decode_stream_matches_one_shot_decode(chunk: int, deblock: float) -> None:
    model = tiny(deblock=deblock)
    with torch.no_grad():
        indices = model.encode(clip(1, 13))
        one_shot = model.decode(indices)
        pieces = list(model.decode_stream(chunked(indices, chunk, 1)))
    assert pieces[0].shape[2] == 1 + (chunk - 1) * 4
    torch.testing.assert_close(torch.cat(pieces, dim=2), one_shot, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kind", "options"),
    [("lfq", {"codebook_size": 16}), ("ema_vq", {"codebook_size": 16}),
     ("gumbel", {"codebook_size": 16})],
)
def test_encode_stream_with_other_quantizers(kind: str, options: dict[str, Any]) -> None:
    model = tiny(kind, options)
    video = clip(1, 9)
    with torch.no_grad():
        streamed = torch.cat(list(model.encode_stream(chunked(video, 3, 2))), dim=1)
        assert torch.equal(streamed, model.encode(video))


def test_streaming_with_several_codebooks() -> None:
    model = tiny("rvq", {"num_levels": 2, "codebook_sizes": 8})
    video = clip(1, 9)
    with torch.no_grad():
        one_shot = model.encode(video)
        streamed = torch.cat(list(model.encode_stream(chunked(video, 2, 2))), dim=1)
        assert streamed.shape == (1, 3, 2, 2, 2)
        assert torch.equal(streamed, one_shot)
        decoded = torch.cat(list(model.decode_stream(chunked(one_shot, 1, 1))), dim=2)
        torch.testing.assert_close(decoded, model.decode(one_shot), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- determinism


KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "vq": {"codebook_size": 16},
    "ema_vq": {"codebook_size": 16},
    "gumbel": {"codebook_size": 16},
    "lfq": {"codebook_size": 16},
    "rvq": {"num_levels": 2, "codebook_sizes": 16},
    "ema_rvq": {"num_levels": 2, "codebook_sizes": 16},
    "fsq": {"levels": [5, 4, 4, 3]},
}


@pytest.mark.parametrize("kind", sorted(KIND_OPTIONS))
def test_indices_do_not_depend_on_batch_size(kind: str) -> None:
    model = tiny(kind, KIND_OPTIONS[kind])
    video = clip(3, 9)
    with torch.no_grad():
        batched = model.encode(video)
        single = torch.cat([model.encode(video[i : i + 1]) for i in range(3)])
        pair = model.encode(video[1:3])
    assert torch.equal(batched, single)
    assert torch.equal(batched[1:3], pair)


def test_indices_do_not_depend_on_thread_count() -> None:
    model = tiny()
    video = clip(2, 9)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            one = model.encode(video)
            one_stream = torch.cat(list(model.encode_stream(chunked(video, 3, 2))), dim=1)
        torch.set_num_threads(2)
        with torch.no_grad():
            two = model.encode(video)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert torch.equal(one_stream, two)


def test_latents_are_bitwise_identical_across_batch_and_chunking() -> None:
    """Stronger than equal indices: the encoder output itself does not change in any bit."""
    model = tiny()
    video = clip(2, 9)
    with torch.no_grad():
        full = model.encoder(video)
        state = StreamState()
        single = torch.cat([model.encoder(c, state) for c in chunked(video[:1], 2, 2)], dim=2)
    assert torch.equal(full[:1], single)


def test_swish_is_bitwise_independent_of_tensor_length() -> None:
    from vqtok.families.layers import swish

    x = torch.randn(4099)
    with torch.no_grad():
        full = swish(x)
        assert all(torch.equal(swish(x[:n].clone()), full[:n]) for n in range(1, 80))
    torch.testing.assert_close(full, torch.nn.functional.silu(x))


def test_empty_chunks_are_harmless() -> None:
    model = tiny("lfq", {"codebook_size": 16})
    video = clip(1, 9)
    with torch.no_grad():
        one_shot = model.encode(video)
        pieces = [video[:, :, :0], video[:, :, :1], video[:, :, 1:1], video[:, :, 1:]]
        assert torch.equal(torch.cat(list(model.encode_stream(pieces)), dim=1), one_shot)
        index_pieces = [one_shot[:, :0], one_shot[:, :1], one_shot[:, 1:1], one_shot[:, 1:]]
        decoded = torch.cat(list(model.decode_stream(index_pieces)), dim=2)
        torch.testing.assert_close(decoded, model.decode(one_shot), atol=1e-5, rtol=1e-5)
