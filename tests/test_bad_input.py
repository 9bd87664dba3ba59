"""Bad input and edge cases (README, "Edge cases and bad input"): every bad argument raises a
clear exception naming it before any kernel runs, corrupt data raises from the kernels without
harming the process, and every edge case has its defined output with finite gradients."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi
from nmr_jax import _validate as check
from tests import _reference as ref

TRI = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]], np.float32)
FV = TRI[None]  # [F = 1, 3, 3] projected face vertices
TEX = np.full((1, 2, 2, 2, 3), 0.5, np.float32)
VERTS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
FACES = np.array([[0, 1, 2], [1, 3, 2]], np.int32)

# CI's sanitizer section also runs the file on its instrumented build of the host CUDA kernels.
pytestmark = pytest.mark.cuda_host


# --- static checks: argument, exception and the name in its message ---------------------------

STATIC_CASES = {
    "vertices last dim 2": (
        lambda: nr.vertices_to_faces(VERTS[:, :2], FACES),
        ValueError,
        "vertices",
    ),
    "vertices complex": (
        lambda: nr.vertices_to_faces(VERTS.astype(np.complex64), FACES),
        TypeError,
        "vertices",
    ),
    "vertices bool": (lambda: nr.vertices_to_faces(VERTS > 0, FACES), TypeError, "vertices"),
    "faces float": (lambda: nr.vertices_to_faces(VERTS, FACES * 1.0), TypeError, "faces"),
    "faces 4 corners": (
        lambda: nr.vertices_to_faces(VERTS, np.zeros((1, 4), np.int32)),
        ValueError,
        "faces",
    ),
    "faces int64 wraps in int32": (
        lambda: nr.vertices_to_faces(VERTS, np.array([[0, 1, 2**32 + 2]])),
        ValueError,
        "faces",
    ),
    "faces uint32 max": (
        lambda: nr.vertices_to_faces(VERTS, np.array([[0, 1, 2**32 - 1]], np.uint32)),
        ValueError,
        "faces",
    ),
    "batch does not broadcast": (
        lambda: nr.vertices_to_faces(np.zeros((2, 4, 3)), np.zeros((3, 1, 3), np.int32)),
        ValueError,
        "batch",
    ),
    "face vertices rank 2": (lambda: nr.rasterize_silhouettes(TRI), ValueError, "faces"),
    "face vertices 2D points": (lambda: nr.rasterize_silhouettes(FV[..., :2]), ValueError, "faces"),
    "textures for other F": (
        lambda: nr.rasterize(FV, np.zeros((2, 2, 2, 2, 3))),
        ValueError,
        "textures",
    ),
    "textures not a cube": (
        lambda: nr.rasterize(FV, np.zeros((1, 2, 3, 2, 3))),
        ValueError,
        "textures",
    ),
    "textures T = 0": (lambda: nr.rasterize(FV, np.zeros((1, 0, 0, 0, 3))), ValueError, "T >= 1"),
    "textures 4 channels": (
        lambda: nr.rasterize(FV, np.zeros((1, 2, 2, 2, 4))),
        ValueError,
        "textures",
    ),
    "textures missing for rgb": (lambda: nr.rasterize_rgbad(FV), ValueError, "textures"),
    "image_size 0": (lambda: nr.rasterize_silhouettes(FV, 0), ValueError, "image_size"),
    "image_size negative": (
        lambda: nr.rasterize_silhouettes(FV, (4, -4)),
        ValueError,
        "image_size",
    ),
    "image_size float": (lambda: nr.rasterize_silhouettes(FV, 8.0), ValueError, "image_size"),
    "image_size bool": (lambda: nr.rasterize_silhouettes(FV, True), ValueError, "image_size"),
    "image_size 3 values": (
        lambda: nr.rasterize_silhouettes(FV, (4, 4, 4)),
        ValueError,
        "image_size",
    ),
    "image_size too large": (lambda: nr.rasterize_silhouettes(FV, 2**15), ValueError, "image_size"),
    "near >= far": (lambda: nr.rasterize_depth(FV, 8, near=5.0, far=1.0), ValueError, "near"),
    "near 0": (lambda: nr.rasterize_depth(FV, 8, near=0.0), ValueError, "near"),
    "far NaN": (lambda: nr.rasterize_depth(FV, 8, far=float("nan")), ValueError, "far"),
    "eps 0": (lambda: nr.rasterize_silhouettes(FV, 8, eps=0.0), ValueError, "eps"),
    "eps 1": (lambda: nr.rasterize(FV, TEX, 8, eps=1.0), ValueError, "eps"),
    "background 2 values": (
        lambda: nr.rasterize(FV, TEX, 8, background_color=(0, 0)),
        ValueError,
        "background_color",
    ),
    "background NaN": (
        lambda: nr.rasterize(FV, TEX, 8, background_color=(0, float("nan"), 0)),
        ValueError,
        "background_color",
    ),
    "Renderer camera_mode": (lambda: nr.Renderer(camera_mode="orbit"), ValueError, "camera_mode"),
    "Renderer near": (lambda: nr.Renderer(near=-1.0), ValueError, "near"),
    "Renderer rasterizer_eps": (lambda: nr.Renderer(rasterizer_eps=-1e-3), ValueError, "eps"),
    "Renderer clip": (lambda: nr.Renderer(clip="no"), TypeError, "clip"),  # type: ignore[arg-type]
    "Renderer eye shape": (
        lambda: nr.Renderer().render_silhouettes(VERTS, FACES, eye=np.zeros(2)),
        ValueError,
        "eye",
    ),
    "Renderer projection without K": (
        lambda: nr.Renderer(camera_mode="projection").render_silhouettes(VERTS, FACES),
        ValueError,
        "K, R and t",
    ),
    "Renderer textures shape": (
        lambda: nr.Renderer(image_size=8).render(VERTS, FACES, np.zeros((2, 2, 2, 2))),
        ValueError,
        "textures",
    ),
}


@pytest.mark.parametrize("case", list(STATIC_CASES))
def test_static_check_names_the_argument(case):
    fn, error, name = STATIC_CASES[case]
    with pytest.raises(error, match=name):
        fn()


@pytest.mark.versions
def test_static_checks_raise_under_jit_at_trace_time():
    with pytest.raises(ValueError, match="textures"):
        jax.jit(lambda f: nr.rasterize(f, jnp.zeros((2, 2, 2, 2, 3)), 8))(FV)


def test_texture_cube_too_large_for_int32_texel_indices():
    # Checked on the shape alone (the array would take 8.6 GB per face).
    check.texture_cube(jax.ShapeDtypeStruct((1, 894, 894, 894, 3), jnp.float32), 1)
    with pytest.raises(ValueError, match="T = 895 is too large"):
        check.texture_cube(jax.ShapeDtypeStruct((1, 895, 895, 895, 3), jnp.float32), 1)


# --- every argument of every public call: a wrong shape names it, before any jnp op ----------

V4 = VERTS  # [4, 3]
K3 = np.array([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]], np.float32)
EYE = np.array([0.0, 0.0, -3.0], np.float32)
PROJ = nr.Renderer(image_size=8, camera_mode="projection", orig_size=8, K=K3, R=np.eye(3), t=EYE)
LOOK = nr.Renderer(image_size=8, camera_mode="look")
TEX2 = np.full((2, 2, 2, 2, 3), 0.5, np.float32)  # for FACES

WRONG_SHAPE_CASES = {
    # argument: (call, the name its message must give)
    "look_at vertices": (lambda: nr.look_at(V4[:, :2], EYE), "vertices"),
    "look_at eye": (lambda: nr.look_at(V4, EYE[:2]), "eye"),
    "look_at at": (lambda: nr.look_at(V4, EYE, at=np.zeros(4)), "at"),
    "look_at up": (lambda: nr.look_at(V4, EYE, up=np.zeros((2, 2))), "up"),
    "look_at eye batch": (lambda: nr.look_at(np.zeros((2, 4, 3)), np.zeros((3, 3))), "eye"),
    "look direction": (lambda: nr.look(V4, EYE, direction=(1.0, 0.0)), "direction"),
    "look_at handedness": (lambda: nr.look_at(V4, EYE, handedness="up"), "handedness"),
    "perspective vertices": (lambda: nr.perspective(V4[None, :, :1]), "vertices"),
    "perspective angle batch": (
        lambda: nr.perspective(np.zeros((2, 4, 3)), np.full(3, 30.0)),
        "angle",
    ),
    "projection K": (lambda: nr.projection(V4, K3[:2], np.eye(3), EYE, np.zeros(5), 8), "K"),
    "projection R": (lambda: nr.projection(V4, K3, np.eye(4), EYE, np.zeros(5), 8), "R"),
    "projection t": (lambda: nr.projection(V4, K3, np.eye(3), EYE[:2], np.zeros(5), 8), "t"),
    "projection dist_coeffs": (
        lambda: nr.projection(V4, K3, np.eye(3), EYE, np.zeros(4), 8),
        "dist_coeffs",
    ),
    "projection K and R batches": (
        lambda: nr.projection(
            V4, np.stack([K3] * 2), np.stack([np.eye(3)] * 3), EYE, np.zeros(5), 8
        ),
        r"K \(2,\), R \(3,\)",
    ),
    "projection orig_size": (
        lambda: nr.projection(V4, K3, np.eye(3), EYE, np.zeros(5), (8, 0)),
        "orig_size",
    ),
    "get_points_from_angles batch": (
        lambda: nr.get_points_from_angles(np.ones(2), np.ones(3), 0.0),
        "distance",
    ),
    "lighting faces": (lambda: nr.lighting(np.zeros((2, 3, 2)), TEX2), "faces"),
    "lighting textures F": (lambda: nr.lighting(np.zeros((3, 3, 3)), TEX2), "textures"),
    "lighting direction": (
        lambda: nr.lighting(np.zeros((2, 3, 3)), TEX2, direction=(0.0, 1.0)),
        "direction",
    ),
    "lighting color batch": (
        lambda: nr.lighting(np.zeros((2, 2, 3, 3)), TEX2, color_ambient=np.ones((3, 3))),
        "color_ambient",
    ),
    "rasterize textures batch": (
        lambda: nr.rasterize(np.zeros((2, 1, 3, 3)), np.zeros((3, 1, 2, 2, 2, 3)), 8),
        "textures",
    ),
    "Renderer faces": (lambda: RENDERER.render_silhouettes(VERTS, FACES[:, :2]), "faces"),
    "Renderer vertex_colors batch": (
        lambda: RENDERER.render(np.zeros((2, 4, 3)), FACES, vertex_colors=np.zeros((3, 4, 3))),
        "vertex_colors",
    ),
    "Renderer eye batch": (
        lambda: RENDERER.render_depth(np.zeros((2, 4, 3)), FACES, eye=np.zeros((3, 3))),
        "eye",
    ),
    "Renderer light_direction": (
        lambda: nr.Renderer(image_size=8, light_direction=(0.0, 1.0)).render(VERTS, FACES, TEX2),
        "light_direction",
    ),
    "Renderer light batch": (
        lambda: nr.Renderer(image_size=8, light_intensity_ambient=np.ones(3)).render(
            np.zeros((2, 4, 3)), FACES, TEX2
        ),
        "light_intensity_ambient",
    ),
    "Renderer viewing_angle batch": (
        lambda: nr.Renderer(image_size=8, viewing_angle=np.full(3, 30.0)).render_silhouettes(
            np.zeros((2, 4, 3)), FACES
        ),
        "viewing_angle",
    ),
    "Renderer camera_direction": (
        lambda: nr.Renderer(camera_mode="look", camera_direction=(0.0, 1.0)).transform(VERTS),
        "camera_direction",
    ),
    "Renderer K": (lambda: PROJ.render_silhouettes(VERTS, FACES, K=K3[:2]), "K"),
    "Renderer t batch": (
        lambda: PROJ.render_silhouettes(np.zeros((2, 4, 3)), FACES, t=np.zeros((3, 3))),
        "t",
    ),
    "Renderer dist_coeffs": (
        lambda: PROJ.render_silhouettes(VERTS, FACES, dist_coeffs=np.zeros(4)),
        "dist_coeffs",
    ),
    "Renderer orig_size": (
        lambda: nr.Renderer(camera_mode="projection", orig_size=0, K=K3, R=np.eye(3), t=EYE),
        "orig_size",
    ),
    "Renderer handedness": (lambda: nr.Renderer(handedness="up"), "handedness"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", list(WRONG_SHAPE_CASES))
def test_wrong_shape_names_the_argument_before_any_jnp_op(case):
    fn, name = WRONG_SHAPE_CASES[case]
    with pytest.raises(ValueError, match=name) as error:
        jax.make_jaxpr(fn)()  # traced only: nothing is compiled
    # Raised by nmr_jax's own checks, not by a jnp op or a kernel.
    assert "nmr_jax" in str(error.traceback[-1].path), error.traceback[-1]


# --- traps a new user met, each pinned ----------------------------------------------------------


def test_look_at_renderer_given_K_R_t_raises_instead_of_ignoring_them():
    with pytest.raises(ValueError, match="K is not used by camera_mode 'look_at'"):
        nr.Renderer(K=K3, R=np.eye(3), t=EYE)
    for name in ("K", "R", "t", "dist_coeffs"):
        with pytest.raises(ValueError, match=f"{name} is not used by camera_mode 'look_at'"):
            RENDERER.render_silhouettes(VERTS, FACES, **{name: np.zeros(3)})
    with pytest.raises(ValueError, match="orig_size is not used by camera_mode 'look'"):
        nr.Renderer(camera_mode="look", orig_size=512)
    with pytest.raises(ValueError, match="camera_direction is not used by camera_mode 'look_at'"):
        nr.Renderer(camera_direction=(1.0, 0.0, 0.0))


def test_projection_renderer_given_eye_raises_instead_of_ignoring_it():
    with pytest.raises(ValueError, match="eye is not used by camera_mode 'projection'"):
        PROJ.render(VERTS, FACES, TEX2, eye=EYE)
    with pytest.raises(ValueError, match="eye is not used by camera_mode 'projection'"):
        dataclasses.replace(PROJ, eye=(1.0, 2.0, 3.0))
    for field, value in [("viewing_angle", 20.0), ("perspective", False), ("handedness", "right")]:
        with pytest.raises(ValueError, match=f"{field} is not used by camera_mode 'projection'"):
            dataclasses.replace(PROJ, **{field: value})
    # Unchanged defaults are fine, also when traced through jit.
    jax.jit(lambda r: r.render_silhouettes(VERTS, FACES))(PROJ)


def test_textures_with_wrong_face_count_name_textures_and_the_users_face_count():
    vertices, faces = nr.data.teapot()  # 2256 faces; fill_back renders 4512
    with pytest.raises(ValueError, match=r"textures .*F = 2256 .*got \(2255, 2, 2, 2, 3\)"):
        nr.Renderer(image_size=8).render(vertices, faces, np.zeros((2255, 2, 2, 2, 3)))


def test_eye_batch_that_does_not_broadcast_names_eye_and_vertices():
    with pytest.raises(ValueError, match=r"vertices \(2,\).*eye \(3,\)"):
        RENDERER.render(np.stack([VERTS] * 2), FACES, TEX2, eye=np.zeros((3, 3)))


def test_K_and_R_batches_that_disagree_name_K_and_R():
    with pytest.raises(ValueError, match=r"K \(2,\), R \(3,\)"):
        PROJ.render(VERTS, FACES, TEX2, K=np.stack([K3] * 2), R=np.stack([np.eye(3)] * 3))


# --- data checks: the kernels and validate_mesh ----------------------------------------------


@pytest.mark.versions
@pytest.mark.parametrize("bad", [-2, -1, 4, 2**31 - 1])
@pytest.mark.parametrize("jit", [False, True])
def test_vertex_index_out_of_range_raises_from_the_kernel(bad, jit):
    faces = np.array([[0, 1, 2], [0, bad, 1]], np.int32)
    fn = jax.jit(nr.vertices_to_faces) if jit else nr.vertices_to_faces
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="faces holds vertex index"):
        jax.block_until_ready(fn(VERTS, faces))


def test_faces_into_zero_vertices_raise():
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match=r"outside \[0, 0\)"):
        jax.block_until_ready(nr.vertices_to_faces(np.zeros((0, 3), np.float32), FACES))


@pytest.mark.parametrize("kernel", ["sample_textures", "kato_bwd", "fragments_bwd", "textures_bwd"])
def test_corrupt_face_index_map_raises_from_the_kernel(kernel, on_cpu):
    fv = jnp.asarray(FV[None])
    fi, wt, d = _ffi.rasterize(fv, 4, 4, 0.1, 100.0)
    fi = fi.at[0, 1, 1].set(7)  # only face 0 exists
    calls = {
        "sample_textures": lambda: _ffi.sample_textures(
            fv, jnp.asarray(TEX[None]), fi, wt, d, 1e-3
        ),
        "kato_bwd": lambda: _ffi.kato_bwd(fv, fi, wt, wt, 1e-3),
        "fragments_bwd": lambda: _ffi.fragments_bwd(fv, fi, wt, d, grad_depth=d),
        "textures_bwd": lambda: _ffi.sample_textures_bwd(
            fv, fi, wt, d, wt, 1e-3, (1, 1, 2, 2, 2, 3)
        ),
    }
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="face_index holds 7"):
        jax.block_until_ready(calls[kernel]())


VALIDATE_CASES = {
    "NaN vertex": (
        np.where(np.arange(4)[:, None] == 2, np.nan, VERTS),
        FACES,
        None,
        "vertices\\[2\\]",
    ),
    "inf vertex": (
        np.where(np.arange(4)[:, None] == 0, np.inf, VERTS),
        FACES,
        None,
        "vertices\\[0\\]",
    ),
    "index = V": (VERTS, np.array([[0, 1, 2], [1, 4, 2]]), None, "faces\\[1\\]"),
    "half padding row": (VERTS, np.array([[0, 1, 2], [-1, -1, 2]]), None, "faces\\[1\\]"),
    "NaN texture": (VERTS, FACES, np.full((2, 1, 1, 1, 3), np.nan), "textures\\[0\\]"),
    "textures for other F": (VERTS, FACES, np.zeros((3, 1, 1, 1, 3)), "textures"),
    "batched: second mesh": (
        np.stack([VERTS, VERTS]),
        np.stack([FACES, FACES + 2]),
        None,
        "faces\\[1, 0\\]",
    ),
}


@pytest.mark.versions
@pytest.mark.parametrize("case", list(VALIDATE_CASES))
def test_validate_mesh_names_the_first_bad_entry(case):
    vertices, faces, textures, match = VALIDATE_CASES[case]
    with pytest.raises(ValueError, match=match):
        nr.validate_mesh(vertices, faces, textures)


def test_validate_mesh_accepts_good_meshes_and_padding_rows():
    nr.validate_mesh(VERTS, FACES, np.zeros((2, 3, 3, 3, 3)))
    nr.validate_mesh(VERTS, np.array([[0, 1, 2], [-1, -1, -1], [-1, -1, -1]]))
    nr.validate_mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int32))  # the empty mesh
    nr.validate_mesh(VERTS[None], np.stack([FACES, FACES[::-1]]))  # broadcast batch


def test_validate_mesh_refuses_traced_values():
    with pytest.raises(TypeError, match="outside jit|inside jit"):
        jax.jit(nr.validate_mesh)(VERTS, FACES)


# --- edge cases: defined outputs, finite gradients --------------------------------------------

RENDERER = nr.Renderer(image_size=16)
LIT = np.full((2, 2, 2, 2, 3), 0.8, np.float32)


@jax.jit
def _render_and_grads(renderer, vertices, faces, textures, eye):
    def loss(v, t, e):
        rgb, depth, alpha = renderer.render(v, faces, t, eye=e)
        return jnp.sum(rgb) + jnp.sum(alpha) + 1e-2 * jnp.sum(depth), (rgb, depth, alpha)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(vertices, textures, eye)


def render_and_grads(vertices, faces, textures, renderer=RENDERER, eye=None):
    """Images and the gradients of a loss of all three w.r.t. vertices, textures and eye."""
    eye = jnp.asarray(renderer.eye if eye is None else eye, jnp.float32)
    (_, images), grads = _render_and_grads(
        renderer,
        jnp.asarray(vertices, jnp.float32),
        jnp.asarray(faces, jnp.int32),
        jnp.asarray(textures, jnp.float32),
        eye,
    )
    for g in grads:
        assert np.isfinite(g).all()
    for image in images:
        assert np.isfinite(image).all()
    return images, grads


def assert_background(images, renderer=RENDERER):
    rgb, depth, alpha = images
    background = np.asarray(renderer.background_color, np.float32)
    np.testing.assert_array_equal(rgb, np.broadcast_to(background, rgb.shape))
    np.testing.assert_array_equal(alpha, 0.0)
    np.testing.assert_array_equal(depth, renderer.far)


@pytest.mark.parametrize("num_vertices", [0, 4])
def test_empty_mesh_renders_background_with_zero_gradients(num_vertices):
    renderer = nr.Renderer(image_size=8, background_color=(0.2, 0.3, 0.4))
    images, grads = render_and_grads(
        VERTS[:num_vertices], np.zeros((0, 3), np.int32), np.zeros((0, 2, 2, 2, 3)), renderer
    )
    assert_background(images, renderer)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_empty_batch():
    out = nr.rasterize_rgbad(np.zeros((0, 1, 3, 3)), np.zeros((0, 1, 2, 2, 2, 3)), 8)
    assert out.rgb.shape == (0, 8, 8, 3) and out.alpha.shape == (0, 8, 8)


def test_degenerate_and_collinear_faces_draw_nothing():
    vertices = np.array([[0, 0, 0], [0.5, 0.5, 0], [1, 1, 0], [0, 0.5, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 0, 3]], np.int32)  # collinear; two equal vertices
    images, grads = render_and_grads(vertices, faces, LIT)
    assert_background(images)
    np.testing.assert_array_equal(grads[0], 0.0)


def test_vertical_and_horizontal_edges_have_finite_gradients():
    # An axis-aligned right triangle: one edge parallel to each scan direction.
    vertices = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [-0.5, 0.5, 0]], np.float32)
    images, grads = render_and_grads(vertices, FACES[:1], LIT[:1])
    assert images[2].sum() > 0 and np.abs(grads[0]).sum() > 0 and np.abs(grads[2]).sum() > 0


def test_mesh_behind_the_camera_draws_nothing():
    # The default eye is at z = -2.73 looking at the origin: these are behind it.
    images, grads = render_and_grads(VERTS - [0, 0, 10], FACES, LIT)
    assert_background(images)
    np.testing.assert_array_equal(grads[0], 0.0)


def test_faces_crossing_the_near_plane_draw_only_their_part_beyond_it():
    eye = (0.0, 0.0, -1.0)
    # Vertex 0 is behind the eye (camera z = -0.5), the others in front (z = 1).
    big = np.array([[-0.5, -0.5, -1.5], [0.5, -0.5, 0], [0, 0.5, 0]], np.float32)
    images, _ = render_and_grads(big, FACES[:1], LIT[:1], eye=eye)
    depth, alpha = np.asarray(images[1]), np.asarray(images[2])
    assert 0 < alpha.sum() < alpha.size
    covered = alpha == 1
    assert (depth[covered] > RENDERER.near).all() and (depth[covered] < RENDERER.far).all()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_vertex_drops_its_faces_only(value):
    vertices = np.concatenate([VERTS, [[0.5, 0.5, 0.0]]]).astype(np.float32)
    faces = np.array([[0, 1, 2], [1, 3, 4]], np.int32)
    clean, _ = render_and_grads(vertices, faces[:1], LIT[:1])
    vertices[4, 1] = value
    images, grads = render_and_grads(vertices, faces, LIT)
    for got, want in zip(images, clean, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grads[0][4], 0.0)  # the bad vertex gets no gradient


def test_coincident_faces_lowest_index_wins():
    faces = np.array([[0, 1, 2], [0, 1, 2]], np.int32)
    fv = nr.vertices_to_faces(RENDERER.transform(VERTS), faces)
    fi = np.asarray(nr.rasterize_face_index_map(fv, 16))
    assert (fi >= 0).any() and set(np.unique(fi)) == {-1, 0}
    render_and_grads(VERTS, faces, LIT)


@pytest.mark.parametrize("value", [1e30, -1e30, 3e38])
def test_huge_coordinates_do_not_draw_or_overflow(value):
    fv = np.stack([FV[0], FV[0]])
    fv[1, 0, 0] = value  # face 1 would span far beyond the image
    rgb, alpha, depth = nr.rasterize_rgbad(fv[None], np.stack([TEX[0], TEX[0]])[None], 8)
    assert np.isfinite(rgb).all() and np.isfinite(depth).all()
    ref = nr.rasterize_silhouettes(FV[None], 8)
    # The huge face is a sliver or covers all; either way alpha stays in [0, 1] with no NaN.
    assert ((alpha >= ref) & (alpha <= 1)).all()
    g = jax.grad(lambda f: jnp.sum(nr.rasterize_silhouettes(f, 8)))(jnp.asarray(fv))
    assert np.isfinite(g).all()


@pytest.mark.parametrize("anti_aliasing", [False, True])
def test_one_pixel_image(anti_aliasing):
    big = np.array([[[-3, -3, 2], [3, -3, 2], [0, 3, 2]]], np.float32)
    out = nr.rasterize_rgbad(big, np.ones((1, 1, 1, 1, 3)), 1, anti_aliasing=anti_aliasing)
    np.testing.assert_array_equal(out.alpha, [[1.0]])
    np.testing.assert_allclose(out.rgb, [[[1.0, 1.0, 1.0]]])
    g = jax.grad(lambda f: jnp.sum(nr.rasterize_silhouettes(f, 1, anti_aliasing)))(big)
    assert np.isfinite(g).all()


def test_very_wide_image():
    # 2 x 131072 rasterized pixels with anti-aliasing: far beyond any pixel index of 16 bits.
    alpha = nr.rasterize_silhouettes(FV, (1, 65536))
    assert alpha.shape == (1, 65536) and 0 < float(alpha.sum()) < 65536
    np.testing.assert_array_equal(np.asarray(alpha)[0, :16384], 0.0)  # left of x = -0.5


def test_texture_size_one_is_the_face_colour():
    tex = np.array([[[[[0.1, 0.6, 0.9]]]]], np.float32)
    out = nr.rasterize_rgbad(FV, tex, 16, anti_aliasing=False)
    covered = np.asarray(out.alpha) == 1
    np.testing.assert_allclose(
        np.asarray(out.rgb)[covered], np.broadcast_to(tex[0, 0, 0, 0], (covered.sum(), 3))
    )
    g = jax.grad(lambda t: jnp.sum(nr.rasterize(FV, t, 16, anti_aliasing=False)))(jnp.asarray(tex))
    np.testing.assert_allclose(g[0, 0, 0, 0], covered.sum())


def test_perspective_on_the_camera_plane_is_nan_with_zero_gradient():
    v = jnp.array([[1.0, 2.0, 0.0], [1.0, 2.0, 1e-13], [1.0, 2.0, 4.0]])
    out = nr.perspective(v)
    assert np.isnan(out[:2, :2]).all() and np.isfinite(out[2]).all()
    g = jax.jit(jax.grad(lambda v: jnp.nansum(nr.perspective(v))))(v)
    assert np.isfinite(g).all() and (g[:2, :2] == 0).all() and (g[2, :2] != 0).all()
    np.testing.assert_array_equal(g[:, 2] != 0, True)  # z passes through
    # A zero field of view puts every point "on the camera plane".
    assert np.isnan(nr.perspective(v, 0.0)[:, :2]).all()
    g_angle = jax.jit(jax.grad(lambda a: jnp.nansum(nr.perspective(v, a))))(0.0)
    assert np.isfinite(g_angle)


def test_projection_at_minus_eps_is_nan_with_finite_gradients():
    K = jnp.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    v = jnp.array([[0.0, 0.0, -1e-9], [0.5, 0.0, 2.0]])

    def f(v, k):
        return jnp.nansum(nr.projection(v, k, jnp.eye(3), jnp.zeros(3), jnp.full(5, 0.1), 100))

    out = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.zeros(5), 100)
    assert np.isnan(out[0, :2]).all() and np.isfinite(out[1]).all()
    for g in jax.jit(jax.grad(f, argnums=(0, 1)))(v, K):
        assert np.isfinite(g).all()


def test_lighting_of_zero_area_and_nonfinite_faces_is_ambient_only():
    faces = np.stack([TRI, np.zeros((3, 3), np.float32), TRI]).copy()
    faces[2, 1, 0] = np.nan
    tex = np.ones((3, 1, 1, 1, 3), np.float32)
    lit = nr.lighting(faces, tex, direction=(0.0, 0.0, -1.0))
    np.testing.assert_allclose(lit[1:], 0.5)  # ambient 0.5 only
    g = jax.jit(jax.grad(lambda f: jnp.sum(nr.lighting(f, tex, direction=(0.0, 0.0, -1.0)))))(faces)
    assert np.isfinite(g).all() and (g[1:] == 0).all()


# --- regressions found by fuzzing -------------------------------------------------------------


def test_kato_nan_from_a_far_sliver_at_a_pixel_centre():
    # Vertex 0 sits 2^-19 pixel before column 6 on row 8, vertex 1 at pixel x = 1e33 on the same
    # row: moving vertex 1 had a lever of 1e33 / 2^-19 = inf on column 6, where the edge crosses
    # the pixel centre exactly (distance 0), and inf * 0 made Kato's gradient NaN. Such a face now
    # does not cover (beyond 2^62 pixels), and an overflowing lever is dropped in any case.
    n = 16

    def ndc(p):
        return (2 * p - n + 1) / n

    fv = np.array(
        [[[[ndc(6 - 2**-19), ndc(8), 1], [ndc(1e33), ndc(8), 1], [ndc(4), ndc(12), 1]]]],
        np.float32,
    )
    fi, _, _ = _ffi.rasterize(jnp.asarray(fv), n, n, 0.1, 100.0)
    alpha = (fi >= 0).astype(jnp.float32)[..., None]
    got = np.asarray(_ffi.kato_bwd(jnp.asarray(fv), fi, alpha, jnp.ones_like(alpha), 1e-4))
    assert np.isfinite(got).all()
    # The same sliver within 2^62 pixels is drawn, with a finite gradient equal to the reference.
    fv[0, 0, 1, 0] = ndc(2.0**61)
    fi, _, _ = _ffi.rasterize(jnp.asarray(fv), n, n, 0.1, 100.0)
    assert fi[0, 8, 6] == 0
    alpha = (fi >= 0).astype(jnp.float32)[..., None]
    got = np.asarray(_ffi.kato_bwd(jnp.asarray(fv), fi, alpha, jnp.ones_like(alpha), 1e-4))
    want = ref.kato(fv, fi, alpha, np.ones(alpha.shape, np.float32), np.float32(1e-4))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_face_beyond_2_62_pixels_does_not_cover():
    # Its edge functions would overflow float32 near FLT_MAX, so coverage depended on rounding
    # (XLA and C++ disagreed on a face with a vertex at NDC FLT_MAX and an area just below it).
    tri = np.array([[[[-0.5, -0.5, 2], [0.5, -0.5, 2], [0, 0.5, 2]]]], np.float32)
    for x, covers in [(2.0**61, True), (2.0**63, False), (np.finfo(np.float32).max, False)]:
        fv = tri.copy()
        fv[..., 1, 0] = x / 8  # NDC of pixel ~x in a 16-pixel row
        fi, _, _ = _ffi.rasterize(jnp.asarray(fv), 16, 16, 0.1, 100.0)
        assert bool((np.asarray(fi) == 0).any()) == covers, x


# --- the interpreter survives the worst of it ------------------------------------------------

SURVIVAL_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
import nmr_jax as nr
from nmr_jax import _ffi

def attempt(name, fn):
    try:
        jax.block_until_ready(fn())
        print(name, "returned")
    except (ValueError, TypeError, jax.errors.JaxRuntimeError) as e:
        print(name, "raised", type(e).__name__)

v = jnp.zeros((3, 3))
huge_index = jnp.array([[0, 1, 2**31 - 1]], jnp.int32)
attempt("gather", lambda: jax.jit(nr.vertices_to_faces)(v, huge_index))
attempt("scatter", lambda: jax.jit(jax.grad(lambda v: nr.vertices_to_faces(v, huge_index).sum()))(v))
attempt("negative", lambda: nr.vertices_to_faces(v, jnp.array([[0, -7, 1]], jnp.int32)))
fv = jnp.array([[[[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]]]])
fi, wt, d = _ffi.rasterize(fv, 8, 8, 0.1, 100.0)
bad = fi.at[0, 3, 3].set(2**31 - 1)
attempt("sample", lambda: _ffi.sample_textures(fv, jnp.ones((1, 1, 2, 2, 2, 3)), bad, wt, d, 1e-3))
attempt("kato", lambda: _ffi.kato_bwd(fv, bad, wt, wt, 1e-3))
attempt("depth", lambda: _ffi.fragments_bwd(fv, bad.at[0, 4, 4].set(-2**31), wt, d, grad_depth=d))
attempt("textures_bwd", lambda: _ffi.sample_textures_bwd(fv, bad, wt, d, wt, 1e-3, (1, 1, 2, 2, 2, 3)))
attempt("image_size", lambda: nr.rasterize_silhouettes(fv, 2**20))
nan_mesh = jnp.full((1, 3, 3), jnp.nan)
attempt("nan", lambda: nr.rasterize_silhouettes(nan_mesh, 64))
extreme = jnp.array([[[[-3e38, -3e38, 1e-38], [3e38, -3e38, 3e38], [0.0, 3e38, -3e38]]]])
attempt("extreme", lambda: jax.grad(lambda f: nr.rasterize_silhouettes(f, 64).sum())(extreme))
print("alive")
"""


