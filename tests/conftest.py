"""Fixtures: running a check on the CPU when a GPU is jax's default device (helpers: _helpers.py)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

# Set before jax starts (and inherited by the tests' subprocesses). The suite renders tiny images,
# so XLA's compile time, not run time, is most of its time:
# - LLVM at -O0 compiles the suite's hundreds of small programs about a quarter faster; our kernels
#   are compiled C++ and unaffected, and users and the benchmarks keep XLA's default.
# - JAX's persistent compilation cache (JAX's own switch turns it off:
#   JAX_ENABLE_COMPILATION_CACHE=false) lets a later run on the same machine skip the compiles:
#   an entry's key holds the program, jax's version and the flags, and a custom call is looked up by
#   name when an entry is loaded, so a rebuilt kernel is the one that runs.
_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE / "nmr_jax" / "test-compilations"))
# Every program is cached: most take well under JAX's default threshold of one second.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

from nmr_jax import _ffi  # noqa: E402


@pytest.fixture
def on_cpu() -> Iterator[None]:
    """Runs a test with the CPU as jax's default device, for checks of what the CPU kernels define
    in their own way: errors raised from inside a kernel and results independent of the thread
    pool. The CUDA kernels define these differently (NaN results, atomic sums; README, GPU) and
    tests/test_cuda.py checks them there; on a GPU machine the test still checks the CPU."""
    try:
        cpu = jax.devices("cpu")[0]
    except RuntimeError:
        pytest.skip("no CPU backend to run on (JAX_PLATFORMS hides it)")
    with jax.default_device(cpu), _ffi.using_kernels("default"):  # also under NMR_JAX_KERNELS
        yield
