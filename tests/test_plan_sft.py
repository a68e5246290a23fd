"""The planner trains as a standard causal language model with trl's SFTTrainer (examples/train_plan_sft.py)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from loom_hf.data import build_dataset
from loom_hf.planning import format_plan, plan_instruction
from loom_hf.tiny import tiny_pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_plan_sft.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_plan_sft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_pairs_use_the_pipeline_turns():
    rows = build_dataset(16, seed=0)["train"]
    pairs = load_script().plan_pairs(rows, "<|im_start|>", "<|im_end|>")
    tutorial = rows.filter(lambda row: row["task"] == "tutorial")[0]
    steps = tutorial["step_texts"]
    assert (
        pairs[0]["prompt"]
        == f"<|im_start|>{plan_instruction(tutorial['instruction'], len(steps))}<|im_end|><|im_start|>"
    )
    assert pairs[0]["completion"] == f"{format_plan(steps)}<|im_end|>"


def test_sft_trainer_lowers_the_plan_loss(tmp_path):
    torch.manual_seed(0)
    pipe = tiny_pipeline(seed=0)
    rows = build_dataset(16, seed=0)["train"]
    pairs = load_script().plan_pairs(rows, pipe.processor.bos_token, pipe.processor.eos_token).select(range(4))
    config = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=25,
        learning_rate=3e-3,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=4,
        save_strategy="no",
        lr_scheduler_type="constant",
    )
    trainer = SFTTrainer(model=pipe.model, args=config, train_dataset=pairs, processing_class=pipe.processor.tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_planner_script_never_overwrites_its_input_model(tmp_path, monkeypatch):
    """--output_dir holding the input pipeline is refused by name before loading; the input is unchanged."""
    model = tmp_path / "run" / "pipeline"
    tiny_pipeline(seed=0).save_pretrained(model)
    build_dataset(8, seed=0).save_to_disk(str(tmp_path / "data"))
    before = {path: path.read_bytes() for path in sorted(model.rglob("*")) if path.is_file()}
    argv = ["--model_name_or_path", str(model), "--dataset", str(tmp_path / "data"), "--output_dir", str(model.parent)]
    monkeypatch.setattr(
        "sys.argv", ["train_plan_sft.py", *argv, "--use_cpu", "--max_steps", "1", "--report_to", "none"]
    )
    with pytest.raises(ValueError, match="--output_dir '.*' overlaps the input --model_name_or_path "):
        load_script().main()
    assert {path: path.read_bytes() for path in sorted(model.rglob("*")) if path.is_file()} == before
