"""streaming_core is a pure torch library: importing all of it never imports comfy (principle 3)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_streaming_core_never_imports_comfy():
    modules = sorted(p.stem for p in (ROOT / "streaming_core").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('streaming_core.' + name)\n"
        "bad = sorted(m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m in ('folder_paths', 'nodes'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_streaming_core_uses_only_relative_imports_of_itself():
    """The pack is loaded by ComfyUI under another package name, so `streaming_core` must not import itself by
    its absolute name."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "streaming_core").rglob("*.py")
                 if "from streaming_core" in p.read_text() or "import streaming_core" in p.read_text()]
    assert offenders == []
