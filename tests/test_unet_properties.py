"""Properties of the CAM injectors and the APM mixing that the specification states (stream_stage.md §6.3,
§6.4, §7.5, §17 test hooks 2-4), checked on micro models built from the same classes as the full-size ones."""
from __future__ import annotations

import pytest
import torch

from core_fixtures import micro_config
from streaming_core.attention import apm_mix
from streaming_core.cam import Injector
from streaming_core.config import CamConfig
from streaming_core.models import StreamingT2VNetwork
from streaming_core.unet3d import UNet3D

@pytest.fixture(autouse=True, scope="module")
def _no_grad():
    """Inference only in this module; the global grad mode is restored afterwards for the other modules."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def net() -> StreamingT2VNetwork:
    torch.manual_seed(0)
    network = StreamingT2VNetwork(micro_config(), with_image_encoder=False).eval()
    for name, p in network.named_parameters():
        if name.endswith("alpha"):
            p.fill_(0.7)
        if "proj_out" in name and "cross_attention_merger" in name:
            p.normal_(0, 0.1)
    return network


def inputs(cfg, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    h = cfg.sample_size // 8
    d = cfg.unet.cross_attention_dim
    z = torch.randn(batch, 4, 16, h, h, generator=g)
    ctx = torch.randn(batch, 93, d, generator=g)
    frames = torch.rand(batch * 8, 3, cfg.sample_size, cfg.sample_size, generator=g) * 2 - 1
    return z, ctx, frames, torch.tensor([501])


def streaming_eps(net, z, ctx, frames, t):
    residuals = net.unet(z[:, :, :8], t, ctx[:, :77], frames)
    return net.base_model(z, t, ctx, residuals)


def test_zero_injectors_and_zero_alpha_reduce_to_the_vanilla_unet(net):
    """§6.4: proj_out = 0 and alpha = 0 give exactly the vanilla UNet output on the 77 text tokens."""
    cfg = micro_config()
    z, ctx, frames, t = inputs(cfg)
    zeroed = {k: (torch.zeros_like(v) if k.endswith("alpha") or ("cross_attention_merger" in k and "proj_out" in k)
                  else v) for k, v in net.base_model.state_dict().items()}
    model = UNet3D(cfg.unet, streaming=True, cam=cfg.cam, apm=cfg.apm).eval()
    model.load_state_dict(zeroed)
    vanilla = UNet3D(cfg.unet, streaming=False).eval()
    vanilla.load_state_dict({k: v for k, v in zeroed.items() if k in vanilla.state_dict()})
    residuals = net.unet(z[:, :, :8], t, ctx[:, :77], frames)
    assert torch.allclose(model(z, t, ctx, residuals), vanilla(z, t, ctx[:, :77]), atol=1e-5)


def test_apm_mixing_changes_the_output_when_alpha_is_not_zero(net):
    """§7.5 requirement 1: the mixing is always applied (no backend-dependent skip)."""
    z, ctx, frames, t = inputs(micro_config())
    before = streaming_eps(net, z, ctx, frames, t)
    other = ctx.clone()
    other[:, 77:] = torch.randn_like(other[:, 77:])
    assert (streaming_eps(net, z, other, frames, t) - before).abs().max() > 1e-3


def test_apm_mixing_equals_an_explicit_loop_over_tokens_and_features():
    """§7.5 step 1-3 written as sums, against the module's Conv1d/LayerNorm implementation."""
    g = torch.Generator().manual_seed(2)
    d = 12
    conv = torch.nn.Conv1d(93, 77, 3, padding=1)
    ln = torch.nn.LayerNorm(d)
    torch.nn.init.normal_(ln.weight, generator=g)
    alpha = torch.tensor(-0.8)
    c = torch.randn(1, 93, d, generator=g)
    padded = torch.nn.functional.pad(c, (1, 1))
    m = torch.empty(1, 77, d)
    for o in range(77):
        for j in range(d):
            m[0, o, j] = conv.bias[o] + sum((conv.weight[o, :, k] * padded[0, :, j + k]).sum() for k in range(3))
    expected = c[:, :77] + torch.nn.functional.silu(alpha) * ln(m)
    assert torch.allclose(apm_mix(c, conv, ln, alpha, 77), expected, atol=1e-5)


def test_streaming_unet_refuses_a_77_token_context(net):
    """§7.5 requirement 2: extension mode needs the 93-token context and says so."""
    z, ctx, frames, t = inputs(micro_config())
    residuals = net.unet(z[:, :, :8], t, ctx[:, :77], frames)
    with pytest.raises(ValueError, match="93"):
        net.base_model(z, t, ctx[:, :77], residuals)


def test_injector_normalises_queries_over_all_frames():
    """§6.3 step 2 / §17 hook 4: changing frame 15 changes the injected output of frame 0."""
    torch.manual_seed(3)
    inj = Injector(64, CamConfig()).eval()
    torch.nn.init.normal_(inj.temporal_transformer.proj_out.weight)
    skip = torch.randn(16, 64, 2, 2)
    cam = torch.randn(8, 64, 2, 2)
    out = inj(skip, cam, 1)
    changed = skip.clone()
    changed[15] += 5.0
    assert (inj(changed, cam, 1)[0] - out[0]).abs().max() > 1e-4


def test_injector_is_the_identity_with_zero_proj_out():
    inj = Injector(64, CamConfig()).eval()
    torch.nn.init.zeros_(inj.temporal_transformer.proj_out.weight)
    torch.nn.init.zeros_(inj.temporal_transformer.proj_out.bias)
    skip = torch.randn(32, 64, 4, 4)
    assert torch.equal(inj(skip, torch.randn(16, 64, 4, 4), 2), skip)


def test_cam_sees_only_the_first_eight_latent_frames(net):
    """tiny_v1 quirk 2: latent frames 8..15 do not influence any CAM output."""
    z, ctx, frames, t = inputs(micro_config())
    a = net.unet(z[:, :, :8], t, ctx[:, :77], frames)
    z2 = z.clone()
    z2[:, :, 8:] += 3.0
    b = net.unet(z2[:, :, :8], t, ctx[:, :77], frames)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(a) == 13


def test_batched_guidance_rows_equal_separate_forwards(net):
    """Guidance rows in one batch give the same ε as evaluating each row alone (§8 requirement)."""
    z, ctx, frames, t = inputs(micro_config())
    together = streaming_eps(net, z, ctx, frames, t)
    alone = torch.cat([streaming_eps(net, z[i:i + 1], ctx[i:i + 1], frames[8 * i:8 * i + 8], t) for i in range(2)])
    assert torch.allclose(together, alone, atol=1e-4)
