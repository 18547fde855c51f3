#!/usr/bin/env bash
# One device call (< 10 min) for experiments/bench/RESULTS.md: the VSD step benchmark (wadi vs the public
# scripts' structure, same process) on SD1.5 512 px and PixArt-alpha 256 / 512 px at batch 16, then the
# one-step generation benchmark. Each part has a time budget so the call ends inside the device limit.
#   bash experiments/bench/run_gpu.sh $OUT
set -uo pipefail
out=$1
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mkdir -p $out/step
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/env.txt
$py -c "import torch, diffusers, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'lightning', lightning.__version__)" | tee -a $out/env.txt
timeout ${SD_S:-330} $py experiments/bench/bench_step.py --check --budget ${SD_BUDGET:-270} --out $out/step \
  --plan "sd15:${SD_PLAN:-ref,ref+ckpt,wadi,wadi+ckpt,wadi+autocast+unfused,wadi+fadam+cudnn,wadi+fadam+cudnn+ckpt}" \
  2>&1 | grep -v Warning | tee $out/step_sd15.log
timeout ${PIX_S:-120} $py experiments/bench/bench_step.py --budget ${PIX_BUDGET:-90} --out $out/step \
  --plan "pixart256:ref,wadi,wadi+ckpt;pixart512:wadi+ckpt" 2>&1 | grep -v Warning | tee $out/step_pixart.log
timeout ${ONE_S:-100} $py experiments/bench/bench_onestep.py --batches 1 32 --variants stock wadi wadi+cl \
  --out $out/onestep 2>&1 | grep -v Warning | tee $out/onestep.log
ls -R $out
