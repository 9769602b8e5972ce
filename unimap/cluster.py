"""plan, across ranks: a pipeline of contiguous layer ranges, one per rank, each rank planned on
its own machine with the single-machine planner (its GPU/CPU split, exact weights, KV and working
set), chosen so that the cluster holds the longest context.

Each stage keeps the embeddings, final norm and head (as mlx-lm's pipeline does) and at least one
decoder layer. Ranks follow mlx-lm's order: rank 0 runs the last layers, rank N-1 the first.
The split maximises the token budget: the largest --max-seq-len at which every rank fits. Layers
are packed greedily, first stage first (for contiguous ranges whose cost only grows with their
length, the greedy packing fits whenever any split fits), at the largest context that fits.

Tensor parallelism (every rank holds 1/N of each layer's matrices and KV heads, and all of the
embeddings and head) is priced the same way where the model's heads divide by N.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from unimap.checks import MAX_SEQ_LEN, short
from unimap.errors import ConfigError, UnimapError
from unimap.estimate import ISQ_BITS, Options
from unimap.inspect import NON_MAPPED_SLOT, VISION_SLOT, ModelSpec, Slot
from unimap.machine import Device, Machine
from unimap.plan import Plan, _fits, cpu_compute_dtype, largest_fitting, make_plan
from unimap.render import layer_span
from unimap.units import format_bytes

Mode = Literal["pipeline", "tensor"]
MAX_RANKS = 64


@dataclass(frozen=True)
class Rank:
    index: int  # the MLX rank
    host: str  # where it runs, as given (a preset, a JSON file, an address)
    machine: Machine
    layers: tuple[int, ...]  # the model's decoder layers this rank runs (global indices)
    plan: Plan  # this rank's own plan on its machine

    @property
    def peak_bytes(self) -> int:
        return self.plan.peak_bytes

    @property
    def budget_bytes(self) -> int:
        return sum(d.budget_bytes for d in self.plan.devices)

    @property
    def headroom_bytes(self) -> int:
        return sum(d.free_bytes for d in self.plan.devices)


@dataclass(frozen=True)
class ClusterPlan:
    model: str
    mode: Mode
    options: Options
    ranks: tuple[Rank, ...]
    fits: bool
    token_budget: int  # the longest --max-seq-len at which every rank of this split fits (0: none)
    proportional_split: tuple[int, ...]  # layers per rank in proportion to each machine's memory
    proportional_budget: int  # the same for that split (0: it fits no context)
    problem: str = ""
    ways_out: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def split(self) -> tuple[int, ...]:
        """Layers per rank, rank 0 first (mlx-lm's `pipeline(group, split)`)."""
        return tuple(len(r.layers) for r in self.ranks)

    def require_fit(self) -> ClusterPlan:
        if not self.fits:
            from unimap.plan import DoesNotFitError

            raise DoesNotFitError(f"{self.model} does not fit the {len(self.ranks)} ranks: "
                                  f"{self.problem}" + ("; ways out: " + "; ".join(self.ways_out)
                                                       if self.ways_out else ""))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "mode": self.mode, "fits": self.fits,
            "max_seq_len": self.options.max_seq_len, "token_budget": self.token_budget,
            "split": list(self.split),
            "proportional": {"split": list(self.proportional_split),
                             "token_budget": self.proportional_budget},
            "ranks": [{"rank": r.index, "host": r.host, "layers": list(r.layers),
                       "peak_bytes": r.peak_bytes, "budget_bytes": r.budget_bytes,
                       "headroom_bytes": r.headroom_bytes, "fits": r.plan.fits,
                       "devices": [{"device": d.name, "layers": list(d.layers),
                                    "weight_bytes": d.weight_bytes,
                                    "kv_bytes": d.kv_bytes + d.kv_growth_bytes,
                                    "activation_bytes": d.activation_bytes,
                                    "used_bytes": d.used_bytes, "budget_bytes": d.budget_bytes}
                                   for d in r.plan.devices]}
                      for r in self.ranks],
            "problem": self.problem, "ways_out": list(self.ways_out), "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def explain(self) -> str:
        head = (f"{self.model} across {len(self.ranks)} ranks ({self.mode}): "
                + ("fits" if self.fits else f"does not fit: {self.problem}"))
        lines = [head]
        for r in self.ranks:
            lines.append(f"  rank {r.index} ({r.host}): layers {layer_span(r.layers)}, peak "
                         f"{format_bytes(r.peak_bytes)} of {format_bytes(r.budget_bytes)}, headroom "
                         f"{format_bytes(r.headroom_bytes)}")
        lines.append(f"  token budget {self.token_budget} (RAM-proportional split "
                     f"{list(self.proportional_split)}: {self.proportional_budget})")
        lines += [f"  note: {n}" for n in self.notes] + [f"  way out: {w}" for w in self.ways_out]
        return "\n".join(lines)


# ---------------------------------------------------------------- machines of a cluster


def shared_machine(machine: Machine, ranks: int) -> Machine:
    """One of `ranks` processes on `machine`: each gets an equal share of every device's budget
    (and of what is available), as they run side by side."""
    def share(d: Device) -> Device:
        return replace(d, budget_bytes=None if d.budget_bytes is None else d.budget_bytes // ranks,
                       available_bytes=None if d.available_bytes is None
                       else d.available_bytes // ranks)

    return replace(machine, devices=tuple(share(d) for d in machine.devices),
                   os_name=f"{machine.os_name} (1 of {ranks} ranks)")


def machine_from_json(path: Path) -> Machine:
    """A machine as `unimap doctor --json` (or Machine.to_json) wrote it on that machine."""
    data = _read(path, "a machine description (`unimap doctor --json > FILE` on that machine)")
    return machine_from_dict(data, str(path))


def machine_from_dict(data: Any, where: str) -> Machine:
    """A Machine from its to_dict() form (or a doctor report holding one)."""
    from unimap.machine import BackendStatus

    path = where
    if isinstance(data, dict) and isinstance(data.get("machine"), dict):
        data = data["machine"]  # a whole doctor report
    try:
        devices = tuple(Device(**{k: v for k, v in d.items() if k in Device.__dataclass_fields__})
                        for d in data["devices"])
        backends = tuple(BackendStatus(**{k: v for k, v in b.items()
                                          if k in BackendStatus.__dataclass_fields__})
                         for b in data.get("backends", []))
        fields = {k: v for k, v in data.items() if k in Machine.__dataclass_fields__}
        machine = Machine(**{**fields, "devices": devices, "backends": backends,
                             "warnings": tuple(data.get("warnings", ()))})
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a machine description ({short(str(exc))}); write one with "
                          "`unimap doctor --json > FILE` on that machine") from None
    for d in machine.devices:
        if d.budget_bytes is not None and (not isinstance(d.budget_bytes, int) or d.budget_bytes < 0):
            raise ConfigError(f"{path}: device {d.name!r} has budget_bytes {short(d.budget_bytes)}; "
                              "it must be a whole number of bytes")
        rate = d.bandwidth_bytes_per_s
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0):
            raise ConfigError(f"{path}: device {d.name!r} has bandwidth_bytes_per_s {short(rate)}; "
                              "it must be a positive whole number of bytes per second, or null")
    if not any(d.name == "cpu" for d in machine.devices):
        raise ConfigError(f"{path}: the machine description has no cpu device")
    return machine


