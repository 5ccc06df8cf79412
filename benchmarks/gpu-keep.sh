#!/usr/bin/env bash
# Issue 16 on a GPU, one command, under 4 minutes on one H200:
#   1. pytest -m gpu on the keep paths (static paths equal the per-expert loop on CUDA, a CUDA
#      graph of the keep path equals eager, the backend chosen per dtype and batch, latency rows);
#   2. benchmarks/gpu_keep.py: keep path vs dense on one table 3 layer, CUDA graphs, fp32 (TF32
#      off) and bf16, batch 1 and 100, k = n ... n/8 -> reports/gpu-keep.{json,md} with the hardware.
# Needs a CUDA torch, pandas and pytest; src/ goes on PYTHONPATH (no install, no network).
#
#   bash benchmarks/gpu-keep.sh          # copies of the reports and the logs go to $OUT if set
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
timeout -k 10 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "keep or graph or latency" 2>&1 \
  | tee ${out:+"$out/pytest-gpu-keep.log"}
timeout -k 10 170 python3 benchmarks/gpu_keep.py --device cuda --out reports/gpu-keep 2>&1 \
  | tee ${out:+"$out/gpu-keep.log"}
status=${PIPESTATUS[0]}
[ -n "$out" ] && cp reports/gpu-keep.json reports/gpu-keep.md "$out/" 2>/dev/null
exit "$status"
