"""The full-size model built on the meta device has exactly the official checkpoint layout
(tests/reference/official_keys.tsv: 3407 tensors; stream_stage.md §13.2)."""
from __future__ import annotations

import re
from pathlib import Path

from streaming_core.conformance import main

MANIFEST = Path(__file__).parent / "reference" / "official_keys.tsv"


def parse(text: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in text.splitlines():
        if line.strip():
            name, shape = line.split("\t")
            rows[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return rows


def test_layout_command_matches_the_official_manifest(capsys):
    assert main(["layout", "stream"]) == 0
    ours = parse(capsys.readouterr().out)
    official = parse(MANIFEST.read_text())
    missing = sorted(set(official) - set(ours))
    unexpected = sorted(set(ours) - set(official))
    shapes = sorted(k for k in set(ours) & set(official) if ours[k] != official[k])
    assert (len(missing), len(unexpected), len(shapes)) == (0, 0, 0), (missing[:5], unexpected[:5], shapes[:5])
    assert len(ours) == 3407


def test_layout_prints_shapes_in_manifest_notation(capsys):
    main(["layout", "stream"])
    lines = capsys.readouterr().out.splitlines()
    assert "base_model.conv_in.weight\t(320, 4, 3, 3)" in lines
    assert "base_model.conv_in.bias\t(320,)" in lines
    assert "image_encoder.model.logit_scale\t()" in lines


def test_full_size_parameter_counts_match_the_specification():
    """stream_stage.md §6.2 / §13.2: CAM 621,981,664 and base UNet 1,480,478,804 parameters."""
    import torch

    from streaming_core.config import StreamingT2VConfig
    from streaming_core.models import StreamingT2VNetwork

    with torch.device("meta"):
        net = StreamingT2VNetwork(StreamingT2VConfig.full())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net.unet) == 621_981_664
    assert count(net.base_model) == 1_480_478_804
