"""CUDA backend: NVIDIA GPUs, read through PyTorch (imported only when this backend is asked).

Integrated GPUs (Jetson, GB10/DGX Spark: `is_integrated == 1`) share RAM with the CPU: their
ceiling is a fraction of RAM (UNIMAP_IGPU_MEMORY_FRACTION, else MISTRALRS_IGPU_MEMORY_FRACTION,
else 0.75) and free memory comes from /proc/meminfo (cudaMemGetInfo under-reports on Jetson and
NVML is unsupported there). Discrete GPUs (H100, Grace Hopper/Blackwell with their own HBM) use
`mem_get_info`. MLX's CUDA build runs the model; torch only describes the devices.
"""

from __future__ import annotations

from typing import Any

from unimap.backends import Backend, BackendUnavailable
from unimap.host import Host
from unimap.hostmem import HostMemory
from unimap.machine import Device, gpu_device
from unimap.settings import Reserves, igpu_memory_fraction


class CudaBackend(Backend):
    name = "cuda"

    def priority(self, host: Host) -> int:
        torch = _torch(host)
        try:
            available = bool(torch.cuda.is_available())
            count = int(torch.cuda.device_count()) if available else 0
        except Exception as exc:  # driver mismatch, broken install, ...
            raise BackendUnavailable(f"PyTorch's CUDA failed: {type(exc).__name__}: {exc}") from None
        if getattr(torch.version, "cuda", None) is None:
            raise BackendUnavailable(
                f"PyTorch {torch.__version__} is a CPU-only build; install a CUDA build of torch")
        if not available or count == 0:
            raise BackendUnavailable(
                f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
        return 90

    def devices(
        self, host: Host, memory: HostMemory, reserves: Reserves, warnings: list[str]
    ) -> list[Device]:
        torch = _torch(host)
        found = []
        for index in range(int(torch.cuda.device_count())):
            try:
                props = torch.cuda.get_device_properties(index)
            except Exception as exc:
                warnings.append(f"cuda:{index}: cannot read device properties ({exc}); skipped")
                continue
            if int(getattr(props, "is_integrated", 0)) == 1:
                found.append(_integrated(index, props, host, memory, reserves))
            else:
                found.append(_discrete(index, props, torch, reserves, warnings))
        return found


def _torch(host: Host) -> Any:
    try:
        return host.import_module("torch")
    except ImportError:
        raise BackendUnavailable(
            "PyTorch is not installed; install the CUDA extra: pip install 'unimap[cuda]'") from None
    except Exception as exc:
        raise BackendUnavailable(f"importing torch failed: {type(exc).__name__}: {exc}") from None


def _details(props: Any) -> dict[str, Any]:
    return {
        "is_integrated": int(getattr(props, "is_integrated", 0)),
        "compute_capability": f"{getattr(props, 'major', '?')}.{getattr(props, 'minor', '?')}",
        "torch_total_memory": int(getattr(props, "total_memory", 0)),
    }


def _integrated(
    index: int, props: Any, host: Host, memory: HostMemory, reserves: Reserves
) -> Device:
    fraction, fraction_source = igpu_memory_fraction(host.env)
    total = memory.total_bytes
    ceiling = None if total is None else int(total * fraction)
    available = None if ceiling is None or memory.available_bytes is None else min(
        ceiling, memory.available_bytes)
    return gpu_device(
        f"gpu:{index}", "cuda", str(props.name), unified=True,
        unified_reason="torch reports is_integrated=1: the GPU uses system RAM",
        total_bytes=total, ceiling_bytes=ceiling, available_bytes=available, reserves=reserves,
        sources={
            "total_bytes": f"host RAM ({memory.sources.get('total_bytes', 'unknown')})",
            "ceiling_bytes": f"fraction {fraction:g} x RAM ({fraction_source})",
            "available_bytes": "min(ceiling, host MemAvailable)",
        },
        details=dict(_details(props), memory_fraction=fraction),
    )


def _discrete(index: int, props: Any, torch: Any, reserves: Reserves, warnings: list[str]) -> Device:
    total = int(props.total_memory)
    free: int | None
    try:
        free, _ = torch.cuda.mem_get_info(index)
        free = int(free)
    except Exception as exc:
        warnings.append(f"gpu:{index}: torch.cuda.mem_get_info failed ({exc}): free memory unknown")
        free = None
    return gpu_device(
        f"gpu:{index}", "cuda", str(props.name), unified=False,
        unified_reason="torch reports is_integrated=0: a discrete GPU with its own memory",
        total_bytes=total, ceiling_bytes=total, available_bytes=free, reserves=reserves,
        sources={
            "total_bytes": "torch get_device_properties total_memory",
            "ceiling_bytes": "torch get_device_properties total_memory",
            "available_bytes": "torch.cuda.mem_get_info free",
            "budget_bytes": "available - reserve",
        },
        details=_details(props),
    )
