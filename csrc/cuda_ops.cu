// XLA FFI handlers of nmr_jax for CUDA: the same targets, attributes and buffer layouts as
// cpu_ops.cc, with the per-face and per-pixel math of nmr_core.h called from the kernels.
//
// Batch: the host walks the broadcast batch (batch.h) in chunks of kChunk elements and passes each
// chunk's per-operand batch element indices by value; blockIdx.y picks the element of the chunk.
// Visibility: pass 1 (a few threads per face) takes an atomic minimum of a 64-bit key, depth bits
// above face index, per pixel; pass 2 (per pixel) decodes the face and recomputes its weights and
// depth with the core's interpolate, so ties go to the lowest index as on the CPU, deterministically.
// Gradients are summed with float atomicAdd: the summation order, not the terms, varies from run
// to run (results agree with the CPU's to float rounding).
// Indices: faces given to nmr_gather_faces are checked by a pre-pass whose flag is copied back
// (one stream sync), so a bad index raises before any access. Every other target reads indices
// that the gather or the rasterizer produced; there a kernel checks each index where it reads it,
// never uses a bad one, and flags it, and the whole result is then set to NaN (a GPU handler
// cannot raise without a sync): never a silent wrong value.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "batch.h"
#include "nmr_core.h"
#include "xla/ffi/api/ffi.h"

#if defined(NMR_JAX_CUDA_HOST)
#include "cuda_host.h"
#else
#include <cuda_runtime.h>
#endif

namespace ffi = xla::ffi;

namespace {

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using S32Out = ffi::ResultBuffer<ffi::S32>;
#if defined(NMR_JAX_CUDA_HOST)
using Stream = nmr_cuda_host::Stream;
using Scratch = nmr_cuda_host::Scratch;
#else
using Stream = ffi::PlatformStream<cudaStream_t>;
using Scratch = ffi::ScratchAllocator;
#endif

constexpr int kThreads = 256;
// Batch elements per launch and operands per target: 64 x 5 int64 = 2.5 KiB of kernel parameters,
// under the 4 KiB that every architecture accepts.
constexpr int kChunk = 64;
constexpr int kMaxOperands = 5;
// Threads sharing one face in the rasterizer's pass 1: big faces split their rows 8 ways, while
// the many faces of a fine mesh (a pixel or less each) still keep most threads busy.
constexpr int kLanesPerFace = 8;
constexpr uint64_t kNoKey = ~0ull;  // Empty pixel in pass 1; no bad index in a check.

// Batch element of each operand (in Broadcast::add order) for each element of one chunk.
struct Chunk {
  int64_t at[kChunk][kMaxOperands];
};

int64_t dim(const ffi::AnyBuffer::Dimensions& dims, int from_end) { return dims[dims.size() - from_end]; }

unsigned blocks(int64_t n, int per_block = kThreads) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

// Every kernel launch: `<<<grid, block, 0, stream>>>` under nvcc, the shim's sequential loop over
// the grid on the host.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, unsigned block, cudaStream_t stream, Args&&... args) {
#if defined(NMR_JAX_CUDA_HOST)
  (void)stream;
  nmr_cuda_host::launch(kernel, grid, dim3(block), std::forward<Args>(args)...);
#else
  // clang-format splits >>> in this preprocessor branch, which nvcc then rejects.
  // clang-format off
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}

