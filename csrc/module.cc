// Python module exposing the CPU handlers as capsules for jax.ffi.register_ffi_target.
#include <pybind11/pybind11.h>

#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrGatherFacesCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrScatterFacesCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrRasterizeCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrSampleTexturesCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrSampleTexturesBwdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrKatoBwdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(NmrDepthBwdCpu);

namespace py = pybind11;

namespace {
template <typename T>
py::capsule capsule(T* fn) {
  return py::capsule(reinterpret_cast<void*>(fn));
}
}  // namespace

PYBIND11_MODULE(_nmr_jax_cpu, m) {
  m.doc() = "CPU XLA FFI handlers of nmr_jax; target name -> capsule.";
  m.def("registrations", []() {
    py::dict d;
    d["nmr_gather_faces"] = capsule(NmrGatherFacesCpu);
    d["nmr_scatter_faces"] = capsule(NmrScatterFacesCpu);
    d["nmr_rasterize"] = capsule(NmrRasterizeCpu);
    d["nmr_sample_textures"] = capsule(NmrSampleTexturesCpu);
    d["nmr_sample_textures_bwd"] = capsule(NmrSampleTexturesBwdCpu);
    d["nmr_kato_bwd"] = capsule(NmrKatoBwdCpu);
    d["nmr_depth_bwd"] = capsule(NmrDepthBwdCpu);
    return d;
  });
}
