"""
Procedures of the synthetic Loom data ([`PROCEDURES`]: soup, glass, pizza, cake): a dish or drink whose state changes
step by step.

Each builder returns (instruction, variant, parts). The instruction names every choice that shows in the step texts
(the soup and its ingredients, the drink, its extras and whether it is poured slowly, the toppings, the icing and
decorations), so the plan follows from the instruction; `rng` also varies what the steps leave unsaid (the bowl's
colour, where ingredients fall, the glass's shape).
"""

import math
import random
from collections.abc import Callable, Sequence

import numpy as np

from .painter import COLOURS, WHITE, Painter, Part, darker, leaf_points, lighter, scatter

SOUPS = {
    "golden broth": (232, 182, 72),
    "tomato soup": (205, 62, 40),
    "pea soup": (132, 176, 62),
    "cream soup": (240, 226, 190),
}


def _soup(rng: random.Random) -> tuple[str, str, list[Part]]:
    soup = rng.choice(tuple(SOUPS))
    bowl = rng.choice(("white", "blue", "red", "yellow"))
    inside = lighter(COLOURS[bowl], 0.6)
    spots = {
        name: scatter(rng, count, (0.5, 0.5), 0.26, spacing)
        for name, count, spacing in (
            ("peas", 10, 0.07),
            ("carrots", 6, 0.1),
            ("mushrooms", 4, 0.14),
            ("herbs", 16, 0.05),
            ("egg", 1, 0.0),
        )
    }
    noodle_rows = [0.38 + 0.06 * k + rng.uniform(-0.01, 0.01) for k in range(5)]

    def ingredient(name: str) -> Callable[[Painter], None]:
        def paint(p: Painter) -> None:
            if name == "noodles":
                for v in noodle_rows:
                    half = math.sqrt(max(0.0, 0.3**2 - (v - 0.5) ** 2)) - 0.03
                    wave = [
                        (0.5 - half + t * 2 * half, v + 0.015 * math.sin(t * 6 * math.pi))
                        for t in np.linspace(0, 1, 13)
                    ]
                    p.line(wave, (245, 215, 120), 0.022)
            for u, v in spots.get(name, ()):
                if name == "peas":
                    p.circle(u, v, 0.026, (90, 170, 50))
                elif name == "carrots":
                    p.circle(u, v, 0.04, COLOURS["orange"])
                    p.circle(u, v, 0.015, (250, 180, 90), outline=False)
                elif name == "mushrooms":
                    p.chord(u, v, 0.05, 180, 360, (225, 205, 170))
                    p.rect(u - 0.015, v, u + 0.015, v + 0.04, (225, 205, 170))
                elif name == "herbs":
                    p.circle(u, v, 0.012, (40, 110, 40), outline=False)
                elif name == "egg":
                    p.ellipse(u, v, 0.09, 0.07, WHITE)
                    p.circle(u, v, 0.04, COLOURS["yellow"])

        return paint

    captions = {
        "peas": "Add the green peas",
        "carrots": "Add the carrot slices",
        "noodles": "Add the noodles",
        "mushrooms": "Add the mushroom slices",
        "herbs": "Sprinkle chopped herbs on top",
        "egg": "Add half a boiled egg",
    }
    chosen = rng.sample(tuple(captions), rng.randint(1, 4))

    def bowl_part(p: Painter) -> None:
        p.circle(0.5, 0.5, 0.44, COLOURS[bowl])
        p.circle(0.5, 0.5, 0.35, inside, outline=darker(COLOURS[bowl], 0.7))

    def pour(p: Painter) -> None:
        p.circle(0.5, 0.5, 0.335, SOUPS[soup], outline=False)

    parts = [
        Part("bowl", "Put an empty bowl on the table", bowl_part),
        Part("soup", f"Pour in the {soup}", pour),
    ]
    parts += [Part(name, captions[name], ingredient(name)) for name in chosen]
    instruction = f"Make a bowl of {soup} with {_join(chosen)}"
    return instruction, soup, parts


DRINKS = {
    "orange juice": (246, 150, 30),
    "grape juice": (120, 40, 110),
    "lemonade": (250, 232, 120),
    "cola": (92, 46, 26),
    "milk": (253, 253, 248),
    "strawberry milkshake": (245, 160, 185),
}