ffi::Error cuda_error(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("nmr_jax: CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// Calls run(chunk, count), which launches a kernel, for each chunk of up to kChunk broadcast batch
// elements, each launch followed by its error check.
template <typename Run>
ffi::Error for_each_chunk(const nmr::Broadcast& bc, int operands, const char* what, Run run) {
  for (int64_t b0 = 0; b0 < bc.size(); b0 += kChunk) {
    Chunk chunk;
    const int count = static_cast<int>(std::min<int64_t>(kChunk, bc.size() - b0));
    for (int i = 0; i < count; ++i)
      for (int id = 0; id < operands; ++id) chunk.at[i][id] = bc.at(id, b0 + i);
    run(chunk, count);
    if (auto err = cuda_error(cudaGetLastError(), what); err.failure()) return err;
  }
  return ffi::Error::Success();
}

// Zeroes a result that the kernels then accumulate into with atomics.
ffi::Error zero(cudaStream_t stream, F32Out& out, const char* what) {
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
  if (n > 0) launch(find_bad_index, blocks(n), kThreads, stream, data, n, lo, hi, flag);
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
    launch(poison_if_flagged, std::min(blocks(n), kPoisonBlocks), kThreads, stream, flag, out->typed_data(),
           n);
  return cuda_error(cudaGetLastError(), "index check");
}

// Copies n bytes to the host after the work queued on the stream, and waits for them.
ffi::Error copy_to_host(cudaStream_t stream, void* dst, const void* src, size_t n) {
  cudaError_t err = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  return cuda_error(err, "index check");
}

// Per face corner. chunk.at: vertices, faces, face_vertices.
__global__ void gather_kernel(const float* vertices, const int32_t* faces, float* face_vertices, int64_t V,
                              int64_t F, Chunk chunk) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // face corner
  if (i >= F * 3) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int32_t v = faces[at[1] * F * 3 + i];
  if (v < 0 || v >= V) return;  // Checked before the launch; keeps the kernel safe regardless.
  const float* src = vertices + at[0] * V * 3 + 3 * static_cast<int64_t>(v);
  float* dst = face_vertices + at[2] * F * 9 + 3 * i;
  for (int c = 0; c < 3; ++c) dst[c] = src[c];
}

ffi::Error GatherFacesImpl(cudaStream_t stream, Scratch scratch, F32 vertices, S32 faces,
                           F32Out face_vertices) {
  nmr::Broadcast bc;
  bc.add(vertices.dimensions(), 2);
  bc.add(faces.dimensions(), 2);
  bc.add(face_vertices->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t V = dim(vertices.dimensions(), 2);
  const int64_t F = dim(faces.dimensions(), 2);
  // Bail out on a corrupt index before it is used to read memory: check, copy the result back, wait.
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  const int64_t n = static_cast<int64_t>(faces.element_count());
  if (auto err = launch_find_bad_index(stream, faces.typed_data(), n, 0, V, flag); err.failure()) return err;
  unsigned long long bad = kNoKey;
  if (auto err = copy_to_host(stream, &bad, flag, sizeof(bad)); err.failure()) return err;
  if (bad != kNoKey) {
    int32_t value = 0;
    if (auto err = copy_to_host(stream, &value, faces.typed_data() + bad, sizeof(value)); err.failure())
      return err;
    const int64_t face = static_cast<int64_t>(bad % static_cast<unsigned long long>(F * 3)) / 3;
    return ffi::Error::InvalidArgument("nmr_jax: faces holds vertex index " + std::to_string(value) +
                                       " at face " + std::to_string(face) + ", outside [0, " +
                                       std::to_string(V) + ") (V = number of vertices)");
  }
  if (F == 0) return ffi::Error::Success();
  return for_each_chunk(bc, 3, "nmr_gather_faces", [&](const Chunk& chunk, int count) {
    launch(gather_kernel, dim3(blocks(F * 3), count), kThreads, stream, vertices.typed_data(),
           faces.typed_data(), face_vertices->typed_data(), V, F, chunk);
  });
}

// Per face corner. chunk.at: faces, grad_face_vertices, grad_vertices.
__global__ void scatter_kernel(const int32_t* faces, const float* grad, float* grad_vertices, int64_t V,
                               int64_t F, unsigned long long* flag, Chunk chunk) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // face corner
  if (i >= F * 3) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t j = at[0] * F * 3 + i;
  const int32_t v = faces[j];
  if (v < 0 || v >= V) {
    flag_bad(flag, j);
    return;
  }
  const float* src = grad + at[1] * F * 9 + 3 * i;
  float* dst = grad_vertices + at[2] * V * 3 + 3 * static_cast<int64_t>(v);
  for (int c = 0; c < 3; ++c) atomicAdd(dst + c, src[c]);
}

ffi::Error ScatterFacesImpl(cudaStream_t stream, Scratch scratch, S32 faces, F32 grad_face_vertices,
                            F32Out grad_vertices) {
  nmr::Broadcast bc;
  bc.add(faces.dimensions(), 2);
  bc.add(grad_face_vertices.dimensions(), 3);
  bc.add(grad_vertices->dimensions(), 2);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t V = dim(grad_vertices->dimensions(), 2);
  const int64_t F = dim(faces.dimensions(), 2);
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  if (auto err = zero(stream, grad_vertices, "nmr_scatter_faces"); err.failure()) return err;
  if (F > 0) {
    auto err = for_each_chunk(bc, 3, "nmr_scatter_faces", [&](const Chunk& chunk, int count) {
      launch(scatter_kernel, dim3(blocks(F * 3), count), kThreads, stream, faces.typed_data(),
             grad_face_vertices.typed_data(), grad_vertices->typed_data(), V, F, flag, chunk);
    });
    if (err.failure()) return err;
  }
  return launch_poison(stream, flag, grad_vertices);
}

// Order-preserving code of a float: unsigned comparison of codes is float comparison.
__device__ __forceinline__ uint32_t ordered_bits(float v) {
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Pass 1: kLanesPerFace threads per face; keys [out batch, H, W] hold min(depth code << 32 | face).
// chunk.at (both passes): face_vertices, maps.
__global__ void raster_faces_kernel(const float* face_vertices, int64_t F, int height, int width, float near,
                                    float far, unsigned long long* keys, Chunk chunk) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t f = t / kLanesPerFace;
  if (f >= F) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const nmr::Face face = nmr::setup_face(face_vertices + at[0] * F * 9 + 9 * f, height, width);
  unsigned long long* image_keys = keys + at[1] * height * static_cast<int64_t>(width);
  const unsigned long long index = static_cast<uint32_t>(f);
  nmr::for_each_fragment(face, height, width, near, far, 0, height - 1, static_cast<int>(t % kLanesPerFace),
                         kLanesPerFace, [&](int64_t p, float zp, const float*) {
                           atomicMin(image_keys + p,
                                     (static_cast<unsigned long long>(ordered_bits(zp)) << 32) | index);
                         });
}

// Pass 2, per pixel: the winning face's weights and depth, exactly as the CPU computes them.
__global__ void raster_pixels_kernel(const float* face_vertices, int64_t F, int height, int width, float far,
                                     const unsigned long long* keys, int32_t* face_index, float* weights,
                                     float* depth, Chunk chunk) {
  const int64_t P = static_cast<int64_t>(height) * width;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[1] * P + p;
  const unsigned long long key = keys[q];
  if (key == kNoKey) {
    face_index[q] = -1;
    for (int k = 0; k < 3; ++k) weights[3 * q + k] = 0.f;
    depth[q] = far;
    return;
  }
  const int32_t f = static_cast<int32_t>(key & 0xffffffffu);
  const nmr::Face face =
      nmr::setup_face(face_vertices + at[0] * F * 9 + 9 * static_cast<int64_t>(f), height, width);
  const float xp = static_cast<float>(p % width);
  const float yp = static_cast<float>(p / width);
  face_index[q] = f;
  depth[q] = nmr::interpolate(face, xp, yp, weights + 3 * q);
}

ffi::Error RasterizeImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, int32_t height,
                         int32_t width, float near, float far, S32Out face_index, F32Out weights,
                         F32Out depth) {
  nmr::Broadcast bc;
  bc.add(face_vertices.dimensions(), 3);
  bc.add(face_index->dimensions(), 2);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int64_t P = static_cast<int64_t>(height) * width;
  const int64_t pixels = static_cast<int64_t>(face_index->element_count());
  if (pixels == 0) return ffi::Error::Success();
  auto mem = scratch.Allocate(pixels * sizeof(unsigned long long), sizeof(unsigned long long));
  if (!mem.has_value())
    return ffi::Error::Internal("nmr_jax: no scratch memory for the depth buffer (8 bytes a pixel)");
  auto* keys = static_cast<unsigned long long*>(*mem);
  if (auto err = cuda_error(cudaMemsetAsync(keys, 0xff, pixels * sizeof(*keys), stream), "nmr_rasterize");
      err.failure())
    return err;
  if (F > 0) {
    auto err = for_each_chunk(bc, 2, "nmr_rasterize", [&](const Chunk& chunk, int count) {
      launch(raster_faces_kernel, dim3(blocks(F * kLanesPerFace), count), kThreads, stream,
             face_vertices.typed_data(), F, height, width, near, far, keys, chunk);
    });
    if (err.failure()) return err;
  }
  return for_each_chunk(bc, 2, "nmr_rasterize", [&](const Chunk& chunk, int count) {
    launch(raster_pixels_kernel, dim3(blocks(P), count), kThreads, stream, face_vertices.typed_data(), F,
           height, width, far, keys, face_index->typed_data(), weights->typed_data(), depth->typed_data(),
           chunk);
  });
}

