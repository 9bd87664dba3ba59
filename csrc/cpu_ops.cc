// XLA FFI handlers of nmr_jax for the CPU. They check what only the data can tell (index ranges),
// walk the broadcast batch, and call the per-face and per-pixel math of nmr_core.h.
// Shapes are checked by the Python layer (nmr_jax/_ffi.py) before any call is built.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "batch.h"
#include "nmr_core.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using S32Out = ffi::ResultBuffer<ffi::S32>;

int64_t dim(const ffi::AnyBuffer::Dimensions& dims, int from_end) { return dims[dims.size() - from_end]; }

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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
ffi::Error GatherFacesImpl(F32 vertices, S32 faces, F32Out face_vertices) {
  nmr::Broadcast bc;
  const int iv = bc.add(vertices.dimensions(), 2);
  const int jf = bc.add(faces.dimensions(), 2);
  const int out = bc.add(face_vertices->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t V = dim(vertices.dimensions(), 2);
  const int64_t F = dim(faces.dimensions(), 2);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* v = vertices.typed_data() + bc.at(iv, b) * V * 3;
    const int32_t* f = faces.typed_data() + bc.at(jf, b) * F * 3;
    float* fv = face_vertices->typed_data() + bc.at(out, b) * F * 9;
    for (int64_t i = 0; i < F * 3; ++i) {
      // Bail out on a corrupt index before it is used to read memory.
      if (f[i] < 0 || f[i] >= V)
        return ffi::Error::InvalidArgument("nmr_jax: faces holds vertex index " + std::to_string(f[i]) +
                                           " at face " + std::to_string(i / 3) + ", outside [0, " +
                                           std::to_string(V) + ") (V = number of vertices)");
      for (int c = 0; c < 3; ++c) fv[3 * i + c] = v[3 * f[i] + c];
    }
  }
  return ffi::Error::Success();
}

// The transpose of GatherFaces: grad_vertices[v] = sum of grad_face_vertices over the corners that
// read v, summed over broadcast batch dimensions too.
ffi::Error ScatterFacesImpl(S32 faces, F32 grad_face_vertices, F32Out grad_vertices) {
  nmr::Broadcast bc;
  const int jf = bc.add(faces.dimensions(), 2);
  const int ig = bc.add(grad_face_vertices.dimensions(), 3);
  const int out = bc.add(grad_vertices->dimensions(), 2);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t V = dim(grad_vertices->dimensions(), 2);
  const int64_t F = dim(faces.dimensions(), 2);
  std::fill_n(grad_vertices->typed_data(), grad_vertices->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const int32_t* f = faces.typed_data() + bc.at(jf, b) * F * 3;
    const float* g = grad_face_vertices.typed_data() + bc.at(ig, b) * F * 9;
    float* gv = grad_vertices->typed_data() + bc.at(out, b) * V * 3;
    for (int64_t i = 0; i < F * 3; ++i) {
      if (f[i] < 0 || f[i] >= V)
        return ffi::Error::InvalidArgument("nmr_jax: faces holds vertex index " + std::to_string(f[i]) +
                                           ", outside [0, " + std::to_string(V) + ")");
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
  nmr::Broadcast bc;
  const int ifv = bc.add(face_vertices.dimensions(), 3);
  const int out = bc.add(face_index->dimensions(), 2);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int64_t P = static_cast<int64_t>(height) * width;
  const int64_t bands = ceil_div(height, kBandRows);
  std::vector<nmr::Face> faces(F);
  std::vector<int64_t> band_start(bands + 1);
  std::vector<int32_t> band_faces;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(ifv, b) * F * 9;
    const int64_t o = bc.at(out, b) * P;
    parallel_for(pool, ceil_div(F, kFacesPerTask), [&](int64_t t) {
      for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f)
        faces[f] = nmr::setup_face(fv + 9 * f, height, width);
    });
    // Counting sort of the visible faces by the bands their rows reach; stable, so each band
    // lists its faces in increasing index order.
    auto band_range = [&](const nmr::Face& face, int64_t* lo, int64_t* hi) {
      int y_lo, y_hi;
      nmr::pixel_span(fminf(face.y[0], fminf(face.y[1], face.y[2])),
                      fmaxf(face.y[0], fmaxf(face.y[1], face.y[2])), height, &y_lo, &y_hi);
      *lo = y_lo / kBandRows;
      *hi = y_lo <= y_hi ? y_hi / kBandRows : *lo - 1;
    };
    std::fill(band_start.begin(), band_start.end(), 0);
    for (int64_t f = 0; f < F; ++f) {
      if (!faces[f].visible) continue;
      int64_t lo, hi;
      band_range(faces[f], &lo, &hi);
      for (int64_t k = lo; k <= hi; ++k) ++band_start[k + 1];
    }
    for (int64_t k = 0; k < bands; ++k) band_start[k + 1] += band_start[k];
    band_faces.resize(band_start[bands]);
    std::vector<int64_t> fill(band_start.begin(), band_start.end() - 1);
    for (int64_t f = 0; f < F; ++f) {
      if (!faces[f].visible) continue;
      int64_t lo, hi;
      band_range(faces[f], &lo, &hi);
      for (int64_t k = lo; k <= hi; ++k) band_faces[fill[k]++] = static_cast<int32_t>(f);
    }
    int32_t* fi = face_index->typed_data() + o;
    float* wt = weights->typed_data() + 3 * o;
    float* dp = depth->typed_data() + o;
    parallel_for(pool, bands, [&](int64_t k) {
      const int row_lo = static_cast<int>(k) * kBandRows;
      const int row_hi = std::min(row_lo + kBandRows, static_cast<int>(height)) - 1;
      const int64_t p0 = static_cast<int64_t>(row_lo) * width;
      const int64_t p1 = static_cast<int64_t>(row_hi + 1) * width;
      std::fill(fi + p0, fi + p1, -1);
      std::fill(wt + 3 * p0, wt + 3 * p1, 0.f);
      std::fill(dp + p0, dp + p1, far);
      for (int64_t i = band_start[k]; i < band_start[k + 1]; ++i)
        nmr::draw_face(faces[band_faces[i]], band_faces[i], height, width, near, far, row_lo, row_hi, fi, wt,
                       dp);
    });
  }
  return ffi::Error::Success();
}

