"""nmr_jax.losses against numpy references written here from PyTorch3D's formulas (dense
matrices and loops), on meshes read from OBJ files: one mesh, padded batches, gradients."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import losses


def random_meshes(tmp_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two meshes of different sizes, written and read back as OBJ files: a jittered icosphere
    and a jittered open strip of quads (boundary edges, vertices of degree 2 and 3)."""
    rng = np.random.default_rng(0)
    v, f = nr.data.icosphere(1)
    sphere = np.asarray(v) + rng.normal(scale=0.05, size=np.shape(v))
    grid = np.array([[x, y, 0.0] for y in range(3) for x in range(4)], np.float64)
    grid += rng.normal(scale=0.1, size=grid.shape)
    quads = [(y * 4 + x, y * 4 + x + 1, y * 4 + x + 5, y * 4 + x + 4) for y in range(2) for x in range(3)]  # fmt: skip
    strip = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    meshes = []
    for name, (vv, ff) in {"sphere": (sphere, np.asarray(f)), "strip": (grid, strip)}.items():
        nr.save_obj(tmp_path / f"{name}.obj", vv, ff)
        mesh = nr.load_mesh(tmp_path / f"{name}.obj", normalization=False)
        meshes.append((np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)))
    return meshes


def np_edges(f: np.ndarray) -> list[tuple[int, int]]:
    return sorted({tuple(sorted((int(a), int(b)))) for t in f for a, b in ((t[1], t[2]), (t[2], t[0]), (t[0], t[1]))})  # fmt: skip


def np_edge_loss(v: np.ndarray, f: np.ndarray, target: float) -> float:
    return float(np.mean([(np.linalg.norm(v[a] - v[b]) - target) ** 2 for a, b in np_edges(f)]))


def np_laplacian(v: np.ndarray, f: np.ndarray, method: str, at: np.ndarray | None = None) -> float:
    """mean_i |(L v)_i| with L (dense) built from the vertices ``at`` (default ``v``)."""
    at = v if at is None else at
    n = len(v)
    if method == "uniform":
        adj = np.zeros((n, n))
        for a, b in np_edges(f):
            adj[a, b] = adj[b, a] = 1
        deg = adj.sum(1, keepdims=True)
        lv = adj @ v / np.where(deg > 0, deg, 1) - v
    else:
        lap = np.zeros((n, n))
        areas = np.zeros(n)
        for i0, i1, i2 in f:
            sa = np.linalg.norm(at[i1] - at[i2])
            sb = np.linalg.norm(at[i0] - at[i2])
            sc = np.linalg.norm(at[i0] - at[i1])
            s = (sa + sb + sc) / 2
            area = np.sqrt(max(s * (s - sa) * (s - sb) * (s - sc), 1e-12))
            # cot of the angle at each corner: (adjacent^2 + adjacent^2 - opposite^2) / 4 area
            lap[i1, i2] += (sb**2 + sc**2 - sa**2) / (4 * area)
            lap[i2, i0] += (sa**2 + sc**2 - sb**2) / (4 * area)
            lap[i0, i1] += (sa**2 + sb**2 - sc**2) / (4 * area)
            areas[[i0, i1, i2]] += area
        lap = lap + lap.T
        total = lap.sum(1, keepdims=True)
        if method == "cot":
            lv = lap @ v * np.where(total > 0, 1 / np.where(total > 0, total, 1), total) - v
        else:
            lv = (lap @ v - total * v) * 0.25 / areas[:, None]
    return float(np.mean(np.linalg.norm(lv, axis=1)))


def np_normal_consistency(v: np.ndarray, f: np.ndarray) -> float:
    opposite: dict[tuple[int, int], list[int]] = {}
    for t in f:
        for k in range(3):
            a, b, c = t[(k + 1) % 3], t[(k + 2) % 3], t[k]
            opposite.setdefault((min(a, b), max(a, b)), []).append(c)
    terms = []
    for (a, b), cs in opposite.items():
        normals = [np.cross(v[b] - v[a], v[c] - v[a]) for c in cs]
        for n0, n1 in combinations(normals, 2):
            terms.append(1 - np.dot(n0, -n1) / (np.linalg.norm(n0) * np.linalg.norm(n1)))
    return float(np.mean(terms))


