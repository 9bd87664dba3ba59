"""Kernels against the independent references of tests/_reference.py; named cases, goldens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi
from tests import _reference as ref
from tests._helpers import (
    FAR,
    NEAR,
    SCENE,
    kernel_maps,
    random_faces,
    reference_data,
    threaded_results,
    tie_scene,
)

_reference_forward_jit = jax.jit(ref.forward, static_argnums=(1, 2, 3, 4))


def reference_forward(fv, h, w):
    return _reference_forward_jit(jnp.asarray(fv), h, w, NEAR, FAR)


def assert_maps_equal(fv, h, w):
    fi, wt, d = kernel_maps(fv, h, w)
    rfi, rwt, rd = reference_forward(fv, h, w)
    np.testing.assert_array_equal(np.asarray(fi), np.asarray(rfi))
    # Weights lie in [0, 1]; 1e-5 of that range (small weights come out of a cancellation).
    np.testing.assert_allclose(wt, rwt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d, rd, rtol=1e-5)
    return fi, wt, d


def test_forward_matches_reference_on_200_random_meshes():
    # 4 image shapes x 50 meshes of 1..50 faces (unused slots hold culled faces), batched so that
    # each shape compiles once.
    rng = np.random.default_rng(0)
    covered = 0
    for h, w in [(8, 8), (16, 16), (32, 32), (32, 16)]:
        fv = random_faces(rng, 50, 50, h, w)
        n_faces = rng.integers(1, 51, size=50)
        unused = np.arange(50)[None, :] >= n_faces[:, None]
        fv[unused] = fv[unused][:, ::-1]  # reversed winding: these faces are culled
        fi, _, _ = assert_maps_equal(fv, h, w)
        covered += int((np.asarray(fi) >= 0).sum())
    assert covered > 10_000  # the meshes really draw something


def test_rgb_matches_reference_sampling():
    rng = np.random.default_rng(1)
    for t_size, (h, w) in [(1, (24, 24)), (2, (24, 24)), (4, (24, 24)), (3, (16, 40))]:
        fv = jnp.asarray(random_faces(rng, 2, 30, h, w))
        tex = jnp.asarray(rng.uniform(size=(2, 30, t_size, t_size, t_size, 3)), jnp.float32)
        fi, wt, d = kernel_maps(fv, h, w)
        got = _ffi.sample_textures(fv, tex, fi, wt, d, 1e-3)
        want = jax.jit(ref.sample, static_argnums=5)(fv, tex, fi, wt, d, 1e-3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def one_triangle(z=1.0):
    return np.array([[[[-0.5, -0.5, z], [0.5, -0.5, z], [0.0, 0.5, z]]]], np.float32)


def test_one_triangle():
    fi, wt, d = assert_maps_equal(one_triangle(2.0), 16, 16)
    inside = np.asarray(fi[0]) == 0
    assert 30 < inside.sum() < 80
    np.testing.assert_allclose(np.asarray(d[0])[inside], 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(wt[0]).sum(-1)[inside], 1.0, rtol=1e-6)


def test_clockwise_face_is_culled():
    fi, _, _ = kernel_maps(one_triangle()[..., [0, 2, 1], :], 16, 16)
    assert (np.asarray(fi) == -1).all()


def test_overlap_nearer_face_wins():
    far_face = one_triangle(3.0)
    near_face = one_triangle(2.0)
    fi, _, d = assert_maps_equal(np.concatenate([far_face, near_face], 1), 16, 16)
    drawn = np.asarray(fi) >= 0
    assert (np.asarray(fi)[drawn] == 1).all()
    np.testing.assert_allclose(np.asarray(d)[drawn], 2.0)


def test_ties_lowest_face_index_wins():
    tri = one_triangle(2.0)
    fi, _, _ = assert_maps_equal(np.concatenate([tri, tri, tri], 1), 16, 16)
    drawn = np.asarray(fi) >= 0
    assert drawn.any() and (np.asarray(fi)[drawn] == 0).all()


def test_ties_lowest_index_wins_under_threading(tmp_path, on_cpu):
    # The CPU kernels split images into row bands and faces into chunks run on XLA's thread pool.
    # Exact depth ties must still go to the lowest face index, and nothing may depend on the
    # number of threads: the results here must equal, bit for bit, those of a process pinned to
    # one CPU (one pool thread).
    fv = tie_scene()
    got = {k: np.asarray(v) for k, v in threaded_results(fv).items()}
    rfi, _, rd = reference_forward(fv, *SCENE)
    assert (np.asarray(rd[0])[got["fi"][0] >= 0] == 1).all()  # the ties are exact
    np.testing.assert_array_equal(got["fi"], np.asarray(rfi))
    drawn = got["fi"][0] >= 0
    assert drawn.sum() > 1000 and len(np.unique(got["fi"][0][drawn])) > 50
    # Kato's backward on a non-square image (columns and rows scanned differently), 2 face chunks.
    want = ref.kato(fv, got["fi"], got["image"], got["grad"], np.float32(1e-3))
    np.testing.assert_allclose(got["g_fv"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    again = threaded_results(fv)
    for k in got:
        np.testing.assert_array_equal(np.asarray(again[k]), got[k], err_msg=k)
    code = (
        "import os, sys, numpy as np\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from tests._helpers import threaded_results, tie_scene\n"
        "np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in threaded_results(tie_scene()).items()})\n"
    )
    out_file = tmp_path / "one_thread.npz"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", code, str(out_file)],
        cwd=root,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "NMR_JAX_KERNELS": "default"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    one = np.load(out_file)
    for k in got:
        np.testing.assert_array_equal(one[k], got[k], err_msg=k)


def test_behind_camera_and_outside_near_far_are_not_drawn():
    for z in (-1.0, 0.0, 0.05, 0.099, 100.5, 200.0):
        fi, _, d = kernel_maps(one_triangle(z), 16, 16)
        assert (np.asarray(fi) == -1).all(), z
        assert (np.asarray(d) == FAR).all()


def test_pixel_centre_on_edge_is_inside():
    # Pixel centres of a 4x4 image sit at NDC -0.75, -0.25, 0.25, 0.75: put an edge through them.
    tri = np.array([[[[-0.75, -0.75, 1], [0.75, -0.75, 1], [-0.75, 0.75, 1]]]], np.float32)
    fi, _, _ = assert_maps_equal(tri, 4, 4)
    fi = np.asarray(fi[0])
    assert fi[0].tolist() == [0, 0, 0, 0]  # bottom edge row (y = -0.75) is covered
    assert fi[:, 0].tolist() == [0, 0, 0, 0]  # left edge column is covered
    assert fi[3, 0] == 0 and fi[0, 3] == 0  # both far corners, on the hypotenuse


def test_zero_area_face_draws_nothing_and_no_nan():
    tri = np.array([[[[-0.5, -0.5, 1], [0.5, 0.5, 1], [0.0, 0.0, 1]]]], np.float32)
    fi, wt, d = kernel_maps(tri, 16, 16)
    assert (np.asarray(fi) == -1).all()
    assert np.isfinite(np.asarray(wt)).all() and np.isfinite(np.asarray(d)).all()


def test_nan_vertices_do_not_cover():
    fv = np.concatenate([one_triangle(2.0), one_triangle(1.0)], 1)
    fv[0, 1, 0, 0] = np.nan
    fi, _, _ = kernel_maps(fv, 16, 16)
    drawn = np.asarray(fi) >= 0
    assert drawn.any() and (np.asarray(fi)[drawn] == 0).all()


def kato_case(seed, size=(12, 12), channels=4):
    rng = np.random.default_rng(seed)
    h, w = size
    fv = jnp.asarray(random_faces(rng, 2, 6, h, w))
    fi, _, _ = kernel_maps(fv, h, w)
    image = jnp.where(
        (fi >= 0)[..., None],
        jnp.asarray(rng.uniform(size=(2, h, w, channels)), jnp.float32),
        0.2,
    )
    grad = jnp.asarray(rng.normal(size=(2, h, w, channels)), jnp.float32)
    return fv, fi, image, grad


# Six square cases, and non-square ones both ways (rows and columns scan different lengths).
@pytest.mark.parametrize(
    "seed, size", [(s, (12, 12)) for s in range(6)] + [(6, (8, 16)), (7, (16, 8))]
)
def test_kato_backward_matches_loop_reference(seed, size):
    fv, fi, image, grad = kato_case(seed, size)
    got = np.asarray(_ffi.kato_bwd(fv, fi, image, grad, 1e-3))
    want = ref.kato(fv, fi, image, grad, np.float32(1e-3))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())
    assert (got[..., 2] == 0).all()


def test_texture_gradient_equals_jax_grad_of_reference():
    rng = np.random.default_rng(2)
    fv = jnp.asarray(random_faces(rng, 2, 20, 16))
    tex = jnp.asarray(rng.uniform(size=(2, 20, 3, 3, 3, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    fi, wt, d = kernel_maps(fv, 16, 16)
    got = _ffi.sample_textures_bwd(fv, fi, wt, d, g, 1e-3, tex.shape)
    want = jax.grad(lambda t: jnp.sum(ref.sample(fv, t, fi, wt, d, 1e-3) * g))(tex)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.versions
@pytest.mark.parametrize("h, w", [(16, 16), (8, 24)])
def test_depth_gradient_equals_jax_grad_of_reference(h, w):
    rng = np.random.default_rng(3)
    fv = random_faces(rng, 2, 12, h, w)
    fv[..., 2] = np.abs(fv[..., 2]) + 1.0  # all in front, so many pixels carry depth
    fv = jnp.asarray(fv)
    fi, wt, d = kernel_maps(fv, h, w)
    g = jnp.asarray(rng.normal(size=(2, h, w)), jnp.float32)
    got = _ffi.fragments_bwd(fv, fi, wt, d, grad_depth=g)
    want = jax.jit(jax.grad(lambda f: jnp.sum(ref.depth_at(f, fi, h, w) * g)))(fv)
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale)


def test_fragment_gradients_given_as_none_equal_zero_maps():
    # None reaches the kernels as an empty operand, read as zeros, not as a map of zeros. Equal to
    # the tolerance of gradients summed with atomics (on a GPU, in a varying order; docs/gpu.md).
    rng = np.random.default_rng(4)
    fv = jnp.asarray(random_faces(rng, 2, 12, 16))
    fi, wt, d = kernel_maps(fv, 16, 16)
    g3 = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    z3, z1 = jnp.zeros_like(g3), jnp.zeros_like(d)
    for g_w, g_b, g_d in [(g3, None, None), (None, g3, None), (None, None, d), (g3, None, d)]:
        got = _ffi.fragments_bwd(fv, fi, wt, d, g_w, g_b, g_d)
        want = _ffi.fragments_bwd(
            fv, fi, wt, d, z3 if g_w is None else g_w, z3 if g_b is None else g_b,
            z1 if g_d is None else g_d,
        )  # fmt: skip
        scale = float(np.abs(want).max())
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


# Golden gradients of the original's tests (ALGORITHM.md): silhouette, image 64, no anti-aliasing,
# perspective off, default eye, fill_back, eps 1e-4; loss at one pixel of the returned image.
GOLDEN = [
    (
        [[0.8, 0.8, 1.0], [0.0, -0.5, 1.0], [0.2, -0.4, 1.0]],
        (25, 35),
        1.0,
        [[1.6725862, -0.26021874, 0], [1.41986704, -1.64284933, 0], [0, 0, 0]],
    ),
    (
        [[0.8, 0.8, 1.0], [-0.5, -0.8, 1.0], [0.8, -0.8, 1.0]],
        (40, 50),
        0.0,
        [[0.98646867, 1.04628897, 0], [-1.03415668, -0.10403691, 0], [3.00094461, -1.55173182, 0]],
    ),
]


@pytest.mark.versions
@pytest.mark.parametrize("case", [0, 1])
def test_golden_silhouette_gradients(case):
    verts, (row, col), target, want = GOLDEN[case]
    renderer = nr.Renderer(image_size=64, anti_aliasing=False, perspective=False)
    faces = jnp.array([[0, 1, 2]], jnp.int32)

    @jax.jit
    def loss(v):
        alpha = renderer.render_silhouettes(v, faces)
        return jnp.abs(alpha[row, col] - target)

    got = jax.grad(loss)(jnp.asarray(verts, jnp.float32))
    # Reached: relative error 5e-6 (case 1) and 3e-5 (case 2) of the largest entry.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_golden_silhouette_images():
    """The original's silhouettes of the two gradient cases (64x64 PNGs)."""
    data = reference_data()
    import imageio.v3 as iio

    renderer = nr.Renderer(image_size=64, anti_aliasing=False, perspective=False)
    for case in (0, 1):
        verts = jnp.asarray(GOLDEN[case][0], jnp.float32)
        alpha = np.asarray(renderer.render_silhouettes(verts, jnp.array([[0, 1, 2]])))
        png = iio.imread(data / "tests/data" / f"rasterize_silhouettes_case{case + 1}.png")
        want = (png if png.ndim == 2 else png[..., 0]).astype(np.float32) / 255
        # The original's case-1 image also marks its target pixel, which lies outside the face.
        if case == 0:
            row, col = GOLDEN[0][1]
            assert alpha[row, col] == 0 and want[row, col] == 1
            want[row, col] = 0
        np.testing.assert_array_equal(alpha, want)


