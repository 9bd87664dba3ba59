"""Near-plane clipping of faces in the camera frame, before any perspective division.

A face with a vertex behind the camera cannot be projected: the division by a negative or tiny
depth sends it mirrored or to infinity. ``clip_faces`` cuts every face of camera-frame vertices
(x, y, and z the view depth) against the plane ``z = near``: a face wholly in front is kept as it
is, one wholly behind is dropped, and one crossing the plane becomes one triangle (one vertex in
front) or two (two in front), of the same winding. Shapes are fixed for ``jit``: ``F`` faces give
``2F`` pieces, piece ``i`` and piece ``F + i`` the parts of face ``i``, padded with all-zero pieces
of source -1. Each piece carries the barycentrics of its corners in its source face's corners, so
that what is rasterized on a piece reads back as the source face: ``source_fragments``.

The point where an edge meets the plane is computed from the edge's two endpoints taken in order
of depth, so the two faces that share an edge get bit-identical points: the pieces of a closed
surface stay watertight. Everything is ``jax.numpy`` with finite gradients (double-where guards):
a vertex on the plane, a face in it or edge-on to it gives no NaN.

``Renderer`` clips this way in all its camera modes (before the lens distortion of 'projection'
too); the ``rasterize_*`` functions take projected faces and cannot clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _ops
from nmr_jax import _validate as check
from nmr_jax._ops import Fragments, Shader
from nmr_jax.rasterize import DEFAULT_NEAR

__all__ = ["ClippedFaces", "clip_faces", "source_fragments"]

_T = TypeVar("_T")


class ClippedFaces(NamedTuple):
    """The pieces of ``F`` faces after clipping (``clip_faces``)."""

    # float32 [..., 2F, 3, 3]: camera-frame corners of piece p; all 0 where source[p] is -1.
    faces: jax.Array
    # int32 [..., 2F]: the face piece p is a part of (p or p - F), -1 for padding.
    source: jax.Array
    # float32 [..., 2F, 3, 3]: row k holds the barycentrics of piece p's corner k in its source
    # face's three corners (the identity for a face kept whole; 0 for padding).
    bary: jax.Array


def clip_faces(faces: ArrayLike, near: float = DEFAULT_NEAR) -> ClippedFaces:
    """Clips faces of camera-frame vertices against the plane ``z = near``.

    Args:
      faces: float32 ``[..., F, 3, 3]`` face vertices in the camera frame (``look_at``, ``look``,
        or ``R v + t``), before ``perspective``: z is the view depth.
      near: the plane's depth, > 0 (the rasterizer's ``near``: nothing nearer is drawn anyway).

    Returns:
      ``ClippedFaces(faces [..., 2F, 3, 3], source [..., 2F], bary [..., 2F, 3, 3])``: a corner
      with ``z >= near`` counts as in front; face ``i`` kept whole is piece ``i`` (bit for bit);
      a face with a non-finite coordinate is dropped. Project the pieces (``perspective``; padding
      pieces then draw nothing), rasterize them, and map the fragments back with
      ``source_fragments``. Differentiable in ``faces``: the corners where edges meet the plane
      move with their edges (and their barycentrics with them).
    """
    fv = check.float_array("faces", faces, (None, 3, 3))
    check.num_faces("faces", 2 * fv.shape[-3])
    near = float(near)
    if not (math.isfinite(near) and near > 0):
        raise ValueError(f"near must be finite and > 0, got {near}")
    pieces = _clip(fv, near)
    count = fv.shape[-3]
    index = jnp.concatenate([jnp.arange(count), jnp.arange(count)]).astype(jnp.int32)
    return ClippedFaces(
        jnp.where(pieces.valid[..., None, None], pieces.corners, 0.0),
        jnp.where(pieces.valid, index, -1),
        _bary(pieces),
    )


def source_fragments(fragments: Fragments, clipped: ClippedFaces, faces: ArrayLike) -> Fragments:
    """The fragments of rasterized pieces as fragments of their source faces.

    Args:
      fragments: ``rasterize_fragments`` of the projected ``clipped.faces``.
      clipped: the ``clip_faces`` result those pieces come from.
      faces: float32 ``[..., F, 3, 3]``: the camera-frame faces given to ``clip_faces``.

    Returns:
      ``Fragments`` whose ``face_index`` is the source face (-1 on background), ``bary`` the
      perspective-correct barycentrics in the source face's corners and ``bary_screen`` their
      screen-space counterpart ``b_k z_k / sum_j b_j z_j`` (negative for a corner behind the
      camera; for a face kept whole, exactly the rasterized weights); ``depth`` and ``back`` as
      given. Differentiable as ``fragments`` are, and in the corner barycentrics.
    """
    fv = check.float_array("faces", faces, (None, 3, 3))
    depths = _ops.take_rows(fv[..., 2], 2, jnp.maximum(clipped.source, 0), 1)  # [..., 2F, 3]
    whole = jnp.all(clipped.bary == jnp.eye(3, dtype=jnp.float32), axis=(-2, -1))
    cut = ~whole & (clipped.source >= 0)
    return _to_source(fragments, clipped.source, _table(clipped.bary, depths, cut))[0]


def _table(bary: jax.Array, depths: jax.Array, cut: jax.Array) -> jax.Array:
    """[..., 2F, 3, 7]: what the mapping interpolates at each piece corner k: its barycentrics
    in the source face ``bary[k]`` (3), the same times the source corners' depths (3), and 1
    where the piece's face was cut (1). ``depths`` [..., 2F, 3], ``cut`` bool [..., 2F]."""
    flag = jnp.broadcast_to(cut[..., None, None], cut.shape + (3, 1)).astype(jnp.float32)
    bz = bary * depths[..., None, :]
    batch = jnp.broadcast_shapes(bary.shape[:-3], bz.shape[:-3], flag.shape[:-3])
    parts = [jnp.broadcast_to(x, batch + x.shape[-3:]) for x in (bary, bz, flag)]
    return jnp.concatenate(parts, axis=-1)


