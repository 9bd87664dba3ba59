// Framework-free math of the Neural 3D Mesh Renderer (Kato et al., CVPR 2018).
//
// Every function here is per face or per pixel, works on raw pointers, and is marked NMR_HD so that
// the C++ compiler (CPU handlers) and nvcc (CUDA handlers) compile this one copy. Nothing here
// allocates, throws or touches a framework; callers validate indices before calling in.
//
// Conventions (see ALGORITHM.md of the project): x and y in NDC [-1, 1] with y up, z is view depth.
// Pixel coordinate of NDC value v on an axis of n pixels: p = 0.5 * (v * n + n - 1), so pixel centres
// sit on integers. Maps are stored "as rasterized": row 0 is y = -1. A face is stored as 9 floats,
// vertex-major: x0 y0 z0 x1 y1 z1 x2 y2 z2.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NMR_HD __host__ __device__ __forceinline__
// Loops over a face's 3 vertices, unrolled on the GPU so that Face stays in registers (rolled,
// its arrays are indexed at run time and spill to local memory).
#define NMR_UNROLL _Pragma("unroll")
#else
#define NMR_HD inline
#define NMR_UNROLL
#endif

// Pixel steps of the running GPU thread, counted by the host build of the CUDA code only (docs/gpu.md,
// work per GPU thread; benchmarks/gpu_work.py); nothing in the CPU and CUDA builds.
#if defined(NMR_JAX_CUDA_HOST)
namespace nmr_cuda_host {
inline thread_local int64_t thread_work = 0;
}
#define NMR_COUNT_WORK(n) (nmr_cuda_host::thread_work += (n))
#else
#define NMR_COUNT_WORK(n) ((void)0)
#endif

