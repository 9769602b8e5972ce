"""unimap: automatic device mapping for LLMs with MLX on unified-memory machines.

The public surface is `__all__`; everything else is private and may change.
"""

from __future__ import annotations

from unimap.api import load, plan
from unimap.backends import Backend, BackendUnavailable
from unimap.errors import BackendError, ConfigError, ModelError, ProbeError, UnimapError
from unimap.estimate import Estimate, Options, estimate
from unimap.generate import Chat, Response, generate, stream_generate
from unimap.host import Host
from unimap.inspect import ModelSpec, inspect
from unimap.machine import BackendStatus, Device, Machine
from unimap.plan import DoesNotFitError, Plan
from unimap.probe import probe

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendStatus",
    "BackendUnavailable",
    "Chat",
    "ConfigError",
    "Device",
    "DoesNotFitError",
    "Estimate",
    "Host",
    "Machine",
    "ModelError",
    "ModelSpec",
    "Options",
    "Plan",
    "ProbeError",
    "UnimapError",
    "__version__",
    "Response",
    "estimate",
    "generate",
    "inspect",
    "load",
    "plan",
    "probe",
    "stream_generate",
]
