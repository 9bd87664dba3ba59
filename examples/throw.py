"""Throw: find the velocity and spin a teapot was thrown with from silhouettes of its flight.

    python examples/throw.py [--iterations 300] [--image-size 96]

The teapot flies under gravity and bounces once on the ground; a ``lax.scan`` integrates its
position, velocity and orientation frame by frame, and each frame is rendered as a silhouette.
Starting from a guess at rest, gradient descent through the renderer and the whole scan recovers
the initial linear and angular velocity from the target silhouettes: 16 frames, each filmed by
two cameras. Writes ``throw.gif`` (each frame, a row per camera, the start on the left and the
fit on the right: the fit's silhouette in red, the target's in green, so their overlap is
yellow) and ``throw_loss.png`` into ``--output-dir``, and prints the velocity errors at the start
and the end.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import load_mesh, overlay, parser, quaternion_to_matrix, write_curves, write_gif
from tqdm import tqdm

import nmr_jax as nr

ITERATIONS = 300
IMAGE_SIZE = 96
FRAMES = 16
# Seconds per frame, and gravity in world units per second squared (the world unit is a metre).
DT, GRAVITY = 0.06, 9.81
# The teapot, scaled into a box of about 1 x 0.5 x 0.6 m, starts here, level.
SCALE, START = 0.5, (-1.1, 0.3, -0.2)
# The ground, and the radius of the sphere about the teapot's centre that touches it (the teapot's
# half height, and a little of its tilt): frictionless, so a bounce keeps the spin.
GROUND, RADIUS = -0.7, 0.25
# Fraction of the vertical speed kept by a bounce.
RESTITUTION = 0.7
# The throw to recover: linear (m/s) and angular (rad/s, world axes) velocity.
TRUE_VELOCITY = (2.6, 2.4, 0.8)
TRUE_SPIN = (1.0, -1.5, 2.0)
# Two cameras film the throw: one in front, a little above, and one from behind and above. One
# camera is not enough: it cannot tell a spin about an axis in its image plane from the opposite
# spin (the teapot tilting towards it or away, nearly the same silhouettes), and the fit ends at
# the mirror image of the true spin.
EYES = ((0.0, 0.3, -3.0), tuple(nr.get_points_from_angles(3.0, 50.0, 150.0).tolist()))
# Adam's step (decayed to a twentieth by the end): velocities of a few m/s and rad/s are reached
# in about 50 steps.
LEARNING_RATE = 0.1
# Frames in the loss at the first step (see run).
FIRST_FRAMES = 4
# Frames of the GIF per second: the throw plays at about its real speed (1 / DT).
GIF_FPS = 16


def positions_and_orientations(velocity: jax.Array, spin: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Centre ``[FRAMES, 3]`` and quaternion ``[FRAMES, 4]`` of the teapot in each frame.

    Each step of the scan moves the centre along its exact parabola over one frame; when that
    parabola meets the ground within the frame, the step finds the moment of impact, reverses and
    damps the vertical velocity there and follows the new parabola for the rest of the frame. The
    frames are then continuous (and differentiable) functions of the velocity, also where a
    change of it moves the bounce from one frame to the next. The orientation turns at the
    constant spin ``w``: ``q += dt/2 (0, w) q``, renormalised, which is smooth at ``w = 0``.
    """
    floor = GROUND + RADIUS  # height of the centre at the bounce

    def frame(
        state: tuple[jax.Array, jax.Array, jax.Array], _: None
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
        p, v, q = state
        y, vy = p[1], v[1]
        # Time to reach the floor on the way down (a root of y + vy t - g t^2 / 2 = floor; the
        # centre is never below the floor, and the clamp keeps sqrt's gradient finite).
        impact = (vy + jnp.sqrt(jnp.maximum(vy**2 + 2 * GRAVITY * (y - floor), 1e-12))) / GRAVITY
        bounces = impact < DT
        rest = DT - impact
        up = -RESTITUTION * (vy - GRAVITY * impact)
        y = jnp.where(
            bounces, floor + up * rest - GRAVITY * rest**2 / 2, y + vy * DT - GRAVITY * DT**2 / 2
        )
        vy = jnp.where(bounces, up - GRAVITY * rest, vy - GRAVITY * DT)
        p = jnp.stack([p[0] + v[0] * DT, y, p[2] + v[2] * DT])
        v = jnp.stack([v[0], vy, v[2]])
        w0, w = q[0], q[1:]
        q = q + 0.5 * DT * jnp.concatenate(
            [-jnp.dot(spin, w)[None], w0 * spin + jnp.cross(spin, w)]
        )
        q = q / jnp.linalg.norm(q)
        return (p, v, q), (p, q)

    start = (jnp.asarray(START), velocity, jnp.array([1.0, 0.0, 0.0, 0.0]))
    # The first frame is the start; the scan adds the other FRAMES - 1.
    _, (p, q) = jax.lax.scan(frame, start, None, length=FRAMES - 1)
    return jnp.concatenate([start[0][None], p]), jnp.concatenate([start[2][None], q])


def run(
    iterations: int = ITERATIONS,
    image_size: int = IMAGE_SIZE,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Fits the initial velocity and spin to the silhouettes of the true throw.

    Returns:
      ``velocity_error_start``/``_end`` (m/s) and ``spin_error_start``/``_end`` (rad/s): the
      distances of the guess from the true velocity and spin, before and after; ``loss_start``
      and ``loss_end``, the squared silhouette error summed over all frames and cameras.
    """
    vertices, faces = load_mesh(None)
    vertices = vertices * SCALE
    # Silhouettes only: without textures the reversed faces of fill_back would draw nothing new.
    renderer = nr.Renderer(image_size=image_size, fill_back=False)
    eyes = jnp.asarray(EYES, jnp.float32)

    def silhouettes(params: jax.Array) -> jax.Array:
        """float32 ``[cameras, FRAMES, H, W]`` of the throw with ``params`` = (velocity, spin)."""
        p, q = positions_and_orientations(params[:3], params[3:])
        posed = jnp.einsum("vj,fij->fvi", vertices, quaternion_to_matrix(q)) + p[:, None]
        return jax.vmap(lambda eye: renderer.render_silhouettes(posed, faces, eye=eye))(eyes)

    true_params = jnp.asarray(TRUE_VELOCITY + TRUE_SPIN, jnp.float32)
    target = silhouettes(true_params)

    def loss_fn(params: jax.Array, frames: int | jax.Array = FRAMES) -> jax.Array:
        """Squared silhouette error summed over the first ``frames`` frames."""
        counted = jnp.arange(FRAMES) < frames
        return jnp.sum(counted[:, None, None] * (silhouettes(params) - target) ** 2)

    optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, iterations, alpha=0.05))

    @jax.jit
    def step(
        params: jax.Array, opt_state: optax.OptState, frames: jax.Array
    ) -> tuple[jax.Array, optax.OptState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, frames)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jnp.zeros(6, jnp.float32)  # the guess: dropped, not thrown
    start = silhouettes(params)
    evaluate = jax.jit(loss_fn)  # over all the frames
    loss_start = float(evaluate(params))
    opt_state = optimizer.init(params)
    losses = []
    bar = tqdm(range(iterations), desc="throw", disable=not progress)
    for i in bar:
        # Frames join the loss one by one over the first half of the run: early frames, near the
        # known start, fix the velocity roughly before later ones, far from it, can mislead it.
        n_frames = min(FRAMES, FIRST_FRAMES + (FRAMES - FIRST_FRAMES) * 2 * i // iterations)
        params, opt_state, loss = step(params, opt_state, jnp.array(n_frames))
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.1f}")
    loss_end = float(evaluate(params))

    if output_dir is not None:
        end = silhouettes(params)
        # Frame by frame: a row per camera, the start on the left and the fit on the right.
        frames = [
            np.concatenate(
                [
                    np.concatenate([overlay(s, t), overlay(e, t)], axis=1)
                    for s, e, t in zip(start[:, f], end[:, f], target[:, f], strict=True)
                ]
            )
            for f in range(FRAMES)
        ]
        write_gif(output_dir / "throw.gif", frames, fps=GIF_FPS)
        write_curves(
            output_dir / "throw_loss.png", {"loss": losses}, ylabel="loss over the frames counted"
        )
    error = np.abs(np.asarray(params) - np.asarray(true_params))
    start_error = np.abs(np.asarray(true_params))
    return {
        "velocity_error_start": float(np.linalg.norm(start_error[:3])),
        "velocity_error_end": float(np.linalg.norm(error[:3])),
        "spin_error_start": float(np.linalg.norm(start_error[3:])),
        "spin_error_end": float(np.linalg.norm(error[3:])),
        "loss_start": loss_start,
        "loss_end": loss_end,
    }


def main() -> None:
    """Command line entry point."""
    args = parser(
        __doc__.splitlines()[0], iterations=ITERATIONS, mesh=False, image_size=IMAGE_SIZE
    ).parse_args()
    m = run(args.iterations, args.image_size, args.output_dir)
    print(
        f"velocity error {m['velocity_error_start']:.3f} -> {m['velocity_error_end']:.2g} m/s, "
        f"spin error {m['spin_error_start']:.3f} -> {m['spin_error_end']:.2g} rad/s"
    )


if __name__ == "__main__":
    main()
