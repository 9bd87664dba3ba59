// cuda_ops.cu compiled by the host C++ compiler through the CUDA shim (cuda_host.h): the CUDA
// handlers as NmrRasterizeCudaHost etc., registered on the CPU platform (NMR_JAX_KERNELS=cuda-host).
#define NMR_JAX_CUDA_HOST
#include <cstdint>

#include "cuda_ops.cu"

extern "C" void NmrCudaHostCounters(int64_t* launches, int64_t* threads, int64_t* syncs, int64_t* device) {
  *launches = nmr_cuda_host::counters.launches.load();
  *threads = nmr_cuda_host::counters.threads.load();
  *syncs = nmr_cuda_host::counters.syncs.load();
  *device = nmr_cuda_host::counters.device.load();
}

// The per-thread work of each kernel's last launch since record_work was turned on.
extern "C" void NmrCudaHostRecordWork(bool on) {
  nmr_cuda_host::record_work = on;
  std::lock_guard<std::mutex> lock(nmr_cuda_host::work_mutex);
  nmr_cuda_host::work_by_kernel.clear();
}

std::map<std::string, std::vector<int64_t>> NmrCudaHostWork() {
  std::lock_guard<std::mutex> lock(nmr_cuda_host::work_mutex);
  return nmr_cuda_host::work_by_kernel;
}
