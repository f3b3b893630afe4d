"""Golden vectors of the official implementation (tests/reference/tiny_v1, contract in tests/reference/README.md):
one stream-stage denoising step must match within max|a−e| <= 1e-4·max(1, max|e|) per tensor."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streaming_core.conformance import compare, compute_stream_set, main
from streaming_core.noise import CpuNoise

SET = Path(__file__).parent / "reference" / "tiny_v1"


@pytest.fixture(scope="module")
def computed() -> dict[str, torch.Tensor]:
    torch.backends.cuda.matmul.allow_tf32 = False
    return compute_stream_set(SET)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(SET / "expected.safetensors"))


def test_every_expected_tensor_is_computed_with_the_manifest_shape(computed, expected):
    manifest = json.loads((SET / "config.json").read_text())["expected"]
    assert set(computed) == set(manifest) == set(expected)
    for name, meta in manifest.items():
        assert list(computed[name].shape) == meta["shape"], name


def test_every_tensor_is_within_the_contract_tolerance(computed, expected):
    tol = json.loads((SET / "config.json").read_text())["tolerance"]["rel_fp32"]
    errors = compare(computed, expected, tol)
    too_far = {k: v for k, v in errors.items() if v > tol}
    assert not too_far, f"outside tolerance {tol}: {too_far}"


def test_the_zero_initialised_model_equals_the_plain_unet(computed):
    """stream_stage.md §6.4: alpha = 0 and injector proj_out = 0 reduce the model to the vanilla UNet3D."""
    errors = compare({"x": computed["sanity_t981.eps"]}, {"x": computed["sanity_t981.eps_plain_unet"]}, 1e-5)
    assert errors["x"] < 1e-5


def test_the_comparison_detects_a_wrong_tensor(computed, expected):
    """Guard against a test that cannot fail: a small perturbation of eps is flagged."""
    wrong = dict(computed)
    wrong["t981.eps"] = computed["t981.eps"] + 1e-3
    assert compare(wrong, expected, 1e-4)["t981.eps"] > 1e-4


def test_noise_is_drawn_in_the_official_order_from_a_cpu_generator():
    """stream_stage.md §11: seed 33, initial latent (1,4,16,h,w) first, then per-step noise frame-major."""
    inputs = load_file(str(SET / "inputs.safetensors"))
    latents = inputs["t981.latents"]
    noise = CpuNoise(33)
    assert torch.equal(noise.randn(tuple(latents.shape)), latents)
    _, c, f, h, w = latents.shape
    step_noise = noise.randn((f, c, h, w)).permute(1, 0, 2, 3)[None]
    assert torch.equal(step_noise, inputs["t981.variance_noise"])


def test_the_conformance_command_writes_and_checks_the_set(tmp_path, capsys):
    out = tmp_path / "actual.safetensors"
    assert main(["stream", str(SET), "--out", str(out), "--check"]) == 0
    written = load_file(str(out))
    assert len(written) == len(json.loads((SET / "config.json").read_text())["expected"])
    assert "all within tolerance" in capsys.readouterr().out


def test_the_conformance_command_follows_another_set_with_non_square_frames_and_the_last_step(tmp_path):
    """Nothing about tiny_v1 is hard-coded: a set with 128x96 frames (16x12 latents) and a case at the last DDIM
    step (t = 1, ᾱ_prev = ᾱ[0] = 0.99915) is computed with the shapes its own manifest lists."""
    from safetensors.torch import save_file

    cfg = json.loads((SET / "config.json").read_text())
    inputs = load_file(str(SET / "inputs.safetensors"))
    inputs = {k: (v[..., :12] if k.endswith(("latents", "variance_noise")) else v) for k, v in inputs.items()}
    inputs["cond_frames"] = inputs["cond_frames"][..., :96].contiguous()
    inputs["t501.timestep"] = torch.tensor([1])
    inputs = {k: v.contiguous() for k, v in inputs.items()}
    widths = {16: 12, 8: 6, 4: 3, 2: 2}
    for meta in cfg["expected"].values():
        shape = meta["shape"]
        if len(shape) >= 4 and shape[-1] in widths and shape[-2] == shape[-1]:
            shape[-1] = widths[shape[-1]]
    cfg["cases"]["t501"].update(timestep=1, prev_timestep=-19)
    (tmp_path / "weights.safetensors").symlink_to(SET / "weights.safetensors")
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = compute_stream_set(tmp_path)  # raises if any shape differs from the manifest
    assert out["t981.eps"].shape == (2, 4, 16, 16, 12)
    assert out["t981.cam_down_09"].shape == (16, 64, 2, 2)
    assert abs(float(out["t501.alpha_prod_t_prev"]) - 0.99915) < 1e-6
    assert torch.isfinite(out["t501.prev_sample"]).all()
