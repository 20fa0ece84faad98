"""vqtok convert: the release formats written as the releases store them, converted, loaded with
vqtok.load and compared with the golden fixtures; full-size key sets; bad sources."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

import vqtok.api
from tests.families.test_cosmos import check_main_case
from tests.families.test_magvit2 import check_activations
from vqtok.convert.common import meta_model
from vqtok.convert.cosmos import convert_cosmos, cosmos_constants, infer_cosmos_config
from vqtok.convert.magvit2 import convert_open_magvit2, infer_magvit2_config, magvit2_release_names
from vqtok.errors import CheckpointError, ConfigError, OptionError
from vqtok.families.cosmos import CosmosConfig, CosmosTokenizer
from vqtok.families.magvit2 import Magvit2Config, Magvit2Tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures"
COSMOS = FIXTURES / "cosmos-dv4x8x8"
MAGVIT = FIXTURES / "open-magvit2-video"
ATOL = 1e-4

# the test writes TorchScript archives the way the releases are stored
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


class Holder(nn.Module):
    """A module tree whose state dict carries given keys, to script into a TorchScript archive."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def write_jit(path: Path, tensors: dict[str, Tensor]) -> Path:
    """A TorchScript archive whose ``state_dict()`` is ``tensors`` (as the Cosmos .jit files)."""
    root = Holder()
    for key, value in tensors.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if part not in module._modules:
                module.add_module(part, Holder())
            module = module._modules[part]  # type: ignore[assignment]
        if value.is_floating_point() and "implicit_codebook" not in key and "wavelets" not in key:
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))
    return path


@pytest.fixture(scope="module")
def cosmos_ref() -> dict[str, Tensor]:
    return load_file(COSMOS / "reference.safetensors")


@pytest.fixture(scope="module")
def magvit_ref() -> dict[str, Tensor]:
    return load_file(MAGVIT / "reference.safetensors")


def cosmos_keys(part: str) -> list[str]:
    return json.loads((COSMOS / "config.json").read_text())[f"{part}_jit_keys"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cosmos_release(tmp_path_factory: pytest.TempPathFactory, cosmos_ref: dict[str, Tensor]) -> Path:
    """A download directory as NVIDIA publishes it: the variant in its name, two archives."""
    root = tmp_path_factory.mktemp("hf") / "Cosmos-0.1-Tokenizer-DV4x8x8"
    root.mkdir()
    for part in ("encoder", "decoder"):
        write_jit(root / f"{part}.jit", {k: cosmos_ref[k] for k in cosmos_keys(part)})
    return root


def magvit_state(ref: dict[str, Tensor], ema: bool = True) -> dict[str, Tensor]:
    """checkpoint["state_dict"] as the release stores it: raw weights, their EMA copies under
    dotless names, EMA bookkeeping, and a discriminator. With ``ema`` the raw weights are decoys."""
    ema_map = json.loads((MAGVIT / "config.json").read_text())["ema_key_map_reduced"]
    gen = torch.Generator().manual_seed(0)
    state: dict[str, Tensor] = {}
    for ema_key, raw_key in ema_map.items():
        weight = ref[raw_key].float()
        if ema:
            state[raw_key] = torch.randn(weight.shape, generator=gen)  # decoy: must be ignored
            state[ema_key] = weight
        else:
            state[raw_key] = weight
    if ema:
        state["model_ema.decay"] = torch.tensor(0.999)
        state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int32)
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 3, 3, 3, generator=gen)
    return state


def save_ckpt(path: Path, state: dict[str, Tensor]) -> Path:
    torch.save({"state_dict": state, "epoch": 7, "global_step": 1234}, path)
    return path


@pytest.fixture(scope="module")
def magvit_ckpt(tmp_path_factory: pytest.TempPathFactory, magvit_ref: dict[str, Tensor]) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "video_128_262144.ckpt"
    return save_ckpt(path, magvit_state(magvit_ref))


