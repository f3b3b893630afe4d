"""Loading the refiner's weight files: formats, wrong files, restricted unpickling, converter, name maps.

Specification: refine_stage.md §3.5, §4.4, §5.1, §6 (files, loader requirements, pickle safety, converter),
§16.1 (diffusers family), §20.3 items 4-5. The files are the tiny random refiners of
`streaming_core.tiny_refiner` (official formats) and variants of them written here.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from streaming_core import convert, safe_pickle
from streaming_core.config import VaeConfig
from streaming_core.loading import CheckpointLayoutError
from streaming_core.openclip_names import openclip_text_to_hf
from streaming_core.refine_schedule import NoiseTable
from streaming_core.refiner_files import (PACK_FORMAT, MissingRefinerFilesError, diffusers_vae_to_ldm, identify,
                                          load_diffusers_refiner, load_ms_vid2vid)
from streaming_core.refiner_model import REFINER_CONFIG_KEY, RefinerConfig
from streaming_core.tiny_default import write_tiny_default
from streaming_core.tiny_refiner import (TINY_REFINER_CONFIG, save_with_stand_ins, tiny_official_state_dicts,
                                         write_tiny_refiner)
from streaming_core.vae import Vae
from streaming_core.vae_names import ldm_vae_to_diffusers

CORE = Path(__file__).resolve().parents[1] / "streaming_core"
TINY_JSON = TINY_REFINER_CONFIG.to_json()


# ------------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_refiner(tmp_path_factory.mktemp("refiner_tiny"))


@pytest.fixture(scope="module")
def parts() -> dict[str, dict[str, torch.Tensor]]:
    """The tensors the tiny files hold: official UNet names, full OpenCLIP names, bare LDM VAE names."""
    return tiny_official_state_dicts()


@pytest.fixture(scope="module")
def reference(tiny):
    return load_ms_vid2vid(tiny["unet"], tiny["text"], tiny["vae"])


def _state(model) -> dict[str, dict[str, torch.Tensor]]:
    return {"unet": model.unet.state_dict(), "text": model.text_encoder.state_dict(), "vae": model.vae.state_dict()}


def _assert_same_weights(model, reference, *, rounded_to: torch.dtype | None = None) -> None:
    got, want = _state(model), _state(reference)
    for part in ("unet", "text", "vae"):
        assert got[part].keys() == want[part].keys(), part
        for key, value in want[part].items():
            expected = value.to(rounded_to).to(value.dtype) if rounded_to is not None else value
            assert torch.equal(got[part][key].to(value.dtype), expected), f"{part}: {key}"


def _with_config(sd: dict[str, torch.Tensor]) -> OrderedDict:
    out = OrderedDict(sd)
    setattr(out, REFINER_CONFIG_KEY, TINY_JSON)
    return out


def _text_only(parts) -> dict[str, torch.Tensor]:
    return {k: v for k, v in parts["text"].items() if not k.startswith("visual.")}


# ------------------------------------------------------------------------------------------------------------
# every accepted format gives the same weights (§6.2 items 2-4, §20.3 item 5)
# ------------------------------------------------------------------------------------------------------------


def test_tiny_official_files_load_into_a_refiner_with_the_written_weights(reference, parts):
    assert reference.family == "ms_vid2vid" and reference.prediction == "v"
    assert reference.unet.cfg.resampler_geometry == "ms_vid2vid"
    assert reference.native_size == (20, 32)
    unet = reference.unet.state_dict()
    assert torch.equal(unet["conv_in.weight"], parts["unet"]["input_blocks.0.0.weight"])
    assert torch.equal(unet["transformer_in.proj_in.weight"], parts["unet"]["input_blocks.0.1.proj_in.weight"][..., 0])
    assert torch.equal(unet["down_blocks.0.temp_convs.0.conv1.2.weight"],
                       parts["unet"]["input_blocks.1.0.temopral_conv.conv1.2.weight"])
    text = reference.text_encoder.state_dict()
    assert reference.text_encoder.config.num_hidden_layers == 2  # 3 OpenCLIP blocks, penultimate layer
    assert torch.equal(text["text_model.encoder.layers.1.mlp.fc2.weight"],
                       parts["text"]["transformer.resblocks.1.mlp.c_proj.weight"])
    vae = reference.vae.state_dict()
    assert torch.equal(vae["decoder.up_blocks.0.upsamplers.0.conv.weight"], parts["vae"]["decoder.up.1.upsample.conv.weight"])
    assert reference.vae.config.block_out_channels == (32, 64)


def _unet_wrapped(d: Path, tiny, parts):
    path = d / "unet_wrapped.pth"
    torch.save({"state_dict": _with_config(parts["unet"]), "epoch": 7}, path)
    return path, tiny["text"], tiny["vae"]


def _unet_safetensors(d: Path, tiny, parts):
    path = d / "unet.safetensors"
    save_file(parts["unet"], str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return path, tiny["text"], tiny["vae"]


def _unet_module_prefix(d: Path, tiny, parts):
    path = d / "unet_module.safetensors"
    save_file({"module." + k: v for k, v in parts["unet"].items()}, str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return path, tiny["text"], tiny["vae"]


def _text_only_safetensors(d: Path, tiny, parts):
    path = d / "text.safetensors"
    save_file(_text_only(parts), str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return tiny["unet"], path, tiny["vae"]


def _text_only_without_last_block(d: Path, tiny, parts):
    path = d / "text_trimmed.safetensors"
    sd = {k: v for k, v in _text_only(parts).items() if not k.startswith("transformer.resblocks.2.")}
    save_file(sd, str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return tiny["unet"], path, tiny["vae"]


def _vae_bare_ldm(d: Path, tiny, parts):
    path = d / "vae_ldm.safetensors"
    save_file(parts["vae"], str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return tiny["unet"], tiny["text"], path


def _vae_first_stage_only(d: Path, tiny, parts):
    path = d / "vae_first_stage.safetensors"
    save_file({"first_stage_model." + k: v for k, v in parts["vae"].items()}, str(path),
              metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return tiny["unet"], tiny["text"], path


def _diffusers_vae(parts) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in ldm_vae_to_diffusers(parts["vae"]).items()}


def _vae_diffusers_safetensors(d: Path, tiny, parts):
    path = d / "vae_diffusers.safetensors"
    save_file(_diffusers_vae(parts), str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    return tiny["unet"], tiny["text"], path


def _vae_diffusers_legacy_bin(d: Path, tiny, parts):
    """An old diffusers VAE: legacy (non-zip) torch pickle, query/key/value/proj_attn, 1x1-conv shapes."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = OrderedDict()
    for key, value in _diffusers_vae(parts).items():
        m = re.fullmatch(r"(.+\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key)
        if m:
            key = f"{m.group(1)}{old[m.group(2)]}.{m.group(3)}"
            value = value[..., None, None] if m.group(3) == "weight" else value
        sd[key] = value
    setattr(sd, REFINER_CONFIG_KEY, TINY_JSON)
    path = d / "diffusion_pytorch_model.bin"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    return tiny["unet"], tiny["text"], path


def _vae_diffusers_folder(d: Path, tiny, parts):
    folder = d / "sd21_vae"
    folder.mkdir()
    save_file(_diffusers_vae(parts), str(folder / "diffusion_pytorch_model.safetensors"),
              metadata={REFINER_CONFIG_KEY: TINY_JSON})
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "block_out_channels": [32, 64]}))
    return tiny["unet"], tiny["text"], folder


