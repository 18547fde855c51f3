#!/usr/bin/env bash
# Second GPU call for the shipped teachers: continue toy-sd and toy-pixart from wadi/assets/toy (a fresh
# warmup + cosine cycle, batch 2048: the small models are launch-bound at 512, so a bigger batch is nearly
# free), both at once on the GPU; then measure the baselines of experiments/toy/RESULTS.md.
#   bash experiments/toy/continue_gpu.sh $OUT
set -euo pipefail
out=$1
export PYTHONUNBUFFERED=1
work=/tmp/toy_continue
py=${PYTHON:-python3}
extra=(${EXTRA:-})
rm -rf $work && mkdir -p $work $out
pre() { $py -m wadi.toy.pretrain data.workers=${WORKERS:-4} trainer.log_every=1000 init_dir=wadi/assets/toy "$@" "${extra[@]}"; }
pre stages='[sd]' out_dir=$work/sd sd.resume=true sd.batch_size=2048 sd.steps=40000 sd.warmup_steps=200 \
  sd.max_minutes=${MINUTES:-6.5} report_file=$work/report_sd2.json > $out/sd2.log 2>&1 & p1=$!
pre stages='[pixart]' out_dir=$work/pixart pixart.resume=true pixart.batch_size=2048 pixart.steps=40000 \
  pixart.warmup_steps=200 pixart.max_minutes=${MINUTES:-6.5} report_file=$work/report_pixart2.json \
  > $out/pixart2.log 2>&1 & p2=$!
status=0
for p in $p1 $p2; do wait $p || status=1; done
tail -n 3 $out/*.log || true
[ $status = 0 ] || exit 1
(cd $work/sd && tar cf $out/toy-sd.tar toy-sd) && (cd $work/pixart && tar cf $out/toy-pixart.tar toy-pixart)
cp $work/report_*.json $out/
# baselines from the new teachers (the classifier and VAE are the shipped ones)
mkdir -p $work/assets && cp -r wadi/assets/toy/toy-classifier $work/sd/toy-sd $work/pixart/toy-pixart $work/assets/
$py -c "from wadi.toy.assets import write_checksums as w; w('$work/assets')"
$py experiments/toy/baselines.py --assets $work/assets --out $out/baselines.json ${BASELINE_ARGS:-} \
  > $out/baselines.log 2>&1 || { tail -20 $out/baselines.log; exit 1; }
tail -n 30 $out/baselines.log
