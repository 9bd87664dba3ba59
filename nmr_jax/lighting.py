"""Ambient plus directional lighting of per-face texture cubes (pure ``jax.numpy``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from nmr_jax import _validate as check
from nmr_jax.camera import _normalize
from nmr_jax.typing import VectorLike

__all__ = ["lighting"]


def lighting(
    faces: ArrayLike,
    textures: ArrayLike,
    intensity_ambient: ArrayLike = 0.5,
    intensity_directional: ArrayLike = 0.5,
    color_ambient: VectorLike = (1.0, 1.0, 1.0),
    color_directional: VectorLike = (1.0, 1.0, 1.0),
    direction: VectorLike = (0.0, 1.0, 0.0),
) -> jax.Array:
    """Lights each face's texture cube by its world-space normal.

    ``light = Ia * Ca + Id * Cd * relu(n . direction)`` with ``n = normalize(cross(v0 - v1, v2 - v1))``
    (a zero-area face, or one with a NaN or infinite coordinate, gets n = 0, hence ambient light
    only, and finite gradients).

    Args:
      faces: float32 ``[..., F, 3, 3]`` face vertices in world space.
      textures: float32 ``[..., F, T, T, T, 3]`` colour cubes.
      intensity_ambient, intensity_directional: scalars or ``[...]``.
      color_ambient, color_directional: float32 ``[..., 3]`` RGB.
      direction: float32 ``[..., 3]`` direction towards the light (not normalised, as the original).

    Returns:
      float32 ``[..., F, T, T, T, 3]``: the lit textures (a new array; nothing is updated in place).
    """
    fv = check.float_array("faces", faces, (None, 3, 3))
    tex = check.color_array("textures", textures, (None, None, None, None, 3))
    check.texture_cube(tex, fv.shape[-3])
    lights = lights_of(
        intensity_ambient, intensity_directional, color_ambient, color_directional, direction
    )
    check.batch({"faces": fv.shape[:-3], "textures": tex.shape[:-5]} | light_batches(lights))
    return _lighting(fv, tex, lights)


class Lights(NamedTuple):
    """Checked light parameters (private): intensities ``[...]``, colours and direction
    ``[..., 3]``."""

    intensity_ambient: jax.Array
    intensity_directional: jax.Array
    color_ambient: jax.Array
    color_directional: jax.Array
    direction: jax.Array


def lights_of(
    intensity_ambient: ArrayLike,
    intensity_directional: ArrayLike,
    color_ambient: VectorLike,
    color_directional: VectorLike,
    direction: VectorLike,
    prefix: str = "",
) -> Lights:
    """Checks the light parameters; ``prefix`` names them as the caller's arguments."""
    return Lights(
        check.float_array(prefix + "intensity_ambient", intensity_ambient, ()),
        check.float_array(prefix + "intensity_directional", intensity_directional, ()),
        check.float_array(prefix + "color_ambient", color_ambient, (3,)),
        check.float_array(prefix + "color_directional", color_directional, (3,)),
        check.float_array(prefix + "direction", direction, (3,)),
    )


def light_batches(lights: Lights, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The lights' batch shapes, for ``check.batch``."""
    return {
        prefix + name: x.shape[:-1] if name.startswith(("color", "direction")) else x.shape
        for name, x in lights._asdict().items()
    }


def _lighting(faces: jax.Array, textures: jax.Array, lights: Lights) -> jax.Array:
    ia, id_, ca, cd, d = lights
    ambient = ia[..., None] * ca  # [..., 3]
    # A face with a non-finite coordinate is lit as a zero-area one (double-where guard: its
    # gradient is zero, not 0 * NaN).
    finite = jnp.all(jnp.isfinite(faces), axis=(-1, -2))[..., None, None]
    safe = jnp.where(finite, faces, 0.0)
    n = _normalize(jnp.cross(safe[..., 0, :] - safe[..., 1, :], safe[..., 2, :] - safe[..., 1, :]))
    # A matmul, not sum(n * d): jaxlib 0.10.2's XLA:CPU YNNPACK fusion miscompiles the broadcast
    # multiply-reduce when `direction` is batched under jit(vmap) (test_batching pins it).
    cos = jax.nn.relu(jnp.matmul(n, d[..., :, None])[..., 0])  # [..., F]
    light = (
        ambient[..., None, :] + (id_[..., None] * cd)[..., None, :] * cos[..., None]
    )  # [..., F, 3]
    return textures * light[..., :, None, None, None, :]
