"""Pose search: recover the teapot's rotation and translation from one partly occluded silhouette.

    python examples/pose_search.py [--starts 256] [--targets 4] [--iterations 150] [--image-size 64]

A box between the camera and the teapot hides part of it. One silhouette is the only evidence,
and from most starting rotations gradient descent ends in a wrong pose whose silhouette is
nearly as good (a view from the other side, the handle where the spout should be). So every
step moves ``--starts`` random poses at once: one jit-compiled, ``vmap``-ped Adam step, the
starts sharded over the local devices when there are several. The start with the lowest final
loss is the answer. For each of ``--targets`` random true poses it counts the starts that
succeed on their own (rotation within 5 degrees and translation within 2 % of the camera
distance) and whether the best of all starts does, and it times a step for 1 start and for all.

Writes ``pose_search.gif`` (the best start's optimisation for the first target: its silhouette
in red, the target in green, the box in blue), ``pose_search_errors.png`` (final loss vs
rotation error of every start) and ``pose_search_loss.png`` (loss of the best start and the
median start per iteration) into ``--output-dir``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
    CAMERA_DISTANCE,
    axes,
    box,
    load_mesh,
    parser,
    quaternion_to_matrix,
    rotation_angle,
    save_figure,
    to_uint8,
    write_curves,
    write_gif,
)
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import nmr_jax as nr

STARTS, TARGETS, ITERATIONS = 256, 4, 150
# Small images: 256 starts render 256 silhouettes per step, and 64 pixels resolve 2 % in depth.
IMAGE_SIZE = 64
# The box: in front of the teapot (which spans about [-1, 1]^3), covering its lower left part.
BOX_CENTER, BOX_HALF_SIZE = (-0.55, -0.45, -1.4), (0.3, 0.35, 0.1)
# Adam on the quaternion (4 numbers, unit-normalised inside) and translation (3) alike: a step of
# 0.03 turns the teapot by about 3 degrees, so 150 steps can cross the whole rotation group.
LEARNING_RATE = 0.03
# The true translations: within this box, small against the camera distance so the teapot stays
# in view; starts begin at the origin, where the teapot is centred.
TRUE_TRANSLATION_RANGE = 0.15
# What counts as found: the bounds, 5 degrees and 2 % of the camera distance.
MAX_ROTATION_ERROR, MAX_TRANSLATION_ERROR = 5.0, 0.02 * CAMERA_DISTANCE
# One GIF frame per this many iterations.
FRAME_EVERY = 3
# Levels of the loss's image pyramid (see run): 64 pixels down to 8.
PYRAMID_LEVELS = 4
# Steps timed (after one for compilation) for the time per iteration.
TIMED_STEPS = 5


def pool(image: jax.Array) -> jax.Array:
    """Half the resolution: the mean of each 2 x 2 block (a trailing odd row or column dropped)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def random_quaternions(key: jax.Array, n: int) -> jax.Array:
    """float32 ``[n, 4]``: rotations uniform over SO(3) (normal 4-vectors, normalised)."""
    q = jax.random.normal(key, (n, 4))
    return q / jnp.linalg.norm(q, axis=-1, keepdims=True)


