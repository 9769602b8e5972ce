"""plan -> Plan: which layer lives on which device, the wired limit, and why. A pure function.

Rules (DESIGN.md): the non-mapped parts (embeddings, lm_head, norms) and the vision tower go to
the first GPU first; decoder layers fill the GPUs in order, each with its KV cache share; the
rest runs on the CPU as one contiguous block. Each device that runs layers also holds one
activation working set and one KV growth transient. When everything fits on the GPU the plan says
so and the runtime changes nothing. On Metal the plan picks the wired limit (what the GPU part
needs plus the reserve, never above the ceiling). A plan that does not fit carries the breakdown
and computed ways out (largest max_seq_len, --isq bits, --kv-bits, iogpu.wired_limit_mb).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from unimap.bandwidth import crossing_seconds
from unimap.checks import MAX_SEQ_LEN, short
from unimap.device_map import DeviceMap, format_device_map
from unimap.errors import ArgumentTypeError, ConfigError, UnimapError
from unimap.estimate import (
    ISQ_BITS,
    KV_BITS,
    MIN_KV_SIZE,
    Estimate,
    Kernel,
    Options,
    estimate,
    one_pass_prefill,
)
from unimap.inspect import ModelSpec
from unimap.machine import Device, Machine
from unimap.render import device_layers, layer_span, speed_line
from unimap.units import MiB, format_bytes

# Arrays outside the parameters, KV and working sets: scalars, RoPE tables, sampler state. The
# loading peak measured 16 bytes above weights plus one converted layer (tools/gpu_check.py on
# the CPU build); 64 KiB keeps the prediction above such strays with room to spare.
SMALL_ARRAYS_BYTES = 64 * 1024
# Room under the peak for this many of the largest arrays a prefill chunk makes: MLX checks its
# memory limit after an allocation. Held this way, 123 families' twins run 3 times each went past
# the limit by up to 1.72 such arrays (mamba, whose need with nothing in flight is above it) and
# never past their plans (tools/sweep_families.py --held; docs/BENCHMARKS.md, "Run to run").
LIMIT_HEADROOM_ARRAYS = 2


class DoesNotFitError(UnimapError):
    """The model does not fit this machine under these options; the message has the ways out."""

    exit_code = 3


@dataclass(frozen=True)
class DevicePlan:
    name: str  # "gpu:0", ..., "cpu"
    description: str
    budget_bytes: int
    layers: tuple[int, ...]
    weight_bytes: int  # layer weights, plus non-mapped parts and vision tower where they live
    kv_bytes: int
    kv_growth_bytes: int
    activation_bytes: int
    load_transient_bytes: int = 0  # a stored unit held beside its converted form while loading
    growth_arrays_bytes: int = 0  # the chunk's arrays alive while a layer's cache grows
    expert_layers: tuple[int, ...] = ()  # layers whose routed experts alone live here

    @property
    def working_bytes(self) -> int:
        """Above weights and KV: a working set, or one layer's cache being copied to grow
        beside the chunk's arrays, whichever is larger (they do not overlap in time)."""
        growing = self.kv_growth_bytes + self.growth_arrays_bytes if self.kv_growth_bytes else 0
        return max(self.activation_bytes, growing)

    @property
    def used_bytes(self) -> int:
        """The larger of running (weights, KV and the working bytes) and loading (weights plus
        the unit being converted)."""
        return self.weight_bytes + max(self.kv_bytes + self.working_bytes, self.load_transient_bytes)

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes


@dataclass(frozen=True)
class LayerPlacement:
    index: int
    device: str  # where the layer runs: attention, norms, router, shared experts, its KV cache
    kind: str
    weight_bytes: int  # the whole layer, routed experts included
    kv_bytes: int
    experts_device: str | None = None  # where its routed experts live (None: no routed experts)
    expert_bytes: int = 0


@dataclass(frozen=True)
class Speed:
    """A decode step's roofline for one sequence at the planned context: the bytes each device
    reads per token (dense weights, the KV cache, the experts a token routes to, the head) over
    its memory bandwidth, plus the hand-overs between devices. An upper bound on tokens/s
    (measured decode on the development VM reaches 59-73 % of it, docs/BENCHMARKS.md)."""

    read_bytes: dict[str, int]
    bandwidth_bytes_per_s: dict[str, int | None]
    crossings: int
    crossing_seconds: float
    sources: tuple[str, ...]  # where the bandwidths and the crossing cost come from

    @property
    def seconds(self) -> float | None:
        """Seconds a token takes; None when a device's bandwidth is unknown."""
        if any(self.bandwidth_bytes_per_s.get(d) is None for d, n in self.read_bytes.items() if n):
            return None
        reads = sum(n / (self.bandwidth_bytes_per_s[d] or 1) for d, n in self.read_bytes.items() if n)
        return reads + self.crossings * self.crossing_seconds

    @property
    def tokens_per_s(self) -> float | None:
        seconds = self.seconds
        return None if not seconds else 1 / seconds


