"""Lighting against its formula; zero-area faces keep finite gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr


@pytest.mark.versions
def test_lighting_formula():
    # Normal of cross(v0 - v1, v2 - v1) for this face is +y, facing the default light.
    face = jnp.array([[[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1.0]]])
    tex = jnp.full((1, 2, 2, 2, 3), 0.5)
    lit = nr.lighting(face, tex, 0.3, 0.6, (1.0, 0.5, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.0))
    np.testing.assert_allclose(lit[0, 0, 0, 0], 0.5 * np.array([0.9, 0.75, 0.3]), rtol=1e-6)
    away = nr.lighting(face, tex, direction=(0.0, -1.0, 0.0))
    np.testing.assert_allclose(away, tex * 0.5, rtol=1e-6)  # ambient only


def test_zero_area_face_gets_ambient_and_finite_gradient():
    face = jnp.zeros((1, 3, 3))
    tex = jnp.ones((1, 1, 1, 1, 3))
    np.testing.assert_allclose(nr.lighting(face, tex), 0.5)
    g = jax.grad(lambda f: jnp.sum(nr.lighting(f, tex)))(face)
    assert np.isfinite(g).all()
