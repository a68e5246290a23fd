"""How the embedded default model's frames depend on the sampler: Euler steps and guidance, on held-out tutorials.

    python benchmarks/bench_default_model_sampling.py [--tutorials 12] [--threads 1]

Each setting scores the first `--tutorials` held-out tutorials with `loom eval`'s own function
(`evaluate_tutorials`, ground-truth plans and the model's own plans, seeds 0…): SSIM against the reference frames,
step fidelity and temporal coherence. Quality numbers, not times: the machine may be busy.
"""

import argparse
import json

import torch

from loom_hf import DEFAULT_MODEL, LoomInterleavedPipeline
from loom_hf.data.synth import build_dataset
from loom_hf.evaluation.evaluate import evaluate_tutorials

SETTINGS = [
    {"num_inference_steps": 10, "guidance_scale": 4.0, "image_guidance_scale": 2.0},
    {"num_inference_steps": 20, "guidance_scale": 4.0, "image_guidance_scale": 2.0},
    {"num_inference_steps": 40, "guidance_scale": 4.0, "image_guidance_scale": 2.0},
    {"num_inference_steps": 20, "guidance_scale": 7.0, "image_guidance_scale": 2.0},
    {"num_inference_steps": 20, "guidance_scale": 2.0, "image_guidance_scale": 1.5},
    {"num_inference_steps": 20, "guidance_scale": 2.0, "image_guidance_scale": 1.0},
    {"num_inference_steps": 20, "guidance_scale": 1.5, "image_guidance_scale": 1.5},
    {"num_inference_steps": 20, "guidance_scale": 1.5, "image_guidance_scale": 1.0},
    {"num_inference_steps": 20, "guidance_scale": 1.0, "image_guidance_scale": 1.0},
    {"num_inference_steps": 40, "guidance_scale": 1.5, "image_guidance_scale": 1.0},
    {"num_inference_steps": 20, "guidance_scale": 1.5, "image_guidance_scale": 2.0},
    {"num_inference_steps": 20, "guidance_scale": 1.5, "image_guidance_scale": 3.0},
    {"num_inference_steps": 20, "guidance_scale": 2.0, "image_guidance_scale": 3.0},
    {"num_inference_steps": 20, "guidance_scale": 1.25, "image_guidance_scale": 2.0},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tutorials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--first", type=int, default=0, help="start at this setting (to resume a run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = LoomInterleavedPipeline.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.processor.image_processor.vae_image_size[0]
    rows = build_dataset(10 * args.tutorials, seed=0, size=size)["eval"]
    print(
        "| steps | guidance (text / image) | SSIM (GT plan) | step fidelity ↓ | temporal coherence | plan exact-match |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for setting in SETTINGS[args.first :]:
        report = evaluate_tutorials(pipe, rows, num_samples=args.tutorials, seed=0, **setting)
        gt, own = report["gt_plan"], report["own_plan"]
        print(
            json.dumps(
                {
                    **setting,
                    "gt_plan": {k: gt[k] for k in ("ssim", "step_fidelity", "temporal_coherence")},
                    "plan_exact_match": own["plan_exact_match"],
                }
            ),
            flush=True,
        )
        print(
            f"| {setting['num_inference_steps']} | {setting['guidance_scale']} / {setting['image_guidance_scale']} | "
            f"{gt['ssim']:.3f} | {gt['step_fidelity']:.3f} | {gt['temporal_coherence']:.3f} | "
            f"{own['plan_exact_match']:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
