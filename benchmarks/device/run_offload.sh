#!/usr/bin/env bash
# Offload (CPU-GPU split) measurements for perfcast, run from the repository root on the GPU machine:
#   bash benchmarks/device/run_offload.sh          # ~2-3 min on one H100/H200 with 16 host cores
# A quick CPU calibration at all cores (with the hand-off rows: chain_cpu, chain_cuda, resume_*, sweep_*),
# then the layer split, the FFN-on-CPU split and CPU-only steps of Llama-3.2-1B, Llama-3.2-3B and
# Qwen2.5-7B (cases_offload.jsonl), bf16 on both devices, eager; lines of split plans carry the wall time
# per device ({phase}_seg_ms). Writes under $OUT/<gpu_id>/: offload.jsonl, offload_cpu/ (meta.json,
# cpu.csv), run_offload.log. Ship them as NEW files beside the earlier runs, never over them, e.g.
# benchmarks/data/offload_<gpu_id>_r2.jsonl and benchmarks/data/offload_<gpu_id>_r2_cpu/
# (bench_offload.py finds the profile as <file stem>_cpu/ beside the file).
cd "$(dirname "$0")/../.." || exit 2
source benchmarks/device/_common.sh

main() {
  nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv
  lscpu | grep -E "Model name|^CPU\(s\)|NUMA node\(s\)" || true
  run_part offload python3 -m perfcast.measure.offload_step \
    --cases benchmarks/device/cases_offload.jsonl --out "$D/offload.jsonl"
  python3 benchmarks/bench_offload.py "$D/offload.jsonl" || true
}

main 2>&1 | tee "$D/run_offload.log"
exit $RC
