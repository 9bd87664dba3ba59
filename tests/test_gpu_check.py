"""tools/gpu_check.sh's dry run on a machine without a GPU: every GPU step is skipped, saying so,
in the planned order, and the smoke script that the GPU run puts under compute-sanitizer runs on
the host-compiled CUDA code instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmr_jax import _ffi

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["build", "nvidia-smi", "test-cuda", "smoke-host", "memcheck", "racecheck", "bench-quick"]
STEPS += ["suite", "bench-full"]


def test_gpu_check_dry_run_skips_the_gpu_steps(tmp_path):
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("nvidia-smi is here: the script would run the real GPU checks")
    if _ffi.cuda_host is None:
        pytest.skip("nmr_jax was built without the host CUDA module (NMR_JAX_CUDA_HOST=OFF)")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, GPU_CHECK_SKIP_BUILD="1")
    run = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == STEPS
    for line in lines[:-1]:
        name = line.split()[0]
        if name == "build":
            assert "skipped: GPU_CHECK_SKIP_BUILD=1" in line
        elif name == "smoke-host":
            assert " ok " in line and "gpu_smoke: all ok" in line
        else:
            assert "skipped: no GPU" in line, line
    assert "every step that ran passed" in lines[-1]
