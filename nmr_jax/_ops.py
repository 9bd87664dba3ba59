"""Differentiable wrappers of the kernels (private): ``jax.custom_vjp`` defines Kato's gradient.

The maps here are at the rasterized resolution with row 0 at y = -1; flipping and anti-aliasing
are plain jnp in the public layer, so autodiff un-flips and un-pools the incoming gradients.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from nmr_jax import _ffi


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def gather_faces(vertices: jax.Array, faces: jax.Array, checked: bool) -> jax.Array:
    """vertices [*b, V, 3] f32, faces [*b, F, 3] i32 -> [*b, F, 3, 3]; bad indices raise.
    ``checked``: all indices are known to be in [0, V) (see ``_ffi.gather_faces``)."""
    return _ffi.gather_faces(vertices, faces, checked)


def _gather_fwd(vertices: jax.Array, faces: jax.Array, checked: bool) -> tuple[jax.Array, tuple]:
    # A zero-size stand-in carries the vertices' shape without keeping them alive.
    return _ffi.gather_faces(vertices, faces, checked), (faces, jnp.zeros((0,) + vertices.shape))


def _gather_bwd(checked: bool, res: tuple, g: jax.Array) -> tuple[jax.Array, None]:
    faces, shape_of = res
    return _ffi.scatter_faces(faces, g, shape_of.shape[1:]), None


gather_faces.defvjp(_gather_fwd, _gather_bwd)


@dataclasses.dataclass(frozen=True)
class RasterConfig:
    """Static settings of one rasterization (hashable: it is a ``nondiff_argnums`` argument)."""

    height: int  # Rows rasterized (2x the output with anti-aliasing).
    width: int  # Columns rasterized.
    near: float  # Pixels with depth <= near are dropped.
    far: float  # Pixels with depth >= far are dropped; background depth.
    eps: float  # Texture clamp margin and Kato's distance offset.
    background: tuple[float, float, float]  # RGB of uncovered pixels.


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def raster_maps(
    face_vertices: jax.Array, textures: jax.Array | None, cfg: RasterConfig
) -> tuple[jax.Array | None, jax.Array, jax.Array]:
    """(rgb [*b, H, W, 3] or None without textures, alpha [*b, H, W], depth [*b, H, W])."""
    return _raster_fwd(face_vertices, textures, cfg)[0]


def _raster_fwd(face_vertices: jax.Array, textures: jax.Array | None, cfg: RasterConfig):
    face_index, weights, depth = _ffi.rasterize(
        face_vertices, cfg.height, cfg.width, cfg.near, cfg.far
    )
    covered = face_index >= 0
    alpha = covered.astype(jnp.float32)
    rgb = None
    if textures is not None:
        sampled = _ffi.sample_textures(face_vertices, textures, face_index, weights, depth, cfg.eps)
        rgb = jnp.where(covered[..., None], sampled, jnp.asarray(cfg.background, jnp.float32))
    tex_shape = None if textures is None else jnp.zeros((0,) + textures.shape)
    res = (face_vertices, face_index, weights, depth, rgb, alpha, tex_shape)
    return (rgb, alpha, depth), res


def _raster_bwd(cfg: RasterConfig, res: tuple, grads: tuple) -> tuple:
    face_vertices, face_index, weights, depth, rgb, alpha, tex_shape = res
    g_rgb, g_alpha, g_depth = grads
    # Kato's rule sees rgb (background included) and alpha as one image of 4 (or 1) channels.
    if rgb is None:
        image, g_image = alpha[..., None], g_alpha[..., None]
    else:
        image = jnp.concatenate([rgb, alpha[..., None]], axis=-1)
        g_image = jnp.concatenate([g_rgb, g_alpha[..., None]], axis=-1)
    g_fv = _ffi.kato_bwd(face_vertices, face_index, image, g_image, cfg.eps)
    g_fv = g_fv + _ffi.depth_bwd(face_vertices, face_index, weights, depth, g_depth)
    g_tex = None
    if tex_shape is not None:
        g_tex = _ffi.sample_textures_bwd(
            face_vertices, face_index, weights, depth, g_rgb, cfg.eps, tex_shape.shape[1:]
        )
    return g_fv, g_tex


raster_maps.defvjp(_raster_fwd, _raster_bwd)


def face_index_and_weights(
    face_vertices: jax.Array, cfg: RasterConfig
) -> tuple[jax.Array, jax.Array]:
    """The fork's maps: face_index [*b, H, W] and weights [*b, H, W, 3], the weights
    differentiable in x and y of the face vertices with the face index held fixed."""
    face_index, _, _ = _ffi.rasterize(
        jax.lax.stop_gradient(face_vertices), cfg.height, cfg.width, cfg.near, cfg.far
    )
    return face_index, _weights_at(face_vertices, face_index)


def _weights_at(face_vertices: jax.Array, face_index: jax.Array) -> jax.Array:
    """Barycentric weights [*b, H, W, 3] of each pixel's face, 0 on background, in jnp.

    The kernel's formula (nmr_core.h ``interpolate``: edge function over twice the area, clamped
    to [0, 1], renormalised) written with jnp so that autodiff gives its exact derivative within
    the face, as nvdiffrast's ``interpolate``; the face index (where each face is drawn) is data.
    """
    height, width = face_index.shape[-2:]
    batch = face_index.shape[:-2]
    covered = face_index >= 0
    flat = face_vertices.reshape(*batch, -1, 9)
    rows = jnp.maximum(face_index, 0).reshape(*batch, height * width, 1)
    face = jnp.take_along_axis(flat, rows, axis=-2).reshape(*batch, height, width, 3, 3)
    x = 0.5 * (face[..., 0] * width + width - 1)  # pixel coordinates, as nmr_core.h to_pixel
    y = 0.5 * (face[..., 1] * height + height - 1)
    # Pixel centres sit on integers; [W, 1] and [H, 1, 1] broadcast against [..., H, W, 3].
    xp = jnp.arange(width, dtype=jnp.float32)[:, None]
    yp = jnp.arange(height, dtype=jnp.float32)[:, None, None]
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    # Covered pixels belong to faces of positive area; the guard only keeps background finite.
    area2 = jnp.where(covered, (y2 - y0) * (x1 - x0) - (y1 - y0) * (x2 - x0), 1.0)
    k1, k2 = [1, 2, 0], [2, 0, 1]
    edge = (x[..., k2] - x[..., k1]) * (yp - y[..., k1]) - (y[..., k2] - y[..., k1]) * (
        xp - x[..., k1]
    )
    w = jnp.clip(edge / area2[..., None], 0.0, 1.0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    w = w / jnp.where(total > 0, total, 1.0)
    return jnp.where(covered[..., None], w, 0.0)
