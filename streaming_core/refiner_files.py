"""Loading the refiner's weight files (refine_stage.md §6.1-§6.2, §16.1).

Two loaders return a `RefinerModel`:

* `load_ms_vid2vid(unet_path, text_path, vae_path)` — MS-Vid2Vid-XL from the files users download:

  | slot | accepted |
  |---|---|
  | UNet | `non_ema_0035000.pth` (bare `OrderedDict` or under `"state_dict"`), a safetensors file with the official names, the pack's converted file (`unet.*`) |
  | text | `open_clip_pytorch_model.bin` (full OpenCLIP ViT-H-14: only the text tower is read; block 23 must exist but is not loaded; `visual.*` stays on disk), a text-only OpenCLIP safetensors, the pack's converted file (`text.*`, blocks 0-22) |
  | VAE | `v2-1_512-ema-pruned.ckpt` (only `first_stage_model.*`, through `safe_pickle`), a bare LDM VAE file, a diffusers-named VAE (safetensors / `.bin` / a `vae/` folder), the pack's converted file (`vae.*`) |

  The pack's single converted file (metadata ``format = "streamingt2v-refiner"``) may be given alone as the UNet
  path. Torch pickles are read with `safe_pickle.load` (weights-only plus inert stand-ins) and memory-mapped.

  `load_refiner_unet`, `load_refiner_text_encoder`, `load_refiner_vae` load one component (e.g. a golden set's
  files with its architecture); `official_unet_state`, `openclip_text_state`, `ldm_vae_state` return a file's
  checked tensors in the official / OpenCLIP / LDM naming (used by the converter).

* `load_diffusers_refiner(folder)` — a diffusers UNet3D text-to-video folder (`unet/`, `text_encoder/`, `vae/`,
  `scheduler/scheduler_config.json`; `tokenizer/` is not read: the pack's CLIP tokenizer is used).

Every file is identified by its content first (a wrong file gets a sentence naming what it is and where it
belongs), then checked strictly against the layout built on the meta device (`loading.check_strict`: missing,
unexpected and mis-shaped keys, first 20 + count). Architectures: the pack's tiny files carry a `RefinerConfig`
(safetensors metadata entry, or an attribute of the pickled state-dict `OrderedDict`, both named
`REFINER_CONFIG_KEY`); files without one are full size, unless the caller passes ``config=``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import safe_pickle
from .config import TextEncoderConfig, UNet3DConfig, VaeConfig
from .loading import (CheckpointLayoutError, FileInfo, cast_state_dict, check_strict, describe, load_into,
                      normalize_legacy, read_state_dict)
from .model_files import CONFIG_METADATA_KEY, _finish, config_from_metadata, expected_layout
from .openclip_names import OpenClipNameError, openclip_text_to_hf, text_config_from_openclip
from .refine_schedule import NoiseTable
from .refiner_model import (DIFFUSERS_T2V_DEFAULTS, MS_VID2VID_DEFAULTS, REFINER_CONFIG_KEY, RefinerConfig,
                            RefinerModel)
from .refiner_names import (RefinerKeyError, build_refiner_unet, internal_to_official, official_layout,
                            official_to_internal, official_unet_config)
from .text_encoder import ClipTextEncoder
from .tokenizer import ClipTokenizer
from .unet3d import UNet3D
from .vae import Vae
from .vae_names import LDM_PREFIX, VaeNameError, ldm_vae_to_diffusers, vae_config_from_ldm

logger = logging.getLogger("streaming_core")

__all__ = [
    "PACK_FORMAT",
    "MIRROR_REPO",
    "MS_VID2VID_FILES",
    "MissingRefinerFilesError",
    "RefinerFile",
    "read_refiner_file",
    "identify",
    "refiner_unet_config",
    "refiner_vae_config",
    "resolve_config",
    "vae_source_path",
    "official_unet_state",
    "openclip_text_state",
    "ldm_vae_state",
    "diffusers_vae_to_ldm",
    "unet3d_config_from_diffusers",
    "vae_config_from_diffusers",
    "text_config_from_hf",
    "load_ms_vid2vid",
    "load_refiner_unet",
    "load_refiner_text_encoder",
    "load_refiner_vae",
    "load_diffusers_refiner",
]

#: safetensors metadata ``format`` of the pack's converted refiner file (§6.3).
PACK_FORMAT = "streamingt2v-refiner"
MIRROR_REPO = "ali-vilab/MS-Vid2Vid-XL"
#: (file name, size, content) of the three MS-Vid2Vid-XL downloads (§6.1).
MS_VID2VID_FILES: tuple[tuple[str, str, str], ...] = (
    ("non_ema_0035000.pth", "5.65 GB", "refiner UNet"),
    ("open_clip_pytorch_model.bin", "3.94 GB", "OpenCLIP ViT-H-14, text tower used"),
    ("v2-1_512-ema-pruned.ckpt", "5.21 GB", "Stable Diffusion 2.1, VAE used"),
)


def _expected_files_sentence() -> str:
    files = "; ".join(f"{name} ({size}, {what})" for name, size, what in MS_VID2VID_FILES)
    return (
        f"MS-Vid2Vid-XL needs three files: {files}. Download them from the Hugging Face repository {MIRROR_REPO} "
        "(ModelScope damo/Video-to-Video, revision v1.1.0) into models/streamingt2v/ (e.g. "
        "models/streamingt2v/ms_vid2vid_xl/), or convert them once into one file with "
        "`python -m streaming_core.convert refiner --unet ... --text ... --vae ... OUTPUT.safetensors`"
    )


class MissingRefinerFilesError(FileNotFoundError):
    """A refiner file is missing; the message names the three expected files, their sizes and the mirror."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}. {_expected_files_sentence()}")


