"""The training schema: row validation (every problem named with its row index) and the Loom parquet converter."""

import io
import json
import warnings

import datasets
import pandas as pd
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loom_hf.planning import parse_plan
from loom_hf.trainers import (
    LOOM_FEATURES,
    TASKS,
    convert_loom_parquet,
    from_loom_parquet_row,
    validate_rows,
)


def png(colour: str = "red", size: int = 8) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def encoded(colour: str = "red") -> dict:
    return {"bytes": png(colour), "path": None}


def make_row(task: str, **fields) -> dict:
    """A valid row of `task` (images as PIL, bytes dicts and a mix), with `fields` overriding."""
    image = PIL.Image.new("RGB", (8, 8), "blue")
    row = {
        "task": task,
        "instruction": f"do the {task}",
        "images": [],
        "step_texts": [],
        "step_images": [],
        "targets": [],
        "answer": "",
        "meta": "{}",
    }
    if task == "tutorial":
        row.update(step_texts=["Draw the walls", "Add a roof"], step_images=[image, encoded()])
    elif task == "understanding":
        row.update(images=[image], answer="A house.")
    elif task == "plan":
        row.update(step_texts=["Draw the walls", "Add a roof"])
    elif task == "t2i":
        row.update(targets=[encoded()])
    else:
        row.update(images=[encoded("green"), image], targets=[image])
    row.update(fields)
    return row


def good_rows() -> list[dict]:
    return [make_row(task) for task in TASKS]


def test_features_are_the_documented_schema():
    assert list(LOOM_FEATURES) == [
        "task",
        "instruction",
        "images",
        "step_texts",
        "step_images",
        "targets",
        "answer",
        "meta",
    ]
    assert isinstance(LOOM_FEATURES["images"].feature, datasets.Image)
    assert LOOM_FEATURES["step_texts"].feature == datasets.Value("string")
    assert TASKS == ("tutorial", "compose", "decompose", "style", "t2i", "edit", "understanding", "plan")


def test_valid_rows_pass():
    valid, problems = validate_rows(good_rows())
    assert valid == list(range(len(TASKS)))
    assert problems == []


