"""BAGEL's layout conventions: patch order, RoPE positions and the attention-mask rules."""

import pytest
import torch
from PIL import Image
from transformers.masking_utils import create_causal_mask

from loom_hf import LoomImageProcessor, LoomTextConfig
from loom_hf.modeling.cache_loom import LoomCache
from loom_hf.modeling.latents import pack_latents, unpack_latents
from loom_hf.modeling.packing import (
    create_loom_attention_mask,
    grid_position_ids,
    image_block_ids,
    noise_isolation_function,
    noised_blocks_end_their_rows,
    rope_position_ids,
)

START, END, PAD = 90, 91, 92


def reference_mask(split_lens: list[int], modes: list[str]) -> torch.Tensor:
    """BAGEL's mask of one sample, written from its rule: causal across splits, full inside `full`/`noise` splits,
    and no token outside a `noise` split may see it."""
    length = sum(split_lens)
    allowed = torch.zeros(length, length, dtype=torch.bool)
    start = 0
    for size, mode in zip(split_lens, modes):
        rows = slice(start, start + size)
        allowed[rows, :start] = True
        block = torch.ones(size, size, dtype=torch.bool)
        allowed[rows, rows] = block.tril() if mode == "causal" else block
        start += size
    start = 0
    for size, mode in zip(split_lens, modes):
        if mode == "noise":
            inside = allowed[start : start + size, start : start + size].clone()
            allowed[:, start : start + size] = False
            allowed[start : start + size, start : start + size] = inside
        start += size
    return allowed


def sdpa_config() -> LoomTextConfig:
    config = LoomTextConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1)
    config._attn_implementation = "sdpa"
    return config


def mask_of(config, length, cache=None, **kwargs) -> torch.Tensor:
    embeds = torch.zeros(1, length, 8)
    mask = create_loom_attention_mask(config, embeds, None, cache, **kwargs)
    if mask.dtype != torch.bool:  # eager: additive float mask
        mask = mask == 0
    return mask[0, 0]


def test_vit_patch_order_matches_convolution():
    """Flattened (patch_row, patch_col, channel) patches through the linear embedding equal a stride-p convolution
    whose kernel is stored in BAGEL's linear layout."""
    torch.manual_seed(0)
    processor = LoomImageProcessor(vae_image_size=(64, 32, 16), vit_image_size=(56, 28, 14))
    image = Image.fromarray(torch.randint(0, 255, (28, 42, 3), dtype=torch.uint8).numpy())
    patches, grid = processor.vit_patches(image)
    assert grid == (2, 3) and patches.shape == (6, 14 * 14 * 3)

    conv = torch.nn.Conv2d(3, 5, kernel_size=14, stride=14)
    linear = torch.nn.Linear(14 * 14 * 3, 5)
    linear.weight.data = conv.weight.data.permute(0, 2, 3, 1).reshape(5, -1)
    linear.bias.data = conv.bias.data
    pixels = processor.normalize_pixels(image).unsqueeze(0)
    expected = conv(pixels).flatten(2).transpose(1, 2)[0]  # row-major over the patch grid
    torch.testing.assert_close(linear(patches), expected, atol=1e-5, rtol=1e-5)


def test_latent_packing_matches_official_layout():
    torch.manual_seed(0)
    latents = torch.randn(1, 16, 6, 4)
    tokens = pack_latents(latents)
    # Official patchify: latent.reshape(c, h, p, w, p) -> einsum("chpwq->hwpqc") -> (h·w, p·p·c).
    official = torch.einsum("chpwq->hwpqc", latents[0].reshape(16, 3, 2, 2, 2)).reshape(6, 64)
    torch.testing.assert_close(tokens, official, rtol=0, atol=0)
    # The design document's inverse.
    inverse = tokens.view(3, 2, 2, 2, 16).permute(4, 0, 2, 1, 3).reshape(1, 16, 6, 4)
    torch.testing.assert_close(unpack_latents(tokens, 3, 2), inverse, rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(tokens, 3, 2), latents, rtol=0, atol=0)


def test_grid_positions_use_top_left_of_the_table():
    positions = grid_position_ids(torch.tensor([[2, 3], [1, 2]]), max_side=70)
    assert positions.tolist() == [0, 1, 2, 70, 71, 72, 0, 1]
    with pytest.raises(ValueError, match="exceeds the position table"):
        grid_position_ids(torch.tensor([[5, 1]]), max_side=4)


def mixed_context() -> torch.LongTensor:
    """Text (4) | ViT block (start, 3 patches, end) | VAE block (start, 2 latents, end) | text (3)."""
    return torch.tensor([[1, 2, 3, 4, START, PAD, PAD, PAD, END, START, PAD, PAD, END, 5, 6, 7]])


