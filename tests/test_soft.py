"""nmr_jax.soft: soft silhouettes against a brute-force pure-jnp reference (every pixel against
every face, autodiff for the gradients) and central differences."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import soft
from nmr_jax.lighting import _lighting, lights_of
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


def _clamp01(r):
    """clip(r, 0, 1) passing the gradient only strictly inside (0, 1), as the kernels do."""
    return jnp.where((r > 0) & (r < 1), r, jnp.clip(jax.lax.stop_gradient(r), 0.0, 1.0))


def reference_samples(fv, sigma, size, distribution, near=NEAR, far=FAR, t=1e-4, dtype=jnp.float32):
    """Every face at every pixel [..., H, W, F] (rows as rasterized, y = -1 first): q = 1 -
    coverage, whether the face takes part, its clamped barycentrics [..., H, W, F, 3] and depth."""
    h, w = size
    fv = jnp.asarray(fv, dtype)
    sigma = jnp.asarray(sigma, dtype)
    px = 0.5 * (fv[..., 0] * w + w - 1)  # [..., F, 3] pixel coordinates
    py = 0.5 * (fv[..., 1] * h + h - 1)
    z = fv[..., 2]
    yi, xi = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype),
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
    # Double where: padding rows (area 0, depth 0) take no part and must not make NaN gradients.
    real = area2 > 0
    zz = jnp.where(real[..., None], zz, 1.0)
    wts = [_clamp01(edge[(k + 1) % 3] / jnp.where(real, area2, 1.0)) for k in range(3)]
    total = jnp.where(real, wts[0] + wts[1] + wts[2], 1.0)
    bary = jnp.stack([wk / total for wk in wts], -1)
    zp = 1.0 / jnp.where(real, sum(bary[..., k] / zz[..., k] for k in range(3)), 1.0)
    xs = dist / sigma[..., None, None, None]
    coverage = _cdf(distribution, -xs)
    takes_part = (area2 > 0) & (zp > near) & (zp < far) & (coverage > t)
    return _cdf(distribution, xs), takes_part, bary, zp


def reference_alpha(fv, sigma, size, distribution, aggregation, near=NEAR, far=FAR, t=1e-4):
    """alpha [..., H, W] (row 0 at the top) by brute force: every face at every pixel."""
    q, takes_part, _, _ = reference_samples(fv, sigma, size, distribution, near, far, t)
    q = jnp.where(takes_part, q, 1.0)
    if aggregation == "probabilistic":
        alpha = 1.0 - jnp.prod(q, axis=-1)
    else:
        alpha = 1.0 - jnp.take_along_axis(q, jnp.argmin(q, -1)[..., None], -1)[..., 0]
    return jnp.flip(alpha, -2)


def reference_rgb(
    fv, tex, sigma, gamma, size, distribution, bg, dtype=jnp.float32, eps=1e-3, bary_map=None
):
    """SoftRas's colours [..., H, W, 3] (row 0 at the top) by brute force; with a ``bary_map``
    [..., F, 3, 3], face f reads its cube at its barycentrics b mapped to ``b @ bary_map[f]``."""
    q, takes_part, bary, zp = reference_samples(fv, sigma, size, distribution, dtype=dtype)
    fv, tex = jnp.asarray(fv, dtype), jnp.asarray(tex, dtype)
    gamma = jnp.asarray(gamma, dtype)[..., None, None, None]
    T = tex.shape[-2]
    z = jnp.where(fv[..., None, None, :, :, 2] == 0, 1.0, fv[..., None, None, :, :, 2])  # padding
    coord = bary * (T - 1) * (zp[..., None] / z)
    if bary_map is not None:
        mapped = jnp.asarray(bary_map, dtype)[..., None, None, :, :, :]  # [..., 1, 1, F, 3, 3]
        coord = jnp.sum(coord[..., :, None] * mapped, axis=-2)
    clamped = jnp.clip(coord, 0.0, T - 1 - eps)
    coord = jnp.where(coord == clamped, coord, jax.lax.stop_gradient(clamped))
    # Faces that take no part may have any coordinate (NaN behind the camera): clipped, then masked.
    coord = jnp.where(takes_part[..., None], coord, 0.0)
    base = jnp.floor(jax.lax.stop_gradient(coord)).astype(jnp.int32)
    frac = coord - base
    cube = tex.reshape(*tex.shape[:-5], 1, 1, tex.shape[-5], T**3, 3)
    color = 0.0
    for c in range(8):
        up = [(c >> k) & 1 for k in range(3)]
        i = [jnp.minimum(base[..., k] + up[k], T - 1) for k in range(3)]
        weight = 1.0
        for k in range(3):
            weight = weight * (frac[..., k] if up[k] else 1.0 - frac[..., k])
        texel = jnp.take_along_axis(
            jnp.broadcast_to(cube, (*i[0].shape, T**3, 3)),
            ((i[0] * T + i[1]) * T + i[2])[..., None, None],
            -2,
        )[..., 0, :]
        color = color + weight[..., None] * texel
    logit = jnp.where(takes_part, (FAR - zp) / (FAR - NEAR) / gamma, 0.0)  # no inf off the faces
    m = jax.lax.stop_gradient(
        jnp.maximum(jnp.max(jnp.where(takes_part, logit, 0.0), -1), 1e-3 / gamma[..., 0])
    )
    weight = jnp.where(takes_part, (1.0 - q) * jnp.exp(logit - m[..., None]), 0.0)
    back = jnp.exp(1e-3 / gamma[..., 0] - m)
    rgb = (jnp.sum(weight[..., None] * color, -2) + back[..., None] * jnp.asarray(bg)) / (
        jnp.sum(weight, -1) + back
    )[..., None]
    return jnp.flip(rgb, -3)


def _faces(seed, batch, n, size):
    """Random faces on a 1/8-pixel grid (exact edge tests), some before the near plane."""
    return random_faces(np.random.default_rng(seed), batch, n, size)


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


def test_batches_with_per_image_sigma_padding_and_faces_behind_the_camera():
    fv = _faces(3, 3, 10, 16)
    fv[:, 7] = 0.0  # padding rows (vertices_to_faces's): a zero-area face at the eye
    fv[0, 3, :, 2] = [-1.0, -2.0, -0.5]  # behind the camera
    fv[1, 4, :, 2] = [-1.0, 2.0, 3.0]  # straddling the eye plane
    sigma = np.array([1e-3, 3e-3, 1e-2], np.float32)
    got = nr.soft_silhouettes(fv, (16, 8), sigma, "gaussian")
    want = reference_alpha(fv, sigma, (16, 8), "gaussian", "probabilistic")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # A face shared by the batch (broadcast, not copied) against per-image sigmas.
    shared = nr.soft_silhouettes(fv[0], 16, sigma)
    want = reference_alpha(
        np.broadcast_to(fv[0], fv.shape), sigma, (16, 16), "logistic", "probabilistic"
    )
    np.testing.assert_allclose(shared, want, atol=1e-5, rtol=0)


def test_ties_duplicates_count_twice_and_max_passes_the_lowest_index():
    fv = _faces(4, 1, 6, 16)[0]
    dup = np.concatenate([fv, fv])  # exact duplicates: equal coverages everywhere
    for aggregation in soft.AGGREGATIONS:
        got = nr.soft_silhouettes(dup, 16, 2e-3, aggregation=aggregation)
        want = reference_alpha(dup, np.float32(2e-3), (16, 16), "logistic", aggregation)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    grad = jax.grad(lambda f: jnp.sum(nr.soft_silhouettes(f, 16, 2e-3, aggregation="max")))(dup)
    assert np.abs(grad[:6]).max() > 0
    np.testing.assert_array_equal(grad[6:], 0.0)  # the copies never hold the maximum


@pytest.mark.parametrize("aggregation", soft.AGGREGATIONS)
def test_gradients_match_central_differences(aggregation):
    rng = np.random.default_rng(5)
    fv = rng.uniform(-0.8, 0.8, size=(6, 3, 3)).astype(np.float64)
    fv[..., 2] = rng.uniform(1.0, 4.0, size=(6, 3))  # all within (near, far): no depth cut
    weights = rng.normal(size=(16, 16))
    sigma = 5e-3

    def loss(f, s):
        # A tiny threshold: the cut of coverage at it is a jump, which differences would see.
        alpha = nr.soft_silhouettes(f, 16, s, aggregation=aggregation, threshold=1e-9)
        return jnp.sum(alpha * weights)

    g_fv, g_sigma = jax.grad(loss, argnums=(0, 1))(fv.astype(np.float32), np.float32(sigma))
    h = 1e-3
    for idx in [(0, 0, 0), (1, 1, 1), (2, 2, 0), (3, 0, 1), (4, 1, 0), (5, 2, 1)]:
        up, down = fv.copy(), fv.copy()
        up[idx] += h
        down[idx] -= h
        fd = (
            float(loss(up.astype(np.float32), sigma)) - float(loss(down.astype(np.float32), sigma))
        ) / (2 * h)
        assert abs(float(g_fv[idx]) - fd) <= 2e-2 * max(abs(fd), 1.0), (idx, float(g_fv[idx]), fd)
    hs = 1e-4
    fd = (
        float(loss(fv.astype(np.float32), sigma + hs))
        - float(loss(fv.astype(np.float32), sigma - hs))
    ) / (2 * hs)
    assert abs(float(g_sigma) - fd) <= 2e-2 * max(abs(fd), 1.0)


@pytest.mark.parametrize("aggregation", soft.AGGREGATIONS)
def test_soft_silhouettes_jvp_is_the_transpose_of_the_vjp_and_matches_differences(aggregation):
    rng = np.random.default_rng(8)
    fv = jnp.asarray(_faces(8, 2, 10, 16))
    sigma = jnp.array([3e-3, 5e-3], jnp.float32)
    tangents = (
        jnp.asarray(rng.normal(size=fv.shape), jnp.float32),
        jnp.array([1e-3, -2e-3], jnp.float32),
    )
    f = lambda fv, s: nr.soft_silhouettes(fv, 16, s, aggregation=aggregation)  # noqa: E731
    _, t = jax.jit(lambda p, v: jax.jvp(f, p, v))((fv, sigma), tangents)
    u = jnp.asarray(rng.normal(size=t.shape), jnp.float32)
    g_fv, g_sigma = jax.jit(lambda p, u: jax.vjp(f, *p)[1](u))((fv, sigma), u)
    lhs = float(jnp.vdot(u, t))
    rhs = float(jnp.vdot(g_fv, tangents[0]) + jnp.vdot(g_sigma, tangents[1]))
    assert abs(lhs) > 1.0 and abs(lhs - rhs) <= 1e-5 * abs(lhs), (lhs, rhs)
    # Central differences: close but where a face's depth test, threshold cut or (max) the
    # face holding the maximum changes within the step.
    h = 1e-3
    plus = f(fv + h * tangents[0], sigma + h * tangents[1])
    minus = f(fv - h * tangents[0], sigma - h * tangents[1])
    fd = (plus - minus) / (2 * h)
    off = jnp.abs(fd - t) > 0.02 * float(jnp.abs(t).max())
    assert float(jnp.mean(off)) < 0.02
    # vmap over the batch, and jacfwd == jacrev in two parameters (a shift of every face).
    per_image = jax.vmap(lambda a, s, v, w: jax.jvp(f, (a, s), (v, w))[1])(fv, sigma, *tangents)
    np.testing.assert_allclose(per_image, t, rtol=1e-5, atol=1e-5)
    shift = lambda d: f(fv + jnp.array([d[0], d[1], 0.0]), sigma)  # noqa: E731
    fwd, rev = jax.jit(jax.jacfwd(shift))(jnp.zeros(2)), jax.jit(jax.jacrev(shift))(jnp.zeros(2))
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-4 * float(jnp.abs(rev).max()))


def test_a_traced_sigma_in_lax_scan_compiles_once():
    fv = jnp.asarray(_faces(6, 1, 8, 16)[0])
    traces = []

    def step(v, sigma):
        traces.append(None)  # runs once per trace
        g = jax.grad(lambda v: jnp.sum(nr.soft_silhouettes(v, 16, sigma)))(v)
        return v - 1e-4 * g, jnp.sum(nr.soft_silhouettes(v, 16, sigma))

    run = jax.jit(lambda v, sigmas: jax.lax.scan(step, v, sigmas))
    schedule = jnp.logspace(-1, -4, 6).astype(jnp.float32)
    _, first = run(fv, schedule)
    _, second = run(fv, schedule * 0.5)
    assert len(traces) == 1
    assert run._cache_size() == 1
    assert float(first[0]) > float(first[-1])  # a smaller sigma shrinks the soft halo
    assert not np.allclose(first, second)


@pytest.mark.versions
def test_soft_silhouettes_under_jit_vmap_and_grad():
    fv = jnp.asarray(_faces(7, 3, 6, 16))
    eager = nr.soft_silhouettes(fv, 16, 2e-3)
    jitted = jax.jit(lambda f: nr.soft_silhouettes(f, 16, 2e-3))(fv)
    mapped = jax.vmap(lambda f: nr.soft_silhouettes(f, 16, 2e-3))(fv)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    np.testing.assert_allclose(mapped, eager, atol=1e-6)
    per_sigma = jax.vmap(lambda s: nr.soft_silhouettes(fv[0], 16, s))(jnp.array([1e-3, 2e-3]))
    np.testing.assert_allclose(per_sigma[1], eager[0], atol=1e-6)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(nr.soft_silhouettes(f, 16, 2e-3) ** 2)))(fv)
    batched = jax.vmap(jax.grad(lambda f: jnp.sum(nr.soft_silhouettes(f, 16, 2e-3) ** 2)))(fv)
    np.testing.assert_allclose(batched, grad, rtol=1e-5, atol=1e-6)
    assert np.abs(grad).max() > 0


# SoftRas's and PyTorch3D's distribution, and the heaviest tail (every face reaches most pixels).
@pytest.mark.parametrize("distribution", ["logistic", "cauchy"])
def test_layers_with_k_beyond_the_faces_in_reach_blend_to_the_soft_silhouette(distribution):
    # rasterize_layers keeps every face within the blur radius; with the soft silhouette's reach
    # as the radius and K = F slots (at least the faces in reach of any pixel), blending the
    # slots' coverages F(-dist / sigma) as soft_silhouettes aggregates them gives its alpha and
    # its gradient: the layers lose no face, only the threshold cut remains.
    rng = np.random.default_rng(20)
    fv = random_faces(rng, 1, 40, 32)[0]  # some faces before the near plane: the same depth cut
    fv[..., :2] += rng.uniform(-0.01, 0.01, fv[..., :2].shape)  # no two faces equally far
    sigma, t, n = np.float32(1e-3), 1e-4, fv.shape[-3]
    # 1% beyond the reach for rounding (the soft kernel widens its boxes too, soft.h); faces
    # between the two radii fall to the threshold cut below, as they do in soft_silhouettes.
    blur = 1.01 * soft.reach(distribution, t) * float(sigma)
    weights = jnp.asarray(rng.normal(size=(32, 32)), jnp.float32)

    def blended(fv, aggregation):
        layers = nr.rasterize_layers(fv, 32, num_layers=n, blur_radius=blur)
        occupied = layers.face_index >= 0
        x = jnp.where(occupied, layers.dist, 0.0) / sigma
        q = jnp.where(occupied & (_cdf(distribution, -x) > t), _cdf(distribution, x), 1.0)
        return 1.0 - (jnp.prod(q, -1) if aggregation == "probabilistic" else jnp.min(q, -1))

    def exact(fv, aggregation):
        return nr.soft_silhouettes(fv, 32, sigma, distribution, aggregation, threshold=t)

    def softmax_blend_alpha(fv):
        # PyTorch3D's radius, log(1 / t - 1) * sigma, exactly, and its blend (no threshold cut).
        layers = nr.rasterize_layers(fv, 32, n, soft.reach("logistic", t) * float(sigma))
        colors = jnp.zeros((*layers.face_index.shape, 3), jnp.float32)
        return nr.softmax_blend(colors, layers, sigma)[..., 3]

    @jax.jit
    def images_and_gradients(fv):
        """{aggregation: ((alpha, gradient) of the blend, of soft_silhouettes)}, the most faces
        blended at a pixel, softmax_blend's alpha (logistic)."""
        loss = lambda fn, a: lambda f: jnp.sum(fn(f, a) * weights)  # noqa: E731
        results = {
            a: [(fn(fv, a), jax.grad(loss(fn, a))(fv)) for fn in (blended, exact)]
            for a in soft.AGGREGATIONS
        }
        most = jnp.max(jnp.sum(nr.rasterize_layers(fv, 32, n, blur).face_index >= 0, -1))
        return results, most, softmax_blend_alpha(fv) if distribution == "logistic" else None

    results, most, pytorch3d_alpha = images_and_gradients(jnp.asarray(fv))
    assert int(most) >= 4  # pixels that blend several faces
    for (alpha_layers, g_layers), (alpha_exact, g_exact) in results.values():
        np.testing.assert_allclose(alpha_layers, alpha_exact, atol=1e-5, rtol=0)
        scale = float(jnp.abs(g_exact).max())
        assert scale > 0
        np.testing.assert_allclose(g_layers, g_exact, atol=1e-4 * scale, rtol=1e-4)
    if pytorch3d_alpha is not None:
        exact_alpha = results["probabilistic"][1][0]
        np.testing.assert_allclose(pytorch3d_alpha, exact_alpha, atol=1e-5, rtol=0)


