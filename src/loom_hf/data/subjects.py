"""
Tutorial subjects of the synthetic Loom data ([`SUBJECTS`]: house, tree, snowman, car, flower, face, boat, rocket,
fish, cat).

Each builder lays its subject out in the unit square and returns 3-6 [`Part`]s; the main colour is the one the
instruction names. The plan (which parts, in which order, with which captions) is fixed per subject, with the main
colour substituted: a secondary colour is the first of its list that differs from the main one ([`first_other`]).
`rng` only varies the geometry (sizes, positions, small shape variations), so two drawings of the same subject and
colour share their step texts but not their pictures.
"""

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .painter import (
    COLOURS,
    GLASS_BLUE,
    GRASS,
    SKIN_TONES,
    WHITE,
    WOOD,
    Painter,
    Part,
    darker,
    leaf_points,
    scatter,
)


def first_other(colour: str, *choices: str) -> str:
    """The first of `choices` other than the main `colour`: a secondary colour that never clashes with it."""
    return next(choice for choice in choices if choice != colour)


def _house(rng: random.Random, colour: str) -> list[Part]:
    wall_left, wall_top, apex = rng.uniform(0.16, 0.22), rng.uniform(0.44, 0.52), rng.uniform(0.08, 0.15)
    wall_right, eave = 1 - wall_left, 0.07
    roof = first_other(colour, "red", "grey")
    door_left = 0.43 + rng.uniform(-0.02, 0.02)
    door_right = door_left + 0.14
    chimney_left, chimney_top = rng.uniform(0.6, 0.66), apex + 0.03

    def roof_y(u: float) -> float:
        return apex + (u - 0.5) / (wall_right + eave - 0.5) * (wall_top - apex)

    def walls(p: Painter) -> None:
        p.rect(wall_left, wall_top, wall_right, 0.95, COLOURS[colour])

    def roof_part(p: Painter) -> None:
        p.polygon([(wall_left - eave, wall_top), (wall_right + eave, wall_top), (0.5, apex)], COLOURS[roof])

    def door_part(p: Painter) -> None:
        p.rect(door_left, 0.67, door_right, 0.95, COLOURS["brown"])
        p.circle(door_right - 0.03, 0.82, 0.013, COLOURS["yellow"], outline=False)

    def windows(p: Painter) -> None:
        for centre in ((wall_left + door_left) / 2, (door_right + wall_right) / 2):
            top = wall_top + 0.08
            p.rect(centre - 0.06, top, centre + 0.06, top + 0.12, GLASS_BLUE, outline=darker(COLOURS[colour], 0.4))
            p.line([(centre, top), (centre, top + 0.12)], WHITE, 0.015)
            p.line([(centre - 0.06, top + 0.06), (centre + 0.06, top + 0.06)], WHITE, 0.015)

    def chimney(p: Painter) -> None:
        right = chimney_left + 0.09
        p.polygon(
            [
                (chimney_left, chimney_top),
                (right, chimney_top),
                (right, roof_y(right)),
                (chimney_left, roof_y(chimney_left)),
            ],
            (170, 72, 52),
        )

    def smoke(p: Painter) -> None:
        middle = chimney_left + 0.045
        p.blob(
            [
                (middle + 0.05, chimney_top - 0.03, 0.03),
                (middle + 0.12, chimney_top - 0.06, 0.04),
                (middle + 0.2, chimney_top - 0.07, 0.045),
            ],
            (200, 200, 205),
        )

    return [
        Part("walls", f"Draw the square {colour} walls of the house", walls),
        Part("roof", f"Add a {roof} triangular roof", roof_part),
        Part("door", "Add a brown door", door_part),
        Part("windows", "Add two square windows", windows),
        Part("chimney", "Add a brick chimney on the roof", chimney),
        Part("smoke", "Add a puff of smoke from the chimney", smoke),
    ]


FRUIT_NAMES = {"red": "red apples", "yellow": "yellow lemons"}


