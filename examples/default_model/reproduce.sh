#!/usr/bin/env bash
# The full training run of loom_hf.DEFAULT_MODEL on 2 CPU cores: data -> autoencoder -> tokenizer + model -> export.
# Every step is seeded; outputs go to runs/ (ignored by git). Timings are those of the development machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
STEPS=${STEPS:-1400}

# 1. Procedural data (~40 s): 7000 training rows (3000 of them text-only plans), 700 held-out tutorials.
loom data synth --out "$RUNS/data" --num-samples 7000 --seed 0 --overwrite

# 2. The autoencoder, trained first on the same images (~14 min; 1M parameters, 24.4 dB held-out PSNR).
python examples/default_model/train_vae.py --dataset "$RUNS/data" --output-dir "$RUNS/vae" --seed 0 --num-threads 1

# 3. Caption tokenizer + untrained model from examples/default_model/loom_config.json.
python examples/default_model/build_pipeline.py --data "$RUNS/data" --vae "$RUNS/vae" --output "$RUNS/init"

# 4. Loom training with the package's trainer (sparse history, temporal table, joint loss): 1400 steps, ~55 min.
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    examples/train_sft.py \
    --model_name_or_path "$RUNS/init" --dataset "$RUNS/data" --cache_latents --use_cpu --seed 0 \
    --output_dir "$RUNS/default" --max_steps "$STEPS" --learning_rate 1e-3 --lr_scheduler_type cosine \
    --warmup_steps 100 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_steps 700 \
    --timestep_shift 1.0 --report_to none

# 5. Ship it inside the package (float16) and evaluate it and the untrained model on the held-out tutorials.
python examples/default_model/export_default_model.py --pipeline "$RUNS/default/pipeline"
EVAL=(--data "$RUNS/data" --split eval --num-samples 50 --steps 20 --seed 0)
loom eval --model "$RUNS/default/pipeline" "${EVAL[@]}" --report "$RUNS/eval/trained.json" > /dev/null
loom eval --model "$RUNS/init" "${EVAL[@]}" --report "$RUNS/eval/untrained.json" > /dev/null
python examples/default_model/ablation_table.py "$RUNS/eval/trained.json" "$RUNS/eval/untrained.json"
