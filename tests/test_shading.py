"""Programmable shading: fragments, interpolate and sample_texture against numpy and jnp
references, and the shader path's gradients (Kato's for the vertices, autodiff for the rest)."""

from __future__ import annotations

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

    def value(v, mask):
        return jnp.sum(nr.interpolate(attributes, f, fragments_of(v, f)) * mask[..., None])

    inner = np.ones((SIZE, SIZE), bool)
    for k in range(9):
        for s in (-h, h):
            inner &= np.asarray(fragments_of(v.at[k // 3, k % 3].add(s), f).face_index) == 0
    mask = jnp.asarray(inner, jnp.float32)
    assert inner.sum() > 100
    grad = jax.grad(value)(v, mask)
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


def test_trilinear_picks_the_mip_level_of_the_footprint():
    rng = np.random.default_rng(8)
    image = jnp.asarray(rng.uniform(size=(16, 16, 3)), jnp.float32)
    half = 0.25 * (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2])
    # A 8x8 grid of pixels over the whole texture: 2 texels per pixel, level 1 exactly, sampled
    # at its texel centres.
    j, i = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    uv = jnp.asarray(np.stack([(i + 0.5) / 8, 1 - (j + 0.5) / 8], -1), jnp.float32)
    np.testing.assert_allclose(nr.sample_texture(image, uv, "trilinear"), half, atol=1e-5)
    # Magnified (a quarter texel per pixel): level 0, bilinear.
    fine = uv[:4, :4] / 4
    np.testing.assert_allclose(
        nr.sample_texture(image, fine, "trilinear"), nr.sample_texture(image, fine), atol=1e-6
    )


FRAGS = nr.Fragments(*(jnp.zeros((4, 4)),) * 5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: nr.sample_texture(jnp.zeros((4, 4)), jnp.zeros((2, 2, 2))), "image"),
        (lambda: nr.sample_texture(jnp.zeros((4, 4, 3)), jnp.zeros((2, 2, 3))), "uv"),
        (lambda: nr.sample_texture(jnp.zeros((4, 4, 3)), jnp.zeros((2, 2, 2)), "cubic"), "filter"),
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


EPS = 1e-3


def five_channel_shader(faces):
    """Per-vertex features [V, 5] interpolated and scaled per channel: reads the vertices
    (through the barycentrics) and its two parameters."""
    return lambda frags, features, scale: nr.interpolate(features, faces, frags) * scale


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
    np.testing.assert_allclose(batched[1], render(v, features, 2 * scale), atol=1e-6)

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
    want = jax.grad(loss, argnums=(0, 1, 2))(v, features, scale)
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