namespace nmr {

NMR_HD float to_pixel(float v, int n) { return 0.5f * (v * n + n - 1); }

NMR_HD float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

// A face projected to pixel space, with what every pixel test needs precomputed.
struct Face {
  float x[3], y[3], z[3];  // Pixel coordinates and view depth of the three vertices.
  float area2;             // Twice the signed area in pixels; > 0 for counter-clockwise (y up).
  bool visible;            // Front-facing, non-degenerate, within 2^62 pixels, finite depth.
};

NMR_HD Face setup_face(const float* f, int height, int width) {
  Face face;
  for (int k = 0; k < 3; ++k) {
    face.x[k] = to_pixel(f[3 * k + 0], width);
    face.y[k] = to_pixel(f[3 * k + 1], height);
    face.z[k] = f[3 * k + 2];
  }
  const float* x = face.x;
  const float* y = face.y;
  face.area2 = (y[2] - y[0]) * (x[1] - x[0]) - (y[1] - y[0]) * (x[2] - x[0]);
  // The original culls only clockwise faces; zero-area faces are dropped too because their
  // barycentrics divide by zero. So is a face with a pixel coordinate beyond +-2^62 (or NaN): below
  // that bound no coordinate difference exceeds 2^63, so no edge function or area overflows float
  // and coverage does not depend on how a compiler rounds near FLT_MAX. A NaN or infinite depth
  // would still let part of the face through (w / inf = 0), so it is dropped too.
  const float max_coord = 0x1p62f;
  bool in_range = true;
  for (int k = 0; k < 3; ++k)
    in_range =
        in_range && fabsf(x[k]) <= max_coord && fabsf(y[k]) <= max_coord && fabsf(face.z[k]) <= FLT_MAX;
  face.visible = face.area2 > 0.f && in_range;
  return face;
}

// Column l (0: x, 1: y) of row k of M^-1, M = [[x0 x1 x2], [y0 y1 y2], [1 1 1]]: d w_k / d p_l.
NMR_HD float inv_entry(const Face& f, int k, int l) {
  const int k1 = (k + 1) % 3, k2 = (k + 2) % 3;
  return (l == 0 ? f.y[k1] - f.y[k2] : f.x[k2] - f.x[k1]) / f.area2;
}

// Inclusive pixel range [lo, hi] of the pixel centres between a and b on an axis of n pixels;
// empty (lo > hi) when none or when a bound is NaN. Clamped in float before the conversion so that
// huge coordinates cannot overflow int.
NMR_HD void pixel_span(float a, float b, int n, int* lo, int* hi) {
  const float lo_f = fmaxf(ceilf(fminf(a, b)), 0.f);
  const float hi_f = fminf(floorf(fmaxf(a, b)), static_cast<float>(n - 1));
  if (lo_f <= hi_f) {
    *lo = static_cast<int>(lo_f);
    *hi = static_cast<int>(hi_f);
  } else {
    *lo = 0;
    *hi = -1;
  }
}

// Edge k's test of the original: false when the pixel centre lies strictly outside edge k (one
// exactly on the edge is inside).
NMR_HD bool inside_edge(const Face& f, int k, float xp, float yp) {
  const int k1 = (k + 1) % 3;
  return !((yp - f.y[k]) * (f.x[k1] - f.x[k]) < (xp - f.x[k]) * (f.y[k1] - f.y[k]));
}

NMR_HD bool covers(const Face& f, float xp, float yp) {
  NMR_UNROLL
  for (int k = 0; k < 3; ++k)
    if (!inside_edge(f, k, xp, yp)) return false;
  return true;
}

// Barycentric weights of a covered pixel, clamped to [0, 1] and renormalised as the original does,
// and the perspective-correct depth zp = 1 / sum(w_k / z_k). Returns zp. Each weight is its edge
// function over the area: the same value as the original's M^-1 [x, y, 1], without that form's
// cancellation of large terms (exact for vertices on a fine pixel grid).
NMR_HD float interpolate(const Face& f, float xp, float yp, float* w) {
  float sum = 0.f;
  NMR_UNROLL
  for (int k = 0; k < 3; ++k) {
    const int k1 = (k + 1) % 3, k2 = (k + 2) % 3;
    const float edge = (f.x[k2] - f.x[k1]) * (yp - f.y[k1]) - (f.y[k2] - f.y[k1]) * (xp - f.x[k1]);
    w[k] = clampf(edge / f.area2, 0.f, 1.f);
    sum += w[k];
  }
  for (int k = 0; k < 3; ++k) w[k] /= sum;
  return 1.f / (w[0] / f.z[0] + w[1] / f.z[1] + w[2] / f.z[2]);
}

// What one rasterization draws: the image size and the depth range (exclusive) kept. Passed by
// value: through a reference the compiler must assume the maps' float stores may change near/far.
struct RasterParams {
  int height, width;
  float near, far;
};

// An inclusive rectangle of pixels: columns [x_lo, x_hi] of rows [y_lo, y_hi]; empty when a lo
// exceeds its hi.
struct PixelRect {
  int x_lo, x_hi, y_lo, y_hi;
};

// The pixels of a face's bounding box inside the image.
NMR_HD PixelRect face_box(const Face& f, RasterParams r) {
  PixelRect box;
  pixel_span(fminf(f.x[0], fminf(f.x[1], f.x[2])), fmaxf(f.x[0], fmaxf(f.x[1], f.x[2])), r.width, &box.x_lo,
             &box.x_hi);
  pixel_span(fminf(f.y[0], fminf(f.y[1], f.y[2])), fmaxf(f.y[0], fmaxf(f.y[1], f.y[2])), r.height, &box.y_lo,
             &box.y_hi);
  return box;
}

// The fragment of a covered pixel: calls visit(pixel, zp, w) if its depth lies in (near, far);
// pixel is the flat [H, W] index.
template <typename Visit>
NMR_HD void visit_fragment(const Face& f, RasterParams r, int xi, int yi, Visit&& visit) {
  float w[3];
  const float zp = interpolate(f, static_cast<float>(xi), static_cast<float>(yi), w);
  // No clipping: pixels outside (near, far) are dropped one by one, as in the original.
  if (!(zp > r.near && zp < r.far)) return;
  visit(static_cast<int64_t>(yi) * r.width + xi, zp, w);
}

// The maps of one image: face_index [H, W] (-1 on background), weights [H, W, 3] (0 there)
// and depth [H, W] (far there).
struct Maps {
  int32_t* face_index;
  float* weights;
  float* depth;
};

// Rasterizes one face into the maps of its image (initialised to the background), testing every
// pixel of its box: the CPU's rasterizer, and the reference that the GPU's row spans are checked
// against (csrc/core_test.cc).
// Faces must be drawn in increasing index order: with the strict z test the lowest index wins ties.
// Only rows [row_lo, row_hi] are touched, so disjoint row bands can be drawn concurrently.
NMR_HD void draw_face(const Face& f, int32_t index, RasterParams r, int row_lo, int row_hi, Maps m) {
  if (!f.visible) return;
  const PixelRect box = face_box(f, r);
  for (int yi = box.y_lo > row_lo ? box.y_lo : row_lo; yi <= box.y_hi && yi <= row_hi; ++yi)
    for (int xi = box.x_lo; xi <= box.x_hi; ++xi) {
      if (!covers(f, static_cast<float>(xi), static_cast<float>(yi))) continue;
      visit_fragment(f, r, xi, yi, [&](int64_t p, float zp, const float* w) {
        if (!(zp < m.depth[p])) return;
        m.depth[p] = zp;
        m.face_index[p] = index;
        for (int k = 0; k < 3; ++k) m.weights[3 * p + k] = w[k];
      });
    }
}

// Narrows [*lo, *hi] to the pixels of row yp that covers accepts (empty: *lo > *hi). Along a row,
// each edge test compares a constant with round(round(xp - x_k) * (y_k1 - y_k)), which is monotone
// in xp (rounding is), so the pixels that pass it form a half-line. Its end is found by stepping
// from an estimate of the edge's crossing with the test itself: the span is exact whatever the
// estimate's rounding (a step or two for ordinary faces, at most the span's width otherwise).
NMR_HD void row_span(const Face& f, float yp, int* lo, int* hi) {
  NMR_UNROLL
  for (int k = 0; k < 3; ++k) {
    const int k1 = (k + 1) % 3;
    const float dy = f.y[k1] - f.y[k];
    if (*lo > *hi) return;
    if (dy == 0.f) {  // The test does not depend on xp.
      if (!inside_edge(f, k, static_cast<float>(*lo), yp)) *hi = *lo - 1;
      continue;
    }
    // NaN or huge for a nearly horizontal edge: clamped, and the steps below correct it.
    const float cross = f.x[k] + (yp - f.y[k]) * (f.x[k1] - f.x[k]) / dy;
    if (dy > 0.f) {  // The pixels left of the crossing pass: move hi to the last that does.
      int c = static_cast<int>(fminf(fmaxf(floorf(cross), *lo - 1.f), static_cast<float>(*hi)));
      c = c < *lo - 1 ? *lo - 1 : (c > *hi ? *hi : c);  // Exact where float rounds large ints.
      while (c >= *lo && !inside_edge(f, k, static_cast<float>(c), yp)) --c;
      while (c < *hi && inside_edge(f, k, static_cast<float>(c + 1), yp)) ++c;
      *hi = c;
    } else {  // The pixels right of the crossing pass: move lo to the first that does.
      int c = static_cast<int>(fminf(fmaxf(ceilf(cross), static_cast<float>(*lo)), *hi + 1.f));
      c = c < *lo ? *lo : (c > *hi + 1 ? *hi + 1 : c);
      while (c <= *hi && !inside_edge(f, k, static_cast<float>(c), yp)) ++c;
      while (c > *lo && inside_edge(f, k, static_cast<float>(c - 1), yp)) --c;
      *lo = c;
    }
  }
}

// The fragments of a visible face in `rect` (a part of its box), row by row over the span that
// covers accepts: the same fragments as draw_face finds there, without testing the pixels outside
// the face.
template <typename Visit>
NMR_HD void for_each_fragment_in(const Face& f, RasterParams r, PixelRect rect, Visit&& visit) {
  for (int yi = rect.y_lo; yi <= rect.y_hi; ++yi) {
    int lo = rect.x_lo, hi = rect.x_hi;
    row_span(f, static_cast<float>(yi), &lo, &hi);
    if (lo <= hi) NMR_COUNT_WORK(hi - lo + 1);
    for (int xi = lo; xi <= hi; ++xi) visit_fragment(f, r, xi, yi, visit);
  }
}

// A face's box cut into tiles of rows x cols pixels (the last row and column of tiles cut by the
// box), numbered row-major from its first row and column: units of GPU work of bounded size.
struct Tiling {
  int rows, cols;
};

NMR_HD int64_t tile_count(PixelRect box, Tiling t) {
  if (box.x_lo > box.x_hi || box.y_lo > box.y_hi) return 0;
  const int64_t across = (static_cast<int64_t>(box.x_hi) - box.x_lo) / t.cols + 1;
  const int64_t down = (static_cast<int64_t>(box.y_hi) - box.y_lo) / t.rows + 1;
  return across * down;
}

// Tile i (in [0, tile_count)) of box.
NMR_HD PixelRect tile_rect(PixelRect box, Tiling t, int64_t i) {
  const int64_t across = (static_cast<int64_t>(box.x_hi) - box.x_lo) / t.cols + 1;
  const int64_t x0 = box.x_lo + (i % across) * t.cols, y0 = box.y_lo + (i / across) * t.rows;
  const int64_t x1 = x0 + t.cols - 1, y1 = y0 + t.rows - 1;
  return PixelRect{static_cast<int>(x0), static_cast<int>(x1 < box.x_hi ? x1 : box.x_hi),
                   static_cast<int>(y0), static_cast<int>(y1 < box.y_hi ? y1 : box.y_hi)};
}

// The two-pass rasterizer (GPU): pass 1 takes, per pixel, the minimum of fragment_key over all
// fragments of all faces in any order (an atomic minimum); pass 2 decodes it with resolve_pixel.
// The key orders by depth, then by face index, so its minimum is the fragment that draw_face in
// increasing index order keeps: the nearest, the lowest index among equal depths.
constexpr uint64_t kNoFragment = ~0ull;  // A pixel that no fragment reached.

NMR_HD uint64_t fragment_key(float zp, int32_t index) {
  // -0.0 and +0.0 are one depth (draw_face's z test says so); fold them before taking the bits.
  const float z = zp == 0.f ? 0.f : zp;
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(z);
#else
  std::memcpy(&u, &z, sizeof(u));
#endif
  // Order-preserving code of a float: unsigned comparison of codes is float comparison.
  const uint32_t code = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(code) << 32) | static_cast<uint32_t>(index);
}

