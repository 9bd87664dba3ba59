"""How the extension modules are compiled: no floating-point contraction in code that includes
nmr_core.h. A fused multiply-add rounds a * b + c once instead of twice, so edge tests and
barycentrics would differ between hosts that allow FMA (aarch64, -march=native) and those that do
not, and from the CUDA build (--fmad=false): face ids on edges would depend on the machine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nmr_jax import _nmr_jax_cpu

ROOT = Path(__file__).resolve().parents[1]
# Objects compiled from sources that include nmr_core.h.
CORE_SOURCES = ("cpu_ops.cc", "cuda_host.cc")

pytestmark = pytest.mark.versions  # the second leg runs the whole file


def test_build_tree_compiles_the_core_without_contraction():
    ninja_files = sorted((ROOT / "build").glob("*/build.ninja"))
    if not ninja_files:
        pytest.skip("no build tree under build/ (installed from a wheel): nothing to read")
    checked = 0
    for ninja in ninja_files:
        text = ninja.read_text()
        # A ninja build statement, then its indented variables (FLAGS among them).
        for source in CORE_SOURCES:
            for m in re.finditer(
                rf"^build \S+{re.escape(source)}\.o: .*\n((?:  .*\n)*)", text, re.M
            ):
                assert "-ffp-contract=off" in m.group(1), (
                    f"{ninja}: {source} without -ffp-contract=off"
                )
                checked += 1
    assert checked > 0, f"no compilation of {CORE_SOURCES} found in {ninja_files}"


def test_cpu_module_has_no_fused_multiply_add():
    # x86-64 vfmadd/vfmsub/vfnmadd..., aarch64 fmadd/fmsub/fnmadd/fnmsub (scalar and vector fmla/fmls
    # are not emitted for contraction of scalar code, but are listed for completeness).
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not found: cannot read the CPU module's machine code")
    lib = _nmr_jax_cpu.__file__
    asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", lib], capture_output=True, text=True)
    assert asm.returncode == 0, asm.stderr
    fused = re.findall(r"\t(v?f(?:n?m(?:add|sub)\w*)|fml[as])\b", asm.stdout)
    assert not fused, f"{lib} contains fused multiply-adds: {sorted(set(fused))[:5]}"


def test_import_without_the_built_kernels_says_how_to_install(tmp_path: Path) -> None:
    # `import nmr_jax` in a clone that was not installed failed with a confusing "partially
    # initialized module (most likely due to a circular import)".
    shutil.copytree(ROOT / "nmr_jax", tmp_path / "nmr_jax", ignore=shutil.ignore_patterns("*.so"))
    # -S: no site, so no editable-install finder; jax comes from site-packages, nmr_jax from the
    # copy (the current directory is first on the path).
    code = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r}); import nmr_jax"
    run = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: nmr_jax's compiled kernels") and "pip install" in last
    assert "circular" not in run.stderr
