"""Example 1: a turntable of the teapot, all views rendered in one vmapped, jitted call.

    python examples/example1.py [--mesh teapot.obj] [--image-size 256] [--azimuth-step 4]

Writes ``example1.gif`` into ``--output-dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from _common import (
    IMAGE_SIZE,
    load_mesh,
    parser,
    render_views,
    to_uint8,
    turntable_eyes,
    white_textures,
    write_gif,
)

import nmr_jax as nr

# The original's camera: looking down on the teapot from 30 degrees above its equator.
ELEVATION = 30.0
# The original's turntable step: 90 frames per turn.
AZIMUTH_STEP = 4.0


def run(
    mesh: str | os.PathLike[str] | None = None,
    image_size: int = IMAGE_SIZE,
    azimuth_step: float = AZIMUTH_STEP,
    output_dir: Path | None = None,
) -> dict[str, np.ndarray]:
    """Renders the mesh from eyes circling it and (if ``output_dir``) writes them as a GIF.

    Args:
      mesh: OBJ file, or None for the built-in teapot.
      image_size: width and height of each frame in pixels.
      azimuth_step: degrees between successive views (360 / step views in all).
      output_dir: where to write ``example1.gif``; None writes nothing.

    Returns:
      ``{"frames": uint8 [N, H, W, 3]}``, the views in order of azimuth.
    """
    vertices, faces = load_mesh(mesh)
    renderer = nr.Renderer(image_size=image_size)
    eyes = turntable_eyes(azimuth_step, ELEVATION)
    frames = to_uint8(render_views(renderer, vertices, faces, white_textures(len(faces)), eyes))
    if output_dir is not None:
        write_gif(output_dir / "example1.gif", frames)
    return {"frames": frames}


def main() -> None:
    """Command line entry point."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--azimuth-step", type=float, default=AZIMUTH_STEP)
    args = p.parse_args()
    frames = run(args.mesh, args.image_size, args.azimuth_step, args.output_dir)["frames"]
    print(f"rendered {len(frames)} views of {args.image_size}x{args.image_size}")


if __name__ == "__main__":
    main()