@pytest.mark.parametrize("h, w", [(8, 8), (8, 12)])
def test_anti_aliasing_pools_2x2_and_flips(h, w):
    fv = jnp.asarray(one_triangle(2.0))
    big = nr.rasterize_silhouettes(fv, (2 * h, 2 * w), anti_aliasing=False)
    small = nr.rasterize_silhouettes(fv, (h, w), anti_aliasing=True)
    assert small.shape == (1, h, w)
    np.testing.assert_allclose(small, big.reshape(1, h, 2, w, 2).mean((2, 4)))
    fi = nr.rasterize_face_index_map(fv, (h, w), anti_aliasing=True)
    assert fi.shape == (1, 2 * h, 2 * w)
    np.testing.assert_array_equal(np.asarray(fi) >= 0, np.asarray(big) > 0)
    # Row 0 is the top: the triangle's apex (y = +0.5) is in the upper half.
    rows = np.nonzero(np.asarray(big[0]).any(1))[0]
    assert np.asarray(big[0])[rows[0]].sum() < np.asarray(big[0])[rows[-1]].sum()


def test_texture_cube_image_flipped_once_regression():
    """The texture-cube shader works pixel by pixel: its maps are not flipped to top-first rows
    and back (four extra copies of 1024^2 maps cost the 100k-face torus 1.4x its forward)."""
    textures = jnp.ones((1, 1, 2, 2, 2, 3), jnp.float32)
    fn = jax.jit(lambda fv: nr.rasterize_rgbad(fv, textures, 16, return_depth=False).rgb)
    hlo = fn.lower(jnp.asarray(one_triangle(2.0))).as_text()
    assert hlo.count("stablehlo.reverse") == 1