# --------------------------------------------------------------------------------------------------------------
# Reading and identifying files
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RefinerFile:
    """What `read_refiner_file` found: tensors with the file's own names (CPU, stored dtype, memory-mapped
    where the container allows), the container info, the embedded `RefinerConfig` JSON (or None), the kind
    (see `identify`) and a short description for messages."""

    sd: dict[str, torch.Tensor]
    info: FileInfo
    config_text: str | None
    kind: str
    source: str


def _embedded_config(obj: Any) -> str | None:
    """`REFINER_CONFIG_KEY` attribute of a pickled state dict (bare, or the ``"state_dict"`` entry)."""
    inner = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    for candidate in (inner, obj):
        text = getattr(candidate, REFINER_CONFIG_KEY, None)
        if isinstance(text, str):
            return text
    return None


def read_refiner_file(path: str | os.PathLike) -> RefinerFile:
    """Read any weights container of the refiner (`loading.read_state_dict` with `safe_pickle.load` for torch
    pickles) and identify its content. Raises `CheckpointLayoutError` / `safe_pickle.UnsafePickleError`."""
    captured: dict[str, str | None] = {}

    def unpickle(p: Path, mmap: bool) -> object:
        obj = safe_pickle.load(p, mmap=mmap)
        captured["config"] = _embedded_config(obj)
        return obj

    sd, info = read_state_dict(path, unpickle=unpickle)
    config_text = info.metadata.get(REFINER_CONFIG_KEY) or captured.get("config")
    kind = identify(sd.keys(), info.metadata)
    logger.info("read %s: %d tensors, %s", describe(info), len(sd), KIND_WORDS.get(kind, kind))
    return RefinerFile(sd, info, config_text, kind, describe(info))


_MS_UNET_TOPS = {"input_blocks", "middle_block", "output_blocks", "time_embed", "out"}
_UNET3D_TOPS = {"conv_in", "time_embedding", "transformer_in", "down_blocks", "mid_block", "up_blocks",
                "conv_norm_out", "conv_out"}
_STREAM_TOPS = {"base_model", "resampler", "image_encoder", "controlnet"}
# tensors only the StreamingT2V base UNet has (CAM injectors, APM mixing)
_STREAMING_ONLY = re.compile(r"(^|\.)cross_attention_merger_|\.attn2\.(alpha|conv\.|conv_ln\.)")
_OPENCLIP_TEXT_TOPS = {"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection",
                       "logit_scale", "attn_mask"}

#: Sentence fragments for each kind of file `identify` knows.
KIND_WORDS: dict[str, str] = {
    "ms_unet": "the MS-Vid2Vid-XL refiner UNet (official names)",
    "refiner_pack": "the pack's converted MS-Vid2Vid-XL file (unet. / text. / vae.)",
    "stream": "a StreamingT2V stream-stage checkpoint (streaming_t2v.ckpt, VidXTend or their conversions)",
    "sd_checkpoint": "a Stable Diffusion checkpoint (model.diffusion_model.* / first_stage_model.*)",
    "ldm_vae": "an SD autoencoder with LDM names (encoder.down.*, decoder.up.*)",
    "diffusers_vae": "an SD autoencoder with diffusers names (encoder.down_blocks.*)",
    "openclip_full": "a full OpenCLIP model (visual.* and the text tower)",
    "openclip_text": "an OpenCLIP text tower (token_embedding, transformer.resblocks.*)",
    "openclip_visual": "an OpenCLIP image tower without text tower (visual.*)",
    "hf_clip_text": "a transformers CLIPTextModel (text_model.*)",
    "diffusers_unet3d": "a diffusers UNet3D (ModelScope text-to-video family, e.g. unet/ of zeroscope_v2_XL)",
    "unknown": "no model this loader knows",
}
# Which argument of load_ms_vid2vid each kind belongs to (kinds absent here belong to no MS-Vid2Vid-XL slot).
_SLOT_OF_KIND = {"ms_unet": "unet_path", "refiner_pack": "unet_path (alone)", "sd_checkpoint": "vae_path",
                 "ldm_vae": "vae_path", "diffusers_vae": "vae_path", "openclip_full": "text_path",
                 "openclip_text": "text_path"}


