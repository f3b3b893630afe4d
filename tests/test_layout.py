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


REFINER_MANIFEST = Path(__file__).parent / "reference" / "refiner_keys.tsv"


def test_refine_layout_command_matches_the_refiner_manifest(capsys):
    """refine_stage.md §20.2: official names (incl. `temopral_conv`), Conv1d temporal proj shapes (m, c, 1),
    0 missing / 0 unexpected / 0 shape differences, in the manifest's order."""
    assert main(["layout", "refine"]) == 0
    text = capsys.readouterr().out
    ours = parse(text)
    official = parse(REFINER_MANIFEST.read_text())
    missing = sorted(set(official) - set(ours))
    unexpected = sorted(set(ours) - set(official))
    shapes = sorted(k for k in set(ours) & set(official) if ours[k] != official[k])
    assert (len(missing), len(unexpected), len(shapes)) == (0, 0, 0), (missing[:5], unexpected[:5], shapes[:5])
    assert list(ours) == list(official)
    lines = text.splitlines()
    assert "input_blocks.0.1.proj_in.weight\t(512, 320, 1)" in lines
    assert "input_blocks.3.op.weight\t(320, 320, 3, 3)" in lines
    assert "out.2.bias\t(4,)" in lines


def test_refiner_parameter_count_matches_the_specification():
    """refine_stage.md §3.1: 1,411,233,860 parameters in 1480 tensors."""
    import math

    from streaming_core.refiner_names import official_layout

    layout = official_layout()
    assert len(layout) == 1480
    assert sum(math.prod(shape) for _, shape in layout) == 1_411_233_860
