"""The procedural dataset: determinism, coverage of every family, cumulative tutorial frames and their masks,
held-out subject x colour pairs, plans that follow from the instruction, schema validity and the atomic export."""

import argparse
import itertools
import json
import random
import re
from collections import Counter, defaultdict

import datasets
import numpy as np
import pytest

from loom_hf.data import (
    BACKGROUNDS,
    FAMILIES,
    HELD_OUT_PAIRS,
    PLAN_PAIRS,
    PROCEDURES,
    STYLES,
    SUBJECTS,
    TRAIN_PAIRS,
    add_synth_arguments,
    build_dataset,
    mask_to_rle,
    rle_to_mask,
    synthesize,
)
from loom_hf.data.painter import render_parts
from loom_hf.data.styles import apply_style, random_style
from loom_hf.modeling.processing_loom import ENTITY_TOKENS
from loom_hf.trainers import LOOM_FEATURES, TASKS, validate_rows


@pytest.fixture(scope="module")
def dataset() -> datasets.DatasetDict:
    return build_dataset(140, seed=7)


def metas(split: datasets.Dataset) -> list[dict]:
    return [json.loads(meta) for meta in split["meta"]]


def rows_of(split: datasets.Dataset, family: str) -> list[tuple[dict, dict]]:
    """(row, parsed meta) of every row of `family`."""
    return [(row, meta) for row, meta in zip(split, metas(split)) if meta["family"] == family]


def as_table(dataset: datasets.DatasetDict, split: str):
    """The split's raw Arrow table: encoded image bytes and texts, compared exactly."""
    return dataset[split].with_format("arrow")[:]


def test_same_seed_same_dataset_other_seed_differs():
    first, again, other = build_dataset(12, seed=1), build_dataset(12, seed=1), build_dataset(12, seed=2)
    for split in ("train", "eval"):
        assert as_table(first, split).equals(as_table(again, split))
        assert not as_table(first, split).equals(as_table(other, split))


def test_splits_sizes_and_features(dataset):
    assert dataset["train"].num_rows == 140
    assert dataset["eval"].num_rows == 14
    assert build_dataset(8, seed=0)["eval"].num_rows == 8
    for split in dataset.values():
        assert split.features == LOOM_FEATURES
        assert {image.size for row in split.select(range(5)) for image in row["step_images"] + row["targets"]} == {
            (64, 64)
        }


def test_every_family_and_task_is_present(dataset):
    assert {meta["family"] for meta in metas(dataset["train"])} == set(FAMILIES)
    assert set(dataset["train"]["task"]) == set(TASKS)


def test_mix_selects_families():
    only_style = build_dataset(6, seed=0, mix={"style": 1.0})
    assert set(only_style["train"]["task"]) == {"style"}
    # One sample each first, then the other 8 split 3:1.
    both = build_dataset(10, seed=0, mix={"compose": 3, "decompose": 1})
    assert Counter(both["train"]["task"]) == {"compose": 7, "decompose": 3}


def test_every_row_is_valid(dataset):
    for split in dataset.values():
        valid, problems = validate_rows(split)
        assert problems == []
        assert valid == list(range(split.num_rows))


def test_drawing_frames_are_cumulative_and_masks_cover_each_change(dataset):
    """Frame k keeps everything drawn before; the pixels step k changes lie inside its recorded mask."""
    rows = rows_of(dataset["train"], "drawing")
    assert len(rows) >= 20
    for row, meta in rows:
        background = np.array(BACKGROUNDS[meta["background"]])
        frames = [np.asarray(frame, dtype=np.int16) for frame in row["step_images"]]
        assert meta["parts"] == [step["part"] for step in meta["steps"]]
        assert len(meta["steps"]) == len(frames) == len(row["step_texts"])
        assert 3 <= len(frames) <= 6
        previous = np.broadcast_to(background, frames[0].shape)
        for frame, step in zip(frames, meta["steps"]):
            drawn_before, drawn_now = (previous != background).any(-1), (frame != background).any(-1)
            assert not (drawn_before & ~drawn_now).any(), f"{meta['subject']}: step {step['part']} erased pixels"
            mask = rle_to_mask(step["mask_rle"], 64)
            changed = (frame != previous).any(-1)
            assert changed.any() and not (changed & ~mask).any()
            rows_set, cols_set = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert step["bbox"] == [cols_set[0], rows_set[0], cols_set[-1] + 1, rows_set[-1] + 1]
            previous = frame


def test_procedures_are_tutorials_with_changing_state(dataset):
    rows = rows_of(dataset["train"], "procedure")
    assert rows
    for row, meta in rows:
        assert row["task"] == "tutorial"
        assert meta["subject"] in ("soup", "glass", "pizza", "cake")
        assert 3 <= len(row["step_images"]) == len(row["step_texts"]) <= 6
        frames = [np.asarray(frame) for frame in row["step_images"]]
        assert all((before != after).any() for before, after in itertools.pairwise(frames))