def _tops(keys) -> Counter[str]:
    return Counter(k.split(".", 1)[0] for k in keys)


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix carried by every key (a DataParallel wrapper), logged."""
    if sd and all(k.startswith("module.") for k in sd):
        logger.info("stripped the module. prefix of %d keys (DataParallel wrapper)", len(sd))
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def identify(keys, metadata: Mapping[str, str] | None = None) -> str:
    """Kind of a refiner-related state dict from its key names (and safetensors metadata): one of `KIND_WORDS`."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    metadata = metadata or {}
    tops = _tops(keys)
    if metadata.get("format") == PACK_FORMAT:
        return "refiner_pack"
    if set(tops) <= {"unet", "text", "vae"} and "unet" in tops and any(k.startswith("unet.input_blocks.")
                                                                      for k in keys):
        return "refiner_pack"
    if set(tops) & _STREAM_TOPS or any(k.startswith("unet.controlnet_cond_embedding.") or _STREAMING_ONLY.search(k)
                                       for k in keys):
        return "stream"
    if "model" in tops and any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd_checkpoint"
    if "first_stage_model" in tops or "cond_stage_model" in tops:
        return "sd_checkpoint"
    if tops and set(tops) <= _MS_UNET_TOPS:
        return "ms_unet"
    if tops and set(tops) <= _UNET3D_TOPS:
        return "diffusers_unet3d"
    if CONFIG_METADATA_KEY in metadata:  # another file written for the stream stage (e.g. its tiny model)
        return "stream"
    if tops and set(tops) <= {"encoder", "decoder", "quant_conv", "post_quant_conv"}:
        if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for k in keys):
            return "ldm_vae"
        return "diffusers_vae"
    if "text_model" in tops and set(tops) <= {"text_model", "text_projection", "logit_scale"}:
        return "hf_clip_text"
    if "visual" in tops:
        return "openclip_full" if "transformer" in tops and "token_embedding" in tops else "openclip_visual"
    if "token_embedding" in tops and set(tops) <= _OPENCLIP_TEXT_TOPS:
        return "openclip_text"
    return "unknown"


def _wrong_file(f: RefinerFile, wanted: str, slot: str) -> CheckpointLayoutError:
    words = KIND_WORDS.get(f.kind, f.kind)
    if f.kind == "unknown":
        tops = _tops(f.sd.keys())
        shown = ", ".join(f"{t}. ({n})" for t, n in tops.most_common(10))
        words += f" (top-level names {shown})"
    belongs = _SLOT_OF_KIND.get(f.kind)
    if f.kind == "stream":
        hint = "it belongs in the StreamingT2V model loader, not in the refiner loader"
    elif f.kind == "diffusers_unet3d":
        hint = "load its whole folder with load_diffusers_refiner (node 'Load Refiner (diffusers UNet3D)')"
    elif belongs and belongs != slot:
        hint = f"pass it as {belongs}"
    else:
        hint = f"select the right file for {slot}"
    return CheckpointLayoutError(
        f"{f.source} holds {words}, not {wanted}; {hint}. {_expected_files_sentence()}"
    )


# --------------------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------------------


def refiner_unet_config(cfg: RefinerConfig) -> UNet3DConfig:
    """`UNet3DConfig` (geometry `ms_vid2vid`) of a `RefinerConfig`.

    `refiner_names.official_unet_config` insists on context width 1024 (the official decoder hard-codes it);
    the pack's tiny refiners use a narrower text width so that their 49,408-row token embedding stays small, so
    the context width is applied after building the rest of the configuration.
    """
    args = dict(cfg.unet)
    context = int(args.get("context_dim", 1024))
    unet_cfg = official_unet_config({**args, "context_dim": 1024, "y_dim": 1024})
    return replace(unet_cfg, cross_attention_dim=context)


def resolve_config(f: RefinerFile, override: RefinerConfig | None) -> RefinerConfig:
    """The architecture for `f`: ``override``, else the file's embedded `RefinerConfig`, else full size."""
    if override is not None:
        return override
    if f.config_text:
        try:
            return RefinerConfig.from_json(f.config_text)
        except (ValueError, TypeError) as exc:
            raise CheckpointLayoutError(f"{f.source}: its {REFINER_CONFIG_KEY} entry is invalid ({exc})") from None
    return RefinerConfig()


def _missing_path(path: str | os.PathLike | None, role: str) -> Path:
    if path is None:
        raise MissingRefinerFilesError(f"no {role} file was given")
    p = Path(path)
    if not p.exists():
        raise MissingRefinerFilesError(f"the {role} file `{p}` does not exist")
    return p


# --------------------------------------------------------------------------------------------------------------
# MS-Vid2Vid-XL components
# --------------------------------------------------------------------------------------------------------------


