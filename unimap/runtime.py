"""apply -> a mapped MLX model: load lazily, set the plan's wired and memory limits, materialize
the GPU part first and the CPU part after, and pin each layer to its device's stream.

Pinning swaps a layer's class for a subclass whose __call__ runs under `mx.stream(...)`, so
parameter names and attributes stay as mlx-lm made them. A plan that keeps everything on the GPU
changes nothing: no class is swapped. The wired limit (Metal) and MLX's memory limit (every
backend: over it, MLX waits for work in flight rather than allocate ahead) are set before any
weight is evaluated and held until `release()` (or the model's collection, or process exit); the
previous limits are restored on every path. On the CPU-only build `mx.gpu` exists but is
unusable, so a plan's GPU part then runs on a stream of its own on the CPU (which is what the
tests use to check placement). Half-precision routed experts of layers on a CPU stream stay as
stored and are upcast call by call, only those a call selects (MLX's CPU gather_mm takes float32
only).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimap import vlm
from unimap.checks import foreign
from unimap.errors import ConfigError, ModelError
from unimap.estimate import UPCAST_GROUP_BYTES
from unimap.inspect import is_expert
from unimap.plan import Plan

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class Mapped:
    """What unimap keeps on a loaded model (as `model._unimap`)."""

    plan: Plan
    placement: Placement
    limits: Limits

    @property
    def parts_stream(self) -> Any:
        """Where the embeddings and head run: the generation loop's stream."""
        p = self.placement
        return p.gpu_stream if self.plan.non_mapped_device != "cpu" else p.cpu_stream


@dataclass
class Placement:
    """What apply() did: the streams it used and where each layer runs."""

    gpu_stream: Any
    cpu_stream: Any
    layer_streams: dict[int, Any] = field(default_factory=dict)
    pinned: bool = False
    gpu_is_real: bool = True
    cpu_experts: tuple[int, ...] = ()  # layers on a GPU whose routed experts run on the CPU


# ---------------------------------------------------------------- limits


# the memory limits of the models loaded in this process, by holder, and MLX's limit before them
_HELD: dict[int, int] = {}
_BEFORE: list[int] = []


class Limits:
    """Holds a loaded plan's limits and restores the previous ones exactly once: the wired limit
    (Metal) and, on every backend, MLX's memory limit at the plan's (Plan.memory_limit_bytes),
    over which MLX's evaluation waits for the work in flight instead of allocating ahead. With
    several models loaded, MLX's limit is the sum of theirs; never above the limit MLX had."""

    def __init__(self) -> None:
        self.previous: int | None = None
        self.holding = False

    def set(self, wired_bytes: int | None, memory_bytes: int | None = None) -> None:
        import mlx.core as mx

        if memory_bytes is not None and not self.holding:
            if not _HELD:
                _BEFORE[:] = [mx.get_memory_limit()]
            _HELD[id(self)] = memory_bytes
            self.holding = True
            mx.set_memory_limit(min(sum(_HELD.values()), _BEFORE[0]))
            atexit.register(self.release)
        if wired_bytes is None or not _metal():
            return
        previous = mx.set_wired_limit(wired_bytes)
        if self.previous is None:
            self.previous = previous
            atexit.register(self.release)

    def release(self) -> None:
        import mlx.core as mx

        if self.holding:
            self.holding = False
            _HELD.pop(id(self), None)
            mx.set_memory_limit(min(sum(_HELD.values()), _BEFORE[0]) if _HELD else _BEFORE[0])
        if self.previous is not None:
            previous, self.previous = self.previous, None
            mx.set_wired_limit(previous)


def _metal() -> bool:
    import mlx.core as mx

    return bool(mx.is_available(mx.gpu)) and bool(getattr(mx, "metal", None)) and mx.metal.is_available()


# ---------------------------------------------------------------- class swaps


_SWAPPED: dict[tuple[type, str], type] = {}


