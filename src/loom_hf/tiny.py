"""Tiny, randomly initialised Loom components built offline: for tests, smoke runs and benchmarks.

Nothing here is trained: images generated with these components are noise.
"""

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from .modeling import LoomConfig, LoomForInterleavedGeneration, LoomImageProcessor, LoomProcessor
from .modeling.entity_tokens import add_entity_tokens
from .pipelines import LoomInterleavedPipeline

__all__ = ["SPECIAL_TOKENS", "SMALL_TEXT_CONFIG", "tiny_tokenizer", "tiny_config", "tiny_vae", "tiny_pipeline"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
# The "small configuration" the benchmarks measure: a 4-layer MoT decoder of width 256 (about 8M parameters).
SMALL_TEXT_CONFIG = {
    "vocab_size": 432,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
_CORPUS = [
    "Draw a red house with a triangular roof and a brown door.",
    "Step 1: Draw the walls. Step 2: Add the roof. Step 3: Add a door and two windows.",
    "A red square above a blue circle. Make the square green.",
    "Describe the image. What is drawn here? A tree, a snowman, a car, a flower, a boat, a rocket.",
    "Apply the style of image 1 to image 2. Extract the upper garment of the model.",
]


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (Qwen2 style) trained on a few sentences, with BAGEL's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, image_size: int = 64, **overrides) -> LoomConfig:
    """A ~0.5M-parameter Loom configuration matching `tokenizer`, for images of at most `image_size` pixels."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    values = {
        "text_config": {
            "vocab_size": len(tokenizer) + 16,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 14,
            "max_num_patches_per_side": image_size // 14,
        },
        "max_latent_size": image_size // 16,
        "image_token_id": ids["<|image_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    values.update(overrides)
    return LoomConfig(**values)


def tiny_vae(*, block_out_channels: Sequence[int] = (32, 32, 32, 32), layers_per_block: int = 1) -> AutoencoderKL:
    """A FLUX-layout autoencoder (16 latent channels, 8× downsampling), by default with 32 channels per level (FLUX's
    own: `block_out_channels=(128, 256, 512, 512), layers_per_block=2`)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=16,
        norm_num_groups=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_pipeline(seed: int = 0, image_size: int = 64, **config_overrides) -> LoomInterleavedPipeline:
    """A complete, randomly initialised pipeline for images of at most `image_size` pixels (a multiple of 32);
    `config_overrides` go to [`tiny_config`]."""
    if image_size < 32 or image_size % 32:
        raise ValueError(f"`image_size` must be a multiple of 32; got {image_size}.")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vit_side = image_size - image_size % 14
    image_processor = LoomImageProcessor(
        vae_image_size=(image_size, image_size // 2, 16), vit_image_size=(vit_side, vit_side // 28 * 14, 14)
    )
    processor = LoomProcessor(image_processor, tokenizer)
    model = LoomForInterleavedGeneration(tiny_config(tokenizer, image_size, **config_overrides)).eval()
    # Random weights everywhere, including the heads BAGEL zero-initialises, so outputs depend on every input.
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    add_entity_tokens(model, processor)
    model.generation_config = GenerationConfig(
        bos_token_id=processor.bos_token_id,
        eos_token_id=processor.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LoomInterleavedPipeline(model, tiny_vae().eval(), FlowMatchEulerDiscreteScheduler(shift=3.0), processor)
