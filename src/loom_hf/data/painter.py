"""
The drawing canvas of the synthetic Loom data, all in PIL.

- Named colours ([`COLOURS`], [`BACKGROUNDS`] and a few fixed ones) and colour helpers.
- [`Painter`]: a supersampled canvas addressed in unit coordinates of a placement box, which records the pixels that
  every tutorial part covers (for evaluation masks).
- [`Part`]: one step of a tutorial, and [`render_parts`], which paints the steps one after the other.
- Placement and geometry helpers shared by the drawings ([`fit_box`], [`leaf_points`], [`scatter`]).

Everything is deterministic given a `random.Random`.
"""

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageChops
import PIL.ImageDraw

RGB = tuple[int, int, int]
Point = tuple[float, float]
# Placement of a drawing on the canvas: (left, top, side) in canvas units; drawings are laid out in a unit square.
Box = tuple[float, float, float]

FULL_BOX: Box = (0.0, 0.0, 1.0)
# Shapes are drawn this many times larger, then box-filtered down: smooth edges at small sizes.
SUPERSAMPLE = 4

COLOURS: dict[str, RGB] = {
    "red": (214, 48, 49),
    "orange": (243, 135, 30),
    "yellow": (247, 205, 40),
    "green": (56, 163, 74),
    "blue": (41, 105, 214),
    "purple": (133, 69, 183),
    "pink": (240, 118, 170),
    "brown": (133, 84, 45),
    "grey": (135, 140, 148),
    "black": (38, 38, 44),
    "white": (252, 252, 252),
}
# Plain backgrounds of tutorials and styled drawings; no drawn part uses these exact colours.
BACKGROUNDS: dict[str, RGB] = {
    "cream": (250, 246, 236),
    "sky": (230, 241, 252),
    "mint": (232, 246, 236),
    "lilac": (242, 236, 250),
}
WHITE: RGB = (255, 255, 255)
GLASS_BLUE: RGB = (175, 215, 245)
SKIN_TONES: tuple[RGB, ...] = ((255, 220, 185), (240, 195, 155), (205, 150, 105), (150, 100, 65), (100, 66, 45))
WOOD: RGB = (120, 76, 38)
GRASS: RGB = (92, 175, 76)


def darker(colour: RGB, factor: float = 0.55) -> RGB:
    """`colour` scaled towards black (outlines, shading)."""
    return tuple(int(channel * factor) for channel in colour)


def lighter(colour: RGB, amount: float = 0.5) -> RGB:
    """`colour` mixed with white by `amount`."""
    return tuple(int(channel + (255 - channel) * amount) for channel in colour)


def pick_other(rng: random.Random, names: Sequence[str], avoid: str) -> str:
    """A random name from `names` other than `avoid`, using one draw of `rng` whatever `avoid` is."""
    index = rng.randrange(len(names))
    return names[index] if names[index] != avoid else names[(index + 1) % len(names)]


@dataclass(frozen=True)
class Pattern:
    """A fill pattern laid over a shape: `"stripes"` or `"dots"` in `colour`."""

    kind: str
    colour: RGB


