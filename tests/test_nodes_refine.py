"""Layer A: the refinement nodes (nodes/refine.py) with the real comfy modules in-process.

Covers the node contract of NODE_SPEC.md (ids, inputs, outputs, metadata), the loaders' file pickers and
missing-file messages, the Randomized Blend plan and clip merge, Refiner SDEdit's validation, progress, previews,
streamed mp4 output and interrupts, and tiny end-to-end runs on the tiny random refiners
(`streaming_core.tiny_refiner`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

TINY_SUBDIR = "refiner_tiny"
TINY_UNET = f"{TINY_SUBDIR}/refiner_tiny_non_ema.pth"
TINY_TEXT = f"{TINY_SUBDIR}/refiner_tiny_open_clip.bin"
TINY_VAE = f"{TINY_SUBDIR}/refiner_tiny_sd21.ckpt"
TINY_DIFFUSERS = f"{TINY_SUBDIR}/refiner_tiny_t2v_diffusers"
FROM_CONVERTED = "(from converted file)"

# id: (display name, required inputs in order, optional inputs, RETURN_TYPES, RETURN_NAMES)
SPEC = {
    "ST2V_LoadRefinerMSVid2Vid": (
        "Load Refiner (MS-Vid2Vid-XL)", ["unet_name", "text_encoder_name", "vae_name", "dtype"], [],
        ("ST2V_REFINER",), ("refiner",),
    ),
    "ST2V_LoadRefinerDiffusers": (
        "Load Refiner (diffusers UNet3D)", ["folder", "dtype"], [], ("ST2V_REFINER",), ("refiner",),
    ),
    "ST2V_RandomizedBlend": (
        "Randomized Blend", ["chunk_size", "overlap", "variant", "seed"], ["clip_a", "clip_b"],
        ("ST2V_BLEND_PLAN", "IMAGE"), ("blend_plan", "merged"),
    ),
    "ST2V_RefinerSDEdit": (
        "Refiner SDEdit",
        ["refiner", "frames", "prompt", "negative_prompt", "strength", "steps", "cfg", "guidance_rescale", "pad_mode",
         "target_height", "seed"],
        ["blend_plan", "eta", "start_quirk", "keep_frames", "save_to_file", "fps", "batch_guidance"],
        ("IMAGE", "STRING"), ("frames", "info"),
    ),
}

DEFAULTS = {
    "ST2V_LoadRefinerMSVid2Vid": {"dtype": "auto"},
    "ST2V_LoadRefinerDiffusers": {"dtype": "auto"},
    "ST2V_RandomizedBlend": {"chunk_size": 24, "overlap": 8, "variant": "x0_random", "seed": 666},
    "ST2V_RefinerSDEdit": {"prompt": "", "negative_prompt": "", "strength": 0.6, "steps": 30, "cfg": 7.5,
                           "guidance_rescale": 0.2, "pad_mode": "official", "target_height": 720, "seed": 666,
                           "eta": 1.0, "start_quirk": "auto", "keep_frames": True, "save_to_file": "", "fps": 8.0,
                           "batch_guidance": True},
}

CHOICES = {
    ("ST2V_RandomizedBlend", "variant"): ["x0_random", "xt_random", "average", "hard"],
    ("ST2V_RefinerSDEdit", "pad_mode"): ["official", "minimal", "custom"],
    ("ST2V_RefinerSDEdit", "start_quirk"): ["auto", "on", "off"],
    ("ST2V_LoadRefinerMSVid2Vid", "dtype"): ["auto", "fp32", "fp16", "bf16"],
}


def _inputs(cls) -> dict[str, tuple]:
    types_ = cls.INPUT_TYPES()
    return {**types_.get("required", {}), **types_.get("optional", {})}


def _image(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(frames, height, width, 3, generator=generator)


def _decode(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return {"frames": len(frames), "width": stream.codec_context.width, "height": stream.codec_context.height,
                "fps": float(stream.average_rate) if stream.average_rate else None,
                "codec": stream.codec_context.name}


@pytest.fixture(scope="module")
def nodes(pack) -> types.SimpleNamespace:
    mappings = pack.NODE_CLASS_MAPPINGS
    return types.SimpleNamespace(
        load_ms=mappings["ST2V_LoadRefinerMSVid2Vid"],
        load_diffusers=mappings["ST2V_LoadRefinerDiffusers"],
        blend=mappings["ST2V_RandomizedBlend"],
        sdedit=mappings["ST2V_RefinerSDEdit"],
    )


@pytest.fixture(scope="module")
def refine_mod(pack):
    return sys.modules[f"{pack.__name__}.nodes.refine"]


@pytest.fixture(scope="module")
def core(pack) -> types.SimpleNamespace:
    """The pack's own `streaming_core` modules (the nodes compare classes of these, not of the top-level copy)."""
    return types.SimpleNamespace(
        blending=sys.modules[f"{pack.__name__}.streaming_core.blending"],
        refiner_model=sys.modules[f"{pack.__name__}.streaming_core.refiner_model"],
    )


