"""Held-out quality along a training run: `loom eval`'s frame metrics for every checkpoint of an output folder.

    python examples/default_model/eval_checkpoints.py --pipeline runs/stage2/pipeline --run runs/stage2 \
        --data runs/data [--tutorials 12] [--guidance-scale 1.5 --image-guidance-scale 1.5] \
        [--checkpoints 300 600 1200] [--weights ema] [--frame-keep-threshold 0.4]

The training loss of a flow model is mostly the noise it cannot predict, so it says little about whether more steps
would help; this says it in the metrics that matter. Each `checkpoint-N` model (its live weights, and its EMA weights
when the checkpoint holds them) goes into the pipeline `--pipeline` in place of that pipeline's own model, and renders
the first `--tutorials` held-out tutorials from their ground-truth plans (seeds 0...). Prints one JSON line per model.
Frame keeping is off unless `--frame-keep-threshold` is given (the pipeline's own default does not apply): the curve
is about the weights.
"""

import argparse
import json
import re
from pathlib import Path

import datasets
import torch
from diffusers.training_utils import EMAModel

from loom_hf import LoomForInterleavedGeneration, LoomInterleavedPipeline
from loom_hf.evaluation.evaluate import evaluate_tutorials
from loom_hf.trainers.ema import EMA_FILE, load_ema_state, saved_ema_names
from loom_hf.utils import finite_float, non_negative_float, positive_int

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def with_ema_weights(model: LoomForInterleavedGeneration, checkpoint: Path) -> LoomForInterleavedGeneration:
    """`model` with the EMA shadow weights of `checkpoint` copied in: those of the parameters the run trained, which
    the file names (all of them, or only the generation side of a `--train_experts generation` run)."""
    by_name = dict(model.named_parameters())
    averaged = set(saved_ema_names(checkpoint / EMA_FILE))
    foreign = sorted(averaged - set(by_name))
    if foreign:
        raise SystemExit(f"error: {checkpoint / EMA_FILE} holds EMA weights of other parameters: {foreign[:5]}")
    if not averaged:
        raise SystemExit(f"error: {checkpoint / EMA_FILE} holds no EMA weights")
    names = [name for name in by_name if name in averaged]
    parameters = [by_name[name] for name in names]
    ema = EMAModel(parameters)
    load_ema_state(ema, names, checkpoint / EMA_FILE)
    ema.copy_to(parameters)
    return model


def weights_to_score(checkpoint: Path, requested: str) -> tuple[str, ...]:
    """The weights of `checkpoint` that `--weights` asks for: "both" means the EMA too where the run kept one."""
    has_ema = (checkpoint / EMA_FILE).is_file()
    if requested == "ema" and not has_ema:
        raise SystemExit(f"error: {checkpoint} holds no {EMA_FILE} (the run kept no EMA weights); use --weights live")
    if requested == "both":
        return ("live", "ema") if has_ema else ("live",)
    return (requested,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a pipeline folder of the run (processor, VAE, scheduler)")
    parser.add_argument("--run", required=True, type=Path, help="the training output folder with checkpoint-N folders")
    parser.add_argument("--data", required=True, help="the dataset folder whose `eval` split is scored")
    parser.add_argument("--tutorials", type=positive_int, default=12)
    parser.add_argument(
        "--steps", type=positive_int, default=20, help="denoising steps per frame (default 20, not the model's)"
    )
    parser.add_argument("--checkpoints", type=int, nargs="+", help="only these checkpoint steps (default: all)")
    parser.add_argument("--weights", choices=("live", "ema", "both"), default="both", help="which weights to score")
    parser.add_argument("--guidance-scale", type=finite_float)
    parser.add_argument("--image-guidance-scale", type=finite_float)
    parser.add_argument("--frame-keep-threshold", type=non_negative_float, default=0.0, help="default 0: off")
    args = parser.parse_args()
    checkpoints = sorted(
        (int(match[1]), path) for path in args.run.iterdir() if (match := CHECKPOINT.match(path.name)) is not None
    )
    if args.checkpoints is not None:
        absent = sorted(set(args.checkpoints) - {step for step, _ in checkpoints})
        if absent:
            raise SystemExit(f"error: {args.run} holds no checkpoint-N folder for step(s) {absent}")
        checkpoints = [(step, path) for step, path in checkpoints if step in args.checkpoints]
    if not checkpoints:
        raise SystemExit(f"error: {args.run} holds no checkpoint-N folders")
    # Which weights each checkpoint is scored with, settled for all of them before any evaluation.
    plans = {step: weights_to_score(path, args.weights) for step, path in checkpoints}
    rows = datasets.load_from_disk(args.data)["eval"]
    sampling = {
        name: value
        for name, value in (
            ("guidance_scale", args.guidance_scale),
            ("image_guidance_scale", args.image_guidance_scale),
        )
        if value is not None
    }
    sampling["frame_keep_threshold"] = args.frame_keep_threshold
    for step, path in checkpoints:
        for weights in plans[step]:
            model = LoomForInterleavedGeneration.from_pretrained(path, dtype=torch.float32)
            if weights == "ema":
                model = with_ema_weights(model, path)
            pipe = LoomInterleavedPipeline.from_pretrained(args.pipeline, model=model, dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            report = evaluate_tutorials(
                pipe, rows, num_samples=args.tutorials, seed=0, num_inference_steps=args.steps, **sampling
            )
            gt = report["gt_plan"]
            print(
                json.dumps(
                    {
                        "step": step,
                        "weights": weights,
                        **{key: round(gt[key], 3) for key in ("ssim", "step_fidelity", "temporal_coherence")},
                        "plan_exact_match": report["own_plan"]["plan_exact_match"],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