def _component(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def official_unet_state(f: RefinerFile, cfg: RefinerConfig,
                        unet: UNet3D | None = None) -> dict[str, torch.Tensor]:
    """The refiner UNet tensors of `f` under official names, strictly checked against the layout of `cfg`
    (§6.2 item 2); `unet`: an already built (meta) module of `cfg` to take the layout from."""
    if f.kind == "refiner_pack":
        sd = _component(f.sd, "unet.")
        if not sd:
            raise CheckpointLayoutError(f"{f.source} is a converted refiner file without unet.* tensors")
    elif f.kind == "ms_unet":
        sd = _strip_module_prefix(f.sd)
    else:
        raise _wrong_file(f, "the MS-Vid2Vid-XL refiner UNet", "unet_path")
    if unet is None:
        expected = dict(official_layout(refiner_unet_config(cfg)))
    else:
        expected = {k: tuple(v.shape) for k, v in internal_to_official(unet.state_dict()).items()}
    check_strict(sd, expected, source=f.source, layout="MS-Vid2Vid-XL UNet (official names)")
    return sd


def _resblock_indices(sd: Mapping[str, torch.Tensor]) -> set[int]:
    return {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}


def openclip_text_state(f: RefinerFile, cfg: RefinerConfig,
                        encoder: ClipTextEncoder | None = None) -> dict[str, torch.Tensor]:
    """The used part of the OpenCLIP text tower of `f` under OpenCLIP names (embeddings, blocks
    0 … layers-2, `ln_final`), strictly checked (§4.4, §6.2 item 3).

    A full OpenCLIP model must contain its last block (the architecture check), a text-only export may lack it,
    the pack's converted file has exactly the used blocks. `visual.*`, the last block, `text_projection`,
    `logit_scale` and `attn_mask` are left out (memory-mapped, they are never read). `encoder`: an already
    built (meta) module of `cfg` to take the layout from.
    """
    layers, used = int(cfg.text["layers"]), cfg.text_layers_used
    if f.kind == "refiner_pack":
        sd = _component(f.sd, "text.")
        blocks_wanted = {used}
    elif f.kind in ("openclip_full", "openclip_text"):
        sd = {k: v for k, v in _strip_module_prefix(f.sd).items() if not k.startswith("visual.")}
        blocks_wanted = {layers} if f.kind == "openclip_full" else {layers, used}
    else:
        raise _wrong_file(f, "the OpenCLIP ViT-H-14 text encoder (open_clip_pytorch_model.bin)", "text_path")
    blocks = _resblock_indices(sd)
    count = max(blocks) + 1 if blocks else 0
    if count not in blocks_wanted:
        want = " or ".join(str(n) for n in sorted(blocks_wanted))
        raise CheckpointLayoutError(
            f"{f.source}: the OpenCLIP text tower has {count} residual blocks (transformer.resblocks.*), expected "
            f"{want} for this architecture ({layers} blocks, the encoder runs the first {used}); the file belongs "
            "to another CLIP model"
        )
    if count > used:
        logger.info("%s: %d text blocks present, using the first %d (penultimate layer); block %d, "
                    "text_projection, logit_scale and visual.* are not loaded", f.source, count, used, count - 1)
    keep = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"}
    used_part = {k: v for k, v in sd.items() if k in keep or (
        (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)) and int(m.group(1)) < used)}
    try:  # also rejects unknown names, in the unused block as well
        hf = openclip_text_to_hf(sd, used)
    except (OpenClipNameError, ValueError) as exc:
        raise CheckpointLayoutError(f"{f.source}: {exc}") from None
    if encoder is None:
        with torch.device("meta"):
            encoder = ClipTextEncoder(text_config_from_openclip(cfg.text, used))
    check_strict(hf, expected_layout(encoder), source=f.source, layout="OpenCLIP text tower (as CLIPTextModel)")
    return used_part


def ldm_vae_state(f: RefinerFile, vae_cfg: VaeConfig) -> dict[str, torch.Tensor]:
    """The VAE tensors of `f` under bare LDM names, strictly checked against `vae_cfg` (§5.1, §6.2 item 4).

    Accepts an SD checkpoint (`first_stage_model.*` only), a bare LDM VAE, a diffusers-named VAE (renamed; old
    attention names normalised) and the pack's converted file (`vae.*`).
    """
    if f.kind == "refiner_pack":
        sd = _component(f.sd, "vae.")
        if not sd:
            raise CheckpointLayoutError(f"{f.source} is a converted refiner file without vae.* tensors")
    elif f.kind == "sd_checkpoint":
        sd = _component(f.sd, LDM_PREFIX)
        if not sd:
            raise CheckpointLayoutError(
                f"{f.source} is a Stable Diffusion checkpoint without first_stage_model.* tensors (no VAE inside); "
                "use v2-1_512-ema-pruned.ckpt or a VAE file"
            )
        logger.info("%s: using the %d first_stage_model.* tensors (the VAE); the other %d tensors are not read",
                    f.source, len(sd), len(f.sd) - len(sd))
    elif f.kind == "ldm_vae":
        sd = _strip_module_prefix(f.sd)
    elif f.kind == "diffusers_vae":
        prefixed, _ = normalize_legacy({"vae." + k: v for k, v in _strip_module_prefix(f.sd).items()})
        with torch.device("meta"):
            expected = expected_layout(Vae(vae_cfg))
        diffusers = _component(prefixed, "vae.")
        check_strict(diffusers, expected, source=f.source, layout="SD VAE (diffusers names)")
        return diffusers_vae_to_ldm(diffusers)
    else:
        raise _wrong_file(f, "the Stable Diffusion 2.1 VAE (v2-1_512-ema-pruned.ckpt)", "vae_path")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in diffusers_vae_to_ldm(Vae(vae_cfg).state_dict()).items()}
    # checked in the file's own (LDM) names so that messages quote keys the user can find in the file
    check_strict(sd, expected, source=f.source, layout="SD VAE (LDM names)")
    return sd


