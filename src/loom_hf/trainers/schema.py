"""Training-data schema of Loom: one row per sample, as `datasets.Features`, with a row validator and a converter
from the official Loom parquet files.

A row holds a task name, the user instruction, the input images, a tutorial plan (step texts with one frame per
step), target images, a text answer (understanding only) and free-form JSON metadata. A `plan` row is a tutorial
without frames: it trains the planner on text alone.
"""

import functools
import io
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

from ..planning import parse_plan

__all__ = [
    "TASKS",
    "PLAN_TASKS",
    "LOOM_FEATURES",
    "RowProblem",
    "validate_rows",
    "from_loom_parquet_row",
    "convert_loom_parquet",
]

TASKS = ("tutorial", "compose", "decompose", "style", "t2i", "edit", "understanding", "plan")
# Tasks whose rows carry a plan (`step_texts`): tutorials with one frame per step, text-only plans without frames.
PLAN_TASKS = ("tutorial", "plan")

LOOM_FEATURES = datasets.Features(
    {
        "task": datasets.Value("string"),
        "instruction": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "step_texts": datasets.List(datasets.Value("string")),
        "step_images": datasets.List(datasets.Image()),
        "targets": datasets.List(datasets.Image()),
        "answer": datasets.Value("string"),
        "meta": datasets.Value("string"),
    }
)

IMAGE_FIELDS = ("images", "step_images", "targets")
# Tasks that read reference images and write target images.
REFERENCE_TASKS = ("compose", "decompose", "style", "edit")
ON_ERROR_CHOICES = ("raise", "skip")
# How many problems a raised error spells out; the bad row indices are always listed in full.
MAX_REPORTED_PROBLEMS = 50
ARROW_BATCH_SIZE = 256
_PARQUET_COLUMNS = ("image_list", "instruction_list")


@dataclass(frozen=True)
class RowProblem:
    """One reason why row `index` cannot be used for training."""

    index: int
    reason: str

    def __str__(self) -> str:
        return f"row {self.index}: {self.reason}"


def _image_problem(image: Any) -> str | None:
    """Decode one image given as PIL, `{"bytes", "path"}` dict, raw bytes or path; return why it fails, if it does."""
    if image is None:
        return "is missing"
    if isinstance(image, PIL.Image.Image):
        source = None
    elif isinstance(image, Mapping):
        if image.get("bytes"):
            source = io.BytesIO(image["bytes"])
        elif image.get("path"):
            source = image["path"]
        else:
            return "has neither bytes nor a path"
    elif isinstance(image, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(image))
    elif isinstance(image, (str, os.PathLike)):
        source = image
    else:
        return f"has unsupported type {type(image).__name__} (expected PIL image, dict with bytes/path, bytes or path)"
    # Image bytes come from outside: any decoder failure (PIL raises many exception types) marks the row as bad.
    try:
        if source is None:
            image.load()
        else:
            with PIL.Image.open(source) as decoded:
                decoded.load()
    except Exception as error:  # noqa: BLE001
        return f"cannot be decoded ({type(error).__name__}: {error})"
    return None


def _as_list(value: Any) -> list:
    """A list field of a row; null counts as empty (Arrow stores missing lists as null)."""
    return [] if value is None else list(value)


