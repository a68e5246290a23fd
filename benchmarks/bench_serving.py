"""Serving speed: a batch of requests in one call vs one call per request, and the guidance branches of a step as
rows of one forward pass vs one forward pass per branch.

    python benchmarks/bench_serving.py [--prompts 8] [--steps 10] [--repeats 5] [--threads 2]

The model is a random checkpoint of hidden size 256, 4 layers, 128 px images, float32 (the configuration of the
speed targets). Text-to-image with text guidance 4.0. Both variants run alternately in one process; each ratio is
the median over repeats of (serial time / batched time), with its range. Outputs are checked equal first.
"""

import argparse
import json
import statistics
import time

import torch
from PIL import Image

from loom_hf.modeling.latents import pack_latents, unpack_latents
from loom_hf.modeling.packing import TokenType
from loom_hf.pipelines.guidance import GuidanceConfig, guided_velocity
from loom_hf.pipelines.pipeline_loom import ImageJob
from loom_hf.tiny import SMALL_TEXT_CONFIG, tiny_pipeline

PROMPTS = [
    "A red square above a blue circle.",
    "Draw a red house with a triangular roof.",
    "A green tree next to a small pond.",
    "A snowman with a green scarf.",
    "A yellow car on a grey road.",
    "A boat on blue water under the sun.",
    "A purple flower in a brown pot.",
    "A rocket flying over white clouds.",
]


def small_pipeline():
    pipe = tiny_pipeline(
        seed=0,
        image_size=128,
        text_config=SMALL_TEXT_CONFIG,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def ratio_summary(serial: list[float], batched: list[float]) -> dict:
    ratios = [s / b for s, b in zip(serial, batched)]
    return {
        "serial_s": round(statistics.median(serial), 4),
        "batched_s": round(statistics.median(batched), 4),
        "speedup": round(statistics.median(ratios), 2),
        "range": [round(min(ratios), 2), round(max(ratios), 2)],
    }


def bench_batch(pipe, args) -> dict:
    """`--prompts` text-to-image requests: one call vs one call each."""
    prompts = [[PROMPTS[i % len(PROMPTS)]] for i in range(args.prompts)]
    common = {"num_inference_steps": args.steps, "guidance_scale": 4.0, "image_guidance_scale": 1.0}

    def batched():
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, output_type="latent", **common).images

    def serial():
        return [
            pipe(p, generator=torch.Generator().manual_seed(i), output_type="latent", **common).images[0]
            for i, p in enumerate(prompts)
        ]

    for mine, theirs in zip(batched(), serial()):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    serial_times, batched_times = [], []
    for _ in range(args.repeats):
        serial_times.append(timed(serial)[0])
        batched_times.append(timed(batched)[0])
    return {
        "workload": f"{args.prompts} text-to-image prompts, {args.steps} steps",
        **ratio_summary(serial_times, batched_times),
    }


def velocity_per_branch(
    pipe, job: ImageJob, latents: torch.Tensor, sigma: torch.Tensor, guidance: GuidanceConfig
) -> torch.Tensor:
    """The guided velocity of one editing step the way the official code computes it: one forward per branch
    (conditional, text-free, image-free), then guidance; `pipe.guided_velocities` runs the branches as rows of one."""
    device, grid = latents.device, (latents.shape[-2] // 2, latents.shape[-1] // 2)
    ids, types = pipe.processor.image_block(grid[0] * grid[1], TokenType.LATENT)
    tokens = pack_latents(latents).to(pipe.model.dtype)
    velocities = []
    for name in ("cond", "text_uncond", "image_uncond"):
        cache = job.contexts.branch(name)
        with cache.read_only():
            velocities.append(
                pipe.model(
                    input_ids=torch.tensor([ids], device=device),
                    mm_token_type_ids=torch.tensor([types], device=device),
                    latents=tokens,
                    latent_grid_hw=torch.tensor([grid], device=device),
                    timesteps=sigma.reshape(1).to(device),
                    past_key_values=cache,
                    logits_to_keep=1,
                ).velocity.float()
            )
    return unpack_latents(guided_velocity(*velocities, guidance.scale, guidance.image_scale), *grid)


def bench_branches(pipe, args) -> dict:
    """One editing step (text 4.0 + image 2.0 guidance): three branches as rows of one forward vs three forwards."""
    image = Image.new("RGB", (128, 128), (200, 30, 30))
    job = ImageJob(pipe.encode_context([image, "Make the square blue."]), (128, 128))
    latents = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    guidance = GuidanceConfig(scale=4.0, image_scale=2.0)

    def one_forward():
        return pipe.guided_velocities([job], latents, sigma, guidance)

    def per_branch():
        return velocity_per_branch(pipe, job, latents, sigma, guidance)

    with torch.no_grad():
        torch.testing.assert_close(one_forward(), per_branch(), atol=1e-5, rtol=0)
        serial_times, batched_times = [], []
        for _ in range(args.repeats * 10):
            serial_times.append(timed(per_branch)[0])
            batched_times.append(timed(one_forward)[0])
    return {"workload": "one guided editing step, 3 branches", **ratio_summary(serial_times, batched_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = small_pipeline()
    for result in (bench_batch(pipe, args), bench_branches(pipe, args)):
        print(json.dumps({"threads": args.threads, **result}))


if __name__ == "__main__":
    main()
