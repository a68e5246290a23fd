"""BAGEL's three-context guidance combination and its interval rule, alone and through the pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image

from loom_hf.modeling import LoomCache
from loom_hf.modeling.latents import unpack_latents
from loom_hf.pipelines import pipeline_loom
from loom_hf.pipelines.context_blocks import ContextBlocks
from loom_hf.pipelines.guidance import guidance_active, guided_velocity
from loom_hf.pipelines.pipeline_loom import EncodedImage

from .conftest import branch_velocity


@pytest.fixture
def velocities():
    torch.manual_seed(0)
    return torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)


def test_no_guidance_at_or_below_one(velocities):
    cond, text_uncond, image_uncond = velocities
    assert guided_velocity(cond, text_uncond, image_uncond, 1.0, 3.0) is cond
    assert guided_velocity(cond, None, None, 0.5, 1.0) is cond


def test_global_renorm(velocities):
    cond, text_uncond, image_uncond = velocities
    text = text_uncond + 4.0 * (cond - text_uncond)
    both = image_uncond + 2.0 * (text - image_uncond)
    expected = both * (cond.norm() / (both.norm() + 1e-8)).clamp(0.0, 1.0)
    torch.testing.assert_close(guided_velocity(cond, text_uncond, image_uncond, 4.0, 2.0, "global"), expected)


def test_channel_renorm_is_per_token(velocities):
    cond, text_uncond, image_uncond = velocities
    text = text_uncond + 3.0 * (cond - text_uncond)
    ratio = (cond.norm(dim=-1, keepdim=True) / (text.norm(dim=-1, keepdim=True) + 1e-8)).clamp(0.25, 1.0)
    result = guided_velocity(cond, text_uncond, image_uncond, 3.0, 1.0, "channel", renorm_min=0.25)
    torch.testing.assert_close(result, text * ratio)


def test_text_channel_renorms_before_image_guidance(velocities):
    cond, text_uncond, image_uncond = velocities
    text = text_uncond + 4.0 * (cond - text_uncond)
    text = text * (cond.norm(dim=-1, keepdim=True) / (text.norm(dim=-1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    expected = image_uncond + 2.0 * (text - image_uncond)
    torch.testing.assert_close(guided_velocity(cond, text_uncond, image_uncond, 4.0, 2.0, "text_channel"), expected)


def test_renorm_min_one_disables_renorm(velocities):
    cond, text_uncond, image_uncond = velocities
    result = guided_velocity(cond, text_uncond, image_uncond, 4.0, 1.0, "global", renorm_min=1.0)
    torch.testing.assert_close(result, text_uncond + 4.0 * (cond - text_uncond))


def test_unknown_renorm_is_rejected(velocities):
    with pytest.raises(ValueError, match="renorm"):
        guided_velocity(*velocities, 4.0, 1.0, "spatial")


def test_interval_compares_the_shifted_time():
    """50 official timesteps, shift 3, interval [0.4, 1]: 49 Euler steps, guidance on in the first 41."""
    t = np.linspace(1, 0, 50)
    shifted = 3 * t / (1 + 2 * t)
    active = [guidance_active(float(s), (0.4, 1.0)) for s in shifted[:-1]]
    assert len(active) == 49 and sum(active) == 41 and all(active[:41])
    assert not guidance_active(0.4, (0.4, 1.0)) and guidance_active(1.0, (0.4, 1.0))


@pytest.mark.parametrize(
    ("renorm", "renorm_min"), [("channel", 0.0), ("text_channel", 0.0), ("global", 0.99), ("channel", 0.99)]
)
def test_renorm_options_reach_the_pipelines_euler_step(tiny_pipe, renorm, renorm_min):
    """One Euler step from σ = 1 to 0 moves the noise by minus the guided velocity: `guided_velocity` of the three
    branch velocities computed one by one, with the call's renorm options (which give another velocity than the
    default global renorm without a lower clamp). The tiny model's branches differ by about 1 %, so the renorm ratio is
    about 0.95: a lower clamp of 0.99 acts."""
    request = [Image.new("RGB", (32, 32), (200, 30, 30)), "Make it blue."]
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    scales = {"guidance_scale": 8.0, "image_guidance_scale": 2.0}
    final = tiny_pipe(
        request,
        num_inference_steps=1,
        guidance_renorm=renorm,
        guidance_renorm_min=renorm_min,
        latents=noise,
        output_type="latent",
        **scales,
    ).images[0]

    contexts = tiny_pipe.encode_context(request)
    branches = [
        branch_velocity(tiny_pipe, contexts.branch(name), noise, torch.tensor(1.0))
        for name in ("cond", "text_uncond", "image_uncond")
    ]
    expected = guided_velocity(*branches, 8.0, 2.0, renorm, renorm_min)
    torch.testing.assert_close(noise - final, unpack_latents(expected, 2, 2), atol=1e-5, rtol=0)
    assert (expected - guided_velocity(*branches, 8.0, 2.0)).abs().max() > 1e-3


@torch.no_grad()
def test_a_context_written_in_one_pass_equals_its_pieces_written_one_by_one(tiny_pipe):
    """`encode_context` writes an image and the instruction after it with one forward pass: the keys, values, ids and
    position counter equal those of one pass per piece, and the text-free branch equals the context of the image
    alone (a prefix of the one-pass context)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8))
    contexts = tiny_pipe.encode_context([image, "Make it blue."])

    encoded = tiny_pipe.encode_image(tiny_pipe.processor.image_processor.resize_for_vae(image))
    pieces = [
        EncodedImage(latent_tokens=encoded.latent_tokens, latent_grid=encoded.latent_grid),
        EncodedImage(vit_patches=encoded.vit_patches, vit_grid=encoded.vit_grid),
    ]
    piecewise = LoomCache()
    for piece in pieces:
        blocks = ContextBlocks()
        tiny_pipe.add_image(blocks, piece)
        tiny_pipe.write_context(piecewise, blocks)
    image_only = piecewise.fork()
    tiny_pipe.append_text(piecewise, "Make it blue.")

    for one_pass, reference in ((contexts.cond, piecewise), (contexts.text_uncond, image_only)):
        assert one_pass.get_seq_length() == reference.get_seq_length()
        assert torch.equal(one_pass.next_position, reference.next_position)
        assert torch.equal(one_pass.token_ids, reference.token_ids)
        for ours, theirs in zip(one_pass.layers, reference.layers):
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)
    assert contexts.text_uncond.get_seq_length() < contexts.cond.get_seq_length()


