// cuda_ops.cu compiled by the host C++ compiler through the CUDA shim (cuda_host.h): the CUDA
// handlers as NmrRasterizeCudaHost etc., registered on the CPU platform (NMR_JAX_KERNELS=cuda-host).
#define NMR_JAX_CUDA_HOST
#include <cstdint>

#include "cuda_ops.cu"

extern "C" void NmrCudaHostCounters(int64_t* launches, int64_t* threads, int64_t* syncs) {
  *launches = nmr_cuda_host::counters.launches.load();
  *threads = nmr_cuda_host::counters.threads.load();
  *syncs = nmr_cuda_host::counters.syncs.load();
}
