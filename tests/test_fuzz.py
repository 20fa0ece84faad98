"""Property-based fuzzing of every parser that reads files people hand to vqtok.

Each parser (index-file reader `load_tokens`, sidecar parser `TokenMetadata.from_dict`, remap
loaders `load_used` and `load_used_sets`, config loaders `TokenizerConfig.from_dict`,
`RunConfig.from_dict` and the model directory's ``config.json`` via `read_info`) must, for ANY
input, return a value or raise a `VqtokError` — never another exception (README, "Reliability").
Inputs are random JSON trees, random bytes and byte-level mutations of valid files.

CI runs a few examples per property; run longer locally with
``VQTOK_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py -q``.
Inputs that crashed a parser (``*.npy``) and hand-picked edge cases (``*.json``: parser name
and input) are kept in ``tests/fuzz_corpus/`` and replayed here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtok.errors import VqtokError
from vqtok.families.vqtok import TokenizerConfig
from vqtok.io.checkpoint import read_info
from vqtok.io.remap import load_used, load_used_sets
from vqtok.io.tokens import EncodedInfo, SourceInfo, TokenMetadata, load_tokens
from vqtok.quantizers.remap import UsedSets
from vqtok.train.config import RunConfig

EXAMPLES = int(os.environ.get("VQTOK_FUZZ_EXAMPLES", "25"))
CORPUS = Path(__file__).parent / "fuzz_corpus"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def _expect_value_or_vqtok_error(fn: Any, *args: Any) -> None:
    """Call ``fn``; a VqtokError is an accepted answer, anything else propagates and fails."""
    try:
        fn(*args)
    except VqtokError:
        pass


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite bytes at (position mod len) with values, then optionally truncate."""
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


_SEED = TokenMetadata(
    model="tiny",
    model_sha256="ab" * 32,
    family="vqtok",
    quantizer="vq",
    codebook_size=16,
    num_codebooks=1,
    grid=(1, 2, 2),
    source=SourceInfo(file="clip.mp4", frames=1, fps="30000/1001", size=(16, 16)),
    encoded=EncodedInfo(frames=1, size=(16, 16), resize="none", padding=0, fps="30000/1001"),
)
_SEED_META = _SEED.to_dict()
_SEED_ARRAY = np.arange(4, dtype=np.int64).reshape(_SEED.shape) % 16


# Keys that the sidecar / configs really use, so random trees reach deep validation code.
_meta_keys = st.sampled_from(sorted(_SEED_META))


@FUZZ
@given(data=json_values)
def test_sidecar_parser_random_json(data: Any) -> None:
    _expect_value_or_vqtok_error(TokenMetadata.from_dict, data)


@FUZZ
@given(key=_meta_keys, value=json_values)
def test_sidecar_parser_one_field_replaced(key: str, value: Any) -> None:
    base = _seed_meta()
    base[key] = value
    _expect_value_or_vqtok_error(TokenMetadata.from_dict, base)


@FUZZ
@given(data=json_values)
def test_tokenizer_config_random_json(data: Any) -> None:
    _expect_value_or_vqtok_error(TokenizerConfig.from_dict, data)


@FUZZ
@given(data=json_values, train=json_values, model=json_values)
def test_run_config_random_json(data: Any, train: Any, model: Any) -> None:
    _expect_value_or_vqtok_error(RunConfig.from_dict, data)
    _expect_value_or_vqtok_error(RunConfig.from_dict, {"train": train, "model": model})


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_model_config_json(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "config.json").write_bytes(raw)
    _expect_value_or_vqtok_error(read_info, tmp_path)


def _npy_seed(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


_edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
_cut = st.none() | st.integers(0, 300)


@FUZZ
@given(edits=_edits, cut=_cut, codebook=st.none() | st.integers(0, 64))
def test_remap_loader_mutated_npy(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None, codebook: int | None
) -> None:
    path = tmp_path / "used.npy"
    path.write_bytes(_mutate(_npy_seed(np.array([1, 4, 9, 20], dtype=np.int64)), edits, cut))
    _expect_value_or_vqtok_error(load_used, path, codebook)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_remap_loader_random_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "used.npy"
    path.write_bytes(raw)
    _expect_value_or_vqtok_error(load_used, path, 64)


def _remap_safetensors_seed() -> bytes:
    sets = UsedSets.of([np.array([1, 4, 9]), np.array([0, 2])], 16)
    tensors = {f"level{i}": level.numpy() for i, level in enumerate(sets.levels)}
    header = json.dumps({"format_version": 1, "num_levels": 2, "codebook_size": 16})
    return safetensors.numpy.save(tensors, metadata={"vqtok_remap": header})


@FUZZ
@given(edits=_edits, cut=_cut, codebook=st.none() | st.integers(1, 64))
def test_multi_level_remap_loader_mutated(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None, codebook: int | None
) -> None:
    path = tmp_path / "used.safetensors"
    path.write_bytes(_mutate(_remap_safetensors_seed(), edits, cut))
    _expect_value_or_vqtok_error(load_used_sets, path, codebook)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_multi_level_remap_loader_random_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "used.safetensors"
    path.write_bytes(raw)
    _expect_value_or_vqtok_error(load_used_sets, path, 64)


@FUZZ
@given(edits=_edits, cut=_cut, sidecar=st.none() | json_values)
def test_index_reader_mutated(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None, sidecar: Any
) -> None:
    path, meta_path = _seed_index(tmp_path)
    path.write_bytes(_mutate(path.read_bytes(), edits, cut))
    if sidecar is not None:
        meta_path.write_text(json.dumps(sidecar))
    _expect_value_or_vqtok_error(load_tokens, path)


@FUZZ
@given(edits=_edits, cut=_cut)
def test_index_reader_mutated_sidecar(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    path, meta_path = _seed_index(tmp_path)
    meta_path.write_bytes(_mutate(meta_path.read_bytes(), edits, cut))
    _expect_value_or_vqtok_error(load_tokens, path)


@pytest.mark.parametrize("case", sorted(CORPUS.glob("*.npy")), ids=lambda p: p.name)
def test_corpus_npy_regressions(case: Path, tmp_path: Path) -> None:
    """Replay saved crashing .npy files through the remap loader and the index reader."""
    with pytest.raises(VqtokError):
        load_used(case, 64)
    path, _ = _seed_index(tmp_path)
    path.write_bytes(case.read_bytes())
    with pytest.raises(VqtokError):
        load_tokens(path)


@pytest.mark.parametrize("case", sorted(CORPUS.glob("*.json")), ids=lambda p: p.name)
def test_corpus_regressions(case: Path) -> None:
    """Replay saved crashers: each file names the parser and holds the input that crashed it."""
    entry = json.loads(case.read_text())
    parsers = {
        "sidecar": TokenMetadata.from_dict,
        "tokenizer_config": TokenizerConfig.from_dict,
        "run_config": RunConfig.from_dict,
    }
    _expect_value_or_vqtok_error(parsers[entry["parser"]], entry["input"])


def _seed_meta() -> dict[str, Any]:
    return json.loads(json.dumps(_SEED_META))


def _seed_index(tmp: Path) -> tuple[Path, Path]:
    from vqtok.io.tokens import save_tokens, sidecar_path

    path = tmp / "clip.npy"
    meta = TokenMetadata.from_dict(_seed_meta())
    save_tokens(path, _SEED_ARRAY, meta)
    return path, sidecar_path(path)
