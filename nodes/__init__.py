"""ComfyUI node layer of the pack: thin classic nodes over `streaming_core` (see NODE_SPEC.md).

This module only aggregates the mappings of the feature modules; the pack entry (`../__init__.py`) decides
which node modules are required and which are optional.
"""
from __future__ import annotations

from . import loaders, metrics, stream

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

# ---- loaders: stream model, first-chunk ModelScope UNet ----------------------------------------------------
NODE_CLASS_MAPPINGS.update(loaders.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update(loaders.NODE_DISPLAY_NAME_MAPPINGS)

# ---- stream: init chunk, APM anchor, CAM streaming extension -----------------------------------------------
NODE_CLASS_MAPPINGS.update(stream.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update(stream.NODE_DISPLAY_NAME_MAPPINGS)

# ---- metrics: weight-free consistency metrics (SCuts, MAWE~, seam ratio, colour drift) ---------------------
NODE_CLASS_MAPPINGS.update(metrics.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update(metrics.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
