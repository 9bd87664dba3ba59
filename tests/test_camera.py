"""Camera functions against ALGORITHM.md's formulas; finite gradients at singular points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nmr_jax as nr

pytestmark = pytest.mark.versions  # the second leg runs the whole file


def test_look_at_default_eye_puts_origin_on_axis():
    v = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = nr.look_at(v, jnp.array([0.0, 0.0, -2.0]))
    np.testing.assert_allclose(out, [[0, 0, 2], [1, 0, 2], [0, 1, 2]], atol=1e-6)


def test_look_equals_look_at_along_direction():
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    eye = jnp.array([1.0, 2.0, -3.0])
    np.testing.assert_allclose(nr.look(v, eye, -eye), nr.look_at(v, eye), atol=1e-5)


def test_perspective_and_points_from_angles():
    v = jnp.array([[1.0, 2.0, 4.0]])
    t = np.tan(np.radians(30))
    np.testing.assert_allclose(nr.perspective(v), [[1 / (4 * t), 2 / (4 * t), 4]], rtol=1e-6)
    eye = nr.get_points_from_angles(2.0, 30.0, 90.0)
    np.testing.assert_allclose(eye, [2 * np.cos(np.radians(30)), 1.0, 0.0], atol=1e-6)


def test_projection_maps_principal_point_to_centre():
    K = jnp.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    v = jnp.array([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0]])
    out = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.zeros(5), 100)
    np.testing.assert_allclose(out[0], [0, 0, 2], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0, 2], atol=1e-6)  # u = 50 + 25 -> 2*75/100 - 1
    distorted = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.array([0.1, 0, 0, 0, 0]), 100)
    assert distorted[1, 0] > out[1, 0]  # barrel coefficient k1 > 0 pushes points outwards


def test_gradients_finite_when_eye_is_at_target_or_up_parallel():
    v = jnp.ones((3, 3))
    for eye in (jnp.zeros(3), jnp.array([0.0, 2.0, 0.0])):
        g = jax.grad(lambda e: jnp.sum(nr.look_at(v, e)))(eye)
        assert np.isfinite(g).all()


def test_projection_with_non_square_orig_size():
    # Pixel (u, v) of a W x H = 640 x 480 image maps to NDC (2u / W - 1, 1 - 2v / H).
    K = jnp.array([[100.0, 0, 320], [0, 100.0, 240], [0, 0, 1]])
    v = jnp.array([[0.0, 0.0, 2.0], [3.2, 2.4, 1.0]])  # principal point; pixel (640, 480)
    out = nr.projection(v, K, jnp.eye(3), jnp.zeros(3), jnp.zeros(5), (480, 640))
    np.testing.assert_allclose(out, [[0, 0, 2], [1, -1, 1]], atol=1e-6)


def ellipsoid(tmp_path):
    """An icosphere squashed along z (its silhouette from above shows the camera's roll),
    written and read back as an OBJ file."""
    v, f = nr.data.icosphere(2)
    nr.save_obj(tmp_path / "ellipsoid.obj", np.asarray(v) * [1.0, 1.0, 0.5], f)
    mesh = nr.load_mesh(tmp_path / "ellipsoid.obj", normalization=False)
    return mesh.vertices, mesh.faces


def test_eye_on_the_up_axis_falls_back_to_z_up(tmp_path):
    # An eye straight above the mesh gave a blank image and a zero gradient.
    v, f = ellipsoid(tmp_path)
    r = nr.Renderer(image_size=32)
    above = r.render_silhouettes(v, f, eye=jnp.array([0.0, 3.0, 0.0]))
    assert 50 < float(above.sum()) < 32 * 32
    # The fallback is the limit of eyes approaching from azimuth 0 (image up = world +z).
    near_limit = r.render_silhouettes(v, f, eye=nr.get_points_from_angles(3.0, 89.99, 0.0))
    assert np.abs(np.asarray(above) - np.asarray(near_limit)).mean() < 0.01
    # Wider than tall: world x (1) across the image, world z (0.5) up it.
    cols, rows = np.asarray(above).sum(0) > 0, np.asarray(above).sum(1) > 0
    assert cols.sum() > 1.5 * rows.sum()
    below = r.render_silhouettes(v, f, eye=jnp.array([0.0, -3.0, 0.0]))
    assert 50 < float(below.sum()) < 32 * 32

    def loss(eye):
        return jnp.sum(r.render_silhouettes(v, f, eye=eye))

    g = jax.jit(jax.grad(loss))(jnp.array([0.0, 3.0, 0.0]))
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    # The same for look_at with another up vector.
    pts = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = nr.look_at(pts, eye=(0.0, 0.0, 2.0), up=(0.0, 0.0, 1.0))
    assert np.all(np.isfinite(out)) and np.abs(np.asarray(out)[:, :2]).max() > 0.5
    with pytest.raises(ValueError, match="eye - at is zero"):
        nr.look_at(pts, eye=(1.0, 2.0, 3.0), at=(1.0, 2.0, 3.0))


def test_eye_at_the_point_looked_at_raises_or_looks_along_z(tmp_path):
    v, f = ellipsoid(tmp_path)
    r = nr.Renderer(image_size=16)
    with pytest.raises(ValueError, match="eye is zero"):
        r.render_silhouettes(v, f, eye=jnp.zeros(3))
    with pytest.raises(ValueError, match="camera_direction is zero"):
        nr.Renderer(camera_mode="look", camera_direction=(0.0, 0.0, 0.0)).render_depth(v, f)
    # Traced, it looks along +z from the eye: the same image as 'look' along +z.
    shifted = v + jnp.array([0.0, 0.0, 3.0])
    traced = jax.jit(lambda e: r.render_silhouettes(shifted, f, eye=e))(jnp.zeros(3))
    look = nr.Renderer(image_size=16, camera_mode="look", eye=(0.0, 0.0, 0.0))
    np.testing.assert_array_equal(traced, look.render_silhouettes(shifted, f))
    assert float(traced.sum()) > 10
    g = jax.jit(jax.grad(lambda e: r.render_silhouettes(shifted, f, eye=e).sum()))(jnp.zeros(3))
    assert np.all(np.isfinite(g))


def pytorch3d_look_at_view_transform(dist, elev, azim):
    """PyTorch3D's look_at_view_transform (degrees, at the origin, y up), from its formulas."""
    el, az = np.radians(elev), np.radians(azim)
    c = dist * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    z = -c / np.linalg.norm(c)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], 1)  # columns: the view axes in world coordinates
    return R, -R.T @ c


