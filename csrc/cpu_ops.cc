// XLA FFI handlers of nmr_jax for the CPU: the strategy of each target of targets.h. They check
// what only the data can tell (index ranges), walk the broadcast batch on XLA's intra-op thread
// pool, and call the per-face and per-pixel math of nmr_core.h.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "targets.h"

namespace ffi = xla::ffi;

namespace {

using nmr::ceil_div;
using nmr::F32;
using nmr::F32Out;
using nmr::S32;
using nmr::S32Out;

// Runs fn(i) for every i in [0, n) on XLA's intra-op thread pool and the calling thread, and
// returns when all have run. The pool has no join: the caller claims tasks like any worker and then
// waits only for tasks that workers already claimed, so a busy pool cannot deadlock it (workers that
// start late find nothing left; the shared state outlives the call for them). Tasks must write
// disjoint memory; which thread runs a task never changes what it computes.
template <typename Fn>
void parallel_for(ffi::ThreadPool& pool, int64_t n, const Fn& fn) {
  if (n <= 0) return;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &fn]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work]() { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done.load() == n; });
}

// Work split into tasks of a fixed size (never by the thread count, so that results cannot
// depend on it): rows of an image drawn by one task, faces of one Kato task.
constexpr int kBandRows = 16;
constexpr int64_t kFacesPerTask = 256;
constexpr int64_t kPixelsPerTask = 16384;  // Per-pixel targets: 64 KiB of floats a task and channel.

// Stable counting sort of items into buckets: for_each(emit) calls emit(bucket, item) for every
// (bucket, item) pair in item order (an item may go to several buckets); afterwards bucket k holds
// sorted[start[k], start[k + 1]) in that order.
template <typename T, typename ForEach>
void counting_sort(int64_t buckets, const ForEach& for_each, std::vector<int64_t>* start,
                   std::vector<T>* sorted) {
  start->assign(buckets + 1, 0);
  for_each([&](int64_t k, const T&) { ++(*start)[k + 1]; });
  for (int64_t k = 0; k < buckets; ++k) (*start)[k + 1] += (*start)[k];
  sorted->resize((*start)[buckets]);
  std::vector<int64_t> fill(start->begin(), start->end() - 1);
  for_each([&](int64_t k, const T& item) { (*sorted)[fill[k]++] = item; });
}

// A face index map holds -1 or a face of its batch element; anything else would index out of bounds.
ffi::Error check_face_index(const int32_t* face_index, int64_t n, int64_t num_faces) {
  for (int64_t p = 0; p < n; ++p) {
    if (face_index[p] < -1 || face_index[p] >= num_faces)
      return ffi::Error::InvalidArgument("nmr_jax: face_index holds " + std::to_string(face_index[p]) +
                                         ", outside [-1, " + std::to_string(num_faces) + ")");
  }
  return ffi::Error::Success();
}

// faces [*b, F, 3] int32 (vertex indices), vertices [*b, V, 3] -> face_vertices [*b, F, 3, 3].
// Indices are checked even when `checked` says the caller did: it costs nothing next to the copy.
ffi::Error GatherFacesImpl(ffi::ThreadPool, F32 vertices, S32 faces, int32_t, F32Out face_vertices) {
  NMR_PARSE(GatherShape, vertices, faces, face_vertices);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* v = vertices.typed_data() + bc.at(s.vertices, b) * s.V * 3;
    const int32_t* f = faces.typed_data() + bc.at(s.faces, b) * s.F * 3;
    float* fv = face_vertices->typed_data() + bc.at(s.out, b) * s.F * 9;
    for (int64_t i = 0; i < s.F * 3; ++i) {
      // Bail out on a corrupt index before it is used to read memory.
      if (f[i] < 0 || f[i] >= s.V) return nmr::bad_vertex_index(f[i], i / 3, s.V);
      for (int c = 0; c < 3; ++c) fv[3 * i + c] = v[3 * f[i] + c];
    }
  }
  return ffi::Error::Success();
}

// The transpose of GatherFaces: grad_vertices[v] = sum of grad_face_vertices over the corners that
// read v, summed over broadcast batch dimensions too.
ffi::Error ScatterFacesImpl(ffi::ThreadPool, S32 faces, F32 grad_face_vertices, F32Out grad_vertices) {
  NMR_PARSE(ScatterShape, faces, grad_face_vertices, grad_vertices);
  std::fill_n(grad_vertices->typed_data(), grad_vertices->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const int32_t* f = faces.typed_data() + bc.at(s.faces, b) * s.F * 3;
    const float* g = grad_face_vertices.typed_data() + bc.at(s.grad, b) * s.F * 9;
    float* gv = grad_vertices->typed_data() + bc.at(s.out, b) * s.V * 3;
    for (int64_t i = 0; i < s.F * 3; ++i) {
      if (f[i] < 0 || f[i] >= s.V) return nmr::bad_vertex_index(f[i], i / 3, s.V);
      for (int c = 0; c < 3; ++c) gv[3 * f[i] + c] += g[3 * i + c];
    }
  }
  return ffi::Error::Success();
}

