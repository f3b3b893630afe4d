"""Layer B fixtures: one real ComfyUI server subprocess per test session (runtime spec §9).

The server runs `<ComfyUI>/main.py --cpu` from `.comfyui/ComfyUI` (made by scripts/setup.sh; override with
$ST2V_COMFY_DIR) on a free local port with a private base directory:

    <tmp>/comfy/custom_nodes/streamingt2v-longvideo -> the repository (symlink, the pack's link name)
    <tmp>/comfy/models/streamingt2v/                 tiny default weights (python -m streaming_core.tiny_default)
                                                      + refiner_tiny/ (python -m streaming_core.tiny_refiner)
                                                      + a corrupt file for the model-error test
    <tmp>/comfy/input/                               example media of the shipped workflows (workflows/inputs/)
    <tmp>/comfy/comfyui.log                          the server's log (printed in failure messages)

Tests that need the weights call `server.require_weights()`: when the tiny default cannot be generated they
FAIL with the generator's output (never skip). The HTTP/websocket client is `scripts/comfy_harness/client.py`.
Teardown: SIGINT, wait 15 s, kill.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import sys
import time
import uuid

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))

from comfy_harness import PACK_LINK_NAME  # noqa: E402
from comfy_harness.client import ComfyClient, EventListener, RunResult  # noqa: E402
from comfy_harness.server import (ComfyServer, comfy_dir, copy_example_inputs, prepare_base,  # noqa: E402
                                  seed_tiny_refiner, seed_tiny_weights, seed_toy_model)

BROKEN_WEIGHTS = "zz_broken_for_tests.safetensors"
RUN_TIMEOUT = float(os.environ.get("ST2V_TEST_RUN_TIMEOUT", "900"))


class ServerHandle:
    """What the `comfy_server` fixture yields: the running server, its client and helpers."""

    def __init__(self, server: ComfyServer, weights_error: str | None):
        self.server = server
        self.client: ComfyClient = server.client
        self.base: pathlib.Path = server.base
        self.url: str = server.url
        self.weights_error = weights_error
        self._object_info: dict | None = None
        self._counter = itertools.count(1)
        self._seed_base = int(time.time()) % 1_000_000 * 1000

    # -- state ----------------------------------------------------------------------------------------------
    def require_weights(self) -> None:
        if self.weights_error:
            pytest.fail("the tiny default weights are needed but could not be generated:\n" + self.weights_error,
                        pytrace=False)

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self.client.object_info()
        return self._object_info

    def assert_alive(self) -> None:
        assert self.server.running(), f"ComfyUI exited (code {self.server.proc.returncode}):\n{self.log_tail()}"
        assert self.client.is_ready(), f"ComfyUI stopped answering /system_stats:\n{self.log_tail()}"

    def log_tail(self, lines: int = 80) -> str:
        return self.server.log_tail(lines)

    # -- cache busting (runtime spec pitfall 6) ---------------------------------------------------------------
    def unique_seed(self) -> int:
        return self._seed_base + 10 * next(self._counter)

    def unique_prefix(self, name: str) -> str:
        return f"st2v_tests/{name}_{uuid.uuid4().hex[:8]}"

    # -- running prompts ------------------------------------------------------------------------------------
    def run(self, prompt: dict, *, timeout: float = RUN_TIMEOUT, preview_metadata: bool = False,
            expect: str | None = "success") -> tuple[RunResult, EventListener]:
        """Queue `prompt` with a websocket listener attached; wait for the history entry.

        With `expect`, the status must match (else the test fails with the node error and the log tail).
        """
        listener = self.client.listen(supports_preview_metadata=preview_metadata)
        with listener:
            result = self.client.run(prompt, timeout=timeout)
            # the history is written before the last websocket messages are flushed
            try:
                listener.wait_finished(result.prompt_id, timeout=10)
            except Exception:
                pass
        if expect is not None and result.status_str != expect:
            pytest.fail(f"prompt finished with status {result.status_str!r}, expected {expect!r}:\n"
                        f"{result.error_summary()}\n--- server log ---\n{self.log_tail()}", pytrace=False)
        return result, listener

    def output_path(self, file_entry: dict) -> pathlib.Path:
        folder = {"output": "output", "temp": "temp", "input": "input"}[file_entry.get("type", "output")]
        return self.base / folder / file_entry.get("subfolder", "") / file_entry["filename"]


def start_server(base: pathlib.Path) -> ServerHandle:
    prepare_base(base)
    copy_example_inputs(base / "input")
    weights_error = None
    try:
        seed_tiny_weights(base / "models" / "streamingt2v", python=sys.executable, pack=REPO_ROOT)
        seed_tiny_refiner(base / "models" / "streamingt2v", python=sys.executable, pack=REPO_ROOT)
        seed_toy_model(base / "models" / "streamingt2v")
    except Exception as exc:  # reported by require_weights() in the tests that need the files
        weights_error = f"{type(exc).__name__}: {exc}"
    (base / "models" / "streamingt2v" / BROKEN_WEIGHTS).write_bytes(b"this is not a safetensors file\n" * 4)
    if not (comfy_dir() / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {comfy_dir()}: run `bash scripts/setup.sh` first (or set ST2V_COMFY_DIR)",
                    pytrace=False)
    server = ComfyServer(base, python=sys.executable)
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"ComfyUI did not start: {exc}", pytrace=False)
    handle = ServerHandle(server, weights_error)
    failures = server.import_failures(PACK_LINK_NAME)
    if failures:
        server.stop()
        pytest.fail("ComfyUI could not import the pack:\n" + "\n".join(failures) + "\n--- server log ---\n"
                    + server.log_tail(120), pytrace=False)
    return handle


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> ServerHandle:
    """A running ComfyUI with the pack, shared by the whole session; always stopped at the end."""
    handle = start_server(tmp_path_factory.mktemp("comfy"))
    try:
        yield handle
    finally:
        handle.server.stop()


@pytest.fixture
def comfy_alive(comfy_server) -> ServerHandle:
    """`comfy_server`, checked to be alive before the test."""
    comfy_server.assert_alive()
    return comfy_server


def decode_video(path: pathlib.Path) -> dict:
    """Decode every frame of a video file with PyAV: frame count, size, rate, codec."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = 0
        width = height = None
        for frame in container.decode(video=0):
            frames += 1
            width, height = frame.width, frame.height
        return {"frames": frames, "width": width, "height": height, "codec": stream.codec_context.name,
                "fps": float(stream.average_rate) if stream.average_rate else None,
                "format": container.format.name}