@pytest.fixture
def registered_folder(comfy):
    """Register extra folders for a model folder name; removes them (and the list cache) afterwards."""
    added: list[tuple[str, str]] = []

    def register(folder_name: str, path: Path) -> Path:
        comfy.folder_paths.add_model_folder_path(folder_name, str(path), is_default=True)
        comfy.folder_paths.filename_list_cache.pop(folder_name, None)
        added.append((folder_name, str(path)))
        return path

    yield register
    for folder_name, path in added:
        comfy.folder_paths.folder_names_and_paths[folder_name][0].remove(path)
        comfy.folder_paths.filename_list_cache.pop(folder_name, None)


@pytest.fixture
def output_dir(comfy, tmp_path):
    previous = comfy.folder_paths.get_output_directory()
    out = tmp_path / "output"
    out.mkdir()
    comfy.folder_paths.set_output_directory(str(out))
    yield out
    comfy.folder_paths.set_output_directory(previous)


# ------------------------------------------------------------------------------------------------------------
# registration and metadata
# ------------------------------------------------------------------------------------------------------------


def test_refine_nodes_are_registered_with_display_names(pack):
    for node_id, spec in SPEC.items():
        assert node_id in pack.NODE_CLASS_MAPPINGS, node_id
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id] == spec[0]


