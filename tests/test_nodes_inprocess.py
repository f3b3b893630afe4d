"""Layer A: the node layer with the real comfy modules in-process (comfyui_runtime.md §9).

Covers the node contract of NODE_SPEC.md (ids, inputs, outputs, metadata), validation messages, IMAGE
conversion, progress/preview/cancel plumbing, the pack's import as a ComfyUI package, and a tiny end-to-end
run (Init Chunk from an IMAGE batch -> APM Anchor -> CAM Streaming Extend) on the tiny default weights.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from conftest import COMFY_DIR, REPO_ROOT, TINY_BASE_FILE, TINY_STREAM_FILE

# ------------------------------------------------------------------------------------------------------------
# the contract of NODE_SPEC.md
# ------------------------------------------------------------------------------------------------------------

SPEC = {
    # id: (display name, required inputs, optional inputs, RETURN_TYPES, RETURN_NAMES)
    "ST2V_LoadStreamingT2V": (
        "Load StreamingT2V Model", ["ckpt_name", "dtype"], ["image_encoder_name"], ("ST2V_MODEL",), ("model",),
    ),
    "ST2V_LoadModelScopeBase": (
        "Load ModelScope T2V (first chunk)", ["model", "unet_name", "dtype"], [], ("ST2V_BASE_MODEL",),
        ("base_model",),
    ),
    "ST2V_InitChunk": (
        "StreamingT2V Init Chunk",
        ["model", "prompt", "negative_prompt", "steps", "cfg", "seed", "sampler"],
        ["base_model", "images", "resize", "crop"], ("IMAGE",), ("frames",),
    ),
    "ST2V_APMAnchor": (
        "StreamingT2V APM Anchor", ["frames", "frame_index"], ["image"], ("ST2V_ANCHOR", "IMAGE"),
        ("anchor", "anchor_image"),
    ),
    "ST2V_CAMStreamingExtend": (
        "StreamingT2V CAM Streaming Extend",
        ["model", "frames", "anchor", "prompt", "prompt_per_chunk", "negative_prompt", "length_mode", "length",
         "steps", "cfg", "eta", "seed", "guidance_mode"],
        ["cfg_anchor"], ("IMAGE", "INT"), ("frames", "frame_count"),
    ),
}

DEFAULTS = {
    "ST2V_LoadStreamingT2V": {"dtype": "auto", "image_encoder_name": "(inside checkpoint)"},
    "ST2V_LoadModelScopeBase": {"dtype": "auto"},
    "ST2V_InitChunk": {"negative_prompt": "", "steps": 50, "cfg": 9.0, "seed": 33, "sampler": "dpmpp_2m",
                       "resize": "area", "crop": "center"},
    "ST2V_APMAnchor": {"frame_index": 0},
    "ST2V_CAMStreamingExtend": {"prompt_per_chunk": False, "negative_prompt": "", "length_mode": "chunks",
                                "length": 2, "steps": 50, "cfg": 7.5, "eta": 1.0, "seed": 33,
                                "guidance_mode": "single", "cfg_anchor": 7.5},
}

CHOICES = {
    ("ST2V_LoadStreamingT2V", "dtype"): ["auto", "fp32", "fp16", "bf16"],
    ("ST2V_InitChunk", "sampler"): ["dpmpp_2m", "ddim"],
    ("ST2V_InitChunk", "resize"): ["area", "bicubic", "nearest (official)"],
    ("ST2V_InitChunk", "crop"): ["center", "pad"],
    ("ST2V_CAMStreamingExtend", "length_mode"): ["chunks", "total_frames (floor)", "total_frames (exact)"],
    ("ST2V_CAMStreamingExtend", "guidance_mode"): ["single", "dual"],
}


# ids of the refinement stage (optional module nodes/refine.py; its contract is tested in test_nodes_refine.py)
REFINE_IDS = ("ST2V_LoadRefinerMSVid2Vid", "ST2V_LoadRefinerDiffusers", "ST2V_RandomizedBlend", "ST2V_RefinerSDEdit")
# id of the metrics node (nodes/metrics.py; its contract is tested in test_metrics.py)
METRICS_IDS = ("ST2V_ConsistencyMetrics",)


def _inputs(cls) -> dict[str, tuple]:
    types_ = cls.INPUT_TYPES()
    return {**types_.get("required", {}), **types_.get("optional", {})}


def _image(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(frames, height, width, 3, generator=generator)


@pytest.fixture(scope="module")
def nodes(pack) -> types.SimpleNamespace:
    mappings = pack.NODE_CLASS_MAPPINGS
    return types.SimpleNamespace(
        load=mappings["ST2V_LoadStreamingT2V"],
        load_base=mappings["ST2V_LoadModelScopeBase"],
        init=mappings["ST2V_InitChunk"],
        anchor=mappings["ST2V_APMAnchor"],
        extend=mappings["ST2V_CAMStreamingExtend"],
    )


@pytest.fixture(scope="module")
def rt(pack):
    return sys.modules[f"{pack.__name__}.nodes._runtime"]


@pytest.fixture(scope="module")
def stream_mod(pack):
    return sys.modules[f"{pack.__name__}.nodes.stream"]


# ------------------------------------------------------------------------------------------------------------
# registration and metadata
# ------------------------------------------------------------------------------------------------------------


def test_mappings_have_the_five_nodes(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) - set(REFINE_IDS) - set(METRICS_IDS) == set(SPEC)
    names = {k: v for k, v in pack.NODE_DISPLAY_NAME_MAPPINGS.items() if k not in REFINE_IDS + METRICS_IDS}
    assert names == {node_id: spec[0] for node_id, spec in SPEC.items()}
    assert not hasattr(pack, "WEB_DIRECTORY")


@pytest.mark.parametrize("node_id", sorted(SPEC))
def test_inputs_and_outputs_follow_node_spec(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    _, required, optional, return_types, return_names = SPEC[node_id]
    input_types = cls.INPUT_TYPES()
    assert list(input_types["required"]) == required
    assert sorted(input_types.get("optional", {})) == sorted(optional)
    assert cls.RETURN_TYPES == return_types
    assert cls.RETURN_NAMES == return_names
    for name, default in DEFAULTS[node_id].items():
        assert _inputs(cls)[name][1].get("default") == default, name
    for (cid, name), choices in CHOICES.items():
        if cid == node_id:
            assert _inputs(cls)[name][0] == choices


@pytest.mark.parametrize("node_id", sorted(SPEC))
def test_every_node_has_complete_metadata(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 30
    assert cls.CATEGORY in ("StreamingT2V/loaders", "StreamingT2V/stream")
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    for name, entry in _inputs(cls).items():
        assert len(entry) == 2 and isinstance(entry[1].get("tooltip"), str) and entry[1]["tooltip"], name


def test_seeds_have_control_after_generate(pack):
    for node_id in ("ST2V_InitChunk", "ST2V_CAMStreamingExtend"):
        seed = _inputs(pack.NODE_CLASS_MAPPINGS[node_id])["seed"][1]
        assert seed["control_after_generate"] is True and seed["min"] == 0


def test_streamingt2v_models_folder_is_registered(pack, comfy):
    paths, extensions = comfy.folder_paths.folder_names_and_paths["streamingt2v"]
    assert os.path.join(comfy.folder_paths.models_dir, "streamingt2v") in paths
    assert {".safetensors", ".ckpt", ".pt", ".pth", ".bin"} <= set(extensions)


# ------------------------------------------------------------------------------------------------------------
# the pack imports like ComfyUI imports it, and is self-contained
# ------------------------------------------------------------------------------------------------------------

_LOAD_LIKE_COMFY = textwrap.dedent(
    """
    import asyncio, os, sys
    comfy_dir, custom_nodes = sys.argv[1], sys.argv[2]
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args
    args.cpu = True
    import nodes
    ok = asyncio.run(nodes.load_custom_node(os.path.join(custom_nodes, "streamingt2v")))
    print("LOADED", ok)
    print("IDS", ",".join(sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("ST2V_"))))
    print("TOPLEVEL_CORE", "streaming_core" in sys.modules)
    """
)


def test_comfyui_loads_the_pack_through_a_symlink(tmp_path, comfy):
    """ComfyUI's own `load_custom_node` on a symlinked folder, from a cwd where `streaming_core` is not
    importable as a top-level package: every import inside the pack must be relative."""
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / "streamingt2v").symlink_to(REPO_ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_LIKE_COMFY, str(COMFY_DIR), str(custom_nodes)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "LOADED True" in done.stdout, log[-4000:]
    assert f"IDS {','.join(sorted(set(SPEC) | set(REFINE_IDS) | set(METRICS_IDS)))}" in done.stdout, log[-4000:]
    assert "TOPLEVEL_CORE False" in done.stdout, "the pack imported the top-level 'streaming_core'"


def test_node_layer_never_touches_sys_path():
    for path in sorted((REPO_ROOT / "nodes").rglob("*.py")) + [REPO_ROOT / "__init__.py"]:
        text = path.read_text(encoding="utf-8")
        assert "sys.path" not in text, path
        assert not re.search(r"^\s*(from|import)\s+streaming_core\b", text, re.M), path
        assert not re.search(r"^\s*print\(", text, re.M), path


# ------------------------------------------------------------------------------------------------------------
# VALIDATE_INPUTS and loader files
# ------------------------------------------------------------------------------------------------------------


def test_extend_validate_inputs_messages(nodes):
    validate = nodes.extend.VALIDATE_INPUTS
    assert validate(length_mode="chunks", length=0) is True
    assert validate(length_mode="total_frames (floor)", length=16) is True
    message = validate(length_mode="total_frames (exact)", length=12)
    assert isinstance(message, str) and "12" in message and "16" in message
    assert "not one of" in validate(length_mode="frames", length=2)
    assert "outside" in validate(length_mode="chunks", length=-1)
    # linked inputs arrive as None during validation and are not judged
    assert validate(length_mode=None, length=None) is True


def test_loader_missing_file_names_the_folder(nodes, comfy, tmp_path):
    message = nodes.load.VALIDATE_INPUTS(ckpt_name="nope.safetensors")
    assert isinstance(message, str) and "nope.safetensors" in message and "models/streamingt2v" in message
    folder = comfy.folder_paths.get_folder_paths("streamingt2v")[0]
    assert folder in message
    with pytest.raises(FileNotFoundError, match="models/streamingt2v"):
        nodes.load().load(ckpt_name="nope.safetensors", dtype="fp32")
    base_message = nodes.load_base.VALIDATE_INPUTS(unet_name="missing_unet.safetensors")
    assert "models/streamingt2v" in base_message and "missing_unet.safetensors" in base_message
    assert nodes.load.VALIDATE_INPUTS(ckpt_name=None) is True


def test_loader_is_changed_tracks_size_and_mtime(nodes, comfy, tmp_path):
    folder = tmp_path / "st2v_models"
    folder.mkdir()
    weights = folder / "fake_changed.safetensors"
    weights.write_bytes(b"0" * 10)
    comfy.folder_paths.add_model_folder_path("streamingt2v", str(folder))
    try:
        first = nodes.load.IS_CHANGED(ckpt_name=weights.name, dtype="auto")
        assert nodes.load.IS_CHANGED(ckpt_name=weights.name, dtype="auto") == first
        assert nodes.load.VALIDATE_INPUTS(ckpt_name=weights.name) is True
        stamp = time.time() + 5
        os.utime(weights, (stamp, stamp))  # same size, new mtime
        touched = nodes.load.IS_CHANGED(ckpt_name=weights.name, dtype="auto")
        assert touched != first
        weights.write_bytes(b"0" * 11)
        os.utime(weights, (stamp, stamp))  # new size, same mtime
        assert nodes.load.IS_CHANGED(ckpt_name=weights.name, dtype="auto") not in (first, touched)
        assert nodes.load_base.IS_CHANGED(unet_name=weights.name, model=None, dtype="auto") == \
            nodes.load.IS_CHANGED(ckpt_name=weights.name, dtype="auto")
    finally:
        comfy.folder_paths.folder_names_and_paths["streamingt2v"][0].remove(str(folder))


# ------------------------------------------------------------------------------------------------------------
# runtime helpers: IMAGE conversion, devices, events
# ------------------------------------------------------------------------------------------------------------


def test_image_frame_conversion_round_trip(rt):
    image = _image(5, 6, 7)
    frames = rt.image_to_frames(image)
    assert frames.shape == (5, 3, 6, 7) and frames.dtype == torch.float32 and frames.device.type == "cpu"
    assert torch.equal(frames[2, 1], image[2, :, :, 1])
    back = rt.frames_to_image(frames)
    assert back.shape == (5, 6, 7, 3) and back.dtype == torch.float32
    assert torch.equal(back, image)
    assert rt.frames_to_image(frames * 3 - 1).min() >= 0 and rt.frames_to_image(frames * 3 - 1).max() <= 1
    assert rt.image_to_frames(image.double()).dtype == torch.float32
    with pytest.raises(ValueError, match="RGB"):
        rt.image_to_frames(torch.rand(2, 6, 7, 4))


def test_devices_and_dtypes_come_from_comfy(rt, comfy):
    assert rt.torch_device() == comfy.mm.get_torch_device() == torch.device("cpu")
    assert rt.offload_device().type == "cpu"
    assert rt.resolve_dtype("auto") == torch.float32  # CPU
    assert rt.resolve_dtype("fp16") == torch.float16 and rt.resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="auto, fp32, fp16, bf16"):
        rt.resolve_dtype("fp8")


def test_comfy_events_implement_the_whole_protocol(pack, rt):
    protocol = sys.modules[f"{pack.__name__}.streaming_core.events"].StreamEvents
    hooks = [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]
    assert {"on_step", "on_frames", "check_cancel"} <= set(hooks)
    for name in hooks:
        assert callable(getattr(rt.ComfyEvents(1), name, None)), name


def test_check_cancel_raises_after_interrupt(rt, reset_interrupt):
    events = rt.ComfyEvents(4)
    events.check_cancel()  # no interrupt pending
    reset_interrupt.interrupt_current_processing(True)
    with pytest.raises(reset_interrupt.InterruptProcessingException):
        events.check_cancel()


def test_events_drive_progress_and_jpeg_previews(rt, progress_hook):
    events = rt.ComfyEvents(6)
    events.on_step("extend", 0, 2, 1, 3)
    events.on_step("extend", 1, 2, 2, 3)
    events.on_frames(torch.rand(8, 3, 32, 32), 16)
    assert progress_hook[0][:2] == (1, 6) and progress_hook[1][:2] == (5, 6)
    kind, picture, size = progress_hook[-1][2]
    assert kind == "JPEG" and size == 512 and picture.size == (32, 32) and picture.mode == "RGB"
    assert events.frames_finished == 8 and events.chunks_finished == 1


@pytest.fixture
def output_dir(tmp_path):
    import folder_paths

    previous = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(previous)


def test_an_interrupt_keeps_the_finished_frames_and_reraises(rt, comfy, caplog, output_dir):
    """Principle 5: nothing already produced is lost; the interrupt still propagates."""
    from streaming_core.resume import load_partial

    events = rt.ComfyEvents(2)
    events.on_frames(torch.rand(8, 3, 4, 4), 16)
    events.on_chunk_end(0, torch.zeros(5, dtype=torch.uint8))
    with caplog.at_level(logging.WARNING, logger="streamingt2v"):
        with pytest.raises(comfy.mm.InterruptProcessingException):
            with rt.interrupt_logged(events, "Test run", torch.rand(16, 3, 4, 4), {"prompts": ["a", "b", "c"],
                                                                                   "num_chunks": 3}):
                raise comfy.mm.InterruptProcessingException()
    assert "Test run stopped (InterruptProcessingException) after 8 finished frame(s) in 1 chunk(s)" in caplog.text
    (saved,) = (output_dir / "streamingt2v_partial").glob("*.safetensors")
    frames, noise_state, info = load_partial(saved)
    assert frames.shape == (24, 3, 4, 4) and noise_state is not None
    assert info["remaining_chunks"] == 2 and info["remaining_prompts"] == ["b", "c"]


# ------------------------------------------------------------------------------------------------------------
# run-time validation (no weights needed: the checks come before any model call)
# ------------------------------------------------------------------------------------------------------------

FAKE_MODEL = types.SimpleNamespace(sample_size=32)


def _init_kwargs(**overrides):
    kwargs = dict(model=FAKE_MODEL, prompt="a cat", negative_prompt="", steps=2, cfg=9.0, seed=1,
                  sampler="ddim")
    kwargs.update(overrides)
    return kwargs


def test_init_chunk_needs_base_model_or_images(nodes):
    with pytest.raises(ValueError) as error:
        nodes.init().run(**_init_kwargs())
    assert "Load ModelScope T2V" in str(error.value) and "IMAGE" in str(error.value)


def test_init_chunk_rejects_too_few_frames(nodes):
    with pytest.raises(ValueError) as error:
        nodes.init().run(**_init_kwargs(images=_image(5, 32, 32)))
    assert "5 frame(s)" in str(error.value) and "at least 8" in str(error.value)


def test_init_chunk_rejects_nan_frames(nodes):
    images = _image(9, 32, 32)
    images[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 9 frame.*first bad frame: 3"):
        nodes.init().run(**_init_kwargs(images=images))


def _extend_kwargs(**overrides):
    kwargs = dict(model=FAKE_MODEL, frames=_image(16, 32, 32), anchor=torch.rand(3, 32, 32), prompt="a cat",
                  prompt_per_chunk=False, negative_prompt="", length_mode="chunks", length=1, steps=2, cfg=7.5,
                  eta=1.0, seed=1, guidance_mode="single")
    kwargs.update(overrides)
    return kwargs


def test_extend_rejects_wrong_frame_size_and_anchor(nodes):
    with pytest.raises(ValueError, match="48x40 pixels.*32x32"):
        nodes.extend().run(**_extend_kwargs(frames=_image(16, 40, 48)))
    with pytest.raises(ValueError, match="7 frame"):
        nodes.extend().run(**_extend_kwargs(frames=_image(7, 32, 32)))
    with pytest.raises(ValueError, match="anchor has shape"):
        nodes.extend().run(**_extend_kwargs(anchor=torch.rand(3, 16, 16)))
    with pytest.raises(ValueError, match="input already has 16"):
        nodes.extend().run(**_extend_kwargs(length_mode="total_frames (floor)", length=15))


def test_extend_with_zero_chunks_returns_the_input(nodes):
    frames = _image(16, 32, 32)
    out, count = nodes.extend().run(**_extend_kwargs(frames=frames, length=0))
    assert count == 16 and torch.equal(out, frames)


def test_prompt_per_chunk_lines(stream_mod, nodes):
    with pytest.raises(ValueError, match="one line per chunk"):
        nodes.extend().run(**_extend_kwargs(prompt=" \n ", prompt_per_chunk=True))
    assert stream_mod._chunk_prompts("a\n\n b \n", True, 4) == ["a", "b", "b", "b"]
    assert stream_mod._chunk_prompts("a\nb\nc", True, 2) == ["a", "b"]
    assert stream_mod._chunk_prompts("a\nb", False, 3) == ["a\nb"]


def test_length_plan(stream_mod):
    assert stream_mod._plan("chunks", 3, 16) == (3, None)
    assert stream_mod._plan("total_frames (floor)", 31, 16) == (1, None)
    assert stream_mod._plan("total_frames (exact)", 31, 16) == (2, 31)
    assert stream_mod._plan("total_frames (floor)", 40, 10) == (3, None)
    assert stream_mod._plan("total_frames (exact)", 16, 16) == (0, 16)


def test_apm_anchor_picks_frames(nodes):
    frames = _image(10, 32, 32)
    anchor, anchor_image = nodes.anchor().run(frames=frames, frame_index=0)
    assert anchor.shape == (3, 32, 32) and torch.equal(anchor, frames[0].permute(2, 0, 1))
    assert anchor_image.shape == (1, 32, 32, 3) and anchor_image.dtype == torch.float32
    last, _ = nodes.anchor().run(frames=frames, frame_index=-1)
    assert torch.equal(last, frames[-1].permute(2, 0, 1))
    with pytest.raises(ValueError, match="frame_index 10 is out of range for 10 frames"):
        nodes.anchor().run(frames=frames, frame_index=10)
    with pytest.raises(ValueError, match="square"):
        nodes.anchor().run(frames=_image(10, 32, 40), frame_index=0)


# ------------------------------------------------------------------------------------------------------------
# end to end on the tiny default weights
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(pack, comfy, tiny_weights_dir):
    """The tiny default weights in the `streamingt2v` folder, loaded through the loader nodes."""
    folder_paths = comfy.folder_paths
    folder_paths.add_model_folder_path("streamingt2v", str(tiny_weights_dir), is_default=True)
    folder_paths.filename_list_cache.pop("streamingt2v", None)
    mappings = pack.NODE_CLASS_MAPPINGS
    try:
        assert TINY_STREAM_FILE in mappings["ST2V_LoadStreamingT2V"].INPUT_TYPES()["required"]["ckpt_name"][0]
        (model,) = mappings["ST2V_LoadStreamingT2V"]().load(ckpt_name=TINY_STREAM_FILE, dtype="fp32")
        (base,) = mappings["ST2V_LoadModelScopeBase"]().load(model=model, unet_name=TINY_BASE_FILE, dtype="auto")
        yield types.SimpleNamespace(model=model, base=base, size=int(model.sample_size))
    finally:
        folder_paths.folder_names_and_paths["streamingt2v"][0].remove(str(tiny_weights_dir))
        folder_paths.filename_list_cache.pop("streamingt2v", None)


def _check_image(image: torch.Tensor, frames: int, size: int) -> None:
    assert image.shape == (frames, size, size, 3)
    assert image.dtype == torch.float32
    assert torch.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


def test_tiny_image_batch_anchor_extend(nodes, tiny, progress_hook):
    size = tiny.size
    (start,) = nodes.init().run(**_init_kwargs(model=tiny.model, images=_image(10, size + 24, size - 8)))
    _check_image(start, 10, size)
    anchor, anchor_image = nodes.anchor().run(frames=start, frame_index=0)
    _check_image(anchor_image, 1, size)
    chunks = 2
    out, count = nodes.extend().run(**_extend_kwargs(model=tiny.model, frames=start, anchor=anchor, length=chunks,
                                                     prompt="a red ball\na blue ball", prompt_per_chunk=True))
    _check_image(out, 10 + 8 * chunks, size)
    assert count == 10 + 8 * chunks
    assert torch.allclose(out[:10], start, atol=1e-6), "the input frames must start the output unchanged"
    previews = [p for _, _, p in progress_hook if p is not None]
    assert len(previews) == chunks and all(p[0] == "JPEG" for p in previews)
    assert progress_hook[-1][1] == 2 * chunks  # total = steps * chunks


def test_tiny_total_frames_exact_trims(nodes, tiny):
    size = tiny.size
    start = _image(16, size, size, seed=3)
    anchor, _ = nodes.anchor().run(frames=start, frame_index=-1)
    out, count = nodes.extend().run(**_extend_kwargs(model=tiny.model, frames=start, anchor=anchor,
                                                     length_mode="total_frames (exact)", length=20))
    _check_image(out, 20, size)
    assert count == 20


def test_tiny_base_model_generates_first_chunk(nodes, tiny):
    (frames,) = nodes.init().run(**_init_kwargs(model=tiny.model, base_model=tiny.base, sampler="dpmpp_2m"))
    _check_image(frames, 16, tiny.size)


def test_tiny_interrupt_mid_video_propagates(nodes, tiny, comfy, reset_interrupt, caplog, output_dir):
    size = tiny.size
    start = _image(8, size, size, seed=5)
    anchor, _ = nodes.anchor().run(frames=start, frame_index=0)
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def interrupt_after_first_chunk(value, total, preview, node_id=None):
        if preview is not None:
            comfy.mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_after_first_chunk)
    try:
        with caplog.at_level(logging.WARNING, logger="streamingt2v"):
            with pytest.raises(comfy.mm.InterruptProcessingException):
                nodes.extend().run(**_extend_kwargs(model=tiny.model, frames=start, anchor=anchor, length=3))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert "after 8 finished frame(s) in 1 chunk(s)" in caplog.text
    (saved,) = (output_dir / "streamingt2v_partial").glob("*.safetensors")
    assert saved.stat().st_size > 0