def np_chamfer(x, y, nx=None, ny=None):
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    dist = d2.min(1).mean() + d2.min(0).mean()
    if nx is None:
        return dist, None

    def cos(a, b):
        return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    normal = (1 - np.abs(cos(nx, ny[d2.argmin(1)]))).mean()
    normal += (1 - np.abs(cos(ny, nx[d2.argmin(0)]))).mean()
    return dist, normal


def test_losses_match_numpy_references_on_one_mesh_and_a_padded_batch(tmp_path):
    meshes = random_meshes(tmp_path)
    padded = nr.pad_meshes(meshes)
    assert padded.faces.shape[0] == 2 and (np.asarray(padded.faces)[1, -1] == -1).all()
    cases = {
        "edge": (lambda v, f: losses.mesh_edge_loss(v, f, 0.3), lambda v, f: np_edge_loss(v, f, 0.3)),
        "normal": (losses.mesh_normal_consistency, np_normal_consistency),
        **{
            m: (
                lambda v, f, m=m: losses.mesh_laplacian_smoothing(v, f, m),
                lambda v, f, m=m: np_laplacian(v, f, m),
            )
            for m in ("uniform", "cot", "cotcurv")
        },
    }  # fmt: skip
    for name, (ours, ref) in cases.items():
        want = [ref(v, f) for v, f in meshes]
        for (v, f), w in zip(meshes, want, strict=True):
            np.testing.assert_allclose(ours(v, f), w, rtol=2e-5, err_msg=name)
        # A padded batch: the mean over its meshes; also under jit.
        got = jax.jit(ours)(padded.vertices, padded.faces)
        np.testing.assert_allclose(got, np.mean(want), rtol=2e-5, err_msg=name)
        assert min(want) > 1e-3, (name, want)


@pytest.mark.versions
def test_losses_gradients_match_finite_differences_under_jit_and_vmap(tmp_path):
    (v, f), (v2, f2) = random_meshes(tmp_path)
    rng = np.random.default_rng(1)
    direction = rng.normal(size=v.shape)
    eps = 1e-3
    for name, ours, ref in [
        ("edge", lambda x: losses.mesh_edge_loss(x, f, 0.3), lambda x: np_edge_loss(x, f, 0.3)),
        ("normal", lambda x: losses.mesh_normal_consistency(x, f), lambda x: np_normal_consistency(x, f)),
        # L is held fixed (PyTorch3D computes it under no_grad): the reference freezes it too.
        *[
            (m, lambda x, m=m: losses.mesh_laplacian_smoothing(x, f, m), lambda x, m=m: np_laplacian(x, f, m, at=v))
            for m in ("uniform", "cot", "cotcurv")
        ],
    ]:  # fmt: skip
        g = jax.jit(jax.grad(ours))(jnp.asarray(v, jnp.float32))
        fd = (ref(v + eps * direction) - ref(v - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(np.sum(np.asarray(g) * direction), fd, rtol=2e-3, atol=1e-5, err_msg=name)  # fmt: skip
    # vmap over a batch of vertex sets of one mesh: each mesh's loss.
    batch = jnp.asarray(np.stack([v, 1.5 * v]), jnp.float32)
    per = jax.vmap(lambda x: losses.mesh_edge_loss(x, f))(batch)
    np.testing.assert_allclose(per, [np_edge_loss(v, f, 0.0), np_edge_loss(1.5 * v, f, 0.0)], rtol=2e-5)  # fmt: skip


@pytest.mark.versions
def test_chamfer_distance_matches_numpy_with_normals_padding_and_gradients():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 3, 20, 3))
    nx, ny = rng.normal(size=(2, 3, 20, 3))
    lx, ly = np.array([20, 13, 7]), np.array([16, 20, 5])
    want = [
        np_chamfer(x[b, : lx[b]], y[b, : ly[b]], nx[b, : lx[b]], ny[b, : ly[b]]) for b in range(3)
    ]
    dist, normal = losses.chamfer_distance(x, y, lx, ly, nx, ny)
    np.testing.assert_allclose(dist, np.mean([w[0] for w in want]), rtol=1e-5)
    np.testing.assert_allclose(normal, np.mean([w[1] for w in want]), rtol=1e-5)
    one, none = losses.chamfer_distance(x[0], y[0])
    assert none is None
    np.testing.assert_allclose(one, np_chamfer(x[0], y[0])[0], rtol=1e-5)
    # Gradient in x: 2 (x_i - nn(x_i)) / N from the first term, and the second's pulls.
    eps, direction = 1e-4, rng.normal(size=x[0].shape)
    g = jax.jit(jax.grad(lambda p: losses.chamfer_distance(p, y[0])[0]))(jnp.asarray(x[0], jnp.float32))  # fmt: skip
    fd = (np_chamfer(x[0] + eps * direction, y[0])[0] - np_chamfer(x[0] - eps * direction, y[0])[0]) / (2 * eps)  # fmt: skip
    np.testing.assert_allclose(np.sum(np.asarray(g) * direction), fd, rtol=1e-3)
    with pytest.raises(ValueError, match="both x_normals and y_normals"):
        losses.chamfer_distance(x, y, x_normals=nx)


