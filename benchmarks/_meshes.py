"""Meshes generated for the benchmarks (private to benchmarks/): closed, outward counter-clockwise
(the icosphere is ``nr.data.icosphere``)."""

from __future__ import annotations

import numpy as np

import nmr_jax as nr


def torus(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Torus (radii 0.7 and 0.3, axis y) of n x n quads = 2 n^2 faces, outward counter-clockwise."""
    u, w = np.meshgrid(np.arange(n) * 2 * np.pi / n, np.arange(n) * 2 * np.pi / n, indexing="ij")
    r = 0.7 + 0.3 * np.cos(w)
    verts = np.stack([r * np.cos(u), 0.3 * np.sin(w), r * np.sin(u)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    a, b = i * n + j, ((i + 1) % n) * n + j
    c, d = ((i + 1) % n) * n + (j + 1) % n, i * n + (j + 1) % n
    faces = np.concatenate([np.stack([a, d, b], -1), np.stack([b, d, c], -1)]).reshape(-1, 3)
    return verts.astype(np.float32), faces.astype(np.int32)


def scenes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The benchmarks' meshes: the teapot, a 4-times subdivided icosphere and a 100k-quad torus."""
    v, f = nr.data.teapot()
    sphere, sphere_faces = nr.data.icosphere(4)
    return {
        "teapot": (np.asarray(v), np.asarray(f)),
        "icosphere": (np.asarray(sphere), np.asarray(sphere_faces)),
        "torus100k": torus(224),
    }
