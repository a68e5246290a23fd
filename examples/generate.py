"""Generate with a Loom pipeline and write the results to a folder.

python examples/generate.py --output-dir outputs/demo                      # the embedded default model
python examples/generate.py --tiny --output-dir outputs/noise              # a random tiny model (noise)
python examples/generate.py --bagel /path/to/BAGEL-7B-MoT --output-dir out   # an official BAGEL release
python examples/generate.py --model /path/to/converted --image cat.png --prompt "Make the cat wear a hat."
"""

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from loom_hf import DEFAULT_MODEL, ImageSegment, LoomInterleavedPipeline
from loom_hf.tiny import tiny_pipeline
from loom_hf.utils import finite_float, positive_int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a saved LoomInterleavedPipeline folder")
    source.add_argument("--bagel", help="an official BAGEL release folder")
    source.add_argument("--tiny", action="store_true", help="a freshly initialised tiny model (its images are noise)")
    parser.add_argument("--output-dir", required=True, help="where the images and texts are written")
    parser.add_argument("--prompt", default="Draw a red house with a triangular roof.")
    parser.add_argument("--image", action="append", default=[], help="input image(s), read before the prompt")
    parser.add_argument("--task", choices=["image", "text"], default="image")
    parser.add_argument("--think", action="store_true", help="write a plan before the image")
    parser.add_argument("--steps", type=positive_int, help="Euler steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=finite_float, help="text guidance (default: the model's)")
    parser.add_argument("--image-guidance-scale", type=finite_float, help="image guidance (default: the model's)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def load_pipeline(args: argparse.Namespace) -> LoomInterleavedPipeline:
    if args.model:
        return LoomInterleavedPipeline.from_pretrained(args.model)
    if args.bagel:
        dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
        return LoomInterleavedPipeline.from_bagel(args.bagel, dtype=dtype)
    if args.tiny:
        return tiny_pipeline(seed=args.seed)
    return LoomInterleavedPipeline.from_pretrained(DEFAULT_MODEL)


def main() -> None:
    args = parse_args()
    pipe = load_pipeline(args).to(args.device)
    inputs = [Image.open(path) for path in args.image] + [args.prompt]
    output = pipe(
        inputs,
        task=args.task,
        think=args.think,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        height=args.height,
        width=args.width,
        generator=torch.Generator().manual_seed(args.seed),
    )
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = []
    for index, segment in enumerate(output.segments):
        if isinstance(segment, ImageSegment):
            path = out_dir / f"{index:02d}_image.png"
            segment.image.save(path)
            record.append({"type": "image", "file": path.name})
        else:
            record.append({"type": "text", "text": segment.text})
    (out_dir / "segments.json").write_text(
        json.dumps({"inputs": [str(i) for i in inputs], "segments": record}, indent=2)
    )
    print(f"Wrote {len(record)} segment(s) to {out_dir}")


if __name__ == "__main__":
    main()
