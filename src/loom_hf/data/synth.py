"""
Procedural Loom training data in the [`LOOM_FEATURES`] schema: drawing tutorials, procedures with changing state,
composition, decomposition, style transfer, plus text-to-image, edit and understanding rows from the same drawings
and text-only plans.

Every sample comes from its own `random.Random`, seeded by (seed, split, index): the same arguments always give the
same dataset. The eval split holds drawing tutorials of subject x colour pairs ([`HELD_OUT_PAIRS`]) that the train
split never shows, in any task.
"""

import argparse
import dataclasses
import functools
import json
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from huggingface_hub.utils import tqdm

from ..modeling.processing_loom import ENTITY_TOKENS
from ..trainers.schema import LOOM_FEATURES
from ..utils import check_output_folder, positive_int, written_atomically
from .masks import mask_bbox, mask_to_rle
from .painter import BACKGROUNDS, COLOURS, FULL_BOX, RGB, WHITE, Box, Painter, Part, Rendering, fit_box, render_parts
from .procedures import PROCEDURES
from .scenes import PRODUCTS, Scene, paint_product, paint_scene, random_scene
from .styles import Style, apply_style, random_style
from .subjects import SUBJECTS
from .wardrobe import paint_figure, paint_garment, random_garment, random_outfit

__all__ = [
    "FAMILIES",
    "DEFAULT_MIX",
    "HELD_OUT_PAIRS",
    "TRAIN_PAIRS",
    "PLAN_PAIRS",
    "build_dataset",
    "synthesize",
    "add_synth_arguments",
    "run_synth",
]

# Subject x colour pairs kept out of the train split: one colour per subject, each colour still drawn on other
# subjects and each subject still drawn in other colours, so eval measures compositional generalisation.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("house", "blue"),
    ("tree", "orange"),
    ("snowman", "green"),
    ("car", "yellow"),
    ("flower", "purple"),
    ("face", "red"),
    ("boat", "pink"),
    ("rocket", "red"),
    ("fish", "blue"),
    ("cat", "grey"),
)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (name, colour)
    for name, subject in SUBJECTS.items()
    for colour in subject.colours
    if (name, colour) not in HELD_OUT_PAIRS
)
# Text-only plans name any colour for any subject (still never a held-out pair): a planner that only ever saw a few
# colours per subject learns which colours go with it instead of copying the one it is asked for.
PLAN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (name, colour)
    for name in SUBJECTS
    for colour in COLOURS
    if colour != "white" and (name, colour) not in HELD_OUT_PAIRS
)

# Sample families and the schema task each one writes.
FAMILIES: dict[str, str] = {
    "drawing": "tutorial",
    "procedure": "tutorial",
    "compose": "compose",
    "decompose": "decompose",
    "style": "style",
    "t2i": "t2i",
    "edit": "edit",
    "understanding": "understanding",
    "plan": "plan",
}
DEFAULT_MIX: dict[str, float] = {
    "drawing": 0.34,
    "procedure": 0.14,
    "compose": 0.12,
    "decompose": 0.1,
    "style": 0.12,
    "t2i": 0.06,
    "edit": 0.07,
    "understanding": 0.05,
    "plan": 0.75,  # text-only: a plan costs about a tenth of the tokens of a tutorial's frames
}
MIN_SIZE, MAX_SIZE = 32, 1024
DRAWING_SHARE_OF_PLANS = 0.7  # about the drawing share of DEFAULT_MIX's tutorial families (0.34 of 0.48)
PRODUCT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "grey")


def _entity(name: str) -> str:
    """The entity token `<name>` as the processor spells it; fails loudly if the processor drops it."""
    token = f"<{name}>"
    if token not in ENTITY_TOKENS:
        raise ValueError(f"entity token {token!r} is not one of the processor's ENTITY_TOKENS {ENTITY_TOKENS}")
    return token


MODEL, UPPER, LOWER, HAT, BAG = (_entity(name) for name in ("model", "upper", "lower", "hat", "bag"))
PRODUCT, OBJECT, SCENE, STYLE = (_entity(name) for name in ("product", "object", "scene", "style"))

