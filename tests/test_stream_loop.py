"""The extension loop (stream_stage.md §1, §8, §10, §11) on micro models loaded through the real file loader."""
from __future__ import annotations

import pytest
import torch

from core_fixtures import random_video, write_micro_models
from streaming_core.events import Cancelled, NullEvents
from streaming_core.model_files import load_base_model, load_stream_model
from streaming_core.stream import extend_video, generate_init_chunk

STEPS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    stream_path, base_path = write_micro_models(tmp_path_factory.mktemp("micro"))
    model = load_stream_model(stream_path)
    return model, load_base_model(base_path, shared=model)


@pytest.fixture(scope="module")
def clip(models):
    return random_video(16, models[0].sample_size)


class Recorder(NullEvents):
    def __init__(self, cancel_after_frames: int | None = None) -> None:
        self.frames: list[tuple[int, torch.Tensor]] = []
        self.steps: list[tuple] = []
        self.cancel_after_frames = cancel_after_frames

    def on_step(self, stage, chunk, num_chunks, step, num_steps):
        self.steps.append((stage, chunk, num_chunks, step, num_steps))

    def on_frames(self, frames, first_index):
        self.frames.append((first_index, frames))

    def check_cancel(self):
        if self.cancel_after_frames is not None and sum(f.shape[0] for _, f in self.frames) >= self.cancel_after_frames:
            raise Cancelled("stop")


def test_output_is_the_input_followed_by_8_new_frames_per_chunk(models, clip):
    model, _ = models
    events = Recorder()
    out = extend_video(model, clip, clip[0], ["a red circle"], 2, steps=STEPS, events=events)
    assert out.shape == (32, 3, model.sample_size, model.sample_size)
    assert out.dtype == torch.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out[:16], clip)
    assert [i for i, _ in events.frames] == [16, 24]
    assert torch.equal(torch.cat([f for _, f in events.frames]), out[16:])
    assert events.steps[-1] == ("extend", 1, 2, STEPS, STEPS)


def test_the_same_seed_gives_the_same_video_and_another_seed_does_not(models, clip):
    model, _ = models
    a = extend_video(model, clip, clip[0], ["x"], 1, steps=STEPS, seed=5)
    b = extend_video(model, clip, clip[0], ["x"], 1, steps=STEPS, seed=5)
    c = extend_video(model, clip, clip[0], ["x"], 1, steps=STEPS, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a[16:], c[16:])


def test_each_chunk_gets_its_own_prompt(models, clip):
    model, _ = models
    one = extend_video(model, clip, clip[0], ["a cat"], 2, steps=STEPS, seed=1)
    travel = extend_video(model, clip, clip[0], ["a cat", "a dog on a beach"], 2, steps=STEPS, seed=1)
    assert torch.equal(one[16:24], travel[16:24])
    assert not torch.equal(one[24:], travel[24:])


def test_the_anchor_frame_conditions_the_new_frames(models, clip):
    model, _ = models
    first = extend_video(model, clip, clip[0], ["x"], 1, steps=STEPS, seed=1)
    other = extend_video(model, clip, clip[7], ["x"], 1, steps=STEPS, seed=1)
    assert not torch.equal(first[16:], other[16:])


def test_cancellation_propagates_and_finished_chunks_were_handed_out(models, clip):
    model, _ = models
    events = Recorder(cancel_after_frames=8)
    with pytest.raises(Cancelled):
        extend_video(model, clip, clip[0], ["x"], 3, steps=STEPS, events=events)
    assert [i for i, _ in events.frames] == [16]
    assert next(model.unet.parameters()).device.type == "cpu"


def test_dual_guidance_evaluates_three_rows_in_one_forward(models, clip):
    """§8.2: [(∅,∅), (τ,∅), (τ,a)] batched; never sequential."""
    model, _ = models
    batches = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        extend_video(model, clip, clip[0], ["x"], 1, steps=STEPS, guidance_mode="dual")
        extend_video(model, clip, clip[0], ["x"], 1, steps=STEPS)
    finally:
        handle.remove()
    assert batches == [3] * STEPS + [2] * STEPS


def test_too_few_frames_wrong_size_and_nan_are_clear_errors(models, clip):
    model, _ = models
    with pytest.raises(ValueError, match="7 frame"):
        extend_video(model, clip[:7], clip[0], ["x"], 1, steps=STEPS)
    with pytest.raises(ValueError, match="needs 64x64"):
        extend_video(model, torch.rand(8, 3, 32, 32), clip[0], ["x"], 1, steps=STEPS)
    bad = clip.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        extend_video(model, bad, clip[0], ["x"], 1, steps=STEPS)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddim"])
def test_the_first_chunk_from_text_has_16_frames_in_range(models, sampler):
    _, base = models
    frames = generate_init_chunk(base, "a red circle", steps=STEPS, sampler=sampler, seed=3)
    assert frames.shape == (16, 3, base.sample_size, base.sample_size)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


def test_fp16_and_bf16_weights_load_and_run(tmp_path, clip):
    from streaming_core.model_files import load_stream_model
    from core_fixtures import write_micro_models

    stream_path, _ = write_micro_models(tmp_path)
    model = load_stream_model(stream_path, dtype=torch.bfloat16)
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.float32
    out = extend_video(model, clip, clip[0], ["x"], 1, steps=1)
    assert out.shape[0] == 24 and torch.isfinite(out).all()


def test_an_interrupted_run_resumes_bit_exactly_from_its_chunk_state(models, clip):
    """§11 requirement 2: frames so far + the generator state after chunk k reproduce the uninterrupted run."""
    model, _ = models
    prompts = ["a", "b", "c"]
    full = extend_video(model, clip, clip[0], prompts, 3, steps=STEPS, seed=9)

    class StopAfterFirst(Recorder):
        state = None

        def on_chunk_end(self, chunk, noise_state):
            self.state = noise_state

    events = StopAfterFirst(cancel_after_frames=8)
    with pytest.raises(Cancelled):
        extend_video(model, clip, clip[0], prompts, 3, steps=STEPS, seed=9, events=events)
    so_far = torch.cat([clip] + [f for _, f in events.frames])
    resumed = extend_video(model, so_far, clip[0], prompts[1:], 2, steps=STEPS, seed=9, noise_state=events.state)
    assert torch.equal(resumed, full)


def test_each_loader_refuses_the_other_loaders_file_and_says_what_it_is(tmp_path):
    """stream_stage.md §13.3: a wrong file is an error that names what the file holds and where it belongs."""
    from streaming_core.loading import CheckpointLayoutError

    stream_path, base_path = write_micro_models(tmp_path)
    with pytest.raises(CheckpointLayoutError, match="vanilla ModelScope T2V UNet.*not the StreamingT2V stream model"):
        load_stream_model(base_path)
    model = load_stream_model(stream_path)
    with pytest.raises(CheckpointLayoutError, match="StreamingT2V checkpoint, not the vanilla ModelScope T2V UNet"):
        load_base_model(stream_path, shared=model)
