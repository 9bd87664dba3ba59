"""nmr_jax: the Neural 3D Mesh Renderer (Kato, Ushiku, Harada, CVPR 2018) for JAX.

Rasterization runs in C++ (and CUDA) kernels registered as XLA custom calls; camera, lighting and
perspective are pure ``jax.numpy``. Everything is functional, jit-able and vmap-able.
"""

from nmr_jax import data, typing
from nmr_jax._obj import load_obj, save_obj
from nmr_jax._validate import validate_mesh
from nmr_jax.camera import get_points_from_angles, look, look_at, perspective, projection
from nmr_jax.lighting import lighting
from nmr_jax.rasterize import (
    RGBAD,
    rasterize,
    rasterize_depth,
    rasterize_face_index_map,
    rasterize_face_index_map_and_weight_map,
    rasterize_rgbad,
    rasterize_silhouettes,
    rasterize_weight_map,
    vertices_to_faces,
)
from nmr_jax.renderer import Renderer

__version__ = "0.1.0"

__all__ = [
    "RGBAD",
    "Renderer",
    "data",
    "get_points_from_angles",
    "lighting",
    "load_obj",
    "look",
    "look_at",
    "perspective",
    "projection",
    "rasterize",
    "rasterize_depth",
    "rasterize_face_index_map",
    "rasterize_face_index_map_and_weight_map",
    "rasterize_rgbad",
    "rasterize_silhouettes",
    "rasterize_weight_map",
    "save_obj",
    "typing",
    "validate_mesh",
    "vertices_to_faces",
]
