#!/usr/bin/env bash
# One device call for issue 20's toy comparison: the teacher samples of toy-sd and toy-pixart (n=8192 each,
# 25-step DDIM with the teacher's CFG), then every run of plans/toy.txt concurrently (experiments/quality/run_sweep.sh).
#   TIME=00:00:06:30 bash experiments/swd/run_toy.sh $OUT
set -euo pipefail
out=$1
py=${PYTHON:-python3}
mkdir -p "$out"
start=$(date +%s)
$py -m wadi.teacher_samples backbone=toy n=${N:-8192} guidance_scale=4.5 batch_size=512 shard_size=1024 out=/tmp/ts_toy
$py -m wadi.teacher_samples backbone=toy_pixart n=${N:-8192} guidance_scale=3.0 batch_size=512 shard_size=1024 out=/tmp/ts_toy_pixart
echo "teacher samples: $(( $(date +%s) - start )) s" | tee "$out/teacher_samples.txt"
BATCH=256 TIME=${TIME:-00:00:06:30} EVAL_EVERY=${EVAL_EVERY:-200} \
  bash "$(dirname "$0")/../quality/run_sweep.sh" "$out" "$(dirname "$0")/plans/toy.txt"
