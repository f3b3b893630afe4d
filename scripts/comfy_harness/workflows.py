"""The shipped workflows: `workflows/<stem>.json` (UI format, templates) and `workflows/api/<stem>.json`
(API format, what POST /prompt takes), plus small helpers to change their settings."""

from __future__ import annotations

import copy
import json
import pathlib

from . import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
INPUTS_DIR = WORKFLOWS_DIR / "inputs"

TEXT_WORKFLOW = "streamingt2v_text_to_long_video"
EXTEND_WORKFLOW = "streamingt2v_extend_clip"
FULL_PIPELINE_WORKFLOW = "streamingt2v_full_pipeline"
REFINE_VIDEO_WORKFLOW = "streamingt2v_refine_any_video"
REFINE_WORKFLOWS = (FULL_PIPELINE_WORKFLOW, REFINE_VIDEO_WORKFLOW)  # workflows with a Refiner SDEdit node

FIRST_CHUNK_FRAMES = 16
NEW_FRAMES_PER_CHUNK = 8


def api_stems() -> list[str]:
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def ui_stems() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))


def load_api(stem: str) -> dict:
    return json.loads((API_DIR / f"{stem}.json").read_text())


def load_ui(stem: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{stem}.json").read_text())


def strip_meta(api: dict) -> dict:
    """API graph without the `_meta` entries (titles), for comparisons."""
    return {str(node_id): {k: v for k, v in node.items() if k != "_meta"} for node_id, node in api.items()}


def declared_inputs(object_info: dict, class_type: str) -> set[str]:
    """Input names the server declares for a node class (required, optional and hidden)."""
    spec = object_info.get(class_type, {}).get("input", {})
    return {name for section in ("required", "optional", "hidden") for name in spec.get(section, {})}


def normalize_prompt(api: dict, object_info: dict | None = None) -> dict:
    """API graph for comparisons: no `_meta`, ids as strings and, given `/object_info`, only the inputs the
    server declares (the frontend also serialises UI-only widgets such as LoadVideo's `video-preview`,
    which the server ignores)."""
    out = strip_meta(api)
    if object_info is not None:
        for node in out.values():
            if node["class_type"] in object_info:
                declared = declared_inputs(object_info, node["class_type"])
                node["inputs"] = {k: v for k, v in node["inputs"].items() if k in declared}
    return out


def nodes_of(api: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in api.items() if node["class_type"] == class_type]


def set_inputs(api: dict, class_type: str, **values) -> dict:
    """Set widget values on every node of `class_type` (in place); returns `api`."""
    ids = nodes_of(api, class_type)
    if not ids:
        raise KeyError(f"the workflow has no {class_type} node")
    for node_id in ids:
        api[node_id]["inputs"].update(values)
    return api


def tweak(api: dict, *, steps: int | None = None, seed: int | None = None, prefix: str | None = None,
          length_mode: str | None = None, length: int | None = None) -> dict:
    """A copy of an API graph with other sampling steps / seeds / chunk count / output prefix.

    `seed` is used by every sampling node (offset by one per node so the nodes do not share noise), which
    together with a unique `prefix` keeps ComfyUI's cache from skipping the run (runtime spec pitfall 6).
    `steps`, `seed` and `prefix` also apply to Refiner SDEdit (its `save_to_file`, when set).
    """
    api = copy.deepcopy(api)
    sampling = (nodes_of(api, "ST2V_InitChunk") + nodes_of(api, "ST2V_CAMStreamingExtend")
                + nodes_of(api, "ST2V_RefinerSDEdit"))
    for offset, node_id in enumerate(sampling):
        inputs = api[node_id]["inputs"]
        if steps is not None:
            inputs["steps"] = steps
        if seed is not None:
            inputs["seed"] = seed + offset
    for node_id in nodes_of(api, "ST2V_CAMStreamingExtend"):
        if length_mode is not None:
            api[node_id]["inputs"]["length_mode"] = length_mode
        if length is not None:
            api[node_id]["inputs"]["length"] = length
    if prefix is not None:
        for node_id in nodes_of(api, "SaveVideo"):
            api[node_id]["inputs"]["filename_prefix"] = prefix
        for node_id in nodes_of(api, "ST2V_RefinerSDEdit"):
            if api[node_id]["inputs"].get("save_to_file"):
                api[node_id]["inputs"]["save_to_file"] = prefix
    return api


def expected_new_chunks(length_mode: str, length: int, input_frames: int) -> int:
    """Chunks CAM Streaming Extend adds (NODE_SPEC: 8 new frames per chunk, 16 frames = the first chunk)."""
    if length_mode == "chunks":
        return length
    new = length - input_frames
    chunks, rest = divmod(max(new, 0), NEW_FRAMES_PER_CHUNK)
    if length_mode == "total_frames (exact)" and rest:
        chunks += 1
    return chunks


def expected_frames(length_mode: str, length: int, input_frames: int) -> int:
    """Frames of the finished video for one CAM Streaming Extend after `input_frames` frames."""
    if length_mode == "total_frames (exact)":
        return length
    return input_frames + NEW_FRAMES_PER_CHUNK * expected_new_chunks(length_mode, length, input_frames)
