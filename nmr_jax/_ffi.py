"""Thin calls into the XLA FFI kernels of csrc/ (private).

Every function here takes arrays already checked by the public layer (dtype float32 / int32, core
shapes right) with any number of leading batch dimensions, pads the batch ranks to match, and calls
one custom call. Leading dimensions broadcast inside the kernels (size 1 is never copied), which is
also how ``vmap`` and sharding reach them (``_partition.ffi_call``: ``vmap`` adds a size-1 dimension
to unbatched operands; each device gets its shard of the batch). Attributes are cast to numpy
scalars here: a Python float would arrive as f64.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmr_jax import _partition

if importlib.util.find_spec("nmr_jax._nmr_jax_cpu") is None:
    # Without this, Python reports a "partially initialized module (circular import)".
    raise ImportError(
        "nmr_jax's compiled kernels (nmr_jax._nmr_jax_cpu) are not built: this nmr_jax "
        f"({os.path.dirname(__file__)}) looks like a source checkout that was not installed. "
        "Install it with `pip install .` (or `pip install -e .`), which builds them, and import "
        "it from outside the checkout or through the editable install"
    )
from nmr_jax import _nmr_jax_cpu  # noqa: E402

for _name, _capsule in _nmr_jax_cpu.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")

# The CUDA module exists when the package was built with nvcc; it imports without a GPU (a CUDA
# registration waits harmlessly on a CPU-only jaxlib). A module present but broken must raise.
HAS_CUDA_BUILD = importlib.util.find_spec("nmr_jax._nmr_jax_cuda") is not None
if HAS_CUDA_BUILD:
    _cuda = importlib.import_module("nmr_jax._nmr_jax_cuda")
    for _name, _capsule in _cuda.registrations().items():
        jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")

# cuda_ops.cu compiled for the host (docs/gpu.md): the CUDA handlers, registered on the CPU under
# "<target>_cuda_host". NMR_JAX_CUDA_HOST_LIB may name another build of that module (CI's
# sanitized one).
CUDA_HOST_SUFFIX = "_cuda_host"


def _load_cuda_host() -> ModuleType | None:
    path = os.environ.get("NMR_JAX_CUDA_HOST_LIB")
    if path:
        name = "nmr_jax._nmr_jax_cuda_host"
        spec = importlib.util.spec_from_file_location(
            name, path, loader=importlib.machinery.ExtensionFileLoader(name, path)
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"NMR_JAX_CUDA_HOST_LIB={path!r} is not an extension module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if importlib.util.find_spec("nmr_jax._nmr_jax_cuda_host") is None:
        return None
    return importlib.import_module("nmr_jax._nmr_jax_cuda_host")


cuda_host = _load_cuda_host()
if cuda_host is not None:
    for _name, _capsule in cuda_host.registrations().items():
        jax.ffi.register_ffi_target(_name + CUDA_HOST_SUFFIX, _capsule, platform="cpu")

KERNELS = ("default", "cuda-host")
_kernels = os.environ.get("NMR_JAX_KERNELS", "default") or "default"


def _check_kernels(kind: str, source: str) -> None:
    if kind not in KERNELS:
        raise ValueError(f"{source} must be one of {KERNELS}, not {kind!r}")
    if kind == "cuda-host" and cuda_host is None:
        raise RuntimeError(
            f"{source} is 'cuda-host' but nmr_jax was built without its host-compiled CUDA "
            "module (NMR_JAX_CUDA_HOST=OFF at build time)"
        )


_check_kernels(_kernels, "NMR_JAX_KERNELS")


@contextlib.contextmanager
def using_kernels(kind: str) -> Iterator[None]:
    """Custom calls traced inside use ``kind``: "default" (the CPU kernels on the CPU, the CUDA
    ones on a GPU) or "cuda-host" (the CUDA handlers compiled for the host, on the CPU). Functions
    jit-compiled before keep the kernels they were traced with."""
    global _kernels
    _check_kernels(kind, "kernels")
    before, _kernels = _kernels, kind
    try:
        yield
    finally:
        _kernels = before


def _call(
    target: str,
    results: jax.ShapeDtypeStruct | Sequence[jax.ShapeDtypeStruct],
    batch_rank: int,
) -> Callable[..., Any]:
    """``_partition.ffi_call`` of ``target`` as the kernels in use name it."""
    name = target + CUDA_HOST_SUFFIX if _kernels == "cuda-host" else target
    return _partition.ffi_call(name, results, batch_rank)


def _pad_batch(arrays: list[jax.Array], core_ranks: list[int]) -> tuple[list[jax.Array], tuple]:
    """Left-pads the batch dims of each array with 1s to a common rank; returns the broadcast batch."""
    batches = [a.shape[: a.ndim - r] for a, r in zip(arrays, core_ranks, strict=True)]
    rank = max(len(b) for b in batches)
    padded = [
        a.reshape((1,) * (rank - len(b)) + a.shape) for a, b in zip(arrays, batches, strict=True)
    ]
    return padded, jnp.broadcast_shapes(*batches)


def _summed_to(
    batch_rank: int, core_rank: int, *shapes: tuple[int, ...]
) -> tuple[jax.ShapeDtypeStruct, ...]:
    """float32 results of ``shapes`` with their batch dims left-padded with 1s to ``batch_rank``:
    the kernel sums over the dims where a result has 1 and the batch does not (its transpose)."""
    return tuple(
        jax.ShapeDtypeStruct((1,) * (batch_rank + core_rank - len(sh)) + tuple(sh), jnp.float32)
        for sh in shapes
    )


def gather_faces(vertices: jax.Array, faces: jax.Array, checked: bool = False) -> jax.Array:
    """vertices [*b, V, 3] f32, faces [*b, F, 3] i32 -> face vertices [*b, F, 3, 3].

    ``checked``: the caller has checked on the host that every index is in [0, V), so the CUDA
    kernel skips its own check and the stream synchronisation that reports it."""
    (v, f), batch = _pad_batch([vertices, faces], [2, 2])
    out = jax.ShapeDtypeStruct((*batch, faces.shape[-2], 3, 3), jnp.float32)
    return _call("nmr_gather_faces", out, len(batch))(v, f, checked=np.int32(checked))


def scatter_faces(faces: jax.Array, grad: jax.Array, vertices_shape: tuple[int, ...]) -> jax.Array:
    """Transpose of ``gather_faces``; sums over dims broadcast in ``vertices_shape``."""
    (f, g), _ = _pad_batch([faces, grad], [2, 3])
    rank = max(f.ndim - 2, len(vertices_shape) - 2)
    shape = (1,) * (rank + 2 - len(vertices_shape)) + tuple(vertices_shape)
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    res = _call("nmr_scatter_faces", out, rank)(f, g)
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
    call = _call("nmr_rasterize", out, len(batch))
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
    return _call("nmr_sample_textures", out, len(batch))(*args, eps=np.float32(eps))


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
    call = _call("nmr_sample_textures_bwd", out, rank)
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
    call = _call("nmr_kato_bwd", out, args[0].ndim - 3)
    return call(*args, eps=np.float32(eps)).reshape(face_vertices.shape)


def fragments_bwd(
    face_vertices: jax.Array,
    face_index: jax.Array,
    weights: jax.Array,
    depth: jax.Array,
    grad_weights: jax.Array | None = None,
    grad_bary: jax.Array | None = None,
    grad_depth: jax.Array | None = None,
) -> jax.Array:
    """Gradient of the fragments (weights, perspective-correct barycentrics ``w_k zp / z_k``,
    depth) w.r.t. the face vertices, the face index held fixed, shaped like them. A gradient
    given as None is zero: an empty operand, which the kernels read as zeros."""
    none3, none2 = jnp.zeros((0, 0, 0), jnp.float32), jnp.zeros((0, 0), jnp.float32)
    gw = none3 if grad_weights is None else grad_weights
    gb = none3 if grad_bary is None else grad_bary
    gd = none2 if grad_depth is None else grad_depth
    args, _ = _pad_batch(
        [face_vertices, face_index, weights, depth, gw, gb, gd], [3, 2, 3, 2, 3, 3, 2]
    )
    out = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    res = _call("nmr_fragments_bwd", out, args[0].ndim - 3)(*args)
    return res.reshape(face_vertices.shape)


def interpolate(attributes: jax.Array, face_index: jax.Array, bary: jax.Array) -> jax.Array:
    """Face-corner attributes [*b, F, 3, C] at the pixels -> [*b, H, W, C], 0 on background."""
    args, batch = _pad_batch([attributes, face_index, bary], [3, 2, 3])
    out = jax.ShapeDtypeStruct((*batch, *face_index.shape[-2:], attributes.shape[-1]), jnp.float32)
    return _call("nmr_interpolate", out, len(batch))(*args)


def interpolate_bwd(
    attributes: jax.Array, face_index: jax.Array, bary: jax.Array, grad: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Transpose of ``interpolate``: (grad_attributes, grad_bary), summed to their shapes."""
    args, batch = _pad_batch([attributes, face_index, bary, grad], [3, 2, 3, 3])
    outs = _summed_to(len(batch), 3, attributes.shape, bary.shape)
    g_attr, g_bary = _call("nmr_interpolate_bwd", outs, len(batch))(*args)
    return g_attr.reshape(attributes.shape), g_bary.reshape(bary.shape)


