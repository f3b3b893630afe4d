"""Queue an API-format workflow on a headless ComfyUI with this pack and wait for the video.

By default it starts its own server (`main.py --cpu`) on a free port with `--base` as ComfyUI's base
directory: the pack is linked into `<base>/custom_nodes/streamingt2v-longvideo`, the trained toy model shipped
in `models/toy/` is copied into `<base>/models/streamingt2v` (the random tiny test weights are generated too
when the workflow names them), and the example media of the shipped workflows are copied into `<base>/input`.
With `--server URL` it uses a running ComfyUI instead (the files must already be in place there).

    .venv/bin/python scripts/run_workflow.py workflows/api/streamingt2v_text_to_long_video.json \\
        --base .demo [--steps 8] [--length-mode chunks --length 2] [--seed 7] [--prefix video/demo]

Prints progress, then the output video path(s) and their frame counts; exits 1 if the run fails.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from comfy_harness import PACK_LINK_NAME  # noqa: E402
from comfy_harness import workflows as wf  # noqa: E402
from comfy_harness.client import ComfyClient, ComfyError  # noqa: E402
from comfy_harness.server import (ComfyServer, copy_example_inputs, prepare_base,  # noqa: E402
                                  seed_tiny_refiner, seed_tiny_weights, seed_toy_model)


def log(msg: str) -> None:
    print(f"[run_workflow] {msg}", flush=True)


def count_frames(path: pathlib.Path) -> tuple[int, int, int]:
    import av

    with av.open(str(path)) as container:
        n = w = h = 0
        for frame in container.decode(video=0):
            n, w, h = n + 1, frame.width, frame.height
    return n, w, h


def run(client: ComfyClient, prompt: dict, timeout: float, base: pathlib.Path | None) -> int:
    titles = {node_id: node.get("_meta", {}).get("title", node["class_type"]) for node_id, node in prompt.items()}
    with client.listen() as events:
        queued = client.queue_prompt(prompt)
        if queued.status != 200:
            log(f"the server rejected the workflow (HTTP {queued.status}):\n{json.dumps(queued.body, indent=1)}")
            return 1
        prompt_id = queued.body["prompt_id"]
        log(f"queued prompt {prompt_id}")
        start = time.monotonic()
        seen_events, last_line = 0, ""
        while True:
            entry = client.history(prompt_id).get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                break
            if time.monotonic() - start > timeout:
                log(f"timed out after {timeout:.0f} s; interrupting")
                client.interrupt()
                return 1
            for event in events.events[seen_events:]:
                seen_events += 1
                data = event.get("data") or {}
                if event.get("type") == "executing" and data.get("node") is not None:
                    log(f"running node {data['node']} ({titles.get(str(data['node']), '?')})")
                elif event.get("type") == "progress":
                    line = f"  {titles.get(str(data.get('node')), data.get('node'))}: step {data['value']}/{data['max']}"
                    if line != last_line and (data["value"] == data["max"] or data["value"] % 5 == 0):
                        log(line)
                    last_line = line
            time.sleep(0.5)
        elapsed = time.monotonic() - start
        previews = len(events.previews)

    status = entry["status"]
    if status["status_str"] != "success":
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                log(f"{data.get('node_type')} (node {data.get('node_id')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
            elif kind == "execution_interrupted":
                log("the run was interrupted")
        return 1
    log(f"finished in {elapsed:.1f} s ({previews} preview frame(s) received)")
    found = False
    for node_output in entry.get("outputs", {}).values():
        for item in node_output.get("images", []) or []:
            if not isinstance(item, dict) or "filename" not in item:
                continue
            found = True
            if base is not None:
                path = base / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
                frames, width, height = count_frames(path)
                print(f"output video: {path}")
                print(f"frames: {frames} ({width}x{height})")
            else:
                print(f"output file: {item.get('subfolder', '')}/{item['filename']} ({item.get('type')})")
    if not found:
        log("the workflow produced no output file")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=pathlib.Path, help="API-format workflow (workflows/api/*.json)")
    parser.add_argument("--base", type=pathlib.Path, default=pathlib.Path(".demo"),
                        help="ComfyUI base directory of the server started here (default .demo)")
    parser.add_argument("--server", help="URL of a running ComfyUI to use instead of starting one")
    parser.add_argument("--port", type=int, default=None, help="port of the server started here (default: free)")
    parser.add_argument("--steps", type=int, help="override the sampling steps of every StreamingT2V node")
    parser.add_argument("--length-mode", choices=["chunks", "total_frames (floor)", "total_frames (exact)"])
    parser.add_argument("--length", type=int, help="override CAM Streaming Extend's length")
    parser.add_argument("--seed", type=int, help="override the seeds")
    parser.add_argument("--prefix", help="override SaveVideo's filename_prefix")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run")
    args = parser.parse_args()

    prompt = json.loads(args.workflow.read_text())
    prompt = wf.tweak(prompt, steps=args.steps, seed=args.seed, prefix=args.prefix,
                      length_mode=args.length_mode, length=args.length)

    if args.server:
        return run(ComfyClient(args.server), prompt, args.timeout, None)

    base = args.base.resolve()
    prepare_base(base)
    models = base / "models" / "streamingt2v"
    log(f"trained toy model (models/toy/) in {models}")
    try:
        seed_toy_model(models)
    except FileNotFoundError as exc:
        log(str(exc))
        return 1
    names = json.dumps(prompt)
    if "_tiny" in names:  # a workflow that names the random tiny test weights
        log(f"tiny test weights in {models} (python -m streaming_core.tiny_default, tiny_refiner)")
        seed_tiny_weights(models)
        seed_tiny_refiner(models)
    copy_example_inputs(base / "input")
    def stop_on_term(signum, frame):  # `kill` stops the server too (SIGINT is ignored in background jobs)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    server = ComfyServer(base, port=args.port)
    log(f"starting ComfyUI on {server.url} (base {base}, log {server.log_path})")
    started = time.monotonic()
    try:
        server.start()
        log(f"ComfyUI ready after {time.monotonic() - started:.1f} s")
        failures = server.import_failures(PACK_LINK_NAME)
        if failures:
            log("ComfyUI could not import the pack:\n" + "\n".join(failures) + "\n" + server.log_tail())
            return 1
        return run(server.client, prompt, args.timeout, base)
    except (OSError, ComfyError) as exc:
        log(f"lost the ComfyUI server ({type(exc).__name__}: {exc}); log tail:\n{server.log_tail(40)}")
        return 1
    except KeyboardInterrupt:
        log("stopped by the user")
        return 130
    finally:
        log("stopping ComfyUI")
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
