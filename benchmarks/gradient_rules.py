"""GenDR's camera-pose protocol (Petersen et al. 2022): which gradient rule recovers a pose.

Each problem: the teapot seen from a ground-truth camera at distance U(2.5, 4), elevation and
azimuth ~ N(0, 60 degrees), viewing angle 20 degrees, rendered as a 64^2 silhouette. The mesh is
rotated into that camera's frame; the optimiser starts from the ground-truth rotation composed
with a random rotation (uniform axis) whose angle falls in one of the bins 15-35, 35-55 and 55-75
degrees (problems dealt to the bins in turn), at a distance U(2, 10) and a viewing angle
U(10, 30) degrees. It optimises a quaternion, the distance and the viewing angle with Adam (lr
0.3, betas 0.5 and 0.99) on the IoU loss summed over the batch of problems, for 1000 steps, sigma
annealed log-linearly from 1e-1 to 1e-7 (a traced value inside one ``lax.scan``: one compilation
per rule). A problem succeeds when the remaining rotation is under 5 degrees. Rules: Kato's and
every distribution x aggregation of ``nmr_jax.soft_silhouettes``; both windings of every face are
drawn (the Renderer's fill_back).

Usage: ``python benchmarks/gradient_rules.py [--problems 200] [--steps 1000] [--rules ...]``
(the defaults are the published protocol; --problems 6 --steps 50 is a smoke run). With
``--estimate`` it times one step of the batch at each decade of sigma instead and prints what the
run would take. It runs on jax's default device (a GPU where jax has one).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import nmr_jax as nr

SIZE = 64
BINS = ((15.0, 35.0), (35.0, 55.0), (55.0, 75.0))
SUCCESS_DEGREES = 5.0
SIGMA_START, SIGMA_END = 1e-1, 1e-7
LR, BETA1, BETA2, ADAM_EPS = 0.3, 0.5, 0.99, 1e-8
RULES = ["kato"] + [f"{d}-{a}" for d in nr.soft.DISTRIBUTIONS for a in nr.soft.AGGREGATIONS]


def quat_to_matrix(q: jax.Array) -> jax.Array:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (w, x, y, z), normalised first."""
    w, x, y, z = jnp.moveaxis(q / jnp.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return jnp.stack([
        jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw],
                    -1)  # fmt: skip


def axis_angle(axis: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    half = np.radians(degrees)[..., None] / 2
    return np.concatenate([np.cos(half), np.sin(half) * axis], -1)


def problems(n: int, seed: int) -> dict[str, np.ndarray]:
    """Ground truths and starting points of n problems."""
    rng = np.random.default_rng(seed)
    elevation = np.radians(rng.normal(0.0, 60.0, n))
    azimuth = np.radians(rng.normal(0.0, 60.0, n))
    # The mesh rotated into the camera's frame: azimuth about y, then elevation about x.
    q_az = axis_angle(np.tile([0.0, 1.0, 0.0], (n, 1)), np.degrees(azimuth))
    q_el = axis_angle(np.tile([1.0, 0.0, 0.0], (n, 1)), np.degrees(elevation))
    q_true = quat_mul(q_el, q_az)
    lo, hi = np.array(BINS)[np.arange(n) % len(BINS)].T
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    q_start = quat_mul(axis_angle(axis, rng.uniform(lo, hi)), q_true)
    return {
        "q_true": q_true, "d_true": rng.uniform(2.5, 4.0, n), "angle_true": np.full(n, 20.0),
        "q": q_start, "d": rng.uniform(2.0, 10.0, n), "angle": rng.uniform(10.0, 30.0, n),
        "bin": np.arange(n) % len(BINS),
    }  # fmt: skip


def faces_of(vertices: jax.Array, faces: np.ndarray, q, d, angle) -> jax.Array:
    """Projected faces [N, 2F, 3, 3] (each face and its reversed copy) of the rotated mesh."""
    v = jnp.einsum("nij,vj->nvi", quat_to_matrix(q), vertices)
    v = v + jnp.stack([jnp.zeros_like(d), jnp.zeros_like(d), d], -1)[:, None, :]
    v = nr.perspective(v, angle)
    both = np.concatenate([faces, faces[:, ::-1]])
    return nr.vertices_to_faces(v, both)


def silhouettes(rule: str, fv: jax.Array, sigma: jax.Array) -> jax.Array:
    if rule == "kato":
        return nr.rasterize_silhouettes(fv, SIZE, anti_aliasing=False)
    distribution, aggregation = rule.split("-")
    return nr.soft_silhouettes(fv, SIZE, sigma, distribution, aggregation)


def iou_loss(alpha: jax.Array, target: jax.Array) -> jax.Array:
    inter = jnp.sum(alpha * target, axis=(-2, -1))
    union = jnp.sum(alpha + target - alpha * target, axis=(-2, -1))
    return jnp.sum(1.0 - inter / jnp.maximum(union, 1e-6))


def rotation_error_degrees(q: np.ndarray, q_true: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    dot = np.abs(np.sum(q * q_true, -1)).clip(0.0, 1.0)
    return np.degrees(2 * np.arccos(dot))


def adam_step(rule: str, vertices, faces, target: jax.Array):
    """One optimiser step ``(params, m, v), (sigma, t) -> (params, m, v)`` of all problems."""

    def loss(params, sigma):
        return iou_loss(silhouettes(rule, faces_of(vertices, faces, *params), sigma), target)

    def step(state, inputs):
        params, m, v = state
        sigma, t = inputs
        g = jax.grad(loss)(params, sigma)
        m = jax.tree.map(lambda m, g: BETA1 * m + (1 - BETA1) * g, m, g)
        v = jax.tree.map(lambda v, g: BETA2 * v + (1 - BETA2) * g * g, v, g)
        params = jax.tree.map(
            lambda x, m, v: x - LR * (m / (1 - BETA1**t)) / (jnp.sqrt(v / (1 - BETA2**t)) + ADAM_EPS),
            params, m, v,
        )  # fmt: skip
        return params, m, v

    return step


def start(vertices, faces, p: dict[str, np.ndarray]):
    """The ground-truth silhouettes and the optimiser's initial state."""
    target = silhouettes("kato", faces_of(vertices, faces, p["q_true"], p["d_true"], p["angle_true"]),
                         jnp.float32(SIGMA_END))  # fmt: skip
    params = tuple(jnp.asarray(p[k], jnp.float32) for k in ("q", "d", "angle"))
    zeros = jax.tree.map(jnp.zeros_like, params)
    return target, (params, zeros, zeros)


def solve(rule: str, vertices, faces, p: dict[str, np.ndarray], steps: int) -> np.ndarray:
    """Final rotation errors (degrees) of all problems under one rule."""
    target, state = start(vertices, faces, p)
    step = adam_step(rule, vertices, faces, target)
    sigmas = jnp.asarray(np.geomspace(SIGMA_START, SIGMA_END, steps), jnp.float32)
    scan = lambda state: jax.lax.scan(  # noqa: E731
        lambda s, x: (step(s, x), None), state, (sigmas, jnp.arange(1.0, steps + 1.0))
    )[0]
    q = np.asarray(jax.jit(scan)(state)[0][0])
    return rotation_error_degrees(q, p["q_true"])


def step_seconds(rule: str, vertices, faces, p: dict[str, np.ndarray], sigmas) -> np.ndarray:
    """Wall and CPU seconds ``[len(sigmas), 2]`` of one step of all problems at each sigma:
    compiled once (at the cheapest sigma), then one call each (a step at sigma 1e-1 takes
    minutes on a CPU). CPU time is the process's, all threads: on a shared machine the wall time
    grows with the load, the CPU time much less."""
    target, state = start(vertices, faces, p)
    step = jax.jit(adam_step(rule, vertices, faces, target))
    jax.block_until_ready(step(state, (jnp.float32(SIGMA_END), jnp.float32(1.0))))
    times = []
    for sigma in sigmas:
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(step(state, (jnp.float32(sigma), jnp.float32(1.0))))
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return np.array(times)


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def estimate(rules: list[str], vertices, faces, p: dict[str, np.ndarray], steps: int) -> None:
    """Prints one step's CPU time per rule at each decade of sigma, and the run it adds up to.

    The schedule spends equal numbers of steps in each decade, so the run takes ``steps`` times
    the mean step time over log sigma (the trapezoid rule between the decades measured).
    """
    decades = np.geomspace(SIGMA_START, SIGMA_END, round(np.log10(SIGMA_START / SIGMA_END)) + 1)
    print(f"| rule | {' | '.join(f'{s:.0e}' for s in decades)} | {steps} steps, CPU time "
          f"| {steps} steps, wall |")  # fmt: skip
    print("|---|" + "---|" * (len(decades) + 2))
    for rule in rules:
        # Kato's rule ignores sigma: one time for every decade.
        times = step_seconds(rule, vertices, faces, p, decades[:1] if rule == "kato" else decades)
        times = np.repeat(times, len(decades), 0) if rule == "kato" else times
        mean = (times.sum(0) - (times[0] + times[-1]) / 2) / (len(times) - 1)  # (wall, cpu)
        cells = " | ".join(f"{t:.2f}" for t in times[:, 1])
        print(f"| {rule} | {cells} | {duration(steps * mean[1])} | {duration(steps * mean[0])} |",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rules", nargs="+", default=RULES, choices=RULES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="time one step at each decade of sigma instead, and estimate the run from them",
    )
    args = parser.parse_args()
    vertices, faces = nr.data.teapot()
    faces = np.asarray(faces)
    p = problems(args.problems, args.seed)
    device = f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
    if args.estimate:
        print(f"# {device}: CPU seconds of one step of {args.problems} problems (teapot at "
              f"{SIZE}^2) at each sigma, and the estimated run of {args.steps} steps")  # fmt: skip
        estimate(args.rules, vertices, faces, p, args.steps)
        return
    print(f"# {device}: {args.problems} problems, {args.steps} steps, teapot at {SIZE}^2; "
          f"success: rotation error < {SUCCESS_DEGREES:g} degrees")  # fmt: skip
    header = " | ".join(f"{lo:g}-{hi:g} deg" for lo, hi in BINS)
    print(f"| rule | {header} | all | median error (deg) | seconds |")
    print("|---|" + "---|" * (len(BINS) + 3))
    for rule in args.rules:
        t0 = time.perf_counter()
        err = solve(rule, vertices, faces, p, args.steps)
        ok = err < SUCCESS_DEGREES
        cells = " | ".join(f"{ok[p['bin'] == b].mean():.0%}" for b in range(len(BINS)))
        print(f"| {rule} | {cells} | {ok.mean():.0%} | {np.median(err):.1f} "
              f"| {time.perf_counter() - t0:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
