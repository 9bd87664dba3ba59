"""Camera transforms and projections of the original renderer, in pure ``jax.numpy``.

All functions are differentiable in every float input and accept any leading batch dimensions:
``vertices`` is ``[..., V, 3]`` and camera parameters broadcast against its batch (``eye`` is ``[3]``
or ``[..., 3]``). The camera frame is the original's: x right in the image, y up, z forward (the
depth). ``look_at`` and ``look`` map world axes onto it without a mirror (``handedness="left"``:
the world is taken as left-handed) unless ``handedness="right"``; ``projection`` is OpenCV's
right-handed camera (x right, y down, z forward). Each public function checks its arguments and
calls a private one that trusts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from nmr_jax import _validate as check
from nmr_jax.typing import Handedness, VectorLike

__all__ = [
    "get_points_from_angles",
    "look",
    "look_at",
    "perspective",
    "projection",
    "pytorch3d_camera",
]

# Length below which a vector is treated as zero when normalising, and depth below which a point
# is treated as lying on the camera plane: far below any real camera geometry, far above float32's
# denormals, so that 1 / _TINY**2 (in the gradients) is still finite.
_TINY = 1e-12
# The original's guard added to z before the projection's division (as the PyTorch port).
PROJECTION_EPS = 1e-9


def _normalize(v: jax.Array) -> jax.Array:
    """v / |v| along the last axis; 0 with a zero gradient (not NaN) where |v| is 0, overflows or
    is NaN (double-where guard: the backward pass only ever sees the safe values)."""
    sq = jnp.sum(v * v, axis=-1, keepdims=True)
    safe = (sq > _TINY**2) & (sq < jnp.inf)  # False for NaN too
    v = jnp.where(safe, v, 1.0)
    return jnp.where(safe, v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True)), 0.0)


def _finite_points(vertices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mask [..., V, 1] of points with finite coordinates, vertices with the others set to 1).

    The transforms compute on the safe copy and put NaN back where the mask is false: a point that
    is not finite stays NaN (its faces are not drawn) and gets a zero gradient, and it cannot turn
    the gradients of the camera or of the other points into NaN (0 * inf in the backward pass).
    """
    finite = jnp.all(jnp.isfinite(vertices), axis=-1, keepdims=True)
    return finite, jnp.where(finite, vertices, 1.0)


def _rotate(
    vertices: jax.Array, eye: jax.Array, z: jax.Array, up: jax.Array, handedness: Handedness
) -> jax.Array:
    """World points in the frame of a camera at ``eye`` looking along the unit vector ``z``
    (a zero ``z``, an eye at the point it looks at, looks along +z)."""
    e_x, e_z = jnp.array([1.0, 0.0, 0.0], jnp.float32), jnp.array([0.0, 0.0, 1.0], jnp.float32)
    z = jnp.where(jnp.any(z != 0, axis=-1, keepdims=True), z, e_z)
    # With up along the view (an eye straight above), cross(up, z) has no direction: the camera
    # takes world +z as up instead (+x when it looks along z as well). 1e-4 rad from parallel
    # keeps the normalisation's gradient (about 1 / sin) finite and moderate.
    sin = jnp.linalg.norm(jnp.cross(_normalize(up), z), axis=-1, keepdims=True)
    up = jnp.where(sin < 1e-4, jnp.where(jnp.abs(z[..., 2:]) < 0.9, e_z, e_x), up)
    x = _normalize(jnp.cross(up, z))
    y = jnp.cross(z, x)
    # A right-handed world seen with x = cross(up, z) comes out mirrored: image right is then
    # world left. Mirroring camera x undoes that (and with it the winding seen as front).
    rot = jnp.stack([-x if handedness == "right" else x, y, z], axis=-2)  # rows: camera axes
    finite, safe = _finite_points(vertices)
    out = jnp.einsum("...vi,...ji->...vj", safe - eye[..., None, :], rot)
    return jnp.where(finite, out, jnp.nan)


