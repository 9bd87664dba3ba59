"""Near-plane clipping (nmr_jax/clip.py) and the Renderer's use of it: scenes around the camera.

Depths are checked against ray-box and ray-plane intersections written here in numpy; pieces
against a triangle split by hand; gradients against finite differences where the image is smooth.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import _ffi
from tests._helpers import needs_cuda_host

# A closed box room [-1, 1] x [-0.8, 0.8] x [-1.5, 1.5]: 12 faces (both sides drawn).
HALF = np.array([1.0, 0.8, 1.5], np.float32)
ROOM = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32) * HALF
_QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
ROOM_FACES = np.array(
    [t for q in _QUADS for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))], np.int32
)
NEAR = 0.1

# (eye, direction, half angle): the centre, off-centre, near a wall, on a wall's plane, on an
# edge of the room, in a corner. Each view lies inside the room, so every pixel sees a wall.
VIEWS = [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 45.0),
    ((0.5, 0.3, -1.0), (1.0, 0.2, 0.3), 45.0),
    ((0.7, -0.5, 1.2), (-0.3, 0.1, -1.0), 45.0),
    ((-1.0, 0.0, 0.0), (1.0, 0.0, 0.0), 45.0),
    ((-1.0, -0.8, 0.2), (1.0, 0.8, 0.0), 30.0),
    ((-1.0, -0.8, -1.5), (1.0, 0.8, 1.5), 20.0),
    ((0.2, 0.6, 0.9), (0.1, -1.0, 0.2), 45.0),
]


clip = jax.jit(nr.clip_faces, static_argnums=1)  # one compilation per face count


def camera_axes(direction) -> np.ndarray:
    """Rows x, y, z of the 'look' camera (handedness left) looking along ``direction``."""
    z = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def pixel_ndc(n: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC x [1, n] and y [n, 1] of the pixel centres, row 0 at the top."""
    p = (2 * np.arange(n) + 1 - n) / n
    return p[None, :], p[::-1][:, None]


def look_rays(direction, angle: float, n: int) -> np.ndarray:
    """World directions [n, n, 3] of the pixels, scaled to unit view depth."""
    x, y = pixel_ndc(n)
    tan = np.tan(np.radians(angle))
    axes = camera_axes(direction)
    return (x * tan)[..., None] * axes[0] + (y * tan)[..., None] * axes[1] + axes[2]


