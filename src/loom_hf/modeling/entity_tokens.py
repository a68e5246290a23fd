"""Loom's entity tokens: added to the tokenizer as special tokens and placed into spare embedding rows."""

import logging

import torch

from .modeling_loom import LoomForInterleavedGeneration
from .processing_loom import ENTITY_TOKENS, LoomProcessor

__all__ = ["add_entity_tokens", "register_entity_tokens", "fill_entity_rows"]

logger = logging.getLogger(__name__)


def register_entity_tokens(
    model: LoomForInterleavedGeneration, processor: LoomProcessor, tokens: tuple[str, ...] = ENTITY_TOKENS
) -> tuple[list[int], list[int], int]:
    """Add `tokens` (those missing) to the tokenizer and record all their ids in `model.config.entity_token_ids`,
    growing the embedding (`resize_token_embeddings`) only when no spare row is left. The weights are not touched:
    `fill_entity_rows` gives the new rows their values. Returns (ids of all `tokens`, ids of the new ones, number of
    trained rows: those of the tokens already known that the embedding held)."""
    for token in tokens:
        if not (token.startswith("<") and token.endswith(">")) or " " in token:
            raise ValueError(f"Entity tokens look like `<name>` without spaces; got {token!r}.")
    tokenizer = processor.tokenizer
    known_rows = len(tokenizer)
    new = [token for token in tokens if token not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in tokens]
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        logger.info("Growing the embedding from %d to %d rows for the entity tokens.", rows, len(tokenizer))
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.config.text_config.vocab_size = len(tokenizer)
    model.config.entity_token_ids = sorted(set(model.config.entity_token_ids) | set(ids))
    return ids, [tokenizer.convert_tokens_to_ids(token) for token in new], min(known_rows, rows)


@torch.no_grad()
def fill_entity_rows(matrix: torch.Tensor, new_ids: list[int], trained_rows: int) -> None:
    """Set the rows `new_ids` of an embedding or output matrix to the mean of its first `trained_rows` rows, in
    place."""
    matrix[new_ids] = matrix[:trained_rows].mean(dim=0).to(matrix.dtype)


def add_entity_tokens(
    model: LoomForInterleavedGeneration, processor: LoomProcessor, tokens: tuple[str, ...] = ENTITY_TOKENS
) -> list[int]:
    """Add `tokens` (those missing) to the tokenizer and give each one an embedding and an output row.

    BAGEL's embedding has spare rows beyond its tokenizer (152064 rows for 151665 tokens); new tokens take those rows,
    which start as the mean of the existing rows. The embedding grows only when no spare row is left; it never
    shrinks. Returns the ids of all `tokens`, which are also recorded in `model.config.entity_token_ids`.
    """
    ids, new_ids, trained_rows = register_entity_tokens(model, processor, tokens)
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        fill_entity_rows(matrix, new_ids, trained_rows)
    return ids
