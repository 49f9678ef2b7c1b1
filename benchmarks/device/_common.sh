# Sourced by every run_*.sh after it cd's to the repository root: environment, GPU detection, packing of
# $OUT; sets D (this GPU's output folder, created) and RC (the worst exit status so far, 0).
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# NVLink multicast must stay off: it can put a shared host's GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:-$PWD/out}"
PART_TIMEOUT="${PART_TIMEOUT:-580}"   # seconds per part (the device tool allows 600 per command)

gpu_dir() {  # $OUT/<gpu_id>, the id by perfcast's rule ('H100' -> h100-sxm, 'H200' -> h200)
  local id
  id=$(python3 -c 'import torch; from perfcast.measure.model_step import gpu_id
p = torch.cuda.get_device_properties(0); print(gpu_id(p.name, p.total_memory))' 2>/dev/null) || id=unknown-gpu
  echo "$OUT/$id"
}

run_part() {  # run_part NAME CMD...: run with a timeout, report the exit status, never abort the script
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name: $* ($(date -u +%FT%TZ))"
  timeout -k 20 "$PART_TIMEOUT" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -gt "$RC" ] && RC=$rc
  return 0
}

with_clock_log() {  # with_clock_log FILE MS CMD...: run CMD while nvidia-smi logs SM clock/power/temperature
  local file=$1 ms=$2; shift 2
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -lms "$ms" \
    > "$file" 2>/dev/null &
  local smi=$!
  "$@"
  kill "$smi" 2>/dev/null
  return 0
}

pack_out() {  # the device tool returns at most 8 files, no deeper than $OUT/a/b/file: pack folders if needed
  local d=$1 n deep sub
  n=$(find "$OUT" -type f | wc -l)
  deep=$(find "$OUT" -mindepth 4 -type f | wc -l)
  if [ "$n" -le 8 ] && [ "$deep" -eq 0 ]; then return 0; fi
  for sub in "$d"/*/; do
    [ -d "$sub" ] || continue
    sub=${sub%/}
    tar -czf "$sub.tgz" -C "$d" "$(basename "$sub")" && rm -rf "$sub" && echo "packed $sub -> $sub.tgz"
  done
  echo "files under \$OUT: $(find "$OUT" -type f | wc -l)"
}

set -o pipefail
D=$(gpu_dir)
mkdir -p "$D"
RC=0
