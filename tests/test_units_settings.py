"""Sizes, settings from flags and environment, the public surface and import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest

import unimap
from unimap.errors import ConfigError, UnimapError
from unimap.settings import Reserves, backend_choice, igpu_memory_fraction, reserves
from unimap.units import format_bytes, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0),
    ("1073741824", 1073741824),
    ("48GiB", 48 * 1024**3),
    ("48GB", 48 * 1000**3),
    ("48gb", 48 * 1000**3),
    ("512MiB", 512 * 1024**2),
    ("512m", 512 * 1024**2),
    ("1.5GiB", 1610612736),
    (" 2 TiB ", 2 * 1024**4),
    ("100KB", 100_000),
    ("7B", 7),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1", "1.2.3GiB", "12 parsecs", "1e9", "nan", "∞"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("n_bytes", "text"), [
    (None, "unknown"), (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"),
    (1536 * 1024**2, "1.50 GiB"), (5 * 1024**4, "5.00 TiB"), (-2 * 1024**3, "-2.00 GiB"),
])
def test_format_bytes(n_bytes: int | None, text: str) -> None:
    assert format_bytes(n_bytes) == text


def test_fraction_default_and_sources() -> None:
    assert igpu_memory_fraction({}) == (0.75, "default 0.75")
    assert igpu_memory_fraction({"MISTRALRS_IGPU_MEMORY_FRACTION": "0.6"}) == (
        0.6, "environment MISTRALRS_IGPU_MEMORY_FRACTION=0.6")


def test_default_reserves_follow_the_documented_rules() -> None:
    held = Reserves()
    assert held.gpu_for(8 * 1024**3) == (512 * 1024**2,
                                         "default: max(512 MiB, 2% of the GPU ceiling)")
    assert held.gpu_for(100 * 1000**3)[0] == 2 * 1000**3
    assert held.host_for(8 * 1024**3)[0] == 1024**3
    assert held.host_for(100 * 1000**3)[0] == 5 * 1000**3


def test_flag_beats_environment_for_reserves() -> None:
    held = reserves({"UNIMAP_GPU_RESERVE": "1GiB"}, gpu_reserve="2GiB")
    assert held.gpu_bytes == 2 * 1024**3
    assert held.gpu_source.startswith("flag --gpu-reserve")


def test_negative_reserve_int_is_rejected() -> None:
    with pytest.raises(ConfigError, match="a reserve is from 0 to"):
        reserves({}, host_reserve=-1)


def test_backend_choice() -> None:
    assert backend_choice({}) == (None, "automatic: highest-priority viable backend")
    assert backend_choice({"UNIMAP_BACKEND": " Metal "}) == ("metal", "environment UNIMAP_BACKEND")
    assert backend_choice({"UNIMAP_BACKEND": "cpu"}, "cuda") == ("cuda", "flag --backend")


def test_errors_share_one_base() -> None:
    for name in ("ConfigError", "ProbeError", "BackendError", "ModelError", "DoesNotFitError"):
        assert issubclass(getattr(unimap, name), UnimapError)


def test_public_api_is_all() -> None:
    assert sorted(unimap.__all__) == sorted([
        "Backend", "BackendError", "BackendStatus", "BackendUnavailable", "Chat", "ConfigError",
        "Device", "DoesNotFitError", "Estimate", "Host", "Machine", "ModelError", "ModelSpec",
        "Options", "Plan", "ProbeError", "Response", "UnimapError", "__version__", "estimate",
        "generate", "inspect", "load", "plan", "probe", "stream_generate",
    ])
    for name in unimap.__all__:
        assert getattr(unimap, name) is not None


def test_import_has_no_heavy_side_effects() -> None:
    code = ("import sys, unimap, unimap.cli; "
            "print(sorted(m for m in ('mlx', 'mlx.core', 'torch', 'mlx_lm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