// Pass 2 at pixel p: the face of its key (its corners at face_vertices + 9 * face), and that face's
// weights and depth at the pixel computed as draw_face computes them; the background without one.
NMR_HD void resolve_pixel(uint64_t key, const float* face_vertices, RasterParams r, int64_t p, Maps m) {
  if (key == kNoFragment) {
    m.face_index[p] = -1;
    for (int k = 0; k < 3; ++k) m.weights[3 * p + k] = 0.f;
    m.depth[p] = r.far;
    return;
  }
  const auto f = static_cast<int32_t>(key & 0xffffffffu);
  const Face face = setup_face(face_vertices + 9 * static_cast<int64_t>(f), r.height, r.width);
  m.face_index[p] = f;
  m.depth[p] =
      interpolate(face, static_cast<float>(p % r.width), static_cast<float>(p / r.width), m.weights + 3 * p);
}

// The part of a face's boundary nearest a point: edge `edge` (vertex edge to vertex edge + 1) at
// parameter t in [0, 1] from its first vertex, and the squared distance dist2 to it.
struct NearestEdge {
  float dist2, t;
  int edge;
};

// Squared distance in NDC from the centre of pixel (xp, yp) of an image of height x width pixels to
// the boundary of face f (pixel coordinates, as setup_face makes them): the minimum over the edges
// of the squared distance to the segment; the first edge wins ties. NDC units because soft rules
// compare it with a blur radius or sigma given in NDC (PyTorch3D's convention); on non-square
// images x and y scale differently, so the nearest point is found in NDC, not in pixels.
NMR_HD NearestEdge nearest_edge(const Face& f, float xp, float yp, int height, int width) {
  const float sx = 2.f / width, sy = 2.f / height;  // NDC per pixel
  NearestEdge best{INFINITY, 0.f, 0};
  NMR_UNROLL
  for (int e = 0; e < 3; ++e) {
    const int e1 = (e + 1) % 3;
    // The edge and the point relative to its first vertex, in NDC.
    const float ex = (f.x[e1] - f.x[e]) * sx, ey = (f.y[e1] - f.y[e]) * sy;
    const float px = (xp - f.x[e]) * sx, py = (yp - f.y[e]) * sy;
    const float len2 = ex * ex + ey * ey;
    // A zero-length edge is a point: t = 0 (0 / 0 would be NaN).
    const float t = len2 > 0.f ? clampf((px * ex + py * ey) / len2, 0.f, 1.f) : 0.f;
    const float dx = px - t * ex, dy = py - t * ey;
    const float d2 = dx * dx + dy * dy;
    if (d2 < best.dist2) best = NearestEdge{d2, t, e};
  }
  return best;
}

