"""Batch dimensions of the custom calls under ``vmap`` and SPMD sharding (private).

Every kernel of nmr_jax maps operands ``[*b, *core]`` to results ``[*b, *core]``, each batch element on
its own; a batch dimension of size 1 is broadcast in an operand and summed in a result (csrc/batch.h).
``ffi_call`` states exactly that to JAX, so that the kernels always see one call on whole batches:

- ``vmap``: a ``jax.custom_batching.custom_vmap`` rule makes the mapped axis one more leading batch
  dimension, of size 1 in unbatched operands (a reshape, never a copy), and calls the kernel once.
  Nested ``vmap`` adds one dimension per level.
- SPMD: a ``jax.experimental.custom_partitioning`` rule (a Shardy ``sharding_rule`` for propagation, a
  ``partition`` callback for lowering) lets batch dimensions be sharded and keeps core dimensions
  whole, so that under ``jit`` with inputs sharded along a batch dimension each device runs the kernel
  on its own shard, with no all-gather. A result summed over a sharded batch dimension (a gradient of
  a shared mesh or texture) is ``psum``-ed over the axes that shard it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

Shapes = tuple[jax.ShapeDtypeStruct, ...]


def ffi_call(
    target: str,
    result_shape_dtypes: jax.ShapeDtypeStruct | Sequence[jax.ShapeDtypeStruct],
    batch_rank: int,
) -> Callable[..., Any]:
    """Like ``jax.ffi.ffi_call`` for a kernel whose operands and results all have ``batch_rank``
    leading batch dimensions (sizes 1 or equal); returns an array, or a tuple for a sequence."""
    if isinstance(result_shape_dtypes, jax.ShapeDtypeStruct):
        one = (result_shape_dtypes,)
        return lambda *args, **attrs: _batched(target, one, batch_rank, attrs, args)[0]
    results = tuple(result_shape_dtypes)
    return lambda *args, **attrs: _batched(target, results, batch_rank, attrs, args)


def _batched(
    target: str, results: Shapes, batch_rank: int, attrs: dict, args: Sequence[jax.Array]
) -> tuple[jax.Array, ...]:
    @jax.custom_batching.custom_vmap
    def op(*xs: jax.Array) -> tuple[jax.Array, ...]:
        return _partitioned(target, results, batch_rank, attrs, xs)

    @op.def_vmap
    def _rule(axis_size: int, in_batched: list[bool], *xs: jax.Array) -> tuple[Any, tuple]:
        # custom_vmap puts the mapped axis first; an unmapped operand gets a size-1 dim instead.
        xs = tuple(x if b else x[None] for x, b in zip(xs, in_batched, strict=True))
        outs = tuple(jax.ShapeDtypeStruct((axis_size, *r.shape), r.dtype) for r in results)
        return _batched(target, outs, batch_rank + 1, attrs, xs), (True,) * len(outs)

    return op(*args)


def _partitioned(
    target: str, results: Shapes, batch_rank: int, attrs: dict, args: Sequence[jax.Array]
) -> tuple[jax.Array, ...]:
    def kernel(local: Shapes, *xs: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(jax.ffi.ffi_call(target, local)(*xs, **attrs))

    shapes = [tuple(a.shape) for a in args] + [tuple(r.shape) for r in results]
    batch = [max(s[d] for s in shapes) for d in range(batch_rank)]
    results = _typed(results, batch, [jax.typeof(a) for a in args])
    # With one device there is nothing to partition: spare the tracing (and compile time).
    if jax.device_count() == 1:
        return kernel(results, *args)

    @custom_partitioning
    def op(*xs: jax.Array) -> tuple[jax.Array, ...]:
        return kernel(results, *xs)

    def partition(mesh, arg_shapes, result_shape):  # type: ignore[no-untyped-def]
        specs = _batch_specs(mesh, batch, [*result_shape, *arg_shapes])

        def sharding(shape: tuple[int, ...]) -> NamedSharding:
            return NamedSharding(mesh, _spec(shape, batch, specs))

        out_shardings = tuple(sharding(r.shape) for r in results)
        local = tuple(
            jax.ShapeDtypeStruct(s.shard_shape(r.shape), r.dtype)
            for s, r in zip(out_shardings, results, strict=True)
        )
        # Results of size 1 where the batch is sharded are sums over it: add up the shards' parts.
        summed = [
            tuple(
                axis
                for d in range(batch_rank)
                if r.shape[d] == 1 < batch[d] and specs[d] is not None
                for axis in _axes(specs[d])
            )
            for r in results
        ]

        def lower(*xs: jax.Array) -> tuple[jax.Array, ...]:
            outs = kernel(local, *xs)
            return tuple(
                jax.lax.psum(o, axes) if axes else o for o, axes in zip(outs, summed, strict=True)
            )

        return mesh, lower, out_shardings, tuple(sharding(a.shape) for a in arg_shapes)

    rule, factors = _sharding_rule(shapes, len(args), batch)
    op.def_partition(partition, sharding_rule=rule, **factors)
    return op(*args)


def _typed(results: Shapes, batch: list[int], arg_types: list[Any]) -> Shapes:
    """Results with the sharding that explicit-sharding mode needs in their types: batch dims as
    the operands' (core dims and summed dims replicated). Unchanged without a mesh in the types."""
    mesh = next((t.sharding.mesh for t in arg_types if not t.sharding.mesh.empty), None)
    if mesh is None:
        return results
    specs = _batch_specs(mesh, batch, arg_types)
    return tuple(
        jax.ShapeDtypeStruct(
            r.shape, r.dtype, sharding=NamedSharding(mesh, _spec(r.shape, batch, specs))
        )
        for r in results
    )