def _row_reasons(row: Mapping[str, Any], max_frames: int | None) -> list[str]:
    """Every reason why `row` is unusable; empty when the row is fine."""
    missing = [name for name in LOOM_FEATURES if name not in row]
    if missing:
        return [f"missing field(s) {', '.join(missing)}"]
    reasons = []
    task = row["task"]
    if task not in TASKS:
        reasons.append(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if not (row["instruction"] or "").strip():
        reasons.append("empty instruction")

    images, targets = _as_list(row["images"]), _as_list(row["targets"])
    step_texts, step_images = _as_list(row["step_texts"]), _as_list(row["step_images"])
    if task in PLAN_TASKS:
        if not step_texts:
            reasons.append(f"{task} has no steps")
        empty_steps = [k for k, text in enumerate(step_texts) if not (text or "").strip()]
        if empty_steps:
            reasons.append(f"empty step text at step(s) {', '.join(str(k) for k in empty_steps)}")
    if task == "plan" and (images or step_images or targets):
        reasons.append("plan rows are text-only (no images, step_images or targets)")
    if task == "tutorial":
        if len(step_texts) != len(step_images):
            reasons.append(f"tutorial has {len(step_texts)} step texts but {len(step_images)} step images")
        if max_frames is not None and len(step_images) > max_frames:
            reasons.append(f"tutorial has {len(step_images)} frames, more than max_frames={max_frames}")
    elif task in REFERENCE_TASKS:
        if not images:
            reasons.append(f"{task} needs at least one input image")
        if not targets:
            reasons.append(f"{task} needs at least one target image")
    elif task == "t2i" and not targets:
        reasons.append("t2i needs a target image")
    elif task == "understanding":
        if not images:
            reasons.append("understanding needs at least one input image")
        if not (row["answer"] or "").strip():
            reasons.append("understanding needs a non-empty answer")

    for field, values in (("images", images), ("step_images", step_images), ("targets", targets)):
        for position, image in enumerate(values):
            problem = _image_problem(image)
            if problem is not None:
                reasons.append(f"{field}[{position}] {problem}")
    return reasons


def _iterate_rows(dataset_or_rows: datasets.Dataset | Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Rows as plain dicts; a `Dataset` is read through Arrow so images stay undecoded `{"bytes", "path"}` structs."""
    if isinstance(dataset_or_rows, datasets.Dataset):
        for table in dataset_or_rows.with_format("arrow").iter(batch_size=ARROW_BATCH_SIZE):
            yield from table.to_pylist()
    elif isinstance(dataset_or_rows, Iterable) and not isinstance(dataset_or_rows, (str, bytes, Mapping)):
        for row in dataset_or_rows:
            if not isinstance(row, Mapping):
                raise TypeError(f"dataset_or_rows must yield dict rows, got an item of type {type(row).__name__}")
            yield row
    else:
        raise TypeError(
            "dataset_or_rows must be a datasets.Dataset or an iterable of dict rows, "
            f"got {type(dataset_or_rows).__name__}"
        )


def _check_options(max_frames: int | None, on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")


def _report(problems: list[RowProblem], total: int, on_error: str) -> None:
    """Raise one error listing every bad row, or warn once, as `on_error` asks."""
    if not problems:
        return
    bad_rows = sorted({problem.index for problem in problems})
    summary = f"{len(bad_rows)} of {total} rows are invalid (rows {', '.join(str(i) for i in bad_rows)})"
    if on_error == "skip":
        warnings.warn(f"Skipping {summary}.", stacklevel=3)
        return
    lines = [str(problem) for problem in problems[:MAX_REPORTED_PROBLEMS]]
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_REPORTED_PROBLEMS} more problems")
    raise ValueError(summary + ":\n  " + "\n  ".join(lines))


def validate_rows(
    dataset_or_rows: datasets.Dataset | Iterable[Mapping[str, Any]],
    max_frames: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> tuple[list[int], list[RowProblem]]:
    """
    Check that every row follows [`LOOM_FEATURES`] and is usable for its task, decoding every image.

    Args:
        dataset_or_rows: a `datasets.Dataset` (image columns may be `Image(decode=False)`; they are read undecoded
            either way) or an iterable of dict rows whose images are PIL images, `{"bytes", "path"}` dicts or paths.
        max_frames: the most frames a tutorial may hold (`None`: no limit).
        on_error: `"raise"` raises a `ValueError` listing the bad rows and reasons; `"skip"` warns once.

    Returns:
        The indices of the valid rows and the problems found, each naming its row index.
    """
    _check_options(max_frames, on_error)
    valid, problems, total = [], [], 0
    for index, row in enumerate(_iterate_rows(dataset_or_rows)):
        total += 1
        reasons = _row_reasons(row, max_frames)
        problems.extend(RowProblem(index, reason) for reason in reasons)
        if not reasons:
            valid.append(index)
    _report(problems, total, on_error)
    return valid, problems


def _encoded_image(item: Any, position: int) -> dict:
    """One `image_list` entry (raw bytes or a dict with "bytes") as a `datasets.Image` struct."""
    if isinstance(item, Mapping):
        item = item.get("bytes")
    if not isinstance(item, (bytes, bytearray, memoryview)) or not item:
        raise ValueError(f"image_list[{position}] holds no image bytes")
    return {"bytes": bytes(item), "path": None}


def _text_list(value: Any) -> list[str]:
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"instruction_list must be a list of str, got {type(value).__name__}")
    texts = list(value)
    if not all(isinstance(text, str) for text in texts):
        raise ValueError("instruction_list must hold only str")
    return texts


def from_loom_parquet_row(row: Mapping[str, Any]) -> dict:
    """
    Convert one row of the official Loom parquet files (`image_list`, `instruction_list`) to [`LOOM_FEATURES`].

    - `instruction_list = [topic, plan]` is a tutorial: `image_list` holds one frame per plan step.
    - `instruction_list = [instruction]` is a multi-reference row: `image_list` holds the references then the
      target, giving a "compose" row.

    Raises:
        ValueError: when the row fits neither layout (the message says why).
    """
    for column in ("image_list", "instruction_list"):
        if column not in row:
            raise ValueError(f"missing column {column!r}")
    if row["image_list"] is None:
        raise ValueError("image_list is null")
    images = [_encoded_image(item, position) for position, item in enumerate(row["image_list"])]
    texts = _text_list(row["instruction_list"])
    converted = {name: [] for name in ("images", "step_texts", "step_images", "targets")}
    converted.update(answer="", meta=json.dumps({"source": "loom-parquet"}))
    if len(texts) == 2:
        topic, plan = texts
        steps = parse_plan(plan)
        if not steps:
            raise ValueError("tutorial plan has no step markers ('Step1:', 'Step 1:', ...)")
        if len(steps) != len(images):
            raise ValueError(f"tutorial plan has {len(steps)} steps but image_list has {len(images)} images")
        converted.update(task="tutorial", instruction=topic, step_texts=steps, step_images=images)
    elif len(texts) == 1:
        if len(images) < 2:
            raise ValueError(f"multi-reference row needs references and a target, got {len(images)} image(s)")
        converted.update(task="compose", instruction=texts[0], images=images[:-1], targets=images[-1:])
    else:
        raise ValueError(
            f"instruction_list must hold 1 (multi-reference) or 2 (tutorial: topic, plan) texts, got {len(texts)}"
        )
    return converted


def _parquet_files(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The parquet files named, a folder standing for its sorted `*.parquet` files."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        path_or_paths = [path_or_paths]
    files = []
    for path in map(Path, path_or_paths):
        if path.is_dir():
            files.extend(sorted(path.glob("*.parquet")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"path_or_paths: no such parquet file or folder: {str(path)!r}")
    if not files:
        raise FileNotFoundError(f"path_or_paths: no parquet files found in {[str(p) for p in path_or_paths]}")
    return files


# A bad row's fields while it waits to be filtered out, and the converted rows' features with their problems.
_EMPTY_ROW = {name: "" if isinstance(feature, datasets.Value) else [] for name, feature in LOOM_FEATURES.items()}
_CONVERTED_FEATURES = datasets.Features({**LOOM_FEATURES, "problems": datasets.List(datasets.Value("string"))})


def _converted_parquet_row(raw: Mapping[str, Any], local_index: int, *, file_name: str, max_frames: int | None):
    """One official row as a [`LOOM_FEATURES`] row plus its `problems` (empty for a usable row; a bad row keeps
    empty fields, to be filtered out)."""
    where = f"{file_name} row {local_index}"
    try:
        row = from_loom_parquet_row(raw)
    except ValueError as error:
        return {**_EMPTY_ROW, "problems": [f"{where}: {error}"]}
    row["meta"] = json.dumps({"source": "loom-parquet", "file": file_name, "row": local_index})
    return {**row, "problems": [f"{where}: {reason}" for reason in _row_reasons(row, max_frames)]}


def _parquet_rows(file: Path) -> int:
    """The row count of an official Loom parquet file, read from its footer alone, before `datasets` builds
    anything; refuses, naming the file, one that is no parquet file or lacks the official columns."""
    try:
        metadata = pq.read_metadata(file)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{str(file)!r} is not a readable parquet file: {error}") from error
    names = metadata.schema.to_arrow_schema().names
    missing = [column for column in _PARQUET_COLUMNS if column not in names]
    if missing:
        raise ValueError(f"{str(file)!r} lacks the official Loom column(s) {missing}; it has {names}.")
    return metadata.num_rows


def convert_loom_parquet(
    path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
    max_frames: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> datasets.Dataset:
    """
    Read official Loom parquet files into a `datasets.Dataset` with [`LOOM_FEATURES`].

    Each file is read with `datasets` (`Dataset.from_parquet`, Arrow on disk in the datasets cache, so a corpus
    larger than memory converts too) and every row converted with [`from_loom_parquet_row`] and checked like
    [`validate_rows`] in one `map`. Rows are numbered across the files in order. Bad rows never stop the reading:
    they are collected with their index, then raised all together (`on_error="raise"`) or dropped with one warning
    (`"skip"`).
    """
    _check_options(max_frames, on_error)
    parts, problems, offset = [], [], 0
    for file in _parquet_files(path_or_paths):
        if _parquet_rows(file) == 0:
            continue  # `datasets` cannot build a split from a file without rows; it adds none anyway
        raw = datasets.Dataset.from_parquet(str(file), columns=list(_PARQUET_COLUMNS))
        converted = raw.map(
            functools.partial(_converted_parquet_row, file_name=file.name, max_frames=max_frames),
            with_indices=True,
            remove_columns=raw.column_names,
            features=_CONVERTED_FEATURES,
            desc=f"Converting {file.name}",
        )
        for local_index, reasons in enumerate(converted["problems"]):
            problems.extend(RowProblem(offset + local_index, reason) for reason in reasons)
        offset += len(converted)
        parts.append(converted.filter(lambda reasons: not reasons, input_columns="problems"))
    _report(problems, offset, on_error)
    if not parts:
        return datasets.Dataset.from_dict({name: [] for name in LOOM_FEATURES}, features=LOOM_FEATURES)
    return datasets.concatenate_datasets(parts).remove_columns("problems")
