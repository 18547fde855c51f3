#!/usr/bin/env bash
# Toy distillation runs on one GPU (the `device` tool), all concurrent, each through `python -m wadi.train`
# on the shipped toy teacher; every run ends with the toy evaluation (1000 held-out samples).
#   bash experiments/toy/sweep_gpu.sh $OUT "name1 overrides..." "name2 overrides..." ...
# Writes $OUT/sweep.json (name, overrides, final metrics, wall time) and $OUT/logs.tar.
set -uo pipefail
out=$1; shift
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
root=/tmp/toy_sweep
rm -rf $root && mkdir -p $root $out
pids=()
for spec in "$@"; do
  name=${spec%% *}; args=""; [[ "$spec" == *" "* ]] && args=${spec#* }
  ( start=$(date +%s); $py -m wadi.train logger=csv output_root=$root name=$name $args > $root/$name.log 2>&1;
    echo "$? $(( $(date +%s) - start ))" > $root/$name.rc ) &
  pids+=($!)
done
wait "${pids[@]}"
$py - "$root" "$out/sweep.json" "$@" <<'PY'
import json, sys
from pathlib import Path
root, dest, specs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = []
for spec in specs:
    name, _, args = spec.partition(" ")
    rc, wall = (root / f"{name}.rc").read_text().split()
    evals = sorted((root / name / "eval").glob("step*.json"))
    row = {"name": name, "overrides": args, "rc": int(rc), "wall_s": int(wall),
           "evals": [json.loads(e.read_text()) for e in evals]}
    rows.append(row)
    last = row["evals"][-1] if row["evals"] else {}
    print(name, rc, wall, {k: round(v, 3) for k, v in last.items() if isinstance(v, float)}, flush=True)
dest.write_text(json.dumps(rows, indent=2) + "\n")
PY
tar cf $out/logs.tar -C $root --exclude=checkpoints --exclude=export --exclude=wandb .