@pytest.mark.versions
@pytest.mark.parametrize("h, w", [(16, 16), (16, 8)])
def test_weight_map_and_face_index_map_agree_with_kernel(h, w):
    rng = np.random.default_rng(4)
    fv = random_faces(rng, 1, 20, h, w)
    fi, wt = nr.rasterize_face_index_map_and_weight_map(fv, (h, w), anti_aliasing=False)
    rfi, rwt, _ = reference_forward(fv, h, w)
    np.testing.assert_array_equal(fi, np.flip(np.asarray(rfi), 1))
    np.testing.assert_allclose(
        nr.rasterize_weight_map(fv, (h, w), False), np.flip(rwt, 1), atol=1e-6
    )
    assert nr.rasterize_face_index_map(fv, (h, w), False).dtype == jnp.int32
    np.testing.assert_allclose(wt, np.flip(np.asarray(rwt), 1), atol=1e-6)


def test_weight_map_gradient_matches_finite_differences_at_interior_pixels():
    h, w = 12, 20
    rng = np.random.default_rng(7)
    fv = jnp.asarray(random_faces(rng, 2, 20, h, w))
    maps = jax.jit(lambda f: nr.rasterize_face_index_map_and_weight_map(f, (h, w), False))
    weights = lambda f: maps(f)[1]  # noqa: E731
    # Move x and y only (z cannot change the weights, but it could change which face is in front).
    direction = jnp.asarray(rng.normal(size=fv.shape), jnp.float32).at[..., 2].set(0.0)
    step = 3e-4  # NDC: 1/300 pixel, so pixels well inside a face stay inside it.
    (fi, wt), (fi_minus, w_minus), (fi_plus, w_plus) = (
        maps(fv + s * direction) for s in (0.0, -step, step)
    )
    # Interior pixels: every weight away from 0 (no clamp) and the face index unchanged.
    interior = np.asarray((wt > 0.02).all(-1) & (fi_minus == fi) & (fi_plus == fi))
    assert interior.sum() > 150  # 218 of the 2 x 240 pixels
    jvp = jax.jit(lambda t: jax.jvp(weights, (fv,), (t,))[1])
    fd = (w_plus - w_minus) / (2 * step)
    got, want = np.asarray(jvp(direction))[interior], np.asarray(fd)[interior]
    # Rounding: float32 weights in [0, 1] differenced over 6e-4 carry ~1e-4 absolute error; the
    # truncation error of central differences on small faces is ~1e-3 relative.
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=1e-3 * np.abs(got).max())
    # Depths do not move the weights.
    assert (np.asarray(jvp(jnp.zeros_like(fv).at[..., 2].set(1.0))) == 0).all()


