"""Several faces per pixel: the K nearest fragments of each pixel (``rasterize_layers``) and the
ways to blend them (``softmax_blend``, PyTorch3D's soft colours; ``alpha_composite``, front-to-back
transparency). ``layer_fragments`` hands the layers to any shader.

``faces`` means projected face vertices as in ``nmr_jax.rasterize``: float32 ``[..., F, 3, 3]``, x and
y in NDC [-1, 1] (y up), z the view depth; only faces counter-clockwise in the image take part.
Layer maps are ``[..., H, W, K]``, row 0 at the top as in the images, slot 0 the nearest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _ffi
from nmr_jax import _validate as check
from nmr_jax._linear import linear_call
from nmr_jax._ops import Fragments, _edge_weights, _pixel_faces
from nmr_jax.rasterize import DEFAULT_FAR, DEFAULT_IMAGE_SIZE, DEFAULT_NEAR, _face_vertices

__all__ = ["Layers", "alpha_composite", "layer_fragments", "rasterize_layers", "softmax_blend"]


class Layers(NamedTuple):
    """The K nearest fragments of each pixel, slot 0 the nearest; empty slots (fewer than K faces
    reach the pixel) come last.

    Differentiable in the face vertices with the face indices held fixed: ``bary``, ``depth`` and
    ``dist`` in x, y and z (``dist`` in x and y only), ``bary_screen`` in x and y; in reverse
    mode and in forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``).
    """

    face_index: jax.Array  # int32 [..., H, W, K]: the face in each slot, -1 in empty slots.
    bary: jax.Array  # float32 [..., H, W, K, 3]: perspective-correct barycentrics, 0 when empty.
    bary_screen: jax.Array  # float32 [..., H, W, K, 3]: screen-space barycentrics, 0 when empty.
    depth: jax.Array  # float32 [..., H, W, K]: view depth, `far` in empty slots.
    # float32 [..., H, W, K]: signed squared distance in NDC from the pixel centre to the face's
    # boundary, negative where the face covers the pixel; +inf in empty slots.
    dist: jax.Array


def rasterize_layers(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    num_layers: int = 1,
    blur_radius: float = 0.0,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> Layers:
    """The ``num_layers`` faces nearest in view depth at each pixel (PyTorch3D's rasterizer).

    A face takes part at a pixel when it covers the pixel centre (the test of the hard
    rasterizer) or, with ``blur_radius > 0``, when the squared NDC distance from the pixel centre
    to it is below ``blur_radius`` (PyTorch3D's convention: compared with the squared distance);
    its fragment there has the barycentrics of the nearest point of the face in the sense of
    clamping them to [0, 1] and renormalising (the hard rasterizer's, exact on covered pixels) and
    their perspective-correct depth, kept when that lies strictly between ``near`` and ``far``.
    Each pixel keeps the K of least depth, ties to the lower face index. ``num_layers=1`` with
    ``blur_radius=0`` gives ``rasterize_fragments(..., anti_aliasing=False)``'s maps.

    Cost: each face visits the pixels of its bounding box grown by ``sqrt(blur_radius)`` (never
    every pixel), inserting into a sorted list of K per pixel; memory is the outputs, 36 bytes a
    slot (plus 8 bytes a slot of scratch on the GPU).

    Args:
      faces: float32 ``[..., F, 3, 3]`` projected face vertices (NDC x, y; view depth z), in
        front of the camera: not clipped here; for faces around the camera rasterize the
        pieces of ``nmr_jax.clip_faces`` and map face indices back through its ``source``.
      image_size: ``S`` or ``(H, W)``.
      num_layers: ``K``, the slots per pixel (static; any positive int, memory permitting).
      blur_radius: squared NDC distance, >= 0 (static).
      near, far: the depth range kept.

    Returns:
      ``Layers`` of ``[..., H, W, K]`` maps (see its fields).
    """
    fv, _ = _face_vertices(faces, None)
    height, width = check.image_size(image_size)
    k = check.num_layers(num_layers)
    blur = check.blur_radius(blur_radius)
    near, far = check.depth_range(near, far)
    face_index, bary, bary_screen, depth, dist = _ffi.rasterize_layers(
        jax.lax.stop_gradient(fv), height, width, k, near, far, blur
    )
    return Layers(face_index, *_differentiable(fv, face_index, bary, bary_screen, depth, dist))


@jax.custom_jvp
def _differentiable(
    fv: jax.Array,
    face_index: jax.Array,
    bary: jax.Array,
    bary_screen: jax.Array,
    depth: jax.Array,
    dist: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The kernel's float maps, passing their derivatives on to the face vertices: forward mode
    by the layers' formula in jnp (``_layers_tangent``), reverse mode by its transpose, the
    backward kernel nmr_layers_bwd."""
    return bary, bary_screen, depth, dist


@_differentiable.defjvp
def _differentiable_jvp(primals: tuple, tangents: tuple) -> tuple:
    fv, fi, bary, screen, depth, dist = primals
    # The maps come from a kernel run on constant vertices: only fv has a tangent.
    out = _differentiable(fv, fi, bary, screen, depth, dist)
    res = (fv, fi, screen, depth, dist)
    return out, linear_call(_layers_tangent, _layers_transpose, res, tangents[:1], like=out)


def _layers_tangent(res: tuple, lin: tuple) -> tuple:
    """The tangents of bary, bary_screen, depth and dist as nmr_layers_bwd differentiates them
    (csrc/layers.h ``layer_grad``), 0 in empty slots. With r the raw weights M^-1 [xp, yp, 1],
    c = clamp(r, 0, 1) passing r's tangent where r is in [0, 1] (ends included) and s = sum c:
    w = c / s, zp = 1 / sum(w_m / z_m), b_k = w_k zp / z_k at the kernel's w and zp; dist's
    tangent is that of the squared distance to the nearest point of the nearest edge, negated
    where the face covers the pixel."""
    fv, fi, w, zp, dist = res
    (fv_dot,) = lin
    # As rasterized: the slot axis first (a batch axis for _ops' per-pixel helpers), row 0 at
    # y = -1; the tangents go back to the layers' layout at the end.
    raster = lambda m, core: jnp.flip(jnp.moveaxis(m, m.ndim - core, 0), -1 - core)  # noqa: E731
    back = lambda m, core: jnp.moveaxis(jnp.flip(m, -1 - core), 0, m.ndim - core)  # noqa: E731
    fi, w, zp, dist = raster(fi, 1), raster(w, 2), raster(zp, 1), raster(dist, 1)
    hit = fi >= 0
    raw, raw_dot = jax.jvp(lambda fv: _edge_weights(fv, fi), (fv,), (fv_dot,))
    face, face_dot = _pixel_faces(fv, fi), _pixel_faces(fv_dot, fi)
    # Empty slots read face 0, whose depth may be 0 (padding): 1 keeps them finite.
    z = jnp.where(hit[..., None], face[..., 2], 1.0)
    z_dot = face_dot[..., 2]
    c_dot = jnp.where((raw >= 0) & (raw <= 1), raw_dot, 0.0)
    s = jnp.sum(jnp.clip(raw, 0.0, 1.0), axis=-1, keepdims=True)
    # s >= 1 wherever a face reaches the pixel (the clamped weights of any point of the plane
    # sum to at least 1); the guard only keeps empty slots finite.
    w_dot = (c_dot - w * jnp.sum(c_dot, axis=-1, keepdims=True)) / jnp.where(hit[..., None], s, 1.0)
    # A weight of 0 leaves zp and b_k independent of z_k (not 0 * inf for a z_k near 0).
    zw = jnp.where(w > 0, w * z_dot / z**2, 0.0)
    zp_dot = zp**2 * jnp.sum(zw - w_dot / z, axis=-1)
    zp_ = zp[..., None]
    b_dot = w_dot * (zp_ / z) + w / z * zp_dot[..., None] - zw * zp_
    dist_dot = _dist_tangent(face, face_dot, fi)
    # The sign bit, not dist < 0: a covered pixel on the boundary has dist -0.
    dist_dot = jnp.where(jnp.signbit(dist), -dist_dot, dist_dot)
    on = lambda t: jnp.where(hit[..., None] if t.ndim > hit.ndim else hit, t, 0.0)  # noqa: E731
    return back(on(b_dot), 2), back(on(w_dot), 2), back(on(zp_dot), 1), back(on(dist_dot), 1)


def _dist_tangent(face: jax.Array, face_dot: jax.Array, fi: jax.Array) -> jax.Array:
    """Tangent of the squared NDC distance from each slot's pixel centre to its face's boundary
    (``face [..., H, W, 3, 3]`` and ``fi [..., H, W]`` as rasterized: row 0 at y = -1), as
    nmr_core.h ``nearest_edge`` finds it (the first of the nearest edges) and
    ``nearest_edge_grad`` differentiates it: with q = a + t (b - a) the nearest point of edge ab,
    d dist2 = -2 (p - q) . ((1 - t) da + t db); t's own derivative drops out (interior: it
    minimises; clamped: constant)."""
    height, width = fi.shape[-2:]
    # The pixel centre in NDC, as the kernel's (xp - x_a) * sx with x_a = to_pixel(a) gives it;
    # [W] and [H, 1] broadcast against the slots [..., H, W].
    px = (2 * jnp.arange(width, dtype=jnp.float32) - (width - 1)) / width
    py = (2 * jnp.arange(height, dtype=jnp.float32)[:, None] - (height - 1)) / height

    def edge(e: int) -> tuple[jax.Array, jax.Array]:
        """(squared distance to edge e, its tangent), per slot and elementwise (XLA fuses it)."""
        ax, ay, bx, by = (face[..., v, c] for v in (e, (e + 1) % 3) for c in (0, 1))
        ex, ey, dx, dy = bx - ax, by - ay, px - ax, py - ay
        len2 = ex * ex + ey * ey
        # A zero-length edge is a point: t = 0.
        t = jnp.where(
            len2 > 0, jnp.clip((dx * ex + dy * ey) / jnp.where(len2 > 0, len2, 1), 0, 1), 0
        )
        dx, dy = dx - t * ex, dy - t * ey
        a_dot, b_dot = face_dot[..., e, :2], face_dot[..., (e + 1) % 3, :2]
        moved = (1 - t)[..., None] * a_dot + t[..., None] * b_dot
        return dx * dx + dy * dy, -2 * (dx * moved[..., 0] + dy * moved[..., 1])

    # Starting from the first edge, not from constants: those would be unsharded, and a select
    # of explicitly sharded slots needs both cases sharded alike.
    best, tangent = edge(0)
    for e in (1, 2):
        d2, along = edge(e)
        nearer = d2 < best
        best, tangent = jnp.where(nearer, d2, best), jnp.where(nearer, along, tangent)
    return tangent


def _layers_transpose(res: tuple, cts: tuple) -> tuple:
    fv, fi = res[:2]
    g_bary, g_screen, g_depth, g_dist = cts
    # Cotangents of maps nobody reads are None: empty operands that cost the kernel nothing.
    return (_ffi.layers_bwd(fv, fi, g_screen, g_bary, g_depth, g_dist),)


def layer_fragments(layers: Layers) -> Fragments:
    """The layers as ``Fragments`` with the slot axis first (``face_index [K, ..., H, W]``, ...), so
    that a shader, ``interpolate`` or ``sample_texture`` runs on every layer at once (K is one more
    leading batch dimension, which broadcasts against a mesh's own batch). Move the result's
    slot axis back with ``jnp.moveaxis(out, 0, -2)`` to get ``[..., H, W, K, C]``."""
    if not isinstance(layers, Layers):
        raise TypeError(f"layers must be the Layers of rasterize_layers, got {type(layers)}")
    first = lambda m, core: jnp.moveaxis(m, m.ndim - core, 0)  # noqa: E731
    fi = first(layers.face_index, 1)
    return Fragments(
        fi,
        first(layers.bary, 2),
        first(layers.bary_screen, 2),
        first(layers.depth, 1),
        jnp.zeros(fi.shape, bool),
    )


def _colors_of(colors: ArrayLike, layers: Layers) -> jax.Array:
    if not isinstance(layers, Layers):
        raise TypeError(f"layers must be the Layers of rasterize_layers, got {type(layers)}")
    c = check.float_array("colors", colors, (None, None, None, None))
    if c.shape[-4:-1] != layers.face_index.shape[-3:]:
        raise ValueError(
            f"colors must be [..., H, W, K, C] with H, W, K = {layers.face_index.shape[-3:]} of "
            f"layers, got {c.shape}"
        )
    check.batch({"colors": c.shape[:-4], "layers": layers.face_index.shape[:-3]})
    return c


def _background(value: Sequence[float] | None, channels: int) -> jax.Array:
    if value is None:
        return jnp.zeros(channels, jnp.float32)
    bg = tuple(float(v) for v in value)
    if len(bg) != channels or not np.all(np.isfinite(bg)):
        raise ValueError(f"background_color must be {channels} finite values, got {value!r}")
    return jnp.asarray(bg, jnp.float32)


def softmax_blend(
    colors: ArrayLike,
    layers: Layers,
    sigma: ArrayLike = 1e-4,
    gamma: ArrayLike = 1e-4,
    background_color: Sequence[float] | None = None,
    znear: float = DEFAULT_NEAR,
    zfar: float = DEFAULT_FAR,
) -> jax.Array:
    """Soft blending of the layers' colours (PyTorch3D's ``softmax_rgb_blend``, SoftRas's rule).

    With ``m_k`` 1 for an occupied slot and 0 for an empty one, per pixel::

        D_k = m_k * sigmoid(-dist_k / sigma)             # coverage of slot k
        alpha = 1 - prod_k (1 - D_k)
        z_k = m_k * (zfar - depth_k) / (zfar - znear)    # normalised inverse depth
        z_max = max(max_k z_k, eps)
        w_k = D_k * exp((z_k - z_max) / gamma)
        delta = max(exp((eps - z_max) / gamma), eps)     # the background's weight
        rgb = (sum_k w_k c_k + delta * background) / (sum_k w_k + delta)

    with ``eps = 1e-10``. Rasterize with ``blur_radius`` about ``sigma * log(1 / t - 1)`` so that
    the faces whose coverage exceeds ``t`` take part (PyTorch3D uses t = 1e-4).

    Args:
      colors: float32 ``[..., H, W, K, C]`` colour of each slot (any ``C``), e.g. a shader's output
        on ``layer_fragments(layers)`` moved to ``[..., H, W, K, C]``.
      layers: the ``Layers`` they belong to.
      sigma: sharpness of the coverage (> 0; may be traced).
      gamma: depth temperature of the softmax (> 0; may be traced).
      background_color: ``C`` values, default 0.
      znear, zfar: the depth range that normalises depth (PyTorch3D's defaults are 1 and 100;
        here those of ``rasterize_layers``).

    Returns:
      float32 ``[..., H, W, C + 1]``: the blended colour and alpha. Differentiable in ``colors``,
      ``sigma``, ``gamma`` and, through ``layers.dist`` and ``layers.depth``, in the vertices.
    """
    c = _colors_of(colors, layers)
    bg = _background(background_color, c.shape[-1])
    check.positive("sigma", sigma)
    check.positive("gamma", gamma)
    znear, zfar = check.depth_range(znear, zfar)
    eps = 1e-10  # PyTorch3D's floor: keeps z_max and the background weight away from 0.
    mask = layers.face_index >= 0
    # Empty slots hold dist inf and depth far: read 0 there so that no inf reaches a gradient.
    dist = jnp.where(mask, layers.dist, 0.0)
    prob = jnp.where(mask, jax.nn.sigmoid(-dist / sigma), 0.0)
    # The product over the slots as the last of the cumulative products: jnp.prod's gradient
    # reshapes the batch axes together, which arrays sharded with explicit axes reject.
    alpha = 1.0 - jnp.cumprod(1.0 - prob, axis=-1)[..., -1]
    z_inv = jnp.where(mask, (zfar - layers.depth) / (zfar - znear), 0.0)
    z_max = jnp.maximum(jnp.max(z_inv, axis=-1, keepdims=True), eps)
    weights = prob * jnp.exp((z_inv - z_max) / gamma)
    delta = jnp.maximum(jnp.exp((eps - z_max) / gamma), eps)
    num = jnp.sum(weights[..., None] * c, axis=-2) + delta * bg
    rgb = num / (jnp.sum(weights, axis=-1, keepdims=True) + delta)
    return jnp.concatenate([rgb, alpha[..., None]], -1)


def alpha_composite(
    colors: ArrayLike,
    alphas: ArrayLike,
    layers: Layers,
    background_color: Sequence[float] | None = None,
) -> jax.Array:
    """Front-to-back "over" compositing of the layers (transparency).

    Per pixel, with ``a_k`` the opacity of slot k (0 in empty slots) and ``T_k = prod_{j<k}
    (1 - a_j)`` the transmittance in front of it::

        rgb = sum_k T_k a_k c_k + T_K * background
        alpha = 1 - T_K

    Only the K nearest faces are seen: a pixel behind more than K faces loses the farther ones,
    so K should be at least the depth complexity of the semi-transparent part.

    Args:
      colors: float32 ``[..., H, W, K, C]`` colour of each slot (not premultiplied).
      alphas: float32 ``[..., H, W, K]`` opacity of each slot, in [0, 1].
      layers: the ``Layers`` they belong to.
      background_color: ``C`` values, default 0.

    Returns:
      float32 ``[..., H, W, C + 1]``: the composited colour and alpha. Differentiable in
      ``colors`` and ``alphas`` (and in whatever they were computed from).
    """
    c = _colors_of(colors, layers)
    a = check.float_array("alphas", alphas, (None, None, None))
    if a.shape[-3:] != layers.face_index.shape[-3:]:
        raise ValueError(
            f"alphas must be [..., H, W, K] with H, W, K = {layers.face_index.shape[-3:]} of "
            f"layers, got {a.shape}"
        )
    bg = _background(background_color, c.shape[-1])
    a = jnp.where(layers.face_index >= 0, a, 0.0)
    through = jnp.cumprod(1.0 - a, axis=-1)  # T_{k+1}
    front = jnp.concatenate([jnp.ones_like(through[..., :1]), through[..., :-1]], -1)  # T_k
    rgb = jnp.sum((front * a)[..., None] * c, axis=-2) + through[..., -1:] * bg
    return jnp.concatenate([rgb, 1.0 - through[..., -1:]], -1)
