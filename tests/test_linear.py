"""Forward mode (nmr_jax/_linear.py and the kernels' jvp rules in nmr_jax/_ops.py): jvp against
central differences and against vjp by the transpose identity <u, J v> = <J^T u, v>, batched,
under jit and vmap; jacfwd equal to jacrev; Kato's rule raising its explained error."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi
from nmr_jax._linear import linear_call
from tests._helpers import needs_cuda_host, random_faces

SIZE = 16


def _random_like(rng: np.random.Generator, tree):
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32), tree)


def _dot(a, b) -> float:
    return sum(
        float(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def check_transpose(f, primals: tuple, tangents: tuple, seed: int = 0):
    """jvp and vjp of f at primals (both under jit) are transposes: <u, J v> == <J^T u, v>.
    Returns the jvp's tangent."""
    _, t = jax.jit(lambda p, v: jax.jvp(f, p, v))(primals, tangents)
    out = jax.eval_shape(f, *primals)
    u = _random_like(np.random.default_rng(seed), out)
    lhs, rhs = _dot(u, t), _dot(jax.jit(lambda p, u: jax.vjp(f, *p)[1](u))(primals, u), tangents)
    assert abs(lhs - rhs) <= 1e-4 * (abs(lhs) + abs(rhs)) + 1e-5, (lhs, rhs)
    assert abs(lhs) > 1e-3  # the tangent is not trivially zero
    return t


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def central_difference(f, primals: tuple, tangents: tuple, eps: float):
    plus = f(*(p + eps * v for p, v in zip(primals, tangents, strict=True)))
    minus = f(*(p - eps * v for p, v in zip(primals, tangents, strict=True)))
    return jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)


# --- the primitive -------------------------------------------------------------------------


@jax.custom_jvp
def _scaled_sin(x, a):
    return jnp.sin(x) * a


@_scaled_sin.defjvp
def _scaled_sin_jvp(primals, tangents):
    x, a = primals
    out = _scaled_sin(x, a)
    # The transpose is written out (not derived): reverse mode runs it. Its output types are
    # the primal's (like); vmap traces the batched tangent for them instead.
    (t,) = linear_call(
        lambda r, v: (jnp.cos(r[0]) * r[1] * v[0] + jnp.sin(r[0]) * v[1],),
        lambda r, c: (jnp.cos(r[0]) * r[1] * c[0], jnp.sin(r[0]) * c[0]),
        (x, a),
        tangents,
        like=(out,),
    )
    return out, t


@pytest.mark.versions
def test_linear_call_under_jit_vmap_grad_jvp_jacfwd_jacrev_and_linearize():
    x = jnp.linspace(-1.0, 2.0, 4)
    a = jnp.linspace(0.5, 1.5, 4)
    f = lambda x: _scaled_sin(x, a)  # noqa: E731
    want = jnp.diag(jnp.cos(x) * a)
    for jac in (jax.jacfwd(f), jax.jacrev(f), jax.jit(jax.jacfwd(f)), jax.jit(jax.jacrev(f))):
        np.testing.assert_allclose(jac(x), want, rtol=1e-6)
    _, lin = jax.linearize(f, x)
    np.testing.assert_allclose(lin(jnp.ones(4)), jnp.cos(x) * a, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(f(x)))(x), jnp.cos(x) * a, rtol=1e-6)
    # vmap of forward and of reverse mode, with the unbatched `a` broadcast and summed.
    xs = jnp.stack([x, x + 1])
    np.testing.assert_allclose(jax.vmap(jax.jacfwd(f))(xs), jax.vmap(jax.jacrev(f))(xs), rtol=1e-6)
    g_a = jax.grad(lambda a: jnp.sum(jax.vmap(lambda x: _scaled_sin(x, a))(xs)))(a)
    np.testing.assert_allclose(g_a, jnp.sum(jnp.sin(xs), 0), rtol=1e-6)


# --- fragments, depth, interpolate, sample_texture ----------------------------------------


def _faces(seed: int, batch: int = 2, n: int = 10) -> jax.Array:
    return jnp.asarray(random_faces(np.random.default_rng(seed), batch, n, SIZE))


