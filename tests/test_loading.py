"""Checkpoint reading layer: containers, layouts, legacy variants, strict check, converter.

Specification: stream_stage.md §13.2-§13.5 (weights, loader requirements, VidXTend prefixes, fp16 converter),
§16 (strict load after logged normalisation), §17 item 7 (tiny files in each format through one code path).
The tiny state dict is tests/reference/tiny_v1/weights.safetensors (resampler., unet., base_model.) plus small
fake text_encoder / vae / image_encoder tensors with official names.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from streaming_core import convert
from streaming_core.loading import (
    UNUSED_IMAGE_ENCODER_KEYS,
    CheckpointLayoutError,
    cast_state_dict,
    check_strict,
    detect_layout,
    fill_unused,
    load_into,
    normalize_legacy,
    read_image_encoder,
    read_manifest,
    read_normalized,
    read_state_dict,
    split_components,
    to_official_names,
)

REFERENCE = Path(__file__).parent / "reference"
TINY_WEIGHTS = REFERENCE / "tiny_v1" / "weights.safetensors"
MANIFEST = REFERENCE / "official_keys.tsv"
STREAMING_ONLY = re.compile(r"cross_attention_merger_|\.attn2\.(alpha|conv\.|conv_ln\.)")


def _fake_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "text_encoder.text_model.embeddings.token_embedding.weight": (10, 8),
        "text_encoder.text_model.embeddings.position_embedding.weight": (77, 8),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
        "text_encoder.text_model.final_layer_norm.weight": (8,),
        "vae.encoder.conv_in.weight": (8, 3, 3, 3),
        "vae.decoder.conv_out.weight": (3, 8, 3, 3),
        "image_encoder.model.visual.conv1.weight": (8, 3, 4, 4),
        "image_encoder.model.visual.proj": (8, 8),
        "image_encoder.model.token_embedding.weight": (10, 8),
        "image_encoder.model.positional_embedding": (77, 8),
        "image_encoder.model.ln_final.weight": (8,),
        "image_encoder.model.ln_final.bias": (8,),
        "image_encoder.model.text_projection": (8, 8),
        "image_encoder.model.logit_scale": (),
    }
    for side in ("encoder", "decoder"):
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[f"vae.{side}.mid_block.attentions.0.{name}.weight"] = (8, 8)
            shapes[f"vae.{side}.mid_block.attentions.0.{name}.bias"] = (8,)
    return shapes


@pytest.fixture(scope="session")
def tiny_official() -> dict[str, torch.Tensor]:
    """All six official components: the tiny reference weights plus small fake encoders and VAE (fp16)."""
    sd = load_file(str(TINY_WEIGHTS))
    g = torch.Generator().manual_seed(0)
    for name, shape in _fake_shapes().items():
        sd[name] = torch.randn(shape, generator=g).to(torch.float16)
    return sd


@pytest.fixture()
def sd(tiny_official) -> dict[str, torch.Tensor]:
    return dict(tiny_official)


@pytest.fixture()
def small(tiny_official) -> dict[str, torch.Tensor]:
    """A few dozen tensors of every component, for tests about one behaviour of the converter."""
    keep = ("resampler.", "text_encoder.", "vae.", "image_encoder.", "unet.conv_in.", "unet.controlnet_cond_embedding.",
            "base_model.conv_in.", "base_model.conv_out.", "base_model.cross_attention_merger_mid_block.")
    return {k: v for k, v in tiny_official.items() if k.startswith(keep)}


@pytest.fixture(scope="session")
def expected(tiny_official) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tiny_official.items()}


def _to_vidxtend(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rename = {"base_model": "unet", "unet": "controlnet"}
    out = {}
    for key, value in sd.items():
        top, _, rest = key.partition(".")
        out[f"{rename.get(top, top)}.{rest}"] = value
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key].to(b[key].dtype), b[key]), key


# --------------------------------------------------------------------------------------------------------------
# Containers (§13.3 items 1-2)
# --------------------------------------------------------------------------------------------------------------


def test_official_ckpt_with_state_dict_wrapper_loads_and_passes_the_strict_check(tmp_path, sd, expected):
    """§13.3 item 1(a): zip-pickle dict with "state_dict" (optimizer state next to it is ignored)."""
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save({"state_dict": sd, "optimizer_states": [{"step": 3}], "epoch": 7}, path)
    loaded, info, layout = read_normalized(path)
    assert (info.container, layout) == ("torch_zip", "official")
    assert info.size == path.stat().st_size
    check_strict(loaded, expected, source=str(path), layout=layout)
    _assert_same(loaded, sd)


def test_bare_state_dict_ckpt_is_treated_as_the_state_dict(tmp_path, sd, expected):
    """§13.3 table, last row: the "state_dict" wrapper may be absent."""
    path = tmp_path / "bare.ckpt"
    torch.save(sd, path)
    loaded, info, layout = read_normalized(path)
    assert (info.container, layout) == ("torch_zip", "official")
    check_strict(loaded, expected, source=path.name, layout=layout)


def test_safetensors_with_official_names_loads_and_keeps_its_metadata(tmp_path, sd, expected):
    """§13.3 item 1(b); FileInfo.metadata carries the tiny models' streamingt2v_config entry."""
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path), metadata={"streamingt2v_config": '{"name": "tiny"}'})
    loaded, info, layout = read_normalized(path)
    assert (info.container, layout) == ("safetensors", "official")
    assert info.metadata["streamingt2v_config"] == '{"name": "tiny"}'
    check_strict(loaded, expected, source=path.name, layout=layout)
    _assert_same(loaded, sd)