@pytest.mark.versions
def test_values_interpolated_with_the_weight_map_pass_gradients_to_vertices():
    # A per-vertex attribute interpolated with the weight map: gradients reach the world vertices
    # through the camera, and agree with central differences at interior pixels.
    rng = np.random.default_rng(8)
    # An octahedron with jittered vertices: 8 large faces, so most covered pixels are interior.
    octahedron = np.concatenate([np.eye(3), -np.eye(3)]) + rng.uniform(-0.2, 0.2, (6, 3))
    vertices = jnp.asarray(octahedron, jnp.float32)
    faces = jnp.array(
        [[0, 1, 2], [1, 3, 2], [3, 4, 2], [4, 0, 2], [1, 0, 5], [3, 1, 5], [4, 3, 5], [0, 4, 5]]
    )
    renderer = nr.Renderer(image_size=(24, 32), anti_aliasing=False, eye=(0.8, 1.2, -2.0))
    attribute = jnp.asarray(rng.uniform(size=6), jnp.float32)

    @jax.jit
    def maps(v):
        fv = nr.vertices_to_faces(renderer.transform(v), faces)
        return nr.rasterize_face_index_map_and_weight_map(fv, (24, 32), anti_aliasing=False)

    direction = jnp.asarray(rng.normal(size=vertices.shape), jnp.float32)
    step = 1e-3
    (fi, wt), (fi_minus, _), (fi_plus, _) = (
        maps(vertices + s * direction) for s in (0.0, -step, step)
    )
    interior = (np.asarray(wt) > 0.02).all(-1) & (fi_minus == fi) & (fi_plus == fi)
    assert interior.sum() > 100, interior.sum()

    @jax.jit
    @jax.value_and_grad
    def loss(v):
        values = jnp.sum(maps(v)[1] * attribute[faces[jnp.maximum(fi, 0)]], -1)
        return jnp.sum(jnp.where(interior, values, 0.0))

    _, grad = loss(vertices)
    assert np.abs(np.asarray(grad)).sum() > 0
    fd = (loss(vertices + step * direction)[0] - loss(vertices - step * direction)[0]) / (2 * step)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(fd), rtol=1e-2)