def test_block_ids_and_rope_positions_of_mixed_context():
    ids = mixed_context()
    blocks = image_block_ids(ids, START, END)
    assert blocks.tolist() == [[-1, -1, -1, -1, 0, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1]]
    # One position per text token; one shared position per image block.
    assert rope_position_ids(blocks).tolist() == [[0, 1, 2, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 6, 7, 8]]
    assert rope_position_ids(blocks, start=10)[0, 0].item() == 10
    # Left padding does not advance the counter.
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    attention = torch.cat([torch.zeros(1, 2), torch.ones(1, 16)], dim=1)
    positions = rope_position_ids(image_block_ids(padded, START, END), attention_mask=attention)
    assert positions[0, 2:].tolist() == rope_position_ids(blocks)[0].tolist()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_mask_of_mixed_text_vit_vae_context(implementation):
    config = sdpa_config()
    config._attn_implementation = implementation
    ids = mixed_context()
    mask = mask_of(config, ids.shape[1], block_ids=image_block_ids(ids, START, END))
    expected = reference_mask([4, 5, 4, 3], ["causal", "full", "full", "causal"])
    assert torch.equal(mask, expected)


def test_noised_blocks_are_hidden_and_packed_samples_isolated():
    """Training layout: sample 1 = text | noised latents | clean latents | text; sample 2 = text | ViT | text."""
    config = sdpa_config()
    splits_1, modes_1 = [3, 4, 4, 2], ["causal", "noise", "full", "causal"]
    splits_2, modes_2 = [2, 3, 2], ["causal", "full", "causal"]
    blocks = torch.tensor([[-1] * 3 + [0] * 4 + [1] * 4 + [-1] * 2 + [-1] * 2 + [2] * 3 + [-1] * 2])
    noised = torch.zeros_like(blocks, dtype=torch.bool)
    noised[0, 3:7] = True
    documents = torch.tensor([[0] * 13 + [1] * 7])
    mask = mask_of(config, 20, block_ids=blocks, noised=noised, document_ids=documents)
    expected = torch.zeros(20, 20, dtype=torch.bool)
    expected[:13, :13] = reference_mask(splits_1, modes_1)
    expected[13:, 13:] = reference_mask(splits_2, modes_2)
    assert torch.equal(mask, expected)
    # The clean copy after the noised block and the final text never see the noised latents.
    assert not mask[7:13, 3:7].any()


def test_target_last_rows_skip_the_noise_function_with_the_same_mask():
    """A noised block that ends its row (padding aside) is hidden by causality alone: the fast broadcast mask equals
    the one built with the noise-isolation function; a token after the block needs the function."""
    config = sdpa_config()
    blocks = torch.tensor([[-1, -1, 0, 0, 0, -1, 1, 1, 1, 1, -1, -1], [-1, 0, 0, -1, -1, -1, 1, 1, 1, -1, -1, -1]])
    noised = (blocks == 1) & torch.tensor([[True] * 12, [True] * 12])
    padding = torch.tensor([[1] * 10 + [0] * 2, [1] * 9 + [0] * 3])
    ends = blocks.clone()
    ends[0, 10:], ends[1, 9:] = 1, 1
    noised_ends = ends == 1
    assert noised_blocks_end_their_rows(ends, noised_ends)
    assert not noised_blocks_end_their_rows(blocks, noised)  # the text after block 1 must be kept from it
    assert noised_blocks_end_their_rows(blocks, noised, padding)  # ... unless that text is padding
    assert not noised_blocks_end_their_rows(blocks, blocks >= 0)  # two noised blocks: the second sees the first
    embeds = torch.zeros(2, 12, 8)
    fast = create_loom_attention_mask(config, embeds, padding, None, blocks, noised)
    general = create_causal_mask(
        config=config,
        inputs_embeds=embeds,
        attention_mask=padding,
        past_key_values=None,
        and_mask_function=noise_isolation_function(blocks, noised),
        block_sequence_ids=blocks,
    )
    real = padding.bool()
    for row in range(2):  # padded queries are never read
        assert torch.equal(fast[row, 0][real[row]], general[row, 0][real[row]])


def test_text_appended_to_cache_is_bottom_right_aligned():
    """A text turn of Q tokens after C cached ones: query i sees keys 0..C+i (flash-attention's alignment)."""
    config = sdpa_config()
    cache = LoomCache()
    cached, query = 6, 4
    cache.update(torch.zeros(1, 1, cached, 4), torch.zeros(1, 1, cached, 4), layer_idx=0)
    mask = mask_of(config, query, cache=cache, block_ids=torch.full((1, query), -1))
    assert mask.shape == (query, cached + query)
    expected = torch.arange(cached + query)[None, :] <= (cached + torch.arange(query))[:, None]
    assert torch.equal(mask, expected)


def test_image_block_appended_to_cache_attends_bidirectionally():
    config = sdpa_config()
    cache = LoomCache()
    cache.update(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4), layer_idx=0)
    ids = torch.tensor([[START, PAD, PAD, END]])
    mask = mask_of(config, 4, cache=cache, block_ids=image_block_ids(ids, START, END))
    assert mask.all()
