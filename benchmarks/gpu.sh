#!/usr/bin/env bash
# Rerun the benchmarks on a GPU machine: items 1-3 on CUDA, including the study's table 3
# configuration (ViT-B dims, 6 Soft MoE layers, n=8 experts of hidden 768*40, batch 1 and 100),
# CUDA-synchronized, plus the workflow overhead (recorded as an error where snakemake/dvc are absent).
# Writes reports/benchmarks-gpu.json and reports/benchmarks-gpu.md.
#
#   bash benchmarks/gpu.sh [time limit in seconds, default 540]
#
# Uses `softmoe` when installed; otherwise python3 with src/ on PYTHONPATH (bench needs only torch),
# so a machine with a CUDA torch and a plain copy of the repo is enough: no network, no venv.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-540}
if command -v softmoe >/dev/null 2>&1; then
  cmd=(softmoe)
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  cmd=(python3 -m softmoe.cli)
fi
export SOFTMOE_BENCH_DEVICES=${SOFTMOE_BENCH_DEVICES:-cuda} PYTHONUNBUFFERED=1
exec timeout -k 30 "$limit" "${cmd[@]}" bench --out reports/benchmarks-gpu.json --md reports/benchmarks-gpu.md
