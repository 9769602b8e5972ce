"""The Python API: `unimap.plan(...)`, a thin shell that runs probe -> inspect -> estimate -> plan.

`machine` may be None (probe this machine), a preset name ("mac-64gb") or a Machine. `ram` and
`gpu_budget` (sizes such as "48GiB" or byte counts) turn it into a what-if machine.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

from unimap.checks import foreign, short, whole_number
from unimap.device_map import parse_device_map
from unimap.errors import ArgumentTypeError, ConfigError, ModelError, UnimapError
from unimap.estimate import DEFAULT_SEQ_LEN, KvLayout, Options
from unimap.inspect import ModelSpec, inspect, trained_context
from unimap.machine import Machine
from unimap.machines import preset_machine, with_gpu_budget, with_ram
from unimap.plan import Plan, make_plan
from unimap.probe import probe
from unimap.settings import backend_choice, reserves
from unimap.units import MAX_BYTES, parse_size


def _size(value: str | int | None, flag: str) -> int | None:
    """A size argument: None, a byte count, or text such as "48GiB"; within what a machine has."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return whole_number(value, flag, 1, MAX_BYTES)
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{flag} must be a size such as '48GiB' or a byte count, not "
                                f"{short(value)}")
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if size < 1:
        raise ConfigError(f"{flag}: {value!r} is no memory at all")
    return size


def resolve_machine(
    machine: Machine | str | None = None, *, ram: str | int | None = None,
    gpu_budget: str | int | None = None, gpu_reserve: str | int | None = None,
    host_reserve: str | int | None = None, backend: str | None = None,
) -> Machine:
    """The machine to plan for: probed, a preset, a machine description (FILE.json written by
    `unimap doctor --json` on that machine), or given; then the what-if overrides."""
    env = os.environ
    if machine is not None and not isinstance(machine, Machine | str):
        raise ArgumentTypeError(f"machine must be a preset name, a machine description (FILE.json), "
                                f"a Machine or None, not {short(machine)}")
    held = reserves(env, gpu_reserve, host_reserve)
    ram_bytes, gpu_bytes = _size(ram, "--ram"), _size(gpu_budget, "--gpu-budget")
    if ram_bytes is not None and gpu_bytes is not None and gpu_bytes > ram_bytes:
        raise ConfigError(f"--gpu-budget ({gpu_bytes} bytes) is more than --ram ({ram_bytes} bytes); "
                          "the GPU's share comes out of the RAM")
    if isinstance(machine, str) and machine.lower().endswith(".json"):
        from unimap.cluster import machine_from_json  # `unimap doctor --json` on that machine

        found = machine_from_json(Path(machine).expanduser())
        if ram_bytes is not None:
            found = with_ram(found, ram_bytes, env, held)
        _check_backend_for_preset(found, backend, env)
    elif isinstance(machine, str):
        found = preset_machine(machine, env, held, ram_bytes)
        _check_backend_for_preset(found, backend, env)
    else:
        found = machine or probe(backend=backend, gpu_reserve=gpu_reserve, host_reserve=host_reserve)
        if ram_bytes is not None:
            found = with_ram(found, ram_bytes, env, held)
    return found if gpu_bytes is None else with_gpu_budget(found, gpu_bytes, held)


def _check_backend_for_preset(preset: Machine, flag: str | None, env: Any) -> None:
    """A preset describes its own backend: a backend named beside it must at least exist, and
    one named by flag must be the preset's (a what-if cannot run on another backend)."""
    from unimap.backends import discover

    choice, source = backend_choice(env, flag)
    if choice is None:
        return
    known = sorted(found.name for found in discover())
    if choice not in known:
        raise ConfigError(f"{source} asks for backend {choice!r}, which is not installed; installed "
                          f"backends: {', '.join(known)}")
    if flag is not None and choice != preset.backend:
        raise ConfigError(f"--backend {choice}: the preset is a {preset.backend} machine; drop "
                          "--backend, or pick a preset of that kind")


