"""Programmable shading: fragments, interpolate and sample_texture against numpy and jnp
references, and the shader path's gradients (Kato's for the vertices, autodiff for the rest)."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from tests import _reference as ref
from tests._helpers import FAR, NEAR, random_faces

SIZE = 32  # a power of two: random_faces' vertices are then exact in pixel space


def projected_mesh(seed: int = 0, num_vertices: int = 12, num_faces: int = 16):
    """Projected vertices [V, 3] on random_faces' 1/8-pixel grid, faces [F, 3] and face vertices."""
    rng = np.random.default_rng(seed)
    vertices = random_faces(rng, 1, num_vertices, SIZE)[0, :, 0]
    vertices[:, 2] = rng.uniform(0.5, 3.0, num_vertices)  # all in front of the camera
    faces = np.stack([rng.choice(num_vertices, 3, replace=False) for _ in range(num_faces)])
    # Counter-clockwise in screen space (the winding the rasterizer draws).
    fv = vertices[faces]
    (ax, ay), (bx, by) = (fv[:, 1, :2] - fv[:, 0, :2]).T, (fv[:, 2, :2] - fv[:, 0, :2]).T
    cw = ax * by - ay * bx < 0
    faces[cw] = faces[cw][:, ::-1]
    return jnp.asarray(vertices), jnp.asarray(faces, jnp.int32)


@partial(jax.jit, static_argnums=(1,))
def reference_bary(fv, flip=True):
    """face_index [H, W] and perspective-correct barycentrics [H, W, 3] (row 0 at the top) from
    tests/_reference.py's brute-force maps; differentiable in fv with the face index fixed."""
    fi, w, d = ref.forward(fv[None], SIZE, SIZE, NEAR, FAR)
    fi, w, d = fi[0], w[0], d[0]
    z = jnp.where(fi[..., None] >= 0, fv[jnp.maximum(fi, 0)][..., 2], 1.0)
    bary = w * (d[..., None] / z)
    return (jnp.flip(fi, 0), jnp.flip(bary, 0)) if flip else (fi, bary)


def fragments_of(vertices, faces):
    return nr.rasterize_fragments(nr.vertices_to_faces(vertices, faces), SIZE, anti_aliasing=False)


def test_fragments_match_the_reference_maps():
    v, f = projected_mesh()
    frags = fragments_of(v, f)
    fi, bary = reference_bary(nr.vertices_to_faces(v, f))
    np.testing.assert_array_equal(frags.face_index, fi)
    assert (np.asarray(fi) >= 0).sum() > 200
    np.testing.assert_allclose(frags.bary, bary, atol=1e-5)
    np.testing.assert_allclose(np.sum(frags.bary, -1), (np.asarray(fi) >= 0) * 1.0, atol=1e-5)
    assert not np.asarray(frags.back).any()


@pytest.mark.versions
def test_fragment_gradients_match_jnp_reference():
    # The vertex gradient of all three differentiable maps at once (one kernel sums them).
    v, f = projected_mesh(9)
    rng = np.random.default_rng(10)
    g_bary, g_screen = (jnp.asarray(rng.normal(size=(SIZE, SIZE, 3)), jnp.float32) for _ in "ab")
    g_depth = jnp.asarray(rng.normal(size=(SIZE, SIZE)), jnp.float32)

    def loss(v):
        frags = fragments_of(v, f)
        covered = frags.face_index >= 0
        depth = jnp.where(covered, frags.depth, 0.0)
        return (
            jnp.sum(frags.bary * g_bary)
            + jnp.sum(frags.bary_screen * g_screen)
            + jnp.sum(depth * g_depth)
        )

    def reference(v):
        fi, w, d = ref.forward(nr.vertices_to_faces(v, f)[None], SIZE, SIZE, NEAR, FAR)
        fi, w, d = jnp.flip(fi[0], 0), jnp.flip(w[0], 0), jnp.flip(d[0], 0)
        _, bary = reference_bary(nr.vertices_to_faces(v, f))
        depth = jnp.where(fi >= 0, d, 0.0)
        return jnp.sum(bary * g_bary) + jnp.sum(w * g_screen) + jnp.sum(depth * g_depth)

    got = jax.jit(jax.grad(loss))(v)
    want = jax.jit(jax.grad(reference))(v)
    scale = np.abs(np.asarray(want)).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, atol=1e-4 * scale)


def numpy_interpolate(attributes, faces, face_index, bary):
    """The definition, pixel by pixel: sum_k bary_k attributes[faces[face, k]]."""
    a, fi, b = (np.asarray(x) for x in (attributes, face_index, bary))
    f = None if faces is None else np.asarray(faces)
    out = np.zeros((*fi.shape, a.shape[-1]), np.float64)
    for row, col in zip(*np.nonzero(fi >= 0), strict=True):
        corners = a[f[fi[row, col]]] if f is not None else a[fi[row, col]]
        out[row, col] = b[row, col] @ corners
    return out