FORMATS = {
    "unet .pth under state_dict": _unet_wrapped,
    "unet safetensors, official names": _unet_safetensors,
    "unet with a module. prefix": _unet_module_prefix,
    "text-only OpenCLIP safetensors": _text_only_safetensors,
    "text-only OpenCLIP without the unused last block": _text_only_without_last_block,
    "bare LDM VAE": _vae_bare_ldm,
    "first_stage_model.* only": _vae_first_stage_only,
    "diffusers-named VAE safetensors": _vae_diffusers_safetensors,
    "old diffusers VAE .bin (legacy pickle, old attention names)": _vae_diffusers_legacy_bin,
    "diffusers vae/ folder": _vae_diffusers_folder,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_accepted_format_gives_identical_weights(fmt, tiny, parts, reference, tmp_path):
    unet, text, vae = FORMATS[fmt](tmp_path, tiny, parts)
    _assert_same_weights(load_ms_vid2vid(unet, text, vae), reference)


def test_an_explicit_config_replaces_the_missing_architecture_record(tiny, parts, reference, tmp_path):
    path = tmp_path / "unet_plain.safetensors"
    save_file(parts["unet"], str(path))  # no metadata: would be read as full size
    _assert_same_weights(load_ms_vid2vid(path, tiny["text"], tiny["vae"], config=TINY_REFINER_CONFIG), reference)


def test_a_tiny_file_without_its_architecture_is_checked_as_full_size_and_refused(tiny, parts, tmp_path):
    path = tmp_path / "unet_plain.safetensors"
    save_file(parts["unet"], str(path))
    with pytest.raises(CheckpointLayoutError, match=r"shape mismatches.*\n(.*\n)*.*other configuration"):
        load_ms_vid2vid(path, tiny["text"], tiny["vae"])


def test_the_vae_is_read_from_a_pipeline_folder_given_as_vae_path(tiny, parts, reference, tmp_path):
    pipeline = tmp_path / "pipeline"
    (pipeline / "unet").mkdir(parents=True)
    _, _, vae_folder = _vae_diffusers_folder(tmp_path, tiny, parts)
    shutil.move(str(vae_folder), str(pipeline / "vae"))
    _assert_same_weights(load_ms_vid2vid(tiny["unet"], tiny["text"], pipeline), reference)


# ------------------------------------------------------------------------------------------------------------
# the converter (§6.3) and its file as the single input
# ------------------------------------------------------------------------------------------------------------


def test_converter_writes_the_three_parts_with_official_openclip_and_ldm_names(tiny, tmp_path):
    out = tmp_path / "refiner_fp16.safetensors"
    assert convert.main(["refiner", "--unet", str(tiny["unet"]), "--text", str(tiny["text"]), "--vae",
                         str(tiny["vae"]), str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert meta["format"] == PACK_FORMAT and meta["dtype"] == "float16"
    sources = json.loads(meta["sources"])
    assert sources["unet"]["file"] == tiny["unet"].name and sources["vae"]["bytes"] == tiny["vae"].stat().st_size
    assert RefinerConfig.from_json(meta[REFINER_CONFIG_KEY]) == TINY_REFINER_CONFIG
    assert dtypes == {torch.float16}
    assert sum(k.startswith("unet.") for k in keys) == 1480
    assert "unet.input_blocks.1.0.temopral_conv.conv1.2.weight" in keys
    text = [k for k in keys if k.startswith("text.")]
    assert "text.transformer.resblocks.1.attn.in_proj_weight" in text
    assert not [k for k in text if "resblocks.2." in k or "visual" in k or "projection" in k or "logit" in k]
    assert "vae.decoder.up.1.upsample.conv.weight" in keys and not any("first_stage_model" in k for k in keys)
    assert sum(k.startswith("vae.") for k in keys) == 124


def test_converted_file_alone_loads_the_same_weights_rounded_to_fp16(tiny, reference, tmp_path):
    out = tmp_path / "refiner_fp16.safetensors"
    sd, meta = convert.convert_refiner(tiny["unet"], tiny["text"], tiny["vae"])
    convert.write_refiner(sd, meta, out)
    model = load_ms_vid2vid(out)
    assert model.native_size == reference.native_size
    _assert_same_weights(model, reference, rounded_to=torch.float16)
    assert model.text_encoder.text_model.final_layer_norm.weight.dtype == torch.float32  # text and VAE stay fp32


def test_converter_round_trip_in_float32_is_exact(tiny, reference, tmp_path):
    out = tmp_path / "refiner_fp32.safetensors"
    sd, meta = convert.convert_refiner(tiny["unet"], tiny["text"], tiny["vae"], dtype=torch.float32)
    convert.write_refiner(sd, meta, out)
    _assert_same_weights(load_ms_vid2vid(out, out, out), reference)


def test_converter_refuses_values_that_overflow_fp16(tiny, parts, tmp_path):
    sd = dict(parts["unet"])
    sd["out.2.bias"] = torch.full_like(sd["out.2.bias"], 1e6)
    path = tmp_path / "unet_overflow.safetensors"
    save_file(sd, str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    with pytest.raises(convert.NonFiniteWeightsError, match="unet.out.2.bias"):
        convert.convert_refiner(path, tiny["text"], tiny["vae"])
    out = tmp_path / "never.safetensors"
    assert convert.main(["refiner", "--unet", str(path), "--text", str(tiny["text"]), "--vae", str(tiny["vae"]),
                         str(out)]) == 1
    assert not out.exists()


def test_converter_refuses_a_wrong_file_with_exit_code_1(tiny, tmp_path, capsys):
    out = tmp_path / "never.safetensors"
    assert convert.main(["refiner", "--unet", str(tiny["vae"]), "--text", str(tiny["text"]), "--vae",
                         str(tiny["vae"]), str(out)]) == 1
    assert "Stable Diffusion checkpoint" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------------------------------------
# wrong files (§6.2 items 1, 6)
# ------------------------------------------------------------------------------------------------------------


def test_stream_checkpoint_given_as_refiner_unet_is_named_as_such(tiny, tmp_path):
    stream, _ = write_tiny_default(tmp_path)
    with pytest.raises(CheckpointLayoutError, match="StreamingT2V stream-stage checkpoint.*not the MS-Vid2Vid-XL"):
        load_ms_vid2vid(stream, tiny["text"], tiny["vae"])


def test_vae_checkpoint_given_as_unet_says_where_it_belongs(tiny):
    with pytest.raises(CheckpointLayoutError, match=r"Stable Diffusion checkpoint.*pass it as vae_path") as info:
        load_ms_vid2vid(tiny["vae"], tiny["text"], tiny["vae"])
    assert "non_ema_0035000.pth (5.65 GB" in str(info.value)


def test_openclip_file_given_as_vae_says_where_it_belongs(tiny):
    with pytest.raises(CheckpointLayoutError, match="full OpenCLIP model.*pass it as text_path"):
        load_ms_vid2vid(tiny["unet"], tiny["text"], tiny["text"])


def test_missing_unet_keys_are_listed_first_20_with_the_count(tiny, parts, tmp_path):
    sd = dict(parts["unet"])
    dropped = [k for k in sd if k.startswith("output_blocks.")][:25]
    for key in dropped:
        del sd[key]
    path = tmp_path / "unet_incomplete.safetensors"
    save_file(sd, str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    with pytest.raises(CheckpointLayoutError) as info:
        load_ms_vid2vid(path, tiny["text"], tiny["vae"])
    message = str(info.value)
    assert "25 missing keys" in message and "first 20 of 25" in message
    assert dropped[0] in message and dropped[24] not in message


def test_a_full_openclip_model_without_its_last_block_is_another_architecture(tiny, parts, tmp_path):
    sd = _with_config({k: v for k, v in parts["text"].items() if not k.startswith("transformer.resblocks.2.")})
    path = tmp_path / "open_clip_short.bin"
    torch.save(sd, path)
    with pytest.raises(CheckpointLayoutError, match="has 2 residual blocks.*expected 3"):
        load_ms_vid2vid(tiny["unet"], path, tiny["vae"])


def test_a_truncated_pickle_is_reported_as_damaged(tiny, tmp_path):
    data = tiny["unet"].read_bytes()
    path = tmp_path / "non_ema_truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLayoutError, match="truncated|damaged"):
        load_ms_vid2vid(path, tiny["text"], tiny["vae"])


def test_a_truncated_safetensors_file_is_reported_as_truncated(tiny, parts, tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file(parts["unet"], str(path), metadata={REFINER_CONFIG_KEY: TINY_JSON})
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointLayoutError, match="truncated"):
        load_ms_vid2vid(path, tiny["text"], tiny["vae"])


def test_a_missing_file_names_the_three_downloads_their_sizes_and_the_mirror(tiny, tmp_path):
    with pytest.raises(MissingRefinerFilesError) as info:
        load_ms_vid2vid(tiny["unet"], tmp_path / "open_clip_pytorch_model.bin", tiny["vae"])
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for name, size in (("non_ema_0035000.pth", "5.65 GB"), ("open_clip_pytorch_model.bin", "3.94 GB"),
                       ("v2-1_512-ema-pruned.ckpt", "5.21 GB")):
        assert f"{name} ({size}" in message
    assert "ali-vilab/MS-Vid2Vid-XL" in message


def test_text_and_vae_may_be_omitted_only_for_the_converted_file(tiny):
    with pytest.raises(MissingRefinerFilesError, match="no refiner text encoder file was given"):
        load_ms_vid2vid(tiny["unet"])


@pytest.mark.parametrize("keys, kind", [
    (["input_blocks.0.0.weight", "out.2.bias"], "ms_unet"),
    (["base_model.conv_in.weight", "unet.controlnet_cond_embedding.conv_in.weight"], "stream"),
    (["unet.conv_in.weight", "controlnet.conv_in.weight"], "stream"),
    (["first_stage_model.encoder.conv_in.weight", "model.diffusion_model.out.2.bias"], "sd_checkpoint"),
    (["encoder.down.0.block.0.conv1.weight"], "ldm_vae"),
    (["encoder.down_blocks.0.resnets.0.conv1.weight"], "diffusers_vae"),
    (["visual.proj", "token_embedding.weight", "transformer.resblocks.0.ln_1.weight"], "openclip_full"),
    (["token_embedding.weight", "transformer.resblocks.0.ln_1.weight", "ln_final.bias"], "openclip_text"),
    (["text_model.final_layer_norm.weight"], "hf_clip_text"),
    (["conv_in.weight", "transformer_in.proj_in.weight", "down_blocks.0.temp_convs.0.conv1.0.weight"],
     "diffusers_unet3d"),
    (["conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.alpha"], "stream"),
    (["unet.input_blocks.0.0.weight", "text.ln_final.weight", "vae.quant_conv.weight"], "refiner_pack"),
])
def test_identify_names_what_a_file_holds(keys, kind):
    assert identify(keys) == kind


# ------------------------------------------------------------------------------------------------------------
# restricted unpickling (§6.2 item 5)
# ------------------------------------------------------------------------------------------------------------


def test_sd_style_checkpoint_names_lightning_numpy_and_codecs_globals(tiny):
    names = set(safe_pickle.globals_in_checkpoint(tiny["vae"]))
    assert {"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", "numpy.core.multiarray.scalar",
            "numpy.dtype", "_codecs.encode", "torch.IntStorage"} <= names


def test_weights_only_torch_load_alone_refuses_the_sd_style_checkpoint(tiny):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tiny["vae"], weights_only=True)


def test_safe_pickle_loads_the_sd_style_checkpoint_with_inert_stand_ins(tiny):
    obj = safe_pickle.load(tiny["vae"])
    (callback, state), = obj["callbacks"].items()
    assert callback is safe_pickle.LightningCallbackStandIn
    score = state["best_model_score"]
    assert isinstance(score, safe_pickle.NumpyScalarStandIn)
    assert isinstance(score.args[0], safe_pickle.NumpyDtypeStandIn) and score.args[0].args == ("f8", False, True)
    assert isinstance(state["current_score"], safe_pickle.NumpyScalarStandIn)  # numpy._core path (NumPy 2)
    assert state["fingerprint"] == b"\x00\x01sd21"
    assert obj["state_dict"]["model_ema.num_updates"].dtype == torch.int32


def test_safe_pickle_memory_maps_zip_checkpoints(tiny):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    obj = safe_pickle.load(tiny["vae"])
    assert str(tiny["vae"]) in maps.read_text()
    del obj


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_naming_os_system_is_refused_by_name_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsShell(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(safe_pickle.UnsafePickleError) as info:
        safe_pickle.load(path)
    assert info.value.names == [f"{os.system.__module__}.system"]
    assert f"{os.system.__module__}.system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_any_other_global_is_refused_by_name(tmp_path, zip_format):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": __import__("collections").defaultdict(list)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(safe_pickle.UnsafePickleError, match="collections.defaultdict"):
        safe_pickle.load(path)


def test_the_refiner_loader_refuses_an_unsafe_vae_pickle(tiny, tmp_path):
    path = tmp_path / "v2-1_evil.ckpt"
    torch.save({"state_dict": {"first_stage_model.encoder.conv_in.weight": torch.zeros(1)},
                "payload": _RunsShell(tmp_path / "executed")}, path)
    with pytest.raises(safe_pickle.UnsafePickleError):
        load_ms_vid2vid(tiny["unet"], tiny["text"], path)
    assert not (tmp_path / "executed").exists()


def test_no_module_unpickles_without_restriction():
    offenders = []
    unrestricted = re.compile(r"weights_only\s*=\s*False|\bpickle\.loads?\(|\.Unpickler\(|pickle_module\s*=")
    for path in sorted(CORE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if path.name == "tiny_refiner.py" and "pickle_module=" in line:
                continue  # the writer of the tiny files (torch.save), not a loader
            if unrestricted.search(line) or ("torch.load(" in line and "weights_only=True" not in line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_stand_in_pickler_writes_the_legacy_numpy_module_path(tmp_path):
    from streaming_core.tiny_refiner import LegacyNumpyFloat64

    path = tmp_path / "scalar.ckpt"
    save_with_stand_ins({"x": LegacyNumpyFloat64(1.5)}, path)
    assert "numpy.core.multiarray.scalar" in safe_pickle.globals_in_checkpoint(path)
    assert safe_pickle.load(path)["x"].args[1] == struct.pack("<d", 1.5)  # kept as bytes, NumPy never called


# ------------------------------------------------------------------------------------------------------------
# name maps (§20.3 item 4)
# ------------------------------------------------------------------------------------------------------------


def test_openclip_in_proj_rows_split_into_q_k_v_in_that_order():
    w = 4
    sd = {"token_embedding.weight": torch.zeros(10, w), "positional_embedding": torch.zeros(77, w),
          "ln_final.weight": torch.ones(w), "ln_final.bias": torch.zeros(w)}
    block = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,),
             "ln_2.weight": (w,), "ln_2.bias": (w,), "mlp.c_fc.weight": (4 * w, w), "mlp.c_fc.bias": (4 * w,),
             "mlp.c_proj.weight": (w, 4 * w), "mlp.c_proj.bias": (w,)}
    sd.update({f"transformer.resblocks.0.{k}": torch.zeros(s) for k, s in block.items()})
    sd["transformer.resblocks.0.attn.in_proj_weight"] = torch.arange(3 * w * w, dtype=torch.float32).view(3 * w, w)
    sd["transformer.resblocks.0.attn.in_proj_bias"] = torch.arange(3 * w, dtype=torch.float32)
    hf = openclip_text_to_hf(sd, 1)
    prefix = "text_model.encoder.layers.0.self_attn."
    for i, name in enumerate("qkv"):
        assert torch.equal(hf[f"{prefix}{name}_proj.weight"], sd["transformer.resblocks.0.attn.in_proj_weight"][i * w:(i + 1) * w])
        assert torch.equal(hf[f"{prefix}{name}_proj.bias"], torch.arange(i * w, (i + 1) * w, dtype=torch.float32))


def test_loaded_text_encoder_q_k_v_are_the_in_proj_row_blocks(reference, parts):
    w = 32
    in_proj = parts["text"]["transformer.resblocks.0.attn.in_proj_weight"]
    sd = reference.text_encoder.state_dict()
    for i, name in enumerate("qkv"):
        assert torch.equal(sd[f"text_model.encoder.layers.0.self_attn.{name}_proj.weight"], in_proj[i * w:(i + 1) * w])


def test_ldm_vae_map_round_trips_on_the_full_size_key_list():
    with torch.device("meta"):
        diffusers = Vae(VaeConfig()).state_dict()
    ldm = diffusers_vae_to_ldm(diffusers)
    assert len(ldm) == 248
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert ldm["decoder.up.3.upsample.conv.weight"].shape == diffusers["decoder.up_blocks.0.upsamplers.0.conv.weight"].shape
    assert ldm["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    back = ldm_vae_to_diffusers(ldm)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in diffusers.items()}
    prefixed = ldm_vae_to_diffusers({"first_stage_model." + k: v for k, v in ldm.items()})
    assert prefixed.keys() == diffusers.keys()


# ------------------------------------------------------------------------------------------------------------
# the model bundle (§4.1, §16.1)
# ------------------------------------------------------------------------------------------------------------


def test_ms_vid2vid_caption_appends_comma_space_and_encodes_77_tokens(reference):
    assert reference.caption("A cat running on the beach") == "A cat running on the beach, "
    ids = reference.tokenizer(["A cat running on the beach, "])[0, :10].tolist()
    assert ids == [49406, 320, 2368, 2761, 525, 518, 2117, 267, 49407, 0]
    features = reference.encode_text([reference.caption("a cat"), ""])
    assert features.shape == (2, 77, 32) and features.dtype == torch.float32


def test_ms_vid2vid_family_defaults_and_table(reference):
    d = reference.defaults
    assert (d.strength, d.cfg, d.rescale, d.start_quirk, d.chunk_size, d.overlap) == (0.6, 7.5, 0.2, True, 24, 8)
    assert torch.equal(reference.table.sigmas, NoiseTable.logsnr_cosine_interp().sigmas)


def test_the_ms_vid2vid_tokenizer_keeps_exclamation_marks_as_bpe_tokens(reference):
    assert reference.tokenizer(["wow!"])[0, 2].item() != 0  # open_clip.tokenize: plain BPE, no pad-token split


# ------------------------------------------------------------------------------------------------------------
# diffusers UNet3D family (§16)
# ------------------------------------------------------------------------------------------------------------


def test_tiny_diffusers_folder_loads_as_the_diffusers_family(tiny):
    model = load_diffusers_refiner(tiny["diffusers_folder"])
    assert model.family == "diffusers_t2v" and model.prediction == "epsilon"
    assert model.unet.cfg.resampler_geometry == "modelscope_t2v"
    assert model.native_size == (16, 32)
    assert model.caption("a cat") == "a cat"
    d = model.defaults
    assert (d.strength, d.cfg, d.rescale, d.start_quirk) == (0.75, 9.0, 0.0, False)
    assert torch.equal(model.table.sigmas, NoiseTable.from_betas(0.00085, 0.012, "scaled_linear").sigmas)
    with safe_open(str(tiny["diffusers_folder"] / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert torch.equal(model.unet.state_dict()["conv_in.weight"], f.get_tensor("conv_in.weight"))


def _copy_folder(tiny, tmp_path) -> Path:
    folder = tmp_path / "t2v"
    shutil.copytree(tiny["diffusers_folder"], folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_v_prediction_is_read_from_the_scheduler_config(tiny, tmp_path):
    folder = _copy_folder(tiny, tmp_path)
    _edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    assert load_diffusers_refiner(folder).prediction == "v"


@pytest.mark.parametrize("change", [{"downsample_padding": 2}, {"_streamingt2v_tiny": False},
                                    {"down_block_types": ["CrossAttnDownBlock3D"] * 4}])
def test_a_unet_config_other_than_modelscope_is_an_unsupported_variant(tiny, tmp_path, change):
    folder = _copy_folder(tiny, tmp_path)
    _edit_json(folder / "unet" / "config.json", **change)
    with pytest.raises(CheckpointLayoutError, match="unsupported UNet3D variant"):
        load_diffusers_refiner(folder)


def test_known_model_names_set_the_native_size(tiny, tmp_path):
    folder = tmp_path / "cerspense" / "zeroscope_v2_XL"
    shutil.copytree(tiny["diffusers_folder"], folder)
    data = json.loads((folder / "unet" / "config.json").read_text())
    del data["_streamingt2v_native_size"]
    (folder / "unet" / "config.json").write_text(json.dumps(data))
    assert load_diffusers_refiner(folder).native_size == (576, 1024)


def test_a_missing_scheduler_config_is_named(tiny, tmp_path):
    folder = _copy_folder(tiny, tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointLayoutError, match="scheduler_config.json"):
        load_diffusers_refiner(folder)


def test_the_stream_stage_tiny_vanilla_unet_is_a_member_of_the_family(tmp_path):
    """§16.1 / §20.3 item 8: a folder made of the stream stage's tiny model files loads (its UNet carries its
    architecture in the stream stage's metadata entry)."""
    from streaming_core.config import tiny_default
    from safetensors.torch import load_file

    stream, base = write_tiny_default(tmp_path / "models")
    cfg = tiny_default()
    folder = tmp_path / "modelscope_tiny"
    for sub in ("unet", "text_encoder", "vae", "scheduler"):
        (folder / sub).mkdir(parents=True)
    shutil.copy(base, folder / "unet" / "diffusion_pytorch_model.safetensors")
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    sd = load_file(str(stream))
    save_file({k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")},
              str(folder / "text_encoder" / "model.safetensors"))
    te = cfg.text_encoder
    (folder / "text_encoder" / "config.json").write_text(json.dumps({
        "hidden_size": te.hidden_size, "intermediate_size": te.intermediate_size,
        "num_hidden_layers": te.num_hidden_layers, "num_attention_heads": te.num_attention_heads,
        "hidden_act": te.hidden_act}))
    save_file({k[len("vae."):]: v for k, v in sd.items() if k.startswith("vae.")},
              str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    (folder / "vae" / "config.json").write_text(json.dumps({
        "block_out_channels": list(cfg.vae.block_out_channels), "layers_per_block": cfg.vae.layers_per_block}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}))
    model = load_diffusers_refiner(folder)
    assert model.unet.cfg == cfg.unet
    x = torch.randn(1, 4, 2, 8, 8)
    assert model.unet(x, torch.tensor([10]), model.encode_text(["a cat"])).shape == x.shape


def test_the_tiny_diffusers_folder_is_a_real_diffusers_pipeline_folder_computing_the_same(tiny):
    """The folder loads in diffusers / transformers themselves, and the pack's modules built from it compute
    what they compute (guards the writer's configs, e.g. diffusers' 8-head first temporal transformer)."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    folder = tiny["diffusers_folder"]
    unet = diffusers.UNet3DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    text = transformers.CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    model = load_diffusers_refiner(folder)
    ids = model.tokenizer(["a cat running on the beach"])
    x = torch.randn(1, 4, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        context = text(ids).last_hidden_state
        assert torch.allclose(model.encode_text(["a cat running on the beach"]), context, atol=1e-5)
        expected = unet(x, torch.tensor([500]), context).sample
        assert torch.allclose(model.unet(x, torch.tensor([500]), context), expected, atol=1e-4)


def test_full_size_architecture_is_the_released_one():
    """Files without an architecture record are checked against the released sizes (§3.1, §4.2, §5.1)."""
    from streaming_core.openclip_names import text_config_from_openclip
    from streaming_core.refiner_files import refiner_unet_config, refiner_vae_config
    from streaming_core.refiner_names import official_unet_config
    from streaming_core.text_encoder import ClipTextEncoder

    full = RefinerConfig()
    assert refiner_unet_config(full) == official_unet_config({})
    assert (full.native_height, full.native_width) == (720, 1280)
    with torch.device("meta"):
        text = ClipTextEncoder(text_config_from_openclip(full.text, full.text_layers_used))
        vae = Vae(refiner_vae_config(full))
    assert full.text_layers_used == 23
    assert sum(p.numel() for p in text.parameters()) == 340_387_840
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_tiny_writer_is_deterministic_for_a_seed_and_small(tiny, parts):
    again = tiny_official_state_dicts(seed=0)
    other = tiny_official_state_dicts(seed=1)
    for part in ("unet", "text", "vae"):
        assert all(torch.equal(again[part][k], v) for k, v in parts[part].items()), part
    assert not torch.equal(other["unet"]["out.2.weight"], parts["unet"]["out.2.weight"])
    sizes = {key: sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
             else path.stat().st_size for key, path in tiny.items()}
    assert set(sizes) == {"unet", "text", "vae", "diffusers_folder"}
    assert all(size < 20e6 for size in sizes.values()), sizes


def test_the_golden_sets_files_from_the_official_code_load_through_the_component_loaders():
    """refiner_tiny_v1 was written by the official code: its UNet (official names, context 1024), SD-style VAE
    (first_stage_model.*) and OpenCLIP text tower load strictly with the architecture of its config.json."""
    from streaming_core.refiner_files import load_refiner_text_encoder, load_refiner_unet, load_refiner_vae

    golden = Path(__file__).parent / "reference" / "refiner_tiny_v1"
    cfg = json.loads((golden / "config.json").read_text())
    arch = RefinerConfig(unet=cfg["unet_tiny"], text=cfg["aux"]["openclip_text_cfg"],
                         vae_ddconfig=cfg["aux"]["vae_ldm_ddconfig"], vae_embed_dim=cfg["aux"]["vae_embed_dim"])
    unet = load_refiner_unet(golden / "weights.safetensors", config=arch)
    with safe_open(str(golden / "weights.safetensors"), "pt") as f:
        assert torch.equal(unet.state_dict()["conv_out.weight"], f.get_tensor("out.2.weight"))
    text = load_refiner_text_encoder(golden / "openclip_text_weights.safetensors", config=arch)
    assert text.config.num_hidden_layers == cfg["aux"]["openclip_text_cfg"]["layers"] - 1
    vae = load_refiner_vae(golden / "vae_weights.safetensors", config=arch)
    with safe_open(str(golden / "vae_weights.safetensors"), "pt") as f:
        assert torch.equal(vae.state_dict()["decoder.up_blocks.1.resnets.0.conv1.weight"],
                           f.get_tensor("first_stage_model.decoder.up.0.block.0.conv1.weight"))


def test_safe_pickle_ignores_real_classes_other_code_registered_and_restores_them(tiny):
    class ModelCheckpoint:  # what ComfyUI registers for its own Lightning loads: a real, importable class
        pass

    name = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    before = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals([(ModelCheckpoint, name)])
    try:
        obj = safe_pickle.load(tiny["vae"])
        (callback, _), = obj["callbacks"].items()
        assert callback is safe_pickle.LightningCallbackStandIn
        assert (ModelCheckpoint, name) in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
