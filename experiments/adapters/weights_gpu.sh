#!/usr/bin/env bash
# Issue 18 item 4, the weight analysis replayed: each student's merged export against its teacher with
# `python -m wadi.analyze weights` (direction/norm change per block and overall, SVD energy of the direction residual,
# the two swap models), then the toy protocol (`python -m wadi.evaluate eval=toy`) on the student itself and on both
# swaps, so the three scores come from one protocol. Run it in the device call that trained the students, after
# run_sweep.sh: the exports live in ${ROOT:-/tmp/toy_sweep}/<run>/export/merged (plan lines with export=true).
#   bash experiments/adapters/weights_gpu.sh $OUT toy-sd sd_full_F_s0 sd_lora_A_s0 sd_lorad_A_s0
# Writes $OUT/weights/<run>/{summary.json,blocks.png,svd_energy.png,eval_student.json,eval_swap_teacher_norms.json,
# eval_swap_teacher_directions.json,*.log}; the swap models themselves stay in /tmp (tens of MB each).
# Students run concurrently; LIMIT (seconds, default 75) caps each step so the call's other outputs still come back.
# EVAL_ARGS: extra wadi.evaluate overrides (a CPU check: EVAL_ARGS="eval.n_samples=16 device=cpu").
set -uo pipefail
out=$1; asset=$2; shift 2
py=${PYTHON:-python3}
limit=${LIMIT:-75}
teacher=$($py -c "from wadi.toy.assets import toy_asset_path as p; print(p('$asset'))")
pids=()
for run in "$@"; do
  (
    student=${ROOT:-/tmp/toy_sweep}/$run/export/merged; work=/tmp/adapter_weights/$run; dest=$out/weights/$run
    mkdir -p "$dest" "$work"
    if [[ ! -d $student ]]; then echo "no export at $student (plan line without export=true?)" > "$dest/error.txt"; exit 1; fi
    timeout "$limit" $py -m wadi.analyze weights a="$teacher" b="$student" out="$work" > "$dest/analyze.log" 2>&1
    cp "$work"/summary.json "$work"/*.png "$dest"/ 2>/dev/null
    evals=(); for model in "$student" "$work/swap_teacher_norms" "$work/swap_teacher_directions"; do
      name=$(basename "$model"); [[ $model == "$student" ]] && name=student
      ( timeout "$limit" $py -m wadi.evaluate model="$model" eval=toy out="$work/eval_$name" ${EVAL_ARGS:-} > "$dest/eval_$name.log" 2>&1
        cp "$work/eval_$name/metrics.json" "$dest/eval_$name.json" 2>/dev/null ) &
      evals+=($!)
    done
    wait "${evals[@]}"
  ) &
  pids+=($!)
done
wait "${pids[@]}"
ls -R "$out/weights" | head -50