class _Pieces(NamedTuple):
    corners: jax.Array  # [..., 2F, 3, 3] camera-frame corners (stand-ins where not valid)
    bary: jax.Array  # [..., 2F, 3, 3] barycentrics of the corners in the source face's corners
    # select(per_corner [..., F, 3, c], per_edge [..., F, 3, c]) -> [..., 2F, 3, c]: the pieces'
    # values from values at the source corners and at the edges' crossings (edge k runs from
    # corner k to k + 1).
    select: Callable[[jax.Array, jax.Array], jax.Array]
    points: jax.Array  # [..., F, 3, 3]: where edge k meets the plane (a stand-in if it does not)
    depths: jax.Array  # [..., F, 3]: the faces' corner depths (stand-ins for dropped faces)
    valid: jax.Array  # [..., 2F] bool: the piece exists.
    cut: jax.Array  # [..., F] bool: the face was cut or dropped, not kept whole.


def _bary(p: _Pieces) -> jax.Array:
    """The pieces' corner barycentrics in their source faces, 0 for padding."""
    return jnp.where(p.valid[..., None, None], p.bary, 0.0)


def _roll(x: jax.Array, r: jax.Array) -> jax.Array:
    """x [..., F, 3, *c] with its corners rolled by r [..., F]: out[k] = x[(r + k) % 3]. Chosen
    by where, not a product with a one-hot matrix: exact, and a NaN in an unchosen corner stays
    out."""
    axis = r.ndim
    r = r.reshape(r.shape + (1,) * (x.ndim - r.ndim))
    x1, x2 = jnp.roll(x, -1, axis=axis), jnp.roll(x, -2, axis=axis)
    return jnp.where(r == 0, x, jnp.where(r == 1, x1, x2))