def test_bad_arguments_raise_naming_them():
    fv = _faces(8, 1, 2, 16)
    with pytest.raises(ValueError, match="distribution"):
        nr.soft_silhouettes(fv, 16, 1e-3, "laplace")
    with pytest.raises(ValueError, match="aggregation"):
        nr.soft_silhouettes(fv, 16, 1e-3, aggregation="sum")
    with pytest.raises(ValueError, match="sigma"):
        nr.soft_silhouettes(fv, 16, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        nr.soft_silhouettes(fv, 16, 1e-3, threshold=0.5)
    with pytest.raises(ValueError, match="sigma"):
        nr.soft_silhouettes(np.concatenate([fv, fv]), 16, np.full(3, 1e-3, np.float32))


def test_reach_is_where_coverage_meets_the_threshold():
    for distribution in soft.DISTRIBUTIONS:
        r = soft.reach(distribution, 1e-4)
        np.testing.assert_allclose(float(_cdf(distribution, jnp.float32(-r))), 1e-4, rtol=1e-3)


def test_renderer_soft_rule_silhouettes_with_fill_back():
    vertices, faces = nr.data.icosphere(2)
    rule = nr.SoftRule(sigma=1e-3, distribution="gaussian", aggregation="max")
    renderer = nr.Renderer(image_size=32, rule=rule)
    # The faces and their reversed copies (no face of the sphere is cut).
    fv = nr.vertices_to_faces(renderer.transform(vertices), renderer._both_sides(np.asarray(faces)))
    got = renderer.render_silhouettes(vertices, faces)
    np.testing.assert_array_equal(got, nr.soft_silhouettes(fv, 32, 1e-3, "gaussian", "max"))
    one_side = nr.Renderer(image_size=32, rule=rule, fill_back=False).render_silhouettes(
        vertices, faces
    )
    assert float(jnp.sum(got)) > float(jnp.sum(one_side)) > 0  # the mesh's inner side shows too
    # sigma is a leaf of the Renderer: a gradient and no recompilation for a new value.
    grad = jax.jit(jax.grad(lambda r: jnp.sum(r.render_silhouettes(vertices, faces))))(renderer)
    assert np.isfinite(float(grad.rule.sigma)) and float(grad.rule.sigma) != 0
    with pytest.raises(TypeError, match="rule"):
        nr.Renderer(rule="soft")


@pytest.mark.parametrize("distribution", soft.DISTRIBUTIONS)
def test_soft_rgb_and_its_gradients_equal_the_brute_force_reference(distribution):
    rng = np.random.default_rng(9)
    fv = _faces(9, 2, 10, 16)
    fv[0, 3, :, 2] = [-1.0, -2.0, -0.5]  # behind the camera
    fv[1, 6] = 0.0  # a padding row
    tex = rng.uniform(size=(2, 10, 2, 2, 2, 3)).astype(np.float32)
    sigma, gamma, bg = np.float32(3e-3), np.float32(0.05), (0.2, 0.4, 0.6)
    weights = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)

    def ours(f, x, s, g):
        return nr.soft_rgb(f, x, 16, s, g, distribution, background_color=bg)

    def ref(f, x, s, g):
        return reference_rgb(f, x, s, g, (16, 16), distribution, bg, jnp.float64)

    args = (fv, tex, sigma, gamma)
    got = jax.grad(lambda *a: jnp.sum(ours(*a) * weights), argnums=(0, 1, 2, 3))(*args)
    # In float64: gamma's gradient sums terms of size a / gamma (a up to 1 / gamma) that cancel
    # to the result, which float32 autodiff rounds by ~3e-4 (the kernels, ~1e-5: soft.h).
    with jax.enable_x64(True):
        args64 = tuple(np.asarray(a, np.float64) for a in args)
        np.testing.assert_allclose(ours(*args), ref(*args64), atol=1e-5, rtol=0)
        want = jax.grad(lambda *a: jnp.sum(ref(*a) * weights), argnums=(0, 1, 2, 3))(*args64)
    for g, r in zip(got, want, strict=True):
        scale = float(np.abs(np.asarray(r)).max())  # numpy: r is float64
        assert scale > 0
        np.testing.assert_allclose(g, r, atol=1e-4 * scale, rtol=1e-4)


