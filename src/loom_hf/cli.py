"""`loom` command line: generate tutorials, serve the demo, convert a BAGEL release, synthesise data, evaluate."""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from .utils import (
    FRAME_KEEP_HELP,
    FRAME_KEEP_TEXT_HELP,
    check_output_folder,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    share_float,
    written_atomically,
)

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _shard_size(text: str) -> str:
    """argparse type: a size transformers' `save_pretrained` reads (`5GB`, `500MB`)."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        convert_file_size_to_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB or 500MB, got {text!r}") from None
    return text


def convert_bagel(args: argparse.Namespace) -> int:
    """Write the release as a pipeline folder, shard by shard: first into a temporary sibling, renamed into place at
    the end."""
    from .modeling.convert_bagel import check_release_folder
    from .pipelines import LoomInterleavedPipeline

    try:
        check_release_folder(args.src)
        destination = check_output_folder(args.dst, option="dst", overwrite=args.overwrite, inputs={"src": args.src})
        with written_atomically(destination) as staging:
            LoomInterleavedPipeline.convert_bagel(
                args.src,
                staging,
                vae_image_size=tuple(args.vae_image_size),
                vit_image_size=tuple(args.vit_image_size),
                dtype=DTYPES[args.dtype],
                timestep_shift=args.timestep_shift,
                max_shard_size=args.max_shard_size,
            )
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"Wrote {destination}")
    return 0


def _pipeline_folder(model: str | None) -> str:
    """`--model`, or the embedded default model; refused unless it is a saved pipeline folder."""
    from . import DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    if not (Path(model) / "model_index.json").is_file():
        raise SystemExit(f"error: --model {model!r} is not a saved LoomInterleavedPipeline folder.")
    return model


def generate(args: argparse.Namespace) -> int:
    """Write a plan-first tutorial (frames, tutorial.md, tutorial.html) for a prompt."""
    from .pipelines import LoomInterleavedPipeline

    model = _pipeline_folder(args.model)
    output_dir = Path(args.output_dir)
    try:
        check_output_folder(output_dir, option="--output-dir", overwrite=True, inputs={"--model": model})
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    images = [_read_image(path, output_dir) for path in args.image]
    try:
        pipe = LoomInterleavedPipeline.from_pretrained(model, dtype=torch.float32)
    except (OSError, ValueError) as error:  # a broken file of the folder, named
        raise SystemExit(f"error: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    with FrameProgress() as progress:
        output = pipe(
            [*images, args.prompt],
            task="interleaved",
            plan=args.plan_step or None,
            num_steps=args.num_steps,
            max_history_frames=args.max_history_frames,
            history=args.history,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            frame_keep_threshold=args.frame_keep_threshold,
            frame_keep_text_share=args.frame_keep_text_share,
            generator=torch.Generator().manual_seed(args.seed),
            callback_on_segment=progress.on_segment,
        )
    folder = output.save(args.output_dir, title=args.prompt)
    print(f"Wrote {folder / 'tutorial.html'}")
    return 0


class FrameProgress:
    """`loom generate`'s live view: the plan printed as soon as it exists, then a progress bar over the frames."""

    def __init__(self):
        self.bar = None

    def on_segment(self, pipe, index: int, segment) -> None:
        from huggingface_hub.utils import tqdm

        from .pipelines import ImageSegment
        from .planning import parse_plan

        if index == 0:
            steps = parse_plan(segment.text)
            print("\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, start=1)), flush=True)
            self.bar = tqdm(total=len(steps), desc="frames", unit="frame")
        elif isinstance(segment, ImageSegment):
            self.bar.update()

    def __enter__(self) -> "FrameProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _read_image(path: str, output_dir: Path):
    """An `--image` decoded now, so a missing or truncated file (or one the output would overwrite) stops the command
    before the model is loaded."""
    from PIL import Image

    if Path(path).resolve().is_relative_to(output_dir.resolve()):
        raise SystemExit(f"error: --image {path!r} lies inside --output-dir {str(output_dir)!r}, which is rewritten.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for missing, unknown and broken files
        raise SystemExit(f"error: --image {path!r} cannot be read: {error}") from error


def demo(args: argparse.Namespace) -> int:
    """Serve the Gradio demo (tutorials drawn while you watch, images, answers) until interrupted."""
    if importlib.util.find_spec("gradio") is None:
        raise SystemExit("error: `loom demo` needs gradio: pip install 'loom-hf[demo]'.")
    from .demo import serve

    serve(_pipeline_folder(args.model), host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert-bagel", help="Convert an official BAGEL release folder to a pipeline.")
    convert.add_argument("src", help="release folder (llm_config.json, vit_config.json, ema/ae.safetensors, tokenizer)")
    convert.add_argument("dst", help="output folder (written atomically)")
    sizes = {"nargs": 3, "type": positive_int, "metavar": ("MAX", "MIN", "STRIDE")}
    convert.add_argument("--vae-image-size", default=[1024, 512, 16], **sizes)
    convert.add_argument("--vit-image-size", default=[980, 224, 14], **sizes)
    convert.add_argument("--dtype", choices=sorted(DTYPES), default="auto", help="weights dtype (auto: as stored)")
    convert.add_argument("--max-shard-size", type=_shard_size, default="5GB", help="largest safetensors shard (5GB)")
    convert.add_argument("--timestep-shift", type=positive_float, default=3.0, help="default sampling shift (3.0)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    convert.set_defaults(handler=convert_bagel)

    tutorial = commands.add_parser("generate", help="Generate a step-by-step tutorial (default: the embedded model).")
    tutorial.add_argument("prompt", help='the instruction, e.g. "Draw a red house"')
    tutorial.add_argument("--output-dir", required=True, help="where the frames and tutorial.md/html are written")
    tutorial.add_argument("--model", help="a saved LoomInterleavedPipeline folder (default: loom_hf.DEFAULT_MODEL)")
    tutorial.add_argument("--image", action="append", default=[], help="input image(s), read before the prompt")
    tutorial.add_argument("--num-steps", type=positive_int, help="at most this many steps (default: the model decides)")
    tutorial.add_argument("--plan-step", action="append", default=[], help="render this plan instead (repeat per step)")
    tutorial.add_argument("--steps", type=positive_int, help="denoising steps per frame (default: the model's)")
    tutorial.add_argument("--guidance-scale", type=finite_float, help="text guidance scale (default: the model's)")
    tutorial.add_argument(
        "--image-guidance-scale", type=finite_float, help="image guidance scale (default: the model's)"
    )
    tutorial.add_argument("--frame-keep-threshold", type=non_negative_float, help=FRAME_KEEP_HELP)
    tutorial.add_argument("--frame-keep-text-share", type=share_float, help=FRAME_KEEP_TEXT_HELP)
    tutorial.add_argument("--max-history-frames", type=non_negative_int, default=4, help="earlier frames per frame")
    tutorial.add_argument("--history", choices=["sparse", "full", "none"], default="sparse")
    tutorial.add_argument("--seed", type=non_negative_int, default=0)
    tutorial.set_defaults(handler=generate)

    app = commands.add_parser("demo", help="Serve the Gradio demo in the browser (default: the embedded model).")
    app.add_argument("--model", help="a saved LoomInterleavedPipeline folder (default: loom_hf.DEFAULT_MODEL)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    app.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    app.set_defaults(handler=demo)

    from .data import add_synth_arguments

    data = commands.add_parser("data", help="Training data tools.")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    add_synth_arguments(data_commands.add_parser("synth", help="Write the procedural training dataset."))

    from .evaluation import add_eval_arguments

    add_eval_arguments(commands.add_parser("eval", help="Evaluate a pipeline on held-out tutorials."))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