@pytest.mark.parametrize("node_id", sorted(SPEC))
def test_refine_inputs_and_outputs_follow_node_spec(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    _, required, optional, return_types, return_names = SPEC[node_id]
    input_types = cls.INPUT_TYPES()
    assert list(input_types["required"]) == required
    assert list(input_types.get("optional", {})) == optional
    assert cls.RETURN_TYPES == return_types and cls.RETURN_NAMES == return_names
    for name, default in DEFAULTS[node_id].items():
        assert _inputs(cls)[name][1].get("default") == default, name
    for (cid, name), choices in CHOICES.items():
        if cid == node_id:
            assert _inputs(cls)[name][0] == choices


@pytest.mark.parametrize("node_id", sorted(SPEC))
def test_every_refine_node_has_complete_metadata(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 30
    assert cls.CATEGORY in ("StreamingT2V/loaders", "StreamingT2V/refine")
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    for name, entry in _inputs(cls).items():
        assert len(entry) == 2 and isinstance(entry[1].get("tooltip"), str) and entry[1]["tooltip"], name


def test_refiner_sdedit_is_an_output_node_and_the_others_are_not(nodes):
    assert nodes.sdedit.OUTPUT_NODE is True
    for cls in (nodes.load_ms, nodes.load_diffusers, nodes.blend):
        assert not getattr(cls, "OUTPUT_NODE", False)


def test_seeds_have_control_after_generate(nodes):
    for cls in (nodes.blend, nodes.sdedit):
        seed = _inputs(cls)["seed"][1]
        assert seed["control_after_generate"] is True and seed["min"] == 0 and seed["default"] == 666


# ------------------------------------------------------------------------------------------------------------
# loaders: pickers and missing files
# ------------------------------------------------------------------------------------------------------------


def test_ms_vid2vid_missing_file_names_the_three_files_their_sizes_and_the_mirror(nodes):
    message = nodes.load_ms.VALIDATE_INPUTS(unet_name="nope/non_ema.pth", text_encoder_name=FROM_CONVERTED,
                                            vae_name=FROM_CONVERTED)
    assert isinstance(message, str)
    for expected in ("nope/non_ema.pth", "models/streamingt2v", "non_ema_0035000.pth", "5.65 GB",
                     "open_clip_pytorch_model.bin", "3.94 GB", "v2-1_512-ema-pruned.ckpt", "5.21 GB",
                     "ali-vilab/MS-Vid2Vid-XL"):
        assert expected in message, expected
    with pytest.raises(FileNotFoundError, match="ali-vilab/MS-Vid2Vid-XL"):
        nodes.load_ms().load(unet_name="nope.pth", text_encoder_name=FROM_CONVERTED, vae_name=FROM_CONVERTED,
                             dtype="fp32")


def test_ms_vid2vid_missing_vae_searches_the_vae_folder_too(nodes, registered_folder, tmp_path):
    folder = registered_folder("streamingt2v", tmp_path / "st2v")
    folder.mkdir()
    (folder / "unet.pth").write_bytes(b"x")
    message = nodes.load_ms.VALIDATE_INPUTS(unet_name="unet.pth", text_encoder_name=FROM_CONVERTED,
                                            vae_name="missing_vae.ckpt")
    assert "Refiner VAE 'missing_vae.ckpt'" in message and "models/streamingt2v" in message
    assert "vae" in message.split("searched:")[1]


def test_ms_vid2vid_unet_cannot_come_from_a_converted_file(nodes):
    message = nodes.load_ms.VALIDATE_INPUTS(unet_name=FROM_CONVERTED)
    assert isinstance(message, str) and "unet_name" in message
    assert nodes.load_ms.VALIDATE_INPUTS(unet_name=None, text_encoder_name=None, vae_name=None) is True


def test_ms_vid2vid_pickers_list_subfolders_the_vae_folder_and_prefer_official_names(
        nodes, registered_folder, tmp_path):
    models = registered_folder("streamingt2v", tmp_path / "st2v")
    vaes = registered_folder("vae", tmp_path / "vae")
    (models / "ms_vid2vid_xl").mkdir(parents=True)
    vaes.mkdir()
    for name in ("aaa_first.safetensors", "ms_vid2vid_xl/non_ema_0035000.pth",
                 "ms_vid2vid_xl/open_clip_pytorch_model.bin", "ms_vid2vid_xl/v2-1_512-ema-pruned.ckpt"):
        (models / name).write_bytes(b"x")
    (vaes / "sd21_vae.safetensors").write_bytes(b"x")
    inputs = nodes.load_ms.INPUT_TYPES()["required"]
    unet_choices, unet_options = inputs["unet_name"]
    assert "ms_vid2vid_xl/non_ema_0035000.pth" in unet_choices and FROM_CONVERTED not in unet_choices
    assert unet_options["default"] == "ms_vid2vid_xl/non_ema_0035000.pth"
    text_choices, text_options = inputs["text_encoder_name"]
    assert text_choices[0] == FROM_CONVERTED and text_options["default"] == "ms_vid2vid_xl/open_clip_pytorch_model.bin"
    vae_choices, vae_options = inputs["vae_name"]
    assert vae_choices[0] == FROM_CONVERTED and "sd21_vae.safetensors" in vae_choices
    assert vae_options["default"] == "ms_vid2vid_xl/v2-1_512-ema-pruned.ckpt"
    assert nodes.load_ms.VALIDATE_INPUTS(unet_name="ms_vid2vid_xl/non_ema_0035000.pth",
                                         text_encoder_name="ms_vid2vid_xl/open_clip_pytorch_model.bin",
                                         vae_name="sd21_vae.safetensors") is True


def test_ms_vid2vid_is_changed_tracks_every_selected_file(nodes, registered_folder, tmp_path):
    models = registered_folder("streamingt2v", tmp_path / "st2v")
    models.mkdir()
    for name in ("u.pth", "t.bin", "v.ckpt"):
        (models / name).write_bytes(b"0" * 4)
    first = nodes.load_ms.IS_CHANGED(unet_name="u.pth", text_encoder_name="t.bin", vae_name="v.ckpt")
    assert nodes.load_ms.IS_CHANGED(unet_name="u.pth", text_encoder_name="t.bin", vae_name="v.ckpt") == first
    stamp = time.time() + 5
    os.utime(models / "v.ckpt", (stamp, stamp))
    assert nodes.load_ms.IS_CHANGED(unet_name="u.pth", text_encoder_name="t.bin", vae_name="v.ckpt") != first
    converted = nodes.load_ms.IS_CHANGED(unet_name="u.pth", text_encoder_name=FROM_CONVERTED,
                                         vae_name=FROM_CONVERTED)
    assert converted == first.split("|")[0]


def test_diffusers_picker_lists_model_folders_only(nodes, refine_mod, registered_folder, tmp_path):
    models = registered_folder("streamingt2v", tmp_path / "st2v")
    for rel in ("zeroscope_v2_XL", "family/zs_variant", "a/b/c/too_deep"):
        (models / rel / "unet").mkdir(parents=True)
        (models / rel / "vae").mkdir()
        (models / rel / "unet" / "config.json").write_text("{}")
    (models / "no_unet_config" / "unet").mkdir(parents=True)
    (models / "no_unet_config" / "vae").mkdir()
    choices = nodes.load_diffusers.INPUT_TYPES()["required"]["folder"][0]
    assert "zeroscope_v2_XL" in choices and "family/zs_variant" in choices
    assert "no_unet_config" not in choices and "a/b/c/too_deep" not in choices
    assert not any(c.startswith("zeroscope_v2_XL/") for c in choices), "a model's own subfolders are not models"
    assert nodes.load_diffusers.VALIDATE_INPUTS(folder="zeroscope_v2_XL") is True
    message = nodes.load_diffusers.VALIDATE_INPUTS(folder="../zeroscope_v2_XL")
    assert isinstance(message, str) and "was not found" in message and "zeroscope_v2_XL" in message
    with pytest.raises(FileNotFoundError, match="models/diffusers"):
        nodes.load_diffusers().load(folder="nothing_here", dtype="fp32")


# ------------------------------------------------------------------------------------------------------------
# Randomized Blend
# ------------------------------------------------------------------------------------------------------------


def test_blend_validate_inputs_messages(nodes):
    validate = nodes.blend.VALIDATE_INPUTS
    assert validate(chunk_size=24, overlap=8) is True
    assert validate(chunk_size=24, overlap=0) is True
    message = validate(chunk_size=16, overlap=16)
    assert isinstance(message, str) and "overlap (16)" in message and "chunk_size (16)" in message
    assert "at most 15" in message
    assert "negative" in validate(chunk_size=24, overlap=-1)
    assert "outside" in validate(chunk_size=0, overlap=0)
    assert validate(chunk_size=None, overlap=None) is True  # linked inputs are judged at run time


def test_blend_outputs_the_plan_and_a_placeholder_frame_without_clips(nodes, core):
    plan, merged = nodes.blend().run(chunk_size=16, overlap=4, variant="hard", seed=3)
    assert isinstance(plan, core.blending.BlendPlan)
    assert (plan.chunk_size, plan.overlap, plan.variant, plan.seed) == (16, 4, "hard", 3)
    assert merged.shape == (1, 64, 64, 3) and merged.dtype == torch.float32 and merged.abs().sum() == 0


def test_blend_rejects_an_invalid_plan_at_run_time(nodes):
    with pytest.raises(ValueError, match="must be smaller than chunk_size"):
        nodes.blend().run(chunk_size=8, overlap=8, variant="x0_random", seed=1)


def _solid(frames: int, value: float) -> torch.Tensor:
    return torch.full((frames, 8, 12, 3), value)


def test_blend_merges_two_clips_over_their_overlap(nodes):
    a, b = _solid(10, 0.25), _solid(6, 0.75)
    _, merged = nodes.blend().run(chunk_size=24, overlap=4, variant="x0_random", seed=5, clip_a=a, clip_b=b)
    assert merged.shape == (12, 8, 12, 3)
    per_frame = merged.mean(dim=(1, 2, 3)).tolist()
    assert per_frame[:6] == [0.25] * 6 and per_frame[9:] == [0.75] * 3
    overlap = per_frame[6:10]
    cut = overlap.count(0.25)
    assert overlap == [0.25] * cut + [0.75] * (4 - cut), "one sharp cut inside the overlap"
    assert cut <= 3, "x0_random: the last overlap frame always comes from the later clip"


def test_blend_hard_cut_is_in_the_middle_and_average_mixes(nodes):
    a, b = _solid(6, 0.0), _solid(6, 1.0)
    _, hard = nodes.blend().run(chunk_size=24, overlap=4, variant="hard", seed=0, clip_a=a, clip_b=b)
    assert hard.mean(dim=(1, 2, 3)).tolist() == [0.0] * 4 + [1.0] * 4
    _, mean = nodes.blend().run(chunk_size=24, overlap=4, variant="average", seed=0, clip_a=a, clip_b=b)
    assert mean.mean(dim=(1, 2, 3)).tolist() == [0.0] * 2 + [0.5] * 4 + [1.0] * 2


def test_blend_clip_errors_say_what_to_do(nodes):
    kwargs = dict(chunk_size=24, overlap=4, variant="x0_random", seed=0)
    with pytest.raises(ValueError, match="Only clip_a is connected; connect both"):
        nodes.blend().run(**kwargs, clip_a=_solid(6, 0.1))
    with pytest.raises(ValueError, match="12x8 and clip_b frames 16x8"):
        nodes.blend().run(**kwargs, clip_a=_solid(6, 0.1), clip_b=torch.zeros(6, 8, 16, 3))
    with pytest.raises(ValueError, match="clip_a has 4 frame.*at least 5"):
        nodes.blend().run(**kwargs, clip_a=_solid(4, 0.1), clip_b=_solid(6, 0.1))
    with pytest.raises(ValueError, match="clip_b has 3 frame.*at least 4"):
        nodes.blend().run(**kwargs, clip_a=_solid(6, 0.1), clip_b=_solid(3, 0.1))


# ------------------------------------------------------------------------------------------------------------
# Refiner SDEdit: validation and progress (no weights needed)
# ------------------------------------------------------------------------------------------------------------


def test_sdedit_validate_inputs_messages(nodes, output_dir):
    validate = nodes.sdedit.VALIDATE_INPUTS
    assert validate(keep_frames=True, save_to_file="") is True
    assert validate(keep_frames=False, save_to_file="video/refined") is True
    message = validate(keep_frames=False, save_to_file="  ")
    assert isinstance(message, str) and "keep_frames" in message and "save_to_file" in message
    outside = validate(keep_frames=True, save_to_file="../../elsewhere/refined")
    assert isinstance(outside, str) and "outside ComfyUI's output folder" in outside
    assert "outside" in validate(keep_frames=True, save_to_file="/tmp/refined")
    assert validate(keep_frames=None, save_to_file=None) is True
    assert not any(output_dir.iterdir()), "validation must not create folders"


FAKE_REFINER = types.SimpleNamespace()


def _sdedit_kwargs(**overrides):
    # custom padding to 16 px high keeps the tiny runs fast (the geometry itself is tested in the core)
    kwargs = dict(refiner=FAKE_REFINER, frames=_image(4, 16, 16), prompt="a cat", negative_prompt="",
                  strength=0.6, steps=2, cfg=7.5, guidance_rescale=0.2, pad_mode="custom", target_height=16,
                  seed=1)
    kwargs.update(overrides)
    return kwargs


def test_sdedit_rejects_bad_frames_and_settings_before_any_model_work(nodes):
    nan_frames = _image(4, 16, 16)
    nan_frames[2, 0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 4 frame"):
        nodes.sdedit().run(**_sdedit_kwargs(frames=nan_frames))
    with pytest.raises(ValueError, match="empty"):
        nodes.sdedit().run(**_sdedit_kwargs(frames=torch.zeros(0, 16, 16, 3)))
    with pytest.raises(ValueError, match="keep_frames is off and save_to_file is empty"):
        nodes.sdedit().run(**_sdedit_kwargs(keep_frames=False))
    with pytest.raises(ValueError, match="RGB"):
        nodes.sdedit().run(**_sdedit_kwargs(frames=torch.rand(4, 16, 16, 4)))


def test_refine_progress_counts_chunk_evaluations_then_decoded_frames(refine_mod, progress_hook):
    events = refine_mod.RefineProgress(num_frames=3, evaluations=4)
    for step in (1, 2):  # the solver evaluates every chunk once per step
        for chunk in (0, 1):
            events.on_step("refine", chunk, 2, step, 2)
    for index in range(3):
        events.on_frames(torch.rand(1, 3, 20, 30), index)
    values = [(value, total) for value, total, _ in progress_hook]
    assert values == [(1, 7), (2, 7), (3, 7), (4, 7), (5, 7), (6, 7), (7, 7)]
    previews = [p for _, _, p in progress_hook if p is not None]
    assert len(previews) == 3 and all(p[0] == "JPEG" and p[1].size == (30, 20) for p in previews)
    assert events.finished == [], "decoded frames belong to the sinks, the progress must not keep them"


# ------------------------------------------------------------------------------------------------------------
# end to end on the tiny random refiners
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_refiner_root(tmp_path_factory) -> Path:
    """A models folder with `refiner_tiny/` written by `python -m streaming_core.tiny_refiner`."""
    root = tmp_path_factory.mktemp("refiner_models")
    done = subprocess.run([sys.executable, "-m", "streaming_core.tiny_refiner", str(root / TINY_SUBDIR)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    for rel in (TINY_UNET, TINY_TEXT, TINY_VAE, f"{TINY_DIFFUSERS}/unet/config.json"):
        assert (root / rel).is_file(), rel
    return root


@pytest.fixture(scope="module")
def tiny(pack, comfy, tiny_refiner_root):
    """Both tiny refiners loaded through the loader nodes from the registered folder."""
    folder_paths = comfy.folder_paths
    folder_paths.add_model_folder_path("streamingt2v", str(tiny_refiner_root), is_default=True)
    folder_paths.filename_list_cache.pop("streamingt2v", None)
    mappings = pack.NODE_CLASS_MAPPINGS
    try:
        ms_inputs = mappings["ST2V_LoadRefinerMSVid2Vid"].INPUT_TYPES()["required"]
        assert TINY_UNET in ms_inputs["unet_name"][0] and TINY_VAE in ms_inputs["vae_name"][0]
        assert TINY_DIFFUSERS in mappings["ST2V_LoadRefinerDiffusers"].INPUT_TYPES()["required"]["folder"][0]
        (ms,) = mappings["ST2V_LoadRefinerMSVid2Vid"]().load(unet_name=TINY_UNET, text_encoder_name=TINY_TEXT,
                                                             vae_name=TINY_VAE, dtype="auto")
        (diffusers,) = mappings["ST2V_LoadRefinerDiffusers"]().load(folder=TINY_DIFFUSERS, dtype="fp32")
        yield types.SimpleNamespace(ms=ms, diffusers=diffusers, root=tiny_refiner_root)
    finally:
        folder_paths.folder_names_and_paths["streamingt2v"][0].remove(str(tiny_refiner_root))
        folder_paths.filename_list_cache.pop("streamingt2v", None)


def test_loaders_give_refiners_of_both_families(tiny, core):
    assert isinstance(tiny.ms, core.refiner_model.RefinerModel) and tiny.ms.family == "ms_vid2vid"
    assert isinstance(tiny.diffusers, core.refiner_model.RefinerModel) and tiny.diffusers.family == "diffusers_t2v"
    assert tiny.ms.dtype == torch.float32  # auto on the CPU


def _plan(nodes, chunk: int, overlap: int, variant: str = "x0_random", seed: int = 666):
    plan, _ = nodes.blend().run(chunk_size=chunk, overlap=overlap, variant=variant, seed=seed)
    return plan


def _check_refined(image: torch.Tensor, frames: int) -> None:
    assert image.ndim == 4 and image.shape[0] == frames and image.shape[-1] == 3
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_tiny_refine_keeps_every_frame_and_reports_the_chunk_plan(nodes, tiny, progress_hook):
    plan = _plan(nodes, 6, 2)
    out = nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(11, 24, 24), blend_plan=plan))
    image, info_text = out
    _check_refined(image, 11)
    info = json.loads(info_text)
    assert info["chunk_starts"] == plan.starts(11) and len(info["chunk_starts"]) >= 3
    assert (info["chunk_size"], info["overlap"], info["blend"]) == (6, 2, "x0_random")
    geometry = info["geometry"]
    assert image.shape[1:3] == (geometry["content_h"], geometry["content_w"]), "the padding bars are cropped"
    assert geometry["content_h"] == geometry["content_w"], "square input stays square"
    assert info["file"] is None and info["t_start"] == 599
    evaluations = info["evaluations_per_chunk"] * len(info["chunk_starts"])
    assert progress_hook[-1][:2] == (evaluations + 11, evaluations + 11)
    assert [v for v, _, _ in progress_hook] == sorted(v for v, _, _ in progress_hook), "progress only moves on"
    assert sum(1 for _, _, p in progress_hook if p is not None) == 11, "one preview per decoded frame"


def test_tiny_refine_default_plan_is_the_official_one(nodes, tiny):
    _, info_text = nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(26, 16, 16), steps=1))
    info = json.loads(info_text)
    assert (info["chunk_size"], info["overlap"], info["blend"], info["blend_seed"]) == (24, 8, "x0_random", 666)
    assert info["chunk_starts"] == [0, 2]


def test_tiny_refine_streams_an_mp4_without_keeping_frames(nodes, tiny, output_dir):
    kwargs = _sdedit_kwargs(refiner=tiny.ms, frames=_image(9, 20, 30, seed=2), blend_plan=_plan(nodes, 6, 2))
    kept, _ = nodes.sdedit().run(**kwargs)
    result = nodes.sdedit().run(**dict(kwargs, keep_frames=False, save_to_file="video/refined", fps=12.0))
    first, info_text = result["result"]
    (entry,) = result["ui"]["images"]
    assert result["ui"]["animated"] == (True,)
    assert entry["type"] == "output" and entry["subfolder"] == "video" and entry["filename"].endswith(".mp4")
    path = output_dir / "video" / entry["filename"]
    info = json.loads(info_text)
    assert info["file"]["path"] == str(path) and info["fps"] == 12.0
    video = _decode(path)
    assert video["frames"] == 9 and video["codec"] == "h264" and video["fps"] == pytest.approx(12.0)
    assert (video["height"], video["width"]) == tuple(kept.shape[1:3])
    assert first.shape == (1,) + tuple(kept.shape[1:]), "keep_frames off: the first frame as a placeholder"
    assert torch.allclose(first[0], kept[0], atol=1e-6), "the same settings give the same first frame"


def test_tiny_refine_with_file_and_frames_gives_both(nodes, tiny, output_dir):
    result = nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(5, 16, 16), save_to_file="both"))
    image, _ = result["result"]
    _check_refined(image, 5)
    (entry,) = result["ui"]["images"]
    assert entry["subfolder"] == "" and _decode(output_dir / entry["filename"])["frames"] == 5


