"""nr.rasterize_layers against a brute-force jnp reference written here (every pixel against every
face, every face's fragment, sorted), its gradients and forward-mode tangents against autodiff of
that reference and central differences, forward mode against reverse mode (the transpose identity,
jacfwd against jacrev), and softmax_blend and alpha_composite against formulas written out
independently."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi
from tests._helpers import FAR, NEAR, needs_cuda_host, random_faces, tie_scene
from tests.test_linear import central_difference, check_transpose


def _pixel(v, n):
    return 0.5 * (v * n + n - 1)


def _geometry(face, height, width):
    """Per-pixel quantities of faces ``face [..., H, W, n, 3, 3]`` at the pixel centres (as
    rasterized: row 0 at y = -1): raw weights, coverage, depth pieces and squared NDC distance."""
    x, y, z = _pixel(face[..., 0], width), _pixel(face[..., 1], height), face[..., 2]
    xp = jnp.arange(width, dtype=jnp.float32)[None, :, None]
    yp = jnp.arange(height, dtype=jnp.float32)[:, None, None]
    xs = tuple(x[..., k] for k in range(3))
    ys = tuple(y[..., k] for k in range(3))
    area = (ys[2] - ys[0]) * (xs[1] - xs[0]) - (ys[1] - ys[0]) * (xs[2] - xs[0])
    covers = area == area  # all True, shaped
    for k in range(3):
        k1 = (k + 1) % 3
        covers &= ~((yp - ys[k]) * (xs[k1] - xs[k]) < (xp - xs[k]) * (ys[k1] - ys[k]))
    raw = jnp.stack(
        [
            ((xs[(k + 2) % 3] - xs[(k + 1) % 3]) * (yp - ys[(k + 1) % 3])
             - (ys[(k + 2) % 3] - ys[(k + 1) % 3]) * (xp - xs[(k + 1) % 3])) / area
            for k in range(3)
        ],
        -1,
    )  # fmt: skip
    sx, sy = np.float32(2 / width), np.float32(2 / height)
    d2 = []
    for e in range(3):
        e1 = (e + 1) % 3
        ex, ey = (xs[e1] - xs[e]) * sx, (ys[e1] - ys[e]) * sy
        px, py = (xp - xs[e]) * sx, (yp - ys[e]) * sy
        len2 = ex * ex + ey * ey
        t = jnp.where(
            len2 > 0, jnp.clip((px * ex + py * ey) / jnp.where(len2 > 0, len2, 1), 0, 1), 0
        )
        dx, dy = px - t * ex, py - t * ey
        d2.append(dx * dx + dy * dy)
    dist2 = jnp.min(jnp.stack(d2, -1), -1)
    bounded = (jnp.abs(x) <= 2.0**62) & (jnp.abs(y) <= 2.0**62) & jnp.isfinite(z)
    visible = (area > 0) & jnp.all(bounded, -1)
    return raw, covers, z, dist2, visible


def _values(raw, z, covers, dist2):
    """Clamped, renormalised weights, perspective-correct barycentrics and depth, signed distance;
    the clamp passes gradients where it does not act (ends included), as the kernel's."""
    inside = (raw >= 0) & (raw <= 1)
    c = jnp.where(inside, raw, jax.lax.stop_gradient(jnp.clip(raw, 0, 1)))
    w = c / ((c[..., 0:1] + c[..., 1:2]) + c[..., 2:3])
    zp = 1.0 / (w[..., 0] / z[..., 0] + w[..., 1] / z[..., 1] + w[..., 2] / z[..., 2])
    bary = w * (zp[..., None] / z)
    return bary, w, zp, jnp.where(covers, -dist2, dist2)


