"""LoRA adapters for Loom through PEFT: on the generation expert by default, optionally the understanding one."""

import os

from peft import LoraConfig, PeftModel

from ..modeling import LoomForInterleavedGeneration
from ..number_checks import check_integer, check_number

__all__ = ["LORA_TARGETS", "lora_config", "merge_lora_adapter"]

_PROJECTIONS = r"self_attn\.(q|k|v|o)_proj{suffix}|mlp{suffix}\.(gate|up|down)_proj"
LORA_TARGETS = ("generation", "understanding", "both")


def lora_config(
    model: LoomForInterleavedGeneration, *, rank: int = 16, alpha: float = 32, targets: str = "generation"
) -> LoraConfig:
    """A `LoraConfig` adapting the attention and MLP projections of the chosen expert(s).

    Trained fully next to the adapters: the small latent projections `vae2llm` / `llm2vae`, Loom's temporal frame
    table (when present), and the rows of the entity tokens (through PEFT's trainable token indices).
    """
    if targets not in LORA_TARGETS:
        raise ValueError(f"`targets` must be one of {LORA_TARGETS}; got {targets!r}.")
    check_integer("rank", rank, minimum=1)
    check_number("alpha", alpha, minimum=0.0, exclusive_minimum=True)
    experts = {"generation": ["_moe_gen"], "understanding": [""], "both": ["_moe_gen", ""]}[targets]
    patterns = "|".join(_PROJECTIONS.format(suffix=suffix) for suffix in experts)
    trainable_tokens = model.config.entity_token_ids
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=rf".*language_model\.layers\.\d+\.({patterns})",
        modules_to_save=["vae2llm", "llm2vae", *(["frame_embed"] if model.config.max_frames > 0 else [])],
        trainable_token_indices={"embed_tokens": trainable_tokens} if trainable_tokens else None,
    )


def merge_lora_adapter(
    model: LoomForInterleavedGeneration, adapter_dir: str | os.PathLike
) -> LoomForInterleavedGeneration:
    """`model` with the saved adapter folded into its weights (a plain model again, nothing left of PEFT)."""
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