// Trilinear texture sampling at covered pixels -> rgb [*b, H, W, 3], 0 on background.
ffi::Error SampleTexturesImpl(ffi::ThreadPool pool, F32 face_vertices, F32 textures, S32 face_index,
                              F32 weights, F32 depth, float eps, F32Out rgb) {
  nmr::Broadcast bc;
  const int ifv = bc.add(face_vertices.dimensions(), 3);
  const int it = bc.add(textures.dimensions(), 5);
  const int ipix = bc.add(face_index.dimensions(), 2);
  const int out = bc.add(rgb->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int T = static_cast<int>(dim(textures.dimensions(), 2));
  const int64_t cube = static_cast<int64_t>(T) * T * T * 3;
  const int64_t P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(ifv, b) * F * 9;
    const float* tex = textures.typed_data() + bc.at(it, b) * F * cube;
    const int64_t q = bc.at(ipix, b) * P;
    const int32_t* fi = face_index.typed_data() + q;
    if (auto err = check_face_index(fi, P, F); err.failure()) return err;
    float* out_rgb = rgb->typed_data() + bc.at(out, b) * P * 3;
    const int64_t W = dim(face_index.dimensions(), 1);
    const int64_t chunk = kBandRows * W;
    parallel_for(pool, ceil_div(P, chunk), [&](int64_t k) {
      for (int64_t p = k * chunk; p < std::min(P, (k + 1) * chunk); ++p) {
        if (fi[p] < 0) {
          for (int c = 0; c < 3; ++c) out_rgb[3 * p + c] = 0.f;
          continue;
        }
        nmr::sample_texture(fv + 9 * fi[p], tex + fi[p] * cube, weights.typed_data() + 3 * (q + p),
                            depth.typed_data()[q + p], T, eps, out_rgb + 3 * p);
      }
    });
  }
  return ffi::Error::Success();
}

// Transpose of the trilinear sampling: grad_textures [*b, F, T, T, T, 3].
ffi::Error SampleTexturesBwdImpl(F32 face_vertices, S32 face_index, F32 weights, F32 depth, F32 grad_rgb,
                                 float eps, F32Out grad_textures) {
  nmr::Broadcast bc;
  const int ifv = bc.add(face_vertices.dimensions(), 3);
  const int ipix = bc.add(face_index.dimensions(), 2);
  const int ig = bc.add(grad_rgb.dimensions(), 3);
  const int out = bc.add(grad_textures->dimensions(), 5);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int T = static_cast<int>(dim(grad_textures->dimensions(), 2));
  const int64_t cube = static_cast<int64_t>(T) * T * T * 3;
  const int64_t P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
  std::fill_n(grad_textures->typed_data(), grad_textures->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(ifv, b) * F * 9;
    const int64_t q = bc.at(ipix, b) * P;
    const int32_t* fi = face_index.typed_data() + q;
    if (auto err = check_face_index(fi, P, F); err.failure()) return err;
    const float* g = grad_rgb.typed_data() + bc.at(ig, b) * P * 3;
    float* gt = grad_textures->typed_data() + bc.at(out, b) * F * cube;
    for (int64_t p = 0; p < P; ++p) {
      if (fi[p] < 0) continue;
      int32_t idx[8];
      float tw[8];
      nmr::texture_taps(fv + 9 * fi[p], weights.typed_data() + 3 * (q + p), depth.typed_data()[q + p], T, eps,
                        idx, tw);
      float* cell = gt + fi[p] * cube;
      for (int c = 0; c < 8; ++c)
        for (int ch = 0; ch < 3; ++ch) cell[3 * idx[c] + ch] += tw[c] * g[3 * p + ch];
    }
  }
  return ffi::Error::Success();
}

