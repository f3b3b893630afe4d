"""Layer C fixtures: the real ComfyUI frontend in headless Chromium over CDP (runtime spec §4).

The CDP client itself is `scripts/comfy_harness/cdp.py` (shared with scripts/make_ui_workflows.py). Tests
using `comfy_page` are skipped - with the reason - only when no Chromium executable is installed
(`apt-get install chromium`, done by scripts/setup.sh as root; $ST2V_CHROMIUM picks another binary).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))

from comfy_harness.cdp import (BROWSER_NAMES, CdpError, CdpPage, Chromium, ComfyPage,  # noqa: E402,F401
                               find_chromium, png_to_jpeg)

# Settings POSTed before the page loads: no first-run template dialog, clean canvas for screenshots.
CANVAS_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Chromium:
    executable = find_chromium()
    if executable is None:
        pytest.skip(f"canvas tests need Chromium, none found (tried {', '.join(BROWSER_NAMES)}; "
                    "install it with `apt-get install chromium` or set ST2V_CHROMIUM)")
    log = tmp_path_factory.mktemp("chromium") / "chromium.log"
    browser = Chromium(executable, width=1280, height=720, log_path=log)
    try:
        browser.start()
    except CdpError as exc:
        pytest.fail(f"Chromium did not start: {exc}\n{log.read_text(errors='replace')[-3000:] if log.exists() else ''}",
                    pytrace=False)
    try:
        yield browser
    finally:
        browser.stop()


@pytest.fixture(scope="session")
def comfy_page(chromium, comfy_server) -> ComfyPage:
    """The ComfyUI canvas of the session's server, loaded once (the page is reused by every canvas test)."""
    comfy_server.client.save_settings(CANVAS_SETTINGS)
    page = chromium.page()
    try:
        yield ComfyPage(page, comfy_server.url).open()
    finally:
        page.close()
