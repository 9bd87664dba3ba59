"""Mesh regularisers and the chamfer distance, with PyTorch3D's names and definitions
(``pytorch3d.loss``), so that ported code reads the same. Pure ``jax.numpy``: jit-able,
vmap-able and differentiable in the vertices (and points, normals).

Meshes: ``vertices`` float ``[..., V, 3]`` and ``faces`` int ``[..., F, 3]``: one mesh, or a
padded batch (``nr.pad_meshes``): rows of three -1 are padding, and a vertex that no face
references is not part of its mesh. A batch's loss is the mean over its meshes of each mesh's
loss (PyTorch3D's ``loss.sum() / N`` with per-mesh weights), an empty mesh counting 0.

The one difference from PyTorch3D: it counts a vertex that no face references as part of its
mesh (in ``mesh_laplacian_smoothing``'s average, its term ``|v|`` for 'uniform' and 'cot');
here such a vertex, as padding, is left out. Meshes whose vertices all belong to faces give
the same losses.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _validate as check

__all__ = [
    "chamfer_distance",
    "mesh_edge_loss",
    "mesh_laplacian_smoothing",
    "mesh_normal_consistency",
]


def _mesh(vertices: ArrayLike, faces: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Checked vertices float32 ``[..., V, 3]`` and faces int32 ``[..., F, 3]``, broadcast to
    one batch shape."""
    v = check.float_array("vertices", vertices, (None, 3))
    f = check.faces_array("faces", faces)
    shape = check.batch({"vertices": v.shape[:-2], "faces": f.shape[:-2]})
    if isinstance(f, np.ndarray):
        check.face_range("faces", f, v.shape[-2])
    v = jnp.broadcast_to(v, (*shape, *v.shape[-2:]))
    return v, jnp.broadcast_to(jnp.asarray(f), (*shape, *f.shape[-2:]))


def _batch_mean(per_mesh: jax.Array) -> jax.Array:
    """The mean over the leading batch dimensions (the value itself for one mesh)."""
    return jnp.mean(per_mesh) if per_mesh.ndim else per_mesh


