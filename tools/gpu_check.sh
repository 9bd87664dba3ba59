#!/usr/bin/env bash
# The GPU checks in one run, for a machine with an NVIDIA GPU, nvcc and jax with its CUDA plugin
# (e.g. the project's lent H200 machine, which has every build and test dependency installed but
# reaches no package index, hence --no-build-isolation). From the repository root:
#
#   bash tools/gpu_check.sh            # logs go to $OUT, or to ./gpu_check/ without it
#
# It builds nmr_jax for sm_90 only (the build is then about a minute), runs the whole suite with the
# GPU as jax's default device (tests/test_cuda.py, the CPU-vs-CUDA parity, included), and both
# GPU-side benchmarks. Each
# step's log is kept; the script goes on after a failing step and exits non-zero at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
status=0

step() {
  local name="$1"
  shift
  echo "== $name: $*"
  if ! "$@" 2>&1 | tee "$out/$name.log"; then
    echo "== $name FAILED"
    status=1
  fi
}

step nvidia-smi nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# Editable, as in CI: the tests import nmr_jax from the checkout.
step build "$python" -m pip install -q --no-build-isolation --no-deps \
  -Ccmake.define.NMR_JAX_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -e .
step suite "$python" -m pytest -q -rs -p no:cacheprovider
step bench-gpu "$python" benchmarks/bench_gpu.py --repeats 10
step bench-vmap "$python" benchmarks/bench_vmap.py --repeats 5
exit "$status"