def _clip(faces: jax.Array, near: float) -> _Pieces:
    """The pieces of camera-frame faces [..., F, 3, 3] in front of z = near."""
    finite = jnp.all(jnp.isfinite(faces), axis=(-2, -1))
    # A face with a non-finite corner is dropped; a stand-in in front keeps everything finite.
    front = jnp.asarray([0.0, 0.0, near], jnp.float32)
    safe = jnp.where(finite[..., None, None], faces, front)
    inside = safe[..., 2] >= near  # [..., F, 3]
    # Corner by corner (here and in r): no int32 [..., F, 3] array, the shape that the checks
    # for copies of the mesh's faces look for.
    n_in = inside[..., 0].astype(jnp.int32) + inside[..., 1] + inside[..., 2]

    # The corner the cut turns around: the one in front (n_in 1) or the one behind (n_in 2).
    # In integer arithmetic, not jnp.where between constants: that builds the constants with the
    # condition's sharding, which newer jax cannot do under vmap of explicitly sharded arrays.
    def first(c: jax.Array) -> jax.Array:  # 0 if c[0], else 1 if c[1], else 2
        return (~c[..., 0]).astype(jnp.int32) * (2 - c[..., 1].astype(jnp.int32))

    r = (n_in == 1) * first(inside) + (n_in == 2) * first(~inside)

    # Where each edge k meets the plane, from its endpoints in depth order: the same arithmetic
    # on the same numbers for every face that shares the edge, so their points are identical.
    u, v = safe, jnp.roll(safe, -1, axis=-2)
    crosses = (u[..., 2] >= near) != (v[..., 2] >= near)
    u_first = (u[..., 2] < v[..., 2])[..., None]
    lo, hi = jnp.where(u_first, u, v), jnp.where(u_first, v, u)
    span = jnp.where(crosses, hi[..., 2] - lo[..., 2], 1.0)  # > 0 where the edge crosses
    t = jnp.where(crosses, (near - lo[..., 2]) / span, 0.0)[..., None]
    z = jnp.array([False, False, True])  # (not .at[].set: a scatter, ambiguous when sharded)
    point = jnp.where(z, near, lo + t * (hi - lo))  # exactly on the plane
    # An edge that does not cross gets the stand-in (never used; it projects finitely).
    point = jnp.where(crosses[..., None], point, front)
    # The crossing's barycentrics: s on corner k + 1, 1 - s on corner k.
    s = jnp.where(u_first, t, 1.0 - t)
    eye3 = jnp.eye(3, dtype=jnp.float32)
    edge_bary = (1.0 - s) * eye3 + s * jnp.roll(eye3, 1, axis=-1)  # [..., F, 3, 3]
    corner_bary = jnp.broadcast_to(eye3, edge_bary.shape)

    def pieces(corner: jax.Array, edge: jax.Array) -> jax.Array:
        """[..., 2F, 3, *c] from per-corner [..., F, 3, *c] and per-edge values. Rolled so that
        the turning corner is A (corners A, B, C; edges AB, BC, CA): piece 1 is (A, AB, CA) with
        one corner in front, (B, C, CA) with two, (A, B, C) with three; piece 2 is (B, CA, AB)."""
        c, e = _roll(corner, r), _roll(edge, r)
        a, b, c_, ab, ca = c[..., 0, :], c[..., 1, :], c[..., 2, :], e[..., 0, :], e[..., 2, :]
        n = n_in.reshape(n_in.shape + (1,) * (a.ndim - n_in.ndim + 1))
        first = jnp.where(
            n == 1,
            jnp.stack([a, ab, ca], axis=-2),
            jnp.where(n == 2, jnp.stack([b, c_, ca], axis=-2), jnp.stack([a, b, c_], axis=-2)),
        )
        return jnp.concatenate([first, jnp.stack([b, ca, ab], axis=-2)], axis=n_in.ndim - 1)

    return _Pieces(
        corners=pieces(safe, point),
        bary=pieces(corner_bary, edge_bary),
        select=pieces,
        points=point,
        depths=safe[..., 2],
        valid=jnp.concatenate([finite & (n_in >= 1), finite & (n_in == 2)], axis=-1),
        cut=~finite | (n_in < 3),
    )


