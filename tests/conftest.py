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


@pytest.fixture(scope="session")
def tiny_set_data():
    """A small seeded synthetic set dataset with its known answer (fast to train on)."""
    from hirex.data.synthetic import SyntheticConfig, make_synthetic

    return make_synthetic(SyntheticConfig(n_users=600, n_items=300, seed=3))


@pytest.fixture(scope="session")
def tiny_sequence_data():
    from hirex.data.synthetic import SyntheticConfig, make_synthetic

    return make_synthetic(SyntheticConfig(n_users=600, n_items=300, seed=4, kind="sequence"))