// face_vertices [*b, F, 3, 3] -> face_index [*b, H, W] (-1 on background), weights [*b, H, W, 3]
// (0 on background), depth [*b, H, W] (far on background); row 0 is y = -1.
// Faces are set up once, binned into bands of kBandRows rows in increasing index order, and each
// band draws its faces in that order: every pixel sees the same sequence of depth tests as a
// sequential draw of all faces, so the maps (and the tie rule, lowest index wins) do not depend on
// the threads. Cost O(F + covered bounding-box pixels), memory O(F) beyond the outputs.
ffi::Error RasterizeImpl(ffi::ThreadPool pool, F32 face_vertices, int32_t height, int32_t width, float near,
                         float far, S32Out face_index, F32Out weights, F32Out depth) {
  NMR_PARSE(RasterShape, face_vertices, face_index);
  const nmr::RasterParams raster{height, width, near, far};
  const int64_t F = s.F, P = s.P;
  const int64_t bands = ceil_div(height, kBandRows);
  std::vector<nmr::Face> faces(F);
  std::vector<int64_t> band_start;
  std::vector<int32_t> band_faces;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const int64_t o = bc.at(s.maps, b) * P;
    parallel_for(pool, ceil_div(F, kFacesPerTask), [&](int64_t t) {
      for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f)
        faces[f] = nmr::setup_face(fv + 9 * f, height, width);
    });
    // The visible faces by the bands their rows reach, each band in increasing index order.
    counting_sort<int32_t>(
        bands,
        [&](auto&& emit) {
          for (int64_t f = 0; f < F; ++f) {
            const nmr::Face& face = faces[f];
            if (!face.visible) continue;
            int y_lo, y_hi;
            nmr::pixel_span(fminf(face.y[0], fminf(face.y[1], face.y[2])),
                            fmaxf(face.y[0], fmaxf(face.y[1], face.y[2])), height, &y_lo, &y_hi);
            if (y_lo > y_hi) continue;
            for (int64_t k = y_lo / kBandRows; k <= y_hi / kBandRows; ++k) emit(k, static_cast<int32_t>(f));
          }
        },
        &band_start, &band_faces);
    const nmr::Maps maps{face_index->typed_data() + o, weights->typed_data() + 3 * o,
                         depth->typed_data() + o};
    parallel_for(pool, bands, [&](int64_t k) {
      const int row_lo = static_cast<int>(k) * kBandRows;
      const int row_hi = std::min(row_lo + kBandRows, static_cast<int>(height)) - 1;
      const int64_t p0 = static_cast<int64_t>(row_lo) * width;
      const int64_t p1 = static_cast<int64_t>(row_hi + 1) * width;
      std::fill(maps.face_index + p0, maps.face_index + p1, -1);
      std::fill(maps.weights + 3 * p0, maps.weights + 3 * p1, 0.f);
      std::fill(maps.depth + p0, maps.depth + p1, far);
      for (int64_t i = band_start[k]; i < band_start[k + 1]; ++i)
        nmr::draw_face(faces[band_faces[i]], band_faces[i], raster, row_lo, row_hi, maps);
    });
  }
  return ffi::Error::Success();
}

// Trilinear texture sampling at covered pixels -> rgb [*b, H, W, 3], 0 on background.
ffi::Error SampleTexturesImpl(ffi::ThreadPool pool, F32 face_vertices, F32 textures, S32 face_index,
                              F32 weights, F32 depth, float eps, F32Out rgb) {
  NMR_PARSE(SampleShape, face_vertices, textures, face_index, rgb);
  const nmr::Texture texture{s.T, eps};
  const int64_t P = s.P;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * s.F * 9;
    const float* tex = textures.typed_data() + bc.at(s.tex, b) * s.F * s.cube;
    const int64_t q = bc.at(s.pix, b) * P;
    const int32_t* fi = face_index.typed_data() + q;
    if (auto err = check_face_index(fi, P, s.F); err.failure()) return err;
    float* out_rgb = rgb->typed_data() + bc.at(s.out, b) * P * 3;
    const int64_t W = nmr::dim(face_index.dimensions(), 1);
    const int64_t chunk = kBandRows * W;
    parallel_for(pool, ceil_div(P, chunk), [&](int64_t k) {
      for (int64_t p = k * chunk; p < std::min(P, (k + 1) * chunk); ++p) {
        if (fi[p] < 0) {
          for (int c = 0; c < 3; ++c) out_rgb[3 * p + c] = 0.f;
          continue;
        }
        nmr::sample_texture(fv + 9 * fi[p], tex + fi[p] * s.cube, weights.typed_data() + 3 * (q + p),
                            depth.typed_data()[q + p], texture, out_rgb + 3 * p);
      }
    });
  }
  return ffi::Error::Success();
}

// Transpose of the trilinear sampling: grad_textures [*b, F, T, T, T, 3].
ffi::Error SampleTexturesBwdImpl(ffi::ThreadPool, F32 face_vertices, S32 face_index, F32 weights, F32 depth,
                                 F32 grad_rgb, float eps, F32Out grad_textures) {
  NMR_PARSE(SampleBwdShape, face_vertices, face_index, grad_rgb, grad_textures);
  const nmr::Texture texture{s.T, eps};
  const int64_t P = s.P;
  std::fill_n(grad_textures->typed_data(), grad_textures->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * s.F * 9;
    const int64_t q = bc.at(s.pix, b) * P;
    const int32_t* fi = face_index.typed_data() + q;
    if (auto err = check_face_index(fi, P, s.F); err.failure()) return err;
    const float* g = grad_rgb.typed_data() + bc.at(s.grad, b) * P * 3;
    float* gt = grad_textures->typed_data() + bc.at(s.out, b) * s.F * s.cube;
    for (int64_t p = 0; p < P; ++p) {
      if (fi[p] < 0) continue;
      int32_t idx[8];
      float tw[8];
      nmr::texture_taps(fv + 9 * fi[p], weights.typed_data() + 3 * (q + p), depth.typed_data()[q + p],
                        texture, idx, tw);
      float* cell = gt + fi[p] * s.cube;
      for (int c = 0; c < 8; ++c)
        for (int ch = 0; ch < 3; ++ch) cell[3 * idx[c] + ch] += tw[c] * g[3 * p + ch];
    }
  }
  return ffi::Error::Success();
}

// Kato's backward, per batch element, in three passes, none of which writes where another task
// of it writes:
// 1. kato_in_scans: over chunks of faces, the in scans (added to the face's gradient at once) and
//    the list of out scans (the bulk of the work: each runs from an edge to the image border);
// 2. kato_out_scans: over bands of rows and of columns, the out scans of each line, with the line
//    in cache (a band is first copied into a planar scratch block so that lines read contiguously);
// 3. kato_apply_out_scans: over chunks of faces, the out scans' sums subtracted from their face's
//    gradient, in list order.
// A face's gradient is thus summed in an order fixed by the data alone, whatever the threads;
// a broadcast (reduced) output sums batch elements in increasing order.
struct KatoScan {
  nmr::KatoCrossing k;
  int32_t face;
  float sum[2];
};

// One batch element's inputs: face corners, face index map, image and its gradient [H, W, C].
struct KatoInputs {
  const float* fv;
  const int32_t* fi;
  const float* im;
  const float* g;
};

void kato_in_scans(ffi::ThreadPool& pool, const nmr::KatoShape& s, const KatoInputs& in, float eps, float* gf,
                   std::vector<std::vector<KatoScan>>* chunk_scans) {
  // Read in place here: the in scans are a few pixels long.
  const nmr::KatoImage image{
      s.H, s.W, s.C, in.fi, nmr::columns_of(in.im, in.g, s.W, s.C), nmr::rows_of(in.im, in.g, s.W, s.C), eps};
  parallel_for(pool, static_cast<int64_t>(chunk_scans->size()), [&](int64_t t) {
    std::vector<KatoScan>& scans = (*chunk_scans)[t];
    scans.clear();
    for (int64_t f = t * kFacesPerTask; f < std::min(s.F, (t + 1) * kFacesPerTask); ++f) {
      const nmr::Face face = nmr::setup_face(in.fv + 9 * f, s.H, s.W);
      const auto index = static_cast<int32_t>(f);
      nmr::kato_face_scans(face, index, image, nmr::LineRange{0, 1}, gf + 9 * f,
                           [&](const nmr::KatoCrossing& k) { scans.push_back({k, index, {0.f, 0.f}}); });
    }
  });
}