def _tree(rng: random.Random, colour: str) -> list[Part]:
    trunk_half, crown_v, crown_r = rng.uniform(0.05, 0.07), rng.uniform(0.3, 0.35), rng.uniform(0.24, 0.28)
    fruit = first_other(colour, *FRUIT_NAMES)
    crown_circles = [
        (0.5, crown_v, crown_r),
        (0.5 - crown_r * 0.65, crown_v + crown_r * 0.3, crown_r * 0.72),
        (0.5 + crown_r * 0.65, crown_v + crown_r * 0.3, crown_r * 0.72),
        (0.5, crown_v - crown_r * 0.45, crown_r * 0.75),
    ]
    fruit_spots = scatter(rng, rng.randint(4, 6), (0.5, crown_v + 0.04), crown_r * 0.85, 0.09)

    def trunk(p: Painter) -> None:
        p.polygon(
            [(0.5 - trunk_half, 0.45), (0.5 + trunk_half, 0.45), (0.53 + trunk_half, 0.95), (0.47 - trunk_half, 0.95)],
            WOOD,
        )

    def crown(p: Painter) -> None:
        p.blob(crown_circles, COLOURS[colour])

    def fruits(p: Painter) -> None:
        for u, v in fruit_spots:
            p.circle(u, v, 0.045, COLOURS[fruit])

    def grass(p: Painter) -> None:
        blades = [(u / 20, 0.88 if u % 2 else 0.92) for u in range(21)]
        p.polygon([(0.0, 1.0), *blades, (1.0, 1.0)], GRASS)

    return [
        Part("trunk", "Draw a brown trunk", trunk),
        Part("leaves", f"Add a fluffy {colour} crown of leaves", crown),
        Part("fruit", f"Hang some {FRUIT_NAMES[fruit]} in the crown", fruits),
        Part("grass", "Add green grass at the bottom", grass),
    ]


def _snowman(rng: random.Random, colour: str) -> list[Part]:
    snow, edge = (250, 250, 250), (150, 160, 180)
    lean = rng.uniform(-0.02, 0.02)

    def body(p: Painter) -> None:
        p.circle(0.5, 0.76, 0.2, snow, outline=edge)
        p.circle(0.5 + lean, 0.48, 0.15, snow, outline=edge)

    def head(p: Painter) -> None:
        p.circle(0.5 + lean * 2, 0.25, 0.11, snow, outline=edge)

    def face(p: Painter) -> None:
        u = 0.5 + lean * 2
        p.circle(u - 0.04, 0.23, 0.016, COLOURS["black"], outline=False)
        p.circle(u + 0.04, 0.23, 0.016, COLOURS["black"], outline=False)
        p.polygon([(u, 0.26), (u + 0.12, 0.28), (u, 0.295)], COLOURS["orange"])

    def scarf(p: Painter) -> None:
        u = 0.5 + lean * 1.5
        p.rect(u - 0.12, 0.33, u + 0.12, 0.38, COLOURS[colour], radius=0.02)
        p.rect(u + 0.04, 0.35, u + 0.1, 0.5, COLOURS[colour], radius=0.015)

    def top_hat(p: Painter) -> None:
        u = 0.5 + lean * 2
        p.rect(u - 0.08, 0.03, u + 0.08, 0.15, COLOURS["black"])
        p.rect(u - 0.13, 0.14, u + 0.13, 0.165, COLOURS["black"])

    def arms(p: Painter) -> None:
        u = 0.5 + lean
        p.line([(u - 0.14, 0.46), (u - 0.34, 0.33), (u - 0.38, 0.28)], WOOD, 0.022)
        p.line([(u + 0.14, 0.46), (u + 0.34, 0.33), (u + 0.38, 0.36)], WOOD, 0.022)

    return [
        Part("body", "Draw two stacked snowballs for the body", body),
        Part("head", "Add a smaller snowball for the head", head),
        Part("face", "Add coal eyes and a carrot nose", face),
        Part("scarf", f"Wrap a {colour} scarf around the neck", scarf),
        Part("hat", "Put a black top hat on the head", top_hat),
        Part("arms", "Add two stick arms", arms),
    ]


