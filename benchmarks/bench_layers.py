"""Benchmark of ``nr.rasterize_layers`` (the K nearest faces per pixel) against
``nr.rasterize_fragments`` (one face per pixel, the hard rasterizer), in one process.

For each mesh (the shipped teapot, 2256 faces; an icosphere, 5120; a torus of 100,352), image size
and batch, the fragments are timed once as the baseline, then the layers for each K and blur
radius: forward, and forward+backward (the gradient w.r.t. the vertices of a loss reading every
map). Times are medians over repeated runs after warm-up (compilation excluded); ``x frag`` is the
ratio to the fragments' time of the same pass. Memory is XLA's account of the compiled forward
(outputs plus temporaries; the layers' outputs are 36 bytes a slot), the peak of that program.
The camera is bench_cpu.py's (look-at from the original's default distance, 30 degree
perspective); each face is drawn once (back faces culled), without anti-aliasing.

Usage: ``python benchmarks/bench_layers.py`` (the full table: K in 1, 8, 32, 100, 256 at 256^2
and 512^2, batch 8, blur 0 and 9.2e-4 (PyTorch3D's radius for sigma = 1e-4); entries whose
outputs would exceed ``--max-gb`` are skipped with a note) or with ``--sizes``, ``--batch``,
``--ks``, ``--blurs``, ``--scenes`` for a part of it.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from _meshes import scenes  # benchmarks/ is the script's folder

import nmr_jax as nr

EYE = (0.0, 0.0, -2.732)
ANGLE = 30.0
BYTES_PER_SLOT = 36  # face_index, depth, dist (4 bytes each), bary and bary_screen (12 each)


def projected(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    v = nr.perspective(nr.look_at(vertices, jnp.asarray(EYE, jnp.float32)), ANGLE)
    return nr.vertices_to_faces(v, faces)


def timed(fn: Callable, arg: jax.Array, repeats: int) -> float:
    """Median seconds of fn(arg) over `repeats` runs after one warm-up run."""
    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def memory_mb(fn: Callable, arg: jax.Array) -> float:
    stats = fn.lower(arg).compile().memory_analysis()
    return (stats.output_size_in_bytes + stats.temp_size_in_bytes) / 2**20


def fragments_fns(faces: jax.Array, size: int):
    def forward(v):
        return nr.rasterize_fragments(projected(v, faces), size, anti_aliasing=False)

    def loss(v):
        frags = forward(v)
        return jnp.sum(jnp.where(frags.face_index >= 0, frags.depth, 0.0)) + jnp.sum(frags.bary)

    return jax.jit(forward), jax.jit(jax.value_and_grad(loss))


def layers_fns(faces: jax.Array, size: int, k: int, blur: float):
    def forward(v):
        return nr.rasterize_layers(projected(v, faces), size, num_layers=k, blur_radius=blur)

    def loss(v):
        layers = forward(v)
        hit = layers.face_index >= 0
        return jnp.sum(jnp.where(hit, layers.depth + layers.dist, 0.0)) + jnp.sum(layers.bary)

    return jax.jit(forward), jax.jit(jax.value_and_grad(loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 100, 256])
    parser.add_argument("--blurs", type=float, nargs="+", default=[0.0, 9.2e-4])
    parser.add_argument("--scenes", nargs="+", default=["teapot", "icosphere", "torus100k"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip larger layer outputs")
    args = parser.parse_args()
    print(f"{platform.machine()}, {jax.devices()[0].platform}, batch {args.batch}, ")
    print("| scene | faces | size | K | blur | fwd ms | x frag | fwd+bwd ms | x frag | memory MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    meshes = scenes()
    for name in args.scenes:
        vertices, faces = meshes[name]
        v = jnp.broadcast_to(jnp.asarray(vertices), (args.batch, *vertices.shape))
        f = jnp.asarray(faces)
        for size in args.sizes:
            fwd, bwd = fragments_fns(f, size)
            base = timed(fwd, v, args.repeats), timed(bwd, v, args.repeats)
            row = f"| {name} | {len(faces)} | {size} |"
            print(f"{row} fragments | - | {1e3 * base[0]:.1f} | 1 | {1e3 * base[1]:.1f} | 1 | "
                  f"{memory_mb(fwd, v):.0f} |")  # fmt: skip
            for k in args.ks:
                for blur in args.blurs:
                    gb = args.batch * size * size * k * BYTES_PER_SLOT / 2**30
                    if gb > args.max_gb:
                        print(f"{row} {k} | {blur:g} | skipped: outputs of {gb:.1f} GB |||||")
                        continue
                    fwd, bwd = layers_fns(f, size, k, blur)
                    t = timed(fwd, v, args.repeats), timed(bwd, v, args.repeats)
                    print(f"{row} {k} | {blur:g} | {1e3 * t[0]:.1f} | {t[0] / base[0]:.1f} | "
                          f"{1e3 * t[1]:.1f} | {t[1] / base[1]:.1f} | {memory_mb(fwd, v):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
