"""Checkpoint reading: container detection, layout detection, name normalisation and the strict check.

This module knows files and key names, not model classes: every function works on a ``name -> Tensor`` dict
and, for the strict check, on an expected ``name -> shape`` layout supplied by the caller (built from a config
on the meta device, or read from the manifest with `read_manifest`). The same code path serves the tiny
random-weight test files and the full-size files (``stream_stage.md`` §13.3 item 6).

Typical use by a loader::

    sd, info, layout = read_normalized(path)                       # §13.3 items 1-3
    check_strict(sd, expected, source=describe(info), layout=layout)
    sd = fill_unused(sd, expected)                                 # image_encoder text-side leftovers
    parts = split_components(cast_state_dict(sd, dtype))           # §13.3 item 5
    load_into(cam, parts["unet"])                                  # meta-built module, assign=True

Containers (`FileInfo.container`):

* ``"safetensors"``          one safetensors file (memory-mapped through ``safetensors.safe_open``)
* ``"safetensors_sharded"``  a ``*.safetensors.index.json`` plus its shards
* ``"torch_zip"``            a zip-pickle ``torch.save`` file, loaded with ``mmap=True, weights_only=True``
* ``"torch_legacy"``         a pre-1.6 non-zip pickle (``weights_only=True``, read fully into RAM)
* ``"diffusers_folder"``     a folder with ``unet/diffusion_pytorch_model*.safetensors`` (or the file at top level)

Layouts (`detect_layout`):

* ``"official"``        ``streaming_t2v.ckpt`` names (§13.2): ``resampler.``, ``image_encoder.``, ``text_encoder.``,
                        ``vae.``, ``unet.`` (= CAM), ``base_model.`` (= UNet + injectors + APM)
* ``"vidxtend"``        the VidXTend repack (§13.4): ``unet.`` = base UNet, ``controlnet.`` = CAM, others as official
* ``"vidxtend_unet"``   bare UNet names *with* injector / APM tensors (VidXTend's ``unet/`` file = ``base_model.*``)
* ``"diffusers_unet"``  bare vanilla ``UNet3DConditionModel`` names (the ModelScope UNet for the first chunk)
* ``"modelscope_folder_unet"``  the same names read from a diffusers folder (``unet/`` of text-to-video-ms-1.7b)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .image_encoder import UNUSED_TEXT_SIDE_KEYS

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointLayoutError",
    "FileInfo",
    "OFFICIAL_PREFIXES",
    "VIDXTEND_TO_OFFICIAL",
    "UNUSED_IMAGE_ENCODER_KEYS",
    "LAYOUTS",
    "read_state_dict",
    "detect_layout",
    "to_official_names",
    "normalize_legacy",
    "read_normalized",
    "read_image_encoder",
    "read_manifest",
    "check_strict",
    "fill_unused",
    "split_components",
    "cast_state_dict",
    "load_into",
    "describe",
]


class CheckpointLayoutError(ValueError):
    """A weights file is unreadable, unsafe, of the wrong model, or does not match the expected layout."""


# --------------------------------------------------------------------------------------------------------------
# Name tables (stream_stage.md §13.2, §13.4)
# --------------------------------------------------------------------------------------------------------------

#: Official top-level prefixes in registration order (§13.2).
OFFICIAL_PREFIXES: tuple[str, ...] = ("resampler", "image_encoder", "text_encoder", "vae", "unet", "base_model")

#: VidXTend top-level prefix -> official prefix (§13.4). Applied simultaneously, never one after another.
VIDXTEND_TO_OFFICIAL: dict[str, str] = {
    "unet": "base_model",
    "controlnet": "unet",
    "vae": "vae",
    "text_encoder": "text_encoder",
    "resampler": "resampler",
    "image_encoder": "image_encoder",
}

#: Text-side leftovers of the OpenCLIP model inside ``image_encoder.model`` (§13.2): stored, never used, and
#: accepted present or absent (§13.3 table, row 3).
UNUSED_IMAGE_ENCODER_KEYS: frozenset[str] = frozenset("image_encoder.model." + name for name in UNUSED_TEXT_SIDE_KEYS)

LAYOUTS: tuple[str, ...] = ("official", "vidxtend", "vidxtend_unet", "diffusers_unet", "modelscope_folder_unet")

# Top-level names of a bare diffusers UNet3DConditionModel, plus the StreamingT2V injectors (§6.3).
_UNET3D_TOPS = frozenset(
    {
        "conv_in",
        "time_embedding",
        "transformer_in",
        "down_blocks",
        "mid_block",
        "up_blocks",
        "conv_norm_out",
        "conv_out",
        "cross_attention_merger_down_blocks",
        "cross_attention_merger_mid_block",
    }
)
# Tensors that only the StreamingT2V base UNet has: CAM injectors (§6.3) and APM mixing (§7.5).
_STREAMING_ONLY = re.compile(r"(^|\.)cross_attention_merger_|\.attn2\.(alpha|conv\.|conv_ln\.)")

_IMAGE_ENCODER_HINT = (
    "image_encoder.* absent: pass the OpenCLIP ViT-H-14 file open_clip_pytorch_model.bin as image_encoder_path "
    "(from laion/CLIP-ViT-H-14-laion2B-s32B-b79K; the VidXTend repack has no image encoder)"
)


# --------------------------------------------------------------------------------------------------------------
# Reading containers (§13.3 items 1-2)
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `read_state_dict` found.

    path: the path given by the caller; container: see the module docstring; metadata: the safetensors
    ``__metadata__`` entry (str -> str; empty when absent or not safetensors; for shards, that of the first
    shard); files: every file actually read; size: their total size in bytes.
    """

    path: Path
    container: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    files: tuple[Path, ...] = ()
    size: int = 0


