#!/usr/bin/env bash
# One device call (< 10 min) for experiments/bench/RESULTS.md: the one-step generation benchmark, then the
# VSD step benchmark (wadi vs the public scripts' structure, same process) on SD1.5 512 px and PixArt-alpha
# 256 / 512 px at batch 16. Each part has a time limit so the call ends inside the device limit; logs go to
# files, not pipes (torch.compile's worker processes would hold a pipe open past the limit). Run from the
# repository root (the benches run as modules: python -m experiments.bench.<name>):
#   bash experiments/bench/run_gpu.sh $OUT
# First the fused rotation's accuracy (the GPU tests of tests/adapters; ROT_S, set ROT_S=0 to skip).
# Env: ONE_VARIANTS / SD_PLAN / PIX_PLAN (set empty to skip a part), ONE_BATCHES, *_S time limits, *_BUDGET;
# SCALE_DEVICES="1 2 4" adds the weak-scaling run (bench_scaling.py) on a multi-GPU kind.
set -uo pipefail
out=$1
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mkdir -p $out/step
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/env.txt
$py -c "import torch, diffusers, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'lightning', lightning.__version__)" | tee -a $out/env.txt
part() {  # part NAME SECONDS COMMAND...: run with a hard time limit, log to $out/NAME.log, show its tail
  local name=$1 limit=$2
  shift 2
  timeout -k 10 $limit "$@" > $out/$name.log 2>&1
  echo "== $name: rc $?"
  grep -v -i warn $out/$name.log | tail -n 25 | cut -c1-400
}
[ "${ROT_S:-60}" = "0" ] || part rotation_check ${ROT_S:-60} $py -m pytest -q -m gpu tests/adapters
[ "${ONE_VARIANTS-x}" = "" ] || part onestep ${ONE_S:-100} $py -m experiments.bench.bench_onestep \
  --batches ${ONE_BATCHES:-1 32} --variants ${ONE_VARIANTS:-stock wadi wadi+cl} --out $out/onestep
[ "${SD_PLAN-x}" = "" ] || part step_sd15 ${SD_S:-330} $py -m experiments.bench.bench_step \
  --budget ${SD_BUDGET:-270} --out $out/step \
  --plan "sd15:${SD_PLAN:-ref,ref+ckpt,wadi,wadi+ckpt,wadi+autocast+unfused,wadi+fadam+cudnn,wadi+fadam+cudnn+ckpt}"
[ "${PIX_PLAN-x}" = "" ] || part step_pixart ${PIX_S:-120} $py -m experiments.bench.bench_step \
  --budget ${PIX_BUDGET:-90} --out $out/step --plan "${PIX_PLAN:-pixart256:ref,wadi,wadi+ckpt;pixart512:wadi+ckpt}"
# Weak scaling (multi-GPU kinds only): SCALE_DEVICES="1 2" (or "1 2 4"), SCALE_ARCH, SCALE_S.
[ -z "${SCALE_DEVICES-}" ] || part scaling ${SCALE_S:-500} $py -m experiments.bench.bench_scaling \
  --arch ${SCALE_ARCH:-sd15} --devices $SCALE_DEVICES --strategies ddp fsdp --out $out/scaling
ls -R $out