// The signed squared distance of PyTorch3D's rasterizer: nearest_edge's, negative where the face
// covers the pixel (covers, the hard rasterizer's test, so that the sign agrees with its coverage).
NMR_HD float signed_dist2(const Face& f, float xp, float yp, int height, int width, NearestEdge* nearest) {
  *nearest = nearest_edge(f, xp, yp, height, width);
  return covers(f, xp, yp) ? -nearest->dist2 : nearest->dist2;
}

// Adds g * d dist2 / d (x, y) of the face's vertices in NDC to grad (the face's 9 floats; z
// untouched), for the nearest edge found at (xp, yp). With q = a + t (b - a) the nearest point,
// d dist2 / d a = -2 (p - q) (1 - t) and d dist2 / d b = -2 (p - q) t: t's own derivative drops out
// where t is interior (it minimises) and t is constant where clamped to an end. The signed
// distance's gradient is this with g negated inside.
NMR_HD void nearest_edge_grad(const Face& f, float xp, float yp, int height, int width, NearestEdge n,
                              float g, float* grad) {
  const float sx = 2.f / width, sy = 2.f / height;
  const int a = n.edge, b = (n.edge + 1) % 3;
  const float ex = (f.x[b] - f.x[a]) * sx, ey = (f.y[b] - f.y[a]) * sy;
  const float dx = (xp - f.x[a]) * sx - n.t * ex, dy = (yp - f.y[a]) * sy - n.t * ey;
  grad[3 * a + 0] -= 2.f * g * dx * (1.f - n.t);
  grad[3 * a + 1] -= 2.f * g * dy * (1.f - n.t);
  grad[3 * b + 0] -= 2.f * g * dx * n.t;
  grad[3 * b + 1] -= 2.f * g * dy * n.t;
}

// Texture cubes of T^3 texels per face, and the clamp margin of their coordinates.
struct Texture {
  int T;
  float eps;
};

// The texture coordinates of the point of screen-space weights w and depth zp on a face, unclamped:
// t_k = w_k * (T - 1) * zp / z_k (its perspective-correct barycentrics times T - 1). With a `map`
// (3x3, row j the barycentrics of the face's corner j in another face's corners, as a clipped
// piece's in its source face), the other face's: t_k = sum_j map[j][k] t'_j, since barycentrics
// map linearly between the two.
NMR_HD void texture_coords(const float* face, const float* w, float zp, int T, const float* map, float* t) {
  float u[3];
  for (int k = 0; k < 3; ++k) u[k] = w[k] * (T - 1) * (zp / face[3 * k + 2]);
  for (int k = 0; k < 3; ++k) t[k] = map ? map[k] * u[0] + map[3 + k] * u[1] + map[6 + k] * u[2] : u[k];
}

// The 8 trilinear taps of a texture cube [T, T, T, 3] at a covered pixel: flat texel indices and
// weights. The texture coordinates (texture_coords; `map` as there, or null) are clamped to
// [0, T - 1 - eps] so that the upper tap stays inside the cube.
NMR_HD void texture_taps(const float* face, const float* w, float zp, Texture tex, int32_t* idx, float* tw,
                         const float* map = nullptr) {
  const int T = tex.T;
  if (T == 1) {  // A single texel: the clamp range above would be empty.
    for (int c = 0; c < 8; ++c) {
      idx[c] = 0;
      tw[c] = c == 0 ? 1.f : 0.f;
    }
    return;
  }
  int base[3];
  float frac[3], coords[3];
  texture_coords(face, w, zp, T, map, coords);
  for (int k = 0; k < 3; ++k) {
    const float t = clampf(coords[k], 0.f, T - 1 - tex.eps);
    base[k] = static_cast<int>(t);
    frac[k] = t - base[k];
  }
  for (int c = 0; c < 8; ++c) {
    float weight = 1.f;
    int i[3];
    for (int k = 0; k < 3; ++k) {
      const bool up = (c >> k) & 1;
      weight *= up ? frac[k] : 1.f - frac[k];
      i[k] = base[k] + (up ? 1 : 0);
    }
    idx[c] = (i[0] * T + i[1]) * T + i[2];
    tw[c] = weight;
  }
}

NMR_HD void sample_texture(const float* face, const float* texture, const float* w, float zp, Texture tex,
                           float* rgb, const float* map = nullptr) {
  int32_t idx[8];
  float tw[8];
  texture_taps(face, w, zp, tex, idx, tw, map);
  for (int ch = 0; ch < 3; ++ch) rgb[ch] = 0.f;
  for (int c = 0; c < 8; ++c)
    for (int ch = 0; ch < 3; ++ch) rgb[ch] += tw[c] * texture[3 * idx[c] + ch];
}