def describe(info: FileInfo) -> str:
    """Short description of a file for messages: ```name` (container)``."""
    return f"`{info.path.name}` ({info.container})"


def read_state_dict(
    path: str | os.PathLike, *, unpickle: Callable[[Path, bool], object] | None = None
) -> tuple[dict[str, torch.Tensor], FileInfo]:
    """Read every tensor of a weights file or diffusers folder, detecting the format by content (§13.3 item 1).

    Safetensors files are memory-mapped; zip-pickle torch files are loaded with ``mmap=True,
    weights_only=True`` and only their ``"state_dict"`` entry is kept, so optimizer state stays on disk
    (§13.3 item 2). Tensors stay on the CPU in their stored dtype. Raises `CheckpointLayoutError` for anything
    that is not a readable weights container, and `FileNotFoundError` when the path does not exist.

    ``unpickle(path, mmap) -> object`` replaces the ``torch.load(weights_only=True)`` call for torch files; it
    must be at least as restrictive (the refiner passes `safe_pickle.load`, refine_stage.md §6.2 item 5).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file `{path}` does not exist")
    if path.is_dir():
        return _read_diffusers_folder(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    kind = _sniff(path, head, size)
    if kind == "safetensors":
        sd, metadata = _read_safetensors(path)
        return sd, FileInfo(path, "safetensors", metadata, (path,), size)
    if kind == "index":
        return _read_sharded_index(path, container="safetensors_sharded")
    if kind == "torch_zip":
        sd = _read_torch(path, mmap=True, unpickle=unpickle)
        return sd, FileInfo(path, "torch_zip", {}, (path,), size)
    if kind == "torch_legacy":
        logger.warning(
            "`%s` is a legacy (non-zip) PyTorch pickle and cannot be memory-mapped: the whole file (%.2f GB) "
            "will be read into RAM; re-save it with torch.save (zip format) or convert it with "
            "`python -m streaming_core.convert` to avoid this",
            path.name,
            size / 1e9,
        )
        sd = _read_torch(path, mmap=False, unpickle=unpickle)
        return sd, FileInfo(path, "torch_legacy", {}, (path,), size)
    raise CheckpointLayoutError(
        f"`{path}` is not a weights file this pack can read: {kind}. Expected a safetensors file, a PyTorch "
        "checkpoint (streaming_t2v.ckpt, zip format) or a diffusers folder with "
        "unet/diffusion_pytorch_model*.safetensors"
    )


# torch.save's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (LONG1, 10 bytes).
_LEGACY_TORCH_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _sniff(path: Path, head: bytes, size: int) -> str:
    """Container kind from the first bytes: a kind name, or a phrase saying what the file looks like."""
    if size == 0:
        return "the file is empty (an interrupted download?)"
    if size >= 10 and _looks_like_safetensors(head):
        (n,) = struct.unpack("<Q", head[:8])
        _check_safetensors_size(path, n, size)
        return "safetensors"
    if head[:2] == b"PK":
        if not zipfile.is_zipfile(path):
            return "it starts like a zip archive but is damaged (a truncated download?)"
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in n for n in names):
            return "it is a TorchScript archive (torch.jit.save), not a state dict"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "torch_zip"
        shown = ", ".join(names[:5])
        return f"it is a zip archive without data.pkl, so not a PyTorch checkpoint (entries: {shown})"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        if head[2:14] == _LEGACY_TORCH_MAGIC:
            return "torch_legacy"
        return (
            "it is a plain Python pickle, not written by torch.save; this pack does not unpickle arbitrary "
            "Python objects"
        )
    if head[:4] == b"GGUF":
        return "it is a GGUF file (quantized llama.cpp format), which is not supported"
    if head[:4] == b"\x89HDF":
        return "it is an HDF5 file (Keras/TensorFlow weights)"
    stripped = head.lstrip()
    if stripped.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights themselves (run `git lfs pull` or download the file)"
    lowered = stripped[:200].lower()
    if lowered.startswith(b"<!doctype html") or lowered.startswith(b"<html"):
        return "it is an HTML page (probably a failed download or a login page)"
    if stripped.startswith(b"{"):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "it looks like a (malformed) JSON text file"
        if isinstance(document, dict) and isinstance(document.get("weight_map"), dict):
            return "index"
        return "it is a JSON document without a weight_map (a config file?)"
    if _is_text(head):
        preview = head[:60].decode("utf-8", errors="replace").replace("\n", " ").strip()
        return f"it is a text file starting with {preview!r}"
    return f"unrecognised binary content (first bytes {head[:8].hex(' ')})"


def _looks_like_safetensors(head: bytes) -> bool:
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 200_000_000 and head[8:9] == b"{"


def _check_safetensors_size(path: Path, header_len: int, size: int) -> None:
    """Refuse a truncated safetensors file with a message saying so (an interrupted download is common)."""
    if 8 + header_len > size:
        raise CheckpointLayoutError(
            f"`{path}` has a safetensors header announcing {header_len} header bytes but the file has only "
            f"{size} bytes: the file is truncated (an interrupted download?); download it again"
        )
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointLayoutError(
            f"`{path}` starts like a safetensors file but its JSON header is damaged ({exc}); download it again"
        ) from exc
    end = max(
        (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)),
        default=0,
    )
    if 8 + header_len + end > size:
        raise CheckpointLayoutError(
            f"`{path}` is a truncated safetensors file: its header describes {8 + header_len + end} bytes, the "
            f"file has {size} (an interrupted download?); download it again"
        )


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character may be cut at the end of the sample
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    return control == 0


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    sd: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            sd[key] = f.get_tensor(key)  # memory-mapped; pages are read on first use
    return sd, metadata


def _read_sharded_index(index: Path, *, container: str) -> tuple[dict[str, torch.Tensor], FileInfo]:
    from safetensors import safe_open

    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointLayoutError(f"shard index `{index}` has no weight_map entries")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointLayoutError(
            f"shard index `{index}` lists {len(shards)} shard files but {len(missing)} are missing in "
            f"`{index.parent}`: {', '.join(missing[:20])}; download them next to the index"
        )
    sd: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    files = tuple(index.parent / s for s in shards)
    for shard in files:
        with open(shard, "rb") as f:
            head = f.read(16)
        if len(head) < 9 or not _looks_like_safetensors(head):
            raise CheckpointLayoutError(f"shard `{shard}` listed in `{index.name}` is not a safetensors file")
        _check_safetensors_size(shard, struct.unpack("<Q", head[:8])[0], shard.stat().st_size)
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            if not metadata:
                metadata = dict(f.metadata() or {})
            wanted = [k for k, s in weight_map.items() if s == shard.name]
            present = set(f.keys())
            absent = [k for k in wanted if k not in present]
            if absent:
                raise CheckpointLayoutError(
                    f"shard `{shard.name}` lacks {len(absent)} tensors that `{index.name}` assigns to it, e.g. "
                    f"{', '.join(absent[:5])}; the download is incomplete or the index belongs to another file"
                )
            for key in wanted:
                sd[key] = f.get_tensor(key)
    size = sum(p.stat().st_size for p in files)
    return sd, FileInfo(index, container, metadata, files, size)


def _read_diffusers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], FileInfo]:
    """A diffusers folder: ``unet/diffusion_pytorch_model*`` (pipeline folder) or the file at top level."""
    for place in (folder / "unet", folder):
        if not place.is_dir():
            continue
        indexes = sorted(place.glob("diffusion_pytorch_model*.safetensors.index.json"))
        singles = sorted(place.glob("diffusion_pytorch_model*.safetensors"))
        bins = sorted(place.glob("diffusion_pytorch_model*.bin"))
        if indexes:  # shard files belong to their index, they are no candidates of their own
            singles = [p for p in singles if not re.search(r"-\d+-of-\d+\.safetensors$", p.name)]
        candidates = [*singles, *indexes] or bins
        if not candidates:
            continue
        chosen = _choose_variant(candidates)
        if len(candidates) > 1:
            logger.info(
                "diffusers folder `%s`: using `%s` (also present: %s)",
                folder,
                chosen.name,
                ", ".join(c.name for c in candidates if c != chosen),
            )
        if chosen.name.endswith(".index.json"):
            sd, info = _read_sharded_index(chosen, container="diffusers_folder")
            return sd, dataclasses.replace(info, path=folder)
        sd, inner = read_state_dict(chosen)
        return sd, FileInfo(folder, "diffusers_folder", inner.metadata, inner.files, inner.size)
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:20]
    raise CheckpointLayoutError(
        f"folder `{folder}` is not a diffusers UNet folder: expected unet/diffusion_pytorch_model*.safetensors "
        f"or diffusion_pytorch_model*.safetensors inside it; found: {', '.join(found) or 'nothing'}. "
        "For the StreamingT2V weights select the file itself (streaming_t2v.ckpt or a .safetensors file)"
    )


def _choose_variant(candidates: list[Path]) -> Path:
    """Prefer the plain name, then an fp16 variant, then anything else (sorted); safetensors before .bin."""

    def rank(p: Path) -> tuple[int, int, str]:
        base = p.name.replace(".safetensors.index.json", "").replace(".safetensors", "").replace(".bin", "")
        variant = base[len("diffusion_pytorch_model") :]
        order = {"": 0, ".fp16": 1}.get(variant, 2)
        return (order, 0 if "safetensors" in p.name else 1, p.name)

    return min(candidates, key=rank)


def _read_torch(
    path: Path, *, mmap: bool, unpickle: Callable[[Path, bool], object] | None = None
) -> dict[str, torch.Tensor]:
    """``torch.load(..., weights_only=True)``; never falls back to full unpickling (§13.3 item 2)."""
    try:
        if unpickle is not None:
            obj = unpickle(path, mmap)
        elif path.name.endswith(".safetensors"):
            obj = _load_misnamed_torch(path, mmap=mmap)
        else:
            obj = torch.load(str(path), map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _rejected_globals(path, str(exc))
        if names:
            raise CheckpointLayoutError(
                f"`{path}` contains pickled Python objects that are not plain tensors ({', '.join(names)}); the "
                "safe loader (torch.load weights_only=True) refuses to run them and this pack never loads "
                "checkpoints unsafely. Use the original streaming_t2v.ckpt or a safetensors conversion of it"
            ) from None
        reason = next(
            (line.split("WeightsUnpickler error:", 1)[1].strip() for line in str(exc).splitlines()
             if "WeightsUnpickler error:" in line),
            str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__,
        )
        raise CheckpointLayoutError(
            f"`{path}` was rejected by the safe loader (torch.load weights_only=True): {reason}; this pack never "
            "loads checkpoints unsafely. Use the original streaming_t2v.ckpt or a safetensors conversion of it"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointLayoutError(
            f"`{path}` could not be read as a PyTorch checkpoint: {exc or type(exc).__name__} (a truncated or "
            "damaged file? download it again)"
        ) from exc
    return _extract_state_dict(path, obj)


def _load_misnamed_torch(path: Path, *, mmap: bool) -> object:
    """A torch file named ``*.safetensors``: ``torch.load`` picks the reader by that suffix, so load it through
    a temporary symlink with another name (mmap needs a path); without symlinks, from an open file, in RAM."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="st2v_load_") as tmp:
        link = Path(tmp) / "checkpoint.pt"
        try:
            link.symlink_to(path.resolve())
        except OSError:
            logger.warning(
                "`%s` is a PyTorch file named .safetensors and symlinks are unavailable: reading it without "
                "mmap (%.2f GB of RAM); rename it to .ckpt to avoid this", path.name, path.stat().st_size / 1e9
            )
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(str(link), map_location="cpu", mmap=mmap, weights_only=True)


