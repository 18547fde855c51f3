#!/usr/bin/env bash
# One device call: the teacher samples SwD trains on, then TiUE and SwD beside the one-step student (plan.txt).
#   TIME=00:00:04:45 bash experiments/fewstep/run_gpu.sh $OUT
set -uo pipefail
out=$1; py=${PYTHON:-python3}
mkdir -p "$out"; start=$(date +%s)
$py -m wadi.teacher_samples backbone=toy n=${N:-8192} guidance_scale=4.5 batch_size=512 shard_size=1024 out=/tmp/ts_toy > "$out/ts_toy.log" 2>&1
$py -m wadi.teacher_samples backbone=toy_pixart n=${N:-8192} guidance_scale=3.0 batch_size=512 shard_size=1024 out=/tmp/ts_toy_pixart > "$out/ts_toy_pixart.log" 2>&1
echo "teacher samples: $(( $(date +%s) - start )) s" | tee "$out/teacher_samples.txt"
BATCH=256 TIME=${TIME:-00:00:04:45} EVAL_EVERY=${EVAL_EVERY:-200} \
  bash "$(dirname "$0")/../quality/run_sweep.sh" "$out" "$(dirname "$0")/plan.txt"