TUTORIAL_TEMPLATES = ("Draw {what}", "Draw {what} step by step", "Show me how to draw {what}", "How do I draw {what}?")
T2I_TEMPLATES = ("A simple drawing of {what}", "A picture of {what}", "{What} on a plain background")
UNDERSTANDING_QUESTIONS = ("What is drawn in this picture?", "Describe this drawing in a few words.")
COMPOSE_TEMPLATES = (
    f"Place the {PRODUCT} of image {{item}} into the {SCENE} of image {{scene}}",
    f"Put the {OBJECT} from image {{item}} into the {SCENE} of image {{scene}}",
    f"Insert the {PRODUCT} in image {{item}} into the {SCENE} shown in image {{scene}}",
)
TRY_ON_TEMPLATES = {
    "upper": f"Dress the {MODEL} of image 1 in the {UPPER} garment of image 2",
    "lower": f"Dress the {MODEL} of image 1 in the {LOWER} garment of image 2",
    "hat": f"Put the {HAT} of image 2 on the {MODEL} of image 1",
    "bag": f"Give the {MODEL} of image 1 the {BAG} of image 2",
}
EXTRACT_TEMPLATES = {
    "upper": f"Extract the {UPPER} garment of the {MODEL} in image 1",
    "lower": f"Extract the {LOWER} garment of the {MODEL} in image 1",
    "hat": f"Extract the {HAT} worn by the {MODEL} in image 1",
    "bag": f"Extract the {BAG} carried by the {MODEL} in image 1",
    "product": f"Extract the {PRODUCT} from the {SCENE} in image 1",
}
STYLE_TEMPLATES = (
    f"Apply the {STYLE} of image 1 to image 2",
    f"Redraw the {OBJECT} in image 2 in the {STYLE} of image 1",
    f"Restyle image 2 with the {STYLE} of image 1",
)


@dataclasses.dataclass
class Drawn:
    """A tutorial rendered on a plain background: what was drawn, its parts, frames and per-part masks."""

    subject: str
    colour: str
    background: str
    parts: list[Part]
    rendering: Rendering

    @property
    def final(self) -> PIL.Image.Image:
        return self.rendering.frames[-1]

    @property
    def object_mask(self) -> np.ndarray:
        return np.logical_or.reduce(self.rendering.masks)


def _step_meta(parts: list[Part], rendering: Rendering) -> list[dict]:
    """Per step: the part added, the bounding box and run-length mask (see `mask_to_rle`) of the pixels it paints."""
    return [
        {"part": part.name, "bbox": mask_bbox(mask), "mask_rle": mask_to_rle(mask)}
        for part, mask in zip(parts, rendering.masks)
    ]


def _layout(rng: random.Random) -> tuple[Box, bool, str]:
    """A random placement (size and position), mirroring and background for one drawing."""
    side = rng.uniform(0.7, 0.92)
    box = (rng.uniform(0.02, 0.98 - side), rng.uniform(0.02, 0.98 - side), side)
    return box, rng.random() < 0.5, rng.choice(tuple(BACKGROUNDS))


def _draw_subject(rng: random.Random, size: int, pair: tuple[str, str] | None = None) -> Drawn:
    subject, colour = pair or rng.choice(TRAIN_PAIRS)
    parts = SUBJECTS[subject].build(rng, colour)
    box, flip, background = _layout(rng)
    return Drawn(subject, colour, background, parts, render_parts(parts, size, BACKGROUNDS[background], box, flip))


