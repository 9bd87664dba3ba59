"""Soft silhouettes: forward+backward time against Kato's silhouette and a brute-force reference.

For the teapot (2,256 faces) and the icosphere (5,120 faces) at 256^2 (no anti-aliasing), a loss
sum((alpha - 0.5)^2) and its gradient w.r.t. the vertices, jit-compiled: Kato's silhouette
(``rasterize_silhouettes``), ``soft_silhouettes`` (logistic, probabilistic) at sigma 1e-4 and
1e-5, and a brute-force jnp version of the same soft silhouette (every face at every pixel, in
chunks of faces under ``lax.scan`` with rematerialisation, autodiff for the backward), which is
also checked to give the same alpha. Kato and soft are timed in back-to-back pairs (the ratio
column is the median of the pairs' ratios); the brute force runs once. The last column, on the
icosphere's rows, is PyTorch3D's 18.4 s (its soft silhouette, K = 50, the icosphere at 256^2 on
a 2-core machine) over ours.

With ``--colours``, the same for the colours: a loss sum((rgb - 0.5)^2) of Kato's rgb
(``rasterize``) against ``soft_rgb`` (gamma 1e-4) of random 2^3 texture cubes, gradient w.r.t. the
vertices (no brute force).

Usage: ``python benchmarks/bench_soft.py [--size 256] [--repeats 10] [--no-brute] [--colours]
[--meshes ...]``.
"""

from __future__ import annotations

import argparse
import platform
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from bench_cpu import seconds, timed_pair  # benchmarks/ is the script's folder

import nmr_jax as nr

EYE = (0.0, 0.0, -2.732)
PYTORCH3D_SECONDS = 18.4  # soft silhouette, K = 50, icosphere(4) at 256^2 (the number)
THRESHOLD = 1e-4


def project(vertices: jax.Array, faces: np.ndarray) -> jax.Array:
    v = nr.perspective(nr.look_at(vertices, jnp.asarray(EYE, jnp.float32)), 30.0)
    return nr.vertices_to_faces(v, faces)


def brute_alpha(fv: jax.Array, sigma: float, size: int, chunk: int = 64) -> jax.Array:
    """The logistic-probabilistic soft silhouette, every face at every pixel (faces before the
    near plane are not handled: none are in this benchmark's views)."""
    n = size
    pad = (-fv.shape[0]) % chunk
    fv = jnp.concatenate([fv, jnp.zeros((pad, 3, 3), fv.dtype)]).reshape(-1, chunk, 3, 3)
    centres = (2 * jnp.arange(n, dtype=jnp.float32) + 1 - n) / n
    X = centres[None, :, None]
    Y = centres[:, None, None]

    @jax.checkpoint
    def step(log_q: jax.Array, f: jax.Array) -> tuple[jax.Array, None]:
        x, y = f[:, :, 0], f[:, :, 1]  # [chunk, 3] NDC
        d2, sides = [], []
        for k in range(3):
            ax, ay, bx, by = x[:, k], y[:, k], x[:, (k + 1) % 3], y[:, (k + 1) % 3]
            ex, ey = bx - ax, by - ay
            px, py = X - ax, Y - ay
            len2 = ex * ex + ey * ey
            t = jnp.clip((px * ex + py * ey) / jnp.where(len2 > 0, len2, 1.0), 0.0, 1.0)
            d2.append((px - t * ex) ** 2 + (py - t * ey) ** 2)
            sides.append(ex * py - ey * px >= 0)
        area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
        dist = jnp.minimum(jnp.minimum(d2[0], d2[1]), d2[2])
        dist = jnp.where(sides[0] & sides[1] & sides[2], -dist, dist) / sigma
        keep = (area > 0) & (jax.nn.sigmoid(-dist) > THRESHOLD)
        return log_q + jnp.sum(jnp.where(keep, jax.nn.log_sigmoid(dist), 0.0), axis=-1), None

    log_q, _ = jax.lax.scan(step, jnp.zeros((n, n, chunk), jnp.float32)[..., 0], fv)
    return jnp.flip(1.0 - jnp.exp(log_q), axis=0)


