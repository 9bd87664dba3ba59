"""Wavefront OBJ meshes (with MTL materials) in and out, as the original neural_renderer reads them.

Conventions: vertices are float32 [V, 3]; faces are int32 [F, 3], 0-based indices into the
vertices; textures are float32 [F, T, T, T, 3] RGB in [0, 1], texel (i, j, k) of a face holding
its colour at the barycentric point proportional to (i, j, k) (see ``load_obj``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, overload

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Mesh", "load_mesh", "load_obj", "save_obj"]

# What a missing material file tells the user: materials are optional.
_HINT = (
    "materials are optional: load_mesh(..., missing='warn') renders what is missing white, "
    "as nmr-jax render does (with a warning); load_obj loads geometry alone without load_texture"
)


@dataclasses.dataclass
class _Material:
    # Kd defaults to white so that a material without colour information does not darken.
    kd: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3, np.float32))
    texture: Path | None = None  # the map_Kd image
    where: str = ""  # file:line of the map_Kd statement


@dataclasses.dataclass
class _Obj:
    vertices: np.ndarray  # float32 [V, 3]
    faces: np.ndarray  # int32 [F, 3]
    uvs: np.ndarray  # float32 [VT, 2]
    face_uvs: np.ndarray  # int32 [F, 3] indices into uvs, -1 where the face has none
    normals: np.ndarray  # float32 [VN, 3]
    face_normals: np.ndarray  # int32 [F, 3] indices into normals, -1 where the face has none
    colors: np.ndarray | None  # float32 [V, 3] of `v x y z r g b` (white for other vertices)
    face_materials: np.ndarray  # int32 [F] indices into materials, -1 for no material
    materials: dict[str, int]  # used material names (in order of first use): first usemtl line
    mtllibs: list[tuple[Path, int]]  # material libraries with the line naming them


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace separated fields) of the non-blank lines, comments removed.

    Streams the file line by line: memory grows with the mesh, not with the file's text.
    """
    # errors="replace": stray non-UTF-8 bytes (typically in comments) must not stop the load.
    # utf-8-sig drops a byte order mark, which would otherwise hide the first statement.
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split("#", 1)[0].split()
            if fields:
                yield lineno, fields


_FLT_MAX = float(np.finfo(np.float32).max)


def _floats(fields: list[str], minimum: int, where: str) -> list[float]:
    """The numbers of a statement (fields[0] is its keyword), at least ``minimum`` of them, each
    finite in float32."""
    if len(fields) - 1 < minimum:
        raise ValueError(f"{where}: '{fields[0]}' needs at least {minimum} numbers")
    try:
        numbers = [float(x) for x in fields[1:]]
    except ValueError:
        raise ValueError(f"{where}: '{fields[0]}' has a non-numeric value") from None
    # "nan" and "inf" parse as floats, and 1e39 becomes inf in float32.
    if not all(math.isfinite(x) and abs(x) <= _FLT_MAX for x in numbers):
        raise ValueError(f"{where}: '{fields[0]}' has a value that is not finite in float32")
    return numbers


def _index(token: str, count: int, what: str, where: str) -> int:
    """0-based index of a 1-based (or negative, relative) OBJ reference to ``count`` items."""
    try:
        index = int(token)
    except ValueError:
        raise ValueError(f"{where}: {what} index {token!r} is not an integer") from None
    # Positive indices count from 1; negative ones back from the last item read so far (-1).
    resolved = index - 1 if index > 0 else count + index
    if index == 0 or not 0 <= resolved < count:
        raise ValueError(f"{where}: {what} index {index} is out of range ({count} {what}s so far)")
    return resolved


# Other mesh formats by file name suffix, named in the error for them.
_OTHER_FORMATS = {
    ".ply": "PLY",
    ".stl": "STL",
    ".off": "OFF",
    ".gltf": "glTF",
    ".glb": "glTF (binary)",
    ".fbx": "FBX",
    ".dae": "COLLADA",
    ".3ds": "3DS",
    ".blend": "Blender",
    ".usd": "USD",
    ".usda": "USD",
    ".usdc": "USD",
    ".usdz": "USD",
    ".x3d": "X3D",
    ".wrl": "VRML",
    ".abc": "Alembic",
}
# Statements of the OBJ format (those read and those skipped): a file with none is not OBJ.
_OBJ_KEYWORDS = frozenset(
    "v vt vn vp f l p g o s mg usemtl mtllib usemap maplib cstype deg bmat step curv curv2 surf "
    "parm trim hole scrv sp end con lod bevel c_interp d_interp shadow_obj trace_obj ctech stech "
    "call csh".split()
)
_SUPPORTED = "nmr_jax reads Wavefront OBJ files (.obj, with .mtl materials)"