void kato_out_scans(ffi::ThreadPool& pool, const nmr::KatoShape& s, const KatoInputs& in, float eps,
                    std::vector<std::vector<KatoScan>>* chunk_scans) {
  const int H = s.H, W = s.W, C = s.C;
  // The out scans by line: the W columns, then the H rows.
  std::vector<int64_t> line_start;
  std::vector<KatoScan*> by_line;
  counting_sort<KatoScan*>(
      W + H,
      [&](auto&& emit) {
        for (auto& scans : *chunk_scans)
          for (KatoScan& scan : scans) emit(scan.k.axis == 0 ? scan.k.line : W + scan.k.line, &scan);
      },
      &line_start, &by_line);
  // A band of kBandRows columns (t < col_bands) or rows, copied into planar [line][c][d1] blocks
  // of the image and its gradient: each line is then read from cache, pixels contiguous.
  const int64_t col_bands = ceil_div(W, kBandRows);
  parallel_for(pool, col_bands + ceil_div(H, kBandRows), [&](int64_t t) {
    const int axis = t < col_bands ? 0 : 1;
    const int l0 = static_cast<int>(axis == 0 ? t : t - col_bands) * kBandRows;
    const int n_along = axis == 0 ? H : W;
    const int n = std::min(kBandRows, (axis == 0 ? W : H) - l0);
    std::vector<float> block_im(static_cast<size_t>(n) * C * n_along), block_g(block_im.size());
    for (int y = 0; y < (axis == 0 ? H : n); ++y)
      for (int x = 0; x < (axis == 0 ? n : W); ++x) {
        const int64_t src = ((axis == 0 ? y : l0 + y) * int64_t{W} + (axis == 0 ? l0 + x : x)) * C;
        const int line = axis == 0 ? x : y, d1 = axis == 0 ? y : x;
        for (int ch = 0; ch < C; ++ch) {
          const int64_t dst = (int64_t{line} * C + ch) * n_along + d1;
          block_im[dst] = in.im[src + ch];
          block_g[dst] = in.g[src + ch];
        }
      }
    const int first = axis == 0 ? l0 : W + l0;
    for (int line = 0; line < n; ++line) {
      const int64_t at = int64_t{line} * C * n_along;
      const nmr::ScanLine planar{block_im.data() + at, block_g.data() + at, 1, n_along};
      for (int64_t i = line_start[first + line]; i < line_start[first + line + 1]; ++i)
        nmr::kato_out_scan(by_line[i]->k, planar, C, n_along, eps, by_line[i]->sum);
    }
  });
}

void kato_apply_out_scans(ffi::ThreadPool& pool, const std::vector<std::vector<KatoScan>>& chunk_scans,
                          float* gf) {
  parallel_for(pool, static_cast<int64_t>(chunk_scans.size()), [&](int64_t t) {
    for (const KatoScan& scan : chunk_scans[t])
      nmr::kato_apply(scan.k, scan.sum, gf + 9 * int64_t{scan.face});
  });
}

// Kato's approximate gradient of face x, y from image [*b, H, W, C] and its gradient.
ffi::Error KatoBwdImpl(ffi::ThreadPool pool, F32 face_vertices, S32 face_index, F32 image, F32 grad_image,
                       float eps, F32Out grad_face_vertices) {
  NMR_PARSE(KatoShape, face_vertices, face_index, image, grad_image, grad_face_vertices);
  const int64_t P = s.P;
  std::fill_n(grad_face_vertices->typed_data(), grad_face_vertices->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    if (auto err = check_face_index(face_index.typed_data() + bc.at(s.pix, b) * P, P, s.F); err.failure())
      return err;
  }
  std::vector<std::vector<KatoScan>> chunk_scans(ceil_div(s.F, kFacesPerTask));
  for (int64_t b = 0; b < bc.size(); ++b) {
    const KatoInputs in{face_vertices.typed_data() + bc.at(s.fv, b) * s.F * 9,
                        face_index.typed_data() + bc.at(s.pix, b) * P,
                        image.typed_data() + bc.at(s.image, b) * P * s.C,
                        grad_image.typed_data() + bc.at(s.grad, b) * P * s.C};
    float* gf = grad_face_vertices->typed_data() + bc.at(s.out, b) * s.F * 9;
    kato_in_scans(pool, s, in, eps, gf, &chunk_scans);
    kato_out_scans(pool, s, in, eps, &chunk_scans);
    kato_apply_out_scans(pool, chunk_scans, gf);
  }
  return ffi::Error::Success();
}

// Gradient of the fragments (weights, perspective-correct barycentrics, depth) w.r.t. face x, y, z,
// the face index held fixed. Faces are summed over pixels in pixel order (deterministic).
ffi::Error FragmentsBwdImpl(ffi::ThreadPool, F32 face_vertices, S32 face_index, F32 weights, F32 depth,
                            F32 grad_weights, F32 grad_bary, F32 grad_depth, F32Out grad_face_vertices) {
  NMR_PARSE(FragmentsBwdShape, face_vertices, face_index, grad_weights, grad_bary, grad_depth,
            grad_face_vertices);
  const int64_t P = s.P;
  std::fill_n(grad_face_vertices->typed_data(), grad_face_vertices->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * s.F * 9;
    const int64_t q = bc.at(s.pix, b) * P;
    const int32_t* fi = face_index.typed_data() + q;
    if (auto err = check_face_index(fi, P, s.F); err.failure()) return err;
    const float* gw = s.has_w ? grad_weights.typed_data() + bc.at(s.grad_w, b) * P * 3 : nullptr;
    const float* gb = s.has_bary ? grad_bary.typed_data() + bc.at(s.grad_bary, b) * P * 3 : nullptr;
    const float* gd = s.has_depth ? grad_depth.typed_data() + bc.at(s.grad_depth, b) * P : nullptr;
    float* gf = grad_face_vertices->typed_data() + bc.at(s.out, b) * s.F * 9;
    for (int64_t p = 0; p < P; ++p) {
      if (fi[p] < 0) continue;
      const nmr::FragmentGrads g = nmr::fragment_grads_at(gw, gb, gd, p);
      const nmr::Face face = nmr::setup_face(fv + 9 * fi[p], s.H, s.W);
      float grad[9];
      nmr::fragment_grad(face, weights.typed_data() + 3 * (q + p), depth.typed_data()[q + p], g, s.H, s.W,
                         grad);
      for (int k = 0; k < 9; ++k) gf[9 * fi[p] + k] += grad[k];
    }
  }
  return ffi::Error::Success();
}

