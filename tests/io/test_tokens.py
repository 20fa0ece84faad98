"""Index file format (vqtok.io.tokens): round trips, dtype choice, validation, atomic writes."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vqtok.errors import TokenFileError
from vqtok.io.tokens import (
    FORMAT_VERSION,
    EncodedInfo,
    RemapInfo,
    SourceInfo,
    TokenMetadata,
    fps_from_text,
    fps_to_text,
    index_dtype,
    is_complete,
    load_metadata,
    load_stored,
    load_tokens,
    save_tokens,
    sidecar_path,
)


def make_meta(**changes: object) -> TokenMetadata:
    meta = TokenMetadata(
        model="tiny",
        model_sha256="ab" * 32,
        family="vqtok",
        quantizer="lfq",
        codebook_size=1024,
        num_codebooks=1,
        grid=(2, 3, 4),
        source=SourceInfo(file="clip.mp4", frames=7, fps="30000/1001", size=(24, 32)),
        encoded=EncodedInfo(frames=5, size=(24, 32), resize="none", padding=0, fps="30000/1001"),
        bit_order="msb",
    )
    return replace(meta, **changes)  # type: ignore[arg-type]


def indices_for(meta: TokenMetadata, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, meta.vocab, size=meta.shape, dtype=np.int64)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
@pytest.mark.parametrize("codebooks", [1, 3])
def test_round_trip(tmp_path: Path, fmt: str, codebooks: int) -> None:
    meta = make_meta(
        quantizer="fsq",
        bit_order=None,
        levels=(8, 8, 4, 4),
        num_codebooks=codebooks,
        windows=((0, 17), (17, 9)),
    )
    indices = indices_for(meta)
    written = save_tokens(tmp_path / "codes", indices, meta, format=fmt)  # type: ignore[arg-type]
    assert written == tmp_path / f"codes.{fmt}"
    loaded, meta2 = load_tokens(written)
    assert loaded.dtype == np.int64 and loaded.shape == meta.shape
    np.testing.assert_array_equal(loaded, indices)
    assert meta2 == meta
    assert is_complete(written) and load_metadata(written) == meta
    assert leftovers(tmp_path) == []


def test_npy_layout_on_disk(tmp_path: Path) -> None:
    meta = make_meta(remap=RemapInfo(sha256="cd" * 32, size=300))
    save_tokens(tmp_path / "codes.npy", indices_for(meta), meta)
    raw = np.load(tmp_path / "codes.npy", allow_pickle=False)
    assert raw.dtype == np.uint16 and raw.max() < 300
    side = json.loads((tmp_path / "codes.json").read_text())
    assert side["format_version"] == FORMAT_VERSION
    assert side["grid"] == [2, 3, 4] and side["source"]["fps"] == "30000/1001"
    assert side["remap"] == {"sha256": "cd" * 32, "size": 300, "sizes": None}
    assert side["windows"] is None and side["bit_order"] == "msb"


@pytest.mark.parametrize(
    ("vocab", "dtype"),
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32),
     (2**18, np.uint32)],
)
def test_index_dtype(vocab: int, dtype: type) -> None:
    assert index_dtype(vocab) == np.dtype(dtype)


def test_small_vocabularies_are_stored_as_uint8_and_old_uint16_files_still_read(
    tmp_path: Path,
) -> None:
    """256 codes or fewer fit a byte; the vocabulary of remapped indices is the remap size."""
    remapped = make_meta(remap=RemapInfo(sha256="cd" * 32, size=200))  # 1024 codes, 200 used
    for name, meta in (("small", make_meta(codebook_size=256)), ("remapped", remapped)):
        indices = indices_for(meta)
        save_tokens(tmp_path / f"{name}.npy", indices, meta)
        assert np.load(tmp_path / f"{name}.npy").dtype == np.uint8
        st = save_tokens(tmp_path / f"{name}.safetensors", indices, meta)
        assert load_stored(st)[0].dtype == np.uint8
        np.testing.assert_array_equal(load_tokens(st)[0], indices)
    meta = make_meta(codebook_size=256)
    old = write_pair(tmp_path, indices_for(meta).astype(np.uint16), meta)  # before uint8
    loaded, _ = load_tokens(old)
    np.testing.assert_array_equal(loaded, indices_for(meta))
    assert load_stored(old)[0].dtype == np.uint16 and is_complete(old)
    with pytest.raises(TokenFileError, match="dtype uint32, expected uint8 or uint16"):
        load_tokens(write_pair(tmp_path, indices_for(meta).astype(np.uint32), meta))


@pytest.mark.parametrize(
    ("name", "fmt", "written"),
    [
        ("codes", "npy", "codes.npy"),
        ("codes.npy", "safetensors", "codes.safetensors"),
        ("codes.json", "npy", "codes.npy"),
        ("clip.v2", "npy", "clip.v2.npy"),
        ("codes.safetensors", None, "codes.safetensors"),
        ("codes.npy", None, "codes.npy"),
    ],
)
def test_output_names(tmp_path: Path, name: str, fmt: str | None, written: str) -> None:
    meta = make_meta()
    path = save_tokens(tmp_path / name, indices_for(meta), meta, format=fmt)  # type: ignore[arg-type]
    assert path == tmp_path / written and is_complete(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_sha256": "xyz"}, "model_sha256 of 64 hex digits"),
        ({"levels": (8, 5, 5)}, "product is codebook_size"),
        ({"bit_order": "middle"}, "bit_order"),
        ({"windows": ((0, 0),)}, "windows"),
        ({"remap": RemapInfo(sha256="ab" * 32, size=0)}, "remap.size >= 1"),
    ],
)
def test_save_refuses_invalid_metadata(tmp_path: Path, changes: dict, message: str) -> None:
    meta = make_meta(**changes)
    with pytest.raises(TokenFileError, match=message):
        save_tokens(tmp_path / "c.npy", np.zeros(meta.shape, np.int64), meta)
    assert list(tmp_path.iterdir()) == []


def test_fps_text() -> None:
    assert (
        fps_to_text(Fraction(30000, 1001)) == "30000/1001" and fps_to_text(Fraction(25)) == "25/1"
    )
    assert fps_from_text("30000/1001") == Fraction(30000, 1001) and fps_from_text("24") == 24
    for bad in ("0/1", "-3", "1/0", "fast"):
        with pytest.raises(TokenFileError):
            fps_from_text(bad)


def test_index_dtype_limits() -> None:
    assert index_dtype(2**32) == np.uint32
    for bad in (0, 2**32 + 1):
        with pytest.raises(TokenFileError):
            index_dtype(bad)


def test_large_vocab_stored_as_uint32(tmp_path: Path) -> None:
    meta = make_meta(codebook_size=2**18)
    indices = indices_for(meta)
    indices.flat[0] = 2**18 - 1
    save_tokens(tmp_path / "c.npy", indices, meta)
    assert np.load(tmp_path / "c.npy").dtype == np.uint32
    np.testing.assert_array_equal(load_tokens(tmp_path / "c.npy")[0], indices)


def test_remap_bounds_values(tmp_path: Path) -> None:
    meta = make_meta(remap=RemapInfo(sha256="cd" * 32, size=10))
    with pytest.raises(TokenFileError, match=r"\[0, 10\)"):
        save_tokens(tmp_path / "c.npy", np.full(meta.shape, 10), meta)


def test_save_refuses_mismatched_indices(tmp_path: Path) -> None:
    meta = make_meta()
    with pytest.raises(TokenFileError, match="shape"):
        save_tokens(tmp_path / "c.npy", np.zeros((2, 3, 5), np.int64), meta)
    with pytest.raises(TokenFileError, match="integers"):
        save_tokens(tmp_path / "c.npy", np.zeros(meta.shape, np.float32), meta)
    with pytest.raises(TokenFileError, match="in \\[0, 1024\\)"):
        save_tokens(tmp_path / "c.npy", np.full(meta.shape, -1), meta)
    assert list(tmp_path.iterdir()) == []


def write_pair(tmp_path: Path, array: np.ndarray, meta: TokenMetadata | dict) -> Path:
    """A .npy + .json written by hand, bypassing save_tokens' checks."""
    np.save(tmp_path / "c.npy", array, allow_pickle=True)
    data = meta.to_dict() if isinstance(meta, TokenMetadata) else meta
    (tmp_path / "c.json").write_text(json.dumps(data))
    return tmp_path / "c.npy"


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3, 4), np.float32), "dtype float32"),
        (np.zeros((2, 3, 4), np.int16), "dtype int16"),
        (np.zeros((2, 3, 4), np.uint32), "dtype uint32, expected uint16"),
        (np.zeros((2, 3, 4), np.uint8), "dtype uint8"),
        (np.zeros((2, 3, 4, 1), np.uint16), "rank 4, expected 3"),
        (np.zeros((2, 3, 5), np.uint16), r"shape \(2, 3, 5\)"),
        (np.full((2, 3, 4), 1024, np.uint16), "index 1024 is out of range"),
        (np.array([{"a": 1}], dtype=object), "pickled"),
    ],
)
def test_load_rejects_bad_arrays(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = write_pair(tmp_path, array, make_meta())
    with pytest.raises(TokenFileError, match=message) as info:
        load_tokens(path)
    assert info.value.path == str(path)
    assert not is_complete(path)


def test_raw_pickle_file_is_refused(tmp_path: Path) -> None:
    path = write_pair(tmp_path, np.zeros((2, 3, 4), np.uint16), make_meta())
    path.write_bytes(pickle.dumps({"not": "an array"}))
    with pytest.raises(TokenFileError, match="pickled"):
        load_tokens(path)


def test_truncated_npy(tmp_path: Path) -> None:
    meta = make_meta(grid=(4, 8, 8))
    path = save_tokens(tmp_path / "c.npy", indices_for(meta), meta)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(TokenFileError, match="not a complete .npy"):
        load_tokens(path)
    assert not is_complete(path)


def test_missing_sidecar(tmp_path: Path) -> None:
    meta = make_meta()
    path = save_tokens(tmp_path / "c.npy", indices_for(meta), meta)
    sidecar_path(path).unlink()
    with pytest.raises(TokenFileError, match="sidecar c.json is missing"):
        load_tokens(path)
    assert not is_complete(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "unknown metadata key.*extra"),
        (lambda d: d["source"].update(colour="red"), "source.colour"),
        (lambda d: d.pop("grid"), "'grid' is missing"),
        (lambda d: d.pop("format_version"), "not a vqtok index sidecar"),
        (lambda d: d.pop("remap"), None),
        (lambda d: d.update(codebook_size="1024"), "'codebook_size' must be int"),
        (lambda d: d.update(codebook_size=True), "'codebook_size' must be int"),
        (lambda d: d.update(grid=[2, 3]), "'grid' must be list"),
        (lambda d: d.update(model=None), "'model' must not be null"),
        (lambda d: d["encoded"].update(size=[24, "32"]), "'encoded.size'"),
        (lambda d: d.update(source=[1]), "'source' must be an object"),
        (lambda d: d["source"].update(fps="thirty"), "source.fps"),
        (lambda d: d.update(codebook_size=0), "codebook_size >= 1"),
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), "version 2 is not supported"),
    ],
)
def test_bad_metadata(tmp_path: Path, mutate, message: str | None) -> None:  # type: ignore[no-untyped-def]
    data = make_meta().to_dict()
    mutate(data)
    path = write_pair(tmp_path, np.zeros((2, 3, 4), np.uint16), data)
    if message is None:  # optional keys may be left out of hand-written sidecars
        assert load_tokens(path)[1] == make_meta()
        return
    with pytest.raises(TokenFileError, match=message):
        load_tokens(path)