def test_soft_rgb_with_barycentric_maps_equals_the_brute_force_reference():
    """Each face reading its cube at its barycentrics mapped by a 3x3 matrix (as a clipped
    piece reads its source face's; its gradients: tests/test_clip.py)."""
    rng = np.random.default_rng(12)
    fv = _faces(12, 1, 6, 16)
    tex = rng.uniform(size=(1, 6, 3, 3, 3, 3)).astype(np.float32)
    bary_map = rng.dirichlet(np.ones(3), size=(1, 6, 3)).astype(np.float32)  # rows sum to 1
    sigma, gamma, bg = np.float32(3e-3), np.float32(0.05), (0.2, 0.4, 0.6)
    cfg = soft._ColorConfig(soft._Config(16, 16, NEAR, FAR, 1e-4, "logistic", "probabilistic"),
                            1e-3, bg)  # fmt: skip
    ours = jax.jit(lambda m: soft._soft_rgb(fv, tex, sigma, gamma, cfg, m))
    ref = jax.jit(lambda m: reference_rgb(fv, tex, sigma, gamma, (16, 16), "logistic", bg,
                                          bary_map=m))  # fmt: skip
    np.testing.assert_allclose(ours(bary_map), ref(bary_map), atol=1e-5)
    # The identity map reads as no map, bit for bit.
    eye = np.broadcast_to(np.eye(3, dtype=np.float32), bary_map.shape)
    np.testing.assert_array_equal(ours(eye), soft._soft_rgb(fv, tex, sigma, gamma, cfg))


