"""Batches: vmap over views, meshes, textures and lights; no copies of shared operands; meshes of
different sizes padded with -1 faces (nmr_jax/_partition.py, rasterize.vertices_to_faces)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr

SIZE = 16
VIEWS = 3


@pytest.fixture(scope="module")
def scene():
    vertices, faces = nr.data.teapot()
    rng = np.random.default_rng(0)
    textures = jnp.asarray(rng.uniform(size=(faces.shape[0], 2, 2, 2, 3)), jnp.float32)
    eyes = nr.get_points_from_angles(2.732, 30.0, jnp.arange(VIEWS) * 120.0 + 10.0)
    return vertices, faces, textures, eyes


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def assert_trees_close(got, want, rtol=1e-5):
    """Leaves equal to ``rtol`` of their largest magnitude."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(jnp.abs(w).max()) or 1.0
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=rtol * scale, rtol=0)


@pytest.mark.parametrize("mapped", ["eye", "vertices", "textures", "light_direction"])
def test_vmap_equals_loop(scene, mapped):
    vertices, faces, textures, eyes = scene
    batch = {
        "eye": eyes,
        "vertices": vertices + 0.1 * jnp.arange(VIEWS)[:, None, None],
        "textures": textures * jnp.linspace(0.2, 1.0, VIEWS)[:, None, None, None, None, None],
        "light_direction": jnp.eye(3),
    }[mapped]

    def render(x):
        kw = dict(
            vertices=vertices, textures=textures, eye=eyes[0], light_direction=(0.0, 1.0, 0.0)
        )
        kw[mapped] = x
        r = nr.Renderer(image_size=SIZE, light_direction=kw.pop("light_direction"))
        return r.render(kw.pop("vertices"), faces, kw.pop("textures"), **kw)

    # Both sides eager: jit may round the camera math differently (1e-5), which moves Kato's
    # gradients (next test) by more; here only batching may make a difference.
    batched = jax.vmap(render)(batch)
    assert_trees_close(batched, stack([render(x) for x in batch]))
    assert not np.allclose(batched[0][0], batched[0][1])  # the views do differ


@pytest.mark.versions
def test_jit_vmap_over_light_direction_equals_loop(scene):
    # Regression: jaxlib 0.10.2's YNNPACK fusion gave lit textures off by up to 0.5 here while the
    # lighting reduced n . d with a broadcast multiply and sum.
    vertices, faces, textures, _ = scene
    tex = lambda d: nr.lighting(nr.vertices_to_faces(vertices, faces), textures, direction=d)  # noqa: E731
    directions = jnp.eye(3)
    assert_trees_close(jax.jit(jax.vmap(tex))(directions), stack([tex(d) for d in directions]))


def test_nested_vmap_equals_loop(scene):
    vertices, faces, textures, eyes = scene
    r = nr.Renderer(image_size=SIZE)
    grid = jnp.stack([eyes, eyes * 1.2])  # [2, VIEWS, 3]
    render = lambda e: r.render_silhouettes(vertices, faces, eye=e)  # noqa: E731
    nested = jax.vmap(jax.vmap(render))(grid)
    assert nested.shape == (2, VIEWS, SIZE, SIZE)
    assert_trees_close(nested, stack([stack([render(e) for e in row]) for row in grid]))


@pytest.mark.versions
def test_vmap_of_grad_and_grad_of_vmap_equal_loop(scene):
    vertices, faces, textures, eyes = scene
    r = nr.Renderer(image_size=SIZE)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(VIEWS, SIZE, SIZE, 3)), jnp.float32)

    def loss(v, tex, e, w):
        rgb, depth, alpha = r.render(v, faces, tex, eye=e)
        return jnp.sum(rgb * w) + jnp.sum(alpha * w[..., 0]) + 0.01 * jnp.sum(depth * w[..., 1])

    grad = jax.grad(loss, argnums=(0, 1, 2))
    loop = [jax.jit(grad)(vertices, textures, eyes[i], w[i]) for i in range(VIEWS)]
    per_view = jax.jit(jax.vmap(grad, in_axes=(None, None, 0, 0)))(vertices, textures, eyes, w)
    assert_trees_close(per_view, stack(loop))

    total = lambda v, tex, e: jnp.sum(jax.vmap(loss, (None, None, 0, 0))(v, tex, e, w))  # noqa: E731
    summed = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(vertices, textures, eyes)
    want = [sum(g[k] for g in loop) for k in range(2)] + [stack([g[2] for g in loop])]
    assert_trees_close(summed, want)
    assert float(jnp.abs(summed[0]).max()) > 0 and float(jnp.abs(summed[1]).max()) > 0


