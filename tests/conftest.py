"""Shared fixtures: sparse-header models written by tools/fixtures.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import fixtures as model_fixtures  # noqa: E402

# The files that take longest start first (test_vlm_runs.py's child runs every mlx-vlm family,
# about 3 minutes on 2 cores), so that under `make test`'s workers (pytest-xdist, a file to a
# worker) the other files fill in beside them rather than wait behind them at the end.
FIRST = ("test_vlm_runs.py", "test_families.py", "test_distributed.py", "test_vlm_coverage.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


@pytest.fixture(scope="session", autouse=True)
def structure_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The structure cache (unimap/cache.py) of the run in a folder of its own, for the CLI's
    subprocesses too: tests never read nor fill the user's ~/.cache/unimap."""
    folder = tmp_path_factory.mktemp("unimap-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIMAP_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family of tools/fixtures.py as a sparse model folder (a few MB of real disk)."""
    out = tmp_path_factory.mktemp("models")
    for family in model_fixtures.FAMILIES:
        model_fixtures.write_family(out, family)
    return out
