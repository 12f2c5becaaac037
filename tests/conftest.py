"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

# The public benchmark data sits beside the repository (../shared/data); CI has the same layout.
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the read-only benchmark data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"benchmark data not found at {SHARED_DATA} (expected ../shared/data beside the "
            "repository); get it with `hirex data download` and link it there"
        )
    return SHARED_DATA