def reference_layers(fv, height, width, k, blur, near=NEAR, far=FAR):
    """fv [B, F, 3, 3] -> Layers as the public function returns them (row 0 at the top)."""
    fv = jnp.asarray(fv, jnp.float32)
    face = jnp.broadcast_to(fv[:, None, None], (fv.shape[0], height, width, *fv.shape[1:]))
    raw, covers, z, dist2, visible = _geometry(face, height, width)
    bary, w, zp, dist = _values(raw, z, covers, dist2)
    reach = visible & (covers | ((blur > 0) & (dist2 < blur))) & (zp > near) & (zp < far)
    key = jnp.where(reach, zp, jnp.inf)
    order = jnp.argsort(key, axis=-1, stable=True)  # by depth, then by face index
    n = fv.shape[1]
    if k > n:
        order = jnp.concatenate([order, jnp.zeros((*order.shape[:-1], k - n), order.dtype)], -1)
    order = order[..., :k]
    hit = jnp.take_along_axis(key, order, -1) < jnp.inf
    if k > n:
        hit &= jnp.arange(k) < n
    take = lambda a: jnp.take_along_axis(a, order, -1)  # noqa: E731
    take3 = lambda a: jnp.take_along_axis(a, order[..., None], -2)  # noqa: E731
    layers = nr.Layers(
        jnp.where(hit, order, -1).astype(jnp.int32),
        jnp.where(hit[..., None], take3(bary), 0.0),
        jnp.where(hit[..., None], take3(w), 0.0),
        jnp.where(hit, take(zp), far),
        jnp.where(hit, take(dist), jnp.inf),
    )
    return nr.Layers(*(jnp.flip(m, 1) for m in layers))


_reference_layers_jit = jax.jit(reference_layers, static_argnums=(1, 2, 3, 4))


def reference(fv, height, width, k, blur):
    return _reference_layers_jit(jnp.asarray(fv), height, width, k, blur)


def reference_values(fv, face_index):
    """The layers' float maps as functions of fv with ``face_index [B, H, W, K]`` (as returned)
    held fixed: what autodiff differentiates for the reference gradient."""
    fi = jnp.flip(face_index, 1)
    height, width = fi.shape[1:3]
    b = jnp.arange(fv.shape[0])[:, None, None, None]
    face = fv[b, jnp.maximum(fi, 0)]  # [B, H, W, K, 3, 3]
    raw, covers, z, dist2, _ = _geometry(face, height, width)
    bary, w, zp, dist = _values(raw, z, covers, dist2)
    hit = fi >= 0
    maps = (
        jnp.where(hit[..., None], bary, 0.0),
        jnp.where(hit[..., None], w, 0.0),
        jnp.where(hit, zp, 0.0),
        jnp.where(hit, dist, 0.0),
    )
    return tuple(jnp.flip(m, 1) for m in maps)


def assert_layers_equal(got, want):
    np.testing.assert_array_equal(np.asarray(got.face_index), np.asarray(want.face_index))
    for name in ("bary", "bary_screen", "depth", "dist"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, err_msg=name
        )


def with_padding_and_back_faces(fv, rng):
    """Some faces all zero (the padding rows of vertices_to_faces) and some reversed (culled)."""
    fv = fv.copy()
    pick = rng.random(fv.shape[:2])
    fv[pick < 0.1] = 0.0
    fv[pick > 0.9] = fv[pick > 0.9][:, ::-1]
    return fv


@pytest.mark.parametrize(
    ("k", "blur", "size"),
    [(1, 0.0, (16, 16)), (8, 0.0, (32, 16)), (6, 0.1, (16, 32)), (40, 0.05, (16, 16))],
)  # fmt: skip
def test_layers_equal_brute_force_on_random_meshes(k, blur, size):
    # 30 faces: K = 40 leaves slots empty everywhere. Vertices on a 1/8-pixel grid of
    # power-of-two images give exact edge tests on both sides, and exact depth ties.
    rng = np.random.default_rng(k)
    h, w = size
    fv = with_padding_and_back_faces(random_faces(rng, 3, 30, h, w), rng)
    got = nr.rasterize_layers(fv, size, num_layers=k, blur_radius=blur)
    assert_layers_equal(got, reference(fv, h, w, k, blur))
    assert got.face_index.shape == (3, h, w, k) and got.bary.shape == (3, h, w, k, 3)
    assert int((got.face_index[..., min(k, 3) - 1] >= 0).sum()) > 0  # several faces per pixel


