#!/usr/bin/env bash
# The Table 4 ablations of the README at one equal, smaller training budget (ABLATION_STEPS optimizer steps each):
# full Loom, without the temporal frame embedding, without history frames, without step text.
# Needs the data, autoencoder and untrained model of reproduce.sh (steps 1-3). Outputs go to $RUNS/ablations.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
STEPS=${ABLATION_STEPS:-150}
SAMPLES=${ABLATION_EVAL_SAMPLES:-12}
export OMP_NUM_THREADS=1  # two single-threaded runs at a time use 2 cores better than one run on both
OUT="$RUNS/ablations"
mkdir -p "$OUT"

# The same model without its temporal table (max_frames = 0), built with the same seed and tokenizer.
python - "$OUT/config_no_temporal.json" <<'EOF'
import json, sys
config = json.load(open("examples/default_model/loom_config.json"))
config["max_frames"] = 0
json.dump(config, open(sys.argv[1], "w"), indent=2)
EOF
python examples/default_model/build_pipeline.py --data "$RUNS/data" --vae "$RUNS/vae" \
    --config "$OUT/config_no_temporal.json" --output "$OUT/init_no_temporal"

train() {  # name, init, extra training arguments...
    local name=$1 init=$2
    shift 2
    ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
        --dynamo_backend no examples/train_sft.py \
        --model_name_or_path "$init" --dataset "$RUNS/data" --cache_latents --use_cpu --seed 0 \
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

# Two runs at a time; `wait PID` fails the script if either run failed.
train full "$RUNS/init" > "$OUT/full.log" 2>&1 & first=$!
train no_temporal "$OUT/init_no_temporal" > "$OUT/no_temporal.log" 2>&1 & second=$!
wait $first; wait $second
train no_history "$RUNS/init" --history none > "$OUT/no_history.log" 2>&1 & first=$!
train no_step_text "$RUNS/init" --use_step_text False > "$OUT/no_step_text.log" 2>&1 & second=$!
wait $first; wait $second
evaluate full & first=$!
evaluate no_temporal & second=$!
wait $first; wait $second
evaluate no_history --history none & first=$!
evaluate no_step_text --no-step-text & second=$!
wait $first; wait $second

python examples/default_model/ablation_table.py "$OUT"/{full,no_temporal,no_history,no_step_text}.json
