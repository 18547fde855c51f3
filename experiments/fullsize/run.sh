#!/usr/bin/env bash
# Full-size smoke runs through `python -m wadi.train` on random-init SD1.5 / SD2.1 / PixArt-alpha directories
# at the paper's resolution and per-GPU batch 16 (issue 4, item 7). Usage: run.sh OUTDIR
set -uo pipefail
out=${1:?out dir}
models=/tmp/wadi_fullsize
python3 experiments/fullsize/make_random_dirs.py $models sd15 sd21 pixart 2>&1 | tail -3
for b in sd15 sd21 pixart; do
  for gc in true false; do
    echo "== $b gradient_checkpointing=$gc"
    timeout 240 python3 -m wadi.train backbone=$b backbone.pretrained=$models/$b dataset=toy batch_size=16 \
      max_steps=8 gradient_checkpointing=$gc logger=csv export=false '~eval' \
      callbacks.sample_grid.every_n_steps=0 callbacks.checkpoint.every_n_train_steps=1000 '~callbacks.progress' \
      +callbacks.perf._target_=wadi.callbacks.perf.StepStats +callbacks.perf.warmup=3 \
      +callbacks.perf.path=$out/${b}_gc${gc}.json output_root=/tmp/wadi_runs name=${b}_gc$gc 2>&1 \
      | grep -E "wadi perf|Error|error|memory" | head -5
  done
done
