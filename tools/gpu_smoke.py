"""All 19 custom-call targets of nmr_jax once each on one device, at their edges: empty shapes
(F = 0, V = 0, batch 0), a batch-70 backward (two launch chunks), corrupt indices (the gather must
raise; the other targets must return NaN), and large faces (a 12-face cube filling 1024^2, hard
and in blurred layers).
Short on purpose: tools/gpu_check.sh runs it under compute-sanitizer's memcheck and initcheck,
where each kernel launch is slow. It prints one line per case and exits non-zero on a failure.

Usage: ``python tools/gpu_smoke.py [--device gpu|cpu]``; cpu runs the same CUDA code compiled
for the host (NMR_JAX_KERNELS=cuda-host), a check of the script itself, with the batch-70 images
at 16^2 and the cube at 256^2: the host runs a launch's threads one after another (under the
sanitizers in CI), and at those sizes the run reaches the same lines of cuda_ops.cu (CI's
sanitizer section prints their coverage).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import nmr_jax as nr
from nmr_jax import _ffi

NEAR, FAR = 0.1, 100.0


def random_faces(rng: np.random.Generator, batch: int, faces: int, size: int) -> np.ndarray:
    xy = rng.uniform(-1.1, 1.1, size=(batch, faces, 3, 2))
    z = rng.uniform(0.5, 5.0, size=(batch, faces, 3, 1))
    return np.concatenate([xy, z], -1).astype(np.float32)


def all_targets(fv, tex, image, faces, vertices, size: int):
    """Every target once: gather, scatter, rasterize, textures and their gradient, Kato, the
    fragments' gradient, interpolation and image sampling and their gradients, soft silhouettes
    (their gradients and tangents) and soft colours (their gradients and tangents)."""
    fi, wt, d = _ffi.rasterize(fv, size, size, NEAR, FAR)
    rgb = _ffi.sample_textures(fv, tex, fi, wt, d, 1e-3)
    g_tex = _ffi.sample_textures_bwd(fv, fi, wt, d, image[..., :3], 1e-3, tex.shape)
    g_kato = _ffi.kato_bwd(fv, fi, image, image, 1e-3)
    g_frags = _ffi.fragments_bwd(fv, fi, wt, d, wt, wt, d)
    gathered = _ffi.gather_faces(vertices, faces)
    scattered = _ffi.scatter_faces(faces, gathered, vertices.shape)
    corners = tex[:, :, 0, 0]  # [*b, F, 2, 3]: any per-corner values
    corners = jnp.concatenate([corners, corners[:, :, :1]], 2)  # [*b, F, 3, 3]
    interpolated = _ffi.interpolate(corners, fi, wt)
    g_corners, g_bary = _ffi.interpolate_bwd(corners, fi, wt, rgb)
    sampled = _ffi.sample_image(image, wt[..., :2] * 3.0 - 1.0, True, True)
    g_image, g_uv = _ffi.sample_image_bwd(image, wt[..., :2] * 3.0 - 1.0, sampled, True, True)
    layers = _ffi.rasterize_layers(fv, size, size, 4, NEAR, FAR, 0.01)
    dist = jnp.where(layers[0] >= 0, layers[4], 0.0)  # +inf in empty slots
    g_layers = _ffi.layers_bwd(fv, layers[0], layers[2], layers[1], layers[3], dist)
    # Soft silhouettes with Cauchy's long tail (every face reaches every pixel) and max's keys.
    sigma = jnp.full(fv.shape[:-3], 1e-2, jnp.float32)
    soft = []
    for aggregation in ("probabilistic", "max"):
        attrs = nr.soft._Config(size, size, NEAR, FAR, 1e-4, "cauchy", aggregation).attrs()
        alpha, acc, count = _ffi.soft_silhouettes(fv, sigma, size, size, attrs)
        soft += [alpha, *_ffi.soft_silhouettes_bwd(fv, sigma, acc, count, image[..., 0], attrs)]
        soft += [_ffi.soft_silhouettes_jvp(fv, sigma, acc, count, fv, sigma, attrs)]
    colors = nr.soft._ColorConfig(nr.soft._Config(size, size, NEAR, FAR, 1e-4, "cauchy",
                                                  "probabilistic"), 1e-3, (0.0, 0.5, 1.0)).attrs()  # fmt: skip
    params = jnp.stack([sigma, sigma], -1)
    out = _ffi.soft_rgb(fv, tex, params, size, size, colors)
    soft += [out, *_ffi.soft_rgb_bwd(fv, tex, params, out, image[..., :3], colors)]
    soft += [_ffi.soft_rgb_jvp(fv, tex, params, out, (fv, tex, params), colors)]
    bary_map = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32)[::-1], (*fv.shape[:-2], 3, 3))
    out = _ffi.soft_rgb(fv, tex, params, size, size, colors, bary_map)
    soft += [out, *_ffi.soft_rgb_bwd(fv, tex, params, out, image[..., :3], colors, bary_map)]
    tangents = (fv, tex, params, bary_map)
    soft += [_ffi.soft_rgb_jvp(fv, tex, params, out, tangents, colors, bary_map)]
    return (fi, rgb, g_tex, g_kato, g_frags, gathered, scattered, interpolated, g_corners, g_bary,
            sampled, g_image, g_uv, *layers[:4], dist, g_layers, *soft)  # fmt: skip


def cases(rng: np.random.Generator, batch_side: int):
    for name, batch, n_faces, n_vertices, size in [
        ("no faces", 1, 0, 4, 16),
        ("no vertices", 1, 3, 0, 16),
        ("batch 0", 0, 3, 4, 16),
        ("batch 70", 70, 20, 8, batch_side),
    ]:
        fv = random_faces(rng, batch, n_faces, size)
        tex = rng.uniform(size=(batch, n_faces, 2, 2, 2, 3)).astype(np.float32)
        image = rng.uniform(size=(batch, size, size, 4)).astype(np.float32)
        faces = rng.integers(0, max(n_vertices, 1), size=(batch, n_faces, 3)).astype(np.int32)
        if n_vertices == 0:
            faces = faces[:, :0]  # nothing can index no vertices
        vertices = rng.normal(size=(batch, n_vertices, 3)).astype(np.float32)
        yield name, (fv, tex, image, faces, vertices, size)


def cube(size: int):
    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int32)
    faces = np.concatenate([faces, faces[:, ::-1]])
    eye = jnp.array([1.2, 1.0, -2.0], jnp.float32)
    fv = nr.vertices_to_faces(nr.perspective(nr.look_at(corners * 0.9, eye), 45.0), faces)

    def loss(fv):
        layers = nr.rasterize_layers(fv, size, num_layers=2, blur_radius=1e-3)
        hard = nr.rasterize_silhouettes(fv, size, anti_aliasing=False)
        return jnp.sum(hard) + jnp.sum(jnp.where(layers.face_index >= 0, layers.dist, 0.0))

    soft = jax.grad(lambda fv: jnp.sum(nr.soft_silhouettes(fv, size, 1e-4) ** 2))(fv)
    tex = jnp.ones((fv.shape[0], 2, 2, 2, 3), jnp.float32)
    colors = jax.grad(lambda fv: jnp.sum(nr.soft_rgb(fv, tex, size, 1e-4, 1e-4) ** 2))(fv)
    colors_jvp = jax.jvp(lambda fv: nr.soft_rgb(fv, tex, size, 1e-4, 1e-4), (fv,), (fv,))[1]
    return jax.grad(loss)(fv), soft, colors, colors_jvp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    args = parser.parse_args()
    try:
        device = jax.devices(args.device)[0]
    except RuntimeError:
        print(f"no {args.device} device: nothing to check")
        return 0 if args.device == "gpu" else 1
    failed = 0
    rng = np.random.default_rng(0)
    kernels = "cuda-host" if args.device == "cpu" else "default"
    batch_side, cube_size = (16, 256) if args.device == "cpu" else (32, 1024)
    with jax.default_device(device), _ffi.using_kernels(kernels):
        for name, inputs in cases(rng, batch_side):
            outs = jax.block_until_ready(all_targets(*jax.device_put(inputs, device)))
            finite = all(bool(np.isfinite(np.asarray(o)).all()) for o in outs)
            failed += not finite
            print(f"{name}: {'ok' if finite else 'FAILED (non-finite)'}", [o.shape for o in outs])
        fi, wt, d = _ffi.rasterize(jnp.asarray(random_faces(rng, 1, 10, 16)), 16, 16, NEAR, FAR)
        bad = fi.at[0, 3, 3].set(2**31 - 1)
        fv = jnp.asarray(random_faces(rng, 1, 10, 16))
        image = jnp.ones((1, 16, 16, 4), jnp.float32)
        poisoned = [
            _ffi.sample_textures(fv, jnp.ones((1, 10, 2, 2, 2, 3)), bad, wt, d, 1e-3),
            _ffi.kato_bwd(fv, bad, image, image, 1e-3),
            _ffi.fragments_bwd(fv, bad, wt, d, wt, wt, d),
            _ffi.interpolate(jnp.ones((1, 10, 3, 2)), bad, wt),
            *_ffi.interpolate_bwd(jnp.ones((1, 10, 3, 2)), bad, wt, image[..., :2]),
            _ffi.sample_textures_bwd(fv, bad, wt, d, image[..., :3], 1e-3, (1, 10, 2, 2, 2, 3)),
            _ffi.layers_bwd(fv, bad[..., None], grad_depth=jnp.ones((1, 16, 16, 1))),
        ]
        nan = all(bool(np.isnan(np.asarray(p)).all()) for p in poisoned)
        failed += not nan
        print(f"corrupt face index: {'ok (NaN)' if nan else 'FAILED (not all NaN)'}")
        try:
            jax.block_until_ready(
                jax.jit(nr.vertices_to_faces)(jnp.zeros((4, 3)), jnp.array([[0, 1, 9]], jnp.int32))
            )
            print("corrupt vertex index: FAILED (no error)")
            failed += 1
        except jax.errors.JaxRuntimeError as e:
            print("corrupt vertex index: ok (raised)", str(e).splitlines()[0][:80])
        grads = map(np.asarray, cube(cube_size))
        ok = all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in grads)
        failed += not ok
        print(
            f"cube at {cube_size}^2, gradients (hard and layers, soft, soft colours) and soft "
            f"colours' tangent: {'ok' if ok else 'FAILED'}"
        )
    print("gpu_smoke:", "all ok" if not failed else f"{failed} FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
