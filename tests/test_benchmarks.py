"""The scripts of benchmarks/ run from a checkout and print their tables (at tiny sizes).

Nothing here looks at a time: the point is that the commands the README quotes keep working.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    """The script's command line run in this process (as ``python benchmarks/<script> args``:
    its folder first on the path), its standard output."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
        mp.syspath_prepend(str(BENCHMARKS))
        try:
            runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
        except SystemExit as e:
            assert e.code in (None, 0), out.getvalue()
    return out.getvalue()


def test_bench_cpu_quick_prints_every_entry_with_its_ratio():
    out = run("bench_cpu.py", "--quick", "--repeats", "1", "--no-mitsuba")
    rows = [line.split() for line in out.splitlines() if line.startswith("teapot ")]
    # --quick: teapot at 64^2 and 256^2, forward and forward+backward.
    assert len(rows) == 4, out
    small = [r for r in rows if r[2] == "64"]
    assert small and all(len(r) == 12 for r in small), out  # the brute force ran: time and ratio
    assert "pytorch3d: skipped" in out


def test_bench_vmap_prints_both_modes_and_no_mesh_copy():
    out = run("bench_vmap.py", "--views", "4", "--image-size", "16", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| forward")]
    assert len(rows) == 2, out
    assert all(row.rstrip("| ").split()[-1] == "0" for row in rows), out


def test_bench_gpu_table_on_the_cpu():
    """--device cpu runs the GPU benchmark's code on the CPU (a GPU run is test_cuda.py's part)."""
    out = run("bench_gpu.py", "--quick", "--repeats", "1", "--device", "cpu")
    rows = [line for line in out.splitlines() if line.startswith("| teapot |")]
    assert len(rows) == 2, out  # batch 1 and 2
    assert all(len(re.findall(r"\(\d+\.\d\)", row)) == 2 for row in rows), out  # both ratios


def test_bench_cpu_shader_table_prints_its_ratio():
    out = run("bench_cpu.py", "--shader-only", "--quick", "--repeats", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith("teapot ")]
    assert len(rows) == 1 and len(rows[0]) == 8 and float(rows[0][-1]) > 0, out


def test_bench_cpu_clip_table_prints_its_ratio():
    out = run("bench_cpu.py", "--clip-only", "--quick", "--repeats", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith("teapot ")]
    assert len(rows) == 1 and len(rows[0]) == 11, out
    assert float(rows[0][7]) > 0 and float(rows[0][10]) > 0, out


def test_bench_layers_prints_the_baseline_and_each_layer_count():
    out = run(
        "bench_layers.py", "--sizes", "16", "--batch", "2", "--ks", "3", "--blurs", "0.01",
        "--scenes", "teapot", "--repeats", "1",
    )  # fmt: skip
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| teapot |")]
    assert len(rows) == 2 and rows[0][3].strip() == "fragments", out
    assert float(rows[1][6]) > 0 and float(rows[1][8]) > 0, out  # both ratios


def test_bench_soft_prints_its_table_with_the_brute_force():
    out = run("bench_soft.py", "--size", "32", "--repeats", "1", "--meshes", "teapot")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| teapot")]
    assert len(rows) == 2 and rows[0][7].strip() != "-", out  # the brute force ran at sigma 1e-4


def test_bench_soft_colours_prints_its_table():
    out = run("bench_soft.py", "--colours", "--size", "32", "--repeats", "1", "--meshes", "teapot")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| teapot")]
    assert len(rows) == 2 and float(rows[0][6]) > 0, out  # soft / Kato


def test_gradient_rules_smoke_run_prints_every_rule_asked():
    out = run(
        "gradient_rules.py", "--problems", "3", "--steps", "2", "--rules", "kato", "uniform-max"
    )
    rows = [
        line
        for line in out.splitlines()
        if line.startswith("| kato") or line.startswith("| uniform")
    ]
    assert len(rows) == 2, out


def test_bench_forward_prints_every_path_with_both_ratios():
    out = run("bench_forward.py", "--size", "16", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "path" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "depth",
        "soft silhouettes",
        "soft colours",
        "layers",
    ], out
    assert all(len(re.findall(r"\(\d+\.\d\)", row)) == 2 for row in rows), out
