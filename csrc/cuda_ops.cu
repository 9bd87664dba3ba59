// XLA FFI handlers of nmr_jax for CUDA: the strategy of each target of targets.h, with the
// per-face and per-pixel math of nmr_core.h called from the kernels. Also compiled by the host
// compiler through cuda_host.h (NMR_JAX_CUDA_HOST), which runs every thread in sequence: kernels
// never cooperate within a block (no shared memory, no barriers, no warp intrinsics).
//
// Batch: the host walks the broadcast batch (batch.h) in chunks of kChunk elements and passes each
// chunk's per-operand batch element indices by value; blockIdx.y picks the element of the chunk.
// Visibility: pass 1 (a few threads per face) takes an atomic minimum of a 64-bit key, depth bits
// above face index, per pixel; pass 2 (per pixel) decodes the face and recomputes its weights and
// depth with the core's interpolate, so ties go to the lowest index as on the CPU, deterministically.
// Gradients are summed with float atomicAdd: the summation order, not the terms, varies from run
// to run (results agree with the CPU's to float rounding).
// Indices: faces given to nmr_gather_faces are checked on the host by the Python layer when they
// are concrete (`checked`); traced ones by a pre-pass whose flag is copied back (one stream sync),
// so a bad index raises before any access. Every other target reads indices
// that the gather or the rasterizer produced; there a kernel checks each index where it reads it,
// never uses a bad one, and flags it, and the whole result is then set to NaN (a GPU handler
// cannot raise without a sync): never a silent wrong value.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "targets.h"

#if defined(NMR_JAX_CUDA_HOST)
#include "cuda_host.h"
#else
#include <cuda_runtime.h>
#endif

namespace ffi = xla::ffi;

namespace nmr_cuda {
// The context that every handler takes first: XLA's stream for the call, with the device that owns
// it made current. Launches, memsets and copies go to the current device, which on a machine with
// several GPUs need not be the one XLA runs this call on.
struct Stream {};
}  // namespace nmr_cuda

namespace xla::ffi {
template <>
struct CtxDecoding<nmr_cuda::Stream> {
  using Type = cudaStream_t;
  static std::optional<Type> Decode(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                                    DiagnosticEngine& diagnostic) {
    const std::optional<int32_t> device = CtxDecoding<DeviceOrdinal>::Decode(api, ctx, diagnostic);
    if (!device) return std::nullopt;
    if (const cudaError_t err = cudaSetDevice(*device); err != cudaSuccess) {
      diagnostic.Emit("nmr_jax: cudaSetDevice(") << *device << ") failed: " << cudaGetErrorString(err);
      return std::nullopt;
    }
#if defined(NMR_JAX_CUDA_HOST)
    return nullptr;  // the host runtime has no streams
#else
    return CtxDecoding<PlatformStream<cudaStream_t> >::Decode(api, ctx, diagnostic);
#endif
  }
};
}  // namespace xla::ffi

namespace {

using nmr::F32;
using nmr::F32Out;
using nmr::S32;
using nmr::S32Out;
using Stream = nmr_cuda::Stream;
#if defined(NMR_JAX_CUDA_HOST)
using Scratch = nmr_cuda_host::Scratch;
#else
using Scratch = ffi::ScratchAllocator;
#endif

constexpr int kThreads = 256;
// Batch elements per launch and operands per target: 64 x 7 int64 = 3.5 KiB of kernel parameters,
// under the 4 KiB that every architecture accepts (the host build checks each kernel's total).
constexpr int kChunk = 64;
constexpr int kMaxOperands = 7;
// Pass 1's unit of work: a tile of 8 rows by 32 columns of a face's box, at most 256 pixel tests
// (a face within one tile is drawn by its own thread, a bigger one is queued tile by tile).
constexpr nmr::Tiling kTile{8, 32};
// Threads per batch element that draw the tiles of the queued faces, each taking every n-th tile:
// enough for the big faces of a few images to fill a GPU (an H100/H200 holds ~2^18 threads).
constexpr int64_t kTileThreads = int64_t{1} << 16;
// Threads sharing one face in Kato's backward, each taking every kKatoLanes-th scan line of each
// edge and axis: a face crossing n lines costs a thread n / 32 scans to the border, not n.
constexpr int kKatoLanes = 32;
constexpr uint64_t kNoKey = ~0ull;  // No bad index in a check.

// Batch element of each operand (in Broadcast::add order) for each element of one chunk.
struct Chunk {
  int64_t at[kChunk][kMaxOperands];
};

unsigned blocks(int64_t n, int per_block = kThreads) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

// Every kernel launch (NMR_LAUNCH names it): `<<<grid, block, 0, stream>>>` under nvcc, the shim's
// sequential loop over the grid on the host.
template <typename... Params, typename... Args>
void launch_named(const char* name, void (*kernel)(Params...), dim3 grid, unsigned block, cudaStream_t stream,
                  Args&&... args) {
#if defined(NMR_JAX_CUDA_HOST)
  (void)stream;
  nmr_cuda_host::launch(name, kernel, grid, dim3(block), std::forward<Args>(args)...);
#else
  (void)name;
  // clang-format splits >>> in this preprocessor branch, which nvcc then rejects.
  // clang-format off
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}
#define NMR_LAUNCH(kernel, ...) launch_named(#kernel, kernel, __VA_ARGS__)

ffi::Error cuda_error(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("nmr_jax: CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// Calls run(chunk, count), which launches a kernel, for each chunk of up to `size` (at most kChunk)
// broadcast batch elements, each launch followed by its error check. chunk.at[i][id] is the batch
// element of operand `id` (the target's shape names them) for element i of the chunk.
template <typename Run>
ffi::Error for_each_chunk(const nmr::Broadcast& bc, const char* what, Run run, int size = kChunk) {
  if (bc.operands() > kMaxOperands)
    return ffi::Error::Internal(std::string("nmr_jax: too many operands for a chunk in ") + what);
  for (int64_t b0 = 0; b0 < bc.size(); b0 += size) {
    Chunk chunk;
    const int count = static_cast<int>(std::min<int64_t>(size, bc.size() - b0));
    for (int i = 0; i < count; ++i)
      for (int id = 0; id < bc.operands(); ++id) chunk.at[i][id] = bc.at(id, b0 + i);
    run(chunk, count);
    if (auto err = cuda_error(cudaGetLastError(), what); err.failure()) return err;
  }
  return ffi::Error::Success();
}

// Zeroes a result that the kernels then accumulate into with atomics (nothing for an empty one).
ffi::Error zero(cudaStream_t stream, F32Out& out, const char* what) {
  if (out->size_bytes() == 0) return ffi::Error::Success();
  return cuda_error(cudaMemsetAsync(out->typed_data(), 0, out->size_bytes(), stream), what);
}

// A device flag of bad indices holds the first bad position seen, kNoKey while there is none.
ffi::Error new_flag(cudaStream_t stream, Scratch& scratch, unsigned long long** flag) {
  auto mem = scratch.Allocate(sizeof(unsigned long long), sizeof(unsigned long long));
  if (!mem.has_value()) return ffi::Error::Internal("nmr_jax: no scratch memory for an index check");
  *flag = static_cast<unsigned long long*>(*mem);
  return cuda_error(cudaMemsetAsync(*flag, 0xff, sizeof(**flag), stream), "index check");
}

__device__ __forceinline__ void flag_bad(unsigned long long* flag, int64_t position) {
  atomicMin(flag, static_cast<unsigned long long>(position));
}

// Flags the elements of data[0, n) outside [lo, hi), for targets that do not read every index.
__global__ void find_bad_index(const int32_t* data, int64_t n, int64_t lo, int64_t hi,
                               unsigned long long* flag) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n && (data[i] < lo || data[i] >= hi)) flag_bad(flag, i);
}

ffi::Error launch_find_bad_index(cudaStream_t stream, const int32_t* data, int64_t n, int64_t lo, int64_t hi,
                                 unsigned long long* flag) {
  if (n > 0) NMR_LAUNCH(find_bad_index, blocks(n), kThreads, stream, data, n, lo, hi, flag);
  return cuda_error(cudaGetLastError(), "index check");
}

// A fixed, small grid: in the normal case (nothing flagged) each block reads the flag and exits.
constexpr unsigned kPoisonBlocks = 128;

__global__ void poison_if_flagged(const unsigned long long* flag, float* out, int64_t n) {
  if (*flag == kNoKey) return;
  const float nan = __int_as_float(0x7fc00000);  // quiet NaN
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = nan;
}

// Sets the whole result to NaN when a bad index was flagged (no sync: see the file comment).
ffi::Error launch_poison(cudaStream_t stream, const unsigned long long* flag, F32Out& out) {
  const int64_t n = static_cast<int64_t>(out->element_count());
  if (n > 0)
    NMR_LAUNCH(poison_if_flagged, std::min(blocks(n), kPoisonBlocks), kThreads, stream, flag,
               out->typed_data(), n);
  return cuda_error(cudaGetLastError(), "index check");
}

// Copies n bytes to the host after the work queued on the stream, and waits for them.
ffi::Error copy_to_host(cudaStream_t stream, void* dst, const void* src, size_t n) {
  cudaError_t err = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  return cuda_error(err, "index check");
}

// Per face corner.
struct GatherParams {
  const float* vertices;
  const int32_t* faces;
  float* face_vertices;
  nmr::GatherShape s;
};

__global__ void gather_kernel(GatherParams g, Chunk chunk) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // face corner
  const nmr::GatherShape& s = g.s;
  if (i >= s.F * 3) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int32_t v = g.faces[at[s.faces] * s.F * 3 + i];
  float* dst = g.face_vertices + at[s.out] * s.F * 9 + 3 * i;
  // Checked before the launch (or on the host); NaN keeps the kernel safe regardless.
  if (v < 0 || v >= s.V) {
    for (int c = 0; c < 3; ++c) dst[c] = __int_as_float(0x7fc00000);
    return;
  }
  const float* src = g.vertices + at[s.vertices] * s.V * 3 + 3 * static_cast<int64_t>(v);
  for (int c = 0; c < 3; ++c) dst[c] = src[c];
}