// Face-corner attributes at the pixels: out [*b, H, W, C], 0 on background.
ffi::Error InterpolateImpl(ffi::ThreadPool pool, F32 attributes, S32 face_index, F32 bary, F32Out out) {
  NMR_PARSE(InterpolateShape, attributes, face_index, bary, out);
  const int64_t P = s.P;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* a = attributes.typed_data() + bc.at(s.attr, b) * s.F * 3 * s.C;
    const int32_t* fi = face_index.typed_data() + bc.at(s.pix, b) * P;
    if (auto err = check_face_index(fi, P, s.F); err.failure()) return err;
    const float* w = bary.typed_data() + bc.at(s.bary, b) * P * 3;
    float* o = out->typed_data() + bc.at(s.out, b) * P * s.C;
    parallel_for(pool, ceil_div(P, kPixelsPerTask), [&](int64_t k) {
      for (int64_t p = k * kPixelsPerTask; p < std::min(P, (k + 1) * kPixelsPerTask); ++p) {
        if (fi[p] < 0) {
          std::fill_n(o + p * s.C, s.C, 0.f);
          continue;
        }
        nmr::interpolate_corners(a, fi[p], w + 3 * p, s.C, o + p * s.C);
      }
    });
  }
  return ffi::Error::Success();
}

// Transpose of Interpolate: grad_attributes summed over the pixels of each face (in pixel order)
// and over broadcast batch dimensions; grad_bary per pixel.
ffi::Error InterpolateBwdImpl(ffi::ThreadPool, F32 attributes, S32 face_index, F32 bary, F32 grad_out,
                              F32Out grad_attributes, F32Out grad_bary) {
  NMR_PARSE(InterpolateBwdShape, attributes, face_index, bary, grad_out, grad_attributes, grad_bary);
  const int64_t P = s.P;
  const int C = s.C;
  std::fill_n(grad_attributes->typed_data(), grad_attributes->element_count(), 0.f);
  std::fill_n(grad_bary->typed_data(), grad_bary->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* a = attributes.typed_data() + bc.at(s.attr, b) * s.F * 3 * C;
    const int32_t* fi = face_index.typed_data() + bc.at(s.pix, b) * P;
    if (auto err = check_face_index(fi, P, s.F); err.failure()) return err;
    const float* w = bary.typed_data() + bc.at(s.bary, b) * P * 3;
    const float* g = grad_out.typed_data() + bc.at(s.grad, b) * P * C;
    float* ga = grad_attributes->typed_data() + bc.at(s.out_attr, b) * s.F * 3 * C;
    float* gw = grad_bary->typed_data() + bc.at(s.out_bary, b) * P * 3;
    for (int64_t p = 0; p < P; ++p) {
      if (fi[p] < 0) continue;
      const float* corner = a + fi[p] * 3 * C;
      float* g_corner = ga + fi[p] * 3 * C;
      for (int k = 0; k < 3; ++k) {
        float dot = 0.f;
        for (int c = 0; c < C; ++c) {
          dot += g[p * C + c] * corner[k * C + c];
          g_corner[k * C + c] += w[3 * p + k] * g[p * C + c];
        }
        gw[3 * p + k] += dot;
      }
    }
  }
  return ffi::Error::Success();
}

// An image sampled at uv: out [*b, H, W, C] (NaN at a non-finite uv).
ffi::Error SampleImageImpl(ffi::ThreadPool pool, F32 image, F32 uv, int32_t bilinear, int32_t wrap,
                           F32Out out) {
  NMR_PARSE(SampleImageShape, image, uv, out);
  const nmr::ImageSampler sampler{s.Ht, s.Wt, bilinear != 0, wrap != 0};
  const int64_t P = s.P;
  const int C = s.C;
  if (s.texels == 0) {  // Nothing to read: the Python layer rejects empty images; stay defined.
    std::fill_n(out->typed_data(), out->element_count(), NAN);
    return ffi::Error::Success();
  }
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* im = image.typed_data() + bc.at(s.image, b) * s.texels * C;
    const float* t = uv.typed_data() + bc.at(s.uv, b) * P * 2;
    float* o = out->typed_data() + bc.at(s.out, b) * P * C;
    parallel_for(pool, ceil_div(P, kPixelsPerTask), [&](int64_t k) {
      for (int64_t p = k * kPixelsPerTask; p < std::min(P, (k + 1) * kPixelsPerTask); ++p)
        nmr::sample_image(sampler, im, C, t[2 * p], t[2 * p + 1], o + p * C);
    });
  }
  return ffi::Error::Success();
}