def _row(task: str, instruction: str, meta: dict, **fields) -> dict:
    """A schema row with empty defaults; `meta` stays a dict until the split is known."""
    row = {"task": task, "instruction": instruction, "images": [], "step_texts": [], "step_images": [], "targets": []}
    row.update(answer="", meta=meta)
    row.update(fields)
    return row


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def drawing_tutorial(rng: random.Random, size: int, pair: tuple[str, str] | None = None) -> dict:
    """A subject drawn part by part; frame k shows parts 1..k. `pair` fixes the subject and colour."""
    drawn = _draw_subject(rng, size, pair)
    what = SUBJECTS[drawn.subject].describe(drawn.colour)
    meta = {
        "family": "drawing",
        "subject": drawn.subject,
        "colour": drawn.colour,
        "drawn": [[drawn.subject, drawn.colour]],
        "background": drawn.background,
        "parts": [part.name for part in drawn.parts],
        "steps": _step_meta(drawn.parts, drawn.rendering),
    }
    return _row(
        "tutorial",
        rng.choice(TUTORIAL_TEMPLATES).format(what=what),
        meta,
        step_texts=[part.caption for part in drawn.parts],
        step_images=drawn.rendering.frames,
    )


def procedure_tutorial(rng: random.Random, size: int) -> dict:
    """A dish or drink made step by step (soup, glass, pizza, cake): each step changes its state."""
    name = rng.choice(tuple(PROCEDURES))
    instruction, variant, parts = PROCEDURES[name](rng)
    box, _, background = _layout(rng)
    rendering = render_parts(parts, size, BACKGROUNDS[background], box)
    meta = {
        "family": "procedure",
        "subject": name,
        "variant": variant,
        "background": background,
        "parts": [part.name for part in parts],
        "steps": _step_meta(parts, rendering),
    }
    return _row(
        "tutorial", instruction, meta, step_texts=[part.caption for part in parts], step_images=rendering.frames
    )


def _canvas(size: int, background: RGB, paint: Callable[[Painter], None], box: Box = FULL_BOX) -> PIL.Image.Image:
    """A fresh canvas with `paint` drawn inside `box`."""
    painter = Painter(size, background)
    with painter.placed(box):
        paint(painter)
    return painter.snapshot()


def _alone(size: int, paint: Callable[[Painter], None]) -> PIL.Image.Image:
    """What `paint` draws, centred and enlarged on white."""
    return _canvas(size, WHITE, paint, fit_box(paint))


def _figure_box(rng: random.Random) -> Box:
    """A placement for a standing figure: nearly full height, shifted a little."""
    side = rng.uniform(0.9, 0.96)
    return rng.uniform(0.0, 1 - side), rng.uniform(0.02, 1 - side), side


def _product_in_scene(size: int, scene: Scene, paint_product_at: Callable[[Painter], None]) -> PIL.Image.Image:
    """`scene` with the product standing on its spot."""
    painter = Painter(size, WHITE)
    paint_scene(painter, scene)
    with painter.placed(scene.spot):
        paint_product_at(painter)
    return painter.snapshot()


def compose_sample(rng: random.Random, size: int) -> dict:
    """Put a product into a scene, or dress a figure in a garment (virtual try-on)."""
    if rng.random() < 0.5:
        product, colour, scene = rng.choice(PRODUCTS), rng.choice(PRODUCT_COLOURS), random_scene(rng)
        paint = functools.partial(paint_product, product=product, colour=colour)
        side = rng.uniform(0.6, 0.8)
        item = _canvas(size, WHITE, paint, (0.5 - side / 2, 0.5 - side / 2, side))
        backdrop = _canvas(size, WHITE, lambda p: paint_scene(p, scene))
        composite = _product_in_scene(size, scene, paint)
        item_first = rng.random() < 0.7
        images = [item, backdrop] if item_first else [backdrop, item]
        instruction = rng.choice(COMPOSE_TEMPLATES).format(item=1 if item_first else 2, scene=2 if item_first else 1)
        meta = {"family": "compose", "kind": "scene", "product": product, "colour": colour, "scene": scene.kind}
        return _row("compose", instruction, meta, images=images, targets=[composite])
    outfit, box, background = random_outfit(rng), _figure_box(rng), BACKGROUNDS[rng.choice(tuple(BACKGROUNDS))]
    slot = rng.choice(tuple(TRY_ON_TEMPLATES))
    worn = getattr(outfit, slot)
    garment = random_garment(rng, slot, avoid=worn.colour if worn else "")
    dressed = dataclasses.replace(outfit, **{slot: garment})
    images = [
        _canvas(size, background, lambda p: paint_figure(p, outfit), box),
        _alone(size, lambda p: paint_garment(p, garment)),
    ]
    target = _canvas(size, background, lambda p: paint_figure(p, dressed), box)
    meta = {
        "family": "compose",
        "kind": "try-on",
        "slot": slot,
        "garment": garment.describe(),
        "replaced": worn.describe() if worn else None,
    }
    return _row("compose", TRY_ON_TEMPLATES[slot], meta, images=images, targets=[target])


