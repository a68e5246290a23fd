#!/usr/bin/env bash
# The experiment behind the README's "second cycle" rows: does more frame training lift the default model?
# Run after reproduce.sh (it needs its runs/stage2, runs/data and runs/data_plans): 1800 more stage-2 steps from
# stage 2's final weights with a fresh optimiser and cosine schedule on a fresh draw of the frame mix, the planner
# stage on their EMA weights, and the evaluation on the 50 held-out tutorials with two noise seeds (~45 min on two
# cores). Nothing here changes the shipped model.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
STEPS=${SECOND_CYCLE_STEPS:-1800}
FRAME_MIX=drawing=0.6,procedure=0.08,compose=0.06,decompose=0.05,style=0.06,t2i=0.04,edit=0.04,understanding=0.03,plan=0.25

loom data synth --out "$RUNS/data_frames2" --num-samples 6000 --seed 3 --mix "$FRAME_MIX" --overwrite
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    examples/train_sft.py \
    --model_name_or_path "$RUNS/stage2/pipeline" --dataset "$RUNS/data_frames2" --cache_latents --use_cpu --seed 0 \
    --output_dir "$RUNS/stage2b" --max_steps "$STEPS" --learning_rate 3e-4 --lr_scheduler_type cosine \
    --warmup_steps 50 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_steps 300 \
    --timestep_shift 1.0 --ema_decay 0.998 --report_to none

# The cycle's held-out curve (EMA weights, first 12 tutorials), as the README's stage-2 curve.
python examples/default_model/eval_checkpoints.py --pipeline src/loom_hf/default_model --run "$RUNS/stage2b" \
    --data "$RUNS/data" --tutorials 12 --guidance-scale 1.5 --image-guidance-scale 1.5 --weights ema \
    --checkpoints 600 1200 1800

# The planner stage on the cycle's EMA weights, as reproduce.sh runs it on stage 2's.
rm -rf "$RUNS/stage2b_ema" && cp -r "$RUNS/stage2b/pipeline" "$RUNS/stage2b_ema"
cp "$RUNS/stage2b/ema/model.safetensors" "$RUNS/stage2b_ema/model/model.safetensors"
OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
    --dynamo_backend no examples/train_sft.py \
    --model_name_or_path "$RUNS/stage2b_ema" --dataset "$RUNS/data_plans" --use_cpu --seed 0 \
    --output_dir "$RUNS/stage3b" --max_steps 150 --learning_rate 1e-4 --lr_scheduler_type cosine \
    --warmup_steps 10 --weight_decay 0.0 --max_tokens_per_batch 4096 --logging_steps 25 --save_strategy no \
    --report_to none

for seed in 0 100; do
    loom eval --model "$RUNS/stage3b/pipeline" --data "$RUNS/data" --split eval --num-samples 50 --steps 20 \
        --seed "$seed" --guidance-scale 1.5 --image-guidance-scale 1.5 --report "$RUNS/eval/stage3b_s$seed.json" \
        > /dev/null
done
python examples/default_model/ablation_table.py "$RUNS/eval/stage3b_s0.json" "$RUNS/eval/stage3b_s100.json"
