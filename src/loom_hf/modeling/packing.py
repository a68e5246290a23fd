"""BAGEL's sequence layout: token types, RoPE positions and attention-mask rules.

A Loom sequence interleaves text tokens with image *blocks*. A block is `<|vision_start|>`, the image's tokens (ViT
patches or VAE-latent patches) and `<|vision_end|>`. The rules, as in the official BAGEL code:

* RoPE is 1D over a logical counter: every text token advances it by one, a whole image block shares one position and
  advances it by one.
* Text is causal; the tokens of a block attend to each other bidirectionally and to everything before the block.
* A *noised* block (a training target) is invisible to every token outside it.
* Packed samples never attend across sample boundaries.

These rules are written as `transformers.masking_utils` mask functions, so one definition yields the SDPA, eager and
flex-attention masks.
"""

from enum import IntEnum

import torch
from transformers.masking_utils import and_masks, create_causal_mask, packed_sequence_mask_function

__all__ = [
    "TokenType",
    "image_block_ids",
    "rope_position_ids",
    "grid_position_ids",
    "noise_isolation_function",
    "noised_blocks_end_their_rows",
    "create_loom_attention_mask",
    "document_spans",
]


class TokenType(IntEnum):
    """Values of `mm_token_type_ids`: which embedding fills a position and which expert serves it."""

    TEXT = 0  # token embeddings, understanding expert (image markers included)
    VIT = 1  # ViT patch features, understanding expert
    LATENT = 2  # VAE latent patches, generation expert


def image_block_ids(input_ids: torch.LongTensor, vision_start_id: int, vision_end_id: int) -> torch.LongTensor:
    """Index of the image block each token belongs to (`-1` outside blocks), from the vision start/end markers.

    Blocks are numbered per row from 0 in order of appearance; the markers belong to their block.
    """
    is_start = input_ids == vision_start_id
    is_end = input_ids == vision_end_id
    inside = (is_start.cumsum(-1) - is_end.cumsum(-1) + is_end.long()) > 0
    block = is_start.cumsum(-1) - 1
    return torch.where(inside, block, torch.full_like(block, -1))


def rope_position_ids(
    block_ids: torch.LongTensor,
    start: int | torch.Tensor = 0,
    attention_mask: torch.Tensor | None = None,
) -> torch.LongTensor:
    """BAGEL RoPE positions: text advances the counter per token, a block shares one position.

    Args:
        block_ids: `[batch, length]` output of [`image_block_ids`].
        start: position of the first token (the cache's next position), an int or a `[batch]` tensor.
        attention_mask: optional `[batch, length]` padding mask; padding does not advance the counter.
    """
    previous = torch.nn.functional.pad(block_ids, (1, 0), value=-1)[:, :-1]
    advances = (block_ids < 0) | (block_ids != previous)
    if attention_mask is not None:
        advances = advances & attention_mask[:, -block_ids.shape[1] :].bool()
    start = torch.as_tensor(start, device=block_ids.device).reshape(-1, 1)
    return (advances.long().cumsum(-1) - 1).clamp(min=0) + start


def grid_position_ids(grid_hw: torch.LongTensor, max_side: int) -> torch.LongTensor:
    """Flattened 2D positions `row * max_side + col` of every patch of every image, images concatenated.

    Smaller images use the top-left corner of the `max_side`² grid (BAGEL's "extrapolate" rule).
    """
    grids = grid_hw.tolist()
    positions = {}
    for height, width in dict.fromkeys(map(tuple, grids)):
        if height > max_side or width > max_side:
            raise ValueError(f"A grid of {height}x{width} patches exceeds the position table side {max_side}.")
        rows = torch.arange(height, device=grid_hw.device)[:, None] * max_side
        positions[height, width] = (rows + torch.arange(width, device=grid_hw.device)).flatten()
    if not grids:
        return torch.zeros(0, dtype=torch.long, device=grid_hw.device)
    if len(positions) == 1:  # a batch of same-size images (every denoising step of a batch): one table, repeated
        return next(iter(positions.values())).repeat(len(grids))
    return torch.cat([positions[tuple(grid)] for grid in grids])


