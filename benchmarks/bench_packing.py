"""Packed collation vs. padded batches on mixed-length training instances: tokens per second and peak memory.

    python benchmarks/bench_packing.py [--steps 12] [--max-tokens 2048]

Both modes train the same instances (procedural tutorials and edits of 40 to 400 tokens) with the same loss:
packed batches fill a token budget with whole instances in one row; padded batches hold as many instances per row
(one instance each) as the packed batches hold on average, right-padded to the longest. Throughput is measured
alternately in one process (real, non-padding tokens per second of forward + backward + optimizer step); peak
memory is measured in a fresh process per mode, as the resident memory reached during the training steps above the
memory held once the model, data and optimizer state are set up.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import torch

from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import LoomDataCollator, LoomTrainer, LoomTrainingArguments, LoomTrainingDataset


def setup(max_tokens: int):
    torch.manual_seed(0)
    pipe = tiny_pipeline(
        seed=0,
        max_frames=8,
        text_config={
            "vocab_size": 432,
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
    )
    rows = build_dataset(64, seed=0)["train"]
    packed = LoomDataCollator(pipe.processor, 0, 0, 0, packing=True)
    padded = LoomDataCollator(pipe.processor, 0, 0, 0, packing=False)
    dataset = LoomTrainingDataset(rows, packed, max_tokens=max_tokens, max_frames=8)
    arguments = LoomTrainingArguments(
        output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, max_steps=1, max_tokens_per_batch=max_tokens
    )
    trainer = LoomTrainer(
        model=pipe.model,
        args=arguments,
        vae=pipe.vae,
        train_dataset=dataset,
        data_collator=packed,
        processing_class=pipe.processor,
    )
    trainer.create_optimizer()
    batches = list(trainer.get_train_dataloader().batch_sampler)
    per_batch = round(statistics.mean(len(batch) for batch in batches))
    order = [index for batch in batches for index in batch]
    padded_batches = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
    return trainer, dataset, {"packed": (packed, batches), "padded": (padded, padded_batches)}


def train_step(trainer, collator, instances) -> int:
    """One optimizer step; returns the number of real (non-padding) tokens."""
    batch = collator(instances)
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return real


def measure_memory(mode: str, steps: int, max_tokens: int) -> None:
    """Peak resident memory during the training steps, above the memory held once everything is set up."""
    trainer, dataset, modes = setup(max_tokens)
    collator, batches = modes[mode]
    train_step(trainer, collator, [dataset[i] for i in batches[0]])  # allocates the optimizer state
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for batch in batches[1 : steps + 1]:
        train_step(trainer, collator, [dataset[i] for i in batch])
    running = False
    sampler.join()
    print(json.dumps({"peak_mb": (peak - baseline) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--memory-of", choices=["packed", "padded"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        measure_memory(args.memory_of, args.steps, args.max_tokens)
        return

    trainer, dataset, modes = setup(args.max_tokens)
    rates = {mode: [] for mode in modes}
    padding = {}
    for step in range(args.steps + 1):
        for mode, (collator, batches) in modes.items():
            instances = [dataset[i] for i in batches[step % len(batches)]]
            start = time.perf_counter()
            real = train_step(trainer, collator, instances)
            elapsed = time.perf_counter() - start
            if step:  # the first round warms up
                rates[mode].append(real / elapsed)
            if mode == "padded":
                shape = collator(instances)["input_ids"].shape
                padding.setdefault(mode, []).append(1 - real / (shape[0] * shape[1]))
    memory = {}
    for mode in modes:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-of",
                mode,
                "--steps",
                str(args.steps),
                "--max-tokens",
                str(args.max_tokens),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[mode] = json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"]
    result = {
        "instances": len(dataset),
        "instances_per_padded_row_batch": len(modes["padded"][1][0]),
        "padding_fraction_of_padded_batches": round(statistics.mean(padding["padded"]), 3),
        "tokens_per_second": {mode: round(statistics.median(values)) for mode, values in rates.items()},
        "packed_over_padded_throughput": round(
            statistics.median(rates["packed"]) / statistics.median(rates["padded"]), 2
        ),
        "training_peak_memory_mb": {mode: round(value) for mode, value in memory.items()},
        "packed_over_padded_peak_memory": round(memory["packed"] / memory["padded"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