def _spec(shape: tuple[int, ...], batch: list[int], specs: list[Any]) -> PartitionSpec:
    """Batch dims of full size sharded as ``specs``; broadcast (size-1) and core dims whole."""
    dims = [specs[d] if shape[d] == batch[d] > 1 else None for d in range(len(batch))]
    return PartitionSpec(*dims, *[None] * (len(shape) - len(batch)))


def _sharding_rule(
    shapes: list[tuple[int, ...]], num_args: int, batch: list[int]
) -> tuple[str, dict[str, tuple[str, ...]]]:
    """Shardy rule: batch dim ``d`` of full size is factor ``b{d}``, shared by all values; a size-1
    dim broadcast against it and every core dim get factors of their own, the latter never sharded."""
    names: list[str] = []
    own: list[str] = []
    for i, shape in enumerate(shapes):
        dims = []
        for d, size in enumerate(shape):
            if d < len(batch) and size == batch[d]:
                dims.append(f"b{d}")
            else:
                dims.append(f"v{i}d{d}")
                if d >= len(batch):
                    own.append(dims[-1])
        names.append(" ".join(dims))
    in_results = {f for n in names[num_args:] for f in n.split()}
    reduced = tuple(f"b{d}" for d, s in enumerate(batch) if s > 1 and f"b{d}" not in in_results)
    rule = ", ".join(names[:num_args]) + " -> " + ", ".join(names[num_args:])
    return rule, {"reduction_factors": reduced, "need_replication_factors": tuple(own)}


def _axes(entry: Any) -> tuple[str, ...]:
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _batch_specs(mesh: Any, batch: list[int], values: Sequence[Any]) -> list[Any]:
    """For each batch dim, the mesh axes that shard it in the first value that is sharded there;
    None where no value is, where the axes do not divide the dim, or were already taken."""
    specs: list[Any] = [None] * len(batch)
    used: set[str] = set()
    for d, size in enumerate(batch):
        for v in values:
            sharding = getattr(v, "sharding", None)
            if size == 1 or v.shape[d] != size or not isinstance(sharding, NamedSharding):
                continue
            spec = tuple(sharding.spec) + (None,) * (len(v.shape) - len(sharding.spec))
            if spec[d] is None:
                continue
            axes = _axes(spec[d])
            if size % math.prod(mesh.shape[a] for a in axes) == 0 and not used & set(axes):
                specs[d] = spec[d]
                used |= set(axes)
            break
    return specs
