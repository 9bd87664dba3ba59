"""A semi-transparent teapot: the K nearest faces of each pixel (``nr.rasterize_layers``), each
shaded smoothly (``nr.layer_fragments``, ``nr.interpolate``, ``nr.lambert``) and composited front
to back at one opacity (``nr.alpha_composite``), so that the inside (blue), the far side of the
body, the handle and the spout show through the near side.

python examples/transparent_teapot.py --output transparent_teapot.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

import nmr_jax as nr

CLAY = jnp.array([0.85, 0.6, 0.45])  # the outside
GLAZE = jnp.array([0.35, 0.5, 0.85])  # the inside (the back side of the faces)


def run(image_size: int = 256, opacity: float = 0.4, num_layers: int = 8) -> dict[str, np.ndarray]:
    """The composited RGBA image [S, S, 4] on white, the same mesh opaque, and the number of faces
    behind each pixel (the depth complexity, at most ``num_layers``)."""
    vertices, faces = nr.data.teapot()
    eye = nr.get_points_from_angles(2.732, 30.0, 45.0)
    renderer = nr.Renderer(image_size=image_size, eye=eye)
    both_sides = jnp.concatenate([faces, faces[:, ::-1]])  # each face and its reversed copy
    normals = nr.vertex_normals(vertices, faces)

    @jax.jit
    def draw(vertices):
        fv = nr.vertices_to_faces(renderer.transform(vertices), both_sides)
        layers = nr.rasterize_layers(fv, image_size, num_layers=num_layers)
        frags = nr.layer_fragments(layers)  # [K, S, S]: every layer shaded at once
        back = (frags.face_index >= faces.shape[0])[..., None]
        n = nr.interpolate(normals, both_sides, frags)
        lit = nr.lambert(jnp.where(back, -n, n), 0.4, 0.6, direction=(0.3, 1.0, -0.5))
        color = jnp.moveaxis(jnp.where(back, GLAZE, CLAY) * lit, 0, -2)  # [S, S, K, 3]
        alphas = jnp.full(layers.face_index.shape, opacity)
        image = nr.alpha_composite(color, alphas, layers, (1.0, 1.0, 1.0))
        opaque = nr.alpha_composite(color, jnp.ones_like(alphas), layers, (1.0, 1.0, 1.0))
        return image, opaque, jnp.sum(layers.face_index >= 0, -1)

    image, opaque, layers = draw(vertices)
    return {"image": np.asarray(image), "opaque": np.asarray(opaque), "layers": np.asarray(layers)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("transparent_teapot.png"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--opacity", type=float, default=0.4)
    parser.add_argument("--num-layers", type=int, default=8)
    args = parser.parse_args()
    out = run(args.image_size, args.opacity, args.num_layers)
    iio.imwrite(args.output, (np.clip(out["image"], 0, 1) * 255).round().astype(np.uint8))
    print(f"wrote {args.output}; up to {out['layers'].max()} faces behind a pixel")


if __name__ == "__main__":
    main()
