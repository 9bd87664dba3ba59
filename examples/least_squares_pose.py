"""Pose and focal length by least squares: Levenberg-Marquardt (forward mode) against Adam.

    python examples/least_squares_pose.py [--image-size 64] [--starts 8] [--iterations 300]

The teapot is turned and moved by a 6-DoF pose (a rotation vector and a translation) and seen by
a camera of unknown field of view. From a target soft silhouette and depth map, the 7 parameters
are recovered from ``--starts`` random starts (up to 15 degrees, 0.15 units and 4 degrees of
field of view away) by ``optimistix.LevenbergMarquardt`` on the residuals (the silhouettes'
difference and, where both views cover a pixel, the depths'), whose Jacobian-vector products are
forward mode through the soft rasterizer and the depth map; and by Adam on the sum of squared
residuals, from the same starts. At the solution, ``jax.jacfwd`` gives the 7 x 7 Gauss-Newton
matrix ``J^T J`` (7 forward passes) and its inverse, a covariance estimate of the parameters.
Prints, per method, the starts that converge, the median iterations and the wall time.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from _common import parser

import nmr_jax as nr

# The true parameters: rotation vector (radians), translation, field of view (degrees).
TRUE = np.array([0.2, -0.3, 0.1, 0.05, -0.05, 0.1, 30.0], np.float32)
# The starts' spread: rotation (radians), translation and field of view (degrees), uniform.
SPREAD = np.array([0.15, 0.15, 0.15, 0.1, 0.1, 0.1, 4.0], np.float32)
SIGMA = 3e-4  # the silhouettes' blur (squared NDC): a few pixels' halo at 64^2
DEPTH_WEIGHT = 1.0  # the depth residuals' weight against the silhouettes'
# Converged: within 0.5 degrees, 0.005 units and 0.1 degrees of field of view of the truth.
TOLERANCE = np.array([np.radians(0.5)] * 3 + [0.005] * 3 + [0.1], np.float32)
FAR = 100.0  # the Renderer's far plane: the depth of background pixels
LEARNING_RATE = 0.01  # Adam's step, the best of 0.003, 0.01 and 0.03 on this problem


def rotation(w: jax.Array) -> jax.Array:
    """Rodrigues' formula, smooth at 0 (the angle is kept away from 0 by a tiny epsilon)."""
    theta = jnp.sqrt(jnp.sum(w * w) + 1e-12)
    k = w / theta
    kx = jnp.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return jnp.eye(3) + jnp.sin(theta) * kx + (1.0 - jnp.cos(theta)) * (kx @ kx)


def render(params: jax.Array, vertices: jax.Array, faces: jax.Array, size: int):
    """(soft silhouette [S, S], depth [S, S]) of the posed mesh."""
    posed = vertices @ rotation(params[:3]).T + params[3:6]
    renderer = nr.Renderer(
        image_size=size,
        viewing_angle=params[6],
        eye=jnp.array([0.0, 0.0, -2.732]),
        rule=nr.SoftRule(sigma=SIGMA),
        handedness="right",
    )
    silhouette = renderer.render_silhouettes(posed, faces)
    hard = nr.Renderer(
        image_size=size,
        viewing_angle=params[6],
        eye=jnp.array([0.0, 0.0, -2.732]),
        anti_aliasing=False,
        handedness="right",
    )
    return silhouette, hard.render_depth(posed, faces)


def make_residuals(vertices, faces, target_sil, target_depth, size: int):
    """residuals(params, args) -> [2 S^2]: the silhouettes' difference and the depths' where both
    views cover a pixel (the coverages are data: the depth map's derivative holds the faces
    fixed). ``args`` is unused (optimistix's signature)."""

    def residuals(params, args=None):
        silhouette, depth = render(params, vertices, faces, size)
        both = (target_depth < FAR) & (depth < FAR)
        depth_residual = jnp.where(both, depth - target_depth, 0.0)
        return jnp.concatenate(
            [(silhouette - target_sil).ravel(), DEPTH_WEIGHT * depth_residual.ravel()]
        )

    return residuals