def test_fragments_jvp_is_the_transpose_of_their_vjp_and_matches_central_differences():
    fv = _faces(1)
    v = _random_like(np.random.default_rng(2), fv)

    def maps(fv):
        frags = nr.rasterize_fragments(fv, SIZE, anti_aliasing=False)
        return frags.bary, frags.bary_screen, frags.depth

    t = check_transpose(maps, (fv,), (v,))
    # Central differences where the same face covers the pixel at both ends (the face index is
    # held fixed) and the barycentrics are not clamped.
    eps = 1e-3
    fd = jax.jit(central_difference, static_argnums=(0, 3))(maps, (fv,), (v,), eps)
    index = jax.jit(lambda fv: nr.rasterize_fragments(fv, SIZE, anti_aliasing=False).face_index)
    same = (index(fv + eps * v) == index(fv)) & (index(fv - eps * v) == index(fv))
    bary = jax.jit(maps)(fv)[0]
    inside = same & (index(fv) >= 0) & jnp.all((bary > 0.02) & (bary < 0.98), axis=-1)
    assert int(jnp.sum(inside)) > 50
    for tangent, diff in zip(t, fd, strict=True):
        tangent = tangent.reshape(*inside.shape, -1)[inside]
        diff = diff.reshape(*inside.shape, -1)[inside]
        np.testing.assert_allclose(tangent, diff, rtol=2e-2, atol=2e-2)
    # vmap over the batch gives the batched tangent.
    per_element = jax.vmap(lambda fv, v: jax.jvp(maps, (fv,), (v,))[1])(fv, v)
    for a, b in zip(per_element, t, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_depth_map_jacfwd_equals_jacrev():
    # A shift of all the faces -> their depth map.
    fv = _faces(8, batch=1, n=6)
    shift = lambda d: nr.rasterize_depth(fv + d, 8, anti_aliasing=False)  # noqa: E731
    d = jnp.zeros(3)
    fwd, rev = jax.jit(jax.jacfwd(shift))(d), jax.jit(jax.jacrev(shift))(d)
    assert float(jnp.max(jnp.abs(fwd))) > 0.1
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-5)


def test_interpolate_jvp():
    rng = np.random.default_rng(3)
    fv = _faces(4, batch=1)
    frags = nr.rasterize_fragments(fv, SIZE, anti_aliasing=False)
    attrs = jnp.asarray(rng.normal(size=(1, 10, 3, 4)), jnp.float32)

    def interp(attrs, bary):
        return nr.interpolate(attrs, None, frags._replace(bary=bary))

    primals = (attrs, frags.bary)
    tangents = _random_like(rng, primals)
    t = check_transpose(interp, primals, tangents)
    # Bilinear: central differences are exact up to rounding.
    fd = jax.jit(central_difference, static_argnums=(0, 3))(interp, primals, tangents, 0.1)
    assert_close(t, fd, rtol=0, atol=1e-4)


@pytest.mark.parametrize("boundary", ["wrap", "clamp"])
def test_sample_texture_jvp(boundary):
    rng = np.random.default_rng(9)
    image = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
    uv = jnp.asarray(rng.uniform(-0.2, 1.2, size=(SIZE, SIZE, 2)), jnp.float32)
    sample = lambda img, uv: nr.sample_texture(img, uv, boundary=boundary)  # noqa: E731
    tangents = _random_like(rng, (image, uv))
    t = check_transpose(sample, (image, uv), tangents)
    # Piecewise bilinear in uv: central differences agree but where a texel boundary lies
    # within the step.
    fd = jax.jit(central_difference, static_argnums=(0, 3))(sample, (image, uv), tangents, 1e-3)
    assert float(jnp.mean(jnp.abs(t - fd) > 1e-2)) < 0.05
    # vmap over the image batch (uv shared) gives the batched tangent.
    one = lambda img, v: jax.jvp(sample, (img, uv), (v, tangents[1]))[1]  # noqa: E731
    assert_close(jax.jit(jax.vmap(one))(image, tangents[0]), t)


# --- images through the Renderer ----------------------------------------------------------


def _scene():
    vertices, faces = nr.data.teapot()
    faces = faces[:150]
    rng = np.random.default_rng(5)
    textures = jnp.asarray(rng.uniform(size=(faces.shape[0], 2, 2, 2, 3)), jnp.float32)
    colors = jnp.asarray(rng.uniform(size=vertices.shape), jnp.float32)
    return vertices, faces, textures, colors


