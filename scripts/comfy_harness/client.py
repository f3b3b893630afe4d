"""HTTP and websocket client for a running ComfyUI server (API of ComfyUI 0.3.75).

HTTP uses urllib (blocking, no extra dependency). The websocket listener runs aiohttp's client in a
background thread with its own event loop and collects JSON events and binary preview frames.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable

# Binary websocket event types (server.py::BinaryEventTypes)
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


class ComfyError(RuntimeError):
    """Raised for unexpected HTTP answers or time-outs."""


@dataclasses.dataclass
class HttpResult:
    status: int
    body: Any  # parsed JSON when possible, else bytes


@dataclasses.dataclass
class Preview:
    """One binary preview frame: event type 1 (plain) or 4 (with metadata)."""

    event_type: int
    image_format: str  # "JPEG" / "PNG" (or the mimetype given in the metadata)
    image: bytes
    metadata: dict | None = None


@dataclasses.dataclass
class RunResult:
    prompt_id: str
    history: dict  # the /history entry of the prompt: prompt, outputs, status, meta

    @property
    def status_str(self) -> str:
        return self.history.get("status", {}).get("status_str", "")

    @property
    def messages(self) -> list:
        return self.history.get("status", {}).get("messages", [])

    def message_types(self) -> list[str]:
        return [m[0] for m in self.messages]

    def message(self, kind: str) -> dict | None:
        for name, data in self.messages:
            if name == kind:
                return data
        return None

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def output_files(self) -> list[dict]:
        """Every file entry (`filename`, `subfolder`, `type`) listed by the output nodes."""
        files = []
        for node_output in self.outputs.values():
            for key in ("images", "gifs", "videos", "audio"):
                for item in node_output.get(key, []) or []:
                    if isinstance(item, dict) and "filename" in item:
                        files.append(item)
        return files

    def error_summary(self) -> str:
        err = self.message("execution_error")
        if err:
            return (f"{err.get('node_type')} (node {err.get('node_id')}) raised "
                    f"{err.get('exception_type')}: {err.get('exception_message')}\n"
                    + "".join(err.get("traceback") or []))
        return f"status={self.status_str!r} messages={self.message_types()}"


class ComfyClient:
    """Blocking client for one server, e.g. `ComfyClient("http://127.0.0.1:8188")`."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # -- raw HTTP ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> HttpResult:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return HttpResult(status, parsed)

    def get_json(self, path: str) -> Any:
        res = self.request("GET", path)
        if res.status != 200:
            raise ComfyError(f"GET {path} -> HTTP {res.status}: {res.body!r}"[:2000])
        return res.body

    def post_json(self, path: str, body: Any) -> HttpResult:
        return self.request("POST", path, body)

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=self.timeout) as resp:
            return resp.read()

    # -- API ----------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        try:
            return self.request("GET", "/system_stats", timeout=2).status == 200
        except OSError:
            return False

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue_prompt(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> HttpResult:
        """POST /prompt. Returns the HTTP status and body; a 400 body holds `error` and `node_errors`."""
        body = {"prompt": prompt, "client_id": client_id or self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        return self.post_json("/prompt", body)

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}")

    def wait_for_history(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.1) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id).get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s (queue: {self.get_json('/queue')})")

    def run(self, prompt: dict, timeout: float = 600.0, client_id: str | None = None,
            extra_data: dict | None = None) -> RunResult:
        """Queue a prompt and wait until it finished (success or error). Raises on HTTP != 200."""
        res = self.queue_prompt(prompt, client_id=client_id, extra_data=extra_data)
        if res.status != 200:
            raise ComfyError(f"POST /prompt -> HTTP {res.status}: {json.dumps(res.body, indent=1)[:4000]}")
        prompt_id = res.body["prompt_id"]
        return RunResult(prompt_id, self.wait_for_history(prompt_id, timeout=timeout))

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def free(self, unload_models: bool = False) -> None:
        self.post_json("/free", {"unload_models": unload_models, "free_memory": True})

    def save_settings(self, settings: dict) -> None:
        """POST /settings (merged into the user's comfy.settings.json)."""
        res = self.post_json("/settings", settings)
        if res.status != 200:
            raise ComfyError(f"POST /settings -> HTTP {res.status}: {res.body!r}")

    def view(self, file_entry: dict) -> bytes:
        query = urllib.parse.urlencode({
            "filename": file_entry["filename"],
            "subfolder": file_entry.get("subfolder", ""),
            "type": file_entry.get("type", "output"),
        })
        return self.get_bytes(f"/view?{query}")

    def listen(self, supports_preview_metadata: bool = False) -> "EventListener":
        """A websocket listener for this client's id (use as a context manager)."""
        return EventListener(self.base_url, self.client_id, supports_preview_metadata)


