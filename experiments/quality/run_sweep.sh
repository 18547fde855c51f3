#!/usr/bin/env bash
# One device call of the quality sweep: every spec of a plan file trains concurrently on one GPU through
# `python -m wadi.train` (experiments/toy/sweep_gpu.sh), with the toy evaluation every EVAL_EVERY steps.
#   bash experiments/quality/run_sweep.sh $OUT experiments/quality/plans/sweep1.txt
# A plan file holds one "<name> <overrides>" per line (# comments allowed). TIME caps each run's training,
# BATCH is the default batch size.
set -uo pipefail
out=$1; plan=$2
time=${TIME:-00:00:06:15}
every=${EVAL_EVERY:-300}
export OMP_NUM_THREADS=1   # one host thread per run: the toy step is bound by kernel launches, not by math
common="batch_size=${BATCH:-64} max_steps=100000 +trainer.max_time=$time eval_callback.every_n_steps=$every
  callbacks.checkpoint.every_n_train_steps=100000 callbacks.sample_grid.every_n_steps=100000
  ~callbacks.progress +trainer.enable_progress_bar=false export=false"
specs=()
while IFS= read -r line; do
  line=${line%%#*}; [[ -z "${line// }" ]] && continue
  name=${line%% *}; rest=${line#"$name"}
  specs+=("$name $(echo $common) $rest")   # the plan's own overrides come last and win
done < "$plan"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/device.txt" 2>&1
date -u +%FT%TZ >> "$out/device.txt"
bash "$(dirname "$0")/../toy/sweep_gpu.sh" "$out" "${specs[@]}"
