"""Two JAX processes on this machine, joined by ``jax.distributed.initialize``, render one batch.

``examples/render_views_sharded.py --processes 2`` starts two processes on localhost (CPU
collectives through gloo), each with two CPU devices (``--xla_force_host_platform_device_count=2``),
and shards 8 views over the 4 devices of both: each device renders 2 views, and the gradient of
their mean colour with respect to the shared vertices is summed across the processes. The images
and the gradient must equal those of this (single, one-device) process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from tests._helpers import host_devices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import render_views_sharded  # noqa: E402  (examples/ is on the path)

VIEWS, SIZE = 8, 16


@pytest.mark.versions
def test_two_processes_render_and_differentiate_as_one(tmp_path: Path) -> None:
    saved = tmp_path / "views.npz"
    env = {
        **os.environ,
        "XLA_FLAGS": host_devices(2),  # read when jax starts its CPU
        "JAX_PLATFORMS": "cpu",  # the forced devices are host devices, also on a GPU machine
    }
    proc = subprocess.run(
        [
            sys.executable,
            render_views_sharded.__file__,
            *("--views", str(VIEWS), "--image-size", str(SIZE), "--processes", "2"),
            *("--output", str(tmp_path / "views.png"), "--save", str(saved)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{VIEWS} views on 4 devices in 2 processes" in out, out
    for process in (0, 1):  # each holds two devices' shards of two views each
        line = next(x for x in out.splitlines() if x.startswith(f"process {process}:"))
        assert line.count(f"(2, {SIZE}, {SIZE}, 3)") == 2, out

    vertices, faces, textures, eyes = render_views_sharded.scene(VIEWS)
    rgb, alpha, grad = render_views_sharded.views_and_gradient(
        SIZE, vertices, faces, textures, jnp.asarray(eyes)
    )
    result = np.load(saved)
    # Each view is rasterized by the same kernel on the same data wherever it runs, but XLA
    # compiles the camera and lighting for 2 views per device instead of 8, which may round
    # differently (by one float32 ulp in 47 of 6144 values with jax 0.12; none with 0.10.2).
    np.testing.assert_allclose(result["rgb"], rgb, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["alpha"], alpha, rtol=0, atol=1e-6)
    # The gradient is summed in another order (per device, then across them) from per-view
    # parts that may differ by an ulp, and vertices shared by faces of opposite slopes cancel:
    # entries of 0.01 differ by up to 1.6e-6 with jax 0.12 (1e-9 with 0.10.2). A process's share
    # missing or counted twice would move them by half of themselves.
    assert np.abs(grad).max() > 1e-3  # a gradient worth comparing: 0.105
    np.testing.assert_allclose(result["grad"], grad, rtol=1e-4, atol=2e-5)
