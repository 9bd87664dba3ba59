"""Camera functions against ALGORITHM.md's formulas; finite gradients at singular points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr


def test_look_at_default_eye_puts_origin_on_axis():
    v = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = nr.look_at(v, jnp.array([0.0, 0.0, -2.0]))
    np.testing.assert_allclose(out, [[0, 0, 2], [1, 0, 2], [0, 1, 2]], atol=1e-6)


def test_look_equals_look_at_along_direction():
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    eye = jnp.array([1.0, 2.0, -3.0])
    np.testing.assert_allclose(nr.look(v, eye, -eye), nr.look_at(v, eye), atol=1e-5)


def test_perspective_and_points_from_angles():
    v = jnp.array([[1.0, 2.0, 4.0]])
    t = np.tan(np.radians(30))
    np.testing.assert_allclose(nr.perspective(v), [[1 / (4 * t), 2 / (4 * t), 4]], rtol=1e-6)
    eye = nr.get_points_from_angles(2.0, 30.0, 90.0)
    np.testing.assert_allclose(eye, [2 * np.cos(np.radians(30)), 1.0, 0.0], atol=1e-6)


def test_projection_maps_principal_point_to_centre():
    K = jnp.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    v = jnp.array([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0]])
    out = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.zeros(5), 100)
    np.testing.assert_allclose(out[0], [0, 0, 2], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0, 2], atol=1e-6)  # u = 50 + 25 -> 2*75/100 - 1
    distorted = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.array([0.1, 0, 0, 0, 0]), 100)
    assert distorted[1, 0] > out[1, 0]  # barrel coefficient k1 > 0 pushes points outwards


def test_gradients_finite_when_eye_is_at_target_or_up_parallel():
    v = jnp.ones((3, 3))
    for eye in (jnp.zeros(3), jnp.array([0.0, 2.0, 0.0])):
        g = jax.grad(lambda e: jnp.sum(nr.look_at(v, e)))(eye)
        assert np.isfinite(g).all()


def test_projection_with_non_square_orig_size():
    # Pixel (u, v) of a W x H = 640 x 480 image maps to NDC (2u / W - 1, 1 - 2v / H).
    K = jnp.array([[100.0, 0, 320], [0, 100.0, 240], [0, 0, 1]])
    v = jnp.array([[0.0, 0.0, 2.0], [3.2, 2.4, 1.0]])  # principal point; pixel (640, 480)
    out = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.zeros(5), (480, 640))
    np.testing.assert_allclose(out, [[0, 0, 2], [1, -1, 1]], atol=1e-6)


def ellipsoid(tmp_path):
    """An icosphere squashed along z (its silhouette from above shows the camera's roll),
    written and read back as an OBJ file."""
    v, f = nr.data.icosphere(2)
    nr.save_obj(tmp_path / "ellipsoid.obj", np.asarray(v) * [1.0, 1.0, 0.5], f)
    mesh = nr.load_mesh(tmp_path / "ellipsoid.obj", normalization=False)
    return mesh.vertices, mesh.faces


def test_eye_on_the_up_axis_falls_back_to_z_up(tmp_path):
    # An eye straight above the mesh gave a blank image and a zero gradient.
    v, f = ellipsoid(tmp_path)
    r = nr.Renderer(image_size=32)
    above = r.render_silhouettes(v, f, eye=jnp.array([0.0, 3.0, 0.0]))
    assert 50 < float(above.sum()) < 32 * 32
    # The fallback is the limit of eyes approaching from azimuth 0 (image up = world +z).
    near_limit = r.render_silhouettes(v, f, eye=nr.get_points_from_angles(3.0, 89.99, 0.0))
    assert np.abs(np.asarray(above) - np.asarray(near_limit)).mean() < 0.01
    # Wider than tall: world x (1) across the image, world z (0.5) up it.
    cols, rows = np.asarray(above).sum(0) > 0, np.asarray(above).sum(1) > 0
    assert cols.sum() > 1.5 * rows.sum()
    below = r.render_silhouettes(v, f, eye=jnp.array([0.0, -3.0, 0.0]))
    assert 50 < float(below.sum()) < 32 * 32

    def loss(eye):
        return jnp.sum(r.render_silhouettes(v, f, eye=eye))

    g = jax.jit(jax.grad(loss))(jnp.array([0.0, 3.0, 0.0]))
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    # The same for look_at with another up vector.
    pts = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = nr.look_at(pts, eye=(0.0, 0.0, 2.0), up=(0.0, 0.0, 1.0))
    assert np.all(np.isfinite(out)) and np.abs(np.asarray(out)[:, :2]).max() > 0.5
    with pytest.raises(ValueError, match="eye - at is zero"):
        nr.look_at(pts, eye=(1.0, 2.0, 3.0), at=(1.0, 2.0, 3.0))


def test_eye_at_the_point_looked_at_raises_or_looks_along_z(tmp_path):
    v, f = ellipsoid(tmp_path)
    r = nr.Renderer(image_size=16)
    with pytest.raises(ValueError, match="eye is zero"):
        r.render_silhouettes(v, f, eye=jnp.zeros(3))
    with pytest.raises(ValueError, match="camera_direction is zero"):
        nr.Renderer(camera_mode="look", camera_direction=(0.0, 0.0, 0.0)).render_depth(v, f)
    # Traced, it looks along +z from the eye: the same image as 'look' along +z.
    shifted = v + jnp.array([0.0, 0.0, 3.0])
    traced = jax.jit(lambda e: r.render_silhouettes(shifted, f, eye=e))(jnp.zeros(3))
    look = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0))
    np.testing.assert_array_equal(traced, look.render_silhouettes(shifted, f))
    assert float(traced.sum()) > 10
    g = jax.jit(jax.grad(lambda e: r.render_silhouettes(shifted, f, eye=e).sum()))(jnp.zeros(3))
    assert np.all(np.isfinite(g))