def gauss_newton(residuals, params: jax.Array) -> jax.Array:
    """J^T J [7, 7] at ``params``, J by ``jax.jacfwd`` (one forward pass per parameter)."""
    jac = jax.jit(jax.jacfwd(residuals))(params)
    return jac.T @ jac


def converged(params: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.asarray(params) - TRUE) <= TOLERANCE))


def run(
    image_size: int = 64, starts: int = 8, iterations: int = 300, seed: int = 0, mesh=None
) -> dict:
    vertices, faces = nr.data.teapot() if mesh is None else mesh
    target_sil, target_depth = render(jnp.asarray(TRUE), vertices, faces, image_size)
    residuals = make_residuals(vertices, faces, target_sil, target_depth, image_size)
    rng = np.random.default_rng(seed)
    inits = TRUE + rng.uniform(-1.0, 1.0, size=(starts, 7)).astype(np.float32) * SPREAD

    # Levenberg-Marquardt: forward-mode Jacobian-vector products (optimistix linearizes).
    solver = optx.LevenbergMarquardt(rtol=1e-6, atol=1e-6)

    @jax.jit
    def lm(y0):
        sol = optx.least_squares(residuals, solver, y0, max_steps=iterations, throw=False)
        return sol.value, sol.stats["num_steps"]

    # Adam on the sum of squares, from the same starts.
    opt = optax.adam(LEARNING_RATE)
    loss = lambda p: 0.5 * jnp.sum(residuals(p) ** 2)  # noqa: E731

    @jax.jit
    def adam(p0):
        def step(carry, _):
            p, state, done_at, i = carry
            g = jax.grad(loss)(p)
            updates, state = opt.update(g, state)
            p = optax.apply_updates(p, updates)
            ok = jnp.all(jnp.abs(p - TRUE) <= TOLERANCE)
            done_at = jnp.where((done_at < 0) & ok, i + 1, done_at)
            return (p, state, done_at, i + 1), None

        (p, _, done_at, _), _ = jax.lax.scan(
            step, (p0, opt.init(p0), jnp.int32(-1), jnp.int32(0)), None, length=iterations
        )
        return p, done_at

    out: dict = {}
    for name, method in (("lm", lm), ("adam", adam)):
        jax.block_until_ready(method(jnp.asarray(inits[0])))  # compile
        results, steps, start = [], [], time.perf_counter()
        for y0 in inits:
            value, n = jax.block_until_ready(method(jnp.asarray(y0)))
            results.append(converged(np.asarray(value)))
            steps.append(int(n))
        seconds = (time.perf_counter() - start) / starts
        ok_steps = [s for s, ok in zip(steps, results, strict=True) if ok and s >= 0]
        out[name] = {
            "success": float(np.mean(results)),
            "median_steps": float(np.median(ok_steps)) if ok_steps else float("nan"),
            "seconds_per_start": seconds,
        }

    # At the truth: J [N, 7] by 7 forward passes, J^T J and its inverse (the covariance of the
    # parameters for unit residual noise, to first order).
    out["jtj"] = np.asarray(gauss_newton(residuals, jnp.asarray(TRUE)))
    out["std"] = np.sqrt(np.diag(np.linalg.inv(out["jtj"])))
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0], iterations=300, seed=True, image_size=64)
    p.add_argument("--starts", type=int, default=8)
    a = p.parse_args()
    out = run(a.image_size, a.starts, a.iterations, a.seed)
    for name in ("lm", "adam"):
        r = out[name]
        print(
            f"{name:5s} converged {r['success']:.0%} of starts, median {r['median_steps']:.0f} "
            f"iterations, {r['seconds_per_start']:.2f} s per start"
        )
    print("standard deviations at unit noise (rot x3 rad, trans x3, fov deg):", out["std"])


if __name__ == "__main__":
    main()