def swapped_class(cls: type, kind: str, make: Callable[[type], type]) -> type:
    """The subclass `make(cls)` that a module's class is swapped for (pinned, upcast, evaluated,
    ...): made once per class and kind, and named like `cls`, so parameter names, attributes and
    reprs stay as mlx-lm made them; a class already of that kind is returned as it is."""
    if getattr(cls, f"_unimap_{kind}", False):
        return cls
    made = _SWAPPED.get((cls, kind))
    if made is None:
        made = make(cls)
        made.__name__, made.__qualname__ = cls.__name__, cls.__qualname__
        made.__module__ = cls.__module__
        setattr(made, f"_unimap_{kind}", True)
        _SWAPPED[(cls, kind)] = made
    return made


# ---------------------------------------------------------------- pinning


def pinned_class(cls: type) -> type:
    """A subclass of `cls` whose calls run under the stream stored on the instance."""
    return swapped_class(cls, "pinned", _make_pinned)


def _make_pinned(cls: type) -> type:
    import mlx.core as mx

    def cast(value: Any, dtype: Any) -> Any:
        if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating):
            return value.astype(dtype)
        return value

    class Pinned(cls):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            compute = self._unimap_dtype
            with mx.stream(self._unimap_stream):
                if compute is None:
                    return super().__call__(*args, **kwargs)
                # the CPU part of a split computes in its own dtype; hand back the caller's
                given = next((a.dtype for a in args if isinstance(a, mx.array)), None)
                out = super().__call__(*(cast(a, compute) for a in args),
                                       **{k: cast(v, compute) for k, v in kwargs.items()})
                return cast(out, given) if given is not None else out

    return Pinned


def pin(module: Any, stream: Any, compute_dtype: Any = None) -> None:
    """Run `module` under `stream` from now on (in `compute_dtype` if given), keeping its
    parameters and attributes."""
    module.__class__ = pinned_class(type(module))
    object.__setattr__(module, "_unimap_stream", stream)
    object.__setattr__(module, "_unimap_dtype", compute_dtype)


# ---------------------------------------------------------------- routed experts on the CPU


def upcast_class(cls: type) -> type:
    """A subclass of mlx-lm's SwitchLinear that keeps its expert stack as stored and upcasts to
    float32, call by call, only the experts the call uses: MLX's CPU gather_mm takes float32
    only, and a float32 copy of the stack would double the layer."""
    return swapped_class(cls, "upcast", _make_upcast)


def _make_upcast(cls: type) -> type:
    import mlx.core as mx

    class Upcast(cls):  # type: ignore[misc]
        def __call__(self, x: Any, indices: Any, sorted_indices: bool = False) -> Any:
            out = upcast_gather_mm(x, self["weight"], indices, sorted_indices)
            if "bias" in self:
                out = out + mx.expand_dims(self["bias"][indices], -2)
            return out.astype(x.dtype)

    return Upcast


