"""Where along the noise range the embedded default model loses its frames.

    python benchmarks/bench_default_model_noise_levels.py [--tutorials 12] [--sigmas 1.0 0.8 0.6 0.4 0.2] [--model M]
        [--guidance-scale G] [--image-guidance-scale G]

`--model` is a pipeline folder trained on the procedural data (default: the embedded model). Each held-out drawing
tutorial (the rows `loom eval` scores, seeds as there) is rendered from its ground-truth plan, 20 Euler steps, the
model's own guidance unless the two guidance options name one (so that models saved with different defaults can be
compared at one setting), frame keeping off. For a noise level σ < 1, every frame's latents are
replaced, at the Euler step where the schedule reaches σ, by the ground-truth frame's latents on the flow path,
`(1 - σ) · x0 + σ · noise` (through `callback_on_step_end`); the model draws only the rest. σ = 1 is plain
generation. Reported per σ: SSIM and PSNR of the frames against the ground truth, over all frames and over the first
frames alone (no history). Set beside the autoencoder's own ceiling (`bench_default_model_ceilings.py`), this splits
what the model misses into what it decides at high noise (layout, shape, colour of a part) and what it renders at
low noise (edges, detail).
"""

import argparse
import json
import statistics

import torch

from loom_hf import DEFAULT_MODEL, LoomInterleavedPipeline
from loom_hf.data.synth import build_dataset
from loom_hf.evaluation.metrics import psnr, ssim
from loom_hf.modeling.latents import encode_latents
from loom_hf.utils import non_negative_float, positive_int

STEPS = 20


def noise_level(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a noise level must be in (0, 1]; got {text}")
    return value


def ground_truth_latents(pipe: LoomInterleavedPipeline, frames) -> list[torch.Tensor]:
    """Each frame in the model's latent space (the posterior mean, as a frame enters a context)."""
    with torch.no_grad():
        return [encode_latents(pipe.vae, pipe.processor.image_processor.vae_pixel_values(frame)) for frame in frames]


def replacing_at(step: int, targets: list[torch.Tensor], generator: torch.Generator, used: set[float]):
    """A `callback_on_step_end` that, in every frame, puts the latents on the flow path to that frame's target once
    the schedule reaches its `step`-th sigma (the callback after step `step - 1` sets the next step's input); the
    sigma it replaced at goes into `used` (a model whose scheduler shifts its sigmas replaces at a shifted one)."""
    frame = {"index": -1}

    def callback(pipe, index, timestep, tensors):
        if index == 0:
            frame["index"] += 1
        if index == step - 1:
            sigma = float(pipe.scheduler.sigmas[step])
            used.add(round(sigma, 3))
            target = targets[frame["index"]]
            noise = torch.randn(target.shape, generator=generator, dtype=target.dtype)
            tensors["latents"] = (1 - sigma) * target + sigma * noise
        return tensors

    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tutorials", type=positive_int, default=12)
    parser.add_argument("--sigmas", type=noise_level, nargs="+", default=[1.0, 0.8, 0.6, 0.4, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a saved pipeline folder (default: the embedded model)")
    parser.add_argument("--guidance-scale", type=non_negative_float, help="text guidance (default: the model's)")
    parser.add_argument("--image-guidance-scale", type=non_negative_float, help="image guidance (default: the model's)")
    args = parser.parse_args()
    chosen = args.guidance_scale, args.image_guidance_scale
    pipe = LoomInterleavedPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.processor.image_processor.vae_image_size[0]
    rows = build_dataset(10 * args.tutorials, seed=0, size=size)["eval"]  # the first rows `loom eval` scores
    targets = [ground_truth_latents(pipe, rows[index]["step_images"]) for index in range(args.tutorials)]
    defaults = pipe.config.default_guidance_scale, pipe.config.default_image_guidance_scale
    guidance = [default if given is None else given for given, default in zip(chosen, defaults)]
    for sigma in args.sigmas:
        step = round((1 - sigma) * STEPS)  # the unshifted schedule: sigma_k = 1 - k / STEPS
        scores = {"ssim": [], "psnr": [], "ssim_first_frame": [], "psnr_first_frame": []}
        used: set[float] = set()
        for index in range(args.tutorials):
            row = rows[index]
            truth = row["step_images"]
            callback = None
            if step > 0:
                callback = replacing_at(step, targets[index], torch.Generator().manual_seed(index), used)
            out = pipe(
                [row["instruction"]],
                task="interleaved",
                plan=list(row["step_texts"]),
                num_inference_steps=STEPS,
                frame_keep_threshold=0.0,
                guidance_scale=args.guidance_scale,
                image_guidance_scale=args.image_guidance_scale,
                generator=torch.Generator().manual_seed(args.seed + index),
                callback_on_step_end=callback,
            )
            for position, (frame, reference) in enumerate(zip(out.images, truth)):
                for name, metric in (("ssim", ssim), ("psnr", psnr)):
                    value = metric(frame, reference)
                    scores[name].append(value)
                    if position == 0:
                        scores[f"{name}_first_frame"].append(value)
        means = {name: round(statistics.fmean(values), 3) for name, values in scores.items()}
        replaced_at = sorted(used) or None  # None: plain generation
        row = {"sigma": sigma, "replaced_at_sigma": replaced_at, "replaced_after_steps": step, "guidance": guidance}
        print(json.dumps({**row, "frames": len(scores["ssim"]), **means}))


if __name__ == "__main__":
    main()
