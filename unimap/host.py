"""Where the probe reads the machine from, and how it reads host memory.

`Host` bundles every source of machine facts behind plain values and callables: the environment,
/proc and /sys under a root folder, sysctl, psutil, MLX's device info and the torch module.
`Host.real()` reads this machine; tests describe fake Macs, Jetsons and containers with other
callables and a folder of fake system files. This module imports neither mlx nor torch at import
time, and it never changes anything on the machine.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# cgroup v1 reports "no limit" as a page-rounded 2**63 - 1; anything this large is no limit.
CGROUP_V1_UNLIMITED_BYTES = 2**62


@dataclass(frozen=True)
class VirtualMemory:
    """What psutil says about RAM and swap (used where there is no /proc/meminfo)."""

    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int


@dataclass(frozen=True)
class MlxInfo:
    """What the installed MLX reports; `error` says why it could not be imported."""

    version: str | None = None
    default_device: str | None = None
    gpu_available: bool = False
    gpu_info: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Host:
    """Every source of machine facts the probe uses. Fields are plain so fakes are easy."""

    system: str  # platform.system(): "Darwin", "Linux", ...
    os_name: str  # "macOS 14.5", "Ubuntu 22.04.4 LTS"
    arch: str  # platform.machine(): "arm64", "x86_64", "aarch64"
    env: Mapping[str, str]
    sysctl: Callable[[str], str | None]  # stdout of `sysctl -n KEY`, None if absent
    virtual_memory: Callable[[], VirtualMemory]
    mlx: Callable[[], MlxInfo]
    import_module: Callable[[str], Any]
    root: Path = Path("/")  # /proc and /sys are read below this folder
    is_real: bool = False

    @classmethod
    def real(cls) -> Host:
        """This machine, read live."""
        system = platform.system()
        return cls(
            system=system,
            os_name=_os_name(system),
            arch=platform.machine(),
            env=os.environ,
            sysctl=_real_sysctl,
            virtual_memory=_real_virtual_memory,
            mlx=_real_mlx_info,
            import_module=importlib.import_module,
            is_real=True,
        )

    def cpu_name(self) -> str:
        """The processor's marketing name, or "<arch> CPU" when the system does not say."""
        brand = self.sysctl("machdep.cpu.brand_string") if self.system == "Darwin" else None
        if not brand and self.system == "Linux":
            try:
                lines = self.read_text("/proc/cpuinfo").splitlines()
            except OSError:
                lines = []
            brand = next((ln.split(":", 1)[1] for ln in lines if ln.startswith("model name")), None)
        return brand.strip() if brand and brand.strip() else f"{self.arch} CPU"

    def read_text(self, path: str) -> str:
        """Read a system file such as "/proc/meminfo" below `root`; OSError if unreadable."""
        return (self.root / path.lstrip("/")).read_text()


def _os_name(system: str) -> str:
    if system == "Darwin":
        version = platform.mac_ver()[0]
        return f"macOS {version}" if version else "macOS"
    if system == "Linux":
        pretty = _os_release_name(Path("/etc/os-release"))
        return f"{pretty} (kernel {platform.release()})"
    return f"{system} {platform.release()}".strip()


def _os_release_name(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return "Linux"
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"') or "Linux"
    return "Linux"


def _real_sysctl(key: str) -> str | None:
    exe = shutil.which("sysctl") or ("/usr/sbin/sysctl" if Path("/usr/sbin/sysctl").exists() else None)
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-n", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _real_virtual_memory() -> VirtualMemory:
    import psutil

    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    return VirtualMemory(int(vm.total), int(vm.available), int(swap.total), int(swap.free))


@functools.lru_cache(maxsize=1)
def _real_mlx_info() -> MlxInfo:
    try:
        import mlx.core as mx
    except Exception as exc:  # an ImportError, or a broken native library
        return MlxInfo(error=f"{type(exc).__name__}: {exc}")
    gpu_available = bool(mx.is_available(mx.gpu))
    gpu_info = dict(mx.device_info(mx.gpu)) if gpu_available else {}
    return MlxInfo(
        version=getattr(mx, "__version__", None),
        default_device=mx.default_device().type.name,
        gpu_available=gpu_available,
        gpu_info=gpu_info,
    )
