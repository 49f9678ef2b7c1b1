#!/usr/bin/env bash
# Serving validation (issue 7, part 3): real engines on one GPU, replaying Poisson request traces.
#   bash benchmarks/device/run_serve.sh          # ~3.5-4 min on an H100 or H200, never over ~4.8
# Llama-3.1-8B with random weights (built from the shipped config.json; nothing is downloaded);
# prompts lognormal (mean ~313 tokens, 16..1024), outputs lognormal (mean ~64 tokens, 8..256):
#   hf-cb:  transformers continuous batching (fifo, max_requests_per_batch 32, max_batch_tokens 2048,
#           block 256, synchronous eager loop) at 3, 10 and 18 requests/s;
#   static: static batching on perfcast's plain decoder (batch <= 16, CUDA-graph decode) at 2, 5 and
#           8 requests/s.
# Rates from perfcast's own capacity estimates for these engines (H100; H200 within 10%):
#   hf-cb  ~26 req/s (search/analytic.py, eager runtime; the engine's own host overhead, which
#          perfcast only learns from this run, lowers it), so 3 / 10 / 18 are ~0.1 / 0.4 / 0.7 of it;
#   static ~10 req/s (the simulator's static scheduler saturates there), so 2 / 5 / 8.
# Each run lasts ~20 s of arrivals (at least 60 requests); each engine is warmed up first.
# Writes $OUT/<gpu_id>/serve.tgz (per run: requests.jsonl, steps.jsonl, summary.json; index.json)
# and run_serve.log. Compare with the simulator:
#   mkdir -p benchmarks/data/serve_<gpu_id> && cp <fetched>/<gpu_id>/* benchmarks/data/serve_<gpu_id>/
#   python benchmarks/bench_serving_real.py
# SERVE_WALL_S (default 270) bounds the harness; runs that would not fit are skipped. SERVE_ENGINES
# (default hf-cb,static) picks the engines.
# SERVE_MODEL (default meta-llama/Llama-3.1-8B), SERVE_RATES_HF (3,10,18), SERVE_RATES_STATIC (2,5,8)
# and SERVE_EXTRA (more serve_run flags, e.g. "--device cpu --dtype fp32 --requests 10" for a dry run
# without a GPU) change what runs; e.g. Llama-3.2-1B (perfcast: hf-cb ~50 req/s, static ~40 req/s):
#   SERVE_MODEL=meta-llama/Llama-3.2-1B SERVE_RATES_HF=5,20,35 SERVE_RATES_STATIC=8,20,32 bash ...
cd "$(dirname "$0")/../.." || exit 2
source benchmarks/device/_common.sh
WALL="${SERVE_WALL_S:-270}"
MODEL="${SERVE_MODEL:-meta-llama/Llama-3.1-8B}"
RATES_HF="${SERVE_RATES_HF:-3,10,18}"
RATES_STATIC="${SERVE_RATES_STATIC:-2,5,8}"

main() {
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv
  python3 -c 'import torch, sys, numpy; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "numpy", numpy.__version__)'
  python3 -c 'import transformers; print("transformers", transformers.__version__)' || echo "transformers missing"
  PART_TIMEOUT=$((WALL + 25)) run_part serve python3 -m perfcast.measure.serve_run \
    --model "$MODEL" --engines "${SERVE_ENGINES:-hf-cb,static}" \
    --rates "hf-cb=$RATES_HF" --rates "static=$RATES_STATIC" --duration-s 20 --min-requests 60 \
    --max-num-seqs 32 --max-batched-tokens 2048 --block-size 256 --static-batch 16 --kv-bucket 128 \
    --wall-limit-s "$WALL" --out "$D/serve" $SERVE_EXTRA
  pack_out "$D"
  echo "run_serve: status $RC"
  return "$RC"
}

main 2>&1 | tee -a "$D/run_serve.log"
