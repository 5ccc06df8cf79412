#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA torch, Lightning, timm and pandas but no network:
#   tests  pytest -m gpu (tests/test_gpu.py: layer/Algorithm 1 on CUDA, a real CUDA OOM, NaN stop,
#          GPU-trained model evaluated on CPU and CUDA, latency timing on CUDA)
#   study  the default study's compute steps on the GPU with params.yaml as is (accelerator: auto):
#          prepare, the 9 trainings at once, their evaluations, latency; results in gpu-study.tgz
#   bench  benchmarks/gpu.sh (items 1-3 of `softmoe bench` on CUDA)
# Packages missing there travel as wheels in .whl/ (see benchmarks/README.md).
#
#   bash benchmarks/gpu-check.sh tests study bench     # logs and archives under $OUT (or gpu-out/)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"
sm=(python3 -m softmoe.cli)
experts=$(python3 -c "import yaml; print(*yaml.safe_load(open('params.yaml'))['experts'])")

stage() { echo "== $1 $(date +%T)"; }

tests() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__)" | tee -a "$out/gpu.txt"
  timeout -k 10 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest-gpu.log"
}

study() {
  local t0=$SECONDS
  "${sm[@]}" validate --params params.yaml --out results/params.valid || return 1
  "${sm[@]}" prepare --params params.yaml --dataset mnist5k --out data/mnist5k || return 1
  mkdir -p logs/gpu
  for n in $experts; do
    timeout -k 10 180 "${sm[@]}" train --params params.yaml --data data/mnist5k --experts "$n" --seed 0 \
      --out "results/train/mnist5k/n$n-s0" --threads 1 > "logs/gpu/train-n$n.log" 2>&1 &
  done
  wait
  echo "trainings: $((SECONDS - t0)) s"
  for n in $experts; do
    timeout -k 10 60 "${sm[@]}" evaluate --params params.yaml --data data/mnist5k --run "results/train/mnist5k/n$n-s0" \
      --out "results/eval/mnist5k/n$n-s0.csv" --threads 1 > "logs/gpu/evaluate-n$n.log" 2>&1 &
  done
  wait
  echo "evaluations: $((SECONDS - t0)) s"
  timeout -k 10 60 "${sm[@]}" latency --params params.yaml --out results/tables/mnist5k/latency.csv \
    --hardware results/tables/mnist5k/hardware.json --threads 1 > logs/gpu/latency.log 2>&1
  echo "latency: $((SECONDS - t0)) s"
  tail -n 3 logs/gpu/*.log
}

bench() {
  bash benchmarks/gpu.sh 200
  cp reports/benchmarks-gpu.json reports/benchmarks-gpu.md "$out/" 2>/dev/null
}

for s in "$@"; do
  stage "$s"
  "$s"
done
tar czf "$out/gpu-study.tgz" --exclude='*.ckpt' --exclude=data/mnist5k/*.safetensors \
  results logs data/mnist5k/manifest.json 2>/dev/null
stage done