// Kato's approximate gradient of face x, y from image [*b, H, W, C] and its gradient.
//
// Per batch element, three passes, none of which writes where another task of it writes:
// 1. over chunks of faces: the in scans (added to the face's gradient at once) and the list of
//    out scans (the bulk of the work: each runs from an edge to the image border);
// 2. over bands of rows and of columns: the out scans of each line, with the line in cache (a band
//    of columns is first copied into a transposed scratch block so that they read contiguously);
// 3. over chunks of faces: the out scans' sums subtracted from their face's gradient, in list order.
// A face's gradient is thus summed in an order fixed by the data alone, whatever the threads;
// a broadcast (reduced) output sums batch elements in increasing order.
ffi::Error KatoBwdImpl(ffi::ThreadPool pool, F32 face_vertices, S32 face_index, F32 image, F32 grad_image,
                       float eps, F32Out grad_face_vertices) {
  nmr::Broadcast bc;
  const int ifv = bc.add(face_vertices.dimensions(), 3);
  const int ipix = bc.add(face_index.dimensions(), 2);
  const int iim = bc.add(image.dimensions(), 3);
  const int ig = bc.add(grad_image.dimensions(), 3);
  const int out = bc.add(grad_face_vertices->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int H = static_cast<int>(dim(face_index.dimensions(), 2));
  const int W = static_cast<int>(dim(face_index.dimensions(), 1));
  const int C = static_cast<int>(dim(image.dimensions(), 1));
  const int64_t P = static_cast<int64_t>(H) * W;
  std::fill_n(grad_face_vertices->typed_data(), grad_face_vertices->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    if (auto err = check_face_index(face_index.typed_data() + bc.at(ipix, b) * P, P, F); err.failure())
      return err;
  }
  struct Scan {
    nmr::KatoCrossing k;
    int32_t face;
    float sum[2];
  };
  const int64_t n_chunks = ceil_div(F, kFacesPerTask);
  std::vector<std::vector<Scan>> chunk_scans(n_chunks);
  std::vector<int64_t> line_start(W + H + 1);  // Lines: the W columns, then the H rows.
  std::vector<Scan*> by_line;
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(ifv, b) * F * 9;
    const int32_t* fi = face_index.typed_data() + bc.at(ipix, b) * P;
    const float* im = image.typed_data() + bc.at(iim, b) * P * C;
    const float* g = grad_image.typed_data() + bc.at(ig, b) * P * C;
    float* gf = grad_face_vertices->typed_data() + bc.at(out, b) * F * 9;
    // Read in place here: the in scans are a few pixels long.
    const int64_t c = C;
    const nmr::ScanLines cols{im, g, c, W * c, 1}, rows{im, g, W * c, c, 1};
    parallel_for(pool, n_chunks, [&](int64_t t) {
      std::vector<Scan>& scans = chunk_scans[t];
      scans.clear();
      for (int64_t f = t * kFacesPerTask; f < std::min(F, (t + 1) * kFacesPerTask); ++f) {
        const nmr::Face face = nmr::setup_face(fv + 9 * f, H, W);
        const auto index = static_cast<int32_t>(f);
        nmr::kato_face_scans(face, index, H, W, C, fi, cols, rows, eps, gf + 9 * f,
                             [&](const nmr::KatoCrossing& k) { scans.push_back({k, index, {0.f, 0.f}}); });
      }
    });
    // Counting sort of the out scans by line.
    auto line_of = [&](const nmr::KatoCrossing& k) { return k.axis == 0 ? k.line : W + k.line; };
    std::fill(line_start.begin(), line_start.end(), 0);
    for (const auto& scans : chunk_scans)
      for (const Scan& s : scans) ++line_start[line_of(s.k) + 1];
    for (int64_t l = 0; l < W + H; ++l) line_start[l + 1] += line_start[l];
    by_line.resize(line_start[W + H]);
    std::vector<int64_t> fill(line_start.begin(), line_start.end() - 1);
    for (auto& scans : chunk_scans)
      for (Scan& s : scans) by_line[fill[line_of(s.k)]++] = &s;
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
            block_im[dst] = im[src + ch];
            block_g[dst] = g[src + ch];
          }
        }
      const int first = axis == 0 ? l0 : W + l0;
      for (int line = 0; line < n; ++line) {
        const int64_t at = int64_t{line} * C * n_along;
        for (int64_t i = line_start[first + line]; i < line_start[first + line + 1]; ++i)
          nmr::kato_out_scan(by_line[i]->k, block_im.data() + at, block_g.data() + at, 1, n_along, C, n_along,
                             eps, by_line[i]->sum);
      }
    });
    parallel_for(pool, n_chunks, [&](int64_t t) {
      for (const Scan& s : chunk_scans[t]) nmr::kato_apply(s.k, s.sum, gf + 9 * int64_t{s.face});
    });
  }
  return ffi::Error::Success();
}

