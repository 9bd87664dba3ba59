"""The ``nmr-jax`` command: render an OBJ mesh to a PNG, or to an animated GIF of views around it.

nmr-jax render MESH.obj -o out.png|out.gif [options]    (nmr-jax render --help lists them)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

import nmr_jax as nr
from nmr_jax import _validate as check

__all__ = ["main"]

_EXAMPLES = """\
examples:
  nmr-jax render teapot.obj -o teapot.png
  nmr-jax render teapot.obj -o turntable.gif --views 36 --elevation 20
  nmr-jax render mesh.obj -o wide.png --image-size 240 320 --azimuth 45 --distance 3
  nmr-jax render mesh.obj -o depth.png --mode depth
  nmr-jax render mesh.obj -o mask.gif --mode silhouette --views 8 --no-anti-aliasing
  nmr-jax render mesh.obj -o lit.png --ambient 0.3 --directional 0.8 --light-direction 1 1 -1 \\
      --background 0.2 0.3 0.4
  nmr-jax render scan.obj -o front.png --up z
  nmr-jax render mesh.obj -o original.png --handedness left
  nmr-jax render asset.obj -o smooth.png --shading smooth
  nmr-jax render asset.obj -o normals.png --mode normals --shading smooth

The mesh is normalised into [-1, 1]^3 (as the original's load_obj) unless --no-normalization, and
coloured by the materials of its .mtl files (map_Kd images sampled per pixel through the UVs, Kd
colours, `v x y z r g b` vertex colours; white without them, with a warning for a missing .mtl,
material or image) unless --no-textures. The camera sits at --distance from the origin, --elevation degrees above
the horizontal plane and --azimuth degrees around the vertical axis, and looks at the origin;
--views N renders N views at azimuths evenly spaced over a full turn (a GIF; a progress bar is
shown when tqdm is installed). Depth images are grey levels, nearest white, over --background.
--up z turns a mesh modelled with z up (as Blender exports without its axis conversion) so that
z is up in the image and its front (-y) faces the camera at azimuth 0. Meshes are seen as in
any viewer (a right-handed camera); --handedness left uses the original renderer's left-handed
camera, which mirrors them, for its images. Shading is smooth when the file has normals (vn).
"""

_T = TypeVar("_T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmr-jax",
        description="The Neural 3D Mesh Renderer (Kato et al., CVPR 2018) in JAX.",
        epilog=_EXAMPLES + "\nrun 'nmr-jax render --help' for all the options.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "render",
        help="render an OBJ mesh to a PNG or an animated GIF",
        description="Render an OBJ mesh to a PNG (one view) or an animated GIF (any views).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mesh", type=Path, metavar="MESH.obj", help="Wavefront OBJ file")
    p.add_argument("-o", "--output", type=Path, required=True, help="out.png or out.gif")
    p.add_argument(
        "--mode", choices=("rgb", "depth", "silhouette", "normals"), default="rgb",
        help="normals: world normals as colours 0.5 (n + 1) (default: rgb)",
    )  # fmt: skip
    p.add_argument(
        "--shading", choices=("flat", "smooth"), default=None,
        help="flat: one normal per face, as the original; smooth: the file's vn or area-weighted "
        "vertex normals, interpolated (default: smooth if the file has vn, else flat)",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=int, nargs="+", default=[256], metavar="N",
        help="S, or H W for a non-square image (default: 256)",
    )  # fmt: skip
    p.add_argument(
        "--anti-aliasing", action=argparse.BooleanOptionalAction, default=True,
        help="render at twice the size and average 2x2 pixels (default: on)",
    )  # fmt: skip
    camera = p.add_argument_group("camera")
    camera.add_argument("--distance", type=float, default=2.732, help="default: 2.732")
    camera.add_argument(
        "--elevation", type=float, default=30.0, help="degrees, in (-90, 90) (default: 30)"
    )
    camera.add_argument("--azimuth", type=float, default=0.0, help="degrees (default: 0)")
    camera.add_argument("--views", type=int, default=1, help="views around the object (default: 1)")
    camera.add_argument(
        "--viewing-angle", type=float, default=30.0,
        help="half the vertical field of view, degrees, in (0, 90) (default: 30)",
    )  # fmt: skip
    camera.add_argument(
        "--up", choices=("y", "z"), default="y", help="the mesh's up axis (default: y)"
    )
    camera.add_argument(
        "--handedness", choices=("left", "right"), default="right",
        help="right: as any viewer shows the mesh; left: the original's camera (right-handed "
        "meshes appear mirrored) (default: right)",
    )  # fmt: skip
    light = p.add_argument_group("lighting and colours")
    light.add_argument("--ambient", type=float, default=0.5, help="intensity (default: 0.5)")
    light.add_argument("--directional", type=float, default=0.5, help="intensity (default: 0.5)")
    light.add_argument(
        "--light-direction", type=float, nargs=3, default=(0.0, 1.0, 0.0),
        metavar=("X", "Y", "Z"), help="towards the light, normalised (default: 0 1 0)",
    )  # fmt: skip
    light.add_argument(
        "--background", type=float, nargs=3, default=(0.0, 0.0, 0.0),
        metavar=("R", "G", "B"), help="in [0, 1] (default: 0 0 0)",
    )  # fmt: skip
    light.add_argument(
        "--texture-size", type=int, default=None,
        help="sample the materials into the original's per-face colour cubes of this many texels "
        "per edge (flat shading only) instead of per pixel through the UVs (default: per pixel)",
    )  # fmt: skip
    light.add_argument(
        "--textures", action=argparse.BooleanOptionalAction, default=True,
        help="colour the mesh from its .mtl materials (default: on)",
    )  # fmt: skip
    light.add_argument(
        "--normalization", action=argparse.BooleanOptionalAction, default=True,
        help="fit the mesh into [-1, 1]^3 (default: on)",
    )  # fmt: skip
    out = p.add_argument_group("output")
    out.add_argument("--fps", type=float, default=20.0, help="GIF frame rate (default: 20)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument errors argparse cannot see, reported as usage errors (exit status 2): values
    that would write a blank, flat or distorted image rather than fail."""
    for name in ("distance", "elevation", "azimuth", "viewing_angle", "ambient", "directional"):
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be finite, got {getattr(args, name)}")
    if args.distance <= 0:
        parser.error(f"--distance must be positive, got {args.distance}")
    if not -90 < args.elevation < 90:
        # At +-90 the view direction is parallel to the up vector: no camera frame.
        parser.error(f"--elevation must be in (-90, 90) degrees, got {args.elevation}")
    if not 0 < args.viewing_angle < 90:
        parser.error(f"--viewing-angle must be in (0, 90) degrees, got {args.viewing_angle}")
    if args.ambient < 0 or args.directional < 0:
        parser.error(
            f"--ambient and --directional must be >= 0, got {args.ambient}, {args.directional}"
        )
    if not all(map(math.isfinite, args.light_direction)) or not any(args.light_direction):
        parser.error(f"--light-direction must be finite and non-zero, got {args.light_direction}")
    suffix = args.output.suffix.lower()
    if suffix not in (".png", ".gif"):
        parser.error(f"--output must end in .png or .gif, got {args.output}")
    if args.views < 1:
        parser.error(f"--views must be at least 1, got {args.views}")
    if suffix == ".png" and args.views > 1:
        parser.error(f"a PNG holds one view; write a .gif for --views {args.views}")
    if len(args.image_size) > 2 or min(args.image_size) < 1:
        parser.error(f"--image-size takes S or H W, positive, got {args.image_size}")
    try:
        check.image_size(
            tuple(args.image_size * 2 if len(args.image_size) == 1 else args.image_size)
        )
    except ValueError as err:
        parser.error(f"--image-size: {err}")
    if args.texture_size is not None and args.texture_size < 1:
        parser.error(f"--texture-size must be at least 1, got {args.texture_size}")
    if args.texture_size is not None and (args.shading == "smooth" or args.mode == "normals"):
        parser.error(
            "--texture-size renders flat colour cubes: not with --shading smooth or --mode normals"
        )
    if args.fps <= 0:
        parser.error(f"--fps must be positive, got {args.fps}")
    if not all(0.0 <= c <= 1.0 for c in args.background):
        parser.error(f"--background takes R G B in [0, 1], got {args.background}")


def _progress(items: Sequence[_T], enabled: bool) -> Iterable[_T]:
    """``items``, behind a tqdm progress bar on stderr when asked for and tqdm is installed."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, unit="view", file=sys.stderr)


@jax.jit
def _render_view(
    renderer: nr.Renderer,
    vertices: jax.Array,
    faces: jax.Array,
    textures: jax.Array,
    eye: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return renderer.render(vertices, faces, textures, eye=eye)


@partial(jax.jit, static_argnames=("shading", "output"))
def _shade_view(
    renderer: nr.Renderer, mesh: nr.Mesh, eye: jax.Array, shading: str, output: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    shader, args = nr.mesh_shader(mesh, renderer, shading, output)  # type: ignore[arg-type]
    return renderer.render(mesh.vertices, mesh.faces, shader=shader, shader_args=args, eye=eye)


def _load(args: argparse.Namespace) -> tuple[nr.Mesh | None, tuple[jax.Array, ...]]:
    """The mesh for the shader path, or (None, cube path's vertices, faces, textures)."""
    if args.texture_size is None:
        # Missing materials warn (on stderr) and render white.
        mesh = nr.load_mesh(args.mesh, args.normalization, "warn", materials=args.textures)
        if not args.textures:
            mesh = dataclasses.replace(mesh, vertex_colors=None)  # white
        return mesh, (mesh.vertices, mesh.faces)
    if args.textures:
        return None, nr.load_obj(
            args.mesh, args.normalization, args.texture_size, load_texture=True
        )
    vertices, faces = nr.load_obj(args.mesh, args.normalization)
    return None, (vertices, faces, jnp.ones((faces.shape[0], 1, 1, 1, 3), jnp.float32))  # white


def _to_images(
    mode: str,
    rgb: np.ndarray,
    depth: np.ndarray,
    alpha: np.ndarray,
    far: float,
    background: Sequence[float],
) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` images of ``N`` views in the chosen mode."""
    if mode in ("rgb", "normals"):
        image = rgb
    else:
        if mode == "depth":
            # With anti-aliasing a partly covered pixel averages the mesh's depth with `far`:
            # undo that to shade its covered part, and blend with the background by coverage.
            covered = alpha > 0
            mesh_depth = np.where(
                covered, (depth - (1 - alpha) * far) / np.where(covered, alpha, 1), 0
            )
            lo, hi = (
                (mesh_depth[covered].min(), mesh_depth[covered].max()) if covered.any() else (0, 0)
            )
            # A mesh seen at one depth only (a face square to the view) has hi == lo: all white.
            shade = 1 - np.clip((mesh_depth - lo) / max(hi - lo, 1e-12), 0, 1)
        else:
            shade = np.ones_like(alpha)
        a = alpha[..., None]
        image = a * shade[..., None] + (1 - a) * np.asarray(background, np.float32)
    # Clipped: anti-aliased rgb can overshoot [0, 1] by rounding.
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _render(args: argparse.Namespace) -> None:
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    mesh, (vertices, faces, *textures) = _load(args)
    if args.up == "z":
        # A proper rotation (no mirror) taking z to y and the front (-y) towards -z, the side
        # that the camera at azimuth 0 sees.
        def rotate(x: jax.Array) -> jax.Array:
            return x[..., [0, 2, 1]] * jnp.array([-1.0, 1.0, 1.0], jnp.float32)

        vertices = rotate(vertices)
        if mesh is not None:
            normals = None if mesh.normals is None else rotate(mesh.normals)
            mesh = dataclasses.replace(mesh, vertices=vertices, normals=normals)
    renderer = nr.Renderer(
        handedness=args.handedness,
        image_size=size,
        anti_aliasing=args.anti_aliasing,
        background_color=tuple(args.background),
        viewing_angle=args.viewing_angle,
        light_intensity_ambient=args.ambient,
        light_intensity_directional=args.directional,
        # Normalised: an unnormalised direction scales the directional light, clipping colours.
        light_direction=tuple(
            np.asarray(args.light_direction) / np.linalg.norm(args.light_direction)
        ),
    )
    shading = args.shading or (
        "smooth" if mesh is not None and mesh.normals is not None else "flat"
    )
    azimuths = args.azimuth + 360.0 * np.arange(args.views) / args.views
    eyes = np.asarray(nr.get_points_from_angles(args.distance, args.elevation, azimuths))
    output = "normals" if args.mode == "normals" else "rgb"
    views = [
        tuple(
            np.asarray(x)
            for x in (
                _render_view(renderer, vertices, faces, textures[0], eye)
                if mesh is None
                else _shade_view(renderer, mesh, eye, shading, output)
            )
        )
        for eye in _progress(list(eyes), args.views > 1 and not args.quiet)
    ]
    rgb, depth, alpha = (np.stack(x) for x in zip(*views, strict=True))
    frames = _to_images(args.mode, rgb, depth, alpha, renderer.far, args.background)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.output.suffix.lower() == ".png":
        iio.imwrite(args.output, frames[0])
    else:
        iio.imwrite(args.output, frames, duration=1000 / args.fps, loop=0)  # ms per frame
    if not args.quiet:
        h, w = frames.shape[1:3]
        print(f"wrote {args.output} ({args.views} view(s), {h}x{w}, {args.mode})")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``nmr-jax`` with ``argv`` (default: the command line); returns the exit status.

    Usage errors exit with status 2 (argparse's convention); any other error (a mesh that
    cannot be read, a format that is not OBJ) returns 1 with the reason on stderr.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        _render(args)
    except Exception as err:  # any failure must reach the shell as a non-zero status
        print(f"nmr-jax: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
