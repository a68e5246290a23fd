"""Processor of Loom: the Qwen2 tokenizer with BAGEL's block conventions plus [`LoomImageProcessor`]."""

import torch
from PIL import Image
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_loom import LoomImageProcessor
from .packing import TokenType, image_block_ids, rope_position_ids

__all__ = ["LoomProcessor", "ENTITY_TOKENS"]

# Loom's entity tokens: handles for the subjects of compositional, decomposition and style prompts.
ENTITY_TOKENS = (
    "<model>",
    "<garment>",
    "<upper>",
    "<lower>",
    "<bag>",
    "<shoes>",
    "<hat>",
    "<product>",
    "<object>",
    "<style>",
    "<scene>",
)


class LoomProcessor(ProcessorMixin):
    r"""
    Turns interleaved text and images into model inputs, following BAGEL's conventions: every text turn is
    `<|im_start|>` + tokens + `<|im_end|>` (no chat template, no roles); every image is a block
    `<|vision_start|>` + image tokens + `<|vision_end|>`.

    Calling the processor builds an *understanding* prompt (images through the ViT only) that
    `LoomForInterleavedGeneration.generate()` answers; the pipeline uses the block-level helpers.

    Args:
        image_processor ([`LoomImageProcessor`]): the VAE/ViT image paths.
        tokenizer ([`Qwen2Tokenizer`]): a tokenizer holding BAGEL's special tokens.
    """

    bos_token = "<|im_start|>"
    eos_token = "<|im_end|>"
    vision_start_token = "<|vision_start|>"
    vision_end_token = "<|vision_end|>"
    image_token = "<|image_pad|>"

    def __init__(self, image_processor: LoomImageProcessor | None = None, tokenizer=None, chat_template=None, **kwargs):
        if image_processor is None:
            image_processor = LoomImageProcessor()
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        missing = [
            token
            for token in (self.bos_token, self.eos_token, self.vision_start_token, self.vision_end_token)
            if token not in tokenizer.get_vocab()
        ]
        if missing:
            raise ValueError(f"`tokenizer` lacks BAGEL's special tokens {missing}.")
        if self.image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens(
                {"extra_special_tokens": [self.image_token]}, replace_extra_special_tokens=False
            )

    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    @property
    def bos_token_id(self) -> int:
        return self.token_id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self.token_id(self.eos_token)

    @property
    def vision_start_token_id(self) -> int:
        return self.token_id(self.vision_start_token)

    @property
    def vision_end_token_id(self) -> int:
        return self.token_id(self.vision_end_token)

    @property
    def image_token_id(self) -> int:
        return self.token_id(self.image_token)

    def text_block(self, text: str) -> list[int]:
        """`<|im_start|>` + tokens of `text` + `<|im_end|>`: one text turn."""
        return [self.bos_token_id, *self.tokenizer.encode(text, add_special_tokens=False), self.eos_token_id]

    def image_block(self, num_tokens: int, token_type: TokenType) -> tuple[list[int], list[int]]:
        """Ids and token types of an image block of `num_tokens` ViT or latent tokens."""
        ids = [self.vision_start_token_id, *[self.image_token_id] * num_tokens, self.vision_end_token_id]
        types = [TokenType.TEXT, *[int(token_type)] * num_tokens, TokenType.TEXT]
        return ids, types

    def decode_generated(self, token_ids: list[int]) -> str:
        """Text of generated ids, cut where the model opens a new turn (as the official inferencer does)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        return text.split(self.eos_token)[0].split(self.bos_token)[0]

    def __call__(
        self,
        inputs: list[str | Image.Image] | None = None,
        text: str | None = None,
        images: Image.Image | list[Image.Image] | None = None,
        add_generation_prompt: bool = True,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Understanding prompt for `generate()`.

        Pass either `inputs`, an ordered list of strings and PIL images, or `images` and `text` (images first, as in
        the official `chat`). With `add_generation_prompt` the prompt ends with `<|im_start|>`, the token the answer
        starts from.
        """
        if inputs is None:
            images = [] if images is None else images if isinstance(images, (list, tuple)) else [images]
            for image in images:
                if not isinstance(image, Image.Image):
                    hint = " (open the file with PIL.Image.open first)" if isinstance(image, str) else ""
                    raise TypeError(f"`images` must be PIL images; got {type(image).__name__} {image!r:.80}{hint}.")
            if text is not None and not isinstance(text, str):
                raise TypeError(f"`text` must be a string; got {type(text).__name__}.")
            inputs = [*images, *([text] if text is not None else [])]
        elif text is not None or images is not None:
            raise ValueError("Pass either `inputs` or `text`/`images`, not both.")
        if not inputs:
            raise ValueError("`inputs` is empty: give at least one string or PIL image.")
        ids: list[int] = []
        types: list[int] = []
        patches, grids = [], []
        for item in inputs:
            if isinstance(item, str):
                block = self.text_block(item)
                ids += block
                types += [TokenType.TEXT] * len(block)
            elif isinstance(item, Image.Image):
                image_patches, grid = self.image_processor.vit_patches(self.image_processor.resize_for_vae(item))
                block_ids, block_types = self.image_block(image_patches.shape[0], TokenType.VIT)
                ids += block_ids
                types += block_types
                patches.append(image_patches)
                grids.append(grid)
            else:
                raise TypeError(f"`inputs` items must be str or PIL.Image.Image; got {type(item).__name__}.")
        if add_generation_prompt:
            ids.append(self.bos_token_id)
            types.append(TokenType.TEXT)
        input_ids = torch.tensor([ids], dtype=torch.long)
        blocks = image_block_ids(input_ids, self.vision_start_token_id, self.vision_end_token_id)
        data = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": rope_position_ids(blocks),
            "mm_token_type_ids": torch.tensor([types], dtype=torch.long),
        }
        if patches:
            data["pixel_values"] = torch.cat(patches)
            data["image_grid_hw"] = torch.tensor(grids, dtype=torch.long)
        return BatchFeature(data, tensor_type=return_tensors)
