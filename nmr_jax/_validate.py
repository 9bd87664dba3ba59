"""Up-front checks of public arguments: clear exceptions before any kernel is built.

Each public function checks all its arguments here (dtype, trailing shape, the broadcast of the
leading batch dimensions, option values) and then calls private helpers that trust them. Concrete
index arrays are checked and returned as numpy arrays, so that nothing about them is traced:
under ``jit`` a constant ``faces`` stays one constant operand instead of a graph XLA would fold.

Private, except ``validate_mesh`` (exported by ``nmr_jax``), the eager check of a mesh's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax.typing import Handedness, VectorLike

_INT32_MAX = 2**31 - 1


def _dtype(x: VectorLike) -> np.dtype:
    if hasattr(x, "dtype"):
        return np.dtype(x.dtype)
    try:
        return np.asarray(x).dtype
    except jax.errors.TracerArrayConversionError:
        # A tuple of tracers: a Renderer's tuple-valued field passed through jit as a pytree.
        return np.dtype(jnp.asarray(x).dtype)


def is_traced(x: object) -> bool:
    """Whether ``x`` (an array, or a tuple of scalars) holds values unknown until run time."""
    if isinstance(x, list | tuple):
        return any(is_traced(item) for item in x)
    return isinstance(x, jax.core.Tracer)


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


def color_array(name: str, x: VectorLike, core: Sequence[int | None]) -> jax.Array:
    """``float_array`` for colours and images, which are floats in [0, 1]: an integer dtype
    (an 8-bit image as read from a file) raises rather than be taken as colours up to 255."""
    dtype = _dtype(x)
    if np.issubdtype(dtype, np.integer) or dtype.kind == "b":
        raise TypeError(
            f"{name} must hold float colours in [0, 1], got dtype {dtype}: convert an 8-bit "
            "image x with np.asarray(x, np.float32) / 255"
        )
    return float_array(name, x, core)


def index_array(name: str, x: VectorLike, core: Sequence[int | None]) -> np.ndarray | jax.Array:
    """``x`` as int32 after checking that it holds integers and its trailing dims: a numpy array
    when its values are known (also a constant under ``jit``), else the traced array."""
    dtype = _dtype(x)
    if not np.issubdtype(dtype, np.integer) or dtype.kind == "b":
        raise TypeError(f"{name} must be an integer array (vertex indices), got dtype {dtype}")
    if is_traced(x):
        traced = jnp.asarray(x, jnp.int32)
        _check_core(name, traced.shape, core)
        return traced
    values = np.asarray(x)
    _check_core(name, values.shape, core)
    if np.iinfo(dtype).max > _INT32_MAX and values.size:
        # A wider array (int64, uint32) would wrap silently in the cast to int32.
        if values.min() < -_INT32_MAX - 1 or values.max() > _INT32_MAX:
            raise ValueError(
                f"{name} holds values in [{values.min()}, {values.max()}], outside int32 "
                "(vertex indices are int32)"
            )
    return values.astype(np.int32, copy=False)


def faces_array(name: str, x: VectorLike) -> np.ndarray | jax.Array:
    """Vertex indices ``[..., F, 3]`` (int32). Known values are checked for rows that mix -1
    (padding) with other negative or valid indices; traced ones meet the gather's range check."""
    f = index_array(name, x, (None, 3))
    if isinstance(f, np.ndarray):
        bad = np.argwhere(np.any(f < 0, axis=-1) & ~np.all(f == -1, axis=-1))
        if bad.size:
            row = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"{name} holds vertex index {f[row].min()} in {name}[{', '.join(map(str, row))}] "
                f"= {f[row].tolist()}: a row holds three indices in [0, V), or three -1 (padding)"
            )
    return f


def face_range(name: str, faces: np.ndarray, num_vertices: int) -> None:
    """ValueError naming the first row of known ``faces`` (``-1`` rows are padding) holding an
    index outside ``[0, num_vertices)``."""
    padding = np.all(faces == -1, axis=-1, keepdims=True)
    bad = ~padding & ((faces < 0) | (faces >= num_vertices))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        row = first[:-1]
        raise ValueError(
            f"{name} holds vertex index {faces[first]} in {name}[{', '.join(map(str, row))}] = "
            f"{faces[row].tolist()}, outside [0, {num_vertices}) (V = number of vertices; "
            "[-1, -1, -1] is padding)"
        )


