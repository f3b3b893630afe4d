"""One-time converter to an fp16 (or bf16) safetensors file with the official key names (stream_stage.md §13.5).

Usage::

    python -m streaming_core.convert INPUT OUTPUT.safetensors [--dtype fp16|bf16]
                                     [--no-image-encoder | --image-encoder open_clip_pytorch_model.bin]

INPUT is anything `streaming_core.loading.read_state_dict` reads: ``streaming_t2v.ckpt`` (zip-pickle,
memory-mapped, only ``state_dict``), a safetensors file with official or VidXTend names, or the pack's tiny
models. The output holds one tensor per official name, cast to the target dtype, plus the metadata
``{"format": "streamingt2v-modelscope", "dtype": ..., "source": <file name>, "source_size": <bytes>}`` and the
source's ``streamingt2v_config`` entry when it has one. Every tensor is checked for non-finite values after
the cast; the file is not written if any has them.

Refiner target (refine_stage.md §6.3)::

    python -m streaming_core.convert refiner --unet non_ema_0035000.pth --text open_clip_pytorch_model.bin
                                     --vae v2-1_512-ema-pruned.ckpt OUTPUT.safetensors [--dtype fp16|bf16]

writes one file with prefixes ``unet.`` (official refiner names, incl. ``temopral_conv``), ``text.`` (OpenCLIP
names, blocks 0 … layers-2 only: the part the encoder runs) and ``vae.`` (LDM names without
``first_stage_model.``), metadata ``{"format": "streamingt2v-refiner", "dtype": ..., "sources": <JSON>}`` (plus
the tiny models' `streamingt2v_refiner_config`). Every accepted input of `refiner_files.load_ms_vid2vid` is
accepted; each part is strictly checked before the cast; non-finite values after the cast refuse the file.
`refiner_files.load_ms_vid2vid(OUTPUT)` loads it alone.

Exit codes: 0 written, 1 refused (unreadable, wrong model, non-finite values), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .loading import (
    CheckpointLayoutError,
    check_strict,
    detect_layout,
    describe,
    normalize_legacy,
    read_image_encoder,
    read_state_dict,
    to_official_names,
)

logger = logging.getLogger(__name__)

FORMAT_NAME = "streamingt2v-modelscope"
CONFIG_METADATA_KEY = "streamingt2v_config"
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


class NonFiniteWeightsError(ValueError):
    """Tensors hold NaN or ±inf after the cast (§13.5); ``names`` lists them."""

    def __init__(self, names: Sequence[str], dtype: torch.dtype) -> None:
        self.names = list(names)
        shown = ", ".join(self.names[:20])
        more = f" and {len(self.names) - 20} more" if len(self.names) > 20 else ""
        super().__init__(
            f"{len(self.names)} tensors contain NaN or inf after casting to {_DTYPE_NAMES.get(dtype, dtype)}: "
            f"{shown}{more}; nothing was written. Values beyond the fp16 range overflow to inf: try --dtype bf16, "
            "or check the source file"
        )


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
    *,
    layout: str,
    dtype: torch.dtype = torch.float16,
    image_encoder: Mapping[str, torch.Tensor] | None = None,
    include_image_encoder: bool = True,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    source: str = "state dict",
) -> dict[str, torch.Tensor]:
    """Official names, legacy variants normalised, optional image encoder, cast to ``dtype``, all finite.

    ``layout`` comes from `detect_layout` (``official``, ``vidxtend`` or ``vidxtend_unet``; the vanilla
    UNet layouts are refused). ``image_encoder`` (``image_encoder.model.*`` names, e.g. from
    `read_image_encoder`) replaces any image encoder of ``sd``; ``include_image_encoder=False`` drops it.
    With ``expected`` the result is checked by `check_strict` before the cast (``image_encoder.`` optional
    when absent). Raises `CheckpointLayoutError` or `NonFiniteWeightsError`.
    """
    if layout in ("diffusers_unet", "modelscope_folder_unet"):
        raise CheckpointLayoutError(
            f"{source} is the vanilla ModelScope UNet (layout {layout}), used only for the first chunk; this "
            "converter writes StreamingT2V stream-stage files. The UNet's diffusion_pytorch_model.fp16.safetensors "
            "variant can be used as it is"
        )
    out, _ = normalize_legacy(to_official_names(sd, layout))

    if image_encoder is not None and include_image_encoder:
        replaced = [k for k in out if k.startswith("image_encoder.")]
        if replaced:
            logger.warning("replacing %d image_encoder.* tensors of %s with the separate image encoder file",
                           len(replaced), source)
            for key in replaced:
                del out[key]
        out.update(image_encoder)
    elif not include_image_encoder:
        dropped = [k for k in out if k.startswith("image_encoder.")]
        for key in dropped:
            del out[key]
        logger.info("left out %d image_encoder.* tensors (--no-image-encoder)", len(dropped))
    if not any(k.startswith("image_encoder.") for k in out):
        logger.info(
            "the output has no image_encoder.*: loading it will need image_encoder_path "
            "(open_clip_pytorch_model.bin of OpenCLIP ViT-H-14)"
        )

    if expected is not None:
        check_strict(out, expected, source=source, layout=layout, optional_prefixes=("image_encoder.",))

    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in out.items()}
    bad = non_finite_tensors(cast)
    if bad:
        raise NonFiniteWeightsError(bad, dtype)
    return cast


def non_finite_tensors(sd: Mapping[str, torch.Tensor], *, batch_numel: int = 1 << 22) -> list[str]:
    """Names of floating-point tensors holding NaN or ±inf, in ``sd`` order.

    Small tensors are checked together (one concatenation per ~4M elements) because a per-tensor check costs
    more in call overhead than in arithmetic for the thousands of small tensors of a checkpoint.
    """
    bad: list[str] = []
    batch: list[str] = []
    batch_size = 0

    def flush() -> None:
        nonlocal batch, batch_size
        if batch and not bool(torch.isfinite(torch.cat([sd[k].reshape(-1) for k in batch])).all()):
            bad.extend(k for k in batch if not bool(torch.isfinite(sd[k]).all()))
        batch, batch_size = [], 0

    for key, value in sd.items():
        if not value.is_floating_point():
            continue
        if value.numel() >= batch_numel:
            if not bool(torch.isfinite(value).all()):
                bad.append(key)
            continue
        batch.append(key)
        batch_size += value.numel()
        if batch_size >= batch_numel:
            flush()
    flush()
    order = {k: i for i, k in enumerate(sd)}
    return sorted(bad, key=order.__getitem__)


def _unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no two sharing a storage (safetensors refuses shared storages)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        value = value.contiguous()
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen and value.numel() > 0:
            value = value.clone()
            ptr = value.untyped_storage().data_ptr()
        seen.add(ptr)
        out[key] = value
    return out


def write_converted(
    sd: Mapping[str, torch.Tensor],
    output: str | os.PathLike,
    *,
    dtype: torch.dtype,
    source_name: str,
    source_size: int,
    source_metadata: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write ``sd`` as one safetensors file (via a ``.part`` file, then renamed); returns the metadata written."""
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT_NAME,
        "dtype": _DTYPE_NAMES[dtype],
        "source": source_name,
        "source_size": str(int(source_size)),
    }
    if source_metadata and CONFIG_METADATA_KEY in source_metadata:
        metadata[CONFIG_METADATA_KEY] = source_metadata[CONFIG_METADATA_KEY]
    output = Path(output)
    partial = output.with_name(output.name + ".part")
    try:
        save_file(_unshared(sd), str(partial), metadata=metadata)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return metadata


