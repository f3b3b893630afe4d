"""Start and stop a headless ComfyUI (`main.py`) with this pack linked into a private base directory."""

from __future__ import annotations

import filecmp
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

from . import PACK_LINK_NAME, REPO_ROOT
from .client import ComfyClient, ComfyError

DEFAULT_COMFY_DIR = REPO_ROOT / ".comfyui" / "ComfyUI"
TINY_WEIGHTS = ("streamingt2v_tiny.safetensors", "modelscope_t2v_tiny.safetensors")
# tiny random refiner (`python -m streaming_core.tiny_refiner`), in this subfolder of models/streamingt2v
TINY_REFINER_DIR = "refiner_tiny"
TINY_REFINER_FILES = ("refiner_tiny_non_ema.pth", "refiner_tiny_open_clip.bin", "refiner_tiny_sd21.ckpt")
TINY_REFINER_DIFFUSERS = "refiner_tiny_t2v_diffusers"
EXAMPLE_INPUTS = REPO_ROOT / "workflows" / "inputs"
# the trained toy model shipped in the repository's models/toy/ (scripts/train_toy_model.sh writes it): the stream
# and base files go into models/streamingt2v, the refiner files into its subfolder refiner_toy/
TOY_WEIGHTS = ("streamingt2v_toy.safetensors", "modelscope_t2v_toy.safetensors")
TOY_REFINER_DIR = "refiner_toy"
TOY_REFINER_FILES = ("refiner_toy_non_ema.pth", "refiner_toy_open_clip.bin", "refiner_toy_sd21.ckpt")


def comfy_dir() -> pathlib.Path:
    """The ComfyUI tree to run: $ST2V_COMFY_DIR or `.comfyui/ComfyUI` made by scripts/setup.sh."""
    return pathlib.Path(os.environ.get("ST2V_COMFY_DIR", DEFAULT_COMFY_DIR)).resolve()


