#!/usr/bin/env bash
# Closed-loop success tables of the learned experts and their baselines (scripts/train_experts.sh
# first), both sim embodiments, unseen seeds 100-119 (no demo used them):
#   bash scripts/eval_experts.sh [ee|joint|all]      -> out/eval_experts/<embodiment>/<row>/success.{json,md}
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
WHICH="${1:-all}"
RUNS="${MU0_EXPERT_RUNS:-runs/experts}"
OUT="${MU0_EVAL_OUT:-out/eval_experts}"
MAIN_SEEDS="${MU0_MAIN_SEEDS:-100-119}"     # μ_0 + expert and the no-trace ablation
OTHER_SEEDS="${MU0_OTHER_SEEDS:-100-109}"   # ground truth, trace_follower, scripted
COMMON=(--max-steps 250 --no-progress)
for EMB in ee joint; do
  [ "$WHICH" = all ] || [ "$WHICH" = "$EMB" ] || continue
  ROBOT=config/robots/sim_sawyer_${EMB}.yaml
  O="$OUT/$EMB"
  run() { local row=$1; shift; [ -f "$O/$row/success.json" ] || nice -n 5 mu0 eval-policy --robot "$ROBOT" "${COMMON[@]}" --out "$O/$row" "$@"; }
  run mu0_expert    --model checkpoints/mu0_small --expert checkpoints/expert_sawyer_${EMB} --seeds "$MAIN_SEEDS"
  ROBOT=config/robots/sim_sawyer_${EMB}_mu0base.yaml \
    run mu0base_expert --model checkpoints/mu0_base --expert checkpoints/expert_sawyer_${EMB}_mu0base --seeds "$MAIN_SEEDS" --no-video
  run no_traces     --model none                  --expert "$RUNS/${EMB}_notrace"        --seeds "$MAIN_SEEDS" --no-video
  run gt_expert     --model ground_truth          --expert "$RUNS/${EMB}_gt"             --seeds "$OTHER_SEEDS"
  run trace_follower --model checkpoints/mu0_small --expert trace_follower               --seeds "$OTHER_SEEDS" --no-video
  run scripted      --model none                  --expert scripted                      --seeds "$OTHER_SEEDS" --no-video
done
python -m mu0_app.eval_policy_table "$OUT"
