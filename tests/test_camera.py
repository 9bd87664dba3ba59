"""Camera functions against ALGORITHM.md's formulas; finite gradients at singular points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr

pytestmark = pytest.mark.versions  # the second leg runs the whole file


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
