"""
Evaluation of a Loom pipeline on held-out tutorials (the eval split of `loom data synth`, or any dataset of
tutorial rows), and the `loom eval` command.

Every tutorial is generated twice: with its ground-truth plan, to measure the frames against the ground-truth
frames, and with the model's own plan, to measure planning.
"""

import argparse
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from diffusers import SchedulerMixin
from huggingface_hub.utils import tqdm

from ..data import rle_to_mask
from ..modeling.history import HISTORY_MODES
from ..pipelines import LoomInterleavedPipeline
from ..utils import (
    FRAME_KEEP_HELP,
    FRAME_KEEP_TEXT_HELP,
    check_output_file,
    check_output_folder,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_int,
    share_float,
)
from .judge import SCORE_KEYS, Judge, JudgeScores, OpenAICompatibleJudge
from .metrics import plan_exact_match, psnr, ssim, step_fidelity, temporal_coherence

__all__ = ["drawing_annotations", "evaluate_tutorials", "add_eval_arguments", "run_eval"]

logger = logging.getLogger(__name__)

# Pipeline arguments the evaluation sets itself, per generation.
RESERVED_PIPELINE_ARGUMENTS = (
    "inputs",
    "task",
    "plan",
    "num_steps",
    "generator",
    "output_type",
    "return_dict",
    "progress",
)
JUDGE_API_KEY_VARIABLE = "OPENAI_API_KEY"


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not `None`; `None` when there are none."""
    present = [value for value in values if value is not None]
    return math.fsum(present) / len(present) if present else None


def _column(dataset, name: str) -> list:
    """One column of a `datasets.Dataset` or a list of rows."""
    return dataset[name] if isinstance(dataset, datasets.Dataset) else [row[name] for row in dataset]


def _tutorial_rows(
    dataset: datasets.Dataset | Sequence[Mapping[str, Any]], num_samples: int | None
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """`(position, row)` of the first `num_samples` tutorial rows (all of them when `None`)."""
    taken = 0
    for position, row in enumerate(dataset):
        if num_samples is not None and taken == num_samples:
            return
        if row["task"] == "tutorial":
            taken += 1
            yield position, row


def drawing_annotations(row: Mapping[str, Any]) -> tuple[str, list[np.ndarray]] | None:
    """The background name and per-step part masks of a synthetic drawing tutorial, or `None` when its metadata
    holds neither (converted Loom rows, for instance)."""
    meta = json.loads(row["meta"] or "{}")
    steps = meta.get("steps") or []
    if "background" not in meta or len(steps) != len(row["step_images"]):
        return None
    if not all("mask_rle" in step for step in steps):
        return None
    size = row["step_images"][0].width
    return meta["background"], [rle_to_mask(step["mask_rle"], size) for step in steps]


def _per_frame(metric: Callable, frames: Sequence[PIL.Image.Image], references: Sequence[PIL.Image.Image]) -> list:
    """`metric(frame, reference)` of each generated frame against its ground-truth frame."""
    return [metric(frame, reference) for frame, reference in zip(frames, references, strict=True)]


def _judge_record(judge: Judge, instruction: str, steps: list[str], frames: list[PIL.Image.Image]) -> dict | None:
    """The judge's scores of one tutorial, or `None` (with a warning) when its answer cannot be parsed."""
    try:
        scores: JudgeScores = judge(instruction, steps, frames)
    except ValueError as error:
        logger.warning("The judge's answer was not usable (%s); the tutorial counts as not judged.", error)
        return None
    record = {key: getattr(scores, key) for key in SCORE_KEYS}
    return {**record, "overall_score": scores.overall_score, "raw_response": scores.raw_response}


def _ground_truth_plan_record(row: Mapping[str, Any], frames: list[PIL.Image.Image], judge: Judge | None) -> dict:
    """Frame metrics of the tutorial generated from the ground-truth plan."""
    references = row["step_images"]
    record: dict[str, Any] = {
        "ssim": _per_frame(ssim, frames, references),
        "psnr": _per_frame(psnr, frames, references),
        "step_fidelity": None,
        "temporal_coherence": None,
    }
    annotations = drawing_annotations(row)
    if annotations is not None:
        background, masks = annotations
        record["step_fidelity"] = step_fidelity(frames, references, masks, background).per_step
        record["temporal_coherence"] = temporal_coherence(frames, masks)
    if judge is not None:
        record["judge"] = _judge_record(judge, row["instruction"], list(row["step_texts"]), frames)
    return record


