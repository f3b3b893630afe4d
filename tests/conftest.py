"""Shared pytest fixtures.

Sections (each owned by one test layer; keep them independent):
* paths
* Layer A: the real comfy modules in-process, the pack imported the way ComfyUI imports it
* tiny default weights (written by `python -m streaming_core.tiny_default`)
* Layer B/C: a real ComfyUI server subprocess and the real frontend in headless Chromium
  (fixtures live in tests/comfy_server.py and tests/cdp.py; only registered here)
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

# ============================================================================================================
# paths
# ============================================================================================================

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = Path(os.environ.get("ST2V_COMFY_DIR", REPO_ROOT / ".comfyui" / "ComfyUI")).resolve()
PACK_MODULE_NAME = "streamingt2v_pack"  # package name the in-process tests give the pack

# ============================================================================================================
# Layer A: real comfy modules in-process (comfyui_runtime.md §9)
# ============================================================================================================


@pytest.fixture(scope="session")
def comfy() -> types.SimpleNamespace:
    """`comfy.model_management`, `comfy.utils` and `folder_paths` from the real ComfyUI tree, on the CPU.

    The ComfyUI tree goes on `sys.path` here and only here (never in the pack). `args.cpu` is set before
    `comfy.model_management` is imported, else it asks CUDA for a device (runtime spec §1.3 pitfall 7).
    """
    if not (COMFY_DIR / "main.py").is_file():
        pytest.skip(f"no ComfyUI tree at {COMFY_DIR}; run scripts/setup.sh (or set ST2V_COMFY_DIR)")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management
    import comfy.utils
    import folder_paths

    return types.SimpleNamespace(mm=comfy.model_management, utils=comfy.utils, folder_paths=folder_paths)


def load_pack(module_name: str = PACK_MODULE_NAME, root: Path = REPO_ROOT) -> types.ModuleType:
    """Import the pack as ComfyUI does: `spec_from_file_location` on its `__init__.py`, as a package."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        module.NODE_CLASS_MAPPINGS  # what ComfyUI reads right after; imports the node modules
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


@pytest.fixture(scope="session")
def pack(comfy) -> types.ModuleType:
    """The pack's top-level package (`NODE_CLASS_MAPPINGS`, subpackages `.nodes` and `.streaming_core`)."""
    return load_pack()


@pytest.fixture
def reset_interrupt(comfy):
    """Clear ComfyUI's interrupt flag before and after a test that sets it."""
    comfy.mm.interrupt_current_processing(False)
    yield comfy.mm
    comfy.mm.interrupt_current_processing(False)


@pytest.fixture
def progress_hook(comfy):
    """Record `ProgressBar` updates: list of (value, total, preview); restores the previous global hook."""
    calls: list[tuple] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        calls.append((value, total, preview))

    comfy.utils.set_progress_bar_global_hook(hook)
    yield calls
    comfy.utils.set_progress_bar_global_hook(previous)


# ============================================================================================================
# tiny default weights
# ============================================================================================================

TINY_STREAM_FILE = "streamingt2v_tiny.safetensors"
TINY_BASE_FILE = "modelscope_t2v_tiny.safetensors"


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    """A folder with the tiny default weights, written once per session by `streaming_core.tiny_default`."""
    if importlib.util.find_spec("streaming_core.tiny_default") is None:
        pytest.skip("streaming_core.tiny_default does not exist yet (the core writes the tiny default weights)")
    out = tmp_path_factory.mktemp("streamingt2v_models")
    done = subprocess.run(
        [sys.executable, "-m", "streaming_core.tiny_default", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"python -m streaming_core.tiny_default failed ({done.returncode}):\n{done.stderr[-4000:]}")
    for name in (TINY_STREAM_FILE, TINY_BASE_FILE):
        assert (out / name).is_file(), f"streaming_core.tiny_default did not write {name}"
    return out


# ============================================================================================================
# Layer B/C: real ComfyUI server subprocess + headless Chromium (comfyui_runtime.md §4, §9)
# Fixtures: comfy_server (session), comfy_alive, chromium (session), comfy_page (session).
# Helpers shared with the scripts live in scripts/comfy_harness/ (comfy_server.py puts it on sys.path).
# ============================================================================================================

from comfy_server import comfy_alive, comfy_server  # noqa: E402,F401
from cdp import chromium, comfy_page  # noqa: E402,F401
