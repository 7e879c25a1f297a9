#!/usr/bin/env bash
# Scripted demos for the learned action experts (both sim embodiments), resumable:
#   bash scripts/expert_demos.sh [OUT_DIR]      (default data/expert)
# 8 tasks (those of checkpoints/mu0_small), 160x120 (the resolution μ_0 small was trained at),
# seeds 0-19 (evaluation uses unseen seeds 100+), successful episodes only.
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1   # one thread per job: 2 cores, several jobs
OUT="${1:-data/expert}"
TASKS=reach,push,pick-place,drawer-open,drawer-close,button-press,door-open,window-open
for EMB in sawyer_ee sawyer_joint; do
  python -m mu0_sim.record --tasks "$TASKS" --seeds "${MU0_DEMO_SEEDS:-0-19}" --resolution 160x120 \
      --embodiment "$EMB" --only-success --max-steps 300 --resume --out "$OUT/bags_${EMB#sawyer_}"
done