def room_depth(eye, rays: np.ndarray) -> np.ndarray:
    """View depth where rays of unit view depth from ``eye`` inside the room leave it."""
    eye = np.asarray(eye, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (np.sign(rays) * HALF - eye) / rays
    return np.where(rays == 0, np.inf, s).min(-1)


def opencv_camera(eye, direction, angle: float, n: int):
    """K, R, t of an OpenCV camera at ``eye`` looking along ``direction`` (image y down), and its
    pixel rays of unit view depth."""
    z = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    f = n / 2 / np.tan(np.radians(angle))
    K = np.array([[f, 0, n / 2], [0, f, n / 2], [0, 0, 1]])
    t = -R @ np.asarray(eye, np.float64)
    u = np.arange(n) + 0.5
    cam = np.stack(
        np.broadcast_arrays(((u[None, :] - n / 2) / f), ((u[:, None] - n / 2) / f), 1.0), -1
    )
    rays = cam @ R  # R^T applied to each camera direction
    return K.astype(np.float32), R.astype(np.float32), t.astype(np.float32), rays


def room_renderer(
    mode: str, eye, direction, angle: float, n: int, **kw
) -> tuple[nr.Renderer, np.ndarray]:
    """A Renderer of the given camera mode at a view of VIEWS, and the pixels' world rays."""
    if mode == "projection":
        K, R, t, rays = opencv_camera(eye, direction, angle, n)
        r = nr.Renderer(image_size=n, camera_mode="projection", K=K, R=R, t=t, orig_size=n, **kw)
        return r, rays
    e = np.asarray(eye, np.float32)
    if mode == "look_at":  # looks at the origin: the view along the eye's line through it
        r = nr.Renderer(image_size=n, eye=e, viewing_angle=angle, **kw)
        return r, look_rays(-e, angle, n)
    d = np.asarray(direction, np.float32)
    r = nr.Renderer(
        image_size=n, camera_mode="look", eye=e, camera_direction=d, viewing_angle=angle, **kw
    )
    return r, look_rays(d, angle, n)


@jax.jit
def room_maps(renderer: nr.Renderer) -> tuple[jax.Array, jax.Array]:
    """(alpha, depth) of the room; one compilation per camera mode and size (the camera is a
    leaf of the Renderer)."""
    return renderer.render_silhouettes(ROOM, ROOM_FACES), renderer.render_depth(ROOM, ROOM_FACES)


@pytest.mark.parametrize("mode", ["look", "look_at", "projection"])
@pytest.mark.parametrize("view", VIEWS, ids=[f"view{i}" for i in range(len(VIEWS))])
def test_closed_room_is_covered_with_the_analytic_depth(mode: str, view) -> None:
    eye, direction, angle = view
    if mode == "look_at" and np.allclose(eye, 0):
        pytest.skip("'look_at' from the origin looks nowhere")
    renderer, rays = room_renderer(mode, eye, direction, angle, 32, anti_aliasing=False)
    alpha, depth = (np.asarray(m) for m in room_maps(renderer))
    assert alpha.min() == 1.0, f"{(alpha == 0).sum()} uncovered pixels"
    np.testing.assert_allclose(depth, room_depth(eye, rays), rtol=1e-4)


@pytest.mark.parametrize("view", [VIEWS[1], VIEWS[4]], ids=["off-centre", "on-an-edge"])
def test_closed_room_non_square_and_right_handed(view) -> None:
    eye, direction, angle = view
    h, w = 24, 32
    r = nr.Renderer(
        image_size=(h, w), anti_aliasing=False, camera_mode="look", eye=np.asarray(eye, np.float32),
        camera_direction=np.asarray(direction, np.float32), viewing_angle=angle, handedness="right",
    )  # fmt: skip
    alpha, depth = (np.asarray(m) for m in room_maps(r))
    # Camera x is mirrored and stretched by W / H; y as in a square image of H rows.
    x = (2 * np.arange(w) + 1 - w) / w * np.tan(np.radians(angle)) * w / h
    y = ((2 * np.arange(h) + 1 - h) / h * np.tan(np.radians(angle)))[::-1]
    axes = camera_axes(direction)
    rays = -x[None, :, None] * axes[0] + y[:, None, None] * axes[1] + axes[2]
    assert alpha.min() == 1.0
    np.testing.assert_allclose(depth, room_depth(eye, rays), rtol=1e-4)


def test_room_without_clipping_has_holes() -> None:
    """What the clipping fixes: the room's faces projected whole (the rasterize functions'
    input, and what ``clip=False`` draws) leave a large part of the view uncovered."""
    r, _ = room_renderer("look", *VIEWS[1], 32, anti_aliasing=False)
    unclipped = nr.vertices_to_faces(
        r.transform(ROOM), np.concatenate([ROOM_FACES, ROOM_FACES[:, ::-1]])
    )
    alpha = nr.rasterize_silhouettes(unclipped, 32, False)
    assert float(alpha.mean()) < 0.9
    off = room_maps(dataclasses.replace(r, clip=False))[0]
    np.testing.assert_array_equal(off, alpha)
    assert float(room_maps(r)[0].mean()) == 1.0


def test_ground_plane_to_the_horizon() -> None:
    ground = np.array(
        [[-1e3, -1.0, -1e3], [1e3, -1.0, -1e3], [1e3, -1.0, 1e3], [-1e3, -1.0, 1e3]], np.float32
    )
    faces = np.array([[0, 2, 1], [0, 3, 2]], np.int32)
    n, angle = 32, 30.0
    r = nr.Renderer(
        image_size=n,
        anti_aliasing=False,
        camera_mode="look",
        eye=(0.0, 0.0, 0.0),
        viewing_angle=angle,
    )
    depth = np.asarray(jax.jit(r.render_depth)(ground, faces))
    alpha = np.asarray(jax.jit(r.render_silhouettes)(ground, faces))
    _, y = pixel_ndc(n)
    below = np.broadcast_to(-y * np.tan(np.radians(angle)), (n, n))  # -ray_y at unit view depth
    expected = np.where(below > 0, 1.0 / np.maximum(below, 1e-30), np.inf)
    near_far = expected < 0.9 * r.far
    assert near_far[-1].all() and alpha[near_far].min() == 1.0  # the ground under the camera
    np.testing.assert_allclose(depth[near_far], expected[near_far], rtol=1e-4)
    assert alpha[below < 0].max() == 0.0  # the sky


def split_by_hand(tri: np.ndarray, near: float) -> list[np.ndarray]:
    """The pieces of a triangle with corner 0 behind the plane and corners 1, 2 in front."""
    a, b, c = tri.astype(np.float64)
    ab = a + (near - a[2]) / (b[2] - a[2]) * (b - a)
    ca = a + (near - a[2]) / (c[2] - a[2]) * (c - a)
    return [np.stack([b, c, ca]), np.stack([b, ca, ab])]


def test_crossing_triangle_equals_the_triangle_split_by_hand() -> None:
    tri = np.array([[0.1, 0.5, -0.4], [-0.6, -0.3, 1.2], [0.7, -0.2, 0.9]], np.float32)
    clipped = clip(tri[None], NEAR)
    assert clipped.faces.shape == (2, 3, 3) and list(clipped.source) == [0, 0]
    hand = np.stack(split_by_hand(tri, NEAR)).astype(np.float32)
    np.testing.assert_allclose(clipped.faces, hand, rtol=1e-6, atol=1e-7)
    # The corners' barycentrics rebuild them from the source corners.
    np.testing.assert_allclose(np.asarray(clipped.bary) @ tri, hand, rtol=1e-6, atol=1e-6)

    # The Renderer (look camera at the origin along +z: the camera frame is the world's) draws
    # exactly what the hand-split pieces draw.
    n = 32
    r = nr.Renderer(
        image_size=n, anti_aliasing=False, camera_mode="look", eye=(0.0, 0.0, 0.0), fill_back=False
    )
    project = lambda f: nr.perspective(f.reshape(-1, 3), 30.0).reshape(f.shape)  # noqa: E731
    one = np.array([[0, 1, 2]], np.int32)
    alpha, depth = jax.jit(lambda t: (r.render_silhouettes(t, one), r.render_depth(t, one)))(tri)
    hand_maps = jax.jit(lambda f: nr.rasterize_rgbad(f, None, n, False, return_rgb=False))
    np.testing.assert_array_equal(alpha, hand_maps(project(hand)).alpha)
    np.testing.assert_allclose(depth, hand_maps(project(hand)).depth, rtol=1e-6)
    assert float(alpha.mean()) > 0.1

    # Fragments read back as the source face: its id, and barycentrics that rebuild the 3D
    # point of each pixel's ray.
    fragments = jax.jit(lambda f: nr.rasterize_fragments(project(f), n, False))
    frags, hand_frags = fragments(clipped.faces), fragments(jnp.asarray(hand))
    src = nr.source_fragments(frags, clipped, tri[None])
    np.testing.assert_array_equal(frags.face_index, hand_frags.face_index)
    np.testing.assert_array_equal(src.face_index, np.where(hand_frags.face_index >= 0, 0, -1))
    covered = np.asarray(src.face_index) >= 0
    point = np.asarray(src.bary) @ tri  # [n, n, 3]
    x, y = pixel_ndc(n)
    tan = np.tan(np.radians(30.0))
    ray = (
        np.stack(np.broadcast_arrays(x * tan, y * tan, 1.0), -1) * np.asarray(src.depth)[..., None]
    )
    np.testing.assert_allclose(point[covered], ray[covered], atol=2e-4)
    # Screen-space barycentrics of the source face: b_k z_k / sum_j b_j z_j.
    bz = np.asarray(src.bary)[covered] * tri[:, 2]
    np.testing.assert_allclose(src.bary_screen[covered], bz / bz.sum(-1, keepdims=True), atol=1e-5)


def test_shared_edge_crossings_are_bit_identical() -> None:
    """Watertight: a quad's two triangles, listed with their shared edge in both directions and
    cut by the plane, meet the plane at exactly the same point on that edge."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.uniform(-2, 2, (4, 3)).astype(np.float32)
        p[0, 2], p[2, 2] = rng.uniform(-1, NEAR), rng.uniform(NEAR, 2)  # the diagonal crosses
        faces = np.stack([p[[0, 1, 2]], p[[2, 3, 0]]])
        c = clip(faces, NEAR)
        on_plane = [
            set(map(tuple, np.asarray(c.faces[i])[np.asarray(c.faces[i])[:, 2] == NEAR].tolist()))
            for i in range(4)
        ]
        first, second = on_plane[0] | on_plane[2], on_plane[1] | on_plane[3]
        assert first & second, (first, second)  # the diagonal's crossing, bit for bit


def test_kept_faces_and_rounding_of_the_plane() -> None:
    """Corners on the plane count as in front (the face is kept, bit for bit); a face wholly
    behind is dropped; a face with a NaN corner is dropped."""
    f = np.array(
        [
            [[0.0, 0.0, NEAR], [1.0, 0.0, NEAR], [0.0, 1.0, NEAR]],  # in the plane: kept
            [[0.0, 0.0, -1.0], [1.0, 0.0, -1.0], [0.0, 1.0, 0.0]],  # behind: dropped
            [[0.0, 0.0, 1.0], [np.nan, 0.0, 1.0], [0.0, 1.0, 1.0]],  # NaN: dropped
        ],
        np.float32,
    )
    c = clip(f, NEAR)
    np.testing.assert_array_equal(c.source, [0, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(c.faces[0], f[0])
    np.testing.assert_array_equal(c.bary[0], np.eye(3))
    assert not np.asarray(c.faces[1:]).any()


def textured_room(seed: int = 0, size: int = 2) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .uniform(0.1, 1.0, (len(ROOM_FACES), size, size, size, 3))
        .astype(np.float32)
    )


def test_scene_in_front_is_drawn_as_without_clipping() -> None:
    """Faces wholly in front: the Renderer's images and gradients are those of the projected
    faces rasterized directly, bit for bit."""
    v, f = nr.data.teapot()
    tex = jnp.asarray(np.random.default_rng(1).uniform(size=(f.shape[0], 2, 2, 2, 3)), jnp.float32)
    r = nr.Renderer(image_size=32)
    both = np.concatenate([f, f[:, ::-1]])
    both_tex = jnp.concatenate([tex, jnp.swapaxes(tex, -4, -2)])

    def direct(v):
        lit = nr.lighting(nr.vertices_to_faces(v, both), both_tex)
        out = nr.rasterize_rgbad(
            nr.vertices_to_faces(r.transform(v), both), lit, 32, True, eps=1e-3
        )
        return out.rgb, out.depth, out.alpha

    w = jnp.asarray(np.random.default_rng(2).normal(size=(32, 32, 3)), jnp.float32)

    def value_and_grad(render):
        def loss(v):
            out = render(v)
            return jnp.sum(out[0] * w) + jnp.sum(out[1]) + jnp.sum(out[2]), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(v)

    (_, clipped), g_clipped = value_and_grad(lambda v: r.render(v, f, tex))
    (_, plain), g_plain = value_and_grad(direct)
    off = dataclasses.replace(r, clip=False)
    (_, unclipped), g_unclipped = value_and_grad(lambda v: off.render(v, f, tex))
    for a, b, c in zip(clipped, plain, unclipped, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    np.testing.assert_array_equal(g_clipped, g_plain)
    np.testing.assert_array_equal(g_unclipped, g_plain)
    # clip=False skips the test and the condition altogether.
    assert "cond[" in str(jax.make_jaxpr(lambda v: r.render(v, f, tex))(v))
    assert "cond[" not in str(jax.make_jaxpr(lambda v: off.render(v, f, tex))(v))


def test_clip_false_draws_every_image_of_a_scene_in_front_as_the_default() -> None:
    """clip=False skips only the condition: silhouettes, depth, vertex colours and a soft
    rule's images of a scene in front are the default's, bit for bit."""
    v, f = nr.data.teapot()
    colors = jnp.asarray(np.random.default_rng(3).uniform(size=v.shape), jnp.float32)
    soft = nr.SoftRule(sigma=1e-4, gamma=1e-4)

    @jax.jit
    def images(r: nr.Renderer, s: nr.Renderer) -> list[jax.Array]:
        return [
            r.render_silhouettes(v, f),
            r.render_depth(v, f),
            *r.render(v, f, vertex_colors=colors),
            *s.render(v, f, vertex_colors=colors),
        ]

    on = images(nr.Renderer(image_size=16), nr.Renderer(image_size=16, rule=soft))
    off = images(
        nr.Renderer(image_size=16, clip=False), nr.Renderer(image_size=16, rule=soft, clip=False)
    )
    for a, b in zip(on, off, strict=True):
        np.testing.assert_array_equal(a, b)


def crossing_wall(z_behind: float = -0.5) -> tuple[np.ndarray, np.ndarray]:
    """A wall that fills the view of a camera at the origin looking along +z, with two corners
    behind the camera: its cut pieces cover every pixel, so the depth map has no silhouette."""
    v = np.array([[-3.0, -3.0, z_behind], [3.0, -3.0, z_behind], [0.0, 4.0, 2.0]], np.float32)
    return v, np.array([[0, 1, 2]], np.int32)


def test_depth_gradient_across_the_clip_matches_finite_differences() -> None:
    v, f = crossing_wall()
    r = nr.Renderer(image_size=16, anti_aliasing=False, camera_mode="look", eye=(0.0, 0.0, 0.0))
    assert float(r.render_silhouettes(v, f).min()) == 1.0
    w = jnp.asarray(np.random.default_rng(4).uniform(size=(16, 16)), jnp.float32)
    loss = jax.jit(lambda v: jnp.sum(r.render_depth(v, f) * w))
    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(v)))
    h = 1e-2
    fd = np.zeros_like(v)
    for i in range(3):
        for j in range(3):
            d = np.zeros_like(v)
            d[i, j] = h
            fd[i, j] = (float(loss(v + d)) - float(loss(v - d))) / (2 * h)
    assert np.abs(g[:2]).max() > 0.1  # the corners behind the camera move the visible wall
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=2e-2 * np.abs(fd).max())


def uv_shader(frags, image, uvs):
    return nr.sample_texture(image, nr.interpolate(uvs, None, frags))


def test_texture_gradients_across_the_clip_match_finite_differences() -> None:
    """A UV texture on the cut wall: the gradients of the vertices (through the barycentrics in
    the source face) and of the texture match finite differences."""
    v, f = crossing_wall()
    rng = np.random.default_rng(5)
    image = jnp.asarray(rng.uniform(size=(8, 8, 3)), jnp.float32)
    uvs = jnp.asarray([[[0.1, 0.1], [0.9, 0.2], [0.5, 0.9]]], jnp.float32)
    r = nr.Renderer(
        image_size=16, anti_aliasing=False, camera_mode="look", eye=(0.0, 0.0, 0.0), fill_back=False
    )
    w = jnp.asarray(rng.normal(size=(16, 16, 3)), jnp.float32)

    @jax.jit
    def loss(v, image):
        rgb = r.render(v, f, shader=uv_shader, shader_args=(image, uvs))[0]
        return jnp.sum(rgb * w)

    gv, gi = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(v), image)
    h = 1e-2
    for i, j in [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]:
        d = np.zeros_like(v)
        d[i, j] = h
        fd = (float(loss(v + d, image)) - float(loss(v - d, image))) / (2 * h)
        assert abs(float(gv[i, j]) - fd) <= 0.05 * max(1.0, abs(fd)), (i, j, float(gv[i, j]), fd)
    d = jnp.zeros_like(image).at[3, 4, 1].set(1.0)
    np.testing.assert_allclose(
        gi[3, 4, 1], float(loss(v, image + d)) - float(loss(v, image)), rtol=1e-3
    )


def test_images_are_continuous_as_a_corner_crosses_the_plane() -> None:
    """Texture cubes on a face whose corner moves from just in front of the plane to just
    behind it: the image barely changes (a kept face and a cut one read the same cube)."""
    tex = jnp.asarray(np.random.default_rng(6).uniform(size=(1, 4, 4, 4, 3)), jnp.float32)
    r = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0), fill_back=False)
    render = jax.jit(lambda v: r.render(v, np.array([[0, 1, 2]], np.int32), tex)[0])
    images = []
    for z in (NEAR + 1e-4, NEAR - 1e-4):
        v = np.array([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.5, z]], np.float32)
        images.append(np.asarray(render(v)))
    assert images[0].any()
    np.testing.assert_allclose(images[0], images[1], atol=2e-3)


def test_camera_gradient_inside_the_room_is_finite_and_lowers_the_loss() -> None:
    tex = textured_room()
    r = nr.Renderer(image_size=32, camera_mode="look", eye=(0.0, 0.0, 0.0), viewing_angle=45.0)
    render = jax.jit(lambda eye: r.render(ROOM, ROOM_FACES, tex, eye=eye)[0])
    target = render(jnp.asarray([0.2, 0.1, -0.3]))

    def loss(eye):
        return jnp.sum((render(eye) - target) ** 2)

    eye = jnp.asarray([0.35, 0.0, -0.1])
    value, g = jax.jit(jax.value_and_grad(loss))(eye)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.linalg.norm(g)) > 0
    step = 0.05 / float(jnp.linalg.norm(g))
    assert float(loss(eye - step * g)) < float(value)


@pytest.mark.versions
def test_clip_faces_under_jit_vmap_and_grad() -> None:
    tri = jnp.asarray([[[0.0, 0.0, -0.5], [1.0, 0.0, 1.0], [0.0, 1.0, 2.0]]])
    shifts = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, -3.0]])  # cut, whole, gone
    out = jax.jit(jax.vmap(lambda s: nr.clip_faces(tri + s, NEAR)))(shifts)
    np.testing.assert_array_equal(out.source, [[0, 0], [0, -1], [-1, -1]])
    g = jax.jit(jax.grad(lambda t: jnp.sum(nr.clip_faces(t, NEAR).faces ** 2)))(tri)
    assert np.isfinite(np.asarray(g)).all()


def test_vmap_over_cameras_on_both_sides_of_the_geometry() -> None:
    """Cameras outside the room (all faces in front), inside it (faces cut) and on a wall's
    plane, in one vmap and jit: each equals its own call."""
    tex = textured_room()
    r = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0), viewing_angle=40.0)
    eyes = jnp.asarray([[0.0, 0.0, -6.0], [0.3, 0.1, -0.5], [0.0, 0.0, -1.5]])
    render = jax.jit(lambda e: r.render(ROOM, ROOM_FACES, tex, eye=e))
    batched = jax.jit(jax.vmap(render))(eyes)
    for i in range(3):
        single = render(eyes[i])
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_allclose(a[i], b, atol=1e-6)
    assert float(batched[2][1].min()) == 1.0  # inside: covered


SOFT = nr.SoftRule(sigma=1e-3, gamma=1e-2)


def test_soft_rule_inside_the_room_draws_the_clipped_pieces() -> None:
    """A SoftRule from inside the room: finite images and gradients (eye, textures), the hard
    depth of the clipped faces, and every pixel covered (the soft edges between neighbouring
    pieces, as between any two faces, take at most 1 - 0.5^2)."""
    r, _ = room_renderer("look", *VIEWS[1], 16, rule=SOFT, anti_aliasing=False)

    def loss(eye, tex):
        rgb, depth, alpha = r.render(ROOM, ROOM_FACES, tex, eye=eye)
        return jnp.sum(rgb * rgb), (rgb, depth, alpha)

    eye = jnp.asarray(VIEWS[1][0], jnp.float32)
    (_, (rgb, depth, alpha)), grads = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    )(eye, textured_room())
    for x in (rgb, *grads):
        assert np.isfinite(np.asarray(x)).all()
    assert all(np.abs(g).max() > 0 for g in grads)
    assert float(alpha.min()) >= 0.74
    np.testing.assert_array_equal(depth, room_maps(r)[1])


def crossing_triangle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A triangle with one corner behind a camera at the origin looking along +z, part of its
    outline in view (soft edges), and a 2^3 texture cube (trilinear in one cell: the image is
    smooth in the vertices)."""
    v = np.array([[-0.6, -0.5, -0.5], [0.8, -0.4, 1.5], [0.0, 0.7, 2.0]], np.float32)
    tex = np.random.default_rng(10).uniform(size=(1, 2, 2, 2, 3)).astype(np.float32)
    return v, np.array([[0, 1, 2]], np.int32), tex


@jax.jit
def soft_crossing(v, tex) -> jax.Array:
    """rgb of the crossing triangle with a SoftRule, unlit (ambient 1)."""
    r = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0), viewing_angle=45.0,
                    fill_back=False, light_intensity_ambient=1.0, light_intensity_directional=0.0,
                    background_color=(0.2, 0.4, 0.6), rule=SOFT)  # fmt: skip
    return r.render(v, crossing_triangle()[1], tex)[0]