// Transpose of SampleImage: grad_image summed over pixels (in pixel order) and broadcast batch
// dimensions, grad_uv per pixel (NaN at a non-finite uv, which adds nothing to the image).
ffi::Error SampleImageBwdImpl(ffi::ThreadPool, F32 image, F32 uv, F32 grad_out, int32_t bilinear,
                              int32_t wrap, F32Out grad_image, F32Out grad_uv) {
  NMR_PARSE(SampleImageBwdShape, image, uv, grad_out, grad_image, grad_uv);
  const nmr::ImageSampler sampler{s.Ht, s.Wt, bilinear != 0, wrap != 0};
  const int64_t P = s.P;
  const int C = s.C;
  std::fill_n(grad_image->typed_data(), grad_image->element_count(), 0.f);
  std::fill_n(grad_uv->typed_data(), grad_uv->element_count(), 0.f);
  if (s.texels == 0) return ffi::Error::Success();
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* im = image.typed_data() + bc.at(s.image, b) * s.texels * C;
    const float* t = uv.typed_data() + bc.at(s.uv, b) * P * 2;
    const float* g = grad_out.typed_data() + bc.at(s.grad, b) * P * C;
    float* gi = grad_image->typed_data() + bc.at(s.out_image, b) * s.texels * C;
    float* gt = grad_uv->typed_data() + bc.at(s.out_uv, b) * P * 2;
    for (int64_t p = 0; p < P; ++p) {
      const float* gp = g + p * C;
      bool any = false;  // background pixels, where the shader's output is replaced, have none
      for (int c = 0; c < C; ++c) any = any || gp[c] != 0.f;
      if (!any) {
        if (!nmr::finite_uv(t[2 * p], t[2 * p + 1])) gt[2 * p] = gt[2 * p + 1] = NAN;
        continue;
      }
      int64_t idx[4];
      float tw[4], du[4], dv[4];
      const int taps = nmr::image_taps(sampler, t[2 * p], t[2 * p + 1], idx, tw, du, dv);
      if (taps == 0) {
        gt[2 * p] = gt[2 * p + 1] = NAN;
        continue;
      }
      float g_u = 0.f, g_v = 0.f;
      for (int i = 0; i < taps; ++i) {
        const float* texel = im + idx[i] * C;
        float* g_texel = gi + idx[i] * C;
        float dot = 0.f;
        for (int c = 0; c < C; ++c) {
          g_texel[c] += tw[i] * gp[c];
          dot += gp[c] * texel[c];
        }
        g_u += du[i] * dot;
        g_v += dv[i] * dot;
      }
      gt[2 * p] += g_u;
      gt[2 * p + 1] += g_v;
    }
  }
  return ffi::Error::Success();
}

// The K nearest fragments per pixel (csrc/layers.h). Faces are set up once and binned by the bands
// of rows that their reach (box grown by the blur radius) spans, in increasing index order; each
// band inserts its faces' fragments into its pixels' lists in that order (insert_layer), so the
// lists do not depend on the threads. Then each slot's values are computed from its face. Cost
// O(F + reached pixels x list length + P K), memory O(F + P) beyond the outputs, which are stored
// top row first.
ffi::Error RasterizeLayersImpl(ffi::ThreadPool pool, F32 face_vertices, float near, float far,
                               float blur_radius, S32Out face_index, F32Out bary, F32Out bary_screen,
                               F32Out depth, F32Out dist) {
  NMR_PARSE(LayersShape, face_vertices, face_index);
  const nmr::LayerParams lp{{s.H, s.W, near, far}, blur_radius, s.K};
  const int64_t F = s.F, P = s.P, K = s.K;
  if (P * K == 0) return ffi::Error::Success();
  const int64_t bands = ceil_div(s.H, kBandRows);
  std::vector<nmr::Face> faces(F);
  std::vector<int32_t> filled(P);
  std::vector<int64_t> band_start;
  std::vector<int32_t> band_faces;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const int64_t o = bc.at(s.maps, b) * P * K;
    int32_t* fi = face_index->typed_data() + o;
    float* z = depth->typed_data() + o;
    parallel_for(pool, ceil_div(F, kFacesPerTask), [&](int64_t t) {
      for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f)
        faces[f] = nmr::setup_face(fv + 9 * f, s.H, s.W);
    });
    counting_sort<int32_t>(
        bands,
        [&](auto&& emit) {
          for (int64_t f = 0; f < F; ++f) {
            if (!faces[f].visible) continue;
            const nmr::PixelRect box = nmr::reach_box(faces[f], lp);
            if (box.y_lo > box.y_hi || box.x_lo > box.x_hi) continue;
            for (int64_t k = box.y_lo / kBandRows; k <= box.y_hi / kBandRows; ++k)
              emit(k, static_cast<int32_t>(f));
          }
        },
        &band_start, &band_faces);
    parallel_for(pool, bands, [&](int64_t k) {
      const int row_lo = static_cast<int>(k) * kBandRows;
      const int row_hi = std::min(row_lo + kBandRows, s.H) - 1;
      // The band's rows, stored top row first: rows H - 1 - row_hi to H - 1 - row_lo.
      const int64_t p0 = static_cast<int64_t>(s.H - 1 - row_hi) * s.W;
      const int64_t p1 = static_cast<int64_t>(s.H - row_lo) * s.W;
      std::fill(fi + p0 * K, fi + p1 * K, -1);
      std::fill(z + p0 * K, z + p1 * K, far);
      std::fill(filled.begin() + p0, filled.begin() + p1, 0);
      for (int64_t i = band_start[k]; i < band_start[k + 1]; ++i) {
        const int32_t f = band_faces[i];
        nmr::PixelRect rect = nmr::reach_box(faces[f], lp);
        rect.y_lo = std::max(rect.y_lo, row_lo);
        rect.y_hi = std::min(rect.y_hi, row_hi);
        nmr::for_each_layer_fragment(faces[f], lp, rect, [&](int64_t p, float zp, const float*) {
          const int64_t q = nmr::top_first(p, s.H, s.W);
          nmr::insert_layer(zp, f, s.K, z + q * K, fi + q * K, &filled[q]);
        });
      }
    });
    float* ws = bary_screen->typed_data() + 3 * o;
    float* wb = bary->typed_data() + 3 * o;
    float* d = dist->typed_data() + o;
    parallel_for(pool, ceil_div(P, kPixelsPerTask), [&](int64_t t) {
      for (int64_t q = t * kPixelsPerTask; q < std::min(P, (t + 1) * kPixelsPerTask); ++q) {
        const int64_t p = nmr::top_first(q, s.H, s.W);
        for (int64_t j = q * K; j < (q + 1) * K; ++j) {
          if (fi[j] < 0) {
            std::fill_n(ws + 3 * j, 3, 0.f);
            std::fill_n(wb + 3 * j, 3, 0.f);
            d[j] = nmr::kNoDist;
            continue;
          }
          z[j] = nmr::layer_values(faces[fi[j]], lp.r, static_cast<int>(p % s.W), static_cast<int>(p / s.W),
                                   ws + 3 * j, wb + 3 * j, d + j);
        }
      }
    });
  }
  return ffi::Error::Success();
}

