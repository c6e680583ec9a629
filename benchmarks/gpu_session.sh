#!/usr/bin/env bash
# The GPU checks in one device call, for a session that is lent a GPU for a few minutes:
# build the CUDA kernels against the torch found there, run the `gpu` tests, time the issues'
# GPU targets, and leave everything under $OUT (logs, REPORT.md and results.json per bench group).
#
#   bash benchmarks/gpu_session.sh [phase ...]     phases: build tests fuzz host memory bench train
#                                                  (default: build tests train bench)
#
# Each phase has a time limit (seconds, overridable: BUILD_S, TESTS_S, FUZZ_S, HOST_S, MEMORY_S,
# BENCH_S, TRAIN_S) so a slow one cannot eat the others' time; the default phases' limits add up to
# 575 s (build 75, tests 200, train 150, three bench groups of 50), for a 600 s call on a 900 s
# lease (the H200 machine started in about 30 s; the build took 45-57 s, the gpu tests 194 s on 12
# workers, the training phase 91 s, a bench group 23-29 s). A report is rewritten after each case, so a
# group cut short keeps its finished cases. The table printed last says what each phase did. With
# PACK=1 everything is packed into $OUT/gpu-session.tgz (the device tool brings back 8 files at
# most). Copy the bench-*/ folders into benchmarks/results/<gpu>/ (see nvidia-h200/README.md).
# On a machine without a GPU it still runs (BENCH_DEVICE=cpu and tiny shapes make a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/build/gpu-session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BENCH_DEVICE="${BENCH_DEVICE:-cuda}"
# A group (a report each) per GPU target still open after the H200 run 3: prednet_error's
# bandwidth with its new per-sample mean (issue 4), the decoupling forward's rows kernel (4), the
# ConvLSTM gates at the large shape (2). Earlier groups (nvidia-h200/README.md):
# "mnist:stlstm_cell,convlstm_gates", "kth:stlstm_memory,stlstm_output" (3), "tiny,mnist:convlstm_gates" (2).
BENCH_SHAPES_OPS="${BENCH_SHAPES_OPS:-kitti0,kitti1:prednet_error,prednet_error_no_mean
mnist:decoupling_loss
large,mnist:convlstm_gates}"
FINAL_OUT="$OUT"
if [ "${PACK:-0}" = 1 ]; then OUT=$(mktemp -d); fi
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(build tests train bench)
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
      rm -rf build/temp  # ninja would skip unchanged units, and their registers and spills with them
      phase build "${BUILD_S:-75}" env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="$(nproc)" \
        NVCC_APPEND_FLAGS="-Xptxas -v" "$PY" setup.py build_ext --inplace
      "$PY" -m predkern.cli info 2>&1 | tee "$OUT/info.txt" ;;
    tests)  # the gpu tests (64-bit indexing, CUDA streams and every op on cuda and triton among them)
      workers=()  # pytest-xdist and pytest-timeout where installed (the device image has both)
      "$PY" -c "import xdist" 2> /dev/null && workers=(-n "${TEST_WORKERS:-12}")
      "$PY" -c "import pytest_timeout" 2> /dev/null && workers+=(--timeout "${TEST_TIMEOUT:-60}")
      # -v: a line per test in the log as it ends, so a run cut short still says which failed;
      # TESTS_K selects (pytest -k), e.g. "cuda" for the CUDA backend's tests alone
      select=()
      [ -n "${TESTS_K:-}" ] && select=(-k "$TESTS_K")
      phase tests "${TESTS_S:-200}" "$PY" -m pytest -v -rfE -m gpu "${select[@]}" "${workers[@]}" \
        -p no:cacheprovider --junitxml="$OUT/tests.xml" ;;
    fuzz)  # fresh examples on the GPU backends (the long profile), for what is left of its limit
      ids=$("$PY" -m pytest --collect-only -q tests/test_fuzz.py 2>/dev/null | grep -E '\[(cuda|triton)-' || true)
      if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        phase fuzz "${FUZZ_S:-30}" env PREDKERN_FUZZ=long "$PY" -m pytest -q -x -p no:cacheprovider $ids
      else
        summary+=("fuzz: no cuda/triton fuzz tests collected (no GPU?)")
      fi ;;
    memory)  # what is alive at the training iteration's peak of GPU memory, per contender and mode
      phase memory "${MEMORY_S:-60}" bash -c "$PY benchmarks/memory_peak.py --mode forward+backward && \
        $PY benchmarks/memory_peak.py --mode 'forward+backward (bf16 autocast)'" ;;
    host)  # where a call's host time goes, per backend, and the slowest one under cProfile
      phase host "${HOST_S:-40}" "$PY" benchmarks/host_profile.py --calls "${HOST_CALLS:-2000}" ;;
    bench)  # one report per group, so a timed-out group loses only itself
      k=0
      while IFS= read -r group; do
        k=$((k + 1))
        # shellcheck disable=SC2086  # BENCH_ARGS: more options, e.g. "--no-compile --backends cuda"
        phase "bench-$k" "${BENCH_S:-50}" "$PY" -m predkern.bench --device "$BENCH_DEVICE" \
          --shapes "${group%%:*}" --ops "${group#*:}" --budget "${BENCH_BUDGET:-0.3}" ${BENCH_ARGS:-} \
          --out "$OUT/bench-$k"
      done <<< "$BENCH_SHAPES_OPS" ;;
    train)  # issue 5: a PredRNN-V2 training iteration at the paper config, fp32 and bf16 autocast
      # (torch.compile of 20 unrolled steps takes minutes: left out unless TRAIN_COMPILE=1)
      # (the Triton backend's host cost per call made it 0.97x in forward on the H200: cuda alone here)
      nocompile=(--no-compile)
      [ "${TRAIN_COMPILE:-0}" = 1 ] && nocompile=()
      [ "$BENCH_DEVICE" = cuda ] && nocompile+=(--backends "${TRAIN_BACKENDS:-cuda}")
      phase bench-train "${TRAIN_S:-150}" "$PY" -m predkern.bench --device "$BENCH_DEVICE" \
        --shapes "${TRAIN_SHAPES:-mnist_train}" --ops "${TRAIN_OPS:-predrnn_v2_train}" "${nocompile[@]}" \
        --modes "${TRAIN_MODES:-forward+backward,forward+backward (bf16 autocast)}" \
        --budget "${BENCH_BUDGET:-0.3}" ${BENCH_ARGS:-} --out "$OUT/bench-train" ;;
    *) echo "unknown phase $p (build tests fuzz host memory bench train)"; exit 2 ;;
  esac
done

printf '%s\n' "${summary[@]}" > "$OUT/summary.txt"
if [ "$OUT" != "$FINAL_OUT" ]; then
  tar czf "$FINAL_OUT/gpu-session.tgz" -C "$OUT" . && cp "$OUT/summary.txt" "$OUT/versions.txt" "$FINAL_OUT/"
fi
echo
echo "== summary (logs and reports under $FINAL_OUT)"
printf '%s\n' "${summary[@]}"
