"""loom-hf: Loom interleaved text-image generation on the BAGEL backbone, as transformers/diffusers classes."""

from .modeling import (
    LoomCache,
    LoomConfig,
    LoomForInterleavedGeneration,
    LoomImageProcessor,
    LoomModel,
    LoomProcessor,
    LoomTextConfig,
    LoomVisionConfig,
    TokenType,
)
from .pipelines import ImageSegment, LoomInterleavedPipeline, LoomPipelineOutput, TextSegment

__version__ = "0.1.0"

__all__ = [
    "LoomCache",
    "LoomConfig",
    "LoomTextConfig",
    "LoomVisionConfig",
    "LoomForInterleavedGeneration",
    "LoomModel",
    "LoomImageProcessor",
    "LoomProcessor",
    "TokenType",
    "LoomInterleavedPipeline",
    "LoomPipelineOutput",
    "TextSegment",
    "ImageSegment",
]
