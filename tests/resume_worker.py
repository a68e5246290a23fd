"""A small CPU training run for the kill/resume test.

    python tests/resume_worker.py OUTPUT_DIR [--resume CHECKPOINT] [--pause-after N] [--num-workers N]

Condition dropout, sparse history with rotation, gradient accumulation over an uneven epoch, a warm-up schedule and
EMA are all on, so every piece of state a resume must restore takes part. `--pause-after N` writes `paused` into the
output folder after step N and waits there to be killed. `--num-workers` loads the batches in that many
dataloader worker processes. At the end the run writes `result.json` (the per-step log)
the steps this process ran, and `final.safetensors` (the trained weights and their EMA).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import LoomDataCollator, LoomTrainer, LoomTrainingArguments, LoomTrainingDataset

MAX_STEPS = 7
SEED = 3


class StepRecorder(TrainerCallback):
    """The optimizer steps this process ran itself (a resumed run: only those after its checkpoint)."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class PauseAfter(TrainerCallback):
    """Signal, then wait to be killed, once step `step` is done."""

    def __init__(self, step: int, marker: Path):
        self.step, self.marker = step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.marker.write_text(str(state.global_step))
            time.sleep(600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--pause-after", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    options = parser.parse_args()

    torch.manual_seed(SEED)
    pipe = tiny_pipeline(seed=0, max_frames=8)
    collator = LoomDataCollator(pipe.processor, text_dropout=0.3, vit_dropout=0.3, vae_dropout=0.3)
    dataset = LoomTrainingDataset(build_dataset(6, seed=0)["train"], collator, max_tokens=512, max_frames=8, seed=SEED)
    arguments = LoomTrainingArguments(
        output_dir=str(options.output_dir),
        max_steps=MAX_STEPS,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        gradient_accumulation_steps=2,
        max_tokens_per_batch=512,
        logging_steps=1,
        save_steps=2,
        ema_decay=0.9,
        report_to=[],
        use_cpu=True,
        seed=SEED,
        dataloader_num_workers=options.num_workers,
    )
    trainer = LoomTrainer(
        model=pipe.model,
        args=arguments,
        vae=pipe.vae,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=pipe.processor,
    )
    recorder = StepRecorder()
    trainer.add_callback(recorder)
    if options.pause_after is not None:
        trainer.add_callback(PauseAfter(options.pause_after, options.output_dir / "paused"))
    trainer.train(resume_from_checkpoint=options.resume)

    log = [entry for entry in trainer.state.log_history if "loss" in entry]
    result = {"log": log, "executed_steps": recorder.steps, "ema_optimization_step": trainer.ema.optimization_step}
    (options.output_dir / "result.json").write_text(json.dumps(result))
    names = [name for name, p in pipe.model.named_parameters() if p.requires_grad]
    tensors = {name: p.detach().clone() for name, p in pipe.model.named_parameters() if p.requires_grad}
    tensors.update({f"ema.{name}": shadow.clone() for name, shadow in zip(names, trainer.ema.shadow_params)})
    save_file(tensors, str(options.output_dir / "final.safetensors"))


if __name__ == "__main__":
    main()
