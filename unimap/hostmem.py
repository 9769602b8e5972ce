"""Host RAM and swap, container-aware.

Linux: /proc/meminfo (MemTotal, MemAvailable, swap), narrowed by the process's cgroup (v1 or v2)
memory limit, because psutil alone ignores container limits. macOS: `sysctl hw.memsize` and
psutil. An unreadable or garbled source makes its numbers unknown (None) with a warning; nothing
is guessed. This module only reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unimap.host import CGROUP_V1_UNLIMITED_BYTES, Host
from unimap.units import format_bytes


@dataclass(frozen=True)
class HostMemory:
    """RAM and swap of the host as this process may use them. None = unknown."""

    total_bytes: int | None
    available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None
    cgroup_limit_bytes: int | None = None
    cgroup_version: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Cgroup:
    version: int
    folder: str
    limit_bytes: int | None  # None: no limit set
    working_set_bytes: int | None  # usage minus reclaimable file cache


def read_host_memory(host: Host) -> HostMemory:
    """RAM and swap as seen by this process on `host`."""
    if host.system == "Linux":
        return _linux(host)
    if host.system == "Darwin":
        return _macos(host)
    return _psutil_only(host, [])


# ---------------------------------------------------------------- Linux


def _linux(host: Host) -> HostMemory:
    warnings: list[str] = []
    info = _meminfo(host, warnings)
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    sources = {
        "total_bytes": "/proc/meminfo MemTotal",
        "available_bytes": "/proc/meminfo MemAvailable",
        "swap_total_bytes": "/proc/meminfo SwapTotal",
        "swap_free_bytes": "/proc/meminfo SwapFree",
    }
    if info and available is None:
        warnings.append("/proc/meminfo has no MemAvailable (kernel older than 3.14?): "
                        "available memory is unknown")
    group = _cgroup(host, warnings)
    if group is not None and group.limit_bytes is not None:
        limit = group.limit_bytes
        where = f"cgroup v{group.version} {group.folder}"
        sources["cgroup_limit_bytes"] = where
        if total is None or limit < total:
            total, sources["total_bytes"] = limit, f"{where} limit"
        room = None if group.working_set_bytes is None else max(0, limit - group.working_set_bytes)
        if room is not None and (available is None or room < available):
            available = room
            sources["available_bytes"] = f"{where}: limit minus working set"
    return HostMemory(
        total_bytes=total,
        available_bytes=available,
        swap_total_bytes=info.get("SwapTotal"),
        swap_free_bytes=info.get("SwapFree"),
        cgroup_limit_bytes=group.limit_bytes if group else None,
        cgroup_version=group.version if group else None,
        sources=sources,
        warnings=tuple(warnings),
    )


def _meminfo(host: Host, warnings: list[str]) -> dict[str, int]:
    try:
        text = host.read_text("/proc/meminfo")
    except OSError as exc:
        warnings.append(f"cannot read /proc/meminfo ({exc.strerror or exc}): RAM is unknown")
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if parts[1:] == ["kB"] else 1
            values[key.strip()] = int(parts[0]) * scale
    if "MemTotal" not in values:
        warnings.append("/proc/meminfo has no readable MemTotal line: RAM is unknown")
    return values


def _cgroup(host: Host, warnings: list[str]) -> _Cgroup | None:
    try:
        lines = host.read_text("/proc/self/cgroup").splitlines()
    except OSError:
        return None  # not in a cgroup hierarchy we can see: no container limit applies
    v1_path = v2_path = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            v1_path = parts[2]
        elif parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
    try:
        if v1_path is not None:
            return _cgroup_v1(host, v1_path)
        if v2_path is not None:
            return _cgroup_v2(host, v2_path)
    except _Unreadable as exc:
        warnings.append(f"container memory limit unknown: {exc}")
    return None


class _Unreadable(Exception):
    pass


def _read_int(host: Host, path: str) -> int | None:
    """An integer file; None for "max" (no limit); _Unreadable for anything else."""
    try:
        text = host.read_text(path).strip()
    except OSError as exc:
        raise _Unreadable(f"cannot read {path} ({exc.strerror or exc})") from None
    if text == "max":
        return None
    if not text.isdigit():
        raise _Unreadable(f"{path} holds {text[:40]!r}, not a number of bytes")
    return int(text)


def _stat(host: Host, path: str) -> dict[str, int]:
    try:
        text = host.read_text(path)
    except OSError:
        return {}
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _existing(host: Host, mount: str, path: str, probe_file: str) -> str:
    """The cgroup folder for `path`; inside a container it is often the mount itself."""
    folder = f"{mount}/{path.strip('/')}".rstrip("/")
    if (host.root / folder.lstrip("/") / probe_file).exists():
        return folder
    return mount


def _cgroup_v1(host: Host, path: str) -> _Cgroup:
    folder = _existing(host, "/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    limit = _read_int(host, f"{folder}/memory.limit_in_bytes")
    stat = _stat(host, f"{folder}/memory.stat")
    # hierarchical_memory_limit already folds in every ancestor's limit
    limits = [v for v in (limit, stat.get("hierarchical_memory_limit")) if v is not None]
    limit = min(limits) if limits else None
    if limit is None or limit >= CGROUP_V1_UNLIMITED_BYTES:
        return _Cgroup(1, folder, None, None)
    usage = _read_int(host, f"{folder}/memory.usage_in_bytes") or 0
    working_set = max(0, usage - stat.get("total_inactive_file", 0))
    return _Cgroup(1, folder, limit, working_set)


def _cgroup_v2(host: Host, path: str) -> _Cgroup | None:
    mount = "/sys/fs/cgroup"
    folder = _existing(host, mount, path, "memory.max")
    if not (host.root / folder.lstrip("/") / "memory.max").exists():
        return None  # the memory controller is not enabled for this group
    best: tuple[int, str] | None = None
    here = folder
    while True:  # a parent's limit binds too: walk up to the mount
        limit_path = f"{here}/memory.max"
        if (host.root / limit_path.lstrip("/")).exists():
            limit = _read_int(host, limit_path)
            if limit is not None and (best is None or limit < best[0]):
                best = (limit, here)
        if here == mount or "/" not in here.removeprefix(mount):
            break
        here = here.rsplit("/", 1)[0]
    if best is None:
        return _Cgroup(2, folder, None, None)
    limit, where = best
    usage = _read_int(host, f"{where}/memory.current") or 0
    working_set = max(0, usage - _stat(host, f"{where}/memory.stat").get("inactive_file", 0))
    return _Cgroup(2, where, limit, working_set)


# ---------------------------------------------------------------- macOS and others


def _macos(host: Host) -> HostMemory:
    warnings: list[str] = []
    raw = host.sysctl("hw.memsize")
    memsize = int(raw) if raw is not None and raw.strip().isdigit() else None
    if memsize is None:
        shown = "nothing" if raw is None else repr(raw[:40])
        warnings.append(f"sysctl hw.memsize printed {shown}; RAM size taken from psutil instead")
    memory = _psutil_only(host, warnings)
    if memsize is None:
        return memory
    sources = dict(memory.sources, total_bytes="sysctl hw.memsize")
    return HostMemory(memsize, memory.available_bytes, memory.swap_total_bytes,
                      memory.swap_free_bytes, sources=sources, warnings=memory.warnings)


def _psutil_only(host: Host, warnings: list[str]) -> HostMemory:
    try:
        vm = host.virtual_memory()
    except Exception as exc:  # psutil raises platform-specific errors
        warnings.append(f"psutil could not read memory ({exc}): RAM is unknown")
        return HostMemory(None, None, None, None, warnings=tuple(warnings))
    if vm.available_bytes <= 0:
        # mistral.rs read 0 MB free on macOS and refused to load; never plan on such a reading
        warnings.append(f"psutil reports {format_bytes(vm.available_bytes)} available: "
                        "available memory is unknown")
    available = vm.available_bytes if vm.available_bytes > 0 else None
    sources = {key: "psutil" for key in
               ("total_bytes", "available_bytes", "swap_total_bytes", "swap_free_bytes")}
    return HostMemory(vm.total_bytes, available, vm.swap_total_bytes, vm.swap_free_bytes,
                      sources=sources, warnings=tuple(warnings))
