#!/usr/bin/env bash
# Single-GPU measurements for perfcast, run from the repository root on the GPU machine:
#   bash benchmarks/device/run_single.sh "step"              # model steps only (~3-4 min on an H100)
#   bash benchmarks/device/run_single.sh "calib heldout"     # kernel calibration (perfcast.measure.calibrate)
#   bash benchmarks/device/run_single.sh "smoke"             # 2-layer check of every path (~30 s)
# Parts: calib, heldout, step, smoke (space separated, run in that order of the argument).
# Writes under $OUT/<gpu_id>/: calib/ heldout/ (packed to .tgz when more than 8 files would come back),
# step_single.jsonl, step_smoke.jsonl, run_single.log. Exit status: the largest of the parts'.
cd "$(dirname "$0")/../.." || exit 2
source benchmarks/device/_common.sh
PARTS="${1:-step}"

main() {
  nvidia-smi
  python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
  python3 -c 'import transformers; print("transformers", transformers.__version__)' || echo "transformers missing"
  for part in $PARTS; do
    case $part in
      calib)   run_part calib python3 -m perfcast.measure.calibrate --out "$D/calib" ;;
      heldout) run_part heldout python3 -m perfcast.measure.calibrate --out "$D/heldout" --heldout ;;
      step)    run_part step python3 -m perfcast.measure.model_step \
                 --cases benchmarks/device/cases_single.jsonl --out "$D/step_single.jsonl" ;;
      smoke)   run_part smoke python3 -m perfcast.measure.model_step \
                 --cases benchmarks/device/cases_smoke.jsonl --out "$D/step_smoke.jsonl" ;;
      *) echo "unknown part '$part' (calib, heldout, step, smoke)"; RC=2 ;;
    esac
  done
  pack_out "$D"
  echo "run_single: parts '$PARTS' done, status $RC"
  return "$RC"
}

main 2>&1 | tee -a "$D/run_single.log"
