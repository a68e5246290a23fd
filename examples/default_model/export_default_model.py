"""Store a trained pipeline as the package's embedded default model (`loom_hf.DEFAULT_MODEL`).

    python examples/default_model/export_default_model.py --pipeline runs/stage2/pipeline \
        [--model runs/stage2/ema] [--guidance-scale 4.0 --image-guidance-scale 2.0] [--frame-keep-threshold 0.4] \
        [--frame-keep-text-share 0.5] [--stochastic-sampling] [--num-inference-steps 10]

Weights are stored in float16 (loaded back in float32), the folder is written next to the destination and
renamed into place, and its size is checked against the package budget. `--model` swaps in another trained model
folder of the same pipeline (the trainer's EMA weights, for instance), and the guidance and frame-keeping options
set what every call uses when it names none (saved in `model_index.json`). `--stochastic-sampling` switches on the
Euler scheduler's `stochastic_sampling` (diffusers' option: each step goes to the model's clean estimate and draws
fresh noise, instead of stepping along the velocity), saved in the scheduler's config, and `--num-inference-steps`
the Euler steps per image a call uses when it names none.
"""

import argparse
import json
from pathlib import Path

import torch

import loom_hf
from loom_hf import LoomForInterleavedGeneration, LoomInterleavedPipeline
from loom_hf.number_checks import check_integer, check_number
from loom_hf.pipelines.pipeline_loom import check_frame_keep_text_share
from loom_hf.utils import positive_int, share_float, written_atomically

BUDGET_MB = 25


def export(
    pipeline: str,
    destination: str | Path = loom_hf.DEFAULT_MODEL,
    *,
    model: str | None = None,
    guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    frame_keep_threshold: float | None = None,
    stochastic_sampling: bool | None = None,
    num_inference_steps: int | None = None,
    frame_keep_text_share: float | None = None,
) -> float:
    """Write `pipeline` (with the model folder `model` instead of its own, when given, and its default guidance,
    frame keeping and its text share, Euler steps and scheduler sampling replaced by the given values) in float16 to
    `destination`; returns its size in MB."""
    for name, value in (
        ("guidance_scale", guidance_scale),
        ("image_guidance_scale", image_guidance_scale),
        ("frame_keep_threshold", frame_keep_threshold),
    ):
        check_number(name, value, minimum=0.0, optional=True)  # before anything is loaded or written
    check_integer("num_inference_steps", num_inference_steps, minimum=1, optional=True)
    check_frame_keep_text_share("frame_keep_text_share", frame_keep_text_share)
    destination = Path(destination)
    components = {}
    if model is not None:
        components["model"] = LoomForInterleavedGeneration.from_pretrained(model, dtype=torch.float16)
    pipe = LoomInterleavedPipeline.from_pretrained(pipeline, dtype=torch.float16, **components)
    defaults = {
        "default_guidance_scale": guidance_scale,
        "default_image_guidance_scale": image_guidance_scale,
        "default_frame_keep_threshold": frame_keep_threshold,
        "default_num_inference_steps": num_inference_steps,
        "default_frame_keep_text_share": frame_keep_text_share,
    }
    if stochastic_sampling is not None and "stochastic_sampling" not in pipe.scheduler.config:
        name = type(pipe.scheduler).__name__
        raise ValueError(f"stochastic_sampling: the pipeline's {name} has no such option (a flow Euler scheduler has).")
    pipe.register_to_config(**{name: value for name, value in defaults.items() if value is not None})
    if stochastic_sampling is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, stochastic_sampling=stochastic_sampling
        )
    with written_atomically(destination) as staging:
        pipe.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp creates the folder private; the package's files are world-readable
        # The weights stay float16 on disk; `dtype="auto"` (transformers' default) loads them back in float32.
        config_file = staging / "model" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dtype": "float32"}, indent=2) + "\n")
        size = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file()) / 2**20
        if size > BUDGET_MB:
            raise ValueError(f"The exported model takes {size:.1f} MB, more than the {BUDGET_MB} MB budget.")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="the trained pipeline folder")
    parser.add_argument("--output", default=loom_hf.DEFAULT_MODEL, help="destination (default: the package's)")
    parser.add_argument("--model", help="a trained model folder to ship instead of the pipeline's own")
    parser.add_argument("--guidance-scale", type=float, help="the default text guidance of the shipped pipeline")
    parser.add_argument("--image-guidance-scale", type=float, help="the default image guidance of the shipped pipeline")
    parser.add_argument("--frame-keep-threshold", type=float, help="the default frame keeping of the shipped pipeline")
    parser.add_argument(
        "--frame-keep-text-share", type=share_float, help="the default frame-keeping text share of the shipped pipeline"
    )
    parser.add_argument(
        "--num-inference-steps", type=positive_int, help="the default Euler steps per image of the shipped pipeline"
    )
    parser.add_argument(
        "--stochastic-sampling",
        action=argparse.BooleanOptionalAction,
        help="the shipped scheduler's stochastic sampling (default: the pipeline's)",
    )
    args = parser.parse_args()
    size = export(
        args.pipeline,
        args.output,
        model=args.model,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        frame_keep_threshold=args.frame_keep_threshold,
        stochastic_sampling=args.stochastic_sampling,
        num_inference_steps=args.num_inference_steps,
        frame_keep_text_share=args.frame_keep_text_share,
    )
    print(f"Wrote {args.output} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
