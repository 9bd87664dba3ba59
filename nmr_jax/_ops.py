"""Differentiable wrappers of the kernels (private): ``jax.custom_jvp`` rules whose tangents are
linear maps transposed by the backward kernels (``_linear.linear_call``), and Kato's gradient.

The maps here are at the rasterized resolution with row 0 at y = -1; flipping and anti-aliasing
are plain jnp in the public layer, so autodiff un-flips and un-pools the incoming gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from nmr_jax import _ffi
from nmr_jax._linear import linear_call


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def gather_faces(vertices: jax.Array, faces: jax.Array, checked: bool) -> jax.Array:
    """vertices [*b, V, 3] f32, faces [*b, F, 3] i32 -> [*b, F, 3, 3]; bad indices raise.
    ``checked``: all indices are known to be in [0, V) (see ``_ffi.gather_faces``)."""
    return _ffi.gather_faces(vertices, faces, checked)


@gather_faces.defjvp
def _gather_jvp(checked: bool, primals: tuple, tangents: tuple) -> tuple:
    vertices, faces = primals
    shape = vertices.shape
    out = _ffi.gather_faces(vertices, faces, checked)
    (tangent,) = linear_call(
        # The primal call checked the indices: the tangent's gather need not.
        lambda res, lin: (_ffi.gather_faces(lin[0], res[0], True),),
        lambda res, cts: (_ffi.scatter_faces(res[0], cts[0], shape),),
        (faces,),
        (tangents[0],),
        like=(out,),
    )
    return out, tangent


@dataclasses.dataclass(frozen=True)
class RasterConfig:
    """Static settings of one rasterization (hashable: it is a ``nondiff_argnums`` argument)."""

    height: int  # Rows rasterized (2x the output with anti-aliasing).
    width: int  # Columns rasterized.
    near: float  # Pixels with depth <= near are dropped.
    far: float  # Pixels with depth >= far are dropped; background depth.
    eps: float  # Texture clamp margin and Kato's distance offset.
    background: tuple[float, float, float]  # RGB of uncovered pixels.


class Fragments(NamedTuple):
    """What a shader sees at each pixel of the rasterized image (its resolution: twice the output
    with anti-aliasing), row 0 at the top as in the images.

    Differentiable in the face vertices with the face index held fixed (as nvdiffrast's
    ``interpolate``): ``bary_screen`` in their x and y, ``bary`` and ``depth`` in x, y and z.
    """

    face_index: jax.Array  # int32 [..., H, W]: the face drawn at each pixel, -1 on background.
    bary: jax.Array  # float32 [..., H, W, 3]: perspective-correct barycentrics, 0 on background.
    bary_screen: jax.Array  # float32 [..., H, W, 3]: screen-space barycentrics, 0 on background.
    depth: jax.Array  # float32 [..., H, W]: view depth, `far` on background.
    # bool [..., H, W]: the pixel shows the reversed copy of its face (``Renderer.fill_back``),
    # so its normals point the other way; False from the rasterize functions.
    back: jax.Array


Shader = Callable[..., jax.Array]


def fragments(face_vertices: jax.Array, cfg: RasterConfig) -> Fragments:
    """The kernel's maps as rasterized (row 0 at y = -1), with their vertex gradients."""
    face_index, weights, depth = _ffi.rasterize(
        jax.lax.stop_gradient(face_vertices), cfg.height, cfg.width, cfg.near, cfg.far
    )
    weights, bary, depth = _vertex_differentiable(face_vertices, face_index, weights, depth)
    return Fragments(face_index, bary, weights, depth, jnp.zeros(face_index.shape, bool))


def _perspective_bary(
    face_vertices: jax.Array, face_index: jax.Array, weights: jax.Array, depth: jax.Array
) -> jax.Array:
    """The kernel's perspective-correct texture coordinate w_k zp / z_k, rounded as it does."""
    covered = (face_index >= 0)[..., None]
    # Background pixels read face 0, whose depth may be 0 (padding): 1 keeps them finite.
    z = jnp.where(covered, _pixel_faces(face_vertices, face_index)[..., 2], 1.0)
    return weights * (depth[..., None] / z)


