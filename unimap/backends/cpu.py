"""CPU backend: always viable, lowest priority. It has no GPU; the probe adds the CPU device."""

from __future__ import annotations

from unimap.backends import Backend
from unimap.host import Host
from unimap.hostmem import HostMemory
from unimap.machine import Device
from unimap.settings import Reserves


class CpuBackend(Backend):
    name = "cpu"

    def priority(self, host: Host) -> int:
        return 0

    def devices(
        self, host: Host, memory: HostMemory, reserves: Reserves, warnings: list[str]
    ) -> list[Device]:
        return []