def upcast_gather_mm(x: Any, weight: Any, indices: Any, sorted_indices: bool = False,
                     group_bytes: int = UPCAST_GROUP_BYTES) -> Any:
    """gather_mm(x, weight[indices].T) in float32, weight (experts, out, in) in any dtype: the
    routed rows sorted by expert (the indices are read: a sync per call), then each selected
    expert's slice of the stack upcast on its own and multiplied by its rows, experts taken in
    groups of at most `group_bytes` (or one expert), each evaluated, and so freed, before the
    next: MLX's CPU build then reuses their buffers from its 32 MiB cache (1.2-1.6x the decode
    speed of leaving them to the caller's evaluation, measured)."""
    import mlx.core as mx
    import numpy as np

    # the batch dims of x and of the indices broadcast together, as gather_mm's do (SwitchGLU's
    # x has 1s where its indices route; DeepSeek V4.1's grouped output projection hands its
    # tokens as x and one index per group)
    batch = mx.broadcast_shapes(x.shape[:-2], indices.shape)
    indices = mx.broadcast_to(indices, batch)
    rows, m = indices.size, x.shape[-2]  # SwitchGLU passes m = 1 row per routed expert
    lhs = mx.broadcast_to(x, (*batch, *x.shape[-2:])).reshape(rows, m, -1).astype(mx.float32)
    flat, order = indices.flatten(), None
    if not sorted_indices and rows > 1:
        order = mx.argsort(flat)
        flat, lhs = flat[order], lhs[order]
    experts, starts, counts = np.unique(np.asarray(flat), return_index=True, return_counts=True)
    per_group = max(1, group_bytes // (weight[0].size * 4))
    parts: list[Any] = []
    one = mx.zeros((1,), mx.uint32)

    def times(e: int, s: int, c: int) -> Any:  # rows s..s+c-1 by expert e, upcast alone
        upcast = weight[e].astype(mx.float32).T
        if c == 1:  # one row: MLX's gather_mm beats a BLAS matmul call (measured, OpenBLAS)
            return mx.gather_mm(lhs[s:s + 1], upcast[None], rhs_indices=one)
        return lhs[s:s + c] @ upcast

    for first in range(0, len(experts), per_group):
        group = [times(int(e), int(s), int(c)) for e, s, c in zip(
            experts[first:first + per_group], starts[first:first + per_group],
            counts[first:first + per_group], strict=True)]
        mx.eval(group)
        parts += group
    out = mx.concatenate(parts) if len(parts) > 1 else parts[0]
    if order is not None:
        out = out[mx.argsort(order)]
    return out.reshape(*indices.shape, m, -1)


def upcast_experts(layer: Any) -> int:
    """Swap every half-precision SwitchLinear of `layer` (a layer that runs on the CPU) for its
    upcasting subclass; returns how many."""
    import mlx.core as mx

    swapped = 0
    for _, module in layer.named_modules():
        if _is_switch_linear(module) and module["weight"].dtype != mx.float32:
            module.__class__ = upcast_class(type(module))
            swapped += 1
    return swapped


def _is_switch_linear(module: Any) -> bool:
    """mlx-lm's and mlx-vlm's SwitchLinear (each package has its own class), not the quantized one
    (MLX's CPU gather_qmm takes any float dtype)."""
    return any(c.__name__ == "SwitchLinear" for c in type(module).__mro__)


def is_expert_path(path: str) -> bool:
    """Whether a parameter path inside a layer belongs to its routed experts."""
    return is_expert(f".{path}")


def expert_modules(layer: Any) -> list[Any]:
    """The routed experts of `layer` as modules: the outermost submodules whose parameters are
    all routed experts (mlx-lm's SwitchGLU / SwitchMLP, or each expert of a list of them)."""
    from mlx.utils import tree_flatten

    found: dict[str, Any] = {}
    for path, module in layer.named_modules():
        names = [str(pair[0]) for pair in tree_flatten(module.parameters())]
        if path and names and all(is_expert_path(f"{path}.{name}") for name in names):
            found[path] = module
    return [m for path, m in found.items()
            if not any(path.startswith(f"{other}.") for other in found)]


def stream_on_cpu(stream: Any) -> bool:
    """The CPU stream, or a stand-in GPU's stream on MLX's CPU build."""
    import mlx.core as mx

    return bool(stream.device == mx.cpu)


# ---------------------------------------------------------------- vision tower, block by block


def evaluated_class(cls: type) -> type:
    """A subclass of `cls` whose calls evaluate their output before returning."""
    return swapped_class(cls, "evaluated", _make_evaluated)


def _make_evaluated(cls: type) -> type:
    import mlx.core as mx

    class Evaluated(cls):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            out = super().__call__(*args, **kwargs)
            mx.eval(out)
            return out

    return Evaluated


def prefill_evaluated_class(cls: type) -> type:
    """A subclass of a decoder layer's class that, on a prefill chunk (more than one token),
    evaluates its output and its cache's state before returning. With convolution or SSM state
    layers, MLX otherwise evaluates the whole chunk as one graph whose later outputs (each
    layer's state) keep every layer's scan blocks and inputs alive at once: the working set grew
    with depth (a 16-layer mamba2 twin: 43 MiB against 9 at 256 tokens; measured)."""
    return swapped_class(cls, "prefill_evaluated", _make_prefill_evaluated)


def _make_prefill_evaluated(cls: type) -> type:
    import mlx.core as mx

    from unimap.structure import state_arrays

    class PrefillEvaluated(cls):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            out = super().__call__(*args, **kwargs)
            x = args[0] if args else None
            if isinstance(x, mx.array) and x.ndim >= 2 and x.shape[1] > 1:
                caches = [v for v in (*args, *kwargs.values()) if hasattr(v, "is_trimmable")]
                mx.eval(out, [a for c in caches for a in state_arrays(c.state)])
            return out

    return PrefillEvaluated


def has_state_layers(plan: Plan) -> bool:
    """Whether some layer keeps a fixed state (convolution, SSM, linear attention) beside or
    instead of a KV cache."""
    caches = plan.spec.arch.caches if plan.spec is not None else ()
    return "recurrent" in {p.kind for p in plan.layers} or any(c.state_elements for c in caches)


def tower_blocks(module: Any) -> list[Any]:
    """A vision tower's transformer blocks: the longest list of submodules named `blocks` or
    `layers` under `module` (mlx-vlm's Qwen2-VL `blocks`, SigLIP's `encoder.layers`)."""
    import mlx.nn as nn

    kind: type = nn.Module  # type: ignore[attr-defined]
    best: list[Any] = []
    for name, child in module.children().items():
        if isinstance(child, list) and name in ("blocks", "layers") and all(
                isinstance(c, kind) for c in child):
            found = list(child)
        elif isinstance(child, kind):
            found = tower_blocks(child)
        else:
            continue
        if len(found) > len(best):
            best = found
    return best


def evaluate_blockwise(tower: Any) -> int:
    """Evaluate `tower` block by block from now on (same results): on MLX's CUDA backend an
    array's memory is freed only after the kernels using it have run, and a whole tower as one
    lazy graph held 2.5 times as much (Qwen2-VL, measured on an H200). Returns the blocks."""
    blocks = tower_blocks(tower)
    for block in blocks:
        block.__class__ = evaluated_class(type(block))
    return len(blocks)


def _cuda() -> bool:
    import mlx.core as mx

    return bool(mx.is_available(mx.gpu)) and not _metal()


# ---------------------------------------------------------------- apply


def new_streams() -> Placement:
    import mlx.core as mx

    gpu_real = bool(mx.is_available(mx.gpu))
    cpu_stream = mx.new_stream(mx.cpu)
    gpu_stream = mx.new_stream(mx.gpu) if gpu_real else mx.new_stream(mx.cpu)
    return Placement(gpu_stream=gpu_stream, cpu_stream=cpu_stream, gpu_is_real=gpu_real)


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers: its `layers`, or its language model's (an mlx-vlm model whose
    own `layers` property fails, as Idefics 2's reaches for a `model` its language model lacks)."""
    for owner in (model, getattr(model, "language_model", None),
                  getattr(getattr(model, "language_model", None), "model", None)):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if layers is not None:
            return list(layers)
    raise ModelError("this mlx-lm model exposes no `layers`; unimap cannot map it")


def _values(tree: Any) -> list[Any]:
    from mlx.utils import tree_flatten

    return [value for _, value in tree_flatten(tree)]  # type: ignore[str-unpack]


def apply_plan(model: Any, plan: Plan, limits: Limits, progress: Progress | None = None) -> Placement:
    """Materialize `model`'s lazy parameters the way `plan` says, then pin layers to streams."""
    import mlx.core as mx

    layers = decoder_layers(model)
    if len(layers) != len(plan.layers):
        raise ModelError(f"the loaded model has {len(layers)} layers but the plan has "
                         f"{len(plan.layers)}; the checkpoint and its config disagree")
    placement = new_streams()
    beyond = sorted({p.device for p in plan.layers if p.device.startswith("gpu:")} - {"gpu:0"})
    if beyond and placement.gpu_is_real:
        raise ConfigError(f"the plan puts layers on {', '.join(beyond)}, but one unimap process "
                          "runs on one GPU (gpu:0); plan for fewer GPUs (-n with GPU 0 only, or "
                          "the automatic plan with CUDA_VISIBLE_DEVICES naming one GPU), or run "
                          "a rank per GPU with mlx.launch")
    on_gpu = {p.index for p in plan.layers if p.device.startswith("gpu")}
    experts = {p.index: expert_modules(layers[p.index]) for p in plan.layers
               if p.index in on_gpu and p.experts_device == "cpu"}
    missing = [i for i, found in experts.items() if not found]
    if missing:
        raise ModelError(f"the plan keeps the routed experts of layer {missing[0]} on the CPU, but "
                         "the loaded layer has no expert module unimap can move; drop --cpu-moe / "
                         "--n-cpu-moe")
    placement.cpu_experts = tuple(sorted(experts))
    parts_stream = placement.gpu_stream if plan.non_mapped_device != "cpu" else placement.cpu_stream
    # before any weight is evaluated: GPU buffers wire first, and loading stays within the plan
    limits.set(plan.wired_limit_bytes, plan.memory_limit_bytes)
    layer_ids = {id(p) for layer in layers for p in _values(layer.parameters())}
    parts = [p for p in _values(model.parameters()) if id(p) not in layer_ids]
    order = sorted(range(len(layers)), key=lambda i: i not in on_gpu)  # GPU layers first
    total = len(layers) + 1
    with mx.stream(parts_stream):
        for array in parts:  # one at a time: with --isq each source matrix is freed in turn
            mx.eval(array)
    if progress:
        what = "embeddings, head and vision tower" if plan.vision_device else "embeddings and head"
        progress(1, total, what)
    cpu_dtype = getattr(mx, plan.cpu_dtype) if plan.cpu_dtype else None
    off = {id(a) for modules in experts.values() for m in modules for a in _values(m.parameters())}
    for done, index in enumerate(order, start=2):
        stream = placement.gpu_stream if index in on_gpu else placement.cpu_stream
        if cpu_dtype is not None and index not in on_gpu:  # lazy: cast as it loads
            cast_floats(layers[index], plan.cpu_dtype, keep=is_expert_path)
        if stream_on_cpu(stream):  # MLX's CPU gather_mm takes float32 only
            upcast_experts(layers[index])
        with mx.stream(stream):  # the GPU part first; routed experts bound for the CPU wait
            mx.eval([a for a in _values(layers[index].parameters()) if id(a) not in off])
        placement.layer_streams[index] = stream
        if progress:
            progress(done, total, f"layer {index}")
    for modules in experts.values():  # after every GPU buffer: pageable, on the CPU
        for module in modules:
            upcast_experts(module)
            with mx.stream(placement.cpu_stream):
                mx.eval(module.parameters())
    # Pin only when placement differs from where MLX would run anyway: a split, the CPU while
    # the default device is a GPU, or CPU layers computing in another dtype (half-precision MoE).
    # Otherwise a CPU-only machine, like an all-GPU plan, changes nothing.
    if (on_gpu and not plan.all_on_gpu or not on_gpu and mx.default_device() == mx.gpu
            or plan.cpu_dtype is not None):
        for index, layer in enumerate(layers):
            pin(layer, placement.layer_streams[index], None if index in on_gpu else cpu_dtype)
        for modules in experts.values():  # inside a layer pinned to the GPU
            for module in modules:
                pin(module, placement.cpu_stream)
        placement.pinned = True
    if has_state_layers(plan):  # layer by layer: see prefill_evaluated_class
        for layer in layers:
            layer.__class__ = prefill_evaluated_class(type(layer))
    tower = vlm.vision_tower(model) if plan.vision_device not in (None, "cpu") and _cuda() else None
    if tower is not None:
        evaluate_blockwise(tower)  # priced so (estimate.CUDA_VISION_FACTOR)
    mx.clear_cache()
    return placement


# ---------------------------------------------------------------- building the lazy model


def quantize_in_place(model: Any, bits: int, group_size: int = 64) -> None:
    """mlx-lm's rules: modules with to_quantized whose input dim divides by the group, and the
    model's own quant_predicate (e.g. MoE routers at 8 bits). Lazy: evaluation quantizes."""
    import mlx.nn as nn

    predicate = getattr(model, "quant_predicate", None)

    def choose(path: str, module: Any) -> bool | dict[str, int]:
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size != 0:
            return False
        return predicate(path, module) if predicate is not None else True

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=choose)  # type: ignore[attr-defined]


