"""Type names and categories shared by the pack's nodes (see NODE_SPEC.md).

Custom types are plain upper-case strings; the frontend only compares the strings when it links sockets.
The payloads are `streaming_core` objects passed by reference:

* `ST2V_MODEL`: a `streaming_core.models.StreamModel` (stream-stage UNet with CAM and APM, text/image encoders,
  VAE), weights on the CPU until a node runs it.
* `ST2V_BASE_MODEL`: a `streaming_core.models.BaseModel` (vanilla ModelScope T2V UNet for the first chunk,
  sharing the text encoder and VAE of a `StreamModel`).
* `ST2V_ANCHOR`: the APM anchor frame, a float32 tensor `(3, S, S)` in [0, 1] on the CPU.
* `ST2V_REFINER`: a `streaming_core.refiner_model.RefinerModel` (MS-Vid2Vid-XL or a diffusers UNet3D
  text-to-video model: UNet, text encoder, VAE, noise table), weights on the CPU until Refiner SDEdit runs it.
* `ST2V_BLEND_PLAN`: a `streaming_core.blending.BlendPlan` (chunk size, overlap, blending variant, cut seed).
"""
from __future__ import annotations

# custom socket types
ST2V_MODEL = "ST2V_MODEL"
ST2V_BASE_MODEL = "ST2V_BASE_MODEL"
ST2V_ANCHOR = "ST2V_ANCHOR"
ST2V_REFINER = "ST2V_REFINER"
ST2V_BLEND_PLAN = "ST2V_BLEND_PLAN"

# ComfyUI core types used by the pack
IMAGE = "IMAGE"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"

# menu categories
CATEGORY_ROOT = "StreamingT2V"
CATEGORY_LOADERS = f"{CATEGORY_ROOT}/loaders"
CATEGORY_STREAM = f"{CATEGORY_ROOT}/stream"
CATEGORY_REFINE = f"{CATEGORY_ROOT}/refine"

# ComfyUI models folder that holds every weight file of the pack (`models/streamingt2v`)
MODEL_FOLDER = "streamingt2v"
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# dtype widget choices
DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]
