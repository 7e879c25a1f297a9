#!/usr/bin/env bash
# Regenerates checkpoints/mu0_small from scratch: sim demos -> TraceExtract dataset -> training
# (B-spline model + raw-waypoint ablation) -> evaluation -> ONNX export. Run from the repo root:
#   bash checkpoints/mu0_small/regenerate.sh [WORK_DIR]        (default WORK_DIR: data/mu0_small)
set -euo pipefail
cd "$(dirname "$0")/../.."
source env.sh
WORK="${1:-data/mu0_small}"
CKPT=checkpoints/mu0_small
TASKS=reach,push,pick-place,drawer-open,drawer-close,button-press,door-open,window-open
STEPS="${MU0_STEPS:-3000}"

nice -n 10 python -m mu0_sim.record --tasks "$TASKS" --seeds 0-11 --resolution 160x120 --out "$WORK/bags"
nice -n 10 python -m mu0_perception.trace_extract.cli "$WORK/bags" "$WORK/traces" \
    --heldout-tasks window-open-v3 --val-fraction 0.15 --no-progress
nice -n 10 python -m mu0_policy.training.train --data "$WORK/traces" --out "$WORK/small" --preset small \
    --steps "$STEPS" --batch-size 16 --eval-every 500 --save-every 500 --threads 1 --seed 0
nice -n 10 python -m mu0_policy.training.train --data "$WORK/traces" --out "$WORK/raw" --preset small --raw-waypoints \
    --steps "$STEPS" --batch-size 16 --eval-every 500 --save-every 500 --threads 1 --seed 0
nice -n 10 python -m mu0_policy.training.evaluate --data "$WORK/traces" --checkpoint "$WORK/small" \
    --raw-checkpoint "$WORK/raw" --num-samples 5 --out "$WORK/eval" --no-progress
python -m mu0_policy.training.export "$WORK/small" --check
mkdir -p "$CKPT/eval"
cp "$WORK/small/model.safetensors" "$WORK/small/config.json" "$WORK/small/model.onnx" "$CKPT/"
cp "$WORK/eval/metrics.json" "$WORK/eval/metrics.md" "$WORK/eval/metrics.png" "$CKPT/eval/"
echo "wrote $CKPT"