def _safe_norm(x: jax.Array) -> jax.Array:
    """|x| along the last axis, with a zero gradient (not NaN) at x = 0 (as torch's norm)."""
    sq = jnp.sum(x * x, axis=-1)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _edges(faces: jax.Array, num_vertices: int) -> tuple[jax.Array, jax.Array]:
    """The mesh's edges ``(a, b)``, ``a <= b``, int32 ``[3F, 2]`` (each face's edges v1-v2,
    v2-v0, v0-v1) sorted by (a, b), and the mask ``[3F]`` of the first copy of each distinct
    edge (padding rows masked out): with static shapes, so faces may be traced."""
    real = ~jnp.all(faces == -1, axis=-1)  # [F]
    pairs = faces[:, jnp.array([[1, 2], [2, 0], [0, 1]])].reshape(-1, 2)  # [3F, 2]
    valid = jnp.repeat(real, 3)
    # Padding sorts last, as the edge (V, V).
    a = jnp.where(valid, jnp.min(pairs, -1), num_vertices)
    b = jnp.where(valid, jnp.max(pairs, -1), num_vertices)
    order = jnp.lexsort((b, a))
    a, b, valid = a[order], b[order], valid[order]
    new = jnp.concatenate([jnp.ones(1, bool), (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    return jnp.stack([a, b], -1), new & valid


def mesh_edge_loss(vertices: ArrayLike, faces: ArrayLike, target_length: float = 0.0) -> jax.Array:
    """PyTorch3D's ``mesh_edge_loss``: the mean over each mesh's distinct edges ``(a, b)`` of
    ``(|v_a - v_b| - target_length)^2``, averaged over the meshes of a batch.

    Args:
      vertices: float ``[..., V, 3]``; faces: int ``[..., F, 3]`` (-1 rows: padding).
      target_length: the edge length aimed at.

    Returns:
      float32 scalar; 0 for meshes without edges.
    """
    v, f = _mesh(vertices, faces)
    return _edge_loss(v, f, jnp.float32(target_length))


@jax.jit  # one compiled call eagerly, instead of dozens of dispatched ops
def _edge_loss(v: jax.Array, f: jax.Array, target_length: jax.Array) -> jax.Array:
    def one(v: jax.Array, f: jax.Array) -> jax.Array:
        edges, first = _edges(f, v.shape[0])
        e = jnp.minimum(edges, max(v.shape[0] - 1, 0))
        length = _safe_norm(v[e[:, 0]] - v[e[:, 1]])
        count = jnp.sum(first)
        total = jnp.sum(jnp.where(first, (length - target_length) ** 2, 0.0))
        return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)

    return _batch_mean(jnp.vectorize(one, signature="(v,c),(f,k)->()")(v, f))


Method = Literal["uniform", "cot", "cotcurv"]


def mesh_laplacian_smoothing(
    vertices: ArrayLike, faces: ArrayLike, method: Method = "uniform"
) -> jax.Array:
    """PyTorch3D's ``mesh_laplacian_smoothing``: the mean over each mesh's vertices of
    ``|(L V)_i|``, averaged over the meshes of a batch; ``L`` is held fixed (no gradient
    through the weights, as PyTorch3D computes them under ``no_grad``).

    - 'uniform': ``(L V)_i = mean_{j in N(i)} v_j - v_i`` over the distinct neighbours ``N(i)``.
    - 'cot': ``(L V)_i = sum_j w_ij v_j / sum_j w_ij - v_i`` (the division only where the sum
      is > 0; a sum <= 0 multiplies instead, as PyTorch3D), with ``w_ij`` the sum over the faces
      with edge ``ij`` of the cotangent of the angle opposite: each face with sides ``A, B, C``
      opposite its corners 0, 1, 2 and area ``s`` from Heron's formula (``s^2`` floored at
      1e-12) gives ``(B^2 + C^2 - A^2) / (4 s)`` to edge 1-2, and so on round.
    - 'cotcurv': ``(L V)_i = (sum_j w_ij v_j - sum_j w_ij v_i) / (4 a_i)``, ``a_i`` the sum of
      the areas of the faces at vertex ``i`` (mean curvature normal).

    Args:
      vertices: float ``[..., V, 3]``; faces: int ``[..., F, 3]`` (-1 rows: padding).
      method: 'uniform', 'cot' or 'cotcurv'.

    Returns:
      float32 scalar; 0 for meshes without faces.
    """
    if method not in ("uniform", "cot", "cotcurv"):
        raise ValueError(f"method must be 'uniform', 'cot' or 'cotcurv', got {method!r}")
    v, f = _mesh(vertices, faces)
    return _laplacian(v, f, method)


@partial(jax.jit, static_argnums=2)
def _laplacian(v: jax.Array, f: jax.Array, method: Method) -> jax.Array:
    def one(v: jax.Array, f: jax.Array) -> jax.Array:
        num = v.shape[0]
        real = ~jnp.all(f == -1, axis=-1)
        safe = jnp.where(real[:, None], f, 0)
        used = jnp.zeros(num, bool).at[safe.reshape(-1)].max(jnp.repeat(real, 3))
        fixed = jax.lax.stop_gradient(v)
        if method == "uniform":
            edges, first = _edges(f, num)
            a, b = (jnp.minimum(edges[:, k], max(num - 1, 0)) for k in (0, 1))
            w = first.astype(jnp.float32)
            degree = jnp.zeros(num).at[a].add(w).at[b].add(w)
            inv = jnp.where(degree > 0, 1.0 / jnp.where(degree > 0, degree, 1.0), 0.0)
            lv = jnp.zeros_like(v).at[a].add(w[:, None] * inv[a, None] * v[b])
            lv = lv.at[b].add(w[:, None] * inv[b, None] * v[a]) - v
        else:
            weights, inv_area = _cot_weights(fixed, safe, real)
            i, j, w = weights
            lv = jnp.zeros_like(v).at[i].add(w[:, None] * v[j]).at[j].add(w[:, None] * v[i])
            total = jnp.zeros(num).at[i].add(w).at[j].add(w)[:, None]
            if method == "cot":
                norm = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), total)
                lv = lv * norm - v
            else:
                lv = (lv - total * v) * 0.25 * inv_area[:, None]
        count = jnp.sum(used)
        total_loss = jnp.sum(jnp.where(used, _safe_norm(lv), 0.0))
        return jnp.where(count > 0, total_loss / jnp.maximum(count, 1), 0.0)

    return _batch_mean(jnp.vectorize(one, signature="(v,c),(f,k)->()")(v, f))


