"""The CUDA kernels: built and registered like the CPU ones, and equal to them.

Each parity test runs the CUDA code path two ways and compares it with the CPU kernels in the
same process: "cuda-host", cuda_ops.cu compiled for the host (csrc/cuda_host.h: every thread of a
launch run in sequence on the CPU), wherever the package was built with NMR_JAX_CUDA_HOST (the
default); and "gpu", the nvcc build on a GPU, skipped without one. Parity: face ids exactly,
values to 1e-5 relative, gradients to 1e-4 (float atomics change the summation order). The rest
of the suite runs on a GPU as it is (the GPU is then jax's default device), and runs entirely on
the CUDA code path with NMR_JAX_KERNELS=cuda-host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi, _nmr_jax_cpu
from nmr_jax.data import teapot
from tests._helpers import FAR, NEAR, SCENE, host_devices, needs_cuda_host, random_faces, tie_scene

# CI's sanitizer section runs the whole file on its instrumented build of the host CUDA kernels.
pytestmark = pytest.mark.cuda_host


def _device(platform: str) -> jax.Device | None:
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        return None


GPU = _device("gpu")
CPU = _device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _gpu_missing() -> str | None:
    if GPU is None:
        return "no GPU: jax.devices('gpu') is unavailable here"
    if not _ffi.HAS_CUDA_BUILD:
        return "nmr_jax was built without CUDA (no nvcc at build time, or NMR_JAX_CUDA=OFF)"
    return None


def _run_cuda_host(fn: Callable, *args):
    assert _ffi.cuda_host is not None
    before = _ffi.cuda_host.counters()["launches"]
    with _ffi.using_kernels("cuda-host"), jax.default_device(CPU):
        out = fn(*jax.device_put(args, CPU))
        out = jax.tree.map(np.asarray, out)
    # The host-compiled CUDA handlers ran, not the CPU ones (empty batches launch nothing).
    assert _ffi.cuda_host.counters()["launches"] > before or not np.size(args[0])
    return out


def _run_gpu(fn: Callable, *args):
    out = fn(*jax.device_put(args, GPU))
    return jax.tree.map(np.asarray, out)


@pytest.fixture(params=["cuda-host", "gpu"])
def cuda(request) -> Callable:
    """Runs fn(*args) on the CUDA code path and returns numpy: the host build or the GPU."""
    if CPU is None:
        pytest.skip("no CPU backend to compare with (JAX_PLATFORMS hides it)")
    if request.param == "gpu":
        if (reason := _gpu_missing()) is not None:
            pytest.skip(f"CUDA parity on a GPU: {reason}")
        return _run_gpu
    if _ffi.cuda_host is None:
        pytest.skip("nmr_jax was built without the host CUDA module (NMR_JAX_CUDA_HOST=OFF)")
    return _run_cuda_host


def on_cpu_kernels(fn: Callable, *args):
    """fn(*args) with the CPU kernels on the CPU, returned as numpy."""
    with _ffi.using_kernels("default"), jax.default_device(CPU):
        out = fn(*jax.device_put(args, CPU))
        return jax.tree.map(np.asarray, out)


def both(cuda: Callable, fn: Callable, *args):
    return on_cpu_kernels(fn, *args), cuda(fn, *args)


def assert_grads_close(cpu, gpu):
    scale = max(float(np.abs(cpu).max()), 1e-30)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * scale)


def assert_maps_equal(cpu, gpu):
    (fi_c, wt_c, d_c), (fi_g, wt_g, d_g) = cpu, gpu
    np.testing.assert_array_equal(fi_g, fi_c)
    np.testing.assert_allclose(wt_g, wt_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_g, d_c, rtol=1e-5)


@pytest.mark.versions
def test_cuda_modules_register_the_cpu_targets():
    modules = [_ffi.cuda_host] if _ffi.cuda_host is not None else []
    if _ffi.HAS_CUDA_BUILD:
        from nmr_jax import _nmr_jax_cuda

        modules.append(_nmr_jax_cuda)
    if not modules:
        pytest.skip("nmr_jax was built without CUDA and without its host CUDA module")
    # Every target that csrc/targets.h defines (each opens with a comment "// nmr_<name>:" or,
    # for a transpose of the target before it, "// nmr_<name>,").
    targets = re.findall(r"^// (nmr_\w+)[:,]", (ROOT / "csrc" / "targets.h").read_text(), re.M)
    assert sorted(_nmr_jax_cpu.registrations()) == sorted(set(targets))
    for module in modules:
        assert sorted(module.registrations()) == sorted(_nmr_jax_cpu.registrations())


def rasterize(fv, h, w):
    return _ffi.rasterize(fv, h, w, NEAR, FAR)


@pytest.mark.parametrize("size", [(16, 16), (32, 24), (64, 64)])
@pytest.mark.parametrize("batch", [1, 70])
def test_forward_parity_on_random_meshes(cuda, size, batch):
    h, w = size
    rng = np.random.default_rng(h * w + batch)
    # 70 images: more than one launch chunk of batch elements.
    fv = random_faces(rng, batch, 40, h, w)
    # Half the faces off the pixel grid: with no FMA contraction the edge tests round alike.
    fv[:, 20:, :, :2] += rng.uniform(-0.01, 0.01, size=fv[:, 20:, :, :2].shape).astype(np.float32)
    cpu, gpu = both(cuda, lambda f: rasterize(f, h, w), fv)
    assert (cpu[0] >= 0).mean() > 0.2
    assert_maps_equal(cpu, gpu)


def test_forward_parity_with_ties_and_duplicates(cuda):
    fv = tie_scene()
    h, w = SCENE
    cpu, gpu = both(cuda, lambda f: rasterize(f, h, w), fv)
    assert (cpu[0] >= 0).mean() > 0.5
    assert_maps_equal(cpu, gpu)


def test_forward_parity_with_faces_behind_the_camera(cuda):
    # Depths of both signs: pixels with zp <= near are dropped one by one, on both sides alike.
    rng = np.random.default_rng(3)
    fv = random_faces(rng, 4, 40, 32, 48)
    fv[..., 2] = rng.uniform(-2.0, 3.0, size=fv[..., 2].shape).astype(np.float32)
    cpu, gpu = both(cuda, lambda f: rasterize(f, 32, 48), fv)
    assert (cpu[0] >= 0).any() and (cpu[0] < 0).any()
    np.testing.assert_array_equal(gpu[0], cpu[0])
    covered = cpu[0] >= 0
    np.testing.assert_allclose(gpu[2][covered], cpu[2][covered], rtol=1e-4)


def test_ties_lowest_face_index_wins(cuda):
    tri = np.array([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]], np.float32)
    fv = np.stack([tri] * 5)[None]  # five coincident faces
    fi, _, _ = cuda(lambda f: rasterize(f, 16, 16), fv)
    assert (fi >= 0).any()
    assert set(np.unique(fi)) == {-1, 0}


def test_texture_sampling_and_its_gradient_parity_with_broadcast_textures(cuda):
    rng = np.random.default_rng(1)
    fv = random_faces(rng, 3, 30, 32)
    tex = rng.uniform(size=(1, 30, 4, 4, 4, 3)).astype(np.float32)  # shared by the 3 images
    g = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)

    def fn(fv, tex, g):
        fi, wt, d = rasterize(fv, 32, 32)
        rgb = _ffi.sample_textures(fv, tex, fi, wt, d, 1e-3)
        return rgb, _ffi.sample_textures_bwd(fv, fi, wt, d, g, 1e-3, tex.shape)

    (rgb_c, gt_c), (rgb_g, gt_g) = both(cuda, fn, fv, tex, g)
    np.testing.assert_allclose(rgb_g, rgb_c, rtol=1e-5, atol=1e-6)
    assert np.abs(gt_c).max() > 0
    assert_grads_close(gt_c, gt_g)


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("views", [4, 70])
def test_kato_and_fragment_gradient_parity_with_a_shared_mesh(cuda, channels, views):
    rng = np.random.default_rng(channels + views)
    fv = random_faces(rng, 1, 25, 32)
    fv[..., 2] = np.abs(fv[..., 2]) + 1.0  # all in front, so depth gradients reach many faces
    image = rng.uniform(size=(views, 32, 32, channels)).astype(np.float32)
    g_image = rng.normal(size=(views, 32, 32, channels)).astype(np.float32)
    g_depth = rng.normal(size=(views, 32, 32)).astype(np.float32)

    def fn(fv, image, g_image, g_depth):
        fi, wt, d = rasterize(fv, 32, 32)
        # Many images of one mesh (70: more than one launch chunk): gradients sum over them.
        fi = jnp.broadcast_to(fi, (views, 32, 32))
        wt = jnp.broadcast_to(wt, (views, 32, 32, 3))
        d = jnp.broadcast_to(d, (views, 32, 32))
        return _ffi.kato_bwd(fv, fi, image, g_image, 1e-3), _ffi.fragments_bwd(
            fv, fi, wt, d, grad_depth=g_depth
        )

    (k_c, d_c), (k_g, d_g) = both(cuda, fn, fv, image, g_image, g_depth)
    assert np.abs(k_c).max() > 0 and np.abs(d_c).max() > 0
    assert_grads_close(k_c, k_g)
    assert_grads_close(d_c, d_g)


@pytest.mark.parametrize("views", [3, 70])
def test_shading_targets_parity_with_shared_attributes_and_images(cuda, views):
    # Fragments' vertex gradient, face-corner interpolation and image sampling, forward and
    # backward, with the attributes and the image shared by all views (their gradients sum).
    rng = np.random.default_rng(views)
    fv = random_faces(rng, views, 30, 32, 24)
    fv[..., 2] = np.abs(fv[..., 2]) + 1.0
    attributes = rng.normal(size=(1, 30, 3, 5)).astype(np.float32)
    image = rng.uniform(size=(1, 7, 9, 3)).astype(np.float32)
    uv = rng.uniform(-1.5, 2.5, size=(views, 32, 24, 2)).astype(np.float32)
    uv[0, 0, 0] = np.nan  # a non-finite coordinate reads NaN on both sides
    grads = [rng.normal(size=(views, 32, 24, c)).astype(np.float32) for c in (3, 3, 5, 3)]
    g_depth = rng.normal(size=(views, 32, 24)).astype(np.float32)

    def fn(fv, attributes, image, uv, g_w, g_b, g_a, g_s, g_d):
        fi, wt, d = rasterize(fv, 32, 24)
        out = [_ffi.fragments_bwd(fv, fi, wt, d, g_w, g_b, g_d)]
        out.append(_ffi.interpolate(attributes, fi, wt))
        out.extend(_ffi.interpolate_bwd(attributes, fi, wt, g_a))
        for bilinear in (False, True):
            for wrap in (False, True):
                out.append(_ffi.sample_image(image, uv, bilinear, wrap))
                out.extend(_ffi.sample_image_bwd(image, uv, g_s, bilinear, wrap))
        return out

    cpu, gpu = both(cuda, fn, fv, attributes, image, uv, *grads, g_depth)
    nearest_grad_uv = {6, 9}  # piecewise constant in uv: zero
    for k, (c, g) in enumerate(zip(cpu, gpu, strict=True)):
        assert c.shape == g.shape
        np.testing.assert_array_equal(np.isnan(g), np.isnan(c))
        finite = ~np.isnan(c)
        assert (np.abs(c[finite]).max() > 0) != (k in nearest_grad_uv)
        assert_grads_close(c[finite], g[finite])


def test_kato_parity_beyond_one_planar_scratch(cuda):
    # 9 RGBA images of 1024^2: the planar copies of their columns fit 8 at a time (256 MiB), so
    # Kato's kernel runs in two chunks, each reading its own elements' copies.
    rng = np.random.default_rng(9)
    fv = random_faces(rng, 9, 6, 1024)
    image = rng.uniform(size=(9, 1024, 1024, 4)).astype(np.float32)
    g_image = rng.normal(size=(9, 1024, 1024, 4)).astype(np.float32)

    def fn(fv, image, g_image):
        fi = rasterize(fv, 1024, 1024)[0]
        return _ffi.kato_bwd(fv, fi, image, g_image, 1e-3)

    k_c, k_g = both(cuda, fn, fv, image, g_image)
    assert (np.abs(k_c).reshape(9, -1).max(1) > 0).all()
    assert_grads_close(k_c, k_g)


def _projected_on_cpu(vertices, eye, angle: float) -> np.ndarray:
    """The vertices in the camera's screen space, computed once, on the CPU, for both kernel sets
    of a parity test: XLA:GPU may fuse multiply-adds differently from XLA:CPU, moving vertices by
    an ulp, and Kato's gradient jumps when an edge pixel changes face."""
    with jax.default_device(CPU):
        v = jax.device_put(jnp.asarray(vertices), CPU)
        return np.asarray(nr.perspective(nr.look_at(v, jnp.asarray(eye, jnp.float32)), angle))


