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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import render_views_sharded  # noqa: E402  (examples/ is on the path)

VIEWS, SIZE = 8, 16


def test_two_processes_render_and_differentiate_as_one(tmp_path: Path) -> None:
    saved = tmp_path / "views.npz"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",  # read when jax starts its CPU
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
    # Each view is rasterized by the same kernel on the same data wherever it runs.
    np.testing.assert_array_equal(result["rgb"], rgb)
    np.testing.assert_array_equal(result["alpha"], alpha)
    # The gradient is summed in another order (per device, then across them): float rounding.
    assert np.abs(grad).max() > 1e-3  # a gradient worth comparing: 0.105
    np.testing.assert_allclose(result["grad"], grad, rtol=1e-5, atol=1e-7)
