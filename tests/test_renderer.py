"""Renderer against the original's golden images, and gradients through every parameter."""

from __future__ import annotations

import dataclasses
from functools import partial

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from tests import _reference as ref
from tests._helpers import reference_data


@pytest.fixture(scope="module")
def teapot():
    data = reference_data()
    return nr.load_obj(data / "tests/data/teapot.obj")


def white(faces, t=4):
    return jnp.ones((faces.shape[0], t, t, t, 3), jnp.float32)


@pytest.mark.versions
def test_silhouette_matches_blender_mask(teapot):
    v, f = teapot
    alpha = nr.Renderer(anti_aliasing=False).render_silhouettes(v, f)
    png = iio.imread(reference_data() / "tests/data/teapot_blender.png")
    mask = png.min(-1) != 255
    pred = np.asarray(alpha) > 0
    iou = (mask & pred).sum() / (mask | pred).sum()
    assert iou >= 0.999  # reached: 1.0 (identical masks)


@pytest.mark.versions
def test_depth_matches_original(teapot):
    v, f = teapot
    depth = np.asarray(nr.Renderer(anti_aliasing=False).render_depth(v, f))
    fg = depth < 100
    norm = np.where(fg, (depth - depth[fg].min()) / (depth[fg].max() - depth[fg].min()), 0)
    png = iio.imread(reference_data() / "tests/data/test_depth.png").astype(np.float32) / 255
    np.testing.assert_allclose(norm, png, atol=1e-2)  # reached: max |diff| 0.0028 (8-bit PNG)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("test_rasterize1.png", dict(anti_aliasing=False)),
        ("test_rasterize2.png", dict(eye=(1.0, 1.0, -2.7))),
    ],
)
def test_rgb_matches_original(teapot, name, kwargs):
    v, f = teapot
    rgb, _, _ = nr.Renderer(**kwargs).render(v, f, white(f))
    png = iio.imread(reference_data() / "tests/data" / name).astype(np.float32) / 255
    # Reached: 0.00035 and 0.00017; the residual is 8-bit quantisation of the PNGs.
    assert np.abs(np.asarray(rgb) - png[..., :3]).mean() <= 1 / 255


def small_mesh():
    v, f = nr.data.teapot()
    return v, f


def test_shapes_with_and_without_batch_dims():
    v, f = small_mesh()
    r = nr.Renderer(image_size=32)
    rgb, depth, alpha = r.render(v, f, white(f, 2))
    assert rgb.shape == (32, 32, 3) and depth.shape == alpha.shape == (32, 32)
    rgb2, _, _ = r.render(v[None, None], f, white(f, 2))
    assert rgb2.shape == (1, 1, 32, 32, 3)
    np.testing.assert_allclose(rgb2[0, 0], rgb, atol=1e-6)
    assert nr.Renderer(image_size=(24, 40)).render_silhouettes(v, f).shape == (24, 40)


