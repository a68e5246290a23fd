"""Procedural training data for Loom: drawing tutorials, procedures, composition, decomposition, style transfer and
text-only plans."""

from .masks import mask_to_rle, rle_to_mask
from .painter import BACKGROUNDS, COLOURS
from .procedures import PROCEDURES
from .styles import STYLES
from .subjects import SUBJECTS
from .synth import (
    DEFAULT_MIX,
    FAMILIES,
    HELD_OUT_PAIRS,
    PLAN_PAIRS,
    TRAIN_PAIRS,
    add_synth_arguments,
    build_dataset,
    run_synth,
    synthesize,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "PROCEDURES",
    "STYLES",
    "SUBJECTS",
    "mask_to_rle",
    "rle_to_mask",
    "DEFAULT_MIX",
    "FAMILIES",
    "HELD_OUT_PAIRS",
    "PLAN_PAIRS",
    "TRAIN_PAIRS",
    "add_synth_arguments",
    "build_dataset",
    "run_synth",
    "synthesize",
]
