"""Helpers shared by the four examples: command line, mesh loading, batched views, metrics, output."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import nmr_jax as nr

# Where the scripts write their pictures unless told otherwise (the README embeds them from here).
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "output"
# The original's camera distance: 1 / tan(30 deg) + 1, at which a unit cube fills the 30-degree view.
CAMERA_DISTANCE = 2.732
# The original renderer's default image size, used by all its examples.
IMAGE_SIZE = 256
# Frame rate of the GIFs: smooth enough for a turntable, slow enough to follow an optimisation.
GIF_FPS = 20


def parser(
    description: str, *, iterations: int | None = None, seed: bool = False
) -> argparse.ArgumentParser:
    """The options every example shares; ``--iterations`` and ``--seed`` only where they mean something.

    Args:
      description: the script's one-line purpose, shown by ``--help``.
      iterations: default of ``--iterations``; None for a script without an optimisation loop.
      seed: whether the script draws random numbers and so takes ``--seed``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--mesh", default=None, help="OBJ file to use (default: the built-in teapot)")
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    if iterations is not None:
        p.add_argument("--iterations", type=int, default=iterations)
    if seed:
        p.add_argument("--seed", type=int, default=0)
    return p


def load_mesh(path: str | os.PathLike[str] | None) -> tuple[jax.Array, jax.Array]:
    """``(vertices [V, 3], faces [F, 3])`` of an OBJ file, or of the built-in teapot for None.

    Both are normalised into [-1, 1]^3, so the examples' cameras fit any mesh.
    """
    if path is None:
        return nr.data.teapot()
    return nr.load_obj(path, normalization=True)


def white_textures(n_faces: int, texture_size: int = 1) -> jax.Array:
    """float32 ``[F, T, T, T, 3]`` of ones: a plain white mesh, shaded only by the lights.

    One texel per face (the default) is enough for a colour that does not vary over the face.
    """
    return jnp.ones((n_faces, texture_size, texture_size, texture_size, 3), jnp.float32)


def turntable_eyes(azimuth_step: float, elevation: float) -> jax.Array:
    """float32 ``[N, 3]``: eyes at ``CAMERA_DISTANCE`` circling the origin, azimuth 0, step, ...< 360."""
    azimuths = jnp.arange(0.0, 360.0, azimuth_step, dtype=jnp.float32)
    return nr.get_points_from_angles(CAMERA_DISTANCE, elevation, azimuths)


@jax.jit
def render_views(
    renderer: nr.Renderer,
    vertices: ArrayLike,
    faces: ArrayLike,
    textures: ArrayLike,
    eyes: ArrayLike,
) -> jax.Array:
    """rgb float32 ``[N, H, W, 3]`` of one mesh seen from each of ``eyes [N, 3]``, in one call.

    The renderer is an argument, not a closure, so that renderers differing only in their array
    fields (lights, default eye) share one compilation.
    """
    return jax.vmap(lambda eye: renderer.render(vertices, faces, textures, eye=eye)[0])(eyes)


def adam_step(
    loss_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    optimizer: optax.GradientTransformation,
) -> Callable[[jax.Array, optax.OptState], tuple[jax.Array, optax.OptState, jax.Array, jax.Array]]:
    """A jitted optimiser step for ``loss_fn(params) -> (loss, silhouette)``.

    The step returns ``(params, opt_state, loss, silhouette)``, the last two for the params
    before the step.
    """

    @jax.jit
    def step(
        params: jax.Array, opt_state: optax.OptState
    ) -> tuple[jax.Array, optax.OptState, jax.Array, jax.Array]:
        (loss, silhouette), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, silhouette

    return step


def iou(alpha: ArrayLike, target: ArrayLike) -> float:
    """Intersection over union of two silhouettes, each binarised at one half (anti-aliased edges)."""
    a, b = np.asarray(alpha) > 0.5, np.asarray(target) > 0.5
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def overlay(alpha: ArrayLike, target: ArrayLike) -> np.ndarray:
    """rgb uint8 ``[H, W, 3]``: ``alpha`` in red, ``target`` in green, so agreement shows yellow."""
    a = np.asarray(alpha)
    return to_uint8(np.stack([a, np.asarray(target), np.zeros_like(a)], axis=-1))


def to_uint8(images: ArrayLike) -> np.ndarray:
    """Images with values in [0, 1] as uint8 0..255 (clipped: anti-aliasing may overshoot a bit)."""
    return np.round(np.clip(np.asarray(images), 0.0, 1.0) * 255).astype(np.uint8)


def write_gif(path: Path, frames: ArrayLike) -> None:
    """Writes ``frames [N, H, W(, 3)]`` (uint8, or floats in [0, 1]) as a looping GIF."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=1000 / GIF_FPS, loop=0)  # duration: ms per frame
    print(f"wrote {path}")


def write_png(path: Path, image: ArrayLike) -> None:
    """Writes one image ``[H, W(, 3)]`` (uint8, or floats in [0, 1]) as a PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    print(f"wrote {path}")