def _rejected_globals(path: Path, message: str) -> list[str]:
    """Names of the globals the weights-only unpickler rejected, without executing anything."""
    names = re.findall(r"GLOBAL ([\w.]+)", message)
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if getter is not None:
        try:
            names = list(dict.fromkeys([*names, *getter(str(path))]))
        except Exception:  # noqa: BLE001 - diagnostics only; the error below is raised either way
            pass
    return names


def _extract_state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    """``obj["state_dict"]`` when present, else ``obj`` itself if it is a dict of tensors (§13.3 table)."""
    if not isinstance(obj, Mapping):
        raise CheckpointLayoutError(
            f"`{path}` holds a {type(obj).__name__}, not a dict of tensors; expected a state dict or a dict "
            "with a 'state_dict' entry (like streaming_t2v.ckpt)"
        )
    if "state_dict" in obj:
        sd = obj["state_dict"]
        if not isinstance(sd, Mapping):
            raise CheckpointLayoutError(
                f"`{path}`: the 'state_dict' entry is a {type(sd).__name__}, not a dict of tensors"
            )
        where = "the 'state_dict' entry of "
    else:
        sd = obj
        where = ""
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(sd[k]).__name__})" for k in bad[:10])
        raise CheckpointLayoutError(
            f"{where}`{path}` is not a dict of tensors: {len(bad)} entries are something else, e.g. {shown}; "
            "expected a state dict or a dict with a 'state_dict' entry (like streaming_t2v.ckpt)"
        )
    return dict(sd)