@pytest.mark.parametrize("per", ["vertex", "corner"])
def test_interpolate_matches_numpy_reference(per):
    v, f = projected_mesh(1)
    frags = fragments_of(v, f)
    rng = np.random.default_rng(2)
    if per == "vertex":
        attributes, faces = jnp.asarray(rng.normal(size=(v.shape[0], 5)), jnp.float32), f
    else:
        attributes, faces = jnp.asarray(rng.normal(size=(f.shape[0], 3, 5)), jnp.float32), None
    got = jax.jit(nr.interpolate)(attributes, faces, frags)
    want = numpy_interpolate(attributes, faces, frags.face_index, frags.bary)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Batched attributes broadcast against unbatched fragments.
    both = nr.interpolate(jnp.stack([attributes, 2 * attributes]), faces, frags)
    np.testing.assert_allclose(both[1], 2 * np.asarray(got), atol=1e-5)


@pytest.mark.versions
def test_interpolate_gradients_match_jnp_reference():
    v, f = projected_mesh(3)
    rng = np.random.default_rng(4)
    attributes = jnp.asarray(rng.normal(size=(v.shape[0], 2)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(SIZE, SIZE, 2)), jnp.float32)

    def loss(v, a):
        return jnp.sum(nr.interpolate(a, f, fragments_of(v, f)) * g)

    def reference(v, a):
        fi, bary = reference_bary(nr.vertices_to_faces(v, f))
        corners = a[f[jnp.maximum(fi, 0)]]
        out = jnp.where(fi[..., None] >= 0, jnp.einsum("hwk,hwkc->hwc", bary, corners), 0.0)
        return jnp.sum(out * g)

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(v, attributes)
    want = jax.jit(jax.grad(reference, argnums=(0, 1)))(v, attributes)
    assert np.abs(np.asarray(want[0])).sum() > 0
    for a, b in zip(got, want, strict=True):
        scale = np.abs(np.asarray(b)).max()
        np.testing.assert_allclose(a, b, atol=1e-4 * scale)


