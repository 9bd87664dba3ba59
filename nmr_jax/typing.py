"""Types of nmr_jax's public arguments, for annotating code that calls it.

``jax.typing.ArrayLike`` covers arrays and scalars; the aliases here add what nmr_jax accepts
beyond it and name the option values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias

from jax.typing import ArrayLike

__all__ = ["ArrayLike", "CameraMode", "Handedness", "ImageSize", "VectorLike"]

VectorLike: TypeAlias = ArrayLike | Sequence[float]
"""An array, or a plain tuple or list of floats (a vector such as ``eye``, a colour)."""

ImageSize: TypeAlias = int | tuple[int, int]
"""``S`` for a square image, or ``(height, width)``."""

CameraMode: TypeAlias = Literal["look_at", "look", "projection"]
"""``Renderer.camera_mode``: which camera parameters place the mesh in the image."""

Handedness: TypeAlias = Literal["left", "right"]
"""The world's handedness as the 'look_at' and 'look' cameras see it. ``"left"`` is the
original's: world x is image right, y up, z away from the eye at the default position, so a
right-handed mesh appears mirrored and its outward (counter-clockwise) faces are back faces.
``"right"`` mirrors camera x: right-handed meshes render unmirrored with their outward faces in
front."""