# --------------------------------------------------------------------------------------------------------------
# Layout detection and name normalisation (§13.3, §13.4)
# --------------------------------------------------------------------------------------------------------------


def _tops(keys: Iterable[str]) -> Counter[str]:
    return Counter(k.split(".", 1)[0] for k in keys)


def _foreign_model(keys: list[str], tops: Counter[str]) -> str | None:
    """What a file of another model looks like, or None (§13.3 item 4)."""
    if "conditioner" in tops:
        if any(k.startswith("conditioner.embedders.") for k in keys):
            return (
                "it looks like a StreamingSVD / Stable Video Diffusion (generative-models) checkpoint "
                "(conditioner.embedders.*)"
            )
        return "it looks like a generative-models (SGM) checkpoint (conditioner.*)"
    if "model" in tops and any(k.startswith("model.diffusion_model.") for k in keys):
        return "it looks like a Stable Diffusion / LDM checkpoint (model.diffusion_model.*)"
    if "first_stage_model" in tops or "cond_stage_model" in tops:
        return "it looks like a Stable Diffusion / LDM checkpoint (first_stage_model.* / cond_stage_model.*)"
    if any(".controlnet_down_blocks." in k or ".controlnet_mid_block." in k or
           k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")) for k in keys):
        return (
            "it has controlnet_down_blocks / controlnet_mid_block tensors (a ControlNet-style CAM as in "
            "StreamingSVD or a diffusers ControlNet); the ModelScope StreamingT2V CAM has none"
        )
    if any(".motion_modules." in k for k in keys):
        return "it looks like an AnimateDiff motion module (motion_modules.*)"
    if "input_blocks" in tops or "time_embed" in tops:
        return (
            "it looks like an original-format (LDM / ModelScope UNetSD, non-diffusers) UNet (input_blocks.*); "
            "use the diffusers unet/ folder of ali-vilab/text-to-video-ms-1.7b instead"
        )
    if "double_blocks" in tops or "single_blocks" in tops:
        return "it looks like a Flux-style transformer (double_blocks.*)"
    if "visual" in tops and "unet" not in tops and "base_model" not in tops:
        return "it looks like an OpenCLIP model (visual.*): pass it as image_encoder_path instead"
    if "text_model" in tops:
        return "it looks like a bare CLIP text encoder (text_model.*)"
    if {"encoder", "decoder"} & set(tops) and any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks."))
                                                   for k in keys):
        return "it looks like a bare diffusers VAE (encoder.* / decoder.*)"
    return None