// Raises on a vertex index outside [0, V): a pre-pass flags the first, its position and value are
// copied back (a stream sync, for traced faces only).
ffi::Error check_vertex_indices(cudaStream_t stream, Scratch& scratch, const S32& faces,
                                const nmr::GatherShape& s) {
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const int64_t n = static_cast<int64_t>(faces.element_count());
  if (auto err = launch_find_bad_index(stream, faces.typed_data(), n, 0, s.V, flag); err.failure())
    return err;
  unsigned long long bad = kNoKey;
  if (auto err = copy_to_host(stream, &bad, flag, sizeof(bad)); err.failure()) return err;
  if (bad == kNoKey) return ffi::Error::Success();
  int32_t value = 0;
  if (auto err = copy_to_host(stream, &value, faces.typed_data() + bad, sizeof(value)); err.failure())
    return err;
  return nmr::bad_vertex_index(value,
                               static_cast<int64_t>(bad % static_cast<unsigned long long>(s.F * 3)) / 3, s.V);
}

ffi::Error GatherFacesImpl(cudaStream_t stream, Scratch scratch, F32 vertices, S32 faces, int32_t checked,
                           F32Out face_vertices) {
  NMR_PARSE(GatherShape, vertices, faces, face_vertices);
  if (faces.element_count() == 0 || face_vertices->element_count() == 0) return ffi::Error::Success();
  if (!checked)
    if (auto err = check_vertex_indices(stream, scratch, faces, s); err.failure()) return err;
  const GatherParams g{vertices.typed_data(), faces.typed_data(), face_vertices->typed_data(), s};
  return for_each_chunk(bc, "nmr_gather_faces", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(gather_kernel, dim3(blocks(s.F * 3), count), kThreads, stream, g, chunk);
  });
}

// Per face corner.
struct ScatterParams {
  const int32_t* faces;
  const float* grad;
  float* grad_vertices;
  unsigned long long* flag;
  nmr::ScatterShape s;
};

__global__ void scatter_kernel(ScatterParams g, Chunk chunk) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // face corner
  const nmr::ScatterShape& s = g.s;
  if (i >= s.F * 3) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t j = at[s.faces] * s.F * 3 + i;
  const int32_t v = g.faces[j];
  if (v < 0 || v >= s.V) {
    flag_bad(g.flag, j);
    return;
  }
  const float* src = g.grad + at[s.grad] * s.F * 9 + 3 * i;
  float* dst = g.grad_vertices + at[s.out] * s.V * 3 + 3 * static_cast<int64_t>(v);
  for (int c = 0; c < 3; ++c) atomicAdd(dst + c, src[c]);
}

ffi::Error ScatterFacesImpl(cudaStream_t stream, Scratch scratch, S32 faces, F32 grad_face_vertices,
                            F32Out grad_vertices) {
  NMR_PARSE(ScatterShape, faces, grad_face_vertices, grad_vertices);
  if (auto err = zero(stream, grad_vertices, "nmr_scatter_faces"); err.failure()) return err;
  if (faces.element_count() == 0 || grad_vertices->element_count() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const ScatterParams g{faces.typed_data(), grad_face_vertices.typed_data(), grad_vertices->typed_data(),
                        flag, s};
  auto err = for_each_chunk(bc, "nmr_scatter_faces", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(scatter_kernel, dim3(blocks(s.F * 3), count), kThreads, stream, g, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_vertices);
}

// Pass 1's queue of the faces bigger than one tile, per batch element of a chunk (`head[e]`,
// `first_tile[e * F + slot]`, `face[e * F + slot]`). The head packs the number of faces queued
// (high bits) above the number of their tiles (low tile_bits), so that one atomic add gives a face
// both its slot and its first tile number: first tiles increase with slots, a sorted list to search.
struct TileQueue {
  unsigned long long* head;
  int64_t* first_tile;
  int32_t* face;
  nmr::Tiling tiling;
  int tile_bits;
};

// The tiling of pass 1 and the split of the queue's head: kTile, doubled where the tiles of F faces
// each covering the image could overflow the head's low bits (billions of faces, or images beyond
// 10^5 pixels a side), so that they never carry into the count. max_tiles bounds a queue's tiles.
struct TilePlan {
  nmr::Tiling tiling;
  int tile_bits;
  int64_t max_tiles;
};

TilePlan plan_tiles(int64_t F, int height, int width) {
  int count_bits = 1;  // The count, 0 to F, needs the bits of F.
  while ((F >> count_bits) > 0) ++count_bits;
  const int tile_bits = 64 - count_bits;
  nmr::Tiling t = kTile;
  auto per_image = [&] { return nmr::ceil_div(height, t.rows) * nmr::ceil_div(width, t.cols); };
  while (per_image() > static_cast<int64_t>(((1ull << tile_bits) - 1) / static_cast<uint64_t>(F))) {
    t.rows = static_cast<int>(std::min<int64_t>(2 * int64_t{t.rows}, height));
    t.cols = static_cast<int>(std::min<int64_t>(2 * int64_t{t.cols}, width));
  }
  return TilePlan{t, tile_bits, F * per_image()};
}

// Both passes of the rasterizer: pass 1 fills keys [out batch, H, W] with the minimum
// nmr::fragment_key of each pixel, pass 2 resolves them into the maps.
struct RasterKernelParams {
  const float* face_vertices;
  unsigned long long* keys;
  nmr::Maps maps;
  nmr::RasterParams r;
  nmr::RasterShape s;
  TileQueue queue;
};

// Pass 1 on the pixels of `rect`, a part of face f's box.
__device__ void draw_keys(nmr::RasterParams r, const nmr::Face& face, int64_t f, nmr::PixelRect rect,
                          unsigned long long* image_keys) {
  nmr::for_each_fragment_in(face, r, rect, [&](int64_t p, float zp, const float*) {
    atomicMin(image_keys + p, nmr::fragment_key(zp, static_cast<int32_t>(f)));
  });
}

// Pass 1, per face: a face whose box fits in one tile is drawn at once, a bigger one queued.
__global__ void raster_faces_kernel(RasterKernelParams g, Chunk chunk) {
  const nmr::RasterShape& s = g.s;
  const int64_t f = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (f >= s.F) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const nmr::Face face = nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * f, g.r.height, g.r.width);
  if (!face.visible) return;
  const nmr::PixelRect box = nmr::face_box(face, g.r);
  const TileQueue& q = g.queue;
  const int64_t tiles = nmr::tile_count(box, q.tiling);
  if (tiles == 1) draw_keys(g.r, face, f, box, g.keys + at[s.maps] * s.P);
  if (tiles <= 1) return;
  const unsigned long long old =
      atomicAdd(q.head + blockIdx.y, (1ull << q.tile_bits) + static_cast<unsigned long long>(tiles));
  const int64_t slot = blockIdx.y * s.F + static_cast<int64_t>(old >> q.tile_bits);
  q.first_tile[slot] = static_cast<int64_t>(old & ((1ull << q.tile_bits) - 1));
  q.face[slot] = static_cast<int32_t>(f);
}

// Pass 1, per tile of the queued faces: every gridDim.x * blockDim.x-th tile of the queue.
__global__ void raster_tiles_kernel(RasterKernelParams g, Chunk chunk) {
  const nmr::RasterShape& s = g.s;
  const TileQueue& q = g.queue;
  const unsigned long long head = q.head[blockIdx.y];
  const int64_t queued = static_cast<int64_t>(head >> q.tile_bits);
  const auto tiles = static_cast<int64_t>(head & ((1ull << q.tile_bits) - 1));
  const int64_t* first = q.first_tile + blockIdx.y * s.F;
  const int64_t* at = chunk.at[blockIdx.y];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < tiles;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = queued - 1;  // The last slot whose first tile is at most i.
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (first[mid] <= i) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int64_t f = q.face[blockIdx.y * s.F + lo];
    const nmr::Face face =
        nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * f, g.r.height, g.r.width);
    const nmr::PixelRect rect = nmr::tile_rect(nmr::face_box(face, g.r), q.tiling, i - first[lo]);
    draw_keys(g.r, face, f, rect, g.keys + at[s.maps] * s.P);
  }
}

