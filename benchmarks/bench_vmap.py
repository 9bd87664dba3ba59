"""64 views of one mesh: one call under ``vmap`` against 64 separate calls (time and memory).

python benchmarks/bench_vmap.py [--views 64] [--image-size 256] [--repeats 3] [--malloc retain]

Both sides are jit-compiled and warmed up; times are the best of ``--repeats``. Memory is XLA's
own account of the compiled programs (``memory_analysis``): the separate calls hold one view's
buffers at a time, the vmapped program all views' images at once, but the shared mesh (faces and
lit textures) only once: the script also counts arrays shaped like ``views`` copies of it. For the
best run of each side it also prints the process's CPU time in user and system mode and its minor
page faults: XLA:CPU allocates a program's large temporaries afresh on every run, and where the
operating system is slow to fault pages in (as in a small VM), that system time is the cost of one
big batched program over many small ones. ``--malloc retain`` reruns the script with glibc's
allocator told to keep freed memory (RETAIN_MALLOC below), which removes those faults.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import nmr_jax as nr

# glibc malloc settings under which XLA:CPU's large per-run buffers come back from the heap instead
# of fresh mmap()s: one arena (XLA allocates on its pool threads, whose arenas cannot hold them), no
# mmap, and no trimming of the heap's top back to the system.
RETAIN_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**62),
}


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float, float, int]:
    """Wall seconds, CPU user and system seconds, and minor page faults of the fastest run."""
    jax.block_until_ready(fn())  # compile and warm up
    best = (float("inf"), 0.0, 0.0, 0)
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        jax.block_until_ready(fn())
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        if wall < best[0]:
            best = (
                wall,
                after.ru_utime - before.ru_utime,
                after.ru_stime - before.ru_stime,
                after.ru_minflt - before.ru_minflt,
            )
    return best


def memory_mib(compiled: jax.stages.Compiled) -> float:
    """Temporaries plus outputs of a compiled program, MiB (arguments are the same on both sides)."""
    m = compiled.memory_analysis()
    return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--texture-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--malloc",
        choices=("default", "retain"),
        default="default",
        help="retain: rerun with RETAIN_MALLOC in the environment (glibc only)",
    )
    args = parser.parse_args()
    if args.malloc == "retain" and any(os.environ.get(k) != v for k, v in RETAIN_MALLOC.items()):
        # The allocator reads its settings at process start: start again with them.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **RETAIN_MALLOC})

    vertices, faces = nr.data.teapot()
    t = args.texture_size
    textures = jnp.full((faces.shape[0], t, t, t, 3), 0.8, jnp.float32)
    eyes = nr.get_points_from_angles(
        2.732, 30.0, jnp.linspace(0.0, 360.0, args.views, endpoint=False)
    )
    renderer = nr.Renderer(image_size=args.image_size)

    def render(eye):
        return renderer.render(vertices, faces, textures, eye=eye)

    def loss(eye):
        rgb, _, alpha = render(eye)
        return jnp.sum(rgb) + jnp.sum(alpha)

    print(
        f"{args.views} views, {faces.shape[0]} faces (x2 with fill_back), {args.image_size}^2 "
        f"pixels, textures {t}^3, {jax.devices()[0].platform}, jax {jax.__version__}, "
        f"malloc {args.malloc}"
    )
    print(
        f"| {'':19} | separate ms | vmap ms | time ratio | CPU user s | CPU system s "
        "| page faults | separate MiB | vmap MiB | mesh copies |"
    )
    print("|" + "|".join("-" * n for n in [21, 13, 9, 12, 12, 14, 15, 14, 10, 13]) + "|")
    for name, fn in [("forward", render), ("forward + grad(eye)", jax.grad(loss))]:
        one = jax.jit(fn)
        many = jax.jit(jax.vmap(fn))
        separate, sep_user, sep_sys, sep_faults = best_time(
            lambda one=one: [one(e) for e in eyes], args.repeats
        )
        batched, vmap_user, vmap_sys, vmap_faults = best_time(
            lambda many=many: many(eyes), args.repeats
        )
        mem_one = memory_mib(one.lower(eyes[0]).compile())
        compiled = many.lower(eyes).compile()
        # Arrays of `views` copies of the faces or of the textures ([views, 2F, ...]) in the program.
        f2 = 2 * faces.shape[0]
        pattern = rf"s32\[{args.views},{f2},3\]|f32\[{args.views},{f2},{t},{t},{t},3\]"
        copies = len(re.findall(pattern, compiled.as_text()))
        print(
            f"| {name:19} | {separate * 1e3:11.1f} | {batched * 1e3:7.1f} | "
            f"{batched / separate:10.2f} | {sep_user:4.2f} / {vmap_user:4.2f} | "
            f"{sep_sys:5.2f} / {vmap_sys:4.2f} | {sep_faults:6d} / {vmap_faults:6d} | "
            f"{mem_one * args.views:12.1f} | {memory_mib(compiled):8.1f} | {copies:11d} |"
        )
    print(
        "time ratio = vmap / separate (<= 1: vmap no slower); CPU user s, CPU system s, page faults "
        "(minor) = separate / vmap, of the fastest run; separate MiB = one call's temporaries "
        "and outputs x views (what they would take if held together); mesh copies = arrays of "
        "[views, 2F, 3] faces or [views, 2F, T, T, T, 3] textures in the vmapped program."
    )


if __name__ == "__main__":
    main()
