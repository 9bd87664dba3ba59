"""Helpers shared by the examples: command line, meshes, rotations, batched views, metrics, output."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    description: str,
    *,
    iterations: int | None = None,
    seed: bool = False,
    mesh: bool = True,
    image_size: int = IMAGE_SIZE,
) -> argparse.ArgumentParser:
    """The options every example shares; ``--iterations`` and ``--seed`` only where they mean something.

    Args:
      description: the script's one-line purpose, shown by ``--help``.
      iterations: default of ``--iterations``; None for a script without an optimisation loop.
      seed: whether the script draws random numbers and so takes ``--seed``.
      mesh: whether the script takes ``--mesh`` (those that make their own shapes do not).
      image_size: default of ``--image-size``.
    """
    p = argparse.ArgumentParser(description=description)
    if mesh:
        p.add_argument(
            "--mesh", default=None, help="OBJ file to use (default: the built-in teapot)"
        )
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    p.add_argument("--image-size", type=int, default=image_size)
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


def write_gif(path: Path, frames: ArrayLike, fps: float = GIF_FPS) -> None:
    """Writes ``frames [N, H, W(, 3)]`` (uint8, or floats in [0, 1]) as a looping GIF."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=1000 / fps, loop=0)  # duration: ms per frame
    print(f"wrote {path}")


def write_png(path: Path, image: ArrayLike) -> None:
    """Writes one image ``[H, W(, 3)]`` (uint8, or floats in [0, 1]) as a PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    print(f"wrote {path}")


def quaternion_to_matrix(q: ArrayLike) -> jax.Array:
    """float32 ``[..., 3, 3]``: the rotation of quaternions ``q [..., 4]`` (w, x, y, z), normalised.

    Normalising here lets an optimiser move ``q`` freely: any non-zero 4-vector is a rotation.
    """
    q = jnp.asarray(q, jnp.float32)
    w, x, y, z = jnp.moveaxis(q / jnp.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return jnp.stack(
        [
            jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def rotation_angle(q: ArrayLike, q_true: ArrayLike) -> np.ndarray:
    """Degrees ``[...]`` of the rotation between quaternions ``q [..., 4]`` and ``q_true [4]``."""
    q, q_true = np.asarray(q, np.float64), np.asarray(q_true, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    cos_half = np.abs(q @ (q_true / np.linalg.norm(q_true)))  # q and -q are the same rotation
    return np.degrees(2 * np.arccos(np.clip(cos_half, 0.0, 1.0)))


def box(center: ArrayLike, half_size: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """An axis-aligned box: ``(vertices float32 [8, 3], faces int32 [12, 3])``, outward-facing."""
    corners = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], np.float32)
    vertices = np.asarray(center, np.float32) + (2 * corners - 1) * np.asarray(half_size)
    faces = [
        [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # x = -1, x = +1
        [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # y = -1, y = +1
        [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],  # z = -1, z = +1
    ]  # fmt: skip
    return jnp.asarray(vertices), jnp.asarray(faces, jnp.int32)


def axes() -> tuple[Any, Any]:
    """A new matplotlib figure and its axes, sized for the docs; matplotlib is imported here, so
    that only the scripts that plot need it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.2), dpi=100)


def save_figure(path: Path, fig: Any) -> None:
    """Writes a figure from ``axes`` as a PNG and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def write_curves(
    path: Path, curves: dict[str, ArrayLike], *, ylabel: str = "loss", xlabel: str = "iteration"
) -> None:
    """Writes a PNG of one or more curves against their index, on a log y axis (losses fall by
    orders of magnitude)."""
    fig, ax = axes()
    for label, values in curves.items():
        ax.plot(np.asarray(values), label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log")
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    save_figure(path, fig)
