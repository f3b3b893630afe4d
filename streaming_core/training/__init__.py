"""Training for the StreamingT2V stream stage and its companions (docs/training.md).

Stages, in the order the toy script runs them: `vae`, `base` (vanilla ModelScope UNet + text encoder), `cam`
(CAM branch + injectors, base UNet frozen, APM off), `cam_apm` (CAM + UNet + APM + anchor encoder, condition
drop-out), `refiner` (v-prediction UNet). Every stage reads and writes model files in the official layouts
(`model_io.py`), so its output loads with `streaming_core.model_files` like any downloaded model.
CLI: `python -m streaming_core.train <stage> ...`.
"""