def test_drawing_instructions_name_subject_and_colour(dataset):
    for row, meta in rows_of(dataset["train"], "drawing"):
        assert SUBJECTS[meta["subject"]].describe(meta["colour"]) in row["instruction"]
        assert any(meta["colour"] in text for text in row["step_texts"]), row["step_texts"]
    assert SUBJECTS["car"].describe("orange") == "an orange car"


Plan = tuple[str, ...]


def plans_by_content(dataset: datasets.DatasetDict) -> dict[tuple[str, str], list[Plan]]:
    """The step texts of every row (tutorials and text-only plans), grouped by what its instruction describes:
    (subject, colour) for a drawing, (procedure, instruction) for a procedure, whose instruction has no phrasing
    template."""
    plans = defaultdict(list)
    for split in dataset.values():
        for row, meta in zip(split, metas(split)):
            content = meta.get("colour") or row["instruction"]
            plans[meta["subject"], content].append(tuple(row["step_texts"]))
    return plans


def with_colour(plan: Plan, old: str, new: str) -> Plan:
    """`plan` with the colour word `old` replaced by `new`."""
    return tuple(re.sub(rf"\b{old}\b", new, text) for text in plan)


def test_plan_is_determined_by_the_instruction():
    """Tutorials that describe the same thing share one plan, and a held-out pair's plan is its subject's template
    with the colour word substituted, as a model can infer from the training pairs."""
    dataset = build_dataset(240, seed=11, size=32, mix={"drawing": 3, "procedure": 1, "plan": 2})
    plans = plans_by_content(dataset)
    repeated = [content for content, group in plans.items() if len(group) > 1]
    assert len(repeated) >= 40
    assert set(SUBJECTS) | {"pizza"} <= {subject for subject, _ in repeated}, "too few repeats to compare"
    for content, group in plans.items():
        assert len(set(group)) == 1, f"{content}: {set(group)}"
    for subject, colour in HELD_OUT_PAIRS:
        (held_out_plan,) = set(plans[subject, colour])
        siblings = {
            train_colour: with_colour(plans[name, train_colour][0], train_colour, colour)
            for name, train_colour in TRAIN_PAIRS
            if name == subject and (name, train_colour) in plans
        }
        assert held_out_plan in siblings.values(), f"{subject}, {colour}: {held_out_plan} vs {siblings}"


def test_text_only_plans_copy_any_colour_but_never_a_held_out_pair(dataset):
    rows = rows_of(build_dataset(200, seed=3, size=32, mix={"plan": 1})["train"], "plan")
    assert {row["task"] for row, _ in rows} == {"plan"}
    assert not any(row["images"] or row["step_images"] or row["targets"] for row, _ in rows)
    drawings = [(row, meta) for row, meta in rows if "colour" in meta]
    assert 0.5 < len(drawings) / len(rows) < 0.9, "plans cover both drawings and procedures"
    for row, meta in drawings:
        assert (meta["subject"], meta["colour"]) not in HELD_OUT_PAIRS
        assert SUBJECTS[meta["subject"]].describe(meta["colour"]) in row["instruction"]
        assert any(meta["colour"] in text for text in row["step_texts"]), row["step_texts"]
    assert {pair for pair in PLAN_PAIRS if pair not in TRAIN_PAIRS}, "plans widen the colours of each subject"
    assert not set(HELD_OUT_PAIRS) & set(PLAN_PAIRS) and set(TRAIN_PAIRS) < set(PLAN_PAIRS)


def test_procedure_plan_follows_from_its_instruction():
    """The procedure builders themselves, over many draws: one instruction, one plan, 3-6 steps."""
    plans = defaultdict(set)
    for seed in range(2000):
        name = random.Random(seed).choice(tuple(PROCEDURES))
        instruction, _, parts = PROCEDURES[name](random.Random(seed))
        plans[instruction].add(tuple(part.caption for part in parts))
        assert 3 <= len(parts) <= 6
    assert all(len(plan) == 1 for plan in plans.values())
    assert len(plans) < 1000, "too few repeated instructions to compare"


def test_subjects_and_styles():
    required = {"house", "tree", "snowman", "car", "flower", "face", "boat", "rocket"}
    assert required <= set(SUBJECTS)
    assert len(STYLES) >= 4
    drawing = render_parts(SUBJECTS["house"].build(random.Random(0), "red"), 64, BACKGROUNDS["cream"])
    mask = np.logical_or.reduce(drawing.masks)
    styled = {
        name: np.asarray(
            apply_style(drawing.frames[-1], mask, BACKGROUNDS["cream"], random_style(random.Random(0), name))
        )
        for name in STYLES
    }
    original = np.asarray(drawing.frames[-1])
    for name, image in styled.items():
        assert (image != original).any(), name
        if name != "mosaic":
            assert (image[~mask] == original[~mask]).all(), f"{name} changed the background"