def _divide_by_depth(
    x: jax.Array, y: jax.Array, z: jax.Array, ok: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x / z, y / z) where ``ok``, NaN elsewhere, with finite gradients (double-where guard)."""
    safe_z = jnp.where(ok, z, 1.0)
    return jnp.where(ok, x / safe_z, jnp.nan), jnp.where(ok, y / safe_z, jnp.nan)


def _points(vertices: ArrayLike) -> jax.Array:
    return check.float_array("vertices", vertices, (None, 3))


def _vectors(vertices: ArrayLike, **vectors: VectorLike) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Checked ``vertices [..., V, 3]`` and ``[..., 3]`` vectors whose batches broadcast."""
    v = _points(vertices)
    checked = tuple(check.float_array(n, x, (3,)) for n, x in vectors.items())
    shapes = {"vertices": v.shape[:-2]} | {
        n: x.shape[:-1] for n, x in zip(vectors, checked, strict=True)
    }
    check.batch(shapes)
    return v, checked


def look_at(
    vertices: ArrayLike,
    eye: VectorLike,
    at: VectorLike = (0.0, 0.0, 0.0),
    up: VectorLike = (0.0, 1.0, 0.0),
    handedness: Handedness = "left",
) -> jax.Array:
    """Transforms world points into the camera frame of an eye looking at ``at``.

    Args:
      vertices: float32 ``[..., V, 3]`` world coordinates.
      eye: float32 ``[..., 3]`` camera position.
      at: float32 ``[..., 3]`` point looked at.
      up: float32 ``[..., 3]`` world up vector.
      handedness: ``"left"`` (the original's) or ``"right"`` (camera x mirrored, so that a
        right-handed world is not mirrored in the image); see ``nmr_jax.typing.Handedness``.

    Returns:
      float32 ``[..., V, 3]``: ``(v - eye) @ [x; y; z]^T`` with ``z = normalize(at - eye)``,
      ``x = normalize(cross(up, z))`` (negated for ``"right"``), ``y = cross(z, x)``. Within
      1e-4 rad of ``up`` along the view (an eye straight above or below ``at``), world +z
      (+x if the view is along z too) serves as ``up``, so that the image and the gradients
      stay defined.

    Raises:
      ValueError: ``eye`` equals ``at`` (known values; traced ones look along +z).
    """
    handedness = check.handedness(handedness)
    v, (e, a, u) = _vectors(vertices, eye=eye, at=at, up=up)
    check.view_direction("eye - at", e - a)
    return _rotate(v, e, _normalize(a - e), u, handedness)


def look(
    vertices: ArrayLike,
    eye: VectorLike,
    direction: VectorLike = (0.0, 0.0, 1.0),
    up: VectorLike = (0.0, 1.0, 0.0),
    handedness: Handedness = "left",
) -> jax.Array:
    """Like ``look_at``, but the camera looks along ``direction`` (float32 ``[..., 3]``)."""
    handedness = check.handedness(handedness)
    v, (e, d, u) = _vectors(vertices, eye=eye, direction=direction, up=up)
    check.view_direction("direction", d)
    return _rotate(v, e, _normalize(d), u, handedness)


def perspective(vertices: ArrayLike, angle: ArrayLike = 30.0) -> jax.Array:
    """Perspective division: ``x / (z tan(angle))``, ``y / (z tan(angle))``, z kept.

    Args:
      vertices: float32 ``[..., V, 3]`` in the camera frame.
      angle: half the field of view, in degrees (scalar or ``[...]``).

    Returns:
      float32 ``[..., V, 3]``: x and y in NDC, z the view depth. x and y are NaN for points with
      ``|z tan(angle)| <= 1e-12`` (on the camera plane, or a zero angle; the original gives +-inf
      or NaN) or a non-finite coordinate: the rasterizer does not draw their faces, and their
      gradient is zero.
    """
    v = _points(vertices)
    a = check.float_array("angle", angle, ())
    check.batch({"vertices": v.shape[:-2], "angle": a.shape})
    return _perspective(v, a)


def _perspective(vertices: jax.Array, angle: jax.Array) -> jax.Array:
    width = jnp.tan(jnp.deg2rad(angle))[..., None]
    finite, safe = _finite_points(vertices)
    z = safe[..., 2]
    scaled = z * width
    ok = finite[..., 0] & (jnp.abs(scaled) > _TINY)
    x, y = _divide_by_depth(safe[..., 0], safe[..., 1], scaled, ok)
    return jnp.stack([x, y, jnp.where(finite[..., 0], z, jnp.nan)], axis=-1)


