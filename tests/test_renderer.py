"""Renderer against the original's golden images, and gradients through every parameter."""

from __future__ import annotations

import dataclasses

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from tests.conftest import reference_data


@pytest.fixture(scope="module")
def teapot():
    data = reference_data()
    return nr.load_obj(data / "tests/data/teapot.obj")


def white(faces, t=4):
    return jnp.ones((faces.shape[0], t, t, t, 3), jnp.float32)


def test_silhouette_matches_blender_mask(teapot):
    v, f = teapot
    alpha = nr.Renderer(anti_aliasing=False).render_silhouettes(v, f)
    png = iio.imread(reference_data() / "tests/data/teapot_blender.png")
    mask = png.min(-1) != 255
    pred = np.asarray(alpha) > 0
    iou = (mask & pred).sum() / (mask | pred).sum()
    assert iou >= 0.999  # reached: 1.0 (identical masks)


def test_depth_matches_original(teapot):
    v, f = teapot
    depth = np.asarray(nr.Renderer(anti_aliasing=False).render_depth(v, f))
    fg = depth < 100
    norm = np.where(fg, (depth - depth[fg].min()) / (depth[fg].max() - depth[fg].min()), 0)
    png = iio.imread(reference_data() / "tests/data/test_depth.png").astype(np.float32) / 255
    np.testing.assert_allclose(norm, png, atol=1e-2)  # reached: max |diff| 0.0028 (8-bit PNG)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("test_rasterize1.png", dict(anti_aliasing=False)),
        ("test_rasterize2.png", dict(eye=(1.0, 1.0, -2.7))),
    ],
)
def test_rgb_matches_original(teapot, name, kwargs):
    v, f = teapot
    rgb, _, _ = nr.Renderer(**kwargs).render(v, f, white(f))
    png = iio.imread(reference_data() / "tests/data" / name).astype(np.float32) / 255
    # Reached: 0.00035 and 0.00017; the residual is 8-bit quantisation of the PNGs.
    assert np.abs(np.asarray(rgb) - png[..., :3]).mean() <= 1 / 255


def small_mesh():
    v, f = nr.data.teapot()
    return v, f


def test_shapes_with_and_without_batch_dims():
    v, f = small_mesh()
    r = nr.Renderer(image_size=32)
    rgb, depth, alpha = r.render(v, f, white(f, 2))
    assert rgb.shape == (32, 32, 3) and depth.shape == alpha.shape == (32, 32)
    rgb2, _, _ = r.render(v[None, None], f, white(f, 2))
    assert rgb2.shape == (1, 1, 32, 32, 3)
    np.testing.assert_allclose(rgb2[0, 0], rgb, atol=1e-6)
    assert nr.Renderer(image_size=(24, 40)).render_silhouettes(v, f).shape == (24, 40)


def test_renderer_is_immutable_and_a_pytree():
    r = nr.Renderer(image_size=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.image_size = 64  # type: ignore[misc]
    leaves, tree = jax.tree_util.tree_flatten(r)
    assert jax.tree_util.tree_unflatten(tree, leaves) == r
    with pytest.raises(ValueError, match="camera_mode"):
        nr.Renderer(camera_mode="orbit")  # type: ignore[arg-type]


def test_jit_grad_through_render_for_every_parameter():
    v, f = small_mesh()
    tex = white(f, 2) * 0.7
    r = nr.Renderer(image_size=32)
    target = jnp.full((32, 32, 3), 0.3)

    def loss(v, tex, renderer, eye):
        rgb, depth, alpha = renderer.render(v, f, tex, eye=eye)
        return jnp.sum((rgb - target) ** 2) + 1e-3 * jnp.sum(alpha)

    eye = jnp.array([0.3, 0.5, -2.6])
    gv, gt, gr, ge = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(v, tex, r, eye)
    for name, g in [("vertices", gv), ("textures", gt), ("eye", ge)]:
        assert np.isfinite(g).all() and np.abs(g).sum() > 0, name
    for name in ("light_intensity_ambient", "light_intensity_directional", "light_direction"):
        g = np.asarray(getattr(gr, name))
        assert np.isfinite(g).all() and np.abs(g).sum() > 0, name


def test_jit_grad_through_projection_camera():
    v, f = small_mesh()
    K = jnp.array([[500.0, 0, 256], [0, 500.0, 256], [0, 0, 1]])
    R = jnp.eye(3)
    t = jnp.array([0.0, 0.0, 3.0])
    r = nr.Renderer(image_size=32, camera_mode="projection", orig_size=512, K=K, R=R, t=t)
    alpha = r.render_silhouettes(v, f)
    assert 0 < float(alpha.mean()) < 1

    def loss(K, R, t):
        rgb, _, _ = r.render(v, f, white(f, 2), K=K, R=R, t=t)
        return jnp.sum(rgb * jnp.linspace(0, 1, 32)[:, None])

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(K, R, t)
    for g in grads:
        assert np.isfinite(g).all() and np.abs(g).sum() > 0


def test_vmap_over_eyes_equals_loop():
    v, f = small_mesh()
    r = nr.Renderer(image_size=32)
    eyes = nr.get_points_from_angles(2.732, 30.0, jnp.array([0.0, 90.0, 180.0]))
    batched = jax.jit(jax.vmap(lambda e: r.render_silhouettes(v, f, eye=e)))(eyes)
    for i in range(3):
        np.testing.assert_allclose(batched[i], r.render_silhouettes(v, f, eye=eyes[i]), atol=1e-6)
    assert not np.allclose(batched[0], batched[1])
