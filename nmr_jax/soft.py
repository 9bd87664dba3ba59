"""Soft rasterization: SoftRas-family silhouettes and colours over every face within reach.

``faces`` are projected face vertices as in ``nmr_jax.rasterize``: float32 ``[..., F, 3, 3]``,
x and y in NDC [-1, 1] (y up), z the view depth. Images have row 0 at the top (y = +1).

Each face covers each pixel with probability ``D = F(-dist / sigma)``, where ``dist`` is the
signed squared distance in NDC units from the pixel centre to the face (negative inside, the
SoftRas and PyTorch3D convention) and ``F`` the CDF of a smoothing distribution: "logistic"
(SoftRas's and PyTorch3D's sigmoid), "gaussian", "uniform" (on [-1/2, 1/2]) or "cauchy". The
coverages of a pixel aggregate to ``1 - prod(1 - D)`` ("probabilistic") or ``max D`` ("max").

Every face whose coverage of a pixel exceeds ``threshold`` takes part there, with no limit on
their number. Since ``D`` falls with ``dist``, those faces lie within ``dist < reach * sigma``,
``reach = -F^-1(threshold)``; each face visits only its bounding box widened by
``sqrt(reach * sigma)`` (NDC), summing into per-pixel accumulators (memory O(pixels)), and the
backward pass visits the same pixels again. Faces take part where they are front-facing
(counter-clockwise in the image, as the hard rasterizer draws them) and where their depth at the
pixel (at its barycentrics clamped to the face and renormalised, SoftRas's barycentric clipping)
lies strictly between ``near`` and ``far``. ``Renderer(fill_back=True)`` adds each face reversed, so both
windings count, one copy at a time: a face and its reversed copy never take part together.

Colours (``soft_rgb``) are SoftRas's softmax over those faces and the background.

Gradients are exact wherever the set of faces taking part at each pixel does not change: the
silhouettes' w.r.t. the vertices' x and y (z only decides the depth test) and ``sigma``; the
colours' also w.r.t. z (through depths and barycentrics), the textures and ``gamma``. See
docs/soft.md.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _ffi
from nmr_jax import _validate as check
from nmr_jax._linear import linear_call
from nmr_jax.rasterize import DEFAULT_FAR, DEFAULT_IMAGE_SIZE, DEFAULT_NEAR

__all__ = ["AGGREGATIONS", "DISTRIBUTIONS", "SoftRule", "reach", "soft_rgb", "soft_silhouettes"]

DISTRIBUTIONS = ("logistic", "gaussian", "uniform", "cauchy")
AGGREGATIONS = ("probabilistic", "max")
DEFAULT_SIGMA = 1e-4
# SoftRas's and PyTorch3D's cut: a face is dropped where it covers a pixel by 1e-4 or less.
DEFAULT_THRESHOLD = 1e-4
DEFAULT_GAMMA = 1e-4  # SoftRas's default temperature of the colours' softmax over depth
BACKGROUND_DEPTH = 1e-3  # SoftRas's eps: the background's normalised inverse depth (soft.h)


def reach(distribution: str, threshold: float = DEFAULT_THRESHOLD) -> float:
    """``-F^-1(threshold)``: a face takes part where ``dist < reach * sigma``, i.e. within
    ``sqrt(reach * sigma)`` NDC units of it. For the default threshold 1e-4: logistic 9.21,
    gaussian 3.72, uniform 0.4999, cauchy 3183."""
    check.choice("distribution", distribution, DISTRIBUTIONS)
    t = check.threshold(threshold)
    if distribution == "logistic":
        return math.log((1.0 - t) / t)
    if distribution == "gaussian":
        return -statistics.NormalDist().inv_cdf(t)
    if distribution == "uniform":
        return 0.5 - t
    return 1.0 / math.tan(math.pi * t)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static settings of one soft rasterization (hashable: a ``nondiff_argnums`` argument)."""

    height: int
    width: int
    near: float
    far: float
    threshold: float
    distribution: str
    aggregation: str

    def attrs(self) -> dict[str, Any]:
        """The custom calls' attributes other than the image size."""
        return {
            "near": np.float32(self.near),
            "far": np.float32(self.far),
            "threshold": np.float32(self.threshold),
            "reach": np.float32(reach(self.distribution, self.threshold)),
            "distribution": np.int32(DISTRIBUTIONS.index(self.distribution)),
            "aggregation": np.int32(AGGREGATIONS.index(self.aggregation)),
        }


