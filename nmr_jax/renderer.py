"""The original's ``Renderer``: camera, lighting and rasterization in one immutable object."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _validate as check
from nmr_jax import shading
from nmr_jax._ops import Shader
from nmr_jax.camera import (
    PROJECTION_EPS,
    _extrinsics,
    _normalize,
    _perspective,
    _pinhole,
    _projection_params,
    _rotate,
)
from nmr_jax.clip import _Clip, _drawn, _Whole
from nmr_jax.lighting import Lights, _lighting, light_batches, lights_of
from nmr_jax.rasterize import _config, _rgbad, _vertices_to_faces
from nmr_jax.soft import SoftRule, _ColorConfig, _silhouettes, _soft_rgb
from nmr_jax.typing import CameraMode, Handedness, ImageSize, VectorLike

__all__ = ["Renderer"]

_T = TypeVar("_T")

# The original's default eye: the distance at which a unit cube fills a 30-degree view.
_DEFAULT_EYE = (0.0, 0.0, -(1.0 / math.tan(math.radians(30.0)) + 1.0))

# The fields each camera mode reads (the per-call eye, K, R, t and dist_coeffs included).
_USES: dict[str, tuple[str, ...]] = {
    "look_at": ("eye", "viewing_angle", "perspective", "handedness"),
    "look": ("eye", "camera_direction", "viewing_angle", "perspective", "handedness"),
    "projection": ("K", "R", "t", "dist_coeffs", "orig_size"),
}
_CAMERA_FIELDS = sorted({name for uses in _USES.values() for name in uses})


def _static(default: Any) -> Any:
    """A field that is pytree metadata (part of jit's cache key), not a leaf."""
    return dataclasses.field(default=default, metadata={"static": True})


@dataclasses.dataclass(frozen=True)
class Renderer:
    """Renders meshes as the Neural 3D Mesh Renderer, with its options and defaults.

    Immutable and a JAX pytree: the array-valued fields (camera, lights) are leaves, so
    ``jax.grad`` can differentiate with respect to a Renderer, and ``dataclasses.replace`` or the
    per-call keywords of ``render`` change the camera without a new class. Fields made with
    ``metadata={"static": True}`` (the options) are static. Subclasses are pytrees too, their own
    dataclass fields included (a field is a leaf unless marked static the same way).

    Meshes: ``vertices`` float32 ``[..., V, 3]``, ``faces`` int32 ``[..., F, 3]`` (vertex indices; a
    row of three -1 is padding, which draws nothing and gets no gradient, for batches of meshes of
    different sizes), ``textures`` float32 ``[..., F, T, T, T, 3]`` or ``vertex_colors`` float32
    ``[..., V, 3]`` (see ``render``). Leading batch dimensions of all inputs (and of camera and
    light parameters such as ``eye [..., 3]``) broadcast.
    Images: rgb ``[..., H, W, 3]``, depth and alpha ``[..., H, W]``, row 0 at the top.

    Winding and handedness: a face is drawn when its vertices run counter-clockwise in the image
    (``fill_back``, the default, adds every face reversed, so both sides are drawn). The 'look_at'
    and 'look' cameras are the original's left-handed ones: with ``handedness="left"`` a
    right-handed mesh (OBJ files, the built-in teapot) appears mirrored and its outward faces are
    back faces; ``handedness="right"`` renders it unmirrored with its outward faces in front.
    'projection' is OpenCV's right-handed camera.

    Faces are clipped against the plane z = ``near`` of the camera frame before the projection
    (``nmr_jax.clip``): scenes around the camera (a room seen from inside, a ground plane) are
    drawn whole, with the results (face ids, barycentrics, depth, gradients) of the source faces;
    faces wholly in front are drawn bit for bit as without clipping. ``clip=False`` turns it
    off, for scenes known to lie in front of the camera.

    A camera field or per-call argument that ``camera_mode`` does not read (``K`` with 'look_at',
    ``eye`` with 'projection', ...) raises a ValueError naming it.
    """

    image_size: ImageSize = _static(256)
    anti_aliasing: bool = _static(True)
    background_color: tuple[float, float, float] = _static((0.0, 0.0, 0.0))
    fill_back: bool = _static(True)
    camera_mode: CameraMode = _static("look_at")
    # 'projection' mode: intrinsics [..., 3, 3], rotation [..., 3, 3], translation [..., 3],
    # distortion [..., 5] (k1, k2, p1, p2, k3) and the pixel size of the image K refers to.
    K: ArrayLike | None = None
    R: ArrayLike | None = None
    t: ArrayLike | None = None
    dist_coeffs: ArrayLike | None = None
    orig_size: int | tuple[int, int] = _static(1024)  # S or (H, W)
    # 'look_at' and 'look' modes.
    perspective: bool = _static(True)
    viewing_angle: ArrayLike = 30.0  # Half the (vertical) field of view, degrees.
    eye: VectorLike = _DEFAULT_EYE
    camera_direction: VectorLike = (0.0, 0.0, 1.0)  # 'look' mode only.
    near: float = _static(0.1)
    far: float = _static(100.0)
    light_intensity_ambient: ArrayLike = 0.5
    light_intensity_directional: ArrayLike = 0.5
    light_color_ambient: VectorLike = (1.0, 1.0, 1.0)
    light_color_directional: VectorLike = (1.0, 1.0, 1.0)
    light_direction: VectorLike = (0.0, 1.0, 0.0)
    # rgb rendering; silhouettes and depth use 1e-4 as the original.
    rasterizer_eps: float = _static(1e-3)
    handedness: Handedness = _static("left")  # 'look_at' and 'look' modes; see nmr_jax.typing.
    # The rasterization rule: None for Kato's (hard images, his approximate gradient) or a
    # nmr_jax.SoftRule (soft images with exact gradients, nmr_jax.soft; its sigma is a leaf).
    rule: SoftRule | None = None
    # Clip faces at the plane z = near (nmr_jax.clip). False draws the projected faces as the
    # original does, without the condition that clipping costs a scene wholly in front (see
    # docs/performance.md); a face with a corner behind the camera is then drawn wrongly.
    clip: bool = _static(True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    def __post_init__(self) -> None:
        check.image_size(self.image_size)
        check.depth_range(self.near, self.far)
        if self.camera_mode not in _USES:
            raise ValueError(
                f"camera_mode must be 'look_at', 'look' or 'projection', got {self.camera_mode!r}"
            )
        check.handedness(self.handedness)
        check.orig_size(self.orig_size)
        check.colour("background_color", self.background_color)
        check.eps(self.rasterizer_eps)
        if not isinstance(self.clip, bool):
            raise TypeError(f"clip must be True or False, got {self.clip!r}")
        if self.rule is not None and not isinstance(self.rule, SoftRule):
            raise TypeError(f"rule must be None (Kato's) or a nmr_jax.SoftRule, got {self.rule!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(Renderer)}
        for name in _CAMERA_FIELDS:
            if name not in _USES[self.camera_mode] and not _unchanged(
                getattr(self, name), defaults[name]
            ):
                raise check.unused(name, self.camera_mode, ", ".join(_USES[self.camera_mode]))

    # --- the public calls: check every argument, then run the private pipeline -------------

    def transform(
        self,
        vertices: ArrayLike,
        *,
        eye: VectorLike | None = None,
        K: ArrayLike | None = None,
        R: ArrayLike | None = None,
        t: ArrayLike | None = None,
        dist_coeffs: ArrayLike | None = None,
    ) -> jax.Array:
        """World vertices float32 ``[..., V, 3]`` -> projected (NDC x, y; view depth z).

        With a non-square ``image_size`` and a 'look_at' or 'look' camera, x is scaled by
        ``height / width`` so that the image is not stretched; 'projection' needs no such
        correction when ``orig_size`` is ``(height, width)`` of the image K refers to.
        """
        v = check.float_array("vertices", vertices, (None, 3))
        camera = self._camera(eye, K, R, t, dist_coeffs)
        check.batch({"vertices": v.shape[:-2]} | camera.batches)
        return self._project(v, camera)

    def render_silhouettes(
        self, vertices: ArrayLike, faces: ArrayLike, **camera: VectorLike | None
    ) -> jax.Array:
        """alpha float32 ``[..., H, W]`` (1 where the mesh is). ``camera``: eye, K, R, t, dist_coeffs.
        With a ``SoftRule``: ``nmr_jax.soft_silhouettes`` of the faces (and their reversed copies
        with ``fill_back``) at ``image_size``, without anti-aliasing."""
        if self.rule is not None:
            cfg = self.rule._config(self.image_size, self.near, self.far)
            sigma = self.rule.sigma
            return self._checked_drawn(
                vertices, faces, camera, lambda clip: _silhouettes(clip.faces, sigma, cfg)
            )
        cfg = self._config(1e-4)

        def alpha(clip: _Clip | _Whole) -> jax.Array:
            out = _rgbad(clip.faces, None, cfg, self.anti_aliasing, False, True, False)
            return out.alpha  # type: ignore[return-value]

        return self._checked_drawn(vertices, faces, camera, alpha)

    def render_depth(
        self, vertices: ArrayLike, faces: ArrayLike, **camera: VectorLike | None
    ) -> jax.Array:
        """depth float32 ``[..., H, W]``, ``far`` on background. ``camera`` as ``render``."""
        cfg = self._config(1e-4)

        def depth(clip: _Clip | _Whole) -> jax.Array:
            out = _rgbad(clip.faces, None, cfg, self.anti_aliasing, False, False, True)
            return out.depth  # type: ignore[return-value]

        return self._checked_drawn(vertices, faces, camera, depth)

    def render(
        self,
        vertices: ArrayLike,
        faces: ArrayLike,
        textures: ArrayLike | None = None,
        vertex_colors: ArrayLike | None = None,
        *,
        shader: Shader | None = None,
        shader_args: tuple = (),
        eye: VectorLike | None = None,
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
            ``nmr_jax.shading``. A function is not an array: under ``jax.jit`` pass ``shader``
            as static (``jax.jit(renderer.render, static_argnames="shader")``) or close over it.
          eye, K, R, t, dist_coeffs: per-call camera overriding the Renderer's (to optimise it);
            only those that ``camera_mode`` reads. A Renderer among ``shader_args`` (as
            ``mesh_shader`` passes one) is given them too, so that the shader sees this camera.

        Returns:
          ``(rgb [..., H, W, 3], depth [..., H, W], alpha [..., H, W])``, float32.
        """
        # Identity tests: list.count(None) would compare arrays with None elementwise.
        if sum(x is not None for x in (textures, vertex_colors, shader)) != 1:
            raise ValueError("render needs exactly one of textures and vertex_colors, or a shader")
        if shader is not None and not callable(shader):
            raise TypeError(f"shader must be a function of the fragments, got {shader!r}")
        mesh = self._mesh(vertices, faces, textures, vertex_colors)
        camera = self._camera(eye, K, R, t, dist_coeffs)
        lights = lights_of(
            self.light_intensity_ambient,
            self.light_intensity_directional,
            self.light_color_ambient,
            self.light_color_directional,
            self.light_direction,
            prefix="light_",
        )
        batch = check.batch(mesh.batches | camera.batches | light_batches(lights, "light_"))
        geometry = check.batch({n: mesh.batches[n] for n in ("vertices", "faces")} | camera.batches)
        if batch != geometry:
            # Colours or lights batched beyond the geometry: the faces are drawn once per image
            # (otherwise the faces' maps are not batched like the colours they composite).
            v = mesh.vertices
            mesh = mesh._replace(vertices=jnp.broadcast_to(v, batch + v.shape[-2:]))
        given = {"eye": eye, "K": K, "R": R, "t": t, "dist_coeffs": dist_coeffs}
        return self._render(mesh, camera, lights, shader, _seeing(tuple(shader_args), given))

    # --- checks ---------------------------------------------------------------------------

    def _mesh(
        self,
        vertices: ArrayLike,
        faces: ArrayLike,
        textures: ArrayLike | None = None,
        vertex_colors: ArrayLike | None = None,
    ) -> _Mesh:
        """Checked mesh, with the batch shapes of its arguments."""
        v = check.float_array("vertices", vertices, (None, 3))
        f = check.faces_array("faces", faces)
        # Clipping makes two pieces of each face (and fill_back two faces of each).
        check.num_faces("faces", (4 if self.fill_back else 2) * f.shape[-2])
        batches = {"vertices": v.shape[:-2], "faces": f.shape[:-2]}
        tex = colors = None
        if textures is not None:
            shape = np.shape(textures)
            if len(shape) in (2, 3) and shape[-2:] == (v.shape[-2], 3):
                raise ValueError(
                    f"textures must have shape [..., F, T, T, T, 3], got {shape}; per-vertex "
                    "colours [..., V, 3] are passed by name: render(vertices, faces, "
                    "vertex_colors=colors)"
                )
            tex = check.color_array("textures", textures, (None, None, None, None, 3))
            check.texture_cube(tex, f.shape[-2])
            batches["textures"] = tex.shape[:-5]
        if vertex_colors is not None:
            colors = check.color_array("vertex_colors", vertex_colors, (None, 3))
            if colors.shape[-2] != v.shape[-2]:
                raise ValueError(
                    f"vertex_colors must have shape [..., V, 3] with V = {v.shape[-2]} like "
                    f"vertices, got {tuple(colors.shape)}"
                )
            batches["vertex_colors"] = colors.shape[:-2]
        return _Mesh(v, f, tex, colors, batches)

    def _camera(
        self,
        eye: VectorLike | None = None,
        K: ArrayLike | None = None,
        R: ArrayLike | None = None,
        t: ArrayLike | None = None,
        dist_coeffs: ArrayLike | None = None,
    ) -> _Camera:
        """Checked camera of this call: the per-call arguments, else the Renderer's fields."""
        given = {"eye": eye, "K": K, "R": R, "t": t, "dist_coeffs": dist_coeffs}
        uses = _USES[self.camera_mode]
        for name, value in given.items():
            if value is not None and name not in uses:
                raise check.unused(name, self.camera_mode, ", ".join(uses))
        if self.camera_mode == "projection":
            K, R, t = (
                (self.K if K is None else K),
                (self.R if R is None else R),
                (self.t if t is None else t),
            )
            if K is None or R is None or t is None:
                raise ValueError("camera_mode 'projection' needs K, R and t")
            dc = self.dist_coeffs if dist_coeffs is None else dist_coeffs
            dc = np.zeros(5, np.float32) if dc is None else dc
            K_, R_, t_, dc_ = _projection_params(K, R, t, dc)
            arrays = {"K": K_, "R": R_, "t": t_, "dist_coeffs": dc_}
            cores = {"K": 2, "R": 2, "t": 1, "dist_coeffs": 1}
        else:
            arrays = {"eye": check.float_array("eye", self.eye if eye is None else eye, (3,))}
            cores = {"eye": 1}
            if self.camera_mode == "look":
                direction = self.camera_direction
                arrays["camera_direction"] = check.float_array("camera_direction", direction, (3,))
                cores["camera_direction"] = 1
            if self.perspective:
                arrays["viewing_angle"] = check.float_array("viewing_angle", self.viewing_angle, ())
                cores["viewing_angle"] = 0
        batches = {n: x.shape[: x.ndim - cores[n]] for n, x in arrays.items()}
        return _Camera(arrays, batches)

    def _checked_drawn(
        self,
        vertices: ArrayLike,
        faces: ArrayLike,
        camera: dict[str, Any],
        draw: Callable[[_Clip | _Whole], jax.Array],
    ) -> jax.Array:
        """``draw`` of the projected faces of a checked mesh and camera (silhouettes, depth)."""
        mesh = self._mesh(vertices, faces)
        cam = self._camera(**camera)
        check.batch(mesh.batches | cam.batches)
        return self._drawn(mesh.vertices, self._both_sides(mesh.faces), cam, draw)

    # --- the pipeline (arguments checked) ---------------------------------------------------

    def _config(self, eps: float) -> Any:
        return _config(
            self.image_size, self.anti_aliasing, self.near, self.far, eps, self.background_color
        )

    def _project(self, v: jax.Array, camera: _Camera) -> jax.Array:
        return self._ndc(self._view(v, camera), camera)

    def _view(self, v: jax.Array, camera: _Camera) -> jax.Array:
        """World points in the camera frame (z the view depth)."""
        c = camera.arrays
        if self.camera_mode == "projection":
            return _extrinsics(v, c["R"], c["t"])
        # 'look_at' looks at the origin; y is up in both modes.
        direction = -c["eye"] if self.camera_mode == "look_at" else c["camera_direction"]
        check.view_direction(
            "eye" if self.camera_mode == "look_at" else "camera_direction", direction
        )
        up = jnp.array([0.0, 1.0, 0.0], jnp.float32)
        return _rotate(v, c["eye"], _normalize(direction), up, self.handedness)

    def _ndc(self, v: jax.Array, camera: _Camera) -> jax.Array:
        """Camera-frame points -> projected (NDC x, y; view depth z)."""
        c = camera.arrays
        if self.camera_mode == "projection":
            orig = check.orig_size(self.orig_size)
            return _pinhole(v, c["K"], c["dist_coeffs"], orig, PROJECTION_EPS)
        if self.perspective:
            v = _perspective(v, c["viewing_angle"])
        height, width = check.image_size(self.image_size)
        if height != width:
            # NDC [-1, 1] spans both sides of the image: shrink x by the aspect ratio so that pixels
            # stay square (viewing_angle is then the vertical half-angle, as OpenGL's fovy).
            v = v * jnp.array([height / width, 1.0, 1.0], jnp.float32)
        return v

    def _drawn(
        self,
        vertices: jax.Array,
        faces: np.ndarray | jax.Array,
        camera: _Camera,
        draw: Callable[[_Clip | _Whole], _T],
    ) -> _T:
        """``draw`` of the faces' pieces in front of the plane z = near, projected, or of the
        faces themselves where none is cut or ``clip`` is False (``nmr_jax.clip``)."""
        view = self._view(vertices, camera)
        projected = _vertices_to_faces(self._ndc(view, camera), faces)
        if not self.clip:
            return draw(_Whole(projected))
        padding: np.ndarray | jax.Array | None
        if isinstance(faces, np.ndarray):
            padding = np.all(faces == -1, axis=-1)
            padding = padding if padding.any() else None
        else:
            padding = jnp.all(faces == -1, axis=-1)
        return _drawn(
            projected,
            padding,
            lambda: _vertices_to_faces(view, faces),
            lambda points: self._ndc(points, camera),
            self.near,
            draw,
        )

    def _both_sides(self, faces: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
        """Faces followed by their reversed copies when ``fill_back`` (known faces in numpy:
        nothing for XLA to fold under jit)."""
        if not self.fill_back:
            return faces
        xp = np if isinstance(faces, np.ndarray) else jnp
        return xp.concatenate([faces, faces[..., ::-1]], axis=-2)

    def _render(
        self,
        mesh: _Mesh,
        camera: _Camera,
        lights: Lights,
        shader: Shader | None = None,
        shader_args: tuple = (),
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        faces = self._both_sides(mesh.faces)
        world = self._world_faces(mesh.vertices, faces)
        if self.rule is not None:
            if shader is not None:
                raise ValueError("a shader needs Kato's rule (rule=None); a SoftRule colours "
                                 "texture cubes and vertex colours")  # fmt: skip
            tex = self._soft_textures(world, mesh, lights)
            return self._drawn(mesh.vertices, faces, camera, lambda c: self._render_soft(c, tex))
        if mesh.textures is None:
            return self._drawn(
                mesh.vertices,
                faces,
                camera,
                lambda c: shading._render(self, c, mesh, world, lights, shader, shader_args),
            )
        textures = mesh.textures
        if self.fill_back:
            # The reversed face (v2, v1, v0) sees texel (i, j, k) as (k, j, i).
            textures = jnp.concatenate([textures, jnp.swapaxes(textures, -4, -2)], axis=-5)
        tex = _lighting(world, textures, lights)
        cfg = self._config(self.rasterizer_eps)

        def draw(clip: _Clip | _Whole) -> tuple[jax.Array, jax.Array, jax.Array]:
            out = _rgbad(clip.faces, tex, cfg, self.anti_aliasing, shader=clip.cube_shader(cfg.eps))
            return out.rgb, out.depth, out.alpha  # type: ignore[return-value]

        return self._drawn(mesh.vertices, faces, camera, draw)

    def _soft_textures(self, world: jax.Array, mesh: _Mesh, lights: Lights) -> jax.Array:
        """The lit texture cubes [..., F, T, T, T, 3] of the face list, for the soft colours."""
        if mesh.textures is not None:
            textures = mesh.textures
            if self.fill_back:
                textures = jnp.concatenate([textures, jnp.swapaxes(textures, -4, -2)], axis=-5)
            tex = _lighting(world, textures, lights)
        else:
            # Lit corner colours as a 2^3 cube of the linear function i c0 + j c1 + k c2, which
            # trilinear sampling at coordinates b_k gives back as sum_k b_k c_k.
            light = _lighting(world, jnp.ones((*world.shape[:-2], 1, 1, 1, 3), jnp.float32), lights)
            assert mesh.vertex_colors is not None
            faces = self._both_sides(mesh.faces)
            colors = _vertices_to_faces(mesh.vertex_colors, faces) * light[..., 0, 0, 0, None, :]
            corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), np.float32)
            cube = jnp.einsum("kt,...kc->...tc", corners.reshape(3, 8), colors)
            tex = cube.reshape(*cube.shape[:-2], 2, 2, 2, 3)
        return tex

    def _render_soft(
        self, clip: _Clip | _Whole, tex: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``render`` with a SoftRule (see it) of lit cubes ``tex``: soft rgb and alpha, the hard
        depth map, of the clipped pieces; each piece reads its face's cube at its barycentrics
        mapped back to the face (``clip.bary``)."""
        rule = self.rule
        assert rule is not None
        soft = rule._config(self.image_size, self.near, self.far)
        cfg = _ColorConfig(soft, self.rasterizer_eps, check.colour("", self.background_color))
        bary = clip.bary()
        if bary is not None:
            # Piece p is a part of face p mod F (nmr_jax.clip): its colours are its face's.
            tex = jnp.concatenate([tex, tex], axis=-5)
        rgb = _soft_rgb(clip.faces, tex, rule.sigma, rule.gamma, cfg, bary)
        alpha = _silhouettes(clip.faces, rule.sigma, soft)
        hard = _config(self.image_size, False, self.near, self.far, 1e-4, self.background_color)
        depth = _rgbad(clip.faces, None, hard, False, False, False, True).depth
        return rgb, depth, alpha  # type: ignore[return-value]

    def _world_faces(self, vertices: jax.Array, faces: np.ndarray | jax.Array) -> jax.Array:
        """World face vertices for lighting, ordered so that the original's normal
        ``cross(v0 - v1, v2 - v1)`` points to the side the camera sees; the reversed copies are
        so lit from their own side."""
        world = _vertices_to_faces(vertices, faces)
        if self.handedness == "right":
            # The original's normal points towards the camera from a face drawn in its
            # left-handed image; mirrored, the drawn faces are the others.
            world = world[..., ::-1, :]
        return world


class _Mesh(NamedTuple):
    vertices: jax.Array  # [..., V, 3]
    faces: np.ndarray | jax.Array  # [..., F, 3]; numpy when known
    textures: jax.Array | None  # [..., F, T, T, T, 3]
    vertex_colors: jax.Array | None  # [..., V, 3]
    batches: dict[str, tuple[int, ...]]  # the caller's arguments' batch shapes


class _Camera(NamedTuple):
    arrays: dict[str, jax.Array]  # checked parameters that camera_mode reads
    batches: dict[str, tuple[int, ...]]


def _seeing(shader_args: tuple, camera: dict[str, Any]) -> tuple:
    """``shader_args`` with each Renderer in them given the per-call camera arguments that its
    mode reads (a shader lighting by the camera position must see the camera that draws)."""
    if all(v is None for v in camera.values()):
        return shader_args

    def replace(x: Any) -> Any:
        if not isinstance(x, Renderer):
            return x
        fields = {n: v for n, v in camera.items() if v is not None and n in _USES[x.camera_mode]}
        return dataclasses.replace(x, **fields)

    return jax.tree_util.tree_map(replace, shader_args, is_leaf=lambda x: isinstance(x, Renderer))


def _unchanged(value: Any, default: Any) -> bool:
    """Whether a field still holds its default. Traced values cannot tell: they count as it
    (a Renderer passed through jit was checked when it was made)."""
    if default is None or isinstance(default, bool | str):
        return value == default if isinstance(value, bool | str) else value is default
    if check.is_traced(value):
        return True
    try:
        return bool(np.array_equal(np.asarray(value, np.float64), np.asarray(default)))
    except (TypeError, ValueError):
        return False


def _register_pytree(cls: type) -> None:
    """Registers ``cls`` as a pytree whose leaves are its fields not marked static.

    The fields are read when a Renderer is flattened, so that a subclass's own ``@dataclass``
    (applied after ``__init_subclass__`` runs) counts. Unflattening sets the fields without
    ``__init__``: JAX rebuilds pytrees with leaves that are not the user's (tracers, gradients,
    placeholders), which the constructor's checks are not for.
    """

    def flatten_with_keys(r: Renderer) -> tuple[tuple, tuple]:
        fields = dataclasses.fields(r)
        data = tuple(f.name for f in fields if not f.metadata.get("static", False))
        meta = tuple((f.name, getattr(r, f.name)) for f in fields if f.metadata.get("static"))
        leaves = tuple((jax.tree_util.GetAttrKey(n), getattr(r, n)) for n in data)
        return leaves, (data, meta)

    def flatten(r: Renderer) -> tuple[tuple, tuple]:
        leaves, aux = flatten_with_keys(r)
        return tuple(x for _, x in leaves), aux

    def unflatten(aux: tuple, leaves: Iterable[Any]) -> Renderer:
        data, meta = aux
        r: Renderer = object.__new__(cls)
        for name, value in (*meta, *zip(data, leaves, strict=True)):
            object.__setattr__(r, name, value)
        return r

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


_register_pytree(Renderer)
