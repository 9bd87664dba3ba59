"""The original's ``Renderer``: camera, lighting and rasterization in one immutable object."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from nmr_jax import _validate as check
from nmr_jax import shading
from nmr_jax._ops import Shader
from nmr_jax.camera import look, look_at, perspective, projection
from nmr_jax.lighting import lighting
from nmr_jax.rasterize import (
    rasterize_depth,
    rasterize_rgbad,
    rasterize_silhouettes,
    vertices_to_faces,
)

__all__ = ["Renderer"]

# The original's default eye: the distance at which a unit cube fills a 30-degree view.
_DEFAULT_EYE = (0.0, 0.0, -(1.0 / math.tan(math.radians(30.0)) + 1.0))


@dataclasses.dataclass(frozen=True)
class Renderer:
    """Renders meshes as the Neural 3D Mesh Renderer, with its options and defaults.

    Immutable and a JAX pytree: the array-valued fields (camera, lights) are leaves, so
    ``jax.grad`` can differentiate with respect to a Renderer, and ``dataclasses.replace`` or the
    per-call keywords of ``render`` change the camera without a new class. Everything else is static.

    Meshes: ``vertices`` float32 ``[..., V, 3]``, ``faces`` int32 ``[..., F, 3]`` (vertex indices,
    counter-clockwise seen from outside; a row of three -1 is padding, which draws nothing and gets
    no gradient, for batches of meshes of different sizes), ``textures`` float32
    ``[..., F, T, T, T, 3]`` or ``vertex_colors`` float32 ``[..., V, 3]`` (see ``render``). Leading
    batch dimensions of all inputs (and of camera parameters such as ``eye [..., 3]``) broadcast.
    Images: rgb ``[..., H, W, 3]``, depth and alpha ``[..., H, W]``, row 0 at the top.
    """

    image_size: int | tuple[int, int] = 256
    anti_aliasing: bool = True
    background_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fill_back: bool = True
    camera_mode: Literal["look_at", "look", "projection"] = "look_at"
    # 'projection' mode: intrinsics [..., 3, 3], rotation [..., 3, 3], translation [..., 3],
    # distortion [..., 5] (k1, k2, p1, p2, k3) and the pixel size of the image K refers to.
    K: ArrayLike | None = None
    R: ArrayLike | None = None
    t: ArrayLike | None = None
    dist_coeffs: ArrayLike | None = None
    orig_size: int | tuple[int, int] = 1024  # S or (H, W)
    # 'look_at' and 'look' modes.
    perspective: bool = True
    viewing_angle: ArrayLike = 30.0  # Half the (vertical) field of view, degrees.
    eye: check.VectorLike = _DEFAULT_EYE
    camera_direction: check.VectorLike = (0.0, 0.0, 1.0)  # 'look' mode only.
    near: float = 0.1
    far: float = 100.0
    light_intensity_ambient: ArrayLike = 0.5
    light_intensity_directional: ArrayLike = 0.5
    light_color_ambient: check.VectorLike = (1.0, 1.0, 1.0)
    light_color_directional: check.VectorLike = (1.0, 1.0, 1.0)
    light_direction: check.VectorLike = (0.0, 1.0, 0.0)
    rasterizer_eps: float = 1e-3  # rgb rendering; silhouettes and depth use 1e-4 as the original.

    def __post_init__(self) -> None:
        check.image_size(self.image_size)
        check.depth_range(self.near, self.far)
        if self.camera_mode not in ("look_at", "look", "projection"):
            raise ValueError(
                f"camera_mode must be 'look_at', 'look' or 'projection', got {self.camera_mode!r}"
            )
        check.colour("background_color", self.background_color)
        check.eps(self.rasterizer_eps)

    def transform(
        self,
        vertices: ArrayLike,
        *,
        eye: check.VectorLike | None = None,
        K: check.VectorLike | None = None,
        R: check.VectorLike | None = None,
        t: check.VectorLike | None = None,
        dist_coeffs: check.VectorLike | None = None,
    ) -> jax.Array:
        """World vertices float32 ``[..., V, 3]`` -> projected (NDC x, y; view depth z).

        With a non-square ``image_size`` and a 'look_at' or 'look' camera, x is scaled by
        ``height / width`` so that the image is not stretched; 'projection' needs no such
        correction when ``orig_size`` is ``(height, width)`` of the image K refers to.
        """
        v = check.float_array("vertices", vertices, (None, 3))
        if self.camera_mode == "projection":
            K, R, t = (
                (self.K if K is None else K),
                (self.R if R is None else R),
                (self.t if t is None else t),
            )
            if K is None or R is None or t is None:
                raise ValueError("camera_mode 'projection' needs K, R and t")
            dc = self.dist_coeffs if dist_coeffs is None else dist_coeffs
            dc = jnp.zeros(5, jnp.float32) if dc is None else dc
            K = check.float_array("K", K, (3, 3))
            R = check.float_array("R", R, (3, 3))
            t = check.float_array("t", t, (None,))
            dc = check.float_array("dist_coeffs", dc, (5,))
            return projection(v, K, R, t, dc, self.orig_size)
        e = check.float_array("eye", self.eye if eye is None else eye, (3,))
        if self.camera_mode == "look_at":
            v = look_at(v, e)
        else:
            direction = check.float_array("camera_direction", self.camera_direction, (3,))
            v = look(v, e, direction)
        if self.perspective:
            v = perspective(v, angle=self.viewing_angle)
        height, width = check.image_size(self.image_size)
        if height != width:
            # NDC [-1, 1] spans both sides of the image: shrink x by the aspect ratio so that pixels
            # stay square (viewing_angle is then the vertical half-angle, as OpenGL's fovy).
            v = v * jnp.array([height / width, 1.0, 1.0], jnp.float32)
        return v

    def _face_list(self, faces: ArrayLike) -> jax.Array:
        """Checked faces, followed by their reversed copies when ``fill_back``."""
        f = check.index_array("faces", faces, (None, 3))
        return jnp.concatenate([f, f[..., ::-1]], axis=-2) if self.fill_back else f

    def _faces(
        self, vertices: ArrayLike, faces: ArrayLike, **camera: check.VectorLike | None
    ) -> jax.Array:
        return vertices_to_faces(self.transform(vertices, **camera), self._face_list(faces))

    def render_silhouettes(
        self, vertices: ArrayLike, faces: ArrayLike, **camera: check.VectorLike | None
    ) -> jax.Array:
        """alpha float32 ``[..., H, W]`` (1 where the mesh is). ``camera``: eye, K, R, t, dist_coeffs."""
        fv = self._faces(vertices, faces, **camera)
        return rasterize_silhouettes(fv, self.image_size, self.anti_aliasing, self.near, self.far)

    def render_depth(
        self, vertices: ArrayLike, faces: ArrayLike, **camera: check.VectorLike | None
    ) -> jax.Array:
        """depth float32 ``[..., H, W]``, ``far`` on background. ``camera`` as ``render``."""
        fv = self._faces(vertices, faces, **camera)
        return rasterize_depth(fv, self.image_size, self.anti_aliasing, self.near, self.far)

    def render(
        self,
        vertices: ArrayLike,
        faces: ArrayLike,
        textures: ArrayLike | None = None,
        vertex_colors: ArrayLike | None = None,
        *,
        shader: Shader | None = None,
        shader_args: tuple = (),
        eye: check.VectorLike | None = None,
        K: ArrayLike | None = None,
        R: ArrayLike | None = None,
        t: ArrayLike | None = None,
        dist_coeffs: ArrayLike | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Renders a mesh coloured by exactly one of: texture cubes, vertex colours, a shader.

        Args:
          vertices: float32 ``[..., V, 3]`` world coordinates.
          faces: int32 ``[..., F, 3]`` vertex indices.
          textures: float32 ``[..., F, T, T, T, 3]`` colour cubes in [0, 1].
          vertex_colors: float32 ``[..., V, 3]`` RGB per vertex, interpolated perspective-correctly
            over each face and lit like textures; gradients reach the colours, and the vertices
            through Kato's rule. A barycentric weight above ``1 - rasterizer_eps`` (a sliver at
            each corner) is clamped to it, as texture coordinates are.
          shader, shader_args: ``shader(fragments, *shader_args) -> [..., H', W', C]``, any jnp
            function of the ``Fragments`` of ``faces`` (also with ``fill_back``: a reversed copy
            shows as its face with ``fragments.back`` set), unlit (``nmr_jax.mesh_shader`` and
            ``lambert`` light); rgb is then its ``[..., H, W, C]`` image over
            ``background_color`` (over 0 for C != 3). The vertices get Kato's gradient through
            image and alpha plus the shader's own; ``shader_args`` get autodiff's. See
            ``nmr_jax.shading``.
          eye, K, R, t, dist_coeffs: per-call camera overriding the Renderer's (to optimise it).

        Returns:
          ``(rgb [..., H, W, 3], depth [..., H, W], alpha [..., H, W])``, float32.
        """
        camera = dict(eye=eye, K=K, R=R, t=t, dist_coeffs=dist_coeffs)
        if [textures, vertex_colors, shader].count(None) != 2:
            raise ValueError("render needs exactly one of textures and vertex_colors, or a shader")
        if textures is None:
            return shading.render(self, vertices, faces, shader, shader_args, vertex_colors, camera)
        tex = check.float_array("textures", textures, (None, None, None, None, 3))
        f = self._face_list(faces)
        if self.fill_back:
            tex = jnp.concatenate([tex, jnp.swapaxes(tex, -4, -2)], axis=-5)
        # Lighting uses world-space normals, so the reversed copies are lit from their own side.
        world = vertices_to_faces(check.float_array("vertices", vertices, (None, 3)), f)
        tex = lighting(
            world,
            tex,
            self.light_intensity_ambient,
            self.light_intensity_directional,
            self.light_color_ambient,
            self.light_color_directional,
            self.light_direction,
        )
        fv = vertices_to_faces(self.transform(vertices, **camera), f)
        out = rasterize_rgbad(
            fv,
            tex,
            self.image_size,
            self.anti_aliasing,
            self.near,
            self.far,
            self.rasterizer_eps,
            self.background_color,
        )
        return out.rgb, out.depth, out.alpha  # type: ignore[return-value]


_DATA_FIELDS = [
    "K",
    "R",
    "t",
    "dist_coeffs",
    "viewing_angle",
    "eye",
    "camera_direction",
    "light_intensity_ambient",
    "light_intensity_directional",
    "light_color_ambient",
    "light_color_directional",
    "light_direction",
]
jax.tree_util.register_dataclass(
    Renderer,
    data_fields=_DATA_FIELDS,
    meta_fields=[f.name for f in dataclasses.fields(Renderer) if f.name not in _DATA_FIELDS],
)
