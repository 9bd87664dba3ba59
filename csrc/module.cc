// Python module exposing the XLA FFI handlers of one platform as capsules for
// jax.ffi.register_ffi_target. Compiled three times: _nmr_jax_cpu (cpu_ops.cc), with NMR_JAX_CUDA
// defined _nmr_jax_cuda (cuda_ops.cu), and with NMR_JAX_CUDA_HOST defined _nmr_jax_cuda_host
// (cuda_ops.cu built for the host through cuda_host.h), so all list the same target names.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "xla/ffi/api/api.h"

#if defined(NMR_JAX_CUDA)
#define NMR_MODULE _nmr_jax_cuda
#define NMR_HANDLER(name) name##Cuda
#elif defined(NMR_JAX_CUDA_HOST)
#define NMR_MODULE _nmr_jax_cuda_host
#define NMR_HANDLER(name) name##CudaHost
extern "C" void NmrCudaHostCounters(int64_t* launches, int64_t* threads, int64_t* syncs, int64_t* device);
extern "C" void NmrCudaHostRecordWork(bool on);
std::map<std::string, std::vector<int64_t> > NmrCudaHostWork();
#else
#define NMR_MODULE _nmr_jax_cpu
#define NMR_HANDLER(name) name##Cpu
#endif

XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrGatherFaces));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrScatterFaces));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrRasterize));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSampleTextures));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSampleTexturesBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrKatoBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrFragmentsBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrInterpolate));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrInterpolateBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSampleImage));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSampleImageBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrRasterizeLayers));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrLayersBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSoftSilhouettes));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSoftSilhouettesBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSoftSilhouettesJvp));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSoftRgb));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSoftRgbBwd));
XLA_FFI_DECLARE_HANDLER_SYMBOL(NMR_HANDLER(NmrSoftRgbJvp));

namespace py = pybind11;

namespace {
template <typename T>
py::capsule capsule(T* fn) {
  return py::capsule(reinterpret_cast<void*>(fn));
}
}  // namespace

PYBIND11_MODULE(NMR_MODULE, m) {
  m.doc() = "XLA FFI handlers of nmr_jax for one platform; target name -> capsule.";
  m.def("registrations", []() {
    py::dict d;
    d["nmr_gather_faces"] = capsule(NMR_HANDLER(NmrGatherFaces));
    d["nmr_scatter_faces"] = capsule(NMR_HANDLER(NmrScatterFaces));
    d["nmr_rasterize"] = capsule(NMR_HANDLER(NmrRasterize));
    d["nmr_sample_textures"] = capsule(NMR_HANDLER(NmrSampleTextures));
    d["nmr_sample_textures_bwd"] = capsule(NMR_HANDLER(NmrSampleTexturesBwd));
    d["nmr_kato_bwd"] = capsule(NMR_HANDLER(NmrKatoBwd));
    d["nmr_fragments_bwd"] = capsule(NMR_HANDLER(NmrFragmentsBwd));
    d["nmr_interpolate"] = capsule(NMR_HANDLER(NmrInterpolate));
    d["nmr_interpolate_bwd"] = capsule(NMR_HANDLER(NmrInterpolateBwd));
    d["nmr_sample_image"] = capsule(NMR_HANDLER(NmrSampleImage));
    d["nmr_sample_image_bwd"] = capsule(NMR_HANDLER(NmrSampleImageBwd));
    d["nmr_rasterize_layers"] = capsule(NMR_HANDLER(NmrRasterizeLayers));
    d["nmr_layers_bwd"] = capsule(NMR_HANDLER(NmrLayersBwd));
    d["nmr_soft_silhouettes"] = capsule(NMR_HANDLER(NmrSoftSilhouettes));
    d["nmr_soft_silhouettes_bwd"] = capsule(NMR_HANDLER(NmrSoftSilhouettesBwd));
    d["nmr_soft_silhouettes_jvp"] = capsule(NMR_HANDLER(NmrSoftSilhouettesJvp));
    d["nmr_soft_rgb"] = capsule(NMR_HANDLER(NmrSoftRgb));
    d["nmr_soft_rgb_bwd"] = capsule(NMR_HANDLER(NmrSoftRgbBwd));
    d["nmr_soft_rgb_jvp"] = capsule(NMR_HANDLER(NmrSoftRgbJvp));
    return d;
  });
#if defined(NMR_JAX_CUDA_HOST)
  m.def(
      "counters",
      []() {
        int64_t launches, threads, syncs, device;
        NmrCudaHostCounters(&launches, &threads, &syncs, &device);
        py::dict d;
        d["launches"] = launches;
        d["threads"] = threads;
        d["syncs"] = syncs;
        d["device"] = device;
        return d;
      },
      "Kernel launches, threads run and stream synchronisations of the host CUDA runtime so far, and "
      "the device that the last handler made current (-1 before any).");
  m.def("record_work", &NmrCudaHostRecordWork, "Turns the per-thread work record on or off, and clears it.");
  m.def("work", &NmrCudaHostWork, "Kernel name -> pixel steps of each thread of its last launch.");
#endif
}
