"""StreamingT2V as a pure torch library (never imports comfy).

See `api_contract.md` for the public functions used by the ComfyUI node layer.
"""
__version__ = "0.1.0"
