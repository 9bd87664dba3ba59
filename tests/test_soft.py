"""nmr_jax.soft: soft silhouettes against a brute-force pure-jnp reference (every pixel against
every face, autodiff for the gradients) and central differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import soft
from tests._helpers import FAR, NEAR, random_faces

RULES = [(d, a) for d in soft.DISTRIBUTIONS for a in soft.AGGREGATIONS]


def _cdf(distribution: str, x: jax.Array) -> jax.Array:
    """F(x), accurate in both tails (the complement of a coverage close to 1 is F(x), x << 0)."""
    if distribution == "logistic":
        return jax.nn.sigmoid(x)
    if distribution == "gaussian":
        return jax.scipy.special.ndtr(x)
    if distribution == "uniform":
        return jnp.clip(x + 0.5, 0.0, 1.0)
    far_left = x < -1.0
    safe = jnp.where(far_left, x, -2.0)  # double where: no 1/0 in the branch not taken
    return jnp.where(far_left, jnp.arctan(-1.0 / safe) / jnp.pi, 0.5 + jnp.arctan(x) / jnp.pi)


def reference_alpha(fv, sigma, size, distribution, aggregation, near=NEAR, far=FAR, t=1e-4):
    """alpha [..., H, W] (row 0 at the top) by brute force: every face at every pixel."""
    h, w = size
    fv = jnp.asarray(fv, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    px = 0.5 * (fv[..., 0] * w + w - 1)  # [..., F, 3] pixel coordinates
    py = 0.5 * (fv[..., 1] * h + h - 1)
    z = fv[..., 2]
    yi, xi = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")  # fmt: skip
    X, Y = xi[..., None], yi[..., None]  # [H, W, 1] against faces last
    c = lambda a: a[..., None, None, :, :]  # noqa: E731  [..., 1, 1, F, 3]
    x, y, zz = c(px), c(py), c(z)
    nxt = lambda a, k: a[..., (k + 1) % 3]  # noqa: E731
    d2, inside, edge = [], [], []
    for k in range(3):
        ex, ey = (nxt(x, k) - x[..., k]) * (2 / w), (nxt(y, k) - y[..., k]) * (2 / h)
        qx, qy = (X - x[..., k]) * (2 / w), (Y - y[..., k]) * (2 / h)
        len2 = ex * ex + ey * ey
        tt = jnp.clip((qx * ex + qy * ey) / jnp.where(len2 > 0, len2, 1.0), 0.0, 1.0)
        tt = jnp.where(len2 > 0, tt, 0.0)
        rx, ry = qx - tt * ex, qy - tt * ey
        d2.append(rx * rx + ry * ry)
        # The core's edge test in pixels: on the edge counts as inside.
        inside.append(
            ~((Y - y[..., k]) * (nxt(x, k) - x[..., k]) < (X - x[..., k]) * (nxt(y, k) - y[..., k]))
        )
        edge.append(
            (nxt(x, k) - x[..., k]) * (Y - y[..., k]) - (nxt(y, k) - y[..., k]) * (X - x[..., k])
        )
    d2 = jnp.stack(d2, -1)
    nearest = jnp.take_along_axis(d2, jnp.argmin(d2, -1)[..., None], -1)[..., 0]  # first minimum
    covered = inside[0] & inside[1] & inside[2]
    dist = jnp.where(covered, -nearest, nearest)
    area2 = (y[..., 2] - y[..., 0]) * (x[..., 1] - x[..., 0]) - (y[..., 1] - y[..., 0]) * (
        x[..., 2] - x[..., 0]
    )
    # Depth at the pixel with barycentrics clamped and renormalised (the core's interpolate).
    wts = [jnp.clip(edge[(k + 1) % 3] / area2, 0.0, 1.0) for k in range(3)]
    total = wts[0] + wts[1] + wts[2]
    zp = 1.0 / sum(wk / total / zz[..., k] for k, wk in enumerate(wts))
    xs = dist / sigma[..., None, None, None]
    coverage = _cdf(distribution, -xs)
    q = _cdf(distribution, xs)
    takes_part = (area2 > 0) & (zp > near) & (zp < far) & (coverage > t)
    q = jnp.where(takes_part, q, 1.0)
    if aggregation == "probabilistic":
        alpha = 1.0 - jnp.prod(q, axis=-1)
    else:
        alpha = 1.0 - jnp.take_along_axis(q, jnp.argmin(q, -1)[..., None], -1)[..., 0]
    return jnp.flip(alpha, -2)


def _faces(seed, batch, n, size):
    rng = np.random.default_rng(seed)
    fv = random_faces(rng, batch, n, size)
    # Enlarge the faces' spread of depths into (near, far) mostly; some start before near.
    return fv


@pytest.mark.parametrize(("distribution", "aggregation"), RULES)
def test_soft_silhouettes_equal_the_brute_force_reference(distribution, aggregation):
    fv = _faces(0, 2, 12, 16)
    sigma = np.float32(3e-3)
    got = nr.soft_silhouettes(fv, 16, sigma, distribution, aggregation)
    want = reference_alpha(fv, sigma, (16, 16), distribution, aggregation)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert 0.1 < float(jnp.mean(got)) < 0.9  # the scene is neither empty nor full


@pytest.mark.parametrize(("distribution", "aggregation"), RULES)
def test_soft_silhouette_gradients_equal_autodiff_of_the_reference(distribution, aggregation):
    fv = _faces(1, 2, 10, 16)
    sigma = np.float32(3e-3)
    weights = np.random.default_rng(2).normal(size=(2, 16, 16)).astype(np.float32)

    def loss(fn):
        return lambda fv, s: jnp.sum(fn(fv, s) * weights)

    ours = jax.grad(loss(lambda fv, s: nr.soft_silhouettes(fv, 16, s, distribution, aggregation)),
                    argnums=(0, 1))(fv, sigma)  # fmt: skip
    ref = jax.grad(
        loss(lambda fv, s: reference_alpha(fv, s, (16, 16), distribution, aggregation)),
        argnums=(0, 1),
    )(fv, sigma)
    scale = float(jnp.max(jnp.abs(ref[0])))
    assert scale > 0
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-4 * abs(float(ref[1])))