def losses(faces: np.ndarray, size: int, sigma: float):
    def loss(alpha_fn):
        return jax.jit(
            jax.value_and_grad(lambda v: jnp.sum((alpha_fn(project(v, faces)) - 0.5) ** 2))
        )

    kato = loss(partial(nr.rasterize_silhouettes, image_size=size, anti_aliasing=False))
    soft = loss(partial(nr.soft_silhouettes, image_size=size, sigma=sigma, threshold=THRESHOLD))
    brute = loss(partial(brute_alpha, sigma=sigma, size=size))
    return kato, soft, brute


def colour_losses(faces: np.ndarray, size: int, sigma: float):
    """Kato's rgb and the soft colours' losses (as ``losses``) of random texture cubes."""
    tex = jnp.asarray(np.random.default_rng(0).uniform(size=(len(faces), 2, 2, 2, 3)), jnp.float32)

    def loss(rgb_fn):
        return jax.jit(
            jax.value_and_grad(lambda v: jnp.sum((rgb_fn(project(v, faces)) - 0.5) ** 2))
        )

    kato = loss(lambda fv: nr.rasterize(fv, tex, size, anti_aliasing=False))
    soft = loss(lambda fv: nr.soft_rgb(fv, tex, size, sigma, 1e-4, threshold=THRESHOLD))
    return kato, soft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10, help="timed pairs per entry")
    parser.add_argument("--no-brute", action="store_true", help="skip the brute-force reference")
    parser.add_argument("--colours", action="store_true", help="Kato's rgb against soft_rgb")
    parser.add_argument("--meshes", nargs="+", default=["teapot", "icosphere"],
                        choices=["teapot", "icosphere"])  # fmt: skip
    args = parser.parse_args()
    what = "colours (rgb)" if args.colours else "silhouettes"
    print(f"# {what}, {platform.machine()}, jax {jax.__version__}, {args.size}^2, median of "
          f"{args.repeats} pairs, ms (forward+backward)", flush=True)  # fmt: skip
    print("| mesh | faces | sigma | Kato | soft | soft / Kato | brute force | brute / soft "
          "| PyTorch3D 18.4 s / soft |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    meshes = {"teapot": nr.data.teapot, "icosphere": lambda: nr.data.icosphere(4)}
    for name in args.meshes:
        vertices, faces = meshes[name]()
        v = jnp.asarray(vertices)
        faces = np.asarray(faces)
        for i, sigma in enumerate((1e-4, 1e-5)):
            if args.colours:
                kato, soft = colour_losses(faces, args.size, sigma)
            else:
                kato, soft, brute = losses(faces, args.size, sigma)
            t_kato, t_soft, ratio = timed_pair(kato, soft, v, args.repeats)
            brute_cell = ratio_cell = "-"
            # The brute force's cost does not depend on sigma.
            if not args.no_brute and not args.colours and i == 0:
                fv = project(v, faces)
                ours = nr.soft_silhouettes(fv, args.size, sigma, threshold=THRESHOLD)
                diff = float(jnp.max(jnp.abs(brute_alpha(fv, sigma, args.size) - ours)))
                assert diff < 1e-4, f"the brute force and soft_silhouettes differ by {diff}"
                jax.block_until_ready(brute(v))  # compiles
                t_brute = seconds(brute, v)
                brute_cell, ratio_cell = f"{t_brute * 1e3:.0f}", f"{t_brute / t_soft:.0f}"
            p3d = f"{PYTORCH3D_SECONDS / t_soft:.0f}" if name == "icosphere" else "-"
            print(f"| {name} | {len(faces)} | {sigma:g} | {t_kato * 1e3:.1f} | {t_soft * 1e3:.1f} "
                  f"| {ratio:.1f} | {brute_cell} | {ratio_cell} | {p3d} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
