"""Golden vectors of the official refiner (tests/reference/refiner_tiny_v1; refine_stage.md §20): schedule, sampler
tables, UNet, guidance, blending, solver, the 30-step end-to-end SDEdit run, the Brownian noise source and the
auxiliary VAE / OpenCLIP checks must match per tensor within max|a − e| <= tol·max(1, max|e|), tol by group."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streaming_core.conformance import compare, main
from streaming_core.refine_golden import compute_refine_set, tolerance_groups
from streaming_core.refine_schedule import NoiseTable, sigmas_vp

SET = Path(__file__).parent / "reference" / "refiner_tiny_v1"
CONFIG = json.loads((SET / "config.json").read_text())
EXPECTED_MANIFEST = {m["name"]: m for m in CONFIG["tensors"] if m["file"] == "expected.safetensors"}


@pytest.fixture(scope="module")
def computed() -> dict[str, torch.Tensor]:
    torch.backends.cuda.matmul.allow_tf32 = False
    return compute_refine_set(SET)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(SET / "expected.safetensors"))


def test_every_expected_tensor_is_computed_with_the_manifest_shape_and_dtype(computed, expected):
    assert set(computed) == set(EXPECTED_MANIFEST) == set(expected)
    for name, meta in EXPECTED_MANIFEST.items():
        assert list(computed[name].shape) == meta["shape"], name
        assert str(computed[name].dtype) == f"torch.{meta['dtype']}", name


def test_every_tensor_is_within_its_group_tolerance(computed, expected):
    tol, groups = tolerance_groups(CONFIG)
    errors = compare(computed, expected, 0.0)
    worst = {}
    for name, err in errors.items():
        g = groups[name]
        if g not in worst or err > worst[g][1]:
            worst[g] = (name, err)
    print("worst per group:", {g: f"{n} {e:.3g}" for g, (n, e) in sorted(worst.items())})
    too_far = {n: e for n, e in errors.items() if e > tol[groups[n]]}
    assert not too_far, f"outside tolerance: {too_far}; worst per group {worst}"


def test_integer_results_are_exact(computed, expected):
    for name in ("blend.t", "sampler.timesteps_model"):
        assert torch.equal(computed[name], expected[name]), name
    assert int(computed["blend.t"][0]) == 541


def test_the_only_non_finite_entry_is_the_terminal_k_sigma(computed):
    s = computed["schedule.sigmas_k"]
    assert torch.isinf(s[-1]) and torch.isfinite(s[:-1]).all()


def test_the_comparison_detects_a_wrong_end_to_end_result(computed, expected):
    """Guard against a test that cannot fail: 1e-3 on the final latent (max |e| ≈ 5.2) exceeds 1e-4 scaled."""
    wrong = dict(computed)
    wrong["e2e.out"] = computed["e2e.out"] + 1e-3
    assert compare(wrong, expected, 1e-4)["e2e.out"] > 1e-4


def test_the_final_latent_is_the_last_denoised_prediction(computed):
    assert torch.equal(computed["e2e.out"], computed["e2e.denoised_last"])


def _reduced_set(tmp_path: Path, keep) -> Path:
    """A copy of the public set whose manifest lists only the expected names `keep` selects."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(CONFIG))
    cfg["tensors"] = [m for m in cfg["tensors"] if m["file"] != "expected.safetensors" or keep(m["name"])]
    for f in ("weights.safetensors", "inputs.safetensors", "expected.safetensors", "vae_weights.safetensors",
              "openclip_text_weights.safetensors"):
        (tmp_path / f).symlink_to(SET / f)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_the_conformance_command_writes_and_checks_the_manifest_names(tmp_path, capsys):
    """`refine <set> --out --check` on the set minus its 30-step end-to-end case (kept cheap)."""
    root = _reduced_set(tmp_path / "set", lambda n: not n.startswith("e2e."))
    out = tmp_path / "actual.safetensors"
    assert main(["refine", str(root), "--out", str(out), "--check"]) == 0
    written = load_file(str(out))
    assert set(written) == {n for n in EXPECTED_MANIFEST if not n.startswith("e2e.")}
    text = capsys.readouterr().out
    assert "all within tolerance" in text and "worst" in text


