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

#if defined(__CUDACC__)
#define NMR_HD __host__ __device__ __forceinline__
#else
#define NMR_HD inline
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

// Edge test of the original: a pixel centre exactly on an edge is inside.
NMR_HD bool covers(const Face& f, float xp, float yp) {
  for (int k = 0; k < 3; ++k) {
    const int k1 = (k + 1) % 3;
    if ((yp - f.y[k]) * (f.x[k1] - f.x[k]) < (xp - f.x[k]) * (f.y[k1] - f.y[k])) return false;
  }
  return true;
}

// Barycentric weights of a covered pixel, clamped to [0, 1] and renormalised as the original does,
// and the perspective-correct depth zp = 1 / sum(w_k / z_k). Returns zp. Each weight is its edge
// function over the area: the same value as the original's M^-1 [x, y, 1], without that form's
// cancellation of large terms (exact for vertices on a fine pixel grid).
NMR_HD float interpolate(const Face& f, float xp, float yp, float* w) {
  float sum = 0.f;
  for (int k = 0; k < 3; ++k) {
    const int k1 = (k + 1) % 3, k2 = (k + 2) % 3;
    const float edge = (f.x[k2] - f.x[k1]) * (yp - f.y[k1]) - (f.y[k2] - f.y[k1]) * (xp - f.x[k1]);
    w[k] = clampf(edge / f.area2, 0.f, 1.f);
    sum += w[k];
  }
  for (int k = 0; k < 3; ++k) w[k] /= sum;
  return 1.f / (w[0] / f.z[0] + w[1] / f.z[1] + w[2] / f.z[2]);
}

// The fragments of a visible face in rows [row_lo, row_hi]: calls visit(pixel, zp, w) for each
// pixel centre of the face's box that passes the edge test with its depth in (near, far); pixel is
// the flat [H, W] index. Columns x_lo + first, x_lo + first + stride, ... of each row are visited,
// so that `stride` CUDA threads can share one face; the row band lets CPU threads split an image.
template <typename Visit>
NMR_HD void for_each_fragment(const Face& f, int height, int width, float near, float far, int row_lo,
                              int row_hi, int first, int stride, Visit&& visit) {
  if (!f.visible) return;
  int x_lo, x_hi, y_lo, y_hi;
  pixel_span(fminf(f.x[0], fminf(f.x[1], f.x[2])), fmaxf(f.x[0], fmaxf(f.x[1], f.x[2])), width, &x_lo, &x_hi);
  pixel_span(fminf(f.y[0], fminf(f.y[1], f.y[2])), fmaxf(f.y[0], fmaxf(f.y[1], f.y[2])), height, &y_lo,
             &y_hi);
  if (y_lo < row_lo) y_lo = row_lo;
  if (y_hi > row_hi) y_hi = row_hi;
  for (int yi = y_lo; yi <= y_hi; ++yi) {
    for (int xi = x_lo + first; xi <= x_hi; xi += stride) {
      const float xp = static_cast<float>(xi);
      const float yp = static_cast<float>(yi);
      if (!covers(f, xp, yp)) continue;
      float w[3];
      const float zp = interpolate(f, xp, yp, w);
      // No clipping: pixels outside (near, far) are dropped one by one, as in the original.
      if (!(zp > near && zp < far)) continue;
      visit(static_cast<int64_t>(yi) * width + xi, zp, w);
    }
  }
}

// Rasterizes one face into the maps of its image (depth map initialised to `far`, face index to -1).
// Faces must be drawn in increasing index order: with the strict z test the lowest index wins ties.
// Only rows [row_lo, row_hi] are touched, so disjoint row bands can be drawn concurrently.
NMR_HD void draw_face(const Face& f, int32_t index, int height, int width, float near, float far, int row_lo,
                      int row_hi, int32_t* face_index, float* weights, float* depth) {
  for_each_fragment(f, height, width, near, far, row_lo, row_hi, 0, 1,
                    [&](int64_t p, float zp, const float* w) {
                      if (!(zp < depth[p])) return;
                      depth[p] = zp;
                      face_index[p] = index;
                      for (int k = 0; k < 3; ++k) weights[3 * p + k] = w[k];
                    });
}