def _cot_weights(
    v: jax.Array, f: jax.Array, real: jax.Array
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """The cotangent weights as entries ``(i [3F], j [3F], w [3F])`` of the symmetric ``L``
    (``L_ij = L_ji`` = the sum of the entries of the pair), and ``1 / a_i`` ``[V]`` (0 where
    vertex ``i`` has no face area)."""
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    side_a = _safe_norm(p1 - p2)
    side_b = _safe_norm(p0 - p2)
    side_c = _safe_norm(p0 - p1)
    s = 0.5 * (side_a + side_b + side_c)
    # PyTorch3D's floor: rounding can make Heron's product of a flat face negative.
    area = jnp.sqrt(jnp.maximum(s * (s - side_a) * (s - side_b) * (s - side_c), 1e-12))
    a2, b2, c2 = side_a**2, side_b**2, side_c**2
    cot = jnp.stack([b2 + c2 - a2, a2 + c2 - b2, a2 + b2 - c2], -1) / area[:, None] / 4.0
    cot = jnp.where(real[:, None], cot, 0.0)
    i = f[:, jnp.array([1, 2, 0])].reshape(-1)
    j = f[:, jnp.array([2, 0, 1])].reshape(-1)
    areas = jnp.zeros(v.shape[0]).at[f.reshape(-1)].add(jnp.repeat(jnp.where(real, area, 0.0), 3))
    inv_area = jnp.where(areas > 0, 1.0 / jnp.where(areas > 0, areas, 1.0), 0.0)
    return (i, j, cot.reshape(-1)), inv_area


def mesh_normal_consistency(vertices: ArrayLike, faces: ArrayLike) -> jax.Array:
    """PyTorch3D's ``mesh_normal_consistency``: the mean over each mesh's pairs of faces that
    share an edge of ``1 - cos(n_0, -n_1)``, averaged over the meshes of a batch.

    For the edge ``(a, b)`` (``a < b``) and a face on it with third vertex ``c``,
    ``n = (v_b - v_a) x (v_c - v_a)``; two faces wound consistently have their third vertices
    on opposite sides, so ``n_0`` and ``-n_1`` agree when they are coplanar (loss 0) and
    oppose when folded flat onto each other (loss 2). An edge of ``k`` faces gives all
    ``k (k - 1) / 2`` pairs. ``cos`` is 0 for a zero-area face.

    Args:
      vertices: float ``[..., V, 3]``; faces: int ``[..., F, 3]`` (-1 rows: padding).

    Returns:
      float32 scalar; 0 for meshes without a shared edge.
    """
    v, f = _mesh(vertices, faces)
    if v.shape[-2] == 0:
        return jnp.zeros((), jnp.float32)
    return _normal_consistency(v, f)


@jax.jit
def _normal_consistency(v: jax.Array, f: jax.Array) -> jax.Array:
    def one(v: jax.Array, f: jax.Array) -> jax.Array:
        num = v.shape[0]
        real = jnp.repeat(~jnp.all(f == -1, axis=-1), 3)
        corner = jnp.array([[1, 2, 0], [2, 0, 1], [0, 1, 2]])
        tri = jnp.where(real[:, None], f[:, corner].reshape(-1, 3), 0)  # (e0, e1, opposite)
        a = jnp.where(real, jnp.minimum(tri[:, 0], tri[:, 1]), num)
        b = jnp.where(real, jnp.maximum(tri[:, 0], tri[:, 1]), num)
        order = jnp.lexsort((b, a))
        a, b, tri, real = a[order], b[order], tri[order], real[order]
        va, vb = v[jnp.minimum(a, num - 1)], v[jnp.minimum(b, num - 1)]
        n = jnp.cross(vb - va, v[tri[:, 2]] - va)
        length = _safe_norm(n)[:, None]
        unit = jnp.where(length > 0, n / jnp.where(length > 0, length, 1.0), 0.0)
        unit = jnp.where(real[:, None], unit, 0.0)
        # Runs of equal edges: the pairs (i < j) of a run of k sum to k (k - 1) / 2 terms of
        # 1 + u_i . u_j, and sum_{i<j} u_i . u_j = (|sum u|^2 - sum |u|^2) / 2.
        start = jnp.concatenate([jnp.ones(1, bool), (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
        run = jnp.cumsum(start) - 1
        segments = a.shape[0]
        k = jax.ops.segment_sum(real.astype(jnp.float32), run, segments)
        summed = jax.ops.segment_sum(unit, run, segments)
        squares = jax.ops.segment_sum(jnp.sum(unit * unit, -1), run, segments)
        pairs = k * (k - 1) / 2
        total = jnp.sum(pairs) + 0.5 * jnp.sum(jnp.sum(summed * summed, -1) - squares)
        count = jnp.sum(pairs)
        return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)

    return _batch_mean(jnp.vectorize(one, signature="(v,c),(f,k)->()")(v, f))


def chamfer_distance(
    x: ArrayLike,
    y: ArrayLike,
    x_lengths: ArrayLike | None = None,
    y_lengths: ArrayLike | None = None,
    x_normals: ArrayLike | None = None,
    y_normals: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """PyTorch3D's ``chamfer_distance`` with its defaults (squared distances, means over
    points and over the batch): ``mean_i min_j |x_i - y_j|^2 + mean_j min_i |y_j - x_i|^2``;
    with normals also ``mean_i (1 - |cos(nx_i, ny_{nn(i)})|) + mean_j (1 - |cos(ny_j,
    nx_{nn(j)})|)``, ``nn`` the nearest point of the other set.

    Args:
      x, y: float ``[..., N, 3]`` and ``[..., M, 3]`` point sets (leading dims broadcast).
      x_lengths, y_lengths: optional int ``[...]``: only the first ``x_lengths`` points of each
        set count (a padded batch); default all.
      x_normals, y_normals: optional float ``[..., N, 3]``, ``[..., M, 3]``, both or neither.

    Returns:
      ``(distance, normal_loss)``, float32 scalars (the mean over the batch's sets);
      ``normal_loss`` is None without normals.
    """
    px = check.float_array("x", x, (None, 3))
    py = check.float_array("y", y, (None, 3))
    if (x_normals is None) != (y_normals is None):
        raise ValueError("chamfer_distance needs both x_normals and y_normals, or neither")
    lengths = {"x": px.shape[:-2], "y": py.shape[:-2]}
    nx = ny = None
    if x_normals is not None and y_normals is not None:
        nx = check.float_array("x_normals", x_normals, (px.shape[-2], 3))
        ny = check.float_array("y_normals", y_normals, (py.shape[-2], 3))
        lengths |= {"x_normals": nx.shape[:-2], "y_normals": ny.shape[:-2]}
    lx = jnp.full((), px.shape[-2]) if x_lengths is None else _lengths("x_lengths", x_lengths)
    ly = jnp.full((), py.shape[-2]) if y_lengths is None else _lengths("y_lengths", y_lengths)
    check.batch(lengths | {"x_lengths": lx.shape, "y_lengths": ly.shape})
    return _chamfer(px, py, lx, ly, nx, ny)


@jax.jit
def _chamfer(
    px: jax.Array,
    py: jax.Array,
    lx: jax.Array,
    ly: jax.Array,
    nx: jax.Array | None,
    ny: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None]:
    shapes = [px.shape[:-2], py.shape[:-2], lx.shape, ly.shape]
    if nx is not None and ny is not None:
        shapes += [nx.shape[:-2], ny.shape[:-2]]
    shape = np.broadcast_shapes(*shapes)
    d2 = jnp.sum((px[..., :, None, :] - py[..., None, :, :]) ** 2, -1)  # [..., N, M]
    d2 = jnp.broadcast_to(d2, (*shape, *d2.shape[-2:]))
    in_x = jnp.arange(px.shape[-2]) < lx[..., None]  # [..., N]
    in_y = jnp.arange(py.shape[-2]) < ly[..., None]  # [..., M]
    masked = jnp.where(in_x[..., :, None] & in_y[..., None, :], d2, jnp.inf)
    near_y, near_x = jnp.argmin(masked, -1), jnp.argmin(masked, -2)  # [..., N], [..., M]
    to_y = jnp.take_along_axis(d2, near_y[..., None], -1)[..., 0]
    to_x = jnp.take_along_axis(d2, near_x[..., None, :], -2)[..., 0, :]

    def mean(values: jax.Array, inside: jax.Array, count: jax.Array) -> jax.Array:
        # A set with no points contributes 0 (PyTorch3D divides by its length of 0).
        total = jnp.sum(jnp.where(inside, values, 0.0), -1)
        return total / jnp.maximum(count, 1)

    distance = _batch_mean(mean(to_y, in_x, lx) + mean(to_x, in_y, ly))
    if nx is None or ny is None:
        return distance, None
    nx = jnp.broadcast_to(nx, (*shape, *nx.shape[-2:]))
    ny = jnp.broadcast_to(ny, (*shape, *ny.shape[-2:]))

    def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
        la, lb = _safe_norm(a), _safe_norm(b)
        # torch's cosine_similarity (PyTorch3D's) floors the product of the norms at 1e-8.
        return jnp.sum(a * b, -1) / jnp.maximum(la * lb, 1e-8)

    cos_x = cosine(nx, jnp.take_along_axis(ny, near_y[..., None], -2))
    cos_y = cosine(ny, jnp.take_along_axis(nx, near_x[..., None], -2))
    normal = mean(1 - jnp.abs(cos_x), in_x, lx) + mean(1 - jnp.abs(cos_y), in_y, ly)
    return distance, _batch_mean(normal)


def _lengths(name: str, value: ArrayLike) -> jax.Array:
    dtype = np.dtype(getattr(value, "dtype", np.asarray(value).dtype))
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {dtype}")
    return jnp.asarray(value, jnp.int32)
