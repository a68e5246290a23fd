"""Fine-tune Loom's planner with trl's `SFTTrainer` on text-only instruction -> plan pairs.

    pip install -e ".[trl]"
    python examples/train_plan_sft.py --model_name_or_path ./loom-sft/pipeline --dataset ./data/loom \\
        --output_dir ./loom-planner --max_steps 500

The planner is the model itself read as a standard causal language model: the prompt is the planning instruction
as a text turn followed by the start of the answer turn (`<|im_start|>`), the completion is the plan and its end
marker, exactly the tokens the pipeline's plan-first tutorials decode. Only the completion is trained.
"""

from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import HfArgumentParser
from trl import SFTConfig, SFTTrainer

from loom_hf import LoomInterleavedPipeline
from loom_hf.planning import format_plan, plan_instruction
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import PLAN_TASKS
from loom_hf.utils import check_output_folder


@dataclass
class ScriptArguments:
    dataset: str = field(
        metadata={"help": "A save_to_disk folder in the training schema (tutorial and plan rows are used)."}
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved LoomInterleavedPipeline."})
    tiny: bool = field(default=False, metadata={"help": "Start from a tiny random pipeline (smoke tests)."})
    split: str = field(default="train", metadata={"help": "Split of a DatasetDict folder."})


def plan_pairs(rows: datasets.Dataset, bos: str, eos: str) -> datasets.Dataset:
    """Prompt/completion pairs of every tutorial and text-only plan row, in BAGEL's turn format."""
    tutorials = rows.filter(lambda row: row["task"] in PLAN_TASKS).select_columns(["instruction", "step_texts"])
    return tutorials.map(
        lambda row: {
            "prompt": f"{bos}{plan_instruction(row['instruction'], len(row['step_texts']))}{eos}{bos}",
            "completion": f"{format_plan(row['step_texts'])}{eos}",
        },
        remove_columns=tutorials.column_names,
    )


def main() -> None:
    script_args, training_args = HfArgumentParser((ScriptArguments, SFTConfig)).parse_args_into_dataclasses()
    if bool(script_args.model_name_or_path) == script_args.tiny:
        raise ValueError("Pass exactly one of --model_name_or_path or --tiny.")
    # The final pipeline and the checkpoints go into --output_dir: it may not be, hold or lie inside an input.
    given = {"--model_name_or_path": script_args.model_name_or_path, "--dataset": script_args.dataset}
    inputs = {name: path for name, path in given.items() if path and Path(path).exists()}
    check_output_folder(training_args.output_dir, option="--output_dir", overwrite=True, inputs=inputs)
    pipe = (
        tiny_pipeline(seed=0)
        if script_args.tiny
        else LoomInterleavedPipeline.from_pretrained(script_args.model_name_or_path)
    )
    rows = datasets.load_from_disk(script_args.dataset)
    rows = rows[script_args.split] if isinstance(rows, datasets.DatasetDict) else rows
    processor = pipe.processor
    pairs = plan_pairs(rows, processor.bos_token, processor.eos_token)
    trainer = SFTTrainer(
        model=pipe.model, args=training_args, train_dataset=pairs, processing_class=processor.tokenizer
    )
    trainer.train()
    if trainer.is_world_process_zero():
        pipe.save_pretrained(f"{training_args.output_dir}/pipeline")


if __name__ == "__main__":
    main()