def test_style_reference_shows_another_subject(dataset):
    rows = rows_of(dataset["train"], "style")
    assert rows
    for row, meta in rows:
        assert len(row["images"]) == 2 and len(row["targets"]) == 1
        assert meta["reference"][0] != meta["content"][0]
        assert meta["style"] in STYLES


def test_held_out_pairs_only_in_eval(dataset):
    held_out = {tuple(pair) for pair in HELD_OUT_PAIRS}
    for meta in metas(dataset["train"]):
        assert not held_out & {tuple(pair) for pair in meta.get("drawn", [])}, meta
    eval_pairs = [(meta["subject"], meta["colour"]) for meta in metas(dataset["eval"])]
    assert set(eval_pairs) == held_out
    assert set(dataset["eval"]["task"]) == {"tutorial"}
    train_colours_by_subject = {subject: {c for s, c in TRAIN_PAIRS if s == subject} for subject in SUBJECTS}
    train_subjects_by_colour = {colour: {s for s, c in TRAIN_PAIRS if c == colour} for _, colour in HELD_OUT_PAIRS}
    for subject, colour in HELD_OUT_PAIRS:
        assert colour in SUBJECTS[subject].colours
        assert train_colours_by_subject[subject] and train_subjects_by_colour[colour]


def test_entity_tokens_come_from_the_processor(dataset):
    for row in dataset["train"]:
        if row["task"] in ("compose", "decompose", "style"):
            tokens = re.findall(r"<[a-z_]+>", row["instruction"])
            assert tokens, row["instruction"]
            assert set(tokens) <= set(ENTITY_TOKENS)


def test_compose_and_decompose_shapes(dataset):
    composed, decomposed = rows_of(dataset["train"], "compose"), rows_of(dataset["train"], "decompose")
    assert composed and decomposed
    for row, _ in composed:
        assert len(row["images"]) == 2 and len(row["targets"]) == 1
    for row, _ in decomposed:
        assert len(row["images"]) == 1 and len(row["targets"]) == 1
        assert (np.asarray(row["targets"][0])[0, 0] == 255).all(), "an extracted item stands on white"


def test_mask_rle_round_trip():
    mask = np.random.default_rng(0).random((64, 64)) > 0.7
    for first_pixel in (False, True):
        mask[0, 0] = first_pixel
        counts = mask_to_rle(mask)
        assert (counts[0] == 0) == first_pixel
        assert (rle_to_mask(counts, 64) == mask).all()
    with pytest.raises(ValueError, match="expected size"):
        rle_to_mask([1, 2], 64)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        build_dataset(0, seed=0)
    with pytest.raises(ValueError, match=r"size must be an int in \[32, 1024\]"):
        build_dataset(4, seed=0, size=16)
    with pytest.raises(ValueError, match="mix has unknown families"):
        build_dataset(4, seed=0, mix={"poetry": 1.0})
    with pytest.raises(ValueError, match="positive weight"):
        build_dataset(4, seed=0, mix={"style": 0})


def test_synthesize_writes_atomically(tmp_path):
    out = tmp_path / "synth"
    assert synthesize(out, 10, seed=3) == out
    loaded = datasets.load_from_disk(str(out))
    assert [entry.name for entry in tmp_path.iterdir()] == ["synth"]
    assert as_table(loaded, "train").equals(as_table(build_dataset(10, seed=3), "train"))
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize(out, 10, seed=3)
    synthesize(out, 12, seed=3, overwrite=True)
    assert datasets.load_from_disk(str(out))["train"].num_rows == 12
    assert [entry.name for entry in tmp_path.iterdir()] == ["synth"]


def test_cli_arguments(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser(prog="loom data synth"))
    args = parser.parse_args(["--out", str(tmp_path / "cli"), "--num-samples", "9", "--seed", "4", "--size", "48"])
    assert args.handler(args) == 0
    printed = capsys.readouterr()
    assert str(tmp_path / "cli") in printed.out
    assert "rows" in printed.err and "17/17" in printed.err  # a progress bar over the 9 train + 8 eval rows
    loaded = datasets.load_from_disk(str(tmp_path / "cli"))
    assert loaded["train"].num_rows == 9
    row = loaded["train"][0]
    assert {image.size for image in row["images"] + row["step_images"] + row["targets"]} == {(48, 48)}