@jax.custom_jvp
def _vertex_differentiable(
    face_vertices: jax.Array, face_index: jax.Array, weights: jax.Array, depth: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The kernel's weights, the perspective-correct barycentrics and the depth, passing their
    gradients on to the face vertices (one kernel, nmr_fragments_bwd)."""
    return weights, _perspective_bary(face_vertices, face_index, weights, depth), depth


@_vertex_differentiable.defjvp
def _vertex_differentiable_jvp(primals: tuple, tangents: tuple) -> tuple:
    fv, fi, w, d = primals
    # weights and depth come from a kernel run on constant vertices: only fv has a tangent.
    out = _vertex_differentiable(fv, fi, w, d)
    res = (fv, fi, w, d)
    return out, linear_call(_fragments_tangent, _fragments_transpose, res, tangents[:1], like=out)


def _fragments_tangent(res: tuple, lin: tuple) -> tuple:
    """The fragments' tangent at covered pixels, as nmr_core.h ``fragment_grad`` differentiates
    them: the weights w = M^-1 [xp, yp, 1] (unclamped: covered pixels have w in [0, 1]), then
    zp = 1 / sum(w_m / z_m) and b_k = w_k zp / z_k at the kernel's w and zp."""
    fv, fi, w, zp = res
    covered = fi >= 0
    w_dot = jax.jvp(lambda fv: _edge_weights(fv, fi), (fv,), lin)[1]
    # Background pixels read face 0, whose depth may be 0 (padding): 1 keeps them finite.
    z = jnp.where(covered[..., None], _pixel_faces(fv, fi)[..., 2], 1.0)
    z_dot = _pixel_faces(lin[0], fi)[..., 2]
    zp_dot = -(zp**2) * jnp.sum(w_dot / z - w * z_dot / z**2, axis=-1)
    zp_ = zp[..., None]
    b_dot = (w_dot * zp_ + w * zp_dot[..., None] - w * zp_ * z_dot / z) / z
    on = lambda t: jnp.where(covered[..., None] if t.ndim > fi.ndim else covered, t, 0.0)  # noqa: E731
    return on(w_dot), on(b_dot), on(zp_dot)


def _fragments_transpose(res: tuple, cts: tuple) -> tuple:
    return (_ffi.fragments_bwd(*res, *cts),)


@jax.custom_jvp
def interpolate_corners(attributes: jax.Array, face_index: jax.Array, bary: jax.Array) -> jax.Array:
    """Face-corner attributes [*b, F, 3, C] at the pixels [*b, H, W] with barycentrics
    [*b, H, W, 3] -> [*b, H, W, C], 0 on background; differentiable in attributes and bary."""
    return _ffi.interpolate(attributes, face_index, bary)


@interpolate_corners.defjvp
def _interpolate_jvp(primals: tuple, tangents: tuple) -> tuple:
    attributes, face_index, bary = primals
    out = _ffi.interpolate(attributes, face_index, bary)
    (tangent,) = linear_call(
        # Bilinear: linear in the attributes and in the barycentrics.
        lambda res, lin: (
            _ffi.interpolate(lin[0], res[1], res[2]) + _ffi.interpolate(res[0], res[1], lin[1]),
        ),
        lambda res, cts: _ffi.interpolate_bwd(res[0], res[1], res[2], cts[0]),
        (attributes, face_index, bary),
        (tangents[0], tangents[2]),
        like=(out,),
    )
    return out, tangent


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def sample_image(image: jax.Array, uv: jax.Array, bilinear: bool, wrap: bool) -> jax.Array:
    """image [*b, Ht, Wt, C] sampled at uv [*b, H, W, 2] -> [*b, H, W, C] (nmr_core.h
    ``image_taps``); differentiable in image and uv."""
    return _ffi.sample_image(image, uv, bilinear, wrap)


@sample_image.defjvp
def _sample_image_jvp(bilinear: bool, wrap: bool, primals: tuple, tangents: tuple) -> tuple:
    image, uv = primals
    out = _ffi.sample_image(image, uv, bilinear, wrap)

    def tangent(res: tuple, lin: tuple) -> tuple:
        image, uv = res
        # Each pixel's derivative in (u, v) per channel [C, *b, H, W, 2], from the backward
        # kernel given a unit gradient in one channel (uv broadcast to the output first, so
        # that it is not summed over the image's batch).
        uv_out = jnp.broadcast_to(uv, (*out.shape[:-1], 2))
        units = jnp.eye(out.shape[-1], dtype=jnp.float32)
        unit = lambda e: _ffi.sample_image_bwd(  # noqa: E731
            image, uv_out, jnp.broadcast_to(e, out.shape), bilinear, wrap
        )[1]
        d_uv = jax.vmap(unit)(units)
        along = jnp.moveaxis(jnp.sum(d_uv * lin[1], axis=-1), 0, -1)
        return (_ffi.sample_image(lin[0], uv, bilinear, wrap) + along,)

    def transpose(res: tuple, cts: tuple) -> tuple:
        return _ffi.sample_image_bwd(res[0], res[1], cts[0], bilinear, wrap)

    return out, linear_call(tangent, transpose, (image, uv), tangents, like=(out,))[0]


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _kato(face_vertices: jax.Array, face_index: jax.Array, image: jax.Array, eps: float):
    """The identity on ``image`` [*b, H, W, C] (as rasterized, background and alpha included),
    adding Kato's gradient of the face vertices to the image's own gradient."""
    return image


def _kato_jvp(eps: float, primals: tuple, tangents: tuple) -> tuple:
    face_vertices, face_index, image = primals
    fv_dot, _, image_dot = tangents
    if type(image_dot) is SymbolicZero:
        image_dot = jnp.zeros_like(image)
    if type(fv_dot) is SymbolicZero:  # textures, colours, lights: the image's own tangent
        return image, image_dot
    # Kato's rule is a backward pass only: its "tangent" is a stand-in that raises if evaluated
    # (jvp), its transpose Kato's gradient, so reverse mode (linearize, then transpose) gets it.
    (kato,) = linear_call(
        lambda res, lin: (_kato_no_jvp_p.bind(res[2]),),
        lambda res, cts: (_ffi.kato_bwd(res[0], res[1], res[2], cts[0], eps),),
        (face_vertices, face_index, image),
        (fv_dot,),
        like=(image,),
    )
    return image, image_dot + kato


_kato.defjvp(_kato_jvp, symbolic_zeros=True)

KATO_NO_JVP = (
    "Kato's approximate gradient has no forward mode (jax.jvp, jax.jacfwd, jax.linearize): it "
    "is not linear in the incoming gradient (only pixels whose change would lower the loss "
    "contribute), so it is not the transpose of any Jacobian-vector product. The images of "
    "Kato's rule (rgb and alpha of Renderer.render, render_silhouettes, rasterize_rgbad, "
    "rasterize, rasterize_silhouettes) have forward-mode derivatives with respect to textures, "
    "colours, lights and shader arguments, not the vertices or the camera. For forward mode "
    "with respect to the vertices use a soft rule's images: its colours and alpha "
    "(Renderer(rule=nmr_jax.SoftRule(...)).render, nmr_jax.soft_rgb) and silhouettes "
    "(render_silhouettes, nmr_jax.soft_silhouettes), the depth map, the fragments or the "
    "layers (nmr_jax.rasterize_layers blended by nmr_jax.softmax_blend), or put "
    "jax.lax.stop_gradient on the vertices (or the hard image) where its vertex derivative is "
    "not needed."
)


def _kato_no_jvp(*args: Any, **kwargs: Any) -> Any:
    raise TypeError(KATO_NO_JVP)


# The stand-in for Kato's tangent: shaped like the image, it raises when run or compiled.
_kato_no_jvp_p = Primitive("nmr_kato_no_jvp")
_kato_no_jvp_p.def_impl(_kato_no_jvp)
_kato_no_jvp_p.def_abstract_eval(lambda image: image)
batching.primitive_batchers[_kato_no_jvp_p] = lambda args, dims: (
    _kato_no_jvp_p.bind(*args),
    dims[0],
)
mlir.register_lowering(_kato_no_jvp_p, _kato_no_jvp)


def shade(
    face_vertices: jax.Array,
    cfg: RasterConfig,
    shader: Shader | None,
    shader_args: tuple,
    background: jax.Array | None,
    pixelwise: bool = False,
) -> tuple[jax.Array | None, jax.Array, jax.Array]:
    """(image [*b, H, W, C] or None without a shader, alpha [*b, H, W], depth [*b, H, W]), as
    rasterized (row 0 at y = -1).

    The shader sees the fragments row 0 at the top, except a ``pixelwise`` one (each pixel's
    output a function of that pixel's fragment alone: the package's own cube and vertex-colour
    shaders), which sees them as rasterized and so costs no flips of the maps. Autodiff gives the
    gradient of what it reads (its arguments, and the fragments' vertex gradients), Kato's rule on the composited image and
    alpha adds the gradient of where the faces are drawn. Uncovered pixels take ``background``
    (None: the shader's output there, for shaders that composite their own).
    """
    frags = fragments(face_vertices, cfg)
    covered = frags.face_index >= 0
    alpha = covered.astype(jnp.float32)
    if shader is None:
        image = alpha[..., None]
    else:
        if pixelwise:
            out = shader(frags, *shader_args)
        else:
            top = Fragments(*(jnp.flip(m, axis=frags.face_index.ndim - 2) for m in frags))
            out = jnp.flip(shader_output(shader(top, *shader_args), top), axis=-3)
        rgb = out.astype(jnp.float32)
        if background is not None:
            rgb = jnp.where(covered[..., None], rgb, background)
        image = jnp.concatenate([rgb, alpha[..., None]], axis=-1)
    image = _kato(face_vertices, frags.face_index, image, cfg.eps)
    rgb_out = None if shader is None else image[..., :-1]
    return rgb_out, image[..., -1], frags.depth


def shader_output(out: jax.Array, frags: Fragments) -> jax.Array:
    """A shader's result, checked before any jnp op combines it with the maps."""
    if jnp.shape(out)[:-1] != frags.face_index.shape:
        raise ValueError(
            f"the shader must return [..., H, W, C] with [..., H, W] = "
            f"{frags.face_index.shape} like the fragments' face_index, got {jnp.shape(out)}"
        )
    return out


@partial(jax.custom_jvp, nondiff_argnums=(5,))
def sample_cubes(
    face_vertices: jax.Array,
    textures: jax.Array,
    face_index: jax.Array,
    weights: jax.Array,
    depth: jax.Array,
    eps: float,
) -> jax.Array:
    """The original's trilinear texture-cube colours [*b, H, W, 3], 0 on background (the kernel
    works pixel by pixel: any row order). As the original, only the textures get a derivative."""
    return _ffi.sample_textures(face_vertices, textures, face_index, weights, depth, eps)


@sample_cubes.defjvp
def _sample_cubes_jvp(eps: float, primals: tuple, tangents: tuple) -> tuple:
    face_vertices, textures, face_index, weights, depth = primals
    res = (face_vertices, face_index, weights, depth)
    shape = textures.shape
    out = _ffi.sample_textures(face_vertices, textures, face_index, weights, depth, eps)
    (tangent,) = linear_call(
        # Trilinear sampling is linear in the textures: the forward kernel gives the tangent.
        lambda r, lin: (_ffi.sample_textures(r[0], lin[0], r[1], r[2], r[3], eps),),
        lambda r, cts: (_ffi.sample_textures_bwd(r[0], r[1], r[2], r[3], cts[0], eps, shape),),
        res,
        tangents[1:2],
        like=(out,),
    )
    return out, tangent


def cube_shader(face_vertices: jax.Array, eps: float) -> Shader:
    """The shader of texture cubes [*b, F, T, T, T, 3] of the faces ``face_vertices``."""
    return lambda frags, textures: sample_cubes(
        face_vertices, textures, frags.face_index, frags.bary_screen, frags.depth, eps
    )


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
    w = jnp.clip(_edge_weights(face_vertices, face_index), 0.0, 1.0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    w = w / jnp.where(total > 0, total, 1.0)
    return jnp.where((face_index >= 0)[..., None], w, 0.0)


def _edge_weights(face_vertices: jax.Array, face_index: jax.Array) -> jax.Array:
    """Each pixel's edge functions over twice its face's area [*b, H, W, 3], before the clamp
    (arbitrary but finite on background)."""
    height, width = face_index.shape[-2:]
    covered = face_index >= 0
    face = _pixel_faces(face_vertices, face_index)
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
    return edge / area2[..., None]


def _pixel_faces(face_vertices: jax.Array, face_index: jax.Array) -> jax.Array:
    """[*b, H, W, 3, 3]: the vertices of each pixel's face (face 0 on background)."""
    return take_rows(face_vertices, 3, jnp.maximum(face_index, 0), 2)


def take_rows(table: jax.Array, table_core: int, index: jax.Array, index_core: int) -> jax.Array:
    """Rows of ``table [*b, N, *rest]`` (``table_core = 1 + len(rest)``) at ``index [*b', *I]``
    (``index_core = len(I)``) -> ``[*broadcast(b, b'), *I, *rest]``.

    A plain gather per batch element, ``vmap``-ed over the batch: no reshape (explicit sharding
    cannot type a reshape of sharded batches) and no broadcast of the table over the index dims
    (whose transpose would sum over a table-sized copy per row of pixels).
    """
    if table.shape[table.ndim - table_core] == 0:  # no rows (an empty mesh): nothing is read
        batch = jnp.broadcast_shapes(
            table.shape[: table.ndim - table_core], index.shape[: index.ndim - index_core]
        )
        rest = table.shape[table.ndim - table_core + 1 :]
        return jnp.zeros((*batch, *index.shape[index.ndim - index_core :], *rest), table.dtype)
    rank = max(table.ndim - table_core, index.ndim - index_core)
    t = jnp.expand_dims(table, tuple(range(rank - (table.ndim - table_core))))
    i = jnp.expand_dims(index, tuple(range(rank - (index.ndim - index_core))))
    return _take(t, i, rank)


def _take(table: jax.Array, index: jax.Array, batch_rank: int) -> jax.Array:
    if batch_rank == 0:
        return jnp.take(table, index, axis=0)
    if table.shape[0] == 1 and index.shape[0] == 1:
        return _take(table[0], index[0], batch_rank - 1)[None]
    # A size-1 side is shared by the whole batch dim, not broadcast.
    t_axis = None if table.shape[0] == 1 else 0
    i_axis = None if index.shape[0] == 1 else 0
    t = table[0] if t_axis is None else table
    i = index[0] if i_axis is None else index
    return jax.vmap(partial(_take, batch_rank=batch_rank - 1), in_axes=(t_axis, i_axis))(t, i)
