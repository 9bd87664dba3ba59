"""The ``nmr-jax`` command line, run in-process through ``nmr_jax.cli.main``."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import cli

TEAPOT = str(nr.data.teapot_path())
# One small image size for every render here, so that each mesh compiles once.
SIZE = ["--image-size", "16", "24"]


def render(*args: str) -> int:
    return cli.main(["render", *args, *SIZE, "--quiet"])


@pytest.mark.versions
def test_renders_a_multi_view_gif(tmp_path: Path) -> None:
    out = tmp_path / "turntable.gif"
    assert render(TEAPOT, "-o", str(out), "--views", "4", "--elevation", "20") == 0
    frames = iio.imread(out)
    assert frames.shape == (4, 16, 24, 3)
    covered = (frames > 0).any(-1).mean((1, 2))
    assert (covered > 0.05).all(), covered
    # Four azimuths a quarter turn apart: every frame differs from the next.
    assert (np.abs(np.diff(frames.astype(int), axis=0)).mean((1, 2, 3)) > 1).all()


def test_modes_agree_on_coverage(tmp_path: Path) -> None:
    images = {}
    for mode in ("rgb", "depth", "silhouette"):
        out = tmp_path / f"{mode}.png"
        assert render(TEAPOT, "-o", str(out), "--mode", mode, "--no-anti-aliasing") == 0
        images[mode] = iio.imread(out)
    mask = images["silhouette"].max(-1) == 255
    assert set(np.unique(images["silhouette"])) == {0, 255} and 10 < mask.sum() < 16 * 24
    np.testing.assert_array_equal(images["rgb"].max(-1) > 0, mask)
    depth = images["depth"][..., 0]
    assert depth.max() == 255 and (depth[~mask] == 0).all()
    assert depth[mask].min() < 128  # the far side of the teapot is dark


def test_colours_come_from_the_mtl(tmp_path: Path) -> None:
    # A square facing the camera, red by its material.
    (tmp_path / "square.mtl").write_text("newmtl red\nKd 1 0 0\n")
    (tmp_path / "square.obj").write_text(
        "mtllib square.mtl\nv -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nusemtl red\nf 1 2 3 4\n"
    )
    unlit = ["--ambient", "1", "--directional", "0"]
    args = [str(tmp_path / "square.obj"), "--elevation", "0", *unlit]
    assert render(*args, "-o", str(tmp_path / "red.png")) == 0
    assert render(*args, "-o", str(tmp_path / "white.png"), "--no-textures") == 0
    red, white = iio.imread(tmp_path / "red.png"), iio.imread(tmp_path / "white.png")
    centre = (8, 12)
    assert red[centre].tolist() == [255, 0, 0]
    assert white[centre].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "out.jpg"], "must end in .png or .gif"),
        (["-o", "out.png", "--views", "3"], "a PNG holds one view"),
        (["-o", "out.gif", "--views", "0"], "--views must be at least 1"),
        (["-o", "out.png", "--image-size", "0"], "--image-size"),
        (["-o", "out.png", "--background", "2", "0", "0"], "--background"),
        (["-o", "out.png", "--shading", "phong"], "invalid choice"),
        (["-o", "out.png", "--image-size", "40000"], "--image-size: image_size"),
        (["-o", "out.png", "--up", "x"], "invalid choice"),
    ],
)
@pytest.mark.versions
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["render", TEAPOT, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unreadable_mesh_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render(str(tmp_path / "missing.obj"), "-o", str(tmp_path / "x.png")) == 1
    assert "missing.obj" in capsys.readouterr().err
    (tmp_path / "bad.obj").write_text("v 0 0 0\nf 1 2 3\n")
    assert render(str(tmp_path / "bad.obj"), "-o", str(tmp_path / "x.png")) == 1
    assert "bad.obj:2" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["render", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "nmr-jax render teapot.obj -o turntable.gif" in text


@pytest.mark.versions
def test_console_script_is_registered() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts", name="nmr-jax")
    assert [s.value for s in scripts] == ["nmr_jax.cli:main"]


# Each of these wrote a blank or flat image and exited with status 0.
@pytest.mark.parametrize(
    "args, message",
    [
        (["--viewing-angle", "0"], r"--viewing-angle must be in \(0, 90\)"),
        (["--viewing-angle", "90"], r"--viewing-angle must be in \(0, 90\)"),
        (["--distance", "0"], "--distance must be positive"),
        (["--elevation", "90"], r"--elevation must be in \(-90, 90\)"),
        (["--distance", "nan"], "--distance must be finite"),
        (["--light-direction", "0", "0", "0"], "--light-direction must be finite and non-zero"),
        (["--ambient", "-1"], "--ambient and --directional must be >= 0"),
    ],
)
def test_cli_values_that_write_a_blank_or_flat_image_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["render", TEAPOT, "-o", "out.png", *args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_up_z_renders_a_z_up_mesh_upright(tmp_path: Path) -> None:
    # The teapot turned to z up (a proper rotation) and back with --up z: the same image.
    v, f = nr.data.teapot()
    z_up = np.asarray(v)[:, [0, 2, 1]] * [-1, 1, 1]  # the inverse of --up z's turn
    nr.save_obj(tmp_path / "z_up.obj", z_up, f)
    assert render(TEAPOT, "-o", str(tmp_path / "y.png"), "--no-textures") == 0
    assert render(str(tmp_path / "z_up.obj"), "-o", str(tmp_path / "z.png"), "--up", "z") == 0
    y, z = iio.imread(tmp_path / "y.png"), iio.imread(tmp_path / "z.png")
    assert np.abs(y.astype(int) - z).max() <= 2


def test_cli_handedness_left_mirrors_as_the_original(tmp_path: Path) -> None:
    assert render(TEAPOT, "-o", str(tmp_path / "l.png"), "--no-anti-aliasing",
                  "--handedness", "left") == 0  # fmt: skip
    assert render(TEAPOT, "-o", str(tmp_path / "r.png"), "--no-anti-aliasing") == 0
    left, right = iio.imread(tmp_path / "l.png"), iio.imread(tmp_path / "r.png")
    np.testing.assert_array_equal(left, right[:, ::-1])


@pytest.mark.versions
def test_cli_renders_a_uv_textured_obj_with_its_image(tmp_path: Path) -> None:
    # A square facing the camera, its map_Kd red above and blue below (unmirrored by the flip).
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :, 0] = image[4:, :, 2] = 255
    vertices = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    uvs = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], np.float32)
    nr.save_obj(tmp_path / "square.obj", vertices, faces, uvs=uvs, texture=image)
    out = tmp_path / "textured.png"
    unlit = ["--ambient", "1", "--directional", "0", "--elevation", "0", "--image-size", "32"]
    assert cli.main(["render", str(tmp_path / "square.obj"), "-o", str(out), *unlit, "-q"]) == 0
    rgb = iio.imread(out)
    assert rgb[10, 16].tolist() == [255, 0, 0] and rgb[21, 16].tolist() == [0, 0, 255]


def test_cli_uses_v_xyz_rgb_vertex_colors(tmp_path: Path) -> None:
    (tmp_path / "green.obj").write_text(
        "v -1 -1 0 0 1 0\nv 1 -1 0 0 1 0\nv 1 1 0 0 1 0\nv -1 1 0 0 1 0\nf 1 2 3 4\n"
    )
    out = tmp_path / "green.png"
    args = [str(tmp_path / "green.obj"), "--ambient", "1", "--directional", "0"]
    assert render(*args, "--elevation", "0", "-o", str(out)) == 0
    assert iio.imread(out)[8, 12].tolist() == [0, 255, 0]


@pytest.mark.parametrize(
    "mtl, missing",
    [
        (None, "material library"),
        ("newmtl b\n", "material 'a'"),
        ("newmtl a\nmap_Kd no.png\n", "no.png"),
    ],
)
def test_cli_missing_mtl_material_or_image_renders_white_with_a_warning(
    tmp_path: Path, mtl: str | None, missing: str
) -> None:
    if mtl is not None:
        (tmp_path / "m.mtl").write_text(mtl)
    (tmp_path / "m.obj").write_text(
        "mtllib m.mtl\nv -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nvt 0 0\nusemtl a\n"
        "f 1/1 2/1 3/1 4/1\n"
    )
    out = tmp_path / "white.png"
    args = [str(tmp_path / "m.obj"), "--ambient", "1", "--directional", "0", "--elevation", "0"]
    with pytest.warns(UserWarning) as record:
        assert render(*args, "-o", str(out)) == 0
    assert any(missing in str(w.message) and "white" in str(w.message) for w in record)
    assert iio.imread(out)[8, 12].tolist() == [255, 255, 255]


def test_cli_smooth_shading_and_normals_mode(tmp_path: Path) -> None:
    images = {}
    for name, extra in [
        ("flat", ["--shading", "flat"]),
        ("smooth", ["--shading", "smooth"]),
        ("normals", ["--mode", "normals", "--shading", "smooth"]),
        ("cubes", ["--texture-size", "2"]),
    ]:
        out = tmp_path / f"{name}.png"
        assert render(TEAPOT, "-o", str(out), "--no-anti-aliasing", *extra) == 0
        images[name] = iio.imread(out).astype(int)
    covered = images["flat"].max(-1) > 0
    for name in ("smooth", "normals", "cubes"):
        np.testing.assert_array_equal(images[name].max(-1) > 0, covered)
    # The teapot has no materials: per-pixel colours and colour cubes agree; smooth differs.
    assert np.abs(images["cubes"] - images["flat"]).max() <= 1
    assert np.abs(images["smooth"] - images["flat"]).max() > 10
    assert len(np.unique(images["normals"][covered].reshape(-1, 3), axis=0)) > 20


def test_renders_a_room_from_inside_without_holes(tmp_path: Path) -> None:
    # A closed box seen from inside: its faces behind the camera are clipped at the near plane,
    # so every pixel shows a wall (none the red background).
    corners = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    quads = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]
    lines = [f"v {x} {y} {z}" for x, y, z in corners] + [
        f"f {a} {b} {c} {d}" for a, b, c, d in quads
    ]
    (tmp_path / "room.obj").write_text("\n".join(lines) + "\n")
    out = tmp_path / "inside.png"
    view = ["--distance", "0.4", "--elevation", "10", "--azimuth", "30", "--viewing-angle", "45"]
    assert (
        render(str(tmp_path / "room.obj"), "-o", str(out), *view, "--background", "1", "0", "0")
        == 0
    )
    image = iio.imread(out)[..., :3].astype(int)
    background = (image[..., 0] == 255) & (image[..., 1] == 0) & (image[..., 2] == 0)
    assert not background.any(), f"{background.sum()} pixels show the background"


def test_cli_exits_non_zero_on_a_file_that_is_not_obj(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A PLY file rendered as a black PNG with exit status 0.
    (tmp_path / "mesh.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    out = tmp_path / "out.png"
    assert render(str(tmp_path / "mesh.ply"), "-o", str(out)) == 1
    assert "PLY files are not supported" in capsys.readouterr().err and not out.exists()


def test_cli_light_direction_is_normalised(tmp_path: Path) -> None:
    # An unnormalised direction scaled the directional light: 7 % of the pixels clipped white.
    for name, d in (("unit", ["0.6", "0.8", "0"]), ("long", ["3", "4", "0"])):
        args = ["--light-direction", *d, "--ambient", "0.3", "--directional", "0.7"]
        assert render(TEAPOT, "-o", str(tmp_path / f"{name}.png"), *args) == 0
    unit, long = iio.imread(tmp_path / "unit.png"), iio.imread(tmp_path / "long.png")
    np.testing.assert_array_equal(unit, long)
    assert unit.max() < 255


def test_cli_default_renders_unmirrored_as_a_pinhole_camera(tmp_path: Path) -> None:
    # An asymmetric textured square: each quarter of its image a different colour. The default
    # view is compared with a pinhole camera written here: eye (0, 0, -d) looking at the origin,
    # y up, the viewer's right = forward x up = world -x, half-angle 30 degrees.
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    image = np.zeros((8, 8, 3), np.float32)
    image[:4, :4], image[:4, 4:], image[4:, :4], image[4:, 4:] = colours  # rows: top first
    corners = np.array([[-0.8, -0.6, 0], [0.8, -0.6, 0], [0.8, 0.6, 0], [-0.8, 0.6, 0]])
    uv_corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    nr.save_obj(tmp_path / "quad.obj", corners, faces, uvs=uv_corners[faces], texture=image * 255)
    out = tmp_path / "quad.png"
    size, d = 64, 2.5
    args = ["--elevation", "0", "--distance", str(d), "--ambient", "1", "--directional", "0"]
    assert cli.main(["render", str(tmp_path / "quad.obj"), "-o", str(out), *args,
                     "--no-normalization", "--image-size", str(size), "-q"]) == 0  # fmt: skip
    rendered = iio.imread(out).astype(np.float32) / 255

    def pixel(p: np.ndarray) -> tuple[int, int]:
        eye, forward, up = np.array([0, 0, -d]), np.array([0, 0, 1.0]), np.array([0, 1.0, 0])
        right = np.cross(forward, up)
        rel = p - eye
        t = np.tan(np.radians(30))
        x, y = rel @ right / (rel @ forward * t), rel @ up / (rel @ forward * t)
        return int((1 - y) / 2 * size), int((x + 1) / 2 * size)  # row, column

    # Points at three quarters of the way to each corner: inside that corner's colour.
    for k, uv in enumerate(uv_corners):
        row, col = pixel(0.75 * corners[k])
        texel = image[int((1 - (0.25 + 0.5 * uv[1])) * 8), int((0.25 + 0.5 * uv[0]) * 8)]
        np.testing.assert_allclose(rendered[row, col], texel, atol=0.02, err_msg=str(k))
    # World +x is on the image's left, as in any viewer looking from -z.
    assert pixel(corners[1])[1] < size / 2


def test_cli_shades_smooth_by_default_when_the_file_has_normals(tmp_path: Path) -> None:
    v, f = nr.data.icosphere(1)
    normals = np.asarray(v)[np.asarray(f)]  # unit sphere: the normal is the position
    nr.save_obj(tmp_path / "vn.obj", v, f, normals=normals)
    nr.save_obj(tmp_path / "plain.obj", v, f)
    images = {}
    for name, mesh, extra in [
        ("default", "vn.obj", []),
        ("smooth", "vn.obj", ["--shading", "smooth"]),
        ("flat", "vn.obj", ["--shading", "flat"]),
        ("plain", "plain.obj", []),
    ]:
        out = tmp_path / f"{name}.png"
        assert render(str(tmp_path / mesh), "-o", str(out), *extra) == 0
        images[name] = iio.imread(out).astype(int)
    np.testing.assert_array_equal(images["default"], images["smooth"])
    np.testing.assert_array_equal(images["plain"], images["flat"])  # no vn: flat
    assert np.abs(images["default"] - images["flat"]).max() > 10


def test_cli_soft_rule_renders_soft_silhouettes_and_colours(tmp_path: Path) -> None:
    # A wide blur: the soft silhouette covers more than the hard one, and the soft rgb shows it.
    hard, soft = tmp_path / "hard.png", tmp_path / "soft.png"
    common = ("--image-size", "32", "--mode", "silhouette", "--no-anti-aliasing")
    assert render(TEAPOT, "-o", str(hard), *common) == 0
    assert render(TEAPOT, "-o", str(soft), *common, "--rule", "soft", "--sigma", "1e-3") == 0
    assert iio.imread(soft).astype(float).sum() > iio.imread(hard).astype(float).sum() > 0
    rgb = tmp_path / "rgb.png"
    assert render(TEAPOT, "-o", str(rgb), "--image-size", "32", "--rule", "soft") == 0
    assert iio.imread(rgb).max() > 0
    with pytest.raises(SystemExit):
        render(TEAPOT, "-o", str(rgb), "--rule", "soft", "--sigma", "0")