def test_tiny_refine_interrupted_while_decoding_leaves_a_playable_file(nodes, tiny, comfy, reset_interrupt,
                                                                       output_dir):
    previous = comfy.utils.PROGRESS_BAR_HOOK
    previews = []

    def interrupt_after_three_frames(value, total, preview, node_id=None):
        if preview is not None:
            previews.append(value)
            if len(previews) == 3:
                comfy.mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_after_three_frames)
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(8, 16, 16), keep_frames=False,
                                                save_to_file="stopped"))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    (path,) = output_dir.glob("stopped_*.mp4")
    assert _decode(path)["frames"] == 3, "exactly the frames decoded before Cancel are in the file"


def test_tiny_refine_interrupted_while_sampling_writes_no_file(nodes, tiny, comfy, reset_interrupt, output_dir):
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def interrupt_at_first_step(value, total, preview, node_id=None):
        comfy.mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_at_first_step)
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(8, 16, 16), save_to_file="early"))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert not list(output_dir.rglob("*.mp4"))


def test_tiny_diffusers_refiner_with_custom_height(nodes, tiny):
    image, info_text = nodes.sdedit().run(**_sdedit_kwargs(
        refiner=tiny.diffusers, frames=_image(6, 30, 40), pad_mode="custom", target_height=48, strength=0.75,
        cfg=9.0, guidance_rescale=0.0, start_quirk="off", batch_guidance=False))
    _check_refined(image, 6)
    assert image.shape[1:3] == (48, 64), "custom: content height = target_height, aspect kept"
    info = json.loads(info_text)
    assert info["family"] == "diffusers_t2v" and info["t_start"] == 749