def _car(rng: random.Random, colour: str) -> list[Part]:
    cabin_front, cabin_back = rng.uniform(0.64, 0.7), rng.uniform(0.3, 0.36)
    body_top = rng.uniform(0.47, 0.52)

    def body(p: Painter) -> None:
        p.rect(0.05, body_top, 0.95, 0.76, COLOURS[colour], radius=0.07)

    def cabin(p: Painter) -> None:
        p.attached(
            [(0.2, body_top + 0.01), (cabin_back, 0.27), (cabin_front, 0.27), (0.8, body_top + 0.01)], COLOURS[colour]
        )

    def wheels(p: Painter) -> None:
        for u in (0.26, 0.74):
            p.circle(u, 0.76, 0.11, (45, 45, 50))
            p.circle(u, 0.76, 0.045, (195, 195, 200))

    def windows(p: Painter) -> None:
        glass = dict(fill=GLASS_BLUE, outline=darker(COLOURS[colour], 0.4))
        p.polygon(
            [(0.27, body_top - 0.01), (cabin_back + 0.03, 0.31), (0.485, 0.31), (0.485, body_top - 0.01)], **glass
        )
        p.polygon(
            [(0.515, body_top - 0.01), (0.515, 0.31), (cabin_front - 0.03, 0.31), (0.73, body_top - 0.01)], **glass
        )

    def lights(p: Painter) -> None:
        p.rect(0.88, body_top + 0.06, 0.95, body_top + 0.11, COLOURS["yellow"], radius=0.02)
        p.rect(0.05, body_top + 0.06, 0.1, body_top + 0.11, COLOURS["red"], radius=0.02)

    return [
        Part("body", f"Draw the long {colour} body of the car", body),
        Part("cabin", "Add the cabin on top", cabin),
        Part("wheels", "Add two black wheels", wheels),
        Part("windows", "Add the side windows", windows),
        Part("lights", "Add a yellow headlight and a red tail light", lights),
    ]


def _flower(rng: random.Random, colour: str) -> list[Part]:
    count, bend, centre_v = rng.choice((5, 6, 8)), rng.uniform(-0.04, 0.04), rng.uniform(0.27, 0.33)
    middle = first_other(colour, "yellow", "brown")
    stem_colour = (60, 150, 60)

    def stem(p: Painter) -> None:
        p.line([(0.5, centre_v), (0.5 + bend, 0.65), (0.5, 0.95)], stem_colour, 0.035)

    def leaves(p: Painter) -> None:
        p.polygon(leaf_points((0.5 + bend, 0.66), 0.22, 0.1, math.radians(200)), (80, 170, 70))
        p.polygon(leaf_points((0.5 + bend / 2, 0.75), 0.22, 0.1, math.radians(-20)), (80, 170, 70))

    def petals(p: Painter) -> None:
        for k in range(count):
            angle = 2 * math.pi * k / count
            p.circle(0.5 + 0.14 * math.cos(angle), centre_v + 0.14 * math.sin(angle), 0.095, COLOURS[colour])

    def centre(p: Painter) -> None:
        p.circle(0.5, centre_v, 0.085, COLOURS[middle])

    def pot(p: Painter) -> None:
        terracotta = (195, 100, 60)
        p.polygon([(0.34, 0.78), (0.66, 0.78), (0.61, 0.98), (0.39, 0.98)], terracotta)
        p.rect(0.31, 0.75, 0.69, 0.81, terracotta)

    return [
        Part("stem", "Draw a green stem", stem),
        Part("leaves", "Add two leaves to the stem", leaves),
        Part("petals", f"Add a ring of {colour} petals at the top", petals),
        Part("centre", f"Add a {middle} centre", centre),
        Part("pot", "Put the flower in a clay pot", pot),
    ]


def _face(rng: random.Random, colour: str) -> list[Part]:
    skin = rng.choice(SKIN_TONES)
    style = rng.choice(("short", "curly", "spiky"))
    look = rng.uniform(-0.012, 0.012)

    def head(p: Painter) -> None:
        p.circle(0.5, 0.55, 0.36, skin)

    def hair(p: Painter) -> None:
        if style == "short":
            p.chord(0.5, 0.55, 0.38, 192, 348, COLOURS[colour])
        elif style == "curly":
            p.blob(
                [
                    (0.5 + 0.3 * math.cos(a), 0.5 + 0.3 * math.sin(a), 0.1)
                    for a in np.linspace(math.pi * 1.08, math.pi * 1.92, 7)
                ],
                COLOURS[colour],
            )
        else:
            radii = [0.47 if k % 2 else 0.36 for k in range(11)]
            angles = np.linspace(math.pi * 1.06, math.pi * 1.94, 11)
            p.polygon([(0.5 + r * math.cos(a), 0.55 + r * math.sin(a)) for r, a in zip(radii, angles)], COLOURS[colour])

    def eyes(p: Painter) -> None:
        for u in (0.37, 0.63):
            p.ellipse(u, 0.56, 0.06, 0.07, WHITE)
            p.circle(u + look, 0.57, 0.03, COLOURS["black"], outline=False)

    def nose(p: Painter) -> None:
        p.arc(0.5, 0.65, 0.035, 0.03, 0, 180, darker(skin, 0.7), 0.02)

    def mouth(p: Painter) -> None:
        p.arc(0.5, 0.7, 0.13, 0.08, 20, 160, (150, 40, 40), 0.025)

    return [
        Part("head", "Draw a round face", head),
        Part("hair", f"Add {colour} hair on top", hair),
        Part("eyes", "Add two eyes", eyes),
        Part("nose", "Add a small nose", nose),
        Part("mouth", "Add a smiling mouth", mouth),
    ]


