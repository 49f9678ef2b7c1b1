#!/usr/bin/env bash
# Offload validation on a GPU host (one H100/H200 over PCIe, 16 cores): about 2-3 minutes.
#   bash benchmarks/device/run_offload.sh            # writes $OUT/offload_gpu.jsonl and $OUT/offload_gpu_cpu/
# Needs only python3, numpy and torch (CUDA) there. Ship the results as benchmarks/data/offload_<gpu>.jsonl
# with the CPU profile directory beside it (the lines cite it by relative path).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/perfcast_offload}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current --format=csv || true
python3 -m perfcast.measure.offload_step --cases benchmarks/device/cases_offload.jsonl --out "$OUT/offload_gpu.jsonl"
python3 benchmarks/bench_offload.py "$OUT/offload_gpu.jsonl" || true
