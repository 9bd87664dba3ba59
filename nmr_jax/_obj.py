"""Wavefront OBJ meshes (with MTL materials) in and out, as the original neural_renderer reads them.

Conventions: vertices are float32 [V, 3]; faces are int32 [F, 3], 0-based indices into the
vertices; textures are float32 [F, T, T, T, 3] RGB in [0, 1], texel (i, j, k) of a face holding
its colour at the barycentric point proportional to (i, j, k) (see ``load_obj``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, overload

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["load_obj", "save_obj"]


@dataclasses.dataclass
class _Material:
    # Kd defaults to white so that a material without colour information does not darken.
    kd: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3, np.float32))
    texture: Path | None = None  # the map_Kd image


@dataclasses.dataclass
class _Obj:
    vertices: np.ndarray  # float32 [V, 3]
    faces: np.ndarray  # int32 [F, 3]
    uvs: np.ndarray  # float32 [VT, 2]
    face_uvs: np.ndarray  # int32 [F, 3] indices into uvs, -1 where the face has none
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


def _parse_obj(path: Path, with_materials: bool) -> _Obj:
    # Flat typed arrays: 4 bytes a number, where lists of Python floats take about 30.
    vertices = array("f")
    uvs = array("f")
    faces = array("i")
    face_uvs = array("i")
    face_materials = array("i")
    materials: dict[str, int] = {}
    mtllibs: list[tuple[Path, int]] = []
    material = -1
    for lineno, fields in _lines(path):
        where = f"{path}:{lineno}"
        keyword = fields[0]
        if keyword == "v":
            vertices.extend(_floats(fields, 3, where)[:3])
        elif keyword == "vt" and with_materials:
            uv = _floats(fields, 1, where)
            uvs.extend([uv[0], uv[1] if len(uv) > 1 else 0.0])  # v is optional and defaults to 0
        elif keyword == "f":
            if len(fields) < 4:
                raise ValueError(f"{where}: a face needs at least 3 vertices")
            corners = [token.split("/") for token in fields[1:]]
            if any(len(parts) > 3 for parts in corners):
                raise ValueError(f"{where}: a face vertex has more than 3 '/'-separated parts")
            v = [_index(parts[0], len(vertices) // 3, "vertex", where) for parts in corners]
            vt = [-1] * len(v)
            if with_materials and all(len(parts) > 1 and parts[1] for parts in corners):
                n_uvs = len(uvs) // 2
                vt = [_index(parts[1], n_uvs, "texture coordinate", where) for parts in corners]
            # Polygons become a fan of triangles around their first vertex.
            for i in range(1, len(v) - 1):
                faces.extend((v[0], v[i], v[i + 1]))
                face_uvs.extend((vt[0], vt[i], vt[i + 1]))
                face_materials.append(material)
        elif keyword == "usemtl" and with_materials:
            if len(fields) != 2:
                raise ValueError(f"{where}: 'usemtl' needs exactly one material name")
            materials.setdefault(fields[1], lineno)
            material = list(materials).index(fields[1])
        elif keyword == "mtllib" and with_materials:
            if len(fields) < 2:
                raise ValueError(f"{where}: 'mtllib' needs a file name")
            mtllibs += [(path.parent / name, lineno) for name in fields[1:]]
    if not faces:
        raise ValueError(f"{path}: no faces")
    return _Obj(
        vertices=np.frombuffer(vertices, np.float32).reshape(-1, 3),
        faces=np.frombuffer(faces, np.int32).reshape(-1, 3),
        uvs=np.frombuffer(uvs, np.float32).reshape(-1, 2),
        face_uvs=np.frombuffer(face_uvs, np.int32).reshape(-1, 3),
        face_materials=np.frombuffer(face_materials, np.int32),
        materials=materials,
        mtllibs=mtllibs,
    )


def _parse_mtl(path: Path, materials: dict[str, _Material]) -> None:
    """Add the materials of an MTL file (their Kd and map_Kd) to ``materials``."""
    current: _Material | None = None
    for lineno, fields in _lines(path):
        where = f"{path}:{lineno}"
        keyword = fields[0]
        if keyword == "newmtl":
            if len(fields) != 2:
                raise ValueError(f"{where}: 'newmtl' needs exactly one material name")
            current = materials[fields[1]] = _Material()
        elif keyword in ("Kd", "map_Kd"):
            if current is None:
                raise ValueError(f"{where}: '{keyword}' before any 'newmtl'")
            if keyword == "Kd":
                current.kd = np.array(_floats(fields, 3, where)[:3], np.float32)
            elif len(fields) < 2:
                raise ValueError(f"{where}: 'map_Kd' needs a file name")
            else:
                # The file name comes last, after any options such as "-s 1 1 1".
                texture = path.parent / fields[-1]
                if not texture.is_file():
                    raise FileNotFoundError(f"{where}: texture image {texture} not found")
                current.texture = texture


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
    library: dict[str, _Material] = {}
    for mtl, lineno in obj.mtllibs:
        if not mtl.is_file():
            raise FileNotFoundError(f"{filename}:{lineno}: material library {mtl} not found")
        _parse_mtl(mtl, library)
    t = texture_size
    # Faces without a material are white.
    textures = np.ones((len(obj.faces), t, t, t, 3), np.float32)
    weights = _texel_weights(texture_size)
    for material_id, (name, lineno) in enumerate(obj.materials.items()):
        if name not in library:
            raise ValueError(f"{filename}:{lineno}: material {name!r} is not defined")
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
    vertices = obj.vertices
    if normalization:
        vertices -= vertices.min(axis=0)
        extent = np.abs(vertices).max()
        if extent > 0:  # all vertices in one point: nothing to scale (0 / 0 otherwise)
            vertices /= extent
        vertices *= 2
        vertices -= vertices.max(axis=0) / 2
    if not load_texture:
        return jnp.asarray(vertices), jnp.asarray(obj.faces)
    textures = _textures(obj, texture_size, path)
    return jnp.asarray(vertices), jnp.asarray(obj.faces), jnp.asarray(textures)


def save_obj(
    filename: str | os.PathLike[str], vertices: jax.typing.ArrayLike, faces: jax.typing.ArrayLike
) -> None:
    """Write a triangle mesh as a Wavefront OBJ file (``v %.6f %.6f %.6f``, ``f i j k``, 1-based).

    Args:
        filename: the ``.obj`` file to write (overwritten).
        vertices: real [V, 3] vertex positions.
        faces: integer [F, 3] 0-based vertex indices.

    Raises:
        ValueError: an argument has the wrong shape, or a face index is out of range.
        TypeError: ``vertices`` is not real-valued or ``faces`` is not integer.
    """
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {vertices.shape}")
    if not (
        np.issubdtype(vertices.dtype, np.floating) or np.issubdtype(vertices.dtype, np.integer)
    ):
        raise TypeError(f"vertices must be real numbers, got dtype {vertices.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise TypeError(f"faces must have an integer dtype, got {faces.dtype}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"faces must be 0-based indices into the {len(vertices)} vertices, "
            f"got values in [{faces.min()}, {faces.max()}]"
        )
    with open(filename, "w", encoding="ascii", newline="\n") as f:
        np.savetxt(f, vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(f, faces.astype(np.int64) + 1, fmt="f %d %d %d")
