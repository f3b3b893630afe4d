"""The README's main-job command, exactly as a newcomer runs it: `bash scripts/demo.sh` sets up (already done
here, so it only checks), starts its own headless ComfyUI on the shipped trained toy model, queues the
text-to-long-video workflow through POST /prompt and prints the video it wrote. It must finish on CI's
machine and the video must be a real long video of the prompted object."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

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
