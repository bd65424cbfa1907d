"""Shared fixtures: checkpoints, scenes and trained runs made once per session (tests/builders.py).

Tests that train a model, drive a browser or otherwise take more than a few seconds carry the
``slow`` marker (registered in pyproject.toml): ``python -m pytest -m "not slow"`` is the quick
loop, plain ``python -m pytest`` runs everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import VIEWER_DATA, VIEWER_RUN, make_tabletop_data, train_tiny_run
from foundation import Checkpoints, write_checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    """Tiny random-weight SAM and CLIP checkpoint files (see tests/foundation.py)."""
    return write_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def tabletop_data(tmp_path_factory) -> Path:
    """The tiny tabletop dataset (builders.TABLETOP). Training caches the labels teacher's maps
    in it; tests that change its files work on a copy."""
    return make_tabletop_data(tmp_path_factory.mktemp("tabletop") / "data")


@pytest.fixture(scope="session")
def tabletop_run(tabletop_data, tmp_path_factory) -> Path:
    """A run trained on ``tabletop_data`` (builders.TINY_RUN), shared by the query and HTTP
    tests. Read-only: tests that write into a run use builders.copy_run."""
    return train_tiny_run(tabletop_data, tmp_path_factory.mktemp("tabletop-run") / "run")


@pytest.fixture(scope="session")
def viewer_run(tmp_path_factory) -> Path:
    """The tabletop at 64 px (builders.VIEWER_DATA) trained for the browser tests
    (builders.VIEWER_RUN). Read-only."""
    root = tmp_path_factory.mktemp("viewer-run")
    return train_tiny_run(make_tabletop_data(root / "data", VIEWER_DATA), root / "run", VIEWER_RUN)


# Fixtures that train a model: any test that requests one (directly or through another
# fixture) is slow, however quick its own body is.
TRAINED_RUN_FIXTURES = {"tabletop_run", "viewer_run"}


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if TRAINED_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
