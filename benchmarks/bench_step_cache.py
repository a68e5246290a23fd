"""Denoising-step caching on the embedded default model: speed and frame similarity against the uncached tutorial.

    python benchmarks/bench_step_cache.py [--steps 40] [--repeats 2] [--threads 2] [--stochastic-sampling]

Each setting renders the same tutorial as `loom generate "Draw a red house"` (the model writes its plan, then the
frames; seed 0, the model's own guidance and frame keeping) at `--steps` Euler steps per frame, with the flow Euler
ODE unless `--stochastic-sampling` (the embedded model's own sampler) is given: a step cache reuses or extrapolates
the decoder's features from step to step, which a sampler that draws fresh noise at every step breaks. Runs
alternate with the uncached one in one process; the speedup is the median over repeats of (uncached time / cached
time) for the whole call, planning included. SSIM compares each frame with the uncached frame of the same step (mean
and minimum).
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

from loom_hf import DEFAULT_MODEL, LoomInterleavedPipeline
from loom_hf.evaluation.metrics import ssim

SETTINGS = {
    "TaylorSeer interval 2, warm-up 4, order 1": TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=4, max_order=1, taylor_factors_dtype=torch.float32
    ),
    "TaylorSeer interval 3, warm-up 4, order 1": TaylorSeerCacheConfig(
        cache_interval=3, disable_cache_before_step=4, max_order=1, taylor_factors_dtype=torch.float32
    ),
    "TaylorSeer interval 4, warm-up 4, order 2": TaylorSeerCacheConfig(
        cache_interval=4, disable_cache_before_step=4, max_order=2, taylor_factors_dtype=torch.float32
    ),
    "TaylorSeer interval 6, warm-up 3, order 2": TaylorSeerCacheConfig(
        cache_interval=6, disable_cache_before_step=3, max_order=2, taylor_factors_dtype=torch.float32
    ),
    "TaylorSeer interval 10, warm-up 3, order 2": TaylorSeerCacheConfig(
        cache_interval=10, disable_cache_before_step=3, max_order=2, taylor_factors_dtype=torch.float32
    ),
    "First Block Cache threshold 0.1": FirstBlockCacheConfig(threshold=0.1),
    "First Block Cache threshold 0.3": FirstBlockCacheConfig(threshold=0.3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt", default="Draw a red house")
    parser.add_argument("--stochastic-sampling", action="store_true", help="the embedded model's own sampler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = LoomInterleavedPipeline.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    sampler = {"stochastic_sampling": args.stochastic_sampling}
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **sampler)
    pipe.set_progress_bar_config(disable=True)

    def tutorial():
        start = time.perf_counter()
        output = pipe(
            [args.prompt],
            task="interleaved",
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
        )
        return time.perf_counter() - start, output

    _, reference = tutorial()
    print(json.dumps({"plan": reference.plan, "frames": len(reference.images), "steps": args.steps, **sampler}))
    rows = []
    for name, config in SETTINGS.items():
        uncached_times, cached_times = [], []
        for _ in range(args.repeats):
            elapsed, _ = tutorial()
            uncached_times.append(elapsed)
            pipe.model.enable_cache(config)
            try:
                elapsed, cached = tutorial()
            finally:
                pipe.model.disable_cache()
            cached_times.append(elapsed)
        scores = [ssim(mine, theirs) for mine, theirs in zip(cached.images, reference.images)]
        ratios = [u / c for u, c in zip(uncached_times, cached_times)]
        row = {
            "setting": name,
            "speedup": round(statistics.median(ratios), 2),
            "range": [round(min(ratios), 2), round(max(ratios), 2)],
            "uncached_s": round(statistics.median(uncached_times), 2),
            "cached_s": round(statistics.median(cached_times), 2),
            "ssim_mean": round(statistics.mean(scores), 3),
            "ssim_min": round(min(scores), 3),
            "same_plan": cached.plan == reference.plan,
        }
        rows.append(row)
        print(json.dumps({"threads": args.threads, **row}))
    print("\n| setting | speedup (range) | frame SSIM mean / min |\n| --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['setting']} | {row['speedup']}× ({row['range'][0]}–{row['range'][1]}) | "
            f"{row['ssim_mean']} / {row['ssim_min']} |"
        )


if __name__ == "__main__":
    main()