def pytorch3d_pixels(points, R, T, fov, height, width):
    """Where PyTorch3D's FoVPerspectiveCameras and rasterizer put points: (column, row) in
    pixels (continuous, 0 at the top-left corner). View frame x left, y up, z forward; NDC
    x / (z tan(fov / 2)) with +x on the left, the shorter side spanning [-1, 1]."""
    view = points @ R + T
    t = np.tan(np.radians(fov) / 2)
    x, y = view[:, 0] / (view[:, 2] * t), view[:, 1] / (view[:, 2] * t)
    half = min(height, width) / 2
    return np.stack([width / 2 - x * half, height / 2 - y * half], -1)


def test_pytorch3d_camera_reproduces_its_projection_of_known_points(tmp_path):
    rng = np.random.default_rng(3)
    points = rng.uniform(-0.8, 0.8, (20, 3))
    height, width, fov = 48, 64, 50.0
    R, T = pytorch3d_look_at_view_transform(3.0, 20.0, 30.0)
    want = pytorch3d_pixels(points, R, T, fov, height, width)
    K, R_, t = nr.pytorch3d_camera(R, T, fov, (height, width))
    camera = nr.Renderer(
        camera_mode="projection", K=K, R=R_, t=t, orig_size=(height, width),
        image_size=(height, width),
    )  # fmt: skip
    ndc = np.asarray(camera.transform(points))
    got = np.stack([(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height], -1)
    np.testing.assert_allclose(got, want, atol=1e-3)
    # The same view as a 'look_at' camera: azimuth 180 - azim, half the fov, right-handed.
    eye = nr.get_points_from_angles(3.0, 20.0, 180.0 - 30.0)
    look = nr.Renderer(image_size=(height, width), viewing_angle=fov / 2, handedness="right")
    ndc = np.asarray(look.transform(points, eye=eye))
    got = np.stack([(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height], -1)
    np.testing.assert_allclose(got, want, atol=1e-3)
    # R (transposed: PyTorch3D's multiplies rows) and T unconverted turn the image by 180
    # degrees: the pitfall the converter removes.
    raw = nr.Renderer(camera_mode="projection", K=K, R=R.T, t=T, orig_size=(height, width))
    ndc = np.asarray(raw.transform(points))
    np.testing.assert_allclose(
        np.stack([(1 - ndc[:, 0]) / 2 * width, (1 + ndc[:, 1]) / 2 * height], -1), want, atol=1e-3
    )
    # Rendered, a mesh loaded from an OBJ file covers the same pixels through both cameras.
    path = tmp_path / "sphere.obj"
    nr.save_obj(path, *nr.data.icosphere(1))
    mesh = nr.load_mesh(path, normalization=False)
    a = np.asarray(camera.render_silhouettes(mesh.vertices, mesh.faces))
    b = np.asarray(look.render_silhouettes(mesh.vertices, mesh.faces, eye=eye))
    assert a.sum() > 100 and np.abs(a - b).mean() < 1e-3


def test_pytorch3d_camera_under_jit_vmap_and_grad():
    R, T = pytorch3d_look_at_view_transform(3.0, 20.0, 30.0)
    fovs = jnp.array([40.0, 60.0])
    K, R_, t = jax.jit(jax.vmap(lambda f: nr.pytorch3d_camera(R, T, f, 32)))(fovs)
    assert K.shape == (2, 3, 3) and R_.shape == (2, 3, 3) and t.shape == (2, 3)
    np.testing.assert_allclose(K[1, 0, 0], 16 / np.tan(np.radians(30)), rtol=1e-6)
    g = jax.grad(lambda f: nr.pytorch3d_camera(R, T, f, 32)[0][0, 0])(60.0)
    assert np.isfinite(g) and g < 0  # a wider view, a shorter focal length
