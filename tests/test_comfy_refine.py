"""Layer B: the refinement nodes and workflows inside the real ComfyUI 0.3.75 server (HTTP + websocket API).

Reuses the session server of tests/comfy_server.py, whose models folder holds the tiny default weights and the
tiny random refiner (`models/streamingt2v/refiner_tiny/`, the file names the shipped refiner workflows select).
Every run uses a unique seed and output prefix (runtime spec pitfall 6) and 2 sampling steps.
"""

from __future__ import annotations

import copy
import json

import pytest
from comfy_harness import PACK_LINK_NAME
from comfy_harness import workflows as wf
from comfy_server import decode_video

pytestmark = pytest.mark.comfy_server

# NODE_SPEC.md: id -> (required inputs, optional inputs, [(output name, type)], output node?)
REFINE_NODE_SPEC = {
    "ST2V_LoadRefinerMSVid2Vid": (
        ["unet_name", "text_encoder_name", "vae_name", "dtype"], [], [("refiner", "ST2V_REFINER")], False),
    "ST2V_LoadRefinerDiffusers": (["folder", "dtype"], [], [("refiner", "ST2V_REFINER")], False),
    "ST2V_RandomizedBlend": (
        ["chunk_size", "overlap", "variant", "seed"], ["clip_a", "clip_b"],
        [("blend_plan", "ST2V_BLEND_PLAN"), ("merged", "IMAGE")], False),
    "ST2V_RefinerSDEdit": (
        ["refiner", "frames", "prompt", "negative_prompt", "strength", "steps", "cfg", "guidance_rescale", "pad_mode",
         "target_height", "seed"],
        ["blend_plan", "eta", "start_quirk", "keep_frames", "save_to_file", "fps", "batch_guidance"],
        [("frames", "IMAGE"), ("info", "STRING")], True),
}

EXAMPLE_CLIP = (24, 160, 120)  # workflows/inputs/st2v_example_clip.mp4: frames, width, height


def _videos(server, result) -> list[dict]:
    files = [f for f in result.output_files() if f["filename"].endswith(".mp4")]
    videos = []
    for entry in files:
        path = server.output_path(entry)
        assert path.is_file(), f"{path} listed in /history but not on disk"
        videos.append(decode_video(path))
    return videos


def _node_errors(body: dict, node_id: str) -> list[dict]:
    return body.get("node_errors", {}).get(node_id, {}).get("errors", [])


# ---------------------------------------------------------------------------------------------------------
# registration and documentation
# ---------------------------------------------------------------------------------------------------------


def test_object_info_lists_the_refine_nodes_with_docs(comfy_server):
    info = comfy_server.object_info()
    missing = sorted(set(REFINE_NODE_SPEC) - set(info))
    assert not missing, f"refine nodes missing from /object_info (see the server log):\n{missing}\n" \
                        f"{comfy_server.log_tail()}"
    problems = []
    for name, (required, optional, outputs, output_node) in REFINE_NODE_SPEC.items():
        node = info[name]
        if node["python_module"] != f"custom_nodes.{PACK_LINK_NAME}":
            problems.append(f"{name}: python_module {node['python_module']}")
        if not (node.get("description") or "").strip():
            problems.append(f"{name}: empty description")
        if node["category"] not in ("StreamingT2V/loaders", "StreamingT2V/refine"):
            problems.append(f"{name}: category {node['category']}")
        spec = node["input"]
        if list(spec.get("required", {})) != required:
            problems.append(f"{name}: required {list(spec.get('required', {}))}")
        if list(spec.get("optional", {})) != optional:
            problems.append(f"{name}: optional {list(spec.get('optional', {}))}")
        for section in ("required", "optional"):
            for input_name, entry in spec.get(section, {}).items():
                if not (entry[1] if len(entry) > 1 else {}).get("tooltip"):
                    problems.append(f"{name}.{input_name}: no tooltip")
        if list(zip(node["output_name"], node["output"])) != outputs:
            problems.append(f"{name}: outputs {list(zip(node['output_name'], node['output']))}")
        if len(node.get("output_tooltips") or []) != len(outputs):
            problems.append(f"{name}: output tooltips {node.get('output_tooltips')}")
        if bool(node["output_node"]) != output_node:
            problems.append(f"{name}: output_node {node['output_node']}")
    assert not problems, "\n".join(problems)


def test_tiny_refiner_files_are_offered_by_the_pickers(comfy_server):
    info = comfy_server.object_info()
    ms = info["ST2V_LoadRefinerMSVid2Vid"]["input"]["required"]
    assert "refiner_tiny/refiner_tiny_non_ema.pth" in ms["unet_name"][0]
    assert ms["vae_name"][0][0] == "(from converted file)"
    folders = info["ST2V_LoadRefinerDiffusers"]["input"]["required"]["folder"][0]
    assert "refiner_tiny/refiner_tiny_t2v_diffusers" in folders


