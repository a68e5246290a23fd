#!/usr/bin/env bash
# The Table 4 ablations of the README at one equal, smaller training budget (ABLATION_STEPS optimizer steps each):
# full Loom, without the temporal frame embedding, without history frames, without step text, each with every
# training seed of ABLATION_SEEDS.
# Needs the data and autoencoder of reproduce.sh (steps 1-2). Outputs go to $ABLATION_OUT (default $RUNS/ablations).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
STEPS=${ABLATION_STEPS:-150}
SAMPLES=${ABLATION_EVAL_SAMPLES:-12}
SEEDS=${ABLATION_SEEDS:-0 1}  # training seeds; every run is evaluated on the same tutorials with the same noise
JOBS=${ABLATION_JOBS:-2}
export OMP_NUM_THREADS=1  # two single-threaded runs at a time use 2 cores better than one run on both
OUT=${ABLATION_OUT:-$RUNS/ablations}
mkdir -p "$OUT"

# The same model without its temporal table (max_frames = 0), built with the same seed and tokenizer.
python - "$OUT/config_no_temporal.json" <<'EOF'
import json, sys
config = json.load(open("examples/default_model/loom_config.json"))
config["max_frames"] = 0
json.dump(config, open(sys.argv[1], "w"), indent=2)
EOF
# Each seed starts from its own initialisation (the full model's config, and the one without the table).
for seed in $SEEDS; do
    python examples/default_model/build_pipeline.py --data "$RUNS/data" --vae "$RUNS/vae" --seed "$seed" \
        --output "$OUT/init_seed$seed"
    python examples/default_model/build_pipeline.py --data "$RUNS/data" --vae "$RUNS/vae" --seed "$seed" \
        --config "$OUT/config_no_temporal.json" --output "$OUT/init_no_temporal_seed$seed"
done

train() {  # name, init, extra training arguments...
    local name=$1 init=$2
    shift 2
    ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
        --dynamo_backend no examples/train_sft.py \
        --model_name_or_path "$init" --dataset "$RUNS/data" --cache_latents --use_cpu \
        --output_dir "$OUT/$name" --max_steps "$STEPS" --learning_rate 1e-3 --lr_scheduler_type cosine \
        --warmup_steps 25 --weight_decay 0.01 --max_tokens_per_batch 4096 --logging_steps 25 --save_strategy no \
        --timestep_shift 1.0 --report_to none "$@"
}
evaluate() {  # name, extra evaluation arguments...
    local name=$1
    shift
    loom eval --model "$OUT/$name/pipeline" --data "$RUNS/data" --split eval --num-samples "$SAMPLES" --steps 20 \
        --seed 0 --report "$OUT/$name.json" "$@" > /dev/null
}

run() {  # name, seed: train the variant with that seed, then evaluate it on the same held-out tutorials
    local name=$1 seed=$2 init="$OUT/init_seed$2" train_args=() eval_args=()
    case $name in
        no_temporal) init="$OUT/init_no_temporal_seed$seed" ;;
        no_history) train_args=(--history none); eval_args=(--history none) ;;
        no_step_text) train_args=(--use_step_text False); eval_args=(--no-step-text) ;;
    esac
    train "${name}_seed$seed" "$init" --seed "$seed" "${train_args[@]}" > "$OUT/${name}_seed$seed.log" 2>&1
    evaluate "${name}_seed$seed" "${eval_args[@]}"
}

# $JOBS runs at a time; `wait -n` fails the script as soon as one run fails.
for seed in $SEEDS; do
    for name in full no_temporal no_history no_step_text; do
        while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
        run "$name" "$seed" &
    done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n; done

python examples/default_model/ablation_table.py --group-seeds "$OUT"/{full,no_temporal,no_history,no_step_text}_seed*.json