def test_worst_cases_leave_the_interpreter_alive():
    # The CPU's behaviour (errors raised from the kernels); test_cuda.py checks the GPU's NaNs.
    out = subprocess.run(
        [sys.executable, "-c", SURVIVAL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "NMR_JAX_KERNELS": "default"},
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    for name in ["gather", "scatter", "negative", "sample", "kato", "depth", "textures_bwd"]:
        assert lines[name] == "raised JaxRuntimeError" or lines[name] == "raised ValueError", name
    assert lines["image_size"] == "raised ValueError"
    assert lines["nan"] == "returned" and lines["extreme"] == "returned"
    assert out.stdout.rstrip().endswith("alive")


def square_obj(tmp_path):
    """A square written and read back as an OBJ file: (vertices [4, 3], faces [2, 3])."""
    path = tmp_path / "square.obj"
    path.write_text("v -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nf 1 2 3\nf 1 3 4\n")
    mesh = nr.load_mesh(path, normalization=False)
    return mesh.vertices, np.array(mesh.faces)


def test_out_of_range_vertex_index_in_an_eager_call_raises_value_error(tmp_path):
    # The docs say ValueError; an eager render raised JaxRuntimeError from the kernel.
    vertices, faces = square_obj(tmp_path)
    faces[1, 2] = 4
    r = nr.Renderer(image_size=8, eye=(0.0, 0.0, -3.0))
    message = r"faces holds vertex index 4 in faces\[1\] = \[0, 2, 4\], outside \[0, 4\)"
    with pytest.raises(ValueError, match=message):
        r.render(vertices, faces, vertex_colors=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=message):
        r.render_silhouettes(vertices, faces)
    with pytest.raises(ValueError, match=message):
        r.render(vertices, faces, shader=lambda fr: fr.bary)
    # Constant faces under jit: at trace time, the same ValueError.
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda v: r.render_silhouettes(v, faces))(vertices)


def test_vertex_colors_passed_positionally_hint_at_the_keyword(tmp_path):
    vertices, faces = square_obj(tmp_path)
    r = nr.Renderer(image_size=8)
    with pytest.raises(ValueError, match=r"textures must have shape.*vertex_colors=colors"):
        r.render(vertices, faces, jnp.ones((4, 3)))