def _prefix_summary(tops: Counter[str], limit: int = 10) -> str:
    items = [f"{name}. ({n})" for name, n in tops.most_common(limit)]
    if len(tops) > limit:
        items.append(f"and {len(tops) - limit} more")
    return ", ".join(items)


def _not_streaming_t2v(reason: str, tops: Counter[str]) -> CheckpointLayoutError:
    return CheckpointLayoutError(
        f"this is not the ModelScope StreamingT2V checkpoint: {reason}. Found top-level prefixes "
        f"{_prefix_summary(tops)}; expected {', '.join(p + '.' for p in OFFICIAL_PREFIXES)} "
        "(streaming_t2v.ckpt) or unet./controlnet./vae./text_encoder./resampler. (VidXTend)"
    )


def detect_layout(keys: Iterable[str], *, container: str | None = None) -> str:
    """Name layout of a state dict (one of `LAYOUTS`) from its keys alone (§13.3 items 1 and 4).

    ``unet.`` exists in both the official layout (the CAM: ``unet.controlnet_cond_embedding.*``, no
    ``up_blocks``) and the VidXTend layout (the base UNet: ``unet.up_blocks.*``); ``base_model.`` only in
    the official one, ``controlnet.`` only in VidXTend. ``container="diffusers_folder"`` turns a bare vanilla
    UNet into ``"modelscope_folder_unet"``. Raises `CheckpointLayoutError` ("this is not the ModelScope
    StreamingT2V checkpoint ...") for other models and mixed layouts.
    """
    keys = list(keys)
    if not keys:
        raise CheckpointLayoutError("the file contains no tensors")
    tops = _tops(keys)
    foreign = _foreign_model(keys, tops)
    if foreign is not None:
        raise _not_streaming_t2v(foreign, tops)

    if set(tops) <= _UNET3D_TOPS:
        if not any(k.startswith("transformer_in.") or ".temp_convs." in k or ".temp_attentions." in k for k in keys):
            raise _not_streaming_t2v(
                "it has bare UNet names but no temporal layers (transformer_in / temp_convs): a 2D image UNet",
                tops,
            )
        if any(_STREAMING_ONLY.search(k) for k in keys):
            return "vidxtend_unet"
        return "modelscope_folder_unet" if container == "diffusers_folder" else "diffusers_unet"

    unknown = [t for t in tops if t not in OFFICIAL_PREFIXES and t not in VIDXTEND_TO_OFFICIAL]
    if unknown:
        shown = ", ".join(f"{t}. ({tops[t]})" for t in unknown[:10])
        raise _not_streaming_t2v(f"unknown top-level prefixes {shown}", tops)

    has_base, has_controlnet = "base_model" in tops, "controlnet" in tops
    if has_base and has_controlnet:
        raise CheckpointLayoutError(
            "the file mixes the official layout (base_model.*) and the VidXTend layout (controlnet.*); "
            f"found {_prefix_summary(tops)}. Use an unmodified streaming_t2v.ckpt, vidxtend.safetensors or a "
            "file written by streaming_core.convert"
        )
    if has_controlnet:
        return "vidxtend"
    if has_base:
        return "official"
    if "unet" in tops:
        unet_is_base = any(
            k.startswith(("unet.up_blocks.", "unet.conv_out.", "unet.cross_attention_merger_")) for k in keys
        )
        unet_is_cam = any(k.startswith("unet.controlnet_cond_embedding.") for k in keys)
        if unet_is_base and unet_is_cam:
            raise CheckpointLayoutError(
                "unet.* holds both base-UNet tensors (up_blocks / conv_out) and CAM tensors "
                "(controlnet_cond_embedding): neither the official nor the VidXTend layout"
            )
        if unet_is_base:
            return "vidxtend"
    return "official"