def plan(
    model: str | Path | ModelSpec,
    max_seq_len: int | None = None,
    max_batch_size: int = 1,
    max_num_images: int = 1,
    max_image_length: int = 1024,
    isq: int | None = None,
    device_map: str | int | list[str] | None = "auto",
    machine: Machine | str | None = None,
    *,
    dtype: str | None = None,
    kv_bits: int | None = None,
    kv_layout: KvLayout = "mlx-lm",
    max_kv_size: int | None = None,
    ram: str | int | None = None,
    gpu_budget: str | int | None = None,
    gpu_reserve: str | int | None = None,
    host_reserve: str | int | None = None,
    backend: str | None = None,
    cpu_moe: bool = False,
    n_cpu_moe: int | None = None,
) -> Plan:
    """Plan where `model` (a folder, a Hub repo id or a ModelSpec) runs on `machine`.

    `max_seq_len` (prompt plus reply, in tokens) defaults to 4096, or to the context the model
    was trained for when that is shorter. A mixture-of-experts model that does not fit the GPU
    may get its routed experts on the CPU (the plan chooses); `cpu_moe=True` puts every layer's
    routed experts there, `n_cpu_moe=N` those of layers 0..N-1 (llama.cpp's flags). Returns a
    Plan whether or not it fits; `plan.fits` says, `plan.require_fit()` raises."""
    if not isinstance(model, str | Path | ModelSpec) or (isinstance(model, str) and not model.strip()):
        raise ArgumentTypeError(f"model must be a folder, a .gguf file, a Hub repo id or a ModelSpec, "
                                f"not {short(model)}")
    mapping = parse_device_map(device_map)
    if not isinstance(cpu_moe, bool):
        raise ArgumentTypeError(f"cpu_moe must be True or False, not {short(cpu_moe)}")
    if cpu_moe and n_cpu_moe is not None:
        raise ConfigError("give --cpu-moe (every layer's routed experts on the CPU) or --n-cpu-moe "
                          "N (the first N layers'), not both")
    options = Options(max_seq_len=DEFAULT_SEQ_LEN if max_seq_len is None else max_seq_len,
                      max_batch_size=max_batch_size,
                      max_num_images=max_num_images, max_image_length=max_image_length,
                      isq=isq, dtype=dtype, kv_bits=kv_bits, kv_layout=kv_layout,
                      max_kv_size=max_kv_size)
    options.check()
    spec = model if isinstance(model, ModelSpec) else inspect(model)
    options = _within_training(spec, options, max_seq_len)
    target = resolve_machine(machine, ram=ram, gpu_budget=gpu_budget, gpu_reserve=gpu_reserve,
                             host_reserve=host_reserve, backend=backend)
    return make_plan(spec, target, options, mapping, spec.num_layers if cpu_moe else n_cpu_moe)


def _within_training(spec: ModelSpec, options: Options, asked: int | None) -> Options:
    """The default --max-seq-len never passes the context the model was trained for."""
    trained = trained_context(spec.config)
    if asked is None and trained is not None and trained[0] < options.max_seq_len:
        return replace(options, max_seq_len=trained[0])
    return options


PLAN_OVERRIDES = ("kv_layout", "max_kv_size", "ram", "gpu_budget", "gpu_reserve", "host_reserve", "backend",
                  "cpu_moe", "n_cpu_moe")


def load(
    model: str | Path,
    device_map: str | int | list[str] | None = "auto",
    max_seq_len: int | None = None,
    max_batch_size: int = 1,
    max_num_images: int = 1,
    max_image_length: int = 1024,
    isq: int | None = None,
    machine: Machine | str | None = None,
    *,
    dtype: str | None = None,
    kv_bits: int | None = None,
    progress: Any = None,
    planned: Plan | None = None,
    before_apply: Any = None,
    **overrides: Any,
) -> tuple[Any, Any, Plan]:
    """Plan, then load `model` (a folder, a .gguf file or a Hub repo id) as the plan says.

    Returns (model, tokenizer, plan); for a vision-language model (through mlx-vlm, the
    `unimap[vision]` extra) the tokenizer is mlx-vlm's processor, which `generate` takes with
    `images=[...]`. `max_num_images` and `max_image_length` size the plan's vision working set
    and image tokens. Raises DoesNotFitError, before loading anything, when the
    plan does not fit. `progress(done, total, what)` is called as parts are materialized.
    `planned` is a plan already made for this model (the other mapping arguments are then unused).
    `before_apply(model)` is called with the lazily built model before any weight is evaluated
    (a pipeline stage keeps its layers there)."""
    from unimap import runtime, vlm
    from unimap.generate import keep_caches_unpinned

    unknown = sorted(set(overrides) - set(PLAN_OVERRIDES))
    if unknown:
        raise ArgumentTypeError(f"load() got unknown argument(s) {', '.join(unknown)}; it takes "
                                f"plan()'s: {', '.join(PLAN_OVERRIDES)}")
    if planned is not None and not isinstance(planned, Plan):
        raise ArgumentTypeError(f"planned must be a Plan (from unimap.plan), not {short(planned)}")
    if progress is not None and not callable(progress):
        raise ArgumentTypeError(f"progress must be callable as progress(done, total, what), not "
                                f"{short(progress)}")
    if planned is None:
        planned = plan(model, max_seq_len, max_batch_size, max_num_images, max_image_length, isq,
                       device_map, machine, dtype=dtype, kv_bits=kv_bits, **overrides)
    planned.require_fit()
    options = planned.estimate.options
    path = Path(model).expanduser()
    source = str(path) if path.is_dir() else str(model)
    if path.is_file() and path.suffix.lower() == ".gguf":
        loaded, tokenizer = runtime.gguf_model(path)
    elif planned.estimate.vision_weight_bytes:  # a vision tower: mlx-vlm's model and processor
        if options.kv_bits is not None:
            raise ConfigError(vlm.NO_KV_BITS)
        loaded, tokenizer = vlm.lazy_vlm(source)
    else:
        loaded, tokenizer = runtime.lazy_model(source)
    isq, dtype = options.isq, options.dtype
    if isq is not None:  # the language model only: the plan keeps the vision tower as stored
        runtime.quantize_in_place(loaded.language_model if vlm.is_vlm(loaded) else loaded, isq)
    if dtype is not None:
        runtime.cast_floats(loaded, dtype)
    if before_apply is not None:
        before_apply(loaded)
    limits = runtime.Limits()
    try:
        placement = runtime.apply_plan(loaded, planned, limits, progress)
    except UnimapError:
        limits.release()
        raise
    except (ValueError, RuntimeError) as exc:  # the tensors' data cannot be read as the headers say
        limits.release()
        raise ModelError(f"{model}: loading its weights failed ({foreign(exc)}); the files are "
                         "incomplete or corrupt: re-download them") from None
    except BaseException:
        limits.release()
        raise
    object.__setattr__(loaded, "_unimap", runtime.Mapped(planned, placement, limits))
    keep_caches_unpinned(loaded)  # plain mlx-lm generation fills the caches the plan priced
    weakref.finalize(loaded, limits.release)  # a model let go of gives its limits back
    return loaded, tokenizer, planned