def test_interpolate_vertex_gradient_matches_central_differences():
    # One face: pixels covered before and after each move keep their face, so the sum over
    # them is smooth in the vertices.
    v = jnp.array([[-0.7, -0.6, 1.0], [0.8, -0.5, 2.0], [-0.1, 0.7, 1.5]], jnp.float32)
    f = jnp.array([[0, 1, 2]], jnp.int32)
    attributes = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 2.0]], jnp.float32)
    h = 2e-3

    @jax.jit
    def value(v, mask):
        return jnp.sum(nr.interpolate(attributes, f, fragments_of(v, f)) * mask[..., None])

    face_index = jax.jit(lambda v: fragments_of(v, f).face_index)

    inner = np.ones((SIZE, SIZE), bool)
    for k in range(9):
        for s in (-h, h):
            inner &= np.asarray(face_index(v.at[k // 3, k % 3].add(s))) == 0
    mask = jnp.asarray(inner, jnp.float32)
    assert inner.sum() > 100
    grad = jax.jit(jax.grad(value))(v, mask)
    for k in range(9):
        i, c = divmod(k, 3)
        fd = (value(v.at[i, c].add(h), mask) - value(v.at[i, c].add(-h), mask)) / (2 * h)
        np.testing.assert_allclose(grad[i, c], fd, rtol=2e-2, atol=2e-2)


def numpy_sample(image, uv, filter, boundary):
    """The documented conventions, written out: texel (row j, column i) centred at
    ((i + 0.5) / Wt, 1 - (j + 0.5) / Ht); row 0 is the top."""
    image, uv = np.asarray(image, np.float64), np.asarray(uv, np.float64)
    ht, wt = image.shape[:2]

    def texel(i, j):
        if boundary == "wrap":
            i, j = i % wt, j % ht
        else:
            i, j = np.clip(i, 0, wt - 1), np.clip(j, 0, ht - 1)
        return image[j, i]

    x = uv[..., 0] * wt - 0.5
    y = (1 - uv[..., 1]) * ht - 0.5
    if filter == "nearest":
        return texel(
            np.floor(uv[..., 0] * wt).astype(int), np.floor((1 - uv[..., 1]) * ht).astype(int)
        )
    i0, j0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - i0)[..., None], (y - j0)[..., None]
    return (
        texel(i0, j0) * (1 - fx) * (1 - fy)
        + texel(i0 + 1, j0) * fx * (1 - fy)
        + texel(i0, j0 + 1) * (1 - fx) * fy
        + texel(i0 + 1, j0 + 1) * fx * fy
    )


@pytest.mark.parametrize("filter", ["nearest", "bilinear"])
@pytest.mark.parametrize("boundary", ["wrap", "clamp"])
def test_sample_texture_matches_numpy_reference(filter, boundary):
    rng = np.random.default_rng(5)
    image = jnp.asarray(rng.uniform(size=(5, 7, 3)), jnp.float32)
    uv = jnp.asarray(rng.uniform(-0.6, 1.6, size=(9, 11, 2)), jnp.float32)
    got = jax.jit(nr.sample_texture, static_argnums=(2, 3))(image, uv, filter, boundary)
    np.testing.assert_allclose(got, numpy_sample(image, uv, filter, boundary), atol=1e-5)


@pytest.mark.parametrize("filter", ["nearest", "bilinear", "trilinear"])
def test_sample_texture_at_texel_centres_returns_the_texels(filter):
    rng = np.random.default_rng(6)
    image = jnp.asarray(rng.uniform(size=(4, 6, 2)), jnp.float32)
    j, i = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    uv = jnp.asarray(np.stack([(i + 0.5) / 6, 1 - (j + 0.5) / 4], -1), jnp.float32)
    np.testing.assert_allclose(nr.sample_texture(image, uv, filter), image, atol=1e-6)


@pytest.mark.versions
def test_sample_texture_gradients():
    rng = np.random.default_rng(7)
    image = jnp.asarray(rng.uniform(size=(5, 6, 2)), jnp.float32)
    # Away from texel centres' grid lines, where bilinear sampling is smooth in uv.
    cells = rng.integers(-6, 12, size=(20, 2)) + rng.uniform(0.2, 0.8, size=(20, 2))
    uv = jnp.asarray(np.stack([(cells[:, 0] + 0.5) / 6, 1 - (cells[:, 1] + 0.5) / 5], -1))
    uv = uv.astype(jnp.float32).reshape(4, 5, 2)
    g = jnp.asarray(rng.normal(size=(4, 5, 2)), jnp.float32)
    loss = lambda im, uv: jnp.sum(nr.sample_texture(im, uv) * g)  # noqa: E731
    g_image, g_uv = jax.grad(loss, argnums=(0, 1))(image, uv)
    # Linear in the image: its gradient is the reference's transpose applied to g.
    basis = np.eye(image.size).reshape(image.size, *image.shape)
    columns = [np.sum(numpy_sample(b, uv, "bilinear", "wrap") * np.asarray(g)) for b in basis]
    np.testing.assert_allclose(g_image, np.reshape(columns, image.shape), atol=1e-5)
    # uv: central differences of the float64 reference.
    h, uv64 = 1e-5, np.asarray(uv, np.float64)
    for k in range(uv.size):
        e = np.zeros(uv.size)
        e[k] = h
        e = e.reshape(uv.shape)
        fd = np.sum(
            (
                numpy_sample(image, uv64 + e, "bilinear", "wrap")
                - numpy_sample(image, uv64 - e, "bilinear", "wrap")
            )
            * np.asarray(g)
        ) / (2 * h)
        np.testing.assert_allclose(np.asarray(g_uv).reshape(-1)[k], fd, rtol=1e-5, atol=1e-4)


def test_sample_texture_of_a_shared_image_sums_its_gradient_over_the_batch():
    rng = np.random.default_rng(11)
    image = jnp.asarray(rng.uniform(size=(6, 5, 3)), jnp.float32)
    uv = jnp.asarray(rng.uniform(-1, 2, size=(4, 3, 7, 2)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(4, 3, 7, 3)), jnp.float32)

    def loss(im, uv, g):
        return jnp.sum(nr.sample_texture(im, uv) * g)

    batched = jax.grad(loss)(image, uv, g)
    one_by_one = sum(jax.grad(loss)(image, uv[k], g[k]) for k in range(4))
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_sample_texture_at_non_finite_and_huge_uv():
    # A NaN or infinite coordinate reads NaN (no texel is defined); a huge finite one wraps into
    # the image instead of overflowing a texel index.
    image = jnp.ones((4, 4, 2), jnp.float32)
    uv = jnp.array([[[np.nan, 0.5], [np.inf, 0.5], [1e30, -1e30], [0.25, 0.75]]], jnp.float32)
    for filter in ("nearest", "bilinear"):
        out = np.asarray(nr.sample_texture(image, uv, filter))
        assert np.isnan(out[0, :2]).all()
        np.testing.assert_allclose(out[0, 2:], 1.0)
        clamped = np.asarray(nr.sample_texture(image, uv, filter, "clamp"))
        np.testing.assert_allclose(clamped[0, 2:], 1.0)


def test_trilinear_picks_the_mip_level_of_the_footprint():
    rng = np.random.default_rng(8)
    image = jnp.asarray(rng.uniform(size=(16, 16, 3)), jnp.float32)
    half = 0.25 * (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2])
    # A 8x8 grid of pixels over the whole texture: 2 texels per pixel, level 1 exactly, sampled
    # at its texel centres.
    j, i = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    uv = jnp.asarray(np.stack([(i + 0.5) / 8, 1 - (j + 0.5) / 8], -1), jnp.float32)
    trilinear = jax.jit(partial(nr.sample_texture, filter="trilinear"))
    np.testing.assert_allclose(trilinear(image, uv), half, atol=1e-5)
    # Magnified (a quarter texel per pixel): level 0, bilinear.
    fine = uv[:4, :4] / 4
    np.testing.assert_allclose(
        trilinear(image, fine), jax.jit(nr.sample_texture)(image, fine), atol=1e-6
    )


FRAGS = nr.Fragments(*(jnp.zeros((4, 4)),) * 5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: nr.sample_texture(jnp.zeros((4, 4)), jnp.zeros((2, 2, 2))), "image"),
        (lambda: nr.sample_texture(jnp.zeros((4, 4, 3)), jnp.zeros((2, 2, 3))), "uv"),
        (lambda: nr.sample_texture(jnp.zeros((4, 4, 3)), jnp.zeros((2, 2, 2)), "cubic"), "filter"),
        (lambda: nr.sample_texture(jnp.zeros((0, 4, 3)), jnp.zeros((2, 2, 2))), "image"),
        (
            lambda: nr.sample_texture(jnp.zeros((4, 4, 3)), jnp.zeros((2, 2, 2)), boundary="x"),
            "boundary",
        ),
        (lambda: nr.interpolate(jnp.zeros(5), jnp.zeros((2, 3), int), None), "fragments"),
        (lambda: nr.interpolate(jnp.zeros(5), jnp.zeros((2, 3), int), FRAGS), "attributes"),
        (lambda: nr.interpolate(jnp.zeros((5, 3)), jnp.zeros((2, 3)), FRAGS), "faces"),
    ],
)
def test_bad_shading_arguments_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("fill_back", [False, True])
def test_shader_output_of_the_wrong_shape_names_the_shader_not_a_broadcast(fill_back):
    vertices, faces = nr.data.teapot()
    renderer = nr.Renderer(image_size=16, fill_back=fill_back)
    with pytest.raises(ValueError, match=r"the shader must return \[\.\.\., H, W, C\]"):
        renderer.render(vertices, faces, shader=lambda frags: jnp.ones((3, 3)))
    fv = nr.look_at(nr.vertices_to_faces(vertices, faces), (0.0, 0.0, -2.7))
    with pytest.raises(ValueError, match="the shader must return"):
        nr.rasterize_shaded(nr.perspective(fv), lambda frags: jnp.ones(5), image_size=16)