def test_the_conformance_command_names_tensors_it_cannot_compute(tmp_path, capsys):
    root = _reduced_set(tmp_path / "set", lambda n: n.startswith("schedule."))
    cfg = json.loads((root / "config.json").read_text())
    cfg["tensors"].append({"name": "mystery.tensor", "file": "expected.safetensors", "shape": [1],
                           "dtype": "float32", "tolerance_group": "tables"})
    (root / "config.json").write_text(json.dumps(cfg))
    assert main(["refine", str(root), "--out", str(tmp_path / "o.safetensors")]) == 1
    assert "mystery.tensor" in capsys.readouterr().err


def test_a_derived_set_with_the_arange_length_quirk_and_a_short_clip_is_followed(tmp_path):
    """Nothing about refiner_tiny_v1 is hard-coded: t_max 236 with 6 steps (the official arange makes 8
    timesteps, so 7 model evaluations), chunks of 8 frames with overlap 4 on 12 frames, shapes from the manifest."""
    root = tmp_path / "derived"
    root.mkdir()
    for f in ("weights.safetensors", "vae_weights.safetensors", "openclip_text_weights.safetensors"):
        (root / f).symlink_to(SET / f)
    cfg = json.loads(json.dumps(CONFIG))
    cfg["sampler"].update(t_max=236, steps=6)
    cfg["blending"].update(chunk_size=8, overlap_size=4, n_chunks=2, n_frames=12)
    evaluations, frames = 7, 12
    inputs = load_file(str(SET / "inputs.safetensors"))
    inputs["e2e.x0_video"] = inputs["e2e.x0_video"][:, :, :frames].contiguous()
    inputs["e2e.eps"] = inputs["e2e.eps"][:, :, :frames].contiguous()
    inputs["e2e.brownian"] = inputs["e2e.brownian"][: evaluations - 1, :, :, :frames].contiguous()
    inputs["e2e.offsets"] = inputs["e2e.offsets"][:evaluations, :1].contiguous() % 4
    save_file(inputs, str(root / "inputs.safetensors"))
    latent = [1, 4, frames, 10, 8]
    keep = {"schedule.alphas": [1000], "sampler.sigmas": [evaluations + 1], "sampler.timesteps_all": [8],
            "sampler.timesteps_model": [evaluations], "e2e.x_t": latent, "e2e.model_in_0": latent,
            "e2e.denoised_6": latent, "e2e.out": latent, "brownian.noise": [evaluations - 1, 1, 4, 4, 2, 2]}
    tensors = [m for m in cfg["tensors"] if m["file"] != "expected.safetensors"]
    for name, shape in keep.items():
        dtype = "int64" if name == "sampler.timesteps_model" else "float32"
        tensors.append({"name": name, "file": "expected.safetensors", "shape": shape, "dtype": dtype,
                        "tolerance_group": "tables"})
    cfg["tensors"] = tensors
    (root / "config.json").write_text(json.dumps(cfg))

    out = compute_refine_set(root)  # raises on any shape that differs from the manifest
    table = NoiseTable.logsnr_cosine_interp()
    sigmas = out["sampler.sigmas"]
    assert sigmas[-1] == 0 and sigmas[-2] > 0 and torch.all(sigmas[:-1] > sigmas[1:])
    assert out["sampler.timesteps_model"][0] == 236
    assert torch.equal(out["sampler.sigmas"][:-1], table.t_to_s(out["sampler.timesteps_all"][:-1]))
    alpha, sigma = table.alpha_sigma_at(236)
    assert torch.allclose(out["e2e.x_t"], alpha * inputs["e2e.x0_video"] + sigma * inputs["e2e.eps"])
    # quirk start x = x_t·s_0, first model input x·/√(s_0² + 1)
    assert torch.allclose(out["e2e.model_in_0"], out["e2e.x_t"] * sigmas_vp(sigmas[:1]), atol=1e-6)
    assert torch.equal(out["e2e.out"], out["e2e.denoised_6"])
    assert torch.isfinite(out["e2e.out"]).all() and torch.isfinite(out["brownian.noise"]).all()