@pytest.fixture(scope="module")
def cosmos_dir(tmp_path_factory: pytest.TempPathFactory, cosmos_release: Path) -> Path:
    out = tmp_path_factory.mktemp("models") / "cosmos-dv4x8x8"
    conversion = convert_cosmos(cosmos_release, out)
    assert conversion.config["variant"] == "DV4x8x8" and conversion.used == 322
    assert len(conversion.ignored) == 11  # derived buffers, all checked
    return out


@pytest.fixture(scope="module")
def magvit_dir(tmp_path_factory: pytest.TempPathFactory, magvit_ckpt: Path) -> Path:
    out = tmp_path_factory.mktemp("models") / "open-magvit2"
    conversion = convert_open_magvit2(magvit_ckpt, out)
    assert conversion.config["ch"] == 32 and conversion.config["num_res_blocks"] == 1
    assert conversion.used == 103
    reasons = set(conversion.ignored.values())
    assert len(conversion.ignored) == 103 + 2 + 1 + 2 and len(reasons) == 4
    summary = conversion.summary()
    assert "103 tensors used" in summary and "2 EMA bookkeeping" in summary
    return out


# ------------------------------------------------------------------ equivalence


@pytest.fixture(scope="module")
def cosmos_tok(cosmos_dir: Path) -> vqtok.api.Tokenizer:
    return vqtok.api.load(cosmos_dir, device="cpu")


@pytest.fixture(scope="module")
def magvit_tok(magvit_dir: Path) -> vqtok.api.Tokenizer:
    return vqtok.api.load(magvit_dir, device="cpu")


def test_converted_models_match_fixture_activations(
    cosmos_tok: vqtok.api.Tokenizer,
    cosmos_ref: dict[str, Tensor],
    magvit_tok: vqtok.api.Tokenizer,
    magvit_ref: dict[str, Tensor],
) -> None:
    assert isinstance(cosmos_tok.model, CosmosTokenizer)
    assert isinstance(magvit_tok.model, Magvit2Tokenizer)
    check_main_case(cosmos_tok.model, cosmos_ref)
    check_activations(magvit_tok.model, magvit_ref)


