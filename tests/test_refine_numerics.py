"""Refinement-stage numerics beyond the golden vectors (refine_stage.md §8-§14, §20.3, Appendix A): schedule tail,
the official arange length quirk, latent geometry, key maps, keyed random numbers, guidance and solver details."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streaming_core.blending import BlendPlan
from streaming_core.config import UNet3DConfig
from streaming_core.keyed_rng import (STREAM_BLEND, STREAM_SDEDIT, STREAM_SOLVER, derive_key, keyed_frames_randn,
                                      keyed_randint, keyed_randn, mix64)
from streaming_core.openclip_names import OpenClipNameError, openclip_text_to_hf
from streaming_core.refine_geometry import check_refiner_latent_size
from streaming_core.refine_guidance import guided_x0
from streaming_core.refine_schedule import NoiseTable, solver_sigmas, strength_to_t_start
from streaming_core.refine_solver import dpmpp_2m_sde, dpmpp_2m_sde_xt_random, keyed_solver_noise
from streaming_core.refiner_names import (RefinerKeyError, internal_to_official, load_official_unet,
                                          official_name_to_internal, official_to_internal, official_unet_config)
from streaming_core.schedules import DiffusionSchedule
from streaming_core.vae_names import VaeNameError, ldm_vae_to_diffusers

REF = Path(__file__).parent / "reference"


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape = line.split("\t")
            rows[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return rows


@pytest.fixture(scope="module")
def table() -> NoiseTable:
    return NoiseTable.logsnr_cosine_interp()


# -- schedule ---------------------------------------------------------------------------------------------------

def test_schedule_tail_entries_follow_the_float32_operation_order(table):
    assert table.alphas[998].item() == pytest.approx(0.00048828, abs=5e-9)
    assert table.sigmas_k[998].item() == pytest.approx(2047.9998, rel=1e-6)
    assert table.alphas[999].item() == 0.0 and table.sigmas[999].item() == 1.0
    assert math.isinf(table.sigmas_k[999].item())


def test_schedule_key_values_at_599_and_38(table):
    assert table.sigmas[599].item() == pytest.approx(0.9723632, abs=1e-7)
    assert table.alphas[599].item() == pytest.approx(0.2334732, abs=1e-7)
    assert table.sigmas_k[599].item() == pytest.approx(4.1647735, abs=1e-6)
    assert table.alphas[38].item() == pytest.approx(0.9924126, abs=1e-7)


def test_zero_terminal_snr_rescale_is_a_no_op_in_float32(table):
    assert torch.equal(table.sigmas, table.sigmas_unrescaled)


@pytest.mark.parametrize("t_max", [199, 399, 799])
def test_arange_length_quirk_gives_one_extra_evaluation(table, t_max):
    timesteps, sigmas = solver_sigmas(table, t_max, 0, 30)
    assert len(timesteps) == 32 and timesteps[-1] == 0  # the extra value is clamped to t_min
    assert len(sigmas) - 1 == 31  # S + 1 model evaluations
    assert sigmas[-1] == 0 and bool(torch.all(sigmas[:-1] > sigmas[1:]))


def test_the_default_599_with_30_steps_has_no_extra_value(table):
    timesteps, sigmas = solver_sigmas(table, 599, 0, 30)
    assert len(timesteps) == 31 and len(sigmas) == 31
    assert table.model_timestep(sigmas[:-1]).tolist()[:5] == [599, 580, 560, 541, 522]
    assert table.model_timestep(sigmas[-2:-1]).item() == 38


def test_timestep_sigma_conversions_round_trip_on_integers(table):
    t = torch.arange(0, 999, 7).float()
    assert torch.allclose(table.s_to_t(table.t_to_s(t)), t, atol=2e-3)
    assert table.s_to_t(torch.tensor([float("inf")])).item() == 999
    assert math.isinf(table.t_to_s(torch.tensor([999.0])).item())


def test_strength_maps_to_the_sdedit_start():
    assert strength_to_t_start(0.6) == 599
    assert strength_to_t_start(0.3) == 299
    for bad in (0.0, 0.001, 1.0):
        with pytest.raises(ValueError, match="strength"):
            strength_to_t_start(bad)


def test_beta_tables_match_the_stream_stage_schedule():
    betas = NoiseTable.from_betas(0.00085, 0.012)
    acp = DiffusionSchedule.scaled_linear().alphas_cumprod
    assert torch.allclose(betas.alphas ** 2, acp, atol=1e-6)
    assert torch.allclose(betas.sigmas_k, betas.sigmas / betas.alphas, rtol=1e-5)


# -- geometry ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(90, 160), (90, 96), (10, 16), (10, 8)])
def test_legal_refiner_latent_sizes_are_accepted(hw):
    check_refiner_latent_size(*hw)


@pytest.mark.parametrize("hw, nearest", [((90, 90), "88 or 96"), ((72, 128), "66 or 74")])
def test_illegal_refiner_latent_sizes_name_the_nearest_legal_ones(hw, nearest):
    with pytest.raises(ValueError, match=nearest):
        check_refiner_latent_size(*hw)


def test_the_refiner_unet_rejects_an_illegal_latent_before_running():
    cfg = official_unet_config({"dim": 32, "dim_mult": [1, 1, 1, 1], "head_dim": 16, "num_heads": 2})
    from streaming_core.unet3d import UNet3D

    unet = UNet3D(cfg)
    with pytest.raises(ValueError, match="nearest legal"):
        unet(torch.zeros(1, 4, 2, 9, 8), torch.tensor([1]), torch.zeros(1, 77, 1024))


def test_ms_vid2vid_resamplers_reproduce_the_level_sizes():
    """h -> ⌊(h+1)/2⌋ + 1, w -> ⌈w/2⌉ down; 2h − 2, 2w up (90×160 -> 46×80 -> 24×40 -> 13×20 and back)."""
    from streaming_core.blocks import Downsample2D, Upsample2D

    down, up = Downsample2D(4, (2, 1)), Upsample2D(4, crop_rows=True)
    x = torch.zeros(1, 4, 90, 160)
    sizes = []
    for _ in range(3):
        x = down(x)
        sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(46, 80), (24, 40), (13, 20)]
    for target in [(24, 40), (46, 80), (90, 160)]:
        x = up(x)
        assert tuple(x.shape[-2:]) == target


# -- configuration and key maps ---------------------------------------------------------------------------------

def test_official_defaults_give_the_modelscope_unet_with_the_vid2vid_geometry():
    assert official_unet_config({}) == UNet3DConfig(resampler_geometry="ms_vid2vid")


def test_attention_scales_select_the_cross_attention_levels():
    cfg = official_unet_config({"dim": 32, "dim_mult": [1, 2, 1, 1], "head_dim": 16, "num_heads": 4,
                                "attn_scales": [1.0, 0.5, 0.25]})
    assert cfg.down_block_types == ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    assert cfg.up_block_types == ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    assert (cfg.transformer_in_num_heads, cfg.transformer_in_head_dim) == (4, 16)


@pytest.mark.parametrize("arg, value", [("use_fps_condition", True), ("use_image_dataset", True),
                                        ("temporal_attention", False), ("context_dim", 768), ("bogus", 1)])
def test_unsupported_official_settings_are_rejected_by_name(arg, value):
    with pytest.raises(ValueError, match=arg):
        official_unet_config({arg: value})


def test_refiner_names_map_bijectively_onto_the_diffusers_unet_names():
    """Appendix A: refiner_keys.tsv <-> the vanilla `base_model.*` subset of official_keys.tsv (no injectors,
    no APM tensors), equal shapes except the 34 temporal proj weights (m, c, 1) <-> (m, c)."""
    refiner = read_tsv(REF / "refiner_keys.tsv")
    official = read_tsv(REF / "official_keys.tsv")
    vanilla = {k[len("base_model."):]: v for k, v in official.items() if k.startswith("base_model.")
               and not k.startswith("base_model.cross_attention_merger")
               and not re.search(r"attn2\.(conv|conv_ln|alpha)(\.|$)", k)}
    assert len(refiner) == len(vanilla) == 1480
    mapped = {official_name_to_internal(k)[0]: k for k in refiner}
    assert len(mapped) == 1480 and set(mapped) == set(vanilla)
    differ = [k for k in vanilla if vanilla[k] != refiner[mapped[k]]]
    assert len(differ) == 34
    assert all(k.endswith(("proj_in.weight", "proj_out.weight")) and refiner[mapped[k]] == vanilla[k] + (1,)
               for k in differ)
    meta = {k: torch.empty(v, device="meta") for k, v in refiner.items()}
    internal = official_to_internal(meta)
    assert {k: tuple(v.shape) for k, v in internal.items()} == vanilla
    back = internal_to_official(internal)
    assert {k: tuple(v.shape) for k, v in back.items()} == refiner


def test_the_misspelled_temporal_conv_key_is_the_official_one():
    assert official_name_to_internal("input_blocks.1.0.temopral_conv.conv2.3.weight")[0] == \
        "down_blocks.0.temp_convs.0.conv2.3.weight"
    with pytest.raises(RefinerKeyError, match="temporal_conv"):
        official_name_to_internal("input_blocks.1.0.temporal_conv.conv2.3.weight")


def test_a_wrong_or_missing_key_is_named():
    sd = load_file(str(REF / "refiner_tiny_v1" / "weights.safetensors"))
    cfg = official_unet_config({"dim": 32, "dim_mult": [1, 2, 1, 1], "head_dim": 16, "num_heads": 4})
    broken = dict(sd)
    broken["input_blocks.1.0.in_layer.0.weight"] = broken.pop("input_blocks.1.0.in_layers.0.weight")
    with pytest.raises(RefinerKeyError, match=r"input_blocks\.1\.0\.in_layer\.0\.weight"):
        official_to_internal(broken)
    with pytest.raises(RefinerKeyError, match=r"missing: input_blocks\.1\.0\.in_layers\.0\.weight"):
        load_official_unet(broken, cfg)
    del sd["out.2.bias"]
    with pytest.raises(RefinerKeyError, match=r"out\.2\.bias"):
        load_official_unet(sd, cfg)


def test_openclip_in_proj_is_split_into_q_k_v_rows():
    w = torch.arange(6 * 2, dtype=torch.float32).reshape(6, 2)
    sd = {"token_embedding.weight": torch.zeros(10, 2), "positional_embedding": torch.zeros(77, 2),
          "ln_final.weight": torch.ones(2), "ln_final.bias": torch.zeros(2), "text_projection": torch.zeros(2, 2),
          "visual.conv1.weight": torch.zeros(1)}
    for i in range(2):
        p = f"transformer.resblocks.{i}."
        sd.update({p + "attn.in_proj_weight": w, p + "attn.in_proj_bias": torch.arange(6.0)})
        for name, shape in (("ln_1.weight", (2,)), ("ln_1.bias", (2,)), ("attn.out_proj.weight", (2, 2)),
                            ("attn.out_proj.bias", (2,)), ("ln_2.weight", (2,)), ("ln_2.bias", (2,)),
                            ("mlp.c_fc.weight", (8, 2)), ("mlp.c_fc.bias", (8,)), ("mlp.c_proj.weight", (2, 8)),
                            ("mlp.c_proj.bias", (2,))):
            sd[p + name] = torch.zeros(shape)
    out = openclip_text_to_hf(sd, layers_used=1)
    layer = "text_model.encoder.layers.0.self_attn."
    assert torch.equal(out[layer + "q_proj.weight"], w[0:2]) and torch.equal(out[layer + "v_proj.weight"], w[4:6])
    assert out[layer + "k_proj.bias"].tolist() == [2.0, 3.0]
    assert not any(".layers.1." in k for k in out)  # the last block is skipped (penultimate features)
    del sd["transformer.resblocks.0.ln_2.bias"]
    with pytest.raises(OpenClipNameError, match=r"resblocks\.0\.ln_2\.bias"):
        openclip_text_to_hf(sd, layers_used=1)


def test_ldm_vae_decoder_levels_are_reversed_and_attention_convs_squeezed():
    sd = {"first_stage_model.decoder.up.0.block.1.nin_shortcut.weight": torch.zeros(3, 3, 1, 1),
          "first_stage_model.decoder.up.2.upsample.conv.bias": torch.zeros(3),
          "first_stage_model.encoder.mid.attn_1.q.weight": torch.zeros(3, 3, 1, 1),
          "first_stage_model.decoder.norm_out.weight": torch.zeros(3)}
    out = ldm_vae_to_diffusers(sd)
    assert set(out) == {"decoder.up_blocks.2.resnets.1.conv_shortcut.weight",
                        "decoder.up_blocks.0.upsamplers.0.conv.bias",
                        "encoder.mid_block.attentions.0.to_q.weight", "decoder.conv_norm_out.weight"}
    assert out["encoder.mid_block.attentions.0.to_q.weight"].shape == (3, 3)
    with pytest.raises(VaeNameError, match="encoder.down.0.blocks.0.conv1.weight"):
        ldm_vae_to_diffusers({"encoder.down.0.blocks.0.conv1.weight": torch.zeros(1)})


# -- keyed random numbers ---------------------------------------------------------------------------------------

def test_mix64_is_the_splitmix64_finaliser():
    assert mix64(0) == 0xE220A8397B1DCDAF
    assert mix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4  # second splitmix64 output from state 0


def test_keys_are_63_bit_and_depend_on_every_index():
    keys = {derive_key(666, s, a, b) for s in (1, 2, 3, 4) for a in range(4) for b in range(4)}
    assert len(keys) == 64 and all(0 <= k < 2 ** 63 for k in keys)
    assert derive_key(666, 1, 2, 3) != derive_key(667, 1, 2, 3)


def test_keyed_draws_do_not_depend_on_the_order_they_are_made_in():
    forward = [keyed_randn(5, STREAM_SOLVER, 3, f, (4, 2, 2)) for f in range(6)]
    backward = [keyed_randn(5, STREAM_SOLVER, 3, f, (4, 2, 2)) for f in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    whole = keyed_frames_randn(5, STREAM_SOLVER, range(6), (4, 2, 2), step=3)
    part = keyed_frames_randn(5, STREAM_SOLVER, [4, 1], (4, 2, 2), step=3)
    assert whole.shape == (1, 4, 6, 2, 2)
    assert torch.equal(part[:, :, 0], whole[:, :, 4]) and torch.equal(part[:, :, 1], whole[:, :, 1])
    assert not torch.equal(keyed_frames_randn(5, STREAM_SDEDIT, [0], (4, 2, 2)), whole[:, :, :1])


def test_blend_cuts_are_keyed_by_step_and_chunk():
    plan = BlendPlan(24, 8, seed=11)
    assert plan.cuts(4, 56) == [0] + [keyed_randint(11, STREAM_BLEND, 4, j, 0, 7) for j in (1, 2)]
    assert keyed_randint(11, STREAM_BLEND, 4, 1, 3, 3) == 3


def test_keyed_solver_noise_is_per_frame():
    noise = keyed_solver_noise(9, 5, (4, 3, 2))
    assert noise(2).shape == (1, 4, 5, 3, 2)
    assert torch.equal(noise(2)[0, :, 3], keyed_randn(9, STREAM_SOLVER, 2, 3, (4, 3, 2)))


# -- guidance and solver ----------------------------------------------------------------------------------------

def test_guidance_scale_one_skips_the_uncond_pass_and_the_rescale():
    v = torch.randn(1, 4, 3, 2, 2)
    x = torch.randn_like(v)
    g = guided_x0(v, None, x, 0.6, 0.8, 1.0, 0.2)
    assert g.ratio is None and torch.equal(g.v_rescaled, v)
    assert torch.allclose(g.x0, 0.6 * x - 0.8 * v)


def test_rescale_ratio_uses_bessel_corrected_std_per_sample():
    v_c, v_u = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    g = guided_x0(v_c, v_u, torch.zeros_like(v_c), 1.0, 1.0, 7.5, 0.2)
    v_g = v_u + 7.5 * (v_c - v_u)
    ratio = torch.tensor([v_c[i].flatten().std(unbiased=True) / (v_g[i].flatten().std(unbiased=True) + 1e-12)
                          for i in range(2)])
    assert torch.allclose(g.ratio, ratio)
    assert torch.allclose(g.v_rescaled[1], v_g[1] * (0.2 * ratio[1] + 0.8))


def test_epsilon_prediction_inverts_the_forward_process():
    x0, eps = torch.randn(1, 4, 2, 2, 2), torch.randn(1, 4, 2, 2, 2)
    a, s = torch.tensor(0.6), torch.tensor(0.8)
    g = guided_x0(eps, eps, a * x0 + s * eps, a, s, 3.0, None, prediction="epsilon")
    assert torch.allclose(g.x0, x0, atol=1e-5)


def _framewise_denoiser(x_hat: torch.Tensor, s: float, step: int) -> torch.Tensor:
    return torch.tanh(x_hat) * 0.5 + 0.01 * step


def test_proper_start_divides_by_alpha_and_quirk_start_multiplies_by_s0(table):
    _, sigmas = solver_sigmas(table, 599, 0, 3)
    seen = []
    x_t = torch.randn(1, 4, 2, 2, 2)
    dpmpp_2m_sde(x_t, sigmas, lambda x, s, i: seen.append(x.clone()) or x * 0, None, eta=0.0)
    dpmpp_2m_sde(x_t, sigmas, lambda x, s, i: seen.append(x.clone()) or x * 0, None, eta=0.0, start="proper",
                 alpha_start=table.alphas[599])
    c_in = 1 / math.sqrt(sigmas[0].item() ** 2 + 1)
    assert torch.allclose(seen[0], x_t * sigmas[0] * c_in, atol=1e-6)
    assert torch.allclose(seen[3], x_t / table.alphas[599] * c_in, atol=1e-6)


def test_xt_random_equals_the_x0_merge_when_chunks_agree_on_their_overlaps(table):
    """§12.3: with a frame-wise denoiser every chunk predicts the same values in the overlaps, so merging the
    next-step latents (paper) and merging the x0 predictions (official) give the same trajectory."""
    _, sigmas = solver_sigmas(table, 399, 0, 5)
    plan = BlendPlan(6, 3, "xt_random", seed=3)
    n = 13
    x_t = torch.randn(1, 4, n, 2, 2)
    noise = keyed_solver_noise(1, n, (4, 2, 2))

    def chunks(x_hat, s, step):
        return [_framewise_denoiser(x_hat[:, :, a:a + 6], s, step) for a in plan.starts(n)]

    paper = dpmpp_2m_sde_xt_random(x_t, sigmas, chunks, noise, plan)
    official = dpmpp_2m_sde(x_t, sigmas, _framewise_denoiser, noise)
    assert torch.allclose(paper, official, atol=1e-5)


def test_xt_random_keeps_a_history_per_chunk(table):
    """With chunk-dependent predictions the paper variant differs from merging x0 (it is not a relabelling)."""
    _, sigmas = solver_sigmas(table, 399, 0, 4)
    plan = BlendPlan(6, 3, "xt_random", seed=3)
    n = 9
    x_t = torch.randn(1, 4, n, 2, 2)
    noise = keyed_solver_noise(1, n, (4, 2, 2))

    def chunks(x_hat, s, step):
        return [_framewise_denoiser(x_hat[:, :, a:a + 6], s, step) + 0.1 * j for j, a in enumerate(plan.starts(n))]

    out = dpmpp_2m_sde_xt_random(x_t, sigmas, chunks, noise, plan)
    assert out.shape == x_t.shape and torch.isfinite(out).all()
    # frames 0-2 are covered by chunk 0 only: +0.0 offset predictions throughout
    official = dpmpp_2m_sde(x_t, sigmas, _framewise_denoiser, noise)
    assert torch.allclose(out[:, :, :3], official[:, :, :3], atol=1e-5)
    assert not torch.allclose(out[:, :, 6:], official[:, :, 6:], atol=1e-3)


def test_eta_zero_is_deterministic_and_needs_no_noise(table):
    _, sigmas = solver_sigmas(table, 599, 0, 4)
    x_t = torch.randn(1, 4, 3, 2, 2)
    a = dpmpp_2m_sde(x_t, sigmas, _framewise_denoiser, None, eta=0.0)
    b = dpmpp_2m_sde(x_t, sigmas, _framewise_denoiser, None, eta=0.0)
    assert torch.equal(a, b)
