"""nmr_jax: the Neural 3D Mesh Renderer (Kato, Ushiku, Harada, CVPR 2018) for JAX.

Rasterization runs in C++ (and CUDA) kernels registered as XLA custom calls; camera, lighting and
perspective are pure ``jax.numpy``. Everything is functional, jit-able and vmap-able.
"""

from nmr_jax import data, losses, shading, typing
from nmr_jax._batch import PaddedMeshes, pad_meshes, unpad_meshes
from nmr_jax._obj import Mesh, load_mesh, load_obj, save_obj
from nmr_jax._validate import validate_mesh
from nmr_jax.camera import (
    get_points_from_angles,
    look,
    look_at,
    perspective,
    projection,
    pytorch3d_camera,
)
from nmr_jax.clip import ClippedFaces, clip_faces, source_fragments
from nmr_jax.layers import Layers, alpha_composite, layer_fragments, rasterize_layers, softmax_blend
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
from nmr_jax.shading import (
    Fragments,
    PointLights,
    Shaded,
    blinn_phong,
    face_normals,
    interpolate,
    lambert,
    mesh_colors,
    mesh_shader,
    rasterize_fragments,
    rasterize_shaded,
    sample_texture,
    spherical_uvs,
    vertex_normals,
)
from nmr_jax.soft import SoftRule, soft_rgb, soft_silhouettes

__version__ = "0.1.0"

__all__ = [
    "Layers",
    "alpha_composite",
    "layer_fragments",
    "rasterize_layers",
    "softmax_blend",
    "RGBAD",
    "ClippedFaces",
    "Fragments",
    "Mesh",
    "PaddedMeshes",
    "PointLights",
    "Renderer",
    "Shaded",
    "SoftRule",
    "data",
    "get_points_from_angles",
    "face_normals",
    "interpolate",
    "blinn_phong",
    "clip_faces",
    "lambert",
    "load_mesh",
    "lighting",
    "load_obj",
    "look",
    "look_at",
    "losses",
    "mesh_colors",
    "mesh_shader",
    "pad_meshes",
    "perspective",
    "projection",
    "pytorch3d_camera",
    "rasterize",
    "rasterize_depth",
    "rasterize_face_index_map",
    "rasterize_face_index_map_and_weight_map",
    "rasterize_rgbad",
    "rasterize_shaded",
    "rasterize_fragments",
    "rasterize_silhouettes",
    "rasterize_weight_map",
    "sample_texture",
    "save_obj",
    "shading",
    "soft_rgb",
    "soft_silhouettes",
    "source_fragments",
    "spherical_uvs",
    "typing",
    "unpad_meshes",
    "validate_mesh",
    "vertex_normals",
    "vertices_to_faces",
]
