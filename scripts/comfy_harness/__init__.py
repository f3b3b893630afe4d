"""Small helpers to drive a real, headless ComfyUI with this pack.

Shared by the fresh-machine scripts (`scripts/demo.sh`, `scripts/run_workflow.py`,
`scripts/make_ui_workflows.py`) and by the integration tests (`tests/comfy_server.py`, `tests/cdp.py`).
Only the standard library, aiohttp (a ComfyUI dependency) and, for thumbnails, Pillow are used.

* `client`  – HTTP + websocket client for a running server (`ComfyClient`, `EventListener`).
* `server`  – prepares a base directory and starts/stops `ComfyUI/main.py` (`ComfyServer`).
* `cdp`     – headless Chromium over the Chrome DevTools Protocol (`Chromium`, `ComfyPage`).
* `workflows` – loading and tweaking the shipped API-format workflows.
"""

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "streamingt2v-longvideo"