def test_soft_colours_of_a_crossing_triangle_equal_the_brute_force_reference() -> None:
    """Reference: the triangle's pieces (clip_faces) projected and drawn by the brute-force soft
    colours, each reading the source cube at its barycentrics mapped to the source face's."""
    from tests.test_soft import reference_rgb

    v, f, tex = crossing_triangle()
    r = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0), viewing_angle=45.0)
    np.testing.assert_array_equal(r.transform(v), nr.perspective(v, 45.0))  # the camera frame is v

    @jax.jit
    def reference(v, tex):
        pieces = nr.clip_faces(v[f], NEAR)
        projected = nr.perspective(pieces.faces, 45.0)
        projected = jnp.where(pieces.source[:, None, None] >= 0, projected, 0.0)  # padding
        return reference_rgb(projected, tex[jnp.maximum(pieces.source, 0)], 1e-3, 1e-2, (16, 16),
                             "logistic", (0.2, 0.4, 0.6), bary_map=pieces.bary)  # fmt: skip

    got = soft_crossing(v, tex)
    np.testing.assert_allclose(got, reference(v, tex), atol=1e-5)
    covered = np.abs(got - np.array([0.2, 0.4, 0.6])).max(-1) > 1e-3
    assert 0.2 < covered.mean() < 0.9  # pieces, outline and background all in view