def test_weight_map_of_a_mesh_with_fill_back_copies_sees_the_near_side():
    # The README's weight-map snippet rasterized the teapot's faces alone: they are wound for a
    # right-handed world, the default camera culls them as back faces, and 97 % of the pixels
    # showed the far side. With the reversed copies (what fill_back adds) the map sees what the
    # renderer draws.
    vertices, faces = nr.data.teapot()
    renderer = nr.Renderer(image_size=32, anti_aliasing=False)
    depth = np.asarray(renderer.render_depth(vertices, faces))
    projected = renderer.transform(vertices)
    both_sides = jnp.concatenate([faces, faces[:, ::-1]])
    fi = np.asarray(
        nr.rasterize_face_index_map(nr.vertices_to_faces(projected, both_sides), 32, False)
    )
    covered = fi >= 0
    np.testing.assert_array_equal(covered, depth < renderer.far)
    # The faces seen are the nearest: their depth at the pixel is the rendered depth.
    fv = np.asarray(nr.vertices_to_faces(projected, both_sides))
    seen = fv[fi[covered], :, 2].min(-1)
    assert (seen <= depth[covered] + 1e-4).all()
    alone = np.asarray(
        nr.rasterize_face_index_map(nr.vertices_to_faces(projected, faces), 32, False)
    )
    far_side = fv[alone[alone >= 0], :, 2].min(-1) > depth[alone >= 0] + 0.05
    assert far_side.mean() > 0.5  # the trap: without the copies, mostly the far side