def _own_plan_record(
    row: Mapping[str, Any], plan: list[str] | None, frames: list[PIL.Image.Image], judge: Judge | None
) -> dict:
    """Planning metrics of the tutorial generated from the model's own plan (`plan` is `None` when the model's plan
    could not be parsed: a miss with no frames)."""
    steps = list(row["step_texts"])
    right_length = plan is not None and len(plan) == len(steps)
    record: dict[str, Any] = {
        "plan": plan,
        "plan_parsed": plan is not None,
        "plan_exact_match": plan is not None and plan_exact_match(plan, steps),
        "step_count_match": right_length,
        "ssim": _per_frame(ssim, frames, row["step_images"]) if right_length else None,
    }
    if judge is not None:
        record["judge"] = _judge_record(judge, row["instruction"], plan, frames) if plan is not None else None
    return record


def _judge_summary(records: list[dict | None]) -> dict:
    """Mean judge scores over the judged tutorials, with how many were judged and how many answers were unusable."""
    judged = [record for record in records if record is not None]
    means = {key: _mean([record[key] for record in judged]) for key in (*SCORE_KEYS, "overall_score")}
    return {**means, "num_judged": len(judged), "num_unusable": len(records) - len(judged)}


def _summary(samples: list[dict], judged: bool) -> dict:
    """Means over samples: each sample's frame metrics are first averaged over its frames or steps."""
    truth = [sample["gt_plan"] for sample in samples]
    own = [sample["own_plan"] for sample in samples]
    gt_plan = {
        "ssim": _mean([_mean(record["ssim"]) for record in truth]),
        "psnr": _mean([_mean(record["psnr"]) for record in truth]),
        "step_fidelity": _mean([_mean(record["step_fidelity"] or []) for record in truth]),
        "temporal_coherence": _mean([record["temporal_coherence"] for record in truth]),
    }
    own_plan = {
        "plan_parsed": _mean([float(record["plan_parsed"]) for record in own]),
        "plan_exact_match": _mean([float(record["plan_exact_match"]) for record in own]),
        "step_count_match": _mean([float(record["step_count_match"]) for record in own]),
        "ssim": _mean([_mean(record["ssim"]) for record in own if record["ssim"] is not None]),
    }
    if judged:
        gt_plan["judge"] = _judge_summary([record["judge"] for record in truth])
        own_plan["judge"] = _judge_summary([record["judge"] for record in own if record["plan_parsed"]])
    return {"gt_plan": gt_plan, "own_plan": own_plan}


def _as_json_setting(value: Any) -> Any:
    """`value` if a JSON report can hold it, else its `repr`."""
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def _scheduler_settings(scheduler: SchedulerMixin) -> dict:
    """The sampler that ran: the scheduler's class and public config (its `stochastic_sampling`, `shift`, ...)."""
    config = {name: _as_json_setting(value) for name, value in scheduler.config.items() if not name.startswith("_")}
    return {"class": type(scheduler).__name__, **config}