def test_renderer_soft_rule_render_textures_and_vertex_colors():
    vertices, faces = nr.data.icosphere(2)
    rng = np.random.default_rng(10)
    textures = rng.uniform(size=(faces.shape[0], 2, 2, 2, 3)).astype(np.float32)
    rule = nr.SoftRule(sigma=1e-3, gamma=1e-2)
    renderer = nr.Renderer(image_size=24, rule=rule, background_color=(0.1, 0.2, 0.3))
    rgb, depth, alpha = renderer.render(vertices, faces, textures)
    np.testing.assert_array_equal(alpha, renderer.render_silhouettes(vertices, faces))
    kato = nr.Renderer(image_size=24, anti_aliasing=False, background_color=(0.1, 0.2, 0.3))
    np.testing.assert_array_equal(depth, kato.render_depth(vertices, faces))
    # What the Renderer composes: lit cubes of the faces and their reversed copies, soft_rgb (no
    # face of the sphere is cut: its pieces are its faces, bit for bit).
    fv = nr.vertices_to_faces(renderer.transform(vertices), renderer._both_sides(np.asarray(faces)))
    world = renderer._world_faces(jnp.asarray(vertices), renderer._both_sides(np.asarray(faces)))
    both = np.concatenate([textures, np.swapaxes(textures, -4, -2)])
    lights = lights_of(0.5, 0.5, (1, 1, 1), (1, 1, 1), (0, 1, 0))
    lit = _lighting(world, jnp.asarray(both), lights)
    want = nr.soft_rgb(fv, lit, 24, 1e-3, 1e-2, background_color=(0.1, 0.2, 0.3), eps=1e-3)
    np.testing.assert_array_equal(rgb, want)
    # Vertex colours: the corners' colours interpolated, gradients reaching colours and vertices.
    colors = rng.uniform(size=vertices.shape).astype(np.float32)

    def loss(v, c):
        return jnp.sum(renderer.render(v, faces, vertex_colors=c)[0] ** 2)

    g_v, g_c = jax.grad(loss, argnums=(0, 1))(jnp.asarray(vertices), jnp.asarray(colors))
    assert np.abs(g_v).max() > 0 and np.abs(g_c).max() > 0
    with pytest.raises(ValueError, match="shader"):
        renderer.render(vertices, faces, shader=lambda frags: frags.depth[..., None])