def decompose_sample(rng: random.Random, size: int) -> dict:
    """Take one garment off a dressed figure, or one product out of a scene, and show it alone on white."""
    if rng.random() < 0.25:
        product, colour, scene = rng.choice(PRODUCTS), rng.choice(PRODUCT_COLOURS), random_scene(rng)
        paint = functools.partial(paint_product, product=product, colour=colour)
        image = _product_in_scene(size, scene, paint)
        meta = {"family": "decompose", "slot": "product", "product": product, "colour": colour, "scene": scene.kind}
        return _row("decompose", EXTRACT_TEMPLATES["product"], meta, images=[image], targets=[_alone(size, paint)])
    outfit, box, background = random_outfit(rng), _figure_box(rng), BACKGROUNDS[rng.choice(tuple(BACKGROUNDS))]
    garment = rng.choice(outfit.garments())
    image = _canvas(size, background, lambda p: paint_figure(p, outfit), box)
    target = _alone(size, lambda p: paint_garment(p, garment))
    meta = {"family": "decompose", "slot": garment.slot, "garment": garment.describe()}
    return _row("decompose", EXTRACT_TEMPLATES[garment.slot], meta, images=[image], targets=[target])


def _styled(drawn: Drawn, style: Style) -> PIL.Image.Image:
    return apply_style(drawn.final, drawn.object_mask, BACKGROUNDS[drawn.background], style)


def style_sample(rng: random.Random, size: int) -> dict:
    """images = [style reference, content]; the reference shows the same style on a different subject."""
    style = random_style(rng)
    content = _draw_subject(rng, size)
    reference = _draw_subject(rng, size, rng.choice([pair for pair in TRAIN_PAIRS if pair[0] != content.subject]))
    meta = {
        "family": "style",
        "style": style.name,
        "style_setting": style.describe(),
        "content": [content.subject, content.colour],
        "reference": [reference.subject, reference.colour],
        "drawn": [[content.subject, content.colour], [reference.subject, reference.colour]],
    }
    images = [_styled(reference, style), content.final]
    return _row("style", rng.choice(STYLE_TEMPLATES), meta, images=images, targets=[_styled(content, style)])


def t2i_sample(rng: random.Random, size: int) -> dict:
    """A caption and the finished drawing."""
    drawn = _draw_subject(rng, size)
    what = SUBJECTS[drawn.subject].describe(drawn.colour)
    instruction = rng.choice(T2I_TEMPLATES).format(what=what, What=_capitalised(what))
    meta = {"family": "t2i", "subject": drawn.subject, "colour": drawn.colour, "drawn": [[drawn.subject, drawn.colour]]}
    return _row("t2i", instruction, meta, targets=[drawn.final])


def edit_sample(rng: random.Random, size: int) -> dict:
    """One tutorial step as an edit: add part k to frame k-1, or remove it from frame k (it is the last one drawn)."""
    drawn = _draw_subject(rng, size)
    k = rng.randrange(1, len(drawn.parts))
    before, after, part = drawn.rendering.frames[k - 1], drawn.rendering.frames[k], drawn.parts[k]
    meta = {
        "family": "edit",
        "subject": drawn.subject,
        "colour": drawn.colour,
        "drawn": [[drawn.subject, drawn.colour]],
        "part": part.name,
    }
    if rng.random() < 0.6:
        return _row("edit", part.caption, {**meta, "kind": "add"}, images=[before], targets=[after])
    return _row("edit", f"Remove the {part.name}", {**meta, "kind": "remove"}, images=[after], targets=[before])