def test_format_is_detected_by_content_not_by_file_name(tmp_path, small):
    """§13.3 item 1: a safetensors file named .ckpt and a torch file named .safetensors both load."""
    sd = small
    fake_ckpt = tmp_path / "really_safetensors.ckpt"
    fake_st = tmp_path / "really_torch.safetensors"
    save_file(sd, str(fake_ckpt))
    torch.save({"state_dict": sd}, fake_st)
    assert read_state_dict(fake_ckpt)[1].container == "safetensors"
    loaded, info = read_state_dict(fake_st)
    assert info.container == "torch_zip"
    _assert_same(loaded, sd)


def test_legacy_non_zip_checkpoint_loads_with_a_warning_about_ram(tmp_path, sd, caplog):
    """§13.3 item 2: a legacy pickle cannot be memory-mapped; warn that the whole file is read into RAM."""
    small = {k: v for k, v in sd.items() if not k.startswith(("unet.", "base_model."))}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": small}, path, _use_new_zipfile_serialization=False)
    with caplog.at_level(logging.WARNING, logger="streaming_core"):
        loaded, info = read_state_dict(path)
    assert info.container == "torch_legacy"
    _assert_same(loaded, small)
    assert any("RAM" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def _record_execution(marker: str) -> None:
    Path(marker).write_text("executed")


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_record_execution, (self.marker,))


def test_pickle_with_a_disallowed_global_is_refused_by_name_without_running_it(tmp_path, sd):
    """§13.3 item 2: weights_only=True only; the error names the rejected global; nothing is executed."""
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"resampler.x": torch.zeros(2)}, "payload": _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointLayoutError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert "_record_execution" in message
    assert "evil.ckpt" in message
    assert "weights_only=False" not in message
    assert not marker.exists()


def test_legacy_checkpoint_with_a_disallowed_global_is_refused_by_name_too(tmp_path):
    """§13.3 item 2: the non-zip path uses the same safe unpickler and the same message."""
    marker = tmp_path / "executed.txt"
    path = tmp_path / "old_evil.ckpt"
    torch.save({"payload": _Exploit(str(marker))}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointLayoutError, match="_record_execution"):
        read_state_dict(path)
    assert not marker.exists()


def test_plain_python_pickle_is_not_unpickled_at_all(tmp_path):
    """§13.3 item 2: a pickle not written by torch.save is refused before any unpickling."""
    import pickle

    marker = tmp_path / "executed.txt"
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"payload": _Exploit(str(marker))}, protocol=4))
    with pytest.raises(CheckpointLayoutError, match="plain Python pickle, not written by torch.save"):
        read_state_dict(path)
    assert not marker.exists()


def test_checkpoint_holding_a_non_tensor_object_is_refused_as_not_a_state_dict(tmp_path):
    """§13.3 item 1: collections.Counter passes torch's safe unpickler but is not a dict of tensors."""
    from collections import Counter

    path = tmp_path / "counter.ckpt"
    torch.save({"weights": Counter("abc"), "resampler.x": torch.zeros(2)}, path)
    with pytest.raises(CheckpointLayoutError, match=r"not a dict of tensors.*'weights' \(Counter\)"):
        read_state_dict(path)


