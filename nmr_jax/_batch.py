"""Padding meshes of different sizes into one batch, and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nmr_jax import _validate as check

__all__ = ["PaddedMeshes", "pad_meshes", "unpad_meshes"]


class PaddedMeshes(NamedTuple):
    """Meshes padded to one size (``pad_meshes``)."""

    vertices: jax.Array  # float32 [B, Vmax, 3]; rows past a mesh's own vertices are 0
    faces: jax.Array  # int32 [B, Fmax, 3]; rows past a mesh's own faces are [-1, -1, -1]
    num_vertices: np.ndarray  # int [B]: each mesh's vertex count
    num_faces: np.ndarray  # int [B]: each mesh's face count


def pad_meshes(meshes: Sequence[tuple[ArrayLike, ArrayLike]]) -> PaddedMeshes:
    """Pads a list of ``(vertices [V_b, 3], faces [F_b, 3])`` into one batch that every
    function of nmr_jax takes (the renderer, shaders, ``nmr_jax.losses``, ``vmap``).

    Padding vertices are 0 and referenced by no face (they draw nothing and get no gradient);
    padding faces are rows of three -1. ``unpad_meshes`` is the inverse.

    Returns:
      ``PaddedMeshes(vertices float32 [B, Vmax, 3], faces int32 [B, Fmax, 3], num_vertices
      [B], num_faces [B])``; ``vertices, faces, *_ = pad_meshes(...)`` unpacks it.
    """
    if len(meshes) == 0:
        raise ValueError("pad_meshes needs at least one mesh")
    checked = []
    for b, mesh in enumerate(meshes):
        if not isinstance(mesh, tuple | list) or len(mesh) != 2:
            raise TypeError(f"meshes[{b}] must be a pair (vertices, faces), got {type(mesh)}")
        v = check.float_array(f"meshes[{b}] vertices", mesh[0], (None, 3))
        f = np.asarray(check.faces_array(f"meshes[{b}] faces", mesh[1]))
        if v.ndim != 2 or f.ndim != 2:
            raise ValueError(f"meshes[{b}] must be one mesh: vertices [V, 3] and faces [F, 3]")
        check.face_range(f"meshes[{b}] faces", f, v.shape[0])
        checked.append((v, f))
    num_v = np.array([v.shape[0] for v, _ in checked])
    num_f = np.array([f.shape[0] for _, f in checked])
    vertices = jnp.stack([jnp.pad(v, ((0, num_v.max() - v.shape[0]), (0, 0))) for v, _ in checked])
    faces = np.stack(
        [np.pad(f, ((0, num_f.max() - f.shape[0]), (0, 0)), constant_values=-1) for _, f in checked]
    )
    return PaddedMeshes(vertices, jnp.asarray(faces), num_v, num_f)


def unpad_meshes(
    padded: PaddedMeshes, vertices: ArrayLike | None = None
) -> list[tuple[jax.Array, jax.Array]]:
    """The inverse of ``pad_meshes``: the list of ``(vertices [V_b, ...], faces [F_b, 3])``.

    Args:
      padded: what ``pad_meshes`` returned.
      vertices: optional per-vertex results ``[B, Vmax, ...]`` of the batch (optimised
        positions, colours, normals) to cut instead of ``padded.vertices``.
    """
    if not isinstance(padded, PaddedMeshes):
        raise TypeError(f"padded must be what pad_meshes returned, got {type(padded)}")
    values = padded.vertices if vertices is None else jnp.asarray(vertices)
    batch, vmax = padded.vertices.shape[:2]
    if values.shape[:2] != (batch, vmax):
        raise ValueError(
            f"vertices must have shape [{batch}, {vmax}, ...] like the padded batch, got "
            f"{tuple(values.shape)}"
        )
    return [
        (values[b, : padded.num_vertices[b]], padded.faces[b, : padded.num_faces[b]])
        for b in range(batch)
    ]