def run(
    starts: int = STARTS,
    targets: int = TARGETS,
    iterations: int = ITERATIONS,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    output_dir: Path | None = None,
    progress: bool = True,
    time_steps: bool = True,
) -> dict[str, float]:
    """Searches each target's pose from ``starts`` random ones.

    Args:
      starts: random starting poses per target (a multiple of the local device count).
      targets: random true poses to search.
      iterations: Adam steps.
      image_size: width and height of the silhouettes in pixels.
      seed: seed of the true poses and the starts.
      output_dir: where to write the GIF and plots; None writes nothing.
      progress: whether to show a progress bar.
      time_steps: whether to time a step for 1 and for ``starts`` starts.

    Returns:
      ``single_success`` (fraction of all starts of all targets that succeed),
      ``best_success`` (fraction of targets whose lowest-loss start succeeds), and with
      ``time_steps`` ``seconds_per_step_1`` and ``seconds_per_step_n`` (wall time of a step for 1
      start and for ``starts``) and ``cpu_seconds_per_step_1`` and ``_n`` (their CPU time).
    """
    vertices, faces = load_mesh(None)
    # Silhouettes only: without textures the reversed faces of fill_back would draw nothing new.
    renderer = nr.Renderer(image_size=image_size, fill_back=False)
    box_alpha = renderer.render_silhouettes(*box(BOX_CENTER, BOX_HALF_SIZE))

    def teapot(pose: jax.Array) -> jax.Array:
        """The teapot's own silhouette at ``pose`` (quaternion, translation)."""
        posed = vertices @ quaternion_to_matrix(pose[:4]).T + pose[4:]
        return renderer.render_silhouettes(posed, faces)

    def silhouette(pose: jax.Array) -> jax.Array:
        """What the camera sees: the teapot at ``pose``, where the box does not hide it."""
        return 1 - (1 - teapot(pose)) * (1 - box_alpha)

    def loss_fn(pose: jax.Array, target: jax.Array) -> jax.Array:
        """Squared error of the silhouettes, summed over a pyramid of them (each level halves the
        resolution, its pixels weighted by their area): the coarse levels see a shape that is
        far off overlap the target's, which widens each basin of the loss."""
        a, b, total = silhouette(pose), target, 0.0
        for level in range(PYRAMID_LEVELS):
            total = total + 4**level * jnp.sum((a - b) ** 2)
            a, b = pool(a), pool(b)
        return total

    # Decayed to a twentieth by the end: large steps to cross between basins, small ones to settle.
    optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, iterations, alpha=0.05))

    @jax.jit
    def step(
        poses: jax.Array, opt_state: optax.OptState, target: jax.Array
    ) -> tuple[jax.Array, optax.OptState, jax.Array]:
        """One Adam step of every start (Adam is elementwise, so the starts stay independent)."""
        losses, grads = jax.vmap(jax.value_and_grad(loss_fn), (0, None))(poses, target)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(poses, updates), opt_state, losses

    evaluate = jax.jit(jax.vmap(loss_fn, (0, None)))
    devices = jax.local_devices()
    if starts % len(devices):
        raise ValueError(
            f"starts ({starts}) must be a multiple of the {len(devices)} local devices"
        )
    # A plain Mesh: its axis is automatic, so XLA shards everything from the starts' sharding.
    sharding = NamedSharding(Mesh(np.array(devices), ("starts",)), P("starts"))

    successes, best_successes = [], []
    best_losses, median_losses = [], []
    frames: list[np.ndarray] = []
    final_losses, rotation_errors = np.zeros(0), np.zeros(0)
    for k in range(targets):
        # A key per target: the first targets are the same whatever the number of them.
        key_q, key_t, key_starts = jax.random.split(jax.random.fold_in(jax.random.key(seed), k), 3)
        true_q = random_quaternions(key_q, 1)[0]
        r = TRUE_TRANSLATION_RANGE
        true_t = jax.random.uniform(key_t, (3,), minval=-r, maxval=r)
        target = silhouette(jnp.concatenate([true_q, true_t]))
        poses = jnp.concatenate(
            [random_quaternions(key_starts, starts), jnp.zeros((starts, 3))], -1
        )
        poses = jax.device_put(poses, sharding)
        opt_state = optimizer.init(poses)
        history, snapshots = [], []
        bar = tqdm(range(iterations), desc=f"target {k + 1}/{targets}", disable=not progress)
        for i in bar:
            if k == 0 and i % FRAME_EVERY == 0:
                snapshots.append(np.asarray(poses))
            poses, opt_state, losses = step(poses, opt_state, target)
            history.append(np.asarray(losses))
            bar.set_postfix(best=f"{history[-1].min():.1f}")
        final = np.asarray(evaluate(poses, target))
        q, t = np.asarray(poses[:, :4]), np.asarray(poses[:, 4:])
        rot_err = rotation_angle(q, true_q)
        trans_err = np.linalg.norm(t - np.asarray(true_t), axis=-1)
        ok = (rot_err < MAX_ROTATION_ERROR) & (trans_err < MAX_TRANSLATION_ERROR)
        best = int(np.argmin(final))
        successes.append(ok.mean())
        best_successes.append(bool(ok[best]))
        print(
            f"target {k + 1}: {ok.sum()} of {starts} starts succeed; the best start "
            f"(loss {final[best]:.2f}) is {rot_err[best]:.2f} degrees and "
            f"{trans_err[best]:.4f} away: {'success' if ok[best] else 'failure'}"
        )
        if k == 0:
            history.append(final)
            best_losses = [h[best] for h in history]
            median_losses = [np.median(h) for h in history]
            final_losses, rotation_errors = final, rot_err
            # The best start's way: its teapot red where the box does not hide it, the target
            # green, the box blue.
            box_np, visible = (
                np.asarray(box_alpha),
                np.asarray(target) * (1 - np.asarray(box_alpha)),
            )
            frames = [
                to_uint8(
                    np.stack(
                        [np.asarray(teapot(jnp.asarray(pose))) * (1 - box_np), visible, box_np], -1
                    )
                )
                for pose in [*(s[best] for s in snapshots), np.asarray(poses[best])]
            ]

    metrics = {
        "single_success": float(np.mean(successes)),
        "best_success": float(np.mean(best_successes)),
    }
    if time_steps:
        for n, batch in (("1", poses[:1]), ("n", poses)):
            wall, cpu = time_step(step, optimizer, batch, target)
            metrics[f"seconds_per_step_{n}"], metrics[f"cpu_seconds_per_step_{n}"] = wall, cpu

    if output_dir is not None:
        write_gif(output_dir / "pose_search.gif", frames)
        write_errors_plot(output_dir / "pose_search_errors.png", rotation_errors, final_losses)
        write_curves(
            output_dir / "pose_search_loss.png",
            {"best start": best_losses, "median start": median_losses},
        )
    return metrics


