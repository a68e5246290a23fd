"""The default model's training recipe (examples/default_model/reproduce.sh), scaled down, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from loom_hf import LoomForInterleavedGeneration

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "default_model"


def run(*command: str, cwd: Path) -> str:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_data_autoencoder_model_training_export_and_generation(tmp_path):
    python, loom = sys.executable, [sys.executable, "-m", "loom_hf.cli"]
    run(*loom, "data", "synth", "--out", "data", "--num-samples", "16", "--seed", "0", cwd=tmp_path)
    run(
        python,
        str(RECIPE / "train_vae.py"),
        "--dataset",
        "data",
        "--output-dir",
        "vae",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--block-out-channels",
        "8",
        "16",
        "16",
        "16",
        "--norm-num-groups",
        "8",
        "--held-out-rows",
        "4",
        "--latent-channels",
        "4",
        cwd=tmp_path,
    )
    run(
        python,
        str(RECIPE / "build_pipeline.py"),
        "--data",
        "data",
        "--vae",
        "vae",
        "--output",
        "init",
        "--vocab-size",
        "400",
        cwd=tmp_path,
    )
    run(
        python,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        str(REPO / "examples" / "train_sft.py"),
        "--model_name_or_path",
        "init",
        "--dataset",
        "data",
        "--output_dir",
        "run",
        "--max_steps",
        "3",
        "--max_tokens_per_batch",
        "1024",
        "--report_to",
        "none",
        "--use_cpu",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--cache_latents",
        "--changed_token_loss_weight",
        "4",
        cwd=tmp_path,
    )
    run(
        python,
        str(RECIPE / "export_default_model.py"),
        "--pipeline",
        "run/pipeline",
        "--output",
        "exported",
        "--model",
        "run/pipeline/model",
        "--guidance-scale",
        "1.5",
        "--image-guidance-scale",
        "1.25",
        "--stochastic-sampling",
        "--num-inference-steps",
        "2",
        cwd=tmp_path,
    )
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert (index["default_guidance_scale"], index["default_image_guidance_scale"]) == (1.5, 1.25)
    assert index["default_num_inference_steps"] == 2  # what `loom generate` below runs, naming no --steps
    scheduler = json.loads((tmp_path / "exported" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["stochastic_sampling"] is True
    config = json.loads((tmp_path / "exported" / "model" / "config.json").read_text())
    assert config["dtype"] == "float32" and config["max_frames"] == 8  # loaded back in float32
    assert config["latent_channels"] == 4  # the autoencoder's, through build_pipeline
    # float16 for size, except the modules the model keeps in float32 (latent heads, time embedder).
    kept = tuple(f"{module}." for module in LoomForInterleavedGeneration._keep_in_fp32_modules)
    with safe_open(tmp_path / "exported" / "model" / "model.safetensors", "pt") as weights:
        dtypes = {name: weights.get_tensor(name).dtype for name in weights.keys()}
    assert {dtype for name, dtype in dtypes.items() if not name.startswith(kept)} == {torch.float16}
    assert {dtype for name, dtype in dtypes.items() if name.startswith(kept)} == {torch.float32}

    output = run(
        *loom,
        "generate",
        "Draw a red house",
        "--model",
        "exported",
        "--output-dir",
        "tutorial",
        "--plan-step",
        "Draw the walls",
        "--plan-step",
        "Add a roof",
        cwd=tmp_path,
    )
    assert "Step 2: Add a roof" in output
    assert Image.open(tmp_path / "tutorial" / "frame_02.png").size == (64, 64)
    assert (tmp_path / "tutorial" / "tutorial.html").is_file()
    run(python, str(RECIPE / "frame_strip.py"), "tutorial", "strip.png", cwd=tmp_path)
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size == (2 * (128 + 6) + 6, 128 + 2 * 6 + 18)
    # The second frame, scaled up by nearest neighbour, sits right of the first.
    second = (
        Image.open(tmp_path / "tutorial" / "frame_02.png").convert("RGB").resize((128, 128), Image.Resampling.NEAREST)
    )
    assert strip.crop((6 + 134, 6, 6 + 134 + 128, 6 + 128)).tobytes() == second.tobytes()
