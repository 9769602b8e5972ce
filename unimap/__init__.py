"""unimap: automatic device mapping for LLMs with MLX on unified-memory machines.

The public surface is `__all__`; everything else is private and may change.
"""

from __future__ import annotations

from unimap.backends import Backend, BackendUnavailable
from unimap.errors import BackendError, ConfigError, ProbeError, UnimapError
from unimap.host import Host
from unimap.machine import BackendStatus, Device, Machine
from unimap.probe import probe

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendStatus",
    "BackendUnavailable",
    "ConfigError",
    "Device",
    "Host",
    "Machine",
    "ProbeError",
    "UnimapError",
    "__version__",
    "probe",
]
