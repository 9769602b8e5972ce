"""The probe's result: a frozen, JSON-serialisable description of the machine.

A Machine lists its devices (GPUs first, the CPU last) with the memory a plan may use on each,
every backend that was considered, and the warnings met on the way. Every number has a note in
`sources` saying where it came from; None means unknown (and a warning says why). Nothing here
reads the machine: see probe.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from unimap.bandwidth import gpu_bandwidth, unified_cpu_bandwidth
from unimap.settings import Reserves

DeviceKind = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Device:
    """One place a layer can live. Sizes in bytes; None = unknown.

    total_bytes      the device's whole memory (for a unified GPU: the RAM it shares)
    ceiling_bytes    the most the device may ever hold (Metal working set, iGPU fraction x RAM)
    available_bytes  what is free for us right now, before the reserve
    reserve_bytes    what we leave alone
    budget_bytes     what a plan may use: min(ceiling, available) - reserve, never below 0
    """

    name: str  # "gpu:0", "gpu:1", ..., "cpu"
    kind: DeviceKind
    backend: str
    description: str
    unified: bool  # shares the host's RAM pool
    unified_reason: str
    total_bytes: int | None
    ceiling_bytes: int | None
    available_bytes: int | None
    reserve_bytes: int
    budget_bytes: int | None
    wired_limit_bytes: int | None = None  # Metal: the iogpu sysctl setting; 0 = OS default
    sources: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    bandwidth_bytes_per_s: int | None = None  # memory read rate (unimap/bandwidth.py); None = unknown


@dataclass(frozen=True)
class BackendStatus:
    """A backend found through the `unimap.backends` entry points, viable or not."""

    name: str
    distribution: str  # the installed package that provides it
    priority: int | None  # None when not viable
    reason: str  # why it is not viable; empty when viable
    selected: bool = False

    @property
    def viable(self) -> bool:
        return self.priority is not None


@dataclass(frozen=True)
class Machine:
    """What memory exists on a machine and how much of it a plan may use."""

    system: str
    os_name: str
    arch: str
    backend: str  # the selected backend
    backend_source: str
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None
    cgroup_limit_bytes: int | None
    devices: tuple[Device, ...]
    backends: tuple[BackendStatus, ...]
    sources: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == "gpu")

    @property
    def cpu(self) -> Device:
        return next(d for d in self.devices if d.kind == "cpu")

    @property
    def unified(self) -> bool:
        """True when some GPU shares the host's RAM (Apple Silicon, Jetson, GB10)."""
        return any(d.unified for d in self.gpus)

    def device(self, name: str) -> Device:
        for candidate in self.devices:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, status in zip(data["backends"], self.backends, strict=True):
            entry["viable"] = status.viable
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def gpu_device(
    name: str, backend: str, description: str, *, unified: bool, unified_reason: str,
    total_bytes: int | None, ceiling_bytes: int | None, available_bytes: int | None,
    reserves: Reserves, sources: dict[str, str], wired_limit_bytes: int | None = None,
    details: dict[str, Any] | None = None, bandwidth: tuple[int, str] | None = None,
) -> Device:
    """A GPU whose budget follows the one rule: min(ceiling, available) - reserve, at least 0.
    Its bandwidth is `bandwidth` (bytes/s, source), else the published figure for its name."""
    reserve, sources["reserve_bytes"] = reserves.gpu_for(ceiling_bytes or 0)
    bandwidth = bandwidth or gpu_bandwidth(description)
    if bandwidth is not None:
        sources["bandwidth_bytes_per_s"] = bandwidth[1]
    room = None if ceiling_bytes is None or available_bytes is None else min(ceiling_bytes,
                                                                            available_bytes)
    sources.setdefault("budget_bytes", "min(ceiling, available) - reserve")
    return Device(name=name, kind="gpu", backend=backend, description=description,
                  unified=unified, unified_reason=unified_reason, total_bytes=total_bytes,
                  ceiling_bytes=ceiling_bytes, available_bytes=available_bytes,
                  reserve_bytes=reserve, budget_bytes=None if room is None else max(0, room - reserve),
                  wired_limit_bytes=wired_limit_bytes, sources=sources, details=details or {},
                  bandwidth_bytes_per_s=bandwidth[0] if bandwidth else None)


def cpu_device(
    description: str, total_bytes: int | None, available_bytes: int | None,
    ram_sources: dict[str, str], reserves: Reserves, gpus: tuple[Device, ...] | list[Device],
    bandwidth: tuple[int, str] | None = None,
) -> Device:
    """The CPU as an offload target. On unified memory its budget is what the GPUs leave, and
    its read rate an assumed share of the shared bandwidth (unless `bandwidth` says)."""
    reserve, reserve_source = reserves.host_for(total_bytes or 0)
    shared = [g for g in gpus if g.unified]
    gpu_share = None if any(g.budget_bytes is None for g in shared) else sum(
        (g.budget_bytes or 0) + g.reserve_bytes for g in shared)
    if shared:
        budget_source = "host available - host reserve - unified GPU budget and reserve"
        reason = "shares RAM with " + ", ".join(g.name for g in shared)
    else:
        budget_source, reason = "host available - host reserve", "host RAM"
    budget = None
    if available_bytes is not None and gpu_share is not None:
        budget = max(0, available_bytes - reserve - gpu_share)
    shared_rate = next((g.bandwidth_bytes_per_s for g in shared if g.bandwidth_bytes_per_s), None)
    if bandwidth is None and shared_rate:
        bandwidth = unified_cpu_bandwidth(shared_rate)
    return Device(
        name="cpu", kind="cpu", backend="cpu", description=description,
        unified=bool(shared), unified_reason=reason,
        total_bytes=total_bytes, ceiling_bytes=total_bytes, available_bytes=available_bytes,
        reserve_bytes=reserve, budget_bytes=budget,
        sources={
            "total_bytes": ram_sources.get("total_bytes", "unknown"),
            "ceiling_bytes": ram_sources.get("total_bytes", "unknown"),
            "available_bytes": ram_sources.get("available_bytes", "unknown"),
            "reserve_bytes": reserve_source,
            "budget_bytes": budget_source,
            **({"bandwidth_bytes_per_s": bandwidth[1]} if bandwidth else {}),
        },
        bandwidth_bytes_per_s=bandwidth[0] if bandwidth else None,
    )