def convert_refiner(
    unet_path: str | os.PathLike,
    text_path: str | os.PathLike,
    vae_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float16,
    config=None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the pack's single refiner file (refine_stage.md §6.3), not yet written.

    Inputs are anything `refiner_files.load_ms_vid2vid` accepts in the same slot (the architecture comes from
    ``config``, else from each file's embedded `RefinerConfig`, else full size). Returns ``(tensors, metadata)``
    with ``unet.`` / ``text.`` / ``vae.`` names cast to ``dtype``. Raises `CheckpointLayoutError`,
    `refiner_files.MissingRefinerFilesError` or `NonFiniteWeightsError`.
    """
    from . import refiner_files as rf
    from .refiner_model import REFINER_CONFIG_KEY, RefinerConfig

    files = {}
    for slot, path in (("unet", unet_path), ("text", text_path), ("vae", vae_path)):
        if not Path(path).exists():
            raise rf.MissingRefinerFilesError(f"the refiner {slot} file `{path}` does not exist")
        files[slot] = rf.read_refiner_file(path if slot != "vae" else rf.vae_source_path(Path(path)))
    configs = {slot: rf.resolve_config(f, config) for slot, f in files.items()}
    parts = {
        "unet": rf.official_unet_state(files["unet"], configs["unet"]),
        "text": rf.openclip_text_state(files["text"], configs["text"]),
        "vae": rf.ldm_vae_state(files["vae"], rf.refiner_vae_config(configs["vae"])),
    }
    out = {f"{slot}.{k}": (v.to(dtype) if v.is_floating_point() else v)
           for slot, sd in parts.items() for k, v in sd.items()}
    bad = non_finite_tensors(out)
    if bad:
        raise NonFiniteWeightsError(bad, dtype)
    sources = {slot: {"file": f.info.path.name, "bytes": int(f.info.size), "content": rf.KIND_WORDS[f.kind]}
               for slot, f in files.items()}
    metadata = {"format": rf.PACK_FORMAT, "dtype": _DTYPE_NAMES[dtype], "sources": json.dumps(sources)}
    if len({c.to_json() for c in configs.values()}) != 1:
        raise CheckpointLayoutError(
            f"the three refiner files describe different architectures (their {REFINER_CONFIG_KEY} entries "
            "differ, or only some have one); they do not belong together")
    if configs["unet"] != RefinerConfig():  # tiny models record their architecture; full size needs nothing
        metadata[REFINER_CONFIG_KEY] = configs["unet"].to_json()
    return out, metadata


def write_refiner(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str], output: str | os.PathLike) -> None:
    """Write the refiner file (via a ``.part`` file, then renamed)."""
    from safetensors.torch import save_file

    output = Path(output)
    partial = output.with_name(output.name + ".part")
    try:
        save_file(_unshared(sd), str(partial), metadata=dict(metadata))
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _refiner_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streaming_core.convert refiner",
        description="Convert the three MS-Vid2Vid-XL files into one fp16/bf16 safetensors file "
        "(refine_stage.md §6.3).",
    )
    parser.add_argument("--unet", required=True, help="non_ema_0035000.pth (or an accepted equivalent)")
    parser.add_argument("--text", required=True, help="open_clip_pytorch_model.bin (or a text-only OpenCLIP file)")
    parser.add_argument("--vae", required=True, help="v2-1_512-ema-pruned.ckpt (or an LDM / diffusers VAE)")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="target dtype (default fp16)")
    return parser


def refiner_main(argv: Sequence[str]) -> int:
    """`python -m streaming_core.convert refiner ...`; returns the exit code (0 written, 1 refused, 2 usage)."""
    try:
        args = _refiner_parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = Path(args.output)
    for path in (args.unet, args.text, args.vae):
        if not Path(path).exists():
            print(f"error: input `{path}` does not exist", file=sys.stderr)
            return 2
        if output.exists() and Path(path).resolve() == output.resolve():
            print(f"error: output `{output}` is an input file; choose another name", file=sys.stderr)
            return 2
    if not output.parent.is_dir():
        print(f"error: folder `{output.parent}` of the output does not exist", file=sys.stderr)
        return 2
    try:
        converted, metadata = convert_refiner(args.unet, args.text, args.vae, dtype=DTYPES[args.dtype])
        write_refiner(converted, metadata, output)
    except (CheckpointLayoutError, NonFiniteWeightsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = {p: sum(1 for k in converted if k.startswith(p + ".")) for p in ("unet", "text", "vae")}
    nbytes = sum(v.numel() * v.element_size() for v in converted.values())
    print(f"wrote {output}: {len(converted)} tensors ({', '.join(f'{p} {n}' for p, n in counts.items())}), "
          f"{nbytes / 1e9:.3f} GB {metadata['dtype']}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streaming_core.convert",
        description="Convert a StreamingT2V checkpoint (streaming_t2v.ckpt, VidXTend or safetensors) to one "
        "fp16/bf16 safetensors file with the official key names (stream_stage.md §13.5).",
        epilog="For the MS-Vid2Vid-XL refiner: python -m streaming_core.convert refiner --help",
    )
    parser.add_argument("input", help="streaming_t2v.ckpt, vidxtend.safetensors or another supported file")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="target dtype (default fp16)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-image-encoder", action="store_true",
                       help="leave out image_encoder.* (saves 1.37 GB; the loader then needs image_encoder_path)")
    group.add_argument("--image-encoder", metavar="FILE",
                       help="take image_encoder.* from this OpenCLIP ViT-H-14 file (open_clip_pytorch_model.bin)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 written, 1 refused, 2 bad usage).

    ``refiner`` as the first argument selects the refiner target (`refiner_main`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["refiner"]:
        return refiner_main(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors (code 2) and --help (code 0) this way
        return int(exc.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    source, output = Path(args.input), Path(args.output)
    if not source.exists():
        print(f"error: input `{source}` does not exist", file=sys.stderr)
        return 2
    if args.image_encoder and not Path(args.image_encoder).exists():
        print(f"error: image encoder file `{args.image_encoder}` does not exist", file=sys.stderr)
        return 2
    if output.exists() and source.resolve() == output.resolve():
        print(f"error: output `{output}` is the input file; choose another name", file=sys.stderr)
        return 2
    if not output.parent.is_dir():
        print(f"error: folder `{output.parent}` of the output does not exist", file=sys.stderr)
        return 2

    dtype = DTYPES[args.dtype]
    try:
        sd, info = read_state_dict(source)
        layout = detect_layout(sd.keys(), container=info.container)
        image_encoder = read_image_encoder(args.image_encoder) if args.image_encoder else None
        converted = convert_state_dict(
            sd,
            layout=layout,
            dtype=dtype,
            image_encoder=image_encoder,
            include_image_encoder=not args.no_image_encoder,
            source=describe(info),
        )
        del sd
        metadata = write_converted(
            converted, output, dtype=dtype, source_name=source.name, source_size=info.size,
            source_metadata=info.metadata,
        )
    except (CheckpointLayoutError, NonFiniteWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    nbytes = sum(v.numel() * v.element_size() for v in converted.values())
    components = sorted({k.split(".", 1)[0] for k in converted})
    print(
        f"wrote {output}: {len(converted)} tensors, {nbytes / 1e9:.3f} GB {metadata['dtype']}, "
        f"from {source.name} ({info.container}, layout {layout}); components: {', '.join(components)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