def _not_obj(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path}: {what}; {_SUPPORTED}: convert the mesh to OBJ first (e.g. trimesh, Blender)"
    )


def _parse_obj(path: Path, with_materials: bool, with_extras: bool = False) -> _Obj:
    """The statements of an OBJ file; ``with_extras`` also reads normals and vertex colours."""
    suffix = path.suffix.lower()
    if suffix in _OTHER_FORMATS:
        raise _not_obj(path, f"{_OTHER_FORMATS[suffix]} files are not supported")
    foreign: tuple[int, str] | None = None  # the first statement that is not OBJ
    # Flat typed arrays: 4 bytes a number, where lists of Python floats take about 30.
    vertices = array("f")
    colors = array("f")
    uvs = array("f")
    normals = array("f")
    faces = array("i")
    face_uvs = array("i")
    face_normals = array("i")
    face_materials = array("i")
    materials: dict[str, int] = {}
    mtllibs: list[tuple[Path, int]] = []
    material = -1
    has_colors = False
    for lineno, fields in _lines(path):
        where = f"{path}:{lineno}"
        keyword = fields[0]
        if foreign is None and keyword not in _OBJ_KEYWORDS:
            foreign = (lineno, keyword)
        if keyword == "v":
            numbers = _floats(fields, 3, where)
            vertices.extend(numbers[:3])
            if with_extras:
                # `v x y z r g b`: a colour per vertex (`v x y z w` has 4 numbers, no colour).
                colored = len(numbers) in (6, 7)
                has_colors |= colored
                colors.extend(numbers[3:6] if colored else (1.0, 1.0, 1.0))
        elif keyword == "vt" and with_materials:
            uv = _floats(fields, 1, where)
            uvs.extend([uv[0], uv[1] if len(uv) > 1 else 0.0])  # v is optional and defaults to 0
        elif keyword == "vn" and with_extras:
            normals.extend(_floats(fields, 3, where)[:3])
        elif keyword == "f":
            if len(fields) < 4:
                raise ValueError(f"{where}: a face needs at least 3 vertices")
            corners = [token.split("/") for token in fields[1:]]
            if any(len(parts) > 3 for parts in corners):
                raise ValueError(f"{where}: a face vertex has more than 3 '/'-separated parts")
            v = [_index(parts[0], len(vertices) // 3, "vertex", where) for parts in corners]
            vt = vn = [-1] * len(v)
            if with_materials and all(len(parts) > 1 and parts[1] for parts in corners):
                n_uvs = len(uvs) // 2
                vt = [_index(parts[1], n_uvs, "texture coordinate", where) for parts in corners]
            if with_extras and all(len(parts) > 2 and parts[2] for parts in corners):
                n_normals = len(normals) // 3
                vn = [_index(parts[2], n_normals, "normal", where) for parts in corners]
            # Polygons become a fan of triangles around their first vertex.
            for i in range(1, len(v) - 1):
                faces.extend((v[0], v[i], v[i + 1]))
                face_uvs.extend((vt[0], vt[i], vt[i + 1]))
                face_normals.extend((vn[0], vn[i], vn[i + 1]))
                face_materials.append(material)
        elif keyword == "usemtl" and with_materials:
            name = _name(fields, where)
            materials.setdefault(name, lineno)
            material = list(materials).index(name)
        elif keyword == "mtllib" and with_materials:
            if len(fields) < 2:
                raise ValueError(f"{where}: 'mtllib' needs a file name")
            mtllibs += [(_resolve(path.parent, name), lineno) for name in _file_names(fields)]
    # A file with neither vertices nor faces is the empty mesh (save_obj writes one), unless it
    # holds statements that are not OBJ (another format); vertices without faces are more
    # likely a point cloud than a mesh.
    if not vertices and foreign is not None:
        line, keyword = foreign
        raise _not_obj(path, f"not an OBJ file (line {line} starts with {keyword[:20]!r})")
    if not faces and vertices:
        raise ValueError(f"{path}: no faces")
    return _Obj(
        vertices=np.frombuffer(vertices, np.float32).reshape(-1, 3),
        faces=np.frombuffer(faces, np.int32).reshape(-1, 3),
        uvs=np.frombuffer(uvs, np.float32).reshape(-1, 2),
        face_uvs=np.frombuffer(face_uvs, np.int32).reshape(-1, 3),
        normals=np.frombuffer(normals, np.float32).reshape(-1, 3),
        face_normals=np.frombuffer(face_normals, np.int32).reshape(-1, 3),
        colors=np.frombuffer(colors, np.float32).reshape(-1, 3) if has_colors else None,
        face_materials=np.frombuffer(face_materials, np.int32),
        materials=materials,
        mtllibs=mtllibs,
    )


def _unquote(name: str) -> str:
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'" else name


def _name(fields: list[str], where: str) -> str:
    """The one name after a keyword (quotes removed; a quoted name may hold spaces)."""
    if len(fields) < 2 or (len(fields) > 2 and fields[1][:1] not in ("'", '"')):
        raise ValueError(f"{where}: '{fields[0]}' needs exactly one material name")
    return _unquote(" ".join(fields[1:]))


def _file_names(fields: list[str]) -> list[str]:
    """The file names after a keyword: quoted ones may hold spaces."""
    rest = " ".join(fields[1:])
    return [_unquote(token) for token in re.findall(r'"[^"]*"|\'[^\']*\'|\S+', rest)]


def _resolve(directory: Path, name: str) -> Path:
    """A file named in an OBJ or MTL file, relative to its directory.

    Windows paths (backslashes, drive letters) are common in exported files: the name is tried
    with backslashes as separators, then its last component alone beside the file.
    """
    path = directory / name.replace("\\", "/")
    if path.is_file():
        return path
    beside = directory / re.split(r"[\\/]", name)[-1]
    return beside if beside.is_file() else path


# Options of map_Kd and the number of values each takes (-o, -s and -t take 1 to 3).
_MAP_OPTIONS = {
    "-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1,
    "-mm": 2, "-o": 3, "-s": 3, "-t": 3, "-texres": 1, "-type": 1,
}  # fmt: skip


def _map_file(fields: list[str], where: str) -> str:
    """The image name of a ``map_Kd`` statement; its options are skipped with a warning."""
    rest = fields[1:]
    while rest and rest[0].lower() in _MAP_OPTIONS:
        option, rest = rest[0], rest[1:]
        count = _MAP_OPTIONS[option.lower()]
        taken = 0
        while (
            taken < count
            and len(rest) > 1
            and (option.lower() not in ("-o", "-s", "-t") or _is_number(rest[0]))
        ):
            rest, taken = rest[1:], taken + 1
        warnings.warn(f"{where}: map_Kd option {option} is not applied", stacklevel=5)
    if not rest:
        raise ValueError(f"{where}: 'map_Kd' needs a file name")
    return _unquote(" ".join(rest))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _parse_mtl(path: Path, materials: dict[str, _Material]) -> None:
    """Add the materials of an MTL file (their Kd and map_Kd) to ``materials``; a missing image
    is recorded as its path and reported by the caller."""
    current: _Material | None = None
    for lineno, fields in _lines(path):
        where = f"{path}:{lineno}"
        keyword = fields[0]
        if keyword == "newmtl":
            current = materials[_name(fields, where)] = _Material()
        elif keyword in ("Kd", "map_Kd"):
            if current is None:
                raise ValueError(f"{where}: '{keyword}' before any 'newmtl'")
            if keyword == "Kd":
                current.kd = np.array(_floats(fields, 3, where)[:3], np.float32)
            else:
                current.texture = _resolve(path.parent, _map_file(fields, where))
                current.where = where


def _library(obj: _Obj, filename: Path, missing: str) -> dict[str, _Material]:
    """The materials of the OBJ's libraries; what is missing raises, or warns and is dropped."""

    def report(message: str, error: type[Exception]) -> None:
        if missing == "raise":
            raise error(f"{message}; {_HINT}")
        warnings.warn(f"{message}: rendered white", stacklevel=4)

    library: dict[str, _Material] = {}
    for mtl, lineno in obj.mtllibs:
        if mtl.is_file():
            _parse_mtl(mtl, library)
        else:
            report(f"{filename}:{lineno}: material library {mtl} not found", FileNotFoundError)
    for name, lineno in obj.materials.items():
        if name not in library:
            report(f"{filename}:{lineno}: material {name!r} is not defined", ValueError)
            library[name] = _Material()
        material = library[name]
        if material.texture is not None and not material.texture.is_file():
            report(
                f"{material.where}: texture image {material.texture} not found", FileNotFoundError
            )
            material.texture = None
    return library


def _read_image(path: Path) -> np.ndarray:
    """An image as float32 RGB [H, W, 3] in [0, 1]."""
    try:
        image = iio.imread(path)
    except Exception as error:  # imageio raises many kinds for a corrupt or unknown file
        raise ValueError(f"texture image {path} cannot be read: {error}") from error
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"texture image {path} is not a 2D image (shape {image.shape})")
    if np.issubdtype(image.dtype, np.integer):
        image = image / np.iinfo(image.dtype).max
    if image.ndim == 2:
        image = image[:, :, None]
    # Alpha is dropped; greyscale repeats its one channel.
    channels = image[:, :, :3] if image.shape[2] >= 3 else image[:, :, :1]
    return np.broadcast_to(channels, (*image.shape[:2], 3)).astype(np.float32)


def _sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Colours [..., 3] of ``image`` [H, W, 3] at texture coordinates ``uv`` [..., 2].

    u runs along the columns; v runs up the image (v = 0 is the bottom row). Coordinates
    outside [0, 1] wrap around (repeat), the original's default texture wrapping.
    """
    uv = np.where((uv < 0) | (uv > 1), uv - np.floor(uv), uv)
    height, width = image.shape[:2]
    x = uv[..., 0] * (width - 1)
    y = (1 - uv[..., 1]) * (height - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _texel_weights(texture_size: int) -> np.ndarray:
    """Barycentric weights [T^3, 3] of the texels, texel (i, j, k) at (i, j, k) / (T - 1)."""
    grid = np.indices((texture_size,) * 3).reshape(3, -1).T.astype(np.float64)
    weights = grid / max(texture_size - 1, 1)
    # Texel (0, 0, 0) (the only one when T == 1) has zero weights, which the original divides
    # 0 by 0; use the face centre instead.
    weights[0] = 1 / 3
    return weights / weights.sum(axis=1, keepdims=True)


def _textures(obj: _Obj, texture_size: int, filename: Path) -> np.ndarray:
    library = _library(obj, filename, "raise")
    t = texture_size
    # Faces without a material are white.
    textures = np.ones((len(obj.faces), t, t, t, 3), np.float32)
    weights = _texel_weights(texture_size)
    for material_id, name in enumerate(obj.materials):
        material = library[name]
        faces = obj.face_materials == material_id
        textures[faces] = material.kd
        if material.texture is not None:
            # Faces with texture coordinates sample the image; others keep the Kd colour.
            faces &= (obj.face_uvs >= 0).all(axis=1)
            uv = np.einsum("tc,fcd->ftd", weights, obj.uvs[obj.face_uvs[faces]])
            colours = _sample_bilinear(_read_image(material.texture), uv)
            textures[faces] = colours.reshape(-1, t, t, t, 3)
    return textures


@overload
def load_obj(
    filename: str | os.PathLike[str],
    normalization: bool = ...,
    texture_size: int = ...,
    load_texture: Literal[False] = ...,
) -> tuple[jax.Array, jax.Array]: ...


@overload
def load_obj(
    filename: str | os.PathLike[str],
    normalization: bool = ...,
    texture_size: int = ...,
    *,
    load_texture: Literal[True],
) -> tuple[jax.Array, jax.Array, jax.Array]: ...


@overload
def load_obj(
    filename: str | os.PathLike[str],
    normalization: bool = ...,
    texture_size: int = ...,
    load_texture: bool = ...,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]: ...


def load_obj(
    filename: str | os.PathLike[str],
    normalization: bool = True,
    texture_size: int = 4,
    load_texture: bool = False,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
    """Load a triangle mesh (and optionally its per-face textures) from a Wavefront OBJ file.

    Reads ``v`` (vertex) and ``f`` (face) statements; face corners may be written ``i``,
    ``i/j``, ``i/j/k`` or ``i//k`` with 1-based indices, negative ones counting back from the
    last vertex read so far (-1 is the last). Polygons are split into a fan of triangles
    ``(v0, vi, vi+1)``. Other statements (normals, groups, smoothing, comments) are ignored.

    Args:
        filename: the ``.obj`` file.
        normalization: if true, fit the mesh into the cube [-1, 1]^3 as the original does:
            ``v -= v.min(0); v /= abs(v).max(); v *= 2; v -= v.max(0) / 2`` (the longest side
            spans [-1, 1], the others are centred; a mesh whose vertices all coincide lands on
            the origin).
        texture_size: T, the texels per edge of each face's texture cube.
        load_texture: if true, also build per-face textures from the materials of the
            ``mtllib`` files: ``usemtl`` selects a material; faces of a material with a
            ``map_Kd`` image and texture coordinates (``vt``) sample that image bilinearly
            (v = 0 is the image's bottom row; coordinates outside [0, 1] repeat), at the
            barycentric point ``w / sum(w)``, ``w = (i, j, k) / (T - 1)``, for texel
            (i, j, k) (the face centre for texel (0, 0, 0)); other faces of a material take its
            ``Kd`` colour (white if it has none); faces without a material are white.

    Returns:
        ``(vertices, faces)``, or ``(vertices, faces, textures)`` with ``load_texture``:
        vertices float32 [V, 3], faces int32 [F, 3] (0-based), textures float32
        [F, T, T, T, 3] with values in [0, 1].

    Raises:
        FileNotFoundError: the OBJ file, a material library or a texture image is missing.
        ValueError: a malformed statement (wrong number of fields, a non-numeric value, a value
            that is NaN, infinite or beyond float32, an index of 0 or out of range, an undefined
            material), reported as ``"{file}:{line}: ..."``; a file without faces; a texture
            image that cannot be read.
        TypeError: ``texture_size`` is not an int.

    The file is read as UTF-8 (a byte order mark is skipped; bytes that are not UTF-8 become
    U+FFFD, so they only matter inside a number or a name) and streamed line by line.
    """
    path = Path(filename)
    if not isinstance(texture_size, int | np.integer) or isinstance(texture_size, bool):
        raise TypeError(f"texture_size must be an int, got {texture_size!r}")
    if texture_size < 1:
        raise ValueError(f"texture_size must be at least 1, got {texture_size}")
    obj = _parse_obj(path, with_materials=load_texture)
    vertices = _normalized(obj.vertices) if normalization else obj.vertices
    if not load_texture:
        return jnp.asarray(vertices), jnp.asarray(obj.faces)
    textures = _textures(obj, texture_size, path)
    return jnp.asarray(vertices), jnp.asarray(obj.faces), jnp.asarray(textures)


def _normalized(vertices: np.ndarray) -> np.ndarray:
    """The original's fit into [-1, 1]^3 (in place; nothing to do for an empty mesh)."""
    if not len(vertices):
        return vertices
    vertices -= vertices.min(axis=0)
    extent = np.abs(vertices).max()
    if extent > 0:  # all vertices in one point: nothing to scale (0 / 0 otherwise)
        vertices /= extent
    vertices *= 2
    vertices -= vertices.max(axis=0) / 2
    return vertices


@dataclasses.dataclass(frozen=True)
class Mesh:
    """A mesh as ``load_mesh`` reads it: geometry, per-face-corner UVs and normals, materials.

    A JAX pytree (``material_names`` is static), so a Mesh passes through ``jit`` and serves
    as a shader argument.
    """

    vertices: jax.Array  # float32 [V, 3]
    faces: jax.Array  # int32 [F, 3], 0-based; polygons fanned into triangles (v0, vi, vi+1)
    uvs: jax.Array | None  # float32 [F, 3, 2] per face corner (u right, v up); None without vt
    has_uv: jax.Array  # bool [F]: the face's corners have texture coordinates
    normals: jax.Array | None  # float32 [F, 3, 3] unit, per face corner; None without vn
    vertex_colors: jax.Array | None  # float32 [V, 3] from `v x y z r g b`; None without
    face_materials: jax.Array  # int32 [F]: index into the materials, -1 for none
    kd: jax.Array  # float32 [M, 3]: each material's Kd colour (white without Kd)
    images: tuple[jax.Array | None, ...]  # each material's map_Kd, float32 [Ht, Wt, 3], or None
    material_names: tuple[str, ...] = dataclasses.field(default=(), metadata={"static": True})


jax.tree_util.register_dataclass(
    Mesh,
    data_fields=[f.name for f in dataclasses.fields(Mesh) if not f.metadata.get("static")],
    meta_fields=[f.name for f in dataclasses.fields(Mesh) if f.metadata.get("static")],
)


def load_mesh(
    filename: str | os.PathLike[str],
    normalization: bool = True,
    missing: Literal["raise", "warn"] = "raise",
    materials: bool = True,
) -> Mesh:
    """Load an OBJ mesh with its texture coordinates, normals, vertex colours and materials.

    Reads what ``load_obj`` reads, and ``vt``, ``vn`` (faces written ``v/vt/vn``, ``v//vn`` or
    ``v/vt``; a face whose corners do not all have one has none), ``v x y z r g b`` vertex
    colours, ``usemtl`` and the ``mtllib`` files' ``newmtl``, ``Kd`` and ``map_Kd`` (images read
    as float32 RGB in [0, 1], row 0 at the top; map_Kd options such as ``-s``, ``-o`` or ``-bm``
    are skipped with a warning). File names may be quoted (and then hold spaces) and may be
    Windows paths: backslashes are separators, and a name not found as written is looked for
    beside the file that names it.

    Args:
        filename: the ``.obj`` file.
        normalization: fit the vertices into [-1, 1]^3 as ``load_obj`` does.
        missing: what a missing material library, undefined material or missing image does:
            'raise' (FileNotFoundError or ValueError naming it) or 'warn' (a warning, and the
            faces concerned are white, or keep their Kd colour without their image).
        materials: read the materials; without, every face is white (material -1, no images).

    Returns:
        A ``Mesh``; ``nmr_jax.mesh_colors`` shades it with its materials.

    Raises:
        FileNotFoundError, ValueError: as ``load_obj``, with a hint for missing materials.
    """
    if missing not in ("raise", "warn"):
        raise ValueError(f"missing must be 'raise' or 'warn', got {missing!r}")
    path = Path(filename)
    obj = _parse_obj(path, with_materials=True, with_extras=True)
    if not materials:
        obj = dataclasses.replace(obj, materials={}, mtllibs=[])
        obj.face_materials = np.full_like(obj.face_materials, -1)
    vertices = _normalized(obj.vertices) if normalization else obj.vertices
    library = _library(obj, path, missing)
    used = [library[name] for name in obj.materials]
    has_uv = np.all(obj.face_uvs >= 0, axis=1, keepdims=True)[:, :, None]  # [F, 1, 1]
    uvs = None
    if len(obj.uvs):
        uvs = np.where(has_uv, obj.uvs[np.maximum(obj.face_uvs, 0)], 0.0)
    normals = None
    if len(obj.normals):
        normals = _corner_normals(obj, vertices)
    kd = np.array([m.kd for m in used], np.float32).reshape(-1, 3)
    images = tuple(None if m.texture is None else jnp.asarray(_read_image(m.texture)) for m in used)
    return Mesh(
        vertices=jnp.asarray(vertices),
        faces=jnp.asarray(obj.faces),
        uvs=None if uvs is None else jnp.asarray(uvs, jnp.float32),
        has_uv=jnp.asarray(has_uv[:, 0, 0]),
        normals=normals,
        vertex_colors=None if obj.colors is None else jnp.asarray(obj.colors),
        face_materials=jnp.asarray(obj.face_materials),
        material_names=tuple(obj.materials),
        kd=jnp.asarray(kd),
        images=images,
    )


def _corner_normals(obj: _Obj, vertices: np.ndarray) -> jax.Array:
    """[F, 3, 3] unit normals from vn; faces without vn get area-weighted vertex normals."""
    has = np.all(obj.face_normals >= 0, axis=1, keepdims=True)[:, :, None]  # [F, 1, 1]
    corners = obj.normals[np.maximum(obj.face_normals, 0)]
    if not np.all(has):
        fv = vertices[obj.faces]
        # Outward for counter-clockwise faces, as vn conventionally is.
        n = np.cross(fv[:, 1] - fv[:, 0], fv[:, 2] - fv[:, 0])
        summed = np.zeros_like(vertices)
        np.add.at(summed, obj.faces.reshape(-1), np.repeat(n, 3, axis=0))
        corners = np.where(has, corners, summed[obj.faces])
    length = np.linalg.norm(corners, axis=-1, keepdims=True)
    return jnp.asarray(corners / np.where(length > 0, length, 1), jnp.float32)


def save_obj(
    filename: str | os.PathLike[str],
    vertices: jax.typing.ArrayLike,
    faces: jax.typing.ArrayLike,
    *,
    uvs: jax.typing.ArrayLike | None = None,
    normals: jax.typing.ArrayLike | None = None,
    vertex_colors: jax.typing.ArrayLike | None = None,
    texture: jax.typing.ArrayLike | None = None,
) -> None:
    """Write a triangle mesh as a Wavefront OBJ file (``v %.6f %.6f %.6f``, ``f i j k``, 1-based).

    Args:
        filename: the ``.obj`` file to write (overwritten).
        vertices: real [V, 3] vertex positions.
        faces: integer [F, 3] 0-based vertex indices.
        uvs: optional real [F, 3, 2] texture coordinates per face corner (``vt``; ``load_mesh``
            conventions: u right, v up).
        normals: optional real [F, 3, 3] normals per face corner (``vn``).
        vertex_colors: optional real [V, 3] RGB written as ``v x y z r g b``.
        texture: optional [Ht, Wt, 3] image (floats in [0, 1] or uint8), written as
            ``<name>.png`` beside the file with ``<name>.mtl`` naming it as ``map_Kd`` of the
            one material the faces use.

    An empty mesh (V = F = 0) writes an empty file, which loads as the empty mesh.

    Raises:
        ValueError: an argument has the wrong shape, or a face index is out of range.
        TypeError: ``vertices`` is not real-valued or ``faces`` is not integer.
    """
    vertices = _real("vertices", vertices, (-1, 3))
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise TypeError(f"faces must have an integer dtype, got {faces.dtype}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"faces must be 0-based indices into the {len(vertices)} vertices, "
            f"got values in [{faces.min()}, {faces.max()}]"
        )
    n = len(faces)
    corners = [faces.astype(np.int64) + 1]  # [F, 3] per OBJ index kind, 1-based
    if vertex_colors is not None:
        vertices = np.concatenate(
            [vertices, _real("vertex_colors", vertex_colors, (len(vertices), 3))], 1
        )
    tables = []
    for name, value, width in (("uvs", uvs, 2), ("normals", normals, 3)):
        if value is not None:
            table, index = np.unique(
                _real(name, value, (n, 3, width)).reshape(-1, width), axis=0, return_inverse=True
            )
            tables.append((("vt", "vn")[width - 2], table))
            corners.append(index.reshape(n, 3) + 1)
    path = Path(filename)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        if texture is not None:
            image = np.asarray(texture)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"texture must have shape [Ht, Wt, 3], got {image.shape}")
            if image.dtype != np.uint8:
                image = np.round(np.clip(_real("texture", image, image.shape), 0, 1) * 255)
            iio.imwrite(path.with_suffix(".png"), image.astype(np.uint8))
            path.with_suffix(".mtl").write_text(
                f"newmtl material\nKd 1 1 1\nmap_Kd {path.stem}.png\n", encoding="utf-8"
            )
            f.write(f"mtllib {path.stem}.mtl\nusemtl material\n")
        np.savetxt(f, vertices, fmt=" ".join(["v"] + ["%.6f"] * vertices.shape[1]))
        for keyword, table in tables:
            np.savetxt(f, table, fmt=" ".join([keyword] + ["%.6f"] * table.shape[1]))
        # v, v/vt, v/vt/vn or v//vn per corner.
        corner = "/".join(
            ["%d"]
            + (["%d"] if uvs is not None else ([""] if normals is not None else []))
            + (["%d"] if normals is not None else [])
        )
        np.savetxt(
            f,
            np.stack(corners, -1).reshape(n, 3 * len(corners)),
            fmt=" ".join(["f"] + [corner] * 3),
        )


def _real(name: str, value: jax.typing.ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a real numpy array of ``shape`` (-1: any size)."""
    array_ = np.asarray(value)
    if len(shape) != array_.ndim or any(
        s not in (-1, a) for s, a in zip(shape, array_.shape, strict=True)
    ):
        spec = ", ".join("?" if s == -1 else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{spec}], got {array_.shape}")
    if not (np.issubdtype(array_.dtype, np.floating) or np.issubdtype(array_.dtype, np.integer)):
        raise TypeError(f"{name} must be real numbers, got dtype {array_.dtype}")
    return array_
