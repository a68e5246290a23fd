"""Per-frame cost of a 12-frame tutorial with sparse vs. full history (Loom's O(K_max) claim).

    python benchmarks/bench_tutorial_history.py [--frames 12] [--max-history-frames 4] [--repeats 7]

One tutorial is generated first; then frames are rendered again from the same context, repeatedly and alternately:
frame 2, frame K_max + 1 (the first whose history budget is full) and frame 12 with sparse history, and frame 12
with full history. A render is what the pipeline
does per frame: build the frame's context (the earlier frames as clean latent + ViT blocks, the step text), run the
Euler steps with guidance, decode the image and encode it for later frames. Medians are compared as ratios.
"""

import argparse
import json
import statistics
import time

import torch

from loom_hf.pipelines.guidance import GuidanceConfig
from loom_hf.pipelines.pipeline_loom import DenoisingSettings, ImageJob, TutorialSettings
from loom_hf.planning import format_plan, plan_instruction
from loom_hf.tiny import tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--max-history-frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="Euler steps per frame (guidance on: 3 passes each)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64, help="frame side in pixels (a multiple of 32)")
    args = parser.parse_args()

    pipe = tiny_pipeline(
        seed=0,
        image_size=args.image_size,
        max_frames=args.frames,
        text_config={
            "vocab_size": 432,
            "hidden_size": args.hidden_size,
            "intermediate_size": 4 * args.hidden_size,
            "num_hidden_layers": args.layers,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
    )
    pipe.set_progress_bar_config(disable=True)
    plan = [f"Add part number {i} of the drawing" for i in range(1, args.frames + 1)]
    prompt = "Draw a red house"
    first_run = pipe([prompt], task="interleaved", plan=plan, num_inference_steps=2)
    frames = [pipe.encode_image(image) for image in first_run.images]

    with torch.no_grad():
        base = pipe.encode_context([plan_instruction(prompt, None)])
        pipe.encode_context([format_plan(plan)], contexts=base)
        settings = DenoisingSettings(num_inference_steps=args.steps, guidance=GuidanceConfig(), timestep_shift=3.0)

        def render(index: int, history: str) -> float:
            start = time.perf_counter()
            tutorial = TutorialSettings(None, args.max_history_frames, history, use_step_text=True)
            contexts, _ = pipe.frame_contexts(base, frames, index, plan[index], tutorial)
            job = ImageJob(
                contexts, (args.image_size, args.image_size), torch.Generator().manual_seed(0), frame_index=index
            )
            (latents,) = pipe.denoise([job], settings)
            pipe.encode_image(pipe.decode_latents(latents, "pil")[0])
            return time.perf_counter() - start

        last = args.frames - 1
        full_budget = min(args.max_history_frames, last)  # the first frame that sees `max_history_frames` frames
        conditions = {
            "frame2_sparse": (1, "sparse"),
            "budget_full_sparse": (full_budget, "sparse"),
            "last_sparse": (last, "sparse"),
            "last_full": (last, "full"),
        }
        times = {name: [] for name in conditions}
        for _ in range(args.repeats):
            for name, (index, history) in conditions.items():
                times[name].append(render(index, history))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "frames": args.frames,
        "max_history_frames": args.max_history_frames,
        "euler_steps": args.steps,
        "image_px": args.image_size,
        "parameters": sum(p.numel() for p in pipe.model.parameters()),
        "median_seconds": {name: round(value, 3) for name, value in median.items()},
        f"sparse_frame{args.frames}_over_frame2": round(median["last_sparse"] / median["frame2_sparse"], 2),
        f"sparse_frame{args.frames}_over_frame{full_budget + 1}": round(
            median["last_sparse"] / median["budget_full_sparse"], 2
        ),
        f"frame{args.frames}_full_over_sparse": round(median["last_full"] / median["last_sparse"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
