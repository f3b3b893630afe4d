"""Text encoder, tokenizer, APM image encoder and VAE (stream_stage.md §4, §5, §7.2, §13.2).

Everything runs on CPU with tiny configurations; the full-size models are only built on the meta device to
check their state-dict layout against the official manifest (`tests/reference/official_keys.tsv`).
Reference implementations (transformers, open_clip, kornia, diffusers) are optional: their tests skip when the
package is missing.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from streaming_core.config import ImageEncoderConfig, StreamingT2VConfig, TextEncoderConfig, VaeConfig, tiny_default
from streaming_core.image_encoder import CLIP_MEAN, CLIP_STD, OpenClipImageEncoder, load_open_clip_visual_state_dict
from streaming_core.resize import resize_bicubic_antialiased
from streaming_core.text_encoder import ClipTextEncoder
from streaming_core.tokenizer import BOS_ID, EOS_ID, PAD_ID, ClipTokenizer
from streaming_core.vae import Vae

MANIFEST = Path(__file__).parent / "reference" / "official_keys.tsv"


def read_manifest(prefix: str) -> dict[str, tuple[int, ...]]:
    """Rows `name<TAB>(shape)` of the official manifest under `prefix`, names relative to it."""
    rows: dict[str, tuple[int, ...]] = {}
    for line in MANIFEST.read_text().splitlines():
        name, shape = line.split("\t")
        if name.startswith(prefix):
            rows[name[len(prefix) :]] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return rows


def layout_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def assert_same_layout(got: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(f"{k}: {got[k]} != {expected[k]}" for k in set(got) & set(expected) if got[k] != expected[k])
    assert not missing, f"{len(missing)} missing: {missing[:20]}"
    assert not unexpected, f"{len(unexpected)} unexpected: {unexpected[:20]}"
    assert not wrong, f"{len(wrong)} shape differences: {wrong[:20]}"


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def tiny() -> StreamingT2VConfig:
    return tiny_default()


# ---------------------------------------------------------------------------------------------------------------
# §13.2 state-dict layout of the full-size models


def test_full_size_text_encoder_has_exactly_the_official_372_tensors() -> None:
    """§13.2: `text_encoder.text_model.*`, 23 layers, no `position_ids` buffer (372 tensors, 340,387,840 params)."""
    with torch.device("meta"):
        encoder = ClipTextEncoder(StreamingT2VConfig.full().text_encoder)
    expected = read_manifest("text_encoder.")
    assert len(expected) == 372
    assert_same_layout(layout_of(encoder), expected)
    assert sum(p.numel() for p in encoder.parameters()) == 340_387_840


def test_full_size_image_encoder_has_exactly_the_official_398_tensors() -> None:
    """§13.2/§7.2: open_clip `visual.*` (392 tensors) plus the six unused text-side leftovers under `model.`."""
    with torch.device("meta"):
        encoder = OpenClipImageEncoder(StreamingT2VConfig.full().image_encoder)
    expected = read_manifest("image_encoder.")
    assert len(expected) == 398
    assert_same_layout(layout_of(encoder), expected)
    assert sum(p.numel() for p in encoder.model.visual.parameters()) == 632_076_800


def test_full_size_vae_has_exactly_the_official_248_tensors() -> None:
    """§13.2/§5: diffusers `AutoencoderKL` names with `to_q/to_k/to_v/to_out.0` Linear attention weights."""
    with torch.device("meta"):
        vae = Vae(StreamingT2VConfig.full().vae)
    expected = read_manifest("vae.")
    assert len(expected) == 248
    assert_same_layout(layout_of(vae), expected)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


# ---------------------------------------------------------------------------------------------------------------
# §4 tokenizer


def test_ascii_prompt_is_bos_tokens_eos_then_zero_padding(tokenizer: ClipTokenizer) -> None:
    """§4: `[49406, tokens..., 49407, 0, ...]`, 77 ids, pad id 0 (`!`)."""
    ids = tokenizer(["a cat playing the piano"])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :7].tolist() == [BOS_ID, 320, 2368, 1629, 518, 7894, EOS_ID]
    assert ids[0, 7:].eq(PAD_ID).all()


def test_punctuation_digits_and_contractions_split_like_clip(tokenizer: ClipTokenizer) -> None:
    """§4 golden vector: punctuation runs, single digits and `'s`-style contractions are separate tokens."""
    ids = tokenizer(['Hello, world! It\'s 3:45 p.m. -- "quoted" (yes)?'])[0]
    expected = [3306, 267, 1002, 0, 585, 568, 274, 281, 275, 276, 335, 269, 332, 269, 2432, 257, 27706, 257, 263,
                1958, 18765]
    assert ids[: len(expected) + 2].tolist() == [BOS_ID, *expected, EOS_ID]


def test_every_exclamation_mark_is_the_pad_token_0_as_in_the_official_tokenizer(tokenizer: ClipTokenizer) -> None:
    """§4 parity: pad token `!` is special in transformers' CLIPTokenizer, so each `!` → 0 (diffusers#4153)."""
    assert tokenizer(["! !! !!!"])[0, :8].tolist() == [BOS_ID, 0, 0, 0, 0, 0, 0, EOS_ID]
    assert tokenizer(["wow!?"])[0, :5].tolist() == [BOS_ID, 2781, 0, 286, EOS_ID]  # "wow", "!", "?"


