"""Example 3: paint the teapot's textures so that it shows coloured stripes from every side.

    python examples/example3.py [--mesh teapot.obj] [--iterations 300] [--image-size 256] [--seed 0]

Each step renders the teapot (orthographic, ambient light only) from a random azimuth and
moves its textures towards the stripes behind it. Writes ``example3_ref.png`` (the stripes) and
``example3_result.gif`` (the painted teapot turning) and ``example3_loss.png`` (each step's
loss, on its random view) into ``--output-dir``.
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
    load_mesh,
    parser,
    render_views,
    turntable_eyes,
    write_curves,
    write_gif,
    write_png,
)
from tqdm import tqdm

import nmr_jax as nr

# Six stripe colours, red to violet: neighbours differ clearly in hue.
STRIPE_COLORS = (
    (0.90, 0.20, 0.20),
    (0.95, 0.60, 0.15),
    (0.95, 0.90, 0.25),
    (0.30, 0.75, 0.30),
    (0.25, 0.45, 0.90),
    (0.60, 0.30, 0.80),
)
# The original's number of steps.
ITERATIONS = 300
# Texels per face edge, as the original: enough for a stripe edge to cross a face.
TEXTURE_SIZE = 4
# The original's Adam: a large step (textures live in a tanh parameter, saturating near |p| = 3)
# and a short momentum (b1), because each step sees another random side of the teapot.
LEARNING_RATE, ADAM_B1 = 0.1, 0.5
# The stripes are horizontal, so a level camera sees them the same from every azimuth.
ELEVATION = 0.0
# Azimuths of the fixed views that score the textures before and after (every 45 degrees).
EVAL_AZIMUTH_STEP = 45.0
# Turntable of the result: 30 frames (1.5 s) per turn.
GIF_AZIMUTH_STEP = 12.0


def stripes(image_size: int) -> jax.Array:
    """float32 ``[S, S, 3]``: six horizontal stripes over the middle half of the rows, black elsewhere.

    The teapot, normalised into [-1, 1] and seen orthographically, spans about those rows.
    """
    rows = np.arange(image_size)
    top, height = image_size // 4, image_size - 2 * (image_size // 4)
    band = (rows - top) * len(STRIPE_COLORS) // height  # stripe index of each row; < 0 above
    inside = (band >= 0) & (band < len(STRIPE_COLORS))
    colors = np.asarray(STRIPE_COLORS, np.float32)[np.clip(band, 0, len(STRIPE_COLORS) - 1)]
    image = np.where(inside[:, None], colors, 0.0)
    return jnp.broadcast_to(
        jnp.asarray(image, jnp.float32)[:, None, :], (image_size, image_size, 3)
    )


def to_textures(param: jax.Array) -> jax.Array:
    """Textures in [0, 1] from the unconstrained parameter, as the original: (tanh(p) + 1) / 2."""
    return (jnp.tanh(param) + 1.0) / 2.0


def run(
    mesh: str | os.PathLike[str] | None = None,
    iterations: int = ITERATIONS,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Optimises the textures so that the teapot's pixels take the colours of ``stripes``.

    Args:
      mesh: OBJ file, or None for the built-in teapot.
      iterations: Adam steps, each from one random azimuth.
      image_size: width and height of the renders in pixels.
      seed: seed of the random azimuths.
      output_dir: where to write the PNG and GIF; None writes nothing.
      progress: whether to show a progress bar.

    Returns:
      ``loss_start`` and ``loss_end``: the squared colour error summed over the teapot's pixels,
      averaged over fixed views every 45 degrees of azimuth, before and after optimising.
    """
    vertices, faces = load_mesh(mesh)
    target = stripes(image_size)
    renderer = nr.Renderer(
        image_size=image_size,
        perspective=False,
        light_intensity_ambient=1.0,
        light_intensity_directional=0.0,
    )
    optimizer = optax.adam(LEARNING_RATE, b1=ADAM_B1)
    # Zero: every texel starts mid-grey, where tanh is steepest.
    param = jnp.zeros((len(faces), TEXTURE_SIZE, TEXTURE_SIZE, TEXTURE_SIZE, 3), jnp.float32)

    def loss_fn(p: jax.Array, eye: jax.Array) -> jax.Array:
        rgb, _, alpha = renderer.render(vertices, faces, to_textures(p), eye=eye)
        # Only the teapot's pixels: the background's error is constant and would hide progress.
        return jnp.sum(alpha[..., None] * (rgb - target) ** 2)

    @jax.jit
    def step(
        p: jax.Array, opt_state: optax.OptState, key: jax.Array
    ) -> tuple[jax.Array, optax.OptState, jax.Array, jax.Array]:
        """One Adam step from a random azimuth; returns the loss before the step and the next key."""
        key, sub = jax.random.split(key)
        azimuth = jax.random.uniform(sub, minval=0.0, maxval=360.0)
        eye = nr.get_points_from_angles(CAMERA_DISTANCE, ELEVATION, azimuth)
        loss, grads = jax.value_and_grad(loss_fn)(p, eye)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(p, updates), opt_state, loss, key

    eval_eyes = turntable_eyes(EVAL_AZIMUTH_STEP, ELEVATION)
    evaluate = jax.jit(lambda p: jnp.mean(jax.vmap(lambda eye: loss_fn(p, eye))(eval_eyes)))

    loss_start = float(evaluate(param))
    opt_state = optimizer.init(param)
    key = jax.random.key(seed)
    losses: list[float] = []
    bar = tqdm(range(iterations), desc="example3", disable=not progress)
    for _ in bar:
        param, opt_state, loss, key = step(param, opt_state, key)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.1f}")
    loss_end = float(evaluate(param))

    if output_dir is not None:
        write_png(output_dir / "example3_ref.png", target)
        eyes = turntable_eyes(GIF_AZIMUTH_STEP, ELEVATION)
        write_gif(
            output_dir / "example3_result.gif",
            render_views(renderer, vertices, faces, to_textures(param), eyes),
        )
        write_curves(
            output_dir / "example3_loss.png", {"loss": losses}, ylabel="loss of the step's view"
        )
    return {"loss_start": loss_start, "loss_end": loss_end}


def main() -> None:
    """Command line entry point."""
    args = parser(__doc__.splitlines()[0], iterations=ITERATIONS, seed=True).parse_args()
    metrics = run(args.mesh, args.iterations, args.image_size, args.seed, args.output_dir)
    print(
        f"loss (mean over {360 / EVAL_AZIMUTH_STEP:.0f} views): "
        f"{metrics['loss_start']:.1f} at the start, {metrics['loss_end']:.1f} at the end"
    )


if __name__ == "__main__":
    main()
