"""Property-based fuzzing of the kernels against tests/_reference.py, and of the full renderer's
gradients, on random meshes salted with the edge cases of the README ("Edge cases and bad input").

CI runs a small, derandomized budget: 15 examples per test, or NMR_FUZZ_CI_EXAMPLES (the
sanitizer section's short run takes 6: each is several times slower there). A long campaign with
fresh random seeds:

    NMR_FUZZ_EXAMPLES=3000 .venv/bin/python -m pytest -q tests/test_fuzz.py

runs 3000 examples per test (each kernel example is a batch of 4 meshes, so 12,000 meshes).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmr_jax as nr
from nmr_jax import _ffi
from tests import _reference as ref
from tests._helpers import FAR, NEAR

# CI's sanitizer section also runs the file on its instrumented build of the host CUDA kernels.
pytestmark = pytest.mark.cuda_host

_LONG = int(os.environ.get("NMR_FUZZ_EXAMPLES", "0"))
_CI = int(os.environ.get("NMR_FUZZ_CI_EXAMPLES", "15"))
settings.register_profile(
    "nmr_fuzz",
    # CI: deterministic and bounded; the long campaign draws fresh seeds.
    max_examples=_LONG or _CI,
    derandomize=not _LONG,
    deadline=None,  # the first example of a shape includes XLA compilation
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints @reproduce_failure(...) to replay it exactly
)
FUZZ = settings.get_profile("nmr_fuzz")

BATCH, FACES = 4, 6
# A few fixed shapes keep the number of XLA compilations small; they include 1-pixel images,
# single rows and columns, and sizes that are not powers of two.
SHAPES = [(1, 1), (1, 7), (5, 1), (4, 4), (8, 8), (6, 11), (16, 16)]
KINDS = [
    "plain",
    "reversed",  # clockwise: culled
    "degenerate",  # two equal vertices: zero area
    "collinear",  # three vertices on a line: zero area
    "vertical",  # an edge parallel to the y axis
    "horizontal",  # an edge parallel to a scan line
    "coincident",  # a copy of the previous face: the lower index wins every tie
    "behind",  # all depths negative: behind the camera
    "crossing",  # depths of both signs: crosses the near plane and the camera plane
    "tiny_depth",  # a depth of 1e-30
    "huge",  # a coordinate of 1e17 (a visible sliver), 1e30 or FLT_MAX (beyond 2^62 pixels)
    "nonfinite",  # a NaN or infinite coordinate (x, y or z)
    "offscreen",  # shifted out of the image
    "sliver",  # a vertex 2^-19 pixel before a pixel line, the next one 2^61 pixels along it
]


@st.composite
def meshes(draw):
    """(face vertices float32 [BATCH, FACES, 3, 3], kinds [BATCH][FACES], (H, W))."""
    h, w = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**32 - 1))
    kinds = draw(
        st.lists(
            st.lists(st.sampled_from(KINDS), min_size=FACES, max_size=FACES),
            min_size=BATCH,
            max_size=BATCH,
        )
    )
    rng = np.random.default_rng(seed)
    # x, y on a grid of 2^-15 in NDC (|v| <= 1.125, a little beyond the image): pixel coordinates
    # are then exact in float32, so that no test depends on how an edge function rounds.
    xy = rng.integers(-36864, 36865, size=(BATCH, FACES, 3, 2)) / 32768.0
    z = rng.uniform(0.05, 5.0, size=(BATCH, FACES, 3))
    fv = np.concatenate([xy, z[..., None]], -1).astype(np.float32)
    for b in range(BATCH):
        for f in range(FACES):
            _apply(kinds[b][f], fv, b, f, rng, h, w)
    return fv, kinds, (h, w)


def _apply(
    kind: str, fv: np.ndarray, b: int, f: int, rng: np.random.Generator, h: int, w: int
) -> None:
    face = fv[b, f]
    i, j = rng.choice(3, size=2, replace=False)
    if kind == "reversed":
        fv[b, f] = face[::-1].copy()
    elif kind == "degenerate":
        face[j] = face[i]
    elif kind == "collinear":
        k = 3 - i - j
        face[k, :2] = face[i, :2] + rng.choice([-1.0, 0.5, 2.0]) * (face[j, :2] - face[i, :2])
    elif kind == "vertical":
        face[j, 0] = face[i, 0]
    elif kind == "horizontal":
        face[j, 1] = face[i, 1]
    elif kind == "coincident" and f > 0:
        fv[b, f] = fv[b, f - 1]
    elif kind == "behind":
        face[:, 2] *= -1
    elif kind == "crossing":
        face[i, 2] = -rng.uniform(0.0, 2.0)
        face[j, 2] = rng.uniform(0.0, 0.2)  # also straddles the near plane
    elif kind == "tiny_depth":
        face[i, 2] = 1e-30
    elif kind == "huge":
        face[i, rng.integers(3)] = rng.choice([1e17, -1e17, 1e30, np.finfo(np.float32).max])
    elif kind == "nonfinite":
        face[i, rng.integers(3)] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == "offscreen":
        face[:, rng.integers(2)] += rng.choice([-3.0, 3.0])
    elif kind == "sliver":  # Kato's lever on that line is 2^61 / 2^-19
        axis = int(rng.integers(2))
        n, m = (w, h) if axis == 0 else (h, w)
        if n & (n - 1) or m & (m - 1):
            return  # the offsets below are exact in float32 only for power-of-two sizes
        near = (2 * (int(rng.integers(n)) - 2.0**-19) - n + 1) / n  # 2^-19 pixel before a line
        centre = (2 * int(rng.integers(m)) - m + 1) / m  # a pixel centre across the lines
        face[i, axis], face[i, 1 - axis] = near, centre
        face[j, axis], face[j, 1 - axis] = rng.choice([1.0, -1.0]) * 2.0**62 / n, centre


_reference_forward = jax.jit(ref.forward, static_argnums=(1, 2, 3, 4))


@jax.jit
def _grads(fv, tex, weights):
    """Gradients of a random linear loss of rgb, alpha and depth through the public function."""

    def loss(fv, tex):
        out = nr.rasterize_rgbad(fv, tex, weights[0].shape[-2:], anti_aliasing=False)
        return (
            jnp.sum(out.rgb * weights[0][..., None])
            + jnp.sum(out.alpha * weights[1])
            + jnp.sum(out.depth * weights[2])
        )

    return jax.grad(loss, argnums=(0, 1))(fv, tex)


@FUZZ
@given(meshes(), st.sampled_from([1, 2, 3]))
def test_kernels_match_reference_and_stay_finite(mesh, texture_size):
    fv, kinds, (h, w) = mesh
    fi, wt, d = (np.asarray(a) for a in _ffi.rasterize(jnp.asarray(fv), h, w, NEAR, FAR))
    rfi, rwt, rd = (np.asarray(a) for a in _reference_forward(jnp.asarray(fv), h, w, NEAR, FAR))
    covered, r_covered = fi >= 0, rfi >= 0
    # No NaN anywhere; background is exactly (-1, 0, far); covered pixels lie in (near, far).
    assert np.isfinite(wt).all() and np.isfinite(d).all()
    assert (wt[~covered] == 0).all() and (d[~covered] == FAR).all()
    assert ((d[covered] > NEAR) & (d[covered] < FAR)).all()
    np.testing.assert_allclose(wt.sum(-1)[covered], 1.0, rtol=1e-5)

    def conditioning(face_index, weights):
        """sum|w_k / z_k| / |sum(w_k / z_k)|: how many times float32's relative precision the
        depth 1 / sum(w_k / z_k) loses; large when depths have both signs, where XLA and C++
        round it differently."""
        z = fv[np.arange(BATCH)[:, None, None], np.maximum(face_index, 0), :, 2]
        terms = np.where((face_index >= 0)[..., None], weights / z, 1.0)
        return np.abs(terms).sum(-1) / np.abs(terms.sum(-1))

    tol = 2e-5 * np.maximum(conditioning(fi, wt), conditioning(rfi, rwt))
    # Weights carry rounding errors of ~1e-7 (1e-6 allowed) that move 1 / sum(w_k / z_k) by up to
    # depth^2 * 1e-6 * sum(1 / |z_k|): large next to a vertex close to the camera plane.
    z_face = fv[np.arange(BATCH)[:, None, None], np.maximum(fi, 0), :, 2]
    slack = 1e-6 * rd**2 * np.where(covered, (1 / np.abs(z_face)).sum(-1), 0.0)

    def close(a, b):
        return np.abs(a - b) <= tol * np.maximum(np.abs(a), np.abs(b))

    def at_bound(depth, drawn):
        return drawn & (close(depth, NEAR) | close(depth, FAR))

    # Face ids agree exactly, except where the choice is a rounding tie: two faces at the same
    # depth, or a depth on the near or far bound, to that depth's precision.
    differ = fi != rfi
    tie = (covered & r_covered & close(d, rd)) | at_bound(d, covered) | at_bound(rd, r_covered)
    assert not (differ & ~tie).any(), np.argwhere(differ & ~tie)
    same = ~differ
    np.testing.assert_allclose(wt[same], rwt[same], rtol=1e-5, atol=1e-5)
    assert (np.abs(d - rd) <= tol * np.abs(rd) + slack)[same].all()

    rng = np.random.default_rng(int(np.abs(fi).sum()))
    t = texture_size
    tex = jnp.asarray(rng.uniform(size=(BATCH, FACES, t, t, t, 3)), jnp.float32)
    rgb = _ffi.sample_textures(jnp.asarray(fv), tex, *map(jnp.asarray, (fi, wt, d)), 1e-3)
    want = ref.sample(jnp.asarray(fv), tex, *map(jnp.asarray, (fi, wt, d)), 1e-3)
    np.testing.assert_allclose(rgb, want, rtol=1e-5, atol=1e-5)

    # Kato's backward against the loop reference, on an image with some structure.
    image = rng.uniform(size=(BATCH, h, w, 2)).astype(np.float32) * covered[..., None]
    g_image = rng.normal(size=(BATCH, h, w, 2)).astype(np.float32)
    args = (jnp.asarray(fv), jnp.asarray(fi), jnp.asarray(image), jnp.asarray(g_image))
    kato = np.asarray(_ffi.kato_bwd(*args, 1e-4))
    assert np.isfinite(kato).all()
    # The loop reference is slow: it checks one mesh of the batch, drawn at random.
    k = slice(b := int(rng.integers(BATCH)), b + 1)
    want = ref.kato(fv[k], fi[k], image[k], g_image[k], 1e-4)
    # One face's nine sums share their scans: where one cancels (found by fuzzing: a sliver's x
    # gradient of 3.89 in float32, 3.28 in float64, beside sums of 6400 on the same face), what is
    # left is float32 rounding at the scale of the face's largest sums, ~1e-7 of them, which the
    # summation order (C++ by scans, the reference by visits) moves.
    face_scale = np.abs(want).max(axis=(-2, -1), keepdims=True)
    err = np.abs(kato[k] - want)
    assert (err <= 1e-4 * np.abs(want) + 1e-4 + 1e-6 * face_scale).all(), (kato[k], want)

    weights = jnp.asarray(rng.normal(size=(3, BATCH, h, w)), jnp.float32)
    g_fv, g_tex = _grads(jnp.asarray(fv), tex, weights)
    assert np.isfinite(g_fv).all() and np.isfinite(g_tex).all()
    # A face that draws nothing and is not finite gets no gradient.
    nonfinite = ~np.isfinite(fv).all(axis=(-1, -2))
    assert (np.asarray(g_fv)[nonfinite] == 0).all()


@jax.jit
def _layer_grads(fv, weights):
    """Gradients of a random linear loss of every map of blurred layers."""

    def loss(fv):
        layers = nr.rasterize_layers(fv, weights.shape[1:3], num_layers=3, blur_radius=0.05)
        hit = layers.face_index >= 0
        bary = layers.bary + layers.bary_screen
        return jnp.sum(jnp.where(hit, layers.depth + layers.dist, 0.0) * weights) + jnp.sum(
            bary * weights[..., None]
        )

    return jax.grad(loss)(fv)


@FUZZ
@given(meshes())
def test_layers_agree_with_the_hard_rasterizer_and_stay_finite(mesh):
    fv, _, (h, w) = mesh
    # Slot 0 without blur is the hard rasterizer's face, whatever the edge case.
    fi = np.flip(np.asarray(_ffi.rasterize(jnp.asarray(fv), h, w, NEAR, FAR)[0]), -2)
    hard = nr.rasterize_layers(fv, (h, w), num_layers=FACES)
    np.testing.assert_array_equal(np.asarray(hard.face_index[..., 0]), fi)
    for layers in (hard, nr.rasterize_layers(fv, (h, w), num_layers=3, blur_radius=0.05)):
        fi, depth, dist = (np.asarray(m) for m in (layers.face_index, layers.depth, layers.dist))
        hit = fi >= 0
        # Occupied slots first, nearest first, each face once per pixel; empty ones are (-1, far,
        # +inf, 0); occupied ones finite with depth in (near, far).
        assert not (hit[..., 1:] & ~hit[..., :-1]).any()
        assert (np.diff(depth, axis=-1) >= 0).all()
        same = (fi[..., :, None] == fi[..., None, :]) & hit[..., :, None]
        assert (same.sum(-1) == hit).all()
        assert (depth[~hit] == FAR).all() and np.isinf(dist[~hit]).all()
        assert (np.asarray(layers.bary)[~hit] == 0).all()
        assert ((depth[hit] > NEAR) & (depth[hit] < FAR)).all() and np.isfinite(dist[hit]).all()
        assert np.isfinite(np.asarray(layers.bary)[hit]).all()
    # Without blur every occupied slot covers its pixel: dist <= 0 there (the sign is coverage).
    assert (np.asarray(hard.dist)[np.asarray(hard.face_index) >= 0] <= 0).all()
    weights = jnp.asarray(
        np.random.default_rng(int(fi.sum()) % 2**32).normal(size=fi.shape), jnp.float32
    )
    assert np.isfinite(np.asarray(_layer_grads(jnp.asarray(fv), weights))).all()


# World coordinates up to 1e6: the eye's gradient through a vertex at 1e30 is ~1e63, beyond
# float32 (README); the kernels' own fuzzing above covers 1e30 and FLT_MAX in NDC.
VERTEX_VALUES = st.one_of(
    st.floats(-2.0, 2.0, width=32),
    st.sampled_from([0.0, 1e-30, -1e-30, 1e6, -1e6, np.nan, np.inf, -np.inf]),
)


@jax.jit
def _renderer_grads(vertices, faces, textures, eye, light_direction):
    def loss(vertices, textures, eye, light_direction):
        renderer = nr.Renderer(image_size=8, light_direction=light_direction)
        rgb, depth, alpha = renderer.render(vertices, faces, textures, eye=eye)
        return jnp.sum(rgb) + jnp.sum(alpha) + 1e-3 * jnp.sum(depth)

    return jax.grad(loss, argnums=(0, 1, 2, 3))(vertices, textures, eye, light_direction)


@FUZZ
@given(
    st.lists(st.tuples(VERTEX_VALUES, VERTEX_VALUES, VERTEX_VALUES), min_size=6, max_size=6),
    st.lists(st.tuples(*[st.integers(0, 5)] * 3), min_size=8, max_size=8),
    # Light directions are kept sane: a 1e30 light makes colours of 1e29 whose Kato gradients
    # overflow float32 (as they would in the original).
    st.tuples(*[st.sampled_from([0.0, 1.0, -0.5, 1e3])] * 3),
    st.sampled_from([(0.0, 0.0, -2.7), (0.0, 0.0, 0.0), (0.5, 1.0, 0.0), (0.0, 3.0, 0.0)]),
)
def test_renderer_gradients_are_finite(vertices, faces, light_direction, eye):
    """Camera, lighting, rasterization and gather together: zero-area faces, repeated vertices,
    vertices at the eye, on the camera plane, huge or not finite, an eye on the up axis."""
    textures = jnp.full((8, 2, 2, 2, 3), 0.5, jnp.float32)
    grads = _renderer_grads(
        jnp.asarray(vertices, jnp.float32),
        jnp.asarray(faces, jnp.int32),
        textures,
        jnp.asarray(eye, jnp.float32),
        jnp.asarray(light_direction, jnp.float32),
    )
    for name, g in zip(["vertices", "textures", "eye", "light_direction"], grads, strict=True):
        assert np.isfinite(g).all(), name
