"""Conformance commands.

    python -m streaming_core.conformance stream <set-dir> --out <file.safetensors> [--check]
    python -m streaming_core.conformance refine <set-dir> --out <file.safetensors> [--check] [--device cuda]
    python -m streaming_core.conformance layout stream
    python -m streaming_core.conformance layout refine

`stream` loads a stream-stage golden set (weights with official names, inputs, config.json), computes every
tensor its `config.json` lists under `expected` and writes them. With `--check` it also compares them with
the set's `expected.safetensors` under the set's tolerance rule and exits 1 on a mismatch. Cases, timesteps,
sizes and the architecture come from the set's files only.

`refine` does the same for a refinement-stage set (refine_stage.md §20.2; computation in `refine_golden`): every
tensor the manifest lists in `expected.safetensors`, per-group tolerances from the set's config.

`layout stream` / `layout refine` build the full-size stream model / MS-Vid2Vid-XL refiner UNet on the meta device
and print `name<TAB>(shape)` per tensor in the official naming.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from . import golden_config
from .apm import ImageResampler
from .cam_branch import CamBranch
from .guidance import cfg_single
from .samplers import ddim_step
from .schedules import DiffusionSchedule
from .unet3d import UNet3D


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    out = []
    for alt in m.group(1).split(","):
        out += _expand_braces(pattern[: m.start()] + alt.strip() + pattern[m.end():])
    return out


def apply_modification(weights: dict[str, torch.Tensor], text: str) -> dict[str, torch.Tensor]:
    """Apply a case's weight modification written as `all <glob> = <number> [and all <glob> = <number>]`
    (globs relative to the top-level prefixes, `{a,b}` alternatives allowed)."""
    out = dict(weights)
    clauses = [c.strip() for c in re.split(r"\band\b", text) if c.strip()]
    for clause in clauses:
        m = re.fullmatch(r"all\s+(\S+)\s*=\s*([-+0-9.eE]+)", clause)
        if not m:
            raise ValueError(f"cannot interpret weight modification clause {clause!r}")
        value = float(m.group(2))
        patterns = _expand_braces(m.group(1))
        hits = 0
        for name in weights:
            if any(fnmatch.fnmatchcase(name, "*" + p) or fnmatch.fnmatchcase(name, p) for p in patterns):
                out[name] = torch.full_like(weights[name], value)
                hits += 1
        if hits == 0:
            raise ValueError(f"weight modification {clause!r} matches no tensor")
    return out


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


class StreamGoldenSet:
    """One stream-stage golden set on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cfg: dict[str, Any] = json.loads((self.root / "config.json").read_text())
        weights_file = self.cfg.get("weights", {}).get("file", "weights.safetensors")
        self.weights = {k: v.float() for k, v in load_file(str(self.root / weights_file)).items()}
        self.inputs = load_file(str(self.root / "inputs.safetensors"))
        self.unet_cfg = golden_config.unet_config(self.cfg)
        self.cam_cfg = golden_config.cam_config(self.cfg)
        self.apm_cfg = golden_config.apm_config(self.cfg)
        sampling = self.cfg["sampling"]
        self.schedule = DiffusionSchedule.from_config(sampling["scheduler"])
        self.eta = float(sampling.get("eta", 1.0))
        self.guidance_scale = float(sampling["guidance_scale"])
        order = sampling.get("cfg_batch_order", ["uncond", "cond"])
        if order != ["uncond", "cond"]:
            raise ValueError(f"unsupported cfg_batch_order {order}")
        if sampling.get("scheduler", {}).get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("the stream stage predicts epsilon")

    def build(self, weights: dict[str, torch.Tensor]):
        """(resampler, cam, unet) in float32 eval mode, strictly loaded."""
        resampler = ImageResampler(self.apm_cfg, self.unet_cfg.cross_attention_dim)
        cam = CamBranch(self.unet_cfg, self.cam_cfg)
        unet = UNet3D(self.unet_cfg, streaming=True, cam=self.cam_cfg, apm=self.apm_cfg)
        resampler.load_state_dict(_sub(weights, "resampler."), strict=True)
        cam.load_state_dict(_sub(weights, "unet."), strict=True)
        unet.load_state_dict(_sub(weights, "base_model."), strict=True)
        return resampler.eval(), cam.eval(), unet.eval()

    def build_vanilla(self, weights: dict[str, torch.Tensor]) -> UNet3D:
        """The plain UNet: `base_model.*` minus the injector and APM tensors."""
        unet = UNet3D(self.unet_cfg, streaming=False)
        expected = set(unet.state_dict())
        sd = {k: v for k, v in _sub(weights, "base_model.").items() if k in expected}
        unet.load_state_dict(sd, strict=True)
        return unet.eval()

    def input_prefix(self, case: str, spec: dict[str, Any]) -> str:
        if f"{case}.latents" in self.inputs:
            return case
        for other, other_spec in self.cfg["cases"].items():
            if f"{other}.latents" in self.inputs and other_spec.get("timestep") == spec.get("timestep"):
                return other
        raise ValueError(f"case {case!r} has no inputs and no other case shares its timestep")


