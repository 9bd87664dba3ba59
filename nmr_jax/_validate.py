"""Up-front checks of public arguments (private): clear exceptions before any kernel is built."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# Array-like inputs that may also be given as plain tuples of floats (vectors, colours).
VectorLike = ArrayLike | Sequence[float]


def _dtype(x: VectorLike) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def float_array(name: str, x: VectorLike, core: Sequence[int | None]) -> jax.Array:
    """Returns ``x`` as float32 after checking its dtype and trailing ``core`` dims (None = any)."""
    dtype = _dtype(x)
    if (
        not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))
        or dtype.kind == "b"
    ):
        raise TypeError(f"{name} must be a real float array, got dtype {dtype}")
    x = jnp.asarray(x, jnp.float32)
    _check_core(name, x.shape, core)
    return x


def index_array(name: str, x: VectorLike, core: Sequence[int | None]) -> jax.Array:
    """Returns ``x`` as int32 after checking that it holds integers and its trailing dims."""
    dtype = _dtype(x)
    if not np.issubdtype(dtype, np.integer) or dtype.kind == "b":
        raise TypeError(f"{name} must be an integer array (vertex indices), got dtype {dtype}")
    x = jnp.asarray(x, jnp.int32)
    _check_core(name, x.shape, core)
    return x


def _check_core(name: str, shape: tuple[int, ...], core: Sequence[int | None]) -> None:
    spec = "[..., " + ", ".join("?" if c is None else str(c) for c in core) + "]"
    if len(shape) < len(core) or any(
        c is not None and s != c for s, c in zip(shape[len(shape) - len(core) :], core, strict=True)
    ):
        raise ValueError(f"{name} must have shape {spec}, got {tuple(shape)}")


def batch(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast of the leading batch shapes, or a ValueError naming the arguments."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"leading batch dimensions do not broadcast: {listed}") from None


def image_size(value: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``, each a positive int."""
    hw = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(hw) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in hw):
        raise ValueError(f"image_size must be a positive int or (height, width), got {value!r}")
    # Flat pixel offsets are int64 in the kernels, but face ids and loop bounds are int32.
    if hw[0] * hw[1] >= 2**31 // 4:
        raise ValueError(f"image_size {value!r} is too large (height * width must be < 2**29)")
    return int(hw[0]), int(hw[1])


def depth_range(near: float, far: float) -> tuple[float, float]:
    near, far = float(near), float(far)
    if not (np.isfinite(near) and np.isfinite(far) and near < far):
        raise ValueError(f"need finite near < far, got near={near}, far={far}")
    return near, far