def projection(
    vertices: ArrayLike,
    K: ArrayLike,
    R: ArrayLike,
    t: ArrayLike,
    dist_coeffs: ArrayLike,
    orig_size: float | Sequence[float],
    eps: float = PROJECTION_EPS,
) -> jax.Array:
    """Pinhole projection with lens distortion, as OpenCV and the PyTorch port.

    Args:
      vertices: float32 ``[..., V, 3]`` world coordinates.
      K: float32 ``[..., 3, 3]`` intrinsics in pixels of an image of ``orig_size``.
      R: float32 ``[..., 3, 3]`` world-to-camera rotation.
      t: float32 ``[..., 3]`` (or ``[..., 1, 3]``) translation.
      dist_coeffs: float32 ``[..., 5]``: ``k1, k2, p1, p2, k3``.
      orig_size: size in pixels of the image K refers to: ``S``, or ``(H, W)`` for a
        non-square one (u is then scaled by W and v by H).
      eps: added to z before the division (the original's guard against z = 0).

    Returns:
      float32 ``[..., V, 3]``: x and y in NDC [-1, 1] (y up), z the metric depth. As in
      ``perspective``, x and y are NaN (zero gradient) for a point with ``|z + eps| <= 1e-12`` or
      a non-finite coordinate.
    """
    v = _points(vertices)
    K_, R_, t_, dc = _projection_params(K, R, t, dist_coeffs)
    check.batch(
        {
            "vertices": v.shape[:-2],
            "K": K_.shape[:-2],
            "R": R_.shape[:-2],
            "t": t_.shape[:-1],
            "dist_coeffs": dc.shape[:-1],
        }
    )
    return _projection(v, K_, R_, t_, dc, check.orig_size(orig_size), eps)


