"""Fixtures: running a check on the CPU when a GPU is jax's default device (helpers: _helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import pytest

from nmr_jax import _ffi


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