def _load_unet(f: RefinerFile, cfg: RefinerConfig, dtype: torch.dtype) -> UNet3D:
    unet_cfg = refiner_unet_config(cfg)
    unet = build_refiner_unet(unet_cfg, "meta")
    sd = official_unet_state(f, cfg, unet)
    try:
        internal = official_to_internal(sd, unet_cfg.layers_per_block)
    except (RefinerKeyError, ValueError) as exc:
        raise CheckpointLayoutError(f"{f.source}: {exc}") from None
    load_into(unet, cast_state_dict(internal, dtype))
    _finish(unet, f.source)
    return unet


def _load_text(f: RefinerFile, cfg: RefinerConfig) -> ClipTextEncoder:
    used = cfg.text_layers_used
    with torch.device("meta"):
        encoder = ClipTextEncoder(text_config_from_openclip(cfg.text, used))
    hf = openclip_text_to_hf(openclip_text_state(f, cfg, encoder), used)
    load_into(encoder, cast_state_dict(hf, torch.float32))
    _finish(encoder, f.source)
    return encoder


def _load_vae(f: RefinerFile, vae_cfg: VaeConfig) -> Vae:
    try:
        sd = ldm_vae_to_diffusers(ldm_vae_state(f, vae_cfg))
    except VaeNameError as exc:
        raise CheckpointLayoutError(f"{f.source}: {exc}") from None
    with torch.device("meta"):
        vae = Vae(vae_cfg)
    load_into(vae, cast_state_dict(sd, torch.float32))
    _finish(vae, f.source)
    return vae


def refiner_vae_config(cfg: RefinerConfig) -> VaeConfig:
    """`VaeConfig` of the LDM autoencoder described by `cfg`."""
    return vae_config_from_ldm(cfg.vae_ddconfig, cfg.vae_embed_dim)


def vae_source_path(path: Path) -> Path:
    """The path to read for a VAE: a diffusers pipeline folder given as the VAE means its ``vae/`` subfolder."""
    if path.is_dir() and (path / "vae").is_dir():
        return path / "vae"
    return path


def load_refiner_unet(path: str | os.PathLike, *, config: RefinerConfig | None = None,
                      dtype: torch.dtype = torch.float32) -> UNet3D:
    """The MS-Vid2Vid-XL UNet alone (any accepted UNet file), e.g. a golden set's `weights.safetensors` with
    ``config=RefinerConfig(unet=<its unet_tiny block>)``. Raises like `load_ms_vid2vid`."""
    f = read_refiner_file(_missing_path(path, "refiner UNet"))
    return _load_unet(f, resolve_config(f, config), dtype)


def load_refiner_text_encoder(path: str | os.PathLike, *, config: RefinerConfig | None = None) -> ClipTextEncoder:
    """The OpenCLIP text encoder alone (float32; runs `text["layers"] - 1` blocks)."""
    f = read_refiner_file(_missing_path(path, "refiner text encoder"))
    return _load_text(f, resolve_config(f, config))


def load_refiner_vae(path: str | os.PathLike, *, config: RefinerConfig | None = None) -> Vae:
    """The SD VAE alone (float32) from any accepted VAE file or folder."""
    f = read_refiner_file(vae_source_path(_missing_path(path, "refiner VAE")))
    return _load_vae(f, refiner_vae_config(resolve_config(f, config)))


def load_ms_vid2vid(unet_path: str | os.PathLike, text_path: str | os.PathLike | None = None,
                    vae_path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
                    config: RefinerConfig | None = None) -> RefinerModel:
    """Load MS-Vid2Vid-XL (§6.2) as a `RefinerModel` (family "ms_vid2vid").

    Args:
        unet_path: `non_ema_0035000.pth`, an official-named safetensors file, or the pack's converted file.
        text_path: `open_clip_pytorch_model.bin`, a text-only OpenCLIP file or the converted file; None when
            `unet_path` is the converted file.
        vae_path: `v2-1_512-ema-pruned.ckpt`, an LDM or diffusers VAE (file or folder) or the converted file;
            None when `unet_path` is the converted file.
        dtype: UNet weight dtype; the text encoder and the VAE are always float32 (§15).
        config: architecture override; by default each file's embedded `RefinerConfig`, else full size.
    Raises:
        MissingRefinerFilesError (a FileNotFoundError) naming the three expected files; CheckpointLayoutError
        for unreadable, unsafe or wrong files and for key mismatches.
    """
    unet_file = read_refiner_file(_missing_path(unet_path, "refiner UNet"))
    pack = unet_file.kind == "refiner_pack"
    if pack:
        logger.info("%s is the pack's converted refiner file (%s)", unet_file.source,
                    unet_file.info.metadata.get("sources", "sources not recorded"))
    text_file = read_refiner_file(_missing_path(text_path, "refiner text encoder")) if (
        text_path is not None or not pack) else unet_file
    vae_file = read_refiner_file(vae_source_path(_missing_path(vae_path, "refiner VAE"))) if (
        vae_path is not None or not pack) else unet_file

    unet_cfg_src = resolve_config(unet_file, config)
    unet = _load_unet(unet_file, unet_cfg_src, dtype)
    text_encoder = _load_text(text_file, resolve_config(text_file, config))
    vae_cfg = resolve_config(vae_file, config)
    vae = _load_vae(vae_file, refiner_vae_config(vae_cfg))

    sources = dict.fromkeys([unet_file.source, text_file.source, vae_file.source])
    model = RefinerModel(
        family="ms_vid2vid",
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=ClipTokenizer(split_pad_token=False),  # open_clip.tokenize: plain CLIP BPE, pad id 0 (§4.1)
        vae=vae,
        table=NoiseTable.logsnr_cosine_interp(),
        prediction="v",
        native_size=(int(unet_cfg_src.native_height), int(unet_cfg_src.native_width)),
        defaults=MS_VID2VID_DEFAULTS,
        source=" + ".join(sources),
        dtype=dtype,
    )
    logger.info("loaded MS-Vid2Vid-XL refiner from %s (UNet %s)", model.source, dtype)
    return model