@pytest.mark.versions
def test_soft_rgb_under_jit_vmap_and_grad():
    fv = jnp.asarray(_faces(11, 3, 6, 16))
    tex = jnp.asarray(np.random.default_rng(11).uniform(size=(6, 2, 2, 2, 3)), jnp.float32)
    eager = nr.soft_rgb(fv, tex, 16, 2e-3, 1e-2)
    jitted = jax.jit(lambda f: nr.soft_rgb(f, tex, 16, 2e-3, 1e-2))(fv)
    mapped = jax.vmap(lambda f: nr.soft_rgb(f, tex, 16, 2e-3, 1e-2))(fv)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    np.testing.assert_allclose(mapped, eager, atol=1e-6)
    per_gamma = jax.vmap(lambda g: nr.soft_rgb(fv[0], tex, 16, 2e-3, g))(jnp.array([1e-2, 1e-1]))
    np.testing.assert_allclose(per_gamma[0], eager[0], atol=1e-6)
    loss = lambda f, t: jnp.sum(nr.soft_rgb(f, t, 16, 2e-3, 1e-2) ** 2)  # noqa: E731
    g_fv, g_tex = jax.jit(jax.grad(loss, argnums=(0, 1)))(fv, tex)
    assert np.abs(g_fv).max() > 0 and np.abs(g_tex).max() > 0