def pack_dir() -> pathlib.Path:
    """The pack to load: this repository ($ST2V_PACK_DIR overrides it, for developing the harness)."""
    return pathlib.Path(os.environ.get("ST2V_PACK_DIR", REPO_ROOT)).resolve()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base(base: pathlib.Path, pack: pathlib.Path | None = None,
                 link_name: str = PACK_LINK_NAME) -> pathlib.Path:
    """Create `base/{custom_nodes,models/streamingt2v,input,output,temp,user}` and link the pack."""
    base = pathlib.Path(base)
    pack = pathlib.Path(pack or pack_dir())
    for sub in ("custom_nodes", "models/streamingt2v", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / link_name
    if link.is_symlink() and link.resolve() != pack.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(pack, target_is_directory=True)
    return base


def seed_tiny_weights(models_dir: pathlib.Path, python: str = sys.executable,
                      pack: pathlib.Path | None = None, timeout: float = 600.0) -> list[pathlib.Path]:
    """Write the embedded default tiny weights with `python -m streaming_core.tiny_default <dir>`.

    Skips the generation when both files already exist. Raises RuntimeError with the command's output
    when the module is missing or fails.
    """
    models_dir = pathlib.Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    wanted = [models_dir / name for name in TINY_WEIGHTS]
    if all(p.is_file() for p in wanted):
        return wanted
    pack = pathlib.Path(pack or pack_dir())
    cmd = [python, "-m", "streaming_core.tiny_default", str(models_dir)]
    proc = subprocess.run(cmd, cwd=pack, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` (cwd {pack}) failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    missing = [p.name for p in wanted if not p.is_file()]
    if missing:
        raise RuntimeError(f"`{' '.join(cmd)}` did not write {missing} into {models_dir}; "
                           f"it wrote {sorted(p.name for p in models_dir.iterdir())}")
    return wanted


def seed_tiny_refiner(models_dir: pathlib.Path, python: str = sys.executable,
                      pack: pathlib.Path | None = None, timeout: float = 600.0) -> pathlib.Path:
    """Write the tiny random refiner files into `models_dir/refiner_tiny/` with
    `python -m streaming_core.tiny_refiner` (skipped when they exist); returns that folder.

    The shipped refiner workflows name them as `refiner_tiny/<file>` (MS-Vid2Vid-XL loader) and
    `refiner_tiny/refiner_tiny_t2v_diffusers` (diffusers loader). Raises RuntimeError with the output on failure.
    """
    folder = pathlib.Path(models_dir) / TINY_REFINER_DIR
    wanted = [folder / name for name in TINY_REFINER_FILES] + [folder / TINY_REFINER_DIFFUSERS / "unet" / "config.json"]
    if all(p.is_file() for p in wanted):
        return folder
    pack = pathlib.Path(pack or pack_dir())
    cmd = [python, "-m", "streaming_core.tiny_refiner", str(folder)]
    proc = subprocess.run(cmd, cwd=pack, capture_output=True, text=True, timeout=timeout)
    missing = [str(p.relative_to(folder)) for p in wanted if not p.is_file()]
    if proc.returncode != 0 or missing:
        raise RuntimeError(f"`{' '.join(cmd)}` (cwd {pack}) failed (exit code {proc.returncode}, missing {missing}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return folder


def seed_toy_model(models_dir: pathlib.Path, source: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Copy the shipped toy model (`models/toy/`) into a ComfyUI `models/streamingt2v` folder: the stream and
    base files at the top, the refiner files in `refiner_toy/`, as the shipped workflows name them. Files that
    are already there with the same bytes are kept (a retrained model can have the same sizes). Raises FileNotFoundError naming the missing files and the
    script that makes them."""
    source = pathlib.Path(source or pack_dir() / "models" / "toy")
    models_dir = pathlib.Path(models_dir)
    plan = [(source / name, models_dir / name) for name in TOY_WEIGHTS]
    plan += [(source / name, models_dir / TOY_REFINER_DIR / name) for name in TOY_REFINER_FILES]
    missing = [str(src) for src, _ in plan if not src.is_file()]
    if missing:
        raise FileNotFoundError(f"the shipped toy model is incomplete, missing {missing}; restore models/toy/ "
                                f"from git or retrain it with `bash scripts/train_toy_model.sh`")
    written = []
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
            shutil.copyfile(src, dst)
        written.append(dst)
    return written


def copy_example_inputs(input_dir: pathlib.Path) -> list[pathlib.Path]:
    """Copy the example media of the shipped workflows (workflows/inputs/*) into ComfyUI's input folder."""
    copied = []
    if EXAMPLE_INPUTS.is_dir():
        for src in sorted(EXAMPLE_INPUTS.iterdir()):
            if src.is_file() and not src.name.startswith("."):
                dst = pathlib.Path(input_dir) / src.name
                shutil.copyfile(src, dst)
                copied.append(dst)
    return copied


class ComfyServer:
    """A `main.py` subprocess on 127.0.0.1:<port> using `base` as --base-directory.

    `start()` waits until GET /system_stats answers 200 and fails fast (with the log tail) when the
    process exits first. `stop()` sends SIGINT, waits 15 s, then kills.
    """

    def __init__(self, base: pathlib.Path, port: int | None = None, python: str = sys.executable,
                 comfy: pathlib.Path | None = None, extra_args: list[str] | None = None,
                 log_path: pathlib.Path | None = None):
        self.base = pathlib.Path(base).resolve()
        self.port = port or free_port()
        self.python = python
        self.comfy = pathlib.Path(comfy or comfy_dir())
        self.extra_args = list(extra_args or [])
        self.log_path = pathlib.Path(log_path or self.base / "comfyui.log")
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ComfyClient(self.url)

    @property
    def command(self) -> list[str]:
        return [self.python, str(self.comfy / "main.py"), "--cpu", "--listen", "127.0.0.1",
                "--port", str(self.port), "--base-directory", str(self.base),
                "--database-url", f"sqlite:///{self.base}/comfyui.db",
                "--disable-auto-launch", "--disable-api-nodes", *self.extra_args]

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        main_py = self.comfy / "main.py"
        if not main_py.is_file():
            raise ComfyError(f"ComfyUI not found at {main_py}; run `bash scripts/setup.sh` "
                             "(or set ST2V_COMFY_DIR)")
        self._log_file = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.command, cwd=self.base, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} before it was ready.\n"
                                 f"command: {' '.join(self.command)}\nlog tail:\n{self.log_tail()}")
            if self.client.is_ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s.\n"
                                 f"log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self, link_name: str = PACK_LINK_NAME) -> list[str]:
        """Log lines that report a failed import of the pack (`IMPORT FAILED` / `Cannot import`)."""
        return [line for line in self.log_text().splitlines()
                if link_name in line and ("IMPORT FAILED" in line or "Cannot import" in line)]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, wait: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