def test_soft_colour_gradients_across_the_clip_match_finite_differences() -> None:
    """The gradients of every vertex coordinate (corner 0 behind the camera) and of a texel."""
    v, _, tex = crossing_triangle()
    w = np.random.default_rng(11).normal(size=(16, 16, 3))
    weighted = lambda v, t: jnp.sum(soft_crossing(v, t) * w)  # noqa: E731
    gv, gt = jax.jit(jax.grad(weighted, argnums=(0, 1)))(v, tex)

    def loss(v, tex):
        return float(np.sum(np.asarray(soft_crossing(v, tex), np.float64) * w))

    h = 1e-3
    for i in range(3):
        for j in range(3):
            d = np.zeros_like(v)
            d[i, j] = h
            fd = (loss(v + d, tex) - loss(v - d, tex)) / (2 * h)
            assert abs(float(gv[i, j]) - fd) <= 0.03 * max(1.0, abs(fd)), (i, j, gv[i, j], fd)
    d = np.zeros_like(tex)
    d[0, 1, 0, 1, 1] = 1.0  # rgb is linear in the texels
    np.testing.assert_allclose(gt[0, 1, 0, 1, 1], loss(v, tex + d) - loss(v, tex), rtol=1e-3)


@needs_cuda_host
def test_cuda_host_kernels_match_the_cpu_kernels_on_a_cut_room() -> None:
    """Texture cubes and a shader on the cut room: images and the camera's
    gradient of the host-compiled CUDA kernels equal the CPU kernels'."""
    r = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0), viewing_angle=45.0)
    colors = np.random.default_rng(7).uniform(size=(8, 3)).astype(np.float32)

    def loss(eye):
        images = [
            r.render(ROOM, ROOM_FACES, textured_room(), eye=eye),
            r.render(ROOM, ROOM_FACES, shader=color_shader, shader_args=(colors,), eye=eye),
        ]
        rgb = jnp.stack([x[0] for x in images])
        return jnp.sum(rgb * rgb) + sum(jnp.sum(x[1]) + jnp.sum(x[2]) for x in images), rgb

    eye = jnp.asarray([0.3, -0.2, 0.4])
    (_, rgb), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(eye)
    with _ffi.using_kernels("cuda-host"):
        (_, rgb_host), g_host = jax.jit(jax.value_and_grad(loss, has_aux=True))(eye)
    np.testing.assert_allclose(rgb_host, rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_host, g, rtol=1e-4, atol=1e-4 * float(np.abs(g).max()))