def plan_cluster(
    model: str | Path | ModelSpec,
    hosts: str | None = None,
    ranks: int | None = None,
    max_seq_len: int | None = None,
    max_batch_size: int = 1,
    isq: int | None = None,
    *,
    mode: str = "pipeline",
    dtype: str | None = None,
    kv_bits: int | None = None,
    max_kv_size: int | None = None,
    gpu_reserve: str | int | None = None,
    host_reserve: str | int | None = None,
    backend: str | None = None,
    machines: list[tuple[str, Machine]] | None = None,
) -> Any:
    """Plan `model` across ranks (or across `machines`, (name, Machine) pairs in rank order):
    `ranks` processes on this machine, or `hosts` (a
    comma-separated list of presets, machine descriptions written by `unimap doctor --json`, or
    127.0.0.1; or an MLX hostfile). `mode` is "pipeline" (contiguous layer ranges, chosen to hold
    the longest context) or "tensor" (every rank holds 1/N of each layer). Returns a ClusterPlan
    (unimap.cluster) whether or not it fits."""
    from unimap.cluster import cluster_machines
    from unimap.cluster import plan_cluster as make_cluster_plan

    if mode not in ("pipeline", "tensor"):
        raise ConfigError(f"mode {short(mode)}: use 'pipeline' or 'tensor'")
    if ranks is None and hosts is None and machines is None:
        raise ConfigError("give ranks (processes on this machine) or hosts to plan a cluster")
    options = Options(max_seq_len=DEFAULT_SEQ_LEN if max_seq_len is None else max_seq_len,
                      max_batch_size=max_batch_size, isq=isq, dtype=dtype, kv_bits=kv_bits,
                      max_kv_size=max_kv_size)
    options.check()
    spec = model if isinstance(model, ModelSpec) else inspect(model)
    options = _within_training(spec, options, max_seq_len)

    def this_machine() -> Machine:
        return resolve_machine(None, gpu_reserve=gpu_reserve, host_reserve=host_reserve,
                               backend=backend)

    def preset(name: str) -> Machine:
        return resolve_machine(name, gpu_reserve=gpu_reserve, host_reserve=host_reserve)

    if machines is None:
        machines = cluster_machines(hosts, ranks, this_machine, preset)
    return make_cluster_plan(spec, machines, options, mode)  # type: ignore[arg-type]


def gpu_group(planned: Plan) -> tuple[Any, Plan]:
    """On a machine with several CUDA GPUs, the tensor-parallel group (a ClusterPlan, one rank
    per GPU over NCCL) that runs the model instead of `planned` when one process would put part
    of it on the CPU; else None, and `planned` with the reason in its notes where one applies.
    UNIMAP_NO_NCCL=1 (or mistral.rs's MISTRALRS_NO_NCCL=1) keeps one process."""
    if planned.spec is None or not planned.spills_beside_gpus:  # the common case: no import
        return None, planned
    from unimap.cluster import gpu_group as group_of

    group, why = group_of(planned.spec, planned, os.environ)
    return group, (replace(planned, notes=(*planned.notes, why)) if why else planned)