def test_plain_bpe_mode_equals_open_clip_simple_tokenizer() -> None:
    """§4: with `split_pad_token=False` the ids are open_clip's (the bundled BPE is the same OpenAI CLIP BPE)."""
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    prompts = ["a cat playing the piano", "! !! !!! wow!?", 'Hello, world! It\'s 3:45 p.m. -- "quoted" (yes)?', ""]
    plain = ClipTokenizer(split_pad_token=False)
    assert torch.equal(plain(prompts), open_clip_tokenizer.SimpleTokenizer()(prompts))


def test_case_and_whitespace_are_normalised(tokenizer: ClipTokenizer) -> None:
    """§4: lower-casing; runs of spaces, tabs and newlines count as one space."""
    assert torch.equal(tokenizer(["A  RED\tcar\n on the   road "]), tokenizer(["a red car on the road"]))


def test_prompt_longer_than_77_tokens_keeps_75_tokens_and_ends_with_eos(tokenizer: ClipTokenizer) -> None:
    """§4 `truncation=True, max_length=77`: BOS + first 75 tokens + EOS, no padding."""
    text = " ".join(f"word{i}" for i in range(60))  # ~120 tokens
    ids = tokenizer([text])[0]
    assert len(tokenizer.encode(text)) > 75
    assert ids.shape == (77,)
    assert ids[0].item() == BOS_ID and ids[-1].item() == EOS_ID
    assert ids[1:76].tolist() == tokenizer.encode(text)[:75]
    assert PAD_ID not in ids.tolist()


def test_empty_prompt_is_bos_eos_and_75_zeros(tokenizer: ClipTokenizer) -> None:
    """§4/§7.4: the unconditional prompt `""` → `[49406, 49407, 0, 0, ...]`."""
    assert tokenizer([""])[0].tolist() == [BOS_ID, EOS_ID] + [0] * 75


