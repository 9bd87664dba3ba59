"""Meshes generated for the benchmarks (private to benchmarks/): closed, outward counter-clockwise."""

from __future__ import annotations

import numpy as np


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere with 20 * 4^level faces, counter-clockwise seen from outside."""
    t = (1 + 5**0.5) / 2
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
         (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]  # fmt: skip
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
         (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
         (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]  # fmt: skip
    verts = [np.array(p, np.float64) / np.linalg.norm(p) for p in v]
    faces = f
    cache: dict[tuple[int, int], int] = {}  # edge -> its midpoint vertex (shared by two faces)

    def mid(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in cache:
            m = verts[a] + verts[b]
            verts.append(m / np.linalg.norm(m))
            cache[key] = len(verts) - 1
        return cache[key]

    for _ in range(level):
        faces = [
            g
            for a, b, c in faces
            for g in ((a, mid(a, b), mid(c, a)), (b, mid(b, c), mid(a, b)),
                      (c, mid(c, a), mid(b, c)), (mid(a, b), mid(b, c), mid(c, a)))
        ]  # fmt: skip
    return np.array(verts, np.float32), np.array(faces, np.int32)


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