def test_layers_ties_go_to_the_lower_face_index():
    fv = tie_scene()  # exact depth ties and exact duplicate faces
    h, w = 64, 32
    got = nr.rasterize_layers(fv, (h, w), num_layers=5, blur_radius=0.003)
    assert_layers_equal(got, reference(fv, h, w, 5, 0.003))
    fi, depth = np.asarray(got.face_index), np.asarray(got.depth)
    tied = (depth[..., 1:] == depth[..., :-1]) & (fi[..., 1:] >= 0)
    assert tied.sum() > 100 and np.all(fi[..., 1:][tied] > fi[..., :-1][tied])


def test_layers_with_faces_behind_the_camera():
    # Faces with some or all depths negative: only fragments in (near, far) are kept.
    rng = np.random.default_rng(3)
    fv = random_faces(rng, 2, 30, 16)
    fv[:, ::3, 0, 2] *= -1
    fv[:, ::5, :, 2] *= -1
    got = nr.rasterize_layers(fv, 16, num_layers=6, blur_radius=0.02)
    want = reference(fv, 16, 16, 6, 0.02)
    np.testing.assert_array_equal(np.asarray(got.face_index), np.asarray(want.face_index))
    np.testing.assert_allclose(got.dist, want.dist, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.bary_screen, want.bary_screen, rtol=1e-5, atol=1e-5)
    # 1 / sum(w / z) with mixed signs is ill-conditioned: depth to float32 agreement of the sum.
    np.testing.assert_allclose(got.depth, want.depth, rtol=1e-3)


def test_one_layer_without_blur_is_rasterize_fragments():
    fv = random_faces(np.random.default_rng(5), 2, 40, 32, 16)
    got = nr.rasterize_layers(fv, (32, 16), num_layers=1)
    frags = nr.rasterize_fragments(fv, (32, 16), anti_aliasing=False)
    for name in ("face_index", "bary", "bary_screen", "depth"):
        slot0 = jnp.take(getattr(got, name), 0, axis=3)
        np.testing.assert_array_equal(slot0, getattr(frags, name), name)


def _jittered(rng, batch, faces, size):
    """Random faces off the pixel grid (no exact ties of distances), depths in (0.5, 3)."""
    fv = random_faces(rng, batch, faces, size)
    fv[..., :2] += rng.uniform(-0.02, 0.02, fv[..., :2].shape).astype(np.float32)
    fv[..., 2] = rng.uniform(0.5, 3.0, fv[..., 2].shape)
    return fv


