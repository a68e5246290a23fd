"""transformers side of Loom: configuration, network, cache, processors and BAGEL conversion."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForMultimodalLM,
    AutoProcessor,
)

from .cache_loom import LoomCache, LoomStaticCache
from .configuration_loom import LoomConfig, LoomTextConfig, LoomVisionConfig
from .image_processing_loom import LoomImageProcessor
from .modeling_loom import (
    LoomForInterleavedGeneration,
    LoomModel,
    LoomOutput,
    LoomPreTrainedModel,
    LoomTextModel,
    LoomVisionModel,
)
from .packing import TokenType
from .processing_loom import LoomProcessor

AutoConfig.register("loom_text", LoomTextConfig, exist_ok=True)
AutoConfig.register("loom_vision", LoomVisionConfig, exist_ok=True)
AutoConfig.register("loom", LoomConfig, exist_ok=True)
AutoModel.register(LoomTextConfig, LoomTextModel, exist_ok=True)
AutoModel.register(LoomVisionConfig, LoomVisionModel, exist_ok=True)
AutoModel.register(LoomConfig, LoomForInterleavedGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(LoomConfig, LoomForInterleavedGeneration, exist_ok=True)
AutoImageProcessor.register(LoomConfig, image_processor_classes={"pil": LoomImageProcessor}, exist_ok=True)
AutoProcessor.register(LoomConfig, LoomProcessor, exist_ok=True)

__all__ = [
    "LoomCache",
    "LoomStaticCache",
    "LoomConfig",
    "LoomTextConfig",
    "LoomVisionConfig",
    "LoomImageProcessor",
    "LoomProcessor",
    "LoomPreTrainedModel",
    "LoomTextModel",
    "LoomVisionModel",
    "LoomModel",
    "LoomForInterleavedGeneration",
    "LoomOutput",
    "TokenType",
]
