#!/usr/bin/env bash
# The experiment behind the README's "generation-only stage" rows: does more frame training of the generation side
# alone (the text side frozen, so the plans cannot change) lift the shipped default model? 1200 steps from the
# package's weights on a fresh frame-only draw, EMA weights exported with the shipped defaults next to (not over) the
# package's model, and scored on the three 50-tutorial sets (~40 min on two cores). Needs runs/data and
# runs/data_fresh (see the README). Nothing here changes the shipped model.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
FRAME_ONLY_MIX=drawing=0.7,procedure=0.1,compose=0.06,decompose=0.05,style=0.05,t2i=0.02,edit=0.02

loom data synth --out "$RUNS/data_frames_gen" --num-samples 6000 --seed 3 --mix "$FRAME_ONLY_MIX" --overwrite
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    examples/train_sft.py \
    --model_name_or_path src/loom_hf/default_model --dataset "$RUNS/data_frames_gen" --cache_latents --use_cpu \
    --seed 0 --output_dir "$RUNS/stage4" --max_steps 1200 --learning_rate 3e-4 --lr_scheduler_type cosine \
    --warmup_steps 50 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_steps 300 \
    --timestep_shift 1.0 --ema_decay 0.998 --train_experts generation --report_to none

# The run's held-out curve (EMA weights, first 12 tutorials, frame keeping off, the shipped 10 steps).
python examples/default_model/eval_checkpoints.py --pipeline src/loom_hf/default_model --run "$RUNS/stage4" \
    --data "$RUNS/data" --tutorials 12 --steps 10 --weights ema

rm -rf "$RUNS/stage4_ema" && cp -r "$RUNS/stage4/pipeline" "$RUNS/stage4_ema"
cp "$RUNS/stage4/ema/model.safetensors" "$RUNS/stage4_ema/model/model.safetensors"
python examples/default_model/export_default_model.py --pipeline "$RUNS/stage4_ema" --output "$RUNS/exp/stage4_export" \
    --guidance-scale 1.5 --image-guidance-scale 1.5 --frame-keep-threshold 0.4 --stochastic-sampling \
    --num-inference-steps 10
mkdir -p "$RUNS/eval"
loom eval --model "$RUNS/exp/stage4_export" --data "$RUNS/data" --split eval --num-samples 50 --seed 0 \
    --report "$RUNS/eval/stage4_s0.json" > /dev/null
loom eval --model "$RUNS/exp/stage4_export" --data "$RUNS/data" --split eval --num-samples 50 --seed 100 \
    --report "$RUNS/eval/stage4_s100.json" > /dev/null
loom eval --model "$RUNS/exp/stage4_export" --data "$RUNS/data_fresh" --num-samples 50 --seed 0 \
    --report "$RUNS/eval/stage4_fresh.json" > /dev/null
python examples/default_model/ablation_table.py "$RUNS/eval"/stage4_{s0,s100,fresh}.json