// Pass 2, per pixel: the winning face's weights and depth, exactly as the CPU computes them.
__global__ void raster_pixels_kernel(RasterKernelParams g, Chunk chunk) {
  const nmr::RasterShape& s = g.s;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t q = chunk.at[blockIdx.y][s.maps] * s.P;
  const nmr::Maps image{g.maps.face_index + q, g.maps.weights + 3 * q, g.maps.depth + q};
  nmr::resolve_pixel(g.keys[q + p], g.face_vertices + chunk.at[blockIdx.y][s.fv] * s.F * 9, g.r, p, image);
}

template <typename T>
ffi::Error allocate(Scratch& scratch, int64_t n, const char* what, T** out) {
  auto mem = scratch.Allocate(n * sizeof(T), alignof(T));
  if (!mem.has_value()) return ffi::Error::Internal(std::string("nmr_jax: no scratch memory for ") + what);
  *out = static_cast<T*>(*mem);
  return ffi::Error::Success();
}

ffi::Error RasterizeImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, int32_t height,
                         int32_t width, float near, float far, S32Out face_index, F32Out weights,
                         F32Out depth) {
  NMR_PARSE(RasterShape, face_vertices, face_index);
  const int64_t pixels = static_cast<int64_t>(face_index->element_count());
  if (pixels == 0) return ffi::Error::Success();
  unsigned long long* keys;
  if (auto err = allocate(scratch, pixels, "the depth buffer (8 bytes a pixel)", &keys); err.failure())
    return err;
  if (auto err = cuda_error(cudaMemsetAsync(keys, 0xff, pixels * sizeof(*keys), stream), "nmr_rasterize");
      err.failure())
    return err;
  RasterKernelParams g{face_vertices.typed_data(),
                       keys,
                       nmr::Maps{face_index->typed_data(), weights->typed_data(), depth->typed_data()},
                       nmr::RasterParams{height, width, near, far},
                       s,
                       TileQueue{}};
  if (s.F > 0) {
    const TilePlan plan = plan_tiles(s.F, height, width);
    const int64_t slots = std::min<int64_t>(bc.size(), kChunk);
    TileQueue& q = g.queue;
    q.tiling = plan.tiling;
    q.tile_bits = plan.tile_bits;
    if (auto err = allocate(scratch, slots, "the big faces' queue", &q.head); err.failure()) return err;
    if (auto err = allocate(scratch, slots * s.F, "the big faces' queue (12 bytes a face)", &q.first_tile);
        err.failure())
      return err;
    if (auto err = allocate(scratch, slots * s.F, "the big faces' queue (12 bytes a face)", &q.face);
        err.failure())
      return err;
    const unsigned tile_blocks = blocks(std::min(kTileThreads, plan.max_tiles));
    auto err = for_each_chunk(bc, "nmr_rasterize", [&](const Chunk& chunk, int count) {
      // A failed memset is reported by the chunk's error check, as a failed launch is.
      cudaMemsetAsync(q.head, 0, count * sizeof(*q.head), stream);
      NMR_LAUNCH(raster_faces_kernel, dim3(blocks(s.F), count), kThreads, stream, g, chunk);
      NMR_LAUNCH(raster_tiles_kernel, dim3(tile_blocks, count), kThreads, stream, g, chunk);
    });
    if (err.failure()) return err;
  }
  return for_each_chunk(bc, "nmr_rasterize", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(raster_pixels_kernel, dim3(blocks(s.P), count), kThreads, stream, g, chunk);
  });
}

// The pixel maps that the texture and depth targets read.
struct PixelMaps {
  const int32_t* face_index;
  const float* weights;
  const float* depth;
};

// Per pixel, forward and backward of the texture sampling.
struct SampleParams {
  const float* face_vertices;
  const float* textures;  // forward: the textures; backward: unused
  PixelMaps pix;
  const float* grad_rgb;  // backward: the incoming gradient; forward: unused
  float* out;             // rgb, or grad_textures
  unsigned long long* flag;
  nmr::Texture tex;
};

__global__ void sample_kernel(SampleParams g, nmr::SampleShape s, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[s.pix] * s.P + p;
  float* out = g.out + (at[s.out] * s.P + p) * 3;
  const int32_t f = g.pix.face_index[q];
  if (f < -1 || f >= s.F) flag_bad(g.flag, q);
  if (f < 0 || f >= s.F) {
    for (int c = 0; c < 3; ++c) out[c] = 0.f;
    return;
  }
  nmr::sample_texture(g.face_vertices + at[s.fv] * s.F * 9 + 9 * static_cast<int64_t>(f),
                      g.textures + (at[s.tex] * s.F + f) * s.cube, g.pix.weights + 3 * q, g.pix.depth[q],
                      g.tex, out);
}

ffi::Error SampleTexturesImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, F32 textures,
                              S32 face_index, F32 weights, F32 depth, float eps, F32Out rgb) {
  NMR_PARSE(SampleShape, face_vertices, textures, face_index, rgb);
  if (rgb->element_count() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const SampleParams g{face_vertices.typed_data(),
                       textures.typed_data(),
                       PixelMaps{face_index.typed_data(), weights.typed_data(), depth.typed_data()},
                       nullptr,
                       rgb->typed_data(),
                       flag,
                       nmr::Texture{s.T, eps}};
  auto err = for_each_chunk(bc, "nmr_sample_textures", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(sample_kernel, dim3(blocks(s.P), count), kThreads, stream, g, s, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, rgb);
}

__global__ void sample_bwd_kernel(SampleParams g, nmr::SampleBwdShape s, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[s.pix] * s.P + p;
  const int32_t f = g.pix.face_index[q];
  if (f < -1 || f >= s.F) flag_bad(g.flag, q);
  if (f < 0 || f >= s.F) return;
  int32_t idx[8];
  float tw[8];
  nmr::texture_taps(g.face_vertices + at[s.fv] * s.F * 9 + 9 * static_cast<int64_t>(f), g.pix.weights + 3 * q,
                    g.pix.depth[q], g.tex, idx, tw);
  const float* grad = g.grad_rgb + (at[s.grad] * s.P + p) * 3;
  float* cell = g.out + (at[s.out] * s.F + f) * s.cube;
  for (int c = 0; c < 8; ++c)
    for (int ch = 0; ch < 3; ++ch) atomicAdd(cell + 3 * idx[c] + ch, tw[c] * grad[ch]);
}

ffi::Error SampleTexturesBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index,
                                 F32 weights, F32 depth, F32 grad_rgb, float eps, F32Out grad_textures) {
  NMR_PARSE(SampleBwdShape, face_vertices, face_index, grad_rgb, grad_textures);
  if (auto err = zero(stream, grad_textures, "nmr_sample_textures_bwd"); err.failure()) return err;
  if (s.P == 0 || bc.size() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const SampleParams g{face_vertices.typed_data(),
                       nullptr,
                       PixelMaps{face_index.typed_data(), weights.typed_data(), depth.typed_data()},
                       grad_rgb.typed_data(),
                       grad_textures->typed_data(),
                       flag,
                       nmr::Texture{s.T, eps}};
  auto err = for_each_chunk(bc, "nmr_sample_textures_bwd", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(sample_bwd_kernel, dim3(blocks(s.P), count), kThreads, stream, g, s, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_textures);
}

// Bytes of scratch for the planar copies of Kato's columns: those of 8 RGBA images of 1024^2 at
// once; a bigger batch takes more launches of fewer elements.
constexpr int64_t kKatoScratchBytes = int64_t{1} << 28;

struct KatoParams {
  const float* face_vertices;
  const int32_t* face_index;
  const float* image;
  const float* grad_image;
  float* col_image;  // Planar copies of the columns, [W][C][H] per element of a chunk.
  float* col_grad;
  float* out;
  float eps;
  nmr::KatoShape s;
};

// Per float of the planar copies: copies the image and its gradient [H, W, C] into columns
// [W][C][H], so that a column scan reads consecutive floats (in place they are W * C apart).
// Threads run in the copy's order: its writes are coalesced, its reads strided.
__global__ void kato_columns_kernel(KatoParams g, Chunk chunk) {
  const nmr::KatoShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= s.P * s.C) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t y = i % s.H, xc = i / s.H;
  const int64_t src = (y * s.W + xc / s.C) * s.C + xc % s.C;
  const int64_t dst = blockIdx.y * s.P * s.C + i;
  g.col_image[dst] = g.image[at[s.image] * s.P * s.C + src];
  g.col_grad[dst] = g.grad_image[at[s.grad] * s.P * s.C + src];
}

// kKatoLanes threads per face, each running Kato's scans (in and out) of its share of the face's
// scan lines; the face's 9 sums go out atomically. Columns are read from the planar copies.
__global__ void kato_kernel(KatoParams g, Chunk chunk) {
  const nmr::KatoShape& s = g.s;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t f = t / kKatoLanes;
  if (f >= s.F) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const nmr::Face face = nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * f, s.H, s.W);
  const int64_t planar = blockIdx.y * s.P * s.C;
  const nmr::KatoImage image{
      s.H,
      s.W,
      s.C,
      g.face_index + at[s.pix] * s.P,
      nmr::planar_columns(g.col_image + planar, g.col_grad + planar, s.H, s.C),
      nmr::rows_of(g.image + at[s.image] * s.P * s.C, g.grad_image + at[s.grad] * s.P * s.C, s.W, s.C),
      g.eps};
  float grad[9] = {};
  nmr::kato_face_grad(face, static_cast<int32_t>(f), image,
                      nmr::LineRange{static_cast<int>(t % kKatoLanes), kKatoLanes}, grad);
  float* out = g.out + at[s.out] * s.F * 9 + 9 * f;
  for (int k = 0; k < 9; ++k)
    if (grad[k] != 0.f) atomicAdd(out + k, grad[k]);
}

ffi::Error KatoBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index, F32 image,
                       F32 grad_image, float eps, F32Out grad_face_vertices) {
  NMR_PARSE(KatoShape, face_vertices, face_index, image, grad_image, grad_face_vertices);
  if (auto err = zero(stream, grad_face_vertices, "nmr_kato_bwd"); err.failure()) return err;
  // The kernel only compares face ids with its own and reads few of them: check them all first,
  // also when there are no faces to blame.
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  if (auto err = launch_find_bad_index(stream, face_index.typed_data(),
                                       static_cast<int64_t>(face_index.element_count()), -1, s.F, flag);
      err.failure())
    return err;
  const int64_t floats = s.P * s.C;  // Of one image.
  if (s.F > 0 && floats > 0 && bc.size() > 0) {
    const int size = static_cast<int>(
        std::min<int64_t>({bc.size(), kChunk, std::max<int64_t>(1, kKatoScratchBytes / (2 * 4 * floats))}));
    KatoParams g{face_vertices.typed_data(),
                 face_index.typed_data(),
                 image.typed_data(),
                 grad_image.typed_data(),
                 nullptr,
                 nullptr,
                 grad_face_vertices->typed_data(),
                 eps,
                 s};
    if (auto err = allocate(scratch, size * floats, "Kato's planar image columns", &g.col_image);
        err.failure())
      return err;
    if (auto err = allocate(scratch, size * floats, "Kato's planar gradient columns", &g.col_grad);
        err.failure())
      return err;
    auto err = for_each_chunk(
        bc, "nmr_kato_bwd",
        [&](const Chunk& chunk, int count) {
          NMR_LAUNCH(kato_columns_kernel, dim3(blocks(floats), count), kThreads, stream, g, chunk);
          NMR_LAUNCH(kato_kernel, dim3(blocks(s.F * kKatoLanes), count), kThreads, stream, g, chunk);
        },
        size);
    if (err.failure()) return err;
  }
  return launch_poison(stream, flag, grad_face_vertices);
}