EPS = 1e-3


def five_channel_shader(faces):
    """Per-vertex features [V, 5] interpolated and scaled per channel: reads the vertices
    (through the barycentrics) and its two parameters."""
    return lambda frags, features, scale: nr.interpolate(features, faces, frags) * scale


@pytest.mark.versions
def test_five_channel_shader_renders_jits_vmaps_and_differentiates():
    v, f = projected_mesh(9)
    rng = np.random.default_rng(10)
    features = jnp.asarray(rng.normal(size=(v.shape[0], 5)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=5), jnp.float32)
    background = jnp.arange(5, dtype=jnp.float32) / 5
    g = jnp.asarray(rng.normal(size=(SIZE, SIZE, 5)), jnp.float32)
    shader = five_channel_shader(f)

    def render(v, features, scale):
        fv = nr.vertices_to_faces(v, f)
        out = nr.rasterize_shaded(
            fv, shader, (features, scale), SIZE, False, eps=EPS, background=background
        )
        return out.image

    image = jax.jit(render)(v, features, scale)
    assert image.shape == (SIZE, SIZE, 5)
    # vmap over the shader's parameters equals separate calls.
    scales = jnp.stack([scale, 2 * scale])
    batched = jax.jit(jax.vmap(render, in_axes=(None, None, 0)))(v, features, scales)
    np.testing.assert_allclose(batched[1], jax.jit(render)(v, features, 2 * scale), atol=1e-6)

    # The reference: the image as rasterized (row 0 at y = -1) from the brute-force maps.
    def reference(v, features, scale):
        fi, bary = reference_bary(nr.vertices_to_faces(v, f), False)
        corners = features[f[jnp.maximum(fi, 0)]]
        shaded = jnp.einsum("hwk,hwkc->hwc", bary, corners) * scale
        return jnp.where(fi[..., None] >= 0, shaded, background), fi

    want_image, fi = reference(v, features, scale)
    np.testing.assert_allclose(image, jnp.flip(want_image, 0), atol=1e-5)
    got = jax.jit(jax.grad(lambda *a: jnp.sum(render(*a) * g), argnums=(0, 1, 2)))(
        v, features, scale
    )
    g_up = jnp.flip(g, 0)  # the incoming gradient as rasterized
    loss = lambda *a: jnp.sum(reference(*a)[0] * g_up)  # noqa: E731
    want = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(v, features, scale)
    # Vertices: autodiff of what the shader reads plus Kato's rule on image and alpha.
    fv = nr.vertices_to_faces(v, f)
    alpha = (np.asarray(fi) >= 0)[..., None].astype(np.float32)
    image_alpha = np.concatenate([np.asarray(want_image), alpha], -1)
    grad_alpha = np.concatenate([np.asarray(g_up), np.zeros_like(alpha)], -1)
    kato = ref.kato(fv[None], np.asarray(fi)[None], image_alpha[None], grad_alpha[None], EPS)[0]
    kato_v = jax.vjp(lambda v: nr.vertices_to_faces(v, f), v)[1](jnp.asarray(kato))[0]
    assert np.abs(kato).sum() > 0 and np.abs(np.asarray(want[0])).sum() > 0
    for a, b in zip(got, (want[0] + kato_v, want[1], want[2]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(np.asarray(b)).max())


def test_constant_per_face_shader_has_the_texture_cube_gradients():
    v, f = projected_mesh(11)
    rng = np.random.default_rng(12)
    colours = jnp.asarray(rng.uniform(size=(f.shape[0], 3)), jnp.float32)
    grads = [
        jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(16, 16, 3), (16, 16), (16, 16)]
    ]
    bg = (0.2, 0.3, 0.4)

    def shaded(fv, colours):
        shader = lambda frags, c: c[jnp.maximum(frags.face_index, 0)]  # noqa: E731
        return nr.rasterize_shaded(fv, shader, (colours,), 16, eps=EPS, background=bg)

    def cubes(fv, colours):
        t = colours[:, None, None, None, :]
        return nr.rasterize_rgbad(fv, t, 16, eps=EPS, background_color=bg)

    def loss(render, fv, colours):
        out = render(fv, colours)
        return sum(jnp.sum(m * g) for m, g in zip(out, grads, strict=True))

    fv = nr.vertices_to_faces(v, f)
    for a, b in zip(shaded(fv, colours), cubes(fv, colours), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    got = jax.jit(jax.grad(partial(loss, shaded), argnums=(0, 1)))(fv, colours)
    want = jax.jit(jax.grad(partial(loss, cubes), argnums=(0, 1)))(fv, colours)
    assert np.abs(np.asarray(want[0])).sum() > 0
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# The Renderer's shader path: world meshes, fill_back, lighting, load_mesh.
CUBE_QUADS = [(4, 6, 7, 5), (0, 1, 3, 2), (2, 3, 7, 6), (0, 4, 5, 1), (1, 5, 7, 3), (0, 2, 6, 4)]
CUBE_VERTICES = jnp.asarray(np.indices((2, 2, 2)).reshape(3, -1).T - 0.5, jnp.float32)
CUBE_FACES = jnp.asarray(
    [(a, b, c) for a, b, c, d in CUBE_QUADS] + [(a, c, d) for a, b, c, d in CUBE_QUADS], jnp.int32
)
SIDE_COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8
)
EYES = jnp.asarray([[2.0, 1.5, -2.5], [-2.2, -1.0, 2.0], [0.5, 3.0, 0.8]], jnp.float32)


