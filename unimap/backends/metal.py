"""Metal backend: Apple Silicon GPUs through MLX.

The GPU ceiling is MLX's `max_recommended_working_set_size` (it already reflects a user-set
`iogpu.wired_limit_mb`); the sysctl is read as well so doctor can show it and suggest raising
it. The GPU shares RAM with the CPU, so its budget is also bounded by what RAM is free now.
Reading only: this module never sets the wired limit (that is the runtime's job, per plan).
"""

from __future__ import annotations

from typing import Any

from unimap.backends import Backend, BackendUnavailable
from unimap.host import Host
from unimap.hostmem import HostMemory
from unimap.machine import Device, gpu_device
from unimap.settings import Reserves
from unimap.units import GiB, MiB

# macOS 14+ takes MiB; macOS 13 had a debug key in bytes.
WIRED_LIMIT_KEYS: tuple[tuple[str, int], ...] = (
    ("iogpu.wired_limit_mb", MiB),
    ("debug.iogpu.wired_limit", 1),
)
# When suggesting a higher wired limit, leave macOS at least this much of the RAM:
# max(4 GiB, 1/8 of RAM). Wiring nearly all RAM has frozen 16 GB Macs (FACTS.md).
MACOS_KEEP_FLOOR_BYTES = 4 * GiB
MACOS_KEEP_SHARE = 1 / 8


class MetalBackend(Backend):
    name = "metal"

    def priority(self, host: Host) -> int:
        if host.system != "Darwin":
            raise BackendUnavailable(f"Metal needs macOS; this is {host.system}")
        if host.arch != "arm64":
            raise BackendUnavailable(f"MLX's Metal backend needs Apple Silicon; this Mac is {host.arch}")
        mlx = host.mlx()
        if mlx.error is not None:
            raise BackendUnavailable(f"MLX cannot be imported ({mlx.error}); reinstall it: pip install mlx")
        if not mlx.gpu_available:
            raise BackendUnavailable("MLX reports no usable Metal GPU (mx.is_available(mx.gpu) is False)")
        return 100

    def devices(
        self, host: Host, memory: HostMemory, reserves: Reserves, warnings: list[str]
    ) -> list[Device]:
        info = host.mlx().gpu_info
        ceiling = _as_int(info.get("max_recommended_working_set_size"))
        total = _as_int(info.get("memory_size"))
        sources = {
            "ceiling_bytes": "MLX device_info max_recommended_working_set_size",
            "total_bytes": "MLX device_info memory_size",
        }
        if ceiling is None:
            warnings.append("MLX's device_info has no max_recommended_working_set_size: the GPU "
                            "ceiling and budget are unknown (pass --gpu-budget to plan anyway)")
        if total is None:
            total, sources["total_bytes"] = memory.total_bytes, memory.sources.get("total_bytes", "")
        wired, key = read_wired_limit(host, warnings)
        sources["wired_limit_bytes"] = f"sysctl {key}" if key else "sysctl (no key answered)"
        sources["available_bytes"] = "min(ceiling, host available)"
        details = {k: info[k] for k in ("device_name", "architecture", "max_buffer_length") if k in info}
        details["wired_limit_key"] = key
        return [gpu_device(
            "gpu:0", self.name, str(info.get("device_name") or "Apple GPU"), unified=True,
            unified_reason="Apple Silicon: CPU and GPU share one pool of RAM",
            total_bytes=total, ceiling_bytes=ceiling,
            available_bytes=_min_known(ceiling, memory.available_bytes), reserves=reserves,
            sources=sources, wired_limit_bytes=wired, details=details,
        )]


def read_wired_limit(host: Host, warnings: list[str]) -> tuple[int | None, str | None]:
    """The sysctl wired limit in bytes (0 = macOS default) and the key that answered."""
    for key, scale in WIRED_LIMIT_KEYS:
        raw = host.sysctl(key)
        if raw is None:
            continue
        if not raw.strip().isdigit():
            warnings.append(f"sysctl {key} printed {raw[:40]!r}, not a number: wired limit unknown")
            return None, key
        return int(raw) * scale, key
    warnings.append("sysctl answered neither iogpu.wired_limit_mb nor debug.iogpu.wired_limit: "
                    "the wired limit setting is unknown")
    return None, None


def suggested_wired_limit_bytes(ram_total_bytes: int) -> int:
    """The highest wired limit we would suggest: RAM minus max(4 GiB, 1/8 of RAM), whole MiB."""
    keep = max(MACOS_KEEP_FLOOR_BYTES, int(ram_total_bytes * MACOS_KEEP_SHARE))
    return max(0, (ram_total_bytes - keep) // MiB * MiB)


def sysctl_command(limit_bytes: int, key: str | None) -> str:
    """The command that sets the wired limit until reboot, for the key this macOS uses."""
    if key == "debug.iogpu.wired_limit":
        return f"sudo sysctl debug.iogpu.wired_limit={limit_bytes}"
    return f"sudo sysctl iogpu.wired_limit_mb={limit_bytes // MiB}"


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _min_known(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else min(a, b)
