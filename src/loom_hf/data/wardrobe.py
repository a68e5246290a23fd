"""
A dressed figure of the synthetic Loom data: [`Garment`]s, [`Outfit`]s and the figure wearing them.

Everything is laid out in a unit square: garments are painted in the figure's coordinates, so one garment drawing
serves both the dressed figure and the garment on its own.
"""

import random
from dataclasses import dataclass

from .painter import COLOURS, RGB, SKIN_TONES, WHITE, Painter, Pattern, darker, lighter, pick_other


@dataclass(frozen=True)
class Garment:
    """An item of an outfit: `slot` ("upper", "lower", "hat", "bag"), its `style`, `colour` and `pattern`."""

    slot: str
    style: str
    colour: str
    pattern: Pattern | None = None

    def describe(self) -> str:
        motif = {None: "", "stripes": "striped ", "dots": "dotted "}[self.pattern.kind if self.pattern else None]
        return f"{motif}{self.colour} {self.style}"


GARMENT_STYLES = {
    "upper": ("t-shirt", "long-sleeved top", "tank top"),
    "lower": ("trousers", "skirt", "shorts"),
    "hat": ("cap", "beanie", "sun hat", "top hat"),
    "bag": ("handbag", "shoulder bag"),
}
# No white: a garment on its own is shown on white.
GARMENT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "grey", "black")
UPPER_SHAPES = {
    "t-shirt": [
        (0.4, 0.22),
        (0.6, 0.22),
        (0.7, 0.27),
        (0.74, 0.38),
        (0.66, 0.4),
        (0.63, 0.34),
        (0.62, 0.55),
        (0.38, 0.55),
        (0.37, 0.34),
        (0.34, 0.4),
        (0.26, 0.38),
        (0.3, 0.27),
    ],
    "long-sleeved top": [
        (0.4, 0.22),
        (0.6, 0.22),
        (0.69, 0.26),
        (0.75, 0.53),
        (0.68, 0.54),
        (0.63, 0.34),
        (0.62, 0.55),
        (0.38, 0.55),
        (0.37, 0.34),
        (0.32, 0.54),
        (0.25, 0.53),
        (0.31, 0.26),
    ],
    "tank top": [
        (0.42, 0.22),
        (0.46, 0.22),
        (0.47, 0.27),
        (0.53, 0.27),
        (0.54, 0.22),
        (0.58, 0.22),
        (0.62, 0.32),
        (0.62, 0.55),
        (0.38, 0.55),
        (0.38, 0.32),
    ],
}
LOWER_SHAPES = {
    "trousers": [(0.38, 0.53), (0.62, 0.53), (0.63, 0.9), (0.52, 0.9), (0.5, 0.62), (0.48, 0.9), (0.37, 0.9)],
    "skirt": [(0.39, 0.53), (0.61, 0.53), (0.68, 0.73), (0.32, 0.73)],
    "shorts": [(0.38, 0.53), (0.62, 0.53), (0.63, 0.68), (0.51, 0.68), (0.5, 0.62), (0.49, 0.68), (0.37, 0.68)],
}


def random_garment(rng: random.Random, slot: str, avoid: str = "") -> Garment:
    """A garment for `slot` with a random style and colour (not `avoid`), patterned now and then."""
    style, colour = rng.choice(GARMENT_STYLES[slot]), pick_other(rng, GARMENT_COLOURS, avoid)
    pattern = None
    if slot in ("upper", "lower") and rng.random() < 0.35:
        pattern = Pattern(rng.choice(("stripes", "dots")), WHITE)
    return Garment(slot, style, colour, pattern)


