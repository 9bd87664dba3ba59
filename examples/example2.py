"""Example 2: deform the teapot's vertices until its silhouette becomes a square.

    python examples/example2.py [--mesh teapot.obj] [--iterations 300] [--image-size 256]

Writes ``example2_optimization.gif`` (the silhouette in red over the target square in green, so
their overlap is yellow), ``example2_result.png`` (the deformed mesh, shaded) and
``example2_loss.png`` (the loss per step) into ``--output-dir``, and prints the intersection
over union with the square before and after.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
    CAMERA_DISTANCE,
    IMAGE_SIZE,
    adam_step,
    iou,
    load_mesh,
    overlay,
    parser,
    render_views,
    white_textures,
    write_curves,
    write_gif,
    write_png,
)
from tqdm import tqdm

import nmr_jax as nr

# The original's number of steps.
ITERATIONS = 300
# Adam's step, in world units per iteration: the teapot spans 2, so 300 steps can reshape it.
LEARNING_RATE = 0.01
# The original's view: from the side of the spout (+x), level with the teapot's equator.
ELEVATION, AZIMUTH = 0.0, 90.0
# One GIF frame per this many iterations: 300 iterations give a 3 s animation.
FRAME_EVERY = 5


def square(image_size: int) -> jax.Array:
    """float32 ``[S, S]``: 1 on the middle half of the rows and columns (64..191 of 256), else 0."""
    inside = (jnp.arange(image_size) >= image_size // 4) & (
        jnp.arange(image_size) < image_size - image_size // 4
    )
    return (inside[:, None] & inside[None, :]).astype(jnp.float32)


def run(
    mesh: str | os.PathLike[str] | None = None,
    iterations: int = ITERATIONS,
    image_size: int = IMAGE_SIZE,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Optimises the vertex positions so the silhouette matches ``square(image_size)``.

    Args:
      mesh: OBJ file, or None for the built-in teapot.
      iterations: Adam steps.
      image_size: width and height of the silhouette in pixels.
      output_dir: where to write the GIF and PNG; None writes nothing.
      progress: whether to show a progress bar.

    Returns:
      ``iou_start`` and ``iou_end`` (silhouette vs square), ``loss_start`` and ``loss_end``
      (sum of squared pixel differences), before the first and after the last step.
    """
    vertices, faces = load_mesh(mesh)
    target = square(image_size)
    renderer = nr.Renderer(image_size=image_size)
    eye = nr.get_points_from_angles(CAMERA_DISTANCE, ELEVATION, AZIMUTH)
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        silhouette = renderer.render_silhouettes(v, faces, eye=eye)
        return jnp.sum((silhouette - target) ** 2), silhouette

    step = adam_step(loss_fn, optimizer)

    evaluate = jax.jit(loss_fn)
    opt_state = optimizer.init(vertices)
    start = evaluate(vertices)
    frames: list[np.ndarray] = []
    losses: list[float] = []
    bar = tqdm(range(iterations), desc="example2", disable=not progress)
    for i in bar:
        vertices, opt_state, loss, silhouette = step(vertices, opt_state)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.1f}")
        if output_dir is not None and i % FRAME_EVERY == 0:
            frames.append(overlay(silhouette, target))
    end = evaluate(vertices)

    if output_dir is not None:
        frames.append(overlay(end[1], target))
        write_gif(output_dir / "example2_optimization.gif", frames)
        result = render_views(renderer, vertices, faces, white_textures(len(faces)), eye[None])[0]
        write_png(output_dir / "example2_result.png", result)
        write_curves(output_dir / "example2_loss.png", {"loss": [*losses, float(end[0])]})
    return {
        "iou_start": iou(start[1], target),
        "iou_end": iou(end[1], target),
        "loss_start": float(start[0]),
        "loss_end": float(end[0]),
    }


def main() -> None:
    """Command line entry point."""
    args = parser(__doc__.splitlines()[0], iterations=ITERATIONS).parse_args()
    metrics = run(args.mesh, args.iterations, args.image_size, args.output_dir)
    print(
        f"IoU with the square: {metrics['iou_start']:.4f} at the start, "
        f"{metrics['iou_end']:.4f} at the end"
    )


if __name__ == "__main__":
    main()
