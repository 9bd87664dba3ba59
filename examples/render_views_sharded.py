"""Render N views of the teapot across all local devices, the views sharded along the batch.

XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/render_views_sharded.py --views 8

(the flag makes 4 CPU devices out of one host, to try it without GPUs). Each device rasterizes its
own share of the views: the custom calls are partitioned along the batch, nothing is all-gathered.
The views are written side by side to one PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nmr_jax as nr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path("views.png"))
    args = parser.parse_args()
    devices = jax.device_count()
    if args.views % devices:
        parser.error(f"--views ({args.views}) must be a multiple of the {devices} devices")

    vertices, faces = nr.data.teapot()
    textures = jnp.broadcast_to(jnp.array([0.85, 0.6, 0.45]), (faces.shape[0], 2, 2, 2, 3))
    azimuths = jnp.linspace(0.0, 360.0, args.views, endpoint=False)
    eyes = nr.get_points_from_angles(2.732, 30.0, azimuths)  # [views, 3]

    mesh = jax.make_mesh((devices,), ("views",))
    eyes = jax.device_put(eyes, NamedSharding(mesh, P("views")))  # the mesh itself is replicated
    renderer = nr.Renderer(image_size=args.image_size)
    render = jax.jit(jax.vmap(lambda eye: renderer.render(vertices, faces, textures, eye=eye)))
    rgb, _, alpha = render(eyes)

    shards = ", ".join(f"{s.device}: {s.data.shape}" for s in rgb.addressable_shards)
    print(f"rgb {rgb.shape} sharded as {rgb.sharding.spec} -> {shards}")
    image = np.concatenate([np.asarray(rgb), np.asarray(alpha)[..., None]], -1)
    strip = np.concatenate(list(image), axis=1)  # the views side by side
    iio.imwrite(args.output, (np.clip(strip, 0, 1) * 255).round().astype(np.uint8))
    print(f"wrote {args.output} ({args.views} views on {devices} devices)")


if __name__ == "__main__":
    main()