@dataclass(frozen=True)
class Plan:
    model: str
    machine: Machine
    estimate: Estimate
    mode: str  # "auto" or the manual map, e.g. "0:16"
    fits: bool
    all_on_gpu: bool  # nothing moves off the first GPU: the runtime changes nothing
    wired_limit_bytes: int | None
    devices: tuple[DevicePlan, ...]
    layers: tuple[LayerPlacement, ...]
    non_mapped_device: str
    vision_device: str | None
    cpu_dtype: str | None = None  # the CPU layers' compute dtype where it changes; None = unchanged
    problem: str = ""  # why it does not fit
    ways_out: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    decode: Speed | None = None  # the predicted decode speed of this placement
    # what the plan was made from, to answer "what else would fit" later (not part of its value)
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)

    @property
    def peak_bytes(self) -> int:
        """The process's predicted peak: everything resident plus the largest working set."""
        working = max((d.working_bytes for d in self.devices if d.layers or d.activation_bytes),
                      default=0)
        weights = sum(d.weight_bytes for d in self.devices)
        loading = weights + max((d.load_transient_bytes for d in self.devices), default=0)
        running = weights + sum(d.kv_bytes for d in self.devices) + working
        return max(running, loading) + SMALL_ARRAYS_BYTES

    @property
    def memory_limit_bytes(self) -> int:
        """The MLX memory limit a loaded model runs under (unimap.runtime): the peak less room
        for the largest arrays a prefill chunk makes (LIMIT_HEADROOM_ARRAYS), never below what
        stays resident. MLX lets a run allocate ahead of the arrays it is still computing (up to
        ten operations on the CPU and CUDA, command buffers on Metal), so one run's peak differs
        from the next (by up to 10 % over five runs of 123 families' twins, docs/BENCHMARKS.md);
        over its memory limit MLX waits for that work to finish instead. It checks the limit
        after each allocation, so a run passes it by what was allocated before the check."""
        resident = (sum(d.weight_bytes + d.kv_bytes for d in self.devices) + SMALL_ARRAYS_BYTES)
        headroom = LIMIT_HEADROOM_ARRAYS * self.estimate.largest_array_bytes
        return max(self.peak_bytes - headroom, resident)

    def room_for(self, tokens: int) -> list[str]:
        """Settings that would hold a sequence of `tokens` on this plan's machine: the longest
        --max-seq-len that fits when it reaches `tokens`, else the largest --max-kv-size
        rotating window that fits a run that long. Nothing past the trained context (a
        rotating cache does not stop the positions from growing past it)."""
        if self.spec is None:
            return []
        spec, options = self.spec, self.estimate.options
        trained = self.estimate.trained_context
        upper = min(MAX_SEQ_LEN, trained if trained is not None else MAX_SEQ_LEN)
        if tokens > upper:
            return []
        if _fits(spec, self.machine, replace(options, max_seq_len=tokens)):
            seq = _largest(lambda n: _fits(spec, self.machine, replace(options, max_seq_len=n)), upper)
            return [f"--max-seq-len {max(seq, tokens)} (the longest that fits)"]
        if options.kv_bits is not None or options.kv_layout != "mlx-lm":
            return []
        long_run = replace(options, max_seq_len=tokens)
        window = _largest(lambda n: _fits(spec, self.machine, replace(
            long_run, max_kv_size=max(n, MIN_KV_SIZE))), tokens - 1)
        if not window:
            return []
        window = max(window, MIN_KV_SIZE)
        return [f"--max-kv-size {window} --max-seq-len {tokens} (a rotating cache: the model sees "
                f"the latest {window} tokens)"]

    def device(self, name: str) -> DevicePlan:
        return next(d for d in self.devices if d.name == name)

    @property
    def spills_beside_gpus(self) -> bool:
        """An automatic plan on a machine of several CUDA GPUs that does not keep the model on
        the one its process drives: a rank per GPU may hold it (unimap.cluster.gpu_group)."""
        gpus = sum(d.kind == "gpu" for d in self.machine.devices)
        return (self.mode == "auto" and self.machine.backend == "cuda" and gpus > 1
                and not self.all_on_gpu)

    def require_fit(self) -> Plan:
        if not self.fits:
            raise DoesNotFitError(self.explain())
        return self

    def explain(self) -> str:
        """The plan in a few lines: whether it fits and where, what each device needs of its
        budget, and the notes; for a plan that does not fit, why and the ways out."""
        if self.fits:
            where = (f"all on {self.devices[0].name}" if self.all_on_gpu else
                     ", ".join(f"{d.name} layers {device_layers(d)}" for d in self.devices
                               if d.layers or d.expert_layers))
            lines = [f"{self.model} fits {self.machine.os_name}: {where}; predicted peak "
                     f"{format_bytes(self.peak_bytes)}"]
        else:
            lines = [f"{self.model} does not fit {self.machine.os_name}: {self.problem}"]
        for d in self.devices:
            lines.append(f"  {d.name}: needs {format_bytes(d.used_bytes)} of "
                         f"{format_bytes(d.budget_bytes)} (weights {format_bytes(d.weight_bytes)}, "
                         f"KV {format_bytes(d.kv_bytes + d.kv_growth_bytes)}, activations "
                         f"{format_bytes(d.activation_bytes)})")
        if speed_line(self):
            lines.append(f"  {speed_line(self)}")
        lines += [f"  note: {n}" for n in self.notes]
        if not self.fits:
            lines += [f"  way out: {w}" for w in self.ways_out] or ["  no setting found that fits"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        """One line (the whole plan is `explain()`, `to_json()` or the notebook table)."""
        layers = ", ".join(f"{d.name}: {device_layers(d)}" for d in self.devices
                           if d.layers or d.expert_layers)
        return (f"Plan(model={self.model!r}, fits={self.fits}, peak={format_bytes(self.peak_bytes)}, "
                f"layers={{{layers}}})")

    def to_dict(self) -> dict[str, Any]:
        est, opts = self.estimate, self.estimate.options
        return {
            "model": self.model,
            "machine": self.machine.os_name,
            "backend": self.machine.backend,
            "mode": self.mode,
            "fits": self.fits,
            "all_on_gpu": self.all_on_gpu,
            "wired_limit_bytes": self.wired_limit_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
            "cpu_dtype": self.cpu_dtype,
            "options": asdict(opts),
            "devices": [{"name": d.name, "description": d.description,
                         "budget_bytes": d.budget_bytes, "used_bytes": d.used_bytes,
                         "free_bytes": d.free_bytes, "layers": list(d.layers),
                         "weight_bytes": d.weight_bytes, "kv_bytes": d.kv_bytes,
                         "kv_growth_bytes": d.kv_growth_bytes,
                         "activation_bytes": d.activation_bytes,
                         "growth_arrays_bytes": d.growth_arrays_bytes,
                         "load_transient_bytes": d.load_transient_bytes,
                         "expert_layers": list(d.expert_layers)} for d in self.devices],
            "layers": [asdict(layer) for layer in self.layers],
            "non_mapped": {"device": self.non_mapped_device,
                           "weight_bytes": est.non_mapped_weight_bytes},
            "vision": None if self.vision_device is None else {
                "device": self.vision_device, "weight_bytes": est.vision_weight_bytes,
                "image_tokens": est.image_tokens,
                "activation_terms": est.vision_terms(_kernel(next(
                    d for d in self.machine.devices if d.name == self.vision_device)))},
            "totals": {"weight_bytes": sum(d.weight_bytes for d in self.devices),
                       "kv_bytes": sum(d.kv_bytes for d in self.devices),
                       "kv_growth_bytes": max((d.kv_growth_bytes for d in self.devices), default=0),
                       "activation_bytes": max((d.activation_bytes for d in self.devices
                                                if d.layers), default=0),
                       "peak_bytes": self.peak_bytes,
                       "sequence_tokens": est.sequence_tokens,
                       "trained_context": est.trained_context},
            "activation_terms": est.activation_terms,
            "decode": None if self.decode is None else {
                "tokens_per_s": self.decode.tokens_per_s, "read_bytes": self.decode.read_bytes,
                "bandwidth_bytes_per_s": self.decode.bandwidth_bytes_per_s,
                "crossings": self.decode.crossings,
                "crossing_seconds": self.decode.crossing_seconds,
                "sources": list(self.decode.sources)},
            "problem": self.problem,
            "ways_out": list(self.ways_out),
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _repr_html_(self) -> str:
        from unimap.render import plan_html

        return plan_html(self)


# ---------------------------------------------------------------- planning


def make_plan(spec: ModelSpec, machine: Machine, options: Options | None = None,
              device_map: DeviceMap | None = None, n_cpu_moe: int | None = None) -> Plan:
    """Place every layer of `spec` on `machine`. Pure: same inputs, same plan. `n_cpu_moe` keeps
    the routed experts of layers 0..N-1 on the CPU (llama.cpp's --n-cpu-moe; the layer count
    for --cpu-moe); None lets the plan choose."""
    options = cpu_compute_dtype(machine, options or Options(), spec)
    est = estimate(spec, options)
    gpus = [g for g in machine.gpus if g.budget_bytes is not None]
    unknown = [g.name for g in machine.gpus if g.budget_bytes is None]
    if machine.cpu.budget_bytes is None or unknown:
        missing = ", ".join(unknown + (["cpu"] if machine.cpu.budget_bytes is None else []))
        raise ConfigError(f"the memory budget of {missing} is unknown (see `unimap doctor`); "
                          "plan with --machine, --gpu-budget or --ram instead")
    if n_cpu_moe is not None:
        check_n_cpu_moe(n_cpu_moe, spec, est, gpus)
    if device_map is not None:
        plan = _manual(spec, machine, est, gpus, device_map, _first_experts(est, n_cpu_moe or 0))
        return _experts_note(replace(plan, spec=spec, decode=_speed(spec, plan)))
    others, gpus = gpus[1:], gpus[:1]  # the runtime drives one GPU a process (runtime.py)
    plan = _experts_note(_auto(spec, machine, est, gpus, n_cpu_moe))
    plan = replace(plan, decode=plan.decode or _speed(spec, plan))
    if others:
        plan = replace(plan, notes=(*plan.notes, (
            f"{', '.join(g.name for g in others)} not used: one unimap process runs on "
            f"{gpus[0].name}; run a rank per GPU with mlx.launch (`unimap plan --hosts` plans "
            "them)")))
    if gpus and plan.non_mapped_device == "cpu":
        parts = est.non_mapped_weight_bytes + est.vision_weight_bytes
        what = "the embeddings, lm_head" + (" and vision tower" if est.vision_weight_bytes else "")
        plan = replace(plan, notes=(*plan.notes, f"{what} ({format_bytes(parts)}) plus one "
                                    f"working set do not fit {gpus[0].name}'s budget "
                                    f"({format_bytes(gpus[0].budget_bytes)}): everything runs on "
                                    "the CPU" + _vision_tip(spec, est, gpus[0])))
    plan = replace(plan, spec=spec)
    past = _past_training(est)
    if past:
        plan = replace(plan, notes=(*plan.notes, past))
    if one_pass_prefill(spec.arch, est.options):
        v = spec.arch.vision
        when = "every prompt" if v is not None and v.one_pass == "always" else "a prompt with images"
        plan = replace(plan, notes=(*plan.notes, (
            f"mlx-vlm prefills {when} of this model in one pass, not in chunks of "
            f"{est.options.prefill_chunk_tokens} tokens: the plan prices all "
            f"{est.sequence_tokens} tokens at once")))
    if not plan.fits:
        plan = replace(plan, ways_out=ways_out(spec, machine, est))
    elif not plan.all_on_gpu and gpus:
        plan = replace(plan, notes=(*plan.notes, *_wired_tip(machine, est)))
    return plan


def check_n_cpu_moe(value: int, spec: ModelSpec, est: Estimate, gpus: list[Device]) -> None:
    """--n-cpu-moe N: a whole number of layers, 0 to the model's layer count, for a model with
    routed experts on a machine with a GPU to keep the rest on."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ArgumentTypeError(f"--n-cpu-moe must be a whole number of layers, not {short(value)}")
    if not 0 <= value <= spec.num_layers:
        raise ConfigError(f"--n-cpu-moe {value}: {spec.source} has {spec.num_layers} layers; give "
                          f"0 to {spec.num_layers} (or --cpu-moe for all of them)")
    if not any(layer.expert_bytes for layer in est.layers):
        raise ConfigError(f"--cpu-moe / --n-cpu-moe: {spec.source} has no routed experts (it is "
                          "not a mixture-of-experts model); drop the flag")
    if not gpus:
        raise ConfigError("--cpu-moe / --n-cpu-moe: this machine has no GPU, so every layer runs on "
                          "the CPU already; drop the flag")


def _first_experts(est: Estimate, n: int) -> frozenset[int]:
    """The layers among the first `n` that have routed experts (llama.cpp's --n-cpu-moe N)."""
    return frozenset(i for i in range(min(n, len(est.layers))) if est.layers[i].expert_bytes)


# MLX's CPU kernels on x86-64 are far faster in float32 than in half precision (reference
# BLAS: fp32 matmul 3.0 vs bf16 3.9 GFLOP/s, but 53 vs 2.9 with OpenBLAS; quantized matmul 1.5
# vs 0.17 (bf16) vs 0.04 (fp16); docs/BENCHMARKS.md), so a split's CPU layers run in float32
# there. Elsewhere (Apple Silicon, Grace, Jetson) nothing is measured yet: keep the model dtype.
FLOAT32_CPU_ARCHS = ("x86_64", "amd64", "AMD64")


def cpu_compute_dtype(machine: Machine, options: Options, spec: ModelSpec | None = None) -> Options:
    """Options with the CPU part's compute dtype decided (explicit choices are kept)."""
    if options.cpu_dtype is not None:
        return options
    if machine.arch in FLOAT32_CPU_ARCHS or spec is not None and cpu_needs_float32(spec, options):
        return replace(options, cpu_dtype="float32")
    return options


def cpu_needs_float32(spec: ModelSpec, options: Options) -> bool:
    """MLX's CPU gather_mm (the routed experts of an MoE layer) accepts float32 only, so a
    half-precision MoE layer's experts compute in float32 on the CPU (upcast call by call, kept
    as loaded), and the rest of the layer, a few percent of its weights, with them."""
    return spec.arch.moe is not None and (options.dtype or spec.dtype) != "float32"


def _experts_note(plan: Plan) -> Plan:
    """Say how layers on MLX's CPU kernels run half-precision routed experts, if any do (in a
    plan that fits: one that does not leads with its ways out)."""
    est = plan.estimate
    upcast = est.activation_terms.get("moe/experts-upcast")
    on_cpu = [d for d in plan.devices if d.layers and _kernel(next(
        x for x in plan.machine.devices if x.name == d.name)) == "unfused"]
    if not upcast or not on_cpu or not plan.fits:
        return plan
    decode = est.activation_terms["decode/experts-upcast"]
    note = (f"routed experts on {', '.join(d.name for d in on_cpu)} stay {est.dtype}; each MoE "
            "call upcasts to float32 just those its tokens select (MLX's CPU gather_mm): "
            f"{format_bytes(decode)} a decode step, at most {format_bytes(upcast)} a prefill chunk")
    return replace(plan, notes=(*plan.notes, note))


def _kernel(device: Device) -> Kernel:
    """How the device runs attention, as the estimate prices it."""
    if device.kind == "gpu" and device.backend == "metal":
        return "metal"
    if device.kind == "gpu" and device.backend == "cuda":
        return "cuda"
    return "unfused"


def _assign(spec: ModelSpec, machine: Machine, est: Estimate, counts: list[tuple[Device, int]],
            mode: str, cpu_experts: frozenset[int] = frozenset()) -> Plan:
    """Build the plan for: the first `count` remaining layers on each listed GPU, rest on CPU;
    of the layers on GPUs, those in `cpu_experts` keep their routed experts on the CPU."""
    placements: list[LayerPlacement] = []
    device_plans: list[DevicePlan] = []
    start = 0
    first_gpu = counts[0][0] if counts else None
    host_parts = first_gpu is not None and _parts_fit(est, first_gpu)
    on_gpus = min(spec.num_layers, sum(count for _, count in counts))
    # only a split's CPU part changes its dtype, or every CPU layer where the CPU cannot run the
    # model's dtype at all (half-precision MoE)
    converts = 0 < on_gpus < spec.num_layers or on_gpus < spec.num_layers and cpu_needs_float32(
        spec, est.options)
    moved: list[int] = []  # layers on a GPU whose routed experts live on the CPU
    for device, count in [*counts, (machine.cpu, spec.num_layers)]:
        chosen = list(range(start, min(spec.num_layers, start + count)))
        start += len(chosen)
        extra = 0
        if device is machine.cpu and not host_parts or device is first_gpu and host_parts:
            extra = est.non_mapped_weight_bytes + est.vision_weight_bytes
        on_cpu = device is machine.cpu
        cpu_part = on_cpu and converts
        here = [] if on_cpu else [i for i in chosen if i in cpu_experts and est.layers[i].expert_bytes]
        moved += here
        device_plans.append(_device_plan(device, est, chosen, extra, cpu_part, dense_only=here,
                                         experts=tuple(moved) if on_cpu else ()))
        priced = est.cpu_layers if cpu_part else est.layers
        placements += [LayerPlacement(
            i, device.name, priced[i].kind, priced[i].weight_bytes, priced[i].kv_bytes,
            None if not priced[i].expert_bytes else "cpu" if i in here else device.name,
            priced[i].expert_bytes) for i in chosen]
    over = [d for d in device_plans if d.free_bytes < 0]
    parts_device = first_gpu.name if host_parts and first_gpu else "cpu"
    all_gpu = host_parts and len(device_plans[0].layers) == spec.num_layers and not moved
    problem = "; ".join(f"{d.name} is over its budget by {format_bytes(-d.free_bytes)}" for d in over)
    return Plan(model=spec.source, machine=machine, estimate=est, mode=mode, fits=not over,
                all_on_gpu=all_gpu, wired_limit_bytes=_wired_limit(machine, device_plans),
                cpu_dtype=est.cpu_dtype if converts and est.cpu_dtype != est.dtype else None,
                devices=tuple(device_plans), layers=tuple(placements),
                non_mapped_device=parts_device,
                vision_device=parts_device if est.vision_weight_bytes else None, problem=problem)


def _device_plan(device: Device, est: Estimate, chosen: list[int], extra_bytes: int,
                 cpu_part: bool = False, dense_only: list[int] | tuple[int, ...] = (),
                 experts: tuple[int, ...] = ()) -> DevicePlan:
    """A device's share: the `chosen` layers (of which `dense_only` without their routed
    experts), the routed experts of the `experts` layers, and `extra_bytes` of other parts."""
    layers = [(est.cpu_layers if cpu_part else est.layers)[i] for i in chosen]
    runs = bool(chosen) or extra_bytes > 0 or bool(experts)
    converting = est.converts or (cpu_part and est.cpu_dtype != est.dtype)
    gone = set(dense_only)
    transient = 0
    if converting:
        transient = max((x.source_bytes - (x.expert_source_bytes if x.index in gone else 0)
                         for x in layers), default=0)
    if est.converts and experts:
        transient = max(transient, max(est.layers[i].expert_source_bytes for i in experts))
    if est.converts and extra_bytes:
        transient = max(transient, est.parts_source_bytes)
    weights = (sum(x.weight_bytes for x in layers) + extra_bytes
               - sum(est.layers[i].expert_bytes for i in dense_only)
               + sum(est.layers[i].expert_bytes for i in experts))
    return DevicePlan(
        name=device.name, description=device.description, budget_bytes=device.budget_bytes or 0,
        layers=tuple(chosen), weight_bytes=weights,
        kv_bytes=sum(x.kv_bytes for x in layers),
        kv_growth_bytes=max((x.kv_bytes for x in layers if x.kind != "recurrent"), default=0)
        if est.kv_growth_bytes else 0,
        # routed experts on the CPU: priced as a whole CPU layer's working set (float32)
        activation_bytes=est.activation_bytes(_kernel(device), cpu_part or bool(experts))
        if runs else 0,
        load_transient_bytes=transient,
        growth_arrays_bytes=est.growth_arrays_bytes(_kernel(device), cpu_part) if layers else 0,
        expert_layers=experts)


def _parts_fit(est: Estimate, gpu: Device) -> bool:
    """Can the first GPU hold the non-mapped parts, the vision tower and a working set?"""
    need = est.non_mapped_weight_bytes + est.vision_weight_bytes + est.activation_bytes(_kernel(gpu))
    return need <= (gpu.budget_bytes or 0)


def _auto(spec: ModelSpec, machine: Machine, est: Estimate, gpus: list[Device],
          n_cpu_moe: int | None = None, quick: bool = False) -> Plan:
    """Whole layers in order onto the GPUs. A mixture-of-experts model that does not fit that
    way is also planned with the routed experts of its first layers on the CPU (as few as let
    every layer's dense part stay on a GPU), and the plan predicted to decode faster is taken.
    `n_cpu_moe` fixes how many layers' experts go to the CPU instead."""
    if n_cpu_moe is not None:
        return _fill(spec, machine, est, gpus, _first_experts(est, n_cpu_moe))
    layered = _fill(spec, machine, est, gpus, frozenset())
    if quick and layered.fits or (layered.all_on_gpu or not gpus or layered.non_mapped_device == "cpu"
            or not any(layer.expert_bytes for layer in est.layers)):
        return layered
    n = spec.num_layers

    def whole(k: int) -> bool:  # every layer's dense part on a GPU, the first k's experts off
        return sum(c for _, c in _gpu_counts(est, gpus, _first_experts(est, k))) >= n

    fewest = n - largest_fitting(lambda m: whole(n - m), n, 0) if whole(n) else n
    experts = _fill(spec, machine, est, gpus, _first_experts(est, fewest))
    if quick:  # only whether something fits
        return layered if layered.fits else experts
    return choose_placement(replace(layered, decode=_speed(spec, layered)),
                            replace(experts, decode=_speed(spec, experts)))


def _fill(spec: ModelSpec, machine: Machine, est: Estimate, gpus: list[Device],
          cpu_experts: frozenset[int]) -> Plan:
    """Fill the GPUs in order with layers (their dense parts alone for `cpu_experts`)."""
    return _assign(spec, machine, est, _gpu_counts(est, gpus, cpu_experts), "auto", cpu_experts)


def _gpu_counts(est: Estimate, gpus: list[Device], cpu_experts: frozenset[int]) -> list[tuple[Device, int]]:
    """How many layers each GPU takes, in order, after the first one's non-mapped parts."""
    counts: list[tuple[Device, int]] = []
    start = 0
    for index, gpu in enumerate(gpus):
        if index == 0 and not _parts_fit(est, gpu):
            return [(g, 0) for g in gpus]  # not even the embeddings fit: all on the CPU
        count = _layers_that_fit(est, gpu, start, with_parts=index == 0, cpu_experts=cpu_experts)
        counts.append((gpu, count))
        start += count
    return counts


def _layers_that_fit(est: Estimate, gpu: Device, start: int, with_parts: bool,
                     cpu_experts: frozenset[int] = frozenset()) -> int:
    """How many layers from `start` fit the GPU, counted as _device_plan counts them (the
    layers in `cpu_experts` without their routed experts)."""
    budget = gpu.budget_bytes or 0
    working = est.activation_bytes(_kernel(gpu))
    arrays = est.growth_arrays_bytes(_kernel(gpu))
    weights = est.non_mapped_weight_bytes + est.vision_weight_bytes if with_parts else 0
    transient = est.parts_source_bytes if with_parts and est.converts else 0
    kv = growth = count = 0
    for layer in est.layers[start:]:
        dense = layer.index in cpu_experts
        grows = est.kv_growth_bytes and layer.kind != "recurrent"
        new_growth = max(growth, layer.kv_bytes if grows else 0)
        source = layer.source_bytes - (layer.expert_source_bytes if dense else 0)
        new_transient = max(transient, source if est.converts else 0)
        new_weights = weights + (layer.dense_bytes if dense else layer.weight_bytes)
        new_kv = kv + layer.kv_bytes
        running = new_kv + max(working, new_growth + arrays if new_growth else 0)
        if new_weights + max(running, new_transient) > budget:
            break
        weights, kv, growth, transient, count = new_weights, new_kv, new_growth, new_transient, count + 1
    return count


def choose_placement(layered: Plan, experts: Plan) -> Plan:
    """Whole layers on the CPU, or routed experts on the CPU: the one that fits, else the one
    predicted to decode faster (bytes each device reads per token over its bandwidth, plus the
    hand-overs); with a bandwidth unknown, the expert placement (it keeps every layer's
    attention and KV cache on the GPU). The plan's note says which and why."""
    if layered.fits != experts.fits:
        chosen = experts if experts.fits else layered
        why = "the only placement that fits"
    elif not layered.fits:
        return experts if _over_bytes(experts) <= _over_bytes(layered) else layered
    else:
        fast, slow = (layered.decode.tokens_per_s if layered.decode else None,
                      experts.decode.tokens_per_s if experts.decode else None)
        if fast is None or slow is None:
            chosen, why = experts, "bandwidths unknown: it keeps attention and KV on the GPU"
        else:
            chosen = experts if slow >= fast else layered
            why = (f"predicted decode {slow:.1f} tokens/s against {fast:.1f} for whole layers on "
                   "the CPU" if chosen is experts else f"predicted decode {fast:.1f} tokens/s "
                   f"against {slow:.1f} with routed experts on the CPU")
    return replace(chosen, notes=(*chosen.notes, placement_note(chosen, why)))


def _over_bytes(plan: Plan) -> int:
    return sum(max(0, -d.free_bytes) for d in plan.devices)


def placement_note(plan: Plan, why: str) -> str:
    """One line: where the routed experts of a split MoE plan live, and why."""
    moved = tuple(p.index for p in plan.layers if p.experts_device == "cpu" and p.device != "cpu")
    if not moved:
        cpu = plan.device("cpu").layers
        return f"whole layers {layer_span(cpu)} run on the CPU ({why})"
    gpu = ", ".join(d.name for d in plan.devices if d.name != "cpu" and d.layers)
    return (f"routed experts of layers {layer_span(moved)} live on the CPU, their attention, "
            f"router and KV cache on {gpu} ({why})")


def _manual(spec: ModelSpec, machine: Machine, est: Estimate, gpus: list[Device],
            device_map: DeviceMap, cpu_experts: frozenset[int] = frozenset()) -> Plan:
    warnings.warn("manual device maps (-n) are deprecated: device_map='auto' plans from the "
                  "machine's measured memory", DeprecationWarning, stacklevel=3)
    by_ordinal = {int(g.name.split(":")[1]): g for g in gpus}
    total = sum(count for _, count in device_map)
    for ordinal, _ in device_map:
        if ordinal not in by_ordinal:
            have = ", ".join(str(o) for o in by_ordinal) or "none"
            raise ConfigError(f"device map {format_device_map(device_map)}: this machine has no GPU "
                              f"{ordinal} (GPU ordinals here: {have})")
    if total > spec.num_layers:
        raise ConfigError(f"device map {format_device_map(device_map)} places {total} layers, but "
                          f"{spec.source} has {spec.num_layers}")
    counts = [(by_ordinal[o], n) for o, n in device_map]
    plan = _assign(spec, machine, est, counts, format_device_map(device_map), cpu_experts)
    note = "manual device maps are deprecated; omit -n to plan automatically"
    return replace(plan, notes=(*plan.notes, note))


def _wired_limit(machine: Machine, device_plans: list[DevicePlan]) -> int | None:
    """Metal only: what the GPU part needs plus the GPU reserve, never above the ceiling."""
    gpu = machine.gpus[0] if machine.gpus else None
    if gpu is None or gpu.backend != "metal" or not device_plans or device_plans[0].name != gpu.name:
        return None
    wanted = device_plans[0].used_bytes + gpu.reserve_bytes
    ceiling = gpu.ceiling_bytes or wanted
    return min(_round_up_mib(wanted), ceiling)


def _round_up_mib(n: int) -> int:
    return -(-n // MiB) * MiB


# ---------------------------------------------------------------- ways out


def _fits(spec: ModelSpec, machine: Machine, options: Options) -> bool:
    try:
        est = estimate(spec, options)
    except UnimapError:
        return False
    gpus = [g for g in machine.gpus if g.budget_bytes is not None][:1]  # one GPU a process
    room = sum(d.budget_bytes or 0 for d in (*gpus, machine.cpu))
    if est.weight_bytes + est.kv_bytes > room:  # every placement holds at least these
        return False
    return _auto(spec, machine, est, gpus, quick=True).fits


def _vision_tip(spec: ModelSpec, est: Estimate, gpu: Device) -> str:
    """What would let the vision tower (and the other non-mapped parts) onto the GPU: fewer or
    smaller images, when the encoder's working set is what does not fit."""
    if not est.vision_weight_bytes or not est.vision_activation_terms:
        return ""

    def fits(changed: Options) -> bool:
        try:
            return _parts_fit(estimate(spec, changed), gpu)
        except UnimapError:
            return False

    tips = [f"{flag} {value}" for flag, value in _smaller_images(est.options, fits)]
    return f"; the vision tower would fit {gpu.name} with {' or '.join(tips)}" if tips else ""


def _smaller_images(options: Options, fits: Callable[[Options], bool]) -> list[tuple[str, int]]:
    """The largest --max-image-length, and --max-num-images, below the current ones that fit."""
    found = []
    length = _largest(lambda n: fits(replace(options, max_image_length=n)), options.max_image_length - 1)
    if length:
        found.append(("--max-image-length", length))
    if options.max_num_images > 1:
        count = _largest(lambda n: fits(replace(options, max_num_images=n)), options.max_num_images - 1)
        if count:
            found.append(("--max-num-images", count))
    return found


def _past_training(est: Estimate) -> str:
    """A plan longer than the model was trained for works, but says so."""
    trained, asked = est.trained_context, est.options.max_seq_len
    if trained is None or asked <= trained:
        return ""
    return (f"--max-seq-len {asked} is past the {trained} tokens the model was trained for "
            f"({est.trained_context_source}): text beyond {trained} tokens may degrade; plan "
            f"--max-seq-len {trained} or less to stay within it")


def ways_out(spec: ModelSpec, machine: Machine, est: Estimate) -> tuple[str, ...]:
    options = est.options
    found: list[str] = []
    if est.vision_activation_terms:  # a vision-language model: smaller or fewer images
        why = {"--max-image-length": "the largest image edge that fits",
               "--max-num-images": "images per prompt"}
        found += [f"{flag} {value} ({why[flag]})" for flag, value in
                  _smaller_images(options, lambda changed: _fits(spec, machine, changed))]
    longest = options.max_seq_len - 1  # never suggest more than the model was trained for
    if est.trained_context is not None:
        longest = min(longest, est.trained_context)
    seq = _largest(lambda n: _fits(spec, machine, replace(options, max_seq_len=n)), longest)
    if seq:
        found.append(f"--max-seq-len {seq} (the longest context that fits)")
    if options.max_kv_size is None and options.kv_bits is None and options.kv_layout == "mlx-lm":
        window = _largest(lambda n: _fits(spec, machine, replace(
            options, max_kv_size=max(n, MIN_KV_SIZE))), options.max_seq_len - 1)
        if window:
            found.append(f"--max-kv-size {max(window, MIN_KV_SIZE)} (a rotating cache: the "
                         f"{options.max_seq_len}-token run sees that many latest tokens)")
    if spec.quantization is None:
        bits = [b for b in sorted(ISQ_BITS, reverse=True)
                if (options.isq is None or b < options.isq)
                and _fits(spec, machine, replace(options, isq=b))]
        if bits:
            found.append(f"--isq {bits[0]} (quantize the weights to {bits[0]} bits while loading)")
    kv = [b for b in sorted(KV_BITS, reverse=True) if (options.kv_bits is None or b < options.kv_bits)
          and _fits(spec, machine, replace(options, kv_bits=b))]
    if kv:
        found.append(f"--kv-bits {kv[0]} (quantize the KV cache)")
    found += _wired_tip(machine, est)
    return tuple(found)


def largest_fitting(fits: Callable[[int], bool], upper: int, lower: int = 1) -> int:
    """Largest n in [lower, upper] with fits(n), assuming fits is monotone (true, then false);
    lower - 1 when none fits."""
    if upper < lower or not fits(lower):
        return lower - 1
    lo, hi = lower, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _largest(fits: Callable[[int], bool], upper: int) -> int:
    """Largest n in [1, upper] with fits(n) (0 if none), rounded down to a multiple of 256 from
    256 up: the figure a way out suggests."""
    lo = largest_fitting(fits, upper)
    return lo // 256 * 256 if lo >= 256 else lo


def _wired_tip(machine: Machine, est: Estimate) -> list[str]:
    """Metal: the iogpu.wired_limit_mb that would hold every layer on the GPU, if RAM allows."""
    from unimap.backends import metal

    gpu = machine.gpus[0] if machine.gpus else None
    ram = machine.ram_total_bytes
    if gpu is None or gpu.backend != "metal" or ram is None:
        return []
    peak = est.peak_bytes("metal")
    need = peak + max(gpu.reserve_bytes, -(-peak * 2 // 98))  # the reserve grows with the ceiling
    available = machine.ram_available_bytes or 0
    if need > min(metal.suggested_wired_limit_bytes(ram), available) or need <= (gpu.ceiling_bytes or 0):
        return []
    limit = _round_up_mib(need)
    key = gpu.details.get("wired_limit_key")
    return [f"`{metal.sysctl_command(limit, key if isinstance(key, str) else None)}` to run every "
            f"layer on the GPU (raises the wired limit to {format_bytes(limit)} until reboot)"]


# ---------------------------------------------------------------- decode speed


# A routed expert in half precision on MLX's CPU kernels is read as stored, written as a float32
# copy and read again (unimap/runtime.py upcast_gather_mm): 8 bytes more per element.
UPCAST_EXTRA_BYTES = 8


def _speed(spec: ModelSpec, plan: Plan) -> Speed:
    return decode_speed(spec, plan.machine, plan.estimate, plan.layers, plan.non_mapped_device)


def decode_speed(spec: ModelSpec, machine: Machine, est: Estimate,
                 placements: tuple[LayerPlacement, ...] | list[LayerPlacement],
                 parts_device: str) -> Speed:
    """The roofline of one decode step of one sequence at the planned context (see Speed)."""

    moe = spec.arch.moe
    share = min(1.0, moe.experts_per_token / moe.num_experts) if moe and moe.num_experts else 1.0
    upcast = "decode/experts-upcast" in est.activation_terms
    batch = est.options.max_batch_size
    read: dict[str, float] = {parts_device: est.head_read_bytes}
    path = [parts_device]
    for p in placements:
        read[p.device] = read.get(p.device, 0) + p.weight_bytes - p.expert_bytes + p.kv_bytes / batch
        path.append(p.device)
        if p.experts_device is not None:
            where = p.experts_device
            per_token = p.expert_bytes * share
            if upcast and where == "cpu":
                per_token += p.expert_bytes // 2 * UPCAST_EXTRA_BYTES * share
            read[where] = read.get(where, 0) + per_token
            if where != p.device:
                path += [where, p.device]
    path.append(parts_device)
    backend = machine.gpus[0].backend if machine.gpus else "cpu"
    crossing, crossing_source = crossing_seconds(backend)
    rates = {name: machine.device(name).bandwidth_bytes_per_s for name in read}
    sources = tuple(f"{name}: {machine.device(name).sources.get('bandwidth_bytes_per_s', 'unknown')}"
                    for name in read) + (f"crossing: {crossing * 1e6:g} us, {crossing_source}",)
    return Speed(read_bytes={k: int(v) for k, v in read.items()}, bandwidth_bytes_per_s=rates,
                 crossings=sum(a != b for a, b in zip(path, path[1:], strict=False)),
                 crossing_seconds=crossing, sources=sources)
