"""Produce the UI-format templates `workflows/<stem>.json` from the API-format `workflows/api/<stem>.json`
with the real ComfyUI frontend, so both forms agree by construction.

For every API workflow: start a headless ComfyUI with this pack (private base directory, tiny default
weights, example inputs), open the canvas in headless Chromium, `app.loadApiJson(api, name)`, set the
seed controls to "fixed" (reproducible templates), re-flow the auto-arranged nodes into bands, check that
`app.graphToPrompt()` gives back the API workflow (ignoring `_meta`), and write
`JSON.stringify(app.graph.serialize())` to `workflows/<stem>.json`. With `--thumbnails` a screenshot of the
canvas becomes the template thumbnail `workflows/<stem>.jpg`.

    .venv/bin/python scripts/make_ui_workflows.py [--thumbnails] [--check] [stem ...]

`--check` writes nothing and exits 1 when a committed UI file differs from what the frontend produces now.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from comfy_harness import workflows as wf  # noqa: E402
from comfy_harness.cdp import Chromium, ComfyPage, png_to_jpeg  # noqa: E402
from comfy_harness.server import (ComfyServer, copy_example_inputs, prepare_base,  # noqa: E402
                                  seed_tiny_refiner, seed_tiny_weights, seed_toy_model)

# Frontend settings for a clean canvas (POSTed before the page loads).
CANVAS_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}


def ui_from_api(page: ComfyPage, stem: str) -> tuple[dict, dict]:
    """(UI graph, API graph of `graphToPrompt`) after loading `workflows/api/<stem>.json`."""
    api = wf.load_api(stem)
    missing = page.load_api(api, f"{stem}.json")
    if missing:
        raise SystemExit(f"{stem}: the frontend does not know the node types {missing}")
    page.set_seed_controls("fixed")
    time.sleep(2.0)  # let media previews (LoadVideo) load and resize their nodes before the layout
    page.wrap_layout()
    return page.serialize(), page.graph_to_prompt()


def diff(a: dict, b: dict) -> list[str]:
    lines = []
    for node_id in sorted(set(a) | set(b), key=str):
        if a.get(node_id) != b.get(node_id):
            lines.append(f"  node {node_id}: api file {a.get(node_id)}\n  {'':>{len(node_id) + 7}}frontend {b.get(node_id)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stems", nargs="*", help="workflow stems (default: every workflows/api/*.json)")
    parser.add_argument("--thumbnails", action="store_true", help="also write workflows/<stem>.jpg")
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args()
    stems = args.stems or wf.api_stems()

    failures = 0
    with tempfile.TemporaryDirectory(prefix="st2v-make-ui-") as tmp:
        base = prepare_base(pathlib.Path(tmp))
        seed_tiny_weights(base / "models" / "streamingt2v")
        seed_tiny_refiner(base / "models" / "streamingt2v")
        seed_toy_model(base / "models" / "streamingt2v")
        copy_example_inputs(base / "input")
        with ComfyServer(base) as server:
            bad = server.import_failures()
            if bad:
                raise SystemExit("the pack failed to import:\n" + "\n".join(bad) + "\n" + server.log_tail())
            server.client.save_settings(CANVAS_SETTINGS)
            object_info = server.client.object_info()
            with Chromium(width=1280, height=720) as browser:
                page = ComfyPage(browser.page(), server.url).open()
                try:
                    for stem in stems:
                        ui, prompt = ui_from_api(page, stem)
                        problems = diff(wf.normalize_prompt(wf.load_api(stem), object_info),
                                        wf.normalize_prompt(prompt, object_info))
                        if problems:
                            print(f"{stem}: graphToPrompt() differs from workflows/api/{stem}.json:")
                            print("\n".join(problems))
                            failures += 1
                            continue
                        target = wf.WORKFLOWS_DIR / f"{stem}.json"
                        text = json.dumps(ui, indent=2) + "\n"
                        if args.check:
                            current = target.read_text() if target.exists() else ""
                            same = current and json.loads(current) == json.loads(text)
                            print(f"{stem}: {'up to date' if same else 'DIFFERS from ' + str(target)}")
                            failures += 0 if same else 1
                            continue
                        target.write_text(text)
                        print(f"wrote {target}")
                        if args.thumbnails:
                            page.focus_mode(True)
                            page.fit_view()
                            jpg = png_to_jpeg(page.screenshot_png(), wf.WORKFLOWS_DIR / f"{stem}.jpg")
                            page.focus_mode(False)
                            print(f"wrote {jpg}")
                finally:
                    page.page.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
