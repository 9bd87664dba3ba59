"""XLA FFI handlers of the CPU kernels (csrc/cpu_ops.cc, csrc/module.cc)."""

def registrations() -> dict[str, object]:
    """Target name -> handler capsule, for jax.ffi.register_ffi_target."""