// Incoming gradients at one covered pixel: of its screen-space weights w, of its perspective-
// correct barycentrics b_k = w_k zp / z_k, and of its depth zp.
struct FragmentGrads {
  float w[3], bary[3], depth;
};

// The incoming gradients of pixel p from its maps: w, bary [P, 3] and depth [P], each null when
// nothing reads that map (0 then, without a map of zeros to read).
NMR_HD FragmentGrads fragment_grads_at(const float* w, const float* bary, const float* depth, int64_t p) {
  FragmentGrads g{};
  for (int k = 0; k < 3; ++k) {
    g.w[k] = w ? w[3 * p + k] : 0.f;
    g.bary[k] = bary ? bary[3 * p + k] : 0.f;
  }
  g.depth = depth ? depth[p] : 0.f;
  return g;
}

// Gradient of a covered pixel's fragment (w, b, zp) w.r.t. its face's 9 NDC coordinates, the face
// index held fixed. b's gradient goes onto w_k, zp and z_k; zp = 1 / sum(w_m / z_m) gives
// d zp / d w_m = -zp^2 / z_m and d zp / d z_k = w_k zp^2 / z_k^2; w = M^-1 [xp, yp, 1] gives
// d w_k / d x_j = -M^-1[k][0] w_j and d w_k / d y_j = -M^-1[k][1] w_j in pixels (differentiating
// through M). Covered pixels have w in [0, 1] with sum 1, where interpolate's clamp does not act.
NMR_HD void fragment_grad(const Face& f, const float* w, float zp, const FragmentGrads& g, int height,
                          int width, float* grad) {
  float gw[3], gz[3];
  float gzp = g.depth;
  for (int k = 0; k < 3; ++k) {
    const float r = zp / f.z[k];
    gw[k] = g.w[k] + g.bary[k] * r;
    gzp += g.bary[k] * w[k] / f.z[k];
    gz[k] = -g.bary[k] * w[k] * r / f.z[k];
  }
  const float zp2 = zp * zp;
  for (int m = 0; m < 3; ++m) gw[m] -= gzp * zp2 / f.z[m];
  float along[2] = {0.f, 0.f};
  for (int k = 0; k < 3; ++k)
    for (int l = 0; l < 2; ++l) along[l] += gw[k] * inv_entry(f, k, l);
  const float half[2] = {0.5f * width, 0.5f * height};  // d pixel / d NDC
  for (int j = 0; j < 3; ++j) {
    for (int l = 0; l < 2; ++l) grad[3 * j + l] = -w[j] * along[l] * half[l];
    grad[3 * j + 2] = gz[j] + gzp * w[j] * zp2 / (f.z[j] * f.z[j]);
  }
}

// Per-face-corner attributes [F, 3, C] at a pixel of face `face` with barycentrics b: sum_k b_k a_k.
NMR_HD void interpolate_corners(const float* attributes, int64_t face, const float* bary, int C, float* out) {
  const float* a = attributes + face * 3 * C;
  for (int c = 0; c < C; ++c) out[c] = bary[0] * a[c] + bary[1] * a[C + c] + bary[2] * a[2 * C + c];
}

// How an image [Ht, Wt, C] is sampled at uv (u to the right, v up, row 0 at v = 1, texel (j, i)
// centred at ((i + 0.5) / Wt, 1 - (j + 0.5) / Ht)): the nearest texel or the 4 nearest centres,
// the image repeated (wrap) or its edge texels (clamp) beyond [0, 1].
struct ImageSampler {
  int height, width;
  bool bilinear, wrap;
};

NMR_HD bool finite_uv(float u, float v) { return fabsf(u) <= FLT_MAX && fabsf(v) <= FLT_MAX; }

// The taps of `s` at (u, v): up to 4 flat texel indices and weights, and the weights' derivatives
// in u and v (0 for nearest). Returns the number of taps, 0 for a non-finite coordinate.
NMR_HD int image_taps(ImageSampler s, float u, float v, int64_t* idx, float* tw, float* dtw_du,
                      float* dtw_dv) {
  if (!finite_uv(u, v)) return 0;
  if (s.wrap) {  // One period first: the texel coordinates below then fit an int.
    if (!(u >= 0.f && u < 1.f)) u -= floorf(u);
    if (!(v >= 0.f && v < 1.f)) v -= floorf(v);
  } else {  // Beyond a texel outside the image every tap is an edge texel anyway.
    u = clampf(u, -1.f, 2.f);
    v = clampf(v, -1.f, 2.f);
  }
  // Continuous texel coordinates: centres on integers, row 0 at v = 1.
  const float x = u * s.width - 0.5f;
  const float y = (1.f - v) * s.height - 0.5f;
  // floor of a value that fits an int (above): truncation, one less below zero. Without SSE4.1,
  // floorf is a library call, which made sampling several times slower.
  auto floor_int = [](float a) {
    const int i = static_cast<int>(a);
    return i - (a < static_cast<float>(i) ? 1 : 0);
  };
  // An index within one period of the image (wrap: in [-1, n]) or beyond it (clamp) to a texel.
  auto fold = [&](int i, int n) {
    if (s.wrap) return i < 0 ? i + n : (i >= n ? i - n : i);
    return i < 0 ? 0 : (i >= n ? n - 1 : i);
  };
  if (!s.bilinear) {
    idx[0] = static_cast<int64_t>(fold(floor_int(y + 0.5f), s.height)) * s.width +
             fold(floor_int(x + 0.5f), s.width);
    tw[0] = 1.f;
    dtw_du[0] = dtw_dv[0] = 0.f;
    return 1;
  }
  const int c0 = floor_int(x), r0 = floor_int(y);
  const float fx = x - static_cast<float>(c0), fy = y - static_cast<float>(r0);
  const float dfx = static_cast<float>(s.width), dfy = -static_cast<float>(s.height);  // d fx / du, d fy / dv
  // Each axis folded once (not once per tap): sampling is mostly this arithmetic.
  const int cols[2] = {fold(c0, s.width), fold(c0 + 1, s.width)};
  const int64_t rows[2] = {static_cast<int64_t>(fold(r0, s.height)) * s.width,
                           static_cast<int64_t>(fold(r0 + 1, s.height)) * s.width};
  for (int t = 0; t < 4; ++t) {
    const int dx = t & 1, dy = t >> 1;
    idx[t] = rows[dy] + cols[dx];
    const float wx = dx ? fx : 1.f - fx, wy = dy ? fy : 1.f - fy;
    tw[t] = wx * wy;
    dtw_du[t] = (dx ? dfx : -dfx) * wy;
    dtw_dv[t] = wx * (dy ? dfy : -dfy);
  }
  return 4;
}