def _smooth_faces(seed, batch, n):
    """Faces all within (near, far) (no depth cut) and a colour cube each: the soft colours are
    smooth in every input at sigma ~1e-2 with a tiny threshold (the cut at it is a jump)."""
    rng = np.random.default_rng(seed)
    fv = rng.uniform(-0.8, 0.8, size=(batch, n, 3, 3)).astype(np.float32)
    fv[..., 2] = rng.uniform(1.0, 4.0, size=(batch, n, 3))
    tex = rng.uniform(size=(batch, n, 2, 2, 2, 3)).astype(np.float32)
    return jnp.asarray(fv), jnp.asarray(tex)


def test_soft_rgb_jvp_matches_central_differences_batched_under_jit_and_vmap():
    rng = np.random.default_rng(13)
    fv, tex = _smooth_faces(13, 2, 6)
    sigma, gamma = jnp.array([1e-2, 2e-2]), jnp.array([0.05, 0.1])
    bg = (0.2, 0.4, 0.6)
    primals = (fv, tex, sigma, gamma)
    tangents = (
        jnp.asarray(rng.normal(size=fv.shape), jnp.float32),
        jnp.asarray(rng.normal(size=tex.shape), jnp.float32),
        0.1 * sigma,
        -0.1 * gamma,
    )

    def f(fv, tex, s, g):
        return nr.soft_rgb(fv, tex, 16, s, g, background_color=bg, threshold=1e-9)

    _, t = jax.jit(lambda p, v: jax.jvp(f, p, v))(primals, tangents)
    scale = float(jnp.abs(t).max())
    assert scale > 1.0
    # Central differences of the kernels themselves, with a step small enough that no pixel
    # centre crosses a face's edge (where the clamped barycentrics have a kink).
    h = 3e-5
    plus, minus = jax.jit(
        lambda p, v: [f(*(a + s * b for a, b in zip(p, v, strict=True))) for s in (h, -h)]
    )(primals, tangents)
    np.testing.assert_allclose((plus - minus) / (2 * h), t, atol=2e-3 * scale)
    # vmap over the batch equals the batched kernels.
    per_image = jax.jit(jax.vmap(lambda *a: jax.jvp(f, a[:4], a[4:])[1]))(*primals, *tangents)
    np.testing.assert_allclose(per_image, t, rtol=1e-5, atol=1e-5 * scale)