@pytest.mark.parametrize(("prefix", "frames"), [("t9.", 9), ("t1.", 1)])
def test_converted_cosmos_matches_every_case(
    cosmos_tok: vqtok.api.Tokenizer, cosmos_ref: dict[str, Tensor], prefix: str, frames: int
) -> None:
    model = cosmos_tok.model
    assert isinstance(model, CosmosTokenizer)
    video = cosmos_ref["input"][:, :, :frames]
    with torch.no_grad():
        latents = model.latents(video)
        out = model.quantize(latents)
        output = model.decode(cosmos_ref[f"{prefix}indices"].long())
    torch.testing.assert_close(latents, cosmos_ref[f"{prefix}latent"], atol=ATOL, rtol=0)
    assert torch.equal(out.codes, cosmos_ref[f"{prefix}codes"])
    assert torch.equal(out.indices, cosmos_ref[f"{prefix}indices"].long())
    # the API path, as `vqtok encode` runs it (the 17-frame case: in the activation test)
    assert torch.equal(cosmos_tok.encode(video), cosmos_ref[f"{prefix}indices"].long())
    torch.testing.assert_close(output, cosmos_ref[f"{prefix}output"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("prefix", ["", "case_image_", "case_t10_"])
def test_converted_magvit2_matches_every_case(
    magvit_tok: vqtok.api.Tokenizer, magvit_ref: dict[str, Tensor], prefix: str
) -> None:
    model = magvit_tok.model
    assert isinstance(model, Magvit2Tokenizer) and model.window == 17
    video = magvit_ref[f"{prefix}input"]
    with torch.no_grad():
        latents = model.latents(video)
        out = model.quantize(latents)
        output = model.decode(out.indices)
    torch.testing.assert_close(latents, magvit_ref[f"{prefix}latent"], atol=ATOL, rtol=0)
    assert torch.equal(out.codes, magvit_ref[f"{prefix}codes"])
    assert torch.equal(out.indices.flatten(), magvit_ref[f"{prefix}indices"])
    torch.testing.assert_close(output, magvit_ref[f"{prefix}output"], atol=ATOL, rtol=0)
    if prefix == "":  # the API path (it pads per window; 17 frames need none)
        assert torch.equal(magvit_tok.encode(video).flatten(), magvit_ref["indices"])


def test_magvit2_without_ema_uses_raw_weights(
    tmp_path: Path, magvit_ref: dict[str, Tensor]
) -> None:
    ckpt = save_ckpt(tmp_path / "raw.ckpt", magvit_state(magvit_ref, ema=False))
    conversion = convert_open_magvit2(ckpt, tmp_path / "raw")
    assert conversion.used == 103 and "raw weights" in (tmp_path / "raw" / "README.md").read_text()
    model = vqtok.api.load(tmp_path / "raw", device="cpu").model
    assert isinstance(model, Magvit2Tokenizer)
    with torch.no_grad():
        codes = model.quantize(model.latents(magvit_ref["debug_input"])).codes
    assert torch.equal(codes, magvit_ref["debug_codes"])


def test_autoencoder_jit_and_bf16_source(
    tmp_path: Path, cosmos_ref: dict[str, Tensor], cosmos_dir: Path
) -> None:
    """One autoencoder.jit in bf16 (as the releases may store it) converts to float32 weights
    equal to the bf16-rounded fixture, and --variant picks the variant for a plain name."""
    keys = cosmos_keys("encoder") + cosmos_keys("decoder")
    bf16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in cosmos_ref.items()}
    source = write_jit(tmp_path / "autoencoder.jit", {k: bf16[k] for k in keys})
    convert_cosmos(tmp_path, tmp_path / "ae", variant="DV4x8x8")
    converted = load_file(tmp_path / "ae" / "model.safetensors")
    reference = load_file(cosmos_dir / "model.safetensors")
    assert converted.keys() == reference.keys()
    for key, value in converted.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, reference[key].bfloat16().float()), key
    card = (tmp_path / "ae" / "README.md").read_text()
    assert hashlib.sha256(source.read_bytes()).hexdigest() in card
    assert "NVIDIA Open Model License" in card


