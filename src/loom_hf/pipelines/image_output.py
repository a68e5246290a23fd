"""Decoded pixels to output images, converted to 8 bits as the official BAGEL code converts them."""

import numpy as np
import PIL.Image
from diffusers.image_processor import VaeImageProcessor

__all__ = ["LoomVaeImageProcessor"]


class LoomVaeImageProcessor(VaeImageProcessor):
    """diffusers' `VaeImageProcessor` whose PIL images truncate to 8 bits (`uint8(x · 255)`) instead of rounding.

    BAGEL's `decode_image` casts `(x · 0.5 + 0.5).clamp(0, 1) · 255` to `uint8`, which truncates; rounding would put
    about half the pixels one level above the official image. The `"np"` and `"pt"` outputs stay unquantized floats.
    """

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
        """`[N, H, W, C]` (or `[H, W, C]`) floats in [0, 1] → PIL images (grey ones for one channel)."""
        images = (images[None] if images.ndim == 3 else images) * 255
        return [
            PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in images.astype(np.uint8)
        ]