// Gradient of the layers' values w.r.t. face x, y, z, the face indices held fixed; faces summed
// over pixels and slots in that order (deterministic).
ffi::Error LayersBwdImpl(ffi::ThreadPool, F32 face_vertices, S32 face_index, F32 grad_bary_screen,
                         F32 grad_bary, F32 grad_depth, F32 grad_dist, F32Out grad_face_vertices) {
  NMR_PARSE(LayersBwdShape, face_vertices, face_index, grad_bary_screen, grad_bary, grad_depth, grad_dist,
            grad_face_vertices);
  const nmr::LayerGradMaps grads{grad_bary_screen.typed_data(), grad_bary.typed_data(),
                                 grad_depth.typed_data(), grad_dist.typed_data()};
  const int64_t PK = s.P * s.K;
  const nmr::RasterParams r{s.H, s.W, 0.f, 0.f};  // near and far play no part in the gradient
  std::fill_n(grad_face_vertices->typed_data(), grad_face_vertices->element_count(), 0.f);
  std::vector<int64_t> at(bc.operands());
  for (int64_t b = 0; b < bc.size(); ++b) {
    for (int id = 0; id < bc.operands(); ++id) at[id] = bc.at(id, b);
    const float* fv = face_vertices.typed_data() + at[s.fv] * s.F * 9;
    const int32_t* fi = face_index.typed_data() + at[s.pix] * PK;
    if (auto err = check_face_index(fi, PK, s.F); err.failure()) return err;
    const nmr::LayerGradMaps g = s.element(grads, at.data());
    float* gf = grad_face_vertices->typed_data() + at[s.out] * s.F * 9;
    for (int64_t j = 0; j < PK; ++j) {
      if (fi[j] < 0) continue;
      const int64_t p = nmr::top_first(j / s.K, s.H, s.W);
      const nmr::Face face = nmr::setup_face(fv + 9 * fi[j], s.H, s.W);
      nmr::layer_grad(face, r, static_cast<int>(p % s.W), static_cast<int>(p / s.W),
                      nmr::layer_grads_at(g, j), gf + 9 * fi[j]);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// Soft silhouettes (soft.h). Forward: the faces set up with their batch element's sigma, binned
// into bands of rows by the rows they reach, each band adding its faces in increasing index order
// into per-pixel accumulators (so the result does not depend on the threads), then alpha per
// pixel. Cost O(F + reached pixels), memory O(F) beyond the maps.
namespace {

// Faces of one batch element set up for soft rasterization and binned into bands of rows.
struct SoftBands {
  std::vector<nmr::SoftFace> faces;
  std::vector<int64_t> start;
  std::vector<int32_t> items;
};

void bin_soft_faces(ffi::ThreadPool& pool, const float* fv, int64_t F, float sigma,
                    const nmr::SoftParams& params, SoftBands* out) {
  out->faces.resize(F);
  parallel_for(pool, ceil_div(F, kFacesPerTask), [&](int64_t t) {
    for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f)
      out->faces[f] = nmr::setup_soft_face(fv + 9 * f, sigma, params);
  });
  counting_sort<int32_t>(
      ceil_div(params.height, kBandRows),
      [&](auto&& emit) {
        for (int64_t f = 0; f < F; ++f) {
          const nmr::PixelRect& box = out->faces[f].box;
          if (!out->faces[f].f.visible || box.x_lo > box.x_hi || box.y_lo > box.y_hi) continue;
          for (int64_t k = box.y_lo / kBandRows; k <= box.y_hi / kBandRows; ++k)
            emit(k, static_cast<int32_t>(f));
        }
      },
      &out->start, &out->items);
}

ffi::Error SoftSilhouettesImpl(ffi::ThreadPool pool, F32 face_vertices, F32 sigma, int32_t height,
                               int32_t width, float near, float far, float threshold, float reach,
                               int32_t distribution, int32_t aggregation, F32Out alpha, F32Out acc,
                               S32Out count) {
  NMR_PARSE(SoftShape, face_vertices, sigma, alpha);
  const nmr::SoftParams params =
      nmr::soft_params(height, width, near, far, threshold, reach, distribution, aggregation);
  const int64_t F = s.F, P = s.P;
  SoftBands bands;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const float sig = sigma.typed_data()[bc.at(s.sigma, b)];
    const int64_t o = bc.at(s.maps, b) * P;
    bin_soft_faces(pool, fv, F, sig, params, &bands);
    float* a = acc->typed_data() + o;
    int32_t* c = count->typed_data() + o;
    float* out = alpha->typed_data() + o;
    parallel_for(pool, ceil_div(height, kBandRows), [&](int64_t k) {
      const int row_lo = static_cast<int>(k) * kBandRows;
      const int row_hi = std::min(row_lo + kBandRows, static_cast<int>(height)) - 1;
      for (int64_t p = int64_t{row_lo} * width; p < int64_t{row_hi + 1} * width; ++p)
        nmr::soft_init(params.aggregation, a + p, c + p);
      for (int64_t i = bands.start[k]; i < bands.start[k + 1]; ++i) {
        const int32_t f = bands.items[i];
        const nmr::SoftFace& face = bands.faces[f];
        for (int yi = std::max(face.box.y_lo, row_lo); yi <= std::min(face.box.y_hi, row_hi); ++yi)
          for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
            nmr::SoftSample smp;
            if (!nmr::soft_sample(face, xi, yi, sig, params, &smp)) continue;
            const int64_t p = int64_t{yi} * width + xi;
            nmr::soft_add(params.aggregation, smp.q.F, f, a + p, c + p);
          }
      }
      for (int64_t p = int64_t{row_lo} * width; p < int64_t{row_hi + 1} * width; ++p)
        out[p] = nmr::soft_alpha(params.aggregation, a[p], c[p]);
    });
  }
  return ffi::Error::Success();
}

// Backward: each face streams over the pixels it reaches again, with the forward's accumulators
// telling what the other faces contribute; chunks of faces run in parallel, each face summing its
// own gradient in pixel order (deterministic).
ffi::Error SoftSilhouettesBwdImpl(ffi::ThreadPool pool, F32 face_vertices, F32 sigma, F32 acc, S32 count,
                                  F32 grad_alpha, int32_t height, int32_t width, float near, float far,
                                  float threshold, float reach, int32_t distribution, int32_t aggregation,
                                  F32Out grad) {
  NMR_PARSE(SoftBwdShape, face_vertices, sigma, acc, count, grad_alpha, grad);
  const nmr::SoftParams params =
      nmr::soft_params(height, width, near, far, threshold, reach, distribution, aggregation);
  const int64_t F = s.F, P = s.P;
  std::fill_n(grad->typed_data(), grad->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const float sig = sigma.typed_data()[bc.at(s.sigma, b)];
    const float* a = acc.typed_data() + bc.at(s.acc, b) * P;
    const int32_t* c = count.typed_data() + bc.at(s.count, b) * P;
    const float* g = grad_alpha.typed_data() + bc.at(s.linear, b) * P;
    float* out = grad->typed_data() + bc.at(s.out, b) * F * 10;
    parallel_for(pool, ceil_div(F, kFacesPerTask), [&](int64_t t) {
      for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f) {
        const nmr::SoftFace face = nmr::setup_soft_face(fv + 9 * f, sig, params);
        if (!face.f.visible) continue;
        float* gf = out + 10 * f;
        for (int yi = face.box.y_lo; yi <= face.box.y_hi; ++yi)
          for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
            const int64_t p = int64_t{yi} * width + xi;
            if (g[p] == 0.f) continue;
            nmr::SoftSample smp;
            if (!nmr::soft_sample(face, xi, yi, sig, params, &smp)) continue;
            const float dq =
                nmr::soft_dalpha_dq(params.aggregation, smp.q.F, static_cast<int32_t>(f), a[p], c[p]);
            if (dq != 0.f) nmr::soft_sample_grad(face, smp, g[p] * dq, sig, params, gf, gf + 9);
          }
      }
    });
  }
  return ffi::Error::Success();
}