def _checked_config(
    image_size: int | Sequence[int],
    distribution: str,
    aggregation: str,
    near: float,
    far: float,
    threshold: float,
) -> _Config:
    height, width = check.image_size(image_size)
    near, far = check.depth_range(near, far)
    check.choice("distribution", distribution, DISTRIBUTIONS)
    check.choice("aggregation", aggregation, AGGREGATIONS)
    return _Config(height, width, near, far, check.threshold(threshold), distribution, aggregation)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _alpha(face_vertices: jax.Array, sigma: jax.Array, cfg: _Config) -> jax.Array:
    """alpha [*b, H, W] as rasterized (row 0 at y = -1)."""
    return _ffi.soft_silhouettes(face_vertices, sigma, cfg.height, cfg.width, cfg.attrs())[0]


@_alpha.defjvp
def _alpha_jvp(cfg: _Config, primals: tuple, tangents: tuple) -> tuple:
    face_vertices, sigma = primals
    attrs = cfg.attrs()
    alpha, acc, count = _ffi.soft_silhouettes(face_vertices, sigma, cfg.height, cfg.width, attrs)
    (tangent,) = linear_call(
        lambda r, t: (_ffi.soft_silhouettes_jvp(r[0], r[1], r[2], r[3], t[0], t[1], attrs),),
        lambda r, g: _ffi.soft_silhouettes_bwd(r[0], r[1], r[2], r[3], g[0], attrs),
        (face_vertices, sigma, acc, count),
        tangents,
        like=(alpha,),
    )
    return alpha, tangent


def soft_silhouettes(
    faces: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    sigma: ArrayLike = DEFAULT_SIGMA,
    distribution: str = "logistic",
    aggregation: str = "probabilistic",
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    threshold: float = DEFAULT_THRESHOLD,
) -> jax.Array:
    """Soft silhouettes of projected faces: the aggregated coverage of every face in reach.

    Args:
      faces: float32 ``[..., F, 3, 3]`` projected face vertices (NDC x, y; view depth z).
      image_size: ``S`` or ``(H, W)``.
      sigma: float32 ``[...]`` (a scalar or batch dims broadcasting with ``faces``'), > 0, in
        squared NDC units. An array operand: a new value (an annealing schedule inside
        ``jit`` or ``lax.scan``) does not recompile, and it has a gradient.
      distribution: "logistic", "gaussian", "uniform" or "cauchy" (see the module docstring).
      aggregation: "probabilistic" (``1 - prod(1 - D)``) or "max" (``max D``; the lowest face
        index among equal coverages passes the gradient).
      near, far: a face takes part at a pixel where its depth there is strictly between them.
      threshold: a face takes part where its coverage exceeds this, in (0, 0.5); see ``reach``.

    Returns:
      alpha float32 ``[..., H, W]`` in [0, 1], 0 where no face reaches; row 0 at the top.
      Differentiable in x and y of ``faces`` and in ``sigma`` (exact derivatives; see the module
      docstring).
    """
    fv = check.float_array("faces", faces, (None, 3, 3))
    check.num_faces("faces", fv.shape[-3])
    cfg = _checked_config(image_size, distribution, aggregation, near, far, threshold)
    return _silhouettes(fv, sigma, cfg)


