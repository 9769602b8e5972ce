"""Machines you do not have: named presets and what-if overrides, for planning anywhere.

`unimap plan --machine mac-64gb` plans for a machine described here instead of probing this one;
`--ram SIZE` and `--gpu-budget SIZE` change the RAM or GPU budget of a preset or of the probed
machine ("will this model run on a 48 GB Mac?"). Presets describe an idle machine (all RAM
available) and use the same budget rules as the probe; each says where its numbers come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from unimap.bandwidth import GB
from unimap.errors import ConfigError
from unimap.machine import Device, Machine, cpu_device, gpu_device
from unimap.settings import Reserves, igpu_memory_fraction
from unimap.units import GiB, MiB

H100_80GB_BYTES = 81559 * MiB  # what nvidia-smi and torch report for an H100 80GB HBM3


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "mac", "igpu", "discrete", "cpu"
    ram_bytes: int
    chip: str
    source: str  # where the numbers come from
    gpu_bytes: int = 0  # discrete GPUs only
    # the memory's read rate (bytes/s) and where it comes from; None: the chip's published figure
    bandwidth: tuple[int, str] | None = None
    host_bandwidth: tuple[int, str] | None = None  # discrete GPUs: the separate host RAM


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("mac-16gb", "mac", 16 * GiB, "Apple M-series GPU",
           "16 GiB unified; macOS 14/15 default GPU working set = 2/3 of RAM (FACTS.md)",
           bandwidth=(120 * GB, "Apple M4 spec (a current 16 GB Mac)")),
    Preset("mac-36gb", "mac", 36 * GiB, "Apple M-series GPU",
           "36 GiB unified; macOS 14/15 default GPU working set = 2/3 of RAM up to ~36 GB "
           "(FACTS.md)", bandwidth=(410 * GB, "Apple M4 Max 32-core GPU spec (a current 36 GB Mac)")),
    Preset("mac-64gb", "mac", 64 * GiB, "Apple M-series GPU",
           "64 GiB unified; macOS 14/15 default GPU working set = 3/4 of RAM above 36 GB "
           "(FACTS.md)", bandwidth=(273 * GB, "Apple M4 Pro spec (a current 64 GB Mac)")),
    Preset("mac-128gb", "mac", 128 * GiB, "Apple M-series GPU",
           "128 GiB unified; macOS 14/15 default working set = 3/4 of RAM (macOS 26 allows more: "
           "107.52 GiB was measured on one 128 GB Mac, FACTS.md)",
           bandwidth=(546 * GB, "Apple M4 Max 40-core GPU spec (a current 128 GB Mac)")),
    Preset("jetson-orin-64gb", "igpu", 64 * GiB, "NVIDIA Jetson AGX Orin (integrated)",
           "64 GiB LPDDR5 shared with the iGPU (NVIDIA's module spec); iGPU share = "
           "UNIMAP_IGPU_MEMORY_FRACTION / MISTRALRS_IGPU_MEMORY_FRACTION, default 0.75"),
    Preset("dgx-spark-128gb", "igpu", 128 * GiB, "NVIDIA GB10 (integrated)",
           "128 GiB LPDDR5x shared with the GB10 GPU (NVIDIA's DGX Spark spec); iGPU share as "
           "for Jetson, default 0.75"),
    Preset("h100-80gb", "discrete", 256 * GiB, "NVIDIA H100 80GB HBM3",
           "discrete 81559 MiB HBM3 (as nvidia-smi and torch report it) with 256 GiB of "
           "separate host RAM", gpu_bytes=H100_80GB_BYTES,
           host_bandwidth=(200 * GB, "assumed: a server's DDR5 host RAM")),
)}


def mac_working_set_bytes(ram_bytes: int) -> int:
    """macOS 14/15's default GPU working set: 2/3 of RAM up to 36 GiB, 3/4 above (FACTS.md)."""
    return ram_bytes * 2 // 3 if ram_bytes <= 36 * GiB else ram_bytes * 3 // 4