// Forward mode: scheduled as the forward pass (bands of rows over their faces in index order, so
// the sums do not depend on the threads), each pixel summing its faces' tangents.
ffi::Error SoftSilhouettesJvpImpl(ffi::ThreadPool pool, F32 face_vertices, F32 sigma, F32 acc, S32 count,
                                  F32 tangent, int32_t height, int32_t width, float near, float far,
                                  float threshold, float reach, int32_t distribution, int32_t aggregation,
                                  F32Out out) {
  NMR_PARSE(SoftBwdShape, face_vertices, sigma, acc, count, tangent, out);
  const nmr::SoftParams params =
      nmr::soft_params(height, width, near, far, threshold, reach, distribution, aggregation);
  const int64_t F = s.F, P = s.P;
  SoftBands bands;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const float sig = sigma.typed_data()[bc.at(s.sigma, b)];
    const float* a = acc.typed_data() + bc.at(s.acc, b) * P;
    const int32_t* c = count.typed_data() + bc.at(s.count, b) * P;
    const float* t = tangent.typed_data() + bc.at(s.linear, b) * F * 10;
    float* o = out->typed_data() + bc.at(s.out, b) * P;
    bin_soft_faces(pool, fv, F, sig, params, &bands);
    parallel_for(pool, ceil_div(height, kBandRows), [&](int64_t k) {
      const int row_lo = static_cast<int>(k) * kBandRows;
      const int row_hi = std::min(row_lo + kBandRows, static_cast<int>(height)) - 1;
      std::fill(o + int64_t{row_lo} * width, o + int64_t{row_hi + 1} * width, 0.f);
      for (int64_t i = bands.start[k]; i < bands.start[k + 1]; ++i) {
        const int32_t f = bands.items[i];
        const nmr::SoftFace& face = bands.faces[f];
        for (int yi = std::max(face.box.y_lo, row_lo); yi <= std::min(face.box.y_hi, row_hi); ++yi)
          for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
            nmr::SoftSample smp;
            if (!nmr::soft_sample(face, xi, yi, sig, params, &smp)) continue;
            const int64_t p = int64_t{yi} * width + xi;
            const float dq = nmr::soft_dalpha_dq(params.aggregation, smp.q.F, f, a[p], c[p]);
            if (dq != 0.f) o[p] += nmr::soft_sample_tangent(face, smp, dq, sig, params, t + 10 * f);
          }
      }
    });
  }
  return ffi::Error::Success();
}

}  // namespace

// Soft colours (soft.h), scheduled as the soft silhouettes: bands of rows over their faces in index
// order, first the largest logit of each pixel, then the softmax's sums with it.
namespace {

// Visits the colour samples of band k's faces in index order: visit(f, sample, pixel).
template <typename Visit>
void each_color_sample(const SoftBands& bands, int64_t k, float sigma, float gamma,
                       const nmr::SoftParams& params, const Visit& visit) {
  const int row_lo = static_cast<int>(k) * kBandRows;
  const int row_hi = std::min(row_lo + kBandRows, params.height) - 1;
  for (int64_t i = bands.start[k]; i < bands.start[k + 1]; ++i) {
    const int32_t f = bands.items[i];
    const nmr::SoftFace& face = bands.faces[f];
    for (int yi = std::max(face.box.y_lo, row_lo); yi <= std::min(face.box.y_hi, row_hi); ++yi)
      for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
        nmr::ColorSample cs;
        if (nmr::color_sample(face, xi, yi, sigma, gamma, params, &cs))
          visit(f, cs, int64_t{yi} * params.width + xi);
      }
  }
}

ffi::Error SoftRgbImpl(ffi::ThreadPool pool, F32 face_vertices, F32 textures, F32 bary_map, F32 sigma_gamma,
                       int32_t height, int32_t width, float near, float far, float threshold, float reach,
                       int32_t distribution, float eps, float bg_r, float bg_g, float bg_b, F32Out out) {
  NMR_PARSE(ColorShape, face_vertices, textures, bary_map, sigma_gamma, out);
  const nmr::ColorParams c =
      nmr::color_params(height, width, near, far, threshold, reach, distribution, s.T, eps, bg_r, bg_g, bg_b);
  const int64_t F = s.F, P = s.P;
  SoftBands bands;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const float* tex = textures.typed_data() + bc.at(s.tex, b) * F * s.cube;
    const float* map = s.mapped ? bary_map.typed_data() + bc.at(s.map, b) * F * 9 : nullptr;
    const float sigma = sigma_gamma.typed_data()[2 * bc.at(s.params, b)];
    const float gamma = sigma_gamma.typed_data()[2 * bc.at(s.params, b) + 1];
    float* o = out->typed_data() + bc.at(s.out, b) * P * 5;
    bin_soft_faces(pool, fv, F, sigma, c.soft, &bands);
    parallel_for(pool, ceil_div(height, kBandRows), [&](int64_t k) {
      const int64_t p0 = k * kBandRows * width, p1 = std::min<int64_t>((k + 1) * kBandRows, height) * width;
      auto each_sample = [&](auto&& visit) {
        each_color_sample(bands, k, sigma, gamma, c.soft,
                          [&](int32_t f, const nmr::ColorSample& cs, int64_t p) { visit(f, cs, o + 5 * p); });
      };
      for (int64_t p = p0; p < p1; ++p) nmr::color_init_max(gamma, o + 5 * p);
      each_sample([&](int32_t, const nmr::ColorSample& cs, float* px) { px[3] = std::max(px[3], cs.a); });
      for (int64_t p = p0; p < p1; ++p) nmr::color_init_sum(c, gamma, o + 5 * p);
      each_sample([&](int32_t f, const nmr::ColorSample& cs, float* px) {
        const float e = nmr::color_weight(cs, px[3]);
        float rgb[3];
        nmr::sample_texture(fv + 9 * int64_t{f}, tex + f * s.cube, cs.w, cs.zp, c.tex, rgb,
                            map ? map + 9 * int64_t{f} : nullptr);
        px[4] += e;
        for (int ch = 0; ch < 3; ++ch) px[ch] += e * rgb[ch];
      });
      for (int64_t p = p0; p < p1; ++p) nmr::color_finish(o + 5 * p);
    });
  }
  return ffi::Error::Success();
}

