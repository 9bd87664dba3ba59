"""The C++ core (csrc/nmr_core.h) on its own: csrc/core_test.cc compiled with the host compiler
(with AddressSanitizer and UndefinedBehaviorSanitizer where it has them) and run. It checks the
GPU's two-pass rasterizer (atomic minimum of 64-bit depth-and-index keys, tile by tile over exact
row spans, then per-pixel decode) against the CPU's draw_face on 400 random meshes with
ties, bit for bit, the row spans against the edge test of every pixel, and the signed squared
pixel-to-face distance in NDC and its gradient against a double-precision computation, and the
layered rasterizer's per-pixel lists filled in any order and by 4 threads at once against the
CPU's in-order insertion."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++ or g++) to build csrc/core_test.cc")
    return cxx


def test_core_two_pass_rasterizer_equals_draw_face(tmp_path):
    cxx = _compiler()
    exe = tmp_path / "core_test"
    base = [cxx, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]
    base += ["-fopenmp-simd"]  # as the CPU library: nmr_core.h's `omp simd` loops
    base += [f"-I{CSRC}", str(CSRC / "core_test.cc"), "-o", str(exe)]
    build = subprocess.run(base + SANITIZE, capture_output=True, text=True)
    sanitized = build.returncode == 0
    if not sanitized:  # a compiler without the sanitizer runtimes still runs the test
        build = subprocess.run(base, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    # The sanitizer runtimes must not be preloaded twice (CI's sanitizer run preloads them).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "two-pass rasterizer vs draw_face: 400 meshes" in run.stdout
    assert "row spans vs edge tests: 3000 faces" in run.stdout
    assert "core test passed" in run.stdout
    print(run.stdout, "sanitized" if sanitized else "not sanitized")