def test_losses_check_their_arguments(tmp_path):
    (v, f), _ = random_meshes(tmp_path)
    with pytest.raises(ValueError, match="method must be"):
        losses.mesh_laplacian_smoothing(v, f, "cotan")
    with pytest.raises(ValueError, match="faces holds vertex index"):
        losses.mesh_edge_loss(v[:3], f)
    with pytest.raises(TypeError, match="faces must be an integer array"):
        losses.mesh_normal_consistency(v, f.astype(np.float32))
    # Empty meshes count 0, and a batch with one counts it in the mean (as PyTorch3D's N).
    empty = np.full((1, 3), -1, np.int32)
    assert float(losses.mesh_edge_loss(v, empty)) == 0.0
    batch = nr.pad_meshes([(v, f), (v[:3], np.zeros((0, 3), np.int32))])
    np.testing.assert_allclose(
        losses.mesh_edge_loss(batch.vertices, batch.faces), np_edge_loss(v, f, 0.0) / 2, rtol=1e-5
    )


def test_pad_meshes_round_trip_and_render(tmp_path):
    meshes = random_meshes(tmp_path)
    padded = nr.pad_meshes(meshes)
    assert padded.vertices.shape == (2, 42, 3) and padded.faces.shape == (2, 80, 3)
    back = nr.unpad_meshes(padded)
    for (v, f), (bv, bf) in zip(meshes, back, strict=True):
        np.testing.assert_allclose(bv, v, rtol=1e-6)
        np.testing.assert_array_equal(bf, f)
    # Results per vertex cut the same way; each padded mesh renders as it does alone.
    colours = nr.unpad_meshes(padded, jnp.ones((2, 42, 3)))
    assert [c.shape for c, _ in colours] == [(42, 3), (12, 3)]
    r = nr.Renderer(image_size=16, eye=(0.0, 0.0, -4.0))
    together = r.render_silhouettes(padded.vertices, padded.faces)
    for b, (v, f) in enumerate(meshes):
        np.testing.assert_allclose(together[b], r.render_silhouettes(v, f), atol=1e-6)
    with pytest.raises(ValueError, match=r"meshes\[1\] faces holds vertex index"):
        nr.pad_meshes([meshes[0], (meshes[1][0][:3], meshes[1][1])])


def test_losses_forward_mode_jvp_matches_their_gradients():
    # Pure jnp: jvp and jacfwd work as for any jnp function; <grad, v> equals the jvp.
    vertices, faces = nr.data.icosphere(1)
    rng = np.random.default_rng(3)
    v = jnp.asarray(rng.normal(size=vertices.shape), jnp.float32)
    points = jnp.asarray(rng.normal(size=(1, 20, 3)), jnp.float32)
    losses = [
        lambda x: nr.losses.mesh_edge_loss(x, faces),
        lambda x: nr.losses.mesh_laplacian_smoothing(x, faces, method="cot"),
        lambda x: nr.losses.mesh_normal_consistency(x, faces),
        lambda x: nr.losses.chamfer_distance(x[None], points)[0],
    ]
    both = jax.jit(
        lambda x, v: [(jax.jvp(f, (x,), (v,))[1], jnp.vdot(jax.grad(f)(x), v)) for f in losses]
    )
    for tangent, along in both(vertices, v):
        np.testing.assert_allclose(tangent, along, rtol=1e-4)
