"""
Products and scenes of the synthetic Loom data, for composition.

A scene paints the whole canvas and says where a product stands in it.
"""

import random
from dataclasses import dataclass

from .painter import COLOURS, GRASS, RGB, WHITE, WOOD, Box, Painter, Pattern, darker, lighter

PRODUCTS = ("mug", "vase", "bottle", "ball", "lamp", "teddy bear")


def paint_product(p: Painter, product: str, colour: str) -> None:
    """A product standing on the bottom of the unit square."""
    fill = COLOURS[colour]
    if product == "mug":
        p.arc(0.74, 0.6, 0.14, 0.15, 270, 90, darker(fill, 0.8), 0.07)
        p.rect(0.2, 0.32, 0.72, 0.95, fill, radius=0.06)
        p.rect(0.2, 0.5, 0.72, 0.58, lighter(fill, 0.5), outline=False)
    elif product == "vase":
        p.polygon(
            [
                (0.4, 0.1),
                (0.6, 0.1),
                (0.58, 0.3),
                (0.78, 0.52),
                (0.72, 0.82),
                (0.62, 0.95),
                (0.38, 0.95),
                (0.28, 0.82),
                (0.22, 0.52),
                (0.42, 0.3),
            ],
            fill,
            pattern=Pattern("stripes", lighter(fill, 0.5)),
        )
    elif product == "bottle":
        p.rect(0.43, 0.12, 0.57, 0.42, fill)
        p.rect(0.41, 0.06, 0.59, 0.14, (60, 60, 65))
        p.rect(0.3, 0.38, 0.7, 0.95, fill, radius=0.07)
        p.rect(0.3, 0.56, 0.7, 0.76, (245, 240, 225))
    elif product == "ball":
        p.circle(0.5, 0.6, 0.35, WHITE, outline=darker(fill))
        for start in (0, 120, 240):
            p.pieslice(0.5, 0.6, 0.35, start, start + 60, fill)
        p.circle(0.5, 0.6, 0.06, WHITE, outline=darker(fill))
    elif product == "lamp":
        p.ellipse(0.5, 0.92, 0.2, 0.04, darker(fill, 0.7))
        p.line([(0.5, 0.9), (0.5, 0.4)], (90, 90, 95), 0.04)
        p.polygon([(0.32, 0.12), (0.68, 0.12), (0.82, 0.44), (0.18, 0.44)], fill)
    elif product == "teddy bear":
        p.circle(0.27, 0.18, 0.09, fill)
        p.circle(0.73, 0.18, 0.09, fill)
        p.ellipse(0.5, 0.72, 0.26, 0.24, fill)
        p.circle(0.5, 0.34, 0.22, fill)
        p.ellipse(0.5, 0.4, 0.09, 0.07, lighter(fill, 0.45))
        p.circle(0.5, 0.38, 0.025, COLOURS["black"], outline=False)
        for u in (0.42, 0.58):
            p.circle(u, 0.3, 0.022, COLOURS["black"], outline=False)
    else:
        raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")


@dataclass(frozen=True)
class Scene:
    """A backdrop for composition: its `kind`, a `tint` for its main surface and the `spot` a product stands on."""

    kind: str
    tint: RGB
    spot: Box


SCENES = ("living room", "beach", "park", "kitchen", "night garden")
WALL_TINTS: tuple[RGB, ...] = ((245, 230, 200), (215, 230, 240), (235, 215, 225), (220, 235, 210))


def random_scene(rng: random.Random, kind: str | None = None) -> Scene:
    """A scene of `kind` (random when None) with a random tint and product spot."""
    kind = kind or rng.choice(SCENES)
    # Where a product stands: the surface's height (canvas units), the product's size and its horizontal range.
    surface, side, (low, high) = {
        "living room": (0.61, 0.26, (0.45, 0.7)),
        "beach": (0.9, 0.32, (0.3, 0.7)),
        "park": (0.92, 0.32, (0.45, 0.75)),
        "kitchen": (0.61, 0.28, (0.3, 0.7)),
        "night garden": (0.93, 0.3, (0.3, 0.7)),
    }[kind]
    centre = rng.uniform(low, high)
    return Scene(kind, rng.choice(WALL_TINTS), (centre - side / 2, surface - side * 0.96, side))


def paint_scene(p: Painter, scene: Scene) -> None:
    """Paint `scene` over the whole unit square."""
    if scene.kind == "living room":
        p.rect(0, 0, 1, 0.72, scene.tint, outline=False)
        p.rect(0, 0.72, 1, 1, (190, 140, 90), outline=False)
        p.rect(0.12, 0.14, 0.38, 0.36, (150, 200, 150), outline=(110, 75, 40))
        p.rect(0.3, 0.6, 0.86, 0.65, WOOD)
        for u in (0.34, 0.82):
            p.line([(u, 0.65), (u, 0.9)], WOOD, 0.03)
    elif scene.kind == "beach":
        p.rect(0, 0, 1, 0.46, (170, 215, 245), outline=False)
        p.rect(0, 0.46, 1, 0.62, (60, 130, 200), outline=False)
        p.rect(0, 0.62, 1, 1, (240, 215, 150), outline=False)
        p.circle(0.83, 0.15, 0.08, COLOURS["yellow"])
    elif scene.kind == "park":
        p.rect(0, 0, 1, 0.62, (185, 225, 250), outline=False)
        p.rect(0, 0.62, 1, 1, GRASS, outline=False)
        p.rect(0.1, 0.36, 0.17, 0.7, WOOD)
        p.blob([(0.135, 0.28, 0.13), (0.05, 0.36, 0.09), (0.22, 0.36, 0.09)], (50, 140, 60))
        p.blob([(0.62, 0.14, 0.06), (0.7, 0.12, 0.07), (0.78, 0.15, 0.05)], WHITE)
    elif scene.kind == "kitchen":
        p.rect(0, 0, 1, 0.6, (240, 240, 235), outline=False)
        for k in range(1, 10):
            p.line([(k / 10, 0), (k / 10, 0.6)], (205, 205, 200), 0)
            p.line([(0, k / 16), (1, k / 16)], (205, 205, 200), 0)
        p.rect(0, 0.66, 1, 1, scene.tint, outline=False)
        p.rect(-0.02, 0.6, 1.02, 0.66, (150, 150, 155))
        for u in (0.25, 0.75):
            p.line([(u - 0.06, 0.74), (u + 0.06, 0.74)], (120, 120, 125), 0.02)
    elif scene.kind == "night garden":
        p.rect(0, 0, 1, 0.72, (25, 35, 80), outline=False)
        p.rect(0, 0.72, 1, 1, (40, 90, 50), outline=False)
        p.circle(0.8, 0.16, 0.07, (250, 240, 190))
        for u, v in ((0.1, 0.1), (0.3, 0.22), (0.5, 0.08), (0.2, 0.45), (0.62, 0.3), (0.9, 0.42)):
            p.circle(u, v, 0.012, WHITE, outline=False)
    else:
        raise ValueError(f"scene.kind must be one of {SCENES}, got {scene.kind!r}")