class _Clip(NamedTuple):
    """What the Renderer rasterizes instead of its faces where some face is cut, and how to read
    it back."""

    faces: jax.Array  # [..., 2F, 3, 3] projected pieces; all 0 for padding (draws nothing).
    # [..., F, 3, 3]: the faces as the texture-cube kernel reads them (see cube_shader).
    cube_faces: jax.Array
    view: jax.Array  # [..., F, 3, 3] the faces in the camera frame.
    near: float  # the plane's depth

    def table(self) -> jax.Array:
        """[..., 2F, 3, 7] (see _table)."""

        @jax.checkpoint  # recomputed, not saved: see _clip_projected
        def table(view: jax.Array) -> jax.Array:
            p = _clip(view, self.near)
            twice = lambda x: jnp.concatenate([x, x], axis=-2)  # noqa: E731  [..., F, c] -> 2F
            return _table(_bary(p), twice(p.depths), twice(p.cut[..., None])[..., 0])

        return table(self.view)

    def bary(self) -> jax.Array:
        """[..., 2F, 3, 3]: ``ClippedFaces.bary`` of the pieces (the identity for a face kept
        whole, 0 for padding)."""
        # Recomputed by the backward pass, not saved: see _clip_projected.
        return jax.checkpoint(lambda view: _bary(_clip(view, self.near)))(self.view)

    def shader(self, shader: Shader) -> Shader:
        """``shader`` seeing the fragments of the source faces."""

        def on_source(frags: Fragments, *args: object) -> jax.Array:
            return shader(_to_source(frags, None, self.table())[0], *args)

        return on_source

    def cube_shader(self, eps: float) -> Shader:
        """The texture-cube shader of the source faces. The kernel reads texture coordinates
        ``w_k zp / z_k`` with z_k the depths of ``cube_faces``: a face kept whole gets its
        rasterized weights and depth, as without clipping; a cut face, whose depths there are 1,
        its perspective-correct barycentrics and ``zp = 1``. As without clipping, only the
        textures get a gradient: the mapping needs none."""

        def shader(frags: Fragments, textures: jax.Array) -> jax.Array:
            fi, w, zp = jax.lax.stop_gradient((frags.face_index, frags.bary_screen, frags.depth))
            # sum_k w_k (zp / z_k) t_k = sum_k b_k t_k: the table's barycentrics and cut flag
            # over the pieces' corner depths, interpolated with the screen-space weights, times
            # zp (padding pieces have depth 0 and are never drawn).
            z = self.faces[..., 2:3]
            table = self.table()[..., jnp.asarray([0, 1, 2, 6])]
            scaled = jax.lax.stop_gradient(table / jnp.where(z > 0, z, 1.0))
            at = _ops.interpolate_corners(scaled, fi, w) * zp[..., None]
            cut = at[..., 3] > 0.5
            w = jnp.where(cut[..., None], at[..., :3], w)
            fi = _source_index(fi, self.faces.shape[-3])
            return _ops.sample_cubes(self.cube_faces, textures, fi, w, jnp.where(cut, 1.0, zp), eps)

        return shader


class _Whole(NamedTuple):
    """What the Renderer rasterizes where no face is cut: its projected faces, drawn as without
    clipping (the interface of _Clip)."""

    faces: jax.Array  # [..., F, 3, 3]

    def bary(self) -> None:
        return None

    def shader(self, shader: Shader) -> Shader:
        return shader

    def cube_shader(self, eps: float) -> None:
        return None


def _drawn(
    projected: jax.Array,
    padding: np.ndarray | jax.Array | None,
    view: Callable[[], jax.Array],
    project: Callable[[jax.Array], jax.Array],
    near: float,
    draw: Callable[[_Clip | _Whole], _T],
) -> _T:
    """The Renderer's clipping: ``draw`` of the pieces of its faces in front of the plane z =
    ``near`` (a ``_Clip``) where some face is cut, of the faces themselves (a ``_Whole``) where
    none is, so that a scene wholly in front costs what it did without clipping: one test of the
    depths it projects anyway. ``projected`` [..., F, 3, 3]: the faces projected (gathered from
    projected vertices; z the view depth, NaN for a non-finite point); ``padding`` bool [..., F]:
    padding rows (all 0, drawn by neither), None for none; ``view()``: the faces in the camera frame;
    ``project``: the camera's projection of points [..., N, 3]."""

    def clipped() -> _T:
        return draw(_clip_projected(view(), projected, project, near))

    if not _may_branch(projected):
        return clipped()
    # As _clip's cut: a corner behind the plane or not finite (its projected depth is NaN).
    cut = ~jnp.all(projected[..., 2] >= near, axis=-1)
    if padding is not None:
        cut = cut & ~padding
    return _cond(_any(jax.lax.stop_gradient(cut)), clipped, lambda: draw(_Whole(projected)))