def preset_machine(name: str, env: Mapping[str, str], reserves: Reserves,
                   ram_bytes: int | None = None) -> Machine:
    """The machine a preset describes, optionally with a different amount of RAM."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"--machine {name!r} is not a preset; choose one of "
                          f"{', '.join(PRESETS)} (see `unimap plan --list-machines`)")
    if ram_bytes is not None:
        preset = replace(preset, ram_bytes=ram_bytes, source=f"{preset.source}; RAM set by --ram")
    return build(preset, env, reserves)


def build(preset: Preset, env: Mapping[str, str], reserves: Reserves) -> Machine:
    ram = preset.ram_bytes
    where = f"preset {preset.name}: {preset.source}"
    gpus: list[Device] = []
    if preset.kind == "mac":
        ceiling = mac_working_set_bytes(ram)
        gpus.append(gpu_device("gpu:0", "metal", preset.chip, unified=True,
                               unified_reason="Apple Silicon: CPU and GPU share one pool of RAM",
                               total_bytes=ram, ceiling_bytes=ceiling, available_bytes=ceiling,
                               reserves=reserves, sources={"ceiling_bytes": where},
                               wired_limit_bytes=0, bandwidth=preset.bandwidth,
                               details={"wired_limit_key": "iogpu.wired_limit_mb"}))
    elif preset.kind == "igpu":
        fraction, fraction_source = igpu_memory_fraction(env)
        ceiling = int(ram * fraction)
        gpus.append(gpu_device("gpu:0", "cuda", preset.chip, unified=True,
                               unified_reason="integrated GPU: uses system RAM",
                               total_bytes=ram, ceiling_bytes=ceiling, available_bytes=ceiling,
                               reserves=reserves,
                               sources={"ceiling_bytes": f"fraction {fraction:g} x RAM "
                                                         f"({fraction_source})"},
                               details={"memory_fraction": fraction}, bandwidth=preset.bandwidth))
    elif preset.kind == "discrete":
        gpus.append(gpu_device("gpu:0", "cuda", preset.chip, unified=False,
                               unified_reason="discrete GPU with its own memory",
                               total_bytes=preset.gpu_bytes, ceiling_bytes=preset.gpu_bytes,
                               available_bytes=preset.gpu_bytes, reserves=reserves,
                               sources={"ceiling_bytes": where}, bandwidth=preset.bandwidth))
    cpu = cpu_device("CPU", ram, ram, {"total_bytes": where, "available_bytes": "idle: all RAM"},
                     reserves, gpus, bandwidth=preset.host_bandwidth)
    backend = {"mac": "metal", "igpu": "cuda", "discrete": "cuda"}.get(preset.kind, "cpu")
    return Machine(system="Darwin" if preset.kind == "mac" else "Linux",
                   os_name=f"preset {preset.name}", arch="arm64" if preset.kind != "discrete" else "x86_64",
                   backend=backend, backend_source=f"preset {preset.name}", ram_total_bytes=ram,
                   ram_available_bytes=ram, swap_total_bytes=0, swap_free_bytes=0,
                   cgroup_limit_bytes=None, devices=(*gpus, cpu), backends=(),
                   sources={"ram_total_bytes": where})


def with_ram(machine: Machine, ram_bytes: int, env: Mapping[str, str], reserves: Reserves) -> Machine:
    """The probed machine's kind, with `ram_bytes` of RAM (an idle machine of that size)."""
    gpu = machine.gpus[0] if machine.gpus else None
    if gpu is None:
        kind, chip, gpu_bytes = "cpu", machine.cpu.description, 0
    elif gpu.backend == "metal":
        kind, chip, gpu_bytes = "mac", gpu.description, 0
    elif gpu.unified:
        kind, chip, gpu_bytes = "igpu", gpu.description, 0
    else:
        kind, chip, gpu_bytes = "discrete", gpu.description, gpu.total_bytes or 0
    preset = Preset("this-machine", kind, ram_bytes, chip, "this machine's kind with RAM set by --ram",
                    gpu_bytes)
    return build(preset, env, reserves)


def with_gpu_budget(machine: Machine, budget_bytes: int, reserves: Reserves) -> Machine:
    """Replace gpu:0's budget; on unified memory the CPU's share shrinks or grows with it."""
    if not machine.gpus:
        raise ConfigError("--gpu-budget: this machine has no GPU; pick a --machine preset that has "
                          "one (see `unimap plan --list-machines`)")
    gpu = machine.gpus[0]
    sources = dict(gpu.sources, budget_bytes="flag --gpu-budget")
    new_gpu = replace(gpu, budget_bytes=budget_bytes, sources=sources,
                      ceiling_bytes=max(gpu.ceiling_bytes or 0, budget_bytes + gpu.reserve_bytes))
    gpus = (new_gpu, *machine.gpus[1:])
    cpu = machine.cpu
    rate = cpu.bandwidth_bytes_per_s
    own = (rate, cpu.sources.get("bandwidth_bytes_per_s", "")) if rate and not cpu.unified else None
    new_cpu = cpu_device(cpu.description, cpu.total_bytes, cpu.available_bytes, cpu.sources,
                         reserves, gpus, bandwidth=own)
    return replace(machine, devices=(*gpus, new_cpu))
