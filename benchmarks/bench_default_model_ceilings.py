"""What limits the embedded default model's frames: the ceilings any model of this recipe is measured against.

    python benchmarks/bench_default_model_ceilings.py [--tutorials 50] [--seed 0]

On held-out drawing tutorials (the procedural `eval` split, the same rows `loom eval` scores):

* **autoencoder ceiling**: SSIM and PSNR of every ground-truth frame against its own encode→decode through the
  shipped autoencoder (posterior mean), what a generator that produced the perfect latent would score;
* **layout ceiling**: SSIM of the ground-truth frames of a tutorial against those of a second draw of the same
  prompt and steps (another seed), which places, sizes and mirrors the drawing anew, what a model that draws a valid
  layout of its own scores at best against the reference;
* **step fidelity and temporal coherence ceilings**: the two drawing metrics of `loom eval` (reference masks and
  background) for the autoencoder's reconstructions of the ground-truth frames (the right layout, drawn as well as the
  autoencoder allows) and for the second draw (a valid drawing of another layout, as the model would draw one),
  plain and through the autoencoder; the second draw may also pick another background, which the prompt does not name.
"""

import argparse
import json
import random
import statistics

import torch

from loom_hf import DEFAULT_MODEL, LoomInterleavedPipeline
from loom_hf.data.synth import HELD_OUT_PAIRS, build_dataset, drawing_tutorial
from loom_hf.evaluation.evaluate import drawing_annotations
from loom_hf.evaluation.metrics import psnr, ssim, step_fidelity, temporal_coherence
from loom_hf.modeling.latents import encode_latents

DRAWINGS = ("autoencoder", "second_draw", "second_draw_autoencoder")


def encode_decode(pipe: LoomInterleavedPipeline, image):
    """`image` through the pipeline's autoencoder and back (posterior mean, as a frame enters a context)."""
    pixels = pipe.processor.image_processor.vae_pixel_values(image).to(pipe.vae.dtype)
    with torch.no_grad():
        return pipe.decode_latents(encode_latents(pipe.vae, pixels), "pil")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tutorials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = LoomInterleavedPipeline.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    size = pipe.processor.image_processor.vae_image_size[0]
    # The eval split's rows do not depend on the train size: these are the first rows `loom eval` scores.
    rows = build_dataset(10 * args.tutorials, seed=args.seed, size=size)["eval"]
    reconstruction_ssim, reconstruction_psnr, layout_ssim = [], [], []
    drawing = {name: {"step_fidelity": [], "temporal_coherence": []} for name in DRAWINGS}
    for index in range(args.tutorials):
        reference = rows[index]
        pair = HELD_OUT_PAIRS[index % len(HELD_OUT_PAIRS)]
        redrawn = drawing_tutorial(random.Random(f"ceiling:{args.seed}:{index}"), size, pair)
        decoded = [encode_decode(pipe, frame) for frame in reference["step_images"]]
        for frame, reconstruction in zip(reference["step_images"], decoded):
            reconstruction_ssim.append(ssim(reconstruction, frame))
            reconstruction_psnr.append(psnr(reconstruction, frame))
        candidates = {"autoencoder": decoded}
        if reference["step_texts"] == redrawn["step_texts"]:
            layout_ssim += [ssim(a, b) for a, b in zip(redrawn["step_images"], reference["step_images"])]
            candidates["second_draw"] = redrawn["step_images"]
            candidates["second_draw_autoencoder"] = [encode_decode(pipe, frame) for frame in redrawn["step_images"]]
        background, masks = drawing_annotations(reference)
        for name, frames in candidates.items():
            scores = step_fidelity(frames, reference["step_images"], masks, background).per_step
            scored = [score for score in scores if score is not None]
            # Averaged per tutorial first, then over tutorials, as `loom eval` reports it.
            drawing[name]["step_fidelity"].append(statistics.mean(scored) if scored else None)
            drawing[name]["temporal_coherence"].append(temporal_coherence(frames, masks))
    print(
        json.dumps(
            {
                "tutorials": args.tutorials,
                "frames": len(reconstruction_ssim),
                "autoencoder_ssim": round(statistics.mean(reconstruction_ssim), 3),
                "autoencoder_psnr_db": round(statistics.mean(reconstruction_psnr), 2),
                "layout_ssim": round(statistics.mean(layout_ssim), 3) if layout_ssim else None,
                "layout_pairs": len(layout_ssim),
                **{
                    f"{name}_{metric}": round(statistics.mean(v for v in values if v is not None), 3)
                    for name, metrics in drawing.items()
                    for metric, values in metrics.items()
                    if any(v is not None for v in values)
                },
            }
        )
    )


if __name__ == "__main__":
    main()
