#!/usr/bin/env bash
# The GPU checks as one short run, for a machine with an NVIDIA GPU, nvcc and jax with its CUDA
# plugin (e.g. a lent H100/H200 with every build and test dependency installed but no package
# index, hence --no-build-isolation). From the repository root:
#
#   bash tools/gpu_check.sh            # steps.log and summary.txt go to $OUT, or to ./gpu_check/
#
# Steps, in order of value, each with its own time limit (seconds; planned total 570 s, under
# the 10 minutes of one command):
#   build        150  nmr_jax for sm_90 only; the run stops here if it fails
#   nvidia-smi    15  GPU model, driver, memory
#   test-cuda    120  tests/test_cuda.py alone: parity with the CPU kernels on the GPU
#   memcheck      90  tools/gpu_smoke.py (every target at its edges) under compute-sanitizer's
#                     memcheck: out-of-bounds and misaligned device accesses
#   initcheck     90  the same under initcheck: reads of device memory that nothing wrote
#   bench-quick   60  benchmarks/bench_gpu.py --quick
# then, with what is left of GPU_CHECK_BUDGET (default 570 s): the rest of the suite (what CI
# runs: the slow-marked tests are left out) and the full benchmark.
# Output: $OUT holds two files, whatever happens (a run cut off still leaves both): summary.txt,
# one line per step, and steps.log, every step's output under a "== step" header.
#
# Without a GPU every GPU step is skipped, and saying so is the whole output. The CPU dry run
# (tests/test_gpu_check.py) instead puts stand-ins for nvidia-smi and compute-sanitizer on PATH,
# so that every step's command runs, with these settings:
#   GPU_CHECK_SKIP_BUILD=1      skip the build (an installed checkout)
#   GPU_CHECK_DEVICE=cpu        gpu_smoke.py and bench_gpu.py on the CPU (the CUDA code compiled
#                               for the host, and a check of the benchmark script), not the GPU
#   GPU_CHECK_PYTEST_ARGS=...   extra pytest arguments for the test steps (the dry run collects
#                               only: it does not run the suite a second time)
# jax's pool allocator is off for the sanitizers (XLA_PYTHON_CLIENT_ALLOCATOR=platform: its pool
# would hide out-of-bounds accesses) and preallocation is off everywhere (test subprocesses need
# GPU memory too). Exit status: 0 when every step that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
summary="$out/summary.txt"
log="$out/steps.log"
: > "$summary"
: > "$log"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-570}"
device="${GPU_CHECK_DEVICE:-gpu}"
read -r -a pytest_args <<< "${GPU_CHECK_PYTEST_ARGS:-}"
start=$SECONDS
status=0

if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  gpu=1
else
  gpu=0
fi

note() { echo "$*" | tee -a "$summary"; }

# step NAME LIMIT NEEDS_GPU COMMAND...: runs the program COMMAND (not a shell function: timeout
# executes it) with at most LIMIT seconds, less if the budget is nearly spent; its output is
# appended to steps.log; one summary line.
step() {
  local name="$1" limit="$2" needs_gpu="$3"
  shift 3
  local left=$((budget - (SECONDS - start)))
  if [ "$needs_gpu" = 1 ] && [ "$gpu" = 0 ]; then
    note "$(printf '%-12s skipped: no GPU (nvidia-smi finds none)' "$name")"
    return 0
  fi
  if [ "$left" -lt 10 ]; then
    note "$(printf '%-12s skipped: time budget spent' "$name")"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS rc step_log
  echo "== $name (at most ${limit}s): $*"
  step_log=$(mktemp)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$step_log" 2>&1
  rc=$?
  { echo "== $name: $*"; cat "$step_log"; echo; } >> "$log"
  local took=$((SECONDS - t0))
  if [ "$rc" = 0 ]; then
    note "$(printf '%-12s ok      %4ss  %s' "$name" "$took" "$(tail -n 1 "$step_log" | cut -c1-60)")"
  else
    [ "$rc" = 124 ] && rc="timeout"
    note "$(printf '%-12s FAILED  %4ss  (%s) %s; see == %s in steps.log' "$name" "$took" "$rc" \
      "$(tail -n 1 "$step_log" | cut -c1-60)" "$name")"
    status=1
  fi
  rm -f "$step_log"
  [ "$rc" = 0 ]
}

# compute-sanitizer on the smoke script. --report-api-errors no: CUDA API calls that fail and
# are handled (XLA's and the runtime's own probes) are not findings of the kernels.
sanitize=(env XLA_PYTHON_CLIENT_ALLOCATOR=platform compute-sanitizer --error-exitcode 1
  --report-api-errors no)
smoke=("$python" tools/gpu_smoke.py --device "$device")

if [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  note "build        skipped: GPU_CHECK_SKIP_BUILD=1"
elif [ "$gpu" = 0 ]; then
  note "build        skipped: no GPU (nvidia-smi finds none)"
else
  # Editable, as in CI: the tests import nmr_jax from the checkout.
  step build 150 1 "$python" -m pip install -q --no-build-isolation --no-deps \
    -Ccmake.define.NMR_JAX_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -e . ||
    { note "the build failed: nothing else runs"; exit 1; }
fi
step nvidia-smi 15 1 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step test-cuda 120 1 "$python" -m pytest -q -rs -p no:cacheprovider "${pytest_args[@]}" tests/test_cuda.py
step memcheck 90 1 "${sanitize[@]}" --tool memcheck "${smoke[@]}"
step initcheck 90 1 "${sanitize[@]}" --tool initcheck "${smoke[@]}"
step bench-quick 60 1 "$python" benchmarks/bench_gpu.py --device "$device" --quick --repeats 10
step suite 240 1 "$python" -m pytest -q -rs -p no:cacheprovider "${pytest_args[@]}" \
  --ignore=tests/test_cuda.py
step bench-full 240 1 "$python" benchmarks/bench_gpu.py --device "$device" --repeats 10
note "gpu_check: $((SECONDS - start))s, $([ "$status" = 0 ] && echo "every step that ran passed" || echo "FAILURES above")"
exit "$status"