def _glass(rng: random.Random) -> tuple[str, str, list[Part]]:
    drink = rng.choice(tuple(DRINKS))
    straw = rng.choice(("red", "green", "blue", "pink"))
    top_half, bottom_half, rim, base = rng.uniform(0.19, 0.23), rng.uniform(0.13, 0.16), 0.18, 0.92

    def half_width(v: float) -> float:
        return bottom_half + (top_half - bottom_half) * (base - v) / (base - rim)

    def liquid_to(level: float) -> Callable[[Painter], None]:
        def paint(p: Painter) -> None:
            inset, surface = 0.02, base - level * (base - rim - 0.03)
            p.polygon(
                [
                    (0.5 - half_width(surface) + inset, surface),
                    (0.5 + half_width(surface) - inset, surface),
                    (0.5 + bottom_half - inset, base - 0.02),
                    (0.5 - bottom_half + inset, base - 0.02),
                ],
                DRINKS[drink],
                outline=False,
            )

        return paint

    def glass(p: Painter) -> None:
        p.polygon(
            [(0.5 - top_half, rim), (0.5 + top_half, rim), (0.5 + bottom_half, base), (0.5 - bottom_half, base)],
            (236, 244, 250),
            outline=(120, 150, 175),
        )

    def ice(p: Painter) -> None:
        surface = base - (base - rim - 0.03)
        for du, dv in ((-0.08, 0.05), (0.03, 0.04), (-0.02, 0.13)):
            p.rect(
                0.5 + du, surface + dv, 0.5 + du + 0.08, surface + dv + 0.08, (225, 240, 250), outline=(150, 190, 215)
            )

    def straw_part(p: Painter) -> None:
        p.line([(0.56, 0.8), (0.64, 0.04)], COLOURS[straw], 0.035)

    def lemon(p: Painter) -> None:
        u = 0.5 - top_half + 0.02
        p.chord(u, rim + 0.01, 0.09, 180, 360, COLOURS["yellow"])
        p.chord(u, rim + 0.01, 0.065, 180, 360, (252, 238, 150), outline=False)

    slowly = rng.random() < 0.5
    fills = (
        ((1 / 3, "until the glass is a third full"), (2 / 3, "until it is two thirds full"))
        if slowly
        else ((0.5, "until the glass is half full"),)
    )
    parts = [Part("glass", "Place an empty glass on the table", glass)]
    parts += [
        Part("liquid", f"Pour {drink} {text}" if k == 0 else f"Keep pouring {text}", liquid_to(level))
        for k, (level, text) in enumerate(fills)
    ]
    parts.append(Part("liquid", "Fill the glass to the top", liquid_to(1.0)))
    extras = {
        "ice": Part("ice", "Drop in a few ice cubes", ice),
        f"a {straw} straw": Part("straw", f"Put in a {straw} straw", straw_part),
        "a slice of lemon": Part("lemon", "Add a slice of lemon on the rim", lemon),
    }
    chosen = [name for name in extras if rng.random() < 0.5][: 6 - len(parts)]
    parts += [extras[name] for name in chosen]
    instruction = f"{'Slowly pour' if slowly else 'Pour'} a glass of {drink}"
    instruction += f" with {_join(chosen)}" if chosen else ""
    return instruction, drink, parts


TOPPINGS = ("pepperoni", "olives", "basil", "mushrooms", "peppers")


def _pizza(rng: random.Random) -> tuple[str, str, list[Part]]:
    chosen = rng.sample(TOPPINGS, rng.randint(0, 3))
    cheese_outline = [
        (0.5 + r * math.cos(a), 0.5 + r * math.sin(a))
        for a, r in ((a, rng.uniform(0.3, 0.35)) for a in np.linspace(0, 2 * math.pi, 18, endpoint=False))
    ]
    spots = {name: scatter(rng, 6, (0.5, 0.5), 0.27, 0.1) for name in chosen}
    angles = {name: [rng.uniform(0, 2 * math.pi) for _ in range(6)] for name in chosen}

    def dough(p: Painter) -> None:
        p.circle(0.5, 0.5, 0.45, (225, 180, 110))

    def sauce(p: Painter) -> None:
        p.circle(0.5, 0.5, 0.38, (200, 50, 30), outline=False)

    def cheese(p: Painter) -> None:
        p.polygon(cheese_outline, (250, 222, 125), outline=(230, 190, 90))

    def topping(name: str) -> Callable[[Painter], None]:
        def paint(p: Painter) -> None:
            for (u, v), angle in zip(spots[name], angles[name]):
                if name == "pepperoni":
                    p.circle(u, v, 0.055, (170, 40, 35))
                elif name == "olives":
                    p.circle(u, v, 0.03, (30, 30, 30))
                    p.circle(u, v, 0.012, (250, 222, 125), outline=False)
                elif name == "basil":
                    p.polygon(leaf_points((u, v), 0.09, 0.045, angle), (50, 140, 50))
                elif name == "mushrooms":
                    p.chord(u, v, 0.045, 180, 360, (215, 195, 160))
                    p.rect(u - 0.013, v, u + 0.013, v + 0.035, (215, 195, 160))
                else:
                    p.arc(u, v, 0.04, 0.04, math.degrees(angle), math.degrees(angle) + 200, (60, 150, 50), 0.02)

        return paint

    captions = {
        "pepperoni": "Add the pepperoni slices",
        "olives": "Add the black olives",
        "basil": "Add fresh basil leaves",
        "mushrooms": "Add the mushroom slices",
        "peppers": "Add the green pepper rings",
    }
    parts = [
        Part("dough", "Roll out the dough into a circle", dough),
        Part("sauce", "Spread the tomato sauce", sauce),
        Part("cheese", "Sprinkle the cheese", cheese),
    ]
    parts += [Part(name, captions[name], topping(name)) for name in chosen]
    instruction = f"Make a pizza with {_join(chosen)}" if chosen else "Make a cheese pizza"
    return instruction, _join(chosen) or "cheese", parts


