#!/usr/bin/env bash
# Second single-GPU session: FP8 GEMMs and the MoE stack (perfcast.measure.extras), the GEMM table again
# with the dense M grid and misaligned shapes (calibrate --only gemm), and a fresh held-out set (seed 7).
#   bash benchmarks/device/run_extras.sh ["extras calib_gemm heldout7"]   # ~5 min on one H100/H200
#   bash benchmarks/device/run_extras.sh extras2   # dense FP8 M grid, MoE expert GEMMs, INT4 tinygemm (~3 min)
#   bash benchmarks/device/run_extras.sh "power int8"   # ~2 min: the power-state check and weight-only INT8
#     power: held-out set 7 (GEMM + attention) and a 10% sample of the calibration grid, each kernel run
#            back to back for 100 ms before it is timed (calibrate --sustain-ms 100), with SM clock and
#            power sampled every 50 ms by nvidia-smi (clocks_power.csv);
#     int8:  weight-only INT8 GEMMs (torch._weight_int8pack_mm, and dequantize-then-F.linear).
#   bash benchmarks/device/run_extras.sh mla   # <2 min: a captured stack of DeepSeek MLA attention blocks
#     (V2-Lite, V3 at TP 8 and whole; decode absorbed, prefill non-absorbed) -> extras_mla/mla_step.jsonl,
#     compared with predictions by benchmarks/bench_mla.py
#   bash benchmarks/device/run_extras.sh mlatriton   # <2 min: the mla part's decode cases with the attention
#     run by perfcast's own fused split-KV Triton kernel (perfcast.measure.mla_triton, FlashMLA-class: the
#     kernel perfcast models), each case's kernel checked against the matmul form and also timed alone
#     -> extras_mlatriton/mla_step_triton.jsonl (a folder of its own, for its extras_meta.json), compared
#     with predictions by benchmarks/bench_mla.py
# Writes under $OUT/<gpu_id>/: extras/ calib_gemm/ heldout7/ (packed to .tgz), run_extras.log.
cd "$(dirname "$0")/../.." || exit 2
source benchmarks/device/_common.sh
PARTS="${1:-extras calib_gemm heldout7}"
power_part() {
  run_part heldout7s python3 -m perfcast.measure.calibrate --out "$D/heldout7s" --heldout --seed 7 \
    --only gemm,attention --sustain-ms 100 --quiet
  run_part gridsub python3 -m perfcast.measure.calibrate --out "$D/gridsub" --only gemm,attention \
    --subset 0.1 --seed 0 --sustain-ms 100 --quiet
}

calib_shuf_part() {  # the whole GEMM grid in random order (history-free clocks), then 10% of it sustained
  run_part calib_shuf python3 -m perfcast.measure.calibrate --out "$D/calib_shuf" --only gemm --shuffle --quiet
  run_part gemm_sustain python3 -m perfcast.measure.calibrate --out "$D/gemm_sustain" --only gemm \
    --subset 0.1 --seed 0 --sustain-ms 100 --quiet
}

main() {
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
  for part in $PARTS; do
    case $part in
      extras2) run_part extras2 python3 -m perfcast.measure.extras --out "$D/extras2" --parts fp8dense,moegemm,int4 ;;
      extras) run_part extras python3 -m perfcast.measure.extras --out "$D/extras" ;;
      calib_gemm) run_part calib_gemm python3 -m perfcast.measure.calibrate --out "$D/calib_gemm" --only gemm ;;
      heldout7) run_part heldout7 python3 -m perfcast.measure.calibrate --out "$D/heldout7" --heldout --seed 7 ;;
      power) with_clock_log "$D/clocks_power.csv" 50 power_part ;;
      gridshuf)  # a 10% sample of the grid in random order, as the held-out runs leave the GPU
        with_clock_log "$D/clocks_power_shuf.csv" 50 run_part gridshuf python3 -m perfcast.measure.calibrate \
          --out "$D/gridshuf" --only gemm,attention --subset 0.1 --seed 0 --shuffle --quiet ;;
      calib_shuf) with_clock_log "$D/clocks_power_calib_shuf.csv" 100 calib_shuf_part ;;
      fp8same) run_part fp8same python3 -m perfcast.measure.extras --out "$D/extras_fp8same" --parts fp8same ;;
      fp8held) run_part fp8held python3 -m perfcast.measure.extras --out "$D/extras_fp8held" --parts fp8held ;;
      mlaflex) PART_TIMEOUT=330 run_part mlaflex python3 -m perfcast.measure.extras --out "$D/extras_mla" --parts mlaflex ;;
      mla) run_part mla python3 -m perfcast.measure.extras --out "$D/extras_mla" --parts mla ;;
      mlatriton) PART_TIMEOUT=300 run_part mlatriton python3 -m perfcast.measure.extras --out "$D/extras_mlatriton" \
        --parts mlatriton ;;
      heldout9) run_part heldout9 python3 -m perfcast.measure.calibrate --out "$D/heldout9" --heldout --seed 9 \
        --only gemm --quiet ;;
      gemm_sustain) run_part gemm_sustain python3 -m perfcast.measure.calibrate --out "$D/gemm_sustain" --only gemm \
        --subset 0.1 --seed 0 --sustain-ms 100 --quiet ;;
      attn) run_part attn python3 -m perfcast.measure.calibrate --out "$D/calib_attn" --only attention --quiet ;;
      int8c) PART_TIMEOUT=200 run_part int8c python3 -m perfcast.measure.extras --out "$D/extras_int8c" --parts int8c ;;
      int8) run_part int8 python3 -m perfcast.measure.extras --out "$D/extras_int8" --parts int8 ;;
      *) echo "unknown part '$part' (extras, extras2, calib_gemm, heldout7, power, gridshuf, calib_shuf, fp8same, fp8held, mla, mlaflex, mlatriton, heldout9, gemm_sustain, attn, int8, int8c)"; RC=2 ;;
    esac
  done
  pack_out "$D"
  echo "run_extras: done, status $RC"
}
main 2>&1 | tee "$D/run_extras.log"
exit $RC