def test_soft_rgb_jvp_is_the_transpose_of_the_vjp_for_each_operand():
    """<u, J v> == <J^T u, v> with v in one operand at a time (and all): face vertices,
    textures, sigma, gamma and the barycentric maps, on random faces (some before the near plane,
    one behind the camera)."""
    rng = np.random.default_rng(14)
    fv = _faces(14, 2, 8, 16)
    fv[0, 3, :, 2] = [-1.0, -2.0, -0.5]
    tex = rng.uniform(size=(2, 8, 3, 3, 3, 3)).astype(np.float32)
    bary_map = rng.dirichlet(np.ones(3), size=(2, 8, 3)).astype(np.float32)
    sigma, gamma = np.array([3e-3, 1e-2], np.float32), np.array([1e-2, 0.05], np.float32)
    cfg = soft._ColorConfig(soft._Config(16, 16, NEAR, FAR, 1e-4, "logistic", "probabilistic"),
                            1e-3, (0.2, 0.4, 0.6))  # fmt: skip
    f = lambda *a: soft._soft_rgb(a[0], a[1], a[2], a[3], cfg, a[4])  # noqa: E731
    primals = tuple(jnp.asarray(a) for a in (fv, tex, sigma, gamma, bary_map))
    vs = [jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32) for a in primals]
    vs[2], vs[3] = 0.1 * primals[2], 0.1 * primals[3]
    jvp = jax.jit(lambda p, v: jax.jvp(f, p, v)[1])
    u = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    cts = jax.jit(lambda p, u: jax.vjp(f, *p)[1](u))(primals, u)
    for k in [*range(5), None]:
        v = [x if k is None or i == k else jnp.zeros_like(x) for i, x in enumerate(vs)]
        t = jvp(primals, tuple(v))
        lhs = float(jnp.vdot(u, t))
        rhs = sum(float(jnp.vdot(c, x)) for c, x in zip(cts, v, strict=True))
        size = float(jnp.vdot(jnp.abs(u), jnp.abs(t)))  # the sum's rounding scales with it
        assert size > 0 and abs(lhs - rhs) <= 1e-5 * size, (k, lhs, rhs, size)