def _teapot_loss_and_grad(size: int, anti_aliasing: bool = False):
    vertices, faces = teapot()
    projected = _projected_on_cpu(vertices, [1.0, 1.5, -2.5], 30.0)[None]
    faces = np.concatenate([faces, faces[:, ::-1]])[None]  # both sides, as fill_back
    rng = np.random.default_rng(0)
    textures = rng.uniform(size=(1, faces.shape[1], 2, 2, 2, 3)).astype(np.float32)
    target = rng.uniform(size=(1, size, size, 3)).astype(np.float32)

    def loss(v, f, t, target):
        out = nr.rasterize_rgbad(nr.vertices_to_faces(v, f), t, size, anti_aliasing=anti_aliasing)
        return jnp.sum((out.rgb - target) ** 2) + jnp.sum(out.alpha) + 0.01 * jnp.sum(out.depth)

    def fn(v, f, t, target):
        return jax.value_and_grad(loss, argnums=(0, 2))(v, f, t, target)

    return fn, (projected, faces, textures, target)


@pytest.mark.versions
@pytest.mark.parametrize("size", [64, 1024])
def test_teapot_render_and_gradient_parity(cuda, size):
    fn, args = _teapot_loss_and_grad(size)
    (l_c, (gv_c, gt_c)), (l_g, (gv_g, gt_g)) = both(cuda, fn, *args)
    np.testing.assert_allclose(l_g, l_c, rtol=1e-5)
    assert_grads_close(gv_c, gv_g)
    assert_grads_close(gt_c, gt_g)