// Gradient of the depth map w.r.t. face x, y, z, the face index held fixed.
ffi::Error DepthBwdImpl(F32 face_vertices, S32 face_index, F32 weights, F32 depth, F32 grad_depth,
                        F32Out grad_face_vertices) {
  nmr::Broadcast bc;
  const int ifv = bc.add(face_vertices.dimensions(), 3);
  const int ipix = bc.add(face_index.dimensions(), 2);
  const int ig = bc.add(grad_depth.dimensions(), 2);
  const int out = bc.add(grad_face_vertices->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int H = static_cast<int>(dim(face_index.dimensions(), 2));
  const int W = static_cast<int>(dim(face_index.dimensions(), 1));
  const int64_t P = static_cast<int64_t>(H) * W;
  std::fill_n(grad_face_vertices->typed_data(), grad_face_vertices->element_count(), 0.f);
  for (int64_t b = 0; b < bc.size(); ++b) {
    const float* fv = face_vertices.typed_data() + bc.at(ifv, b) * F * 9;
    const int64_t q = bc.at(ipix, b) * P;
    const int32_t* fi = face_index.typed_data() + q;
    if (auto err = check_face_index(fi, P, F); err.failure()) return err;
    const float* g = grad_depth.typed_data() + bc.at(ig, b) * P;
    float* gf = grad_face_vertices->typed_data() + bc.at(out, b) * F * 9;
    for (int64_t p = 0; p < P; ++p) {
      if (fi[p] < 0 || g[p] == 0.f) continue;
      const nmr::Face face = nmr::setup_face(fv + 9 * fi[p], H, W);
      float grad[9];
      nmr::depth_grad(face, weights.typed_data() + 3 * (q + p), depth.typed_data()[q + p], g[p], H, W, grad);
      for (int k = 0; k < 9; ++k) gf[9 * fi[p] + k] += grad[k];
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrGatherFacesCpu, GatherFacesImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // vertices [*b, V, 3]
                                  .Arg<S32>()  // faces [*b, F, 3]
                                  .Ret<F32>()  // face_vertices [*b, F, 3, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrScatterFacesCpu, ScatterFacesImpl,
                              ffi::Ffi::Bind()
                                  .Arg<S32>()  // faces [*b, F, 3]
                                  .Arg<F32>()  // grad_face_vertices [*b, F, 3, 3]
                                  .Ret<F32>()  // grad_vertices [*b, V, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrRasterizeCpu, RasterizeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3], NDC x, y and view z
                                  .Attr<int32_t>("height")
                                  .Attr<int32_t>("width")
                                  .Attr<float>("near")
                                  .Attr<float>("far")
                                  .Ret<S32>()  // face_index [*b, H, W]
                                  .Ret<F32>()  // weights [*b, H, W, 3]
                                  .Ret<F32>()  // depth [*b, H, W]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSampleTexturesCpu, SampleTexturesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<F32>()  // textures [*b, F, T, T, T, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // weights [*b, H, W, 3]
                                  .Arg<F32>()  // depth [*b, H, W]
                                  .Attr<float>("eps")
                                  .Ret<F32>()  // rgb [*b, H, W, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrSampleTexturesBwdCpu, SampleTexturesBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // weights [*b, H, W, 3]
                                  .Arg<F32>()  // depth [*b, H, W]
                                  .Arg<F32>()  // grad_rgb [*b, H, W, 3]
                                  .Attr<float>("eps")
                                  .Ret<F32>()  // grad_textures [*b, F, T, T, T, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrKatoBwdCpu, KatoBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // image [*b, H, W, C]: rgb and/or alpha, as rasterized
                                  .Arg<F32>()  // grad_image [*b, H, W, C]
                                  .Attr<float>("eps")
                                  .Ret<F32>()  // grad_face_vertices [*b, F, 3, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmrDepthBwdCpu, DepthBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // weights [*b, H, W, 3]
                                  .Arg<F32>()  // depth [*b, H, W]
                                  .Arg<F32>()  // grad_depth [*b, H, W]
                                  .Ret<F32>()  // grad_face_vertices [*b, F, 3, 3]
);
