"""loom-hf: Loom interleaved text-image generation on the BAGEL backbone, as transformers/diffusers classes."""

from importlib.resources import files

from .modeling import (
    LoomCache,
    LoomConfig,
    LoomForInterleavedGeneration,
    LoomImageProcessor,
    LoomModel,
    LoomProcessor,
    LoomStaticCache,
    LoomTextConfig,
    LoomVisionConfig,
    TokenType,
)
from .pipelines import ImageSegment, LoomInterleavedPipeline, LoomPipelineOutput, TextSegment

__version__ = "0.1.0"

# The small Loom trained on the package's procedural tutorials, shipped inside the package (a pipeline folder).
DEFAULT_MODEL = str(files(__name__) / "default_model")

__all__ = [
    "DEFAULT_MODEL",
    "LoomCache",
    "LoomStaticCache",
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
