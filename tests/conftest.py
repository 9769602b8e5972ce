"""Shared fixtures: sparse-header models written by tools/fixtures.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import fixtures as model_fixtures  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family of tools/fixtures.py as a sparse model folder (a few MB of real disk)."""
    out = tmp_path_factory.mktemp("models")
    for family in model_fixtures.FAMILIES:
        model_fixtures.write_family(out, family)
    return out