def understanding_sample(rng: random.Random, size: int) -> dict:
    """A question about a finished drawing, answered with what it shows."""
    drawn = _draw_subject(rng, size)
    answer = _capitalised(SUBJECTS[drawn.subject].describe(drawn.colour)) + "."
    meta = {
        "family": "understanding",
        "subject": drawn.subject,
        "colour": drawn.colour,
        "drawn": [[drawn.subject, drawn.colour]],
    }
    return _row("understanding", rng.choice(UNDERSTANDING_QUESTIONS), meta, images=[drawn.final], answer=answer)


def plan_sample(rng: random.Random, size: int) -> dict:
    """A text-only plan (no frames) of a drawing, in any colour but a held-out pair's, or of a procedure.

    `size` is unused: plans have no images."""
    if rng.random() < DRAWING_SHARE_OF_PLANS:
        subject, colour = rng.choice(PLAN_PAIRS)
        parts = SUBJECTS[subject].build(rng, colour)
        instruction = rng.choice(TUTORIAL_TEMPLATES).format(what=SUBJECTS[subject].describe(colour))
        meta = {"family": "plan", "subject": subject, "colour": colour, "drawn": [[subject, colour]]}
    else:
        name = rng.choice(tuple(PROCEDURES))
        instruction, variant, parts = PROCEDURES[name](rng)
        meta = {"family": "plan", "subject": name, "variant": variant}
    return _row("plan", instruction, meta, step_texts=[part.caption for part in parts])


BUILDERS: dict[str, Callable[[random.Random, int], dict]] = {
    "drawing": drawing_tutorial,
    "procedure": procedure_tutorial,
    "compose": compose_sample,
    "decompose": decompose_sample,
    "style": style_sample,
    "t2i": t2i_sample,
    "edit": edit_sample,
    "understanding": understanding_sample,
    "plan": plan_sample,
}


def _check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """`mix` normalised to sum to one, after checking its families and weights."""
    if not isinstance(mix, Mapping):
        raise TypeError(f"mix must be a dict of family -> weight, got {type(mix).__name__}")
    unknown = sorted(set(mix) - set(FAMILIES))
    if unknown:
        raise ValueError(f"mix has unknown families {unknown}; accepted: {', '.join(FAMILIES)}")
    for family, weight in mix.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"mix[{family!r}] must be a finite number >= 0, got {weight!r}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("mix must give at least one family a positive weight")
    return {family: mix.get(family, 0) / total for family in FAMILIES}