BAD_ROWS = {
    "unknown task": (make_row("poem"), "unknown task 'poem'"),
    "empty instruction": (make_row("t2i", instruction="  "), "empty instruction"),
    "tutorial without steps": (make_row("tutorial", step_texts=[], step_images=[]), "tutorial has no steps"),
    "step count mismatch": (make_row("tutorial", step_texts=["a", "b", "c"]), "3 step texts but 2 step images"),
    "empty step text": (make_row("tutorial", step_texts=["Draw the walls", " "]), "empty step text at step(s) 1"),
    "compose without inputs": (make_row("compose", images=[]), "compose needs at least one input image"),
    "decompose without target": (make_row("decompose", targets=[]), "decompose needs at least one target image"),
    "style without inputs": (make_row("style", images=None), "style needs at least one input image"),
    "edit without target": (make_row("edit", targets=[]), "edit needs at least one target image"),
    "t2i without target": (make_row("t2i", targets=[]), "t2i needs a target image"),
    "understanding without image": (make_row("understanding", images=[]), "understanding needs at least one input"),
    "understanding without answer": (make_row("understanding", answer=""), "understanding needs a non-empty answer"),
    "plan without steps": (make_row("plan", step_texts=[]), "plan has no steps"),
    "plan with frames": (make_row("plan", step_images=[encoded(), encoded()]), "plan rows are text-only"),
    "unreadable bytes": (make_row("t2i", targets=[{"bytes": b"not an image", "path": None}]), "targets[0] cannot be"),
    "missing image file": (make_row("edit", images=["/nonexistent/picture.png"]), "images[0] cannot be decoded"),
    "missing field": ({"task": "t2i", "instruction": "x"}, "missing field(s) images"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_each_problem_is_reported_with_its_row_index(case):
    bad_row, reason = BAD_ROWS[case]
    rows = good_rows()
    rows.insert(3, bad_row)
    with pytest.warns(UserWarning, match=r"1 of 9 rows are invalid \(rows 3\)"):
        valid, problems = validate_rows(rows, on_error="skip")
    assert valid == [0, 1, 2, 4, 5, 6, 7, 8]
    assert [problem.index for problem in problems] == [3] * len(problems)
    assert any(reason in problem.reason for problem in problems), problems


def test_too_many_frames():
    rows = [make_row("tutorial"), make_row("tutorial", step_texts=["a", "b", "c"], step_images=[encoded()] * 3)]
    with pytest.warns(UserWarning):
        valid, problems = validate_rows(rows, max_frames=2, on_error="skip")
    assert valid == [0]
    assert [(p.index, p.reason) for p in problems] == [(1, "tutorial has 3 frames, more than max_frames=2")]
    assert validate_rows(rows, max_frames=3) == ([0, 1], [])


def test_raise_mode_lists_every_bad_row_and_reason():
    rows = good_rows()
    rows[1] = make_row("compose", images=[])
    rows[4] = make_row("t2i", instruction="", targets=[{"bytes": b"\x89PNG broken", "path": None}])
    with pytest.raises(ValueError) as raised:
        validate_rows(rows)
    message = str(raised.value)
    assert "2 of 8 rows are invalid (rows 1, 4)" in message
    assert "row 1: compose needs at least one input image" in message
    assert "row 4: empty instruction" in message
    assert "row 4: targets[0] cannot be decoded" in message


def test_skip_mode_warns_once():
    rows = [make_row("poem"), make_row("t2i"), make_row("t2i", targets=[]), make_row("tutorial", step_texts=[])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        valid, problems = validate_rows(rows, on_error="skip")
    assert len(caught) == 1
    assert "3 of 4 rows are invalid (rows 0, 2, 3)" in str(caught[0].message)
    assert valid == [1]
    assert {problem.index for problem in problems} == {0, 2, 3}


def test_no_warning_when_every_row_is_valid():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_rows(good_rows(), on_error="skip")[1] == []


@pytest.mark.parametrize("decode", [False, True])
def test_broken_bytes_in_a_dataset_are_reported(decode):
    """A Dataset is read through Arrow: undecoded images (and decodable columns alike) are checked, not crashed on."""
    features = LOOM_FEATURES.copy()
    for name in ("images", "step_images", "targets"):
        features[name] = datasets.List(datasets.Image(decode=decode))
    rows = [
        make_row("t2i", targets=[encoded()]),
        make_row("t2i", targets=[{"bytes": b"garbage", "path": None}]),
        make_row("tutorial", step_images=[encoded(), {"bytes": png()[:30], "path": None}]),
    ]
    dataset = datasets.Dataset.from_list(rows, features=features)
    with pytest.raises(ValueError, match=r"rows 1, 2") as raised:
        validate_rows(dataset)
    assert "row 1: targets[0] cannot be decoded" in str(raised.value)
    assert "row 2: step_images[1] cannot be decoded" in str(raised.value)
    with pytest.warns(UserWarning):
        assert validate_rows(dataset, on_error="skip")[0] == [0]


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="on_error must be one of"):
        validate_rows(good_rows(), on_error="ignore")
    with pytest.raises(ValueError, match="max_frames must be a positive int"):
        validate_rows(good_rows(), max_frames=0)
    with pytest.raises(TypeError, match="dataset_or_rows must be"):
        validate_rows("rows.parquet")


@pytest.mark.parametrize(
    "plan, steps",
    [
        ("Step1: Draw the walls, Step2: Add a roof", ["Draw the walls", "Add a roof"]),
        ("Step 1: Draw the walls\nStep 2: Add a roof\n", ["Draw the walls", "Add a roof"]),
        (
            "Step1 : Walls: draw a red square,\nStep2 :Roof: add a triangle,",
            ["Walls: draw a red square", "Roof: add a triangle"],
        ),
        (
            "Step1: Mix flour, sugar and eggs, Step2: Bake: 20 min at 180C",
            ["Mix flour, sugar and eggs", "Bake: 20 min at 180C"],
        ),
        ("Plan for a cake. Step1: a,Step2: b,Step3: c", ["a", "b", "c"]),
        ("no markers at all", []),
    ],
)
def test_official_plan_forms(plan, steps):
    """The official plan layouts the converter meets, split by the project's one plan parser."""
    assert parse_plan(plan) == steps


def write_parquet(path, image_lists, instruction_lists, as_structs=False):
    """A parquet file in the official layout: `image_list` (binary, or structs with bytes) and `instruction_list`."""
    if as_structs:
        image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        image_lists = [[{"bytes": item, "path": None} for item in images] for images in image_lists]
    else:
        image_type = pa.list_(pa.binary())
    table = pa.table(
        {
            "image_list": pa.array(image_lists, image_type),
            "instruction_list": pa.array(instruction_lists, pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)
    return path


def test_convert_tutorial_and_multi_reference_rows(tmp_path):
    first = write_parquet(
        tmp_path / "part-0.parquet",
        [[png("red"), png("green")], [png("red"), png("green"), png("blue")]],
        [
            ["How to draw a house", "Step1: Walls: draw the walls, Step2: Roof: add a red roof"],
            ["Make tea", "Step 1: Boil water\nStep 2: Add the tea bag\nStep 3: Pour"],
        ],
    )
    second = write_parquet(
        tmp_path / "part-1.parquet",
        [[png("red"), png("green"), png("blue")]],
        [["Place the <product> of image 1 into the <scene> of image 2"]],
        as_structs=True,
    )
    dataset = convert_loom_parquet([first, second])
    assert dataset.features == LOOM_FEATURES
    assert dataset["task"] == ["tutorial", "tutorial", "compose"]
    assert dataset[0]["step_texts"] == ["Walls: draw the walls", "Roof: add a red roof"]
    assert dataset[1]["step_texts"] == ["Boil water", "Add the tea bag", "Pour"]
    assert [image.getpixel((0, 0)) for image in dataset[1]["step_images"]] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    compose = dataset[2]
    assert compose["instruction"] == "Place the <product> of image 1 into the <scene> of image 2"
    assert [image.getpixel((0, 0)) for image in compose["images"]] == [(255, 0, 0), (0, 128, 0)]
    assert [image.getpixel((0, 0)) for image in compose["targets"]] == [(0, 0, 255)]
    assert json.loads(compose["meta"]) == {"source": "loom-parquet", "file": "part-1.parquet", "row": 0}
    assert validate_rows(dataset) == ([0, 1, 2], [])


def test_convert_reports_bad_rows_by_index(tmp_path):
    path = write_parquet(
        tmp_path / "mixed.parquet",
        [[png()], [png(), png()], [b"not an image", png()], [png()], [png(), png()]],
        [
            ["Draw", "Step1: a"],
            ["Draw", "Step1: a, Step2: b, Step3: c"],
            ["Combine <object> and <scene>"],
            ["Combine them"],
            ["a", "b", "c"],
        ],
    )
    with pytest.raises(ValueError) as raised:
        convert_loom_parquet(path)
    message = str(raised.value)
    assert "4 of 5 rows are invalid (rows 1, 2, 3, 4)" in message
    assert "row 1: mixed.parquet row 1: tutorial plan has 3 steps but image_list has 2 images" in message
    assert "row 2: mixed.parquet row 2: images[0] cannot be decoded" in message
    assert "row 3: mixed.parquet row 3: multi-reference row needs references and a target" in message
    assert "row 4: mixed.parquet row 4: instruction_list must hold 1 (multi-reference) or 2" in message
    with pytest.warns(UserWarning, match="4 of 5 rows are invalid"):
        kept = convert_loom_parquet(path, on_error="skip")
    assert kept["step_texts"] == [["a"]]


def test_convert_rows_read_with_pandas(tmp_path):
    """pandas hands list columns over as numpy arrays; the row converter accepts them."""
    path = write_parquet(tmp_path / "rows.parquet", [[png(), png()]], [["Draw", "Step1: a, Step2: b"]])
    row = pd.read_parquet(path).iloc[0].to_dict()
    converted = from_loom_parquet_row(row)
    assert converted["task"] == "tutorial"
    assert converted["step_texts"] == ["a", "b"]
    assert converted["step_images"][0] == {"bytes": png(), "path": None}
    with pytest.raises(ValueError, match="missing column 'instruction_list'"):
        from_loom_parquet_row({"image_list": []})


def test_convert_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="path_or_paths"):
        convert_loom_parquet(tmp_path / "absent.parquet")


def test_convert_reads_through_datasets_and_names_unusable_files(tmp_path):
    rows = write_parquet(tmp_path / "a.parquet", [[png(), png()]], [["Draw", "Step1: a, Step2: b"]])
    empty = write_parquet(tmp_path / "b.parquet", [], [])
    dataset = convert_loom_parquet([rows, empty])
    # Arrow files of the datasets cache back the result (memory-mapped), not a table built in memory.
    assert dataset.cache_files and len(dataset) == 1 and dataset.features == LOOM_FEATURES
    assert len(convert_loom_parquet(empty)) == 0
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"'.*broken\.parquet' is not a readable parquet file"):
        convert_loom_parquet([rows, tmp_path / "broken.parquet"])
    pq.write_table(pa.table({"image_list": pa.array([[png()]], pa.list_(pa.binary()))}), tmp_path / "half.parquet")
    with pytest.raises(
        ValueError, match=r"'.*half\.parquet' lacks the official Loom column\(s\) \['instruction_list'\]"
    ):
        convert_loom_parquet(tmp_path / "half.parquet")
