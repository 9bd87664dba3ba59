"""Example 5: recover a UV texture image of the teapot from 8 rendered views.

    python examples/example5_texture.py [--mesh teapot.obj] [--iterations 200] [--image-size 256]
        [--texture-size 256]

A hidden procedural texture is mapped onto the teapot through spherical UVs (``spherical_uvs``) and rendered from 8
views around it (a programmable shader: ``interpolate`` the UVs, ``sample_texture`` the image).
Adam then fits a grey texture image to those 8 pictures. Writes ``example5_texture.gif`` (the
texture as it is recovered, beside the hidden one, and a view of the teapot wearing it) into
``--output-dir``, and prints the PSNR of the recovered texture at the start and the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import CAMERA_DISTANCE, IMAGE_SIZE, load_mesh, parser, write_gif
from tqdm import tqdm

import nmr_jax as nr

ITERATIONS = 200
TEXTURE_SIZE = 256
VIEWS = 8
ELEVATION = 30.0  # degrees: the views see the lid and the body
# Adam on texel values in [0, 1] (clipped after each step): a step of a few grey levels.
LEARNING_RATE = 0.02
GIF_FRAMES = 25
GIF_HEIGHT = 128  # pixels: the GIF's frames are downsized to this


def hidden_texture(size: int) -> jax.Array:
    """float32 ``[S, S, 3]``: coloured waves and a checkerboard, values in [0.05, 0.95]."""
    y, x = np.mgrid[0:size, 0:size] / size
    checker = ((np.floor(x * 8) + np.floor(y * 4)) % 2) * 0.3
    r = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) + checker - 0.15
    g = 0.5 + 0.3 * np.sin(2 * np.pi * (2 * y + x))
    b = 0.5 + 0.3 * np.cos(2 * np.pi * 5 * y) * np.cos(2 * np.pi * 2 * x)
    return jnp.asarray(np.clip(np.stack([r, g, b], -1), 0.05, 0.95), jnp.float32)


def psnr(a: jax.Array, b: jax.Array, mask: jax.Array) -> float:
    """Peak signal-to-noise ratio (peak 1) of ``a`` against ``b`` over the texels in ``mask``."""
    mse = float(jnp.sum(mask[..., None] * (a - b) ** 2) / (3 * jnp.sum(mask)))
    return 10 * float(np.log10(1 / mse))


def run(
    mesh: str | os.PathLike[str] | None = None,
    iterations: int = ITERATIONS,
    image_size: int = IMAGE_SIZE,
    texture_size: int = TEXTURE_SIZE,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Fits a texture image to 8 views of the mesh wearing ``hidden_texture``.

    Returns:
      ``psnr_start`` and ``psnr_end`` (dB) of the texture against the hidden one over the texels
      the views see (those the rendering reads), and ``seen``, the fraction of texels seen.
    """
    vertices, faces = load_mesh(mesh)
    uvs = nr.spherical_uvs(vertices, faces)
    renderer = nr.Renderer(
        image_size=image_size, light_intensity_ambient=1.0, light_intensity_directional=0.0
    )
    azimuths = jnp.arange(VIEWS, dtype=jnp.float32) * (360.0 / VIEWS)
    eyes = nr.get_points_from_angles(CAMERA_DISTANCE, ELEVATION, azimuths)

    def shader(fragments: nr.Fragments, image: jax.Array) -> jax.Array:
        return nr.sample_texture(image, nr.interpolate(uvs, None, fragments))

    @jax.jit
    def views(image: jax.Array) -> jax.Array:
        def view(eye: jax.Array) -> jax.Array:
            return renderer.render(vertices, faces, shader=shader, shader_args=(image,), eye=eye)[0]

        return jax.vmap(view)(eyes)

    hidden = hidden_texture(texture_size)
    targets = views(hidden)

    def loss_fn(image: jax.Array) -> jax.Array:
        return jnp.mean((views(image) - targets) ** 2)

    optimizer = optax.adam(LEARNING_RATE)

    @jax.jit
    def step(
        image: jax.Array, state: optax.OptState
    ) -> tuple[jax.Array, optax.OptState, jax.Array]:
        loss, grad = jax.value_and_grad(loss_fn)(image)
        updates, state = optimizer.update(grad, state)
        return jnp.clip(optax.apply_updates(image, updates), 0.0, 1.0), state, loss

    # The texels the views read: where the rendering's gradient reaches.
    seen = jax.grad(lambda t: jnp.sum(views(t)))(jnp.full_like(hidden, 0.5)).sum(-1) > 0
    image = jnp.full_like(hidden, 0.5)
    psnr_start = psnr(image, hidden, seen)
    state = optimizer.init(image)
    frames = []
    every = max(iterations // GIF_FRAMES, 1)
    bar = tqdm(range(iterations), desc="example5", disable=not progress)
    for i in bar:
        if output_dir is not None and i % every == 0:
            frames.append(_frame(image, hidden, views(image)[1]))
        image, state, loss = step(image, state)
        bar.set_postfix(loss=f"{float(loss):.5f}")
    psnr_end = psnr(image, hidden, seen)
    if output_dir is not None:
        frames.append(_frame(image, hidden, views(image)[1]))
        write_gif(output_dir / "example5_texture.gif", np.stack(frames))
    return {"psnr_start": psnr_start, "psnr_end": psnr_end, "seen": float(jnp.mean(seen))}


def _frame(image: jax.Array, hidden: jax.Array, view: jax.Array) -> np.ndarray:
    """The recovered texture, the hidden one and a view, side by side, at most 128 rows high
    (nearest-neighbour resizing keeps the GIF small)."""
    rows = min(image.shape[0], GIF_HEIGHT)

    def resized(x: jax.Array) -> np.ndarray:
        pick = (np.arange(rows) * x.shape[0]) // rows
        return np.asarray(x)[pick][:, pick]

    return np.concatenate([resized(image), resized(hidden), resized(view)], 1)


def main() -> None:
    """Command line entry point."""
    p = parser(__doc__.splitlines()[0], iterations=ITERATIONS)
    p.add_argument("--texture-size", type=int, default=TEXTURE_SIZE)
    args = p.parse_args()
    metrics = run(args.mesh, args.iterations, args.image_size, args.texture_size, args.output_dir)
    print(
        f"texture PSNR over the {100 * metrics['seen']:.0f}% of texels the views see: "
        f"{metrics['psnr_start']:.1f} dB at the start, {metrics['psnr_end']:.1f} dB at the end"
    )


if __name__ == "__main__":
    main()