def color_shader(frags, colors):
    return nr.interpolate(colors, ROOM_FACES, frags)


def test_no_nan_for_any_vertex_placement_relative_to_the_plane() -> None:
    """Fuzz: corners exactly on the plane, a float32 step either side of it, on the camera
    plane, behind, in front; faces in the plane and edge-on to it. No NaN in any image or
    gradient (vertices, camera, textures, a shader's arguments)."""
    rng = np.random.default_rng(8)
    near = np.float32(NEAR)
    depths = np.array(
        [near, np.nextafter(near, np.float32(1)), np.nextafter(near, np.float32(0)), 0.0, -0.0,
         1e-30, -1e-30, -1.0, 0.5, 3.0], np.float32,
    )  # fmt: skip
    n_vertices, n_faces = 12, 16
    r = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0), viewing_angle=45.0)
    uvs = jnp.asarray(rng.uniform(size=(n_faces, 3, 2)), jnp.float32)
    image = jnp.asarray(rng.uniform(size=(4, 4, 3)), jnp.float32)

    def losses(v, f, tex, colors, eye, image):
        rgb, depth, alpha = r.render(v, f, tex, eye=eye)
        rgb2, _, _ = r.render(v, f, vertex_colors=colors, eye=eye)
        rgb3, _, _ = r.render(v, f, shader=uv_shader, shader_args=(image, uvs), eye=eye)
        return sum(jnp.sum(x * x) for x in (rgb, depth / 100, alpha, rgb2, rgb3))

    grad = jax.jit(jax.value_and_grad(losses, argnums=(0, 2, 3, 4, 5)))
    for trial in range(6):
        v = rng.uniform(-1.0, 1.0, (n_vertices, 3)).astype(np.float32)
        v[:, 2] = rng.choice(depths, n_vertices)
        if trial % 2:
            v[:4, 2] = near  # a face in the plane
        f = rng.integers(0, n_vertices, (n_faces, 3)).astype(np.int32)
        f[0] = [0, 1, 2]
        tex = rng.uniform(size=(n_faces, 2, 2, 2, 3)).astype(np.float32)
        colors = rng.uniform(size=(n_vertices, 3)).astype(np.float32)
        value, grads = grad(v, f, tex, colors, jnp.zeros(3), image)
        assert np.isfinite(float(value)), trial
        for g in grads:
            assert np.isfinite(np.asarray(g)).all(), trial


def test_clip_faces_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="faces"):
        nr.clip_faces(np.zeros((4, 3)), NEAR)
    with pytest.raises(ValueError, match="near"):
        nr.clip_faces(np.zeros((1, 3, 3)), 0.0)
    with pytest.raises(ValueError, match="near"):
        nr.clip_faces(np.zeros((1, 3, 3)), float("nan"))
