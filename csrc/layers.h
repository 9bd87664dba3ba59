// Per-face and per-pixel math of the K nearest faces per pixel (nr.rasterize_layers), on top of the
// core (nmr_core.h): which pixels a face reaches, the per-pixel list of the K nearest, the values of
// one layer and their gradient. Compiled for the CPU and by nvcc like the core.
//
// A face reaches a pixel when it is visible (setup_face: front-facing, non-degenerate) and either
// covers it (the hard rasterizer's test) or lies within the blur radius of it: the squared NDC
// distance from the pixel centre to the face is below blur_radius (PyTorch3D's convention). Its
// fragment there is interpolate's (weights clamped to [0, 1] and renormalised, perspective-correct
// depth), kept when the depth lies in (near, far). Each pixel keeps the K fragments of least
// (depth, face index): the nearest, ties to the lower index, as the hard rasterizer breaks them.
#pragma once

#include <cstdint>

#include "nmr_core.h"

namespace nmr {

// The layers are stored top row first, as the public maps are (no flipped copy afterwards): the
// pixel of those maps at flat rasterized pixel p (row 0 at y = -1), and conversely.
NMR_HD int64_t top_first(int64_t p, int height, int width) {
  return (height - 1 - p / width) * static_cast<int64_t>(width) + p % width;
}

// What one layered rasterization draws: the image, depth range and blur radius, and K.
struct LayerParams {
  RasterParams r;
  float blur_radius;  // Squared NDC distance; 0: covered pixels only.
  int K;              // Slots per pixel.
};

// The pixels of face f's box grown by the blur radius (sqrt(blur_radius) NDC = that times n / 2
// pixels on an axis of n), plus one pixel so that rounding of the margin cannot drop a pixel that
// the exact distance test of for_each_layer_fragment would keep. The face's own box without blur.
NMR_HD PixelRect reach_box(const Face& f, LayerParams lp) {
  const RasterParams r = lp.r;
  if (!(lp.blur_radius > 0.f)) return face_box(f, r);
  const float reach = sqrtf(lp.blur_radius);
  const float mx = reach * 0.5f * r.width + 1.f, my = reach * 0.5f * r.height + 1.f;
  PixelRect box;
  pixel_span(fminf(f.x[0], fminf(f.x[1], f.x[2])) - mx, fmaxf(f.x[0], fmaxf(f.x[1], f.x[2])) + mx, r.width,
             &box.x_lo, &box.x_hi);
  pixel_span(fminf(f.y[0], fminf(f.y[1], f.y[2])) - my, fmaxf(f.y[0], fmaxf(f.y[1], f.y[2])) + my, r.height,
             &box.y_lo, &box.y_hi);
  return box;
}

// The fragments of visible face f at the pixels of `rect` (a part of its reach_box) that it reaches:
// visit(pixel, zp, w) as visit_fragment calls it. Without blur, the hard rasterizer's row spans.
template <typename Visit>
NMR_HD void for_each_layer_fragment(const Face& f, LayerParams lp, PixelRect rect, Visit&& visit) {
  if (!(lp.blur_radius > 0.f)) return for_each_fragment_in(f, lp.r, rect, visit);
  const float x_min = fminf(f.x[0], fminf(f.x[1], f.x[2])), x_max = fmaxf(f.x[0], fmaxf(f.x[1], f.x[2]));
  const float y_min = fminf(f.y[0], fminf(f.y[1], f.y[2])), y_max = fmaxf(f.y[0], fmaxf(f.y[1], f.y[2]));
  const float sx = 2.f / lp.r.width, sy = 2.f / lp.r.height;  // NDC per pixel
  for (int yi = rect.y_lo; yi <= rect.y_hi; ++yi) {
    const auto yp = static_cast<float>(yi);
    // A pixel within the blur radius of the face is within it of the face's box: on this row,
    // within sqrt(blur_radius - dy^2) NDC of the box's columns, dy the row's NDC distance to the
    // box's rows. A pixel of slack on each (rounding) keeps the span a superset of what the exact
    // test below accepts; it spares that test the corners of the grown box.
    const float dy = fmaxf(fmaxf(y_min - yp, yp - y_max) - 1.f, 0.f) * sy;
    const float mx = sqrtf(fmaxf(lp.blur_radius - dy * dy, 0.f)) / sx + 1.f;
    int lo, hi;
    pixel_span(x_min - mx, x_max + mx, lp.r.width, &lo, &hi);
    lo = lo > rect.x_lo ? lo : rect.x_lo;
    hi = hi < rect.x_hi ? hi : rect.x_hi;
    if (lo <= hi) NMR_COUNT_WORK(hi - lo + 1);
    for (int xi = lo; xi <= hi; ++xi) {
      const auto xp = static_cast<float>(xi);
      if (covers(f, xp, yp) || nearest_edge(f, xp, yp, lp.r.height, lp.r.width).dist2 < lp.blur_radius)
        visit_fragment(f, lp.r, xi, yi, visit);
    }
  }
}

// Inserts face `index`'s fragment at depth zp into one pixel's list: depth and face_index [K] sorted
// by (depth, index), the first `*filled` slots in use. Faces must arrive in increasing index order
// (the CPU's), so that an equal depth goes after the entries already there: the lower index first.
NMR_HD void insert_layer(float zp, int32_t index, int K, float* depth, int32_t* face_index, int32_t* filled) {
  int n = *filled;
  if (n == K) {
    if (!(zp < depth[K - 1])) return;
    --n;  // The farthest entry drops out.
  }
  int pos = n;
  for (; pos > 0 && depth[pos - 1] > zp; --pos) {
    depth[pos] = depth[pos - 1];
    face_index[pos] = face_index[pos - 1];
  }
  depth[pos] = zp;
  face_index[pos] = index;
  *filled = n + 1;
}

// The same list kept as fragment_keys [K] (kNoFragment in empty slots) that any number of threads
// insert into at once, in any order (the GPU's): each slot in turn takes the smaller of its key and
// the one carried, carrying the larger on. A slot's key only ever decreases, so the keys end up
// sorted and the K least of all inserted (the multiset of slots and carried keys never changes,
// and a key carried past slot j is at least slot j's final value). `min` is the atomic minimum
// returning the old value. Slots already below the key are skipped with a plain read: a stale read
// is never below the true value, so a skip is always one that the atomic would make a no-op.
template <typename Key, typename AtomicMin>
NMR_HD void insert_layer_key(Key key, int K, Key* keys, AtomicMin&& min) {
  int j = 0;
  while (j < K && static_cast<volatile Key*>(keys)[j] < key) ++j;
  for (; j < K; ++j) {
    const Key old = min(keys + j, key);
    if (old == kNoFragment) return;  // An empty slot took the key: nothing carried on.
    if (old > key) key = old;
  }
}

// The values of one slot of pixel (xi, yi) holding face f: screen-space weights w (bary_screen),
// perspective-correct barycentrics w_k zp / z_k (bary), depth and the signed squared NDC distance
// (negative where f covers the pixel). Returns the depth.
NMR_HD float layer_values(const Face& f, RasterParams r, int xi, int yi, float* bary_screen, float* bary,
                          float* dist) {
  const auto xp = static_cast<float>(xi), yp = static_cast<float>(yi);
  const float zp = interpolate(f, xp, yp, bary_screen);
  for (int k = 0; k < 3; ++k) bary[k] = bary_screen[k] * (zp / f.z[k]);
  NearestEdge nearest;
  *dist = signed_dist2(f, xp, yp, r.height, r.width, &nearest);
  return zp;
}

// The signed distance of an empty slot: no face, infinitely far (a soft rule's coverage
// F(-dist / sigma) is then 0).
constexpr float kNoDist = INFINITY;

// Incoming gradients of one slot: of bary_screen w, bary b, depth zp and dist.
struct LayerGrads {
  float w[3], bary[3], depth, dist;
};

// The incoming gradient maps of one batch element: bary_screen and bary [P, K, 3], depth and dist
// [P, K], each null when nothing reads that map (its gradient is then 0, with no map of zeros).
struct LayerGradMaps {
  const float *bary_screen, *bary, *depth, *dist;
};

// The incoming gradients of slot j (pixel * K + slot).
NMR_HD LayerGrads layer_grads_at(const LayerGradMaps& m, int64_t j) {
  LayerGrads g;
  for (int k = 0; k < 3; ++k) {
    g.w[k] = m.bary_screen ? m.bary_screen[3 * j + k] : 0.f;
    g.bary[k] = m.bary ? m.bary[3 * j + k] : 0.f;
  }
  g.depth = m.depth ? m.depth[j] : 0.f;
  g.dist = m.dist ? m.dist[j] : 0.f;
  return g;
}

// Gradient of one slot's values w.r.t. its face's 9 NDC coordinates, the face index held fixed
// (added to grad). As fragment_grad, with interpolate's clamp and renormalisation differentiated
// (blurred pixels outside the face): w = c / s with c_k = clamp(r_k, 0, 1), s = sum c, and r the
// raw weights M^-1 [xp, yp, 1], so d w_k / d c_m = (delta_km - w_k) / s and d c_m / d r_m is 1
// inside [0, 1] (ends included: a covered pixel's weights) and 0 beyond; d r_k / d x_j =
// -M^-1[k][0] r_j. Where no clamp acts this is fragment_grad's value (s = 1, and the rows of
// M^-1's first two columns sum to 0).
NMR_HD void layer_grad(const Face& f, RasterParams r, int xi, int yi, const LayerGrads& g, float* grad) {
  const auto xp = static_cast<float>(xi), yp = static_cast<float>(yi);
  float w[3];
  const float zp = interpolate(f, xp, yp, w);
  float raw[3], s = 0.f;
  for (int k = 0; k < 3; ++k) {
    const int k1 = (k + 1) % 3, k2 = (k + 2) % 3;
    raw[k] = ((f.x[k2] - f.x[k1]) * (yp - f.y[k1]) - (f.y[k2] - f.y[k1]) * (xp - f.x[k1])) / f.area2;
    s += clampf(raw[k], 0.f, 1.f);
  }
  // Gradient w.r.t. w through every output, then z's own terms (as fragment_grad).
  float gw[3], gz[3];
  float gzp = g.depth;
  for (int k = 0; k < 3; ++k) {
    const float z = f.z[k], ratio = zp / z;
    gw[k] = g.w[k] + g.bary[k] * ratio;
    gzp += g.bary[k] * w[k] / z;
    // 0 where w_k is 0 (b_k does not move with z_k there), not 0 * inf for a z_k near 0.
    gz[k] = w[k] > 0.f ? -g.bary[k] * w[k] * ratio / z : 0.f;
  }
  const float zp2 = zp * zp;
  float gw_dot_w = 0.f;
  for (int m = 0; m < 3; ++m) {
    gw[m] -= gzp * zp2 / f.z[m];
    gw_dot_w += gw[m] * w[m];
  }
  float along[2] = {0.f, 0.f};
  for (int m = 0; m < 3; ++m) {
    const float gr = raw[m] >= 0.f && raw[m] <= 1.f ? (gw[m] - gw_dot_w) / s : 0.f;
    for (int l = 0; l < 2; ++l) along[l] += gr * inv_entry(f, m, l);
  }
  const float half[2] = {0.5f * r.width, 0.5f * r.height};  // d pixel / d NDC
  for (int j = 0; j < 3; ++j) {
    const float z = f.z[j];
    for (int l = 0; l < 2; ++l) grad[3 * j + l] -= raw[j] * along[l] * half[l];
    grad[3 * j + 2] += gz[j] + (w[j] > 0.f ? gzp * w[j] * zp2 / (z * z) : 0.f);  // as gz
  }
  if (g.dist != 0.f) {
    const NearestEdge nearest = nearest_edge(f, xp, yp, r.height, r.width);
    nearest_edge_grad(f, xp, yp, r.height, r.width, nearest, covers(f, xp, yp) ? -g.dist : g.dist, grad);
  }
}

}  // namespace nmr