def test_vmap_over_views_does_not_copy_the_shared_mesh(scene):
    """The kernels get the shared faces and textures with a batch dim of 1, and nothing in the
    program holds VIEWS copies of them."""
    vertices, faces, textures, eyes = scene
    r = nr.Renderer(image_size=SIZE)
    render = jax.vmap(lambda e: r.render(vertices, faces, textures, eye=e))
    hlo = jax.jit(render).lower(eyes).as_text()
    f = 2 * faces.shape[0]  # fill_back doubles the face list
    calls: dict[str, str] = {}  # operand types of each kernel's calls, all calls joined
    for m in re.finditer(
        r"custom_call @(nmr_\w+?)(?:_cuda_host)?\((?:[^)]*)\).*?: \(([^)]*)\)", hlo
    ):
        calls[m.group(1)] = calls.get(m.group(1), "") + m.group(2) + "; "
    # The gather of the projected (per-view) vertices gets the faces with a batch dim of 1; the
    # gather of the world vertices for lighting is not batched at all.
    assert f"tensor<1x{f}x3xi32>" in calls["nmr_gather_faces"]  # faces
    assert f"tensor<1x{f}x2x2x2x3xf32>" in calls["nmr_sample_textures"]  # lit textures
    # Projected, one per view: the near-plane clipping's two pieces per face.
    assert f"tensor<{VIEWS}x{2 * f}x3x3xf32>" in calls["nmr_rasterize"]
    assert f"tensor<{VIEWS}x{f}x2x2x2x3xf32>" not in hlo
    assert f"tensor<{VIEWS}x{f}x3xi32>" not in hlo


def _subset(vertices, faces, n):
    """The first n faces of a mesh, with only the vertices they use, renumbered."""
    used, inverse = np.unique(np.asarray(faces[:n]), return_inverse=True)
    return jnp.asarray(vertices)[used], jnp.asarray(inverse.reshape(n, 3), jnp.int32)


@pytest.mark.versions
def test_padded_meshes_render_as_if_alone_and_padding_gets_no_gradient(scene):
    vertices, faces, textures, _ = scene
    big_v, big_f = _subset(vertices, faces, 1000)
    small_v, small_f = _subset(vertices, faces, 400)
    nv, nf = small_v.shape[0], small_f.shape[0]
    # Padding vertices far away and padding textures non-zero: neither may matter.
    batch_v = jnp.stack([big_v, jnp.concatenate([small_v, jnp.full((len(big_v) - nv, 3), 7.0)])])
    batch_f = jnp.stack(
        [big_f, jnp.concatenate([small_f, jnp.full((1000 - nf, 3), -1, jnp.int32)])]
    )
    batch_t = jnp.stack([textures[:1000], textures[:1000]])
    r = nr.Renderer(image_size=SIZE, eye=(1.0, 2.0, -2.5))
    w = jnp.asarray(np.random.default_rng(2).normal(size=(2, SIZE, SIZE, 3)), jnp.float32)

    def loss(v, f, t, w):
        images = rgb, depth, alpha = r.render(v, f, t)
        loss = jnp.sum(rgb * w) + jnp.sum(alpha * w[..., 0]) + 0.01 * jnp.sum(depth * w[..., 1])
        return loss, images

    grad = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
    (gv, gt), images = grad(batch_v, batch_f, batch_t, w)
    for i, (v, f) in enumerate([(big_v, big_f), (small_v, small_f)]):
        grads, alone = grad(v, f, textures[: len(f)], w[i])
        for got, want in zip(images, alone, strict=True):
            # Equal but for edge pixels: on a GPU, XLA may fuse batched camera math differently.
            assert np.mean(np.asarray(got[i]) != np.asarray(want)) < 0.01
        assert_trees_close((gv[i, : len(v)], gt[i, : len(f)]), grads)
    assert float(jnp.abs(gv[1, :nv]).max()) > 0 and float(jnp.abs(gt[1, :nf]).max()) > 0
    assert not np.any(gv[1, nv:]) and not np.any(gt[1, nf:])
    assert float(images[2][1].sum()) < float(images[2][0].sum())  # the small mesh is smaller


def test_padding_rows_are_all_minus_one():
    vertices, faces = jnp.zeros((4, 3)), jnp.array([[0, 1, 2], [-1, -1, -1], [1, -1, 2]])
    with pytest.raises(ValueError, match=r"faces\[2\] = \[1, -1, 2\]"):
        nr.vertices_to_faces(vertices, faces)
    with pytest.raises(ValueError, match=r"faces\[0\]"):
        nr.vertices_to_faces(vertices, jnp.array([[-2, -2, -2]]))
    # Under jit the values are unknown when tracing: the kernel's range check names faces.
    with pytest.raises(jax.errors.JaxRuntimeError, match="faces holds vertex index -1"):
        jax.jit(nr.vertices_to_faces)(vertices, faces).block_until_ready()
    good = faces[:2]
    fv = nr.vertices_to_faces(vertices + 1.0, good)
    np.testing.assert_array_equal(fv[1], 0.0)
    np.testing.assert_array_equal(fv[0], 1.0)
    # Faces closed over by a jitted function are constants: checked when tracing, not traced.
    jitted = jax.jit(lambda v: nr.vertices_to_faces(v, good))(vertices + 1.0)
    np.testing.assert_array_equal(jitted, fv)
    with pytest.raises(ValueError, match=r"faces\[2\]"):
        jax.jit(lambda v: nr.vertices_to_faces(v, faces))(vertices)
