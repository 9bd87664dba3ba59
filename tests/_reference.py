"""Independent oracles for the kernels: a brute-force jnp forward (pixels x faces) and a plain
numpy loop implementation of Kato's backward, both written from ALGORITHM.md.

Maps are "as rasterized" (row 0 at y = -1), like the kernels' outputs before the public flip.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MAX_COORD = 2.0**62  # pixel coordinates beyond it make a face not cover


def _pixel(v, n):
    return 0.5 * (v * n + n - 1)


def forward(fv, height, width, near, far):
    """fv [B, F, 3, 3] -> face_index [B, H, W], weights [B, H, W, 3], depth [B, H, W]."""
    fv = jnp.asarray(fv, jnp.float32)
    x = _pixel(fv[..., 0], width)[:, None, None, :, :]  # [B, 1, 1, F, 3]
    y = _pixel(fv[..., 1], height)[:, None, None, :, :]
    z = fv[..., 2][:, None, None, :, :]
    xp = jnp.arange(width, dtype=jnp.float32)[None, None, :, None]
    yp = jnp.arange(height, dtype=jnp.float32)[None, :, None, None]
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    area = (y2 - y0) * (x1 - x0) - (y1 - y0) * (x2 - x0)
    # Drawn: counter-clockwise, pixel coordinates within +-2^62 and finite depths.
    bounded = (jnp.abs(x) <= MAX_COORD) & (jnp.abs(y) <= MAX_COORD) & jnp.isfinite(z)
    inside = (area > 0) & jnp.all(bounded, axis=-1)
    for (xa, ya), (xb, yb) in [((x0, y0), (x1, y1)), ((x1, y1), (x2, y2)), ((x2, y2), (x0, y0))]:
        inside &= ~((yp - ya) * (xb - xa) < (xp - xa) * (yb - ya))
    xs, ys = (x0, x1, x2), (y0, y1, y2)
    w0, w1, w2 = (
        ((xs[(k + 2) % 3] - xs[(k + 1) % 3]) * (yp - ys[(k + 1) % 3])
         - (ys[(k + 2) % 3] - ys[(k + 1) % 3]) * (xp - xs[(k + 1) % 3])) / area
        for k in range(3)
    )  # fmt: skip
    w = jnp.clip(jnp.stack([w0, w1, w2], -1), 0.0, 1.0)
    w = w / ((w[..., 0:1] + w[..., 1:2]) + w[..., 2:3])  # the kernel's summation order
    zp = 1.0 / (w[..., 0] / z[..., 0] + w[..., 1] / z[..., 1] + w[..., 2] / z[..., 2])
    ok = inside & (zp > near) & (zp < far)
    zmask = jnp.where(ok, zp, jnp.inf)
    best = jnp.argmin(zmask, axis=-1)  # first index among equal depths: the lowest face wins
    hit = jnp.any(ok, axis=-1)
    face_index = jnp.where(hit, best, -1).astype(jnp.int32)
    take = lambda a: jnp.take_along_axis(a, best[..., None], axis=-1)[..., 0]  # noqa: E731
    depth = jnp.where(hit, take(zmask), far)
    weights = jnp.where(hit[..., None], jnp.stack([take(w[..., k]) for k in range(3)], -1), 0.0)
    return face_index, weights, depth


def sample(fv, textures, face_index, weights, depth, eps):
    """Trilinear texture sampling, jnp; rgb [B, H, W, 3], 0 on background."""
    T = textures.shape[-2]
    f = jnp.maximum(face_index, 0)
    b = jnp.arange(fv.shape[0])[:, None, None]
    z = fv[b, f][..., 2]  # [B, H, W, 3]
    if T == 1:
        rgb = textures[b, f][..., 0, 0, 0, :]
    else:
        t = jnp.clip(weights * (T - 1) * (depth[..., None] / z), 0.0, T - 1 - eps)
        base = jnp.floor(t).astype(jnp.int32)
        frac = t - base
        rgb = 0.0
        for c in range(8):
            up = [(c >> k) & 1 for k in range(3)]
            wt = 1.0
            for k in range(3):
                wt = wt * (frac[..., k] if up[k] else 1 - frac[..., k])
            i = [base[..., k] + up[k] for k in range(3)]
            rgb = rgb + wt[..., None] * textures[b, f, i[0], i[1], i[2]]
    return jnp.where(face_index[..., None] >= 0, rgb, 0.0)


def depth_at(fv, face_index, height, width):
    """Perspective-correct depth as a function of fv with the face index fixed (for jax.grad)."""
    f = jnp.maximum(face_index, 0)
    b = jnp.arange(fv.shape[0])[:, None, None]
    face = fv[b, f]  # [B, H, W, 3, 3]
    x, y, z = _pixel(face[..., 0], width), _pixel(face[..., 1], height), face[..., 2]
    xp = jnp.arange(width, dtype=jnp.float32)[None, None, :]
    yp = jnp.arange(height, dtype=jnp.float32)[None, :, None]
    m = jnp.stack([x, y, jnp.ones_like(x)], -2)  # [B, H, W, 3, 3]
    p = jnp.stack(jnp.broadcast_arrays(xp, yp, jnp.ones_like(xp)), -1)
    w = jnp.linalg.solve(m, p[..., None])[..., 0]
    zp = 1.0 / jnp.sum(w / z, -1)
    return jnp.where(face_index >= 0, zp, 0.0)


def kato(fv, face_index, image, grad, eps):
    """Kato's backward written as plain loops (float32 scalars), one batch element at a time."""
    fv, face_index = np.asarray(fv, np.float32), np.asarray(face_index)
    image, grad = np.asarray(image, np.float32), np.asarray(grad, np.float32)
    B, F = fv.shape[:2]
    H, W = face_index.shape[1:]
    out = np.zeros(fv.shape, np.float32)
    f32 = np.float32
    for bi in range(B):
        for fi in range(F):
            px = _pixel(fv[bi, fi, :, 0], f32(W)).astype(np.float32)
            py = _pixel(fv[bi, fi, :, 1], f32(H)).astype(np.float32)
            area = (py[2] - py[0]) * (px[1] - px[0]) - (py[1] - py[0]) * (px[2] - px[0])
            bounded = (np.abs(px) <= MAX_COORD) & (np.abs(py) <= MAX_COORD)
            if not (area > 0 and bounded.all() and np.isfinite(fv[bi, fi, :, 2]).all()):
                continue
            for e in range(3):
                i0, i1, i2 = e, (e + 1) % 3, (e + 2) % 3
                for axis in range(2):
                    a, bb = (px, py) if axis == 0 else (py, px)
                    n_lines, n_along = (W, H) if axis == 0 else (H, W)
                    if a[i0] == a[i1]:
                        continue
                    if axis == 0:
                        direction = -1 if a[i0] < a[i1] else 1
                    else:
                        direction = 1 if a[i0] < a[i1] else -1

                    def pix(d0, d1, axis=axis):
                        return (d1, d0) if axis == 0 else (d0, d1)

                    lo = max(int(np.ceil(min(a[i0], a[i1]))), 0)
                    hi = int(np.floor(min(max(a[i0], a[i1]), n_lines - 1)))
                    for d0 in range(lo, hi + 1):
                        d0f = f32(d0)
                        cross = (bb[i1] - bb[i0]) / (a[i1] - a[i0]) * (d0f - a[i0]) + bb[i0]
                        if not np.isfinite(cross):  # an overflowing sliver crosses no pixel
                            continue
                        d1_in = int(np.floor(cross)) if direction > 0 else int(np.ceil(cross))
                        d1_out = d1_in + direction
                        if not (0 <= d1_in < n_along and 0 <= d1_out < n_along):
                            continue
                        img = image[bi]
                        g = grad[bi]
                        i_in = img[pix(d0, d1_in)]
                        i_out = img[pix(d0, d1_out)]
                        visits = []
                        if face_index[bi][pix(d0, d1_in)] == fi:
                            end = n_along - 1 if direction > 0 else 0
                            for d1 in range(d1_out, end + direction, direction):
                                visits.append(
                                    (d1, np.sum((img[pix(d0, d1)] - i_in) * g[pix(d0, d1)]))
                                )
                        if (d0f - a[i0]) * (d0f - a[i2]) < 0:
                            cross2 = (bb[i2] - bb[i0]) / (a[i2] - a[i0]) * (d0f - a[i0]) + bb[i0]
                        elif a[i1] != a[i2]:
                            cross2 = (bb[i1] - bb[i2]) / (a[i1] - a[i2]) * (d0f - a[i2]) + bb[i2]
                        else:
                            cross2 = bb[i2]
                        lim = np.ceil(cross2) if direction > 0 else np.floor(cross2)
                        s, t = max(min(d1_in, lim), 0), min(max(d1_in, lim), n_along - 1)
                        for d1 in range(int(s), int(t) + 1):
                            if face_index[bi][pix(d0, d1)] != fi:
                                continue
                            visits.append((d1, np.sum((img[pix(d0, d1)] - i_out) * g[pix(d0, d1)])))
                        for d1, diff in visits:
                            if not diff > 0:
                                continue
                            for vert, lever_den in ((i0, a[i1] - d0f), (i1, d0f - a[i0])):
                                if lever_den == 0:
                                    continue
                                lever = (a[i1] - a[i0]) / lever_den
                                if not np.isfinite(lever):  # no measurable leverage
                                    continue
                                dist = lever * (f32(d1) - cross) * f32(2 / n_along)
                                dist = dist + eps if dist > 0 else dist - eps
                                out[bi, fi, vert, 1 - axis] -= diff / dist
    return out
