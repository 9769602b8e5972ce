"""Settings that come from flags and environment variables, validated in one place.

A flag beats the environment and the environment beats the default; every value keeps a note of
where it came from, so doctor and plans can say it. A value we cannot use raises ConfigError that
names the flag or variable and what it accepts: nothing falls back to a default silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from unimap.errors import ArgumentTypeError, ConfigError
from unimap.units import MAX_BYTES, GiB, MiB, format_bytes, parse_size

ENV_BACKEND = "UNIMAP_BACKEND"
ENV_GPU_RESERVE = "UNIMAP_GPU_RESERVE"
ENV_HOST_RESERVE = "UNIMAP_HOST_RESERVE"
# unimap's own name first; mistral.rs's is honoured so existing setups keep working.
IGPU_FRACTION_VARS = ("UNIMAP_IGPU_MEMORY_FRACTION", "MISTRALRS_IGPU_MEMORY_FRACTION")
DEFAULT_IGPU_FRACTION = 0.75  # NVIDIA's and mistral.rs's default share of RAM for an iGPU

# GPU reserve: allocator slack, command buffers and the runtime's own buffers. mistral.rs keeps
# max(2 %, 512 MiB) for the same reason; we keep the rule but make it visible and overridable.
GPU_RESERVE_FLOOR_BYTES = 512 * MiB
GPU_RESERVE_SHARE = 0.02
# Host reserve: the OS, the Python process itself and the user's other programs.
HOST_RESERVE_FLOOR_BYTES = 1 * GiB
HOST_RESERVE_SHARE = 0.05


@dataclass(frozen=True)
class Reserves:
    """Memory held back from plans; None means "use the default rule for that device"."""

    gpu_bytes: int | None = None
    gpu_source: str = "default"
    host_bytes: int | None = None
    host_source: str = "default"

    def gpu_for(self, limit_bytes: int) -> tuple[int, str]:
        """The GPU reserve for a device whose usable ceiling is `limit_bytes`, with its source."""
        if self.gpu_bytes is not None:
            return self.gpu_bytes, self.gpu_source
        reserve = max(GPU_RESERVE_FLOOR_BYTES, int(limit_bytes * GPU_RESERVE_SHARE))
        return reserve, "default: max(512 MiB, 2% of the GPU ceiling)"

    def host_for(self, total_bytes: int) -> tuple[int, str]:
        """The host reserve for a machine with `total_bytes` of RAM, with its source."""
        if self.host_bytes is not None:
            return self.host_bytes, self.host_source
        reserve = max(HOST_RESERVE_FLOOR_BYTES, int(total_bytes * HOST_RESERVE_SHARE))
        return reserve, "default: max(1 GiB, 5% of RAM)"


def _size(flag_value: str | int | None, flag: str, env: Mapping[str, str], var: str) -> tuple[
    int | None, str
]:
    if flag_value is not None:
        raw, where = flag_value, f"flag {flag}"
    elif var in env:
        raw, where = env[var], f"environment {var}"
    else:
        return None, "default"
    if isinstance(raw, int) and not isinstance(raw, bool):
        size = raw
    elif isinstance(raw, str):
        try:
            size = parse_size(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    else:
        raise ArgumentTypeError(f"{where}: a reserve is a size such as '2GiB' or a byte count, not "
                                f"{type(raw).__name__}")
    if not 0 <= size <= MAX_BYTES:
        raise ConfigError(f"{where}: a reserve is from 0 to {format_bytes(MAX_BYTES)}, not {size}")
    return size, f"{where} = {format_bytes(size)}"


def reserves(
    env: Mapping[str, str],
    gpu_reserve: str | int | None = None,
    host_reserve: str | int | None = None,
) -> Reserves:
    """Reserves from the flags (`--gpu-reserve`, `--host-reserve`), else the environment."""
    gpu_bytes, gpu_source = _size(gpu_reserve, "--gpu-reserve", env, ENV_GPU_RESERVE)
    host_bytes, host_source = _size(host_reserve, "--host-reserve", env, ENV_HOST_RESERVE)
    return Reserves(gpu_bytes, gpu_source, host_bytes, host_source)


def igpu_memory_fraction(env: Mapping[str, str]) -> tuple[float, str]:
    """The share of RAM an integrated CUDA GPU may use, and which variable (or default) set it."""
    for var in IGPU_FRACTION_VARS:
        if var not in env:
            continue
        raw = env[var]
        try:
            fraction = float(raw)
        except ValueError:
            fraction = math.nan
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise ConfigError(
                f"environment {var}={raw!r} is not a usable fraction: give a number greater than "
                f"0 and at most 1 (for example 0.75), or unset it for the default "
                f"{DEFAULT_IGPU_FRACTION}"
            )
        return fraction, f"environment {var}={raw}"
    return DEFAULT_IGPU_FRACTION, f"default {DEFAULT_IGPU_FRACTION}"


def backend_choice(env: Mapping[str, str], flag_value: str | None = None) -> tuple[str | None, str]:
    """The backend the user asked for (`--backend`, else UNIMAP_BACKEND), or None for automatic."""
    if flag_value is not None and not isinstance(flag_value, str):
        raise ArgumentTypeError(f"backend must be a backend name, not {type(flag_value).__name__}")
    if flag_value:
        return flag_value.strip().lower(), "flag --backend"
    raw = env.get(ENV_BACKEND)
    if raw is None:
        return None, "automatic: highest-priority viable backend"
    if not raw.strip():
        raise ConfigError(
            f"environment {ENV_BACKEND} is set but empty: name a backend (see `unimap doctor`) "
            "or unset it"
        )
    return raw.strip().lower(), f"environment {ENV_BACKEND}"
