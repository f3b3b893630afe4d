"""Layer C: the shipped UI workflows in the real ComfyUI frontend (headless Chromium over CDP).

For every `workflows/<stem>.json`: `app.loadGraphData` reports no missing node type, and
`app.graphToPrompt()` - exactly what the UI would queue - equals `workflows/api/<stem>.json` (ignoring
`_meta` and UI-only widgets the server does not declare). A screenshot of the canvas is written to the test's
tmp dir, or, with ST2V_UPDATE_THUMBNAILS=1, to the template thumbnail `workflows/<stem>.jpg`.
Skipped only when no Chromium is installed.
"""

from __future__ import annotations

import os

import pytest
from cdp import png_to_jpeg
from comfy_harness import workflows as wf

pytestmark = pytest.mark.canvas


@pytest.mark.parametrize("stem", wf.ui_stems())
def test_ui_workflow_loads_and_matches_api_twin(comfy_page, comfy_server, stem, tmp_path):
    ui = wf.load_ui(stem)
    missing = comfy_page.load_ui(ui, f"{stem}.json")
    assert not missing, f"the frontend reports missing node types for {stem}.json: {missing}"
    loaded = comfy_page.node_types_in_graph()
    assert sorted(loaded) == sorted(n["type"] for n in ui["nodes"]), loaded

    info = comfy_server.object_info()
    prompt = wf.normalize_prompt(comfy_page.graph_to_prompt(), info)
    api = wf.normalize_prompt(wf.load_api(stem), info)
    differing = {node_id: {"frontend": prompt.get(node_id), "api file": api.get(node_id)}
                 for node_id in set(prompt) | set(api) if prompt.get(node_id) != api.get(node_id)}
    assert not differing, (f"graphToPrompt() of workflows/{stem}.json differs from workflows/api/{stem}.json "
                           f"(regenerate with scripts/make_ui_workflows.py): {differing}")

    update = os.environ.get("ST2V_UPDATE_THUMBNAILS") == "1"
    if update:
        comfy_page.focus_mode(True)
    try:
        comfy_page.fit_view()
        png = comfy_page.screenshot_png()
    finally:
        if update:
            comfy_page.focus_mode(False)
    target = wf.WORKFLOWS_DIR / f"{stem}.jpg" if update else tmp_path / f"{stem}.jpg"
    png_to_jpeg(png, target)
    assert target.stat().st_size > 5_000, "the screenshot looks empty"