// The 8 trilinear taps of a texture cube [T, T, T, 3] at a covered pixel: flat texel indices and
// weights. Texture coordinate k is w_k * (T - 1) * zp / z_k (perspective-correct), clamped to
// [0, T - 1 - eps] so that the upper tap stays inside the cube.
NMR_HD void texture_taps(const float* face, const float* w, float zp, int T, float eps, int32_t* idx,
                         float* tw) {
  if (T == 1) {  // A single texel: the clamp range above would be empty.
    for (int c = 0; c < 8; ++c) {
      idx[c] = 0;
      tw[c] = c == 0 ? 1.f : 0.f;
    }
    return;
  }
  int base[3];
  float frac[3];
  for (int k = 0; k < 3; ++k) {
    const float t = clampf(w[k] * (T - 1) * (zp / face[3 * k + 2]), 0.f, T - 1 - eps);
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

NMR_HD void sample_texture(const float* face, const float* texture, const float* w, float zp, int T,
                           float eps, float* rgb) {
  int32_t idx[8];
  float tw[8];
  texture_taps(face, w, zp, T, eps, idx, tw);
  for (int ch = 0; ch < 3; ++ch) rgb[ch] = 0.f;
  for (int c = 0; c < 8; ++c)
    for (int ch = 0; ch < 3; ++ch) rgb[ch] += tw[c] * texture[3 * idx[c] + ch];
}

// Gradient of the depth map at one covered pixel w.r.t. its face's 9 NDC coordinates, the face
// index held fixed: d zp / d z_k = w_k zp^2 / z_k^2 and d zp / d x_k = -zp^2 w_k tmp_x * (W / 2)
// with tmp_l = -sum_m M^-1[m][l] / z_m (differentiating w = M^-1 p through M).
NMR_HD void depth_grad(const Face& f, const float* w, float zp, float g, int height, int width, float* grad) {
  const float zp2 = zp * zp;
  float tmp[2] = {0.f, 0.f};
  for (int m = 0; m < 3; ++m)
    for (int l = 0; l < 2; ++l) tmp[l] -= inv_entry(f, m, l) / f.z[m];
  const float half[2] = {0.5f * width, 0.5f * height};
  for (int k = 0; k < 3; ++k) {
    for (int l = 0; l < 2; ++l) grad[3 * k + l] = -g * tmp[l] * w[k] * zp2 * half[l];
    grad[3 * k + 2] = g * w[k] * zp2 / (f.z[k] * f.z[k]);
  }
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

// The out scan of one line (`image`, `grad` at its pixel 0; strides as in ScanLines, with
// along == 1 when kUnitAlong): over pixels [lo, hi], sums kato_term of
// diff = sum_c (image - in) * grad for both vertices of the edge, with
// dist_k = lever_k * (d1 - cross) * to_ndc. Every pixel of [lo, hi] lies on the same side of the
// crossing, so each dist_k has one sign on the whole line and the loop needs no branch.
// kC > 0 fixes the channel count at compile time; kC == 0 reads it from C.
template <int kC, bool kUnitAlong>
NMR_HD void out_scan(const float* image, const float* grad, int64_t along, int64_t chan, int C, int lo,
                     int hi, const float* in, float cross, float to_ndc, float lever0, float lever1,
                     float eps0, float eps1, float* sum0, float* sum1) {
  const int nc = kC > 0 ? kC : C;
  const int64_t al = kUnitAlong ? 1 : along;
  float s0 = 0.f, s1 = 0.f;
  NMR_SIMD_SUM(s0, s1)
  for (int d1 = lo; d1 <= hi; ++d1) {
    float diff = 0.f;
    for (int c = 0; c < nc; ++c)
      diff += (image[c * chan + d1 * al] - in[c * chan]) * grad[c * chan + d1 * al];
    const float dist = (static_cast<float>(d1) - cross) * to_ndc;
    s0 += kato_term(diff, lever0 * dist, eps0);
    s1 += kato_term(diff, lever1 * dist, eps1);
  }
  *sum0 = s0;
  *sum1 = s1;
}

// The out scan with the channel count and the line layout picked at run time.
NMR_HD void out_scan_any(const float* image, const float* grad, int64_t along, int64_t chan, int C, int lo,
                         int hi, const float* in, float cross, float to_ndc, float lever0, float lever1,
                         float eps0, float eps1, float* sum0, float* sum1) {
#define NMR_OUT_SCAN(KC, UNIT)                                                                           \
  out_scan<KC, UNIT>(image, grad, along, chan, C, lo, hi, in, cross, to_ndc, lever0, lever1, eps0, eps1, \
                     sum0, sum1)
  // The renderer's images have 4 channels (rgb, alpha) or 1 (alpha).
  if (along == 1) {
    if (C == 4) return NMR_OUT_SCAN(4, true);
    if (C == 1) return NMR_OUT_SCAN(1, true);
    return NMR_OUT_SCAN(0, true);
  }
  if (C == 4) return NMR_OUT_SCAN(4, false);
  return NMR_OUT_SCAN(0, false);
#undef NMR_OUT_SCAN
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

// The out scan of crossing k on its line (`image` and `grad` at pixel 0 of the line, strides as in
// ScanLines): sum[i] is what lever i's vertex receives, to be subtracted.
NMR_HD void kato_out_scan(const KatoCrossing& k, const float* image, const float* grad, int64_t along,
                          int64_t chan, int C, int n_along, float eps, float* sum) {
  const int lo = k.dir > 0 ? k.d1_in + 1 : 0;
  const int hi = k.dir > 0 ? n_along - 1 : k.d1_in - 1;
  // Beyond the crossing d1 - cross has the sign of dir, so each distance has that of lever * dir.
  const float eps0 = (k.lever[0] > 0.f) == (k.dir > 0) ? eps : -eps;
  const float eps1 = (k.lever[1] > 0.f) == (k.dir > 0) ? eps : -eps;
  out_scan_any(image, grad, along, chan, C, lo, hi, image + k.d1_in * along, k.cross, 2.f / n_along,
               k.lever[0], k.lever[1], eps0, eps1, &sum[0], &sum[1]);
}

// Kato's approximate gradient of one face's x and y (NDC) from an image of C channels and its
// incoming gradient, given as scan lines along columns (`cols`, axis 0) and rows (`rows`, axis 1);
// face_index is [H, W] as rasterized. The in scans (the face's own pixels, a few per line) are
// added to `grad` (the face's 9 floats; z untouched); each out scan (to the image border, the bulk
// of the cost) is handed to on_out(const KatoCrossing&), to run now or later.
template <typename OnOut>
NMR_HD void kato_face_scans(const Face& f, int32_t index, int height, int width, int C,
                            const int32_t* face_index, ScanLines cols, ScanLines rows, float eps, float* grad,
                            OnOut&& on_out) {
  if (!f.visible) return;
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
      const ScanLines& sl = axis == 0 ? cols : rows;
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
      for (int d0 = d0_lo; d0 <= d0_hi; ++d0) {
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

// Kato's gradient of one face with its out scans run at once (one thread per face: no shared
// writes). `grad` receives the face's 9 floats.
NMR_HD void kato_face_grad(const Face& f, int32_t index, int height, int width, int C,
                           const int32_t* face_index, ScanLines cols, ScanLines rows, float eps,
                           float* grad) {
  kato_face_scans(f, index, height, width, C, face_index, cols, rows, eps, grad, [&](const KatoCrossing& k) {
    const ScanLines& sl = k.axis == 0 ? cols : rows;
    float sum[2];
    kato_out_scan(k, sl.image + k.line * sl.line, sl.grad + k.line * sl.line, sl.along, sl.chan, C,
                  k.axis == 0 ? height : width, eps, sum);
    kato_apply(k, sum, grad);
  });
}

// The same with columns and rows read in place from the [H, W, C] maps (no transposed copy).
NMR_HD void kato_face_grad(const Face& f, int32_t index, int height, int width, int C,
                           const int32_t* face_index, const float* image, const float* grad_image, float eps,
                           float* grad) {
  const int64_t c = C;
  kato_face_grad(f, index, height, width, C, face_index, ScanLines{image, grad_image, c, width * c, 1},
                 ScanLines{image, grad_image, width * c, c, 1}, eps, grad);
}

}  // namespace nmr