// image [Ht, Wt, C] sampled by `s` at (u, v) -> out [C]; NaN at a non-finite coordinate.
NMR_HD void sample_image(ImageSampler s, const float* image, int C, float u, float v, float* out) {
  int64_t idx[4];
  float tw[4], du[4], dv[4];
  const int taps = image_taps(s, u, v, idx, tw, du, dv);
  if (taps == 0) {
    for (int c = 0; c < C; ++c) out[c] = NAN;
    return;
  }
  const float* t0 = image + idx[0] * C;
  if (taps == 1) {
    for (int c = 0; c < C; ++c) out[c] = t0[c];
    return;
  }
  const float *t1 = image + idx[1] * C, *t2 = image + idx[2] * C, *t3 = image + idx[3] * C;
  for (int c = 0; c < C; ++c) out[c] = tw[0] * t0[c] + tw[1] * t1[c] + tw[2] * t2[c] + tw[3] * t3[c];
}

// An image of C channels and its incoming gradient seen as scan lines: channel c of pixel d1 of
// line d0 is at d0 * line + d1 * along + c * chan floats. In the as-rasterized [H, W, C] maps rows
// are {line W C, along C, chan 1} and columns {line C, along W C, chan 1}; a planar copy of a band
// of lines, [line][c][d1], has along 1 and chan n_along, so that scans vectorise over pixels.
struct ScanLines {
  const float* image;
  const float* grad;
  int64_t line;   // Floats between consecutive lines.
  int64_t along;  // Floats between consecutive pixels of a line.
  int64_t chan;   // Floats between the channels of a pixel.
};

// Kato's contribution of one pixel: only a move that would lower the loss (diff > 0) counts, and
// it is diff over the NDC distance the vertex must move (dist), pushed eps away from zero as in
// the original. `signed_eps` is eps with the sign of dist, known per line (see out_scan).
NMR_HD float kato_term(float diff, float dist, float signed_eps) {
  return (diff > 0.f ? diff : 0.f) / (dist + signed_eps);
}

// Vectorises the loop that follows, summing the listed variables in per-lane partial sums (an
// order fixed by the compiled code: deterministic). CPU build only (-fopenmp-simd): the CUDA code
// sums in sequence, on the device and in its host build alike.
#if defined(__CUDACC__) || defined(NMR_JAX_CUDA_HOST)
#define NMR_SIMD_SUM(a, b)
#else
#define NMR_SIMD_SUM(a, b) _Pragma(NMR_STR(omp simd reduction(+ : a, b)))
#define NMR_STR(x) #x
#endif

// One scan line of an image and its gradient (both at pixel 0 of the line), strides as in ScanLines.
struct ScanLine {
  const float* image;
  const float* grad;
  int64_t along, chan;
};

// What an out scan sums over pixels [lo, hi] of its line: kato_term of
// diff = sum_c (image - in) * grad for both vertices of the edge, with
// dist_k = lever_k * (d1 - cross) * to_ndc and signed_eps eps_k.
struct OutScan {
  const float* in;  // The pixel just inside the crossing (channels `chan` apart).
  int lo, hi;
  float cross, to_ndc;
  float lever[2], eps[2];
};

// The out scan of one line, with along == 1 when kUnitAlong. Every pixel of [lo, hi] lies on the
// same side of the crossing, so each dist_k has one sign on the whole line and the loop needs no
// branch. kC > 0 fixes the channel count at compile time; kC == 0 reads it from C.
template <int kC, bool kUnitAlong>
NMR_HD void out_scan(const ScanLine& line, int C, const OutScan& o, float* sum) {
  const int nc = kC > 0 ? kC : C;
  const int64_t al = kUnitAlong ? 1 : line.along;
  const int64_t chan = line.chan;
  const float* image = line.image;
  const float* grad = line.grad;
  const float* in = o.in;
  const float cross = o.cross, to_ndc = o.to_ndc;
  const float lever0 = o.lever[0], lever1 = o.lever[1], eps0 = o.eps[0], eps1 = o.eps[1];
  float s0 = 0.f, s1 = 0.f;
  NMR_SIMD_SUM(s0, s1)
  for (int d1 = o.lo; d1 <= o.hi; ++d1) {
    float diff = 0.f;
    for (int c = 0; c < nc; ++c)
      diff += (image[c * chan + d1 * al] - in[c * chan]) * grad[c * chan + d1 * al];
    const float dist = (static_cast<float>(d1) - cross) * to_ndc;
    s0 += kato_term(diff, lever0 * dist, eps0);
    s1 += kato_term(diff, lever1 * dist, eps1);
  }
  sum[0] = s0;
  sum[1] = s1;
}

