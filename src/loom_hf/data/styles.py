"""
Image styles of the synthetic Loom data ([`STYLES`]), for style transfer.

A style redraws a finished picture, applied to the pixels of its object (given as a mask).
"""

import random
from dataclasses import dataclass

import numpy as np
import PIL.Image

from .painter import COLOURS, RGB

STYLES = ("stripes", "dots", "outline", "palette", "mosaic")
STYLE_COLOURS = ("red", "blue", "green", "purple", "orange", "black")
PALETTES: dict[str, tuple[RGB, ...]] = {
    "sunset": ((70, 20, 90), (180, 40, 90), (240, 120, 50), (255, 215, 100)),
    "ocean": ((10, 30, 80), (20, 90, 160), (60, 170, 200), (190, 235, 240)),
    "forest": ((25, 50, 25), (50, 110, 45), (120, 170, 70), (210, 230, 150)),
    "candy": ((120, 40, 120), (230, 90, 160), (250, 170, 200), (255, 230, 120)),
}


@dataclass(frozen=True)
class Style:
    """A style and its setting: a named colour (stripes, dots, outline) or a palette name (palette)."""

    name: str
    colour: str = ""
    palette: str = ""

    def describe(self) -> str:
        return {
            "stripes": f"{self.colour} diagonal stripes",
            "dots": f"{self.colour} polka dots",
            "outline": f"a {self.colour} line drawing",
            "palette": f"the {self.palette} palette",
            "mosaic": "a mosaic of square tiles",
        }[self.name]


def random_style(rng: random.Random, name: str | None = None) -> Style:
    name = name or rng.choice(STYLES)
    if name in ("stripes", "dots", "outline"):
        return Style(name, colour=rng.choice(STYLE_COLOURS))
    if name == "palette":
        return Style(name, palette=rng.choice(tuple(PALETTES)))
    if name == "mosaic":
        return Style(name)
    raise ValueError(f"style name must be one of {STYLES}, got {name!r}")


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx), filled with False."""
    moved = np.zeros_like(mask)
    h, w = mask.shape
    moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return moved


def apply_style(image: PIL.Image.Image, mask: np.ndarray, background: RGB, style: Style) -> PIL.Image.Image:
    """Redraw the object of `image` (its pixels: `mask`) in `style`; the plain `background` is kept."""
    pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    size = pixels.shape[0]
    y, x = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
    out = pixels.copy()
    if style.name == "stripes":
        period = max(4, size // 10)
        out[mask & ((x + y) % period < period / 2)] = COLOURS[style.colour]
    elif style.name == "dots":
        spacing = max(5, size // 8)
        offset = (y // spacing % 2) * (spacing // 2)
        near = ((x + offset) % spacing - spacing / 2) ** 2 + (y % spacing - spacing / 2) ** 2 < (0.3 * spacing) ** 2
        out[mask & near] = COLOURS[style.colour]
    elif style.name == "outline":
        step_x = np.abs(np.diff(pixels, axis=1, append=pixels[:, -1:])).max(axis=2) > 40
        step_y = np.abs(np.diff(pixels, axis=0, append=pixels[-1:])).max(axis=2) > 40
        inner = mask & _shift(mask, 1, 0) & _shift(mask, -1, 0) & _shift(mask, 0, 1) & _shift(mask, 0, -1)
        out[:] = background
        out[mask & (step_x | step_y | ~inner)] = COLOURS[style.colour]
    elif style.name == "palette":
        brightness = pixels @ np.array([0.299, 0.587, 0.114])
        thresholds = np.quantile(brightness[mask], [0.25, 0.5, 0.75]) if mask.any() else [0, 0, 0]
        levels = np.searchsorted(thresholds, brightness)
        out[mask] = np.array(PALETTES[style.palette])[levels[mask]]
    elif style.name == "mosaic":
        tile = max(2, size // 16)
        small = image.convert("RGB").resize((image.width // tile, image.height // tile), PIL.Image.Resampling.BOX)
        out = np.asarray(small.resize(image.size, PIL.Image.Resampling.NEAREST)).astype(np.int16)
    else:
        raise ValueError(f"style.name must be one of {STYLES}, got {style.name!r}")
    return PIL.Image.fromarray(out.astype(np.uint8))
