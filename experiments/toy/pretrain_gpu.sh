#!/usr/bin/env bash
# Train the shipped toy assets on one GPU (the `device` tool) in one call of < 10 minutes:
#   bash experiments/toy/pretrain_gpu.sh $OUT
# The VAE first (the teachers' latents need it), then the classifier, toy-sd and toy-pixart as three
# concurrent processes on the same GPU (each model is small; alone none keeps an H100 busy). Stage budgets
# are wall-clock minutes (the LR schedules follow time progress, so a capped stage still ends annealed).
# $OUT gets one tar per asset folder (unpack into wadi/assets/toy, then
# `python -c "from wadi.toy.assets import write_checksums as w; w('wadi/assets/toy')"`) and the logs.
# EXTRA adds overrides to every command (CPU smoke: EXTRA="arch=tiny trainer.max_steps=2 data.pool_size=64").
set -euo pipefail
out=$1
export PYTHONUNBUFFERED=1
work=/tmp/toy_assets
py=${PYTHON:-python3}
extra=(${EXTRA:-})
rm -rf $work && mkdir -p $work $out
pre() { $py -m wadi.toy.pretrain data.workers=${WORKERS:-4} trainer.log_every=1000 "$@" "${extra[@]}"; }
pre stages='[vae]' out_dir=$work vae.max_minutes=${VAE_MINUTES:-1.0} report_file=$work/report_vae.json \
  > $out/vae.log 2>&1 || { tail -30 $out/vae.log; exit 1; }
pre stages='[classifier]' out_dir=$work/cls classifier.max_minutes=${CLS_MINUTES:-2.5} \
  report_file=$work/report_classifier.json > $out/classifier.log 2>&1 & p1=$!
pre stages='[sd]' init_dir=$work out_dir=$work/sd sd.steps=40000 sd.max_minutes=${SD_MINUTES:-6} \
  report_file=$work/report_sd.json > $out/sd.log 2>&1 & p2=$!
pre stages='[pixart]' init_dir=$work out_dir=$work/pixart pixart.steps=40000 \
  pixart.max_minutes=${PIXART_MINUTES:-6} report_file=$work/report_pixart.json > $out/pixart.log 2>&1 & p3=$!
status=0
for p in $p1 $p2 $p3; do wait $p || status=1; done
tail -n 4 $out/*.log || true
cp $work/toy-sd/pretrain.json $work/vae_pretrain.json
for r in $work/report_*.json; do cp $r $work/sd/; done
(cd $work/sd && tar cf $out/toy-sd.tar toy-sd report_*.json)
(cd $work/../ && cp $work/vae_pretrain.json $work/pixart/ && cd $work/pixart && tar cf $out/toy-pixart.tar toy-pixart vae_pretrain.json)
(cd $work/cls && tar cf $out/toy-classifier.tar toy-classifier)
exit $status
