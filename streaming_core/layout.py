"""Full-size state-dict layout in the official naming, built on the meta device (no memory, no weights)."""
from __future__ import annotations

import torch

from .config import StreamingT2VConfig
from .models import StreamingT2VNetwork


def stream_layout() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of `streaming_t2v.ckpt["state_dict"]`, in registration order."""
    with torch.device("meta"):
        network = StreamingT2VNetwork(StreamingT2VConfig.full())
    return [(name, tuple(t.shape)) for name, t in network.state_dict().items()]