def cluster_machines(hosts: str | None, ranks: int | None, this_machine: Callable[[], Machine],
                     preset: Callable[[str], Machine]) -> list[tuple[str, Machine]]:
    """The machines of the ranks: `--ranks N` shares this machine N ways; `--hosts` lists presets
    (mac-64gb), machine descriptions (FILE.json from `unimap doctor --json`), or local addresses
    (this machine); an MLX hostfile (a .json list) names one rank per entry."""
    if ranks is not None:
        if isinstance(ranks, bool) or not isinstance(ranks, int) or not 1 <= ranks <= MAX_RANKS:
            raise ConfigError(f"--ranks must be from 1 to {MAX_RANKS}, not {short(ranks)}")
        if hosts:
            raise ConfigError("give --ranks (ranks on this machine) or --hosts, not both")
        machine = shared_machine(this_machine(), ranks)
        return [("127.0.0.1", machine)] * ranks
    names = host_names(hosts or "")
    local = [n for n in names if n in LOCAL_HOSTS]
    out: list[tuple[str, Machine]] = []
    for name in names:
        if name in LOCAL_HOSTS:
            out.append((name, shared_machine(this_machine(), len(local))))
        elif name.endswith(".json") and Path(name).expanduser().is_file():
            out.append((name, machine_from_json(Path(name).expanduser())))
        else:
            try:
                out.append((name, preset(name)))
            except ConfigError:
                raise ConfigError(
                    f"--hosts: {name!r} is neither a preset (see `unimap plan --list-machines`), a "
                    "machine description (FILE.json written by `unimap doctor --json` on that "
                    "machine) nor this machine (127.0.0.1); a remote host cannot be probed from "
                    "here") from None
    return out


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_names(hosts: str) -> list[str]:
    """`--hosts`: a comma-separated list, or an MLX hostfile (a JSON list with one entry per
    rank: a list of "ip:port" strings, or {"ssh": host, "ips": [...]})."""
    if not isinstance(hosts, str) or not hosts.strip():
        raise ConfigError("--hosts is empty: give a comma-separated list (mac-64gb,mac-16gb) or an "
                          "MLX hostfile")
    path = Path(hosts).expanduser()
    if "," not in hosts and path.suffix == ".json" and path.is_file():
        data = _read(path, "an MLX hostfile (a JSON list, one entry per rank) or a machine "
                           "description")
        return [hosts] if isinstance(data, dict) else hostfile_entries(path, data)
    names = [h.strip() for h in hosts.split(",")]
    if any(not n for n in names):
        raise ConfigError(f"--hosts {short(hosts)} has an empty entry; give names separated by "
                          "single commas")
    if not 1 <= len(names) <= MAX_RANKS:
        raise ConfigError(f"--hosts names {len(names)} ranks; at most {MAX_RANKS}")
    return names