def _boat(rng: random.Random, colour: str) -> list[Part]:
    flag = first_other(colour, "red", "yellow")
    deck = rng.uniform(0.6, 0.64)

    def hull(p: Painter) -> None:
        p.polygon([(0.06, deck), (0.94, deck), (0.78, 0.82), (0.22, 0.82)], COLOURS[colour])

    def mast(p: Painter) -> None:
        p.line([(0.5, deck), (0.5, 0.1)], WOOD, 0.03)

    def main_sail(p: Painter) -> None:
        p.polygon([(0.53, 0.12), (0.53, deck - 0.04), (0.86, deck - 0.04)], COLOURS["white"])

    def flag_part(p: Painter) -> None:
        p.polygon([(0.5, 0.04), (0.5, 0.12), (0.38, 0.08)], COLOURS[flag])

    def waves(p: Painter) -> None:
        crest = [(k / 20, 0.8 + 0.025 * math.sin(k / 20 * 4 * math.pi)) for k in range(21)]
        p.polygon([(0.0, 1.0), *crest, (1.0, 1.0)], (70, 140, 220))

    return [
        Part("hull", f"Draw a {colour} hull", hull),
        Part("mast", "Add a tall mast", mast),
        Part("sail", "Add a white triangular sail", main_sail),
        Part("flag", f"Add a small {flag} flag on top", flag_part),
        Part("waves", "Add blue waves under the boat", waves),
    ]


def _rocket(rng: random.Random, colour: str) -> list[Part]:
    half, nose_height, fin_reach = rng.uniform(0.12, 0.14), rng.uniform(0.22, 0.27), rng.uniform(0.13, 0.17)
    left, right = 0.5 - half, 0.5 + half

    def body(p: Painter) -> None:
        p.rect(left, 0.3, right, 0.8, COLOURS[colour], radius=0.05)

    def nose(p: Painter) -> None:
        curve = [(0.5 - half * math.cos(t), 0.31 - nose_height * math.sin(t)) for t in np.linspace(0, math.pi / 2, 7)]
        p.attached([*curve, *[(1 - u, v) for u, v in reversed(curve[:-1])]], COLOURS["white"])

    def fins(p: Painter) -> None:
        p.attached([(left, 0.6), (left - fin_reach, 0.84), (left, 0.8)], COLOURS["white"])
        p.attached([(right, 0.6), (right + fin_reach, 0.84), (right, 0.8)], COLOURS["white"])

    def window(p: Painter) -> None:
        p.circle(0.5, 0.45, 0.07, GLASS_BLUE, outline=(170, 175, 185))

    return [
        Part("body", f"Draw the tall {colour} body of the rocket", body),
        Part("nose cone", "Add a pointed white nose cone", nose),
        Part("fins", "Add two white fins at the bottom", fins),
        Part("window", "Add a round window", window),
    ]


def _fish(rng: random.Random, colour: str) -> list[Part]:
    rx, ry, spread = rng.uniform(0.28, 0.31), rng.uniform(0.17, 0.21), rng.uniform(1.0, 1.2)
    cu = 0.46

    def body(p: Painter) -> None:
        p.ellipse(cu, 0.5, rx, ry, COLOURS[colour])

    def tail(p: Painter) -> None:
        p.attached(
            [(cu + rx - 0.02, 0.5), (0.96, 0.5 - ry * spread), (0.96, 0.5 + ry * spread)], darker(COLOURS[colour], 0.85)
        )

    def eye(p: Painter) -> None:
        p.circle(cu - rx * 0.6, 0.46, 0.05, WHITE)
        p.circle(cu - rx * 0.64, 0.46, 0.024, COLOURS["black"], outline=False)

    return [
        Part("body", f"Draw an oval {colour} body", body),
        Part("tail", "Add a tail fin", tail),
        Part("eye", "Add a round eye", eye),
    ]