def _silhouettes(fv: jax.Array, sigma: ArrayLike, cfg: _Config) -> jax.Array:
    """``soft_silhouettes`` of checked faces and settings."""
    sg = check.positive_scalars("sigma", sigma)
    check.batch({"faces": fv.shape[:-3], "sigma": sg.shape})
    return jnp.flip(_alpha(fv, sg, cfg), axis=-2)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SoftRule:
    """A soft rasterization rule for ``Renderer(rule=...)`` (None there: Kato's rule).

    ``sigma`` and ``gamma`` are pytree leaves (a traced value anneals without recompiling); the
    rest is static. With it, ``Renderer.render_silhouettes`` returns ``soft_silhouettes`` of the
    mesh, and ``Renderer.render`` the mesh's lit texture cubes or vertex colours by ``soft_rgb``,
    alpha by ``soft_silhouettes`` and the hard depth map. The soft images are drawn at
    ``image_size`` (``anti_aliasing`` does not apply: they are smooth already); a shader needs
    Kato's rule.
    """

    sigma: ArrayLike = DEFAULT_SIGMA
    gamma: ArrayLike = DEFAULT_GAMMA  # The colours' softmax temperature (``soft_rgb``).
    distribution: str = dataclasses.field(default="logistic", metadata={"static": True})
    aggregation: str = dataclasses.field(default="probabilistic", metadata={"static": True})
    threshold: float = dataclasses.field(default=DEFAULT_THRESHOLD, metadata={"static": True})

    def __post_init__(self) -> None:
        check.choice("distribution", self.distribution, DISTRIBUTIONS)
        check.choice("aggregation", self.aggregation, AGGREGATIONS)
        check.threshold(self.threshold)

    def _config(self, image_size: int | Sequence[int], near: float, far: float) -> _Config:
        return _checked_config(
            image_size, self.distribution, self.aggregation, near, far, self.threshold
        )


@dataclasses.dataclass(frozen=True)
class _ColorConfig:
    """Static settings of one soft colour rasterization."""

    soft: _Config
    eps: float  # Texture-coordinate clamp margin.
    background: tuple[float, float, float]

    def attrs(self) -> dict[str, Any]:
        a = self.soft.attrs()
        del a["aggregation"]
        bg = {f"bg_{c}": np.float32(v) for c, v in zip("rgb", self.background, strict=True)}
        return a | {"eps": np.float32(self.eps)} | bg


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _rgb(
    fv: jax.Array,
    textures: jax.Array,
    sigma_gamma: jax.Array,
    cfg: _ColorConfig,
    bary_map: jax.Array | None = None,
) -> jax.Array:
    """rgb [*b, H, W, 3] as rasterized (row 0 at y = -1). ``bary_map`` as ``_ffi.soft_rgb``'s."""
    h, w = cfg.soft.height, cfg.soft.width
    return _ffi.soft_rgb(fv, textures, sigma_gamma, h, w, cfg.attrs(), bary_map)[..., :3]


@_rgb.defjvp
def _rgb_jvp(cfg: _ColorConfig, primals: tuple, tangents: tuple) -> tuple:
    fv, textures, sigma_gamma, bary_map = primals
    h, w = cfg.soft.height, cfg.soft.width
    out = _ffi.soft_rgb(fv, textures, sigma_gamma, h, w, cfg.attrs(), bary_map)
    mapped = bary_map is not None
    residuals = (fv, textures, sigma_gamma, out, *([bary_map] if mapped else []))
    (tangent,) = linear_call(
        lambda r, t: (_rgb_tangent(cfg, r, t),),
        lambda r, g: _rgb_transpose(cfg, r, g[0]),
        residuals,
        tangents if mapped else tangents[:3],
        like=(out[..., :3],),
    )
    return out[..., :3], tangent


def _background_slope(cfg: _ColorConfig, sigma_gamma: jax.Array, out: jax.Array) -> jax.Array:
    """d rgb / d gamma [*b, H, W, 3] through the background's logit a_b = BACKGROUND_DEPTH / gamma,
    with weight u_b: -u_b (bg - rgb) (a_b - m) / gamma (relative to m as the faces' terms, soft.h,
    whose kernels give the rest)."""
    gamma = sigma_gamma[..., 1, None, None]
    logit = BACKGROUND_DEPTH / gamma
    u_b = jnp.exp(logit - out[..., 3]) / out[..., 4]
    bg = jnp.asarray(cfg.background, jnp.float32)
    return -((u_b * (logit - out[..., 3]) / gamma)[..., None] * (bg - out[..., :3]))


def _rgb_tangent(cfg: _ColorConfig, res: tuple, tangents: tuple) -> jax.Array:
    """rgb's tangent given the tangents of the face vertices, textures, (sigma, gamma) and, with a
    map, ``bary_map``: the transpose of ``_rgb_transpose``."""
    fv, textures, sigma_gamma, out, *bary_map = res
    tangent = _ffi.soft_rgb_jvp(fv, textures, sigma_gamma, out, tangents, cfg.attrs(), *bary_map)
    t_gamma = tangents[2][..., 1, None, None, None]
    return tangent + t_gamma * _background_slope(cfg, sigma_gamma, out)