def sample_image(image: jax.Array, uv: jax.Array, bilinear: bool, wrap: bool) -> jax.Array:
    """image [*b, Ht, Wt, C] at uv [*b, H, W, 2] -> [*b, H, W, C] (NaN at a non-finite uv)."""
    args, batch = _pad_batch([image, uv], [3, 3])
    out = jax.ShapeDtypeStruct((*batch, *uv.shape[-3:-1], image.shape[-1]), jnp.float32)
    call = _call("nmr_sample_image", out, len(batch))
    return call(*args, bilinear=np.int32(bilinear), wrap=np.int32(wrap))


def sample_image_bwd(
    image: jax.Array, uv: jax.Array, grad: jax.Array, bilinear: bool, wrap: bool
) -> tuple[jax.Array, jax.Array]:
    """Transpose of ``sample_image``: (grad_image, grad_uv), summed to their shapes."""
    args, batch = _pad_batch([image, uv, grad], [3, 3, 3])
    outs = _summed_to(len(batch), 3, image.shape, uv.shape)
    call = _call("nmr_sample_image_bwd", outs, len(batch))
    g_image, g_uv = call(*args, bilinear=np.int32(bilinear), wrap=np.int32(wrap))
    return g_image.reshape(image.shape), g_uv.reshape(uv.shape)


