"""Tests of nmr_jax.data: the shipped Utah teapot and the script that generates it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from nmr_jax._obj import load_obj
from nmr_jax.data import icosphere, teapot, teapot_path

ROOT = Path(__file__).parents[1]
ORIGINAL_TEAPOT = ROOT / ".." / "shared" / "nmr_reference_data" / "examples" / "data" / "teapot.obj"


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Six times the enclosed volume; positive when triangles wind counter-clockwise outside."""
    v0, v1, v2 = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    return float(np.einsum("ij,ij->", v0, np.cross(v1, v2)))


def original_teapot() -> tuple[np.ndarray, np.ndarray]:
    if not ORIGINAL_TEAPOT.is_file():
        pytest.skip(f"reference data not available ({ORIGINAL_TEAPOT})")
    vertices, faces = load_obj(ORIGINAL_TEAPOT)
    return np.asarray(vertices), np.asarray(faces)


@pytest.mark.versions
def test_teapot_mesh():
    vertices, faces = teapot()
    assert vertices.dtype == jnp.float32 and faces.dtype == jnp.int32
    assert vertices.ndim == 2 and vertices.shape[1] == 3
    assert faces.ndim == 2 and faces.shape[1] == 3
    assert 2000 <= len(faces) <= 3000
    assert int(faces.min()) == 0 and int(faces.max()) == len(vertices) - 1
    assert len(np.unique(np.asarray(faces))) == len(vertices)  # every vertex is used


def test_teapot_has_no_degenerate_faces():
    vertices, faces = (np.asarray(a) for a in teapot())
    assert np.all(faces[:, 0] != faces[:, 1])
    assert np.all(faces[:, 1] != faces[:, 2])
    assert np.all(faces[:, 2] != faces[:, 0])
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    # The smallest triangles (at the spout tip) are ~1e-4 in the unit cube; zero area is 0.
    assert np.linalg.norm(np.cross(v1 - v0, v2 - v0), axis=1).min() > 1e-6


def test_teapot_is_normalized():
    vertices = np.asarray(teapot()[0])
    assert np.abs(vertices).max() <= 1.0
    # The longest side (x, spout to handle) spans [-1, 1]; the others are centred.
    np.testing.assert_allclose(vertices[:, 0].min(), -1.0, atol=1e-6)
    np.testing.assert_allclose(vertices[:, 0].max(), 1.0, atol=1e-6)
    np.testing.assert_allclose(vertices.min(0), -vertices.max(0), atol=1e-6)


def test_teapot_is_consistently_wound_outwards():
    vertices, faces = (np.asarray(a) for a in teapot())
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    assert len(np.unique(edges, axis=0)) == len(
        edges
    )  # neighbours traverse shared edges oppositely
    assert signed_volume(vertices, faces) > 0


def test_teapot_matches_the_original_orientation():
    vertices, faces = (np.asarray(a) for a in teapot())
    original_vertices, original_faces = original_teapot()
    assert np.sign(signed_volume(vertices, faces)) == np.sign(
        signed_volume(original_vertices, original_faces)
    )
    # Both are Newell's teapot: the same axes (y up, spout on +x) give the same normalised box.
    np.testing.assert_allclose(vertices.min(0), original_vertices.min(0), atol=1e-3)
    np.testing.assert_allclose(vertices.max(0), original_vertices.max(0), atol=1e-3)
    spout_tip = vertices[vertices[:, 0].argmax()]
    original_spout_tip = original_vertices[original_vertices[:, 0].argmax()]
    np.testing.assert_allclose(spout_tip, original_spout_tip, atol=1e-3)


def test_teapot_path_is_the_shipped_asset():
    path = teapot_path()
    assert path.is_file() and path.suffix == ".obj"
    assert path.stat().st_size < 200_000
    assert "tools/make_teapot.py" in path.read_text().splitlines()[0]


def test_make_teapot_regenerates_the_shipped_file(tmp_path):
    output = tmp_path / "teapot.obj"
    script = ROOT / "tools" / "make_teapot.py"
    subprocess.run([sys.executable, script, "--output", output], check=True, capture_output=True)
    assert output.read_bytes() == teapot_path().read_bytes()


@pytest.mark.versions
@pytest.mark.parametrize("subdivisions", [0, 1, 3])
def test_icosphere_is_a_closed_unit_sphere_wound_outward(subdivisions):
    vertices, faces = (np.asarray(a) for a in icosphere(subdivisions))
    assert faces.shape == (20 * 4**subdivisions, 3) and faces.dtype == np.int32
    assert vertices.shape == (10 * 4**subdivisions + 2, 3) and vertices.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 1.0, rtol=1e-6)
    # Closed: every edge is shared by exactly two faces, once in each direction.
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(np.unique(edges, axis=0)) == len(edges)
    assert set(map(tuple, edges)) == set(map(tuple, edges[:, ::-1]))
    # Outward: every face's normal points away from the centre, and the volume is positive.
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    assert (np.einsum("ij,ij->i", np.cross(v1 - v0, v2 - v0), v0 + v1 + v2) > 0).all()
    assert signed_volume(vertices, faces) > 0


@pytest.mark.parametrize("bad", [-1, 9, 2.0, True])
def test_icosphere_rejects_a_bad_subdivision_count(bad):
    with pytest.raises(ValueError, match="subdivisions"):
        icosphere(bad)