def _cube() -> tuple[np.ndarray, np.ndarray]:
    # 12 faces, both sides (12 of the 24 face the eye): each covers a large part of the image.
    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
    vertices = corners.astype(np.float32) * 0.9
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int32)
    return vertices, np.concatenate([faces, faces[:, ::-1]])


@pytest.mark.parametrize("scene", ["teapot", "cube"])
def test_maps_parity_at_1024_with_bounded_work_per_thread(cuda, scene):
    # Face ids at 1024^2 exactly: pass 1 draws each face over its row spans, faces bigger than one
    # tile of 8 x 32 pixels tile by tile, and no thread tests more than one tile's 256 pixels.
    if scene == "teapot":
        vertices, faces = teapot()
        vertices = np.asarray(nr.look_at(vertices, jnp.array([1.0, 1.5, -2.5], jnp.float32)))
        eye_angle = 30.0
    else:
        vertices, faces = _cube()
        vertices = np.asarray(nr.look_at(vertices, jnp.array([1.2, 1.0, -2.0], jnp.float32)))
        eye_angle = 45.0
    with jax.default_device(CPU):  # the camera on the CPU only (see _teapot_loss_and_grad)
        fv = np.asarray(nr.vertices_to_faces(nr.perspective(vertices, eye_angle), faces))[None]
    recording = cuda is _run_cuda_host
    if recording:
        _ffi.cuda_host.record_work(True)
    try:
        cpu, gpu = both(cuda, lambda fv: rasterize(fv, 1024, 1024), fv)
        work = _ffi.cuda_host.work() if recording else {}
    finally:
        if recording:
            _ffi.cuda_host.record_work(False)
    assert_maps_equal(cpu, gpu)
    assert (cpu[0] >= 0).mean() > (0.05 if scene == "teapot" else 0.15)  # 0.097, 0.225
    if recording:
        per_tile = np.asarray(work["raster_tiles_kernel"])
        assert per_tile.sum() > 0  # big faces went through the queue
        assert max(per_tile.max(), max(work["raster_faces_kernel"])) <= 256