def _cat(rng: random.Random, colour: str) -> list[Part]:
    whisker = WHITE if colour == "black" else COLOURS["black"]
    fur = COLOURS[colour]
    ear_tip, eye_gap = rng.uniform(0.1, 0.17), rng.uniform(0.1, 0.13)

    def head(p: Painter) -> None:
        p.circle(0.5, 0.58, 0.3, fur)

    def ears(p: Painter) -> None:
        for side in (1, -1):
            outer = [(0.5 + side * (u - 0.5), v) for u, v in ((0.23, 0.47), (0.26, ear_tip), (0.47, 0.3))]
            inner = [(0.5 + side * (u - 0.5), v) for u, v in ((0.28, 0.38), (0.29, ear_tip + 0.09), (0.4, 0.32))]
            p.attached(outer, fur)
            p.polygon(inner, (245, 170, 185), outline=False)

    def eyes(p: Painter) -> None:
        for u in (0.5 - eye_gap, 0.5 + eye_gap):
            p.ellipse(u, 0.55, 0.065, 0.075, COLOURS["green"])
            p.ellipse(u, 0.55, 0.02, 0.06, COLOURS["black"], outline=False)

    def nose(p: Painter) -> None:
        p.polygon([(0.46, 0.65), (0.54, 0.65), (0.5, 0.69)], (240, 130, 150))
        p.arc(0.46, 0.7, 0.04, 0.03, 0, 180, whisker, 0.015)
        p.arc(0.54, 0.7, 0.04, 0.03, 0, 180, whisker, 0.015)

    def whiskers(p: Painter) -> None:
        for side in (1, -1):
            for dv in (-0.04, 0.0, 0.04):
                p.line([(0.5 + side * 0.12, 0.69 + dv / 3), (0.5 + side * 0.36, 0.67 + dv)], whisker, 0.01)

    return [
        Part("head", f"Draw a round {colour} head", head),
        Part("ears", "Add two pointy ears", ears),
        Part("eyes", "Add two green eyes", eyes),
        Part("nose", "Add a pink nose and a mouth", nose),
        Part("whiskers", "Add whiskers", whiskers),
    ]


@dataclass(frozen=True)
class Subject:
    """A drawable tutorial subject: its `colours`, the `phrase` template naming it and its part `build`er."""

    name: str
    colours: tuple[str, ...]
    phrase: str
    build: Callable[[random.Random, str], list[Part]]

    def describe(self, colour: str) -> str:
        """E.g. "a red house", "an orange car"."""
        return re.sub(r"\ba (?=[aeiou])", "an ", self.phrase.format(colour=colour))


SUBJECTS: dict[str, Subject] = {
    subject.name: subject
    for subject in (
        Subject("house", ("red", "orange", "yellow", "green", "blue", "purple", "pink"), "a {colour} house", _house),
        Subject("tree", ("green", "orange", "yellow", "red", "pink", "purple"), "a tree with {colour} leaves", _tree),
        Subject(
            "snowman",
            ("red", "blue", "green", "purple", "orange", "pink", "yellow"),
            "a snowman with a {colour} scarf",
            _snowman,
        ),
        Subject("car", ("red", "blue", "yellow", "green", "orange", "purple", "pink", "grey"), "a {colour} car", _car),
        Subject("flower", ("red", "pink", "yellow", "purple", "orange", "blue"), "a {colour} flower", _flower),
        Subject(
            "face",
            ("brown", "black", "yellow", "orange", "red", "blue", "purple", "pink"),
            "a face with {colour} hair",
            _face,
        ),
        Subject(
            "boat",
            ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown"),
            "a {colour} sailing boat",
            _boat,
        ),
        Subject(
            "rocket",
            ("red", "blue", "green", "purple", "orange", "yellow", "pink", "grey"),
            "a {colour} rocket",
            _rocket,
        ),
        Subject("fish", ("orange", "blue", "yellow", "red", "green", "purple", "pink"), "a {colour} fish", _fish),
        Subject("cat", ("orange", "grey", "black", "brown", "yellow"), "a {colour} cat", _cat),
    )
}
