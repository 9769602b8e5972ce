"""Backend plugins: how unimap learns what accelerators a machine has.

A backend is a class registered under the `unimap.backends` entry point group. `priority(host)`
returns how much it should be preferred, or raises BackendUnavailable with the reason it cannot
run here; `devices(...)` describes its GPUs. The CPU is not a backend's business: the probe adds
it. unimap ships metal (100), cuda (90) and cpu (0); another installed distribution adds one by
declaring, in its own pyproject.toml:

    [project.entry-points."unimap.backends"]
    rocm = "unimap_rocm:RocmBackend"
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar

from unimap.host import Host
from unimap.hostmem import HostMemory
from unimap.machine import Device
from unimap.settings import Reserves

ENTRY_POINT_GROUP = "unimap.backends"


class BackendUnavailable(Exception):
    """Raised by Backend.priority with the reason the backend cannot run on this host."""


class Backend:
    """Base class of backend plugins. Subclasses set `name` and override both methods."""

    name: ClassVar[str] = ""

    def priority(self, host: Host) -> int:
        """Preference among viable backends (higher wins); raise BackendUnavailable if not viable."""
        raise NotImplementedError

    def devices(
        self, host: Host, memory: HostMemory, reserves: Reserves, warnings: list[str]
    ) -> list[Device]:
        """The GPUs this backend drives, named gpu:0, gpu:1, ...; append to `warnings` what is
        unknown. Called only after `priority` succeeded."""
        raise NotImplementedError


@dataclass(frozen=True)
class Found:
    """An entry point of the group, loaded (backend) or not (load_error)."""

    name: str
    distribution: str
    backend: Backend | None
    load_error: str | None = None


BUILTIN = {"metal": "unimap.backends.metal:MetalBackend", "cuda": "unimap.backends.cuda:CudaBackend",
           "cpu": "unimap.backends.cpu:CpuBackend"}


def discover() -> list[Found]:
    """Every backend registered by any installed distribution, in a stable order. unimap's own
    backends are there even when it runs from a source tree that was never installed (no entry
    points), as on a machine where only the checkout was copied."""
    points = {p.name: p for p in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name, target in BUILTIN.items():
        points.setdefault(name, metadata.EntryPoint(name, target, ENTRY_POINT_GROUP))
    found = []
    names: dict[int, str] = {}  # a distribution's name is parsed from its METADATA once (1-2 ms)
    for point in sorted(points.values(), key=lambda p: p.name):
        if point.dist is None:
            dist = "unimap (source tree)" if point.name in BUILTIN else "unknown"
        else:
            if id(point.dist) not in names:
                names[id(point.dist)] = point.dist.name
            dist = names[id(point.dist)]
        try:
            backend = point.load()()
        except Exception as exc:  # a broken plugin must not break doctor
            found.append(Found(point.name, dist, None, f"cannot be loaded: {type(exc).__name__}: {exc}"))
            continue
        if not isinstance(backend, Backend):
            found.append(Found(point.name, dist, None, "is not a unimap.backends.Backend subclass"))
            continue
        found.append(Found(point.name, dist, backend))
    return found
