"""doctor: what this machine is and what it allows, as a list of checks.

Builds on probe() and adds what only a live machine can tell: the MLX install and its active
device, whether MLX's CPU matmul runs on a slow reference BLAS (Linux, a sub-second benchmark),
the Hugging Face cache and free disk, and the sysctl command that would raise a Mac's wired
limit. It returns data and changes nothing; the CLI renders it. A report is broken (exit 1) when
some check is an error, i.e. unimap could not plan or run here.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from unimap.backends import metal
from unimap.host import Host, MlxInfo
from unimap.machine import Device, Machine
from unimap.preload import find_openblas
from unimap.units import GiB, format_bytes

Status = Literal["ok", "info", "warn", "error"]

# fp32 matmul below this rate means a reference BLAS: measured here 1.6-2.9 GFLOP/s with the
# BLAS bundled in mlx-cpu wheels, 27-114 GFLOP/s with OpenBLAS preloaded (docs/BENCHMARKS.md).
SLOW_BLAS_GFLOPS = 10.0
BLAS_SHAPE = (128, 1024, 1024)  # (m, k, n): 0.27 GFLOP, about 0.1 s a run on reference BLAS
LOW_DISK_BYTES = 10 * GiB


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, how it stands, and what to do about it."""

    name: str
    status: Status
    message: str
    advice: str = ""


@dataclass(frozen=True)
class BlasReport:
    """MLX's CPU matmul speed and the BLAS library behind it."""

    library: str  # path of the BLAS mapped into this process, or "unknown"
    kind: str  # "reference", "openblas", "accelerate", "mkl", "unknown"
    gflops: float
    seconds: float  # one matmul
    shape: tuple[int, int, int]
    openblas_path: str | None  # an OpenBLAS found on disk that LD_PRELOAD could use


