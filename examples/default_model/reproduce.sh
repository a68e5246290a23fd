#!/usr/bin/env bash
# The full training run of loom_hf.DEFAULT_MODEL on 2 CPU cores: data -> autoencoder -> tokenizer + model -> export.
# Every step is seeded; outputs go to runs/ (ignored by git). Timings are those of the development machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
STEPS=${STEPS:-1400}
FRAME_STEPS=${FRAME_STEPS:-2200}
# Stage 2's data: the same families, most rows drawing tutorials, enough plan rows that the planner stays exact.
FRAME_MIX=drawing=0.6,procedure=0.08,compose=0.06,decompose=0.05,style=0.06,t2i=0.04,edit=0.04,understanding=0.03,plan=0.25
# Stage 4's data: frames only (no text-only plan or understanding rows).
FRAME_ONLY_MIX=drawing=0.7,procedure=0.1,compose=0.06,decompose=0.05,style=0.05,t2i=0.02,edit=0.02

# 1. Procedural data (~40 s each): 7000 training rows (3000 of them text-only plans) and 700 held-out tutorials for
#    stage 1; 6000 rows of the frame-heavy mix (3369 tutorials, 1239 text-only plans) for stage 2; 3000 text-only
#    plans for stage 3; 6000 frame-only rows for stage 4.
loom data synth --out "$RUNS/data" --num-samples 7000 --seed 0 --overwrite
loom data synth --out "$RUNS/data_frames" --num-samples 6000 --seed 1 --mix "$FRAME_MIX" --overwrite
loom data synth --out "$RUNS/data_plans" --num-samples 3000 --seed 2 --mix plan=1 --overwrite
loom data synth --out "$RUNS/data_frames_gen" --num-samples 6000 --seed 3 --mix "$FRAME_ONLY_MIX" --overwrite

# 2. The autoencoder, trained first on the same images (~14 min; 1M parameters, 24.4 dB held-out PSNR).
python examples/default_model/train_vae.py --dataset "$RUNS/data" --output-dir "$RUNS/vae" --seed 0 --num-threads 1

# 3. Caption tokenizer + untrained model from examples/default_model/loom_config.json.
python examples/default_model/build_pipeline.py --data "$RUNS/data" --vae "$RUNS/vae" --output "$RUNS/init"

# 4. Stage 1, Loom training with the package's trainer (sparse history, temporal table, joint loss): 1400 steps.
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    examples/train_sft.py \
    --model_name_or_path "$RUNS/init" --dataset "$RUNS/data" --cache_latents --use_cpu --seed 0 \
    --output_dir "$RUNS/default" --max_steps "$STEPS" --learning_rate 1e-3 --lr_scheduler_type cosine \
    --warmup_steps 100 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_steps 700 \
    --timestep_shift 1.0 --report_to none

# 5. Stage 2, the same trainer from stage 1's weights on the frame-heavy data, with EMA weights (decay 0.998): 2200
#    steps at a lower peak learning rate (the shipped run went single-threaded beside other jobs; two threads alone
#    take about 32 min).
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
    --dynamo_backend no examples/train_sft.py \
    --model_name_or_path "$RUNS/default/pipeline" --dataset "$RUNS/data_frames" --cache_latents --use_cpu --seed 0 \
    --output_dir "$RUNS/stage2" --max_steps "$FRAME_STEPS" --learning_rate 3e-4 --lr_scheduler_type cosine \
    --warmup_steps 50 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_steps 300 \
    --timestep_shift 1.0 --ema_decay 0.998 --report_to none

# 6. Stage 3, the planner only: stage 2's EMA weights, 150 steps on text-only plans at a low learning rate and no
#    weight decay (~4 min). No latent token is in these batches, so the generation expert and the latent heads stay
#    exactly stage 2's; only the text side moves (stage 2's tutorials had taught a held-out tree its fish's "body").
rm -rf "$RUNS/stage2_ema" && cp -r "$RUNS/stage2/pipeline" "$RUNS/stage2_ema"
cp "$RUNS/stage2/ema/model.safetensors" "$RUNS/stage2_ema/model/model.safetensors"
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
    --dynamo_backend no examples/train_sft.py \
    --model_name_or_path "$RUNS/stage2_ema" --dataset "$RUNS/data_plans" --use_cpu --seed 0 \
    --output_dir "$RUNS/stage3" --max_steps 150 --learning_rate 1e-4 --lr_scheduler_type cosine \
    --warmup_steps 10 --weight_decay 0.0 --max_tokens_per_batch 4096 --logging_steps 25 --save_strategy no \
    --report_to none

# 7. Stage 4, the generation side only (the text side frozen, so the plans stay stage 3's bit for bit): 1200 steps
#    from stage 3 on the frame-only draw, EMA weights, the MSE of the latent tokens each tutorial step changes weighted
#    4x (~16-25 min on two threads).
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    examples/train_sft.py \
    --model_name_or_path "$RUNS/stage3/pipeline" --dataset "$RUNS/data_frames_gen" --cache_latents --use_cpu \
    --seed 0 --output_dir "$RUNS/stage4" --max_steps 1200 --learning_rate 3e-4 --lr_scheduler_type cosine \
    --warmup_steps 50 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_steps 300 \
    --timestep_shift 1.0 --ema_decay 0.998 --train_experts generation --changed_token_loss_weight 4 --report_to none
rm -rf "$RUNS/stage4_ema" && cp -r "$RUNS/stage4/pipeline" "$RUNS/stage4_ema"
cp "$RUNS/stage4/ema/model.safetensors" "$RUNS/stage4_ema/model/model.safetensors"

# 8. Ship it inside the package (float16, with its default guidance, frame keeping with its text share, stochastic
#    sampling and 10 Euler steps a frame) and evaluate it (the shipped folder, with those defaults), stage 1 and the untrained model
#    on the held-out tutorials (those two at 20 steps, as the README's rows; their own default is BAGEL's 50).
python examples/default_model/export_default_model.py --pipeline "$RUNS/stage4_ema" \
    --guidance-scale 1.5 --image-guidance-scale 1.5 --frame-keep-threshold 0.4 --frame-keep-text-share 0.5 \
    --stochastic-sampling --num-inference-steps 10
EVAL=(--data "$RUNS/data" --split eval --num-samples 50 --seed 0)
loom eval --model src/loom_hf/default_model "${EVAL[@]}" --report "$RUNS/eval/trained.json" > /dev/null
loom eval --model "$RUNS/default/pipeline" "${EVAL[@]}" --steps 20 --report "$RUNS/eval/stage1.json" > /dev/null
loom eval --model "$RUNS/init" "${EVAL[@]}" --steps 20 --report "$RUNS/eval/untrained.json" > /dev/null
python examples/default_model/ablation_table.py "$RUNS/eval"/{trained,stage1,untrained}.json
