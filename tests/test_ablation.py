"""The ablation study's variants, measurements and document (streaming_core/training/ablation*.py)."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from core_fixtures import write_micro_models
from streaming_core.blending import BlendPlan
from streaming_core.model_files import load_base_model, load_stream_model
from streaming_core.noise import CpuNoise
from streaming_core.refine import RefineSettings, refine_video
from streaming_core.refiner_files import load_ms_vid2vid
from streaming_core.schedules import DiffusionSchedule
from streaming_core.stream import encode_text, extend_video
from streaming_core.tiny_refiner import write_tiny_refiner
from streaming_core.toy_world import make_clip, make_scene
from streaming_core.training.ablation import ablation_prompts
from streaming_core.training.ablation_metrics import fill_ratio, object_drift, object_mask
from streaming_core.training.ablation_report import BEGIN, END, PLACEHOLDER, render_results, write_markdown
from streaming_core.training.ablation_variants import (apm_disabled, apm_gates, extend_by_replacement,
                                                       join_at_midpoints, overlap_midpoints,
                                                       refine_independent_chunks, sample_chunk)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    stream_path, base_path = write_micro_models(tmp_path_factory.mktemp("micro"))
    model = load_stream_model(stream_path)
    return model, load_base_model(base_path, shared=model)


@pytest.fixture(scope="module")
def tiny_refiner(tmp_path_factory):
    files = write_tiny_refiner(tmp_path_factory.mktemp("refiner"))
    return load_ms_vid2vid(files["unet"], files["text"], files["vae"])


def _context(base, prompt: str = "a red circle moving right on a gray background") -> torch.Tensor:
    return encode_text(base.shared, ["", prompt], CPU, CPU).float()


def _latents(seed: int, frames: int = 8) -> torch.Tensor:
    return torch.randn((1, 4, frames, 8, 8), generator=torch.Generator().manual_seed(seed))


class ZeroNoise:
    """A noise source that draws zeros: the replaced frames are then exactly √ᾱ_t · z."""

    def randn(self, shape):
        return torch.zeros(shape)


# ---- replacement conditioning (training-free concatenation) ----------------------------------------------------

def test_replacement_sampling_ends_with_the_conditioning_latents_in_the_first_8_frames(micro):
    _, base = micro

    cond = _latents(1)
    out = sample_chunk(base, _context(base), CpuNoise(5), steps=3, guidance_scale=7.5, cond_latents=cond)
    assert out.shape == (1, 4, 16, 8, 8)
    assert torch.equal(out[:, :, :8], cond)


def test_replacement_feeds_the_unet_the_conditioning_latents_noised_to_each_step(micro, monkeypatch):
    _, base = micro
    cond = _latents(2)
    seen = []
    forward = base.unet.forward

    def recording(sample, timestep, context, cam_residuals=None):
        seen.append((int(timestep[0]), sample[0, :, :8].clone()))
        return forward(sample, timestep, context, cam_residuals)

    monkeypatch.setattr(base.unet, "forward", recording)
    sample_chunk(base, _context(base), ZeroNoise(), steps=4, guidance_scale=7.5, cond_latents=cond)
    ac = DiffusionSchedule.scaled_linear().alphas_cumprod
    assert [t for t, _ in seen] == [751, 501, 251, 1]
    for t, first8 in seen:
        torch.testing.assert_close(first8, ac[t].sqrt() * cond[0], rtol=0, atol=1e-6)


def test_replacement_new_frames_depend_on_the_conditioning(micro):
    _, base = micro

    a = sample_chunk(base, _context(base), CpuNoise(5), steps=3, guidance_scale=7.5, cond_latents=_latents(1))
    b = sample_chunk(base, _context(base), CpuNoise(5), steps=3, guidance_scale=7.5, cond_latents=_latents(9))
    assert (a[:, :, 8:] - b[:, :, 8:]).abs().max() > 1e-3


def test_replacement_extension_conditions_each_chunk_on_the_previous_chunks_last_8_latents(micro):
    _, base = micro
    first = torch.rand((16, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    video, chunks = extend_by_replacement(base, first, "a blue square", 2, steps=2, return_latents=True)
    assert video.shape == (32, 3, 64, 64)
    assert torch.equal(video[:16], first)
    assert torch.equal(chunks[1][:, :, :8], chunks[0][:, :, 8:])


# ---- APM switch --------------------------------------------------------------------------------------------------

def _one_chunk(model, seed: int = 4) -> torch.Tensor:
    first = torch.rand((16, 3, 64, 64), generator=torch.Generator().manual_seed(seed))
    anchor = torch.rand((3, 64, 64), generator=torch.Generator().manual_seed(seed + 1))
    return extend_video(model, first, anchor, ["a green triangle"], 1, steps=2, seed=7)[16:]


def test_disabling_apm_equals_removing_the_apm_mixing(micro):
    model, _ = micro
    assert apm_gates(model.unet) and all(float(g) != 0 for g in apm_gates(model.unet))
    with_apm = _one_chunk(model)
    with apm_disabled(model.unet) as count:
        disabled = _one_chunk(model)
    assert count == len(apm_gates(model.unet))

    removed = copy.deepcopy(model)
    for m in removed.unet.modules():
        if getattr(m, "apm_tokens", None) is not None:
            text = m.apm_tokens[0]
            m.mix_context = lambda context, text=text: context[:, :text]  # keys/values from the text tokens only
    without_mixing = _one_chunk(removed)

    torch.testing.assert_close(disabled, without_mixing, rtol=0, atol=1e-6)
    assert (with_apm - disabled).abs().max() > 1e-4


def test_apm_gates_are_restored_after_the_block_even_on_errors(micro):
    model, _ = micro
    before = [g.clone() for g in apm_gates(model.unet)]
    with pytest.raises(RuntimeError):
        with apm_disabled(model.unet):
            assert all(float(g) == 0 for g in apm_gates(model.unet))
            raise RuntimeError("stop")
    assert all(torch.equal(a, b) for a, b in zip(before, apm_gates(model.unet)))


# ---- independent-chunk refinement ---------------------------------------------------------------------------------

def test_overlap_midpoints_are_the_middle_of_each_overlap():
    assert overlap_midpoints(72) == [20, 36, 52]  # official grid: starts 0, 16, 32, 48, overlaps 8
    assert overlap_midpoints(24) == []


def test_independent_chunks_are_joined_at_the_overlap_midpoints():
    n, starts = 72, BlendPlan().starts(72)
    chunks = [torch.full((24, 1), float(j)) for j in range(len(starts))]
    joined = join_at_midpoints(chunks, n)
    owner = [int(v) for v in joined[:, 0]]
    assert owner == [0] * 20 + [1] * 16 + [2] * 16 + [3] * 20


def test_independent_refinement_refines_each_chunk_alone_with_its_own_seed(tiny_refiner):
    frames = torch.rand((40, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    settings = RefineSettings(steps=2, seed=11, blend=BlendPlan(24, 8))
    out = refine_independent_chunks(tiny_refiner, frames, "a cat", settings)
    alone = RefineSettings(steps=2, blend=BlendPlan(24, 8, "hard"))
    first = refine_video(tiny_refiner, frames[0:24], "a cat", "", replace(alone, seed=11))
    second = refine_video(tiny_refiner, frames[16:40], "a cat", "", replace(alone, seed=12))
    assert out.shape[0] == 40
    torch.testing.assert_close(out[:20], first.frames[:20], rtol=0, atol=0)
    torch.testing.assert_close(out[20:], second.frames[4:], rtol=0, atol=0)


# ---- prompts and object measurements ------------------------------------------------------------------------------

def test_ablation_prompts_are_fixed_single_object_solid_background_captions():
    prompts = ablation_prompts(3)
    assert prompts == ablation_prompts(3)
    for p in prompts:
        scene = make_scene(p["scene_seed"])
        assert scene.split == "none" and len(scene.objects) == 1 and scene.caption == p["prompt"]


@pytest.mark.parametrize("shape,expected", [("circle", 0.785), ("square", 1.0), ("triangle", 0.5)])
def test_fill_ratio_tells_the_toy_shapes_apart(shape, expected):
    seed = next(s for s in range(10_000, 10_400) if make_scene(s).objects[0].shape == shape
                and len(make_scene(s).objects) == 1 and make_scene(s).split == "none")
    video, _, _ = make_clip(seed, 1, 128)
    assert fill_ratio(object_mask(video)[0].numpy()) == pytest.approx(expected, abs=0.08)


def test_a_ground_truth_toy_video_shows_no_object_drift():
    seed = ablation_prompts(1)[0]["scene_seed"]
    video, _, _ = make_clip(seed, 64, 64)
    drift = object_drift(video)
    assert drift["vanished_groups"] == 0 and len(drift["groups"]) == 6
    assert drift["delta_e_max"] < 1.0 and drift["fill_dev_max"] < 0.1 and drift["area_ratio_max_dev"] < 1.15


def test_a_recoloured_object_shows_colour_drift():
    seed = ablation_prompts(1)[0]["scene_seed"]
    video, _, _ = make_clip(seed, 32, 64)
    late = video[16:].clone()
    background = late.flatten(2).median(dim=2).values[:, :, None, None]
    mask = (late - background).norm(dim=1, keepdim=True) > 0.25
    late = torch.where(mask, torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), late)
    drift = object_drift(torch.cat([video[:16], late]))
    assert drift["delta_e_max"] > 10


# ---- the document ------------------------------------------------------------------------------------------------

def _fake_results(refine: bool = True) -> dict:
    score = {"scuts_paper": 1, "scuts_seam": 3, "seam_ratio": 1.5, "mawe_approx": 2.0, "mean_motion_px": 0.8,
             "stagnant": False, "color": {"delta_e_max": 4.0}}
    drift = {"rgb_linf_max": 0.1, "delta_e_max": 5.0, "delta_e_final": 3.0, "area_ratio_max_dev": 1.2,
             "fill_dev_max": 0.05, "vanished_groups": 1, "groups": [{}] * 4, "frame_delta_e_max": 4.0}
    cond = {k: {"label": f"label-{k}", "per_prompt": [dict(score, seam_ratio=r)]}
            for k, r in [("cam_apm", 1.05), ("cam_no_apm", 1.1), ("replacement", 2.5), ("independent", 6.0)]}
    apm = {"apm_on": {"label": "label-on", "per_prompt": [dict(drift, delta_e_max=2.0)]},
           "apm_off": {"label": "label-off", "per_prompt": [drift]}}
    refinement = {"skipped": "no refiner files"}
    if refine:
        refinement = {"prompt": "p", "frames": 72, "chunk_starts": [0, 16, 32, 48], "variants": {
            k: {"label": f"label-{k}", "scores": {"flow_std_a": v, "flow_jerk_b": 0.3, "seam_ratio": 1.1,
                                                  "seam_ratio_at_cuts": v / 3, "scuts_seam": 0, "mawe_approx": 1.0}}
            for k, v in [("input", 3.0), ("x0_random", 3.32), ("hard", 6.01), ("independent", 8.72)]}}
    return {"command": "python -m streaming_core.training.ablation --model m --out o.md", "finished": "now",
            "settings": {"frames": 240, "frames_generated": 240, "seed": 33, "init_steps": 20, "init_cfg": 9.0,
                         "steps": 10, "eta": 1.0, "cfg": 7.5, "metric_size": 128, "refine_frames": 72,
                         "refine_steps": 15, "refine_strength": 0.6},
            "machine": {"summary": "test cpu"}, "models": {"streamingt2v_toy.safetensors": "0123456789ab"},
            "prompts": [{"scene_seed": 10002, "prompt": "a cyan circle moving up on a maroon background"}],
            "wall_time_s": {"total": 600.0, "cam_apm": 100.0}, "conditioning": {"variants": cond},
            "apm": {"variants": apm}, "refinement": refinement}


def test_the_report_has_all_three_tables_with_the_run_record():
    text = render_results(_fake_results())
    for heading in ("### A. Conditioning", "### B. APM on vs off", "### C. Refinement", "### Findings"):
        assert heading in text
    for label in ("label-cam_apm", "label-replacement", "label-independent", "label-on", "label-off",
                  "label-x0_random", "label-hard", "label-input"):
        assert f"| {label} |" in text
    assert "| label-replacement | 1.000 | 3.000 | 2.500 | 2.000 | 0.800 | 0/1 |" in text
    assert "| label-x0_random | 3.320 |" in text
    assert "0123456789ab" in text and "--model m --out o.md" in text and "test cpu" in text
    assert "**CAM + APM** better than replacement" in text
    assert "**APM on** better than APM off" in text


def test_the_report_says_when_refinement_was_skipped():
    text = render_results(_fake_results(refine=False))
    assert "### C. Refinement\n\nSkipped: no refiner files" in text


def test_the_document_keeps_hand_written_text_and_replaces_only_the_results(tmp_path):
    path = tmp_path / "ablation.md"
    write_markdown(path, None)
    assert PLACEHOLDER in path.read_text()
    path.write_text(path.read_text().replace("## Caveats", "## Caveats\n\nA hand-written note."))
    write_markdown(path, _fake_results())
    write_markdown(path, _fake_results())
    text = path.read_text()
    assert "A hand-written note." in text and PLACEHOLDER not in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.count("### A. Conditioning") == 1


def test_cam_usage_is_zero_for_a_cam_whose_injectors_are_still_the_identity(micro):
    from streaming_core.training.cam_usage import cam_usage
    from streaming_core.training.init_weights import zero_stream_additions

    model = copy.deepcopy(micro[0])
    zero_stream_additions(model.network)
    usage = cam_usage(model, clips=2, timesteps=(100, 600))
    assert usage["with_cam"] == usage["without_cam"] and usage["reduction"] == 0.0
    with torch.no_grad():  # an injector that adds something makes the two losses differ
        model.network.base_model.cross_attention_merger_mid_block.temporal_transformer.proj_out.bias.fill_(0.5)
    assert cam_usage(model, clips=2, timesteps=(100, 600))["with_cam"] != usage["with_cam"]


def test_the_report_names_an_unused_cam_as_the_reason_when_cam_loses():
    results = _fake_results()
    results["conditioning"]["variants"]["cam_apm"]["per_prompt"][0]["seam_ratio"] = 40.0
    results["conditioning"]["cam_usage"] = {"timesteps": [50, 200], "with_cam": [0.02, 0.01],
                                            "without_cam": [0.0201, 0.01], "mean_with": 0.015,
                                            "mean_without": 0.01505, "reduction": 0.0033}
    text = render_results(results)
    assert "has not learned to use its conditioning" in text and "(0.3% lower" in text
    assert "residuals zeroed 0.02010, 0.01000" in text


def test_the_report_names_unopened_apm_gates_as_the_reason_when_apm_does_not_help():
    results = _fake_results()
    results["apm"]["variants"]["apm_on"]["per_prompt"][0]["delta_e_max"] = 5.0
    results["apm"]["gate_max_abs"] = 0.006
    text = render_results(results)
    assert "the toy APM has barely switched on" in text and "|α| = 0.0060" in text
