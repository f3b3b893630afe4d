"""Computing a refinement-stage golden set (`refiner_tiny_v1` contract, refine_stage.md §20).

Everything comes from the set's own files: the UNet architecture from `config.json["unet_tiny"]` (official
constructor arguments), schedule / sampler / blending values from `config.json`, frame counts, latent sizes,
timesteps, sigmas and offsets from `inputs.safetensors`, and the indexed output names (`blend.x0_chunk{i}`,
`solver.model_in_{i}`, `solver.x_{k}`, `e2e.model_in_{i}`, `e2e.denoised_{i}`) from the manifest. The UNet,
VAE and text tower are loaded strictly through the same name maps as full-size files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .blending import BlendPlan, merge
from .openclip_names import openclip_text_to_hf, text_config_from_openclip
from .refine_denoiser import ChunkedDenoiser, make_guided_evaluator
from .refine_guidance import guided_x0
from .refine_schedule import NoiseTable, sdedit_start, sigmas_vp, solver_sigmas
from .refine_solver import BrownianNoise, dpmpp_2m_sde
from .refiner_names import load_official_unet, official_unet_config
from .text_encoder import ClipTextEncoder
from .vae import LOGVAR_RANGE, Vae
from .vae_names import ldm_vae_to_diffusers, vae_config_from_ldm


class RefineGoldenSet:
    """One refinement golden set on disk: configuration, manifest, inputs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cfg: dict[str, Any] = json.loads((self.root / "config.json").read_text())
        manifest = self.cfg["tensors"]
        if isinstance(manifest, dict):
            manifest = [{"name": k, **v} for k, v in manifest.items()]
        self.manifest = {m["name"]: m for m in manifest}
        self.expected = {n: m for n, m in self.manifest.items() if m.get("file") == "expected.safetensors"}
        self.inputs = load_file(str(self.root / "inputs.safetensors"))
        sampler = self.cfg["sampler"]
        solver = (sampler.get("solver", "dpmpp_2m_sde"), sampler.get("solver_type", "midpoint"))
        if solver != ("dpmpp_2m_sde", "midpoint"):
            raise ValueError(f"unsupported solver {sampler.get('solver')}/{sampler.get('solver_type')}")
        if float(sampler.get("s_noise", 1.0)) != 1.0:
            raise ValueError(f"unsupported s_noise {sampler['s_noise']}")
        scaling = str(sampler.get("initial_scaling", "quirk"))
        if "quirk" not in scaling:
            raise ValueError(f"unsupported initial scaling {scaling!r}")
        self.start = "quirk"
        self.eta = float(sampler.get("eta", 1.0))
        self.scale = float(sampler["guide_scale"])
        rescale = sampler.get("guide_rescale")
        self.rescale = None if rescale is None else float(rescale)
        self.prediction = sampler.get("prediction_type", "v")
        blending = self.cfg["blending"]
        self.plan = BlendPlan(int(blending["chunk_size"]), int(blending["overlap_size"]), "x0_random")
        self.table = NoiseTable.from_config(self.cfg["schedule"])

    def wants(self, prefix: str) -> list[str]:
        return [n for n in self.expected if n.startswith(prefix)]

    def indices(self, pattern: str) -> list[int]:
        """Sorted integers i of the expected names matching `pattern` (a regex with one group)."""
        return sorted(int(m.group(1)) for n in self.expected if (m := re.fullmatch(pattern, n)))

    def input_indices(self, pattern: str) -> list[int]:
        return sorted(int(m.group(1)) for n in self.inputs if (m := re.fullmatch(pattern, n)))

    def sampler_sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.cfg["sampler"]
        return solver_sigmas(self.table, int(s["t_max"]), int(s.get("t_min", 0)), int(s["steps"]),
                             s.get("discretization", "trailing"), bool(s.get("discard_penultimate_step", True)))


