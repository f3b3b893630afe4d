#!/usr/bin/env bash
# Fresh-machine demo: sets everything up (scripts/setup.sh), copies the embedded trained toy model (models/toy/)
# into .demo/models/streamingt2v, starts a headless ComfyUI (CPU) with this pack, queues
# workflows/api/streamingt2v_text_to_long_video.json (240 frames of "a red circle moving right on a gray
# background") through POST /prompt, waits, prints the output video path and its frame count, and stops the
# server.
#
#   bash scripts/demo.sh                      # the shipped workflow as is
#   bash scripts/demo.sh --steps 4 --length 2 --length-mode chunks   # any scripts/run_workflow.py option
#
# The toy model was trained on a procedural world of coloured shapes (docs/training.md): it knows prompts of the
# form "a <colour> <circle|square|triangle> moving <direction> on a <colour> background" at 64x64 pixels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# the demo needs no browser; set ST2V_NO_CHROMIUM=0 to install it anyway
ST2V_NO_CHROMIUM="${ST2V_NO_CHROMIUM:-1}" bash "$ROOT/scripts/setup.sh"
VPY="${ST2V_VENV:-$ROOT/.venv}/bin/python"
export ST2V_COMFY_DIR="${ST2V_COMFY_DIR:-${ST2V_COMFY_HOME:-$ROOT/.comfyui}/ComfyUI}"
BASE="${ST2V_DEMO_DIR:-$ROOT/.demo}"
WORKFLOW="${ST2V_DEMO_WORKFLOW:-$ROOT/workflows/api/streamingt2v_text_to_long_video.json}"
exec "$VPY" "$ROOT/scripts/run_workflow.py" "$WORKFLOW" --base "$BASE" "$@"