def test_dtype_option_keeps_bf16(tmp_path: Path, magvit_ckpt: Path, magvit_dir: Path) -> None:
    convert_open_magvit2(magvit_ckpt, tmp_path / "bf16", dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    small = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert small < 0.6 * (magvit_dir / "model.safetensors").stat().st_size


def test_model_cards_name_source_license_and_command(magvit_dir: Path, magvit_ckpt: Path) -> None:
    card = (magvit_dir / "README.md").read_text()
    assert "video_128_262144.ckpt" in card
    assert hashlib.sha256(magvit_ckpt.read_bytes()).hexdigest() in card
    assert "Apache-2.0" in card and "vqtok convert open-magvit2" in card
    assert "EMA weights" in card
    meta = json.loads((magvit_dir / "config.json").read_text())
    assert meta["family"] == "open-magvit2-video"
    assert meta["input"] == {"value_range": [-1, 1], "channels": "RGB", "temporal": "window",
                             "window": 17}


# ------------------------------------------------------------------ full-size key sets


def test_full_size_magvit2_has_the_released_keys_and_shapes() -> None:
    full = json.loads((MAGVIT / "full_keys.json").read_text())
    model = meta_model(Magvit2Tokenizer, Magvit2Config())
    names = magvit2_release_names(model)
    shapes = {release: tuple(model.state_dict()[key].shape) for release, key in names.items()}
    generator = {e["key"]: tuple(e["shape"]) for e in full["keys"] if e["group"] != "ema_weight"
                 and e["group"] != "ema_meta"}
    assert shapes == generator
    ema = {e["key"]: e["ema_of"] for e in full["keys"] if e["group"] == "ema_weight"}
    assert ema == {"model_ema." + k.replace(".", ""): k for k in names}
    assert sum(t.numel() for t in model.state_dict().values()) == full["generator_parameter_count"]
    # the converter infers the released architecture from these shapes (meta: no memory)
    released = {e["key"]: torch.empty(e["shape"], device="meta") for e in full["keys"]}
    get = lambda key: released.get("model_ema." + key.replace(".", ""))  # noqa: E731
    assert infer_magvit2_config(get, MAGVIT) == Magvit2Config()


@pytest.mark.parametrize("variant", ["DV4x8x8", "DV8x8x8", "DV8x16x16"])
def test_full_size_cosmos_has_the_released_keys_and_shapes(variant: str) -> None:
    full = json.loads((COSMOS / "full_keys.json").read_text())
    config = CosmosConfig(variant=variant)
    model = meta_model(CosmosTokenizer, config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    constants = {k: tuple(v.shape) for k, v in cosmos_constants(config).items()}
    for archives in (["encoder.jit", "decoder.jit"], ["autoencoder.jit"]):
        released = {e["key"]: tuple(e["shape"]) for a in archives for e in full[a]}
        params = {e["key"]: tuple(e["shape"]) for a in archives for e in full[a]
                  if e["kind"] == "parameter"}
        assert ours == params
        buffers = {k: s for k, s in released.items() if k not in params}
        if len(archives) == 2:
            assert buffers == constants  # every derived buffer is known and checked
        else:  # autoencoder.jit has one quantizer, without the decoder's inv_quant prefix
            assert buffers == {k: s for k, s in constants.items() if "inv_quant" not in k}
        shapes = {k: torch.empty(s, device="meta") for k, s in released.items()}
        assert infer_cosmos_config(shapes, variant, False, COSMOS) == config
    assert sum(map(lambda s: torch.Size(s).numel(), ours.values())) == full["param_counts"][
        "full_model"
    ]


# ------------------------------------------------------------------ bad sources


def refused(convert: object, out: Path, match: str, **kwargs: object) -> None:
    with pytest.raises(CheckpointError, match=match):
        convert(out=out, **kwargs)  # type: ignore[operator]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary directory left either


def test_truncated_files_are_refused(
    tmp_path: Path, magvit_ckpt: Path, cosmos_release: Path
) -> None:
    data = magvit_ckpt.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    refused(lambda out: convert_open_magvit2(cut, out), tmp_path / "a", "truncated or corrupt")
    broken = tmp_path / "Cosmos-0.1-Tokenizer-DV4x8x8"
    broken.mkdir()
    shutil.copy(cosmos_release / "encoder.jit", broken)
    jit = (cosmos_release / "decoder.jit").read_bytes()
    (broken / "decoder.jit").write_bytes(jit[: len(jit) // 2])
    refused(lambda out: convert_cosmos(broken, out), tmp_path / "b", "TorchScript")


class Payload:
    """Unpickling this would call Path.touch: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_pickle_needing_code_execution_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": Payload(marker)}, ckpt)
    refused(lambda out: convert_open_magvit2(ckpt, out), tmp_path / "o", "arbitrary code")
    assert not marker.exists()


def test_missing_unexpected_and_misshaped_keys_are_named(
    tmp_path: Path, magvit_ref: dict[str, Tensor]
) -> None:
    state = magvit_state(magvit_ref)
    del state["model_ema.decoderconv_outconv_1weight"]
    ckpt = save_ckpt(tmp_path / "m.ckpt", state)
    refused(lambda out: convert_open_magvit2(ckpt, out), tmp_path / "m",
            r"missing tensor\(s\) decoder\.conv_out\.conv_1\.weight")
    state = magvit_state(magvit_ref)
    state["model_ema.encoderextraweight"] = torch.zeros(3)
    ckpt = save_ckpt(tmp_path / "u.ckpt", state)
    refused(lambda out: convert_open_magvit2(ckpt, out), tmp_path / "u",
            r"unexpected tensor\(s\) model_ema\.encoderextraweight")
    state = magvit_state(magvit_ref)
    state["model_ema.decoderconv_outconv_1bias"] = torch.zeros(4)
    ckpt = save_ckpt(tmp_path / "s.ckpt", state)
    refused(lambda out: convert_open_magvit2(ckpt, out), tmp_path / "s",
            r"decoder\.conv_out\.bias \(4,\) \(expected \(3,\)\)")


def test_wrong_or_ambiguous_variant_is_refused(tmp_path: Path, cosmos_release: Path) -> None:
    refused(lambda out: convert_cosmos(cosmos_release, out, variant="DV8x8x8"), tmp_path / "a",
            "contradicts the path")
    refused(lambda out: convert_cosmos(cosmos_release, out, variant="DV4x4x4"), tmp_path / "b",
            "unknown variant")
    plain = tmp_path / "download"
    shutil.copytree(cosmos_release, plain)
    refused(lambda out: convert_cosmos(plain, out), tmp_path / "c", "names no variant")
    both = tmp_path / "DV8x8x8-or-DV4x8x8"
    shutil.copytree(cosmos_release, both)
    refused(lambda out: convert_cosmos(both, out), tmp_path / "d", "names several variants")


def test_wrong_derived_buffer_is_refused(tmp_path: Path, cosmos_ref: dict[str, Tensor]) -> None:
    root = tmp_path / "Cosmos-0.1-Tokenizer-DV4x8x8"
    root.mkdir()
    tensors = {k: cosmos_ref[k] for k in cosmos_keys("encoder") + cosmos_keys("decoder")}
    tensors["quantizer._levels"] = torch.tensor([8, 8, 8, 5, 5, 4], dtype=torch.int32)
    write_jit(root / "autoencoder.jit", tensors)
    refused(
        lambda out: convert_cosmos(root, out), tmp_path / "o", "derived buffer quantizer._levels"
    )


def test_only_the_converter_reads_pickle_or_torchscript() -> None:
    package = Path(vqtok.api.__file__).parent
    readers = re.compile(r"torch\.load\(|torch\.jit\.load\(|\bimport pickle\b|pickle\.loads?\(")
    users = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")
                   if readers.search(p.read_text()))
    assert users == ["convert/cosmos.py", "convert/magvit2.py"]


# ---------------------------------------------------------------- the converter registry

def test_every_registered_converter_is_its_modules_converter() -> None:
    import importlib

    import vqtok.convert as convert_pkg
    from vqtok.cli.train_convert import Source

    assert [s.value for s in Source] == list(convert_pkg.CONVERTERS)  # the CLI asks the registry
    for source, module in convert_pkg.CONVERTERS.items():
        found = convert_pkg.converter(source)
        assert found is importlib.import_module(f"vqtok.convert.{module}").CONVERTER
        assert found.source == source
    with pytest.raises(ConfigError, match="unknown converter 'nope'; choose one of cosmos"):
        convert_pkg.converter("nope")


def test_the_registry_converts_with_one_signature_and_checks_options(
    tmp_path: Path, magvit_ckpt: Path, cosmos_release: Path
) -> None:
    from vqtok.convert import convert
    from vqtok.convert.common import ConvertOptions

    done = convert("open-magvit2", [str(magvit_ckpt)], tmp_path / "m",
                   ConvertOptions(torch.bfloat16, name="mine"))
    assert done.family == "open-magvit2-video" and (tmp_path / "m" / "model.safetensors").exists()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["name"] == "mine"
    done = convert("cosmos", [str(cosmos_release)], tmp_path / "c",
                   ConvertOptions(extra={"variant": "DV4x8x8"}))
    assert done.config["variant"] == "DV4x8x8"
    for source, sources, extra, flag in [
        ("open-magvit2", [str(magvit_ckpt)], {"variant": "DV4x8x8"}, "--variant"),
        ("open-magvit2", [str(magvit_ckpt)] * 2, {}, "SOURCE"),
        ("cosmos", [], {}, "SOURCE"),
    ]:
        with pytest.raises(OptionError) as caught:
            convert(source, sources, tmp_path / "x", ConvertOptions(extra=extra))
        assert caught.value.option == flag
    assert not (tmp_path / "x").exists()
