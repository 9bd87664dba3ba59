"""Forward mode against reverse mode: one Jacobian-vector product against one gradient.

For the teapot (2,256 faces, both sides drawn) at 256^2, each image path that has forward mode,
as a function of the vertices [V, 3] (projected by ``look_at`` and ``perspective``), jit-compiled:

- depth: ``rasterize_depth`` (the fragments' formula);
- soft silhouettes: ``soft_silhouettes`` (logistic, probabilistic, sigma 1e-4);
- soft colours: ``soft_rgb`` of random 2^3 texture cubes (sigma 1e-4, gamma 1e-4);
- layers: ``softmax_blend`` of 4 layers (blur radius 9.2e-4: coverage above 1e-4 at sigma 1e-4)
  coloured by their depth.

Columns: the forward pass alone; forward and backward (``value_and_grad`` of the sum of squares:
one vector-Jacobian product, what an optimiser takes); forward and tangent (``jax.jvp`` with
one random tangent of the vertices: what ``jacfwd`` takes per parameter, and a Gauss-Newton
solver per matrix-free product). Each ratio is the median, over back-to-back pairs in this
process, of that column's time over the forward pass's.

Usage: ``python benchmarks/bench_forward.py [--size 256] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from bench_cpu import timed_pair  # benchmarks/ is the script's folder

import nmr_jax as nr

EYE = (0.0, 0.0, -2.732)
SIGMA = 1e-4
# The layers' reach for sigma 1e-4: a logistic coverage above 1e-4 lies within
# sigma * log(1 / 1e-4 - 1) = 9.2e-4 (squared NDC).
BLUR = 9.2e-4


def paths(faces: np.ndarray, size: int) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Each path's image as a function of the vertices."""
    both = np.concatenate([faces, faces[:, ::-1]])
    rng = np.random.default_rng(0)
    tex = jnp.asarray(rng.uniform(size=(len(both), 2, 2, 2, 3)), jnp.float32)

    def project(v: jax.Array) -> jax.Array:
        v = nr.perspective(nr.look_at(v, jnp.asarray(EYE, jnp.float32)), 30.0)
        return nr.vertices_to_faces(v, both)

    def layers(v: jax.Array) -> jax.Array:
        lay = nr.rasterize_layers(project(v), size, num_layers=4, blur_radius=BLUR)
        return nr.softmax_blend(lay.depth[..., None], lay, SIGMA)

    return {
        "depth": lambda v: nr.rasterize_depth(project(v), size, anti_aliasing=False),
        "soft silhouettes": lambda v: nr.soft_silhouettes(project(v), size, SIGMA),
        "soft colours": lambda v: nr.soft_rgb(project(v), tex, size, SIGMA),
        "layers": layers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10, help="timed pairs per entry")
    args = parser.parse_args()
    vertices, faces = nr.data.teapot()
    v = jnp.asarray(vertices)
    tangent = jnp.asarray(np.random.default_rng(1).normal(size=v.shape), jnp.float32)
    print(f"# forward mode, teapot, {platform.machine()}, jax {jax.__version__}, {args.size}^2, "
          f"median of {args.repeats} pairs, ms (x: over the forward pass)", flush=True)  # fmt: skip
    print("| path | forward | forward+backward (x) | forward+tangent (x) |")
    print("|---|---|---|---|")
    for name, image in paths(np.asarray(faces), args.size).items():
        forward = jax.jit(image)
        backward = jax.jit(jax.value_and_grad(lambda v, image=image: jnp.sum(image(v) ** 2)))
        jvp = jax.jit(lambda v, image=image: jax.jvp(image, (v,), (tangent,)))
        t_fwd, t_bwd, x_bwd = timed_pair(forward, backward, v, args.repeats)
        _, t_jvp, x_jvp = timed_pair(forward, jvp, v, args.repeats)
        print(f"| {name} | {t_fwd * 1e3:.1f} | {t_bwd * 1e3:.1f} ({x_bwd:.1f}) "
              f"| {t_jvp * 1e3:.1f} ({x_jvp:.1f}) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
