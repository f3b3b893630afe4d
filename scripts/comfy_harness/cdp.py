"""Headless Chromium driven over the Chrome DevTools Protocol (CDP) with aiohttp's websocket client.

`Chromium` launches the browser with a private profile; `CdpPage` is a blocking facade over one page's
CDP websocket (its event loop runs in a background thread); `ComfyPage` adds the ComfyUI frontend calls
used by the tests and by `scripts/make_ui_workflows.py` (runtime spec §4).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

from .server import free_port

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class CdpError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """$ST2V_CHROMIUM or the first Chromium/Chrome executable on PATH."""
    explicit = os.environ.get("ST2V_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) or os.path.isfile(explicit) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium with remote debugging on a free local port."""

    def __init__(self, executable: str | None = None, width: int = 1600, height: int = 900,
                 log_path: pathlib.Path | None = None):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise CdpError(f"no Chromium found (tried {', '.join(BROWSER_NAMES)}; set ST2V_CHROMIUM)")
        self.width, self.height = width, height
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="st2v-chromium-")
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def command(self) -> list[str]:
        return [self.executable, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-dev-shm-usage", "--disable-quic", "--disable-sync",
                "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                f"--window-size={self.width},{self.height}",
                f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}",
                "about:blank"]

    def start(self, timeout: float = 60.0) -> "Chromium":
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CdpError(f"chromium exited with code {self.proc.returncode}: {' '.join(self.command)}")
            try:
                self._get("/json/version")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise CdpError(f"chromium did not open its debugging port within {timeout:.0f} s")

    def _get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def page(self) -> "CdpPage":
        """Connect to the first page target (the about:blank tab the browser opened)."""
        deadline = time.monotonic() + 20
        while True:
            targets = [t for t in self._get("/json/list") if t.get("type") == "page"]
            if targets:
                page = CdpPage(targets[0]["webSocketDebuggerUrl"]).connect()
                page.call("Emulation.setDeviceMetricsOverride", {
                    "width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
                return page
            if time.monotonic() > deadline:
                raise CdpError("chromium has no page target")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CdpPage:
    """Blocking CDP session on one page. `call()` sends a command, `evaluate()` runs JavaScript."""

    def __init__(self, ws_url: str):
        self.ws_url = ws_url
        self.console: list[str] = []  # console messages and uncaught exceptions, for diagnostics
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cdp", daemon=True)
        self._session = None
        self._ws = None
        self._reader = None

    def connect(self) -> "CdpPage":
        self._thread.start()
        self._sync(self._connect(), 30)
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def _sync(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.ws_url, max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        import aiohttp

        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                params = data["params"]
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                self.console.append(f"console.{params.get('type')}: {text}")
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"].get("exceptionDetails", {})
                self.console.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("CDP websocket closed"))

    async def _call(self, method: str, params: dict) -> dict:
        msg_id = next(self._ids)
        fut = self._loop.create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        return await fut

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        answer = self._sync(self._call(method, params or {}), timeout)
        if "error" in answer:
            raise CdpError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def evaluate(self, expression: str, await_promise: bool = True, timeout: float = 60.0):
        """Evaluate JavaScript and return its JSON-serialisable value; JS exceptions raise CdpError."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": await_promise,
                                                "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"JavaScript error: {text}\nexpression: {expression[:300]}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.25):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression, await_promise=False)
            except CdpError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out after {timeout:.0f} s waiting for `{expression}`; "
                               f"console tail: {self.console[-10:]}")
            time.sleep(poll)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        async def _close():
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()
            if self._reader is not None:
                try:
                    await asyncio.wait_for(self._reader, 5)
                except Exception:
                    pass
        if self._thread.is_alive():
            try:
                self._sync(_close(), 15)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)


def js(value) -> str:
    """A Python value as a JavaScript literal."""
    return json.dumps(value)


class ComfyPage:
    """The ComfyUI frontend (`window.app`) in a CDP page."""

    def __init__(self, page: CdpPage, url: str):
        self.page = page
        self.url = url.rstrip("/") + "/"

    def open(self, timeout: float = 90.0) -> "ComfyPage":
        self.page.navigate(self.url)
        self.page.wait_for("!!(window.app && window.app.graph && window.app.canvas)", timeout=timeout)
        # Record the node types the frontend reports missing instead of opening its dialog.
        self.page.evaluate(
            "window.__st2vMissing = []; app.showMissingNodesError = (types) => {"
            " window.__st2vMissing.push(...types.map(t => typeof t === 'object' ? t.type : t)); }; true",
            await_promise=False)
        return self

    def load_ui(self, workflow: dict, name: str = "workflow.json") -> list[str]:
        """`app.loadGraphData` with the UI-format graph; returns the node types reported missing."""
        self.page.evaluate("window.__st2vMissing = []; true", await_promise=False)
        self.page.evaluate(f"app.loadGraphData({js(workflow)}, true, true, {js(name)}).then(() => true)")
        return self.page.evaluate("window.__st2vMissing", await_promise=False) or []

    def load_api(self, api: dict, name: str = "workflow.json") -> list[str]:
        """`app.loadApiJson` (the frontend lays the nodes out); returns the node types reported missing."""
        self.page.evaluate("window.__st2vMissing = []; true", await_promise=False)
        self.page.evaluate(f"(async () => {{ await app.loadApiJson({js(api)}, {js(name)}); return true; }})()")
        return self.page.evaluate("window.__st2vMissing", await_promise=False) or []

    def serialize(self) -> dict:
        return json.loads(self.page.evaluate("JSON.stringify(app.graph.serialize())", await_promise=False))

    def graph_to_prompt(self) -> dict:
        return json.loads(self.page.evaluate("app.graphToPrompt().then(p => JSON.stringify(p.output))"))

    def node_types_in_graph(self) -> list[str]:
        return self.page.evaluate("app.graph.serialize().nodes.map(n => n.type)", await_promise=False)

    def set_seed_controls(self, mode: str = "fixed") -> int:
        """Set every `control_after_generate` widget (seed controls) to `mode`; returns how many changed."""
        return self.page.evaluate(
            "(() => { let n = 0; for (const node of app.graph.nodes) { for (const w of node.widgets || []) {"
            f" if (w.name === 'control_after_generate') {{ w.value = {js(mode)}; n++; }} }} }}"
            " app.graph.setDirtyCanvas(true, true); return n; })()", await_promise=False)

    def wrap_layout(self, max_columns: int = 4, gap_x: int = 60, gap_y: int = 80) -> None:
        """Re-flow the single row of columns that `loadApiJson`'s auto-arrange produces into bands of at
        most `max_columns` columns (easier to read, better thumbnails), re-stacking each column with the
        nodes' current sizes (e.g. after a video preview grew a node). Links are untouched."""
        self.page.evaluate(f"""(() => {{
            const nodes = app.graph.nodes.slice();
            const xs = [...new Set(nodes.map(n => Math.round(n.pos[0])))].sort((a, b) => a - b);
            const columns = xs.map(x => nodes.filter(n => Math.round(n.pos[0]) === x));
            const top0 = Math.min(...nodes.map(n => n.pos[1]));
            let bandTop = top0;
            for (let b = 0; b * {max_columns} < columns.length; b++) {{
                const band = columns.slice(b * {max_columns}, (b + 1) * {max_columns});
                let x = 100, bandHeight = 0;
                for (const col of band) {{
                    col.sort((a, b) => a.pos[1] - b.pos[1]);
                    let width = 0, y = bandTop;
                    for (const n of col) {{
                        n.pos[1] = y;
                        n.pos[0] = x;
                        y += n.size[1] + {gap_y};
                        width = Math.max(width, n.size[0]);
                        bandHeight = Math.max(bandHeight, n.pos[1] + n.size[1] - bandTop);
                    }}
                    x += width + {gap_x};
                }}
                bandTop += bandHeight + {gap_y};
            }}
            app.graph.setDirtyCanvas(true, true);
            return true;
        }})()""", await_promise=False)

    def focus_mode(self, on: bool = True) -> None:
        """Hide the side bar, tabs and menus (for clean screenshots); toggles Workspace.ToggleFocusMode."""
        self.page.evaluate(
            f"(async () => {{ if (!!window.__st2vFocus !== {js(on)}) {{"
            " await app.extensionManager.command.execute('Workspace.ToggleFocusMode');"
            f" window.__st2vFocus = {js(on)}; }} return true; }})()")
        time.sleep(0.3)

    def fit_view(self) -> None:
        self.page.evaluate(
            "(async () => { try { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); }"
            " catch (e) { app.canvas.ds.reset(); } app.graph.setDirtyCanvas(true, true); return true; })()")
        time.sleep(0.5)

    def screenshot_png(self) -> bytes:
        self.page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        return self.page.screenshot_png()


def png_to_jpeg(png: bytes, path: pathlib.Path, quality: int = 85, max_width: int | None = None) -> pathlib.Path:
    """Save a PNG screenshot as JPEG (optionally scaled down to `max_width`)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if max_width and image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality, optimize=True)
    return path
