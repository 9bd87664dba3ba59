"""Shared test helpers: where the original's reference data lives (../shared beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "nmr_reference_data"


def reference_data() -> Path:
    """The original's meshes and golden images, or a skip naming what is missing."""
    if not (REFERENCE_DATA / "MANIFEST.txt").is_file():
        pytest.skip(f"reference data not found at {REFERENCE_DATA} (../shared is absent)")
    return REFERENCE_DATA
