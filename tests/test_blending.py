"""Chunk plan (refine_stage.md §7.4) and randomized blending (§12): coverage, locality, cut distributions,
forced cuts, reproducibility and equality with the official merge on the official grid (§12.4)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streaming_core.blending import (BlendPlan, chunk_overlaps, chunk_starts, cut_range, earlier_chunk_probability,
                                     merge, merge_clips)

SET = Path(__file__).parent / "reference" / "refiner_tiny_v1"
SETTINGS = [(24, 8), (8, 3), (5, 0), (6, 5), (16, 1), (3, 2), (1, 0)]


def official_merge(preds, chunk, overlap, cuts):
    """The released loop (diffusion_sdedit.py:164-188): a_j = j·(C − O), out[a_j + r_j : a_j + C] = X_j[r_j:]."""
    n = len(preds) * (chunk - overlap) + overlap
    out = torch.full((*preds[0].shape[:2], n, *preds[0].shape[3:]), float("nan"))
    for j, (x, r) in enumerate(zip(preds, cuts)):
        a = j * (chunk - overlap)
        out[:, :, a + r:a + chunk] = x[:, :, r:]
    return out


# -- chunk plan -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk, overlap", SETTINGS)
def test_chunk_plan_covers_every_frame_with_overlaps_of_at_least_O(chunk, overlap):
    for n in range(1, 10 * chunk + 1):
        starts = chunk_starts(n, chunk, overlap)
        length = min(chunk, n)
        assert starts[0] == 0 and starts[-1] + length == n, (n, starts)
        assert all(b > a for a, b in zip(starts, starts[1:])), (n, starts)
        overlaps = chunk_overlaps(starts, length)[1:]
        assert all(o >= overlap for o in overlaps), (n, starts)
        assert all(o < length for o in overlaps), (n, starts)  # every chunk adds frames
        covered = set()
        for a in starts:
            covered.update(range(a, a + length))
        assert covered == set(range(n))
        if n > chunk:
            assert len(starts) == math.ceil((n - overlap) / (chunk - overlap))


@pytest.mark.parametrize("chunk, overlap", SETTINGS)
def test_chunk_plan_equals_the_official_grid_on_grid_lengths(chunk, overlap):
    for count in range(1, 11):
        n = count * (chunk - overlap) + overlap
        expected = [j * (chunk - overlap) for j in range(count)] if n > chunk else [0]
        assert chunk_starts(n, chunk, overlap) == expected, n


@pytest.mark.parametrize("n, starts", [
    (24, [0]), (25, [0, 1]), (40, [0, 16]), (56, [0, 16, 32]), (80, [0, 14, 28, 42, 56]),
    (100, [0, 15, 30, 46, 61, 76]), (41, [0, 9, 17]),
])
def test_chunk_plan_table_values(n, starts):
    assert chunk_starts(n, 24, 8) == starts


def test_chunk_plan_for_long_videos():
    s240 = chunk_starts(240, 24, 8)
    assert len(s240) == 15 and s240[:4] == [0, 15, 31, 46] and s240[-1] == 216
    assert set(chunk_overlaps(s240, 24)[1:]) == {8, 9}
    s1200 = chunk_starts(1200, 24, 8)
    assert len(s1200) == 75 and s1200[:3] == [0, 16, 32] and s1200[-1] == 1176
    assert set(chunk_overlaps(s1200, 24)[1:]) <= {8, 9}


def test_chunk_plan_rejects_bad_settings():
    for args in ((10, 8, 8), (10, 8, -1), (0, 8, 2)):
        with pytest.raises(ValueError):
            chunk_starts(*args)


# -- merge invariants -------------------------------------------------------------------------------------------

def _chunk_ids(plan: BlendPlan, n: int) -> list[torch.Tensor]:
    """Chunk j filled with the value j (shape (1, 1, len, 1, 1))."""
    length = plan.chunk_length(n)
    return [torch.full((1, 1, length, 1, 1), float(j)) for j in range(len(plan.starts(n)))]


@pytest.mark.parametrize("variant", ["x0_random", "xt_random", "hard", "average"])
@pytest.mark.parametrize("chunk, overlap", [(24, 8), (6, 5), (5, 0), (8, 3)])
def test_every_frame_comes_from_a_chunk_that_covers_it(variant, chunk, overlap):
    plan = BlendPlan(chunk, overlap, variant, seed=1)
    for n in range(1, 10 * chunk + 1, 3):
        starts, length = plan.starts(n), plan.chunk_length(n)
        out = merge(_chunk_ids(plan, n), starts, n, variant, plan.cuts(0, n)).flatten()
        for f in range(n):
            covering = [j for j, a in enumerate(starts) if a <= f < a + length]
            if variant == "average":
                assert out[f].item() == pytest.approx(sum(covering) / len(covering))
            else:
                assert out[f].item() in covering, (n, f)


@pytest.mark.parametrize("variant", ["x0_random", "xt_random", "hard", "average"])
def test_frames_covered_by_one_chunk_keep_its_values_exactly(variant):
    plan = BlendPlan(8, 3, variant, seed=2)
    n = 30
    starts, length = plan.starts(n), plan.chunk_length(n)
    preds = [torch.randn(1, 4, length, 3, 2) for _ in starts]
    out = merge(preds, starts, n, variant, plan.cuts(5, n))
    for f in range(n):
        covering = [j for j, a in enumerate(starts) if a <= f < a + length]
        if len(covering) == 1:
            j = covering[0]
            assert torch.equal(out[:, :, f], preds[j][:, :, f - starts[j]])


@pytest.mark.parametrize("variant, overlap", [("x0_random", 8), ("xt_random", 8), ("x0_random", 3), ("xt_random", 1)])
def test_cut_distribution_matches_the_rule(variant, overlap):
    """P(overlap frame f from the earlier chunk) = (O − 1 − f)/O (official) or (O − f)/(O + 1) (paper),
    over 10^4 keyed draws, within 4 standard errors."""
    plan = BlendPlan(24, overlap, variant, seed=7)
    n = 2 * 24 - overlap
    draws = 10_000
    counts = [0] * overlap
    for step in range(draws):
        r = plan.cuts(step, n)[1]
        for f in range(min(r, overlap)):
            counts[f] += 1
    for f in range(overlap):
        p = (overlap - 1 - f) / overlap if variant == "x0_random" else (overlap - f) / (overlap + 1)
        assert earlier_chunk_probability(variant, overlap, f) == pytest.approx(p)
        se = math.sqrt(max(p * (1 - p), 1e-12) / draws)
        assert abs(counts[f] / draws - p) <= 4 * se + 1e-12, (f, counts[f] / draws, p)


def test_forced_cuts_give_later_wins_and_earlier_keeps_all_but_the_last_frame():
    plan = BlendPlan(10, 4)
    n = 16
    starts = plan.starts(n)
    a, b = torch.zeros(1, 1, 10, 1, 1), torch.ones(1, 1, 10, 1, 1)
    later = merge([a, b], starts, n, "x0_random", [0, 0]).flatten().tolist()
    assert later == [0.0] * 6 + [1.0] * 10
    earlier = merge([a, b], starts, n, "x0_random", [0, 3]).flatten().tolist()
    assert earlier == [0.0] * 9 + [1.0] * 7


def test_cuts_are_reproducible_and_depend_on_the_seed():
    a = [BlendPlan(24, 8, seed=5).cuts(s, 120) for s in range(30)]
    b = [BlendPlan(24, 8, seed=5).cuts(s, 120) for s in range(30)]
    c = [BlendPlan(24, 8, seed=6).cuts(s, 120) for s in range(30)]
    assert a == b and a != c
    assert all(cuts[0] == 0 for cuts in a)
    lo, hi = cut_range("x0_random", 8)
    assert all(lo <= r <= hi for cuts in a for r in cuts)


def test_on_grid_merge_equals_the_official_loop():
    for chunk, overlap in [(24, 8), (8, 3), (6, 1)]:
        for count in (2, 3, 5):
            n = count * (chunk - overlap) + overlap
            plan = BlendPlan(chunk, overlap, seed=count)
            preds = [torch.randn(1, 4, chunk, 2, 3) for _ in range(count)]
            for step in range(5):
                cuts = plan.cuts(step, n)
                assert torch.equal(merge(preds, plan.starts(n), n, "x0_random", cuts),
                                   official_merge(preds, chunk, overlap, cuts))


def test_the_golden_chunks_merge_to_the_golden_blend_exactly():
    """blend.x0 of refiner_tiny_v1 is the official merge of blend.x0_chunk{0,1,2} with offsets [0, 7, 0]."""
    expected = load_file(str(SET / "expected.safetensors"))
    inputs = load_file(str(SET / "inputs.safetensors"))
    preds = [expected[f"blend.x0_chunk{i}"] for i in range(3)]
    cuts = [0] + inputs["blend.offsets"].tolist()
    assert torch.equal(merge(preds, chunk_starts(56, 24, 8), 56, "x0_random", cuts), expected["blend.x0"])


def test_zero_overlap_tiles_without_blending():
    plan = BlendPlan(4, 0, seed=1)
    n = 10
    assert plan.starts(n) == [0, 3, 6]  # 3 chunks of 4 frames on 10 frames still overlap (no frame dropped)
    assert BlendPlan(5, 0).starts(10) == [0, 5] and BlendPlan(5, 0).cuts(0, 10) == [0, 0]
    preds = [torch.full((1, 1, 5, 1, 1), float(j)) for j in range(2)]
    assert merge(preds, [0, 5], 10, "x0_random", [0, 0]).flatten().tolist() == [0.0] * 5 + [1.0] * 5


def test_invalid_cuts_and_gaps_are_rejected():
    preds = [torch.zeros(1, 1, 6, 1, 1), torch.zeros(1, 1, 6, 1, 1)]
    with pytest.raises(ValueError, match="cut"):
        merge(preds, [0, 4], 10, "x0_random", [0, 3])
    with pytest.raises(ValueError, match="gap"):
        merge(preds, [0, 7], 13, "x0_random", [0, 0])
    with pytest.raises(ValueError, match="variant"):
        merge(preds, [0, 4], 10, "blur", [0, 0])


@pytest.mark.parametrize("variant", ["x0_random", "xt_random", "hard", "average"])
def test_merge_clips_joins_two_pixel_clips(variant):
    a, b = torch.zeros(7, 3, 2, 2), torch.ones(5, 3, 2, 2)
    out = merge_clips(a, b, 3, variant, seed=4)
    assert out.shape == (9, 3, 2, 2)
    assert torch.equal(out[:4], a[:4]) and torch.equal(out[7:], b[3:])
    if variant == "average":
        assert torch.allclose(out[4:7], torch.full_like(out[4:7], 0.5))
    else:
        values = out[4:7, 0, 0, 0].tolist()
        assert values == sorted(values) and values[-1] in (0.0, 1.0)
    assert torch.equal(merge_clips(a, b, 3, variant, seed=4), out)
    assert merge_clips(a, b, 0, variant).shape == (12, 3, 2, 2)