def cube_side(face):
    return face % 6  # faces 0-5 and 6-11 are the two halves of the six quads


@pytest.mark.versions
def test_renderer_shader_with_five_channels_vmaps_over_eyes_and_differentiates():
    rng = np.random.default_rng(13)
    features = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 2, size=5), jnp.float32)
    r = nr.Renderer(image_size=16)
    shader = five_channel_shader(CUBE_FACES)

    def render(v, features, scale, eye):
        return r.render(v, CUBE_FACES, shader=shader, shader_args=(features, scale), eye=eye)

    views = jax.jit(jax.vmap(render, in_axes=(None, None, None, 0)))
    images = views(CUBE_VERTICES, features, scale, EYES)
    rgb, depth, alpha = images
    assert rgb.shape == (3, 16, 16, 5) and alpha.shape == depth.shape == (3, 16, 16)
    one = jax.jit(render)(CUBE_VERTICES, features, scale, EYES[1])
    for a, b in zip(one, images, strict=True):
        np.testing.assert_allclose(a, b[1], atol=1e-5)
    g = jnp.asarray(rng.normal(size=rgb.shape), jnp.float32)

    def loss(v, features, scale):
        return jnp.sum(views(v, features, scale, EYES)[0] * g)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(CUBE_VERTICES, features, scale)
    for grad in grads:
        assert np.isfinite(grad).all() and np.abs(np.asarray(grad)).sum() > 0
    # The scale's gradient is exact: the image is linear in it.
    per_unit = views(CUBE_VERTICES, features, jnp.ones(5), EYES)[0]
    want = np.sum(np.asarray(per_unit * g), axis=(0, 1, 2))
    np.testing.assert_allclose(grads[2], want, rtol=1e-4)


def test_renderer_constant_per_face_shader_equals_texture_cubes():
    rng = np.random.default_rng(14)
    colours = jnp.asarray(rng.uniform(size=(12, 3)), jnp.float32)
    r = nr.Renderer(
        image_size=16, light_direction=(0.3, 1.0, -0.6), background_color=(0.1, 0.2, 0.3)
    )
    grads = [
        jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(16, 16, 3), (16, 16), (16, 16)]
    ]

    def lit(frags, v, c):
        """The face's colour under the Renderer's flat lighting, from the face's own side."""
        face = jnp.maximum(frags.face_index, 0)
        n = nr.face_normals(v, CUBE_FACES)[face]
        n = jnp.where(frags.back[..., None], -n, n)
        light = nr.lambert(
            n,
            r.light_intensity_ambient,
            r.light_intensity_directional,
            r.light_color_ambient,
            r.light_color_directional,
            r.light_direction,
        )
        return c[face] * light

    def loss(v, c, use_shader):
        if use_shader:
            out = r.render(v, CUBE_FACES, shader=lit, shader_args=(v, c), eye=EYES[0])
        else:
            out = r.render(v, CUBE_FACES, c[:, None, None, None, :], eye=EYES[0])
        return sum(jnp.sum(m * g) for m, g in zip(out, grads, strict=True)), out

    (_, got), g_got = jax.jit(
        jax.value_and_grad(partial(loss, use_shader=True), argnums=(0, 1), has_aux=True)
    )(CUBE_VERTICES, colours)
    (_, want), g_want = jax.jit(
        jax.value_and_grad(partial(loss, use_shader=False), argnums=(0, 1), has_aux=True)
    )(CUBE_VERTICES, colours)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(np.asarray(g_want[0])).sum() > 0
    for a, b in zip(g_got, g_want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(np.asarray(b)).max())


def textured_cube(tmp_path):
    """A cube OBJ whose side s shows region s of a 3 x 2 grid of colours (row 0 at the top), its
    UVs inset 4 texels so that bilinear sampling stays inside the region; read by load_mesh."""
    image = np.zeros((96, 64, 3), np.uint8)
    uvs = np.zeros((12, 3, 2), np.float32)
    for s in range(6):
        row, col = divmod(s, 2)
        image[32 * row : 32 * row + 32, 32 * col : 32 * col + 32] = SIDE_COLOURS[s]
        u0, u1 = (32 * col + 4) / 64, (32 * col + 28) / 64
        v0, v1 = 1 - (32 * row + 28) / 96, 1 - (32 * row + 4) / 96
        quad = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
        uvs[s], uvs[6 + s] = quad[[0, 1, 2]], quad[[0, 2, 3]]
    path = tmp_path / "cube.obj"
    nr.save_obj(path, CUBE_VERTICES, CUBE_FACES, uvs=uvs, texture=image)
    return nr.load_mesh(path, normalization=False)