class Painter:
    """
    A canvas of `size` x `size` pixels drawn at [`SUPERSAMPLE`] times the resolution.

    Shapes are given in the unit square of the current placement box (see [`Painter.placed`]), optionally mirrored.
    Between [`Painter.begin_part`] and [`Painter.end_part`] every painted pixel is recorded, so a tutorial knows
    which pixels each of its steps touches.
    """

    def __init__(self, size: int, background: RGB):
        self.size = size
        self.resolution = size * SUPERSAMPLE
        self.image = PIL.Image.new("RGB", (self.resolution, self.resolution), background)
        self.draw = PIL.ImageDraw.Draw(self.image)
        self.coverage = PIL.Image.new("L", self.image.size, 0)
        self.coverage_draw = PIL.ImageDraw.Draw(self.coverage)
        # Outlines are about one output pixel wide at 64 px, and grow with the image.
        self.stroke = SUPERSAMPLE * max(1, round(size / 64))
        self.box, self.flip = FULL_BOX, False

    @contextmanager
    def placed(self, box: Box, flip: bool = False) -> Iterator["Painter"]:
        """Draw inside `box` (left, top, side in canvas units), mirrored left-right when `flip`."""
        previous = self.box, self.flip
        self.box, self.flip = box, flip
        try:
            yield self
        finally:
            self.box, self.flip = previous

    def begin_part(self) -> None:
        """Start recording the pixels of a new part."""
        self.coverage = PIL.Image.new("L", self.image.size, 0)
        self.coverage_draw = PIL.ImageDraw.Draw(self.coverage)

    def end_part(self) -> np.ndarray:
        """Boolean `size` x `size` mask of the pixels painted since `begin_part` (any coverage)."""
        return np.asarray(self.coverage.reduce(SUPERSAMPLE)) > 0

    def snapshot(self) -> PIL.Image.Image:
        """The canvas at its output size."""
        return self.image.reduce(SUPERSAMPLE)

    # Coordinates.
    def point(self, u: float, v: float) -> Point:
        """A point of the placement box in canvas pixels."""
        left, top, side = self.box
        u = 1.0 - u if self.flip else u
        return (left + u * side) * self.resolution, (top + v * side) * self.resolution

    def length(self, d: float) -> float:
        """A distance of the placement box in canvas pixels."""
        return d * self.box[2] * self.resolution

    def bounds(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        """PIL's `[x0, y0, x1, y1]` of a box-unit rectangle, ordered even when mirrored."""
        (x0, y0), (x1, y1) = self.point(u0, v0), self.point(u1, v1)
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def angles(self, start: float, end: float) -> tuple[float, float]:
        """PIL arc angles (degrees, clockwise from 3 o'clock) under the current mirroring."""
        return (180.0 - end, 180.0 - start) if self.flip else (start, end)

    # Shapes.
    def _shape(self, render: Callable, fill: RGB, outline: bool | RGB, pattern: Pattern | None) -> None:
        """Paint `render(draw, fill, outline, width)` on the canvas and the coverage, then lay `pattern` inside."""
        line = (darker(fill) if outline is True else outline) or None
        width = self.stroke if line else 0
        render(self.draw, fill, line, width)
        render(self.coverage_draw, 255, 255 if line else None, width)
        if pattern is None:
            return
        inside = PIL.Image.new("L", self.image.size, 0)
        render(PIL.ImageDraw.Draw(inside), 255, None, 0)
        self.image.paste(
            pattern.colour, (0, 0, *self.image.size), PIL.ImageChops.multiply(inside, self._pattern_mask(pattern))
        )
        if line:
            render(self.draw, None, line, width)

    def _pattern_mask(self, pattern: Pattern) -> PIL.Image.Image:
        period = 4 * self.stroke
        y, x = np.mgrid[0 : self.resolution, 0 : self.resolution]
        if pattern.kind == "stripes":
            on = (y % period) < period // 2
        elif pattern.kind == "dots":
            spacing, radius = 6 * self.stroke, 1.4 * self.stroke
            offset = (y // spacing % 2) * spacing // 2
            on = ((x + offset) % spacing - spacing / 2) ** 2 + (y % spacing - spacing / 2) ** 2 < radius**2
        else:
            raise ValueError(f"pattern.kind must be 'stripes' or 'dots', got {pattern.kind!r}")
        return PIL.Image.fromarray((on * 255).astype(np.uint8))

    def rect(
        self,
        u0: float,
        v0: float,
        u1: float,
        v1: float,
        fill: RGB,
        outline: bool | RGB = True,
        radius: float = 0.0,
        pattern: Pattern | None = None,
    ) -> None:
        """A rectangle from corner (`u0`, `v0`) to (`u1`, `v1`), with corners rounded by `radius`."""
        xy = self.bounds(u0, v0, u1, v1)
        r = self._corner_radius(xy, radius)
        self._shape(lambda d, f, o, w: d.rounded_rectangle(xy, r, fill=f, outline=o, width=w), fill, outline, pattern)

    def _corner_radius(self, xy: list[float], radius: float) -> float:
        """`radius` in canvas pixels, kept short of half the rectangle's (pixel-rounded) sides: Pillow's
        `rounded_rectangle` fails on a small rectangle whose corners meet along one side only."""
        x0, y0, x1, y1 = (round(c) for c in xy)
        return max(0.0, min(self.length(radius), (min(x1 - x0, y1 - y0) - 2) / 2))

    def ellipse(
        self,
        cu: float,
        cv: float,
        ru: float,
        rv: float,
        fill: RGB,
        outline: bool | RGB = True,
        pattern: Pattern | None = None,
    ) -> None:
        """An axis-aligned ellipse centred on (`cu`, `cv`) with radii `ru`, `rv`."""
        xy = self.bounds(cu - ru, cv - rv, cu + ru, cv + rv)
        self._shape(lambda d, f, o, w: d.ellipse(xy, fill=f, outline=o, width=w), fill, outline, pattern)

    def circle(
        self, cu: float, cv: float, r: float, fill: RGB, outline: bool | RGB = True, pattern: Pattern | None = None
    ) -> None:
        self.ellipse(cu, cv, r, r, fill, outline, pattern)

    def polygon(
        self, points: Sequence[Point], fill: RGB, outline: bool | RGB = True, pattern: Pattern | None = None
    ) -> None:
        xy = [self.point(u, v) for u, v in points]
        self._shape(lambda d, f, o, w: d.polygon(xy, fill=f, outline=o, width=w), fill, outline, pattern)

    def chord(
        self, cu: float, cv: float, r: float, start: float, end: float, fill: RGB, outline: bool | RGB = True
    ) -> None:
        """The part of circle (`cu`, `cv`, `r`) cut off by the chord between angles `start` and `end`."""
        xy, (a, b) = self.bounds(cu - r, cv - r, cu + r, cv + r), self.angles(start, end)
        self._shape(lambda d, f, o, w: d.chord(xy, a, b, fill=f, outline=o, width=w), fill, outline, None)

    def pieslice(
        self, cu: float, cv: float, r: float, start: float, end: float, fill: RGB, outline: bool | RGB = True
    ) -> None:
        """The wedge of circle (`cu`, `cv`, `r`) between angles `start` and `end`."""
        xy, (a, b) = self.bounds(cu - r, cv - r, cu + r, cv + r), self.angles(start, end)
        self._shape(lambda d, f, o, w: d.pieslice(xy, a, b, fill=f, outline=o, width=w), fill, outline, None)

    def line(self, points: Sequence[Point], colour: RGB, width: float) -> None:
        """A polyline `width` units wide (a stroke of the outline width when `width` is 0)."""
        xy = [self.point(u, v) for u, v in points]
        pixels = max(1, round(self.length(width))) if width else self.stroke
        self.draw.line(xy, fill=colour, width=pixels, joint="curve")
        self.coverage_draw.line(xy, fill=255, width=pixels, joint="curve")

    def arc(
        self, cu: float, cv: float, ru: float, rv: float, start: float, end: float, colour: RGB, width: float
    ) -> None:
        """An elliptic arc from angle `start` to `end` (degrees, clockwise from 3 o'clock), `width` units wide."""
        xy, (a, b) = self.bounds(cu - ru, cv - rv, cu + ru, cv + rv), self.angles(start, end)
        pixels = max(1, round(self.length(width)))
        self.draw.arc(xy, a, b, fill=colour, width=pixels)
        self.coverage_draw.arc(xy, a, b, fill=255, width=pixels)

    def blob(self, circles: Sequence[tuple[float, float, float]], fill: RGB) -> None:
        """Overlapping circles `(cu, cv, r)` as one shape: a single outline around their union."""
        for cu, cv, r in circles:
            self.circle(cu, cv, r, fill)
        inset = self.stroke / (self.box[2] * self.resolution)
        for cu, cv, r in circles:
            self.circle(cu, cv, r - inset, fill, outline=False)

    def attached(self, points: Sequence[Point], fill: RGB) -> None:
        """A polygon whose first-to-last edge joins another shape: outlined everywhere except along that edge."""
        self.polygon(points, fill, outline=False)
        self.line(points, darker(fill), 0)


@dataclass(frozen=True)
class Part:
    """One tutorial step: the part's `name`, the step `caption` and how to `paint` it."""

    name: str
    caption: str
    paint: Callable[[Painter], None]


@dataclass
class Rendering:
    """Frames of a tutorial (frame k shows parts 1..k) and, per part, the mask of pixels it paints."""

    frames: list[PIL.Image.Image]
    masks: list[np.ndarray]


def render_parts(
    parts: Sequence[Part], size: int, background: RGB, box: Box = FULL_BOX, flip: bool = False
) -> Rendering:
    """Paint `parts` one after the other on a plain `background`, keeping a frame and a mask after each."""
    painter = Painter(size, background)
    rendering = Rendering(frames=[], masks=[])
    with painter.placed(box, flip):
        for part in parts:
            painter.begin_part()
            part.paint(painter)
            rendering.masks.append(painter.end_part())
            rendering.frames.append(painter.snapshot())
    return rendering


def fit_box(paint: Callable[[Painter], None], fill: float = 0.8) -> Box:
    """The placement that centres what `paint` draws (in unit coordinates) and scales it to `fill` of the canvas."""
    probe = Painter(64, WHITE)
    paint(probe)
    x0, y0, x1, y1 = probe.coverage.getbbox()
    scale = probe.resolution
    u0, v0, u1, v1 = x0 / scale, y0 / scale, x1 / scale, y1 / scale
    side = fill / max(u1 - u0, v1 - v0)
    return 0.5 - side * (u0 + u1) / 2, 0.5 - side * (v0 + v1) / 2, side


def leaf_points(base: Point, length: float, width: float, angle: float) -> list[Point]:
    """A pointed leaf from `base`, `length` long, rotated by `angle` radians (0: pointing right)."""
    outline = [(t * length, math.sin(math.pi * t) * width / 2) for t in np.linspace(0, 1, 9)]
    outline += [(x, -y) for x, y in reversed(outline[1:-1])]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(base[0] + x * cos - y * sin, base[1] + x * sin + y * cos) for x, y in outline]


def scatter(rng: random.Random, count: int, centre: Point, radius: float, spacing: float) -> list[Point]:
    """Up to `count` points inside a disc, kept `spacing` apart when a few tries allow."""
    points: list[Point] = []
    for _ in range(count * 20):
        if len(points) == count:
            break
        angle, distance = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.random())
        candidate = (centre[0] + distance * math.cos(angle), centre[1] + distance * math.sin(angle))
        if all(math.dist(candidate, other) >= spacing for other in points):
            points.append(candidate)
    return points