def _read(path: Path, what: str) -> Any:
    from unimap.checks import decode_json

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DESCRIPTION_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}); give {what}") from None
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_DESCRIPTION_BYTES} bytes; give {what}")
    try:
        return decode_json(data, str(path), f"give {what}")
    except UnimapError as exc:
        raise ConfigError(str(exc)) from None


MAX_DESCRIPTION_BYTES = 1 << 20


def hostfile_entries(path: Path, data: Any) -> list[str]:
    """The host of each rank in an MLX hostfile."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: an MLX hostfile is a non-empty JSON list with one entry per "
                          "rank")
    if len(data) > MAX_RANKS:
        raise ConfigError(f"{path}: the hostfile names {len(data)} ranks; at most {MAX_RANKS}")
    hosts = []
    for i, entry in enumerate(data):
        ips = entry.get("ips") if isinstance(entry, dict) else entry
        ssh = entry.get("ssh") if isinstance(entry, dict) else None
        if not isinstance(ips, list) or not ips or not all(isinstance(a, str) for a in ips):
            raise ConfigError(f"{path}: rank {i}'s entry {short(entry)} should be a list of "
                              "\"ip:port\" strings, or {\"ssh\": host, \"ips\": [...]}")
        address = ips[0]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{path}: rank {i}'s address {short(address)} is not \"ip:port\" "
                              "with a port from 1 to 65535")
        hosts.append(ssh if isinstance(ssh, str) and ssh else host.strip("[]"))
    return hosts


# ---------------------------------------------------------------- planning


def sliced(spec: ModelSpec, start: int, end: int) -> ModelSpec:
    """The model as one pipeline stage holds it: decoder layers start..end-1 (renumbered from
    0), the embeddings, norm and head, and the vision tower."""
    arch = spec.arch
    layers = [s._replace(slot=i) for i, s in enumerate(spec.slots[start:end])]
    parts = [s for s in spec.slots if s.slot in (NON_MAPPED_SLOT, VISION_SLOT)]
    new_arch = replace(arch, num_layers=end - start, layer_kinds=arch.layer_kinds[start:end],
                       caches=arch.caches[start:end] if arch.caches else (),
                       layer_prefixes=arch.layer_prefixes[start:end] if arch.layer_prefixes else ())
    return replace(spec, arch=new_arch, slots=(*layers, *parts))


def tensor_sliced(spec: ModelSpec, ranks: int) -> ModelSpec:
    """One rank of a tensor-parallel group: 1/N of each layer's matrices (norms whole) and of its
    attention and KV heads; the embeddings and head whole (mlx-lm's shard() leaves them)."""
    arch = spec.arch
    if arch.num_heads % ranks or arch.num_kv_heads % ranks:
        raise ConfigError(f"tensor parallelism over {ranks} ranks needs the heads to divide by "
                          f"{ranks}; {spec.source} has {arch.num_heads} attention and "
                          f"{arch.num_kv_heads} KV heads: use pipeline parallelism")

    def part(s: Slot) -> Slot:  # every sum rounded up: never under the rank's real share
        sums: dict[str, Any] = {name: -(-value // ranks) for name, value in s._asdict().items()
                                if name != "slot" and isinstance(value, int)}
        experts = getattr(s, "experts", None)
        if isinstance(experts, Slot):
            sums["experts"] = part(experts)
        return s._replace(**sums)

    layers = [part(s) for s in spec.slots[:arch.num_layers]]
    parts = [s for s in spec.slots if s.slot in (NON_MAPPED_SLOT, VISION_SLOT)]
    caches = tuple(replace(c, token_elements=-(-c.token_elements // ranks),
                           state_elements=-(-c.state_elements // ranks)) for c in arch.caches)
    new_arch = replace(arch, num_heads=arch.num_heads // ranks,
                       num_kv_heads=arch.num_kv_heads // ranks,
                       intermediate_size=-(-arch.intermediate_size // ranks), caches=caches)
    return replace(spec, arch=new_arch, slots=(*layers, *parts))


def plan_cluster(spec: ModelSpec, machines: Sequence[tuple[str, Machine]],
                 options: Options | None = None, mode: Mode = "pipeline") -> ClusterPlan:
    """Split `spec` across the ranks' machines (rank order) and plan each rank. Pure."""
    options = options or Options()
    options.check()
    n = len(machines)
    if not 1 <= n <= MAX_RANKS:
        raise ConfigError(f"a cluster has 1 to {MAX_RANKS} ranks, not {n}")
    if mode == "tensor":
        return _tensor(spec, machines, options)
    if n > spec.num_layers:
        raise ConfigError(f"{n} ranks for {spec.num_layers} layers: every pipeline stage needs a "
                          f"layer; use at most {spec.num_layers} ranks")
    stages = list(reversed(machines))  # stage 0 runs the first layers: the last rank
    fits = _stage_fits(spec, [m for _, m in stages])
    upper = _upper(spec, options)
    budget = _largest(lambda t: _greedy(spec.num_layers, n, fits, options, t) is not None, upper)
    proportional = proportional_split(spec.num_layers, [m for _, m in machines])
    prop_stages = list(reversed(proportional))
    prop_bounds = _bounds(prop_stages)
    prop_budget = _largest(lambda t: all(fits(s, a, b, options, t) for s, (a, b)
                                         in enumerate(prop_bounds)), upper)
    asked = options.max_seq_len
    if budget:  # the longest context; then the split that fills every rank least
        fill = _least(lambda f: _greedy(spec.num_layers, n, fits, options, budget, fill=f) is not None)
        chosen = _greedy(spec.num_layers, n, fits, options, budget, fill=fill) or prop_stages
    else:  # no context fits: show the split in proportion to memory, and by how much it misses
        chosen = prop_stages
    notes: list[str] = []
    ranks = _ranks(spec, machines, options, list(reversed(chosen)))
    ok = budget >= asked and all(r.plan.fits for r in ranks)
    problem, ways = "", list[str]()
    if not ok:
        problem, ways = _shortfall(spec, machines, options, ranks, budget, fits)
    if prop_budget < budget:
        notes.append(f"a split in proportion to memory ({list(proportional)}) would hold "
                     f"{prop_budget or 'no'} tokens; this one holds {budget}")
    return ClusterPlan(spec.source, "pipeline", options, tuple(ranks), ok, budget,
                       tuple(proportional), prop_budget, problem, tuple(ways), tuple(notes))


def _upper(spec: ModelSpec, options: Options) -> int:
    from unimap.inspect import trained_context

    trained = trained_context(spec.config)
    return max(options.max_seq_len, min(MAX_SEQ_LEN, trained[0] if trained else MAX_SEQ_LEN))


FitsFn = Callable[..., bool]


def _stage_fits(spec: ModelSpec, stage_machines: list[Machine]) -> FitsFn:
    """Whether layers start..end-1 fit stage `stage`'s machine at `tokens`, with every device's
    budget scaled to `fill` thousandths (1000: the whole budget)."""
    @cache
    def fits(stage: int, start: int, end: int, options: Options, tokens: int, fill: int = 1000) -> bool:
        machine = stage_machines[stage]
        if fill != 1000:
            machine = replace(machine, devices=tuple(
                replace(d, budget_bytes=None if d.budget_bytes is None else d.budget_bytes * fill // 1000)
                for d in machine.devices))
        asked = cpu_compute_dtype(machine, replace(options, max_seq_len=tokens))
        return _fits(sliced(spec, start, end), machine, asked)

    return fits


def _greedy(layers: int, stages: int, fits: FitsFn, options: Options, tokens: int,
            fill: int = 1000) -> list[int] | None:
    """Layers per stage (stage 0 first): each stage takes the most layers that fit, leaving
    one for each later stage, the last stage the rest; None when some stage cannot."""
    counts: list[int] = []
    start = 0
    for stage in range(stages):
        last = layers - (stages - stage - 1)
        if stage == stages - 1:
            end = layers if fits(stage, start, layers, options, tokens, fill) else start
        else:
            def holds(e: int, s: int = stage, a: int = start) -> bool:
                return fits(s, a, e, options, tokens, fill)

            end = _largest_end(holds, start, last)
        if end <= start:
            return None
        counts.append(end - start)
        start = end
    return counts


def _largest_end(fits: Callable[[int], bool], start: int, last: int) -> int:
    """The largest end in (start, last] with fits(end), or start when even one layer does not."""
    return largest_fitting(fits, last, start + 1)


def _largest(fits: Callable[[int], bool], upper: int) -> int:
    return largest_fitting(fits, upper)


def _least(fits: Callable[[int], bool]) -> int:
    """The least fill (thousandths of every budget, 1 to 1000) at which fits holds; 1000 if only
    the whole budget does."""
    lo, hi = 1, 1000
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def _bounds(counts: Sequence[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for c in counts:
        out.append((start, start + c))
        start += c
    return out


def _even(layers: int, n: int) -> list[int]:
    base, extra = divmod(layers, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def proportional_split(layers: int, machines: Sequence[Machine]) -> list[int]:
    """Layers per rank in proportion to each machine's memory budget (largest remainder, at
    least one layer each): how exo splits a model."""
    weights = [max(sum(d.budget_bytes or 0 for d in m.devices), 1) for m in machines]
    n = len(weights)
    spare = layers - n
    total = sum(weights)
    shares = [spare * w / total for w in weights]
    counts = [1 + int(s) for s in shares]
    order = sorted(range(n), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in order[:layers - sum(counts)]:
        counts[i] += 1
    return counts


def _ranks(spec: ModelSpec, machines: Sequence[tuple[str, Machine]], options: Options,
           counts: list[int]) -> list[Rank]:
    """Each rank's plan for its layers (counts in rank order; rank 0 holds the last layers)."""
    n = len(machines)
    stage_counts = list(reversed(counts))
    bounds = _bounds(stage_counts)
    ranks = []
    for rank in range(n):
        start, end = bounds[n - 1 - rank]
        host, machine = machines[rank]
        plan = make_plan(sliced(spec, start, end), machine, options)
        ranks.append(Rank(rank, host, machine, tuple(range(start, end)), plan))
    return ranks


def _shortfall(spec: ModelSpec, machines: Sequence[tuple[str, Machine]], options: Options,
               ranks: list[Rank], budget: int, fits: FitsFn) -> tuple[str, list[str]]:
    over = [r for r in ranks if not r.plan.fits]
    missing = sum(max(0, r.peak_bytes - r.budget_bytes) for r in over)
    problem = (f"at --max-seq-len {options.max_seq_len} the ranks are {format_bytes(missing)} short"
               + (f" (rank {', rank '.join(str(r.index) for r in over)})" if over else ""))
    ways = []
    if budget:
        ways.append(f"--max-seq-len {budget} (the longest context this cluster holds)")
    if spec.quantization is None:
        for bits in sorted(ISQ_BITS, reverse=True):
            if options.isq is not None and bits >= options.isq:
                continue
            quantized = replace(options, isq=bits)
            if _greedy(spec.num_layers, len(machines), fits, quantized,
                       options.max_seq_len) is not None:
                ways.append(f"--isq {bits} (quantize the weights to {bits} bits while loading)")
                break
    biggest = max(m.devices[0].budget_bytes or 0 for _, m in machines)
    need = missing + max((r.peak_bytes // max(len(r.layers), 1) for r in ranks), default=0)
    ways.append(f"one more machine with at least {format_bytes(max(need, 1))} free for a plan "
                f"(the largest here plans {format_bytes(biggest)} on its first device)")
    return problem, ways


def _tensor(spec: ModelSpec, machines: Sequence[tuple[str, Machine]], options: Options) -> ClusterPlan:
    n = len(machines)
    part = tensor_sliced(spec, n)
    ranks = [Rank(i, host, machine, tuple(range(spec.num_layers)), make_plan(part, machine, options))
             for i, (host, machine) in enumerate(machines)]
    upper = _upper(spec, options)
    def holds(tokens: int) -> bool:
        return all(_fits(part, m, cpu_compute_dtype(m, replace(options, max_seq_len=tokens)))
                   for _, m in machines)

    budget = _largest(holds, upper)
    ok = all(r.plan.fits for r in ranks)
    problem = "" if ok else "; ".join(f"rank {r.index}: {r.plan.problem}" for r in ranks
                                      if not r.plan.fits)
    ways = (f"--max-seq-len {budget} (the longest context this group holds)",) if not ok and budget else ()
    return ClusterPlan(spec.source, "tensor", options, tuple(ranks), ok, budget,
                       tuple(_even(spec.num_layers, n)), 0, problem, ways,
                       (f"each rank holds 1/{n} of every layer's matrices and KV heads, and the "
                        "whole embeddings and head",))


# ---------------------------------------------------------------- the GPUs of one machine

NO_NCCL_VARIABLES = ("UNIMAP_NO_NCCL", "MISTRALRS_NO_NCCL")  # mistral.rs's name works too
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def nccl_switched_off(env: Any) -> str | None:
    """The variable that keeps a multi-GPU machine on one process, if one is set."""
    for name in NO_NCCL_VARIABLES:
        value = str(env.get(name, "")).strip().lower()
        if value in _TRUE:
            return name
        if value not in _FALSE:
            raise ConfigError(f"{name}={short(env.get(name))}: give 1 (one process on GPU 0 and "
                              "the CPU) or 0 (tensor parallelism over the GPUs through NCCL)")
    return None


def gpu_machines(machine: Machine) -> list[tuple[str, Machine]]:
    """One rank per GPU of `machine`, as mlx.launch's NCCL backend starts them: rank i sees GPU i
    alone (CUDA_VISIBLE_DEVICES=i, so it is its gpu:0) and an equal share of the host's RAM."""
    gpus = [d for d in machine.devices if d.kind == "gpu"]
    n = len(gpus)
    cpu = machine.cpu
    share = replace(cpu, budget_bytes=None if cpu.budget_bytes is None else cpu.budget_bytes // n,
                    available_bytes=None if cpu.available_bytes is None else cpu.available_bytes // n)
    return [("127.0.0.1", replace(machine, devices=(replace(g, name="gpu:0"), share),
                                  os_name=f"{machine.os_name} (GPU {i}, 1 of {n} ranks)"))
            for i, g in enumerate(gpus)]


def shard_support(model_type: str) -> str | None:
    """Why mlx-lm cannot run `model_type` tensor parallel, or None when its model has shard().
    Read from mlx-lm's source (its remapping of model types, then the module), so planning
    imports neither mlx nor mlx-lm; the run checks the loaded model again."""
    import ast

    from unimap.structure import mlx_lm_folder, model_source

    root = mlx_lm_folder()
    if root is None:
        return "mlx-lm is not installed"
    remapped = model_type
    try:
        for node in ast.parse((root / "utils.py").read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MODEL_REMAPPING"
                                                    for t in node.targets):
                remapped = ast.literal_eval(node.value).get(model_type, model_type)
    except (OSError, SyntaxError, ValueError):
        pass
    source = model_source(remapped)
    if source is None:
        return f"mlx-lm has no model module for {model_type!r}"
    if "def shard(" not in source:
        return f"mlx-lm's {remapped} model has no shard() (tensor parallelism)"
    return None


def gpu_group(spec: ModelSpec, single: Plan, env: Any) -> tuple[ClusterPlan | None, str]:
    """Tensor parallelism across the GPUs of a multi-GPU CUDA machine, one rank per GPU over
    NCCL, when the automatic plan of one process does not keep the model on its GPU (as mistral.rs
    does unless MISTRALRS_NO_NCCL=1; a model that fits one GPU stays there, unchanged) and each
    rank's share fits its GPU whole (NCCL's collectives work on GPU memory: no rank offloads to
    the CPU). Returns the group's plan, or None and why not (empty when the question does not
    arise)."""
    if not single.spills_beside_gpus:
        return None, ""
    machine = single.machine
    gpus = [d for d in machine.devices if d.kind == "gpu"]
    off = nccl_switched_off(env)
    n = len(gpus)
    if off:
        return None, f"{off} is set: one process on {gpus[0].name} and the CPU"
    visible = str(env.get("CUDA_VISIBLE_DEVICES", "")).replace(" ", "")
    if visible and visible != ",".join(str(i) for i in range(n)):
        return None, (f"CUDA_VISIBLE_DEVICES={visible}: mlx.launch gives rank i GPU i, so "
                      f"tensor parallelism needs the first {n} GPUs (unset it, or 0,1,...)")
    reason = shard_support(spec.arch.model_type)
    if reason is None:
        try:
            tensor_sliced(spec, n)
        except ConfigError as exc:
            reason = str(exc)
    if reason is None:
        group = plan_cluster(spec, gpu_machines(machine), single.estimate.options, mode="tensor")
        if group.fits and all(r.plan.all_on_gpu for r in group.ranks):
            return replace(group, notes=(
                f"tensor parallel over the {n} GPUs through NCCL (one rank each), as one process "
                f"would put layers on the CPU; UNIMAP_NO_NCCL=1 keeps one process", *group.notes)), ""
        rank = group.ranks[0]
        reason = (f"1/{n} of the model with its KV and working set ({format_bytes(rank.peak_bytes)}) "
                  f"does not fit one GPU's budget ({format_bytes(gpus[0].budget_bytes or 0)}) "
                  "either, and a rank keeps its share on its GPU")
    return None, f"no tensor parallelism over the {n} GPUs: {reason}"