def test_soft_rgb_jacfwd_equals_jacrev():
    """In a translation of every face and in gamma (a tiny image: jacrev runs a pass per pixel)."""
    fv, tex = _smooth_faces(15, 1, 4)

    def f(d):
        return nr.soft_rgb(fv[0] + d[:3], tex[0], 12, 1e-2, 0.05 * (1.0 + d[3]), threshold=1e-9)

    fwd, rev = jax.jit(jax.jacfwd(f))(jnp.zeros(4)), jax.jit(jax.jacrev(f))(jnp.zeros(4))
    scale = float(jnp.abs(rev).max(axis=(0, 1, 2)).min())
    assert scale > 1e-2  # every parameter moves the image
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-4 * float(jnp.abs(rev).max()))


def test_renderer_soft_rule_rgb_jvp_in_vertices_colors_and_lights():
    """Forward mode through the Renderer's soft colours agrees with its reverse mode (textures:
    the next test)."""
    from tests.test_linear import _random_like, check_transpose

    vertices, faces = nr.data.icosphere(1)
    colors = np.random.default_rng(16).uniform(size=vertices.shape).astype(np.float32)

    def rgb(v, col, ambient, direction):
        r = nr.Renderer(image_size=16, rule=nr.SoftRule(sigma=1e-2, gamma=0.05),
                        light_intensity_ambient=ambient, light_direction=direction)  # fmt: skip
        return r.render(v, faces, vertex_colors=col)[0]

    primals = tuple(jnp.asarray(a, jnp.float32) for a in (vertices, colors, 0.4, (0.3, 1.0, -0.2)))
    t = check_transpose(rgb, primals, _random_like(np.random.default_rng(17), primals))
    assert np.isfinite(np.asarray(t)).all()


def test_renderer_soft_rule_rgb_jvp_inside_a_closed_room():
    """From inside the room the faces are cut: the pieces read their faces' cubes through
    barycentric maps, whose tangents come from the vertices' and the camera's. Forward mode
    agrees with reverse mode, in all at once and in the camera or one vertex alone."""
    from tests.test_clip import ROOM, ROOM_FACES, VIEWS, room_renderer, textured_room

    r, _ = room_renderer("look", *VIEWS[1], 16, rule=nr.SoftRule(sigma=1e-3, gamma=1e-2))

    def rgb(vertices, eye, tex):
        return r.render(vertices, ROOM_FACES, tex, eye=eye)[0]

    rng = np.random.default_rng(18)
    primals = (jnp.asarray(ROOM), jnp.asarray(VIEWS[1][0], jnp.float32), textured_room())
    u = jnp.asarray(rng.normal(size=(16, 16, 3)), jnp.float32)
    jvp = jax.jit(lambda p, v: jax.jvp(rgb, p, v)[1])
    cts = jax.jit(lambda p, u: jax.vjp(rgb, *p)[1](u))(primals, u)
    zero = tuple(jnp.zeros_like(p) for p in primals)
    for tangents in [
        tuple(jnp.asarray(rng.normal(size=p.shape), jnp.float32) for p in primals),
        (zero[0], jnp.array([0.1, -0.2, 0.3]), zero[2]),
        (zero[0].at[7].set(jnp.array([0.2, 0.1, -0.1])), zero[1], zero[2]),
    ]:
        t = jvp(primals, tangents)
        assert np.isfinite(np.asarray(t)).all()
        lhs = float(jnp.vdot(u, t))
        rhs = sum(float(jnp.vdot(c, v)) for c, v in zip(cts, tangents, strict=True))
        size = float(jnp.vdot(jnp.abs(u), jnp.abs(t)))
        assert size > 0 and abs(lhs - rhs) <= 1e-4 * size, (lhs, rhs, size)


def test_soft_rgb_reverse_mode_runs_the_backward_kernel_and_no_tangent_kernel():
    """grad compiles to the forward and backward kernels, as a custom_vjp would (docs/forward.md)."""
    fv, tex = _smooth_faces(19, 1, 4)

    def loss(fv, tex, gamma):
        return jnp.sum(nr.soft_rgb(fv, tex, 16, 1e-3, gamma) ** 2)

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(fv, tex, jnp.float32(0.05))
    targets = re.findall(r'custom_call_target="(nmr_[a-z_]+)"', lowered.compile().as_text())
    assert sorted(targets) == ["nmr_soft_rgb", "nmr_soft_rgb_bwd"], targets
