"""The README's main-job command, exactly as a newcomer runs it: `bash scripts/demo.sh` sets up (already done
here, so it only checks), starts its own headless ComfyUI on the shipped trained toy model, queues the
text-to-long-video workflow through POST /prompt and prints the video it wrote. It must finish on CI's
machine and the video must be a real long video of the prompted object."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB_TIMEOUT_S = 1500


def _read_video(path: Path) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0


def test_readme_main_job_writes_a_long_video_of_the_prompted_object(tmp_path):
    from streaming_core.training.toy_metrics import colour_drift

    env = {**os.environ, "ST2V_DEMO_DIR": str(tmp_path / "demo"), "ST2V_NO_CHROMIUM": "1"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=MAIN_JOB_TIMEOUT_S)
    log = done.stdout[-6000:] + "\n" + done.stderr[-4000:]
    assert done.returncode == 0, f"scripts/demo.sh failed ({done.returncode}):\n{log}"
    path_line = re.search(r"^output video: (.+)$", done.stdout, re.M)
    frames_line = re.search(r"^frames: (\d+) \((\d+)x(\d+)\)$", done.stdout, re.M)
    assert path_line and frames_line, f"demo.sh did not print the video and its frame count:\n{log}"
    video_path = Path(path_line.group(1))
    assert video_path.is_file() and video_path.suffix == ".mp4", video_path
    assert int(frames_line.group(1)) >= 240, f"the main job promises at least 240 frames:\n{log}"

    video = _read_video(video_path)
    assert video.shape[0] == int(frames_line.group(1))
    drift = colour_drift(video)
    red = drift.reference
    assert red[0] > red[1] + 0.2 and red[0] > red[2] + 0.2, f"first chunk object colour {red} is not red"
    assert drift.smallest_object >= 8.0, f"the object vanished: {drift.smallest_object:.1f} px in some chunk"


def test_the_toy_model_is_copied_where_the_shipped_workflows_name_it_and_refreshed_when_it_changes(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from comfy_harness.server import seed_toy_model

    source = tmp_path / "toy"
    source.mkdir()
    names = ["streamingt2v_toy.safetensors", "modelscope_t2v_toy.safetensors", "refiner_toy_non_ema.pth",
             "refiner_toy_open_clip.bin", "refiner_toy_sd21.ckpt"]
    for name in names:
        (source / name).write_bytes(b"old!")
    models = tmp_path / "models" / "streamingt2v"
    written = seed_toy_model(models, source)
    assert sorted(p.relative_to(models).as_posix() for p in written) == sorted(
        names[:2] + [f"refiner_toy/{n}" for n in names[2:]])
    (source / names[2]).write_bytes(b"new!")  # a retrained file of the same size replaces the old copy
    seed_toy_model(models, source)
    assert (models / "refiner_toy" / names[2]).read_bytes() == b"new!"
    (source / names[0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"streamingt2v_toy\.safetensors.*train_toy_model\.sh"):
        seed_toy_model(models, source)