def test_tokenizer_matches_transformers_clip_tokenizer_built_from_the_same_merges(tokenizer: ClipTokenizer) -> None:
    """§4 [inferred equivalence]: same ids as transformers' `CLIPTokenizer` with pad token `!`."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPTokenizer(vocab=dict(tokenizer.encoder), merges=list(tokenizer.merges), pad_token="!")
    prompts = [
        "a cat playing the piano",
        'Hello, world! It\'s 3:45 p.m. -- "quoted" (yes)?',
        "A  RED\tcar\n on the   road ",
        "",
        "Ünïcödé café, naïve résumé; 東京 🚀 ok",
        "! !! !!! wow!? hi!",
        " ".join(f"word{i}" for i in range(60)),
    ]
    expected = reference(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(tokenizer(prompts), expected["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# §4 text encoder


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_text_encoder_equals_transformers_clip_text_model(hidden_act: str) -> None:
    """§4: last hidden state after `final_layer_norm`, causal mask, no padding mask, same parameter names."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = TextEncoderConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        hidden_act=hidden_act,
    )
    reference = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act=hidden_act, attn_implementation="eager",
        )
    ).eval()
    encoder = ClipTextEncoder(config).eval()
    weights = reference.state_dict()
    # transformers >= 5 flattened CLIPTextModel (no `text_model.` level); the official layout keeps it (§13.2)
    weights = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in weights.items()}
    encoder.load_state_dict(weights, strict=True)
    ids = torch.randint(1, 1000, (2, 77))
    ids[1, 10:] = 0  # padding positions are attended like any other token
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        got = encoder(ids)
    assert got.shape == (2, 77, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_text_encoder_is_causal() -> None:
    """§4: token i only sees tokens ≤ i, so changing the last token leaves earlier outputs unchanged."""
    torch.manual_seed(0)
    encoder = ClipTextEncoder(tiny_default().text_encoder).eval()
    ids = torch.randint(1, 49408, (1, 77))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 49408
    with torch.no_grad():
        a, b = encoder(ids), encoder(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(a[:, -1], b[:, -1])


# ---------------------------------------------------------------------------------------------------------------
# §7.2 image encoder


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((256, 256), (224, 224)), ((300, 180), (224, 224)), ((1024, 700), (224, 224)), ((160, 160), (224, 224))],
    ids=["256-to-224", "non-square-mixed-scale", "strong-downscale", "upscale-no-blur"],
)
def test_resize_equals_kornia_bicubic_antialiased(in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
    """§7.2 step 2: `kornia.geometry.resize(..., "bicubic", align_corners=True, antialias=True)`."""
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(0)
    images = torch.rand(2, 3, *in_size) * 2 - 1
    expected = kornia.geometry.resize(images, out_size, interpolation="bicubic", align_corners=True, antialias=True)
    got = resize_bicubic_antialiased(images, out_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def tiny_open_clip_visual(config: ImageEncoderConfig):
    open_clip_transformer = pytest.importorskip("open_clip.transformer")
    return open_clip_transformer.VisionTransformer(
        image_size=config.image_size, patch_size=config.patch_size, width=config.width, layers=config.layers,
        heads=config.width // config.head_width, mlp_ratio=config.mlp_ratio, output_dim=config.embed_dim,
    ).eval()


def test_visual_tower_equals_open_clip_vision_transformer(tiny: StreamingT2VConfig) -> None:
    """§7.2 step 4: class token after `ln_post`, times `proj`; not L2-normalised."""
    torch.manual_seed(0)
    reference = tiny_open_clip_visual(tiny.image_encoder)
    encoder = OpenClipImageEncoder(tiny.image_encoder).eval()
    encoder.model.visual.load_state_dict(reference.state_dict(), strict=True)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixels)
        got = encoder.model.visual(pixels)
    assert got.shape == (2, tiny.image_encoder.embed_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_image_encoder_runs_the_official_preprocessing_then_the_visual_tower(tiny: StreamingT2VConfig) -> None:
    """§7.2 steps 1-4: [-1,1] anchor → kornia resize to 224 → (x+1)/2 → CLIP mean/std → visual → (B, D)."""
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(0)
    reference = tiny_open_clip_visual(tiny.image_encoder)
    encoder = OpenClipImageEncoder(tiny.image_encoder).eval()
    encoder.model.visual.load_state_dict(reference.state_dict(), strict=True)
    anchor = torch.rand(1, 3, 256, 256) * 2 - 1
    x = kornia.geometry.resize(anchor, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    x = ((x + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(x)
        got = encoder(anchor)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_standalone_open_clip_state_dict_loads_into_a_meta_built_image_encoder(tiny: StreamingT2VConfig) -> None:
    """§13.3: without `image_encoder.*` (VidXTend) an open_clip file is mapped on; its text tower is dropped."""
    open_clip_model = pytest.importorskip("open_clip.model")
    cfg = tiny.image_encoder
    torch.manual_seed(0)
    clip = open_clip_model.CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg=open_clip_model.CLIPVisionCfg(
            layers=cfg.layers, width=cfg.width, head_width=cfg.head_width, patch_size=cfg.patch_size,
            image_size=cfg.image_size,
        ),
        text_cfg=open_clip_model.CLIPTextCfg(
            context_length=cfg.text_context_length, vocab_size=cfg.text_vocab_size, width=cfg.text_width, heads=4,
            layers=1,
        ),
    ).eval()
    state_dict = clip.state_dict()
    assert any(k.startswith("transformer.") for k in state_dict)
    with torch.device("meta"):
        encoder = OpenClipImageEncoder(cfg)
    mapped = load_open_clip_visual_state_dict(state_dict, encoder, assign=True)
    assert not any(k.startswith("model.transformer.") for k in mapped)
    assert set(mapped) == set(encoder.state_dict())
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder.model.visual(pixels), clip.visual(pixels), rtol=0, atol=1e-5)


def test_foreign_keys_in_an_open_clip_state_dict_are_rejected_by_name() -> None:
    """§13.3: unexpected keys are errors that name the keys, never silently skipped."""
    with pytest.raises(ValueError, match="conditioner.embedders.0"):
        load_open_clip_visual_state_dict({"visual.proj": torch.zeros(2, 2), "conditioner.embedders.0.x": torch.ones(1)})


# ---------------------------------------------------------------------------------------------------------------
# §5 VAE


@pytest.fixture(scope="module")
def tiny_vae(tiny: StreamingT2VConfig) -> Vae:
    torch.manual_seed(0)
    return Vae(tiny.vae).eval()


def test_vae_decode_gives_frames_in_0_1_at_eight_times_the_latent_size(tiny_vae: Vae) -> None:
    """§5: `(N, 4, h, w)` scaled latents → `(N, 3, 8h, 8w)` = clamp(D(z/0.18215)·0.5 + 0.5, 0, 1)."""
    latents = torch.randn(3, 4, 4, 6)
    with torch.no_grad():
        frames = tiny_vae.decode(latents)
    assert frames.shape == (3, 3, 32, 48)
    assert frames.min() >= 0 and frames.max() <= 1
    with torch.no_grad():
        raw = tiny_vae.decoder(tiny_vae.post_quant_conv(latents / 0.18215))
        frames_at_once = tiny_vae.decode(latents, slice_size=3)
    torch.testing.assert_close(frames_at_once, (raw * 0.5 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


def test_vae_decode_does_not_depend_on_the_slice_size(tiny_vae: Vae) -> None:
    """§5: decoding one frame at a time (official VAE slicing) equals decoding four at once."""
    latents = torch.randn(5, 4, 4, 4)
    with torch.no_grad():
        one = tiny_vae.decode(latents, slice_size=1)
        four = tiny_vae.decode(latents, slice_size=4)
    torch.testing.assert_close(one, four, rtol=0, atol=1e-5)


def test_vae_encode_returns_the_scaled_posterior_mean_by_default(tiny_vae: Vae) -> None:
    """§5 (training use): `encode` = 0.18215 · mean of the posterior; `sample=True` is seeded by the generator."""
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = tiny_vae.encode(frames)
        moments = tiny_vae.quant_conv(tiny_vae.encoder(frames * 2 - 1))
        a = tiny_vae.encode(frames, generator=torch.Generator().manual_seed(1), sample=True)
        b = tiny_vae.encode(frames, generator=torch.Generator().manual_seed(1), sample=True)
    assert latents.shape == (2, 4, 4, 4)
    torch.testing.assert_close(latents, moments[:, :4] * 0.18215, rtol=0, atol=1e-6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, latents)


def test_vae_equals_diffusers_autoencoder_kl(tiny: StreamingT2VConfig, tiny_vae: Vae) -> None:
    """§5: same architecture as diffusers `AutoencoderKL` with `DownEncoderBlock2D`/`UpDecoderBlock2D` blocks."""
    diffusers = pytest.importorskip("diffusers")
    cfg: VaeConfig = tiny.vae
    n = len(cfg.block_out_channels)
    reference = diffusers.AutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, scaling_factor=cfg.scaling_factor,
    ).eval()
    reference.load_state_dict(tiny_vae.state_dict(), strict=True)
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 4, 4)
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected_frames = (reference.decode(latents / cfg.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
        expected_latents = reference.encode(frames * 2 - 1).latent_dist.mean * cfg.scaling_factor
        got_frames = tiny_vae.decode(latents)
        got_latents = tiny_vae.encode(frames)
    torch.testing.assert_close(got_frames, expected_frames, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_latents, expected_latents, rtol=0, atol=1e-5)