// Per pixel.
struct FragmentsBwdParams {
  const float* face_vertices;
  PixelMaps pix;
  const float *grad_w, *grad_bary, *grad_depth;
  float* out;
  unsigned long long* flag;
  nmr::FragmentsBwdShape s;
};

__global__ void fragments_bwd_kernel(FragmentsBwdParams g, Chunk chunk) {
  const nmr::FragmentsBwdShape& s = g.s;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[s.pix] * s.P + p;
  const int32_t f = g.pix.face_index[q];
  if (f < -1 || f >= s.F) flag_bad(g.flag, q);
  if (f < 0 || f >= s.F) return;
  const nmr::FragmentGrads grads =
      nmr::fragment_grads_at(s.has_w ? g.grad_w + at[s.grad_w] * s.P * 3 : nullptr,
                             s.has_bary ? g.grad_bary + at[s.grad_bary] * s.P * 3 : nullptr,
                             s.has_depth ? g.grad_depth + at[s.grad_depth] * s.P : nullptr, p);
  const nmr::Face face =
      nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * static_cast<int64_t>(f), s.H, s.W);
  float grad[9];
  nmr::fragment_grad(face, g.pix.weights + 3 * q, g.pix.depth[q], grads, s.H, s.W, grad);
  float* out = g.out + (at[s.out] * s.F + f) * 9;
  for (int k = 0; k < 9; ++k)
    if (grad[k] != 0.f) atomicAdd(out + k, grad[k]);
}

