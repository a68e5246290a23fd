"""Image preprocessing of BAGEL/Loom: one aspect-preserving resize rule, a VAE path and a ViT (patch) path."""

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

__all__ = ["LoomImageProcessor", "to_rgb"]

ImageSize = tuple[int, int, int]  # (max side, min side, stride)
# Full-scale value of the high-depth grayscale modes, which PIL's own conversion clips to 0-255 instead of rescaling:
# 16-bit integers (also in the 32-bit "I" mode, the one PIL opens 16-bit PNG and TIFF files into) and floats in [0, 1].
HIGH_DEPTH_FULL_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def _decoded(image: Image.Image) -> Image.Image:
    """`image` with its pixels loaded; an empty, truncated or undecodable image raises a `ValueError` naming it."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image; got {type(image).__name__}.")
    source = f" {image.filename!r}" if getattr(image, "filename", "") else ""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"The image{source} is empty ({image.width}x{image.height} pixels).")
    try:
        image.load()
    except (OSError, SyntaxError) as error:  # PIL's decoders raise these for cut or damaged files
        raise ValueError(f"The image{source} cannot be decoded (truncated or damaged file?): {error}") from error
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """A high-depth grayscale image rescaled to 8 bits ("L"), so a mid-grey stays mid-grey; other modes unchanged."""
    full_scale = HIGH_DEPTH_FULL_SCALE.get(image.mode)
    if full_scale is None:
        return image
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("The image holds NaN or infinite pixel values.")
    return Image.fromarray(np.clip(np.round(values * (255 / full_scale)), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; transparent pixels (RGBA, palette or grayscale with alpha) are composited on white, and
    16-bit, 32-bit and float grayscale images are rescaled to 8 bits (see `HIGH_DEPTH_FULL_SCALE`), not clipped."""
    image = _to_8bit(_decoded(image))
    if image.mode in ("RGBA", "LA", "PA") or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _check_size(name: str, size) -> ImageSize:
    values = tuple(int(v) for v in size)
    if len(values) != 3 or min(values) < 1 or values[1] > values[0] or values[0] % values[2] or values[1] % values[2]:
        raise ValueError(
            f"`{name}` must be (max_side, min_side, stride) with 1 <= min_side <= max_side, both multiples of stride; "
            f"got {size}."
        )
    return values


class LoomImageProcessor(BaseImageProcessor):
    r"""
    Prepares images the way the official BAGEL inferencer does.

    Every image is first resized with the VAE rule (`vae_image_size`); that image feeds the VAE, and is resized again
    with the ViT rule (`vit_image_size`) for the ViT. The rule keeps the aspect ratio: shrink so the longest side is
    at most `max`, grow so the shortest side is at least `min`, round each side to a multiple of `stride`, then cap
    the pixel count at `max_pixels`; bicubic resampling; pixels normalised to [-1, 1].

    Args:
        vae_image_size (`tuple[int, int, int]`, defaults to `(1024, 512, 16)`): (max, min, stride) of the VAE path.
        vit_image_size (`tuple[int, int, int]`, defaults to `(980, 224, 14)`): (max, min, stride) of the ViT path; the
            stride is the ViT patch size.
        max_pixels (`int`, defaults to `14 * 14 * 9 * 1024`): pixel cap of either path.
    """

    model_input_names = ["pixel_values", "image_grid_hw"]

    def __init__(
        self,
        vae_image_size: ImageSize = (1024, 512, 16),
        vit_image_size: ImageSize = (980, 224, 14),
        max_pixels: int = 14 * 14 * 9 * 1024,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vae_image_size = list(_check_size("vae_image_size", vae_image_size))
        self.vit_image_size = list(_check_size("vit_image_size", vit_image_size))
        self.max_pixels = max_pixels

    @property
    def patch_size(self) -> int:
        return self.vit_image_size[2]

    def target_size(self, width: int, height: int, size: ImageSize) -> tuple[int, int]:
        """(width, height) that BAGEL's rule gives an image of `width`×`height` under `size`."""
        max_side, min_side, stride = size

        def scaled(w: float, h: float, scale: float) -> tuple[int, int]:
            return max(stride, round(round(w * scale) / stride) * stride), max(
                stride, round(round(h * scale) / stride) * stride
            )

        scale = max(min(max_side / max(width, height), 1.0), min_side / min(width, height))
        width, height = scaled(width, height, scale)
        if width * height > self.max_pixels:
            width, height = scaled(width, height, self.max_pixels / (width * height))
        if max(width, height) > max_side:
            width, height = scaled(width, height, max_side / max(width, height))
        return width, height

    def resize_for_vae(self, image: Image.Image) -> Image.Image:
        """RGB image resized with the VAE rule: the size a generated image takes when it follows this input."""
        image = to_rgb(image)
        return image.resize(self.target_size(*image.size, self.vae_image_size), Image.BICUBIC)

    @staticmethod
    def normalize_pixels(image: Image.Image) -> torch.Tensor:
        """`[3, H, W]` float tensor in [-1, 1]."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - 0.5) / 0.5

    def vae_pixel_values(self, image: Image.Image) -> torch.Tensor:
        """`[1, 3, H, W]` VAE input of an image already passed through [`resize_for_vae`]."""
        return self.normalize_pixels(image).unsqueeze(0)

    def vit_patches(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Flattened `(patch_row, patch_col, channel)` ViT patches of an image, and its patch grid (rows, cols)."""
        image = image.resize(self.target_size(*image.size, self.vit_image_size), Image.BICUBIC)
        pixels = self.normalize_pixels(image)
        patch = self.patch_size
        channels, height, width = pixels.shape
        grid = (height // patch, width // patch)
        patches = pixels.reshape(channels, grid[0], patch, grid[1], patch).permute(1, 3, 2, 4, 0)
        return patches.reshape(grid[0] * grid[1], patch * patch * channels), grid

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """ViT inputs of one or more images: packed `pixel_values` and per-image `image_grid_hw`."""
        images = images if isinstance(images, (list, tuple)) else [images]
        patches, grids = [], []
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"`images` must be PIL images; got {type(image).__name__}.")
            image_patches, grid = self.vit_patches(self.resize_for_vae(image))
            patches.append(image_patches)
            grids.append(grid)
        return BatchFeature(
            {"pixel_values": torch.cat(patches), "image_grid_hw": torch.tensor(grids, dtype=torch.long)},
            tensor_type=return_tensors,
        )