# ---------------------------------------------------------------------------------------------------------
# the shipped refiner workflows
# ---------------------------------------------------------------------------------------------------------


def test_full_pipeline_workflow_writes_the_refined_long_video(comfy_alive):
    server = comfy_alive
    server.require_weights()
    api = wf.tweak(wf.load_api(wf.FULL_PIPELINE_WORKFLOW), steps=2, seed=server.unique_seed(),
                   prefix=server.unique_prefix("full"), length_mode="chunks", length=2)
    result, events = server.run(api, preview_metadata=True)

    (video,) = _videos(server, result)
    assert video["frames"] == wf.FIRST_CHUNK_FRAMES + 2 * wf.NEW_FRAMES_PER_CHUNK, video  # 32: every frame kept
    assert video["width"] == video["height"], f"square StreamingT2V frames stay square (bars cropped): {video}"
    assert video["codec"] == "h264" and video["fps"] == pytest.approx(8.0), video

    (refine_id,) = wf.nodes_of(api, "ST2V_RefinerSDEdit")
    progress = [p for p in events.of_type("progress") if p.get("prompt_id") == result.prompt_id
                and str(p.get("node")) == refine_id]
    assert progress, "Refiner SDEdit reported no progress"
    assert progress[-1]["value"] == progress[-1]["max"], progress[-1]
    assert all(0 <= p["value"] <= p["max"] for p in progress)
    assert any(p.metadata and str(p.metadata.get("node_id")) == refine_id for p in events.previews), \
        "no preview of a refined frame"


def test_refine_any_video_workflow_streams_every_frame_into_an_mp4(comfy_alive):
    server = comfy_alive
    server.require_weights()
    api = wf.tweak(wf.load_api(wf.REFINE_VIDEO_WORKFLOW), steps=2, seed=server.unique_seed(),
                   prefix=server.unique_prefix("refine_clip"))
    result, _ = server.run(api)

    (refine_id,) = wf.nodes_of(api, "ST2V_RefinerSDEdit")
    (video,) = _videos(server, result)
    frames, width, height = EXAMPLE_CLIP
    assert video["frames"] == frames, video
    # the content size is rounded to whole latent cells, which is coarse at the tiny refiner's size
    assert video["width"] / video["height"] == pytest.approx(width / height, rel=0.1), f"4:3 is kept: {video}"
    assert video["fps"] == pytest.approx(8.0), "the refiner's fps input is linked to the clip's frame rate"
    assert result.outputs[refine_id]["images"][0]["subfolder"] == "st2v_tests"


# ---------------------------------------------------------------------------------------------------------
# bad prompts are refused before anything runs
# ---------------------------------------------------------------------------------------------------------


def test_overlap_not_smaller_than_chunk_size_gets_http_400(comfy_alive):
    server = comfy_alive
    api = copy.deepcopy(wf.load_api(wf.FULL_PIPELINE_WORKFLOW))
    (blend_id,) = wf.nodes_of(api, "ST2V_RandomizedBlend")
    api[blend_id]["inputs"].update(chunk_size=8, overlap=8)
    res = server.client.queue_prompt(api)
    assert res.status == 400, res
    errors = _node_errors(res.body, blend_id)
    assert errors and {e["type"] for e in errors} == {"custom_validation_failed"}, res.body
    assert "must be smaller than chunk_size" in json.dumps(errors), errors


def test_keep_frames_off_without_a_file_gets_http_400(comfy_alive):
    server = comfy_alive
    api = copy.deepcopy(wf.load_api(wf.REFINE_VIDEO_WORKFLOW))
    (refine_id,) = wf.nodes_of(api, "ST2V_RefinerSDEdit")
    api[refine_id]["inputs"].update(keep_frames=False, save_to_file="")
    res = server.client.queue_prompt(api)
    assert res.status == 400, res
    assert "turn keep_frames on or enter a filename prefix" in json.dumps(_node_errors(res.body, refine_id))


def test_missing_refiner_file_gets_http_400_naming_the_downloads(comfy_alive):
    server = comfy_alive
    api = copy.deepcopy(wf.load_api(wf.REFINE_VIDEO_WORKFLOW))
    (loader_id,) = wf.nodes_of(api, "ST2V_LoadRefinerMSVid2Vid")
    api[loader_id]["inputs"]["unet_name"] = "ms_vid2vid_xl/non_ema_0035000.pth"
    res = server.client.queue_prompt(api)
    assert res.status == 400, res
    text = json.dumps(_node_errors(res.body, loader_id))
    for expected in ("non_ema_0035000.pth", "5.65 GB", "open_clip_pytorch_model.bin", "v2-1_512-ema-pruned.ckpt",
                     "ali-vilab/MS-Vid2Vid-XL"):
        assert expected in text, expected
    server.assert_alive()
