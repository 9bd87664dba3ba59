"""Camera pose inside a room: where a camera stands and where it looks, from one image of the room.

    python examples/room_pose.py [--iterations 300] [--image-size 128]

A closed room 4 x 2.4 x 5 units, its walls, floor and ceiling tiled with squares of random colours,
is seen from inside by an OpenCV camera ('projection' mode, 40-degree half angle). From the
target image alone, the camera's position and rotation (a quaternion) are recovered by Adam on the
images' squared error, starting 0.44 units and 20 degrees away. Every view has faces behind the
camera, which the Renderer clips at its near plane. Writes ``room_pose.gif`` (the current view,
the target and their difference), ``room_pose_loss.png`` and ``room_pose_clipping.png`` (the target
view with its faces projected whole, as the original draws them, beside the clipped one) into
``--output-dir``, and prints the final position and rotation errors.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
    parser,
    quaternion_to_matrix,
    rotation_angle,
    to_uint8,
    write_curves,
    write_gif,
    write_png,
)
from tqdm import tqdm

import nmr_jax as nr

HALF = (2.0, 1.2, 2.5)  # the room's half sizes: x across, y up, z along
TILES = 4  # squares along each side of each wall
HALF_ANGLE = 40.0  # the camera's half field of view, degrees
# The true pose: right of centre, looking along +z, turned a little left and down.
TRUE_EYE = (0.6, -0.2, -0.8)
TRUE_QUATERNION = (0.985, 0.08, -0.15, 0.02)  # (w, x, y, z), normalised when used
# The start: 0.44 units and 20 degrees away.
START_EYE = (0.3, 0.05, -0.6)
START_QUATERNION = (0.995, 0.0, 0.0, 0.0)
# Adam's step; a short momentum, as in example 4, keeps the pose from overshooting.
LEARNING_RATE, ADAM_B1 = 0.01, 0.5
ITERATIONS = 300
FRAME_EVERY = 5


def tiled_room(half=HALF, tiles: int = TILES, seed: int = 0):
    """(vertices [V, 3], faces [F, 3], textures [F, 1, 1, 1, 3]): the six sides of a box, each
    a grid of ``tiles`` x ``tiles`` squares (two faces) of one random colour. Neighbouring sides
    repeat their shared edge's vertices exactly, so the room is closed."""
    vertices, faces = [], []
    grid = [np.linspace(-h, h, tiles + 1, dtype=np.float32) for h in half]
    for axis in range(3):
        u_axis, v_axis = [a for a in range(3) if a != axis]
        for side in (-1.0, 1.0):
            base = len(vertices)
            for j in range(tiles + 1):
                for i in range(tiles + 1):
                    p = np.zeros(3, np.float32)
                    p[axis], p[u_axis], p[v_axis] = (
                        side * half[axis],
                        grid[u_axis][i],
                        grid[v_axis][j],
                    )
                    vertices.append(p)
            for j in range(tiles):
                for i in range(tiles):
                    a = base + j * (tiles + 1) + i
                    b, c, d = a + 1, a + tiles + 2, a + tiles + 1
                    faces += [(a, b, c), (a, c, d)]
    colours = np.random.default_rng(seed).uniform(0.15, 1.0, (len(faces) // 2, 3))
    textures = np.repeat(colours, 2, axis=0)[:, None, None, None, :]
    return (
        jnp.asarray(np.stack(vertices)),
        jnp.asarray(faces, jnp.int32),
        jnp.asarray(textures, jnp.float32),
    )


def camera(image_size: int) -> nr.Renderer:
    """An OpenCV camera of ``HALF_ANGLE`` whose pose is given per call (R, t)."""
    f = image_size / 2 / np.tan(np.radians(HALF_ANGLE))
    c = image_size / 2
    K = np.array([[f, 0, c], [0, f, c], [0, 0, 1]], np.float32)
    return nr.Renderer(
        image_size=image_size,
        camera_mode="projection",
        K=K,
        R=np.eye(3, dtype=np.float32),
        t=np.zeros(3, np.float32),
        orig_size=image_size,
        light_intensity_ambient=0.7,
        light_intensity_directional=0.3,
    )


def pose_to_extrinsics(eye: jax.Array, quaternion: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World-to-camera R and t of a camera at ``eye`` whose axes are the rotated world axes (so
    the identity quaternion looks along +z with world y up in the image)."""
    flip = jnp.diag(jnp.asarray([-1.0, -1.0, 1.0]))  # image y down, x right: turned about z
    R = flip @ quaternion_to_matrix(quaternion).T
    return R, -R @ eye


@jax.jit
def unclipped_beside_clipped(renderer: nr.Renderer, pose: tuple[jax.Array, jax.Array]) -> jax.Array:
    """rgb [H, 2W, 3]: the view with the room's faces projected whole and rasterized (what a
    renderer without clipping draws: holes, and faces behind the camera folded into view), and
    the Renderer's clipped view."""
    vertices, faces, textures = tiled_room()
    R, t = pose_to_extrinsics(*pose)
    both = jnp.concatenate([faces, faces[:, ::-1]])
    lit = nr.lighting(
        nr.vertices_to_faces(vertices, both),
        jnp.concatenate([textures, textures]),
        renderer.light_intensity_ambient,
        renderer.light_intensity_directional,
    )
    projected = nr.vertices_to_faces(renderer.transform(vertices, R=R, t=t), both)
    unclipped = nr.rasterize(projected, lit, renderer.image_size, eps=renderer.rasterizer_eps)
    clipped = renderer.render(vertices, faces, textures, R=R, t=t)[0]
    return jnp.concatenate([unclipped, clipped], axis=1)


def run(
    iterations: int = ITERATIONS,
    image_size: int = 128,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, float | np.ndarray]:
    """Recovers the camera pose from the target image.

    Returns:
      ``position_error`` and ``rotation_error`` (units, degrees) at the start (``..._start``)
      and the end, ``loss_start`` and ``loss_end`` (sum of squared rgb differences) and
      ``coverage`` (the smallest fraction of pixels drawn in any view: 1 for a closed room).
    """
    vertices, faces, textures = tiled_room()
    renderer = camera(image_size)

    @jax.jit
    def render(pose: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        R, t = pose_to_extrinsics(*pose)
        rgb, _, alpha = renderer.render(vertices, faces, textures, R=R, t=t)
        return rgb, alpha

    true_pose = (jnp.asarray(TRUE_EYE), jnp.asarray(TRUE_QUATERNION))
    target, target_alpha = render(true_pose)
    optimizer = optax.adam(LEARNING_RATE, b1=ADAM_B1)

    @jax.jit
    def step(pose, state):
        def loss_fn(pose):
            rgb, alpha = render(pose)
            return jnp.sum((rgb - target) ** 2), (rgb, alpha)

        (loss, (rgb, alpha)), grads = jax.value_and_grad(loss_fn, has_aux=True)(pose)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(pose, updates), state, loss, rgb, jnp.mean(alpha)

    pose = (jnp.asarray(START_EYE), jnp.asarray(START_QUATERNION))
    state = optimizer.init(pose)
    losses: list[float] = []
    coverage = [float(jnp.mean(target_alpha))]
    frames: list[np.ndarray] = []
    for i in tqdm(range(iterations + 1), desc="room_pose", disable=not progress):
        new_pose, new_state, loss, rgb, covered = step(pose, state)
        losses.append(float(loss))
        coverage.append(float(covered))
        if output_dir is not None and (i % FRAME_EVERY == 0 or i == iterations):
            difference = jnp.abs(rgb - target)
            frames.append(to_uint8(jnp.concatenate([rgb, target, difference], axis=1)))
        if i < iterations:  # the last call only scores the final pose
            pose, state = new_pose, new_state

    if output_dir is not None:
        write_png(
            output_dir / "room_pose_clipping.png", unclipped_beside_clipped(renderer, true_pose)
        )
        write_gif(output_dir / "room_pose.gif", frames)
        write_curves(output_dir / "room_pose_loss.png", {"loss": losses})

    def errors(pose) -> tuple[float, float]:
        eye, q = (np.asarray(x, np.float64) for x in pose)
        return float(np.linalg.norm(eye - TRUE_EYE)), float(rotation_angle(q, TRUE_QUATERNION))

    (p0, r0), (p1, r1) = errors((START_EYE, START_QUATERNION)), errors(pose)
    return {
        "position_error_start": p0,
        "rotation_error_start": r0,
        "position_error": p1,
        "rotation_error": r1,
        "loss_start": losses[0],
        "loss_end": losses[-1],
        "coverage": min(coverage),
        "eye": np.asarray(pose[0], np.float64),
    }


def main() -> None:
    """Command line entry point."""
    args = parser(
        __doc__.splitlines()[0], iterations=ITERATIONS, mesh=False, image_size=128
    ).parse_args()
    m = run(args.iterations, args.image_size, args.output_dir)
    print(
        f"position error {m['position_error_start']:.3f} -> {m['position_error']:.4f} units, "
        f"rotation error {m['rotation_error_start']:.2f} -> {m['rotation_error']:.3f} degrees, "
        f"loss {m['loss_start']:.1f} -> {m['loss_end']:.3f}, "
        f"smallest coverage {m['coverage']:.3f}"
    )


if __name__ == "__main__":
    main()