@dataclass(frozen=True)
class Report:
    machine: Machine
    mlx: MlxInfo
    blas: BlasReport | None
    hf_cache_dir: str
    hf_cache_writable: bool
    disk_free_bytes: int | None
    checks: tuple[Check, ...]

    @property
    def broken(self) -> bool:
        return any(c.status == "error" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["machine"] = self.machine.to_dict()
        data["broken"] = self.broken
        return data


def diagnose(host: Host, machine: Machine, bench: bool = True) -> Report:
    """Run every check. `bench=False` skips the BLAS benchmark (it needs this machine's MLX)."""
    mlx = host.mlx()
    blas = measure_blas(host) if bench and host.is_real and host.system == "Linux" and not mlx.error else None
    cache = hf_cache_dir(host.env)
    writable = _writable(cache)
    free = _disk_free(cache)
    checks = [
        *_backend_checks(machine),
        *_memory_checks(machine),
        *_mlx_checks(host, machine, mlx),
        *_blas_checks(host, bench, blas),
        *_storage_checks(cache, writable, free),
        *(Check("probe", "warn", w) for w in machine.warnings),
    ]
    return Report(machine, mlx, blas, str(cache), writable, free, tuple(checks))


# ---------------------------------------------------------------- checks


def _backend_checks(machine: Machine) -> list[Check]:
    chosen = next(b for b in machine.backends if b.selected)
    msg = f"{chosen.name} (priority {chosen.priority}; {machine.backend_source})"
    return [Check("backend", "ok", msg)]


def _memory_checks(machine: Machine) -> list[Check]:
    checks = []
    evidence = "; ".join(f"{g.name}: {g.unified_reason}" for g in machine.gpus) or "no GPU"
    checks.append(Check("unified memory", "info", f"{'yes' if machine.unified else 'no'} ({evidence})"))
    for device in machine.devices:
        checks.append(_budget_check(device))
        if device.backend == "metal":
            checks.append(_wired_check(machine, device))
    return checks


def _budget_check(device: Device) -> Check:
    name = f"{device.name} budget"
    if device.budget_bytes is None:
        return Check(name, "error", f"unknown ({device.description}): unimap cannot plan for it",
                     "see the warnings below; plan with an explicit --gpu-budget/--ram instead")
    msg = (f"{format_bytes(device.budget_bytes)} of {format_bytes(device.total_bytes)} "
           f"({device.description}; ceiling {format_bytes(device.ceiling_bytes)}, available "
           f"{format_bytes(device.available_bytes)}, reserve {format_bytes(device.reserve_bytes)})")
    if device.budget_bytes == 0:
        return Check(name, "warn", msg, "nothing can be placed here: free memory or lower the reserve")
    return Check(name, "ok", msg)


def _wired_check(machine: Machine, gpu: Device) -> Check:
    """Show the sysctl, and the command to raise it when that would give the GPU more room."""
    key = gpu.details.get("wired_limit_key")
    setting = ("unknown" if gpu.wired_limit_bytes is None else "0 (macOS default)"
               if gpu.wired_limit_bytes == 0 else format_bytes(gpu.wired_limit_bytes))
    msg = f"sysctl {key or 'iogpu.wired_limit_mb'} = {setting}; ceiling {format_bytes(gpu.ceiling_bytes)}"
    ram = machine.ram_total_bytes
    if ram is None or gpu.ceiling_bytes is None:
        return Check("wired limit", "info", msg)
    target = metal.suggested_wired_limit_bytes(ram)
    if target - gpu.ceiling_bytes < 1 * GiB:
        return Check("wired limit", "ok", msg)
    advice = (f"to let the GPU hold {format_bytes(target - gpu.ceiling_bytes)} more, run "
              f"`{metal.sysctl_command(target, key)}` (lasts until reboot; leaves "
              f"{format_bytes(ram - target)} for macOS), then restart unimap")
    return Check("wired limit", "info", msg, advice)


def _mlx_checks(host: Host, machine: Machine, mlx: MlxInfo) -> list[Check]:
    if mlx.error is not None:
        return [Check("mlx", "error", f"MLX cannot be imported: {mlx.error}",
                      "reinstall it: pip install --force-reinstall 'mlx[cpu]' (Linux) or mlx (macOS)")]
    msg = f"MLX {mlx.version}, default device {mlx.default_device}, GPU available: {mlx.gpu_available}"
    if machine.gpus and not mlx.gpu_available:
        return [Check("mlx", "warn", msg, "this MLX build cannot use the GPU that "
                      f"{machine.backend} found; install MLX's GPU build (pip install 'unimap[cuda]')")]
    return [Check("mlx", "ok", msg)]


def _blas_checks(host: Host, bench: bool, blas: BlasReport | None) -> list[Check]:
    if host.system != "Linux":
        return []
    if blas is None:
        why = "skipped (--no-bench)" if not bench else "not measured (not this machine, or no MLX)"
        return [Check("cpu matmul", "info", why)]
    m, k, n = blas.shape
    msg = (f"{blas.gflops:.1f} GFLOP/s fp32 ({m}x{k}x{n}, {blas.seconds * 1000:.1f} ms) "
           f"on {blas.kind} BLAS ({os.path.basename(blas.library)})")
    if blas.gflops >= SLOW_BLAS_GFLOPS:
        return [Check("cpu matmul", "ok", msg)]
    if blas.openblas_path:
        return [Check("cpu matmul", "info", msg,
                      f"`unimap run` preloads the installed OpenBLAS ({blas.openblas_path}) for "
                      f"its CPU layers; other MLX programs: start them with "
                      f"LD_PRELOAD={blas.openblas_path}")]
    advice = ("layers placed on the CPU will be slow; install OpenBLAS (Debian/Ubuntu: "
              "sudo apt install libopenblas0-pthread): `unimap run` then preloads it")
    return [Check("cpu matmul", "warn", msg, advice)]


def _storage_checks(cache: Path, writable: bool, free: int | None) -> list[Check]:
    checks = [Check("hf cache", "ok" if writable else "warn", f"{cache} "
                    f"({'writable' if writable else 'not writable'})",
                    "" if writable else "set HF_HOME or HF_HUB_CACHE to a writable folder")]
    if free is None:
        checks.append(Check("disk", "warn", "free disk space unknown"))
    else:
        low = free < LOW_DISK_BYTES
        checks.append(Check("disk", "warn" if low else "ok", f"{format_bytes(free)} free",
                            "models will not fit in the cache; free some space" if low else ""))
    return checks


# ---------------------------------------------------------------- measurements


def measure_blas(host: Host) -> BlasReport:
    """Time an fp32 matmul on MLX's CPU stream (best of three, after one warm-up)."""
    import mlx.core as mx

    m, k, n = BLAS_SHAPE
    with mx.stream(mx.cpu):
        a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
        mx.eval(a, b, a @ b)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - start)
    library, kind = blas_library(host)
    return BlasReport(library, kind, 2 * m * k * n / best / 1e9, best, BLAS_SHAPE,
                      find_openblas(host))


def blas_library(host: Host) -> tuple[str, str]:
    """The BLAS that serves this process: a preloaded OpenBLAS wins over MLX's bundled one."""
    try:
        maps = host.read_text("/proc/self/maps")
    except OSError:
        return "unknown", "unknown"
    names = {os.path.basename(line.split()[-1]): line.split()[-1] for line in maps.splitlines()
             if "blas" in line.lower() or "mkl" in line.lower()}
    # numpy's private libscipy_openblas does not serve MLX: only a libopenblas* can interpose
    for prefix, kind in (("libopenblas", "openblas"), ("libmkl", "mkl"), ("libblas", "reference")):
        for name in sorted(names):
            if name.lower().startswith(prefix):
                return names[name], kind
    return "unknown", "unknown"


def hf_cache_dir(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads, by the same rules it uses, read from `env`."""
    home = env.get("HOME") or os.path.expanduser("~")

    def expand(path: str) -> Path:
        return Path(home + path[1:] if path.startswith("~") else path)

    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return expand(explicit)
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return expand(env.get("HF_HOME") or os.path.join(xdg, "huggingface")) / "hub"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(cache: Path) -> bool:
    """Whether the cache (or the folder it would be created in) accepts new files."""
    existing = _nearest_existing(cache)
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _disk_free(cache: Path) -> int | None:
    try:
        return shutil.disk_usage(_nearest_existing(cache)).free
    except OSError:
        return None