def _check_core(name: str, shape: tuple[int, ...], core: Sequence[int | None]) -> None:
    spec = "[..., " + ", ".join("?" if c is None else str(c) for c in core) + "]"
    if len(shape) < len(core) or any(
        c is not None and s != c for s, c in zip(shape[len(shape) - len(core) :], core, strict=True)
    ):
        raise ValueError(f"{name} must have shape {spec}, got {tuple(shape)}")


def batch(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast of the arguments' leading batch shapes, or a ValueError naming them all."""
    try:
        return tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        listed = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
        raise ValueError(f"leading batch dimensions do not broadcast: {listed}") from None


def image_size(value: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``, each a positive int."""
    if isinstance(value, int | np.integer):
        hw: tuple = (value, value)
    elif isinstance(value, Sequence | np.ndarray):
        hw = tuple(value)
    else:
        hw = ()
    if len(hw) != 2 or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in hw
    ):
        raise ValueError(f"image_size must be a positive int or (height, width), got {value!r}")
    # Flat pixel offsets are int64 in the kernels, but face ids and loop bounds are int32.
    if hw[0] * hw[1] >= 2**31 // 4:
        raise ValueError(f"image_size {value!r} is too large (height * width must be < 2**29)")
    return int(hw[0]), int(hw[1])


def depth_range(near: float, far: float) -> tuple[float, float]:
    """Checked ``(near, far)``: drawn depths lie strictly between them."""
    near, far = float(near), float(far)
    # Depth is interpolated as 1 / sum(w_k / z_k), meaningful for z of one sign only; with
    # near <= 0 a pixel at depth 0 could be drawn and its depth gradient would divide by z = 0.
    if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
        raise ValueError(f"need finite 0 < near < far, got near={near}, far={far}")
    return near, far


def eps(value: float) -> float:
    """Kato's distance offset and the texture clamp margin, in (0, 1)."""
    value = float(value)
    # eps <= 0 lets Kato's step reach 0 (a division by zero); eps >= 1 empties the texture
    # coordinate clamp [0, T - 1 - eps] of a 2-texel cube, so a tap would leave the cube.
    if not 0 < value < 1:
        raise ValueError(f"eps must be in (0, 1), got {value}")
    return value


def colour(name: str, value: Sequence[float]) -> tuple[float, float, float]:
    """Three finite floats."""
    rgb = tuple(float(c) for c in value)
    if len(rgb) != 3 or not all(np.isfinite(rgb)):
        raise ValueError(f"{name} must be 3 finite values, got {value!r}")
    return rgb  # type: ignore[return-value]


def texture_cube(textures: jax.Array, num_faces: int, faces: str = "faces") -> None:
    """``textures [..., F, T, T, T, 3]`` with ``F = num_faces`` (the count of ``faces``, the
    argument named in the message) and ``T >= 1``."""
    t = textures.shape[-4:-1]
    if textures.shape[-5] != num_faces or t[0] != t[1] or t[1] != t[2] or t[0] < 1:
        raise ValueError(
            f"textures must have shape [..., F, T, T, T, 3] with F = {num_faces} (the faces "
            f"of {faces}) and T >= 1, got {tuple(textures.shape)}"
        )
    # The kernels index a cube's texels with int32.
    if t[0] ** 3 * 3 > _INT32_MAX:
        raise ValueError(f"textures: T = {t[0]} is too large (T**3 * 3 must be < 2**31)")


def orig_size(value: float | Sequence[float]) -> tuple[float, float]:
    """``S`` or ``(H, W)`` of the image K refers to -> ``(H, W)``, each finite and positive."""
    hw = tuple(value) if isinstance(value, Sequence | np.ndarray) else (value, value)
    if len(hw) != 2 or not all(
        isinstance(s, int | float | np.integer | np.floating)
        and not isinstance(s, bool)
        and np.isfinite(s)
        and s > 0
        for s in hw
    ):
        raise ValueError(f"orig_size must be a positive number or (height, width), got {value!r}")
    return float(hw[0]), float(hw[1])


def handedness(value: str) -> Handedness:
    """``"left"`` or ``"right"``."""
    if value not in ("left", "right"):
        raise ValueError(f"handedness must be 'left' or 'right', got {value!r}")
    return value  # type: ignore[return-value]


def view_direction(name: str, direction: jax.Array) -> None:
    """ValueError where a known view direction ``[..., 3]`` is zero: the camera would look
    nowhere. Traced values are not checked (the camera's documented fallback applies)."""
    if is_traced(direction):
        return
    zero = ~np.any(np.asarray(direction) != 0, axis=-1)
    if zero.any():
        where = [int(i) for i in np.argwhere(zero)[0]]
        raise ValueError(
            f"{name} is zero{' at ' + str(where) if where else ''}: the camera looks nowhere "
            "(an eye at the point it looks at); move the eye"
        )


def unused(name: str, mode: str, uses: str) -> ValueError:
    """The error for a camera argument that ``camera_mode`` ignores."""
    return ValueError(
        f"{name} is not used by camera_mode {mode!r}, which uses {uses}: drop it, or choose "
        "the camera_mode that uses it"
    )


def num_faces(name: str, count: int) -> None:
    """Face ids are int32 (-1 on background)."""
    if count > _INT32_MAX:
        raise ValueError(f"{name} has {count} faces; at most 2**31 - 1 are supported")


def validate_mesh(vertices: ArrayLike, faces: ArrayLike, textures: ArrayLike | None = None) -> None:
    """Checks a mesh's values eagerly (outside ``jit``), before it is rendered.

    The render functions check shapes and dtypes themselves and their kernels reject vertex
    indices outside ``[0, V)``, but they draw nothing for a face with a NaN or infinite vertex
    rather than fail. Call this once on loaded or generated meshes to catch that too.

    Args:
      vertices: float ``[..., V, 3]``; every coordinate must be finite.
      faces: int ``[..., F, 3]``; each row holds three vertex indices in ``[0, V)``, or is
        ``[-1, -1, -1]``: a padding row (no face) of a ragged batch. A row mixing -1 with indices
        is an error.
      textures: optional float ``[..., F, T, T, T, 3]``, ``T >= 1``; every value must be finite.
      Leading batch dimensions must broadcast.

    Raises:
      TypeError: a wrong dtype, or traced values (call it outside ``jit``).
      ValueError: a wrong shape, or a bad value, naming the argument and the first bad entry.
    """
    named = {"vertices": vertices, "faces": faces, "textures": textures}
    for name, value in named.items():
        if isinstance(value, jax.core.Tracer):
            raise TypeError(f"validate_mesh checks values eagerly; {name} is traced (inside jit)")
    v = float_array("vertices", vertices, (None, 3))
    f_np = np.asarray(index_array("faces", faces, (None, 3)))
    batch({"vertices": v.shape[:-2], "faces": f_np.shape[:-2]})
    _all_finite("vertices", np.asarray(v), 2)
    face_range("faces", f_np, v.shape[-2])
    if textures is not None:
        tex = color_array("textures", textures, (None, None, None, None, 3))
        texture_cube(tex, f_np.shape[-2])
        batch({"faces": f_np.shape[:-2], "textures": tex.shape[:-5]})
        _all_finite("textures", np.asarray(tex), 5)


def _all_finite(name: str, values: np.ndarray, core_rank: int) -> None:
    """ValueError naming the first entry (all but the last ``core_rank - 1`` dims) not finite."""
    finite = np.isfinite(values)
    if not finite.all():
        where = np.argwhere(~finite)[0][: values.ndim - core_rank + 1]
        count = int((~finite).sum())
        raise ValueError(
            f"{name}[{', '.join(str(int(i)) for i in where)}] is not finite "
            f"({count} NaN or infinite values in {name})"
        )


def num_layers(value: int) -> int:
    """Slots per pixel of ``rasterize_layers``: a positive int."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"num_layers must be a positive int, got {value!r}")
    return int(value)


def blur_radius(value: float) -> float:
    """A squared NDC distance: finite and >= 0."""
    value = float(value)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"blur_radius must be finite and >= 0, got {value}")
    return value


def positive(name: str, value: ArrayLike) -> None:
    """A scalar that must be > 0 and finite; checked when concrete (a traced one is trusted)."""
    if is_traced(value):
        return
    v = np.asarray(value)
    if v.shape != () or not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite scalar > 0, got {value!r}")