ffi::Error FragmentsBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index,
                            F32 weights, F32 depth, F32 grad_weights, F32 grad_bary, F32 grad_depth,
                            F32Out grad_face_vertices) {
  NMR_PARSE(FragmentsBwdShape, face_vertices, face_index, grad_weights, grad_bary, grad_depth,
            grad_face_vertices);
  if (auto err = zero(stream, grad_face_vertices, "nmr_fragments_bwd"); err.failure()) return err;
  if (s.P == 0 || bc.size() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const FragmentsBwdParams g{face_vertices.typed_data(),
                             PixelMaps{face_index.typed_data(), weights.typed_data(), depth.typed_data()},
                             grad_weights.typed_data(),
                             grad_bary.typed_data(),
                             grad_depth.typed_data(),
                             grad_face_vertices->typed_data(),
                             flag,
                             s};
  auto err = for_each_chunk(bc, "nmr_fragments_bwd", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(fragments_bwd_kernel, dim3(blocks(s.P), count), kThreads, stream, g, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_face_vertices);
}

// Per pixel, forward and backward of the face-corner interpolation.
struct InterpolateParams {
  const float* attributes;
  const int32_t* face_index;
  const float* bary;
  const float* grad;  // backward: the incoming gradient; forward: unused
  float* out;         // the interpolated attributes, or grad_attributes
  float* out_bary;    // backward: grad_bary; forward: unused
  unsigned long long* flag;
};

__global__ void interpolate_kernel(InterpolateParams g, nmr::InterpolateShape s, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[s.pix] * s.P + p;
  float* out = g.out + (at[s.out] * s.P + p) * s.C;
  const int32_t f = g.face_index[q];
  if (f < -1 || f >= s.F) flag_bad(g.flag, q);
  if (f < 0 || f >= s.F) {
    for (int c = 0; c < s.C; ++c) out[c] = 0.f;
    return;
  }
  nmr::interpolate_corners(g.attributes + at[s.attr] * s.F * 3 * s.C, f, g.bary + (at[s.bary] * s.P + p) * 3,
                           s.C, out);
}

ffi::Error InterpolateImpl(cudaStream_t stream, Scratch scratch, F32 attributes, S32 face_index, F32 bary,
                           F32Out out) {
  NMR_PARSE(InterpolateShape, attributes, face_index, bary, out);
  if (out->element_count() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const InterpolateParams g{attributes.typed_data(),
                            face_index.typed_data(),
                            bary.typed_data(),
                            nullptr,
                            out->typed_data(),
                            nullptr,
                            flag};
  auto err = for_each_chunk(bc, "nmr_interpolate", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(interpolate_kernel, dim3(blocks(s.P), count), kThreads, stream, g, s, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, out);
}

__global__ void interpolate_bwd_kernel(InterpolateParams g, nmr::InterpolateBwdShape s, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[s.pix] * s.P + p;
  const int32_t f = g.face_index[q];
  if (f < -1 || f >= s.F) flag_bad(g.flag, q);
  if (f < 0 || f >= s.F) return;
  const int C = s.C;
  const float* corner = g.attributes + (at[s.attr] * s.F + f) * 3 * C;
  const float* w = g.bary + (at[s.bary] * s.P + p) * 3;
  const float* grad = g.grad + (at[s.grad] * s.P + p) * C;
  float* g_corner = g.out + (at[s.out_attr] * s.F + f) * 3 * C;
  float* g_bary = g.out_bary + (at[s.out_bary] * s.P + p) * 3;
  for (int k = 0; k < 3; ++k) {
    float dot = 0.f;
    for (int c = 0; c < C; ++c) {
      dot += grad[c] * corner[k * C + c];
      if (grad[c] != 0.f) atomicAdd(g_corner + k * C + c, w[k] * grad[c]);
    }
    // Atomic: a grad_bary shared by the chunk's elements (broadcast batch) sums them.
    atomicAdd(g_bary + k, dot);
  }
}

ffi::Error InterpolateBwdImpl(cudaStream_t stream, Scratch scratch, F32 attributes, S32 face_index, F32 bary,
                              F32 grad_out, F32Out grad_attributes, F32Out grad_bary) {
  NMR_PARSE(InterpolateBwdShape, attributes, face_index, bary, grad_out, grad_attributes, grad_bary);
  if (auto err = zero(stream, grad_attributes, "nmr_interpolate_bwd"); err.failure()) return err;
  if (auto err = zero(stream, grad_bary, "nmr_interpolate_bwd"); err.failure()) return err;
  if (s.P == 0 || bc.size() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const InterpolateParams g{attributes.typed_data(),
                            face_index.typed_data(),
                            bary.typed_data(),
                            grad_out.typed_data(),
                            grad_attributes->typed_data(),
                            grad_bary->typed_data(),
                            flag};
  auto err = for_each_chunk(bc, "nmr_interpolate_bwd", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(interpolate_bwd_kernel, dim3(blocks(s.P), count), kThreads, stream, g, s, chunk);
  });
  if (err.failure()) return err;
  if (auto err = launch_poison(stream, flag, grad_attributes); err.failure()) return err;
  return launch_poison(stream, flag, grad_bary);
}

// Per pixel, forward and backward of the image sampling (no indices to check: taps are computed).
struct SampleImageParams {
  const float* image;
  const float* uv;
  const float* grad;  // backward: the incoming gradient; forward: unused
  float* out;         // the samples, or grad_image
  float* out_uv;      // backward: grad_uv; forward: unused
  nmr::ImageSampler sampler;
};

__global__ void sample_image_kernel(SampleImageParams g, nmr::SampleImageShape s, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const float* t = g.uv + (at[s.uv] * s.P + p) * 2;
  if (s.texels == 0) {  // Nothing to read: the Python layer rejects empty images; stay defined.
    for (int c = 0; c < s.C; ++c) g.out[(at[s.out] * s.P + p) * s.C + c] = __int_as_float(0x7fc00000);
    return;
  }
  nmr::sample_image(g.sampler, g.image + at[s.image] * s.texels * s.C, s.C, t[0], t[1],
                    g.out + (at[s.out] * s.P + p) * s.C);
}

ffi::Error SampleImageImpl(cudaStream_t stream, Scratch, F32 image, F32 uv, int32_t bilinear, int32_t wrap,
                           F32Out out) {
  NMR_PARSE(SampleImageShape, image, uv, out);
  if (out->element_count() == 0) return ffi::Error::Success();
  const SampleImageParams g{
      image.typed_data(), uv.typed_data(), nullptr,
      out->typed_data(),  nullptr,         nmr::ImageSampler{s.Ht, s.Wt, bilinear != 0, wrap != 0}};
  return for_each_chunk(bc, "nmr_sample_image", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(sample_image_kernel, dim3(blocks(s.P), count), kThreads, stream, g, s, chunk);
  });
}

__global__ void sample_image_bwd_kernel(SampleImageParams g, nmr::SampleImageBwdShape s, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= s.P || s.texels == 0) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int C = s.C;
  const float* im = g.image + at[s.image] * s.texels * C;
  const float* t = g.uv + (at[s.uv] * s.P + p) * 2;
  const float* grad = g.grad + (at[s.grad] * s.P + p) * C;
  float* g_image = g.out + at[s.out_image] * s.texels * C;
  float* g_uv = g.out_uv + (at[s.out_uv] * s.P + p) * 2;
  int64_t idx[4];
  float tw[4], du[4], dv[4];
  const int taps = nmr::image_taps(g.sampler, t[0], t[1], idx, tw, du, dv);
  if (taps == 0) {
    g_uv[0] = g_uv[1] = __int_as_float(0x7fc00000);  // quiet NaN, as the forward's value
    return;
  }
  float g_u = 0.f, g_v = 0.f;
  for (int i = 0; i < taps; ++i) {
    float dot = 0.f;
    for (int c = 0; c < C; ++c) {
      if (grad[c] == 0.f) continue;  // background pixels, where the shader's output is replaced
      atomicAdd(g_image + idx[i] * C + c, tw[i] * grad[c]);
      dot += grad[c] * im[idx[i] * C + c];
    }
    g_u += du[i] * dot;
    g_v += dv[i] * dot;
  }
  // Atomic: a grad_uv shared by the chunk's elements (broadcast batch) sums them.
  atomicAdd(g_uv, g_u);
  atomicAdd(g_uv + 1, g_v);
}

ffi::Error SampleImageBwdImpl(cudaStream_t stream, Scratch, F32 image, F32 uv, F32 grad_out, int32_t bilinear,
                              int32_t wrap, F32Out grad_image, F32Out grad_uv) {
  NMR_PARSE(SampleImageBwdShape, image, uv, grad_out, grad_image, grad_uv);
  if (auto err = zero(stream, grad_image, "nmr_sample_image_bwd"); err.failure()) return err;
  if (auto err = zero(stream, grad_uv, "nmr_sample_image_bwd"); err.failure()) return err;
  if (s.P == 0 || bc.size() == 0) return ffi::Error::Success();
  const SampleImageParams g{image.typed_data(),    uv.typed_data(),
                            grad_out.typed_data(), grad_image->typed_data(),
                            grad_uv->typed_data(), nmr::ImageSampler{s.Ht, s.Wt, bilinear != 0, wrap != 0}};
  return for_each_chunk(bc, "nmr_sample_image_bwd", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(sample_image_bwd_kernel, dim3(blocks(s.P), count), kThreads, stream, g, s, chunk);
  });
}

// The layered rasterizer (csrc/layers.h). Pass 1, kLayerLanes threads per face, each taking every
// kLayerLanes-th tile of the face's reach: every fragment is inserted into its pixel's list of K
// fragment_keys in scratch memory with insert_layer_key (atomic, any order). Pass 2, per slot:
// the key's face and that face's values at the pixel, as the CPU computes them, stored top row
// first. Keys order by
// depth then index, so the lists are the CPU's, deterministically.
constexpr int kLayerLanes = 32;
// Scratch for the keys of one launch's batch elements (8 bytes a slot): a chunk holds as many as
// fit in 1 GiB, and at least one.
constexpr int64_t kLayerKeyBytes = int64_t{1} << 30;

struct LayersParams {
  const float* face_vertices;
  unsigned long long* keys;  // [chunk element, P, K]
  int32_t* face_index;
  float *bary, *bary_screen, *depth, *dist;
  nmr::LayerParams lp;
  nmr::LayersShape s;
};

__global__ void layers_faces_kernel(LayersParams g, Chunk chunk) {
  const nmr::LayersShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t f = i / kLayerLanes;
  if (f >= s.F) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const nmr::Face face = nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * f, s.H, s.W);
  if (!face.visible) return;
  const nmr::PixelRect box = nmr::reach_box(face, g.lp);
  unsigned long long* keys = g.keys + blockIdx.y * s.P * s.K;
  const int64_t tiles = nmr::tile_count(box, kTile);
  for (int64_t t = i % kLayerLanes; t < tiles; t += kLayerLanes)
    nmr::for_each_layer_fragment(
        face, g.lp, nmr::tile_rect(box, kTile, t), [&](int64_t p, float zp, const float*) {
          const unsigned long long key = nmr::fragment_key(zp, static_cast<int32_t>(f));
          nmr::insert_layer_key(key, s.K, keys + p * s.K, [](unsigned long long* slot, unsigned long long v) {
            return atomicMin(slot, v);
          });
        });
}

__global__ void layers_slots_kernel(LayersParams g, Chunk chunk) {
  const nmr::LayersShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // pixel * K + slot
  if (i >= s.P * s.K) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const unsigned long long key = g.keys[blockIdx.y * s.P * s.K + i];
  const int64_t p = i / s.K;
  const int64_t j = (at[s.maps] * s.P + nmr::top_first(p, s.H, s.W)) * s.K + i % s.K;
  if (key == nmr::kNoFragment) {
    g.face_index[j] = -1;
    for (int k = 0; k < 3; ++k) g.bary[3 * j + k] = g.bary_screen[3 * j + k] = 0.f;
    g.depth[j] = g.lp.r.far;
    g.dist[j] = nmr::kNoDist;
    return;
  }
  const auto f = static_cast<int32_t>(key & 0xffffffffu);
  const nmr::Face face =
      nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * static_cast<int64_t>(f), s.H, s.W);
  g.face_index[j] = f;
  g.depth[j] = nmr::layer_values(face, g.lp.r, static_cast<int>(p % s.W), static_cast<int>(p / s.W),
                                 g.bary_screen + 3 * j, g.bary + 3 * j, g.dist + j);
}

ffi::Error RasterizeLayersImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, float near, float far,
                               float blur_radius, S32Out face_index, F32Out bary, F32Out bary_screen,
                               F32Out depth, F32Out dist) {
  NMR_PARSE(LayersShape, face_vertices, face_index);
  const int64_t slots = s.P * s.K;
  if (slots == 0 || bc.size() == 0) return ffi::Error::Success();
  const int per_launch = static_cast<int>(std::clamp<int64_t>(kLayerKeyBytes / (8 * slots), 1, kChunk));
  LayersParams g{face_vertices.typed_data(),
                 nullptr,
                 face_index->typed_data(),
                 bary->typed_data(),
                 bary_screen->typed_data(),
                 depth->typed_data(),
                 dist->typed_data(),
                 nmr::LayerParams{nmr::RasterParams{s.H, s.W, near, far}, blur_radius, s.K},
                 s};
  if (auto err = allocate(scratch, per_launch * slots, "the layers' keys (8 bytes a slot)", &g.keys);
      err.failure())
    return err;
  return for_each_chunk(
      bc, "nmr_rasterize_layers",
      [&](const Chunk& chunk, int count) {
        // A failed memset is reported by the chunk's error check, as a failed launch is.
        cudaMemsetAsync(g.keys, 0xff, count * slots * sizeof(*g.keys), stream);
        if (s.F > 0)
          NMR_LAUNCH(layers_faces_kernel, dim3(blocks(s.F * kLayerLanes), count), kThreads, stream, g, chunk);
        NMR_LAUNCH(layers_slots_kernel, dim3(blocks(slots), count), kThreads, stream, g, chunk);
      },
      per_launch);
}

