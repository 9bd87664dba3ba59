"""The main job: render the built-in Utah teapot to a PNG.

python examples/render_teapot.py --output teapot.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np

import nmr_jax as nr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("teapot.png"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--elevation", type=float, default=30.0, help="degrees")
    parser.add_argument("--azimuth", type=float, default=45.0, help="degrees")
    parser.add_argument("--distance", type=float, default=2.732)
    args = parser.parse_args()

    vertices, faces = nr.data.teapot()
    # A warm clay colour: texture cubes of size 2 are enough for a uniform colour.
    textures = jnp.broadcast_to(jnp.array([0.85, 0.6, 0.45]), (faces.shape[0], 2, 2, 2, 3))
    eye = nr.get_points_from_angles(args.distance, args.elevation, args.azimuth)
    renderer = nr.Renderer(image_size=args.image_size, eye=eye)
    rgb, _, alpha = renderer.render(vertices, faces, textures)
    image = np.concatenate([np.asarray(rgb), np.asarray(alpha)[..., None]], -1)
    iio.imwrite(args.output, (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    print(f"wrote {args.output} ({args.image_size}x{args.image_size}, {faces.shape[0]} faces)")


if __name__ == "__main__":
    main()