// The out scan with the channel count and the line layout picked at run time.
NMR_HD void out_scan_any(const ScanLine& line, int C, const OutScan& o, float* sum) {
  // The renderer's images have 4 channels (rgb, alpha) or 1 (alpha).
  if (line.along == 1) {
    if (C == 4) return out_scan<4, true>(line, C, o, sum);
    if (C == 1) return out_scan<1, true>(line, C, o, sum);
    return out_scan<0, true>(line, C, o, sum);
  }
  if (C == 4) return out_scan<4, false>(line, C, o, sum);
  return out_scan<0, false>(line, C, o, sum);
}

// One out scan of Kato's rule: a scan line that an edge of a face crosses where the face covers
// the pixel just inside the crossing. The out scan runs from the next pixel outwards to the border.
struct KatoCrossing {
  int32_t axis;     // 0: a pixel column (the edge moves in y); 1: a pixel row (it moves in x).
  int32_t line;     // Column or row index d0.
  int32_t d1_in;    // Pixel of the line just inside the crossing, covered by the face.
  int32_t dir;      // +1 or -1: the outward direction along the line.
  float cross;      // Position of the crossing on the line, in pixels.
  float lever[2];   // Vertex move per crossing move, for the edge's two vertices (0: vertex fixed).
  int32_t slot[2];  // Entries of the face's 9 gradient floats that the two vertices receive.
};

// The out scan of crossing k on its line (n_along pixels): sum[i] is what lever i's vertex
// receives, to be subtracted.
NMR_HD void kato_out_scan(const KatoCrossing& k, const ScanLine& line, int C, int n_along, float eps,
                          float* sum) {
  OutScan o;
  o.in = line.image + k.d1_in * line.along;
  o.lo = k.dir > 0 ? k.d1_in + 1 : 0;
  o.hi = k.dir > 0 ? n_along - 1 : k.d1_in - 1;
  o.cross = k.cross;
  o.to_ndc = 2.f / n_along;
  // Beyond the crossing d1 - cross has the sign of dir, so each distance has that of lever * dir.
  for (int i = 0; i < 2; ++i) {
    o.lever[i] = k.lever[i];
    o.eps[i] = (k.lever[i] > 0.f) == (k.dir > 0) ? eps : -eps;
  }
  if (o.lo <= o.hi) NMR_COUNT_WORK(o.hi - o.lo + 1);
  out_scan_any(line, C, o, sum);
}

// The scan lines of each edge and axis of a face that one caller runs: the lines d0_lo + first,
// d0_lo + first + stride, ... of the edge's span (all of them for first 0, stride 1), so that
// `stride` GPU threads can share a face.
struct LineRange {
  int first, stride;
};

// What Kato's rule reads of one image: its size and channel count, the face index map [H, W] as
// rasterized, the image and its incoming gradient as scan lines along columns (`cols`, axis 0)
// and rows (`rows`, axis 1), and the distance offset eps.
struct KatoImage {
  int height, width, C;
  const int32_t* face_index;
  ScanLines cols, rows;
  float eps;
};