def _projection_params(
    K: ArrayLike, R: ArrayLike, t: ArrayLike, dist_coeffs: ArrayLike
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Checked ``K [..., 3, 3]``, ``R [..., 3, 3]``, ``t [..., 3]`` and ``dist_coeffs [..., 5]``
    (their batches are the caller's to check)."""
    t_ = check.float_array("t", t, (None,))
    if t_.ndim >= 2 and t_.shape[-2:] == (1, 3):
        t_ = t_[..., 0, :]  # [..., 1, 3], as the PyTorch port's
    return (
        check.float_array("K", K, (3, 3)),
        check.float_array("R", R, (3, 3)),
        check.float_array("t", t_, (3,)),
        check.float_array("dist_coeffs", dist_coeffs, (5,)),
    )


def _projection(
    vertices: jax.Array,
    K: jax.Array,
    R: jax.Array,
    t: jax.Array,
    dist_coeffs: jax.Array,
    orig_size: tuple[float, float],
    eps: float,
) -> jax.Array:
    return _pinhole(_extrinsics(vertices, R, t), K, dist_coeffs, orig_size, eps)


def _extrinsics(vertices: jax.Array, R: jax.Array, t: jax.Array) -> jax.Array:
    """World points in OpenCV's camera frame, ``R v + t`` (NaN for a non-finite point)."""
    finite, safe = _finite_points(vertices)
    v = jnp.einsum("...vi,...ji->...vj", safe, R) + t[..., None, :]
    return jnp.where(finite, v, jnp.nan)


def _pinhole(
    vertices: jax.Array,
    K: jax.Array,
    dist_coeffs: jax.Array,
    orig_size: tuple[float, float],
    eps: float,
) -> jax.Array:
    """Camera-frame points -> NDC x, y (with lens distortion) and their depth z."""
    finite, v = _finite_points(vertices)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    ok = finite[..., 0] & (jnp.abs(z + eps) > _TINY)
    x_, y_ = _divide_by_depth(x, y, z + eps, ok)
    # The distortion polynomial is evaluated on zeros where the point is dropped (no 0 * inf).
    x_, y_ = jnp.where(ok, x_, 0.0), jnp.where(ok, y_, 0.0)
    d = dist_coeffs[..., None, :]
    k1, k2, p1, p2, k3 = (d[..., i] for i in range(5))
    r2 = x_ * x_ + y_ * y_
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    x__ = x_ * radial + 2 * p1 * x_ * y_ + p2 * (r2 + 2 * x_ * x_)
    y__ = y_ * radial + p1 * (r2 + 2 * y_ * y_) + 2 * p2 * x_ * y_
    uv1 = jnp.stack([x__, y__, jnp.ones_like(x__)], axis=-1)
    uv = jnp.einsum("...vi,...ji->...vj", uv1, K)
    u, v_ = uv[..., 0], uv[..., 1]
    height, width = orig_size
    v_ = height - v_  # image rows grow downwards; NDC y grows upwards
    u = 2 * (u - width / 2.0) / width
    v_ = 2 * (v_ - height / 2.0) / height
    return jnp.stack(
        [
            jnp.where(ok, u, jnp.nan),
            jnp.where(ok, v_, jnp.nan),
            jnp.where(finite[..., 0], z, jnp.nan),
        ],
        axis=-1,
    )


def get_points_from_angles(
    distance: ArrayLike, elevation: ArrayLike, azimuth: ArrayLike, degrees: bool = True
) -> jax.Array:
    """Camera position on a sphere around the origin.

    Args:
      distance, elevation, azimuth: float scalars or broadcastable ``[...]`` arrays; angles in degrees
        unless ``degrees=False``.

    Returns:
      float32 ``[..., 3]``: ``[d cos(el) sin(az), d sin(el), -d cos(el) cos(az)]``.
    """
    d, el, az = (
        check.float_array(n, a, ())
        for n, a in (("distance", distance), ("elevation", elevation), ("azimuth", azimuth))
    )
    check.batch({"distance": d.shape, "elevation": el.shape, "azimuth": az.shape})
    if degrees:
        el, az = jnp.deg2rad(el), jnp.deg2rad(az)
    return jnp.stack(
        jnp.broadcast_arrays(
            d * jnp.cos(el) * jnp.sin(az), d * jnp.sin(el), -d * jnp.cos(el) * jnp.cos(az)
        ),
        axis=-1,
    )


def pytorch3d_camera(
    R: ArrayLike,
    T: ArrayLike,
    fov: ArrayLike = 60.0,
    image_size: int | Sequence[int] = 256,
    degrees: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PyTorch3D's ``FoVPerspectiveCameras(R=R, T=T, fov=fov)`` as ``(K, R, t)`` of the
    'projection' camera: ``Renderer(camera_mode="projection", K=K, R=R, t=t,
    orig_size=image_size)`` puts every point on the pixel where PyTorch3D's rasterizer puts it.

    PyTorch3D maps a world point ``X`` (a row) to its view frame by ``X R + T`` (x left, y up,
    z forward) and to NDC by ``x / (z tan(fov / 2))`` with +x on the image's left; its ``fov``
    is the full angle, spanning the shorter side of the image. OpenCV's frame (x right, y down)
    is that view frame turned half a turn about z: ``R' = diag(-1, -1, 1) R^T``,
    ``t' = diag(-1, -1, 1) T``; ``K`` has the focal length ``min(H, W) / (2 tan(fov / 2))``
    pixels and the image centre as principal point (``R^T`` and ``T`` unconverted give an
    image turned by 180 degrees).

    Args:
      R: float ``[..., 3, 3]`` PyTorch3D rotation (as ``look_at_view_transform`` returns).
      T: float ``[..., 3]`` PyTorch3D translation.
      fov: scalar or ``[...]``: the full vertical field of view (PyTorch3D's ``fov``), in
        degrees unless ``degrees=False``.
      image_size: ``S`` or ``(H, W)``, the rendered image's (the Renderer's ``image_size``).

    Returns:
      ``(K [..., 3, 3], R [..., 3, 3], t [..., 3])``, float32.
    """
    r = check.float_array("R", R, (3, 3))
    t = check.float_array("T", T, (3,))
    f = check.float_array("fov", fov, ())
    batch = check.batch({"R": r.shape[:-2], "T": t.shape[:-1], "fov": f.shape})
    height, width = check.image_size(image_size)
    half = 0.5 * (jnp.deg2rad(f) if degrees else f)
    focal = min(height, width) / (2.0 * jnp.tan(half))
    zero, one = jnp.zeros_like(focal), jnp.ones_like(focal)
    K = jnp.stack(
        [
            jnp.stack([focal, zero, width / 2.0 * one], -1),
            jnp.stack([zero, focal, height / 2.0 * one], -1),
            jnp.stack([zero, zero, one], -1),
        ],
        -2,
    )
    flip = jnp.array([-1.0, -1.0, 1.0], jnp.float32)
    r_cv = flip[:, None] * jnp.swapaxes(r, -1, -2)
    return jnp.broadcast_to(K, (*batch, 3, 3)), r_cv, flip * t