# Not trilinear: mip levels of a texture atlas blend neighbouring regions (as on any GPU).
@pytest.mark.parametrize("filter", ["nearest", "bilinear"])
def test_uv_textured_cube_shows_its_six_texture_regions(tmp_path, filter):
    mesh = textured_cube(tmp_path)
    r = nr.Renderer(
        image_size=32,
        anti_aliasing=False,
        light_intensity_ambient=1.0,
        light_intensity_directional=0.0,
    )
    shader, args = nr.mesh_shader(mesh, r, filter=filter)
    face_id = lambda frags: (frags.face_index + 1)[..., None].astype(jnp.float32)  # noqa: E731

    @jax.jit
    def views(mesh, args):
        def view(eye):
            rgb = r.render(mesh.vertices, mesh.faces, shader=shader, shader_args=args, eye=eye)[0]
            return rgb, r.render(mesh.vertices, mesh.faces, shader=face_id, eye=eye)[0][..., 0]

        return jax.lax.map(view, EYES)

    seen: set[int] = set()
    for rgb, faces in zip(*(np.asarray(x) for x in views(mesh, args)), strict=True):
        covered = faces > 0
        assert covered.sum() > 80
        want = SIDE_COLOURS[cube_side(faces.astype(int) - 1)] / 255.0
        np.testing.assert_allclose(rgb[covered], want[covered], atol=1e-5)
        np.testing.assert_array_equal(rgb[~covered], 0.0)
        seen |= {cube_side(int(f) - 1) for f in faces[covered]}
    assert seen == set(range(6))  # every side was checked


@pytest.mark.versions
def test_vertex_normals_match_numpy_area_weighted_normals():
    v, f = projected_mesh(15)
    fv = np.asarray(v, np.float64)[np.asarray(f)]
    n = np.cross(fv[:, 0] - fv[:, 1], fv[:, 2] - fv[:, 1])
    want = np.zeros((v.shape[0], 3))
    for face, normal in zip(np.asarray(f), n, strict=True):
        want[face] += normal
    length = np.linalg.norm(want, axis=1, keepdims=True)
    want = np.where(length > 0, want / np.where(length > 0, length, 1), 0)
    np.testing.assert_allclose(nr.vertex_normals(v, f), want, atol=1e-5)


def square_mesh(tmp_path):
    """A square in the z = 0 plane, written and read back as an OBJ file: (vertices, faces, mesh)."""
    vertices = jnp.array(
        [[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], jnp.float32
    )
    faces = jnp.array([[0, 1, 2], [0, 2, 3]], jnp.int32)
    path = tmp_path / "square.obj"
    nr.save_obj(path, vertices, faces)
    return vertices, faces, nr.load_mesh(path, normalization=False)


def test_smooth_shading_of_a_flat_mesh_equals_flat_and_normals_mode(tmp_path):
    # A square in the z = 0 plane seen from the front: one normal everywhere.
    vertices, faces, mesh = square_mesh(tmp_path)
    r = nr.Renderer(image_size=16, light_direction=(0.2, 0.5, -1.0), eye=(0.0, 0.0, -2.0))
    flat, smooth = (
        jax.jit(lambda a, s=s: r.render(mesh.vertices, mesh.faces, shader=s, shader_args=a)[0])(a)
        for s, a in (nr.mesh_shader(mesh, r, "flat"), nr.mesh_shader(mesh, r, "smooth"))
    )
    np.testing.assert_allclose(smooth, flat, atol=1e-6)
    assert np.asarray(flat).max() > 0
    shader, args = nr.mesh_shader(mesh, r, output="normals")
    rgb, _, alpha = r.render(mesh.vertices, mesh.faces, shader=shader, shader_args=args)
    inside = np.asarray(alpha) == 1
    n = np.asarray(nr.face_normals(vertices, faces))[0]
    seen = np.where(np.dot(n, [0, 0, -1]) > 0, n, -n)  # the side facing the eye (fill_back)
    np.testing.assert_allclose(
        np.asarray(rgb)[inside], np.broadcast_to(0.5 * (seen + 1), (inside.sum(), 3)), atol=1e-6
    )


def numpy_blinn_phong(n, v, d, shininess, intensity, color):
    n, v, d = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (n, v, d))
    h = d + v
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    cos_h = np.sum(n * h, -1)
    lit = (np.sum(n * d, -1) > 0) & (cos_h > 0)
    return (intensity * np.where(lit, np.maximum(cos_h, 0) ** shininess, 0))[..., None] * color


@pytest.mark.versions
def test_blinn_phong_matches_numpy_reference():
    rng = np.random.default_rng(12)
    n, v = rng.normal(size=(2, 50, 3))
    d = np.array([0.3, 1.0, -0.4])
    color = np.array([1.0, 0.5, 0.25])
    got = nr.blinn_phong(n, v, d, 8.0, 0.7, color)
    np.testing.assert_allclose(got, numpy_blinn_phong(n, v, d, 8.0, 0.7, color), atol=1e-5)
    assert np.asarray(got).max() > 0 and (np.asarray(got) == 0).any()
    with pytest.raises(ValueError, match="shininess"):
        nr.blinn_phong(n, v, d, 0.0)