def evaluate_tutorials(
    pipe: LoomInterleavedPipeline,
    dataset: datasets.Dataset | Sequence[Mapping[str, Any]],
    num_samples: int | None = None,
    seed: int = 0,
    num_inference_steps: int | None = None,
    judge: Judge | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **pipeline_kwargs,
) -> dict:
    """
    Generate and score the tutorial rows of `dataset`.

    For each row (the sample at position i is seeded with `seed + i`, through a fresh `torch.Generator` per call):

    * `gt_plan`: the tutorial rendered from the row's own steps (`plan=row["step_texts"]`): per-frame SSIM and PSNR
      against `row["step_images"]`, and, for synthetic drawing rows (metadata with a background and per-step masks),
      per-step [`step_fidelity`] and [`temporal_coherence`].
    * `own_plan`: the tutorial planned by the model (`num_steps=len(steps)`): whether its plan parsed, matched the
      reference exactly ([`plan_exact_match`]) and had the right number of steps; when it did, the SSIM of its
      frames. A plan the pipeline cannot parse is a miss with no frames, not an error.

    Args:
        pipe: the pipeline to evaluate.
        dataset: rows of the Loom schema (`LOOM_FEATURES`); rows of other tasks are skipped.
        num_samples: evaluate the first this many tutorial rows (default: all).
        seed: seed of the first sample.
        num_inference_steps: denoising steps per frame (default: the pipeline's `default_num_inference_steps`).
        judge: a [`Judge`] that also scores every generated tutorial; its mean scores join the report.
        output_dir: save each tutorial (`LoomPipelineOutput.save`) to `{output_dir}/{position:04d}/{gt_plan,own_plan}`.
        progress: show a progress bar over the tutorials.
        pipeline_kwargs: further pipeline arguments (guidance, size, `max_new_tokens`, ...), the same for every call.

    Returns:
        A JSON-ready report: `num_samples`, `seeds`, `settings`, the means in `gt_plan` and `own_plan` (`None` where
        nothing was measured), and every sample's values in `samples`.
    """
    if num_samples is not None and (type(num_samples) is not int or num_samples < 1):
        raise ValueError(f"`num_samples` must be an int >= 1 or None (all rows); got {num_samples!r}.")
    if type(seed) is not int or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0; got {seed!r}.")
    reserved = sorted(set(pipeline_kwargs) & set(RESERVED_PIPELINE_ARGUMENTS))
    if reserved:
        raise ValueError(f"`pipeline_kwargs` may not set {', '.join(reserved)}: the evaluation sets them per call.")
    arguments = {
        "task": "interleaved",
        "num_inference_steps": num_inference_steps,
        "output_type": "pil",
        **pipeline_kwargs,
    }

    samples = []
    available = sum(task == "tutorial" for task in _column(dataset, "task"))
    total = available if num_samples is None else min(num_samples, available)
    rows = tqdm(
        _tutorial_rows(dataset, num_samples), total=total, desc="tutorials", unit="tutorial", disable=not progress
    )
    for offset, (position, row) in enumerate(rows):
        sample_seed = seed + offset
        inputs = [*(row["images"] or []), row["instruction"]]
        steps = list(row["step_texts"])
        truth = pipe(inputs, plan=steps, generator=torch.Generator().manual_seed(sample_seed), **arguments)
        try:
            own = pipe(inputs, num_steps=len(steps), generator=torch.Generator().manual_seed(sample_seed), **arguments)
        except ValueError as error:
            logger.info("Sample %d: the model's plan did not parse (%s).", position, error)
            own = None
        if output_dir is not None:
            sample_dir = Path(output_dir) / f"{position:04d}"
            truth.save(sample_dir / "gt_plan", title=row["instruction"])
            if own is not None:
                own.save(sample_dir / "own_plan", title=row["instruction"])
        own_plan, own_frames = (own.plan, own.images) if own is not None else (None, [])
        samples.append(
            {
                "position": position,
                "seed": sample_seed,
                "instruction": row["instruction"],
                "num_steps": len(steps),
                "gt_plan": _ground_truth_plan_record(row, truth.images, judge),
                "own_plan": _own_plan_record(row, own_plan, own_frames, judge),
            }
        )
    if not samples:
        raise ValueError("`dataset` holds no tutorial rows (task == 'tutorial') to evaluate.")
    resolved = pipe.resolved_defaults(  # what every call ran with: the pipeline's saved defaults where none was given
        arguments["task"],
        guidance_scale=pipeline_kwargs.get("guidance_scale"),
        image_guidance_scale=pipeline_kwargs.get("image_guidance_scale"),
        frame_keep_threshold=pipeline_kwargs.get("frame_keep_threshold"),
        num_inference_steps=num_inference_steps,
        frame_keep_text_share=pipeline_kwargs.get("frame_keep_text_share"),
    )
    settings = {
        "seed": seed,
        "num_inference_steps": resolved.pop("num_inference_steps"),
        "judge": type(judge).__name__ if judge is not None else None,
        "pipeline_kwargs": {name: _as_json_setting(value) for name, value in pipeline_kwargs.items()},
        "resolved_defaults": {name: _as_json_setting(value) for name, value in resolved.items()},
        "scheduler": _scheduler_settings(pipe.scheduler),
    }
    return {
        "num_samples": len(samples),
        "seeds": [sample["seed"] for sample in samples],
        "settings": settings,
        **_summary(samples, judged=judge is not None),
        "samples": samples,
    }


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `loom eval` to `parser` and make [`run_eval`] its handler."""
    parser.add_argument("--model", required=True, help="saved LoomInterleavedPipeline folder (save_pretrained)")
    parser.add_argument("--data", required=True, help="dataset folder written by save_to_disk (e.g. loom data synth)")
    parser.add_argument("--split", default="eval", help="split of a DatasetDict folder (default eval)")
    parser.add_argument("--num-samples", type=positive_int, default=None, help="evaluate the first N tutorials (all)")
    parser.add_argument("--steps", type=positive_int, help="denoising steps per frame (default: the model's)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first sample; sample i: seed + i")
    parser.add_argument("--max-new-tokens", type=positive_int, default=500, help="longest plan the model may write")
    parser.add_argument("--guidance-scale", type=finite_float, help="text guidance scale (default: the model's)")
    parser.add_argument("--image-guidance-scale", type=finite_float, help="image guidance scale (default: the model's)")
    parser.add_argument(
        "--history",
        choices=HISTORY_MODES,
        default="sparse",
        help="earlier frames shown when rendering a frame (default sparse; `none` for the w/o-history ablation)",
    )
    parser.add_argument("--frame-keep-threshold", type=non_negative_float, help=FRAME_KEEP_HELP)
    parser.add_argument("--frame-keep-text-share", type=share_float, help=FRAME_KEEP_TEXT_HELP)
    parser.add_argument("--max-history-frames", type=non_negative_int, default=4, help="history budget K_max (4)")
    parser.add_argument(
        "--no-step-text",
        dest="use_step_text",
        action="store_false",
        help="render frames without their step text (the w/o-stepwise-prompt ablation)",
    )
    parser.add_argument("--device", default=None, help="device to run on (default: cuda when available, else cpu)")
    parser.add_argument("--report", default=None, help="also write the JSON report to this file")
    parser.add_argument("--output-dir", default=None, help="save every generated tutorial (frames, md, html) here")
    parser.add_argument(
        "--judge-url",
        default=None,
        help=f"OpenAI-compatible API root of a judge model (an API key is read from ${JUDGE_API_KEY_VARIABLE} if set)",
    )
    parser.add_argument("--judge-model", default=None, help="the judge model's name on --judge-url")
    parser.set_defaults(handler=run_eval)
    return parser


def _load_split(path: str, split: str) -> datasets.Dataset:
    """The `split` of a saved DatasetDict, or a saved Dataset as it is."""
    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"--split {split!r} is not in {path!r}; it holds {', '.join(loaded)}.")
        return loaded[split]
    return loaded


def run_eval(args: argparse.Namespace) -> int:
    """Handler of `loom eval`: evaluate the saved pipeline, print the JSON report and write it to `--report`."""
    if (args.judge_url is None) != (args.judge_model is None):
        raise SystemExit("error: --judge-url and --judge-model must be given together.")
    judge = None
    try:
        if args.report is not None:
            check_output_file(args.report, option="--report")
        if args.output_dir is not None:
            check_output_folder(
                args.output_dir,
                option="--output-dir",
                overwrite=True,
                inputs={"--model": args.model, "--data": args.data},
            )
        if args.judge_url is not None:
            api_key = os.environ.get(JUDGE_API_KEY_VARIABLE)
            judge = OpenAICompatibleJudge(args.judge_url, args.judge_model, api_key=api_key)
            judge.check_reachable()
        dataset = _load_split(args.data, args.split)
        pipe = LoomInterleavedPipeline.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=True)
    try:
        report = evaluate_tutorials(
            pipe,
            dataset,
            num_samples=args.num_samples,
            seed=args.seed,
            num_inference_steps=args.steps,
            judge=judge,
            output_dir=args.output_dir,
            progress=True,
            max_new_tokens=args.max_new_tokens,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            frame_keep_threshold=args.frame_keep_threshold,
            frame_keep_text_share=args.frame_keep_text_share,
            history=args.history,
            max_history_frames=args.max_history_frames,
            use_step_text=args.use_step_text,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    report["settings"].update(model=args.model, data=args.data, split=args.split)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report is not None:
        destination = Path(args.report)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text + "\n")
    return 0