def test_cube_filling_the_image_parity(cuda):
    # 12 faces that each cover a large part of a 1024^2 image: the tiles of pass 1 and the long
    # out scans of Kato's backward.
    vertices, faces = _cube()
    projected = _projected_on_cpu(vertices, [1.2, 1.0, -2.0], 45.0)
    rng = np.random.default_rng(4)
    target = rng.uniform(size=(1024, 1024)).astype(np.float32)

    def fn(v, target):
        def loss(v):
            fv = nr.vertices_to_faces(v, faces)
            return jnp.sum((nr.rasterize_silhouettes(fv, 1024, anti_aliasing=False) - target) ** 2)

        return jax.value_and_grad(loss)(v)

    (l_c, g_c), (l_g, g_g) = both(cuda, fn, projected, target)
    np.testing.assert_allclose(l_g, l_c, rtol=1e-5)
    assert np.abs(g_c).max() > 0
    assert_grads_close(g_c, g_g)


def test_jit_compiled_training_step_parity(cuda):
    # A whole optimisation step under jit: loss, Kato's gradient, the update.
    fn, (projected, faces, textures, target) = _teapot_loss_and_grad(64, anti_aliasing=True)

    def step(v, f, t, target):
        @jax.jit
        def update(v, t):
            loss, (gv, gt) = fn(v, f, t, target)
            return loss, v - 1e-4 * gv, t - 1e-2 * gt

        return update(v, t)

    cpu, gpu = both(cuda, step, projected, faces, textures, target)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-5)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu[2], cpu[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["no faces", "no vertices", "batch 0"])
