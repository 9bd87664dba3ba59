"""Tests of nmr_jax._obj: OBJ/MTL loading (geometry, textures, errors) and save_obj."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest

from nmr_jax._obj import Mesh, load_mesh, load_obj, save_obj

SHARED_DATA = Path(__file__).parents[1] / ".." / "shared" / "nmr_reference_data" / "tests" / "data"

TRIANGLE = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def at_line(path: Path, lineno: int) -> str:
    """A pytest.raises match for an error reported at ``path:lineno``."""
    return re.escape(f"{path}:{lineno}:")


@pytest.mark.versions
def test_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    vertices = rng.uniform(-10, 10, (50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, (80, 3)).astype(np.int32)
    path = tmp_path / "mesh.obj"
    save_obj(path, jnp.asarray(vertices), jnp.asarray(faces))
    loaded_vertices, loaded_faces = load_obj(path, normalization=False)
    assert loaded_vertices.dtype == jnp.float32 and loaded_faces.dtype == jnp.int32
    np.testing.assert_array_equal(loaded_faces, faces)
    # %.6f keeps 6 decimals; float32 carries ~7 significant digits of values up to 10.
    np.testing.assert_allclose(loaded_vertices, vertices, rtol=0, atol=2e-6)


def test_save_obj_format(tmp_path):
    path = tmp_path / "mesh.obj"
    save_obj(str(path), np.array([[0, 0.5, -1], [1, 2, 3], [4, 5, 6.25]]), np.array([[0, 1, 2]]))
    assert path.read_text() == (
        "v 0.000000 0.500000 -1.000000\nv 1.000000 2.000000 3.000000\n"
        "v 4.000000 5.000000 6.250000\nf 1 2 3\n"
    )


def test_polygons_are_fanned_from_the_first_vertex(tmp_path):
    square = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0.5 2 0\n"
    path = write(tmp_path, "poly.obj", square + "f 1 2 3 4\nf 1 2 3 5 4\n")
    _, faces = load_obj(path, normalization=False)
    np.testing.assert_array_equal(faces, [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 4], [0, 4, 3]])


def test_negative_indices_count_back_from_the_last_vertex_read(tmp_path):
    text = TRIANGLE + "f -3 -2 -1\nv 0 0 1\nf -1 -2 -4\n"
    _, faces = load_obj(write(tmp_path, "neg.obj", text), normalization=False)
    np.testing.assert_array_equal(faces, [[0, 1, 2], [3, 2, 0]])


@pytest.mark.parametrize("face", ["f 1/1/1 2/2/2 3/3/3", "f 1//3 2//2 3//1", "f 1/1 2/2 3/3"])
def test_face_corner_forms(tmp_path, face):
    text = TRIANGLE + "vt 0 0\nvt 1 0\nvt 0 1\nvn 0 0 1\nvn 0 0 1\nvn 0 0 1\n" + face + "\n"
    _, faces = load_obj(write(tmp_path, "forms.obj", text), normalization=False)
    np.testing.assert_array_equal(faces, [[0, 1, 2]])


def test_other_statements_and_comments_are_ignored(tmp_path):
    text = (
        "# a comment\nmtllib missing.mtl\no thing\ng group\ns 1\nusemtl nothing\n"
        "v 0 0 0 # trailing comment\nv 1 0 0\nv 0 1 0 1.0\nvn 0 0 1\nvp 0.5\n\n   \nf 1 2 3\n"
    )
    vertices, faces = load_obj(write(tmp_path, "other.obj", text), normalization=False)
    np.testing.assert_array_equal(vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(faces, [[0, 1, 2]])


def test_normalization_formula(tmp_path):
    vertices = np.array([[1, 2, 3], [5, -2, 4], [2, 0, 9], [3, 1, 5]], np.float32)
    path = tmp_path / "mesh.obj"
    save_obj(path, vertices, np.array([[0, 1, 2], [0, 2, 3]]))
    expected = vertices - vertices.min(0)
    expected /= np.abs(expected).max()
    expected *= 2
    expected -= expected.max(0) / 2
    loaded, _ = load_obj(path)
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-6)
    # The longest side (z) spans [-1, 1]; the others are centred on 0.
    np.testing.assert_allclose(loaded.min(0), -loaded.max(0), atol=1e-6)
    assert float(loaded[:, 2].max()) == pytest.approx(1.0)


def test_non_utf8_bytes_in_comments(tmp_path):
    text = b"# caf\xe9 \xff\xfe model\n" + TRIANGLE.encode() + b"f 1 2 3 # \x80\n"
    _, faces = load_obj(write(tmp_path, "latin1.obj", text))
    np.testing.assert_array_equal(faces, [[0, 1, 2]])


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.obj"
    with pytest.raises(FileNotFoundError, match="nowhere.obj"):
        load_obj(path)


@pytest.mark.parametrize(
    "line",
    [
        "v 1 2",  # too few coordinates
        "v 1 two 3",  # not a number
        "f 1 2",  # too few corners
        "f 1 2 x",  # not an index
        "f 0 1 2",  # OBJ indices start at 1
        "f 1 2 4",  # only 3 vertices
        "f -4 1 2",  # before the first vertex
        "f 1/1/1/1 2 3",  # too many '/' parts
        "f 1.5 2 3",  # not an integer
        "f /1 2 3",  # no vertex index
        "v",  # no coordinates
        "v 1 nan 0",  # parses as a float, but is not a coordinate
        "v inf 0 0",
        "v 1e39 0 0",  # infinite in float32
        "v 1 caf\xe9 0",  # a non-UTF-8 byte inside a number
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line):
    path = write(
        tmp_path, "bad.obj", b"# header\n" + TRIANGLE.encode() + line.encode("latin-1") + b"\n"
    )
    with pytest.raises(ValueError, match=at_line(path, 5)):
        load_obj(path)


def test_texture_index_out_of_range(tmp_path):
    path = write(tmp_path, "bad.obj", TRIANGLE + "vt 0 0\nf 1/1 2/2 3/1\n")
    load_obj(path)  # texture coordinates are only read with load_texture
    with pytest.raises(ValueError, match=at_line(path, 5)):
        load_obj(path, load_texture=True)


def test_no_faces(tmp_path):
    path = write(tmp_path, "empty.obj", TRIANGLE)
    with pytest.raises(ValueError, match="no faces"):
        load_obj(path)


def test_missing_mtl(tmp_path):
    path = write(tmp_path, "m.obj", "mtllib absent.mtl\n" + TRIANGLE + "f 1 2 3\n")
    load_obj(path)  # materials are only read with load_texture
    with pytest.raises(FileNotFoundError, match="absent.mtl"):
        load_obj(path, load_texture=True)


def test_missing_texture_image(tmp_path):
    write(tmp_path, "m.mtl", "newmtl a\nKd 1 0 0\nmap_Kd absent.png\n")
    path = write(tmp_path, "m.obj", "mtllib m.mtl\n" + TRIANGLE + "usemtl a\nf 1 2 3\n")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_obj(path, load_texture=True)


def test_undefined_material(tmp_path):
    write(tmp_path, "m.mtl", "newmtl a\nKd 1 0 0\n")
    path = write(tmp_path, "m.obj", "mtllib m.mtl\n" + TRIANGLE + "usemtl b\nf 1 2 3\n")
    with pytest.raises(ValueError, match=at_line(path, 5)):
        load_obj(path, load_texture=True)


def test_malformed_mtl_line(tmp_path):
    mtl = write(tmp_path, "m.mtl", "newmtl a\nKd 1 0\n")
    path = write(tmp_path, "m.obj", "mtllib m.mtl\n" + TRIANGLE + "usemtl a\nf 1 2 3\n")
    with pytest.raises(ValueError, match=at_line(mtl, 2)):
        load_obj(path, load_texture=True)


def test_texture_size_must_be_positive(tmp_path):
    path = write(tmp_path, "m.obj", TRIANGLE + "f 1 2 3\n")
    with pytest.raises(ValueError, match="texture_size"):
        load_obj(path, texture_size=0, load_texture=True)


def test_kd_map_kd_and_no_material(tmp_path):
    iio.imwrite(tmp_path / "const.png", np.full((8, 16, 3), [51, 204, 102], np.uint8))
    write(tmp_path, "m.mtl", "newmtl flat\nKd 0.2 0.4 0.6\n\nnewmtl image\nmap_Kd const.png\n")
    text = (
        "mtllib m.mtl\n" + TRIANGLE + "vt 0 0\nvt 1 0\nvt 0 1\n"
        "f 1 2 3\nusemtl flat\nf 1/1 2/2 3/3\nusemtl image\nf 1/1 2/2 3/3\n"
    )
    path = write(tmp_path, "m.obj", text)
    vertices, faces, textures = load_obj(path, texture_size=3, load_texture=True)
    assert textures.shape == (3, 3, 3, 3, 3) and textures.dtype == jnp.float32
    np.testing.assert_allclose(textures[0], 1.0)  # no material: white
    np.testing.assert_allclose(textures[1], np.broadcast_to([0.2, 0.4, 0.6], (3, 3, 3, 3)))
    np.testing.assert_allclose(textures[2], np.broadcast_to([0.2, 0.8, 0.4], (3, 3, 3, 3)))


def test_texel_barycentric_weights(tmp_path):
    # A horizontal ramp: the colour at u is u, exactly (bilinear interpolation of a linear ramp).
    ramp = np.broadcast_to(np.linspace(0, 255, 256)[None, :, None], (4, 256, 3))
    iio.imwrite(tmp_path / "ramp.png", ramp.astype(np.uint8))
    write(tmp_path, "m.mtl", "newmtl ramp\nmap_Kd ramp.png\n")
    # Only the second corner has u = 1, so texel (i, j, k) has u = j / (i + j + k).
    text = "mtllib m.mtl\n" + TRIANGLE + "vt 0 0.5\nvt 1 0.5\nusemtl ramp\nf 1/1 2/2 3/1\n"
    path = write(tmp_path, "m.obj", text)
    for size in (1, 2, 4):
        _, _, textures = load_obj(path, texture_size=size, load_texture=True)
        i, j, k = np.indices((size,) * 3)
        expected = np.where(i + j + k == 0, 1 / 3, j / np.maximum(i + j + k, 1))
        np.testing.assert_allclose(textures[0, ..., 0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("v", "red"),
    [
        (1.0, 1.0),  # v = 1 is the top row
        (0.0, 0.0),  # v = 0 is the bottom row
        (0.5, 0.5),  # halfway: bilinear blend
        (1.25, 0.25),  # outside [0, 1] repeats: as v = 0.25
    ],
)
def test_image_rows_are_flipped_and_interpolated(tmp_path, v, red):
    image = np.array([[[255, 0, 0]], [[0, 0, 255]]], np.uint8)  # top row red, bottom row blue
    iio.imwrite(tmp_path / "two_rows.png", image)
    write(tmp_path, "m.mtl", "newmtl m\nmap_Kd two_rows.png\n")
    text = f"mtllib m.mtl\n{TRIANGLE}vt 0.5 {v}\nusemtl m\nf 1/1 2/1 3/1\n"
    _, _, textures = load_obj(write(tmp_path, "m.obj", text), texture_size=2, load_texture=True)
    np.testing.assert_allclose(textures[..., 0], red, atol=1e-6)
    np.testing.assert_allclose(textures[..., 2], 1 - red, atol=1e-6)


def test_reference_textured_model():
    path = SHARED_DATA / "4e49873292196f02574b5684eaec43e9" / "model.obj"
    if not path.is_file():
        pytest.skip(f"reference data not available ({path})")
    vertices, faces, textures = load_obj(path, texture_size=4, load_texture=True)
    assert vertices.shape == (921, 3) and faces.shape == (3644, 3)
    assert textures.shape == (3644, 4, 4, 4, 3) and textures.dtype == jnp.float32
    assert float(textures.min()) >= 0.0 and float(textures.max()) <= 1.0
    # Not all one colour: both Kd materials and the two images show up.
    assert len(np.unique(np.asarray(textures).reshape(-1, 3), axis=0)) > 11


@pytest.mark.parametrize(
    ("vertices", "faces", "error", "name"),
    [
        (np.zeros((3, 2)), np.zeros((1, 3), np.int32), ValueError, "vertices"),
        (np.zeros((3, 3), np.complex64), np.zeros((1, 3), np.int32), TypeError, "vertices"),
        (np.zeros((3, 3)), np.zeros((1, 4), np.int32), ValueError, "faces"),
        (np.zeros((3, 3)), np.zeros((1, 3), np.float32), TypeError, "faces"),
        (np.zeros((3, 3)), np.array([[0, 1, 3]]), ValueError, "faces"),
        (np.zeros((3, 3)), np.array([[0, -1, 2]]), ValueError, "faces"),
    ],
)
def test_save_obj_validates(tmp_path, vertices, faces, error, name):
    with pytest.raises(error, match=name):
        save_obj(tmp_path / "bad.obj", vertices, faces)


def test_nonfinite_texture_coordinate_and_kd(tmp_path):
    write(tmp_path, "m.mtl", "newmtl a\nKd 1 nan 0\n")
    path = write(tmp_path, "m.obj", "mtllib m.mtl\n" + TRIANGLE + "vt inf 0\nusemtl a\nf 1 2 3\n")
    with pytest.raises(ValueError, match=at_line(path, 5)):
        load_obj(path, load_texture=True)
    path = write(tmp_path, "m.obj", "mtllib m.mtl\n" + TRIANGLE + "usemtl a\nf 1 2 3\n")
    with pytest.raises(ValueError, match=at_line(tmp_path / "m.mtl", 2)):
        load_obj(path, load_texture=True)


def test_byte_order_mark_does_not_hide_the_first_vertex(tmp_path):
    path = write(tmp_path, "bom.obj", b"\xef\xbb\xbf" + TRIANGLE.encode() + b"f 1 2 3\n")
    vertices, faces = load_obj(path, normalization=False)
    assert vertices.shape == (3, 3)
    np.testing.assert_array_equal(faces, [[0, 1, 2]])


def test_crlf_line_endings_and_tabs(tmp_path):
    path = write(
        tmp_path, "crlf.obj", TRIANGLE.replace(" ", "\t").replace("\n", "\r\n") + "f 1 2 3\r\n"
    )
    vertices, faces = load_obj(path, normalization=False)
    np.testing.assert_array_equal(vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(faces, [[0, 1, 2]])


def test_non_utf8_material_names_still_match(tmp_path):
    write(tmp_path, "m.mtl", b"newmtl caf\xe9\nKd 0 1 0\n")
    text = b"mtllib m.mtl\n" + TRIANGLE.encode() + b"usemtl caf\xe9\nf 1 2 3\n"
    _, _, textures = load_obj(write(tmp_path, "m.obj", text), texture_size=1, load_texture=True)
    np.testing.assert_array_equal(textures[0, 0, 0, 0], [0, 1, 0])


def test_normalization_of_a_mesh_in_one_point_gives_zeros_not_nan(tmp_path):
    path = write(tmp_path, "point.obj", "v 3 3 3\nv 3 3 3\nv 3 3 3\nf 1 2 3\n")
    vertices, _ = load_obj(path)
    np.testing.assert_array_equal(vertices, np.zeros((3, 3)))


@pytest.mark.parametrize("size", [2.0, "4", True])
def test_texture_size_must_be_an_int(tmp_path, size):
    path = write(tmp_path, "m.obj", TRIANGLE + "f 1 2 3\n")
    with pytest.raises(TypeError, match="texture_size"):
        load_obj(path, texture_size=size, load_texture=True)


def test_unreadable_texture_image(tmp_path):
    write(tmp_path, "broken.png", b"not a png at all")
    write(tmp_path, "m.mtl", "newmtl a\nmap_Kd broken.png\n")
    text = "mtllib m.mtl\n" + TRIANGLE + "vt 0 0\nusemtl a\nf 1/1 2/1 3/1\n"
    with pytest.raises(ValueError, match="broken.png cannot be read"):
        load_obj(write(tmp_path, "m.obj", text), load_texture=True)


def test_large_file_is_streamed_into_compact_arrays(tmp_path):
    # 20,000 vertices and faces (0.7 MB): parse memory stays near the 4-byte arrays'
    # size, where lists of Python floats would take about 30 bytes a number.
    n = 20_000
    path = tmp_path / "big.obj"
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"v {i % 97} {i % 89} {i % 83}\n")
        for i in range(n):
            f.write(f"f {i + 1} {(i + 1) % n + 1} {(i + 2) % n + 1}\n")
    tracemalloc.start()
    vertices, faces = load_obj(path, normalization=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert vertices.shape == (n, 3) and faces.shape == (n, 3)
    np.testing.assert_array_equal(faces[-1], [n - 1, 0, 1])
    np.testing.assert_array_equal(vertices[-1], [(n - 1) % 97, (n - 1) % 89, (n - 1) % 83])
    assert peak < 4 * (vertices.nbytes + faces.nbytes), peak


# load_mesh and save_obj's extras; the traps of real files, each named after what went wrong.
SQUARE_UV = (
    "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0.5 2 0\n"
    "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\nvn 0 0 -1\n"
)


def test_empty_mesh_roundtrips(tmp_path):
    path = tmp_path / "empty.obj"
    save_obj(path, np.zeros((0, 3)), np.zeros((0, 3), np.int32))
    vertices, faces = load_obj(path)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    mesh = load_mesh(path)
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3)


def test_v_xyz_rgb_vertex_colors_are_read(tmp_path):
    text = "v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0\nv 0 0 1 1.0\nf 1 2 3\nf 1 2 4\n"
    mesh = load_mesh(write(tmp_path, "c.obj", text), normalization=False)
    # Colourless vertices (and `v x y z w`) are white.
    np.testing.assert_array_equal(mesh.vertex_colors, [[1, 0, 0], [0, 1, 0], [1, 1, 1], [1, 1, 1]])
    assert load_mesh(write(tmp_path, "p.obj", TRIANGLE + "f 1 2 3\n")).vertex_colors is None


@pytest.mark.versions
def test_uvs_normals_quads_ngons_and_faces_without_vt(tmp_path):
    iio.imwrite(tmp_path / "tex.png", np.full((2, 4, 3), 255, np.uint8))
    write(tmp_path, "m.mtl", "newmtl a\nKd 0.5 0.5 0.5\nmap_Kd tex.png\nnewmtl b\nKd 1 0 0\n")
    text = (
        "mtllib m.mtl\n" + SQUARE_UV + "usemtl a\nf 1/1/1 2/2/1 3/3/1 4/4/1\n"  # a quad
        "f 1//2 2//2 5//2\n"  # v//vn, no vt
        "usemtl b\nf 1/1 2/2 3/3 5/4 4/4\n"  # a pentagon, v/vt, no vn
    )
    mesh = load_mesh(write(tmp_path, "m.obj", text), normalization=False)
    assert isinstance(mesh, Mesh) and mesh.material_names == ("a", "b")
    np.testing.assert_array_equal(
        mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 4], [0, 1, 2], [0, 2, 4], [0, 4, 3]]
    )
    np.testing.assert_array_equal(mesh.face_materials, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(mesh.has_uv, [True, True, False, True, True, True])
    np.testing.assert_array_equal(mesh.uvs[1], [[0, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(mesh.uvs[2], 0.0)
    np.testing.assert_allclose(mesh.normals[0], [[0, 0, 1]] * 3)
    np.testing.assert_allclose(mesh.normals[2], [[0, 0, -1]] * 3)
    # Faces without vn: area-weighted vertex normals (outward for counter-clockwise faces).
    np.testing.assert_allclose(mesh.normals[3:, :, 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(mesh.kd, [[0.5, 0.5, 0.5], [1, 0, 0]])
    assert mesh.images[0].shape == (2, 4, 3) and mesh.images[1] is None


def test_backslash_paths_in_mtllib_and_map_kd_resolve(tmp_path):
    (tmp_path / "mats").mkdir()
    iio.imwrite(tmp_path / "mats" / "tex.png", np.zeros((2, 2, 3), np.uint8))
    # A relative Windows path, and an absolute one from the exporting machine (found beside).
    write(tmp_path / "mats", "m.mtl", "newmtl a\nmap_Kd C:\\Users\\me\\textures\\tex.png\n")
    text = "mtllib mats\\m.mtl\n" + TRIANGLE + "vt 0 0\nusemtl a\nf 1/1 2/1 3/1\n"
    mesh = load_mesh(write(tmp_path, "m.obj", text))
    assert mesh.images[0].shape == (2, 2, 3)
    _, _, textures = load_obj(tmp_path / "m.obj", load_texture=True)
    np.testing.assert_array_equal(textures, 0.0)


def test_quoted_names_in_mtllib_usemtl_and_map_kd(tmp_path):
    iio.imwrite(tmp_path / "my tex.png", np.full((1, 1, 3), 255, np.uint8))
    write(tmp_path, "my mats.mtl", 'newmtl "red one"\nKd 1 0 0\nnewmtl b\nmap_Kd "my tex.png"\n')
    text = (
        'mtllib "my mats.mtl"\n' + TRIANGLE + 'vt 0 0\nusemtl "red one"\nf 1 2 3\n'
        "usemtl b\nf 1/1 2/1 3/1\n"
    )
    mesh = load_mesh(write(tmp_path, "m.obj", text))
    assert mesh.material_names == ("red one", "b") and mesh.images[1] is not None


def test_map_kd_options_are_skipped_with_a_warning(tmp_path):
    iio.imwrite(tmp_path / "tex.png", np.zeros((2, 2, 3), np.uint8))
    write(tmp_path, "m.mtl", "newmtl a\nmap_Kd -s 2 2 1 -o 0.5 0.5 -bm 0.3 -clamp on tex.png\n")
    text = "mtllib m.mtl\n" + TRIANGLE + "vt 0 0\nusemtl a\nf 1/1 2/1 3/1\n"
    with pytest.warns(UserWarning) as record:
        mesh = load_mesh(write(tmp_path, "m.obj", text))
    assert {str(w.message).split("option ")[1].split()[0] for w in record} == {
        "-s",
        "-o",
        "-bm",
        "-clamp",
    }
    assert mesh.images[0].shape == (2, 2, 3)


@pytest.mark.parametrize("what", ["library", "material", "image"])
def test_missing_mtl_material_or_image_raises_with_the_hint_or_warns_white(tmp_path, what):
    mtl = "newmtl a\nKd 1 0 0\n" + ("map_Kd absent.png\n" if what == "image" else "")
    if what != "library":
        write(tmp_path, "m.mtl", mtl)
    name = "b" if what == "material" else "a"
    text = "mtllib m.mtl\n" + TRIANGLE + f"vt 0 0\nusemtl {name}\nf 1/1 2/1 3/1\n"
    path = write(tmp_path, "m.obj", text)
    missing = {"library": "m.mtl", "material": "'b'", "image": "absent.png"}[what]
    with pytest.raises(
        (FileNotFoundError, ValueError), match=f"{re.escape(missing)}.*missing='warn'"
    ):
        load_mesh(path)
    with pytest.raises((FileNotFoundError, ValueError), match="nmr-jax render"):
        load_obj(path, load_texture=True)
    with pytest.warns(UserWarning) as record:
        mesh = load_mesh(path, missing="warn")
    assert any(missing in str(w.message) and "white" in str(w.message) for w in record)
    assert mesh.images == (None,)
    # The missing image keeps its material's Kd; a missing library or material is white.
    np.testing.assert_array_equal(mesh.kd, [[1, 0, 0]] if what == "image" else [[1, 1, 1]])


@pytest.mark.versions
def test_save_obj_roundtrip_with_uvs_normals_colors_and_texture(tmp_path):
    rng = np.random.default_rng(3)
    vertices = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]], np.int32)
    uvs = np.round(rng.uniform(0, 1, (3, 3, 2)), 4).astype(np.float32)
    normals = rng.normal(size=(3, 3, 3))
    normals = (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)
    colors = np.round(rng.uniform(0, 1, (6, 3)), 4).astype(np.float32)
    texture = rng.integers(0, 256, (4, 8, 3)).astype(np.uint8)
    path = tmp_path / "out.obj"
    save_obj(path, vertices, faces, uvs=uvs, normals=normals, vertex_colors=colors, texture=texture)
    assert (tmp_path / "out.png").is_file() and (tmp_path / "out.mtl").is_file()
    mesh = load_mesh(path, normalization=False)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-6)
    np.testing.assert_allclose(mesh.uvs, uvs, atol=1e-6)
    np.testing.assert_allclose(mesh.normals, normals, atol=2e-6)
    np.testing.assert_allclose(mesh.vertex_colors, colors, atol=1e-6)
    np.testing.assert_allclose(mesh.images[0], texture / 255.0, atol=1e-6)
    # Normals alone: f v//vn.
    save_obj(path, vertices, faces, normals=normals)
    assert "f 1//" in path.read_text()
    np.testing.assert_allclose(load_mesh(path, normalization=False).normals, normals, atol=2e-6)


PLY = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n" \
    "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n" \
    "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"  # fmt: skip


@pytest.mark.parametrize("name, message", [
    ("x.ply", r"x.ply: PLY files are not supported; nmr_jax reads Wavefront OBJ"),
    ("x.STL", r"x.STL: STL files are not supported"),
    ("ply_content.obj", r"not an OBJ file \(line 1 starts with 'ply'\).*reads Wavefront OBJ"),
])  # fmt: skip
def test_non_obj_file_raises_naming_the_format_instead_of_an_empty_mesh(
    tmp_path: Path, name: str, message: str
) -> None:
    # load_mesh("x.ply") returned a mesh with no vertices and no faces.
    path = tmp_path / name
    path.write_text(PLY)
    with pytest.raises(ValueError, match=message):
        load_mesh(path)
    with pytest.raises(ValueError, match=message):
        load_obj(path)
    # An OBJ file without statements is still the empty mesh.
    (tmp_path / "empty.obj").write_text("# nothing\ng group\n")
    assert load_mesh(tmp_path / "empty.obj").faces.shape == (0, 3)