def noise_isolation_function(block_ids: torch.LongTensor, noised: torch.BoolTensor):
    """Mask function: a token of a noised block is visible only from inside the same block."""

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        same_block = block_ids[batch_idx, q_idx] == block_ids[batch_idx, kv_idx]
        return ~noised[batch_idx, kv_idx] | same_block

    return inner_mask


def noised_blocks_end_their_rows(
    block_ids: torch.LongTensor, noised: torch.BoolTensor, attention_mask: torch.Tensor | None = None
) -> bool:
    """Whether, in every row, no real token outside the first noised block comes after it.

    Then causal attention already hides the noised block from every other token (as for a training instance, whose
    target comes last, or the frame being denoised after its context), and the mask needs no noise-isolation
    function: transformers builds it by broadcasting instead of `vmap`, many times faster. Padding is ignored.
    """
    length = noised.shape[-1]
    has_noise = noised.any(-1, keepdim=True)
    first = torch.where(has_noise, noised.long().argmax(-1, keepdim=True), length)
    after = torch.arange(length, device=noised.device) >= first
    first_block = block_ids.gather(-1, first.clamp(max=length - 1))
    if attention_mask is not None and attention_mask.ndim == 2:
        after = after & attention_mask[:, -length:].bool()
    return not bool((after & (block_ids != first_block)).any())


def _left_pad(values: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    """Prepend `length` entries of `fill` (the cached tokens) along the sequence dimension."""
    return torch.nn.functional.pad(values, (length, 0), value=fill) if length else values


def create_loom_attention_mask(
    config,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past_key_values,
    block_ids: torch.LongTensor | None,
    noised: torch.BoolTensor | None = None,
    document_ids: torch.LongTensor | None = None,
):
    """The attention mask of one forward pass, for the configured attention implementation.

    Causal attention with: bidirectional image blocks (`block_ids >= 0`), noised blocks hidden from other tokens
    (`noised`) and packed-sample isolation (`document_ids`). Queries are aligned bottom-right against the cache, as
    flash-attention does for a query shorter than its keys. A ready 4D mask or `BlockMask` is returned unchanged.
    """
    if attention_mask is not None and attention_mask.ndim == 4:
        return attention_mask
    cached = past_key_values.get_seq_length() if past_key_values is not None else 0
    block_sequence_ids = and_function = None
    # One query token sees every earlier key under the causal rule already: blocks only matter for longer queries
    # (and skipping the check spares a decoded token a host synchronisation).
    if block_ids is not None and inputs_embeds.shape[1] > 1 and bool((block_ids >= 0).any()):
        # Given as `block_sequence_ids` (not a custom function), transformers builds it without vmap.
        block_sequence_ids = _left_pad(block_ids, cached, -1)
    and_functions = []
    if (
        noised is not None
        and bool(noised.any())
        and not noised_blocks_end_their_rows(block_ids, noised, attention_mask)
    ):
        full_blocks = _left_pad(block_ids, cached, -1)
        and_functions.append(noise_isolation_function(full_blocks, _left_pad(noised, cached, False)))
    if document_ids is not None:
        and_functions.append(packed_sequence_mask_function(_left_pad(document_ids, cached, -1)))
    if and_functions:
        and_function = and_masks(*and_functions)
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        past_key_values=past_key_values,
        position_ids=None,  # BAGEL positions repeat inside blocks: never let them be read as packed documents
        and_mask_function=and_function,
        block_sequence_ids=block_sequence_ids,
    )


def document_spans(document_ids: torch.LongTensor) -> list[tuple[int, int]]:
    """(start, end) of each packed sample of a single-row batch: the runs of equal `document_ids`."""
    ids = document_ids[0]
    starts = [0, *((ids[1:] != ids[:-1]).nonzero().flatten() + 1).tolist()]
    return list(zip(starts, [*starts[1:], ids.numel()]))
