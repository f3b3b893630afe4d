"""StreamingT2V long-video nodes for ComfyUI (arXiv 2403.14773).

ComfyUI imports this file as a package (`spec_from_file_location` on `custom_nodes/<name>/__init__.py`), so
everything in the pack is imported relatively: the torch library is the subpackage `.streaming_core`, the
ComfyUI adapters are `.nodes`. Nothing is downloaded at import time.

Required node modules propagate their import errors (ComfyUI then reports the pack as IMPORT FAILED with the
real traceback); optional modules, which may need extra dependencies, only log a warning naming the feature.

The node modules are imported on the first access of `NODE_CLASS_MAPPINGS` / `NODE_DISPLAY_NAME_MAPPINGS`
(module `__getattr__`, PEP 562). ComfyUI reads them right after executing this file, inside its own error
handling, so nothing changes there; but pytest also executes this file (the repository root is a package on
the way to `tests/`) in a process where `comfy` is not importable, and must not pull the node layer in.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("streamingt2v")

# module (relative to this package) -> what it provides
REQUIRED_MODULES: dict[str, str] = {
    ".nodes": "loaders and the streaming stage (Init Chunk, APM Anchor, CAM Streaming Extend)",
}
OPTIONAL_MODULES: dict[str, str] = {
    ".nodes.refine": "streaming refinement stage (Load Refiner, Randomized Blend, Refiner SDEdit)",
}

_EXPORTS = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")
__all__ = list(_EXPORTS)


def _load_mappings() -> tuple[dict[str, type], dict[str, str]]:
    classes: dict[str, type] = {}
    names: dict[str, str] = {}

    def register(module) -> None:
        classes.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
        names.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))

    for name in REQUIRED_MODULES:
        register(importlib.import_module(name, __name__))
    for name, feature in OPTIONAL_MODULES.items():
        try:
            register(importlib.import_module(name, __name__))
        except ImportError as exc:
            log.warning("StreamingT2V: %s unavailable (%s: %s)", feature, name, exc)
    return classes, names


def __getattr__(name: str):
    if name in _EXPORTS:
        classes, names = _load_mappings()
        globals().update(NODE_CLASS_MAPPINGS=classes, NODE_DISPLAY_NAME_MAPPINGS=names)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