def test_specular_highlight_of_a_plane_seen_from_the_camera(tmp_path):
    # A square facing the eye, lit from the eye's side: every pixel adds the Blinn-Phong term of
    # its own surface point (found by interpolating the vertices), brightest in the middle.
    vertices, faces, mesh = square_mesh(tmp_path)
    eye = np.array([0.0, 0.0, -2.0])
    r = nr.Renderer(image_size=32, anti_aliasing=False, light_direction=(0, 0, -1.0), eye=eye)

    def render(shader, args):
        return np.asarray(r.render(mesh.vertices, mesh.faces, shader=shader, shader_args=args)[0])

    plain = render(*nr.mesh_shader(mesh, r))
    shiny = render(*nr.mesh_shader(mesh, r, specular=0.8, shininess=16.0))
    where = render(lambda fr, m: nr.interpolate(m.vertices, m.faces, fr), (mesh,))
    _, _, alpha = r.render(mesh.vertices, mesh.faces, shader=lambda fr: fr.bary)
    inside = np.asarray(alpha) == 1
    assert inside.sum() > 50
    want = numpy_blinn_phong(
        np.array([0, 0, -1.0]), eye - where[inside], np.array([0, 0, -1.0]), 16.0, 0.8, np.ones(3)
    )
    np.testing.assert_allclose(shiny[inside] - plain[inside], want, atol=1e-5)
    highlight = (shiny - plain)[..., 0]
    assert highlight[15:17, 15:17].min() > 0.75 and highlight[inside].min() < highlight.max()
    with pytest.raises(ValueError, match="specular"):
        nr.mesh_shader(mesh, r, specular=-1.0)


def sphere_mesh(tmp_path):
    """The icosphere, written and read back as an OBJ file (no vn lines)."""
    path = tmp_path / "sphere.obj"
    nr.save_obj(path, *nr.data.icosphere(2))
    return nr.load_mesh(path, normalization=False)


def test_smooth_shading_right_handed_is_lit_from_outside(tmp_path):
    # Smooth shading once took vertex normals unturned with handedness="right": a sphere lit from
    # above came out darker on top than at the bottom.
    mesh = sphere_mesh(tmp_path)
    assert mesh.normals is None
    for handedness in ("left", "right"):
        r = nr.Renderer(
            image_size=32,
            eye=(0.0, 0.0, -3.0),
            handedness=handedness,
            light_intensity_ambient=0.0,
            light_intensity_directional=1.0,
        )
        for shading in ("flat", "smooth"):
            s, a = nr.mesh_shader(mesh, r, shading)
            rgb = np.asarray(r.render(mesh.vertices, mesh.faces, shader=s, shader_args=a)[0])
            top, bottom = rgb[9, 16, 0], rgb[23, 16, 0]
            assert top > 0.3 and bottom < 0.05, (handedness, shading, top, bottom)
        s, a = nr.mesh_shader(mesh, r, "smooth", output="normals")
        n = 2 * np.asarray(r.render(mesh.vertices, mesh.faces, shader=s, shader_args=a)[0]) - 1
        # Outward: up at the top, towards the eye (-z) in the middle.
        assert n[9, 16, 1] > 0.5 and n[16, 16, 2] < -0.9, (handedness, n[9, 16], n[16, 16])


def test_uint8_images_raise_instead_of_colours_up_to_255(tmp_path):
    image = np.full((4, 4, 3), 200, np.uint8)
    uv = np.full((2, 2, 2), 0.5, np.float32)
    with pytest.raises(TypeError, match=r"image must hold float colours.*/ 255"):
        nr.sample_texture(image, uv)
    vertices, faces, mesh = square_mesh(tmp_path)
    r = nr.Renderer(image_size=8, eye=(0.0, 0.0, -2.0))
    with pytest.raises(TypeError, match="textures must hold float colours"):
        r.render(vertices, faces, np.full((2, 2, 2, 2, 3), 200, np.uint8))
    with pytest.raises(TypeError, match="vertex_colors must hold float colours"):
        r.render(vertices, faces, vertex_colors=np.full((4, 3), 200, np.uint8))
    with pytest.raises(TypeError, match="textures must hold float colours"):
        nr.lighting(vertices[faces], np.ones((2, 1, 1, 1, 3), np.uint8))
    # A loaded mesh's image replaced by an imread array (uint8).
    nr.save_obj(
        tmp_path / "textured.obj",
        vertices,
        faces,
        uvs=np.zeros((2, 3, 2), np.float32),
        texture=image.astype(np.float32),
    )
    textured = nr.load_mesh(tmp_path / "textured.obj", normalization=False)
    assert textured.images[0] is not None and textured.images[0].dtype == jnp.float32
    raw = dataclasses.replace(textured, images=(image,))
    s, a = nr.mesh_shader(raw, r)
    with pytest.raises(TypeError, match=r"mesh.images\[0\] must hold float colours"):
        r.render(raw.vertices, raw.faces, shader=s, shader_args=a)