def _rgb_transpose(cfg: _ColorConfig, res: tuple, g: jax.Array) -> tuple:
    """The gradients of rgb's face vertices, textures, (sigma, gamma) and, with a map,
    ``bary_map`` given rgb's: the backward kernel, and gamma's background part."""
    fv, textures, sigma_gamma, out, *bary_map = res
    g_fv, g_tex, g_sg, *g_map = _ffi.soft_rgb_bwd(
        fv, textures, sigma_gamma, out, g, cfg.attrs(), *bary_map
    )
    g_gamma = jnp.sum(g * _background_slope(cfg, sigma_gamma, out), axis=(-3, -2, -1))
    g_sg = g_sg.at[..., 1].add(_ffi._sum_to(g_gamma, sigma_gamma.shape[:-1]))
    return (g_fv, g_tex, g_sg, *g_map)


def soft_rgb(
    faces: ArrayLike,
    textures: ArrayLike,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    sigma: ArrayLike = DEFAULT_SIGMA,
    gamma: ArrayLike = DEFAULT_GAMMA,
    distribution: str = "logistic",
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    threshold: float = DEFAULT_THRESHOLD,
    eps: float = 1e-3,
    background_color: Sequence[float] = (0.0, 0.0, 0.0),
) -> jax.Array:
    """SoftRas's soft colours of textured faces: a softmax over every face in reach and the
    background.

    At each pixel, face ``f`` (taking part as in ``soft_silhouettes``) weighs
    ``D_f exp(zn_f / gamma)`` and the background ``exp(1e-3 / gamma)``, ``zn = (far - z) / (far -
    near)`` the normalised inverse depth of the face at the pixel (barycentrics clamped to the
    face, as SoftRas); the pixel's colour is the weighted mean of the faces' texture colours there
    (trilinear in the cube, coordinates clamped to ``[0, T - 1 - eps]`` as ``rasterize``) and the
    background colour.

    Args:
      faces: float32 ``[..., F, 3, 3]`` projected face vertices.
      textures: float32 ``[..., F, T, T, T, 3]`` colour cubes.
      image_size: ``S`` or ``(H, W)``.
      sigma, gamma: float32 ``[...]`` (scalars or batch dims), > 0: the coverage's blur and the
        softmax's temperature; array operands (a new value does not recompile), differentiable.
      distribution, near, far, threshold: as ``soft_silhouettes``.
      eps: texture-coordinate clamp margin.
      background_color: RGB of the background.

    Returns:
      rgb float32 ``[..., H, W, 3]``, row 0 at the top; exact derivatives (reverse and forward
      mode) w.r.t. the face vertices (through coverages, depths and barycentrics), the textures,
      sigma and gamma.
    """
    fv, tex = _checked_faces_and_textures(faces, textures)
    cfg = _ColorConfig(
        _checked_config(image_size, distribution, "probabilistic", near, far, threshold),
        check.eps(eps),
        check.colour("background_color", background_color),
    )
    return _soft_rgb(fv, tex, sigma, gamma, cfg)


def _checked_faces_and_textures(
    faces: ArrayLike, textures: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    fv = check.float_array("faces", faces, (None, 3, 3))
    check.num_faces("faces", fv.shape[-3])
    tex = check.float_array("textures", textures, (None, None, None, None, 3))
    check.texture_cube(tex, fv.shape[-3])
    return fv, tex


def _soft_rgb(
    fv: jax.Array,
    tex: jax.Array,
    sigma: ArrayLike,
    gamma: ArrayLike,
    cfg: _ColorConfig,
    bary_map: jax.Array | None = None,
) -> jax.Array:
    """``soft_rgb`` of checked faces, textures and settings; with a ``bary_map`` [..., F, 3, 3],
    face f's textures are read at its barycentrics times ``bary_map[f]`` (``_ffi.soft_rgb``)."""
    sg = check.positive_scalars("sigma", sigma)
    gm = check.positive_scalars("gamma", gamma)
    check.batch(
        {"faces": fv.shape[:-3], "textures": tex.shape[:-5], "sigma": sg.shape, "gamma": gm.shape}
    )
    params = jnp.stack(jnp.broadcast_arrays(sg, gm), -1)  # [..., 2]: one operand
    return jnp.flip(_rgb(fv, tex, params, cfg, bary_map), axis=-3)