def to_official_names(sd: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename keys to the official ``streaming_t2v.ckpt`` names (§13.4); tensors are shared, not copied.

    ``vidxtend``: ``unet.`` -> ``base_model.``, ``controlnet.`` -> ``unet.``, other prefixes unchanged.
    ``vidxtend_unet``: every key gets ``base_model.``. ``official`` and the vanilla UNet layouts
    (``diffusers_unet``, ``modelscope_folder_unet``) are returned unchanged: the vanilla first-chunk UNet is
    a model of its own with diffusers names and no official prefix.
    """
    if layout in ("official", "diffusers_unet", "modelscope_folder_unet"):
        return dict(sd)
    if layout == "vidxtend_unet":
        logger.info("VidXTend base-UNet file: prefixing %d keys with base_model. (stream_stage.md §13.4)", len(sd))
        return {"base_model." + k: v for k, v in sd.items()}
    if layout == "vidxtend":
        out: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            top, _, rest = key.partition(".")
            if top not in VIDXTEND_TO_OFFICIAL:
                raise CheckpointLayoutError(
                    f"key `{key}` has prefix `{top}.`, which the VidXTend layout does not use; expected one of "
                    f"{', '.join(p + '.' for p in VIDXTEND_TO_OFFICIAL)}"
                )
            out[f"{VIDXTEND_TO_OFFICIAL[top]}.{rest}"] = value
        logger.info(
            "VidXTend layout: renamed unet.* -> base_model.* and controlnet.* -> unet.* (stream_stage.md §13.4)"
        )
        return out
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


_OLD_VAE_ATTENTION = re.compile(
    r"^(vae\.(?:encoder|decoder)\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$"
)
_NEW_VAE_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_VAE_ATTENTION_WEIGHT = re.compile(
    r"^vae\.(?:encoder|decoder)\.mid_block\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$"
)


def normalize_legacy(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply the tolerated legacy variants of §13.3 (table) to official names; log each at INFO.

    * ``text_encoder.text_model.embeddings.position_ids`` (transformers < 4.31 buffer): dropped.
    * old VAE attention ``…mid_block.attentions.N.{query,key,value,proj_attn}.*``: renamed to
      ``to_q/to_k/to_v/to_out.0``; conv-shaped ``(C, C, 1, 1)`` weights squeezed to ``(C, C)``.
    * ``image_encoder.model.transformer.*`` (the OpenCLIP text tower): dropped.

    The image-encoder text leftovers (`UNUSED_IMAGE_ENCODER_KEYS`) are left alone here; `check_strict`
    accepts them present or absent and `fill_unused` reconciles them with a module. Returns a new dict
    (tensors shared) and the list of applied variants, one sentence each.
    """
    out = dict(sd)
    applied: list[str] = []

    if out.pop("text_encoder.text_model.embeddings.position_ids", None) is not None:
        applied.append("dropped text_encoder.text_model.embeddings.position_ids (transformers < 4.31 buffer)")

    renamed = squeezed = 0
    for key in [k for k in out if _OLD_VAE_ATTENTION.match(k)]:
        prefix, old, kind = _OLD_VAE_ATTENTION.match(key).groups()
        new_key = f"{prefix}{_NEW_VAE_NAMES[old]}.{kind}"
        if new_key in out:
            raise CheckpointLayoutError(
                f"VAE attention tensor present under both the old name `{key}` and the new name `{new_key}`"
            )
        out[new_key] = out.pop(key)
        renamed += 1
    for key in [k for k in out if _VAE_ATTENTION_WEIGHT.match(k)]:
        w = out[key]
        if w.ndim == 4 and tuple(w.shape[2:]) == (1, 1):
            out[key] = w.reshape(w.shape[0], w.shape[1])
            squeezed += 1
    if renamed:
        applied.append(
            f"renamed {renamed} old VAE mid-block attention tensors (query/key/value/proj_attn -> "
            "to_q/to_k/to_v/to_out.0)"
        )
    if squeezed:
        applied.append(f"squeezed {squeezed} conv-shaped (C, C, 1, 1) VAE attention weights to (C, C)")

    tower = [k for k in out if k.startswith("image_encoder.model.transformer.")]
    for key in tower:
        del out[key]
    if tower:
        applied.append(f"dropped {len(tower)} image_encoder.model.transformer.* tensors (OpenCLIP text tower)")

    for sentence in applied:
        logger.info("legacy checkpoint variant (stream_stage.md §13.3): %s", sentence)
    return out, applied


def read_normalized(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], FileInfo, str]:
    """`read_state_dict` + `detect_layout` + `to_official_names` + `normalize_legacy` in one call.

    Returns ``(sd, info, layout)`` with official names (the vanilla UNet layouts keep diffusers names).
    """
    sd, info = read_state_dict(path)
    try:
        layout = detect_layout(sd.keys(), container=info.container)
    except CheckpointLayoutError as exc:
        raise CheckpointLayoutError(f"{describe(info)}: {exc}") from None
    logger.info("read %s: %d tensors, layout %s", describe(info), len(sd), layout)
    sd, _ = normalize_legacy(to_official_names(sd, layout))
    return sd, info, layout


