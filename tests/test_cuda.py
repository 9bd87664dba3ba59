"""The CUDA kernels: built and registered like the CPU ones, and equal to them on a GPU.

Parity: face ids exactly, values to 1e-5 relative, gradients to 1e-4 (float atomics change the
summation order). Without a GPU (``jax.devices("gpu")`` unavailable) those tests skip, saying so;
the build test below still runs wherever the package was compiled with nvcc. The rest of the suite
runs on a GPU as it is: there jax's default device is the GPU (or force it with
``JAX_PLATFORMS=cuda``, which hides the CPU backend and so skips the parity tests here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi, _nmr_jax_cpu  # type: ignore[attr-defined]
from nmr_jax.data import teapot
from tests._helpers import FAR, NEAR, random_faces


def _device(platform: str) -> jax.Device | None:
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        return None


GPU = _device("gpu")
CPU = _device("cpu")


def _missing() -> str | None:
    if GPU is None:
        return "no GPU: jax.devices('gpu') is unavailable here"
    if CPU is None:
        return "no CPU backend to compare with (JAX_PLATFORMS hides it)"
    if not _ffi.HAS_CUDA_BUILD:
        return "nmr_jax was built without CUDA (no nvcc at build time, or NMR_JAX_CUDA=OFF)"
    return None


needs_gpu = pytest.mark.skipif(_missing() is not None, reason=f"CUDA parity: {_missing()}")


def on(device, fn, *args):
    """fn(*args) computed on `device`, returned as numpy."""
    out = fn(*jax.device_put(args, device))
    return jax.tree.map(np.asarray, out)


def both(fn, *args):
    return on(CPU, fn, *args), on(GPU, fn, *args)


def assert_grads_close(cpu, gpu):
    scale = max(float(np.abs(cpu).max()), 1e-30)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * scale)


def test_cuda_module_registers_the_cpu_targets():
    if not _ffi.HAS_CUDA_BUILD:
        pytest.skip("nmr_jax was built without CUDA (no nvcc at build time, or NMR_JAX_CUDA=OFF)")
    from nmr_jax import _nmr_jax_cuda  # type: ignore[attr-defined]

    cuda = _nmr_jax_cuda.registrations()
    assert sorted(cuda) == sorted(_nmr_jax_cpu.registrations())
    assert len(cuda) == 7


def rasterize(fv, h, w):
    return _ffi.rasterize(fv, h, w, NEAR, FAR)


@needs_gpu
@pytest.mark.parametrize("size", [(16, 16), (32, 24), (64, 64)])
def test_forward_parity_on_random_meshes(size):
    h, w = size
    rng = np.random.default_rng(h * w)
    # 70 images: more than one launch chunk of batch elements.
    fv = random_faces(rng, 70, 40, h, w)
    # Half the meshes off the pixel grid: with no FMA contraction the edge tests round alike.
    fv[35:, :, :, :2] += rng.uniform(-0.01, 0.01, size=fv[35:, :, :, :2].shape).astype(np.float32)
    (fi_c, wt_c, d_c), (fi_g, wt_g, d_g) = both(lambda f: rasterize(f, h, w), fv)
    assert (fi_c >= 0).mean() > 0.2
    np.testing.assert_array_equal(fi_g, fi_c)
    np.testing.assert_allclose(wt_g, wt_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_g, d_c, rtol=1e-5)


@needs_gpu
def test_ties_lowest_face_index_wins_on_gpu():
    tri = np.array([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]], np.float32)
    fv = np.stack([tri] * 5)[None]  # five coincident faces
    fi, _, _ = on(GPU, lambda f: rasterize(f, 16, 16), fv)
    assert (fi >= 0).any()
    assert set(np.unique(fi)) == {-1, 0}


@needs_gpu
def test_texture_sampling_and_its_gradient_parity_with_broadcast_textures():
    rng = np.random.default_rng(1)
    fv = random_faces(rng, 3, 30, 32)
    tex = rng.uniform(size=(1, 30, 4, 4, 4, 3)).astype(np.float32)  # shared by the 3 images
    g = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)

    def fn(fv, tex, g):
        fi, wt, d = rasterize(fv, 32, 32)
        rgb = _ffi.sample_textures(fv, tex, fi, wt, d, 1e-3)
        return rgb, _ffi.sample_textures_bwd(fv, fi, wt, d, g, 1e-3, tex.shape)

    (rgb_c, gt_c), (rgb_g, gt_g) = both(fn, fv, tex, g)
    np.testing.assert_allclose(rgb_g, rgb_c, rtol=1e-5, atol=1e-6)
    assert np.abs(gt_c).max() > 0
    assert_grads_close(gt_c, gt_g)


@needs_gpu
@pytest.mark.parametrize("channels", [1, 4])
def test_kato_and_depth_gradient_parity_with_a_shared_mesh(channels):
    rng = np.random.default_rng(channels)
    fv = random_faces(rng, 1, 25, 32)
    fv[..., 2] = np.abs(fv[..., 2]) + 1.0  # all in front, so depth gradients reach many faces
    image = rng.uniform(size=(4, 32, 32, channels)).astype(np.float32)
    g_image = rng.normal(size=(4, 32, 32, channels)).astype(np.float32)
    g_depth = rng.normal(size=(4, 32, 32)).astype(np.float32)

    def fn(fv, image, g_image, g_depth):
        fi, wt, d = rasterize(fv, 32, 32)
        fi = jnp.broadcast_to(fi, (4, 32, 32))  # four images of one mesh: gradients sum over them
        wt = jnp.broadcast_to(wt, (4, 32, 32, 3))
        d = jnp.broadcast_to(d, (4, 32, 32))
        return _ffi.kato_bwd(fv, fi, image, g_image, 1e-3), _ffi.depth_bwd(fv, fi, wt, d, g_depth)

    (k_c, d_c), (k_g, d_g) = both(fn, fv, image, g_image, g_depth)
    assert np.abs(k_c).max() > 0 and np.abs(d_c).max() > 0
    assert_grads_close(k_c, k_g)
    assert_grads_close(d_c, d_g)


@needs_gpu
def test_teapot_render_and_gradient_parity():
    # The camera is applied once, on the CPU: XLA may fuse multiply-adds differently on the two
    # devices, which would move vertices by an ulp and edge pixels to other faces.
    vertices, faces = teapot()
    eye = jnp.array([1.0, 1.5, -2.5], jnp.float32)
    with jax.default_device(CPU):
        projected = nr.perspective(nr.look_at(jax.device_put(vertices, CPU), eye), 30.0)
        projected = np.asarray(projected)[None]
    faces = np.concatenate([faces, faces[:, ::-1]])[None]  # both sides, as fill_back
    rng = np.random.default_rng(0)
    textures = rng.uniform(size=(1, faces.shape[1], 2, 2, 2, 3)).astype(np.float32)
    target = rng.uniform(size=(1, 64, 64, 3)).astype(np.float32)

    def loss(v, f, t, target):
        out = nr.rasterize_rgbad(nr.vertices_to_faces(v, f), t, 64)
        return jnp.sum((out.rgb - target) ** 2) + jnp.sum(out.alpha) + 0.01 * jnp.sum(out.depth)

    def fn(v, f, t, target):
        return jax.value_and_grad(loss, argnums=(0, 2))(v, f, t, target)

    (l_c, (gv_c, gt_c)), (l_g, (gv_g, gt_g)) = both(fn, projected, faces, textures, target)
    np.testing.assert_allclose(l_g, l_c, rtol=1e-5)
    assert_grads_close(gv_c, gv_g)
    assert_grads_close(gt_c, gt_g)


@needs_gpu
@pytest.mark.parametrize("jit", [False, True])
def test_bad_vertex_index_raises_on_gpu(jit):
    v = jax.device_put(jnp.zeros((4, 3), jnp.float32), GPU)
    f = jax.device_put(jnp.array([[0, 1, 2], [0, 1, 7]], jnp.int32), GPU)
    fn = jax.jit(nr.vertices_to_faces) if jit else nr.vertices_to_faces
    with pytest.raises(
        (ValueError, jax.errors.JaxRuntimeError), match="faces holds vertex index 7"
    ):
        jax.block_until_ready(fn(v, f))


@needs_gpu
def test_corrupt_indices_make_the_gpu_result_nan():
    # Targets after the gather see only indices the gather checked or the rasterizer wrote; a
    # corrupt one is never used to read memory, and turns the whole result into NaN.
    rng = np.random.default_rng(5)
    fv = random_faces(rng, 1, 10, 16)
    tex = rng.uniform(size=(1, 10, 2, 2, 2, 3)).astype(np.float32)

    def fn(fv, tex):
        fi, wt, d = rasterize(fv, 16, 16)
        bad = fi.at[0, 3, 3].set(10)  # face 10 of 10
        rgb = _ffi.sample_textures(fv, tex, bad, wt, d, 1e-3)
        g = _ffi.depth_bwd(fv, bad, wt, d, jnp.ones_like(d))
        faces = jnp.array([[0, 1, 2], [0, 1, 9]], jnp.int32)
        gv = _ffi.scatter_faces(faces, jnp.ones((2, 3, 3), jnp.float32), (4, 3))
        return rgb, g, gv

    rgb, g, gv = on(GPU, fn, fv, tex)
    assert np.isnan(rgb).all() and np.isnan(g).all() and np.isnan(gv).all()
