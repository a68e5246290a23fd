"""How the embedded default model's (or `--model`'s) frames depend on the sampler: Euler steps, guidance, frame
keeping, on held-out tutorials.

    python benchmarks/bench_default_model_sampling.py [--model M] [--tutorials 12] [--threads 1] [--data runs/data]
        [--split eval] [--seed 0] [--settings '[{"guidance_scale": 2.0}, {"frame_keep_threshold": 0.5}]']
        [--most-changed-share 0.7] [--red-house-dir DIR]

Each setting (pipeline arguments; what it does not name, the model's saved defaults fill) scores the first
`--tutorials` held-out tutorials with `loom eval`'s own function (`evaluate_tutorials`, ground-truth plans and the
model's own plans, seeds `--seed`…): SSIM against the reference frames, step fidelity, temporal coherence, and how many
steps after the first left their part's region as it was (step fidelity 1 or more: "untouched"). The tutorials are the
`--split` of a `loom data synth` folder `--data` (or a saved dataset), else a fresh draw of the same generator.
`--most-changed-share` runs an experimental frame-keeping rule that is not in the package: every token whose difference
reaches this share of the most-changed token's changes too (the package's rule is share 1: that token alone).
`--red-house-dir` also saves each setting's "Draw a red house" tutorial on seeds 0-3 to `DIR/<setting>/seed_<N>`
(lay one out with `examples/default_model/frame_strip.py`). Quality numbers, not times: the machine may be busy.
"""

import argparse
import json
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F

from loom_hf import DEFAULT_MODEL, LoomInterleavedPipeline
from loom_hf.data.synth import build_dataset
from loom_hf.evaluation.evaluate import evaluate_tutorials
from loom_hf.pipelines import pipeline_loom
from loom_hf.pipelines.frame_keeping import kept_tokens

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


def settings_list(text: str) -> list[dict]:
    """`--settings`: a JSON list of objects of pipeline arguments."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(settings, list) or not all(isinstance(setting, dict) for setting in settings):
        raise argparse.ArgumentTypeError("expected a JSON list of objects, e.g. '[{\"guidance_scale\": 2.0}]'")
    return settings


def share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share must be in (0, 1]; got {text}")
    return value


def keeping_with_share(most_changed_share: float):
    """The package's `kept_tokens`, with every token whose difference reaches `most_changed_share` of the largest
    changing too (the experimental rule of `--most-changed-share`)."""

    def kept(estimate, previous, threshold, *, patch_size):
        difference = F.avg_pool2d((estimate - previous).abs().mean(dim=1, keepdim=True), patch_size)
        near_most = difference >= most_changed_share * difference.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        mask = kept_tokens(estimate, previous, threshold, patch_size=patch_size)
        return mask * (1.0 - F.interpolate(near_most.float(), scale_factor=patch_size, mode="nearest"))

    return kept


def held_out_rows(args: argparse.Namespace, size: int) -> datasets.Dataset:
    if args.data is None:
        return build_dataset(10 * args.tutorials, seed=0, size=size)["eval"]
    loaded = datasets.load_from_disk(args.data)
    return loaded[args.split] if isinstance(loaded, datasets.DatasetDict) else loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a saved pipeline folder (default: the embedded model)")
    parser.add_argument("--tutorials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--first", type=int, default=0, help="start at this setting (to resume a run)")
    parser.add_argument("--settings", type=settings_list, help="JSON list of pipeline arguments (default: the study)")
    parser.add_argument("--data", help="a `loom data synth` folder (default: a fresh draw)")
    parser.add_argument("--split", default="eval", help="its split (default eval)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first tutorial")
    parser.add_argument("--most-changed-share", type=share, help="the experimental frame-keeping rule (see above)")
    parser.add_argument("--red-house-dir", type=Path, help="save each setting's red house on seeds 0-3 here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.most_changed_share is not None:
        pipeline_loom.kept_tokens = keeping_with_share(args.most_changed_share)
    pipe = LoomInterleavedPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rows = held_out_rows(args, pipe.processor.image_processor.vae_image_size[0])
    print("| setting | SSIM (GT plan) | step fidelity ↓ | temporal coherence | untouched | plan exact-match |")
    print("| --- | --- | --- | --- | --- | --- |")
    for index, setting in enumerate((args.settings or SETTINGS)[args.first :], start=args.first):
        report = evaluate_tutorials(pipe, rows, num_samples=args.tutorials, seed=args.seed, **setting)
        gt, own = report["gt_plan"], report["own_plan"]
        later = [
            value
            for sample in report["samples"]
            for value in sample["gt_plan"]["step_fidelity"][1:]
            if value is not None
        ]
        untouched = sum(value >= 1.0 for value in later)
        print(
            json.dumps(
                {
                    **setting,
                    "most_changed_share": args.most_changed_share,
                    "gt_plan": {k: gt[k] for k in ("ssim", "psnr", "step_fidelity", "temporal_coherence")},
                    "untouched": [untouched, len(later)],
                    "plan_exact_match": own["plan_exact_match"],
                }
            ),
            flush=True,
        )
        print(
            f"| {json.dumps(setting)} | {gt['ssim']:.3f} | {gt['step_fidelity']:.3f} | "
            f"{gt['temporal_coherence']:.3f} | {untouched} / {len(later)} | {own['plan_exact_match']:.0%} |",
            flush=True,
        )
        if args.red_house_dir is not None:
            for seed in range(4):
                tutorial = pipe(
                    ["Draw a red house"], task="interleaved", generator=torch.Generator().manual_seed(seed), **setting
                )
                tutorial.save(args.red_house_dir / f"{index:02d}" / f"seed_{seed}", title="Draw a red house")


if __name__ == "__main__":
    main()
