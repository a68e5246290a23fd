"""Attention of packed training rows sample by sample: an attention function for transformers' `AttentionInterface`.

A packed row holds several training samples that never attend to each other. Under `sdpa` or `eager` attention one
attention per sample (as BAGEL's SDPA path does) costs the sum of the squared sample lengths instead of the square
of the row length. [`LoomTextModel`] gives such a row a [`DocumentMasks`] as its attention mask, and
[`LoomAttention`] then calls [`per_document_attention`], which `modeling_loom` registers on its own attention
interface as `PER_DOCUMENT_ATTENTION` (model-local, so `set_attn_implementation` never offers it for other masks).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

__all__ = ["PER_DOCUMENT_ATTENTION", "DocumentMasks", "per_document_attention"]

PER_DOCUMENT_ATTENTION = "loom_per_document"


@dataclass
class DocumentMasks:
    """The attention mask of a packed single-row batch: each sample's `(start, end)` span and that sample's own
    mask for the configured implementation (`None` where it needs none)."""

    spans: list[tuple[int, int]]
    masks: list[torch.Tensor | None]


def per_document_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: DocumentMasks,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Each sample's attention on its own with the module's configured implementation, the outputs concatenated
    along the sequence; no attention weights (they would be one matrix per sample)."""
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)
    pieces = [
        attention(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask, **kwargs)[0]
        for (start, end), mask in zip(attention_mask.spans, attention_mask.masks)
    ]
    return torch.cat(pieces, dim=1), None
