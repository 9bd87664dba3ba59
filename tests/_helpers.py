"""Helpers shared by the tests: the original's reference data (../shared beside the repository,
skipped when absent), random meshes for the kernel checks, and the tie scene."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from nmr_jax import _ffi

REFERENCE_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "nmr_reference_data"


def reference_data() -> Path:
    """The original's meshes and golden images, or a skip naming what is missing."""
    if not (REFERENCE_DATA / "MANIFEST.txt").is_file():
        pytest.skip(f"reference data not found at {REFERENCE_DATA} (../shared is absent)")
    return REFERENCE_DATA


NEAR, FAR = 0.1, 100.0


def needs_cuda_host(test):
    """Marks a test that runs the host-compiled CUDA kernels: skipped where the package was built
    without them (NMR_JAX_CUDA_HOST=OFF, as in CI's first leg), run by CI's sanitizer section
    (``-m cuda_host``) on its instrumented build."""
    skip = pytest.mark.skipif(
        _ffi.cuda_host is None,
        reason="nmr_jax was built without the host CUDA module (NMR_JAX_CUDA_HOST=OFF)",
    )
    return pytest.mark.cuda_host(skip(test))


def host_devices(count: int) -> str:
    """XLA_FLAGS for a subprocess whose CPU backend has ``count`` devices (read when jax starts
    it), keeping the suite's own flags (conftest.py)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"


def random_faces(rng: np.random.Generator, batch: int, faces: int, height: int, width=None):
    """Random faces with x, y on a 1/8-pixel grid of a power-of-two image (so edge functions are
    exact in float32 on both sides and face ids can be compared exactly) and continuous depths,
    some before the near plane. Faces behind the camera have their own named test: mixed-sign
    depths make 1 / sum(w / z) ill-conditioned, and no two float32 codes agree to 1e-5 there."""
    width = height if width is None else width
    # NDC k / (4 n) is pixel 0.5 * (k / 4 + n - 1), a multiple of 1/8; |NDC| <= 1.125 reaches
    # a little beyond the image so that clipping at the border is exercised.
    n = np.array([width, height])
    k = rng.integers(-(9 * n) // 2, (9 * n) // 2 + 1, size=(batch, faces, 3, 2))
    z = rng.uniform(0.05, 5.0, size=(batch, faces, 3, 1))
    return np.concatenate([k / (4 * n), z], -1).astype(np.float32)


def kernel_maps(fv, h, w):
    return _ffi.rasterize(jnp.asarray(fv), h, w, NEAR, FAR)


# Rows, columns of the tie scene: 4 bands of 16 rows; 300 faces make 2 Kato chunks of 256.
SCENE = (64, 32)


def tie_scene():
    """Faces spanning many row bands and face-index chunks, with exact depth ties (batch of 2).

    Element 0: 300 right triangles with legs of 2 to 16 pixels on integer pixel positions of a
    power-of-two image, all at depth 1: barycentric weights are dyadic, so every pixel's depth is
    exactly 1 and every overlap is an exact tie. Element 1: 60 random faces repeated 5 times in a
    shuffled order (exact duplicates) at random depths."""
    rng = np.random.default_rng(11)
    h, w = SCENE
    n = 300
    x0, y0 = rng.integers(-8, w + 8, n), rng.integers(-8, h + 8, n)
    legs = 2 ** rng.integers(1, 5, n)
    sx, sy = rng.choice([-1, 1], n), rng.choice([-1, 1], n)
    corners = [(x0, y0), (x0 + sx * legs, y0), (x0, y0 + sy * legs)]
    flip = sx * sy < 0  # clockwise as listed: swap two corners
    corners[1], corners[2] = (
        tuple(np.where(flip, b, a) for a, b in zip(corners[1], corners[2], strict=True)),
        tuple(np.where(flip, a, b) for a, b in zip(corners[1], corners[2], strict=True)),
    )
    ndc = lambda p, size: (2 * p - size + 1) / size  # noqa: E731  inverse of the pixel mapping
    tri = np.stack([np.stack([ndc(x, w), ndc(y, h), np.ones(n)], -1) for x, y in corners], 1)
    base = random_faces(rng, 1, 60, h, w)[0]
    dup = base[rng.permutation(np.repeat(np.arange(60), 5))]
    return np.stack([tri, dup]).astype(np.float32)


def threaded_results(fv):
    """Maps, a random image and gradient, and Kato's gradient from them, on the tie scene."""
    h, w = SCENE
    fi, wt, d = kernel_maps(fv, h, w)
    rng = np.random.default_rng(12)
    image = jnp.where(
        (fi >= 0)[..., None], jnp.asarray(rng.uniform(size=(2, h, w, 4)), jnp.float32), 0.3
    )
    grad = jnp.asarray(rng.normal(size=(2, h, w, 4)), jnp.float32)
    g_fv = _ffi.kato_bwd(jnp.asarray(fv), fi, image, grad, 1e-3)
    return {"fi": fi, "wt": wt, "d": d, "image": image, "grad": grad, "g_fv": g_fv}
