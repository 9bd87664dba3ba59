"""GPU benchmark of nmr_jax's CUDA kernels: the teapot and a 100k-face torus, 256^2 to 1024^2,
batch 1 to 64, forward (rgb and alpha) and forward+backward (gradient of an L2 image loss w.r.t.
the vertices). Times are medians of jitted calls after warm-up (compilation excluded).

Every image of a batch sees the mesh from its own azimuth (look-at from the original's default
distance, 30 degree half-angle perspective); faces are drawn with their reversed copies (the
original's ``fill_back``), colours come from 2^3 texture cubes shared by the batch, no lighting,
no anti-aliasing (so the image size is the rasterized size).

Baseline, in the same process: the same jitted functions on the host CPU (nmr_jax's C++ kernels),
where batch x pixels is at most CPU_MAX_PIXELS (the largest entries would take minutes there);
``x`` is the CPU's time over the GPU's.

Usage: ``python benchmarks/bench_gpu.py`` (all entries) or ``--quick`` (teapot 256^2 batch 1,
torus 1024^2 batch 1). Without a GPU it prints why and exits 0. ``--device cpu`` runs the GPU
side on the CPU instead, the teapot at 64^2 in batches of 1 and 2 (a check of the script itself,
not a measurement).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from _meshes import torus  # benchmarks/ is the script's folder

import nmr_jax as nr
from nmr_jax import _ffi

DISTANCE, ELEVATION, ANGLE = 2.732, 30.0, 30.0
# Batch x pixels of the largest entry also timed on the CPU: 8 views at 1024^2, about a second per
# forward+backward of the torus on one core.
CPU_MAX_PIXELS = 8 * 1024**2
CPU_REPEATS = 3


def scenes() -> dict[str, tuple[jax.Array, jax.Array]]:
    v, f = nr.data.teapot()
    tv, tf = torus(224)  # 100,352 faces
    return {"teapot": (v, f), "torus100k": (jnp.asarray(tv), jnp.asarray(tf))}


def make_fns(vertices: jax.Array, faces: jax.Array, size: int, batch: int):
    """Jitted forward and forward+backward of the vertices, for `batch` views."""
    both_sides = jnp.concatenate([faces, faces[:, ::-1]], 0)
    textures = jnp.full((both_sides.shape[0], 2, 2, 2, 3), 0.7, jnp.float32)
    azimuths = jnp.linspace(0.0, 360.0, batch, endpoint=False)
    eyes = nr.get_points_from_angles(DISTANCE, ELEVATION, azimuths)  # [batch, 3]

    def render(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        projected = nr.perspective(nr.look_at(jnp.broadcast_to(v, (batch, *v.shape)), eyes), ANGLE)
        fv = nr.vertices_to_faces(projected, both_sides)
        out = nr.rasterize_rgbad(
            fv, textures, size, anti_aliasing=False, return_depth=False
        )  # fmt: skip
        return out.rgb, out.alpha

    def loss(v: jax.Array) -> jax.Array:
        rgb, alpha = render(v)
        # A dense incoming gradient on every pixel and channel, as an image-fitting loss gives.
        return jnp.sum((rgb - 0.3) ** 2) + jnp.sum((alpha - 0.5) ** 2)

    return jax.jit(render), jax.jit(jax.grad(loss))


def median_ms(fn: Callable, arg: jax.Array, repeats: int) -> float:
    jax.block_until_ready(fn(arg))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two entries only")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per entry")
    parser.add_argument(
        "--device", choices=("gpu", "cpu"), default="gpu", help="cpu: check the script only"
    )
    args = parser.parse_args()
    try:
        gpu = jax.devices(args.device)[0]
    except RuntimeError:
        print("bench_gpu: no GPU here (jax.devices('gpu') is unavailable): nothing to measure.")
        return 0
    cpu = jax.devices("cpu")[0]
    if gpu.platform == "gpu" and not _ffi.HAS_CUDA_BUILD:
        print(
            "bench_gpu: a GPU is present but nmr_jax was built without CUDA: reinstall with nvcc."
        )
        return 1
    if gpu.platform == "cpu":  # a check of the script: small, untimed, a batch of 1 and of 2
        # (the teapot only: the torus's 200k faces take half a minute on the host-compiled CUDA
        # kernels under the sanitizers, where the GPU check's dry run runs this)
        entries, args.repeats = [("teapot", 64, 1), ("teapot", 64, 2)], 1
    elif args.quick:
        entries = [("teapot", 256, 1), ("torus100k", 1024, 1)]
    else:
        entries = [
            (scene, size, batch)
            for scene in ("teapot", "torus100k")
            for size in (256, 512, 1024)
            for batch in (1, 8, 64)
        ]
    print(f"device: {gpu.device_kind}; jax {jax.__version__}; median of {args.repeats} calls")
    print(
        "| scene | faces drawn | image | batch | forward ms | CPU ms (x) "
        "| forward+backward ms | CPU ms (x) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    meshes = scenes()
    for scene, size, batch in entries:
        times = {}
        devices = [gpu, cpu] if batch * size**2 <= CPU_MAX_PIXELS else [gpu]
        for device in dict.fromkeys(devices):  # once only where --device cpu makes them one
            with jax.default_device(device):
                vertices, faces = (jax.device_put(a, device) for a in meshes[scene])
                forward, grad = make_fns(vertices, faces, size, batch)
                repeats = args.repeats if device is gpu else CPU_REPEATS
                times[device] = [median_ms(fn, vertices, repeats) for fn in (forward, grad)]
        cells = []
        for mode in range(2):
            on_gpu = times[gpu][mode]
            on_cpu = (
                f"{times[cpu][mode]:.1f} ({times[cpu][mode] / on_gpu:.1f})" if cpu in times else ""
            )
            cells += [f"{on_gpu:.2f}", on_cpu]
        drawn = 2 * meshes[scene][1].shape[0]
        print(f"| {scene} | {drawn} | {size}^2 | {batch} | {' | '.join(cells)} |", flush=True)
    print(f"x: CPU time / GPU time; CPU only where batch x pixels <= {CPU_MAX_PIXELS}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
