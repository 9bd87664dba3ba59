"""nmr_jax: the Neural 3D Mesh Renderer (Kato, Ushiku, Harada, CVPR 2018) for JAX."""