def test_renderer_images_jvp_in_textures_colors_and_lights():
    vertices, faces, textures, colors = _scene()

    def lit(textures, colors, ambient, directional):
        r = nr.Renderer(
            image_size=SIZE,
            light_intensity_ambient=ambient,
            light_intensity_directional=directional,
        )
        rgb_tex = r.render(vertices, faces, textures)[0]
        rgb_col = r.render(vertices, faces, vertex_colors=colors)[0]
        return rgb_tex, rgb_col

    primals = (textures, colors, jnp.float32(0.4), jnp.float32(0.6))
    tangents = _random_like(np.random.default_rng(6), primals)
    t = check_transpose(lit, primals, tangents)
    # Linear in the textures and colours, bilinear with the lights: second differences vanish.
    fd = jax.jit(central_difference, static_argnums=(0, 3))(lit, primals, tangents, 0.05)
    assert_close(t, fd, rtol=0, atol=1e-4)


@needs_cuda_host
def test_forward_mode_runs_on_the_host_compiled_cuda_kernels():
    rng = np.random.default_rng(7)
    fv = _faces(10, batch=1)
    textures = jnp.asarray(rng.uniform(size=(10, 2, 2, 2, 3)), jnp.float32)

    def f(fv, textures):
        rgb = nr.rasterize(jax.lax.stop_gradient(fv), textures, SIZE, anti_aliasing=False)
        frags = nr.rasterize_fragments(fv, SIZE, anti_aliasing=False)
        return rgb, frags.bary, nr.interpolate(textures.reshape(10, 3, 8), None, frags)

    primals = (fv, textures)
    tangents = _random_like(rng, primals)
    jvp = lambda p, t: jax.jvp(f, p, t)[1]  # noqa: E731
    want = jax.jit(jvp)(primals, tangents)
    with _ffi.using_kernels("cuda-host"):
        got = jax.jit(jvp)(primals, tangents)
    assert_close(got, want, atol=1e-5)


def test_reverse_mode_runs_the_backward_kernels_and_no_tangent_kernel():
    fv = _faces(13, batch=1)
    textures = jnp.ones((10, 2, 2, 2, 3), jnp.float32)

    def loss(fv, textures):
        rgb, alpha, depth = nr.rasterize_rgbad(fv, textures, SIZE)
        return jnp.sum(rgb) + jnp.sum(depth) + jnp.sum(nr.soft_silhouettes(fv, SIZE, 1e-3) ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(fv, textures).compile().as_text()
    targets = re.findall(r'custom_call_target="(nmr_[a-z_]+)"', hlo)
    for kernel in ("nmr_kato_bwd", "nmr_fragments_bwd", "nmr_sample_textures_bwd"):
        assert targets.count(kernel) == 1, targets
    assert targets.count("nmr_soft_silhouettes_bwd") == 1, targets
    assert "nmr_soft_silhouettes_jvp" not in targets and "nmr_interpolate" not in targets


# --- Kato's rule ---------------------------------------------------------------------------


def test_kato_rule_forward_mode_raises_the_explained_error():
    rng = np.random.default_rng(11)
    fv = _faces(12, batch=1)
    textures = jnp.asarray(rng.uniform(size=(10, 2, 2, 2, 3)), jnp.float32)
    silhouette = lambda fv: nr.rasterize_silhouettes(fv, SIZE)  # noqa: E731
    rgb = lambda fv: nr.rasterize(fv, textures, SIZE)  # noqa: E731
    tangent = jnp.ones_like(fv)
    # Eager and under jit (where it raises while compiling).
    calls = [
        lambda: jax.jvp(silhouette, (fv,), (tangent,)),
        lambda: jax.jit(lambda v, t: jax.jvp(rgb, (v,), (t,)))(fv, tangent),
        lambda: jax.jit(jax.jacfwd(lambda d: silhouette(fv + d)))(jnp.zeros(3)),
        lambda: jax.jit(lambda v, t: jax.linearize(silhouette, v)[1](t))(fv, tangent),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="not linear in the incoming gradient") as info:
            call()
        assert "stop_gradient" in str(info.value) and "SoftRule" in str(info.value)
    # Reverse mode keeps Kato's gradient; stop_gradient on the faces leaves the textures'.
    assert float(jnp.sum(jnp.abs(jax.jit(jax.grad(lambda v: jnp.sum(silhouette(v))))(fv)))) > 0
    textures_only = lambda t, v: jax.jvp(  # noqa: E731
        lambda t: nr.rasterize(jax.lax.stop_gradient(fv), t, SIZE), (t,), (v,)
    )[1]
    t = jax.jit(textures_only)(textures, jnp.ones_like(textures))
    assert float(jnp.sum(t)) > 0