def test_malformed_sidecar(tmp_path: Path) -> None:
    path = write_pair(tmp_path, np.zeros((2, 3, 4), np.uint16), make_meta())
    sidecar_path(path).write_text('{"model": ')
    with pytest.raises(TokenFileError, match="not valid JSON") as info:
        load_tokens(path)
    assert info.value.path == str(sidecar_path(path))
    sidecar_path(path).write_text("[1, 2]")
    with pytest.raises(TokenFileError, match="JSON object"):
        load_tokens(path)


def test_safetensors_validation(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    meta = make_meta()
    path = tmp_path / "c.safetensors"
    save_file(
        {"indices": np.zeros((2, 3, 4), np.int32)},
        str(path),
        metadata={"vqtok": json.dumps(meta.to_dict())},
    )
    with pytest.raises(TokenFileError, match="dtype int32"):
        load_tokens(path)
    save_file({"indices": np.zeros((2, 3, 4), np.uint16)}, str(path))
    with pytest.raises(TokenFileError, match="no 'vqtok' metadata"):
        load_tokens(path)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(TokenFileError, match="not a readable safetensors"):
        load_tokens(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="no such index file"):
        load_tokens(tmp_path / "nope.npy")
    assert not is_complete(tmp_path / "nope.npy")


def test_overwrite_replaces_both_files(tmp_path: Path) -> None:
    old = make_meta()
    save_tokens(tmp_path / "c.npy", indices_for(old, 1), old)
    new = make_meta(grid=(1, 2, 2), model="other")
    save_tokens(tmp_path / "c.npy", indices_for(new, 2), new)
    indices, meta = load_tokens(tmp_path / "c.npy")
    assert meta == new
    np.testing.assert_array_equal(indices, indices_for(new, 2))
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = make_meta()
    path = save_tokens(tmp_path / "c.safetensors", indices_for(meta, 1), meta)
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("vqtok.disk.os.replace", broken_replace)
    with pytest.raises(TokenFileError, match="disk full"):
        save_tokens(path, indices_for(meta, 2), meta)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_crash_between_array_and_sidecar_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = make_meta()
    path = save_tokens(tmp_path / "c.npy", indices_for(meta, 1), meta)
    import vqtok.io.tokens as tokens

    real = tokens.atomic_bytes

    def crash_on_sidecar(target: Path, data: bytes) -> None:
        if target.suffix == ".json":
            raise OSError("killed")
        real(target, data)

    monkeypatch.setattr(tokens, "atomic_bytes", crash_on_sidecar)
    with pytest.raises(TokenFileError):
        save_tokens(path, indices_for(meta, 2), meta)
    # the new array is there but its sidecar is gone, never the old sidecar with the new array
    assert path.exists() and not sidecar_path(path).exists()
    assert not is_complete(path)
    assert leftovers(tmp_path) == []


def test_every_field_type_has_a_checker() -> None:
    from dataclasses import fields

    from vqtok.io.token_meta import _CHECKERS, _NESTED

    for cls in (TokenMetadata, SourceInfo, EncodedInfo, RemapInfo):
        for spec in fields(cls):
            kind = str(spec.type).split("|")[0].strip()
            assert kind in _CHECKERS or kind in _NESTED, f"{cls.__name__}.{spec.name}: {kind}"
