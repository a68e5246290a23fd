"""Outputs of [`LoomInterleavedPipeline`]: an ordered list of text and image segments."""

from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

__all__ = ["TextSegment", "ImageSegment", "LoomPipelineOutput"]


@dataclass
class TextSegment:
    """Generated text: the decoded string and the generated token ids (without the start and end markers)."""

    text: str
    token_ids: list[int] = field(default_factory=list)


@dataclass
class ImageSegment:
    """A generated image, in the requested `output_type` (PIL image, `[H, W, 3]` array, `[3, H, W]` tensor or
    diffusers-layout latents)."""

    image: PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class LoomPipelineOutput(BaseOutput):
    """Output of [`LoomInterleavedPipeline`].

    Args:
        segments: everything the call generated, in order.
    """

    segments: list[TextSegment | ImageSegment]

    @property
    def images(self) -> list:
        return [segment.image for segment in self.segments if isinstance(segment, ImageSegment)]

    @property
    def texts(self) -> list[str]:
        return [segment.text for segment in self.segments if isinstance(segment, TextSegment)]