def _clip_projected(
    view: jax.Array, projected: jax.Array, project: Callable[[jax.Array], jax.Array], near: float
) -> _Clip:
    """The pieces of ``view`` [..., F, 3, 3], faces in the camera frame, whose projections are
    ``projected``. The pieces' source corners are taken from ``projected`` and only the
    crossings are projected, so a face kept whole is drawn bit for bit as without clipping and
    shares its corners exactly with its cut neighbours.

    The cutting (elementwise work) is recomputed by the backward pass, not saved: under the
    ``lax.cond`` of ``_drawn`` the forward pass fills the other branch's residuals with zeros,
    and the cutting's would be some 30 per-face arrays even where no face is cut."""

    @jax.checkpoint
    def pieces(view: jax.Array, projected: jax.Array) -> tuple[jax.Array, jax.Array]:
        p = _clip(view, near)
        points = p.points.reshape(*p.points.shape[:-3], -1, 3)
        crossings = project(points).reshape(p.points.shape)
        faces = jnp.where(p.valid[..., None, None], p.select(projected, crossings), 0.0)
        return faces, jnp.where(p.cut[..., None, None], 1.0, view)

    faces, cube_faces = pieces(view, projected)
    return _Clip(faces, cube_faces, view, near)


def _cond(pred: jax.Array, on_true: Callable, on_false: Callable, *operands: Any) -> Any:
    """``lax.cond``, decided here where ``pred`` is known (an eager call): one branch runs
    op by op instead of both being compiled."""
    if check.is_traced(pred):
        return jax.lax.cond(pred, on_true, on_false, *operands)
    return (on_true if bool(pred) else on_false)(*operands)


def _may_branch(x: jax.Array) -> bool:
    """Whether ``lax.cond`` may skip work here: not on explicitly sharded arrays, whose
    conditions under ``vmap`` this jax cannot trace (their mesh is lost in the branches)."""
    typeof = getattr(jax, "typeof", None)
    mesh = getattr(getattr(typeof(x), "sharding", None), "mesh", None) if typeof else None
    return mesh is not None and not mesh.axis_names


@jax.custom_batching.custom_vmap
def _any(x: jax.Array) -> jax.Array:
    """``jnp.any(x)``, also over the axes that ``vmap`` maps: a condition on it stays a
    condition under ``vmap`` (every element takes the branch of the whole batch) instead of a
    select that runs both branches."""
    return jnp.any(x)


@_any.def_vmap
def _any_vmap(axis_size: int, in_batched: list[bool], x: jax.Array) -> tuple[jax.Array, bool]:
    return jnp.any(x), False


def _source_index(face_index: jax.Array, pieces: int) -> jax.Array:
    """The face index map of the Renderer's ``pieces`` pieces -> their faces' (piece F + i is
    of face i; background stays -1)."""
    count = pieces // 2
    return jnp.where(face_index >= count, face_index - count, face_index)


def _to_source(
    frags: Fragments, source: jax.Array | None, table: jax.Array
) -> tuple[Fragments, jax.Array]:
    """(fragments of the pieces' source faces, bool [..., H, W]: the pixel's face was cut).
    ``source`` [..., 2F]: each piece's face, or None for the Renderer's layout (piece F + i of
    face i); ``table`` [..., 2F, 3, 7] as _table's, interpolated by one kernel."""
    fi = frags.face_index
    if source is None:
        face_index = _source_index(fi, table.shape[-3])
    else:
        face_index = jnp.where(fi >= 0, _ops.take_rows(source, 1, jnp.maximum(fi, 0), 2), -1)
    at = _ops.interpolate_corners(table, fi, frags.bary)  # 0 on background
    bary, bz, cut = at[..., :3], at[..., 3:6], at[..., 6] > 0.5
    total = jnp.sum(bz, axis=-1, keepdims=True)
    # A covered pixel lies in front of the plane: total is its depth, >= near > 0.
    ok = cut[..., None] & (total > 0)
    screen = jnp.where(ok, bz / jnp.where(ok, total, 1.0), frags.bary_screen)
    bary = jnp.where(cut[..., None], bary, frags.bary)
    return Fragments(face_index, bary, screen, frags.depth, frags.back), cut
