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
  bool visible;            // Front-facing, non-degenerate and finite in x and y.
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
  // barycentrics divide by zero, and a NaN or infinite x/y makes the area NaN or infinite.
  face.visible = face.area2 > 0.f && face.area2 <= FLT_MAX;
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

// Rasterizes one face into the maps of its image (depth map initialised to `far`, face index to -1).
// Faces must be drawn in increasing index order: with the strict z test the lowest index wins ties.
// Only rows [row_lo, row_hi] are touched, so disjoint row bands can be drawn concurrently.
NMR_HD void draw_face(const Face& f, int32_t index, int height, int width, float near, float far,
                      int row_lo, int row_hi, int32_t* face_index, float* weights, float* depth) {
  if (!f.visible) return;
  int x_lo, x_hi, y_lo, y_hi;
  pixel_span(fminf(f.x[0], fminf(f.x[1], f.x[2])), fmaxf(f.x[0], fmaxf(f.x[1], f.x[2])), width, &x_lo, &x_hi);
  pixel_span(fminf(f.y[0], fminf(f.y[1], f.y[2])), fmaxf(f.y[0], fmaxf(f.y[1], f.y[2])), height, &y_lo, &y_hi);
  if (y_lo < row_lo) y_lo = row_lo;
  if (y_hi > row_hi) y_hi = row_hi;
  for (int yi = y_lo; yi <= y_hi; ++yi) {
    for (int xi = x_lo; xi <= x_hi; ++xi) {
      const float xp = static_cast<float>(xi);
      const float yp = static_cast<float>(yi);
      if (!covers(f, xp, yp)) continue;
      float w[3];
      const float zp = interpolate(f, xp, yp, w);
      // No clipping: pixels outside (near, far) are dropped one by one, as in the original.
      if (!(zp > near && zp < far)) continue;
      const int64_t p = static_cast<int64_t>(yi) * width + xi;
      if (!(zp < depth[p])) continue;
      depth[p] = zp;
      face_index[p] = index;
      for (int k = 0; k < 3; ++k) weights[3 * p + k] = w[k];
    }
  }
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
NMR_HD void depth_grad(const Face& f, const float* w, float zp, float g, int height, int width,
                       float* grad) {
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

// Kato's approximate gradient of one face's x and y (NDC) from an image of C channels and its
// incoming gradient, both [H, W, C] as rasterized. `grad` receives the 9 face coordinates' gradient
// (z untouched). One call per face; the face's pixels are read, never written.
NMR_HD void kato_face_grad(const Face& f, int32_t index, int height, int width, int C,
                           const int32_t* face_index, const float* image, const float* grad_image,
                           float eps, float* grad) {
  if (!f.visible) return;
  const float* xy[2] = {f.x, f.y};
  for (int e = 0; e < 3; ++e) {
    const int v[3] = {e, (e + 1) % 3, (e + 2) % 3};
    // Axis 0 scans pixel columns and moves the edge in y; axis 1 scans rows and moves it in x.
    for (int axis = 0; axis < 2; ++axis) {
      const float* A = xy[axis];      // Coordinate along the scan direction (line index d0).
      const float* B = xy[1 - axis];  // Coordinate across it (position d1 on the line).
      const float a0 = A[v[0]], a1 = A[v[1]], a2 = A[v[2]];
      const float b0 = B[v[0]], b1 = B[v[1]], b2 = B[v[2]];
      // An edge parallel to the scan lines meets them in no single point (0/0 in the original).
      if (a0 == a1) continue;
      const int n_lines = axis == 0 ? width : height;
      const int n_along = axis == 0 ? height : width;
      // Pixel step along a scan line, in the flat [H, W] index.
      const int64_t step = axis == 0 ? width : 1;
      const int dir = ((a0 < a1) == (axis == 0)) ? -1 : 1;  // Outward normal of the edge along d1.
      const float to_ndc = 2.f / n_along;
      int d0_lo, d0_hi;
      pixel_span(a0, a1, n_lines, &d0_lo, &d0_hi);
      for (int d0 = d0_lo; d0 <= d0_hi; ++d0) {
        const float cross = (b1 - b0) / (a1 - a0) * (d0 - a0) + b0;
        if (!(cross > -1.f && cross < static_cast<float>(n_along))) continue;
        const int d1_in = static_cast<int>(dir > 0 ? floorf(cross) : ceilf(cross));
        const int d1_out = d1_in + dir;
        if (d1_in < 0 || d1_in >= n_along || d1_out < 0 || d1_out >= n_along) continue;
        const int64_t line = axis == 0 ? d0 : static_cast<int64_t>(d0) * width;
        const int64_t p_in = line + d1_in * step;
        const int64_t p_out = line + d1_out * step;
        // Moving vertex 0 (1) by delta moves the crossing on this line by delta * (a1 - d0) / (a1 - a0)
        // (resp. (d0 - a0) / (a1 - a0)); dist is the vertex move that brings the edge to pixel d1.
        const float lever0 = a1 != d0 ? (a1 - a0) / (a1 - d0) : 0.f;
        const float lever1 = a0 != d0 ? (a1 - a0) / (d0 - a0) : 0.f;
        const int coord = 1 - axis;
        auto push = [&](int d1, float diff) {
          // Only a move that would lower the loss contributes.
          if (!(diff > 0.f)) return;
          const float along = (d1 - cross) * to_ndc;
          // eps keeps the step away from zero, as in the original.
          if (lever0 != 0.f) {
            const float dist = lever0 * along;
            grad[3 * v[0] + coord] -= diff / (dist > 0.f ? dist + eps : dist - eps);
          }
          if (lever1 != 0.f) {
            const float dist = lever1 * along;
            grad[3 * v[1] + coord] -= diff / (dist > 0.f ? dist + eps : dist - eps);
          }
        };
        // Out scan: the face grows over the pixels beyond its edge, up to the border.
        if (face_index[p_in] == index) {
          const float* in = image + p_in * C;
          for (int d1 = d1_out; d1 >= 0 && d1 < n_along; d1 += dir) {
            const int64_t p = line + d1 * step;
            float diff = 0.f;
            for (int c = 0; c < C; ++c) diff += (image[p * C + c] - in[c]) * grad_image[p * C + c];
            push(d1, diff);
          }
        }
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
        const float* out = image + p_out * C;
        for (int d1 = lo; d1 <= hi; ++d1) {
          const int64_t p = line + d1 * step;
          if (face_index[p] != index) continue;
          float diff = 0.f;
          for (int c = 0; c < C; ++c) diff += (image[p * C + c] - out[c]) * grad_image[p * C + c];
          push(d1, diff);
        }
      }
    }
  }
}

// The fragments of a visible face, for a kernel that resolves visibility itself (the CUDA
// rasterizer: an atomic minimum of depth and index per pixel, where draw_face tests and writes in
// face order). Calls visit(pixel, zp, w) for each pixel centre of the face's box that passes the
// edge test with its depth in (near, far); pixel is the flat [H, W] index. Columns x_lo + first,
// x_lo + first + stride, ... of each row are visited, so that `stride` threads can share one face.
template <typename Visit>
NMR_HD void for_each_fragment(const Face& f, int height, int width, float near, float far, int first,
                              int stride, Visit&& visit) {
  if (!f.visible) return;
  int x_lo, x_hi, y_lo, y_hi;
  pixel_span(fminf(f.x[0], fminf(f.x[1], f.x[2])), fmaxf(f.x[0], fmaxf(f.x[1], f.x[2])), width, &x_lo, &x_hi);
  pixel_span(fminf(f.y[0], fminf(f.y[1], f.y[2])), fmaxf(f.y[0], fmaxf(f.y[1], f.y[2])), height, &y_lo, &y_hi);
  for (int yi = y_lo; yi <= y_hi; ++yi) {
    for (int xi = x_lo + first; xi <= x_hi; xi += stride) {
      const float xp = static_cast<float>(xi);
      const float yp = static_cast<float>(yi);
      if (!covers(f, xp, yp)) continue;
      float w[3];
      const float zp = interpolate(f, xp, yp, w);
      if (!(zp > near && zp < far)) continue;
      visit(static_cast<int64_t>(yi) * width + xi, zp, w);
    }
  }
}

}  // namespace nmr
