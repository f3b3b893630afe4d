"""Restricted unpickling of PyTorch checkpoints that carry a few harmless non-tensor globals
(refine_stage.md §6.2 item 5).

`torch.load(..., weights_only=True)` refuses the Stable Diffusion 2.1 checkpoint `v2-1_512-ema-pruned.ckpt`
because its pickle names, besides tensors, a PyTorch Lightning callback class and NumPy scalars. This module loads
such files with torch's own weights-only unpickler and nothing else: the few extra names are allow-listed as
**stand-ins** (classes of this module registered under the original names through
`torch.serialization.safe_globals`). A stand-in records the arguments and state the pickle gives it and does
nothing else, so loading never imports Lightning or NumPy and never runs code named by the file.

| global in the file | resolved to |
|---|---|
| tensor-rebuild functions, `torch.*Storage`, `collections.OrderedDict`, `_codecs.encode` | torch's own weights-only allow-list (`_codecs.encode` turns a latin-1 `str` into `bytes`; torch resolves it before any user allow-list, so it stays torch's bytes builder) |
| `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` (also `lightning.pytorch...`) | `LightningCallbackStandIn` |
| `numpy.core.multiarray.scalar`, `numpy._core.multiarray.scalar` | `NumpyScalarStandIn` |
| `numpy.dtype` | `NumpyDtypeStandIn` |
| anything else (`os.system`, `builtins.eval`, `numpy.core.multiarray._reconstruct`, ...) | `UnsafePickleError` naming it; nothing is unpickled |

Zip-format files (`torch.save` since 1.6) are memory-mapped (`mmap=True`), so the tensors a caller does not use
are never read from disk; their globals are listed from `data.pkl` before loading. Legacy (pre-1.6) pickles are
read into memory; a forbidden global there stops the unpickler at that opcode.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .loading import CheckpointLayoutError

__all__ = [
    "UnsafePickleError",
    "StandIn",
    "LightningCallbackStandIn",
    "NumpyScalarStandIn",
    "NumpyDtypeStandIn",
    "STAND_INS",
    "load",
    "globals_in_checkpoint",
]


class UnsafePickleError(CheckpointLayoutError):
    """A checkpoint names a Python global that is neither a tensor/storage builder nor a known stand-in.

    ``names`` lists every such global found (full dotted names, e.g. ``posix.system``).
    """

    def __init__(self, path: Path, names: list[str]) -> None:
        self.names = list(names)
        shown = ", ".join(self.names[:20]) + (f" and {len(self.names) - 20} more" if len(self.names) > 20 else "")
        super().__init__(
            f"`{path}` contains pickled Python objects that are not plain tensors and not on the refiner's "
            f"allow-list: {shown}. This pack never unpickles arbitrary objects (it would run code named by the "
            "file); use the original file (e.g. v2-1_512-ema-pruned.ckpt, non_ema_0035000.pth) or a safetensors "
            "conversion"
        )


class StandIn:
    """Inert replacement for a pickled class or function: calling or instantiating it only stores the arguments.

    Instances keep ``args`` (positional arguments of the call / ``__new__``), ``kwargs`` and ``state`` (what the
    pickle's BUILD opcode passes). Nothing else happens.
    """

    pickled_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        inst = object.__new__(cls)
        inst.args = args
        inst.kwargs = kwargs
        inst.state = None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - arguments were stored by __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_name} args={self.args!r}>"


class LightningCallbackStandIn(StandIn):
    """PyTorch Lightning's `ModelCheckpoint` class (used as a dict key in the checkpoint's ``callbacks``)."""

    pickled_name = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


class NumpyScalarStandIn(StandIn):
    """`numpy.core.multiarray.scalar(dtype, raw_bytes)`: a NumPy scalar (e.g. a best-score value)."""

    pickled_name = "numpy.core.multiarray.scalar"


class NumpyDtypeStandIn(StandIn):
    """`numpy.dtype(kind, align, copy)` plus its BUILD state."""

    pickled_name = "numpy.dtype"


#: Pickled global name -> stand-in class (the only names allowed beyond torch's weights-only list).
STAND_INS: dict[str, type[StandIn]] = {
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": LightningCallbackStandIn,
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": LightningCallbackStandIn,
    "numpy.core.multiarray.scalar": NumpyScalarStandIn,
    "numpy._core.multiarray.scalar": NumpyScalarStandIn,
    "numpy.dtype": NumpyDtypeStandIn,
}

# torch.serialization.safe_globals edits one process-wide set; serialise our additions and removals.
_LOCK = threading.Lock()


def _allow_list() -> list[tuple[type, str]]:
    return [(cls, name) for name, cls in STAND_INS.items()]


def globals_in_checkpoint(path: str | os.PathLike) -> list[str]:
    """Every global a zip-format torch checkpoint's ``data.pkl`` names, sorted, read without unpickling.

    Raises `CheckpointLayoutError` when the file is not a zip-format torch checkpoint.
    """
    from torch import _weights_only_unpickler as wou

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            record = next((n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
            if record is None:
                raise CheckpointLayoutError(f"`{path}` is a zip archive without data.pkl, not a torch checkpoint")
            data = archive.read(record)
    except zipfile.BadZipFile as exc:
        raise CheckpointLayoutError(f"`{path}` is not a zip-format torch checkpoint ({exc})") from None
    try:
        return sorted(wou.get_globals_in_pkl(io.BytesIO(data)))
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise CheckpointLayoutError(f"`{path}`: its data.pkl cannot be parsed ({exc}); the file is damaged") from None


@contextmanager
def _only_our_safe_globals() -> Iterator[None]:
    """Allow exactly torch's weights-only globals plus `STAND_INS` while loading.

    Other code in the process may have registered real classes under the same names (ComfyUI registers the real
    Lightning callback and NumPy scalar for its own loads); they are set aside for the duration of the load and
    restored afterwards, so the result never depends on who else is loaded.
    """
    previous = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        torch.serialization.add_safe_globals(_allow_list())
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(previous)


def _torch_allowed_names() -> set[str]:
    from torch import _weights_only_unpickler as wou

    return set(wou._get_allowed_globals())


def load(path: str | os.PathLike, *, mmap: bool | None = None) -> Any:
    """Load a torch checkpoint with torch's weights-only unpickler plus the `STAND_INS`; tensors on the CPU.

    Args:
        path: a ``torch.save`` file (zip format, or the legacy pre-1.6 format).
        mmap: memory-map the tensors; default True for zip files (the legacy format cannot be mapped).
    Returns:
        the unpickled object (typically a dict with a ``"state_dict"`` entry, or an ``OrderedDict`` of tensors);
        non-tensor globals appear as `StandIn` instances or classes.
    Raises:
        UnsafePickleError naming every other global (nothing is unpickled for zip files);
        CheckpointLayoutError when the file cannot be read (truncated, not a torch checkpoint).
    """
    path = Path(path)
    is_zip = zipfile.is_zipfile(path)
    if mmap is None:
        mmap = is_zip
    if mmap and not is_zip:
        raise CheckpointLayoutError(f"`{path}` is not a zip-format torch checkpoint, so it cannot be memory-mapped")
    with _LOCK, _only_our_safe_globals():
        if is_zip:
            allowed = _torch_allowed_names() | set(STAND_INS)
            names = globals_in_checkpoint(path)
            refused = [n for n in names if n not in allowed]
            if refused:
                raise UnsafePickleError(path, refused)
        try:
            return torch.load(str(path), map_location="cpu", mmap=bool(mmap), weights_only=True)
        except pickle.UnpicklingError as exc:
            names = re.findall(r"GLOBAL ([\w.]+)", str(exc)) or re.findall(r"function ([\w.<>]+)", str(exc))
            if names:
                raise UnsafePickleError(path, list(dict.fromkeys(names))) from None
            raise CheckpointLayoutError(
                f"`{path}` was rejected by the restricted unpickler: {str(exc).strip().splitlines()[0][:300]}"
            ) from None
        except (RuntimeError, EOFError) as exc:
            raise CheckpointLayoutError(
                f"`{path}` could not be read as a PyTorch checkpoint: {exc or type(exc).__name__} (a truncated or "
                "damaged file? download it again)"
            ) from exc
