"""Loom's entity tokens: added to the tokenizer as special tokens and placed into spare embedding rows."""

import logging

import torch

from .modeling_loom import LoomForInterleavedGeneration
from .processing_loom import ENTITY_TOKENS, LoomProcessor

__all__ = ["add_entity_tokens"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def add_entity_tokens(
    model: LoomForInterleavedGeneration, processor: LoomProcessor, tokens: tuple[str, ...] = ENTITY_TOKENS
) -> list[int]:
    """Add `tokens` (those missing) to the tokenizer and give each one an embedding and an output row.

    BAGEL's embedding has spare rows beyond its tokenizer (152064 rows for 151665 tokens); new tokens take those rows,
    which start as the mean of the existing rows. The embedding grows only when no spare row is left; it never
    shrinks. Returns the ids of all `tokens`, which are also recorded in `model.config.entity_token_ids`.
    """
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
    new_ids = [tokenizer.convert_tokens_to_ids(token) for token in new]
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        matrix[new_ids] = matrix[: min(known_rows, rows)].mean(dim=0).to(matrix.dtype)
    model.config.entity_token_ids = sorted(set(model.config.entity_token_ids) | set(ids))
    return ids
