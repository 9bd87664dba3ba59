"""tools/gpu_check.sh on a machine without a GPU.

The dry run puts stand-ins for nvidia-smi and compute-sanitizer on PATH (scripts written here that
record how they were called; the sanitizer's runs the program it is given under memcheck, the first
of its two steps), so that every step's command line is executed as on a GPU machine: a step that
cannot run (a shell function handed to `timeout`, a wrong path or flag) fails the test. The build
is skipped (GPU_CHECK_SKIP_BUILD=1): it would reinstall the package under test with CUDA for one
architecture, minutes of nvcc. The smoke and benchmark scripts run on the CPU
(GPU_CHECK_DEVICE=cpu: the smoke script then runs the CUDA code compiled for the host) and the test
steps only collect, one small file besides their own (GPU_CHECK_PYTEST_ARGS), so that the suite
does not run a second time inside itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers import needs_cuda_host

ROOT = Path(__file__).resolve().parents[1]
GPU_STEPS = [
    "nvidia-smi",
    "test-cuda",
    "memcheck",
    "initcheck",
    "bench-quick",
    "suite",
    "bench-full",
]
# What comes back from a lent GPU machine's $OUT.
MAX_OUT_FILES = 8

# Each stand-in appends {"argv": [...], "allocator": ...} to $RECORD, one JSON object a line.
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    print(json.dumps({{"tool": "{tool}", "argv": sys.argv[1:],
                      "allocator": os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR")}}), file=f)
"""
NVIDIA_SMI = RECORDER + 'print("GPU 0: stand-in for nvidia-smi")\n'
# compute-sanitizer [--option value]... program [args...]: every option our script passes takes a
# value, so the program starts at the first argument that is not an option. The stand-in runs it
# under the first tool only: the second step's program is the same command (the recorder checks
# it), and each run of it is long on the instrumented host build of CI's sanitizer section.
COMPUTE_SANITIZER = (
    RECORDER
    + """args = sys.argv[1:]
tool = args[args.index("--tool") + 1]
while args and args[0].startswith("--"):
    args = args[2:]
if tool == "memcheck":
    os.execvp(args[0], args)
print(f"stand-in for compute-sanitizer --tool {tool}: not run again")
"""
)


def _run(tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess:
    env = {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "PATH": path} | env
    # Not CI's report options: the script's pytest steps would write CI's report files.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | env
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def _skip_where_real_gpu_tools_are() -> None:
    for tool in ("nvidia-smi", "compute-sanitizer"):
        if shutil.which(tool) is not None:
            pytest.skip(f"{tool} is here: the script would run the real GPU checks")


@needs_cuda_host
def test_gpu_check_dry_run_executes_every_step(tmp_path):
    _skip_where_real_gpu_tools_are()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, text in [("nvidia-smi", NVIDIA_SMI), ("compute-sanitizer", COMPUTE_SANITIZER)]:
        (bin_dir / tool).write_text(text.format(python=sys.executable, tool=tool))
        (bin_dir / tool).chmod(0o755)
    record = tmp_path / "record.jsonl"
    run = _run(
        tmp_path,
        f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        RECORD=str(record),
        GPU_CHECK_SKIP_BUILD="1",
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_PYTEST_ARGS="--collect-only tests/test_data.py",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[0] == "build        skipped: GPU_CHECK_SKIP_BUILD=1"
    assert [line.split()[0] for line in lines[1:-1]] == GPU_STEPS
    for line in lines[1:-1]:
        assert line.split()[1] == "ok", line
    assert "every step that ran passed" in lines[-1]
    log = (out / "steps.log").read_text()
    assert log.count("gpu_smoke: all ok") == 1  # under memcheck (the stand-in's first tool)
    assert "tests collected" in log.split("== suite")[1]
    assert sorted(p.name for p in out.iterdir()) == ["steps.log", "summary.txt"]
    assert len(list(out.iterdir())) <= MAX_OUT_FILES

    calls = [json.loads(line) for line in record.read_text().splitlines()]
    sanitizer = [c for c in calls if c["tool"] == "compute-sanitizer"]
    flags = {"--error-exitcode": "1", "--report-api-errors": "no"}
    for call, tool in zip(sanitizer, ["memcheck", "initcheck"], strict=True):
        argv = call["argv"]
        assert argv[argv.index("--tool") + 1] == tool
        assert all(argv[argv.index(flag) + 1] == value for flag, value in flags.items())
        assert argv[-3:] == ["tools/gpu_smoke.py", "--device", "cpu"]
        assert call["allocator"] == "platform"  # jax's pool would hide out-of-bounds accesses
    # The detection call (-L) and the nvidia-smi step.
    assert [c["argv"][0] for c in calls if c["tool"] == "nvidia-smi"] == [
        "-L",
        "--query-gpu=name,driver_version,memory.total",
    ]


def test_gpu_check_step_that_cannot_run_fails_the_check(tmp_path):
    # A compute-sanitizer that cannot be executed (as when the script once handed a shell function
    # to `timeout`): both sanitizer steps fail, and so does the whole check. Every Python command
    # is `true` here, so that only the sanitizer steps can fail.
    _skip_where_real_gpu_tools_are()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(NVIDIA_SMI.format(python=sys.executable, tool="nvidia-smi"))
    (bin_dir / "nvidia-smi").chmod(0o755)
    (bin_dir / "compute-sanitizer").write_text("not a program\n")  # not executable
    run = _run(
        tmp_path,
        f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHON="true",
        RECORD=str(tmp_path / "record.jsonl"),
        GPU_CHECK_SKIP_BUILD="1",
    )
    assert run.returncode == 1
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    verdicts = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert verdicts == {step: "ok" for step in GPU_STEPS} | {
        "memcheck": "FAILED",
        "initcheck": "FAILED",
    }
    assert "FAILURES above" in lines[-1]


def test_gpu_check_without_a_gpu_skips_the_gpu_steps(tmp_path):
    _skip_where_real_gpu_tools_are()
    run = _run(tmp_path, os.environ["PATH"])
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["build", *GPU_STEPS]
    assert all("skipped: no GPU" in line for line in lines[:-1])
    assert "every step that ran passed" in lines[-1]