// Backward: each face streams over the pixels it reaches again (chunks of faces in parallel, each
// face summing its gradient in pixel order).
ffi::Error SoftRgbBwdImpl(ffi::ThreadPool pool, F32 face_vertices, F32 textures, F32 bary_map,
                          F32 sigma_gamma, F32 out, F32 grad_rgb, int32_t height, int32_t width, float near,
                          float far, float threshold, float reach, int32_t distribution, float eps,
                          float bg_r, float bg_g, float bg_b, F32Out result) {
  NMR_PARSE(ColorBwdShape, face_vertices, textures, bary_map, sigma_gamma, out, grad_rgb, result);
  const nmr::ColorParams c =
      nmr::color_params(height, width, near, far, threshold, reach, distribution, s.T, eps, bg_r, bg_g, bg_b);
  constexpr int kParts = nmr::kColorGradFloats;
  const int64_t F = s.F, P = s.P, stride = kParts + s.cube;
  std::fill_n(result->typed_data(), result->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const float* tex = textures.typed_data() + bc.at(s.tex, b) * F * s.cube;
    const float* map = s.mapped ? bary_map.typed_data() + bc.at(s.map, b) * F * 9 : nullptr;
    const float sigma = sigma_gamma.typed_data()[2 * bc.at(s.params, b)];
    const float gamma = sigma_gamma.typed_data()[2 * bc.at(s.params, b) + 1];
    const float* o = out.typed_data() + bc.at(s.out, b) * P * 5;
    const float* g = grad_rgb.typed_data() + bc.at(s.linear, b) * P * 3;
    float* r = result->typed_data() + bc.at(s.result, b) * F * stride;
    parallel_for(pool, ceil_div(F, kFacesPerTask), [&](int64_t t) {
      for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f) {
        const nmr::SoftFace face = nmr::setup_soft_face(fv + 9 * f, sigma, c.soft);
        if (!face.f.visible) continue;
        // Summed in double: sigma's and gamma's terms cancel to far less than their size.
        double sum[kParts] = {};
        for (int yi = face.box.y_lo; yi <= face.box.y_hi; ++yi)
          for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
            const int64_t p = int64_t{yi} * width + xi;
            if (g[3 * p] == 0.f && g[3 * p + 1] == 0.f && g[3 * p + 2] == 0.f) continue;
            nmr::ColorSample cs;
            if (!nmr::color_sample(face, xi, yi, sigma, gamma, c.soft, &cs)) continue;
            float* cube = r + stride * f + kParts;
            float part[kParts] = {};
            nmr::color_grad(face, fv + 9 * f, tex + f * s.cube, map ? map + 9 * f : nullptr, cs, o + 5 * p,
                            g + 3 * p, sigma, gamma, c, part, [&](int i, float v) { cube[i] += v; });
            for (int k = 0; k < kParts; ++k) sum[k] += part[k];
          }
        for (int k = 0; k < kParts; ++k) r[stride * f + k] = static_cast<float>(sum[k]);
      }
    });
  }
  return ffi::Error::Success();
}

// Forward mode: scheduled as the forward pass (bands of rows over their faces in index order, so
// the sums do not depend on the threads), each pixel summing its faces' tangents.
ffi::Error SoftRgbJvpImpl(ffi::ThreadPool pool, F32 face_vertices, F32 textures, F32 bary_map,
                          F32 sigma_gamma, F32 out, F32 tangent, int32_t height, int32_t width, float near,
                          float far, float threshold, float reach, int32_t distribution, float eps,
                          float bg_r, float bg_g, float bg_b, F32Out result) {
  NMR_PARSE(ColorBwdShape, face_vertices, textures, bary_map, sigma_gamma, out, tangent, result);
  const nmr::ColorParams c =
      nmr::color_params(height, width, near, far, threshold, reach, distribution, s.T, eps, bg_r, bg_g, bg_b);
  const int64_t F = s.F, P = s.P, stride = nmr::kColorGradFloats + s.cube;
  SoftBands bands;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(s.fv, b) * F * 9;
    const float* tex = textures.typed_data() + bc.at(s.tex, b) * F * s.cube;
    const float* map = s.mapped ? bary_map.typed_data() + bc.at(s.map, b) * F * 9 : nullptr;
    const float sigma = sigma_gamma.typed_data()[2 * bc.at(s.params, b)];
    const float gamma = sigma_gamma.typed_data()[2 * bc.at(s.params, b) + 1];
    const float* o = out.typed_data() + bc.at(s.out, b) * P * 5;
    const float* t = tangent.typed_data() + bc.at(s.linear, b) * F * stride;
    float* r = result->typed_data() + bc.at(s.result, b) * P * 3;
    bin_soft_faces(pool, fv, F, sigma, c.soft, &bands);
    parallel_for(pool, ceil_div(height, kBandRows), [&](int64_t k) {
      const int64_t p0 = k * kBandRows * width, p1 = std::min<int64_t>((k + 1) * kBandRows, height) * width;
      std::fill(r + 3 * p0, r + 3 * p1, 0.f);
      each_color_sample(bands, k, sigma, gamma, c.soft,
                        [&](int32_t f, const nmr::ColorSample& cs, int64_t p) {
                          nmr::color_tangent(bands.faces[f], fv + 9 * int64_t{f}, tex + f * s.cube,
                                             map ? map + 9 * int64_t{f} : nullptr, cs, o + 5 * p, sigma,
                                             gamma, c, t + f * stride, r + 3 * p);
                        });
    });
  }
  return ffi::Error::Success();
}

}  // namespace

NMR_DEFINE_HANDLERS(Cpu, .Ctx<::xla::ffi::ThreadPool>());
NMR_DEFINE_LAYER_HANDLERS(Cpu, .Ctx<::xla::ffi::ThreadPool>());
