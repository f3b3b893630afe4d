"""Layer B: the pack inside a real ComfyUI 0.3.75 server (HTTP + websocket API).

One server per session (`comfy_server` fixture in tests/comfy_server.py). Every run uses a unique seed and
output prefix, so ComfyUI's cache never hides a run (runtime spec pitfall 6), and tiny settings (2 steps,
one chunk) so the whole module stays within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
from comfy_harness import PACK_LINK_NAME
from comfy_harness import workflows as wf
from comfy_server import BROKEN_WEIGHTS, decode_video

pytestmark = pytest.mark.comfy_server

# NODE_SPEC.md: id -> (required inputs, optional inputs, [(output name, type)])
NODE_SPEC = {
    "ST2V_LoadStreamingT2V": (
        ["ckpt_name", "dtype"], ["image_encoder_name"], [("model", "ST2V_MODEL")]),
    "ST2V_LoadModelScopeBase": (
        ["model", "unet_name", "dtype"], [], [("base_model", "ST2V_BASE_MODEL")]),
    "ST2V_InitChunk": (
        ["model", "prompt", "negative_prompt", "steps", "cfg", "seed", "sampler"],
        ["base_model", "images", "resize", "crop"], [("frames", "IMAGE")]),
    "ST2V_APMAnchor": (
        ["frames", "frame_index"], ["image"], [("anchor", "ST2V_ANCHOR"), ("anchor_image", "IMAGE")]),
    "ST2V_CAMStreamingExtend": (
        ["model", "frames", "anchor", "prompt", "prompt_per_chunk", "negative_prompt", "length_mode", "length",
         "steps", "cfg", "eta", "seed", "guidance_mode"],
        ["cfg_anchor"], [("frames", "IMAGE"), ("frame_count", "INT")]),
}

EXAMPLE_CLIP_FRAMES = 24  # workflows/inputs/st2v_example_clip.mp4 (scripts/make_example_clip.py)


def _only_video(server, result) -> dict:
    files = [f for f in result.output_files() if f["filename"].endswith(".mp4")]
    assert len(files) == 1, f"expected one mp4 output, got {result.outputs}"
    path = server.output_path(files[0])
    assert path.is_file(), f"{path} listed in /history but not on disk"
    return decode_video(path)


def _cheap_good_prompt(server, name: str) -> tuple[dict, int]:
    """The extend-clip workflow with 0 new chunks: no sampling, exercises every node but the samplers."""
    api = wf.tweak(wf.load_api(wf.EXTEND_WORKFLOW), steps=2, seed=server.unique_seed(),
                   prefix=server.unique_prefix(name), length_mode="chunks", length=0)
    return api, EXAMPLE_CLIP_FRAMES


# ---------------------------------------------------------------------------------------------------------
# import, registration, documentation
# ---------------------------------------------------------------------------------------------------------


def test_pack_imports_without_errors(comfy_server):
    log = comfy_server.server.log_text()
    assert not comfy_server.server.import_failures(), log
    timing_lines = [line for line in log.splitlines()
                    if f"custom_nodes/{PACK_LINK_NAME}" in line and "seconds" in line]
    assert timing_lines, f"the pack is missing from ComfyUI's 'Import times for custom nodes' block:\n{log[-4000:]}"
    assert all("IMPORT FAILED" not in line for line in timing_lines), timing_lines
    info = comfy_server.object_info()
    ours = {name: node for name, node in info.items() if name.startswith("ST2V_")}
    assert ours, "no ST2V_ node in /object_info"
    for name, node in ours.items():
        assert node["python_module"] == f"custom_nodes.{PACK_LINK_NAME}", (name, node["python_module"])


def test_object_info_lists_every_node_with_docs(comfy_server):
    info = comfy_server.object_info()
    missing = sorted(set(NODE_SPEC) - set(info))
    assert not missing, f"nodes of NODE_SPEC.md missing from /object_info: {missing}"
    problems = []
    for name, (required, optional, outputs) in NODE_SPEC.items():
        node = info[name]
        if not (node.get("description") or "").strip():
            problems.append(f"{name}: empty DESCRIPTION")
        if not node["category"].startswith("StreamingT2V"):
            problems.append(f"{name}: category {node['category']!r} is not under StreamingT2V")
        if not node.get("display_name") or node["display_name"] == name:
            problems.append(f"{name}: no display name")
        spec = node["input"]
        if list(spec.get("required", {})) != required:
            problems.append(f"{name}: required inputs {list(spec.get('required', {}))} != NODE_SPEC {required}")
        if sorted(spec.get("optional", {})) != sorted(optional):
            problems.append(f"{name}: optional inputs {sorted(spec.get('optional', {}))} != NODE_SPEC {optional}")
        for section in ("required", "optional"):
            for input_name, entry in spec.get(section, {}).items():
                options = entry[1] if len(entry) > 1 else {}
                if not (options.get("tooltip") or "").strip():
                    problems.append(f"{name}.{input_name}: no tooltip")
        got_outputs = list(zip(node["output_name"], node["output"]))
        if got_outputs != outputs:
            problems.append(f"{name}: outputs {got_outputs} != NODE_SPEC {outputs}")
        tooltips = node.get("output_tooltips") or []
        if len(tooltips) != len(node["output"]) or not all((t or "").strip() for t in tooltips):
            problems.append(f"{name}: output tooltips {tooltips}")
    assert not problems, "\n".join(problems)


def test_workflow_templates_are_served(comfy_server):
    templates = comfy_server.client.get_json("/api/workflow_templates")
    assert templates.get(PACK_LINK_NAME) is not None, f"pack not in /api/workflow_templates: {templates}"
    assert sorted(templates[PACK_LINK_NAME]) == wf.ui_stems(), "only the top-level UI workflows are templates"
    for stem in wf.ui_stems():
        served = json.loads(comfy_server.client.get_bytes(
            f"/api/workflow_templates/{PACK_LINK_NAME}/{stem}.json"))
        assert served == wf.load_ui(stem)
        thumbnail = wf.WORKFLOWS_DIR / f"{stem}.jpg"
        assert thumbnail.is_file(), f"template {stem} has no thumbnail {thumbnail.name}"


# ---------------------------------------------------------------------------------------------------------
# shipped workflows name only existing nodes and inputs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", wf.api_stems())
def test_api_workflow_nodes_and_inputs_exist(comfy_server, stem):
    info = comfy_server.object_info()
    problems = []
    for node_id, node in wf.load_api(stem).items():
        cls = node["class_type"]
        if cls not in info:
            problems.append(f"node {node_id}: unknown class {cls}")
            continue
        spec = info[cls]["input"]
        declared = wf.declared_inputs(info, cls)
        for input_name, value in node["inputs"].items():
            if input_name not in declared:
                problems.append(f"node {node_id} ({cls}): unknown input {input_name!r}")
                continue
            entry = spec.get("required", {}).get(input_name) or spec.get("optional", {}).get(input_name)
            if isinstance(value, list):  # a link ["<node id>", slot]
                continue
            choices = entry[0] if isinstance(entry[0], list) else (
                entry[1].get("options") if entry[0] == "COMBO" and len(entry) > 1 else None)
            if choices is not None and value not in choices:
                problems.append(f"node {node_id} ({cls}): {input_name}={value!r} not in {choices}")
        for input_name in spec.get("required", {}):
            if input_name not in node["inputs"]:
                problems.append(f"node {node_id} ({cls}): required input {input_name!r} missing")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stem", wf.ui_stems())
def test_ui_workflow_node_types_exist(comfy_server, stem):
    info = comfy_server.object_info()
    ui = wf.load_ui(stem)
    unknown = sorted({n["type"] for n in ui["nodes"]} - set(info))
    assert not unknown, f"{stem}.json uses node types unknown to the server: {unknown}"


def test_every_workflow_has_both_formats():
    assert wf.api_stems(), "no workflows/api/*.json"
    assert wf.api_stems() == wf.ui_stems(), "every workflows/<stem>.json needs a workflows/api/<stem>.json twin"


# ---------------------------------------------------------------------------------------------------------
# running the shipped workflows
# ---------------------------------------------------------------------------------------------------------

RUNS = {
    # stem: (length_mode, length, input frames, preview with metadata?)
    wf.TEXT_WORKFLOW: ("total_frames (floor)", 31, wf.FIRST_CHUNK_FRAMES, True),  # floor -> 16 + 8*1 = 24
    wf.EXTEND_WORKFLOW: ("chunks", 1, EXAMPLE_CLIP_FRAMES, False),                 # 24 + 8*1 = 32
}


# the refiner workflows are run by tests/test_comfy_refine.py
STREAM_STEMS = [stem for stem in wf.api_stems() if stem not in wf.REFINE_WORKFLOWS]


@pytest.mark.parametrize("stem", STREAM_STEMS)
def test_shipped_workflow_runs(comfy_alive, stem):
    server = comfy_alive
    server.require_weights()
    length_mode, length, input_frames, metadata = RUNS.get(stem, ("chunks", 1, wf.FIRST_CHUNK_FRAMES, False))
    api = wf.tweak(wf.load_api(stem), steps=2, seed=server.unique_seed(), prefix=server.unique_prefix(stem),
                   length_mode=length_mode, length=length)
    result, events = server.run(api, preview_metadata=metadata)

    video = _only_video(server, result)
    expected = wf.expected_frames(length_mode, length, input_frames)
    assert video["frames"] == expected, f"{stem}: {video} but {expected} frames were promised"
    assert video["width"] == video["height"], f"StreamingT2V frames are square: {video}"
    assert video["fps"] == pytest.approx(8.0), video
    assert video["codec"] == "h264", video

    progress = [p for p in events.of_type("progress") if p.get("prompt_id") == result.prompt_id]
    assert progress, f"no progress events over the websocket: {[e['type'] for e in events.events]}"
    assert all(0 <= p["value"] <= p["max"] for p in progress), progress
    extend_ids = set(wf.nodes_of(api, "ST2V_CAMStreamingExtend"))
    assert any(str(p["node"]) in extend_ids for p in progress), "CAM Streaming Extend reported no progress"
    assert events.previews, "no binary preview frame over the websocket"
    expected_type = 4 if metadata else 1
    assert {p.event_type for p in events.previews} == {expected_type}, [p.event_type for p in events.previews]
    from PIL import Image

    preview = Image.open(io.BytesIO(events.previews[-1].image))
    preview.load()
    assert preview.width > 0 and preview.height > 0
    if metadata:
        assert events.previews[-1].metadata.get("prompt_id") == result.prompt_id
    executed = [e for e in events.of_type("executed") if e.get("prompt_id") == result.prompt_id]
    assert any(str(e["node"]) in wf.nodes_of(api, "SaveVideo") for e in executed), executed


# ---------------------------------------------------------------------------------------------------------
# errors, interrupts
# ---------------------------------------------------------------------------------------------------------


def _node_error_types(body: dict, node_id: str) -> list[str]:
    return [e["type"] for e in body.get("node_errors", {}).get(node_id, {}).get("errors", [])]


def test_bad_prompts_get_http_400_and_server_keeps_serving(comfy_alive):
    server = comfy_alive
    server.require_weights()
    base = wf.load_api(wf.TEXT_WORKFLOW)
    init_id = wf.nodes_of(base, "ST2V_InitChunk")[0]
    extend_id = wf.nodes_of(base, "ST2V_CAMStreamingExtend")[0]

    negative_steps = copy.deepcopy(base)
    negative_steps[init_id]["inputs"]["steps"] = -3
    res = server.client.queue_prompt(negative_steps)
    assert res.status == 400, res
    assert res.body["error"]["type"] == "prompt_outputs_failed_validation", res.body
    assert "value_smaller_than_min" in _node_error_types(res.body, init_id), res.body

    missing_input = copy.deepcopy(base)
    del missing_input[extend_id]["inputs"]["prompt"]
    res = server.client.queue_prompt(missing_input)
    assert res.status == 400, res
    assert "required_input_missing" in _node_error_types(res.body, extend_id), res.body

    too_short = copy.deepcopy(base)
    too_short[extend_id]["inputs"].update(length_mode="total_frames (floor)", length=8)
    res = server.client.queue_prompt(too_short)
    assert res.status == 400, res
    errors = res.body["node_errors"][extend_id]["errors"]
    # ComfyUI repeats a VALIDATE_INPUTS message once per input the method takes
    assert {e["type"] for e in errors} == {"custom_validation_failed"}, res.body
    assert "16" in json.dumps(errors), "the message should name the 16-frame minimum"

    unknown_node = copy.deepcopy(base)
    unknown_node["99"] = {"class_type": "ST2V_DoesNotExist", "inputs": {}}
    res = server.client.queue_prompt(unknown_node)
    assert res.status == 400 and res.body["error"]["type"] == "invalid_prompt", res.body

    server.assert_alive()
    good, frames = _cheap_good_prompt(server, "after_400")
    result, _ = server.run(good)
    assert _only_video(server, result)["frames"] == frames


def test_model_error_is_reported_clearly(comfy_alive):
    server = comfy_alive
    api = wf.tweak(wf.load_api(wf.TEXT_WORKFLOW), steps=2, seed=server.unique_seed(),
                   prefix=server.unique_prefix("broken"))
    loader_id = wf.nodes_of(api, "ST2V_LoadStreamingT2V")[0]
    api[loader_id]["inputs"]["ckpt_name"] = BROKEN_WEIGHTS
    result, events = server.run(api, expect="error")
    error = result.message("execution_error")
    assert error is not None, result.message_types()
    assert error["node_type"] == "ST2V_LoadStreamingT2V" and str(error["node_id"]) == loader_id, error
    assert BROKEN_WEIGHTS in error["exception_message"], f"the message should name the file: {error}"
    assert "Traceback" not in error["exception_message"]
    assert events.of_type("execution_error"), "no execution_error event over the websocket"
    server.assert_alive()


def test_interrupt_mid_run_and_server_keeps_serving(comfy_alive):
    server = comfy_alive
    server.require_weights()
    api = wf.tweak(wf.load_api(wf.TEXT_WORKFLOW), steps=50, seed=server.unique_seed(),
                   prefix=server.unique_prefix("interrupt"), length_mode="chunks", length=4)
    with server.client.listen() as events:
        queued = server.client.queue_prompt(api)
        assert queued.status == 200, queued
        prompt_id = queued.body["prompt_id"]
        events.wait_for(lambda ev: [p for p in ev.of_type("progress") if p.get("prompt_id") == prompt_id],
                        timeout=600)
        server.client.interrupt()
        history = server.client.wait_for_history(prompt_id, timeout=300)
        events.wait_finished(prompt_id, timeout=30)
    types = [m[0] for m in history["status"]["messages"]]
    assert "execution_interrupted" in types, f"status {history['status']}"
    assert history["status"]["status_str"] == "error"
    assert not history.get("outputs"), "an interrupted run must not save a video"
    assert any(e["type"] == "execution_interrupted" for e in events.events)

    server.assert_alive()
    good, frames = _cheap_good_prompt(server, "after_interrupt")
    result, _ = server.run(good)
    assert _only_video(server, result)["frames"] == frames


def test_an_interrupt_after_a_finished_chunk_keeps_its_frames_on_disk(comfy_alive):
    """Principle 5: the frames an interrupted extension already finished are saved with the resume state."""
    from streaming_core.resume import load_partial

    server = comfy_alive
    server.require_weights()
    api = wf.tweak(wf.load_api(wf.TEXT_WORKFLOW), steps=2, seed=server.unique_seed(),
                   prefix=server.unique_prefix("partial"), length_mode="chunks", length=6)
    (extend_id,) = wf.nodes_of(api, "ST2V_CAMStreamingExtend")
    partial_dir = server.base / "output" / "streamingt2v_partial"
    before = set(partial_dir.glob("*.safetensors")) if partial_dir.exists() else set()
    with server.client.listen() as events:
        queued = server.client.queue_prompt(api)
        assert queued.status == 200, queued
        prompt_id = queued.body["prompt_id"]
        # progress of the extend node counts steps over all chunks: value 3 means chunk 1 is done (2 steps each)
        events.wait_for(lambda ev: [p for p in ev.of_type("progress")
                                    if p.get("prompt_id") == prompt_id and str(p.get("node")) == str(extend_id)
                                    and p.get("value", 0) >= 3], timeout=600)
        server.client.interrupt()
        history = server.client.wait_for_history(prompt_id, timeout=300)
    assert history["status"]["status_str"] == "error"
    (saved,) = set(partial_dir.glob("*.safetensors")) - before
    frames, noise_state, info = load_partial(saved)
    assert frames.shape[0] >= 16 + 8 and (frames.shape[0] - 16) % 8 == 0
    assert noise_state is not None and info["remaining_chunks"] == 6 - info["chunks_done"]
    assert info["stopped_by"] == "InterruptProcessingException"