def test_specular_uses_the_per_call_eye(tmp_path):
    # The highlight was placed for the Renderer's own eye field, not the eye given to render.
    mesh = sphere_mesh(tmp_path)
    eye = np.array([1.5, 0.5, -2.5], np.float32)
    fixed = nr.Renderer(image_size=32, eye=eye, light_direction=(0.0, 0.0, -1.0))
    per_call = nr.Renderer(image_size=32, light_direction=(0.0, 0.0, -1.0))

    def render(r, **camera):
        s, a = nr.mesh_shader(mesh, r, "smooth", specular=0.8)
        return r.render(mesh.vertices, mesh.faces, shader=s, shader_args=a, **camera)[0]

    want = np.asarray(render(fixed))
    np.testing.assert_allclose(render(per_call, eye=eye), want, atol=1e-6)
    jitted = jax.jit(lambda e: render(per_call, eye=e))(eye)
    np.testing.assert_allclose(jitted, want, atol=1e-5)
    # The default eye's highlight is elsewhere: the test can tell them apart.
    assert np.abs(np.asarray(render(per_call)) - want).max() > 0.2


def numpy_point_lights(n, x, location, color, attenuation):
    """Per light l: (unit direction from x to it [..., L, 3], colour / attenuation [..., L, 3])."""
    to = location[None] - x[:, None]
    d = np.linalg.norm(to, axis=-1, keepdims=True)
    c0, c1, c2 = attenuation[..., 0:1], attenuation[..., 1:2], attenuation[..., 2:3]
    return to / d, color / (c0 + c1 * d + c2 * d * d)


@pytest.mark.versions
def test_point_lights_match_numpy_reference():
    rng = np.random.default_rng(5)
    n, x = rng.normal(size=(2, 40, 3))
    v = rng.normal(size=(40, 3))
    location = rng.normal(size=(3, 3)) * 3
    color = rng.uniform(0.2, 1.0, (3, 3))
    attenuation = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.0], [0.2, 0.0, 0.4]])
    lights = nr.PointLights(location, color, attenuation)
    towards, radiance = numpy_point_lights(n, x, location, color, attenuation)
    un = n / np.linalg.norm(n, axis=-1, keepdims=True)
    cos = np.maximum(np.sum(un[:, None] * towards, -1), 0)  # [N, L]
    direction = np.array([0.2, 1.0, -0.3])
    directional = 0.3 + 0.6 * np.maximum(un @ (direction / 1.0), 0)
    want = directional[:, None] + np.sum(radiance * cos[..., None], axis=1)
    lambert = jax.jit(partial(nr.lambert, direction=direction, point_lights=lights, positions=x))
    got = lambert(n, 0.3, 0.6)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (cos == 0).any() and (cos > 0).any()
    # Specular: the Blinn-Phong term of each light, none from the directional one.
    spec = sum(
        numpy_blinn_phong(n, v, towards[:, k], 8.0, 0.7, np.ones(3)) * radiance[:, k]
        for k in range(3)
    )
    got = jax.jit(partial(nr.blinn_phong, point_lights=lights, positions=x))(n, v, None, 8.0, 0.7)
    np.testing.assert_allclose(got, spec, atol=1e-5)
    # Gradients reach the lights.
    g = jax.jit(
        jax.grad(lambda loc: nr.lambert(n, point_lights=nr.PointLights(loc), positions=x).sum())
    )
    assert np.abs(g(jnp.asarray(location))).max() > 0
    with pytest.raises(ValueError, match="positions"):
        nr.lambert(n, point_lights=lights)


def test_mesh_shader_point_light_from_obj(tmp_path):
    # A square facing the eye lit by one point light in front of it, ambient and directional
    # light off: each pixel is colour / attenuation * cos at its surface point. vmapped over two
    # light positions.
    vertices, faces, mesh = square_mesh(tmp_path)
    r = nr.Renderer(
        image_size=16,
        anti_aliasing=False,
        eye=(0.0, 0.0, -2.0),
        light_intensity_ambient=0.0,
        light_intensity_directional=0.0,
    )
    color, attenuation = np.array([[1.0, 0.5, 0.25]]), np.array([1.0, 0.5, 0.0])

    def one(loc):
        s, a = nr.mesh_shader(mesh, r, point_lights=nr.PointLights(loc, color, attenuation))
        return r.render(mesh.vertices, mesh.faces, shader=s, shader_args=a)[0]

    locations = np.array([[[0.2, 0.1, -0.5]], [[-0.2, 0.0, -0.5]]])
    out = np.asarray(jax.jit(jax.vmap(one))(locations))
    where = r.render(
        mesh.vertices,
        mesh.faces,
        shader=lambda fr, m: jnp.concatenate(
            [nr.interpolate(m.vertices, m.faces, fr), jnp.ones_like(fr.depth)[..., None]], -1
        ),
        shader_args=(mesh,),
    )[0]
    inside = np.asarray(where)[..., 3] == 1
    assert inside.sum() > 20
    for b in range(2):
        towards, radiance = numpy_point_lights(
            None, np.asarray(where)[inside][:, :3], locations[b], color, attenuation
        )
        cos = np.maximum(-towards[:, 0, 2], 0)  # the lit side's normal is -z (towards the eye)
        np.testing.assert_allclose(out[b][inside], radiance[:, 0] * cos[:, None], atol=1e-5)
    assert out[0][inside].max() > 0.5 and np.abs(out[1] - out[0]).max() > 0.05