@torch.no_grad()
def test_under_flash_attention_each_piece_of_a_context_takes_its_own_pass(tiny_pipe, monkeypatch):
    """Flash attention cannot mix a text turn and image blocks in one query: there the pieces are written one per
    forward pass, into the same context."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    one_pass = tiny_pipe.encode_context([image, "Make it blue."], image_free=False)
    passes = []
    forward = tiny_pipe.model.forward
    monkeypatch.setattr(tiny_pipe.model, "forward", lambda *a, **k: passes.append(k["input_ids"]) or forward(*a, **k))
    monkeypatch.setattr(type(tiny_pipe), "writes_one_piece_per_pass", property(lambda self: True))
    piecewise = tiny_pipe.encode_context([image, "Make it blue."], image_free=False)
    assert len(passes) == 3  # latent block, ViT block, text turn
    markers = (tiny_pipe.model.config.vision_start_token_id, tiny_pipe.model.config.vision_end_token_id)
    assert [ids[0, 0].item() for ids in passes[:2]] == [markers[0]] * 2 and passes[2][0, -1] != markers[1]
    for ours, theirs in zip(one_pass.cond.layers, piecewise.cond.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
    assert torch.equal(one_pass.cond.next_position, piecewise.cond.next_position)
    assert piecewise.text_uncond.get_seq_length() == one_pass.text_uncond.get_seq_length()


@torch.no_grad()
def test_pieces_share_a_pass_up_to_the_token_bound(tiny_pipe, monkeypatch):
    """Consecutive pieces share a forward pass while it stays within `CONTEXT_PASS_TOKENS`; a piece that does not fit
    starts the next pass, one larger than the bound goes alone; the context is the same either way."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    one_pass = tiny_pipe.encode_context([image, "Make it blue."], image_free=False)
    blocks = ContextBlocks()
    tiny_pipe.add_image(blocks, tiny_pipe.encode_image(tiny_pipe.processor.image_processor.resize_for_vae(image)))
    blocks.add_text(tiny_pipe.processor.text_block("Make it blue."))
    latent, vit, text = (len(piece.input_ids) for piece in blocks.pieces)
    monkeypatch.setattr(pipeline_loom, "CONTEXT_PASS_TOKENS", latent + vit)
    assert [len(group) for group in tiny_pipe.context_passes(blocks)] == [2, 1]
    monkeypatch.setattr(pipeline_loom, "CONTEXT_PASS_TOKENS", min(latent, vit, text) - 1)
    assert [len(group) for group in tiny_pipe.context_passes(blocks)] == [1, 1, 1]
    monkeypatch.setattr(pipeline_loom, "CONTEXT_PASS_TOKENS", latent + vit)
    bounded = tiny_pipe.encode_context([image, "Make it blue."], image_free=False)
    for ours, theirs in zip(one_pass.cond.layers, bounded.cond.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(one_pass.cond.next_position, bounded.cond.next_position)


@pytest.mark.parametrize(
    ("implementation", "one_per_pass"),
    [("sdpa", False), ("eager", False), ("flash_attention_2", True), ("kernels-community/vllm-flash-attn3", True)],
)
def test_every_flavour_of_flash_attention_writes_one_piece_per_pass(tiny_pipe, implementation, one_per_pass):
    """transformers' own test of a flash request decides, so a hub kernel of flash attention counts too."""
    text_config = tiny_pipe.model.config.get_text_config()
    before = text_config._attn_implementation
    text_config._attn_implementation = implementation
    try:
        assert tiny_pipe.writes_one_piece_per_pass is one_per_pass
    finally:
        text_config._attn_implementation = before
