"""Render N views of the teapot across all devices, the views sharded along the batch, and the
gradient of their mean colour with respect to the (replicated) vertices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/render_views_sharded.py --views 8

(the flag makes 4 CPU devices out of one host, to try it without GPUs). Each device rasterizes its
own share of the views: the custom calls are partitioned along the batch, nothing is all-gathered;
the vertex gradient is summed across the devices. The views are written side by side to one PNG.

With ``--processes 2`` the script starts itself twice on this machine, as two JAX processes
joined by ``jax.distributed.initialize`` (CPU collectives through gloo), and the views are
sharded over the devices of both, as on a cluster of hosts:

XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/render_views_sharded.py \\
    --views 8 --processes 2
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import nmr_jax as nr

# Environment of the processes that --processes starts: the coordinator's address, this
# process's index and the number of processes (jax.distributed.initialize's arguments).
COORDINATOR, PROCESS_ID, NUM_PROCESSES = (
    "NMR_JAX_COORDINATOR",
    "NMR_JAX_PROCESS_ID",
    "NMR_JAX_NUM_PROCESSES",
)


def scene(views: int) -> tuple[jax.Array, jax.Array, jax.Array, np.ndarray]:
    """``(vertices, faces, textures, eyes [views, 3])``: the teapot in one colour, eyes circling it."""
    vertices, faces = nr.data.teapot()
    textures = jnp.broadcast_to(jnp.array([0.85, 0.6, 0.45]), (faces.shape[0], 2, 2, 2, 3))
    azimuths = np.linspace(0.0, 360.0, views, endpoint=False)
    eyes = np.asarray(nr.get_points_from_angles(2.732, 30.0, azimuths), np.float32)
    return vertices, faces, textures, eyes


def views_and_gradient(
    image_size: int, vertices: jax.Array, faces: jax.Array, textures: jax.Array, eyes: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(rgb [N, S, S, 3], alpha [N, S, S], d mean(rgb) / d vertices [V, 3])`` of the views.

    Jit-compiled with the eyes' sharding: sharded eyes give sharded images and a gradient summed
    over the devices (and processes) that hold them.
    """
    renderer = nr.Renderer(image_size=image_size)

    def mean_colour(v: jax.Array, eyes: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        rgb, _, alpha = jax.vmap(lambda eye: renderer.render(v, faces, textures, eye=eye))(eyes)
        return jnp.mean(rgb), (rgb, alpha)

    # The eyes are an argument, not a closure: a sharded array spanning other processes' devices
    # cannot be a constant, and only arguments carry their sharding into the computation.
    grad_fn = jax.jit(jax.value_and_grad(mean_colour, has_aux=True))
    (_, (rgb, alpha)), grad = grad_fn(vertices, eyes)
    return rgb, alpha, grad


def start_processes(n: int) -> int:
    """Runs this script with the same arguments in ``n`` processes on this machine, joined through
    a coordinator on a free local port; returns 0 if all of them succeed, else 1."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *sys.argv[1:]],
            env={
                **os.environ,
                COORDINATOR: f"localhost:{port}",
                PROCESS_ID: str(i),
                NUM_PROCESSES: str(n),
            },
        )
        for i in range(n)
    ]
    codes = [p.wait() for p in procs]  # all of them, even after one fails
    return 0 if all(c == 0 for c in codes) else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path("views.png"))
    parser.add_argument("--processes", type=int, default=1, help="JAX processes to run on")
    parser.add_argument("--save", type=Path, help="also write rgb, alpha and grad to this .npz")
    args = parser.parse_args()
    if args.processes > 1 and PROCESS_ID not in os.environ:
        sys.exit(start_processes(args.processes))
    if PROCESS_ID in os.environ:
        # Before anything else touches jax's backends: gloo gives the CPU its collectives
        # across processes (the gradient's sum).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            os.environ[COORDINATOR],
            num_processes=int(os.environ[NUM_PROCESSES]),
            process_id=int(os.environ[PROCESS_ID]),
        )
    devices = jax.device_count()  # all processes' devices
    if args.views % devices:
        parser.error(f"--views ({args.views}) must be a multiple of the {devices} devices")

    vertices, faces, textures, eyes_np = scene(args.views)
    # An automatic mesh axis over every process's devices: XLA partitions the views along it.
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("views",)), P("views"))
    # Each process puts only its own devices' eyes (the mesh itself is replicated).
    eyes = jax.make_array_from_callback(eyes_np.shape, sharding, lambda index: eyes_np[index])
    rgb, alpha, grad = views_and_gradient(args.image_size, vertices, faces, textures, eyes)

    shards = ", ".join(f"{s.device}: {s.data.shape}" for s in rgb.addressable_shards)
    print(
        f"process {jax.process_index()}: rgb {rgb.shape} sharded as {rgb.sharding.spec} -> {shards}"
    )
    if jax.process_count() > 1:
        # Every process takes part in gathering the images; the first writes them. (In one
        # process, where every shard is at hand, process_allgather would stack a new axis.)
        rgb, alpha, grad = (
            multihost_utils.process_allgather(x, tiled=True) for x in (rgb, alpha, grad)
        )
    rgb, alpha, grad = np.asarray(rgb), np.asarray(alpha), np.asarray(grad)
    if jax.process_index() == 0:
        strip = np.concatenate(list(np.concatenate([rgb, alpha[..., None]], -1)), axis=1)
        iio.imwrite(args.output, (np.clip(strip, 0, 1) * 255).round().astype(np.uint8))
        if args.save:
            np.savez(args.save, rgb=rgb, alpha=alpha, grad=grad)
        print(
            f"wrote {args.output} ({args.views} views on {devices} devices in "
            f"{jax.process_count()} processes; |grad| {np.linalg.norm(grad):.6f})"
        )


if __name__ == "__main__":
    main()
