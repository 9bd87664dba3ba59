"""Programmable shading: any ``jax.numpy`` function of the rasterized fragments, with Kato's
visibility gradient for the vertices and autodiff for everything the shader reads.

A shader is a function ``shader(fragments, *shader_args) -> [..., H, W, C]`` (any ``C``: colours,
features, normals, labels) evaluated at every pixel of the rasterized image (twice the output
size with anti-aliasing; background pixels have ``face_index`` -1 and are replaced by the
background afterwards). ``rasterize_shaded`` (projected faces) and ``Renderer.render(...,
shader=...)`` (world meshes) composite its output over the background, anti-alias it and return
it with alpha and depth. Gradients: for the vertex positions, Kato's approximate rule on the
shaded image and alpha (the rule of the texture-cube images, through the same kernel); for the
shader's arguments (texture images, UVs, vertex attributes, lights, network weights), autodiff of
the shader with the face index held fixed; both are added when the shader also reads the vertices
(through ``fragments.bary``, ``interpolate``, ...).

Building blocks: ``interpolate`` (vertex or face-corner attributes at the pixels),
``sample_texture`` (UV-mapped images), ``vertex_normals`` and ``lambert`` (smooth shading).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _ops
from nmr_jax import _validate as check
from nmr_jax._obj import Mesh
from nmr_jax._ops import Fragments, Shader
from nmr_jax._validate import VectorLike
from nmr_jax.camera import _normalize
from nmr_jax.lighting import Lights, _lighting, lights_of
from nmr_jax.rasterize import (
    DEFAULT_ANTI_ALIASING,
    DEFAULT_EPS,
    DEFAULT_FAR,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NEAR,
    _config,
    _face_vertices,
    _finish,
    _vertices_to_faces,
    vertices_to_faces,
)

if TYPE_CHECKING:
    from nmr_jax.clip import _Clip, _Whole
    from nmr_jax.renderer import Renderer

__all__ = [
    "Fragments",
    "PointLights",
    "Shaded",
    "blinn_phong",
    "face_normals",
    "interpolate",
    "lambert",
    "mesh_colors",
    "mesh_shader",
    "rasterize_fragments",
    "rasterize_shaded",
    "sample_texture",
    "spherical_uvs",
    "vertex_normals",
]


class Shaded(NamedTuple):
    """Outputs of ``rasterize_shaded``."""

    image: jax.Array  # float32 [..., H, W, C]; the background where nothing is drawn.
    alpha: jax.Array  # float32 [..., H, W]; 1 where a face is drawn, 0 elsewhere.
    depth: jax.Array  # float32 [..., H, W]; view depth, `far` on background.


def rasterize_fragments(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> Fragments:
    """The fragments a shader sees, at the rasterized resolution (``2 * image_size`` with
    anti-aliasing), row 0 at the top.

    Args:
      faces: float32 ``[..., F, 3, 3]`` projected face vertices (NDC x, y; view depth z), in
        front of the camera: not clipped here; for faces around the camera rasterize the
        pieces of ``nmr_jax.clip_faces`` and read them back with ``nmr_jax.source_fragments``.
      image_size, anti_aliasing, near, far: as ``rasterize_rgbad``.

    Returns:
      ``Fragments(face_index int32 [..., H', W'] (-1 on background), bary float32
      [..., H', W', 3] (perspective-correct barycentrics of the face's three vertices), bary_screen
      float32 [..., H', W', 3] (screen-space), depth float32 [..., H', W'] (``far`` on
      background), back bool [..., H', W'] (all False here))``; ``bary`` and ``depth`` are
      differentiable in the faces' x, y and z, ``bary_screen`` in x and y, the face index held
      fixed.
    """
    fv, _ = _face_vertices(faces, None)
    frags = _ops.fragments(
        fv, _config(image_size, anti_aliasing, near, far, DEFAULT_EPS, (0, 0, 0))
    )
    return Fragments(*(jnp.flip(m, axis=frags.face_index.ndim - 2) for m in frags))


def rasterize_shaded(
    faces: ArrayLike,
    shader: Shader,
    shader_args: tuple = (),
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    anti_aliasing: bool = DEFAULT_ANTI_ALIASING,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    eps: float = DEFAULT_EPS,
    background: VectorLike = 0.0,
) -> Shaded:
    """Renders projected faces shaded by ``shader(fragments, *shader_args)``.

    Args:
      faces: float32 ``[..., F, 3, 3]`` projected face vertices (NDC x, y; view depth z).
      shader: a jnp function of ``Fragments`` (see ``rasterize_fragments``) and ``shader_args``
        returning float ``[..., H', W', C]`` at the rasterized resolution, row 0 at the top, with
        the fragments' batch shape (``vmap`` batches parameters).
      shader_args: the arrays (pytrees) the shader reads; gradients reach them by autodiff.
      image_size, anti_aliasing, near, far: as ``rasterize_rgbad``.
      eps: the offset of Kato's distances.
      background: scalar or ``[C]`` value of pixels where nothing is drawn.

    Returns:
      ``Shaded(image [..., H, W, C], alpha [..., H, W], depth [..., H, W])``, float32; the
      vertices get Kato's gradient through image and alpha (and the exact one through depth).
    """
    if not callable(shader):
        raise TypeError(f"shader must be a function of the fragments, got {shader!r}")
    fv, _ = _face_vertices(faces, None)
    cfg = _config(image_size, anti_aliasing, near, far, eps, (0, 0, 0))
    bg = check.float_array("background", background, ())
    if bg.ndim > 1:
        raise ValueError(f"background must be a scalar or [C], got shape {bg.shape}")
    image, alpha, depth = _ops.shade(fv, cfg, shader, tuple(shader_args), bg)
    assert image is not None  # a shader was given
    return Shaded(
        _finish(image, True, anti_aliasing),
        _finish(alpha, False, anti_aliasing),
        _finish(depth, False, anti_aliasing),
    )


def interpolate(attributes: ArrayLike, faces: ArrayLike | None, fragments: Fragments) -> jax.Array:
    """Attributes at each pixel, interpolated perspective-correctly over its face.

    Args:
      attributes: float ``[..., V, C]`` per vertex (with ``faces``) or ``[..., F, 3, C]`` per
        face corner (``faces`` None).
      faces: int32 ``[..., F, 3]`` vertex indices of the faces the fragments index, or None.
      fragments: the ``Fragments`` of those faces (``face_index [..., H, W]``).

    Returns:
      float32 ``[..., H, W, C]``: ``sum_k bary_k a_k`` over the corners ``k`` of the pixel's face,
      0 on background. Differentiable in ``attributes`` and, through ``fragments.bary`` (face
      index held fixed), in the vertices. Leading batch dims broadcast.
    """
    if not isinstance(fragments, Fragments):
        raise TypeError(f"fragments must be the Fragments a shader is given, got {fragments!r}")
    fi = fragments.face_index
    pixel_batch = fi.shape[:-2]
    if faces is None:
        corners = check.float_array("attributes", attributes, (None, 3, None))
        check.batch({"attributes": corners.shape[:-3], "fragments": pixel_batch})
    else:
        a = check.float_array("attributes", attributes, (None, None))
        f = jnp.asarray(check.index_array("faces", faces, (None, 3)))
        check.batch({"attributes": a.shape[:-2], "faces": f.shape[:-2], "fragments": pixel_batch})
        # A padding row (-1) reads vertex 0.
        corners = _ops.take_rows(a, 2, jnp.maximum(f, 0), 2)  # [..., F, 3, C]
    return _ops.interpolate_corners(corners, fi, fragments.bary)


Filter = Literal["nearest", "bilinear", "trilinear"]
Boundary = Literal["wrap", "clamp"]


def sample_texture(
    image: ArrayLike,
    uv: ArrayLike,
    filter: Filter = "bilinear",
    boundary: Boundary = "wrap",
) -> jax.Array:
    """Samples a UV-mapped image.

    Conventions (those of OBJ files and of images as imageio reads them): u runs to the right, v
    up; image row 0 is the top (v = 1), so texel ``(row j, column i)`` has its centre at
    ``uv = ((i + 0.5) / Wt, 1 - (j + 0.5) / Ht)``.

    Args:
      image: float ``[..., Ht, Wt, C]``.
      uv: float ``[..., H, W, 2]`` texture coordinates (e.g. ``interpolate`` of a mesh's UVs).
      filter: 'nearest' (the texel containing uv), 'bilinear' (the four nearest texel centres),
        or 'trilinear': bilinear in the two mip levels (2x2 box-filtered halvings; an odd size
        drops its last row or column) that bracket the footprint of a pixel, estimated from the
        neighbouring pixels of ``uv`` (on each axis the smaller of the two one-sided differences,
        so that silhouettes and UV seams do not blur a pixel); for minified textures.
      boundary: 'wrap' (repeat the image: OBJ's default) or 'clamp' (repeat its edge texels).

    Returns:
      float32 ``[..., H, W, C]``; leading batch dims of image and uv broadcast; NaN where uv
      is NaN or infinite (no texel is defined there). Differentiable in image and (except
      'nearest', and the mip level choice) in uv.
    """
    img = check.color_array("image", image, (None, None, None))
    coords = check.float_array("uv", uv, (None, None, 2))
    check.batch({"image": img.shape[:-3], "uv": coords.shape[:-3]})
    if filter not in ("nearest", "bilinear", "trilinear"):
        raise ValueError(f"filter must be 'nearest', 'bilinear' or 'trilinear', got {filter!r}")
    if boundary not in ("wrap", "clamp"):
        raise ValueError(f"boundary must be 'wrap' or 'clamp', got {boundary!r}")
    height, width = img.shape[-3:-1]
    if height == 0 or width == 0:
        raise ValueError(f"image must have at least one texel, got shape {img.shape}")
    wrap = boundary == "wrap"
    if filter != "trilinear":
        return _ops.sample_image(img, coords, filter == "bilinear", wrap)
    levels = _mip_levels(img)
    lod = jax.lax.stop_gradient(_level_of_detail(coords, height, width, len(levels) - 1))
    lo = jnp.floor(lod)
    frac = lod - lo
    # Every level is sampled and weighted: 1 - frac at the level below lod, frac above, 0 at the
    # others (whose backward then costs nothing: the kernel skips zero gradients).
    out = jnp.zeros((), jnp.float32)
    for k, level in enumerate(levels):
        weight = jnp.where(lo == k, 1 - frac, 0.0) + jnp.where(lo + 1 == k, frac, 0.0)
        out = out + weight[..., None] * _ops.sample_image(level, coords, True, wrap)
    return out


def _mip_levels(image: jax.Array) -> list[jax.Array]:
    """The image and its 2x2 box-filtered halvings down to 1x1."""
    levels = [image]
    while max(levels[-1].shape[-3:-1]) > 1:
        lv = levels[-1]
        h, w = lv.shape[-3:-1]
        if h > 1:
            lv = 0.5 * (lv[..., 0 : h - 1 : 2, :, :] + lv[..., 1:h:2, :, :])
        if w > 1:
            lv = 0.5 * (lv[..., 0 : w - 1 : 2, :] + lv[..., 1:w:2, :])
        levels.append(lv)
    return levels


def _level_of_detail(uv: jax.Array, height: int, width: int, top: int) -> jax.Array:
    """Mip level [..., H, W] in [0, top]: log2 of the larger side of a pixel's footprint in
    texels of level 0."""
    texels = uv * jnp.asarray([width, height], jnp.float32)

    def step(axis: int) -> jax.Array:
        d = jnp.diff(texels, axis=axis)
        pad = [(0, 0)] * texels.ndim
        pad[axis] = (1, 0)
        before = jnp.pad(d, pad, mode="edge")
        pad[axis] = (0, 1)
        after = jnp.pad(d, pad, mode="edge")
        # A wrapped coordinate jumps by about a texture size at a seam: the smaller side is kept.
        return jnp.minimum(jnp.linalg.norm(before, axis=-1), jnp.linalg.norm(after, axis=-1))

    rho = jnp.maximum(step(uv.ndim - 3), step(uv.ndim - 2))
    # Below one texel per pixel the texture is magnified: level 0. The floor keeps log2 finite.
    return jnp.clip(jnp.log2(jnp.maximum(rho, 1e-12)), 0.0, float(top))


def vertex_normals(vertices: ArrayLike, faces: ArrayLike) -> jax.Array:
    """Area-weighted vertex normals, float32 ``[..., V, 3]``, unit length (0 for a vertex of no
    face or of zero-area faces only).

    Each face contributes ``cross(v0 - v1, v2 - v1)`` (twice its area, along the normal the
    Renderer lights flat faces by) to its three vertices; padding rows (three -1) contribute
    nothing. ``vertices`` float ``[..., V, 3]``, ``faces`` int32 ``[..., F, 3]``; batch dims
    broadcast.
    """
    v = check.float_array("vertices", vertices, (None, 3))
    f = check.index_array("faces", faces, (None, 3))
    check.batch({"vertices": v.shape[:-2], "faces": f.shape[:-2]})
    return jnp.vectorize(_vertex_normals, signature="(v,c),(f,k)->(v,c)")(v, f)


def _vertex_normals(v: jax.Array, f: jax.Array) -> jax.Array:
    padding = jnp.all(f == -1, axis=-1)
    f = jnp.where(padding[:, None], 0, f)
    fv = v[f]  # [F, 3, 3]
    n = jnp.cross(fv[:, 0] - fv[:, 1], fv[:, 2] - fv[:, 1])
    n = jnp.where(padding[:, None], 0.0, n)
    summed = jnp.zeros_like(v).at[f.reshape(-1)].add(jnp.repeat(n, 3, axis=0))
    return _normalize(summed)


class PointLights(NamedTuple):
    """Point lights for ``lambert``, ``blinn_phong`` and ``mesh_shader``: ``L`` lights at world
    positions, each lighting a point at distance ``d`` with ``color / (c0 + c1 d + c2 d^2)``.

    A JAX pytree: gradients reach every field. Leading batch dims broadcast against the
    normals' (in ``mesh_shader``, against the image's batch).

    Fields:
      location: float ``[..., L, 3]`` world positions.
      color: float ``[..., L, 3]`` or ``[3]``: RGB intensity (default white).
      attenuation: float ``[..., L, 3]`` or ``[3]``: ``(c0, c1, c2)``, default ``(1, 0, 0)`` (no
        fall-off, as PyTorch3D's ``PointLights``); ``(0, 0, 1)`` is the inverse-square law.
    """

    location: ArrayLike
    color: VectorLike = (1.0, 1.0, 1.0)
    attenuation: VectorLike = (1.0, 0.0, 0.0)


def _point_lights(lights: PointLights, positions: ArrayLike | None) -> tuple[jax.Array, jax.Array]:
    """(unit directions towards each light, float32 [..., L, 3]; the light reaching each
    position, [..., L, 3]) at ``positions [..., 3]``."""
    if not isinstance(lights, PointLights):
        raise TypeError(f"point_lights must be a PointLights, got {lights!r}")
    if positions is None:
        raise ValueError("point_lights need positions: the world points the normals are at")
    x = check.float_array("positions", positions, (3,))
    loc = check.float_array("point_lights.location", lights.location, (None, 3))
    color = check.float_array("point_lights.color", lights.color, (3,))
    att = check.float_array("point_lights.attenuation", lights.attenuation, (3,))
    to_light = loc - x[..., None, :]
    d = jnp.sqrt(jnp.sum(to_light * to_light, -1, keepdims=True))
    falloff = att[..., 0:1] + att[..., 1:2] * d + att[..., 2:3] * d * d
    # A point at the light itself (d = 0) with pure distance fall-off gets no light, not inf.
    safe = falloff > 0
    radiance = jnp.where(safe, color / jnp.where(safe, falloff, 1.0), 0.0)
    return _normalize(to_light), radiance


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum(a * b, -1) as a matmul: an XLA:CPU fusion miscompiles the broadcast multiply-reduce
    with batched directions (see ``lighting``)."""
    return jnp.matmul(a[..., None, :], b[..., :, None])[..., 0, 0]


def lambert(
    normals: ArrayLike,
    intensity_ambient: ArrayLike = 0.5,
    intensity_directional: ArrayLike = 0.5,
    color_ambient: VectorLike = (1.0, 1.0, 1.0),
    color_directional: VectorLike = (1.0, 1.0, 1.0),
    direction: VectorLike = (0.0, 1.0, 0.0),
    *,
    point_lights: PointLights | None = None,
    positions: ArrayLike | None = None,
) -> jax.Array:
    """The Renderer's light at each normal: ``Ia Ca + Id Cd relu(normalize(n) . direction)``,
    plus ``sum_l radiance_l relu(normalize(n) . normalize(p_l - x))`` for point lights at
    ``p_l`` lighting the point ``x``.

    Args:
      normals: float ``[..., 3]`` world-space normals (e.g. ``interpolate(vertex_normals(...))``:
        renormalised here; a zero normal gets ambient light only).
      intensity_ambient, intensity_directional: scalars or ``[...]``.
      color_ambient, color_directional: float ``[..., 3]``.
      direction: float ``[..., 3]`` towards the light (not normalised, as ``lighting``).
      point_lights: optional ``PointLights`` (``radiance_l`` is its colour over its attenuation
        at the distance from ``x``).
      positions: float ``[..., 3]`` world points ``x`` of the normals; needed with point lights.

    Returns:
      float32 ``[..., 3]``: the RGB factor to multiply colours by. With the face normal of a flat
      face and no point lights this is exactly the light ``lighting`` gives that face.
    """
    n = _normalize(check.float_array("normals", normals, (3,)))
    ia, id_, ca, cd, d = lights_of(
        intensity_ambient, intensity_directional, color_ambient, color_directional, direction
    )
    # A matmul, not sum(n * d), as lighting (an XLA:CPU fusion bug with batched directions).
    cos = jax.nn.relu(jnp.matmul(n[..., None, :], d[..., :, None])[..., 0])
    light = ia[..., None] * ca + id_[..., None] * cd * cos
    if point_lights is None:
        return light
    towards, radiance = _point_lights(point_lights, positions)
    cos_l = jax.nn.relu(_dot(n[..., None, :], towards))  # [..., L]
    return light + jnp.sum(radiance * cos_l[..., None], axis=-2)


def blinn_phong(
    normals: ArrayLike,
    view: ArrayLike,
    direction: VectorLike | None = (0.0, 1.0, 0.0),
    shininess: ArrayLike = 32.0,
    intensity: ArrayLike = 0.5,
    color: VectorLike = (1.0, 1.0, 1.0),
    *,
    point_lights: PointLights | None = None,
    positions: ArrayLike | None = None,
) -> jax.Array:
    """Blinn-Phong specular light ``I C max(0, n . h)^shininess``, ``h`` the unit half vector of
    the directions towards the light and the eye; 0 where the light is behind the surface
    (``n . l <= 0``). Point lights add ``I radiance_l max(0, n . h_l)^shininess`` each, with
    ``l = normalize(p_l - x)`` (``radiance_l`` as in ``lambert``).

    Args:
      normals: float ``[..., 3]`` world-space normals (renormalised here).
      view: float ``[..., 3]`` from the surface towards the eye (renormalised here).
      direction: float ``[..., 3]`` towards the light, as ``lambert``; None: no directional light.
      shininess: scalar or ``[...]``, > 0: larger is a smaller, sharper highlight.
      intensity: scalar or ``[...]``; color: float ``[..., 3]`` (the directional light's).
      point_lights, positions: as ``lambert``.

    Returns:
      float32 ``[..., 3]``, added to the lit colour (highlights take the light's colour).
    """
    n = _normalize(check.float_array("normals", normals, (3,)))
    v = _normalize(check.float_array("view", view, (3,)))
    shine = check.float_array("shininess", shininess, ())
    if not check.is_traced(shine) and not np.all(np.asarray(shine) > 0):
        raise ValueError(f"shininess must be > 0, got {np.asarray(shine)}")
    strength = check.float_array("intensity", intensity, ())
    c = check.float_array("color", color, (3,))

    def power(n: jax.Array, towards: jax.Array, v: jax.Array, shine: jax.Array) -> jax.Array:
        cos_h = _dot(n, _normalize(towards + v))
        lit = (_dot(n, towards) > 0) & (cos_h > 0)
        # The floor keeps pow's gradient finite where the where() discards its value.
        return jnp.where(lit, jnp.maximum(cos_h, 1e-30) ** shine, 0.0)

    out = jnp.zeros((), jnp.float32)
    if direction is not None:
        d = _normalize(check.float_array("direction", direction, (3,)))
        out = (strength * power(n, d, v, shine))[..., None] * c
    if point_lights is not None:
        towards, radiance = _point_lights(point_lights, positions)
        p = power(n[..., None, :], towards, v[..., None, :], shine[..., None])  # [..., L]
        out = out + strength[..., None] * jnp.sum(radiance * p[..., None], axis=-2)
    return out


def face_normals(vertices: ArrayLike, faces: ArrayLike) -> jax.Array:
    """Unit face normals float32 ``[..., F, 3]`` as the Renderer lights flat faces:
    ``normalize(cross(v0 - v1, v2 - v1))`` (0 for a zero-area face)."""
    fv = vertices_to_faces(vertices, faces)
    return _normalize(jnp.cross(fv[..., 0, :] - fv[..., 1, :], fv[..., 2, :] - fv[..., 1, :]))


def mesh_colors(fragments: Fragments, mesh: Mesh, filter: Filter = "bilinear") -> jax.Array:
    """The unlit colour of a ``load_mesh`` mesh at each pixel, float32 ``[..., H, W, 3]``.

    A face whose material has a ``map_Kd`` image and which has UVs samples it (``sample_texture``
    with ``filter``, 'wrap' as OBJ); other faces take the mesh's vertex colours (interpolated)
    when it has them, else their material's Kd colour, else white. ``fragments`` are those of
    ``mesh.faces`` (a shader's, in the Renderer).
    """
    images = [
        None if image is None else check.color_array(f"mesh.images[{m}]", image, (None, None, 3))
        for m, image in enumerate(mesh.images)
    ]
    fi = jnp.maximum(fragments.face_index, 0)
    material = _ops.take_rows(mesh.face_materials, 1, fi, 2)
    if mesh.vertex_colors is not None:
        colors = check.color_array("mesh.vertex_colors", mesh.vertex_colors, (None, 3))
        base = interpolate(colors, mesh.faces, fragments)
    else:
        kd = check.color_array("mesh.kd", mesh.kd, (None, 3))
        kd = jnp.concatenate([kd, jnp.ones((1, 3), jnp.float32)])  # -1: no material, white
        base = _ops.take_rows(kd, 2, material, 2)
    if mesh.uvs is None:
        return base
    uv = interpolate(mesh.uvs, None, fragments)
    textured = _ops.take_rows(mesh.has_uv, 1, fi, 2)
    for m, image in enumerate(images):
        if image is not None:
            here = (textured & (material == m))[..., None]
            base = jnp.where(here, sample_texture(image, uv, filter), base)
    return base


ShadingMode = Literal["flat", "smooth"]


def mesh_shader(
    mesh: Mesh,
    renderer: Renderer,
    shading: ShadingMode = "flat",
    output: Literal["rgb", "normals"] = "rgb",
    filter: Filter = "bilinear",
    specular: float = 0.0,
    shininess: float = 32.0,
    point_lights: PointLights | None = None,
) -> tuple[Shader, tuple]:
    """``(shader, shader_args)`` rendering a ``load_mesh`` mesh lit as the Renderer lights it.

    ``renderer.render(mesh.vertices, mesh.faces, shader=shader, shader_args=args)`` draws
    ``mesh_colors`` times the Renderer's ambient and directional light (``lambert``) at each
    pixel's normal: the face normal for 'flat' shading (the Renderer's own lighting of texture
    cubes), or for 'smooth' the file's normals (``mesh.normals``, turned to the side of the face
    normal) or else ``vertex_normals`` (turned likewise), interpolated. ``output='normals'``
    draws those world normals as colours ``0.5 * (n + 1)`` instead, unlit. The back of a face
    (seen through ``fill_back``) is lit by the reversed normal. ``point_lights`` add their
    light (``lambert``'s point-light term at each pixel's world position). The shader reads the
    mesh, the Renderer's lights and the point lights from ``shader_args``, so gradients reach
    all of them. ``specular > 0`` adds a Blinn-Phong highlight (``blinn_phong``) of that
    intensity in the directional light's colour (and in each point light's), seen from the
    camera that draws: the Renderer's ``eye`` (or ``-R^T t`` in 'projection' mode), or the
    per-call ``eye`` (``R``, ``t``) given to ``render``, which hands it to the Renderer in
    ``shader_args``.
    """
    if not specular >= 0:
        raise ValueError(f"specular must be >= 0, got {specular!r}")
    if not shininess > 0:
        raise ValueError(f"shininess must be > 0, got {shininess!r}")
    if shading not in ("flat", "smooth"):
        raise ValueError(f"shading must be 'flat' or 'smooth', got {shading!r}")
    if output not in ("rgb", "normals"):
        raise ValueError(f"output must be 'rgb' or 'normals', got {output!r}")
    if point_lights is not None and not isinstance(point_lights, PointLights):
        raise TypeError(f"point_lights must be a PointLights, got {point_lights!r}")

    def shader(
        frags: Fragments, mesh: Mesh, renderer: Renderer, points: PointLights | None
    ) -> jax.Array:
        flat = face_normals(mesh.vertices, mesh.faces)
        if renderer.handedness == "right":  # the Renderer lights the mirrored side
            flat = -flat
        normal = _ops.take_rows(flat, 2, jnp.maximum(frags.face_index, 0), 2)
        if shading == "smooth":
            if mesh.normals is None:
                # Turned as the flat normals are (vertex_normals sums the original's).
                corners = vertex_normals(mesh.vertices, mesh.faces)[mesh.faces]
                if renderer.handedness == "right":
                    corners = -corners
            else:
                # The file's normals may point either way round the Renderer's convention.
                side = jnp.sign(jnp.sum(mesh.normals * flat[:, None, :], -1, keepdims=True))
                corners = mesh.normals * jnp.where(side == 0, 1.0, side)
            normal = interpolate(corners, None, frags)
        normal = jnp.where(frags.back[..., None], -normal, normal)
        if output == "normals":
            return 0.5 * (_normalize(normal) + 1.0)
        position = None
        if points is not None or specular > 0:
            position = interpolate(mesh.vertices, mesh.faces, frags)
        if points is not None:
            # The lights' batch dims are the image's: make room for the pixels' rows, columns.
            points = PointLights(
                *(jnp.asarray(x, jnp.float32)[..., None, None, :, :] for x in _as_rows(points))
            )
        light = lambert(
            normal,
            renderer.light_intensity_ambient,
            renderer.light_intensity_directional,
            renderer.light_color_ambient,
            renderer.light_color_directional,
            renderer.light_direction,
            point_lights=points,
            positions=position,
        )
        rgb = mesh_colors(frags, mesh, filter) * light
        if specular == 0:
            return rgb
        assert position is not None
        highlight = blinn_phong(
            normal,
            _camera_position(renderer)[..., None, None, :] - position,
            renderer.light_direction,
            shininess,
            specular,
            renderer.light_color_directional,
            point_lights=points,
            positions=position,
        )
        return rgb + highlight

    return shader, (mesh, renderer, point_lights)


def _as_rows(lights: PointLights) -> PointLights:
    """The lights' colour and attenuation as ``[..., L, 3]`` rows, like their location."""
    loc = check.float_array("point_lights.location", lights.location, (None, 3))
    color = check.float_array("point_lights.color", lights.color, (3,))
    att = check.float_array("point_lights.attenuation", lights.attenuation, (3,))
    if color.ndim == 1:
        color = jnp.broadcast_to(color, loc.shape[-2:])
    if att.ndim == 1:
        att = jnp.broadcast_to(att, loc.shape[-2:])
    return PointLights(loc, color, att)


def _camera_position(renderer: Renderer) -> jax.Array:
    """The Renderer's camera centre in world coordinates, float32 [..., 3]."""
    if renderer.camera_mode == "projection":
        r = jnp.asarray(renderer.R, jnp.float32)
        t = jnp.asarray(renderer.t, jnp.float32)
        return -jnp.einsum("...ji,...j->...i", r, t.reshape(*r.shape[:-2], 3))
    return jnp.asarray(renderer.eye, jnp.float32)


def _render(
    renderer: Renderer,
    clip: _Clip | _Whole,
    mesh: Any,
    world: jax.Array,
    lights: Lights,
    shader: Shader | None,
    shader_args: tuple,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``Renderer.render`` of a checked mesh with a shader or vertex colours: (rgb, depth,
    alpha). ``clip``: the projected pieces of the Renderer's face list (the reversed copies
    follow with ``fill_back``) in front of the near plane, or the faces where none is cut;
    ``world``: that list's world vertices."""
    cfg = _config(
        renderer.image_size,
        renderer.anti_aliasing,
        renderer.near,
        renderer.far,
        renderer.rasterizer_eps,
        renderer.background_color,
    )
    if shader is None:
        light = _lighting(world, jnp.ones((*world.shape[:-2], 1, 1, 1, 3), jnp.float32), lights)
        colors = _vertices_to_faces(mesh.vertex_colors, renderer._both_sides(mesh.faces))
        shade = _vertex_color_shader(renderer.rasterizer_eps)
        args: tuple = (colors * light[..., 0, 0, 0, None, :],)
    else:
        shade, args = _user_shader(shader, mesh.faces.shape[-2], renderer.fill_back), shader_args
    background = jnp.asarray(renderer.background_color, jnp.float32)
    image, alpha, depth = _ops.shade(
        clip.faces,
        cfg,
        _with_background(clip.shader(shade), background),
        args,
        None,
        pixelwise=shader is None,
    )
    assert image is not None
    aa = renderer.anti_aliasing
    return _finish(image, True, aa), _finish(depth, False, aa), _finish(alpha, False, aa)


def _with_background(shader: Shader, background: jax.Array) -> Shader:
    """The Renderer's background_color behind a 3-channel shader's image, 0 behind others."""

    def composited(frags: Fragments, *args: object) -> jax.Array:
        out = shader(frags, *args)
        bg = background if out.shape[-1] == 3 else 0.0
        return jnp.where((frags.face_index >= 0)[..., None], out, bg)

    return composited


def _user_shader(shader: Shader, num_faces: int, fill_back: bool) -> Shader:
    """The user's shader, seeing the fragments of the user's faces: with fill_back, a pixel of
    a reversed copy (face num_faces + i) shows face i, from the back, with its barycentrics
    in the original vertex order; its output's shape is checked."""
    if not fill_back:
        return lambda frags, *args: _ops.shader_output(shader(frags, *args), frags)

    def on_user_faces(frags: Fragments, *args: object) -> jax.Array:
        back = frags.face_index >= num_faces
        flip = back[..., None]
        out = shader(
            Fragments(
                jnp.where(back, frags.face_index - num_faces, frags.face_index),
                jnp.where(flip, frags.bary[..., ::-1], frags.bary),
                jnp.where(flip, frags.bary_screen[..., ::-1], frags.bary_screen),
                frags.depth,
                back,
            ),
            *args,
        )
        return _ops.shader_output(out, frags)

    return on_user_faces


def _vertex_color_shader(eps: float) -> Shader:
    """Lit vertex colours ``[..., F, 3, 3]`` of the Renderer's face list, as a shader.

    As the original's texture cubes sample them (the cube trick this replaces), each
    barycentric is clamped to ``1 - rasterizer_eps`` and the vertices get Kato's gradient only
    (the barycentrics read are held fixed); the colours get the exact gradient.
    """

    def shader(frags: Fragments, face_colors: jax.Array) -> jax.Array:
        bary = jnp.clip(jax.lax.stop_gradient(frags.bary), 0.0, 1.0 - eps)
        return _ops.interpolate_corners(face_colors, frags.face_index, bary)

    return shader


def spherical_uvs(vertices: ArrayLike, faces: ArrayLike) -> jax.Array:
    """Texture coordinates for a mesh without them: float32 ``[F, 3, 2]`` per face corner, u the
    azimuth around the y axis through the origin (``atan2(z, x)``, 0 to 1), v the elevation
    (-90 to 90 degrees as 0 to 1).

    A face across the seam (u jumping from about 1 to about 0) has its small u raised by 1, so
    that with 'wrap' sampling its corners stay neighbours. Computed in numpy (not traced):
    ``vertices`` float ``[V, 3]``, ``faces`` int ``[F, 3]``.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3] and faces [F, 3], got {v.shape} and {f.shape}")
    u = np.arctan2(v[:, 2], v[:, 0]) / (2 * np.pi) + 0.5
    # The floor keeps a vertex at the origin (no direction) at v = 0.5.
    r = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
    elevation = np.arcsin(np.clip(v[:, 1] / r, -1, 1)) / np.pi + 0.5
    corners = np.stack([u, elevation], -1)[f]  # [F, 3, 2]
    cu = corners[..., 0]
    seam = cu.max(1, keepdims=True) - cu.min(1, keepdims=True) > 0.5
    corners[..., 0] = np.where(seam & (cu < 0.5), cu + 1, cu)
    return jnp.asarray(corners, jnp.float32)
