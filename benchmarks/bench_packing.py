"""Packed collation vs. padded batches on mixed-length training instances: tokens per second and peak memory.

    python benchmarks/bench_packing.py [--epochs 3] [--max-tokens 4096] [--cache-latents]

Both modes train the same instances (the default procedural mix: tutorial frames, edits and text-only plans of 40 to
400 tokens) with the same loss: packed batches fill a token budget with whole instances in one row; padded batches
hold as many instances (one per row) as the packed batches hold on average, right-padded to the longest. The default
token budget is the one the embedded default model was trained with (`examples/default_model/reproduce.sh`). Each
epoch trains every instance once in each mode, batch by batch alternately in one process; throughput is the epoch's
real (non-padding) tokens over its time of forward + backward + optimizer steps, and the reported ratio is the
median of the epochs' ratios (with their range). Peak memory is measured in a fresh process per mode, as the
resident memory reached during one epoch above the memory held once the model, data and optimizer state are set up.
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
from loom_hf.tiny import SMALL_TEXT_CONFIG, tiny_pipeline
from loom_hf.trainers import LoomDataCollator, LoomTrainer, LoomTrainingArguments, LoomTrainingDataset
from loom_hf.trainers.latent_cache import cache_latents


def setup(max_tokens: int, cached_latents: bool = False):
    torch.manual_seed(0)
    pipe = tiny_pipeline(
        seed=0,
        max_frames=8,
        text_config=SMALL_TEXT_CONFIG,
    )
    rows = build_dataset(64, seed=0)["train"]
    if cached_latents:
        rows = cache_latents(rows, pipe.vae, processor=pipe.processor, patch_size=pipe.model.config.latent_patch_size)
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


def train_step(trainer, collator, instances) -> tuple[int, int]:
    """One optimizer step; returns the number of real (non-padding) tokens and of token slots in the batch."""
    batch = collator(instances)
    slots = batch["input_ids"].numel()
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else slots
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return real, slots


def measure_memory(mode: str, max_tokens: int, cached_latents: bool) -> None:
    """Peak resident memory during one epoch, above the memory held once everything is set up."""
    trainer, dataset, modes = setup(max_tokens, cached_latents)
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
    for batch in batches[1:]:
        train_step(trainer, collator, [dataset[i] for i in batch])
    running = False
    sampler.join()
    print(json.dumps({"peak_mb": (peak - baseline) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget of a packed batch")
    parser.add_argument(
        "--cache-latents",
        action="store_true",
        help="Encode the images once beforehand, as `train_sft.py --cache_latents`.",
    )
    parser.add_argument("--memory-of", choices=["packed", "padded"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.memory_of:
        measure_memory(args.memory_of, args.max_tokens, args.cache_latents)
        return

    trainer, dataset, modes = setup(args.max_tokens, args.cache_latents)
    for collator, batches in modes.values():  # warm-up
        train_step(trainer, collator, [dataset[i] for i in batches[0]])
    epochs = []
    padding = []
    for _ in range(args.epochs):
        tokens, seconds = dict.fromkeys(modes, 0), dict.fromkeys(modes, 0.0)
        for step in range(max(len(batches) for _, batches in modes.values())):
            for mode, (collator, batches) in modes.items():
                if step >= len(batches):
                    continue
                instances = [dataset[i] for i in batches[step]]
                start = time.perf_counter()
                real, slots = train_step(trainer, collator, instances)
                seconds[mode] += time.perf_counter() - start
                tokens[mode] += real
                if mode == "padded":
                    padding.append(1 - real / slots)
        epochs.append({mode: tokens[mode] / seconds[mode] for mode in modes})
    ratios = [epoch["packed"] / epoch["padded"] for epoch in epochs]
    memory = {}
    for mode in modes:
        child = subprocess.run(
            [sys.executable, __file__, "--memory-of", mode, "--max-tokens", str(args.max_tokens)]
            + ["--cache-latents"] * args.cache_latents,
            capture_output=True,
            text=True,
            check=True,
        )
        memory[mode] = json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"]
    result = {
        "cached_latents": args.cache_latents,
        "instances": len(dataset),
        "batches_per_epoch": {mode: len(batches) for mode, (_, batches) in modes.items()},
        "instances_per_padded_batch": len(modes["padded"][1][0]),
        "padding_fraction_of_padded_batches": round(statistics.mean(padding), 3),
        "tokens_per_second": {mode: round(statistics.median(e[mode] for e in epochs)) for mode in modes},
        "packed_over_padded_throughput": round(statistics.median(ratios), 2),
        "packed_over_padded_throughput_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "training_peak_memory_mb": {mode: round(value) for mode, value in memory.items()},
        "packed_over_padded_peak_memory": round(memory["packed"] / memory["padded"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
