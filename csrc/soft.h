// Soft rasterization (SoftRas, Liu et al. 2019; GenDR, Petersen et al. 2022) on the shared core:
// per face and per pixel, for the CPU handlers and the CUDA kernels alike.
//
// A face's coverage of a pixel is D = F(-dist / sigma), with dist the signed squared distance from
// the pixel centre to the face in NDC units (negative inside) and F the CDF of a smoothing
// distribution. Here q = 1 - D = F(dist / sigma) is what is computed and aggregated: all the
// distributions are symmetric, so q is F at the other sign, computed without the cancellation
// of 1 - D where D is close to 1.
//
// Only faces with coverage above `threshold` take part; since D decreases with dist, they lie
// within dist < reach * sigma of the face, reach = -F^-1(threshold) (given by the Python layer,
// which has the inverse CDFs), so a face visits only its box enlarged by sqrt(reach * sigma).
#pragma once

#include "nmr_core.h"

namespace nmr {

enum class Distribution : int32_t { kLogistic = 0, kGaussian = 1, kUniform = 2, kCauchy = 3 };
enum class Aggregation : int32_t { kProbabilistic = 0, kMax = 1 };

// F(x), F(-x) = 1 - F(x) and the density f(x) for one distribution, each accurate in the tails
// (relative error): the smaller of F(x) and F(-x) is computed directly, the other as 1 minus it.
struct Cdf {
  float F, F_neg, f;
};

NMR_HD Cdf cdf(Distribution d, float x) {
  const float a = fabsf(x);
  float small, f;  // F(-|x|), f(x)
  switch (d) {
    case Distribution::kLogistic: {
      // e^-|x| cannot overflow; f = F(x) F(-x).
      const float e = expf(-a);
      small = e / (1.f + e);
      f = small * (1.f / (1.f + e));
      break;
    }
    case Distribution::kGaussian: {
      const float kInvSqrt2 = 0.70710678f, kInvSqrt2Pi = 0.39894228f;
      small = 0.5f * erfcf(a * kInvSqrt2);
      f = kInvSqrt2Pi * expf(-0.5f * x * x);
      break;
    }
    case Distribution::kUniform:  // Uniform on [-1/2, 1/2].
      small = fmaxf(0.5f - a, 0.f);
      f = a < 0.5f ? 1.f : 0.f;
      break;
    case Distribution::kCauchy: {
      const float kInvPi = 0.31830989f;
      // 1/2 - atan(a) / pi cancels for a >> 1; there it equals atan(1 / a) / pi.
      small = a > 1.f ? atanf(1.f / a) * kInvPi : 0.5f - atanf(a) * kInvPi;
      f = kInvPi / (1.f + x * x);
      break;
    }
    default:
      small = f = NAN;
  }
  const float big = 1.f - small;
  return x < 0.f ? Cdf{small, big, f} : Cdf{big, small, f};
}

// The settings of one soft rasterization. `reach` is -F^-1(threshold): coverage exceeds
// threshold exactly where dist < reach * sigma.
struct SoftParams {
  int height, width;
  float near, far;  // Pixels whose depth on the face is not strictly between them are dropped.
  float threshold;  // Coverage at or below it does not take part.
  float reach;
  Distribution distribution;
  Aggregation aggregation;
};

// A face set up for soft rasterization: its pixel-space form, the pixels it can reach, and
// whether every point of it lies within (near, far) so that the per-pixel depth test is moot.
struct SoftFace {
  Face f;
  PixelRect box;
  bool in_depth;
};

// Only front faces take part, as in the hard rasterizer (Face::visible).
NMR_HD SoftFace setup_soft_face(const float* fv, float sigma, const SoftParams& s) {
  SoftFace sf;
  sf.f = setup_face(fv, s.height, s.width);
  sf.box = PixelRect{0, -1, 0, -1};
  sf.in_depth = false;
  if (!sf.f.visible || !(sigma > 0.f)) {
    sf.f.visible = false;
    return sf;
  }
  const float* x = sf.f.x;
  const float* y = sf.f.y;
  // The reach in pixels, 0.1% and 0.01 pixels wider so that rounding in dist cannot put a pixel
  // that passes the threshold outside the box.
  const float r = sqrtf(fmaxf(s.reach * sigma, 0.f));
  const float rx = r * 0.5f * s.width * 1.001f + 0.01f, ry = r * 0.5f * s.height * 1.001f + 0.01f;
  pixel_span(fminf(x[0], fminf(x[1], x[2])) - rx, fmaxf(x[0], fmaxf(x[1], x[2])) + rx, s.width, &sf.box.x_lo,
             &sf.box.x_hi);
  pixel_span(fminf(y[0], fminf(y[1], y[2])) - ry, fmaxf(y[0], fmaxf(y[1], y[2])) + ry, s.height, &sf.box.y_lo,
             &sf.box.y_hi);
  // zp is a weighted harmonic mean of the corner depths: between them when all are positive.
  sf.in_depth = true;
  for (int k = 0; k < 3; ++k) sf.in_depth = sf.in_depth && sf.f.z[k] > s.near && sf.f.z[k] < s.far;
  return sf;
}

// One face at one pixel: its distance, x = dist / sigma, and q = 1 - coverage with its density.
struct SoftSample {
  int xi, yi;
  NearestEdge edge;
  float x;
  Cdf q;
};

// Whether face sf takes part at pixel (xi, yi) (coverage above threshold, depth in range), and
// its sample there.
NMR_HD bool soft_sample(const SoftFace& sf, int xi, int yi, float sigma, const SoftParams& s,
                        SoftSample* out) {
  out->xi = xi;
  out->yi = yi;
  out->x = signed_dist2(sf.f, static_cast<float>(xi), static_cast<float>(yi), s.height, s.width, &out->edge) /
           sigma;
  // Coverage F(-x) > threshold exactly where x < reach; F(-x) itself decides, this cheaper test
  // (0.1% wide of the cut for rounding) skips the pixels far beyond it.
  if (!(out->x < s.reach * 1.001f)) return false;
  out->q = cdf(s.distribution, out->x);
  if (!(out->q.F_neg > s.threshold)) return false;
  if (!sf.in_depth) {
    float w[3];
    const float zp = interpolate(sf.f, static_cast<float>(xi), static_cast<float>(yi), w);
    if (!(zp > s.near && zp < s.far)) return false;
  }
  return true;
}

// Per-pixel accumulators of the silhouette: probabilistic keeps the sum of log q over the faces
// with q > 0 (`acc`) and the count of those with q == 0 (`count`: coverage 1 in float); max keeps
// the least q (`acc`) and its face (`count`, the lowest index among equal q; -1 for none).
NMR_HD void soft_init(Aggregation a, float* acc, int32_t* count) {
  *acc = a == Aggregation::kProbabilistic ? 0.f : 1.f;
  *count = a == Aggregation::kProbabilistic ? 0 : -1;
}

// Adds face `index` with sample q; faces of one pixel must come in increasing index order for max.
NMR_HD void soft_add(Aggregation a, float q, int32_t index, float* acc, int32_t* count) {
  if (a == Aggregation::kProbabilistic) {
    if (q > 0.f)
      *acc += logf(q);
    else
      ++*count;
  } else if (q < *acc) {
    *acc = q;
    *count = index;
  }
}

// alpha = 1 - prod q (probabilistic) or 1 - min q (max).
NMR_HD float soft_alpha(Aggregation a, float acc, int32_t count) {
  if (a == Aggregation::kProbabilistic) return count > 0 ? 1.f : 1.f - expf(acc);
  return 1.f - acc;
}

// d alpha / d q of face `index` with sample q at a pixel with accumulators (acc, count):
// probabilistic -prod of the other faces' q (0 when another face has q == 0), max -1 for the
// face that holds the minimum.
NMR_HD float soft_dalpha_dq(Aggregation a, float q, int32_t index, float acc, int32_t count) {
  if (a == Aggregation::kMax) return count == index ? -1.f : 0.f;
  // exp(acc) / q is the product of the others' q, unless exp(acc) underflows (then the tiny q
  // of this face may be what made it so).
  const float kExpFloor = -80.f;  // e^-80 ~ 1.8e-35: a normal float
  if (q > 0.f) return count == 0 ? -(acc > kExpFloor ? expf(acc) / q : expf(acc - logf(q))) : 0.f;
  return count == 1 ? -expf(acc) : 0.f;
}

// Adds the gradient of face sf's coverage at one pixel, given g_q = d loss / d q there, to its
// 9 vertex floats (x and y; z moves only the depth test) and to sigma: q = F(dist / sigma).
NMR_HD void soft_sample_grad(const SoftFace& sf, const SoftSample& smp, float g_q, float sigma,
                             const SoftParams& s, float* grad, float* grad_sigma) {
  const float g_x = g_q * smp.q.f;  // d loss / d x
  // dist = -dist2 inside the face.
  const float g_dist2 = smp.x < 0.f ? -g_x / sigma : g_x / sigma;
  nearest_edge_grad(sf.f, static_cast<float>(smp.xi), static_cast<float>(smp.yi), s.height, s.width, smp.edge,
                    g_dist2, grad);
  *grad_sigma -= g_x * smp.x / sigma;
}

// The tangent of alpha at one pixel from face sf's sample, given d alpha / d q there and the face's
// tangent (its 9 vertex floats', then sigma's): soft_sample_grad's gradient dotted with it, so
// that forward mode is exactly the transpose of the backward pass.
NMR_HD float soft_sample_tangent(const SoftFace& sf, const SoftSample& smp, float dq, float sigma,
                                 const SoftParams& s, const float* tangent) {
  float g[10] = {};
  soft_sample_grad(sf, smp, dq, sigma, s, g, g + 9);
  float t = 0.f;
  for (int k = 0; k < 10; ++k) t += g[k] * tangent[k];
  return t;
}

// Soft colours (SoftRas): a softmax over the faces in reach and the background, each face f weighted
// by D_f exp(a_f) with a_f = zn_f / gamma, zn = (far - zp) / (far - near) its normalised inverse
// depth at the pixel (1 at near, 0 at far), and the background by exp(kBackgroundDepth / gamma).
// A face's colour at a pixel is its texture cube sampled at the pixel's barycentrics clamped to the
// face (as the depth zp is), so a face colours the pixels around it with its nearest colours.
constexpr float kBackgroundDepth = 1e-3f;  // SoftRas's eps: the background just before `far`.

struct ColorParams {
  SoftParams soft;
  Texture tex;
  float bg[3];  // Background colour.
};

// Floats of one face's gradient besides its cube's: its 9 vertex floats, its parts of sigma's and
// gamma's, and its barycentric map's 9 (zero without a map).
constexpr int kColorGradFloats = 20;

// One face at one pixel for the colours: its coverage sample, its clamped barycentrics w and depth
// zp there, and its softmax logit a.
struct ColorSample {
  SoftSample smp;
  float w[3];
  float zp, a;
};

// Whether face sf takes part at pixel (xi, yi) (as for the silhouettes), and its sample there.
NMR_HD bool color_sample(const SoftFace& sf, int xi, int yi, float sigma, float gamma, const SoftParams& s,
                         ColorSample* out) {
  if (!soft_sample(sf, xi, yi, sigma, s, &out->smp)) return false;
  out->zp = interpolate(sf.f, static_cast<float>(xi), static_cast<float>(yi), out->w);
  out->a = (s.far - out->zp) / (s.far - s.near) / gamma;
  return true;
}

// Per-pixel state of the colours [5]: rgb (the sum of weighted colours until color_finish), m (the
// largest logit, background included) and s (the sum of the weights divided by exp(m)).
NMR_HD void color_init_max(float gamma, float* px) { px[3] = kBackgroundDepth / gamma; }

NMR_HD void color_init_sum(const ColorParams& c, float gamma, float* px) {
  px[4] = expf(kBackgroundDepth / gamma - px[3]);
  for (int ch = 0; ch < 3; ++ch) px[ch] = px[4] * c.bg[ch];
}

// A face's weight divided by exp(m), and its colour.
NMR_HD float color_weight(const ColorSample& cs, float m) { return cs.smp.q.F_neg * expf(cs.a - m); }

NMR_HD void color_finish(float* px) {
  for (int ch = 0; ch < 3; ++ch) px[ch] /= px[4];
}

// Trilinear weights' derivatives in the three texture coordinates at a tap: d tw_c / d t_k.
NMR_HD void tap_slopes(const float* frac, int c, float* slope) {
  for (int k = 0; k < 3; ++k) {
    float v = ((c >> k) & 1) ? 1.f : -1.f;
    for (int j = 0; j < 3; ++j)
      if (j != k) v *= ((c >> j) & 1) ? frac[j] : 1.f - frac[j];
    slope[k] = v;
  }
}

// Gradient of one face's contribution at one pixel. With u = D exp(a - m) / s its weight, rgb the
// pixel's colour and G the incoming gradient: d rgb / d C = u, and the softmax gives
// k = u G.(C - rgb) as the gradient of the face's log-weight log D + a. `grad` receives the face's
// kColorGradFloats: 9 vertex floats, sigma, gamma, then its `map`'s 9 (the face's barycentrics
// mapped as in texture_coords; null for none); add_tex(i, v) adds v to float i of its cube's gradient.
template <typename AddTex>
NMR_HD void color_grad(const SoftFace& sf, const float* face, const float* texture, const float* map,
                       const ColorSample& cs, const float* px, const float* G, float sigma, float gamma,
                       const ColorParams& c, float* grad, AddTex&& add_tex) {
  const SoftParams& s = c.soft;
  const float D = cs.smp.q.F_neg;
  const float u = D * expf(cs.a - px[3]) / px[4];
  int32_t idx[8];
  float tw[8];
  texture_taps(face, cs.w, cs.zp, c.tex, idx, tw, map);
  float C[3] = {0.f, 0.f, 0.f};
  for (int t = 0; t < 8; ++t)
    for (int ch = 0; ch < 3; ++ch) C[ch] += tw[t] * texture[3 * idx[t] + ch];
  float k = 0.f;
  for (int ch = 0; ch < 3; ++ch) k += G[ch] * (C[ch] - px[ch]);
  k *= u;
  for (int t = 0; t < 8; ++t)
    for (int ch = 0; ch < 3; ++ch)
      if (tw[t] != 0.f) add_tex(3 * idx[t] + ch, tw[t] * u * G[ch]);
  // Through the coverage D (q = 1 - D) and the logit a = (far - zp) / (far - near) / gamma.
  soft_sample_grad(sf, cs.smp, -k / D, sigma, s, grad, grad + 9);
  // d a / d gamma = -a / gamma. Summed over a pixel's faces and background, whose k sum to 0, the
  // terms cancel to far less than their size: they are taken relative to m (which any rounding
  // of m then cancels from) and a is recomputed in double (in float, far - zp alone rounds it
  // by ~1e-7 / gamma).
  const double a = (static_cast<double>(s.far) - cs.zp) / (static_cast<double>(s.far) - s.near) / gamma;
  grad[10] -= k * static_cast<float>((a - px[3]) / gamma);
  float g_zp = -k / (gamma * (s.far - s.near));
  // Through the texture coordinates t_k = w_k (T - 1) zp / z_k, clamped to [0, T - 1 - eps]: the
  // gradient of the perspective-correct barycentrics b_k = w_k zp / z_k (of the mapped ones with
  // a map).
  float g_b[3] = {0.f, 0.f, 0.f};
  const int T = c.tex.T;
  if (T > 1) {
    float frac[3], coords[3];
    bool live[3];
    texture_coords(face, cs.w, cs.zp, T, map, coords);
    for (int j = 0; j < 3; ++j) {
      const float t = coords[j];
      const float clamped = clampf(t, 0.f, T - 1 - c.tex.eps);
      live[j] = t == clamped;
      frac[j] = clamped - static_cast<float>(static_cast<int>(clamped));
    }
    for (int t = 0; t < 8; ++t) {
      float slope[3];
      tap_slopes(frac, t, slope);
      float gc = 0.f;
      for (int ch = 0; ch < 3; ++ch) gc += G[ch] * texture[3 * idx[t] + ch];
      for (int j = 0; j < 3; ++j)
        if (live[j]) g_b[j] += u * gc * slope[j] * (T - 1);
    }
  }
  // b_k = w_k zp / z_k and zp = 1 / sum(w_j / z_j), w the clamped, renormalised barycentrics.
  const float zp = cs.zp, zp2 = zp * zp;
  const float* z = sf.f.z;
  if (map) {
    // The mapped barycentrics sum_j b_j map[j][k]: g_b back to the face's own, and the map's part.
    float g_own[3];
    for (int j = 0; j < 3; ++j) {
      const float b = cs.w[j] * (zp / z[j]);
      g_own[j] = 0.f;
      for (int k = 0; k < 3; ++k) {
        grad[11 + 3 * j + k] += g_b[k] * b;
        g_own[j] += map[3 * j + k] * g_b[k];
      }
    }
    for (int j = 0; j < 3; ++j) g_b[j] = g_own[j];
  }
  for (int j = 0; j < 3; ++j) g_zp += g_b[j] * cs.w[j] / z[j];
  float g_w[3];
  for (int j = 0; j < 3; ++j) {
    g_w[j] = g_b[j] * zp / z[j] - g_zp * zp2 / z[j];
    grad[3 * j + 2] += -g_b[j] * cs.w[j] * zp / (z[j] * z[j]) + g_zp * zp2 * cs.w[j] / (z[j] * z[j]);
  }
  // w = clamp(r) / sum(clamp(r)) of the raw barycentrics r = edge / area (interpolate); the clamp
  // passes the gradient where 0 < r < 1, and r = M^-1 [xp, yp, 1] gives d r_k / d x_j =
  // -M^-1[k][0] r_j, d r_k / d y_j = -M^-1[k][1] r_j in pixels.
  const Face& f = sf.f;
  const float xp = static_cast<float>(cs.smp.xi), yp = static_cast<float>(cs.smp.yi);
  float r[3], sum = 0.f, dot = 0.f;
  for (int k2 = 0; k2 < 3; ++k2) {
    const int k1 = (k2 + 1) % 3, k3 = (k2 + 2) % 3;
    r[k2] = ((f.x[k3] - f.x[k1]) * (yp - f.y[k1]) - (f.y[k3] - f.y[k1]) * (xp - f.x[k1])) / f.area2;
    sum += clampf(r[k2], 0.f, 1.f);
    dot += g_w[k2] * cs.w[k2];
  }
  float along[2] = {0.f, 0.f};
  for (int j = 0; j < 3; ++j) {
    const float g_r = r[j] > 0.f && r[j] < 1.f ? (g_w[j] - dot) / sum : 0.f;
    for (int l = 0; l < 2; ++l) along[l] += g_r * inv_entry(f, j, l);
  }
  const float half[2] = {0.5f * s.width, 0.5f * s.height};  // d pixel / d NDC
  for (int j = 0; j < 3; ++j)
    for (int l = 0; l < 2; ++l) grad[3 * j + l] -= r[j] * along[l] * half[l];
}

// The tangent of a pixel's rgb from face sf's sample, added to out[3], given the face's tangent:
// its kColorGradFloats floats (as color_grad's gradient), then its cube's. Row ch of the Jacobian is
// color_grad's gradient for the unit gradient of channel ch, so forward mode is exactly the
// transpose of the backward pass, sample by sample.
NMR_HD void color_tangent(const SoftFace& sf, const float* face, const float* texture, const float* map,
                          const ColorSample& cs, const float* px, float sigma, float gamma,
                          const ColorParams& c, const float* tangent, float* out) {
  for (int ch = 0; ch < 3; ++ch) {
    float G[3] = {0.f, 0.f, 0.f};
    G[ch] = 1.f;
    float grad[kColorGradFloats] = {};
    float t = 0.f;
    color_grad(sf, face, texture, map, cs, px, G, sigma, gamma, c, grad,
               [&](int i, float v) { t += v * tangent[kColorGradFloats + i]; });
    for (int k = 0; k < kColorGradFloats; ++k) t += grad[k] * tangent[k];
    out[ch] += t;
  }
}

}  // namespace nmr
