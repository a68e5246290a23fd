"""The embedded default model (`loom_hf.DEFAULT_MODEL`): ships inside the package, loads offline, and draws the
tutorial the README's first command asks for, step by step."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import loom_hf
from loom_hf.data.subjects import SUBJECTS

BUDGET_MB = 25


def test_default_model_is_small_safetensors_only():
    files = [path for path in Path(loom_hf.DEFAULT_MODEL).rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) / 2**20 <= BUDGET_MB
    weights = [path for path in files if path.suffix in {".bin", ".pt", ".pth", ".safetensors"}]
    assert weights and all(path.suffix == ".safetensors" for path in weights)


def test_loom_generate_draws_a_red_house_step_by_step_offline(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "loom_hf.cli", "generate", "Draw a red house", "--output-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]

    # The plan is the one the procedural data teaches for a red house (the captions do not depend on the layout).
    expected = [part.caption for part in SUBJECTS["house"].build(random.Random(0), "red")]
    assert [f"Step {i}: {caption}" for i, caption in enumerate(expected, start=1)] == result.stdout.splitlines()[:-1]
    assert result.stdout.splitlines()[-1] == f"Wrote {tmp_path / 'tutorial.html'}"
    # A progress bar over the frames, on stderr (tqdm), reaches every step.
    assert "frames" in result.stderr and f"{len(expected)}/{len(expected)}" in result.stderr

    html = (tmp_path / "tutorial.html").read_text()
    assert all(f"frame_{i:02d}.png" in html for i in range(1, len(expected) + 1))
    frames = [
        np.asarray(Image.open(tmp_path / f"frame_{i:02d}.png").convert("RGB"), dtype=np.int16)
        for i in range(1, len(expected) + 1)
    ]
    drawn = [foreground(frame) for frame in frames]
    # Step 1 draws red walls: a sizeable object, red before green and blue.
    assert drawn[0].mean() > 0.1
    red, green, blue = frames[0][drawn[0]].mean(axis=0)
    assert red > 1.3 * green and red > blue
    # Step 2 adds the roof: new drawn pixels outside the walls.
    assert (drawn[1] & ~drawn[0]).mean() > 0.05
    # Later steps keep what step 1 drew.
    assert all((drawn[0] & later).sum() >= 0.8 * drawn[0].sum() for later in drawn[1:])


def foreground(frame: np.ndarray) -> np.ndarray:
    """Pixels that differ clearly from the background colour (the median of the four corners)."""
    corners = np.stack([frame[0, 0], frame[0, -1], frame[-1, 0], frame[-1, -1]])
    return np.abs(frame - np.median(corners, axis=0)).max(axis=-1) > 60