class EventListener:
    """Collects websocket events of one client id in a background thread.

    `events` holds `{"type", "data"}` JSON messages, `previews` the decoded binary preview frames.
    With `supports_preview_metadata=True` the first message announces the feature flag, so the
    server sends type-4 frames instead of type-1 frames.
    """

    def __init__(self, base_url: str, client_id: str, supports_preview_metadata: bool = False):
        parsed = urllib.parse.urlparse(base_url)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        self.url = f"{scheme}://{parsed.netloc}/ws?clientId={client_id}"
        self.client_id = client_id
        self.supports_preview_metadata = supports_preview_metadata
        self.events: list[dict] = []
        self.previews: list[Preview] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "EventListener":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="comfy-ws", daemon=True)
        self._thread.start()
        if not self._connected.wait(timeout):
            raise ComfyError(f"websocket {self.url} did not connect within {timeout} s: {self.errors}")
        if self.errors:
            raise ComfyError(f"websocket {self.url} failed: {self.errors}")

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiohttp

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.url, max_msg_size=0) as ws:
                    if self.supports_preview_metadata:
                        await ws.send_str(json.dumps(
                            {"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
                    self._connected.set()
                    stop_task = asyncio.ensure_future(self._stop.wait())
                    while not self._stop.is_set():
                        recv = asyncio.ensure_future(ws.receive())
                        done, _ = await asyncio.wait({recv, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                        if recv not in done:
                            recv.cancel()
                            break
                        msg = recv.result()
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._add_event(json.loads(msg.data))
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            self._add_binary(msg.data)
                        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                          aiohttp.WSMsgType.ERROR):
                            break
                    stop_task.cancel()
        except Exception as exc:  # reported to the waiting test / script
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._connected.set()
            with self._cond:
                self._cond.notify_all()

    def _add_event(self, event: dict) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def _add_binary(self, data: bytes) -> None:
        if len(data) < 8:
            self.errors.append(f"short binary frame ({len(data)} bytes)")
            return
        (event_type,) = struct.unpack(">I", data[:4])
        if event_type == PREVIEW_IMAGE:
            (fmt,) = struct.unpack(">I", data[4:8])
            preview = Preview(event_type, {1: "JPEG", 2: "PNG"}.get(fmt, f"format {fmt}"), bytes(data[8:]))
        elif event_type == PREVIEW_IMAGE_WITH_METADATA:
            (length,) = struct.unpack(">I", data[4:8])
            metadata = json.loads(bytes(data[8:8 + length]).decode("utf-8"))
            preview = Preview(event_type, str(metadata.get("image_type", "")), bytes(data[8 + length:]), metadata)
        else:
            preview = Preview(event_type, "unknown", bytes(data[4:]))
        with self._cond:
            self.previews.append(preview)
            self._cond.notify_all()

    # -- queries ------------------------------------------------------------------------------------
    def of_type(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        with self._cond:
            return [e["data"] for e in self.events if e.get("type") == kind and (
                prompt_id is None or not isinstance(e.get("data"), dict)
                or e["data"].get("prompt_id") in (None, prompt_id))]

    def wait_for(self, predicate: Callable[["EventListener"], Any], timeout: float) -> Any:
        """Wait until `predicate(self)` is truthy; returns its value or raises ComfyError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._thread and not self._thread.is_alive()):
                    raise ComfyError(f"websocket condition not met within {timeout} s; "
                                     f"events so far: {[e.get('type') for e in self.events][-30:]}; "
                                     f"errors: {self.errors}")
                self._cond.wait(min(remaining, 0.5))

    def wait_finished(self, prompt_id: str, timeout: float) -> dict:
        """Wait for the end of a prompt: `executing` with node None, success, error or interrupt."""
        def done(listener: "EventListener"):
            for e in listener.events:
                data = e.get("data") or {}
                if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                    continue
                if e.get("type") in ("execution_success", "execution_error", "execution_interrupted"):
                    return e
                if e.get("type") == "executing" and data.get("node") is None:
                    return e
            return None
        return self.wait_for(done, timeout)
