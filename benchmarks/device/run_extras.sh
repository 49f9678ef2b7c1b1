#!/usr/bin/env bash
# Second single-GPU session: FP8 GEMMs and the MoE stack (perfcast.measure.extras), the GEMM table again
# with the dense M grid and misaligned shapes (calibrate --only gemm), and a fresh held-out set (seed 7).
#   bash benchmarks/device/run_extras.sh ["extras calib_gemm heldout7"]   # ~5 min on one H100/H200
#   bash benchmarks/device/run_extras.sh extras2   # dense FP8 M grid, MoE expert GEMMs, INT4 tinygemm (~3 min)
# Writes under $OUT/<gpu_id>/: extras/ calib_gemm/ heldout7/ (packed to .tgz), run_extras.log.
cd "$(dirname "$0")/../.." || exit 2
source benchmarks/device/_common.sh
PARTS="${1:-extras calib_gemm heldout7}"
main() {
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
  for part in $PARTS; do
    case $part in
      extras2) run_part extras2 python3 -m perfcast.measure.extras --out "$D/extras2" --parts fp8dense,moegemm,int4 ;;
      extras) run_part extras python3 -m perfcast.measure.extras --out "$D/extras" ;;
      calib_gemm) run_part calib_gemm python3 -m perfcast.measure.calibrate --out "$D/calib_gemm" --only gemm ;;
      heldout7) run_part heldout7 python3 -m perfcast.measure.calibrate --out "$D/heldout7" --heldout --seed 7 ;;
      *) echo "unknown part '$part' (extras, extras2, calib_gemm, heldout7)"; RC=2 ;;
    esac
  done
  pack_out "$D"
  echo "run_extras: done, status $RC"
}
main 2>&1 | tee "$D/run_extras.log"
exit $RC