@pytest.mark.versions
def test_rgbad_jit_vmap_and_batch_broadcast():
    rng = np.random.default_rng(5)
    fv = jnp.asarray(random_faces(rng, 3, 10, 16))
    tex = jnp.asarray(rng.uniform(size=(1, 10, 2, 2, 2, 3)), jnp.float32)  # shared by the batch
    out = jax.jit(lambda f, t: nr.rasterize_rgbad(f, t, 16, anti_aliasing=True))(fv, tex)
    assert out.rgb.shape == (3, 16, 16, 3) and out.alpha.shape == (3, 16, 16)
    per_view = jax.vmap(lambda f: nr.rasterize_rgbad(f, tex[0], 16).rgb)(fv)
    np.testing.assert_allclose(per_view, out.rgb, atol=1e-6)
    # No batch dimension at all.
    single = nr.rasterize(fv[1], tex[0], 16)
    np.testing.assert_allclose(single, out.rgb[1], atol=1e-6)


def test_gradients_flow_and_are_finite():
    rng = np.random.default_rng(6)
    fv = random_faces(rng, 2, 10, 16)
    fv[..., 2] = np.abs(fv[..., 2]) + 1.0
    tex = jnp.asarray(rng.uniform(size=(2, 10, 2, 2, 2, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)

    def loss(f, t):
        out = nr.rasterize_rgbad(f, t, 16)
        return jnp.sum((out.rgb - target) ** 2) + jnp.sum(out.depth) * 1e-3

    gf, gt = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(fv), tex)
    assert np.isfinite(gf).all() and np.isfinite(gt).all()
    assert np.abs(gf).sum() > 0 and np.abs(gt).sum() > 0


@pytest.mark.versions
def test_vertices_to_faces_gathers_and_scatters():
    v = jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    f = jnp.array([[0, 1, 2], [3, 2, 1]], jnp.int32)
    np.testing.assert_array_equal(nr.vertices_to_faces(v, f), np.asarray(v)[np.asarray(f)])
    g = jax.grad(lambda v: jnp.sum(nr.vertices_to_faces(v, f)))(v)
    np.testing.assert_array_equal(g[:, 0], [1, 2, 2, 1])


@pytest.mark.versions
@pytest.mark.parametrize("bad", [-1, 4, 1000])
@pytest.mark.parametrize("jit", [False, True])
def test_face_index_out_of_range_raises(bad, jit):
    v = jnp.zeros((4, 3), jnp.float32)
    f = jnp.array([[0, 1, 2], [0, 1, bad]], jnp.int32)
    fn = jax.jit(nr.vertices_to_faces) if jit else nr.vertices_to_faces
    # Eagerly the runtime error surfaces as ValueError, under jit as JaxRuntimeError.
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="faces holds vertex index"):
        jax.block_until_ready(fn(v, f))


def test_wrong_dtype_and_shape_raise_naming_the_argument():
    v = jnp.zeros((4, 3), jnp.float32)
    f = jnp.array([[0, 1, 2]], jnp.int32)
    with pytest.raises(TypeError, match="faces"):
        nr.vertices_to_faces(v, f.astype(jnp.float32))
    with pytest.raises(TypeError, match="vertices"):
        nr.vertices_to_faces(v.astype(jnp.complex64), f)
    with pytest.raises(ValueError, match="vertices"):
        nr.vertices_to_faces(jnp.zeros((4, 2)), f)
    with pytest.raises(ValueError, match="faces"):
        nr.rasterize_silhouettes(jnp.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="textures"):
        nr.rasterize(jnp.zeros((2, 3, 3)), jnp.zeros((3, 2, 2, 2, 3)))
    with pytest.raises(ValueError, match="image_size"):
        nr.rasterize_silhouettes(jnp.zeros((2, 3, 3)), image_size=0)
    with pytest.raises(ValueError, match="batch"):
        nr.vertices_to_faces(jnp.zeros((2, 4, 3)), jnp.zeros((3, 1, 3), jnp.int32))


@pytest.mark.versions
def test_bad_index_under_jit_leaves_the_process_alive():
    code = (
        "import jax, jax.numpy as jnp, nmr_jax as nr\n"
        "try:\n"
        "    jax.jit(nr.vertices_to_faces)(jnp.zeros((3, 3)), jnp.array([[0, 1, 99]]))"
        ".block_until_ready()\n"
        "except jax.errors.JaxRuntimeError as e:\n"
        "    print('raised', 'faces' in str(e))\n"
        "print('alive')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raised True" in out.stdout and "alive" in out.stdout