@torch.no_grad()
def compute_stream_set(root: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor the set's `expected` manifest lists, computed by this package in float32 on `device`
    (results on the CPU)."""
    device = torch.device(device)
    gs = StreamGoldenSet(root)
    gs.inputs = {k: v.to(device) for k, v in gs.inputs.items()}
    wanted: dict[str, Any] = gs.cfg["expected"]
    results: dict[str, torch.Tensor] = {}
    text = gs.inputs["text_embeds"].float()
    image = gs.inputs["image_embeds"].float()
    cond = gs.inputs["cond_frames"].float()  # (1, F_c, 3, H, W) in [-1, 1]
    batch = text.shape[0]

    def compute_case(case: str, spec: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        resampler, cam, unet = (m.to(device) for m in gs.build(weights))
        prefix = gs.input_prefix(case, spec)
        latents = gs.inputs[f"{prefix}.latents"].float()
        t = int(spec.get("timestep", int(gs.inputs[f"{prefix}.timestep"].reshape(-1)[0])))
        prev_t = int(spec.get("prev_timestep", t - gs.schedule.num_train_timesteps // gs.cfg["sampling"]["num_inference_steps"]))
        tokens = resampler(image)
        context = torch.cat([text, tokens], dim=1)
        out["resampler_tokens"], out["context"] = tokens, context
        timestep = torch.tensor([t], device=device)
        z = latents.expand(batch, *latents.shape[1:])
        f_c = cond.shape[1]
        cond_frames = cond.expand(batch, *cond.shape[1:]).reshape(batch * f_c, *cond.shape[2:])
        n_text = gs.apm_cfg.num_text_tokens
        out["time_emb_base"] = unet.time_embed(timestep, batch, torch.float32)
        out["time_emb_cam"] = cam.time_embed(timestep, batch, torch.float32)
        out["cam_cond_embedding"] = cam.controlnet_cond_embedding(cond_frames)
        residuals = cam(z[:, :, :f_c], timestep, context[:, :n_text], cond_frames)
        for i, r in enumerate(residuals[:-1]):
            out[f"cam_down_{i:02d}"] = r
        out["cam_mid"] = residuals[-1]
        first_attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
        out["apm_context_down0_attn0"] = first_attn.mix_context(context)
        captured: dict[str, torch.Tensor] = {}
        hooks = []
        for i, inj in enumerate(unet.cross_attention_merger_down_blocks):
            hooks.append(inj.register_forward_hook(_capture(captured, f"merged_down_{i:02d}")))
        hooks.append(unet.cross_attention_merger_mid_block.register_forward_hook(_capture(captured, "merged_mid")))
        eps = unet(z, timestep, context, residuals)
        for h in hooks:
            h.remove()
        out.update(captured)
        out["eps"] = eps
        guided = cfg_single(eps[0:1], eps[1:2], gs.guidance_scale)
        out["eps_guided"] = guided
        noise_key = f"{prefix}.variance_noise"
        step = ddim_step(gs.schedule, guided, t, prev_t, latents, gs.eta,
                         gs.inputs[noise_key].float() if noise_key in gs.inputs else None)
        out["pred_original_sample"] = step.pred_original_sample
        out["prev_sample"] = step.prev_sample
        out["alpha_prod_t"] = torch.tensor([step.alpha_prod_t], dtype=torch.float32)
        out["alpha_prod_t_prev"] = torch.tensor([step.alpha_prod_t_prev], dtype=torch.float32)
        if any(name == f"{case}.eps_plain_unet" for name in wanted):
            out["eps_plain_unet"] = gs.build_vanilla(weights).to(device)(z, timestep, text)
        return out

    for case, spec in gs.cfg["cases"].items():
        names = [n for n in wanted if n.startswith(case + ".")]
        if not names:
            continue
        weights = gs.weights
        if "modification" in spec:
            weights = apply_modification(weights, spec["modification"])
        computed = compute_case(case, spec, weights)
        for name in names:
            key = name[len(case) + 1:]
            if key not in computed:
                raise KeyError(f"expected tensor {name!r} is not one this command knows how to compute")
            results[name] = computed[key].cpu()
        for name in wanted:
            if "." not in name and name in computed and name not in results:
                results[name] = computed[name].cpu()
    missing = [n for n in wanted if n not in results]
    if missing:
        raise KeyError(f"cannot compute expected tensors {missing}")
    out = {}
    for name, meta in wanted.items():
        tensor = results[name].detach().to(getattr(torch, meta.get("dtype", "float32"))).contiguous()
        if list(tensor.shape) != list(meta["shape"]):
            raise ValueError(f"{name}: computed shape {list(tensor.shape)}, manifest says {meta['shape']}")
        out[name] = tensor
    return out


def _capture(store: dict[str, torch.Tensor], name: str) -> Callable:
    def hook(module, args, output):
        store[name] = output
    return hook


def compare(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float) -> dict[str, float]:
    """Per tensor: max|a − e| / max(1, max|e|) over finite entries (non-finite entries must match exactly,
    integer tensors must be equal). Returns the normalised errors; `inf` marks a structural mismatch."""
    errors = {}
    for name, e in expected.items():
        a = actual.get(name)
        if a is None or a.shape != e.shape:
            errors[name] = float("inf")
            continue
        if not e.is_floating_point():
            errors[name] = 0.0 if torch.equal(a, e) else float("inf")
            continue
        a64, e64 = a.double(), e.double()
        finite = torch.isfinite(e64)
        if not torch.equal(torch.isfinite(a64), finite) or not torch.equal(a64[~finite], e64[~finite]):
            errors[name] = float("inf")
            continue
        if finite.any():
            scale = max(1.0, float(e64[finite].abs().max()))
            errors[name] = float((a64[finite] - e64[finite]).abs().max()) / scale
        else:
            errors[name] = 0.0
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_core.conformance")
    sub = parser.add_subparsers(dest="command", required=True)
    p_stream = sub.add_parser("stream", help="compute a stream-stage golden set's expected tensors")
    p_stream.add_argument("set_dir", type=Path)
    p_stream.add_argument("--out", type=Path, required=True)
    p_stream.add_argument("--check", action="store_true", help="compare with the set's expected.safetensors")
    p_stream.add_argument("--device", default="cpu", help="cpu (default) or cuda (TF32 is disabled)")
    p_refine = sub.add_parser("refine", help="compute a refinement-stage golden set's expected tensors")
    p_refine.add_argument("set_dir", type=Path)
    p_refine.add_argument("--out", type=Path, required=True)
    p_refine.add_argument("--check", action="store_true", help="compare with the set's expected.safetensors")
    p_refine.add_argument("--device", default="cpu", help="cpu (default) or cuda (TF32 is disabled)")
    p_layout = sub.add_parser("layout", help="print the full-size state-dict layout")
    p_layout.add_argument("which", choices=["stream", "refine"])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.command == "layout":
        if args.which == "refine":
            from .refiner_names import official_layout as layout
        else:
            from .layout import stream_layout as layout
        for name, shape in layout():
            sys.stdout.write(f"{name}\t{shape_text(shape)}\n")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.command == "refine":
        return _refine_command(args)
    tensors = compute_stream_set(args.set_dir, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out))
    if not args.check:
        print(f"wrote {len(tensors)} tensors to {args.out}")
        return 0
    cfg = json.loads((args.set_dir / "config.json").read_text())
    tol = float(cfg.get("tolerance", {}).get("rel_fp32", 1e-4))
    errors = compare(tensors, load_file(str(args.set_dir / "expected.safetensors")), tol)
    worst = max(errors, key=errors.get)
    failed = [n for n, e in errors.items() if e > tol]
    print(f"{len(errors)} tensors, worst {worst} {errors[worst]:.3g} (tol {tol:g}), "
          f"{'FAIL ' + ', '.join(failed) if failed else 'all within tolerance'}")
    return 1 if failed else 0


def _refine_command(args: argparse.Namespace) -> int:
    from .refine_golden import compute_refine_set, tolerance_groups

    try:
        tensors = compute_refine_set(args.set_dir, args.device)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out))
    if not args.check:
        print(f"wrote {len(tensors)} tensors to {args.out}")
        return 0
    cfg = json.loads((args.set_dir / "config.json").read_text())
    tol, groups = tolerance_groups(cfg)
    reference = load_file(str(args.set_dir / "expected.safetensors"))
    errors = compare(tensors, {n: reference[n] for n in groups}, 0.0)
    failed = [n for n, e in errors.items() if e > tol[groups[n]]]
    for group in sorted(set(groups.values())):
        names = [n for n in errors if groups[n] == group]
        worst = max(names, key=errors.get)
        print(f"{group:12s} {len(names):3d} tensors, worst {worst} {errors[worst]:.3g} (tol {tol[group]:g})")
    print(f"{len(errors)} tensors, {'FAIL ' + ', '.join(failed) if failed else 'all within tolerance'}")
    return 1 if failed else 0


def shape_text(shape: tuple[int, ...]) -> str:
    """Manifest notation: `(320, 4, 3, 3)`, `(1280,)`, `()`."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(s) for s in shape) + ")"


if __name__ == "__main__":
    sys.exit(main())
