"""Fine-tune BAGEL into Loom (or continue training Loom) with `LoomTrainer`.

    accelerate launch examples/train_sft.py --model_name_or_path ./bagel-hf --dataset ./data/loom \\
        --output_dir ./loom-sft --max_steps 1000 --learning_rate 2.5e-5 --bf16

    # two CPU processes (tests, debugging)
    ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate/cpu_2proc.yaml \\
        examples/train_sft.py --tiny --dataset ./data/loom --output_dir ./out --max_steps 4

`--model_name_or_path` is a saved `LoomInterleavedPipeline` folder, `--bagel_release` an official BAGEL release
folder (converted on the fly; Loom's frame table starts at zero), `--tiny` a small random model for smoke tests.
`--dataset` is a `datasets.save_to_disk` folder in the training schema, or official Loom parquet files with
`--dataset_format loom_parquet`. The output folder receives checkpoints and, at the end, a loadable pipeline.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from peft import LoraConfig
from transformers import HfArgumentParser, set_seed

from loom_hf import LoomInterleavedPipeline
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import (
    LoomDataCollator,
    LoomTrainer,
    LoomTrainingArguments,
    LoomTrainingDataset,
    convert_loom_parquet,
    select_trainable_parameters,
)
from loom_hf.trainers.checkpoint import check_checkpoint
from loom_hf.trainers.latent_cache import cache_latents
from loom_hf.trainers.lora import LORA_TARGETS, lora_config
from loom_hf.trainers.trainer import check_latent_stride
from loom_hf.utils import check_output_folder

logger = logging.getLogger("train_sft")
DATASET_FORMATS = ("schema", "loom_parquet")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved LoomInterleavedPipeline."})
    bagel_release: str | None = field(default=None, metadata={"help": "An official BAGEL release folder."})
    tiny: bool = field(default=False, metadata={"help": "Train a tiny random model (smoke tests)."})
    max_frames: int = field(default=16, metadata={"help": "Frame-table rows when starting from a BAGEL release."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flex_attention."})
    lora_rank: int = field(default=0, metadata={"help": "Train LoRA adapters of this rank (0: full weights)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_targets: str = field(default="generation", metadata={"help": f"LoRA targets: {' | '.join(LORA_TARGETS)}."})

    def __post_init__(self):
        if self.lora_rank < 0:
            raise ValueError(f"--lora_rank must be >= 0 (0: train full weights); got {self.lora_rank}.")
        if self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be > 0; got {self.lora_alpha}.")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"--lora_targets must be one of {', '.join(LORA_TARGETS)}; got {self.lora_targets!r}.")
        if self.max_frames < 0:
            raise ValueError(f"--max_frames must be >= 0 (0: no frame table); got {self.max_frames}.")


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "A save_to_disk folder (schema) or Loom parquet file/folder."})
    split: str = field(default="train", metadata={"help": "Split of a DatasetDict folder."})
    dataset_format: str = field(default="schema", metadata={"help": "schema | loom_parquet."})
    cache_latents: bool = field(default=False, metadata={"help": "Encode every image once before training."})

    def __post_init__(self):
        if self.dataset_format not in DATASET_FORMATS:
            raise ValueError(
                f"--dataset_format must be one of {', '.join(DATASET_FORMATS)}; got {self.dataset_format!r}."
            )


def load_pipeline(model_args: ModelArguments, dtype: torch.dtype) -> LoomInterleavedPipeline:
    sources = [bool(model_args.model_name_or_path), bool(model_args.bagel_release), model_args.tiny]
    if sum(sources) != 1:
        raise ValueError("Pass exactly one of --model_name_or_path, --bagel_release or --tiny.")
    if model_args.tiny:
        return tiny_pipeline(seed=0, max_frames=model_args.max_frames)
    if model_args.bagel_release:
        return LoomInterleavedPipeline.from_bagel(
            model_args.bagel_release, dtype=dtype, max_frames=model_args.max_frames
        )
    return LoomInterleavedPipeline.from_pretrained(model_args.model_name_or_path, dtype=dtype)


def load_dataset(data_args: DataArguments, on_error: str) -> datasets.Dataset:
    """The training rows; a missing or unreadable folder, an unknown split or no rows at all name the dataset."""
    if data_args.dataset_format == "loom_parquet":
        rows = convert_loom_parquet(data_args.dataset, on_error=on_error)
    else:
        try:
            loaded = datasets.load_from_disk(data_args.dataset)
        except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            raise ValueError(
                f"--dataset {data_args.dataset!r} is not a readable save_to_disk folder: {error}"
            ) from error
        if isinstance(loaded, datasets.DatasetDict):
            if data_args.split not in loaded:
                held = ", ".join(loaded)
                raise ValueError(
                    f"--split {data_args.split!r} is not in --dataset {data_args.dataset!r}; it holds {held}."
                )
            loaded = loaded[data_args.split]
        rows = loaded
    if len(rows) == 0:
        raise ValueError(f"--dataset {data_args.dataset!r} (split {data_args.split!r}) holds no rows.")
    return rows


def check_output_dir(model_args: ModelArguments, data_args: DataArguments, output_dir: str) -> None:
    """Refuse an `--output_dir` that is, contains or lies inside a local input: checkpoints and the final pipeline
    would overwrite it. An existing output folder is fine (a resumed run writes into it); a Hub id is no local input."""
    given = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--bagel_release": model_args.bagel_release,
        "--dataset": data_args.dataset,
    }
    inputs = {name: path for name, path in given.items() if path and Path(path).exists()}
    check_output_folder(output_dir, option="--output_dir", overwrite=True, inputs=inputs)


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, LoomTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    check_output_dir(model_args, data_args, training_args.output_dir)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.resume_from_checkpoint:
        check_checkpoint(training_args.resume_from_checkpoint, fresh_optimizer=training_args.fresh_optimizer)
    set_seed(training_args.seed)

    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    pipe = load_pipeline(model_args, dtype)
    model = pipe.model
    check_latent_stride(pipe.processor, model.config)  # before the dataset is read and its latents cached
    model.set_attn_implementation(model_args.attn_implementation)
    select_trainable_parameters(model, training_args.train_experts)
    if model_args.lora_rank > 0:
        config: LoraConfig = lora_config(
            model, rank=model_args.lora_rank, alpha=model_args.lora_alpha, targets=model_args.lora_targets
        )
        model.add_adapter(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Trainable parameters: %d of %d.", trainable, sum(p.numel() for p in model.parameters()))

    collator = LoomDataCollator(
        pipe.processor,
        text_dropout=training_args.text_dropout,
        vit_dropout=training_args.vit_dropout,
        vae_dropout=training_args.vae_dropout,
        packing=training_args.packing,
        use_frames=model.config.max_frames > 0,
    )
    rows = load_dataset(data_args, training_args.on_bad_sample)
    if data_args.cache_latents:
        with training_args.main_process_first(desc="caching latents"):
            rows = cache_latents(
                rows,
                pipe.vae.to(training_args.device),
                processor=pipe.processor,
                patch_size=model.config.latent_patch_size,
                on_error=training_args.on_bad_sample,
            )
    train_dataset = LoomTrainingDataset(
        rows,
        collator,
        max_tokens=training_args.max_tokens_per_batch,
        max_history_frames=training_args.max_history_frames,
        history=training_args.history,
        max_frames=model.config.max_frames,
        on_error=training_args.on_bad_sample,
        use_step_text=training_args.use_step_text,
        seed=training_args.seed,
    )
    trainer = LoomTrainer(
        model=model,
        args=training_args,
        vae=pipe.vae,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=pipe.processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if training_args.ema_decay is not None:
        trainer.save_ema_model(f"{training_args.output_dir}/ema")
    if trainer.is_world_process_zero() and model_args.lora_rank == 0:
        pipe.save_pretrained(f"{training_args.output_dir}/pipeline")


if __name__ == "__main__":
    main()
