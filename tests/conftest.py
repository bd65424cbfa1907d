"""Shared fixtures."""

from __future__ import annotations

import pytest

from foundation import Checkpoints, write_checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    """Tiny random-weight SAM and CLIP checkpoint files (see tests/foundation.py)."""
    return write_checkpoints(tmp_path_factory.mktemp("checkpoints"))
