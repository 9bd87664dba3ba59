"""Thin calls into the XLA FFI kernels of csrc/ (private).

Every function here takes arrays already checked by the public layer (dtype float32 / int32, core
shapes right) with any number of leading batch dimensions, pads the batch ranks to match, and calls
one custom call. Leading dimensions broadcast inside the kernels (size 1 is never copied), which is
also how ``vmap`` and sharding reach them (``_partition.ffi_call``: ``vmap`` adds a size-1 dimension
to unbatched operands; each device gets its shard of the batch). Attributes are cast to numpy
scalars here: a Python float would arrive as f64.
"""

from __future__ import annotations

import importlib
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

from nmr_jax import _nmr_jax_cpu, _partition  # type: ignore[attr-defined]

for _name, _capsule in _nmr_jax_cpu.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")

# The CUDA module exists when the package was built with nvcc; it imports without a GPU (a CUDA
# registration waits harmlessly on a CPU-only jaxlib). A module present but broken must raise.
HAS_CUDA_BUILD = importlib.util.find_spec("nmr_jax._nmr_jax_cuda") is not None
if HAS_CUDA_BUILD:
    _cuda = importlib.import_module("nmr_jax._nmr_jax_cuda")
    for _name, _capsule in _cuda.registrations().items():
        jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")


def _pad_batch(arrays: list[jax.Array], core_ranks: list[int]) -> tuple[list[jax.Array], tuple]:
    """Left-pads the batch dims of each array with 1s to a common rank; returns the broadcast batch."""
    batches = [a.shape[: a.ndim - r] for a, r in zip(arrays, core_ranks, strict=True)]
    rank = max(len(b) for b in batches)
    padded = [
        a.reshape((1,) * (rank - len(b)) + a.shape) for a, b in zip(arrays, batches, strict=True)
    ]
    return padded, jnp.broadcast_shapes(*batches)


def gather_faces(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    """vertices [*b, V, 3] f32, faces [*b, F, 3] i32 -> face vertices [*b, F, 3, 3]."""
    (v, f), batch = _pad_batch([vertices, faces], [2, 2])
    out = jax.ShapeDtypeStruct((*batch, faces.shape[-2], 3, 3), jnp.float32)
    return _partition.ffi_call("nmr_gather_faces", out, len(batch))(v, f)


def scatter_faces(faces: jax.Array, grad: jax.Array, vertices_shape: tuple[int, ...]) -> jax.Array:
    """Transpose of ``gather_faces``; sums over dims broadcast in ``vertices_shape``."""
    (f, g), _ = _pad_batch([faces, grad], [2, 3])
    rank = max(f.ndim - 2, len(vertices_shape) - 2)
    shape = (1,) * (rank + 2 - len(vertices_shape)) + tuple(vertices_shape)
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    res = _partition.ffi_call("nmr_scatter_faces", out, rank)(f, g)
    return res.reshape(vertices_shape)


def rasterize(
    face_vertices: jax.Array, height: int, width: int, near: float, far: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """face vertices [*b, F, 3, 3] -> face_index [*b, H, W], weights [*b, H, W, 3], depth [*b, H, W]."""
    batch = face_vertices.shape[:-3]
    out = (
        jax.ShapeDtypeStruct((*batch, height, width), jnp.int32),
        jax.ShapeDtypeStruct((*batch, height, width, 3), jnp.float32),
        jax.ShapeDtypeStruct((*batch, height, width), jnp.float32),
    )
    call = _partition.ffi_call("nmr_rasterize", out, len(batch))
    face_index, weights, depth = call(
        face_vertices,
        height=np.int32(height),
        width=np.int32(width),
        near=np.float32(near),
        far=np.float32(far),
    )
    return face_index, weights, depth


def sample_textures(
    face_vertices: jax.Array,
    textures: jax.Array,
    face_index: jax.Array,
    weights: jax.Array,
    depth: jax.Array,
    eps: float,
) -> jax.Array:
    """Trilinear texture colours at covered pixels -> rgb [*b, H, W, 3], 0 on background."""
    args, batch = _pad_batch([face_vertices, textures, face_index, weights, depth], [3, 5, 2, 3, 2])
    out = jax.ShapeDtypeStruct((*batch, *face_index.shape[-2:], 3), jnp.float32)
    return _partition.ffi_call("nmr_sample_textures", out, len(batch))(*args, eps=np.float32(eps))


def sample_textures_bwd(
    face_vertices: jax.Array,
    face_index: jax.Array,
    weights: jax.Array,
    depth: jax.Array,
    grad_rgb: jax.Array,
    eps: float,
    textures_shape: tuple[int, ...],
) -> jax.Array:
    """Transpose of ``sample_textures`` w.r.t. the textures, summed to ``textures_shape``."""
    args, batch = _pad_batch([face_vertices, face_index, weights, depth, grad_rgb], [3, 2, 3, 2, 3])
    rank = max(len(batch), len(textures_shape) - 5)
    shape = (1,) * (rank + 5 - len(textures_shape)) + tuple(textures_shape)
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    call = _partition.ffi_call("nmr_sample_textures_bwd", out, rank)
    return call(*args, eps=np.float32(eps)).reshape(textures_shape)


def kato_bwd(
    face_vertices: jax.Array,
    face_index: jax.Array,
    image: jax.Array,
    grad_image: jax.Array,
    eps: float,
) -> jax.Array:
    """Kato's approximate gradient w.r.t. face vertices (x and y only), shaped like them."""
    args, _ = _pad_batch([face_vertices, face_index, image, grad_image], [3, 2, 3, 3])
    out = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    call = _partition.ffi_call("nmr_kato_bwd", out, args[0].ndim - 3)
    return call(*args, eps=np.float32(eps)).reshape(face_vertices.shape)


def depth_bwd(
    face_vertices: jax.Array,
    face_index: jax.Array,
    weights: jax.Array,
    depth: jax.Array,
    grad_depth: jax.Array,
) -> jax.Array:
    """Gradient of the depth map w.r.t. face vertices (face index held fixed), shaped like them."""
    args, _ = _pad_batch([face_vertices, face_index, weights, depth, grad_depth], [3, 2, 3, 2, 2])
    out = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    res = _partition.ffi_call("nmr_depth_bwd", out, args[0].ndim - 3)(*args)
    return res.reshape(face_vertices.shape)