// Per slot: its face's 9 gradient floats, added atomically.
struct LayersBwdParams {
  const float* face_vertices;
  const int32_t* face_index;
  nmr::LayerGradMaps grads;  // the operands' data (null where empty)
  float* out;
  unsigned long long* flag;
  nmr::LayersBwdShape s;
};

__global__ void layers_bwd_kernel(LayersBwdParams g, Chunk chunk) {
  const nmr::LayersBwdShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // pixel * K + slot
  if (i >= s.P * s.K) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t j = at[s.pix] * s.P * s.K + i;
  const int32_t f = g.face_index[j];
  if (f < -1 || f >= s.F) flag_bad(g.flag, j);
  if (f < 0 || f >= s.F) return;
  const nmr::LayerGrads grads = nmr::layer_grads_at(s.element(g.grads, at), i);
  const nmr::Face face =
      nmr::setup_face(g.face_vertices + at[s.fv] * s.F * 9 + 9 * static_cast<int64_t>(f), s.H, s.W);
  const int64_t p = nmr::top_first(i / s.K, s.H, s.W);
  float grad[9] = {};
  nmr::layer_grad(face, nmr::RasterParams{s.H, s.W, 0.f, 0.f}, static_cast<int>(p % s.W),
                  static_cast<int>(p / s.W), grads, grad);
  float* out = g.out + (at[s.out] * s.F + f) * 9;
  for (int k = 0; k < 9; ++k)
    if (grad[k] != 0.f) atomicAdd(out + k, grad[k]);
}

ffi::Error LayersBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index,
                         F32 grad_bary_screen, F32 grad_bary, F32 grad_depth, F32 grad_dist,
                         F32Out grad_face_vertices) {
  NMR_PARSE(LayersBwdShape, face_vertices, face_index, grad_bary_screen, grad_bary, grad_depth, grad_dist,
            grad_face_vertices);
  if (auto err = zero(stream, grad_face_vertices, "nmr_layers_bwd"); err.failure()) return err;
  if (s.P * s.K == 0 || bc.size() == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const LayersBwdParams g{face_vertices.typed_data(),
                          face_index.typed_data(),
                          {grad_bary_screen.typed_data(), grad_bary.typed_data(), grad_depth.typed_data(),
                           grad_dist.typed_data()},
                          grad_face_vertices->typed_data(),
                          flag,
                          s};
  auto err = for_each_chunk(bc, "nmr_layers_bwd", [&](const Chunk& chunk, int count) {
    NMR_LAUNCH(layers_bwd_kernel, dim3(blocks(s.P * s.K), count), kThreads, stream, g, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_face_vertices);
}

}  // namespace

// Handler symbols: NmrRasterizeCuda, or NmrRasterizeCudaHost in the host build.
// Soft silhouettes (soft.h): kSoftLanes threads share a face, each taking every kSoftLanes-th row
// of the pixels that the face reaches. Forward: per-pixel accumulators summed with atomics (the
// probabilistic sum of log q in any order; max by an atomic minimum of a key, q's bits above the
// face index, so ties go to the lowest index as on the CPU), then alpha per pixel. Backward: the
// same threads stream the pixels again and add their face's gradient with atomics.
namespace {

// A face of the icosphere at 256^2 and sigma 1e-4 reaches about 12 rows.
constexpr int kSoftLanes = 8;

struct SoftKernelParams {
  const float* face_vertices;
  const float* sigma;
  float* alpha;
  float* acc;
  int32_t* count;
  unsigned long long* keys;  // Max: the least (q, face) key of each pixel.
  nmr::SoftParams params;
  nmr::SoftShape s;
};

__device__ __forceinline__ unsigned long long soft_key(float q, int32_t face) {
  // q >= 0: its bits order as the floats do.
  return (static_cast<unsigned long long>(__float_as_uint(q)) << 32) | static_cast<uint32_t>(face);
}

__global__ void soft_init_kernel(SoftKernelParams g, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= g.s.P) return;
  const int64_t o = chunk.at[blockIdx.y][g.s.maps] * g.s.P + p;
  nmr::soft_init(g.params.aggregation, g.acc + o, g.count + o);
  if (g.keys) g.keys[o] = kNoKey;
}

__global__ void soft_faces_kernel(SoftKernelParams g, Chunk chunk) {
  const nmr::SoftShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= s.F * kSoftLanes) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const auto f = static_cast<int32_t>(i / kSoftLanes);
  const int lane = static_cast<int>(i % kSoftLanes);
  const float sigma = g.sigma[at[s.sigma]];
  const nmr::SoftFace face =
      nmr::setup_soft_face(g.face_vertices + (at[s.fv] * s.F + f) * 9, sigma, g.params);
  if (!face.f.visible) return;
  const int64_t o = at[s.maps] * s.P;
  const int width = g.params.width;
  for (int yi = face.box.y_lo + lane; yi <= face.box.y_hi; yi += kSoftLanes)
    for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
      nmr::SoftSample smp;
      if (!nmr::soft_sample(face, xi, yi, sigma, g.params, &smp)) continue;
      const int64_t p = o + static_cast<int64_t>(yi) * width + xi;
      if (g.params.aggregation == nmr::Aggregation::kMax)
        atomicMin(g.keys + p, soft_key(smp.q.F, f));
      else if (smp.q.F > 0.f)
        atomicAdd(g.acc + p, logf(smp.q.F));
      else
        atomicAdd(g.count + p, 1);
    }
}

__global__ void soft_pixels_kernel(SoftKernelParams g, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= g.s.P) return;
  const int64_t o = chunk.at[blockIdx.y][g.s.maps] * g.s.P + p;
  if (g.keys && g.keys[o] != kNoKey) {
    g.acc[o] = __int_as_float(static_cast<int>(g.keys[o] >> 32));
    g.count[o] = static_cast<int32_t>(g.keys[o] & 0xffffffffu);
  }
  g.alpha[o] = nmr::soft_alpha(g.params.aggregation, g.acc[o], g.count[o]);
}

ffi::Error SoftSilhouettesImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, F32 sigma,
                               int32_t height, int32_t width, float near, float far, float threshold,
                               float reach, int32_t distribution, int32_t aggregation, F32Out alpha,
                               F32Out acc, S32Out count) {
  NMR_PARSE(SoftShape, face_vertices, sigma, alpha);
  const int64_t pixels = static_cast<int64_t>(alpha->element_count());
  if (pixels == 0) return ffi::Error::Success();
  SoftKernelParams g{face_vertices.typed_data(),
                     sigma.typed_data(),
                     alpha->typed_data(),
                     acc->typed_data(),
                     count->typed_data(),
                     nullptr,
                     nmr::soft_params(height, width, near, far, threshold, reach, distribution, aggregation),
                     s};
  if (g.params.aggregation == nmr::Aggregation::kMax) {
    if (auto err = allocate(scratch, pixels, "the soft silhouette's keys (8 bytes a pixel)", &g.keys);
        err.failure())
      return err;
  }
  return for_each_chunk(bc, "nmr_soft_silhouettes", [&](const Chunk& chunk, int n) {
    NMR_LAUNCH(soft_init_kernel, dim3(blocks(s.P), n), kThreads, stream, g, chunk);
    if (s.F > 0) NMR_LAUNCH(soft_faces_kernel, dim3(blocks(s.F * kSoftLanes), n), kThreads, stream, g, chunk);
    NMR_LAUNCH(soft_pixels_kernel, dim3(blocks(s.P), n), kThreads, stream, g, chunk);
  });
}

// Both passes after the forward (the backward and forward mode): thread i streams a lane of face f's
// rows, with the forward's accumulators telling what the other faces contribute.
struct SoftBwdParams {
  const float* face_vertices;
  const float* sigma;
  const float* acc;
  const int32_t* count;
  const float* linear;  // grad_alpha [*b, H, W], or the faces' tangents [*b, F, 10]
  float* out;
  nmr::SoftParams params;
  nmr::SoftBwdShape s;
};

// Thread i's face, lane, sigma and set-up face; false for a thread past the faces or a face not drawn.
__device__ bool soft_lane(const SoftBwdParams& g, const int64_t* at, int32_t* f, int* lane, float* sigma,
                          nmr::SoftFace* face) {
  const nmr::SoftBwdShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= s.F * kSoftLanes) return false;
  *f = static_cast<int32_t>(i / kSoftLanes);
  *lane = static_cast<int>(i % kSoftLanes);
  *sigma = g.sigma[at[s.sigma]];
  *face = nmr::setup_soft_face(g.face_vertices + (at[s.fv] * s.F + *f) * 9, *sigma, g.params);
  return face->f.visible;
}

