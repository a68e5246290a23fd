"""diffusers side of Loom: the interleaved pipeline, guidance and outputs."""

from .guidance import guided_velocity
from .pipeline_loom import GuidanceContexts, LoomInterleavedPipeline
from .pipeline_output import ImageSegment, LoomPipelineOutput, TextSegment

__all__ = [
    "GuidanceContexts",
    "ImageSegment",
    "LoomInterleavedPipeline",
    "LoomPipelineOutput",
    "TextSegment",
    "guided_velocity",
]
