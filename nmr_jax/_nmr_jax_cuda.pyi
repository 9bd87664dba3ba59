"""XLA FFI handlers of the CUDA kernels (csrc/cuda_ops.cu, csrc/module.cc)."""

def registrations() -> dict[str, object]:
    """Target name -> handler capsule, for jax.ffi.register_ffi_target."""
