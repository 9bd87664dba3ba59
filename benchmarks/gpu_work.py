"""Work per GPU thread of the CUDA kernels, measured on the host: the CUDA code compiled for the
host (csrc/cuda_host.h) counts the pixel steps of each thread (pixels tested by the rasterizer's
pass 1, pixels scanned by Kato's backward) with the same core functions the GPU runs.

The rasterizer's pass 1 is two launches: one thread per face draws the faces within one tile of
8 x 32 pixels and queues the bigger ones, then each thread of the second draws tiles of those.
For Kato's backward, "one thread per face" sums the work of a face's 32 threads: what a single
thread per face (the earlier kernel) did. The slowest thread bounds a launch's time on a GPU when
there are fewer busy threads than the GPU holds (an H100/H200 runs about 250,000 at once).

Usage: ``python benchmarks/gpu_work.py`` (teapot and a 12-face cube at 1024^2, forward and
backward; a minute or two on one core).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nmr_jax as nr
from nmr_jax import _ffi

KATO_LANES = 32  # csrc/cuda_ops.cu kKatoLanes


def cube() -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int32)
    return corners.astype(np.float32) * 0.9, faces


def work(vertices, faces, size: int) -> dict[str, list[int]]:
    eye = jnp.array([1.2, 1.0, -2.0], jnp.float32)
    both = np.concatenate([faces, faces[:, ::-1]])

    def loss(v):
        fv = nr.vertices_to_faces(nr.perspective(nr.look_at(v, eye), 45.0), both)
        return jnp.sum(nr.rasterize_silhouettes(fv, size, anti_aliasing=False))

    assert _ffi.cuda_host is not None
    _ffi.cuda_host.record_work(True)
    # The host-compiled targets are registered on the CPU only: on a GPU machine the default
    # device would compile the call for the GPU, where they do not exist.
    with _ffi.using_kernels("cuda-host"), jax.default_device(jax.devices("cpu")[0]):
        jax.block_until_ready(jax.grad(loss)(jnp.asarray(vertices)))
    out = _ffi.cuda_host.work()
    _ffi.cuda_host.record_work(False)
    return out


def row(scene: str, kernel: str, per_thread: np.ndarray) -> str:
    busy = int((per_thread > 0).sum())
    mean = per_thread.sum() / max(busy, 1)
    return (
        f"{scene:10} {kernel:26} {per_thread.size:>10,} {busy:>10,} {int(per_thread.max()):>10,} "
        f"{mean:>10,.0f} {int(per_thread.sum()):>12,}"
    )


def main() -> None:
    if _ffi.cuda_host is None:
        raise SystemExit("nmr_jax was built without its host CUDA module (NMR_JAX_CUDA_HOST=OFF)")
    print(f"# pixel steps per thread, measured on the host; jax {jax.__version__}")
    print("# mean: over the busy threads (those with at least one pixel step)")
    print(
        f"{'scene':10} {'kernel':26} {'threads':>10} {'busy':>10} {'max':>10} {'mean':>10} "
        f"{'total':>12}"
    )
    for scene, (v, f) in {"teapot": nr.data.teapot(), "cube": cube()}.items():
        w = {k: np.asarray(x, np.int64) for k, x in work(v, np.asarray(f), 1024).items()}
        print(row(scene, "pass 1, per face", w["raster_faces_kernel"]))
        print(row(scene, "pass 1, per tile", w["raster_tiles_kernel"]))
        kato = w["kato_kernel"]
        print(row(scene, "Kato, 32 threads per face", kato))
        per_face = kato[: kato.size // KATO_LANES * KATO_LANES].reshape(-1, KATO_LANES).sum(1)
        print(row(scene, "Kato, one thread per face", per_face))


if __name__ == "__main__":
    main()
