"""Beam search over residual levels (`vqtok.quantizers.beam`): optimality when the beam holds
every path, never worse than greedy on average, ties, and independence of batch and block; the
beam as a per-call setting, and every encode setting recorded as used."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.clips import make_clip
from tests.tiny import TINY_CONFIG
from vqtok.api import Tokenizer, load
from vqtok.errors import ConfigError, QuantizerError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.tokens import load_tokens
from vqtok.io.videotensor import read_video
from vqtok.pipeline.encode import EncodeOptions, encode_file
from vqtok.quantizers.beam import beam_codes
from vqtok.quantizers.ema_residual import EMAResidualQuantizer
from vqtok.quantizers.residual import ResidualQuantizer


def _error(x: torch.Tensor, books: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    total = sum(book.double()[idx[:, level]] for level, book in enumerate(books))
    return (x.double() - total).pow(2).sum(1)


def _greedy(x: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
    r, out = x.double(), []
    for book in books:
        idx = torch.cdist(r, book.double()).argmin(1)
        out.append(idx)
        r = r - book.double()[idx]
    return torch.stack(out, 1)


def test_a_beam_holding_every_path_finds_the_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    books = [torch.randn(4, 3, generator=g) / (level + 1) for level in range(3)]
    x = torch.randn(50, 3, generator=g)
    idx = beam_codes(x, books, width=16)  # 4 x 4 = 16 partial paths: nothing is pruned
    every = torch.tensor(list(itertools.product(range(4), repeat=3)))  # (64, 3)
    best = torch.stack([_error(x[i:i + 1].expand(64, 3), books, every).min()
                        for i in range(50)])
    assert torch.allclose(_error(x, books, idx), best, rtol=0, atol=1e-12)


def test_beam_beats_greedy_and_width_one_is_greedy() -> None:
    g = torch.Generator().manual_seed(1)
    books = [torch.randn(32, 8, generator=g) * 0.7**level for level in range(4)]
    x = torch.randn(2000, 8, generator=g)
    greedy = _greedy(x, books)
    assert torch.equal(beam_codes(x, books, width=1), greedy)
    errors = [_error(x, books, beam_codes(x, books, width=w)).mean() for w in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.9 * errors[0]


def test_indices_do_not_depend_on_batch_or_block() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(16, 6, generator=g)
    books = [base, base[torch.randperm(16, generator=g)] * 0.5, torch.randn(16, 6, generator=g)]
    # rows on exact ties: tokens equal to codes and midway between two codes
    x = torch.cat([torch.randn(300, 6, generator=g), base[:5], (base[:5] + base[5:10]) / 2])
    whole = beam_codes(x, books, width=5)
    assert torch.equal(beam_codes(x, books, width=5, block_rows=7), whole)
    singles = torch.cat([beam_codes(x[i:i + 1], books, width=5) for i in range(len(x))])
    assert torch.equal(singles, whole)
    shuffled = torch.randperm(len(x), generator=g)
    assert torch.equal(beam_codes(x[shuffled], books, width=5), whole[shuffled])
    assert torch.equal(beam_codes(x.half().float(), books, width=5),
                       beam_codes(x.half(), books, width=5))


def test_exact_ties_go_to_the_lowest_position() -> None:
    code = torch.tensor([[1.0, 0.0]])
    books = [torch.cat([code, code, -code]), torch.zeros(3, 2)]  # codes 0 and 1 are equal
    idx = beam_codes(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), books, width=2)
    assert idx.tolist() == [[0, 0], [2, 0]]


def test_bad_arguments_are_quantizer_errors() -> None:
    books = [torch.randn(4, 3)]
    with pytest.raises(QuantizerError, match="width"):
        beam_codes(torch.randn(2, 3), books, width=0)
    with pytest.raises(QuantizerError, match="expected tokens"):
        beam_codes(torch.randn(2, 4), books, width=2)
    with pytest.raises(QuantizerError, match="non-empty"):
        beam_codes(torch.randn(2, 3), [torch.zeros(0, 3)], width=2)
    assert beam_codes(torch.randn(0, 3), books, width=2).shape == (0, 1)


# ---------------------------------------------------------------- in the residual quantizers


def _ema_rvq(width: int) -> EMAResidualQuantizer:
    g = torch.Generator().manual_seed(3)
    rvq = EMAResidualQuantizer(dim=4, num_levels=3, codebook_sizes=[16, 8, 8], beam_width=width)
    with torch.no_grad():
        for level, codebook in enumerate(rvq.codebooks):
            codebook.weight.copy_(torch.randn(codebook.weight.shape, generator=g) * 0.6**level)
    return rvq.eval()


def test_residual_quantizer_searches_with_its_beam_outside_training() -> None:
    rvq = _ema_rvq(4)
    z = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(4))  # (B, D, t, h, w)
    tokens = z.permute(0, 2, 3, 4, 1).reshape(-1, 4)
    books = [rvq.level_weight(level) for level in range(3)]
    out = rvq(z)
    assert torch.equal(out.indices.reshape(-1, 3), beam_codes(tokens, books, 4))
    summed = sum(books[level][out.indices[..., level]] for level in range(3))
    assert torch.allclose(out.codes, summed.permute(0, 4, 1, 2, 3), atol=1e-6)
    assert torch.equal(torch.stack(rvq.encode(z), -1), out.indices)
    # a k-level code is a k-level search, not the prefix of the full one
    two = rvq(z, levels=2).indices
    assert torch.equal(two.reshape(-1, 2), beam_codes(tokens, books[:2], 4))
    greedy = _ema_rvq(1)
    assert _error(tokens, books, out.indices.reshape(-1, 3)).mean() < \
        _error(tokens, books, greedy(z).indices.reshape(-1, 3)).mean()
    rvq.train()  # training keeps the greedy path its losses are defined on
    assert torch.equal(rvq(z).indices, greedy(z).indices)


def test_restricted_beam_keeps_allowed_paths_and_searches_the_rest() -> None:
    rvq = _ema_rvq(4)
    z = torch.randn(40, 4, generator=torch.Generator().manual_seed(5))
    full = rvq(z).indices  # (40, 3)
    used = [torch.unique(full[:, level]) for level in range(3)]
    compact = rvq.restricted_indices(z, used)
    assert torch.equal(torch.stack([used[i][compact[:, i]] for i in range(3)], 1), full)
    fewer = [used[0][::2], used[1], used[2]]  # level 0 loses half of its used codes
    narrow = rvq.restricted_indices(z, fewer)
    assert all(int(narrow[:, i].max()) < len(fewer[i]) for i in range(3))
    kept = torch.isin(full[:, 0], fewer[0])
    assert torch.equal(narrow[kept, 1:], compact[kept, 1:])


def test_beam_width_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="beam_width"):
            EMAResidualQuantizer(dim=4, num_levels=2, codebook_sizes=8, beam_width=bad)
    with pytest.raises(ConfigError, match="beam_width"):
        ResidualQuantizer(dim=4, num_levels=2, codebook_sizes=8, beam_width=0)


def test_a_beam_model_encodes_the_same_in_one_shot_and_in_chunks() -> None:
    torch.manual_seed(0)
    config = replace(TINY_CONFIG, quantizer="ema_rvq",
                     quantizer_options={"num_levels": 3, "codebook_sizes": 16, "beam_width": 3})
    tok = Tokenizer(VideoTokenizer(config).eval(), name="tiny-beam")
    video = torch.rand(1, 3, 13, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    whole = tok.encode(video)
    chunks = torch.cat(list(tok.encode_stream(video.split(5, dim=2))), dim=1)
    assert torch.equal(chunks, whole)
    batch = tok.encode(torch.cat([video, video.flip(3)]))
    assert torch.equal(batch[:1], whole)
    assert tok.encode(video, levels=2).shape[-1] == 2


def _beam_model(directory):
    torch.manual_seed(0)
    config = replace(TINY_CONFIG, quantizer="ema_rvq",
                     quantizer_options={"num_levels": 3, "codebook_sizes": 16})
    return save_pretrained(VideoTokenizer(config), directory)


def test_beam_is_a_per_call_setting_that_never_changes_the_model() -> None:
    torch.manual_seed(0)
    config = replace(TINY_CONFIG, quantizer="ema_rvq",
                     quantizer_options={"num_levels": 3, "codebook_sizes": 16})
    tok = Tokenizer(VideoTokenizer(config).eval(), name="tiny")
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    greedy, wide = tok.encode(video), tok.encode(video, beam=8)
    assert not torch.equal(greedy, wide)  # the beam finds other codes here
    assert tok.model.quantizer.beam_width == 1 and torch.equal(tok.encode(video), greedy)
    # two streams with different beams, interleaved in one process: each gets its own result
    a = tok.encode_stream(video.split(3, dim=2), beam=8)
    b = tok.encode_stream(video.split(3, dim=2))
    pieces_a, pieces_b = [], []
    for x, y in zip(a, b, strict=True):
        pieces_a.append(x)
        pieces_b.append(y)
    assert torch.equal(torch.cat(pieces_a, 1), wide) and torch.equal(torch.cat(pieces_b, 1), greedy)
    with pytest.raises(ConfigError):
        tok.encode(video, beam=0)


SETTINGS = {  # EncodeOptions field -> (value, the read_video / Tokenizer.encode arguments)
    "size": ((24, 40), {"size": (24, 40)}),
    "short_side": (24, {"short_side": 24}),
    "fps": (4, {"fps": 4}),
    "max_frames": (5, {"max_frames": 5}),
    "levels": (2, {"levels": 2}),
    "beam": (8, {"beam": 8}),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_the_sidecar_records_the_settings_the_indices_were_made_with(tmp_path, setting) -> None:
    """encode_file with one setting = the Python API asked for the same thing directly; the
    sidecar records exactly that setting."""
    model_dir = _beam_model(tmp_path / "model")
    clip = make_clip(tmp_path / "clip.mp4", frames=9, size=(32, 48), fps=8)
    value, direct = SETTINGS[setting]
    tok = load(model_dir, device="cpu")
    result = encode_file(clip, tmp_path / "c.npy", tok, EncodeOptions(**{setting: value}))
    stored, meta = load_tokens(result.target)
    reading = {k: v for k, v in direct.items() if k in ("size", "short_side", "fps", "max_frames")}
    coding = {k: v for k, v in direct.items() if k in ("levels", "beam")}
    expected = tok.encode(read_video(clip, **reading), **coding)[0].numpy()
    np.testing.assert_array_equal(stored, expected)
    recorded = getattr(meta.settings, setting)
    wanted = f"{value}/1" if setting == "fps" else value
    assert recorded == wanted and tok.model.quantizer.beam_width == 1
    others = {f: getattr(meta.settings, f) for f in SETTINGS if f != setting}
    assert set(others.values()) == {None}
