"""Fake machines for tests: only what this machine cannot have.

macOS sysctl output and MLX's Metal device_info, torch CUDA device properties, and the
/proc/meminfo and cgroup files of other machines. Everything else in a test is real.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from unimap.host import Host, MlxInfo, VirtualMemory

GB = 1000**3
GiB = 1024**3
MiB = 1024**2

MLX_CPU = MlxInfo(version="0.32.4", default_device="cpu", gpu_available=False)


def mlx_gpu(**info: Any) -> MlxInfo:
    return MlxInfo(version="0.32.4", default_device="gpu", gpu_available=True, gpu_info=info)


def no_torch(name: str) -> Any:
    raise ImportError(f"No module named {name!r}")


def sysctl_from(values: Mapping[str, str]) -> Callable[[str], str | None]:
    return lambda key: values.get(key)


def fake_mac(
    ram_bytes: int,
    working_set_bytes: int,
    available_bytes: int,
    sysctl: Mapping[str, str | None] | None = None,
    env: Mapping[str, str] | None = None,
    os_name: str = "macOS 14.5",
    device_name: str = "Apple M3 Max",
) -> Host:
    """An Apple Silicon Mac. `sysctl` defaults to hw.memsize and iogpu.wired_limit_mb=0."""
    given: dict[str, str | None] = {"hw.memsize": str(ram_bytes), "iogpu.wired_limit_mb": "0"}
    given.update(sysctl or {})  # a None value removes the key, as on a Mac without it
    table = {k: v for k, v in given.items() if v is not None}
    mlx = mlx_gpu(memory_size=ram_bytes, max_recommended_working_set_size=working_set_bytes,
                  max_buffer_length=working_set_bytes // 2, architecture="applegpu_g15s",
                  device_name=device_name)
    vm = VirtualMemory(ram_bytes, available_bytes, 0, 0)
    return Host(system="Darwin", os_name=os_name, arch="arm64", env=dict(env or {}),
                sysctl=sysctl_from(table), virtual_memory=lambda: vm, mlx=lambda: mlx,
                import_module=no_torch)


def write_files(root: Path, files: Mapping[str, str]) -> None:
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def meminfo(total_kb: int, available_kb: int, swap_total_kb: int = 0, swap_free_kb: int = 0) -> str:
    return (f"MemTotal:       {total_kb} kB\nMemFree:        {available_kb // 2} kB\n"
            f"MemAvailable:   {available_kb} kB\nBuffers:          1024 kB\n"
            f"SwapTotal:      {swap_total_kb} kB\nSwapFree:       {swap_free_kb} kB\n")


def fake_linux(
    root: Path,
    files: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    torch: Any = None,
    mlx: MlxInfo = MLX_CPU,
    arch: str = "x86_64",
    os_name: str = "Ubuntu 22.04.4 LTS",
) -> Host:
    """A Linux machine whose /proc and /sys are the given files under `root`."""
    write_files(root, files)

    def import_module(name: str) -> Any:
        if name == "torch" and torch is not None:
            return torch
        return no_torch(name)

    def no_psutil() -> VirtualMemory:
        raise AssertionError("Linux probing must read /proc/meminfo, not psutil")

    return Host(system="Linux", os_name=os_name, arch=arch, env=dict(env or {}),
                sysctl=lambda key: None, virtual_memory=no_psutil, mlx=lambda: mlx,
                import_module=import_module, root=root)


@dataclass
class FakeGpu:
    name: str
    total_memory: int
    free_memory: int
    is_integrated: int = 0
    major: int = 9
    minor: int = 0


@dataclass
class FakeTorch:
    """The slice of the torch module the CUDA backend reads."""

    gpus: list[FakeGpu] = field(default_factory=list)
    cuda_version: str | None = "12.6"
    fail: Exception | None = None  # raised by torch.cuda.is_available()
    fail_mem_get_info: bool = False
    __version__: str = "2.5.1"

    def __post_init__(self) -> None:
        self.version = SimpleNamespace(cuda=self.cuda_version)
        self.cuda = SimpleNamespace(
            is_available=self._is_available,
            device_count=lambda: len(self.gpus),
            get_device_properties=lambda i: SimpleNamespace(**vars(self.gpus[i])),
            mem_get_info=self._mem_get_info,
        )

    def _is_available(self) -> bool:
        if self.fail is not None:
            raise self.fail
        return self.cuda_version is not None and bool(self.gpus)

    def _mem_get_info(self, index: int) -> tuple[int, int]:
        if self.fail_mem_get_info:
            raise RuntimeError("CUDA error: unspecified launch failure")
        gpu = self.gpus[index]
        return gpu.free_memory, gpu.total_memory