def paint_garment(p: Painter, garment: Garment) -> None:
    """Paint `garment` where the figure wears it."""
    fill = COLOURS[garment.colour]
    if garment.slot == "upper":
        p.polygon(UPPER_SHAPES[garment.style], fill, pattern=garment.pattern)
    elif garment.slot == "lower":
        p.polygon(LOWER_SHAPES[garment.style], fill, pattern=garment.pattern)
    elif garment.style == "cap":
        p.chord(0.5, 0.105, 0.08, 180, 360, fill)
        p.rect(0.48, 0.095, 0.66, 0.12, darker(fill, 0.8), radius=0.01)
    elif garment.style == "beanie":
        p.chord(0.5, 0.11, 0.085, 180, 360, fill)
        p.rect(0.41, 0.09, 0.59, 0.125, darker(fill, 0.8), radius=0.01)
        p.circle(0.5, 0.025, 0.022, lighter(fill, 0.4))
    elif garment.style == "sun hat":
        p.chord(0.5, 0.1, 0.07, 180, 360, fill)
        p.ellipse(0.5, 0.1, 0.17, 0.025, fill)
    elif garment.style == "top hat":
        p.rect(0.44, 0.0, 0.56, 0.09, fill)
        p.rect(0.39, 0.085, 0.61, 0.11, fill)
    elif garment.style == "handbag":
        p.arc(0.72, 0.56, 0.05, 0.06, 180, 360, darker(fill, 0.7), 0.015)
        p.rect(0.64, 0.56, 0.8, 0.68, fill, radius=0.02)
    elif garment.style == "shoulder bag":
        p.line([(0.41, 0.23), (0.67, 0.58)], darker(fill, 0.7), 0.015)
        p.rect(0.6, 0.57, 0.76, 0.69, fill, radius=0.015)
        p.rect(0.6, 0.57, 0.76, 0.61, darker(fill, 0.8), radius=0.015)
    else:
        raise ValueError(f"garment style {garment.style!r} is not one of {GARMENT_STYLES[garment.slot]}")


@dataclass(frozen=True)
class Outfit:
    """A figure's look: skin, hair and the garments it wears (hat and bag optional)."""

    skin: RGB
    hair: str
    long_hair: bool
    upper: Garment
    lower: Garment
    hat: Garment | None = None
    bag: Garment | None = None

    def garments(self) -> list[Garment]:
        return [garment for garment in (self.upper, self.lower, self.hat, self.bag) if garment is not None]


def random_outfit(rng: random.Random, hat_probability: float = 0.5, bag_probability: float = 0.5) -> Outfit:
    upper = random_garment(rng, "upper")
    return Outfit(
        skin=rng.choice(SKIN_TONES),
        hair=rng.choice(("black", "brown", "yellow", "orange")),
        long_hair=rng.random() < 0.5,
        upper=upper,
        lower=random_garment(rng, "lower", avoid=upper.colour),
        hat=random_garment(rng, "hat") if rng.random() < hat_probability else None,
        bag=random_garment(rng, "bag") if rng.random() < bag_probability else None,
    )


def paint_figure(p: Painter, outfit: Outfit) -> None:
    """A standing figure wearing `outfit`, in the unit square of the current placement."""
    skin, hair = outfit.skin, COLOURS[outfit.hair]
    for u in (0.44, 0.56):
        p.line([(u, 0.55), (u, 0.9)], skin, 0.065)
    paint_garment(p, outfit.lower)
    for u in (0.43, 0.57):
        p.ellipse(u, 0.915, 0.055, 0.025, (50, 45, 45))
    for side in (1, -1):
        p.line([(0.5 + side * 0.19, 0.3), (0.5 + side * 0.215, 0.54)], skin, 0.05)
        p.circle(0.5 + side * 0.215, 0.56, 0.025, skin, outline=False)
    paint_garment(p, outfit.upper)
    if outfit.long_hair:
        for u in (0.405, 0.545):
            p.rect(u, 0.1, u + 0.05, 0.28, hair, radius=0.02)
    p.circle(0.5, 0.135, 0.075, skin)
    p.chord(0.5, 0.135, 0.08, 185, 355, hair)
    for u in (0.473, 0.527):
        p.circle(u, 0.15, 0.011, COLOURS["black"], outline=False)
    for garment in (outfit.hat, outfit.bag):
        if garment is not None:
            paint_garment(p, garment)