def test_text_file_gives_a_clear_error_saying_it_is_text(tmp_path):
    """§13.3 item 1: otherwise a clear error saying what the file looks like."""
    path = tmp_path / "streaming_t2v.ckpt"
    path.write_text("hello, these are not weights\n")
    with pytest.raises(CheckpointLayoutError, match=r"text file starting with 'hello, these are not"):
        read_state_dict(path)


def test_git_lfs_pointer_is_recognised(tmp_path):
    """§16 (unclear file layout / broken downloads): say the file is an LFS pointer."""
    path = tmp_path / "vidxtend.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10200000000\n")
    with pytest.raises(CheckpointLayoutError, match="Git LFS pointer"):
        read_state_dict(path)


def test_truncated_safetensors_file_is_reported_as_truncated(tmp_path, sd):
    """§16: an interrupted download is named as such instead of failing deep inside safetensors."""
    path = tmp_path / "cut.safetensors"
    save_file({k: sd[k] for k in list(sd)[:10]}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointLayoutError, match="truncated"):
        read_state_dict(path)


def test_missing_path_raises_file_not_found(tmp_path):
    """§16: missing files are named."""
    with pytest.raises(FileNotFoundError, match="nothere.ckpt"):
        read_state_dict(tmp_path / "nothere.ckpt")


# --------------------------------------------------------------------------------------------------------------
# Diffusers folders and the vanilla UNet (§13.3 item 1(d))
# --------------------------------------------------------------------------------------------------------------


def _vanilla_unet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k[len("base_model."):]: v
        for k, v in sd.items()
        if k.startswith("base_model.") and not STREAMING_ONLY.search(k)
    }


def test_diffusers_pipeline_folder_with_unet_subfolder_is_the_modelscope_folder_unet(tmp_path, sd):
    """§13.3 item 1(d): `unet/diffusion_pytorch_model.safetensors` inside a folder, bare diffusers names."""
    unet = _vanilla_unet(sd)
    (tmp_path / "unet").mkdir()
    save_file(unet, str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded, info = read_state_dict(tmp_path)
    assert info.container == "diffusers_folder"
    assert detect_layout(loaded, container=info.container) == "modelscope_folder_unet"
    _assert_same(to_official_names(loaded, "modelscope_folder_unet"), unet)


def test_single_vanilla_unet_file_is_the_diffusers_unet_layout(tmp_path, sd):
    """§13.3 item 1(d): diffusers names without prefix in a plain file."""
    path = tmp_path / "diffusion_pytorch_model.fp16.safetensors"
    save_file(_vanilla_unet(sd), str(path))
    loaded, info, layout = read_normalized(path)
    assert layout == "diffusers_unet"


def test_sharded_diffusers_folder_is_read_through_its_index(tmp_path, sd):
    """§13.3 item 1(d): `diffusion_pytorch_model.safetensors.index.json` with two shards."""
    unet = _vanilla_unet(sd)
    keys = sorted(unet)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: unet[k] for k in shard_keys}, str(tmp_path / name))
        weight_map.update({k: name for k in shard_keys})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    loaded, info = read_state_dict(tmp_path)
    assert info.container == "diffusers_folder"
    assert len(info.files) == 2
    _assert_same(loaded, unet)


def test_sharded_index_with_a_missing_shard_names_it(tmp_path, sd):
    """§16: an error that lists exactly which files are missing."""
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"conv_in.weight": "diffusion_pytorch_model-00001-of-00001.safetensors"}})
    )
    with pytest.raises(CheckpointLayoutError, match="00001-of-00001.safetensors"):
        read_state_dict(tmp_path)