def rasterize_layers(
    face_vertices: jax.Array,
    height: int,
    width: int,
    num_layers: int,
    near: float,
    far: float,
    blur_radius: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """face vertices [*b, F, 3, 3] -> face_index [*b, H, W, K], bary, bary_screen
    [*b, H, W, K, 3], depth, dist [*b, H, W, K] (csrc/layers.h), row 0 at the top (y = +1)."""
    slots = (*face_vertices.shape[:-3], height, width, num_layers)
    out = (
        jax.ShapeDtypeStruct(slots, jnp.int32),
        jax.ShapeDtypeStruct((*slots, 3), jnp.float32),
        jax.ShapeDtypeStruct((*slots, 3), jnp.float32),
        jax.ShapeDtypeStruct(slots, jnp.float32),
        jax.ShapeDtypeStruct(slots, jnp.float32),
    )
    call = _call("nmr_rasterize_layers", out, face_vertices.ndim - 3)
    face_index, bary, bary_screen, depth, dist = call(
        face_vertices,
        near=np.float32(near),
        far=np.float32(far),
        blur_radius=np.float32(blur_radius),
    )
    return face_index, bary, bary_screen, depth, dist


def layers_bwd(
    face_vertices: jax.Array,
    face_index: jax.Array,
    grad_bary_screen: jax.Array | None = None,
    grad_bary: jax.Array | None = None,
    grad_depth: jax.Array | None = None,
    grad_dist: jax.Array | None = None,
) -> jax.Array:
    """Gradient of the layers' values (bary_screen, bary, depth, dist) w.r.t. the face vertices,
    the face indices held fixed, shaped like them. A gradient given as None is zero: an empty
    operand, which the kernels read as zeros."""
    none4, none3 = jnp.zeros((0, 0, 0, 0), jnp.float32), jnp.zeros((0, 0, 0), jnp.float32)
    grads = [
        none4 if grad_bary_screen is None else grad_bary_screen,
        none4 if grad_bary is None else grad_bary,
        none3 if grad_depth is None else grad_depth,
        none3 if grad_dist is None else grad_dist,
    ]
    args, _ = _pad_batch([face_vertices, face_index, *grads], [3, 3, 4, 4, 3, 3])
    out = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    res = _call("nmr_layers_bwd", out, args[0].ndim - 3)(*args)
    return res.reshape(face_vertices.shape)


def soft_silhouettes(
    face_vertices: jax.Array, sigma: jax.Array, height: int, width: int, attrs: dict[str, Any]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """face vertices [*b, F, 3, 3], sigma [*b] -> alpha, acc [*b, H, W] f32, count [*b, H, W] i32
    (as rasterized, row 0 at y = -1; acc and count: csrc/soft.h, soft_init). ``attrs``: the
    soft attributes of both targets (nmr_jax.soft)."""
    (fv, sg), batch = _pad_batch([face_vertices, sigma], [3, 0])
    maps = (*batch, height, width)
    out = (
        jax.ShapeDtypeStruct(maps, jnp.float32),
        jax.ShapeDtypeStruct(maps, jnp.float32),
        jax.ShapeDtypeStruct(maps, jnp.int32),
    )
    call = _call("nmr_soft_silhouettes", out, len(batch))
    alpha, acc, count = call(fv, sg, height=np.int32(height), width=np.int32(width), **attrs)
    return alpha, acc, count


def soft_silhouettes_bwd(
    face_vertices: jax.Array,
    sigma: jax.Array,
    acc: jax.Array,
    count: jax.Array,
    grad_alpha: jax.Array,
    attrs: dict[str, Any],
) -> tuple[jax.Array, jax.Array]:
    """Gradient of ``soft_silhouettes``'s alpha w.r.t. the face vertices and sigma, each summed to
    its shape."""
    args, batch = _pad_batch([face_vertices, sigma, acc, count, grad_alpha], [3, 0, 2, 2, 2])
    height, width = acc.shape[-2:]
    out = jax.ShapeDtypeStruct((*batch, face_vertices.shape[-3], 10), jnp.float32)
    call = _call("nmr_soft_silhouettes_bwd", out, len(batch))
    g = call(*args, height=np.int32(height), width=np.int32(width), **attrs)
    g_fv = g[..., :9].reshape(*batch, face_vertices.shape[-3], 3, 3)
    g_sigma = jnp.sum(g[..., 9], axis=-1)
    return _sum_to(g_fv, face_vertices.shape), _sum_to(g_sigma, sigma.shape)


def soft_silhouettes_jvp(
    face_vertices: jax.Array,
    sigma: jax.Array,
    acc: jax.Array,
    count: jax.Array,
    fv_tangent: jax.Array,
    sigma_tangent: jax.Array,
    attrs: dict[str, Any],
) -> jax.Array:
    """Tangent of ``soft_silhouettes``'s alpha [*b, H, W] given the face vertices' and sigma's:
    the transpose of ``soft_silhouettes_bwd``."""
    (fv, sg, a, c, t_fv, t_sg), batch = _pad_batch(
        [face_vertices, sigma, acc, count, fv_tangent, sigma_tangent], [3, 0, 2, 2, 3, 0]
    )
    num_faces = face_vertices.shape[-3]
    # One operand [*b, F, 10] as the backward's gradient: each face's 9 floats, then sigma's.
    t_fv = jnp.broadcast_to(t_fv, (*batch, num_faces, 3, 3)).reshape(*batch, num_faces, 9)
    t_sg = jnp.broadcast_to(t_sg[..., None, None], (*batch, num_faces, 1))
    height, width = acc.shape[-2:]
    out = jax.ShapeDtypeStruct((*batch, height, width), jnp.float32)
    call = _call("nmr_soft_silhouettes_jvp", out, len(batch))
    tangent = jnp.concatenate([t_fv, t_sg], axis=-1)
    return call(fv, sg, a, c, tangent, height=np.int32(height), width=np.int32(width), **attrs)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x`` summed over the leading dims that broadcasting ``shape`` to it added or widened."""
    lead = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape) if axes else x.reshape(shape)


def soft_rgb(
    face_vertices: jax.Array,
    textures: jax.Array,
    sigma_gamma: jax.Array,
    height: int,
    width: int,
    attrs: dict[str, Any],
    bary_map: jax.Array | None = None,
) -> jax.Array:
    """Soft colours -> [*b, H, W, 5] as rasterized: rgb, then the softmax's m and s (soft.h).
    ``bary_map`` [*b, F, 3, 3]: face f's textures read at its barycentrics times ``bary_map[f]``
    (a clipped piece's corners in its source face's); None: at its own."""
    args, batch = _pad_batch([face_vertices, textures, _map(bary_map), sigma_gamma], [3, 5, 3, 1])
    out = jax.ShapeDtypeStruct((*batch, height, width, 5), jnp.float32)
    call = _call("nmr_soft_rgb", out, len(batch))
    return call(*args, height=np.int32(height), width=np.int32(width), **attrs)


def soft_rgb_bwd(
    face_vertices: jax.Array,
    textures: jax.Array,
    sigma_gamma: jax.Array,
    out: jax.Array,
    grad_rgb: jax.Array,
    attrs: dict[str, Any],
    bary_map: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """Gradient of ``soft_rgb``'s rgb w.r.t. the face vertices, textures and (sigma, gamma), each
    summed to its shape (gamma's without the background's part, which the caller adds), and with
    a ``bary_map`` w.r.t. it too."""
    operands = [face_vertices, textures, _map(bary_map), sigma_gamma, out, grad_rgb]
    args, batch = _pad_batch(operands, [3, 5, 3, 1, 3, 3])
    height, width = out.shape[-3:-1]
    F, cube = face_vertices.shape[-3], int(np.prod(textures.shape[-4:]))
    result = jax.ShapeDtypeStruct((*batch, F, 20 + cube), jnp.float32)
    call = _call("nmr_soft_rgb_bwd", result, len(batch))
    g = call(*args, height=np.int32(height), width=np.int32(width), **attrs)
    g_fv = g[..., :9].reshape(*batch, F, 3, 3)
    g_sg = jnp.sum(g[..., 9:11], axis=-2)
    g_tex = g[..., 20:].reshape(*batch, F, *textures.shape[-4:])
    grads = (
        _sum_to(g_fv, face_vertices.shape),
        _sum_to(g_tex, textures.shape),
        _sum_to(g_sg, sigma_gamma.shape),
    )
    if bary_map is None:
        return grads
    return (*grads, _sum_to(g[..., 11:20].reshape(*batch, F, 3, 3), bary_map.shape))


def soft_rgb_jvp(
    face_vertices: jax.Array,
    textures: jax.Array,
    sigma_gamma: jax.Array,
    out: jax.Array,
    tangents: tuple[jax.Array, ...],
    attrs: dict[str, Any],
    bary_map: jax.Array | None = None,
) -> jax.Array:
    """Tangent of ``soft_rgb``'s rgb [*b, H, W, 3] given the face vertices', textures' and (sigma,
    gamma)'s tangents (and the ``bary_map``'s with a map): the transpose of ``soft_rgb_bwd``
    (without gamma's background part, which the caller adds)."""
    operands = [face_vertices, textures, _map(bary_map), sigma_gamma, out, *tangents]
    args, batch = _pad_batch(operands, [3, 5, 3, 1, 3, 3, 5, 1, 3][: len(operands)])
    fv, tex, bmap, sg, o, t_fv, t_tex, t_sg, *t_map = args
    F, cube = face_vertices.shape[-3], int(np.prod(textures.shape[-4:]))
    # One operand [*b, F, 20 + cube] laid out as the backward's gradient: each face's 9 vertex
    # floats, (sigma, gamma), its map's 9 (zero without a map), then its cube.
    no_map = jnp.zeros(9, jnp.float32)
    parts = [
        t_fv.reshape(*t_fv.shape[:-2], 9),
        t_sg[..., None, :],
        t_map[0].reshape(*t_map[0].shape[:-2], 9) if t_map else no_map,
        t_tex.reshape(*t_tex.shape[:-4], cube),
    ]
    tangent = jnp.concatenate([jnp.broadcast_to(p, (*batch, F, p.shape[-1])) for p in parts], -1)
    height, width = out.shape[-3:-1]
    result = jax.ShapeDtypeStruct((*batch, height, width, 3), jnp.float32)
    call = _call("nmr_soft_rgb_jvp", result, len(batch))
    return call(
        fv, tex, bmap, sg, o, tangent, height=np.int32(height), width=np.int32(width), **attrs
    )


def _map(bary_map: jax.Array | None) -> jax.Array:
    """The soft colours' map operand: 0 rows for none."""
    return jnp.zeros((0, 3, 3), jnp.float32) if bary_map is None else bary_map