// Kato's approximate gradient of one face's x and y (NDC) from `im`. The in scans (the face's own pixels, a
// few per line) are added to `grad` (the face's 9 floats; z untouched); each out scan (to the image border,
// the bulk of the cost) is handed to on_out(const KatoCrossing&), to run now or later.
template <typename OnOut>
NMR_HD void kato_face_scans(const Face& f, int32_t index, const KatoImage& im, LineRange lines, float* grad,
                            OnOut&& on_out) {
  if (!f.visible) return;
  const int height = im.height, width = im.width, C = im.C;
  const float eps = im.eps;
  const int32_t* face_index = im.face_index;
  const float* xy[2] = {f.x, f.y};
  for (int e = 0; e < 3; ++e) {
    const int v[3] = {e, (e + 1) % 3, (e + 2) % 3};
    for (int axis = 0; axis < 2; ++axis) {
      const float* A = xy[axis];      // Coordinate along the scan direction (line index d0).
      const float* B = xy[1 - axis];  // Coordinate across it (position d1 on the line).
      const float a0 = A[v[0]], a1 = A[v[1]], a2 = A[v[2]];
      const float b0 = B[v[0]], b1 = B[v[1]], b2 = B[v[2]];
      // An edge parallel to the scan lines meets them in no single point (0/0 in the original).
      if (a0 == a1) continue;
      const ScanLines& sl = axis == 0 ? im.cols : im.rows;
      const int n_lines = axis == 0 ? width : height;
      const int n_along = axis == 0 ? height : width;
      // Pixel step along a scan line and line start, in the flat [H, W] face index.
      const int64_t fi_step = axis == 0 ? width : 1;
      const int64_t fi_line = axis == 0 ? 1 : width;
      const int dir = ((a0 < a1) == (axis == 0)) ? -1 : 1;  // Outward normal of the edge along d1.
      const float to_ndc = 2.f / n_along;
      const int coord = 1 - axis;
      int d0_lo, d0_hi;
      pixel_span(a0, a1, n_lines, &d0_lo, &d0_hi);
      for (int d0 = d0_lo + lines.first; d0 <= d0_hi; d0 += lines.stride) {
        const float cross = (b1 - b0) / (a1 - a0) * (d0 - a0) + b0;
        if (!(cross > -1.f && cross < static_cast<float>(n_along))) continue;
        const int d1_in = static_cast<int>(dir > 0 ? floorf(cross) : ceilf(cross));
        const int d1_out = d1_in + dir;
        if (d1_in < 0 || d1_in >= n_along || d1_out < 0 || d1_out >= n_along) continue;
        const int32_t* fi = face_index + d0 * fi_line;
        // Moving vertex 0 (1) by delta moves the crossing on this line by delta * (a1 - d0) / (a1 - a0)
        // (resp. (d0 - a0) / (a1 - a0)); lever * (d1 - cross) is the vertex move that brings the
        // edge to pixel d1. A lever of 0 marks a vertex on this line, which the line cannot move.
        float lever0 = a1 != d0 ? (a1 - a0) / (a1 - d0) : 0.f;
        float lever1 = a0 != d0 ? (a1 - a0) / (d0 - a0) : 0.f;
        // A lever that overflows (one vertex a hair from this line, the other very far) moves the
        // crossing by nothing measurable: dropped like a zero lever, where inf * 0 (a crossing on
        // a pixel centre) would make the gradient NaN.
        if (!(fabsf(lever0) <= FLT_MAX)) lever0 = 0.f;
        if (!(fabsf(lever1) <= FLT_MAX)) lever1 = 0.f;
        // Out scan: the face grows over the pixels beyond its edge, up to the border.
        if (fi[d1_in * fi_step] == index)
          on_out(KatoCrossing{
              axis, d0, d1_in, dir, cross, {lever0, lever1}, {3 * v[0] + coord, 3 * v[1] + coord}});
        // In scan: the face shrinks, uncovering its own pixels up to its far side on this line.
        float cross2;
        if ((d0 - a0) * (d0 - a2) < 0.f) {
          cross2 = (b2 - b0) / (a2 - a0) * (d0 - a0) + b0;
        } else if (a1 != a2) {
          cross2 = (b1 - b2) / (a1 - a2) * (d0 - a2) + b2;
        } else {  // Edge 1-2 lies on this scan line: the face's far side is vertex 2 itself.
          cross2 = b2;
        }
        const float lim = dir > 0 ? ceilf(cross2) : floorf(cross2);
        const int lo = static_cast<int>(fmaxf(fminf(static_cast<float>(d1_in), lim), 0.f));
        const int hi = static_cast<int>(fminf(fmaxf(static_cast<float>(d1_in), lim), n_along - 1.f));
        const float* im = sl.image + d0 * sl.line;
        const float* g = sl.grad + d0 * sl.line;
        const float* out = im + d1_out * sl.along;
        if (lo <= hi) NMR_COUNT_WORK(hi - lo + 1);
        for (int d1 = lo; d1 <= hi; ++d1) {
          if (fi[d1 * fi_step] != index) continue;
          float diff = 0.f;
          for (int c = 0; c < C; ++c) {
            const int64_t q = d1 * sl.along + c * sl.chan;
            diff += (im[q] - out[c * sl.chan]) * g[q];
          }
          if (!(diff > 0.f)) continue;
          const float dist = (static_cast<float>(d1) - cross) * to_ndc;
          // Here d1 - cross may have either sign or be 0.
          if (lever0 != 0.f) {
            const float d = lever0 * dist;
            grad[3 * v[0] + coord] -= kato_term(diff, d, d > 0.f ? eps : -eps);
          }
          if (lever1 != 0.f) {
            const float d = lever1 * dist;
            grad[3 * v[1] + coord] -= kato_term(diff, d, d > 0.f ? eps : -eps);
          }
        }
      }
    }
  }
}

// Subtracts an out scan's sums from the face's 9 gradient floats.
NMR_HD void kato_apply(const KatoCrossing& k, const float* sum, float* grad) {
  for (int i = 0; i < 2; ++i)
    if (k.lever[i] != 0.f) grad[k.slot[i]] -= sum[i];
}

// Kato's gradient of one face from its scan lines `lines`, out scans run at once (the GPU's threads:
// no shared writes). `grad` receives the face's 9 floats.
NMR_HD void kato_face_grad(const Face& f, int32_t index, const KatoImage& im, LineRange lines, float* grad) {
  kato_face_scans(f, index, im, lines, grad, [&](const KatoCrossing& k) {
    const ScanLines& sl = k.axis == 0 ? im.cols : im.rows;
    const ScanLine line{sl.image + k.line * sl.line, sl.grad + k.line * sl.line, sl.along, sl.chan};
    float sum[2];
    kato_out_scan(k, line, im.C, k.axis == 0 ? im.height : im.width, im.eps, sum);
    kato_apply(k, sum, grad);
  });
}

// Columns and rows read in place from [H, W, C] maps (no transposed copy).
NMR_HD ScanLines columns_of(const float* image, const float* grad, int width, int C) {
  return ScanLines{image, grad, C, static_cast<int64_t>(width) * C, 1};
}
NMR_HD ScanLines rows_of(const float* image, const float* grad, int width, int C) {
  return ScanLines{image, grad, static_cast<int64_t>(width) * C, C, 1};
}
// Columns of planar copies [W][C][H] of the maps (the GPU's), pixels of a column contiguous.
NMR_HD ScanLines planar_columns(const float* image, const float* grad, int height, int C) {
  return ScanLines{image, grad, static_cast<int64_t>(height) * C, 1, height};
}

}  // namespace nmr