def test_renderer_is_immutable_and_a_pytree():
    r = nr.Renderer(image_size=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.image_size = 64  # type: ignore[misc]
    leaves, tree = jax.tree_util.tree_flatten(r)
    assert jax.tree_util.tree_unflatten(tree, leaves) == r
    with pytest.raises(ValueError, match="camera_mode"):
        nr.Renderer(camera_mode="orbit")  # type: ignore[arg-type]


@pytest.mark.parametrize("camera_mode", ["look_at", "look"])
def test_renderer_as_jit_argument_with_default_tuple_fields(camera_mode):
    # Regression: the dtype check called np.asarray on a tuple of tracers (the default eye or
    # camera_direction, traced as pytree leaves) and raised TracerArrayConversionError.
    vertices, faces = nr.data.teapot()
    r = nr.Renderer(image_size=16, camera_mode=camera_mode)
    jitted = jax.jit(lambda r: r.render_silhouettes(vertices, faces))(r)
    # Equal but for edge pixels: on a GPU, XLA may fuse the camera math differently under jit.
    assert np.mean(np.asarray(jitted) != np.asarray(r.render_silhouettes(vertices, faces))) < 0.01
    assert float(jitted.sum()) > 0


@pytest.mark.versions
def test_jit_grad_through_render_for_every_parameter():
    v, f = small_mesh()
    tex = white(f, 2) * 0.7
    r = nr.Renderer(image_size=32)
    target = jnp.full((32, 32, 3), 0.3)

    def loss(v, tex, renderer, eye):
        rgb, depth, alpha = renderer.render(v, f, tex, eye=eye)
        return jnp.sum((rgb - target) ** 2) + 1e-3 * jnp.sum(alpha)

    eye = jnp.array([0.3, 0.5, -2.6])
    gv, gt, gr, ge = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(v, tex, r, eye)
    for name, g in [("vertices", gv), ("textures", gt), ("eye", ge)]:
        assert np.isfinite(g).all() and np.abs(g).sum() > 0, name
    for name in ("light_intensity_ambient", "light_intensity_directional", "light_direction"):
        g = np.asarray(getattr(gr, name))
        assert np.isfinite(g).all() and np.abs(g).sum() > 0, name


@pytest.mark.versions
def test_jit_grad_through_projection_camera():
    v, f = small_mesh()
    K = jnp.array([[500.0, 0, 256], [0, 500.0, 256], [0, 0, 1]])
    R = jnp.eye(3)
    t = jnp.array([0.0, 0.0, 3.0])
    r = nr.Renderer(image_size=32, camera_mode="projection", orig_size=512, K=K, R=R, t=t)
    alpha = r.render_silhouettes(v, f)
    assert 0 < float(alpha.mean()) < 1

    def loss(K, R, t):
        rgb, _, _ = r.render(v, f, white(f, 2), K=K, R=R, t=t)
        return jnp.sum(rgb * jnp.linspace(0, 1, 32)[:, None])

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(K, R, t)
    for g in grads:
        assert np.isfinite(g).all() and np.abs(g).sum() > 0


@pytest.mark.versions
def test_vmap_over_eyes_equals_loop():
    v, f = small_mesh()
    r = nr.Renderer(image_size=32)
    eyes = nr.get_points_from_angles(2.732, 30.0, jnp.array([0.0, 90.0, 180.0]))
    batched = jax.jit(jax.vmap(lambda e: r.render_silhouettes(v, f, eye=e)))(eyes)
    for i in range(3):
        np.testing.assert_allclose(batched[i], r.render_silhouettes(v, f, eye=eyes[i]), atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


def colored_mesh(seed=0):
    """The built-in teapot with random vertex colours."""
    v, f = small_mesh()
    colors = jnp.asarray(np.random.default_rng(seed).uniform(size=v.shape), jnp.float32)
    return v, f, colors


@partial(jax.jit, static_argnums=(0, 4))
def reference_vertex_colors(renderer, v, f, colors, size):
    """rgb [H, W, 3] as rasterized (row 0 at y = -1), from tests/_reference.py's maps: the sum of
    the clamped perspective-correct barycentrics times the face's vertex colours, unlit."""
    f = jnp.concatenate([f, f[:, ::-1]])  # fill_back
    fv = nr.vertices_to_faces(renderer.transform(v), f)
    fi, wt, depth = ref.forward(fv[None], *size, renderer.near, renderer.far)
    idx = jnp.maximum(fi[0], 0)
    bary = wt[0] * depth[0][..., None] / fv[idx][..., 2]
    bary = jnp.clip(bary, 0.0, 1.0 - renderer.rasterizer_eps)
    rgb = jnp.einsum("hwk,hwkc->hwc", bary, colors[f[idx]])
    return jnp.where(fi[0][..., None] >= 0, rgb, 0.0), fi[0]


@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_vertex_colors_match_interpolation_reference(size):
    v, f, colors = colored_mesh()
    # Ambient light only, so that the colours come out as interpolated.
    r = nr.Renderer(image_size=size, anti_aliasing=False, light_intensity_ambient=1.0,
                    light_intensity_directional=0.0)  # fmt: skip
    rgb, _, alpha = jax.jit(lambda c: r.render(v, f, vertex_colors=c))(colors)
    want, fi = reference_vertex_colors(r, v, f, colors, size)
    np.testing.assert_array_equal(np.asarray(alpha) > 0, np.flip(np.asarray(fi) >= 0, 0))
    assert (np.asarray(fi) >= 0).sum() > 100
    np.testing.assert_allclose(rgb, np.flip(np.asarray(want), 0), atol=1e-5)


def test_vertex_colors_are_lit_like_textures():
    v, f = small_mesh()
    r = nr.Renderer(image_size=32, light_direction=(0.3, 1.0, -0.5))
    color = jnp.array([0.9, 0.5, 0.2])
    by_vertex = jax.jit(lambda c: r.render(v, f, vertex_colors=c)[0])(
        jnp.broadcast_to(color, v.shape)
    )
    by_texture = jax.jit(lambda t: r.render(v, f, t)[0])(
        jnp.broadcast_to(color, (f.shape[0], 1, 1, 1, 3))
    )
    np.testing.assert_allclose(by_vertex, by_texture, atol=1e-5)


@pytest.mark.versions
def test_vertex_colors_gradients_reach_colors_and_vertices():
    v, f, colors = colored_mesh(1)
    size = (16, 24)
    r = nr.Renderer(image_size=size, anti_aliasing=False, light_intensity_ambient=1.0,
                    light_intensity_directional=0.0)  # fmt: skip
    g = jnp.asarray(np.random.default_rng(2).normal(size=(*size, 3)), jnp.float32)
    gv, gc = jax.jit(
        jax.grad(lambda v, c: jnp.sum(r.render(v, f, vertex_colors=c)[0] * g), argnums=(0, 1))
    )(v, colors)
    # Colours: the exact gradient, the face index held fixed (jax.grad of the jnp reference).
    want = jax.jit(
        jax.grad(lambda c: jnp.sum(reference_vertex_colors(r, v, f, c, size)[0] * jnp.flip(g, 0)))
    )(colors)
    assert np.abs(np.asarray(want)).sum() > 0
    np.testing.assert_allclose(gc, want, rtol=1e-4, atol=1e-5)  # sums of ~10 pixels of O(1)
    # Vertices: Kato's gradient through the rgb image.
    assert np.isfinite(gv).all() and np.abs(np.asarray(gv)).sum() > 0


def test_render_needs_exactly_one_colour_source():
    v, f, colors = colored_mesh()
    r = nr.Renderer(image_size=16)
    with pytest.raises(ValueError, match="exactly one of textures and vertex_colors"):
        r.render(v, f)
    with pytest.raises(ValueError, match="exactly one"):
        r.render(v, f, white(f, 2), colors)
    with pytest.raises(ValueError, match="vertex_colors"):
        r.render(v, f, vertex_colors=colors[:-1])
    with pytest.raises(TypeError, match="vertex_colors"):
        r.render(v, f, vertex_colors=colors.astype(jnp.complex64))


def test_non_square_image_is_not_stretched():
    # viewing_angle is the vertical half-angle: a wider image adds columns on both sides, and its
    # central columns are the square image of the same height.
    v, f = small_mesh()
    square = nr.Renderer(image_size=32, anti_aliasing=False).render_silhouettes(v, f)
    wide = nr.Renderer(image_size=(32, 48), anti_aliasing=False).render_silhouettes(v, f)
    assert wide.shape == (32, 48)
    np.testing.assert_array_equal(wide[:, 8:40], square)
    assert not np.asarray(wide[:, :8]).any() and not np.asarray(wide[:, 40:]).any()


def test_projection_with_non_square_orig_size():
    # K of a 480 x 640 image; rendered at a twentieth: a point projected to pixel (u, v) of the
    # original image lands in pixel (v / 20, u / 20).
    K = jnp.array([[600.0, 0, 320], [0, 600.0, 240], [0, 0, 1]])
    r = nr.Renderer(image_size=(24, 32), anti_aliasing=False, camera_mode="projection",
                    orig_size=(480, 640), K=K, R=jnp.eye(3), t=jnp.zeros(3))  # fmt: skip
    # A small triangle around the point that projects to (u, v) = (450, 130) at depth 2.
    centre = np.array([(450 - 320) / 600 * 2, (130 - 240) / 600 * 2, 2.0])
    tri = jnp.asarray(centre + np.array([[-0.03, -0.03, 0], [0.03, -0.03, 0], [0, 0.03, 0]]),
                      jnp.float32)  # fmt: skip
    alpha = np.asarray(r.render_silhouettes(tri, jnp.array([[0, 1, 2]])))
    rows, cols = np.nonzero(alpha)
    assert len(rows) > 0
    np.testing.assert_allclose([rows.mean(), cols.mean()], [130 / 20 - 0.5, 450 / 20 - 0.5], atol=1)


# --- pytrees: subclasses, static fields ----------------------------------------------------------


class SubclassedRenderer(nr.Renderer):
    """As mesh_reconstruction-style code does: methods on a subclass, no new fields."""

    def silhouette_loss(self, vertices, faces):
        return jnp.sum(self.render_silhouettes(vertices, faces))


@dataclasses.dataclass(frozen=True)
class RendererWithFields(nr.Renderer):
    scale: float = 1.0  # a leaf
    label: str = dataclasses.field(default="view", metadata={"static": True})


@pytest.mark.versions
def test_renderer_subclass_is_a_pytree_under_jit_grad():
    v, f = small_mesh()
    r = SubclassedRenderer(image_size=16)
    g = jax.jit(jax.grad(lambda v, r: r.silhouette_loss(v, f)))(v, r)
    assert np.isfinite(g).all() and np.abs(np.asarray(g)).sum() > 0
    w = RendererWithFields(image_size=16, scale=1.5)
    gw = jax.jit(jax.grad(lambda w: jnp.sum(w.render_silhouettes(v * w.scale, f))))(w)
    assert type(gw) is RendererWithFields and gw.label == "view" and float(gw.scale) != 0


def test_static_fields_are_marked_on_the_fields():
    static = {f.name for f in dataclasses.fields(nr.Renderer) if f.metadata.get("static")}
    leaves = jax.tree_util.tree_flatten_with_path(nr.Renderer())[0]
    leaf_fields = {path[0].name for path, _ in leaves}
    assert "image_size" in static and "camera_mode" in static and "eye" not in static
    assert leaf_fields.isdisjoint(static) and {"eye", "light_direction"} <= leaf_fields
    # Unflattening does not rerun the constructor's checks on leaves that are not the user's.
    tree = jax.tree_util.tree_structure(nr.Renderer(camera_mode="look"))
    assert jax.tree_util.tree_unflatten(tree, [None] * tree.num_leaves).camera_mode == "look"


def test_large_constant_faces_under_jit_reach_the_kernel_unfolded():
    # A jit closing over a 124k-face array spent seconds constant-folding a reduction over it
    # (and XLA logged an error): known faces are now checked and prepared in numpy, so the only
    # op that reads them is the gather kernel.
    v, f = small_mesh()
    r = nr.Renderer(image_size=16)
    padded = jnp.concatenate([f, jnp.full((3, 3), -1, jnp.int32)])
    for fn in (
        lambda v: r.render_silhouettes(v, f),
        lambda v: r.render(v, f, vertex_colors=v)[0],
        lambda v: nr.vertices_to_faces(v, padded),
    ):
        jaxpr = jax.make_jaxpr(fn)(v)
        # Readers of the closed-over faces (int32 [F, 3] constants); the int32 maps and indices
        # computed from the vertices (face index map, clipping) are not constants.
        faces = {
            id(c)
            for c in jaxpr.jaxpr.constvars
            if c.aval.dtype == jnp.int32 and c.aval.shape[-1:] == (3,)
        }
        assert faces
        assert _readers(jaxpr.jaxpr, faces) == {"custom_jvp_call"}


def _readers(jaxpr, variables: set[int]) -> set[str]:
    """The primitives reading ``variables`` (ids) in ``jaxpr``, looking into the branches of a
    cond (the Renderer's clipping draws in one) where it passes them on."""
    readers = set()
    for e in jaxpr.eqns:
        read = [i for i, x in enumerate(e.invars) if id(x) in variables]
        if not read:
            continue
        if str(e.primitive) != "cond":
            readers.add(str(e.primitive))
            continue
        for branch in e.params["branches"]:  # invars: the cond's operands after the index
            inner = {id(branch.jaxpr.invars[i - 1]) for i in read}
            readers |= _readers(branch.jaxpr, inner)
    return readers


# --- conventions: winding, handedness, mirroring ------------------------------------------------


def test_right_handed_mesh_without_fill_back_is_inside_out_unless_handedness_right():
    # The teapot is wound counter-clockwise seen from outside (right-handed): the original's
    # left-handed look_at camera sees those faces as back faces and draws the far side.
    v, f = small_mesh()
    both_sides = nr.Renderer(image_size=32).render_depth(v, f)
    left = nr.Renderer(image_size=32, fill_back=False).render_depth(v, f)
    right = nr.Renderer(image_size=32, fill_back=False, handedness="right").render_depth(v, f)
    near = nr.Renderer(image_size=32, fill_back=False).render_depth(v, f[:, ::-1])
    mask = np.asarray(both_sides) < 100
    assert np.asarray(left)[mask].mean() > np.asarray(both_sides)[mask].mean() + 0.3
    np.testing.assert_allclose(near, both_sides, atol=1e-5)  # reversed faces: the near side
    # handedness="right" mirrors the image, so it is the near side seen mirrored, lit alike.
    np.testing.assert_allclose(right, np.flip(both_sides, -1), atol=1e-5)
    colors = jnp.asarray(np.random.default_rng(3).uniform(size=v.shape), jnp.float32)
    for fill_back in (True, False):
        kw = dict(image_size=32, light_direction=(0.5, 1.0, -1.0), fill_back=fill_back)
        rgb_right = nr.Renderer(**kw, handedness="right").render(v, f, vertex_colors=colors)[0]
        rgb_left = nr.Renderer(**kw).render(
            v, f if fill_back else f[:, ::-1], vertex_colors=colors
        )[0]
        np.testing.assert_allclose(rgb_right, np.flip(rgb_left, -2), atol=1e-4)


def test_look_at_mirrors_a_right_handed_world_unless_handedness_right():
    # A camera at -z looking at the origin with y up has world +x on its left in a right-handed
    # world (text on a quad facing it reads correctly only then).
    marker = np.array([[0.5, 0.0, 0.0], [0.7, 0.0, 0.0], [0.6, 0.2, 0.0]], np.float32)
    faces = np.array([[0, 1, 2]], np.int32)
    for handedness, side in [("left", "right"), ("right", "left")]:
        alpha = np.asarray(nr.Renderer(image_size=16, handedness=handedness).render_silhouettes(
            marker, faces))  # fmt: skip
        cols = np.nonzero(alpha.sum(0))[0]
        assert len(cols) and ((cols >= 8).all() if side == "right" else (cols < 8).all())


def test_projection_camera_is_right_handed_and_unmirrored():
    # OpenCV's camera: x right, y down; the teapot's outward faces are front faces.
    v, f = small_mesh()
    K = jnp.array([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    kw = dict(image_size=32, camera_mode="projection", orig_size=32, K=K, R=jnp.eye(3))
    t = jnp.array([0.0, 0.0, 2.732])
    both = nr.Renderer(**kw, t=t).render_depth(v, f)
    front = nr.Renderer(**kw, t=t, fill_back=False).render_depth(v, f)
    np.testing.assert_allclose(front, both, atol=1e-5)
    # Camera x > 0 and y < 0 (y points down): the upper right quarter of the image.
    point = jnp.array([[0.5, -0.5, 0.0], [0.7, -0.5, 0.0], [0.6, -0.3, 0.0]])
    alpha = np.asarray(nr.Renderer(**kw, t=t).render_silhouettes(point, jnp.array([[0, 1, 2]])))
    rows, cols = np.nonzero(alpha)
    assert len(rows) and (cols >= 16).all() and (rows < 16).all()


def test_render_takes_numpy_textures_and_colours():
    # Regression: counting the colour sources with list.count(None) compared a numpy array with
    # None elementwise and raised "the truth value of an array ... is ambiguous".
    v, f = small_mesh()
    r = nr.Renderer(image_size=8)
    rgb, _, _ = r.render(np.asarray(v), np.asarray(f), np.ones((f.shape[0], 1, 1, 1, 3)))
    rgb2, _, _ = r.render(np.asarray(v), np.asarray(f), vertex_colors=np.ones(v.shape))
    np.testing.assert_allclose(rgb, rgb2, atol=1e-5)
