#!/usr/bin/env bash
# Multi-GPU measurements for perfcast (one host, NCCL), run from the repository root on the GPU machine:
#   bash benchmarks/device/run_multi.sh                 # "smoke coll tp2 tp4": ~4-5 min on 4 H100s
#   bash benchmarks/device/run_multi.sh "coll"          # collectives only (2 and 4 GPUs)
#   bash benchmarks/device/run_multi.sh "smoke"         # 4-layer TP2 check of every path (~40 s)
#   bash benchmarks/device/run_multi.sh "pp2 pp4"       # pipeline parallel: ~2.5 min on 4 H100s
#   bash benchmarks/device/run_multi.sh "tppp"          # tp 2 x pp 2 on 4 GPUs: ~1.5 min on 4 H100s
#   bash benchmarks/device/run_multi.sh "tppin"         # host-bound TP eager, ranks free vs --pin: ~3 min
# Parts: smoke (cases_smoke.jsonl at tp 2; when it fails, tp2 and tp4 are skipped), coll
# (perfcast.measure.collectives), tp2 / tp4 (perfcast.measure.model_step --tp N on the first N GPUs,
# cases_tp.jsonl), pp2 / pp4 (perfcast.measure.model_step --pp N on the first N GPUs, cases_pp.jsonl:
# each starts with two 4-layer plumbing cases; `python benchmarks/bench_pp.py --estimate` gives the
# duration), tppp (model_step --tp 2 --pp 2 on the first 4 GPUs, cases_tppp.jsonl, two 4-layer plumbing
# cases first; `python benchmarks/bench_pp.py --estimate benchmarks/device/cases_tppp.jsonl`).
# Writes under $OUT/<gpu_id>/: step_smoke_tp2.jsonl, coll/collectives.csv, coll/meta.json,
# step_tp2.jsonl, step_tp4.jsonl, step_pp2.jsonl, step_pp4.jsonl, step_tppp_tp2pp2.jsonl, run_multi.log.
cd "$(dirname "$0")/../.." || exit 2
source benchmarks/device/_common.sh
PARTS="${1:-smoke coll tp2 tp4}"
SMOKE_OK=1
NGPU=$(nvidia-smi -L | grep -c '^GPU')

tp_part() {  # tp_part NAME N CASES OUTFILE [EXTRA ARGS...]
  if [ "$NGPU" -lt "$2" ]; then echo "=== $1: skipped, $NGPU GPUs < $2"; return 0; fi
  if [ "$SMOKE_OK" != 1 ]; then echo "=== $1: skipped, the TP smoke test failed"; RC=3; return 0; fi
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $(($2 - 1))) run_part "$1" python3 -m perfcast.measure.model_step \
    --cases "$3" --out "$4" --tp "$2" "${@:5}"
}

tppin_part() {  # host-bound TP eager cases, ranks free against ranks pinned to their own cores (--pin),
  # alternated in two rounds (free-pinned, then pinned-free) at tp 2 and tp 4
  local n r
  nproc; lscpu | grep -i "^CPU(s)\|Thread(s) per core\|Core(s) per socket\|Socket(s)\|Model name\|NUMA node"
  for r in 1 2; do
    for n in 2 4; do
      if [ "$r" = 1 ]; then
        tp_part "tp${n}_free_r$r" "$n" benchmarks/device/cases_tp_host.jsonl "$D/tppin/step_tp${n}_free_r$r.jsonl"
        tp_part "tp${n}_pin_r$r" "$n" benchmarks/device/cases_tp_host.jsonl "$D/tppin/step_tp${n}_pin_r$r.jsonl" --pin
      else
        tp_part "tp${n}_pin_r$r" "$n" benchmarks/device/cases_tp_host.jsonl "$D/tppin/step_tp${n}_pin_r$r.jsonl" --pin
        tp_part "tp${n}_free_r$r" "$n" benchmarks/device/cases_tp_host.jsonl "$D/tppin/step_tp${n}_free_r$r.jsonl"
      fi
    done
  done
}

pp_part() {  # pp_part NAME N CASES OUTFILE: one process per stage on the first N GPUs
  if [ "$NGPU" -lt "$2" ]; then echo "=== $1: skipped, $NGPU GPUs < $2"; return 0; fi
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $(($2 - 1))) run_part "$1" python3 -m perfcast.measure.model_step \
    --cases "$3" --out "$4" --pp "$2"
}

tppp_part() {  # tppp_part NAME TP PP CASES OUTFILE: stage s on GPUs [s*TP, (s+1)*TP)
  local n=$(($2 * $3))
  if [ "$NGPU" -lt "$n" ]; then echo "=== $1: skipped, $NGPU GPUs < $n"; return 0; fi
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) run_part "$1" python3 -m perfcast.measure.model_step \
    --cases "$4" --out "$5" --tp "$2" --pp "$3"
}

main() {
  nvidia-smi
  nvidia-smi topo -m
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())'
  for part in $PARTS; do
    case $part in
      coll)  run_part coll python3 -m perfcast.measure.collectives --out "$D/coll" ;;
      tp2)   tp_part tp2 2 benchmarks/device/cases_tp.jsonl "$D/step_tp2.jsonl" ;;
      tp4)   tp_part tp4 4 benchmarks/device/cases_tp.jsonl "$D/step_tp4.jsonl" ;;
      pp2)   pp_part pp2 2 benchmarks/device/cases_pp.jsonl "$D/step_pp2.jsonl" ;;
      pp4)   pp_part pp4 4 benchmarks/device/cases_pp.jsonl "$D/step_pp4.jsonl" ;;
      tppp)  tppp_part tppp 2 2 benchmarks/device/cases_tppp.jsonl "$D/step_tppp_tp2pp2.jsonl" ;;
      tppin) mkdir -p "$D/tppin"; tppin_part ;;
      smoke) local before=$RC; RC=0
             tp_part smoke 2 benchmarks/device/cases_smoke.jsonl "$D/step_smoke_tp2.jsonl"
             [ "$RC" -eq 0 ] || SMOKE_OK=0; [ "$before" -gt "$RC" ] && RC=$before ;;
      *) echo "unknown part '$part' (coll, tp2, tp4, smoke, pp2, pp4, tppp, tppin)"; RC=2 ;;
    esac
  done
  pack_out "$D"
  echo "run_multi: parts '$PARTS' done, status $RC"
  return "$RC"
}

main 2>&1 | tee -a "$D/run_multi.log"