def time_step(
    step: Callable[..., tuple[jax.Array, optax.OptState, jax.Array]],
    optimizer: optax.GradientTransformation,
    poses: jax.Array,
    target: jax.Array,
) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``step`` for these poses, after two calls that compile it
    (the second for the optimiser state that ``step`` returns, which is committed to a device
    where ``init``'s is not). The CPU time is that of all this process's threads: on a machine
    shared with other work it is the steadier measure."""
    opt_state = optimizer.init(poses)
    for _ in range(2):
        poses, opt_state, losses = step(poses, opt_state, target)
    jax.block_until_ready(losses)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(TIMED_STEPS):
        poses, opt_state, losses = step(poses, opt_state, target)
    jax.block_until_ready(losses)
    return (
        (time.perf_counter() - wall) / TIMED_STEPS,
        (time.process_time() - cpu) / TIMED_STEPS,
    )


def write_errors_plot(path: Path, rotation_errors: np.ndarray, losses: np.ndarray) -> None:
    """Scatter plot of each start's final loss against its rotation error."""
    fig, ax = axes()
    ax.scatter(rotation_errors, losses, s=8)
    ax.axvline(MAX_ROTATION_ERROR, color="grey", lw=0.8, ls="--", label="success bound")
    ax.set(xlabel="rotation error (degrees)", ylabel="final loss", xscale="log", yscale="log")
    ax.legend()
    save_figure(path, fig)


def main() -> None:
    """Command line entry point."""
    p = parser(
        __doc__.splitlines()[0], iterations=ITERATIONS, seed=True, mesh=False, image_size=IMAGE_SIZE
    )
    p.add_argument("--starts", type=int, default=STARTS)
    p.add_argument("--targets", type=int, default=TARGETS)
    args = p.parse_args()
    m = run(args.starts, args.targets, args.iterations, args.image_size, args.seed, args.output_dir)
    print(
        f"success rate of a single start: {m['single_success']:.3f}; "
        f"of the best of {args.starts}: {m['best_success']:.3f}"
    )
    print(
        f"time per step: {m['seconds_per_step_1'] * 1e3:.1f} ms for 1 start, "
        f"{m['seconds_per_step_n'] * 1e3:.1f} ms for {args.starts} on {jax.local_device_count()} "
        f"device{'s' if jax.local_device_count() > 1 else ''} (CPU time "
        f"{m['cpu_seconds_per_step_1'] * 1e3:.1f} ms and {m['cpu_seconds_per_step_n'] * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    main()