def test_folder_without_diffusers_files_lists_what_it_contains(tmp_path):
    """§16: a folder that holds no UNet file is reported with its content."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointLayoutError, match=r"not a diffusers UNet folder.*notes\.txt"):
        read_state_dict(tmp_path)


def test_vidxtend_unet_folder_file_maps_to_base_model(tmp_path, sd):
    """§13.4: VidXTend's unet/diffusion_pytorch_model.safetensors is base_model.* (injectors + APM) unprefixed."""
    base = {k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")}
    (tmp_path / "unet").mkdir()
    save_file(base, str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded, info, layout = read_normalized(tmp_path)
    assert layout == "vidxtend_unet"
    _assert_same(loaded, {k: v for k, v in sd.items() if k.startswith("base_model.")})


# --------------------------------------------------------------------------------------------------------------
# Layouts and VidXTend prefixes (§13.3 items 1 and 4, §13.4)
# --------------------------------------------------------------------------------------------------------------


def test_vidxtend_safetensors_maps_unet_to_base_model_and_controlnet_to_unet(tmp_path, sd, expected):
    """§13.4: unet. -> base_model., controlnet. -> unet., other prefixes unchanged."""
    path = tmp_path / "vidxtend.safetensors"
    save_file(_to_vidxtend(sd), str(path))
    loaded, info, layout = read_normalized(path)
    assert layout == "vidxtend"
    check_strict(loaded, expected, source=path.name, layout=layout)
    _assert_same(loaded, sd)


def test_vidxtend_without_controlnet_is_still_recognised_by_unet_up_blocks(sd):
    """§13.4: unet.* with up_blocks is the base UNet (official unet.* is the CAM without an up-path)."""
    base_only = {"unet." + k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")}
    assert detect_layout(base_only) == "vidxtend"
    cam_only = {k: v for k, v in sd.items() if k.startswith("unet.")}
    assert detect_layout(cam_only) == "official"


def test_full_size_vidxtend_names_match_the_manifest_after_mapping():
    """§13.4 on the full 3407-key manifest (meta tensors): VidXTend without image_encoder maps exactly."""
    full = read_manifest(MANIFEST)
    assert len(full) == 3407
    vid = _to_vidxtend({k: torch.empty(s, device="meta") for k, s in full.items()
                        if not k.startswith("image_encoder.")})
    layout = detect_layout(vid)
    assert layout == "vidxtend"
    official = to_official_names(vid, layout)
    check_strict(official, full, source="vidxtend.safetensors", layout=layout, optional_prefixes=("image_encoder.",))
    with pytest.raises(CheckpointLayoutError, match="open_clip_pytorch_model.bin as image_encoder_path"):
        check_strict(official, full, source="vidxtend.safetensors", layout=layout)


def test_streamingsvd_checkpoint_is_not_the_modelscope_streamingt2v_checkpoint(tmp_path):
    """§13.3 item 4 and §16 (StreamingSVD #61/#62): conditioner.* keys are a wrong-model error."""
    path = tmp_path / "streaming_svd.safetensors"
    save_file({
        "conditioner.embedders.0.open_clip.model.ln_final.weight": torch.zeros(4),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3),
    }, str(path))
    with pytest.raises(CheckpointLayoutError) as err:
        read_normalized(path)
    message = str(err.value)
    assert "this is not the ModelScope StreamingT2V checkpoint" in message
    assert "StreamingSVD" in message
    assert "conditioner. (1)" in message
    assert "streaming_svd.safetensors" in message


def test_controlnet_down_blocks_in_unet_are_a_wrong_model_error(sd):
    """§13.3 item 4: unet.controlnet_down_blocks.* does not exist in the ModelScope StreamingT2V CAM."""
    sd["unet.controlnet_down_blocks.0.weight"] = torch.zeros(4, 4, 1, 1)
    with pytest.raises(CheckpointLayoutError, match=r"not the ModelScope StreamingT2V checkpoint.*controlnet_down"):
        detect_layout(sd)


def test_stable_diffusion_checkpoint_is_a_wrong_model_error():
    """§13.3 item 4: model.diffusion_model.* is an LDM / SD checkpoint."""
    keys = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight"]
    with pytest.raises(CheckpointLayoutError, match=r"not the ModelScope StreamingT2V checkpoint.*Stable Diffusion"):
        detect_layout(keys)


def test_unknown_prefixes_are_a_wrong_model_error_listing_them():
    """§13.3 item 4: anything else unexpected names what was found."""
    with pytest.raises(CheckpointLayoutError, match=r"unknown top-level prefixes transformer\. \(2\)"):
        detect_layout(["transformer.a.weight", "transformer.b.weight", "vae.x"])


def test_mixing_official_and_vidxtend_prefixes_is_refused(sd):
    """§13.4: base_model.* and controlnet.* cannot both be present."""
    sd["controlnet.conv_in.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointLayoutError, match="mixes the official layout"):
        detect_layout(sd)


def test_two_dimensional_unet_is_not_taken_for_the_modelscope_unet():
    """§13.3 item 1(d): bare names without temporal layers are an image UNet."""
    keys = ["conv_in.weight", "down_blocks.0.attentions.0.proj_in.weight", "up_blocks.0.resnets.0.conv1.weight"]
    with pytest.raises(CheckpointLayoutError, match="2D image UNet"):
        detect_layout(keys)


# --------------------------------------------------------------------------------------------------------------
# Tolerated legacy variants (§13.3 table)
# --------------------------------------------------------------------------------------------------------------


def test_text_encoder_position_ids_buffer_is_dropped_and_logged(sd, caplog):
    """§13.3 table row 1: transformers < 4.31 stored embeddings.position_ids; drop it, log at INFO."""
    sd["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    with caplog.at_level(logging.INFO, logger="streaming_core"):
        out, applied = normalize_legacy(sd)
    assert "text_encoder.text_model.embeddings.position_ids" not in out
    assert len(applied) == 1 and "position_ids" in applied[0]
    assert any("position_ids" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_old_vae_attention_names_are_renamed_and_conv_weights_squeezed(sd, caplog):
    """§13.3 table row 2: query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0, (C, C, 1, 1) -> (C, C)."""
    old = dict(sd)
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for side in ("encoder", "decoder"):
        for new, legacy in names.items():
            base = f"vae.{side}.mid_block.attentions.0."
            old[base + legacy + ".weight"] = old.pop(base + new + ".weight").reshape(8, 8, 1, 1)
            old[base + legacy + ".bias"] = old.pop(base + new + ".bias")
    with caplog.at_level(logging.INFO, logger="streaming_core"):
        out, applied = normalize_legacy(old)
    _assert_same(out, sd)
    assert any("renamed 16 old VAE" in a for a in applied)
    assert any("squeezed 8" in a for a in applied)
    assert sum("VAE" in r.getMessage() for r in caplog.records) == 2


def test_open_clip_text_tower_inside_the_image_encoder_is_dropped(sd):
    """§13.3 table row 4: image_encoder.model.transformer.* is dropped."""
    sd["image_encoder.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(24, 8)
    sd["image_encoder.model.transformer.resblocks.0.ln_1.weight"] = torch.zeros(8)
    out, applied = normalize_legacy(sd)
    assert not any(k.startswith("image_encoder.model.transformer.") for k in out)
    assert applied == ["dropped 2 image_encoder.model.transformer.* tensors (OpenCLIP text tower)"]


def test_checkpoint_with_every_legacy_variant_loads_strictly_through_the_same_path(tmp_path, sd, expected):
    """§13.3 item 3 and §17 item 7: all variants in one zip checkpoint; after normalisation the check passes."""
    legacy = dict(sd)
    legacy["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    legacy["image_encoder.model.transformer.resblocks.0.ln_1.weight"] = torch.zeros(8)
    base = "vae.decoder.mid_block.attentions.0."
    legacy[base + "query.weight"] = legacy.pop(base + "to_q.weight").reshape(8, 8, 1, 1)
    for key in UNUSED_IMAGE_ENCODER_KEYS:
        legacy.pop(key)
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": legacy}, path)
    loaded, _, layout = read_normalized(path)
    check_strict(loaded, expected, source=path.name, layout=layout)


def test_image_encoder_text_leftovers_may_be_absent_and_are_filled_for_the_module(sd, expected, caplog):
    """§13.3 table row 3: token_embedding, positional_embedding, ln_final, text_projection, logit_scale unused."""
    for key in UNUSED_IMAGE_ENCODER_KEYS:
        sd.pop(key)
    check_strict(sd, expected, source="x.safetensors", layout="official")
    with caplog.at_level(logging.INFO, logger="streaming_core"):
        filled = fill_unused(sd, expected)
    assert set(filled) == set(expected)
    assert filled["image_encoder.model.positional_embedding"].shape == (77, 8)
    assert not filled["image_encoder.model.logit_scale"].any()
    assert any("filled 6" in r.getMessage() for r in caplog.records)


def test_image_encoder_text_leftovers_may_be_present_when_the_module_lacks_them(sd, expected):
    """§13.3 table row 3: present leftovers are accepted and dropped for a module without them."""
    without = {k: v for k, v in expected.items() if k not in UNUSED_IMAGE_ENCODER_KEYS}
    check_strict(sd, without, source="x.safetensors", layout="official")
    assert set(fill_unused(sd, without)) == set(without)


def test_separate_open_clip_file_supplies_the_image_encoder(tmp_path, sd, expected):
    """§13.3 table row 5: the OpenCLIP ViT-H-14 file (visual.*, text tower dropped) fills image_encoder.*."""
    clip = {k[len("image_encoder.model."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    clip["transformer.resblocks.0.ln_1.weight"] = torch.zeros(8)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip, path)
    encoder = read_image_encoder(path)
    rest = {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}
    check_strict({**rest, **encoder}, expected, source="vidxtend.safetensors", layout="vidxtend")


def test_file_without_visual_tensors_is_not_accepted_as_image_encoder(tmp_path):
    """§13.3 table row 5: the separate file must be the open_clip layout."""
    path = tmp_path / "clip.safetensors"
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2)}, str(path))
    with pytest.raises(CheckpointLayoutError, match="transformers CLIPVisionModel"):
        read_image_encoder(path)


# --------------------------------------------------------------------------------------------------------------
# Strict check messages (§13.3 item 3)
# --------------------------------------------------------------------------------------------------------------


def test_missing_keys_are_listed_by_group_first_20_with_the_total_count(sd, expected):
    """§13.3 item 3: missing keys, grouped by prefix, first 20 + count, naming the file and layout."""
    removed = sorted(k for k in sd if k.startswith("base_model.down_blocks.0."))[:25]
    for key in removed:
        del sd[key]
    with pytest.raises(CheckpointLayoutError) as err:
        check_strict(sd, expected, source="`weights.safetensors` (safetensors)", layout="official")
    message = str(err.value)
    assert "`weights.safetensors` (safetensors)" in message and "detected layout: official" in message
    assert "25 missing keys, by group: base_model.down_blocks (25)" in message
    assert "first 20 of 25:" in message
    assert sum(1 for k in removed if k in message) == 20


def test_unexpected_keys_are_reported_by_group(sd, expected):
    """§13.3 item 3: unexpected keys are errors, not silently skipped (unlike VidXTend's strict=False)."""
    sd["base_model.extra_block.weight"] = torch.zeros(2)
    sd["vae.extra.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointLayoutError, match=r"2 unexpected keys, by group: base_model\.extra_block \(1\), "
                                                     r"vae\.extra \(1\)"):
        check_strict(sd, expected, source="x.ckpt", layout="official")


def test_shape_mismatch_is_reported_with_both_shapes(sd, expected):
    """§13.3 item 3: a shape mismatch names the key, the file's shape and the expected one."""
    sd["resampler.context_embedding.0.weight"] = torch.zeros(33, 1024, dtype=torch.float16)
    with pytest.raises(CheckpointLayoutError) as err:
        check_strict(sd, expected, source="x.ckpt", layout="official")
    assert "1 shape mismatches" in str(err.value)
    assert "resampler.context_embedding.0.weight: file (33, 1024), expected (32, 1024)" in str(err.value)


def test_tiny_file_against_the_full_size_manifest_says_it_is_another_model_size(sd):
    """§13.3 item 3: say what the file looks like instead (here: another model size)."""
    with pytest.raises(CheckpointLayoutError, match=r"base_model\.conv_in\.weight has 64 output channels, expected "
                                                     r"320: the file was made for another model size"):
        check_strict(sd, read_manifest(MANIFEST), source="tiny.safetensors", layout="official")


def test_vanilla_unet_in_place_of_base_model_is_diagnosed(sd, expected):
    """§13.2: base_model.* without injectors / APM looks like the vanilla ModelScope UNet."""
    vanilla = {k: v for k, v in sd.items() if not STREAMING_ONLY.search(k)}
    with pytest.raises(CheckpointLayoutError, match="looks like the vanilla ModelScope UNet"):
        check_strict(vanilla, expected, source="x.ckpt", layout="official")


def test_streamingsvd_keys_in_the_strict_check_are_named_as_wrong_model(sd, expected):
    """§16: unexpected conditioner.embedders.0.open_clip.* keys say which model they come from."""
    sd["conditioner.embedders.0.open_clip.model.ln_final.weight"] = torch.zeros(8)
    with pytest.raises(CheckpointLayoutError, match=r"not the ModelScope StreamingT2V checkpoint.*StreamingSVD"):
        check_strict(sd, expected, source="x.ckpt", layout="official")


# --------------------------------------------------------------------------------------------------------------
# Components, dtype, assign-loading (§13.3 item 5)
# --------------------------------------------------------------------------------------------------------------


def test_split_components_strips_the_official_prefix_only(sd):
    """§13.2: six components in registration order; only the first name component is removed."""
    parts = split_components(sd)
    assert list(parts) == ["resampler", "image_encoder", "text_encoder", "vae", "unet", "base_model"]
    assert "model.visual.proj" in parts["image_encoder"]
    assert "text_model.final_layer_norm.weight" in parts["text_encoder"]
    assert sum(len(p) for p in parts.values()) == len(sd)
    with pytest.raises(CheckpointLayoutError, match="controlnet.x"):
        split_components({"controlnet.x": torch.zeros(1)})


def test_cast_state_dict_casts_floats_and_keeps_integers_and_same_dtype_tensors(sd):
    """§12/§13.3 item 5: cast to the target dtype; no copy when the dtype already matches."""
    sd["text_encoder.text_model.embeddings.position_ids"] = torch.arange(4)
    same = cast_state_dict(sd, torch.float16)
    assert same["resampler.context_embedding.0.weight"] is sd["resampler.context_embedding.0.weight"]
    cast = cast_state_dict(sd, torch.bfloat16)
    assert cast["resampler.context_embedding.0.weight"].dtype == torch.bfloat16
    assert cast["text_encoder.text_model.embeddings.position_ids"].dtype == torch.int64


class _Resampler(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.context_embedding = torch.nn.Sequential(
            torch.nn.Linear(1024, 32), torch.nn.SiLU(), torch.nn.Linear(32, 16 * 1024)
        )


def test_load_into_a_meta_module_assigns_the_tensors_without_a_copy(sd):
    """§13.3 item 5 and style guide (models built on the meta device, then loaded)."""
    with torch.device("meta"):
        module = _Resampler()
    part = split_components(sd)["resampler"]
    load_into(module, part)
    weight = module.context_embedding[0].weight
    assert not weight.is_meta
    assert weight.data_ptr() == part["context_embedding.0.weight"].data_ptr()
    assert isinstance(weight, torch.nn.Parameter)


def test_load_into_with_wrong_keys_raises_checkpoint_layout_error(sd):
    """§13.3 item 3: torch's own strict check is surfaced as CheckpointLayoutError."""
    with torch.device("meta"):
        module = _Resampler()
    part = split_components(sd)["resampler"]
    part.pop("context_embedding.2.bias")
    with pytest.raises(CheckpointLayoutError, match="context_embedding.2.bias"):
        load_into(module, part)


# --------------------------------------------------------------------------------------------------------------
# Converter (§13.5)
# --------------------------------------------------------------------------------------------------------------


def _fp32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in sd.items()}


def test_converter_writes_fp16_with_official_names_and_the_specified_metadata(tmp_path, sd, capsys):
    """§13.5: one safetensors file, fp16, official names, metadata format/dtype/source/source_size."""
    source = tmp_path / "streaming_t2v.ckpt"
    torch.save({"state_dict": _fp32(sd), "optimizer_states": []}, source)
    output = tmp_path / "streaming_t2v.fp16.safetensors"
    assert convert.main([str(source), str(output)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "streaming_t2v.fp16.safetensors" in summary[0]
    with safe_open(str(output), "pt") as f:
        metadata = f.metadata()
    assert metadata == {
        "format": "streamingt2v-modelscope",
        "dtype": "float16",
        "source": "streaming_t2v.ckpt",
        "source_size": str(source.stat().st_size),
    }
    written = load_file(str(output))
    assert all(v.dtype == torch.float16 for v in written.values())
    _assert_same(written, sd)


def test_converter_maps_vidxtend_names_and_keeps_the_streamingt2v_config_entry(tmp_path, sd, expected):
    """§13.4 + §13.5: VidXTend in, official names out; the tiny models' config metadata survives."""
    source = tmp_path / "vidxtend.safetensors"
    save_file(_to_vidxtend(_fp32(sd)), str(source), metadata={"streamingt2v_config": '{"a": 1}'})
    output = tmp_path / "out.safetensors"
    assert convert.main([str(source), str(output), "--dtype", "bf16"]) == 0
    loaded, info, layout = read_normalized(output)
    assert layout == "official"
    assert info.metadata["streamingt2v_config"] == '{"a": 1}'
    assert info.metadata["dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in loaded.values())
    check_strict(loaded, expected, source=output.name, layout=layout)


def test_converter_refuses_to_write_non_finite_values_and_names_the_tensors(tmp_path, small, capsys):
    """§13.5: check every tensor for NaN/inf after the cast; refuse (exit 1) and write nothing."""
    bad = _fp32(small)
    bad["resampler.context_embedding.0.bias"][3] = float("nan")
    bad["vae.encoder.conv_in.weight"][0, 0, 0, 0] = 1e6  # finite in fp32, inf in fp16
    source = tmp_path / "bad.safetensors"
    save_file(bad, str(source))
    output = tmp_path / "out.safetensors"
    assert convert.main([str(source), str(output)]) == 1
    err = capsys.readouterr().err
    assert "resampler.context_embedding.0.bias" in err and "vae.encoder.conv_in.weight" in err
    assert not output.exists()
    assert not (tmp_path / "out.safetensors.part").exists()


def test_converter_to_bf16_accepts_values_beyond_the_fp16_range(tmp_path, small):
    """§13.5 / §12: 1e6 overflows fp16 (refused) but is finite in bf16 (written)."""
    big = _fp32(small)
    big["vae.encoder.conv_in.weight"][0, 0, 0, 0] = 1e6
    source = tmp_path / "big.safetensors"
    save_file(big, str(source))
    assert convert.main([str(source), str(tmp_path / "fp16.safetensors")]) == 1
    assert convert.main([str(source), str(tmp_path / "bf16.safetensors"), "--dtype", "bf16"]) == 0
    written = load_file(str(tmp_path / "bf16.safetensors"))
    assert written["vae.encoder.conv_in.weight"][0, 0, 0, 0].item() == pytest.approx(1e6, rel=1e-2)


def test_converter_can_leave_out_or_replace_the_image_encoder(tmp_path, small):
    """§13.5: optional image_encoder.*; --image-encoder takes it from an OpenCLIP file."""
    sd = small
    source = tmp_path / "in.safetensors"
    save_file(sd, str(source))
    without = tmp_path / "without.safetensors"
    assert convert.main([str(source), str(without), "--no-image-encoder"]) == 0
    assert not any(k.startswith("image_encoder.") for k in load_file(str(without)))

    clip = {k[len("image_encoder.model."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    clip["transformer.resblocks.0.ln_1.weight"] = torch.zeros(8)
    clip_path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip, clip_path)
    with_clip = tmp_path / "with.safetensors"
    assert convert.main([str(without), str(with_clip), "--image-encoder", str(clip_path)]) == 0
    _assert_same(load_file(str(with_clip)), sd)


def test_converter_usage_errors_exit_with_code_2(tmp_path, sd):
    """Style guide (commands): exit code 2 for bad usage."""
    source = tmp_path / "in.safetensors"
    save_file({k: sd[k] for k in list(sd)[:4]}, str(source))
    assert convert.main([]) == 2
    assert convert.main([str(tmp_path / "missing.ckpt"), str(tmp_path / "o.safetensors")]) == 2
    assert convert.main([str(source), str(tmp_path / "o.safetensors"), "--dtype", "fp8"]) == 2
    assert convert.main([str(source), str(tmp_path / "o.safetensors"), "--no-image-encoder",
                         "--image-encoder", str(source)]) == 2
    assert convert.main([str(source), str(source)]) == 2


def test_converter_refuses_a_wrong_model_with_exit_code_1(tmp_path, capsys):
    """§13.3 item 4 through the CLI: exit 1 with the wrong-model message."""
    source = tmp_path / "svd.safetensors"
    save_file({"conditioner.embedders.0.open_clip.model.ln_final.weight": torch.zeros(4)}, str(source))
    assert convert.main([str(source), str(tmp_path / "o.safetensors")]) == 1
    assert "not the ModelScope StreamingT2V checkpoint" in capsys.readouterr().err