def test_xt_random_blend_plan_runs(nodes, tiny):
    plan = _plan(nodes, 6, 3, variant="xt_random", seed=9)
    image, info_text = nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(10, 16, 16),
                                                           blend_plan=plan))
    _check_refined(image, 10)
    assert json.loads(info_text)["blend"] == "xt_random"


def test_converted_refiner_file_loads_with_from_converted(nodes, tiny, comfy, registered_folder, tmp_path):
    folder = registered_folder("streamingt2v", tmp_path / "converted")
    folder.mkdir()
    target = folder / "ms_vid2vid_xl_fp16.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "streaming_core.convert", "refiner", "--unet", str(tiny.root / TINY_UNET),
         "--text", str(tiny.root / TINY_TEXT), "--vae", str(tiny.root / TINY_VAE), str(target)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert nodes.load_ms.VALIDATE_INPUTS(unet_name=target.name, text_encoder_name=FROM_CONVERTED,
                                         vae_name=FROM_CONVERTED) is True
    (refiner,) = nodes.load_ms().load(unet_name=target.name, text_encoder_name=FROM_CONVERTED,
                                      vae_name=FROM_CONVERTED, dtype="fp32")
    assert refiner.family == "ms_vid2vid"
    image, _ = nodes.sdedit().run(**_sdedit_kwargs(refiner=refiner, frames=_image(3, 16, 16), steps=1))
    _check_refined(image, 3)


def test_from_converted_with_an_official_unet_file_is_an_error_naming_the_files(nodes, tiny):
    with pytest.raises(FileNotFoundError, match="non_ema_0035000.pth"):
        nodes.load_ms().load(unet_name=TINY_UNET, text_encoder_name=FROM_CONVERTED, vae_name=TINY_VAE,
                             dtype="fp32")


def test_tiny_refine_official_padding_crops_the_bars_off(nodes, tiny):
    image, info_text = nodes.sdedit().run(**_sdedit_kwargs(refiner=tiny.ms, frames=_image(3, 40, 40), steps=1,
                                                           pad_mode="official", target_height=720))
    geometry = json.loads(info_text)["geometry"]
    assert (geometry["frame_h"], geometry["frame_w"]) == tuple(tiny.ms.native_size), "official = native frame"
    native_h, native_w = tiny.ms.native_size
    assert native_h < native_w and image.shape[1:3] == (geometry["content_h"], geometry["content_w"])
    assert image.shape[1:3] == (native_h, native_h), "square content fitted to the native height, bars cropped"
