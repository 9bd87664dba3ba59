// The subset of the CUDA runtime that cuda_ops.cu uses, for compiling that file with the host C++
// compiler (NMR_JAX_CUDA_HOST): its kernels and handlers then run on the CPU, so that tests and
// sanitizers execute the CUDA code path on machines without a GPU.
//
// A launch runs the kernel body for every block and thread of the grid in sequence, so it finds
// what one thread does wrong (bounds, arithmetic, index checks, sentinel handling) but not what
// depends on threads running together: races, memory ordering, warp-level effects. Atomics are
// plain read-modify-writes (a launch is sequential), memset and memcpy are the C ones, streams and
// synchronisation are no-ops that are counted. Launch configurations are checked against the
// limits that every CUDA device has (grid, block, parameter size); other device limits (registers,
// shared memory, resident threads) are not modelled.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "nmr_core.h"
#include "xla/ffi/api/ffi.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaMemcpyKind { cudaMemcpyDeviceToHost = 2 };

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in index variables of the thread being run (thread_local: XLA may run two custom
// calls at once on different threads).
inline thread_local dim3 gridDim, blockDim, blockIdx, threadIdx;

namespace nmr_cuda_host {

// What the host runtime did, for tests: kernel launches, threads run, stream synchronisations,
// and the device that the last cudaSetDevice made current (-1 before any).
struct Counters {
  std::atomic<int64_t> launches{0};
  std::atomic<int64_t> threads{0};
  std::atomic<int64_t> syncs{0};
  std::atomic<int64_t> device{-1};
};
inline Counters counters;

// With `record_work` on, each launch keeps the pixel steps that each of its threads counted
// (NMR_COUNT_WORK in nmr_core.h), by kernel name: the last launch of each kernel.
inline std::atomic<bool> record_work{false};
inline std::mutex work_mutex;
inline std::map<std::string, std::vector<int64_t>> work_by_kernel;

// The sticky error of the last launch, as cudaGetLastError reports and clears it.
inline thread_local cudaError_t last_error = cudaSuccess;

// Limits of every CUDA device since compute capability 3.0, and the 4 KiB of kernel parameters
// that every architecture accepts.
constexpr unsigned kMaxGridX = 0x7fffffffu, kMaxGridYZ = 65535, kMaxBlockThreads = 1024;
constexpr size_t kMaxParamBytes = 4096;

template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
  static_assert((sizeof(Params) + ... + 0) <= kMaxParamBytes, "kernel parameters exceed 4 KiB");
  const uint64_t threads_per_block = uint64_t{block.x} * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYZ ||
      grid.z > kMaxGridYZ || threads_per_block == 0 || threads_per_block > kMaxBlockThreads) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Parameters are copied once per launch, as the device does; each thread reads them.
  std::tuple<Params...> params(std::forward<Args>(args)...);
  counters.launches.fetch_add(1);
  counters.threads.fetch_add(static_cast<int64_t>(uint64_t{grid.x} * grid.y * grid.z * threads_per_block));
  gridDim = grid;
  blockDim = block;
  const bool record = record_work.load();
  std::vector<int64_t> work;
  for (blockIdx.z = 0; blockIdx.z < grid.z; ++blockIdx.z)
    for (blockIdx.y = 0; blockIdx.y < grid.y; ++blockIdx.y)
      for (blockIdx.x = 0; blockIdx.x < grid.x; ++blockIdx.x)
        for (threadIdx.z = 0; threadIdx.z < block.z; ++threadIdx.z)
          for (threadIdx.y = 0; threadIdx.y < block.y; ++threadIdx.y)
            for (threadIdx.x = 0; threadIdx.x < block.x; ++threadIdx.x) {
              thread_work = 0;
              std::apply(kernel, params);
              if (record) work.push_back(thread_work);
            }
  if (record) {
    std::lock_guard<std::mutex> lock(work_mutex);
    work_by_kernel[name] = std::move(work);
  }
}

// Device scratch memory on the host: each allocation its own heap block of exactly the size asked
// for (so that AddressSanitizer sees an overrun), freed when the handler returns.
class Scratch {
 public:
  std::optional<void*> Allocate(size_t size, size_t alignment = 1) {
    if (alignment > alignof(std::max_align_t)) return std::nullopt;
    void* p = std::malloc(size > 0 ? size : 1);
    if (p == nullptr) return std::nullopt;
    blocks_.emplace_back(p, &std::free);
    return p;
  }

 private:
  std::vector<std::unique_ptr<void, decltype(&std::free)>> blocks_;
};

}  // namespace nmr_cuda_host

// Decoding of the host's scratch memory in an XLA FFI binding on the CPU platform.
namespace xla::ffi {
template <>
struct CtxDecoding<nmr_cuda_host::Scratch> {
  using Type = nmr_cuda_host::Scratch;
  static std::optional<Type> Decode(const XLA_FFI_Api*, XLA_FFI_ExecutionContext*, DiagnosticEngine&) {
    return Type{};
  }
};
}  // namespace xla::ffi

inline cudaError_t cudaGetLastError() {
  const cudaError_t err = nmr_cuda_host::last_error;
  nmr_cuda_host::last_error = cudaSuccess;
  return err;
}

inline const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    default:
      return "invalid argument";
  }
}

inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t) {
  std::memset(dst, value, n);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}

inline cudaError_t cudaSetDevice(int device) {
  nmr_cuda_host::counters.device.store(device);
  return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  nmr_cuda_host::counters.syncs.fetch_add(1);
  return cudaSuccess;
}

inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof(f));
  return f;
}

inline unsigned __float_as_uint(float v) {
  unsigned u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

// Plain read-modify-writes: the threads of a launch run one after another.
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}

inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