__global__ void soft_bwd_kernel(SoftBwdParams g, Chunk chunk) {
  const nmr::SoftBwdShape& s = g.s;
  const int64_t* at = chunk.at[blockIdx.y];
  int32_t f;
  int lane;
  float sigma;
  nmr::SoftFace face;
  if (!soft_lane(g, at, &f, &lane, &sigma, &face)) return;
  const float* acc = g.acc + at[s.acc] * s.P;
  const int32_t* count = g.count + at[s.count] * s.P;
  const float* grad_alpha = g.linear + at[s.linear] * s.P;
  float grad[10] = {};
  for (int yi = face.box.y_lo + lane; yi <= face.box.y_hi; yi += kSoftLanes)
    for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
      const int64_t p = static_cast<int64_t>(yi) * g.params.width + xi;
      if (grad_alpha[p] == 0.f) continue;
      nmr::SoftSample smp;
      if (!nmr::soft_sample(face, xi, yi, sigma, g.params, &smp)) continue;
      const float dq = nmr::soft_dalpha_dq(g.params.aggregation, smp.q.F, f, acc[p], count[p]);
      if (dq != 0.f) nmr::soft_sample_grad(face, smp, grad_alpha[p] * dq, sigma, g.params, grad, grad + 9);
    }
  float* out = g.out + (at[s.out] * s.F + f) * 10;
  for (int k = 0; k < 10; ++k)
    if (grad[k] != 0.f) atomicAdd(out + k, grad[k]);
}

// Forward mode: the backward's threads, each adding its face's tangent at the pixels it reaches.
__global__ void soft_jvp_kernel(SoftBwdParams g, Chunk chunk) {
  const nmr::SoftBwdShape& s = g.s;
  const int64_t* at = chunk.at[blockIdx.y];
  int32_t f;
  int lane;
  float sigma;
  nmr::SoftFace face;
  if (!soft_lane(g, at, &f, &lane, &sigma, &face)) return;
  const float* acc = g.acc + at[s.acc] * s.P;
  const int32_t* count = g.count + at[s.count] * s.P;
  const float* tangent = g.linear + (at[s.linear] * s.F + f) * 10;
  float* out = g.out + at[s.out] * s.P;
  for (int yi = face.box.y_lo + lane; yi <= face.box.y_hi; yi += kSoftLanes)
    for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
      nmr::SoftSample smp;
      if (!nmr::soft_sample(face, xi, yi, sigma, g.params, &smp)) continue;
      const int64_t p = static_cast<int64_t>(yi) * g.params.width + xi;
      const float dq = nmr::soft_dalpha_dq(g.params.aggregation, smp.q.F, f, acc[p], count[p]);
      if (dq != 0.f) atomicAdd(out + p, nmr::soft_sample_tangent(face, smp, dq, sigma, g.params, tangent));
    }
}

// The backward (kJvp false; linear: grad_alpha, out: the faces' gradients) or forward mode (linear:
// the faces' tangents, out: alpha's).
template <bool kJvp>
ffi::Error silhouettes_after_forward(cudaStream_t stream, F32 face_vertices, F32 sigma, F32 acc, S32 count,
                                     F32 linear, int32_t height, int32_t width, float near, float far,
                                     float threshold, float reach, int32_t distribution, int32_t aggregation,
                                     F32Out out) {
  const char* target = kJvp ? "nmr_soft_silhouettes_jvp" : "nmr_soft_silhouettes_bwd";
  NMR_PARSE(SoftBwdShape, face_vertices, sigma, acc, count, linear, out);
  if (auto err = zero(stream, out, target); err.failure()) return err;
  if (s.F == 0 || s.P == 0 || bc.size() == 0) return ffi::Error::Success();
  const SoftBwdParams g{
      face_vertices.typed_data(),
      sigma.typed_data(),
      acc.typed_data(),
      count.typed_data(),
      linear.typed_data(),
      out->typed_data(),
      nmr::soft_params(height, width, near, far, threshold, reach, distribution, aggregation),
      s};
  return for_each_chunk(bc, target, [&](const Chunk& chunk, int n) {
    const dim3 grid(blocks(s.F * kSoftLanes), n);
    if constexpr (kJvp)
      NMR_LAUNCH(soft_jvp_kernel, grid, kThreads, stream, g, chunk);
    else
      NMR_LAUNCH(soft_bwd_kernel, grid, kThreads, stream, g, chunk);
  });
}

ffi::Error SoftSilhouettesBwdImpl(cudaStream_t stream, Scratch, F32 face_vertices, F32 sigma, F32 acc,
                                  S32 count, F32 grad_alpha, int32_t height, int32_t width, float near,
                                  float far, float threshold, float reach, int32_t distribution,
                                  int32_t aggregation, F32Out grad) {
  return silhouettes_after_forward<false>(stream, face_vertices, sigma, acc, count, grad_alpha, height, width,
                                          near, far, threshold, reach, distribution, aggregation, grad);
}

ffi::Error SoftSilhouettesJvpImpl(cudaStream_t stream, Scratch, F32 face_vertices, F32 sigma, F32 acc,
                                  S32 count, F32 tangent, int32_t height, int32_t width, float near,
                                  float far, float threshold, float reach, int32_t distribution,
                                  int32_t aggregation, F32Out out) {
  return silhouettes_after_forward<true>(stream, face_vertices, sigma, acc, count, tangent, height, width,
                                         near, far, threshold, reach, distribution, aggregation, out);
}

}  // namespace

// Soft colours (soft.h), threads as for the soft silhouettes: the largest logit of each pixel by
// an atomic maximum (logits are positive, and positive floats order as their bits do as ints),
// then the softmax's sums by atomic additions.
namespace {

struct ColorKernelParams {
  const float* face_vertices;
  const float* textures;
  const float* bary_map;
  const float* sigma_gamma;
  float* out;
  nmr::ColorParams c;
  nmr::ColorShape s;
};

__device__ __forceinline__ float* color_pixel(const ColorKernelParams& g, const int64_t* at, int64_t p) {
  return g.out + (at[g.s.out] * g.s.P + p) * 5;
}

// Per pixel: stage 0 starts the maximum, 1 the sums, 2 divides by the sum.
__global__ void color_pixels_kernel(ColorKernelParams g, Chunk chunk, int stage) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= g.s.P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  float* px = color_pixel(g, at, p);
  const float gamma = g.sigma_gamma[2 * at[g.s.params] + 1];
  if (stage == 0)
    nmr::color_init_max(gamma, px);
  else if (stage == 1)
    nmr::color_init_sum(g.c, gamma, px);
  else
    nmr::color_finish(px);
}

// Per face and lane: pass 0 takes the maximum of the logits, pass 1 adds the weights and colours.
__global__ void color_faces_kernel(ColorKernelParams g, Chunk chunk, int pass) {
  const nmr::ColorShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= s.F * kSoftLanes) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const auto f = static_cast<int32_t>(i / kSoftLanes);
  const int lane = static_cast<int>(i % kSoftLanes);
  const float sigma = g.sigma_gamma[2 * at[s.params]], gamma = g.sigma_gamma[2 * at[s.params] + 1];
  const float* fv = g.face_vertices + (at[s.fv] * s.F + f) * 9;
  const nmr::SoftFace face = nmr::setup_soft_face(fv, sigma, g.c.soft);
  if (!face.f.visible) return;
  const float* tex = g.textures + (at[s.tex] * s.F + f) * s.cube;
  const float* map = s.mapped ? g.bary_map + (at[s.map] * s.F + f) * 9 : nullptr;
  for (int yi = face.box.y_lo + lane; yi <= face.box.y_hi; yi += kSoftLanes)
    for (int xi = face.box.x_lo; xi <= face.box.x_hi; ++xi) {
      nmr::ColorSample cs;
      if (!nmr::color_sample(face, xi, yi, sigma, gamma, g.c.soft, &cs)) continue;
      float* px = color_pixel(g, at, static_cast<int64_t>(yi) * g.c.soft.width + xi);
      if (pass == 0) {
        atomicMax(reinterpret_cast<int*>(px + 3), __float_as_int(cs.a));
        continue;
      }
      const float e = nmr::color_weight(cs, px[3]);
      float rgb[3];
      nmr::sample_texture(fv, tex, cs.w, cs.zp, g.c.tex, rgb, map);
      atomicAdd(px + 4, e);
      for (int ch = 0; ch < 3; ++ch) atomicAdd(px + ch, e * rgb[ch]);
    }
}

ffi::Error SoftRgbImpl(cudaStream_t stream, Scratch, F32 face_vertices, F32 textures, F32 bary_map,
                       F32 sigma_gamma, int32_t height, int32_t width, float near, float far, float threshold,
                       float reach, int32_t distribution, float eps, float bg_r, float bg_g, float bg_b,
                       F32Out out) {
  NMR_PARSE(ColorShape, face_vertices, textures, bary_map, sigma_gamma, out);
  if (s.P == 0) return ffi::Error::Success();
  const ColorKernelParams g{
      face_vertices.typed_data(),
      textures.typed_data(),
      bary_map.typed_data(),
      sigma_gamma.typed_data(),
      out->typed_data(),
      nmr::color_params(height, width, near, far, threshold, reach, distribution, s.T, eps, bg_r, bg_g, bg_b),
      s};
  return for_each_chunk(bc, "nmr_soft_rgb", [&](const Chunk& chunk, int n) {
    const dim3 pixels(blocks(s.P), n), faces(blocks(s.F * kSoftLanes), n);
    NMR_LAUNCH(color_pixels_kernel, pixels, kThreads, stream, g, chunk, 0);
    if (s.F > 0) NMR_LAUNCH(color_faces_kernel, faces, kThreads, stream, g, chunk, 0);
    NMR_LAUNCH(color_pixels_kernel, pixels, kThreads, stream, g, chunk, 1);
    if (s.F > 0) NMR_LAUNCH(color_faces_kernel, faces, kThreads, stream, g, chunk, 1);
    NMR_LAUNCH(color_pixels_kernel, pixels, kThreads, stream, g, chunk, 2);
  });
}