@pytest.mark.parametrize(("k", "blur"), [(1, 0.0), (5, 0.03)])
def test_layer_gradients_equal_autodiff_of_the_reference(k, blur):
    rng = np.random.default_rng(10 + k)
    fv = jnp.asarray(_jittered(rng, 2, 12, 16))
    layers = nr.rasterize_layers(fv, 16, num_layers=k, blur_radius=blur)
    hit = layers.face_index >= 0
    weights = [jnp.asarray(rng.normal(size=m.shape), jnp.float32) for m in layers[1:]]

    def loss(maps):
        # Empty slots read 0 (their dist is inf, their depth far): the same function both ways.
        masked = [jnp.where(hit if m.ndim == 4 else hit[..., None], m, 0.0) for m in maps]
        return sum(jnp.sum(wt * m) for wt, m in zip(weights, masked, strict=True))

    got = jax.jit(jax.grad(lambda f: loss(nr.rasterize_layers(f, 16, k, blur)[1:])))(fv)
    want = jax.jit(jax.grad(lambda f: loss(reference_values(f, layers.face_index))))(fv)
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_padding_rows_pass_no_gradient_and_batches_broadcast():
    # A batch of two meshes padded to the same size (-1 rows), one camera shared.
    vertices, faces = nr.data.icosphere(1)
    # Turned so that no face is seen exactly edge-on (a zero area that fused code, contracting
    # the reference's products, would round either way).
    turn = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))[0].astype(np.float32)
    vertices = vertices @ turn
    v = jnp.stack([vertices * 0.5, vertices * 0.4 + 0.1]).at[..., 2].add(2.0)
    f = np.stack([np.asarray(faces), np.asarray(faces)])
    f[1, 60:] = -1
    fv = nr.vertices_to_faces(v, f)

    def loss(v):
        layers = nr.rasterize_layers(nr.vertices_to_faces(v, f), 24, num_layers=3, blur_radius=0.01)
        return jnp.sum(jnp.where(layers.face_index >= 0, layers.dist, 0.0))

    g = jax.grad(loss)(v)
    assert np.all(np.isfinite(g)) and float(jnp.abs(g[0]).max()) > 0
    used = np.unique(f[1, :60])
    assert np.all(np.asarray(g[1])[np.setdiff1d(np.arange(v.shape[1]), used)] == 0)
    got = nr.rasterize_layers(fv, 24, num_layers=3, blur_radius=0.01)
    want = reference(fv, 24, 24, 3, 0.01)
    # Neighbouring faces meet at equal depths on their shared edges and vertices, where the last
    # bit of the depth (rounded differently by XLA's fused code) decides which comes first: the
    # slots' depths must agree, and their faces wherever no such near tie decides.
    np.testing.assert_allclose(got.depth, want.depth, rtol=1e-5)
    same = np.asarray(got.face_index == want.face_index)
    assert same.mean() > 0.95
    np.testing.assert_allclose(np.asarray(got.dist)[same], np.asarray(want.dist)[same], atol=1e-5)
    # One element on its own gives the same layers as in the batch.
    one = nr.rasterize_layers(fv[1], 24, num_layers=3, blur_radius=0.01)
    np.testing.assert_array_equal(one.face_index, got.face_index[1])


@pytest.mark.versions
def test_rasterize_layers_under_jit_vmap_and_grad():
    fv = jnp.asarray(_jittered(np.random.default_rng(2), 3, 8, 8))
    call = lambda f: nr.rasterize_layers(f, 8, num_layers=2, blur_radius=0.05)  # noqa: E731
    batched = call(fv)
    for got in (jax.jit(call)(fv), jax.vmap(call)(fv)):
        for a, b in zip(got, batched, strict=True):
            np.testing.assert_array_equal(a, b)

    def loss(f):
        layers = call(f)
        return jnp.sum(jnp.where(layers.face_index >= 0, layers.depth + layers.dist, 0.0))

    g = jax.jit(jax.grad(loss))(fv)
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(fv), g, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(g).max()) > 0


def _layer_maps(fv, size=16, k=3, blur=0.03):
    return tuple(nr.rasterize_layers(fv, size, num_layers=k, blur_radius=blur)[1:])


