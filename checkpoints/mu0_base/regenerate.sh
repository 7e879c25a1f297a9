#!/usr/bin/env bash
# Regenerates checkpoints/mu0_base from scratch: the 40-task corpus (scripts/corpus.sh: scripted
# Meta-World demos from 3 viewpoints -> rosbag2 -> TraceExtract, on a local Ray) -> training of
# the `base` preset and of its raw-waypoint ablation (the two runs side by side, one CPU thread
# each) -> evaluation in both protocols on the in-distribution, unseen-episode and unseen-task
# splits -> ONNX export with a parity check -> copy here. Every stage resumes: re-run the same
# command after a kill (recording/extraction from their manifests, training from
# trainer_state.safetensors; finished stages are skipped).
#
#   bash checkpoints/mu0_base/regenerate.sh [WORK_DIR]          (default WORK_DIR: data/corpus)
#   nohup bash checkpoints/mu0_base/regenerate.sh > /dev/null 2>&1 &   (progress: WORK_DIR/logs/)
#
# Knobs: MU0_STEPS (default 5000), MU0_BATCH (16), MU0_EVAL_MAX (400 samples per split).
set -euo pipefail
cd "$(dirname "$0")/../.."
source env.sh
WORK="${1:-data/corpus}"
CKPT=checkpoints/mu0_base
STEPS="${MU0_STEPS:-5000}"
BATCH="${MU0_BATCH:-16}"
EVAL_MAX="${MU0_EVAL_MAX:-400}"
mkdir -p "$WORK/logs"
log() { echo "[mu0_base $(date -u +%H:%M:%S)] $*" | tee -a "$WORK/logs/mu0_base.log"; }

if [ ! -f "$WORK/traces/index.json" ]; then
  log "corpus -> $WORK"
  bash scripts/corpus.sh "$WORK"
fi

train() {   # $1 run dir, rest: extra args
  local run="$1"; shift
  local resume=()
  [ -f "$run/trainer_state.safetensors" ] && resume=(--resume)
  python -m mu0_policy.training.train --data "$WORK/traces" --out "$run" --preset base "$@" \
      --steps "$STEPS" --batch-size "$BATCH" --eval-every 500 --save-every 250 --threads 1 --seed 0 \
      "${resume[@]}" > "$run.log" 2>&1
}
log "train base + raw-waypoint ablation, $STEPS steps x $BATCH (logs: $WORK/base.log, $WORK/base_raw.log)"
mkdir -p "$WORK/base" "$WORK/base_raw"
train "$WORK/base" & a=$!
train "$WORK/base_raw" --raw-waypoints & b=$!
wait $a; wait $b

for protocol in ours paper; do
  log "evaluate, protocol $protocol -> $WORK/eval_$protocol"
  python -m mu0_policy.training.evaluate --data "$WORK/traces" --checkpoint "$WORK/base" \
      --raw-checkpoint "$WORK/base_raw" --splits train,val,heldout_tasks --protocol "$protocol" \
      --num-samples 5 --max-samples "$EVAL_MAX" --out "$WORK/eval_$protocol" 2>&1 | tee -a "$WORK/logs/eval.log"
done

log "export + parity"
python -m mu0_policy.training.export "$WORK/base" --check
mkdir -p "$CKPT/eval"
cp "$WORK/base/model.safetensors" "$WORK/base/config.json" "$WORK/base/model.onnx" "$CKPT/"
for protocol in ours paper; do
  mkdir -p "$CKPT/eval/$protocol"
  cp "$WORK"/eval_$protocol/metrics*.json "$WORK"/eval_$protocol/metrics*.md "$WORK"/eval_$protocol/metrics*.png "$CKPT/eval/$protocol/"
done
log "wrote $CKPT"