ICINGS = {
    "pink": (245, 170, 200),
    "white": (253, 250, 245),
    "chocolate": (100, 60, 35),
    "blue": (150, 195, 240),
    "yellow": (250, 225, 120),
    "green": (160, 215, 140),
}


def _cake(rng: random.Random) -> tuple[str, str, list[Part]]:
    icing = rng.choice(tuple(ICINGS))
    candles = rng.randint(2, 4)
    sprinkle_spots = [
        (rng.uniform(0.25, 0.75), rng.uniform(0.62, 0.8), rng.choice(("red", "blue", "yellow", "green")))
        for _ in range(10)
    ]
    drips = [0.22 + k * 0.08 for k in range(8)]
    drip_lengths = [rng.uniform(0.03, 0.08) for _ in drips]

    def sponge(p: Painter) -> None:
        p.ellipse(0.5, 0.88, 0.42, 0.05, (215, 215, 222))
        p.rect(0.2, 0.48, 0.8, 0.86, (215, 165, 100))

    def icing_part(p: Painter) -> None:
        bottom = [(u + 0.04, 0.56 + length) for u, length in zip(drips, drip_lengths)]
        p.polygon([(0.2, 0.46), (0.8, 0.46), (0.8, 0.56), *reversed(bottom), (0.2, 0.56)], ICINGS[icing])

    def candle_sticks(p: Painter) -> None:
        for k in range(candles):
            u = 0.5 + (k - (candles - 1) / 2) * 0.12
            p.rect(u - 0.018, 0.3, u + 0.018, 0.46, COLOURS[("red", "blue", "yellow", "green")[k % 4]])

    def flames(p: Painter) -> None:
        for k in range(candles):
            u = 0.5 + (k - (candles - 1) / 2) * 0.12
            p.ellipse(u, 0.25, 0.022, 0.04, COLOURS["orange"])
            p.ellipse(u, 0.26, 0.01, 0.02, COLOURS["yellow"], outline=False)

    def sprinkles(p: Painter) -> None:
        for u, v, name in sprinkle_spots:
            p.rect(u, v, u + 0.03, v + 0.012, COLOURS[name], outline=False)

    def cherry(p: Painter) -> None:
        p.line([(0.5, 0.4), (0.53, 0.32)], (80, 120, 40), 0.012)
        p.circle(0.5, 0.42, 0.04, (190, 20, 40))

    parts = [
        Part("sponge", "Put a sponge cake on a plate", sponge),
        Part("icing", f"Cover the top with {icing} icing", icing_part),
    ]
    decorations = [f"{icing} icing"]
    if rng.random() < 0.6:
        parts.append(Part("candles", f"Stick {candles} candles in the cake", candle_sticks))
        lit = rng.random() < 0.7
        if lit:
            parts.append(Part("flames", "Light the candles", flames))
        decorations.append(f"{candles} lit candles" if lit else f"{candles} candles")
    elif rng.random() < 0.7:
        parts.append(Part("cherry", "Put a cherry on top", cherry))
        decorations.append("a cherry")
    if len(parts) < 3 or rng.random() < 0.5:
        parts.append(Part("sprinkles", "Add colourful sprinkles on the side", sprinkles))
        decorations.append("sprinkles")
    return f"Decorate a cake with {_join(decorations)}", icing, parts


def _join(names: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


PROCEDURES: dict[str, Callable[[random.Random], tuple[str, str, list[Part]]]] = {
    "soup": _soup,
    "glass": _glass,
    "pizza": _pizza,
    "cake": _cake,
}
