"""Rasterization of projected faces: the original's ``rasterize_*`` functions and the fork's maps.

``faces`` here means face vertices after camera and projection: float32 ``[..., F, 3, 3]``, x and y
in NDC [-1, 1] (y up), z the view depth. Returned images are channels-last with row 0 at the top
(y = +1): rgb ``[..., H, W, 3]``, alpha and depth ``[..., H, W]``. Leading batch dimensions of all
inputs broadcast. A face is drawn only where its vertices run counter-clockwise in the image (x right,
y up); clockwise (back) faces are culled. To draw both sides of a mesh, pass each face and its
reversed copy, as ``Renderer`` does with ``fill_back``. Gradients are Kato's approximation for x and y (through rgb and alpha), and exact
for the depth map and the textures, with the face index held fixed.

These functions take faces already projected, so they cannot clip: a face with a corner behind
the camera arrives mirrored or at infinity, and only the per-pixel depth test hides part of it.
For scenes around the camera, clip the camera-frame faces first with ``nmr_jax.clip_faces`` (the
``Renderer`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _ops
from nmr_jax import _validate as check

__all__ = [
    "RGBAD",
    "rasterize",
    "rasterize_depth",
    "rasterize_face_index_map",
    "rasterize_face_index_map_and_weight_map",
    "rasterize_rgbad",
    "rasterize_silhouettes",
    "rasterize_weight_map",
    "vertices_to_faces",
]

DEFAULT_IMAGE_SIZE = 256
DEFAULT_ANTI_ALIASING = True
DEFAULT_NEAR = 0.1
DEFAULT_FAR = 100.0
DEFAULT_EPS = 1e-4
DEFAULT_BACKGROUND_COLOR = (0.0, 0.0, 0.0)


class RGBAD(NamedTuple):
    """Outputs of ``rasterize_rgbad``; an entry not asked for is None."""

    rgb: jax.Array | None  # float32 [..., H, W, 3]; background_color where nothing is drawn.
    alpha: jax.Array | None  # float32 [..., H, W]; 1 where a face is drawn, 0 elsewhere.
    depth: jax.Array | None  # float32 [..., H, W]; view depth, `far` on background.


def vertices_to_faces(vertices: ArrayLike, faces: ArrayLike) -> jax.Array:
    """Gathers the vertices of each face.

    Args:
      vertices: float32 ``[..., V, 3]``.
      faces: int32 ``[..., F, 3]`` vertex indices in ``[0, V)``; batch dims broadcast. A row of
        three -1 is padding, not a face: meshes of different sizes batch together padded to the
        largest ``F`` and ``V`` (padding vertices are simply never referenced).

    Returns:
      float32 ``[..., F, 3, 3]``, all 0 for padding rows (a zero-area face at the eye, which draws
      nothing). Differentiable in ``vertices``; padding passes no gradient. An index outside
      ``[0, V)`` raises (``jax.errors.JaxRuntimeError`` naming ``faces``, also under jit) instead of
      being clamped as a plain gather would; so does a row with some but not all indices -1 (a
      ``ValueError`` naming ``faces`` for concrete faces).
    """
    v = check.float_array("vertices", vertices, (None, 3))
    f = check.faces_array("faces", faces)
    check.batch({"vertices": v.shape[:-2], "faces": f.shape[:-2]})
    return _vertices_to_faces(v, f)


def _vertices_to_faces(vertices: jax.Array, faces: np.ndarray | jax.Array) -> jax.Array:
    """``vertices_to_faces`` of checked arguments. Known faces are prepared in numpy: a
    constant ``faces`` under ``jit`` then reaches the kernel as it is, with nothing for XLA to
    fold (a reduction over a large constant costs seconds of compilation)."""
    padding: np.ndarray | jax.Array
    if isinstance(faces, np.ndarray):
        padding = np.all(faces == -1, axis=-1)
        filled = np.where(padding[..., None], 0, faces)
        # Known faces in range need no check on the device (and no wait for it); known faces
        # out of range raise here, eagerly or at trace time.
        check.face_range("faces", np.where(padding[..., None], -1, faces), vertices.shape[-2])
        checked = True
        if not padding.any():
            return _ops.gather_faces(vertices, faces, checked)
        fv = _ops.gather_faces(vertices, filled, checked)
    else:
        padding = jnp.all(faces == -1, axis=-1)
        fv = _ops.gather_faces(vertices, jnp.where(padding[..., None], 0, faces), False)
    return jnp.where(padding[..., None, None], 0.0, fv)


def _config(
    image_size: int | Sequence[int],
    anti_aliasing: bool,
    near: float,
    far: float,
    eps: float,
    background_color: Sequence[float],
) -> _ops.RasterConfig:
    """Checked settings of one rasterization."""
    height, width = check.image_size(image_size)
    near, far = check.depth_range(near, far)
    bg = check.colour("background_color", background_color)
    scale = 2 if anti_aliasing else 1
    return _ops.RasterConfig(height * scale, width * scale, near, far, check.eps(eps), bg)


def _face_vertices(
    faces: ArrayLike, textures: ArrayLike | None
) -> tuple[jax.Array, jax.Array | None]:
    """Checked projected ``faces [..., F, 3, 3]`` and ``textures [..., F, T, T, T, 3]``."""
    fv = check.float_array("faces", faces, (None, 3, 3))
    check.num_faces("faces", fv.shape[-3])
    if textures is None:
        return fv, None
    tex = check.color_array("textures", textures, (None, None, None, None, 3))
    check.texture_cube(tex, fv.shape[-3])
    check.batch({"faces": fv.shape[:-3], "textures": tex.shape[:-5]})
    return fv, tex


def _finish(image: jax.Array, channels: bool, anti_aliasing: bool) -> jax.Array:
    """Flips rows so that row 0 is the top, then 2x2-averages when anti-aliasing."""
    if not channels:
        image = image[..., None]
    image = jnp.flip(image, axis=-3)
    if anti_aliasing:
        # Strided slices, not a reshape: explicit sharding cannot type a reshape of sharded batches.
        rows = image[..., 0::2, :, :] + image[..., 1::2, :, :]
        image = (rows[..., 0::2, :] + rows[..., 1::2, :]) * 0.25
    return image if channels else image[..., 0]


def _rgbad(
    fv: jax.Array,
    tex: jax.Array | None,
    cfg: _ops.RasterConfig,
    anti_aliasing: bool,
    return_rgb: bool = True,
    return_alpha: bool = True,
    return_depth: bool = True,
    shader: _ops.Shader | None = None,
) -> RGBAD:
    """``rasterize_rgbad`` of checked arguments (``tex`` None: no rgb); ``shader``: the pixelwise
    shader of ``tex`` (default: the texture cubes of ``fv``'s faces)."""
    if not (return_rgb or return_alpha):
        # The depth alone: no image for Kato's rule (whose forward mode would raise).
        depth = _ops.fragments(fv, cfg).depth if return_depth else None
        return RGBAD(None, None, None if depth is None else _finish(depth, False, anti_aliasing))
    tex = tex if return_rgb else None
    if tex is not None and shader is None:
        shader = _ops.cube_shader(fv, cfg.eps)
    elif tex is None:
        shader = None
    bg = jnp.asarray(cfg.background, jnp.float32)
    rgb, alpha, depth = _ops.shade(fv, cfg, shader, (tex,), bg, pixelwise=True)
    return RGBAD(
        _finish(rgb, True, anti_aliasing) if return_rgb and rgb is not None else None,
        _finish(alpha, False, anti_aliasing) if return_alpha else None,
        _finish(depth, False, anti_aliasing) if return_depth else None,
    )


def rasterize_rgbad(
    faces: ArrayLike,
    textures: ArrayLike | None = None,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    eps: float = DEFAULT_EPS,
    background_color: Sequence[float] = DEFAULT_BACKGROUND_COLOR,
    return_rgb: bool = True,
    return_alpha: bool = True,
    return_depth: bool = True,
) -> RGBAD:
    """Renders rgb, alpha and depth of projected faces.

    Args:
      faces: float32 ``[..., F, 3, 3]`` projected face vertices (NDC x, y; view depth z), in
        front of the camera (not clipped here: see ``nmr_jax.clip_faces``).
      textures: float32 ``[..., F, T, T, T, 3]`` colour cubes; required for rgb.
      image_size: ``S`` or ``(H, W)`` of the returned images.
      anti_aliasing: rasterize at twice the size and average 2x2 blocks (depth then mixes in
        ``far`` at silhouette edges, as in the original).
      near, far: pixels whose depth is not strictly between them are not drawn.
      eps: texture-coordinate clamp margin and the offset of Kato's distances.
      background_color: RGB of pixels where nothing is drawn.
      return_rgb, return_alpha, return_depth: which maps to return.

    Returns:
      ``RGBAD(rgb [..., H, W, 3], alpha [..., H, W], depth [..., H, W])``, None where not asked.
    """
    if return_rgb and textures is None:
        raise ValueError("textures are required when return_rgb is True")
    fv, tex = _face_vertices(faces, textures if return_rgb else None)
    cfg = _config(image_size, anti_aliasing, near, far, eps, background_color)
    return _rgbad(fv, tex, cfg, anti_aliasing, return_rgb, return_alpha, return_depth)


def rasterize(
    faces: ArrayLike,
    textures: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    eps: float = DEFAULT_EPS,
    background_color: Sequence[float] = DEFAULT_BACKGROUND_COLOR,
) -> jax.Array:
    """rgb only: float32 ``[..., H, W, 3]``; see ``rasterize_rgbad`` for the arguments."""
    out = rasterize_rgbad(
        faces, textures, image_size, anti_aliasing, near, far, eps, background_color,
        return_alpha=False, return_depth=False,
    )  # fmt: skip
    return cast(jax.Array, out.rgb)


def rasterize_silhouettes(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    eps: float = DEFAULT_EPS,
) -> jax.Array:
    """alpha only: float32 ``[..., H, W]``, 1 where a face is drawn; Kato's gradient from it."""
    out = rasterize_rgbad(
        faces, None, image_size, anti_aliasing, near, far, eps,
        return_rgb=False, return_depth=False,
    )  # fmt: skip
    return cast(jax.Array, out.alpha)


def rasterize_depth(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> jax.Array:
    """depth only: float32 ``[..., H, W]``, ``far`` on background; exact gradient, face ids fixed."""
    out = rasterize_rgbad(
        faces, None, image_size, anti_aliasing, near, far,
        return_rgb=False, return_alpha=False,
    )  # fmt: skip
    return cast(jax.Array, out.depth)


def rasterize_face_index_map_and_weight_map(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> tuple[jax.Array, jax.Array]:
    """Which face each pixel sees, and where on it (the iPERDance fork's maps).

    Maps are at the rasterized resolution (twice ``image_size`` with anti-aliasing, as the fork) with
    row 0 at the top, like the images. Only faces counter-clockwise in the image are drawn (no
    ``fill_back`` here): for a mesh as ``Renderer`` draws it, pass its faces followed by their
    reversed copies, so that ``face_index`` indexes that doubled list.

    Returns:
      ``face_index``: int32 ``[..., H', W']``, -1 on background; ``weights``: float32
      ``[..., H', W', 3]`` screen-space barycentric weights of the face's three vertices (0 on
      background).

    The weights are differentiable in x and y of ``faces`` (z has no effect on them): the exact
    derivative within each face with the face index held fixed, as nvdiffrast's ``interpolate``,
    so values interpolated with them (``sum_k w_k a[face_index, k]``) pass gradients to the
    vertices too. Pixels gained or lost as an edge moves are not seen by this gradient (use the
    rgb or alpha images, whose Kato gradient is about them).
    """
    fv, _ = _face_vertices(faces, None)
    cfg = _config(image_size, anti_aliasing, near, far, DEFAULT_EPS, (0, 0, 0))
    face_index, weights = _ops.face_index_and_weights(fv, cfg)
    return jnp.flip(face_index, axis=-2), jnp.flip(weights, axis=-3)


def rasterize_face_index_map(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> jax.Array:
    """int32 ``[..., H', W']`` face index map, -1 on background; see
    ``rasterize_face_index_map_and_weight_map``."""
    return rasterize_face_index_map_and_weight_map(faces, image_size, anti_aliasing, near, far)[0]


def rasterize_weight_map(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> jax.Array:
    """float32 ``[..., H', W', 3]`` barycentric weight map, 0 on background; see
    ``rasterize_face_index_map_and_weight_map``."""
    return rasterize_face_index_map_and_weight_map(faces, image_size, anti_aliasing, near, far)[1]