def _family_counts(num_samples: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split `num_samples` by `weights`: every weighted family gets one sample first (while they last), the rest
    goes by largest remainder, ties broken by family order."""
    weighted = sorted((family for family in FAMILIES if weights[family] > 0), key=lambda f: -weights[f])
    counts = {family: 0 for family in FAMILIES}
    for family in weighted[:num_samples]:
        counts[family] = 1
    rest = num_samples - sum(counts.values())
    shares = {family: weights[family] * rest for family in weighted}
    for family in weighted:
        counts[family] += int(shares[family])
    leftover = num_samples - sum(counts.values())
    by_remainder = sorted(weighted, key=lambda f: -(shares[f] - int(shares[f])))
    for family in by_remainder[:leftover]:
        counts[family] += 1
    return counts


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        accepted = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _sample_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"loom-synth:{seed}:{split}:{index}")


def _to_dataset(rows: list[dict], split: str) -> datasets.Dataset:
    columns = {name: [] for name in LOOM_FEATURES}
    for index, row in enumerate(rows):
        row["meta"] = json.dumps({**row["meta"], "split": split, "index": index}, sort_keys=True)
        for name in LOOM_FEATURES:
            columns[name].append(row[name])
    return datasets.Dataset.from_dict(columns, features=LOOM_FEATURES, split=datasets.Split(split))


def build_dataset(
    num_samples: int, seed: int, size: int = 64, mix: Mapping[str, float] | None = None, progress: bool = False
) -> datasets.DatasetDict:
    """
    Generate the synthetic Loom dataset with [`LOOM_FEATURES`].

    Args:
        num_samples: train rows.
        seed: any int >= 0; the same (num_samples, seed, size, mix) always gives the same dataset.
        size: side of every image in pixels.
        mix: weight per family (see [`FAMILIES`]); families left out get none. Default: [`DEFAULT_MIX`].
        progress: show a progress bar over the rows drawn.

    Returns:
        "train" (the mix, without any held-out pair) and "eval" (`max(8, num_samples // 10)` drawing tutorials of
        [`HELD_OUT_PAIRS`] only, cycling through them).
    """
    _check_int("num_samples", num_samples, 1)
    _check_int("seed", seed, 0)
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    counts = _family_counts(num_samples, _check_mix(DEFAULT_MIX if mix is None else mix))
    plan = [family for family, count in counts.items() for _ in range(count)]
    random.Random(f"loom-synth:{seed}:plan").shuffle(plan)
    num_eval = max(8, num_samples // 10)
    with tqdm(total=len(plan) + num_eval, desc="rows", unit="row", disable=not progress) as bar:
        train = []
        for index, family in enumerate(plan):
            train.append(BUILDERS[family](_sample_rng(seed, "train", index), size))
            bar.update()
        eval_rows = []
        for index in range(num_eval):
            pair = HELD_OUT_PAIRS[index % len(HELD_OUT_PAIRS)]
            eval_rows.append(drawing_tutorial(_sample_rng(seed, "eval", index), size, pair))
            bar.update()
    return datasets.DatasetDict({"train": _to_dataset(train, "train"), "eval": _to_dataset(eval_rows, "eval")})


def synthesize(
    out_dir: str | Path,
    num_samples: int,
    seed: int,
    size: int = 64,
    overwrite: bool = False,
    progress: bool = False,
    mix: Mapping[str, float] | None = None,
) -> Path:
    """
    Write [`build_dataset`] to `out_dir` with `save_to_disk`: first into a temporary sibling folder, renamed into
    place at the end, so an interrupted run never leaves a half-written dataset. Returns `out_dir`.
    """
    if mix is not None:
        _check_mix(mix)  # before the output folder is touched
    destination = check_output_folder(out_dir, option="out_dir (--out)", overwrite=overwrite)
    dataset = build_dataset(num_samples, seed, size, mix=mix, progress=progress)
    with written_atomically(destination) as staging:
        dataset.save_to_disk(str(staging))
    return destination


def _mix_text(mix: Mapping[str, float]) -> str:
    return ",".join(f"{family}={weight:g}" for family, weight in mix.items())


def parse_mix(text: str) -> dict[str, float]:
    """`--mix` as a dict: comma-separated `family=weight` pairs, each family of [`FAMILIES`] at most once."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        family, separator, weight = item.strip().partition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"{item!r} is not family=weight (families: {', '.join(FAMILIES)})")
        if family in mix:
            raise argparse.ArgumentTypeError(f"family {family!r} is given twice")
        try:
            mix[family] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the weight of {family!r} must be a number; got {weight!r}") from None
    try:
        _check_mix(mix)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return mix


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `loom data synth` to `parser` and make [`run_synth`] its handler."""
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--num-samples", type=positive_int, required=True, help="train rows (eval: max(8, N // 10))")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", type=int, default=64, help=f"image side in pixels, {MIN_SIZE}-{MAX_SIZE} (default 64)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=None,
        help=f"family weights, e.g. drawing=0.6,plan=0.1; unnamed families get none (default {_mix_text(DEFAULT_MIX)})",
    )
    parser.set_defaults(handler=run_synth)
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Handler of `loom data synth`: write the dataset and report where."""
    try:
        path = synthesize(
            args.out, args.num_samples, args.seed, args.size, overwrite=args.overwrite, progress=True, mix=args.mix
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"Wrote {path}")
    return 0
