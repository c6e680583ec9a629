#!/usr/bin/env bash
# The GPU checks in one device call, for a session that is lent a GPU for a few minutes:
# build the CUDA kernels against the torch found there, run the `gpu` tests, time the issues'
# GPU targets, and leave everything under $OUT (logs, REPORT.md and results.json per bench group).
#
#   bash benchmarks/gpu_session.sh [phase ...]     phases: build tests fuzz bench train (default: build tests bench)
#
# Each phase has a time limit (seconds, overridable: BUILD_S, TESTS_S, FUZZ_S, BENCH_S, TRAIN_S) so
# a slow one cannot eat the others' time; the default phases' limits add up to 545 s (build 150,
# tests 120, five bench groups of 55), so the call fits a 600 s limit on a 900 s lease. The
# table printed last says what each phase did. Copy $OUT/bench-*/ into benchmarks/results/<gpu>/.
# On a machine without a GPU it still runs (BENCH_DEVICE=cpu and tiny shapes make a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/build/gpu-session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BENCH_DEVICE="${BENCH_DEVICE:-cuda}"
# One group per GPU target of the issues (a report each, so a timed-out group loses only itself):
# stage 1 bandwidth (3), the ST-LSTM cell step (3), prednet_error bandwidth (4), the decoupling
# loss (4), the ConvLSTM gates and their per-call cost (2).
BENCH_SHAPES_OPS="${BENCH_SHAPES_OPS:-kth:stlstm_memory
mnist:stlstm_cell,stlstm_output
kitti0:prednet_error
mnist:decoupling_loss
tiny,mnist:convlstm_gates}"
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(build tests bench)
summary=()

phase() {  # phase NAME LIMIT_S COMMAND...: runs it with a time limit, logs to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local what="rc=$rc"
  [ $rc -eq 124 ] && what="TIMED OUT"
  summary+=("$(printf '%-28s %-10s %4ds  %s' "$name" "$what" $((SECONDS - t0)) "$(tail -n 1 "$OUT/$name.log" | cut -c1-90)")")
  tail -n 5 "$OUT/$name.log"
  return $rc
}

{
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); \
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv 2>&1
  nvcc --version 2>&1 | tail -n 1
  nproc
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

for p in "${phases[@]}"; do
  case $p in
    build)  # Hopper only (the lent GPUs), all cores; -Xptxas -v puts registers and spills in the log
      phase build "${BUILD_S:-150}" env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="$(nproc)" \
        NVCC_APPEND_FLAGS="-Xptxas -v" "$PY" setup.py build_ext --inplace
      "$PY" -m predkern.cli info 2>&1 | tee "$OUT/info.txt" ;;
    tests)  # the gpu tests (64-bit indexing, CUDA streams and every op on cuda and triton among them)
      workers=()  # pytest-xdist where it is installed (the device image has it)
      "$PY" -c "import xdist" 2> /dev/null && workers=(-n "${TEST_WORKERS:-8}")
      phase tests "${TESTS_S:-120}" "$PY" -m pytest -q -m gpu "${workers[@]}" -p no:cacheprovider \
        --junitxml="$OUT/tests.xml" ;;
    fuzz)  # fresh examples on the GPU backends (the long profile), for what is left of its limit
      ids=$("$PY" -m pytest --collect-only -q tests/test_fuzz.py 2>/dev/null | grep -E '\[(cuda|triton)-' || true)
      if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        phase fuzz "${FUZZ_S:-30}" env PREDKERN_FUZZ=long "$PY" -m pytest -q -x -p no:cacheprovider $ids
      else
        summary+=("fuzz: no cuda/triton fuzz tests collected (no GPU?)")
      fi ;;
    bench)  # one report per group, so a timed-out group loses only itself
      k=0
      while IFS= read -r group; do
        k=$((k + 1))
        phase "bench-$k" "${BENCH_S:-55}" "$PY" -m predkern.bench --device "$BENCH_DEVICE" \
          --shapes "${group%%:*}" --ops "${group#*:}" --budget "${BENCH_BUDGET:-0.3}" --out "$OUT/bench-$k"
      done <<< "$BENCH_SHAPES_OPS" ;;
    train)  # issue 5: a PredRNN-V2 training iteration at the paper config (torch.compile takes minutes)
      phase bench-train "${TRAIN_S:-300}" "$PY" -m predkern.bench --device "$BENCH_DEVICE" \
        --shapes "${TRAIN_SHAPES:-mnist_train}" --ops predrnn_v2_train --budget "${BENCH_BUDGET:-0.3}" \
        --out "$OUT/bench-train" ;;
    *) echo "unknown phase $p (build tests fuzz bench train)"; exit 2 ;;
  esac
done

echo
echo "== summary (logs and reports under $OUT)"
printf '%s\n' "${summary[@]}"