// Per pixel. chunk.at: face_vertices, textures, pixel maps, rgb (the Broadcast::add order).
__global__ void sample_kernel(const float* face_vertices, const float* textures, const int32_t* face_index,
                              const float* weights, const float* depth, int64_t F, int T, int64_t P,
                              float eps, float* rgb, unsigned long long* flag, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t cube = static_cast<int64_t>(T) * T * T * 3;
  const int64_t q = at[2] * P + p;
  float* out = rgb + (at[3] * P + p) * 3;
  const int32_t f = face_index[q];
  if (f < -1 || f >= F) flag_bad(flag, q);
  if (f < 0 || f >= F) {
    for (int c = 0; c < 3; ++c) out[c] = 0.f;
    return;
  }
  nmr::sample_texture(face_vertices + at[0] * F * 9 + 9 * static_cast<int64_t>(f),
                      textures + (at[1] * F + f) * cube, weights + 3 * q, depth[q], T, eps, out);
}

ffi::Error SampleTexturesImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, F32 textures,
                              S32 face_index, F32 weights, F32 depth, float eps, F32Out rgb) {
  nmr::Broadcast bc;
  bc.add(face_vertices.dimensions(), 3);
  bc.add(textures.dimensions(), 5);
  bc.add(face_index.dimensions(), 2);
  bc.add(rgb->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int T = static_cast<int>(dim(textures.dimensions(), 2));
  const int64_t P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
  if (P == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  auto err = for_each_chunk(bc, 4, "nmr_sample_textures", [&](const Chunk& chunk, int count) {
    launch(sample_kernel, dim3(blocks(P), count), kThreads, stream, face_vertices.typed_data(),
           textures.typed_data(), face_index.typed_data(), weights.typed_data(), depth.typed_data(), F, T, P,
           eps, rgb->typed_data(), flag, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, rgb);
}

// Per pixel. chunk.at: face_vertices, pixel maps, grad_rgb, grad_textures.
__global__ void sample_bwd_kernel(const float* face_vertices, const int32_t* face_index, const float* weights,
                                  const float* depth, const float* grad_rgb, int64_t F, int T, int64_t P,
                                  float eps, float* grad_textures, unsigned long long* flag, Chunk chunk) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t cube = static_cast<int64_t>(T) * T * T * 3;
  const int64_t q = at[1] * P + p;
  const int32_t f = face_index[q];
  if (f < -1 || f >= F) flag_bad(flag, q);
  if (f < 0 || f >= F) return;
  int32_t idx[8];
  float tw[8];
  nmr::texture_taps(face_vertices + at[0] * F * 9 + 9 * static_cast<int64_t>(f), weights + 3 * q, depth[q], T,
                    eps, idx, tw);
  const float* g = grad_rgb + (at[2] * P + p) * 3;
  float* cell = grad_textures + (at[3] * F + f) * cube;
  for (int c = 0; c < 8; ++c)
    for (int ch = 0; ch < 3; ++ch) atomicAdd(cell + 3 * idx[c] + ch, tw[c] * g[ch]);
}

ffi::Error SampleTexturesBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index,
                                 F32 weights, F32 depth, F32 grad_rgb, float eps, F32Out grad_textures) {
  nmr::Broadcast bc;
  bc.add(face_vertices.dimensions(), 3);
  bc.add(face_index.dimensions(), 2);
  bc.add(grad_rgb.dimensions(), 3);
  bc.add(grad_textures->dimensions(), 5);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int T = static_cast<int>(dim(grad_textures->dimensions(), 2));
  const int64_t P = dim(face_index.dimensions(), 2) * dim(face_index.dimensions(), 1);
  if (auto err = zero(stream, grad_textures, "nmr_sample_textures_bwd"); err.failure()) return err;
  if (P == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  auto err = for_each_chunk(bc, 4, "nmr_sample_textures_bwd", [&](const Chunk& chunk, int count) {
    launch(sample_bwd_kernel, dim3(blocks(P), count), kThreads, stream, face_vertices.typed_data(),
           face_index.typed_data(), weights.typed_data(), depth.typed_data(), grad_rgb.typed_data(), F, T, P,
           eps, grad_textures->typed_data(), flag, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_textures);
}

// One thread per face: Kato's scans of its edges read the image, the face's 9 sums go out atomically.
// chunk.at: face_vertices, face_index, image, grad_image, grad_face_vertices.
__global__ void kato_kernel(const float* face_vertices, const int32_t* face_index, const float* image,
                            const float* grad_image, int64_t F, int height, int width, int C, float eps,
                            float* grad_face_vertices, Chunk chunk) {
  const int64_t f = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (f >= F) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t P = static_cast<int64_t>(height) * width;
  const nmr::Face face = nmr::setup_face(face_vertices + at[0] * F * 9 + 9 * f, height, width);
  float grad[9] = {};
  nmr::kato_face_grad(face, static_cast<int32_t>(f), height, width, C, face_index + at[1] * P,
                      image + at[2] * P * C, grad_image + at[3] * P * C, eps, grad);
  float* out = grad_face_vertices + at[4] * F * 9 + 9 * f;
  for (int k = 0; k < 9; ++k)
    if (grad[k] != 0.f) atomicAdd(out + k, grad[k]);
}

ffi::Error KatoBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index, F32 image,
                       F32 grad_image, float eps, F32Out grad_face_vertices) {
  nmr::Broadcast bc;
  bc.add(face_vertices.dimensions(), 3);
  bc.add(face_index.dimensions(), 2);
  bc.add(image.dimensions(), 3);
  bc.add(grad_image.dimensions(), 3);
  bc.add(grad_face_vertices->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int H = static_cast<int>(dim(face_index.dimensions(), 2));
  const int W = static_cast<int>(dim(face_index.dimensions(), 1));
  const int C = static_cast<int>(dim(image.dimensions(), 1));
  if (auto err = zero(stream, grad_face_vertices, "nmr_kato_bwd"); err.failure()) return err;
  if (F == 0) return ffi::Error::Success();
  // The kernel only compares face ids with its own and reads few of them: check them all first.
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  if (auto err = launch_find_bad_index(stream, face_index.typed_data(),
                                       static_cast<int64_t>(face_index.element_count()), -1, F, flag);
      err.failure())
    return err;
  auto err = for_each_chunk(bc, 5, "nmr_kato_bwd", [&](const Chunk& chunk, int count) {
    launch(kato_kernel, dim3(blocks(F), count), kThreads, stream, face_vertices.typed_data(),
           face_index.typed_data(), image.typed_data(), grad_image.typed_data(), F, H, W, C, eps,
           grad_face_vertices->typed_data(), chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_face_vertices);
}

// Per pixel. chunk.at: face_vertices, pixel maps, grad_depth, grad_face_vertices.
__global__ void depth_bwd_kernel(const float* face_vertices, const int32_t* face_index, const float* weights,
                                 const float* depth, const float* grad_depth, int64_t F, int height,
                                 int width, float* grad_face_vertices, unsigned long long* flag,
                                 Chunk chunk) {
  const int64_t P = static_cast<int64_t>(height) * width;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const int64_t* at = chunk.at[blockIdx.y];
  const int64_t q = at[1] * P + p;
  const int32_t f = face_index[q];
  if (f < -1 || f >= F) flag_bad(flag, q);
  const float g = grad_depth[at[2] * P + p];
  if (f < 0 || f >= F || g == 0.f) return;
  const nmr::Face face =
      nmr::setup_face(face_vertices + at[0] * F * 9 + 9 * static_cast<int64_t>(f), height, width);
  float grad[9];
  nmr::depth_grad(face, weights + 3 * q, depth[q], g, height, width, grad);
  float* out = grad_face_vertices + (at[3] * F + f) * 9;
  for (int k = 0; k < 9; ++k) atomicAdd(out + k, grad[k]);
}

ffi::Error DepthBwdImpl(cudaStream_t stream, Scratch scratch, F32 face_vertices, S32 face_index, F32 weights,
                        F32 depth, F32 grad_depth, F32Out grad_face_vertices) {
  nmr::Broadcast bc;
  bc.add(face_vertices.dimensions(), 3);
  bc.add(face_index.dimensions(), 2);
  bc.add(grad_depth.dimensions(), 2);
  bc.add(grad_face_vertices->dimensions(), 3);
  if (auto err = bc.finish(); err.failure()) return err;
  const int64_t F = dim(face_vertices.dimensions(), 3);
  const int H = static_cast<int>(dim(face_index.dimensions(), 2));
  const int W = static_cast<int>(dim(face_index.dimensions(), 1));
  const int64_t P = static_cast<int64_t>(H) * W;
  if (auto err = zero(stream, grad_face_vertices, "nmr_depth_bwd"); err.failure()) return err;
  if (P == 0) return ffi::Error::Success();
  unsigned long long* flag;
  if (auto err = new_flag(stream, scratch, &flag); err.failure()) return err;
  auto err = for_each_chunk(bc, 4, "nmr_depth_bwd", [&](const Chunk& chunk, int count) {
    launch(depth_bwd_kernel, dim3(blocks(P), count), kThreads, stream, face_vertices.typed_data(),
           face_index.typed_data(), weights.typed_data(), depth.typed_data(), grad_depth.typed_data(), F, H,
           W, grad_face_vertices->typed_data(), flag, chunk);
  });
  if (err.failure()) return err;
  return launch_poison(stream, flag, grad_face_vertices);
}

}  // namespace

// Handler symbols: NmrRasterizeCuda, or NmrRasterizeCudaHost in the host build.
#if defined(NMR_JAX_CUDA_HOST)
#define NMR_CUDA_SYMBOL(name) name##CudaHost
#else
#define NMR_CUDA_SYMBOL(name) name##Cuda
#endif

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrGatherFaces), GatherFacesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<F32>()  // vertices [*b, V, 3]
                                  .Arg<S32>()  // faces [*b, F, 3]
                                  .Ret<F32>()  // face_vertices [*b, F, 3, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrScatterFaces), ScatterFacesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<S32>()  // faces [*b, F, 3]
                                  .Arg<F32>()  // grad_face_vertices [*b, F, 3, 3]
                                  .Ret<F32>()  // grad_vertices [*b, V, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrRasterize), RasterizeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3], NDC x, y and view z
                                  .Attr<int32_t>("height")
                                  .Attr<int32_t>("width")
                                  .Attr<float>("near")
                                  .Attr<float>("far")
                                  .Ret<S32>()  // face_index [*b, H, W]
                                  .Ret<F32>()  // weights [*b, H, W, 3]
                                  .Ret<F32>()  // depth [*b, H, W]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrSampleTextures), SampleTexturesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<F32>()  // textures [*b, F, T, T, T, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // weights [*b, H, W, 3]
                                  .Arg<F32>()  // depth [*b, H, W]
                                  .Attr<float>("eps")
                                  .Ret<F32>()  // rgb [*b, H, W, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrSampleTexturesBwd), SampleTexturesBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // weights [*b, H, W, 3]
                                  .Arg<F32>()  // depth [*b, H, W]
                                  .Arg<F32>()  // grad_rgb [*b, H, W, 3]
                                  .Attr<float>("eps")
                                  .Ret<F32>()  // grad_textures [*b, F, T, T, T, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrKatoBwd), KatoBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // image [*b, H, W, C]: rgb and/or alpha, as rasterized
                                  .Arg<F32>()  // grad_image [*b, H, W, C]
                                  .Attr<float>("eps")
                                  .Ret<F32>()  // grad_face_vertices [*b, F, 3, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NMR_CUDA_SYMBOL(NmrDepthBwd), DepthBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<Stream>()
                                  .Ctx<Scratch>()
                                  .Arg<F32>()  // face_vertices [*b, F, 3, 3]
                                  .Arg<S32>()  // face_index [*b, H, W]
                                  .Arg<F32>()  // weights [*b, H, W, 3]
                                  .Arg<F32>()  // depth [*b, H, W]
                                  .Arg<F32>()  // grad_depth [*b, H, W]
                                  .Ret<F32>()  // grad_face_vertices [*b, F, 3, 3]
);
