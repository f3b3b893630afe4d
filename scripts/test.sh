#!/usr/bin/env bash
# Sets everything up from nothing (scripts/setup.sh: venv, ComfyUI 0.3.75, chromium when root), then runs the
# WHOLE test suite: unit tests, the pack in a real ComfyUI server, the canvas in headless Chromium.
# Extra arguments go to pytest. Exit code 5 from pytest ("no tests collected") counts as a failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/setup.sh"
VPY="${ST2V_VENV:-$ROOT/.venv}/bin/python"
# where setup.sh put ComfyUI (the tests read ST2V_COMFY_DIR)
export ST2V_COMFY_DIR="${ST2V_COMFY_DIR:-${ST2V_COMFY_HOME:-$ROOT/.comfyui}/ComfyUI}"
echo "[test] $("$VPY" --version), $(nproc) CPU core(s); running pytest" >&2
set +e
"$VPY" -m pytest -q -rfEs --durations=15 tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: treated as a failure" >&2
  exit 1
fi
exit "$rc"
