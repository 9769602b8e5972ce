"""The one exception hierarchy of unimap.

Every error a user can cause derives from UnimapError and carries a message that says what went
wrong and what to do next. The CLI turns these into one line on stderr and an exit code; anything
else is a bug and keeps its traceback.

    UnimapError
    ├── ConfigError         a flag, environment variable or argument has a value we cannot use
    │   │                   (also a ValueError)
    │   └── ArgumentTypeError   an API argument of the wrong type (also a TypeError)
    ├── ProbeError          the machine could not be described (unreadable system files, ...)
    ├── ModelError          a model cannot be inspected (missing or corrupt config/headers)
    └── BackendError        no usable backend, or the one asked for cannot run here
"""

from __future__ import annotations


class UnimapError(Exception):
    """Base class of every error unimap raises on purpose."""

    exit_code: int = 2


class ConfigError(UnimapError, ValueError):
    """A flag, environment variable or API argument has a value unimap cannot use."""


class ArgumentTypeError(ConfigError, TypeError):
    """An API argument of a type unimap does not take (`plan(123)`)."""


class ProbeError(UnimapError):
    """The machine could not be described."""


class ModelError(UnimapError):
    """A model cannot be inspected: missing files, corrupt headers, unsupported architecture."""


class BackendError(UnimapError):
    """No usable backend, or the requested backend cannot run on this machine."""
