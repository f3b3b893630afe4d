"""The refinement pipeline end to end on tiny refiners (refine_stage.md §7.4, §9-§14, §16, §20.3 items 7-8)."""
from __future__ import annotations

import av
import pytest
import torch

from streaming_core.blending import BlendPlan
from streaming_core.events import Cancelled, NullEvents
from streaming_core.refine import RefineSettings, refine_video
from streaming_core.refiner_files import load_diffusers_refiner, load_ms_vid2vid
from streaming_core.stream import NonFiniteError
from streaming_core.tiny_refiner import write_tiny_refiner
from streaming_core.video_sink import Mp4Sink

N = 13
PLAN = BlendPlan(chunk_size=8, overlap=3)
FAST = RefineSettings(steps=2, blend=PLAN)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_refiner(tmp_path_factory.mktemp("refiner"))


@pytest.fixture(scope="module")
def ms(tiny_files):
    return load_ms_vid2vid(tiny_files["unet"], tiny_files["text"], tiny_files["vae"])


@pytest.fixture(scope="module")
def frames():
    return torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(ms, frames):
    return refine_video(ms, frames, "a red circle", "", FAST)


class Recorder(NullEvents):
    def __init__(self, cancel_after: int | None = None) -> None:
        self.steps: list[tuple] = []
        self.frame_starts: list[int] = []
        self.checks = 0
        self.cancel_after = cancel_after

    def on_step(self, stage, chunk, num_chunks, step, num_steps):
        self.steps.append((stage, chunk, num_chunks, step, num_steps))

    def on_frames(self, frames, first_index):
        self.frame_starts.append(first_index)

    def check_cancel(self):
        self.checks += 1
        if self.cancel_after is not None and self.checks > self.cancel_after:
            raise Cancelled()


def test_every_frame_is_refined_at_the_content_size(ms, frames, reference):
    g = reference.geometry
    assert reference.frames.shape == (N, 3, g.content_h, g.content_w)
    assert (g.content_h, g.content_w) == (ms.native_size[0], ms.native_size[0])  # square content, bars cropped
    assert 0 <= reference.frames.min() and reference.frames.max() <= 1
    assert reference.chunk_starts == PLAN.starts(N) and reference.chunk_starts[-1] + 8 == N


def test_keeping_the_padding_returns_the_full_refiner_frame(ms, frames):
    out = refine_video(ms, frames[:8], "a red circle", "", RefineSettings(steps=1, blend=PLAN, crop_padding=False))
    assert out.frames.shape[-2:] == (out.geometry.frame_h, out.geometry.frame_w)


def test_the_same_seed_reproduces_the_video_and_another_seed_changes_it(ms, frames, reference):
    again = refine_video(ms, frames, "a red circle", "", FAST)
    assert torch.equal(again.frames, reference.frames)
    other = refine_video(ms, frames, "a red circle", "", RefineSettings(steps=2, blend=PLAN, seed=1))
    assert not torch.equal(other.frames, reference.frames)


def test_sequential_guidance_rows_equal_the_batched_rows(ms, frames, reference):
    seq = refine_video(ms, frames, "a red circle", "", RefineSettings(steps=2, blend=PLAN, batch_guidance=False))
    assert (seq.frames - reference.frames).abs().max() < 1e-4


def test_progress_counts_every_chunk_evaluation_and_frames_arrive_in_order(ms, frames):
    events = Recorder()
    refine_video(ms, frames, "a red circle", "", FAST, events=events)
    chunks = len(PLAN.starts(N))
    assert len(events.steps) == 2 * chunks
    assert {s[0] for s in events.steps} == {"refine"}
    assert events.frame_starts == list(range(N))


def test_frames_can_stream_to_a_file_without_being_kept(ms, frames, tmp_path):
    sink = Mp4Sink(tmp_path / "refined.mp4", fps=8)
    out = refine_video(ms, frames, "a red circle", "", FAST, sinks=[sink], keep_frames=False)
    assert out.frames is None
    with av.open(str(tmp_path / "refined.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == N


def test_cancelling_stops_the_run_and_closes_the_sinks(ms, frames, tmp_path):
    sink = Mp4Sink(tmp_path / "cancelled.mp4", fps=8)
    with pytest.raises(Cancelled):
        refine_video(ms, frames, "a red circle", "", FAST, events=Recorder(cancel_after=3), sinks=[sink])
    assert sink._closed


@pytest.mark.parametrize("variant", ["xt_random", "average", "hard"])
def test_every_blend_variant_runs_through_the_pipeline(ms, frames, variant):
    out = refine_video(ms, frames, "a red circle", "",
                       RefineSettings(steps=2, blend=BlendPlan(8, 3, variant)))
    assert out.frames.shape[0] == N and torch.isfinite(out.frames).all()


def test_no_overlap_tiles_the_video_without_blending(ms, frames):
    out = refine_video(ms, frames[:8], "a red circle", "", RefineSettings(steps=1, blend=BlendPlan(4, 0)))
    assert out.chunk_starts == [0, 4] and out.frames.shape[0] == 8


@pytest.mark.parametrize("bad,match", [
    (dict(strength=1.2), "strength"),
    (dict(start_t=999), "start_t"),
    (dict(pad_mode="custom"), "target_height"),
    (dict(pad_mode="stretch"), "pad_mode"),
])
def test_invalid_settings_are_refused_before_any_model_work(ms, frames, bad, match):
    with pytest.raises(ValueError, match=match):
        refine_video(ms, frames, "x", "", RefineSettings(blend=PLAN, **bad))


def test_sinks_are_closed_even_when_the_input_is_refused(ms, frames, tmp_path):
    sink = Mp4Sink(tmp_path / "refused.mp4", fps=8)
    with pytest.raises(ValueError, match="strength"):
        refine_video(ms, frames, "x", "", RefineSettings(blend=PLAN, strength=2.0), sinks=[sink])
    assert sink._closed


def test_frames_outside_the_unit_range_or_non_finite_are_refused(ms, frames):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        refine_video(ms, frames * 255, "x", "", FAST)
    broken = frames.clone()
    broken[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        refine_video(ms, broken, "x", "", FAST)


def test_a_network_that_produces_nan_stops_with_a_message_naming_the_chunk(tiny_files, frames):
    model = load_ms_vid2vid(tiny_files["unet"], tiny_files["text"], tiny_files["vae"])
    model.unet.conv_out.bias.data.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="chunk 1"):
        refine_video(model, frames, "x", "", FAST)


def test_the_diffusers_family_refines_through_the_same_machinery(tiny_files, frames):
    model = load_diffusers_refiner(tiny_files["diffusers_folder"])
    out = refine_video(model, frames, "a red circle", "", RefineSettings(steps=2, blend=PLAN))
    assert model.prediction in ("epsilon", "v") and model.family == "diffusers_t2v"
    assert out.frames.shape[0] == N and torch.isfinite(out.frames).all()
    assert out.info["settings"]["start_quirk"] is False and out.info["settings"]["cfg"] == 9.0