def test_empty_shapes_parity(cuda, case):
    shapes = {"no faces": (1, 0, 5), "no vertices": (1, 4, 0), "batch 0": (0, 4, 5)}
    batch, n_faces, n_vertices = shapes[case]
    rng = np.random.default_rng(6)
    fv = random_faces(rng, batch, n_faces, 16)
    image = rng.uniform(size=(batch, 16, 16, 4)).astype(np.float32)
    tex = rng.uniform(size=(batch, n_faces, 2, 2, 2, 3)).astype(np.float32)

    def fn(fv, image, tex):
        fi, wt, d = rasterize(fv, 16, 16)
        out = [fi, wt, d, _ffi.sample_textures(fv, tex, fi, wt, d, 1e-3)]
        out.append(_ffi.sample_textures_bwd(fv, fi, wt, d, image[..., :3], 1e-3, tex.shape))
        out.append(_ffi.kato_bwd(fv, fi, image, image, 1e-3))
        out.append(_ffi.fragments_bwd(fv, fi, wt, d, wt, wt, d))
        attributes = jnp.ones((batch, n_faces, 3, 2), jnp.float32)
        out.append(_ffi.interpolate(attributes, fi, wt))
        out.extend(_ffi.interpolate_bwd(attributes, fi, wt, image[..., :2]))
        out.append(_ffi.sample_image(image, wt[..., :2], True, True))
        out.extend(_ffi.sample_image_bwd(image, wt[..., :2], image, True, True))
        if n_faces == 0 or batch == 0:  # a gather needs vertices for the faces it reads
            v = jnp.zeros((batch, n_vertices, 3), jnp.float32)
            f = jnp.zeros((batch, n_faces, 3), jnp.int32)
            out.append(_ffi.gather_faces(v, f))
            out.append(_ffi.scatter_faces(f, jnp.zeros((batch, n_faces, 3, 3)), v.shape))
        return out

    for c, g in zip(*both(cuda, fn, fv, image, tex), strict=True):
        assert c.shape == g.shape
        if c.dtype == np.int32:
            np.testing.assert_array_equal(g, c)
        elif c.size:
            assert_grads_close(c, g)


@pytest.mark.parametrize("jit", [False, True])
def test_bad_vertex_index_raises(cuda, jit):
    def fn(v, f):
        fn = jax.jit(nr.vertices_to_faces) if jit else nr.vertices_to_faces
        return jax.block_until_ready(fn(v, f))

    v = jnp.zeros((4, 3), jnp.float32)
    f = jnp.array([[0, 1, 2], [0, 1, 7]], jnp.int32)
    with pytest.raises(
        (ValueError, jax.errors.JaxRuntimeError), match="faces holds vertex index 7"
    ):
        cuda(fn, v, f)


def test_padding_rows_parity(cuda):
    # Meshes of different sizes batched with rows of -1: padding draws nothing, passes no gradient.
    vertices, faces = teapot()
    projected = _projected_on_cpu(vertices, [1.0, 1.5, -2.5], 30.0)
    padded = np.full((2, faces.shape[0], 3), -1, np.int32)
    padded[0] = faces
    padded[1, :1000] = faces[:1000]

    def fn(v, f):
        def loss(v):
            fv = nr.vertices_to_faces(v, f)
            return jnp.sum(nr.rasterize_silhouettes(fv, 64) * jnp.arange(64.0))

        return jax.value_and_grad(loss)(v)

    (l_c, g_c), (l_g, g_g) = both(cuda, fn, projected, padded)
    np.testing.assert_allclose(l_g, l_c, rtol=1e-5)
    assert_grads_close(g_c, g_g)


def test_corrupt_indices_make_the_result_nan(cuda):
    # Targets after the gather see only indices the gather checked or the rasterizer wrote; a
    # corrupt one is never used to read memory, and turns the whole result into NaN.
    rng = np.random.default_rng(5)
    fv = random_faces(rng, 1, 10, 16)
    tex = rng.uniform(size=(1, 10, 2, 2, 2, 3)).astype(np.float32)

    def fn(fv, tex):
        fi, wt, d = rasterize(fv, 16, 16)
        # Face 10 of 10, and the extremes of int32.
        bad = fi.at[0, 3, 3].set(10).at[0, 5, 5].set(2**31 - 1).at[0, 6, 6].set(-(2**31))
        image = jnp.ones((1, 16, 16, 4), jnp.float32)
        return (
            _ffi.sample_textures(fv, tex, bad, wt, d, 1e-3),
            _ffi.sample_textures_bwd(fv, bad, wt, d, image[..., :3], 1e-3, tex.shape),
            _ffi.fragments_bwd(fv, bad, wt, d, wt, wt, jnp.ones_like(d)),
            _ffi.kato_bwd(fv, bad, image, image, 1e-3),
            _ffi.interpolate(jnp.ones((1, 10, 3, 2)), bad, wt),
            *_ffi.interpolate_bwd(jnp.ones((1, 10, 3, 2)), bad, wt, image[..., :2]),
            _ffi.scatter_faces(
                jnp.array([[0, 1, 2], [0, 2**31 - 1, 9]], jnp.int32), jnp.ones((2, 3, 3)), (4, 3)
            ),
        )

    for out in cuda(fn, fv, tex):
        assert np.isnan(out).all()


