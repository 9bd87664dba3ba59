"""Soft rasterization: SoftRas-family silhouettes over every face within reach of each pixel.

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
pixel (at the nearest point of the face, barycentrics clamped as SoftRas does) lies strictly
between ``near`` and ``far``. ``Renderer(fill_back=True)`` adds each face reversed, so both
windings count, one copy at a time: a face and its reversed copy never take part together.

Gradients are exact (with respect to the face vertices' x and y and to ``sigma``) wherever the
set of faces taking part at each pixel does not change; z only decides the depth test.
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
from nmr_jax.rasterize import DEFAULT_FAR, DEFAULT_IMAGE_SIZE, DEFAULT_NEAR

__all__ = ["AGGREGATIONS", "DISTRIBUTIONS", "SoftRule", "reach", "soft_silhouettes"]

DISTRIBUTIONS = ("logistic", "gaussian", "uniform", "cauchy")
AGGREGATIONS = ("probabilistic", "max")
DEFAULT_SIGMA = 1e-4
# SoftRas's and PyTorch3D's cut: a face is dropped where it covers a pixel by 1e-4 or less.
DEFAULT_THRESHOLD = 1e-4


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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _alpha(face_vertices: jax.Array, sigma: jax.Array, cfg: _Config) -> jax.Array:
    """alpha [*b, H, W] as rasterized (row 0 at y = -1)."""
    return _ffi.soft_silhouettes(face_vertices, sigma, cfg.height, cfg.width, cfg.attrs())[0]


def _alpha_fwd(face_vertices: jax.Array, sigma: jax.Array, cfg: _Config) -> tuple[jax.Array, tuple]:
    alpha, acc, count = _ffi.soft_silhouettes(
        face_vertices, sigma, cfg.height, cfg.width, cfg.attrs()
    )
    return alpha, (face_vertices, sigma, acc, count)


def _alpha_bwd(cfg: _Config, res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    face_vertices, sigma, acc, count = res
    return _ffi.soft_silhouettes_bwd(face_vertices, sigma, acc, count, g, cfg.attrs())


_alpha.defvjp(_alpha_fwd, _alpha_bwd)


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

    ``sigma`` is a pytree leaf (a traced value anneals without recompiling); the rest is static.
    ``render_silhouettes`` returns ``soft_silhouettes`` of the mesh (anti-aliasing does not
    apply to the soft rule: the image is drawn at ``image_size``).
    """

    sigma: ArrayLike = DEFAULT_SIGMA
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