// Both passes after the forward (the backward and forward mode): thread i streams a lane of face
// f's rows, with the forward's out telling each pixel's softmax.
struct ColorBwdParams {
  const float* face_vertices;
  const float* textures;
  const float* bary_map;
  const float* sigma_gamma;
  const float* out;
  const float* linear;  // grad_rgb [*b, H, W, 3], or the faces' tangents [*b, F, kColorGradFloats + T^3 3]
  float* result;
  nmr::ColorParams c;
  nmr::ColorBwdShape s;
};

// Thread i's face and lane, with its batch element's sigma and gamma and its set-up face; false for
// a thread past the faces or a face not drawn.
struct ColorLane {
  int32_t f;
  int lane;
  float sigma, gamma;
  const float *fv, *tex, *map;
  nmr::SoftFace face;
};

__device__ bool color_lane(const ColorBwdParams& g, const int64_t* at, ColorLane* l) {
  const nmr::ColorBwdShape& s = g.s;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= s.F * kSoftLanes) return false;
  l->f = static_cast<int32_t>(i / kSoftLanes);
  l->lane = static_cast<int>(i % kSoftLanes);
  l->sigma = g.sigma_gamma[2 * at[s.params]];
  l->gamma = g.sigma_gamma[2 * at[s.params] + 1];
  l->fv = g.face_vertices + (at[s.fv] * s.F + l->f) * 9;
  l->tex = g.textures + (at[s.tex] * s.F + l->f) * s.cube;
  l->map = s.mapped ? g.bary_map + (at[s.map] * s.F + l->f) * 9 : nullptr;
  l->face = nmr::setup_soft_face(l->fv, l->sigma, g.c.soft);
  return l->face.f.visible;
}

__global__ void color_bwd_kernel(ColorBwdParams g, Chunk chunk) {
  const nmr::ColorBwdShape& s = g.s;
  const int64_t* at = chunk.at[blockIdx.y];
  ColorLane l;
  if (!color_lane(g, at, &l)) return;
  const float* out = g.out + at[s.out] * s.P * 5;
  const float* grad_rgb = g.linear + at[s.linear] * s.P * 3;
  constexpr int kParts = nmr::kColorGradFloats;
  float* result = g.result + (at[s.result] * s.F + l.f) * (kParts + s.cube);
  // Summed in double: sigma's and gamma's terms cancel to far less than their size.
  double sum[kParts] = {};
  for (int yi = l.face.box.y_lo + l.lane; yi <= l.face.box.y_hi; yi += kSoftLanes)
    for (int xi = l.face.box.x_lo; xi <= l.face.box.x_hi; ++xi) {
      const int64_t p = static_cast<int64_t>(yi) * g.c.soft.width + xi;
      const float* G = grad_rgb + 3 * p;
      if (G[0] == 0.f && G[1] == 0.f && G[2] == 0.f) continue;
      nmr::ColorSample cs;
      if (!nmr::color_sample(l.face, xi, yi, l.sigma, l.gamma, g.c.soft, &cs)) continue;
      float part[kParts] = {};
      // Atomics for the cube: the lanes of a face share it.
      nmr::color_grad(l.face, l.fv, l.tex, l.map, cs, out + 5 * p, G, l.sigma, l.gamma, g.c, part,
                      [&](int k, float v) { atomicAdd(result + kParts + k, v); });
      for (int k = 0; k < kParts; ++k) sum[k] += part[k];
    }
  for (int k = 0; k < kParts; ++k)
    if (sum[k] != 0.0) atomicAdd(result + k, static_cast<float>(sum[k]));
}

// Forward mode: the backward's threads, each adding its face's tangent at the pixels it reaches.
__global__ void color_jvp_kernel(ColorBwdParams g, Chunk chunk) {
  const nmr::ColorBwdShape& s = g.s;
  const int64_t* at = chunk.at[blockIdx.y];
  ColorLane l;
  if (!color_lane(g, at, &l)) return;
  const float* out = g.out + at[s.out] * s.P * 5;
  const float* tangent = g.linear + (at[s.linear] * s.F + l.f) * (nmr::kColorGradFloats + s.cube);
  float* result = g.result + at[s.result] * s.P * 3;
  for (int yi = l.face.box.y_lo + l.lane; yi <= l.face.box.y_hi; yi += kSoftLanes)
    for (int xi = l.face.box.x_lo; xi <= l.face.box.x_hi; ++xi) {
      nmr::ColorSample cs;
      if (!nmr::color_sample(l.face, xi, yi, l.sigma, l.gamma, g.c.soft, &cs)) continue;
      const int64_t p = static_cast<int64_t>(yi) * g.c.soft.width + xi;
      float t[3] = {0.f, 0.f, 0.f};
      nmr::color_tangent(l.face, l.fv, l.tex, l.map, cs, out + 5 * p, l.sigma, l.gamma, g.c, tangent, t);
      for (int ch = 0; ch < 3; ++ch)
        if (t[ch] != 0.f) atomicAdd(result + 3 * p + ch, t[ch]);
    }
}

// The backward (kJvp false; linear: grad_rgb, result: the faces' gradients) or forward mode (linear:
// the faces' tangents, result: rgb's).
template <bool kJvp>
ffi::Error color_after_forward(cudaStream_t stream, F32 face_vertices, F32 textures, F32 bary_map,
                               F32 sigma_gamma, F32 out, F32 linear, int32_t height, int32_t width,
                               float near, float far, float threshold, float reach, int32_t distribution,
                               float eps, float bg_r, float bg_g, float bg_b, F32Out result) {
  const char* target = kJvp ? "nmr_soft_rgb_jvp" : "nmr_soft_rgb_bwd";
  NMR_PARSE(ColorBwdShape, face_vertices, textures, bary_map, sigma_gamma, out, linear, result);
  if (auto err = zero(stream, result, target); err.failure()) return err;
  if (s.F == 0 || s.P == 0 || bc.size() == 0) return ffi::Error::Success();
  const ColorBwdParams g{
      face_vertices.typed_data(),
      textures.typed_data(),
      bary_map.typed_data(),
      sigma_gamma.typed_data(),
      out.typed_data(),
      linear.typed_data(),
      result->typed_data(),
      nmr::color_params(height, width, near, far, threshold, reach, distribution, s.T, eps, bg_r, bg_g, bg_b),
      s};
  return for_each_chunk(bc, target, [&](const Chunk& chunk, int n) {
    const dim3 grid(blocks(s.F * kSoftLanes), n);
    if constexpr (kJvp)
      NMR_LAUNCH(color_jvp_kernel, grid, kThreads, stream, g, chunk);
    else
      NMR_LAUNCH(color_bwd_kernel, grid, kThreads, stream, g, chunk);
  });
}

ffi::Error SoftRgbBwdImpl(cudaStream_t stream, Scratch, F32 face_vertices, F32 textures, F32 bary_map,
                          F32 sigma_gamma, F32 out, F32 grad_rgb, int32_t height, int32_t width, float near,
                          float far, float threshold, float reach, int32_t distribution, float eps,
                          float bg_r, float bg_g, float bg_b, F32Out result) {
  return color_after_forward<false>(stream, face_vertices, textures, bary_map, sigma_gamma, out, grad_rgb,
                                    height, width, near, far, threshold, reach, distribution, eps, bg_r, bg_g,
                                    bg_b, result);
}

ffi::Error SoftRgbJvpImpl(cudaStream_t stream, Scratch, F32 face_vertices, F32 textures, F32 bary_map,
                          F32 sigma_gamma, F32 out, F32 tangent, int32_t height, int32_t width, float near,
                          float far, float threshold, float reach, int32_t distribution, float eps,
                          float bg_r, float bg_g, float bg_b, F32Out result) {
  return color_after_forward<true>(stream, face_vertices, textures, bary_map, sigma_gamma, out, tangent,
                                   height, width, near, far, threshold, reach, distribution, eps, bg_r, bg_g,
                                   bg_b, result);
}

}  // namespace

#if defined(NMR_JAX_CUDA_HOST)
NMR_DEFINE_HANDLERS(CudaHost, .Ctx<Stream>().Ctx<Scratch>());
NMR_DEFINE_LAYER_HANDLERS(CudaHost, .Ctx<Stream>().Ctx<Scratch>());
#else
NMR_DEFINE_HANDLERS(Cuda, .Ctx<Stream>().Ctx<Scratch>());
NMR_DEFINE_LAYER_HANDLERS(Cuda, .Ctx<Stream>().Ctx<Scratch>());
#endif