def read_image_encoder(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a separate OpenCLIP ViT-H-14 file (open_clip layout, ``visual.*``) as ``image_encoder.model.*``.

    Accepts bare open_clip names, names already under ``image_encoder.model.`` or under ``model.``. The text
    tower is dropped (`normalize_legacy`); the text-side leftovers are kept (see `fill_unused`).
    """
    sd, info = read_state_dict(path)
    keys = list(sd)
    if any(k.startswith("vision_model.") for k in keys):
        raise CheckpointLayoutError(
            f"{describe(info)} is a transformers CLIPVisionModel (vision_model.*), not the open_clip layout; "
            "use open_clip_pytorch_model.bin from laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        )
    mapped: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("image_encoder.model."):
            mapped[key] = value
        elif key.startswith("model."):
            mapped["image_encoder." + key] = value
        else:
            mapped["image_encoder.model." + key] = value
    if not any(k.startswith("image_encoder.model.visual.") for k in mapped):
        tops = _tops(keys)
        raise CheckpointLayoutError(
            f"{describe(info)} has no visual.* tensors, so it is not an OpenCLIP image encoder (found "
            f"{_prefix_summary(tops)}); use open_clip_pytorch_model.bin of ViT-H-14 laion2b_s32b_b79k"
        )
    mapped, _ = normalize_legacy(mapped)
    logger.info("read image encoder %s: %d tensors", describe(info), len(mapped))
    return mapped


def read_manifest(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Parse a key manifest (lines ``name<TAB>(d0, d1, ...)``) into an expected layout for `check_strict`."""
    expected: dict[str, tuple[int, ...]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, _, shape = line.partition("\t")
        inner = shape.strip().removeprefix("(").removesuffix(")")
        try:
            expected[name.strip()] = tuple(int(d) for d in inner.split(",") if d.strip())
        except ValueError:
            raise ValueError(f"manifest `{path}` line {number}: cannot parse shape {shape!r}") from None
    return expected


# --------------------------------------------------------------------------------------------------------------
# Strict check (§13.3 item 3)
# --------------------------------------------------------------------------------------------------------------

_LIST_LIMIT = 20


def _group(key: str) -> str:
    return ".".join(key.split(".")[:2])


def _section(title: str, items: list[str], keys: list[str]) -> list[str]:
    """One block of the report: total, counts by first two name components, first 20 entries."""
    groups = Counter(_group(k) for k in keys)
    shown_groups = ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())[:_LIST_LIMIT])
    if len(groups) > _LIST_LIMIT:
        shown_groups += f", and {len(groups) - _LIST_LIMIT} more groups"
    lines = [f"{len(keys)} {title}, by group: {shown_groups}"]
    lines.append(f"  first {min(len(items), _LIST_LIMIT)} of {len(items)}:")
    lines.extend(f"    {item}" for item in items[:_LIST_LIMIT])
    return lines


def check_strict(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    layout: str,
    optional_prefixes: Iterable[str] = (),
) -> None:
    """Require the key set and every shape of ``sd`` to equal ``expected`` (§13.3 item 3).

    Call it on official names, after `normalize_legacy`. Exceptions to equality: the image-encoder text
    leftovers (`UNUSED_IMAGE_ENCODER_KEYS`) may be present or absent, and a component named in
    ``optional_prefixes`` (e.g. ``"image_encoder."`` when a separate OpenCLIP file will be supplied) may be
    absent as a whole. Raises `CheckpointLayoutError` naming ``source`` and ``layout``, listing missing,
    unexpected and mis-shaped keys (grouped by their first two name components, first 20 + count) and what
    the file looks like instead.
    """
    optional = tuple(p if p.endswith(".") else p + "." for p in optional_prefixes)
    absent_optional = tuple(p for p in optional if not any(k.startswith(p) for k in sd))
    missing = [
        k
        for k in expected
        if k not in sd and k not in UNUSED_IMAGE_ENCODER_KEYS and not k.startswith(absent_optional)
    ]
    unexpected = [k for k in sd if k not in expected and k not in UNUSED_IMAGE_ENCODER_KEYS]
    mismatched = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or mismatched):
        return

    lines = [
        f"checkpoint {source} (detected layout: {layout}) does not match the expected StreamingT2V layout "
        f"({len(expected)} tensors expected, {len(sd)} found):"
    ]
    if missing:
        lines += _section("missing keys", missing, missing)
    if unexpected:
        lines += _section("unexpected keys", unexpected, unexpected)
    if mismatched:
        items = [
            f"{k}: file {tuple(sd[k].shape)}, expected {tuple(expected[k])}" for k in mismatched
        ]
        lines += _section("shape mismatches", items, mismatched)
    hints = _diagnose(sd, expected, missing, unexpected, mismatched, optional)
    if hints:
        lines.append("What the file looks like instead:")
        lines.extend(f"  - {h}" for h in hints)
    raise CheckpointLayoutError("\n".join(lines))


def _diagnose(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    optional: tuple[str, ...],
) -> list[str]:
    """Sentences explaining a mismatch (wrong model, absent component, other model size, ...)."""
    hints: list[str] = []
    keys = list(sd)
    file_tops = _tops(keys)
    expected_tops = _tops(expected)

    foreign = _foreign_model(unexpected, _tops(unexpected)) if unexpected else None
    if foreign is not None:
        hints.append(f"this is not the ModelScope StreamingT2V checkpoint: {foreign}")

    for top in expected_tops:
        if top in file_tops or top + "." in optional:
            continue
        if top == "image_encoder":
            hints.append(_IMAGE_ENCODER_HINT)
        else:
            hints.append(f"component {top}.* is absent entirely ({expected_tops[top]} tensors expected)")

    streaming_tops = set(expected_tops) & set(OFFICIAL_PREFIXES)
    if set(file_tops) & streaming_tops == {"base_model"} and len(streaming_tops) > 1:
        hints.append(
            "only base_model.* is present: this looks like the base UNet alone (e.g. VidXTend's "
            "unet/diffusion_pytorch_model.safetensors); select vidxtend.safetensors or streaming_t2v.ckpt"
        )

    if "base_model" in file_tops and any(_STREAMING_ONLY.search(k) for k in expected if k.startswith("base_model.")):
        if not any(_STREAMING_ONLY.search(k) for k in keys if k.startswith("base_model.")):
            hints.append(
                "base_model.* has no CAM injector and no APM tensors: it looks like the vanilla ModelScope UNet, "
                "which is only used for the first chunk (load it as the base model)"
            )

    if any(k.startswith(("unet.up_blocks.", "unet.conv_out.")) for k in unexpected):
        hints.append(
            "unet.* has up_blocks / conv_out: in the official layout unet.* is the CAM (no up-path), so this "
            "looks like a VidXTend file, whose unet.* is the base UNet"
        )

    for key in mismatched:
        if key.endswith("conv_in.weight") and sd[key].ndim >= 1 and len(expected[key]) >= 1:
            have, want = sd[key].shape[0], expected[key][0]
            hints.append(
                f"{key} has {have} output channels, expected {want}: the file was made for another model size "
                "(a tiny test model vs the full-size model?); the pack's tiny models record their architecture "
                "in the `streamingt2v_config` safetensors metadata entry"
            )
            break
    if mismatched and not any("model size" in h for h in hints):
        hints.append(
            f"{len(mismatched)} tensors have other shapes than expected: the file was made for another "
            "configuration of the model"
        )
    return hints


