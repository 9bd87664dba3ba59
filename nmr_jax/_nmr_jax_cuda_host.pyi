"""XLA FFI handlers of the CUDA kernels compiled for the host (csrc/cuda_host.h, csrc/module.cc)."""

def registrations() -> dict[str, object]:
    """Target name -> handler capsule, for jax.ffi.register_ffi_target on the CPU platform."""

def counters() -> dict[str, int]:
    """Kernel launches ("launches"), threads run ("threads") and stream synchronisations
    ("syncs") of the host CUDA runtime so far in this process."""
