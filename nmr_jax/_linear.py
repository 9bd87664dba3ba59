"""A linear map with a given transpose, as one primitive (private).

The kernels' forward-mode rules (``jax.custom_jvp``) give their tangents through ``linear_call``:
a function linear in its ``linear`` operands, evaluated as written for ``jvp``, and the kernel's
backward pass as its transpose, so reverse mode (``grad``, ``vjp``, ``jacrev``) runs the same
backward kernels as a ``custom_vjp`` would. ``jax.custom_derivatives.linear_call`` does the same but
has no batching rule (``vmap`` of a ``jvp`` fails); this one batches by ``vmap`` of both functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

# fun(residuals, linear) -> outputs; transpose(residuals, cotangents) -> one per linear operand,
# a cotangent None where that output's is zero (nobody reads it: the kernels skip it).
Fun = Callable[[tuple, tuple], Sequence[jax.Array]]

_linear_p = Primitive("nmr_linear")
_linear_p.multiple_results = True


def linear_call(
    fun: Fun, transpose: Fun, residuals: tuple, linear: tuple, like: Sequence[jax.Array] | None
) -> tuple:
    """``fun(residuals, linear)`` (a tuple of arrays, linear in ``linear``), whose transpose in
    ``linear`` is ``transpose(residuals, cotangents)`` (a tuple shaped like ``linear``; a
    cotangent is None where it is zero, and the transpose is not called when all are).
    ``like``: arrays of the outputs' types (the primal outputs of the tangents ``fun`` gives),
    which spare tracing ``fun`` for them: reverse mode never runs it; None traces it."""
    out_avals = None if like is None else tuple(jax.typeof(x) for x in like)
    return tuple(
        _linear_p.bind(
            *residuals,
            *linear,
            fun=fun,
            transpose=transpose,
            num_res=len(residuals),
            out_avals=out_avals,
        )
    )


def _impl(*args: jax.Array, fun: Fun, num_res: int, **_: object) -> list[jax.Array]:
    return list(fun(tuple(args[:num_res]), tuple(args[num_res:])))


def _abstract_eval(*avals, fun: Fun, num_res: int, out_avals: tuple | None, **_: object) -> list:
    if out_avals is not None:
        return list(out_avals)
    closed = jax.make_jaxpr(lambda *a: _impl(*a, fun=fun, num_res=num_res))
    # A fresh trace has no mesh in context: explicitly sharded operands need theirs to be typed.
    meshes = [getattr(getattr(a, "sharding", None), "mesh", None) for a in avals]
    mesh = next((m for m in meshes if m is not None and not m.empty), None)
    if mesh is None:
        return list(closed(*avals).out_avals)
    with jax.sharding.use_abstract_mesh(mesh):
        return list(closed(*avals).out_avals)


def _transpose(cts, *args, transpose: Fun, num_res: int, **_: object) -> list:
    residuals, linear = args[:num_res], args[num_res:]
    if all(type(ct) is ad.Zero for ct in cts):
        return [None] * len(args)
    out = transpose(tuple(residuals), tuple(None if type(ct) is ad.Zero else ct for ct in cts))
    # Only the operands being transposed get a cotangent; the residuals are constants.
    return [None] * num_res + [
        ct if ad.is_undefined_primal(x) else None for ct, x in zip(out, linear, strict=True)
    ]


def _batch(
    args, dims, *, fun: Fun, transpose: Fun, num_res: int, **_: object
) -> tuple[tuple, tuple]:
    res_axes, lin_axes = tuple(dims[:num_res]), tuple(dims[num_res:])
    # Outputs batched at 0. An unbatched linear operand stays unbatched (a broadcast copy would
    # lose a sharded batch's sharding): its cotangent is summed over the batch.
    ct_axes = tuple(0 if d is None else d for d in lin_axes)

    def batched_transpose(res: tuple, cts: tuple) -> tuple:
        out = jax.vmap(transpose, in_axes=(res_axes, 0), out_axes=ct_axes)(res, cts)
        return tuple(
            c if d is not None else jnp.sum(c, 0) for c, d in zip(out, lin_axes, strict=True)
        )

    fun_b = jax.vmap(fun, in_axes=(res_axes, lin_axes))
    # Traced for its types: the batched outputs' shardings are the batch rules' to give.
    out = linear_call(
        fun_b, batched_transpose, tuple(args[:num_res]), tuple(args[num_res:]), like=None
    )
    return out, (0,) * len(out)


_linear_p.def_impl(_impl)
_linear_p.def_abstract_eval(_abstract_eval)
ad.primitive_transposes[_linear_p] = _transpose
batching.primitive_batchers[_linear_p] = _batch
mlir.register_lowering(_linear_p, mlir.lower_fun(_impl, multiple_results=True))