def fill_unused(
    sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Reconcile the never-used image-encoder text leftovers with a module's layout (§13.3 table, row 3).

    Leftovers that ``expected`` has and ``sd`` lacks are filled with zeros (only when the image encoder itself
    is present); leftovers that ``sd`` has and ``expected`` lacks are dropped. Each action is logged at INFO.
    Afterwards ``module.load_state_dict(strict=True)`` succeeds if `check_strict` passed.
    """
    out = dict(sd)
    image_encoder = [v for k, v in out.items() if k.startswith("image_encoder.")]
    filled = []
    if image_encoder:
        dtype = next((v.dtype for v in image_encoder if v.is_floating_point()), torch.float32)
        for key in sorted(UNUSED_IMAGE_ENCODER_KEYS):
            if key in expected and key not in out:
                out[key] = torch.zeros(tuple(expected[key]), dtype=dtype)
                filled.append(key)
    dropped = [k for k in sorted(UNUSED_IMAGE_ENCODER_KEYS) if k in out and k not in expected]
    for key in dropped:
        del out[key]
    if filled:
        logger.info("filled %d absent, unused image_encoder text-side tensors with zeros: %s", len(filled),
                    ", ".join(filled))
    if dropped:
        logger.info("dropped %d unused image_encoder text-side tensors the model does not define: %s",
                    len(dropped), ", ".join(dropped))
    return out


# --------------------------------------------------------------------------------------------------------------
# Components, dtype, module loading (§13.3 item 5)
# --------------------------------------------------------------------------------------------------------------


def split_components(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split official names by top-level prefix, stripping it: ``{"unet": {"conv_in.weight": ...}, ...}``.

    Only the first component is stripped (``image_encoder.model.visual.x`` -> ``model.visual.x`` under
    ``"image_encoder"``). Components absent from ``sd`` are absent from the result. Raises
    `CheckpointLayoutError` for keys outside `OFFICIAL_PREFIXES`.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    stray = []
    for key, value in sd.items():
        top, _, rest = key.partition(".")
        if top not in OFFICIAL_PREFIXES or not rest:
            stray.append(key)
            continue
        parts.setdefault(top, {})[rest] = value
    if stray:
        raise CheckpointLayoutError(
            f"{len(stray)} keys are outside the official prefixes ({', '.join(p + '.' for p in OFFICIAL_PREFIXES)}),"
            f" e.g. {', '.join(stray[:5])}; call to_official_names first"
        )
    return {top: parts[top] for top in OFFICIAL_PREFIXES if top in parts}


def cast_state_dict(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast floating-point tensors to ``dtype``; integer/bool tensors and tensors already in ``dtype`` are kept
    as they are (no copy)."""
    if not dtype.is_floating_point:
        raise ValueError(f"cast_state_dict needs a floating-point dtype, got {dtype}")
    return {k: (v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v) for k, v in sd.items()}


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, strict: bool = True):
    """Load ``sd`` into ``module`` with ``assign=True`` and return the ``load_state_dict`` result.

    ``assign=True`` makes the module's parameters *be* the given tensors, so a module built on the meta device
    gets real (possibly memory-mapped) tensors without a second copy; the parameters take the dtype of ``sd``,
    so cast first (`cast_state_dict`). Call it after `check_strict` and `fill_unused` — this function only
    wraps torch's own strict check. With ``strict=False`` the missing / unexpected keys are logged as a
    warning, never ignored silently.
    """
    try:
        result = module.load_state_dict(dict(sd), strict=strict, assign=True)
    except RuntimeError as exc:
        raise CheckpointLayoutError(
            f"loading into {type(module).__name__} failed: {exc}\n(run check_strict first for a grouped report)"
        ) from None
    if not strict and (result.missing_keys or result.unexpected_keys):
        logger.warning(
            "non-strict load into %s: %d missing keys (e.g. %s), %d unexpected keys (e.g. %s)",
            type(module).__name__,
            len(result.missing_keys),
            ", ".join(result.missing_keys[:5]),
            len(result.unexpected_keys),
            ", ".join(result.unexpected_keys[:5]),
        )
    still_meta = [n for n, p in module.named_parameters() if p.is_meta]
    if still_meta:
        logger.warning(
            "%s still has %d parameters on the meta device after loading, e.g. %s",
            type(module).__name__,
            len(still_meta),
            ", ".join(still_meta[:5]),
        )
    return result
