"""probe -> Machine: what memory exists here and how much of it a plan may use.

Finds the backends registered under `unimap.backends`, picks the highest-priority viable one
(or the one named by --backend / UNIMAP_BACKEND), lets it describe its GPUs, and adds the CPU.
On unified memory the CPU gets what remains of the shared pool after the GPU's share, never a
second copy of RAM. It reads the machine and changes nothing; it imports no mlx or torch itself.
"""

from __future__ import annotations

from unimap.backends import Backend, BackendUnavailable, Found, discover
from unimap.errors import BackendError
from unimap.host import Host
from unimap.hostmem import read_host_memory
from unimap.machine import BackendStatus, Machine, cpu_device
from unimap.settings import backend_choice, reserves


def probe(
    host: Host | None = None,
    *,
    backend: str | None = None,
    gpu_reserve: str | int | None = None,
    host_reserve: str | int | None = None,
) -> Machine:
    """Describe the machine. `backend` overrides the automatic choice; reserves are sizes
    ("2GiB") or byte counts that override UNIMAP_GPU_RESERVE / UNIMAP_HOST_RESERVE."""
    host = host or Host.real()
    held = reserves(host.env, gpu_reserve, host_reserve)
    choice, choice_source = backend_choice(host.env, backend)
    memory = read_host_memory(host)
    warnings = list(memory.warnings)
    statuses, chosen = select_backend(host, discover(), choice, choice_source)
    try:
        gpus = chosen.devices(host, memory, held, warnings)
    except BackendUnavailable as exc:
        raise BackendError(f"backend {chosen.name!r} cannot describe its devices: {exc}") from None
    cpu = cpu_device(host.cpu_name(), memory.total_bytes, memory.available_bytes,
                     memory.sources, held, gpus)
    devices = (*gpus, cpu)
    return Machine(
        system=host.system,
        os_name=host.os_name,
        arch=host.arch,
        backend=chosen.name,
        backend_source=choice_source,
        ram_total_bytes=memory.total_bytes,
        ram_available_bytes=memory.available_bytes,
        swap_total_bytes=memory.swap_total_bytes,
        swap_free_bytes=memory.swap_free_bytes,
        cgroup_limit_bytes=memory.cgroup_limit_bytes,
        devices=devices,
        backends=statuses,
        sources={f"ram_{k}" if not k.startswith(("swap", "cgroup")) else k: v
                 for k, v in memory.sources.items()},
        warnings=tuple(warnings),
    )


def _status(found: Found, host: Host) -> BackendStatus:
    if found.backend is None:
        return BackendStatus(found.name, found.distribution, None, found.load_error or "")
    try:
        return BackendStatus(found.name, found.distribution, int(found.backend.priority(host)), "")
    except BackendUnavailable as exc:
        return BackendStatus(found.name, found.distribution, None, str(exc))
    except Exception as exc:  # a third-party plugin's bug must not hide the other backends
        reason = f"its viability check failed: {type(exc).__name__}: {exc}"
        return BackendStatus(found.name, found.distribution, None, reason)


def select_backend(
    host: Host, found: list[Found], choice: str | None, choice_source: str
) -> tuple[tuple[BackendStatus, ...], Backend]:
    """Rank every found backend and pick one; BackendError when the choice cannot be honoured."""
    statuses = [_status(f, host) for f in found]
    viable = [i for i, s in enumerate(statuses) if s.viable]
    if choice is not None:
        named = [i for i, s in enumerate(statuses) if s.name == choice]
        if not named:
            known = ", ".join(s.name for s in statuses) or "none"
            raise BackendError(f"{choice_source} asks for backend {choice!r}, which is not "
                               f"installed; installed backends: {known}")
        usable = [i for i in named if statuses[i].viable]
        if not usable:
            others = ", ".join(statuses[i].name for i in viable) or "none"
            raise BackendError(f"{choice_source} asks for backend {choice!r}, but it cannot run "
                               f"here: {statuses[named[0]].reason}. Viable backends: {others}")
        pick = usable[0]
    elif viable:
        pick = max(viable, key=lambda i: statuses[i].priority or 0)
    else:
        raise BackendError("no backend can run on this machine (even 'cpu' failed to load); "
                           "reinstall unimap: pip install --force-reinstall unimap")
    statuses[pick] = BackendStatus(**{**statuses[pick].__dict__, "selected": True})
    backend = found[pick].backend
    assert backend is not None  # viable implies loaded
    return tuple(statuses), backend