@torch.no_grad()
def compute_refine_set(root: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor the manifest lists in `expected.safetensors`, computed by this package in float32 (UNet and
    chunk evaluations on `device`, whole-video tensors on the CPU); results on the CPU with manifest dtypes.
    Raises KeyError listing expected names it cannot produce."""
    device = torch.device(device)
    gs = RefineGoldenSet(root)
    inp = {k: (v.float() if v.is_floating_point() else v) for k, v in gs.inputs.items()}
    out: dict[str, torch.Tensor] = {}
    table = gs.table

    if gs.wants("schedule."):
        out["schedule.sigmas"] = table.sigmas
        out["schedule.alphas"] = table.alphas
        out["schedule.sigmas_k"] = table.sigmas_k
        if table.sigmas_unrescaled is not None:
            out["schedule.sigmas_unrescaled"] = table.sigmas_unrescaled
            out["schedule.logsnr_unrescaled"] = table.logsnr_unrescaled
    timesteps_all, sigmas = gs.sampler_sigmas()
    positive = sigmas[sigmas > 0]
    out["sampler.timesteps_all"] = timesteps_all
    out["sampler.sigmas"] = sigmas
    out["sampler.sigmas_vp"] = sigmas_vp(sigmas)
    out["sampler.timesteps_from_sigma"] = table.s_to_t(positive)
    out["sampler.timesteps_model"] = table.model_timestep(positive)

    evaluator = None
    if any(gs.wants(p) for p in ("unet", "cfg.", "blend.x0", "e2e.")):
        cfg = official_unet_config(gs.cfg["unet_tiny"])
        weights = load_file(str(gs.root / gs.cfg.get("weights_file", "weights.safetensors")))
        unet = load_official_unet({k: v.float() for k, v in weights.items()}, cfg, device)
        cond, uncond = inp["text.cond"], inp["text.uncond"]

        def model(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            return unet(x.to(device), t.to(device), ctx.to(device)).float()

        evaluator = make_guided_evaluator(model, cond.to(device), uncond.to(device), table, gs.scale,
                                          gs.rescale, gs.prediction)

    if gs.wants("unet.out"):
        out["unet.out"] = model(inp["unet.x"], inp["unet.t"], cond)
    if gs.wants("unet_b2.out"):
        x = inp["unet_b2.x"]
        ctx = torch.cat([cond, uncond])[: x.shape[0]]
        out["unet_b2.out"] = model(x, inp["unet_b2.t"], ctx)

    if gs.wants("cfg."):
        x, t = inp["cfg.xt"], inp["cfg.t"]
        v_c, v_u = model(x, t, cond), model(x, t, uncond)
        alpha, sigma = table.alpha_sigma_at(int(t[0]))
        g = guided_x0(v_c, v_u, x.to(device), alpha, sigma, gs.scale, gs.rescale, gs.prediction)
        out.update({"cfg.v_cond": v_c, "cfg.v_uncond": v_u, "cfg.v_guided": g.v_guided,
                    "cfg.v_rescaled": g.v_rescaled, "cfg.x0": g.x0})
        if g.ratio is not None:
            out["cfg.ratio"] = g.ratio

    if gs.wants("blend."):
        x_in, s = inp["blend.x_in"], float(inp["blend.sigma"].reshape(-1)[0])
        offsets = [int(v) for v in inp["blend.offsets"].reshape(-1)]
        out["blend.t"] = table.model_timestep(torch.tensor([s], dtype=torch.float32))
        if gs.wants("blend.x0"):
            denoiser = ChunkedDenoiser(evaluator, gs.plan, table, device, cuts=lambda step, n: [0] + offsets)
            preds = denoiser.chunk_predictions(x_in, s, 0)
            for i, p in enumerate(preds):
                out[f"blend.x0_chunk{i}"] = p
            n = x_in.shape[2]
            out["blend.x0"] = merge(preds, gs.plan.starts(n), n, "x0_random", [0] + offsets)

    if gs.wants("solver."):
        out.update(_solver_case(gs, inp))
    if gs.wants("e2e."):
        out.update(_e2e_case(gs, inp, evaluator, sigmas, device))
    if gs.wants("brownian.noise"):
        shape = gs.expected["brownian.noise"]["shape"]
        seed = int(gs.cfg["sampler"].get("brownian_seed", 0))
        source = BrownianNoise(torch.zeros(shape[1:]), sigmas, seed)
        out["brownian.noise"] = torch.stack([source(i) for i in range(shape[0])])
    if gs.wants("vae."):
        out.update(_vae_case(gs, inp))
    if gs.wants("clip."):
        out.update(_clip_case(gs, inp))

    missing = [n for n in gs.expected if n not in out]
    if missing:
        raise KeyError(f"cannot compute expected tensors {missing}")
    result = {}
    for name, meta in gs.expected.items():
        tensor = out[name].detach().cpu().to(getattr(torch, meta.get("dtype", "float32")))
        tensor = tensor.clone(memory_format=torch.contiguous_format)  # own storage: safetensors refuses views
        if list(tensor.shape) != list(meta["shape"]):
            raise ValueError(f"{name}: computed shape {list(tensor.shape)}, manifest says {meta['shape']}")
        result[name] = tensor
    return result


def _solver_case(gs: RefineGoldenSet, inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The solver with explicit D_i and n_i (model bypassed)."""
    sigmas = inp["solver.sigmas"].reshape(-1)
    steps = len(sigmas) - 1
    for kind in ("denoised", "noise"):
        have = gs.input_indices(rf"solver\.{kind}_(\d+)")
        if have[:steps] != list(range(steps)):
            raise KeyError(f"solver case: inputs solver.{kind}_0 … {steps - 1} needed, found indices {have}")
    wanted_in = gs.indices(r"solver\.model_in_(\d+)")
    wanted_x = gs.indices(r"solver\.x_(\d+)")
    out: dict[str, torch.Tensor] = {}

    def on_step(i: int, x_hat: torch.Tensor, d: torch.Tensor, x: torch.Tensor) -> None:
        if i in wanted_in:
            out[f"solver.model_in_{i}"] = x_hat.clone()
        if i + 1 in wanted_x:
            out[f"solver.x_{i + 1}"] = x.clone()

    dpmpp_2m_sde(inp["solver.x_t"], sigmas, lambda x, s, i: inp[f"solver.denoised_{i}"],
                 lambda i: inp[f"solver.noise_{i}"], gs.eta, gs.start, on_step=on_step)
    return out


def _e2e_case(gs: RefineGoldenSet, inp: dict[str, torch.Tensor], evaluator, sigmas: torch.Tensor,
              device: torch.device) -> dict[str, torch.Tensor]:
    """SDEdit at t_max, then the full sampler with blending, injected offsets and noise."""
    t_start = int(gs.cfg["sampler"]["t_max"])
    x_t = sdedit_start(inp["e2e.x0_video"], inp["e2e.eps"], gs.table, t_start)
    offsets, noise = inp["e2e.offsets"], inp["e2e.brownian"]
    steps = len(sigmas) - 1
    noisy_steps = int((sigmas[1:] > 0).sum())
    if offsets.shape[0] < steps or noise.shape[0] < noisy_steps:
        raise ValueError(f"e2e case: {steps} steps need {steps} offset rows and {noisy_steps} noise tensors, "
                         f"got {offsets.shape[0]} and {noise.shape[0]}")
    n = x_t.shape[2]
    chunks = len(gs.plan.starts(n))
    if offsets.shape[1] != chunks - 1:
        raise ValueError(f"e2e case: {n} frames make {chunks} chunks but e2e.offsets has {offsets.shape[1]} columns")
    denoiser = ChunkedDenoiser(evaluator, gs.plan, gs.table, device,
                               cuts=lambda step, _n: [0] + [int(v) for v in offsets[step]])
    wanted_in = gs.indices(r"e2e\.model_in_(\d+)")
    wanted_d = gs.indices(r"e2e\.denoised_(\d+)")
    out: dict[str, torch.Tensor] = {"e2e.x_t": x_t}

    def on_step(i: int, x_hat: torch.Tensor, d: torch.Tensor, x: torch.Tensor) -> None:
        if i in wanted_in:
            out[f"e2e.model_in_{i}"] = x_hat.clone()
        if i in wanted_d:
            out[f"e2e.denoised_{i}"] = d.clone()
        if i == steps - 1:
            out["e2e.denoised_last"] = d.clone()

    out["e2e.out"] = dpmpp_2m_sde(x_t, sigmas, denoiser, lambda i: noise[i], gs.eta, gs.start, on_step=on_step)
    return out


def _vae_case(gs: RefineGoldenSet, inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    aux = gs.cfg["aux"]
    scaling = aux.get("vae_diffusers_config", {}).get("scaling_factor", 0.18215)
    vae = Vae(vae_config_from_ldm(aux["vae_ldm_ddconfig"], aux["vae_embed_dim"], scaling))
    weights = load_file(str(gs.root / "vae_weights.safetensors"))
    vae.load_state_dict(ldm_vae_to_diffusers({k: v.float() for k, v in weights.items()}), strict=True)
    vae.eval()
    moments = vae.quant_conv(vae.encoder(inp["vae.image"]))
    mean, logvar = moments.chunk(2, dim=1)
    return {"vae.moments": moments, "vae.mean": mean, "vae.logvar": logvar.clamp(*LOGVAR_RANGE),
            "vae.decoded": vae.decoder(vae.post_quant_conv(inp["vae.z"]))}


def _clip_case(gs: RefineGoldenSet, inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    config = text_config_from_openclip(gs.cfg["aux"]["openclip_text_cfg"])
    encoder = ClipTextEncoder(config)
    weights = load_file(str(gs.root / "openclip_text_weights.safetensors"))
    encoder.load_state_dict(openclip_text_to_hf({k: v.float() for k, v in weights.items()},
                                                config.num_hidden_layers), strict=True)
    encoder.eval()
    tm = encoder.text_model
    hidden = tm.encoder(tm.embeddings(inp["clip.tokens"]))
    return {"clip.penultimate_no_ln": hidden, "clip.penultimate_ln": tm.final_layer_norm(hidden)}


def tolerance_groups(cfg: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """(tol per group, group per expected name) from a set's config."""
    tol = {k: float(v) for k, v in cfg["tolerance"]["tol_by_group"].items()}
    manifest = cfg["tensors"]
    if isinstance(manifest, dict):
        manifest = [{"name": k, **v} for k, v in manifest.items()]
    groups = {m["name"]: m["tolerance_group"] for m in manifest if m.get("file") == "expected.safetensors"}
    return tol, groups