@needs_cuda_host
def test_package_renders_the_teapot_through_the_host_cuda_handlers():
    # NMR_JAX_KERNELS=cuda-host in a plain process: every custom call uses the host-compiled CUDA
    # targets, as the compiled program's custom-call names and the runtime's counters show.
    script = textwrap.dedent(
        """
        import json, re
        import jax, jax.numpy as jnp
        import nmr_jax as nr
        from nmr_jax import _ffi
        from nmr_jax.data import teapot

        v, f = teapot()
        def loss(v):
            eye = jnp.array([1.0, 1.5, -2.5], jnp.float32)
            fv = nr.vertices_to_faces(nr.perspective(nr.look_at(v, eye), 30.0), f)
            tex = jnp.ones((f.shape[0], 2, 2, 2, 3), jnp.float32)
            return jnp.sum(nr.rasterize(fv, tex, 64))
        hlo = jax.jit(jax.value_and_grad(loss)).lower(v).as_text()
        targets = sorted(set(re.findall(r"nmr_\\w+", hlo)))
        value, grad = jax.jit(jax.value_and_grad(loss))(v)
        print(json.dumps([targets, float(value), float(jnp.abs(grad).max()),
                          _ffi.cuda_host.counters()]))
        """
    )
    # The CPU platform only: on a GPU machine XLA would compile for the GPU, where the host
    # targets are not registered.
    env = dict(os.environ, NMR_JAX_KERNELS="cuda-host", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    targets, value, grad_max, counters = json.loads(out.stdout.strip().splitlines()[-1])
    assert targets and all(t.endswith("_cuda_host") for t in targets), targets
    assert "nmr_kato_bwd_cuda_host" in targets and "nmr_gather_faces_cuda_host" in targets
    assert value > 0 and grad_max > 0
    assert counters["launches"] > 0


@needs_cuda_host
def test_gather_does_not_synchronise_for_concrete_faces():
    # Concrete faces are checked on the host, so the CUDA gather skips its device check and the
    # stream synchronisation that reports it; traced faces keep both (counted by the host build).
    vertices, faces = teapot()

    def syncs(fn):
        before = _ffi.cuda_host.counters()["syncs"]
        with _ffi.using_kernels("cuda-host"), jax.default_device(CPU):
            jax.block_until_ready(fn())
        return _ffi.cuda_host.counters()["syncs"] - before

    assert syncs(lambda: nr.vertices_to_faces(vertices, faces)) == 0
    # Faces closed over by a jitted function are constants, so concrete too.
    assert syncs(lambda: jax.jit(lambda v: nr.vertices_to_faces(v, faces))(vertices)) == 0
    assert syncs(lambda: jax.jit(nr.vertices_to_faces)(vertices, faces)) == 1


@pytest.mark.versions
@needs_cuda_host
def test_handlers_make_the_device_of_the_call_current():
    # On a machine with several GPUs, a handler must launch on the device that XLA runs the call
    # on, not on whichever device is current: each handler sets it from the call's device ordinal.
    # The host runtime records the device set last; here two CPU devices stand for two GPUs.
    script = textwrap.dedent(
        """
        import json
        import jax, jax.numpy as jnp
        import nmr_jax as nr
        from nmr_jax import _ffi

        fv = jnp.array([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]], jnp.float32)
        seen = []
        for device in [jax.devices()[1], jax.devices()[0], jax.devices()[1]]:
            image = jax.jit(nr.rasterize_silhouettes, static_argnums=1)(
                jax.device_put(fv, device), 8)
            seen.append([float(image.sum()), _ffi.cuda_host.counters()["device"]])
        print(json.dumps(seen))
        """
    )
    env = dict(
        os.environ,
        NMR_JAX_KERNELS="cuda-host",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=host_devices(2),
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert [device for _, device in seen] == [1, 0, 1]
    assert all(value > 0 for value, _ in seen)


def _layers_and_gradient(fv, size, k, blur, every_map=True):
    """The layers of fv and the gradient of a loss reading every one of their float maps (or only
    dist: the other maps' gradients are then absent)."""
    weights = jnp.sin(jnp.arange(size[0] * size[1] * k, dtype=jnp.float32)).reshape(*size, k)

    def loss(fv):
        layers = nr.rasterize_layers(fv, size, num_layers=k, blur_radius=blur)
        hit = layers.face_index >= 0
        if not every_map:
            return jnp.sum(weights * jnp.where(hit, layers.dist, 0.0)), layers
        maps = jnp.where(hit, layers.depth + layers.dist, 0.0) + layers.bary.sum(-1)
        return jnp.sum(weights * (maps + layers.bary_screen[..., 0])), layers

    (_, layers), grad = jax.value_and_grad(loss, has_aux=True)(fv)
    return layers, grad


@pytest.mark.parametrize(
    ("batch", "size", "k", "blur"),
    [(2, (16, 32), 1, 0.0), (3, (32, 16), 6, 0.02), (70, (16, 16), 3, 0.05)],
)
def test_layers_and_their_gradient_parity(cuda, batch, size, k, blur):
    # Batch 70: two launches of the forward's chunks and of the backward's.
    fv = random_faces(np.random.default_rng(batch), batch, 25, *size)
    fv[:, ::7] = 0.0  # padding rows
    (l_c, g_c), (l_g, g_g) = both(cuda, lambda f: _layers_and_gradient(f, size, k, blur), fv)
    np.testing.assert_array_equal(l_g.face_index, l_c.face_index)
    for c, g in zip(l_c[1:], l_g[1:], strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
    assert_grads_close(g_c, g_g)
    assert (l_c.face_index[..., -1] >= 0).any()


def test_layers_parity_with_ties_and_k_beyond_the_faces(cuda):
    fv = tie_scene()  # exact depth ties and duplicated faces: the insertion order must not matter
    (l_c, g_c), (l_g, g_g) = both(
        cuda, lambda f: _layers_and_gradient(f, SCENE, 8, 0.004, every_map=False), fv
    )
    np.testing.assert_array_equal(l_g.face_index, l_c.face_index)
    np.testing.assert_array_equal(l_g.depth, l_c.depth)
    assert_grads_close(g_c, g_g)


@pytest.mark.parametrize("case", ["no faces", "batch 0", "corrupt index"])
def test_layers_edge_cases_parity(cuda, case):
    batch, n_faces = {"no faces": (1, 0), "batch 0": (0, 5), "corrupt index": (1, 5)}[case]
    fv = random_faces(np.random.default_rng(1), batch, n_faces, 16)

    def fn(fv, backward=True):
        layers = _ffi.rasterize_layers(fv, 16, 16, 3, NEAR, FAR, 0.01)
        if not backward:
            return layers
        fi = layers[0].at[0, 2, 2, 0].set(n_faces) if case == "corrupt index" else layers[0]
        g = _ffi.layers_bwd(fv, fi, layers[2], layers[1], layers[3], jnp.ones(fi.shape))
        return (*layers, g, _ffi.layers_bwd(fv, fi, grad_dist=jnp.ones(fi.shape)))

    # The CPU raises on a corrupt index; the CUDA code, which cannot, returns NaN.
    cpu = on_cpu_kernels(lambda fv: fn(fv, case != "corrupt index"), fv)
    gpu = cuda(fn, fv)
    if case == "corrupt index":
        with pytest.raises(jax.errors.JaxRuntimeError, match="face_index holds 5"):
            on_cpu_kernels(fn, fv)
    for c, g in zip(cpu, gpu, strict=False):
        np.testing.assert_array_equal(g, c)
    if case == "corrupt index":
        assert np.isnan(gpu[5]).all() and np.isnan(gpu[6]).all()


@pytest.mark.parametrize("aggregation", ["probabilistic", "max"])
@pytest.mark.parametrize("distribution", ["logistic", "gaussian", "uniform", "cauchy"])
def test_soft_silhouettes_parity(cuda, distribution, aggregation):
    rng = np.random.default_rng(21)
    # 70 images (two launch chunks), per-image sigma, one padding row and one face behind the eye.
    fv = random_faces(rng, 70, 12, 32, 24)
    fv[:, 5] = 0.0
    fv[:, 6, :, 2] = -1.0
    sigma = np.geomspace(1e-4, 1e-2, 70).astype(np.float32)
    weights = rng.normal(size=(70, 32, 24)).astype(np.float32)
    attrs = nr.soft._Config(32, 24, NEAR, FAR, 1e-4, distribution, aggregation).attrs()

    tangent = rng.normal(size=fv.shape).astype(np.float32)

    def fn(fv, sigma, weights, tangent):
        alpha, acc, count = _ffi.soft_silhouettes(fv, sigma, 32, 24, attrs)
        grads = _ffi.soft_silhouettes_bwd(fv, sigma, acc, count, weights, attrs)
        # Forward mode: the vertices' tangent, and sigma's (relative to sigma).
        jvp = _ffi.soft_silhouettes_jvp(fv, sigma, acc, count, tangent, 0.1 * sigma, attrs)
        return alpha, acc, count, grads, jvp

    cpu, gpu = both(cuda, fn, fv, sigma, weights, tangent)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gpu[2], cpu[2])  # saturated counts, or the max's faces
    assert_grads_close(cpu[3][0], gpu[3][0])
    assert_grads_close(cpu[3][1], gpu[3][1])
    assert_grads_close(cpu[4], gpu[4])


def test_soft_silhouettes_empty_shapes_parity(cuda):
    attrs = nr.soft._Config(16, 16, NEAR, FAR, 1e-4, "logistic", "probabilistic").attrs()

    def fn(fv, sigma):
        alpha, acc, count = _ffi.soft_silhouettes(fv, sigma, 16, 16, attrs)
        jvp = _ffi.soft_silhouettes_jvp(fv, sigma, acc, count, fv, sigma, attrs)
        return alpha, (*_ffi.soft_silhouettes_bwd(fv, sigma, acc, count, alpha, attrs), jvp)

    for batch, n_faces in [(1, 0), (0, 3)]:
        fv = np.zeros((batch, n_faces, 3, 3), np.float32)
        sigma = np.full(batch, 1e-3, np.float32)
        cpu, gpu = both(cuda, fn, fv, sigma)
        np.testing.assert_array_equal(gpu[0], cpu[0])
        for c, g in zip(cpu[1], gpu[1], strict=True):
            np.testing.assert_array_equal(g, c)


def test_soft_teapot_loss_and_gradient_parity(cuda):
    vertices, faces = teapot()
    eye = jnp.array([1.0, 1.5, -2.5], jnp.float32)

    def fn(v, f):
        def loss(v):
            fv = nr.vertices_to_faces(nr.perspective(nr.look_at(v, eye), 30.0), f)
            return jnp.sum(nr.soft_silhouettes(fv, 64, 1e-4) * jnp.arange(64.0))

        return jax.value_and_grad(loss)(v)

    (l_c, g_c), (l_g, g_g) = both(cuda, fn, vertices, faces)
    np.testing.assert_allclose(l_g, l_c, rtol=1e-5)
    assert_grads_close(g_c, g_g)


def test_soft_rgb_parity(cuda):
    rng = np.random.default_rng(22)
    # 70 images (two launch chunks), textures shared by the batch, per-image sigma and gamma.
    fv = random_faces(rng, 70, 12, 32, 24)
    fv[:, 5] = 0.0
    tex = rng.uniform(size=(1, 12, 3, 3, 3, 3)).astype(np.float32)
    params = np.stack([np.geomspace(1e-4, 1e-2, 70), np.geomspace(1e-3, 1e-1, 70)], -1)
    params = params.astype(np.float32)
    grad = rng.normal(size=(70, 32, 24, 3)).astype(np.float32)
    soft = nr.soft._Config(32, 24, NEAR, FAR, 1e-4, "logistic", "probabilistic")
    attrs = nr.soft._ColorConfig(soft, 1e-3, (0.1, 0.2, 0.3)).attrs()
    # Barycentric maps (a clipped piece's corners in its source face), per image and face.
    bary_map = rng.dirichlet(np.ones(3), size=(70, 12, 3)).astype(np.float32)

    # Forward mode: tangents of the vertices, textures, (sigma, gamma) (relative) and maps.
    tangents = (
        rng.normal(size=fv.shape).astype(np.float32),
        rng.normal(size=tex.shape).astype(np.float32),
        0.1 * params,
        rng.normal(size=bary_map.shape).astype(np.float32),
    )

    def fn(fv, tex, params, grad, bary_map, tangents):
        out = _ffi.soft_rgb(fv, tex, params, 32, 24, attrs)
        mapped = _ffi.soft_rgb(fv, tex, params, 32, 24, attrs, bary_map)
        return (
            (out, mapped),
            (
                *_ffi.soft_rgb_bwd(fv, tex, params, out, grad, attrs),
                *_ffi.soft_rgb_bwd(fv, tex, params, mapped, grad, attrs, bary_map),
                _ffi.soft_rgb_jvp(fv, tex, params, out, tangents[:3], attrs),
                _ffi.soft_rgb_jvp(fv, tex, params, mapped, tangents, attrs, bary_map),
            ),
        )

    cpu, gpu = both(cuda, fn, fv, tex, params, grad, bary_map, tangents)
    for c, g in zip(cpu[0], gpu[0], strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
    for c, g in zip(cpu[1], gpu[1], strict=True):
        assert_grads_close(c, g)