def cast_floats(model: Any, dtype_name: str | None, keep: Callable[[str], bool] | None = None) -> None:
    """Cast `model`'s float parameters to `dtype_name` (lazily), but those whose path `keep`s."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    if dtype_name is None:
        return
    dtype = getattr(mx, dtype_name)

    def cast(path: str, p: Any) -> Any:
        if not mx.issubdtype(p.dtype, mx.floating) or keep is not None and keep(path):
            return p
        return p.astype(dtype)

    model.update(tree_map_with_path(cast, model.parameters()))


def lazy_model(source: str) -> tuple[Any, Any]:
    """An mlx-lm model and tokenizer (a local folder, or a Hub repo id that mlx-lm downloads),
    parameters not yet evaluated."""
    from mlx_lm.utils import load

    folder = Path(source)
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if folder.is_dir() and not any((folder / name).exists() for name in tokenizer_files):
        raise ModelError(f"{source}: no tokenizer (tokenizer.json, tokenizer.model or "
                         "tokenizer_config.json) beside config.json; copy the tokenizer files "
                         "from the model's original repository")
    try:
        model, tokenizer = load(source, lazy=True)[:2]
    except (ValueError, OSError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{source}: mlx-lm cannot load it ({foreign(exc)})") from None
    return model, tokenizer



def gguf_model(path: Path) -> tuple[Any, Any]:
    """An mlx-lm model from a GGUF file (llama, qwen2, qwen3, the Gemmas): config and tokenizer from its
    metadata, tensors through mx.load (lazy), renamed to mlx-lm's parameter names."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import _get_classes

    from unimap.gguf import NORM_SHIFTED, gguf_config, gguf_tokenizer, mlx_name, quantized_modules, read_gguf

    gguf = read_gguf(path)
    config = gguf_config(gguf)
    arch = str(gguf.metadata.get("general.architecture"))
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    quantized = quantized_modules(gguf)
    if quantized:  # turn those modules into QuantizedLinear/Embedding before loading into them
        nn.quantize(model, class_predicate=lambda p, _: quantized.get(p, False))  # type: ignore[attr-defined]
    try:
        stored: dict[str, Any] = mx.load(str(path))  # type: ignore[assignment]
        weights = {mlx_name(name, arch): array for name, array in stored.items()}
        if arch in NORM_SHIFTED:  # llama.cpp stored Gemma's norms as 1 + weight
            weights = {k: v - 1 if k.endswith("norm.weight") else v for k, v in weights.items()}
        if hasattr(model, "sanitize"):  # e.g. drops a tied model's lm_head, as mlx-lm's load does
            weights = model.sanitize(weights)
        model.load_weights(list(weights.items()), strict=True)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: MLX cannot load its tensors ({foreign(exc)}); re-download the "
                         "file") from None
    return model, gguf_tokenizer(gguf)