def _random(rng, shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


@pytest.mark.parametrize("blur", [0.0, 0.03])
def test_layers_jvp_equals_the_reference_and_central_differences(blur):
    rng = np.random.default_rng(20)
    fv = jnp.asarray(_jittered(rng, 2, 10, 16))
    v = _random(rng, fv.shape)
    maps = lambda fv: _layer_maps(fv, blur=blur)  # noqa: E731
    layers = jax.jit(lambda fv: nr.rasterize_layers(fv, 16, num_layers=3, blur_radius=blur))
    fi, dist = np.asarray(layers(fv).face_index), np.asarray(layers(fv).dist)
    jvp = jax.jit(lambda fv, v: jax.jvp(maps, (fv,), (v,))[1])
    t = jvp(fv, v)
    ref = jax.jit(lambda fv, v: jax.jvp(lambda f: reference_values(f, fi), (fv,), (v,))[1])
    want = ref(fv, v)
    for got, w in zip(t, want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))
    # Central differences where the same faces fill the slots at both ends and each slot's
    # values are smooth there (the reference's derivative the same at both ends: no clamp,
    # coverage or nearest edge switches in between).
    eps = 1e-3
    fd = jax.jit(central_difference, static_argnums=(0, 3))(maps, (fv,), (v,), eps)
    ends = [fv + eps * v, fv - eps * v]
    same = (fi >= 0) & np.all([np.asarray(layers(e).face_index) == fi for e in ends], 0)
    ends = [ref(e, v) for e in ends]
    for m, (got, diff) in enumerate(zip(t, fd, strict=True)):
        core = lambda a: np.asarray(a).reshape(*same.shape, -1)  # noqa: E731
        smooth = same & np.all([np.abs(core(e[m] - want[m])) < 1e-2 for e in ends], (0, -1))
        assert smooth.sum() > 100
        if blur > 0:  # the clamp of pixels outside the face is among the slots checked
            assert (smooth & (dist > 0)).sum() > 20
        np.testing.assert_allclose(core(got)[smooth], core(diff)[smooth], rtol=2e-2, atol=2e-2)
    if blur > 0:  # vmap over the batch gives the batched tangent.
        per_element = jax.jit(jax.vmap(jvp))(fv, v)
        for a, b in zip(per_element, t, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("read", ["bary", "bary_screen", "depth", "dist", "all"])
def test_layers_jvp_is_the_transpose_of_the_backward_kernel(read):
    # Each map alone (the others' cotangents reach the kernel as empty operands) and all at once,
    # on a non-square image. blur_radius > 0: slots outside their face, where the clamp acts,
    # take part.
    rng = np.random.default_rng(21)
    fv = jnp.asarray(_jittered(rng, 2, 10, 16))
    names = ("bary", "bary_screen", "depth", "dist")
    pick = lambda maps: maps if read == "all" else maps[names.index(read)]  # noqa: E731
    maps = lambda fv: pick(_layer_maps(fv, size=(16, 8)))  # noqa: E731
    check_transpose(maps, (fv,), (_random(rng, fv.shape),))


@pytest.mark.versions
def test_layers_jacfwd_equals_jacrev_and_linearize():
    fv = jnp.asarray(_jittered(np.random.default_rng(22), 1, 6, 8))[0]

    def maps(shift):  # a translation of the faces -> their layers' maps
        return _layer_maps(fv + shift, size=8, k=2, blur=0.05)

    @jax.jit
    def forward(shift):
        _, lin = jax.linearize(maps, shift)
        return jax.jacfwd(maps)(shift), lin(jnp.array([1.0, 0.0, 0.0]))

    shift = jnp.zeros(3)
    fwd, along_x = forward(shift)
    rev = jax.jit(jax.jacrev(maps))(shift)
    assert float(jnp.abs(fwd[3]).max()) > 0
    for a, b, x in zip(fwd, rev, along_x, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
        np.testing.assert_allclose(x, a[..., 0], rtol=1e-6, atol=1e-6)


def test_forward_mode_through_softmax_blend_and_a_shader_on_layer_fragments():
    fv, _, _ = _blend_scene()
    fv = jnp.asarray(fv)
    rng = np.random.default_rng(23)
    corners = jnp.asarray(rng.uniform(size=(2, 10, 3, 3)), jnp.float32)  # colour per corner
    index = lambda fv: nr.rasterize_layers(fv, 16, num_layers=4, blur_radius=0.02)[0]  # noqa: E731

    def images(fv):
        layers = nr.rasterize_layers(fv, 16, num_layers=4, blur_radius=0.02)
        shaded = nr.interpolate(corners, None, nr.layer_fragments(layers))  # [K, 2, 16, 16, 3]
        colors = jnp.moveaxis(shaded, 0, -2)
        alphas = jnp.full(colors.shape[:-1], 0.6)
        soft = nr.softmax_blend(colors, layers, 1e-2, 0.05)
        return soft, nr.alpha_composite(colors, alphas, layers)

    v = _random(rng, fv.shape)
    jvp = jax.jit(lambda fv: (jax.jvp(images, (fv,), (v,))[1], index(fv)))
    t, fi = jvp(fv)
    fd = jax.jit(central_difference, static_argnums=(0, 3))(images, (fv,), (v,), 1e-3)
    # Central differences at pixels whose slots keep their faces and whose tangent is the same
    # at both ends (no clamp or nearest edge switches in between).
    ends = [jvp(fv + 1e-3 * v), jvp(fv - 1e-3 * v)]
    same = np.all([np.asarray(e[1] == fi) for e in ends], (0, -1))
    for m, (got, diff) in enumerate(zip(t, fd, strict=True)):
        got, diff = np.asarray(got), np.asarray(diff)
        close = [np.abs(np.asarray(e[0][m]) - got) < 1e-2 * (1 + np.abs(got)) for e in ends]
        smooth = same & np.all(close, (0, -1))
        assert smooth.sum() > 200 and np.abs(got[smooth]).max() > 0.1
        np.testing.assert_allclose(got[smooth], diff[smooth], rtol=2e-2, atol=2e-2)


@needs_cuda_host
def test_layers_forward_mode_on_the_host_compiled_cuda_kernels():
    # The tangent is jnp; its transpose there is the CUDA handler of nmr_layers_bwd.
    rng = np.random.default_rng(24)
    fv = jnp.asarray(_jittered(rng, 2, 10, 16))
    v = _random(rng, fv.shape)
    maps = lambda fv: _layer_maps(fv, size=(8, 16))  # noqa: E731
    want = check_transpose(maps, (fv,), (v,))
    with _ffi.using_kernels("cuda-host"):
        got = check_transpose(maps, (fv,), (v,))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layers_reverse_mode_runs_the_backward_kernel_once():
    fv = jnp.asarray(_jittered(np.random.default_rng(25), 1, 6, 8))

    def loss(fv):
        layers = nr.rasterize_layers(fv, 8, num_layers=2, blur_radius=0.05)
        return jnp.sum(jnp.where(layers.face_index >= 0, layers.dist, 0.0))

    text = jax.jit(jax.grad(loss)).lower(fv).as_text()
    bwd = [line for line in text.splitlines() if "@nmr_layers_bwd" in line]
    assert len(bwd) == 1, bwd
    # Only dist is read: the other maps' gradients are empty operands, not maps of zeros.
    assert bwd[0].count("tensor<1x0x0x0") == 3, bwd


def test_bad_arguments_raise_naming_them():
    fv = random_faces(np.random.default_rng(0), 1, 4, 8)
    with pytest.raises(ValueError, match="num_layers"):
        nr.rasterize_layers(fv, 8, num_layers=0)
    with pytest.raises(ValueError, match="blur_radius"):
        nr.rasterize_layers(fv, 8, blur_radius=-1.0)
    layers = nr.rasterize_layers(fv, 8, num_layers=2)
    with pytest.raises(ValueError, match="colors"):
        nr.softmax_blend(jnp.zeros((8, 8, 3, 3)), layers)
    with pytest.raises(ValueError, match="sigma"):
        nr.softmax_blend(jnp.zeros((8, 8, 2, 3)), layers, sigma=0.0)
    with pytest.raises(ValueError, match="alphas"):
        nr.alpha_composite(jnp.zeros((8, 8, 2, 3)), jnp.zeros((8, 8, 3)), layers)


def _blend_scene():
    fv = _jittered(np.random.default_rng(7), 2, 10, 16)
    layers = nr.rasterize_layers(fv, 16, num_layers=4, blur_radius=0.02)
    rng = np.random.default_rng(8)
    colors = jnp.asarray(rng.uniform(size=(2, 16, 16, 4, 3)), jnp.float32)
    return fv, layers, colors


def test_softmax_blend_equals_the_formula_pixel_by_pixel():
    _, layers, colors = _blend_scene()
    sigma, gamma, bg, znear, zfar = 1e-2, 0.05, (0.2, 0.4, 0.6), NEAR, FAR
    got = np.asarray(nr.softmax_blend(colors, layers, sigma, gamma, bg, znear, zfar))
    fi = np.asarray(layers.face_index)
    dist, depth = np.asarray(layers.dist, np.float64), np.asarray(layers.depth, np.float64)
    c = np.asarray(colors, np.float64)
    want = np.zeros(got.shape)
    for idx in np.ndindex(fi.shape[:-1]):
        slots = [k for k in range(fi.shape[-1]) if fi[idx][k] >= 0]
        d = [1 / (1 + np.exp(dist[idx][k] / sigma)) for k in slots]
        zi = [(zfar - depth[idx][k]) / (zfar - znear) for k in slots]
        zmax = max([*zi, 1e-10])
        e = [dk * np.exp((z - zmax) / gamma) for dk, z in zip(d, zi, strict=True)]
        delta = max(np.exp((1e-10 - zmax) / gamma), 1e-10)
        rgb = sum((ek * c[idx][k] for ek, k in zip(e, slots, strict=True)), np.zeros(3))
        want[idx][:3] = (rgb + delta * np.asarray(bg)) / (sum(e) + delta)
        want[idx][3] = 1 - np.prod([1 - dk for dk in d])
    assert want[..., 3].max() > 0.5 and want[..., 3].min() == 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_alpha_composite_equals_back_to_front_over():
    _, layers, colors = _blend_scene()
    alphas = jnp.asarray(np.random.default_rng(9).uniform(size=colors.shape[:-1]), jnp.float32)
    bg = (0.1, 0.2, 0.3)
    got = np.asarray(nr.alpha_composite(colors, alphas, layers, bg))
    # Back to front: start from the background, lay each occupied slot over it, farthest first.
    fi = np.asarray(layers.face_index)
    rgb = np.broadcast_to(np.asarray(bg), got[..., :3].shape).copy()
    coverage = np.zeros(got.shape[:-1])
    for k in reversed(range(fi.shape[-1])):
        a = np.where(fi[..., k] >= 0, np.asarray(alphas[..., k]), 0.0)[..., None]
        rgb = a * np.asarray(colors[..., k, :]) + (1 - a) * rgb
        coverage = a[..., 0] + (1 - a[..., 0]) * coverage
    np.testing.assert_allclose(got[..., :3], rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[..., 3], coverage, rtol=1e-5, atol=1e-6)


@pytest.mark.versions
def test_blends_are_differentiable_under_jit_and_vmap():
    fv, _, colors = _blend_scene()

    def image(fv, colors, sigma):
        layers = nr.rasterize_layers(fv, 16, num_layers=4, blur_radius=0.02)
        soft = nr.softmax_blend(colors, layers, sigma, 0.05)
        over = nr.alpha_composite(colors, jnp.full(colors.shape[:-1], 0.5), layers)
        return jnp.sum(soft**2) + jnp.sum(over**2)

    grads = jax.jit(jax.grad(image, argnums=(0, 1, 2)))(jnp.asarray(fv), colors, 1e-2)
    assert all(np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0 for g in grads)
    per = jax.vmap(image, in_axes=(0, 0, None))(jnp.asarray(fv), colors, 1e-2)
    np.testing.assert_allclose(per.sum(), image(jnp.asarray(fv), colors, 1e-2), rtol=1e-5)
