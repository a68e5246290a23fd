"""Lay the frames of a `loom generate` output folder side by side, each captioned with its step number.

    loom generate "Draw a red house" --output-dir outputs/demo
    python examples/default_model/frame_strip.py outputs/demo docs/red_house_tutorial.png

This is how the README's pictures are made: frames scaled up (nearest neighbour, so no detail is invented) to
`--frame-size` pixels, with a white margin and the caption "Step N" under each.
"""

import argparse
import re
from pathlib import Path

from PIL import Image, ImageDraw

FRAME_NAME = re.compile(r"^frame_(\d+)\.png$")
MARGIN, CAPTION_HEIGHT = 6, 18


def frame_strip(folder: Path, frame_size: int = 128) -> Image.Image:
    """The frames of `folder` (`frame_01.png`, `frame_02.png`, ...) in step order as one captioned strip."""
    frames = sorted(
        (int(match[1]), path) for path in folder.iterdir() if (match := FRAME_NAME.match(path.name)) is not None
    )
    if not frames:
        raise SystemExit(f"error: {folder} holds no frame_NN.png files (the output of `loom generate`)")
    width = len(frames) * (frame_size + MARGIN) + MARGIN
    strip = Image.new("RGB", (width, frame_size + 2 * MARGIN + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    for column, (step, path) in enumerate(frames):
        left = MARGIN + column * (frame_size + MARGIN)
        frame = Image.open(path).convert("RGB").resize((frame_size, frame_size), Image.Resampling.NEAREST)
        strip.paste(frame, (left, MARGIN))
        caption = f"Step {step}"
        caption_width = draw.textlength(caption)
        draw.text((left + (frame_size - caption_width) / 2, frame_size + MARGIN + 3), caption, fill="black")
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a `loom generate --output-dir` folder")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--frame-size", type=int, default=128, help="side of each frame in the strip (pixels)")
    args = parser.parse_args()
    if args.frame_size < 16:
        raise SystemExit(f"error: --frame-size must be at least 16 pixels; got {args.frame_size}")
    if args.output.is_dir():
        raise SystemExit(f"error: the output {args.output} is a folder; name a PNG file")
    frame_strip(args.folder, args.frame_size).save(args.output)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