# --------------------------------------------------------------------------------------------------------------
# Name map diffusers VAE -> LDM (the inverse of vae_names.ldm_vae_to_diffusers)
# --------------------------------------------------------------------------------------------------------------

_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_vae_to_ldm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers / `vae.Vae` state dict to bare LDM names (§5.1 table, right to left).

    The mid-block attention Linear weights `(c, c)` become 1x1-conv views `(c, c, 1, 1)` as LDM stores them;
    works on meta tensors. The number of levels is read from the `encoder.down_blocks.{i}` indices. Raises
    VaeNameError naming the first key that is not a diffusers VAE name.
    """
    levels = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
    n_levels = max(levels) + 1 if levels else 0
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = _to_ldm(key, n_levels)
        if re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight", new) and value.dim() == 2:
            value = value.reshape(value.shape[0], value.shape[1], 1, 1)
        if new in out:
            raise VaeNameError(f"two diffusers VAE keys map to {new!r} (second: {key!r})")
        out[new] = value
    return out


def _resnet_to_ldm(tail: str, key: str) -> str:
    part, _, param = tail.partition(".")
    if part not in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut") or param not in ("weight", "bias"):
        raise VaeNameError(f"unknown diffusers VAE key {key!r}")
    return ("nin_shortcut" if part == "conv_shortcut" else part) + "." + param


def _to_ldm(key: str, n_levels: int) -> str:
    if re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.{'norm_out' if m.group(2) == 'conv_norm_out' else m.group(2)}.{m.group(3)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key)
    if m:
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_resnet_to_ldm(m.group(3), key)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)",
                     key)
    if m:
        return f"{m.group(1)}.mid.attn_1.{_ATTN_TO_LDM[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_resnet_to_ldm(m.group(3), key)}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{n_levels - 1 - int(m.group(1))}.block.{m.group(2)}.{_resnet_to_ldm(m.group(3), key)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{n_levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    raise VaeNameError(f"unknown diffusers VAE key {key!r}")


# --------------------------------------------------------------------------------------------------------------
# diffusers UNet3D text-to-video family (§16)
# --------------------------------------------------------------------------------------------------------------

#: The ModelScope UNet3D configuration (`unet/config.json` of text-to-video-ms-1.7b and zeroscope_v2_XL).
MODELSCOPE_UNET3D: dict[str, Any] = {
    "_class_name": "UNet3DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "num_attention_heads": None,
    "time_cond_proj_dim": None,
}
#: Fields a tiny test model may change (sizes); every other field must equal `MODELSCOPE_UNET3D`.
UNET3D_SIZE_FIELDS = frozenset({"attention_head_dim", "block_out_channels", "cross_attention_dim",
                                "layers_per_block", "norm_num_groups"})
_UNET3D_IGNORED = frozenset({"_diffusers_version", "_name_or_path", "sample_size", "_streamingt2v_tiny",
                             "_streamingt2v_native_size"})
#: diffusers UNet3DConditionModel builds its first temporal transformer with 8 heads of `attention_head_dim`.
_TRANSFORMER_IN_HEADS = 8


def unet3d_config_from_diffusers(cfg: Mapping[str, Any], *, allow_sizes: bool = False,
                                 source: str = "unet/config.json") -> UNet3DConfig:
    """`UNet3DConfig` (geometry `modelscope_t2v`) of a diffusers `UNet3DConditionModel` config (§16.1).

    The configuration must equal the ModelScope one (`MODELSCOPE_UNET3D`; absent fields take diffusers'
    defaults, which are the ModelScope values); with ``allow_sizes`` (the pack's tiny models) the fields in
    `UNET3D_SIZE_FIELDS` may differ. Raises CheckpointLayoutError "unsupported UNet3D variant" naming the fields.
    """
    merged = {**MODELSCOPE_UNET3D, **{k: v for k, v in cfg.items() if k not in _UNET3D_IGNORED}}
    problems = []
    for key, value in merged.items():
        if key not in MODELSCOPE_UNET3D:
            if value not in (None, False):
                problems.append(f"{key} = {value!r} (unknown option)")
            continue
        want = MODELSCOPE_UNET3D[key]
        if allow_sizes and key in UNET3D_SIZE_FIELDS:
            continue
        same = list(value) == list(want) if isinstance(want, list) and isinstance(value, (list, tuple)) else \
            value == want
        if not same:
            problems.append(f"{key} = {value!r} (ModelScope: {want!r})")
    if problems:
        raise CheckpointLayoutError(
            f"{source}: unsupported UNet3D variant: " + "; ".join(problems) + ". The diffusers refiner family "
            "covers ModelScope-architecture UNet3D text-to-video models (text-to-video-ms-1.7b, zeroscope_v2_XL)"
        )
    head_dim = int(merged["attention_head_dim"])
    return UNet3DConfig(
        in_channels=int(merged["in_channels"]),
        out_channels=int(merged["out_channels"]),
        down_block_types=tuple(merged["down_block_types"]),
        up_block_types=tuple(merged["up_block_types"]),
        block_out_channels=tuple(int(c) for c in merged["block_out_channels"]),
        layers_per_block=int(merged["layers_per_block"]),
        attention_head_dim=head_dim,
        cross_attention_dim=int(merged["cross_attention_dim"]),
        norm_num_groups=int(merged["norm_num_groups"]),
        norm_eps=float(merged["norm_eps"]),
        transformer_in_num_heads=_TRANSFORMER_IN_HEADS,
        transformer_in_head_dim=head_dim,
        resampler_geometry="modelscope_t2v",
    )


def text_config_from_hf(cfg: Mapping[str, Any], source: str) -> TextEncoderConfig:
    model_type = cfg.get("model_type", "clip_text_model")
    if model_type != "clip_text_model":
        raise CheckpointLayoutError(f"{source}: model_type {model_type!r} is not a CLIP text model")
    defaults = TextEncoderConfig()
    try:
        return TextEncoderConfig(
            vocab_size=int(cfg.get("vocab_size", defaults.vocab_size)),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 77)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
            hidden_act=str(cfg.get("hidden_act", "quick_gelu")),
        )
    except KeyError as exc:
        raise CheckpointLayoutError(f"{source} lacks the field {exc}") from None


def vae_config_from_diffusers(cfg: Mapping[str, Any], source: str) -> VaeConfig:
    problems = []
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        problems.append(f"_class_name = {cfg['_class_name']!r}")
    blocks = list(cfg.get("block_out_channels", [64]))
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(cfg.get(key, [kind] * len(blocks)))
        if types != [kind] * len(blocks):
            problems.append(f"{key} = {types!r}")
    if cfg.get("act_fn", "silu") != "silu":
        problems.append(f"act_fn = {cfg['act_fn']!r}")
    for key in ("use_quant_conv", "use_post_quant_conv"):
        if cfg.get(key, True) is not True:
            problems.append(f"{key} = {cfg[key]!r}")
    if cfg.get("shift_factor") not in (None, 0, 0.0):
        problems.append(f"shift_factor = {cfg['shift_factor']!r}")
    if problems:
        raise CheckpointLayoutError(f"{source}: unsupported VAE variant: " + "; ".join(problems))
    return VaeConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        block_out_channels=tuple(int(c) for c in blocks),
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_num_groups=int(cfg.get("norm_num_groups", 32)),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointLayoutError(f"{what}: `{path}` is missing; a diffusers text-to-video folder has "
                                    "unet/, text_encoder/, vae/ and scheduler/scheduler_config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointLayoutError(f"{what}: `{path}` is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointLayoutError(f"{what}: `{path}` is not a JSON object")
    return data


def _text_weights(folder: Path) -> Path:
    """The weights file of a transformers `text_encoder/` folder: safetensors before .bin, plain before fp16."""
    for name in ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                 "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model.fp16.bin"):
        if (folder / name).is_file():
            return folder / name
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:20]) if folder.is_dir() else "nothing"
    raise CheckpointLayoutError(f"`{folder}` has no text encoder weights (model.safetensors or pytorch_model.bin); "
                                f"found: {found}")


#: Frame sizes (height, width) of known members of the family, matched in the folder path or `_name_or_path`.
KNOWN_NATIVE_SIZES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("zeroscope_v2_xl", (576, 1024)),
    ("zeroscope_v2_576w", (320, 576)),
    ("text-to-video-ms-1.7b", (256, 256)),
)


def _diffusers_native_size(folder: Path, unet_json: Mapping[str, Any], factor: int) -> tuple[int, int]:
    explicit = unet_json.get("_streamingt2v_native_size")
    if explicit:
        return int(explicit[0]), int(explicit[1])
    index = folder / "model_index.json"
    names = [str(folder.resolve()).lower(), str(unet_json.get("_name_or_path", "")).lower()]
    if index.is_file():
        try:
            names.append(str(json.loads(index.read_text(encoding="utf-8")).get("_name_or_path", "")).lower())
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    for needle, size in KNOWN_NATIVE_SIZES:
        if any(needle in n for n in names):
            return size
    side = int(unet_json.get("sample_size", 32)) * factor
    logger.info("%s: unknown model, native size from unet sample_size: %dx%d", folder, side, side)
    return side, side


def _diffusers_prediction(cfg: Mapping[str, Any], source: str) -> str:
    kind = cfg.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return "epsilon"
    if kind == "v_prediction":
        return "v"
    raise CheckpointLayoutError(f"{source}: prediction_type {kind!r} is not supported (epsilon or v_prediction)")


def load_diffusers_refiner(folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                           native_size: tuple[int, int] | None = None) -> RefinerModel:
    """Load a diffusers UNet3D text-to-video folder as a `RefinerModel` (family "diffusers_t2v", §16.1).

    Args:
        folder: with `unet/` (config.json + weights), `text_encoder/`, `vae/`, `scheduler/scheduler_config.json`.
        dtype: UNet weight dtype; text encoder and VAE stay float32.
        native_size: (height, width) override; default from known model names (zeroscope_v2_XL 576x1024), the
            tiny models' `_streamingt2v_native_size`, else `sample_size` times the VAE factor.
    Raises:
        FileNotFoundError when `folder` does not exist; CheckpointLayoutError for a missing part, an
        "unsupported UNet3D variant", unsupported scheduler options or key mismatches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"diffusers refiner folder `{folder}` does not exist")
    unet_json = _read_json(folder / "unet" / "config.json", "diffusers refiner UNet")
    unet_file = read_refiner_file(folder / "unet")
    if unet_file.kind != "diffusers_unet3d":
        raise _wrong_file(unet_file, "a diffusers UNet3D text-to-video UNet", "the unet/ folder")
    stream_cfg = unet_file.info.metadata.get(CONFIG_METADATA_KEY)
    if stream_cfg:  # the stream stage's tiny vanilla UNet records its own architecture
        unet_cfg = config_from_metadata(unet_file.info.metadata).unet
    else:
        unet_cfg = unet3d_config_from_diffusers(unet_json, allow_sizes=bool(unet_json.get("_streamingt2v_tiny")),
                                                source=str(folder / "unet" / "config.json"))
    with torch.device("meta"):
        unet = UNet3D(unet_cfg, streaming=False)
    check_strict(unet_file.sd, expected_layout(unet), source=unet_file.source, layout="diffusers UNet3D")
    load_into(unet, cast_state_dict(unet_file.sd, dtype))
    _finish(unet, unet_file.source)

    text_json = _read_json(folder / "text_encoder" / "config.json", "diffusers refiner text encoder")
    text_cfg = text_config_from_hf(text_json, str(folder / "text_encoder" / "config.json"))
    text_file = read_refiner_file(_text_weights(folder / "text_encoder"))
    if text_file.kind != "hf_clip_text":
        raise _wrong_file(text_file, "a transformers CLIPTextModel", "text_encoder/")
    text_sd, _ = normalize_legacy({"text_encoder." + k: v for k, v in text_file.sd.items()})
    text_sd = _component(text_sd, "text_encoder.")
    with torch.device("meta"):
        text_encoder = ClipTextEncoder(text_cfg)
    check_strict(text_sd, expected_layout(text_encoder), source=text_file.source, layout="CLIPTextModel")
    load_into(text_encoder, cast_state_dict(text_sd, torch.float32))
    _finish(text_encoder, text_file.source)

    vae_json = _read_json(folder / "vae" / "config.json", "diffusers refiner VAE")
    vae = _load_vae(read_refiner_file(folder / "vae"),
                    vae_config_from_diffusers(vae_json, str(folder / "vae" / "config.json")))

    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = _read_json(sched_path, "diffusers refiner scheduler")
    for option in ("rescale_betas_zero_snr", "thresholding"):
        if sched.get(option):
            raise CheckpointLayoutError(f"{sched_path}: {option} = true is not supported by the refiner schedule")
    try:
        table = NoiseTable.from_betas(float(sched.get("beta_start", 0.0001)), float(sched.get("beta_end", 0.02)),
                                      str(sched.get("beta_schedule", "linear")),
                                      int(sched.get("num_train_timesteps", 1000)))
    except ValueError as exc:
        raise CheckpointLayoutError(f"{sched_path}: {exc}") from None
    prediction = _diffusers_prediction(sched, str(sched_path))
    tokenizer_map = folder / "tokenizer" / "special_tokens_map.json"
    if tokenizer_map.is_file():
        pad = json.loads(tokenizer_map.read_text(encoding="utf-8")).get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if pad not in (None, "!"):
            logger.warning("%s: pad token %r; the pack's tokenizer pads with id 0 ('!') as the ModelScope "
                           "pipelines do", tokenizer_map, pad)
    size = native_size or _diffusers_native_size(folder, unet_json, vae.downsample_factor)
    model = RefinerModel(
        family="diffusers_t2v",
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=ClipTokenizer(),  # transformers CLIPTokenizer behaviour with pad token "!" (id 0)
        vae=vae,
        table=table,
        prediction=prediction,
        native_size=(int(size[0]), int(size[1])),
        defaults=DIFFUSERS_T2V_DEFAULTS,
        source=f"`{folder.name}` (diffusers folder)",
        dtype=dtype,
        scheduler_config=dict(sched),
    )
    logger.info("loaded diffusers refiner %s: prediction %s, native %dx%d (HxW), UNet %s", folder, prediction,
                model.native_size[0], model.native_size[1], dtype)
    return model
