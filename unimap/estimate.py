"""estimate -> Estimate: every byte a run will need, as named terms in int bytes.

Weights are exact header bytes (or what MLX's affine quantization / a dtype change makes of them).
The KV cache follows mlx-lm's layout (KVCache grows in steps of 256 tokens, a growing layer
briefly holds its old and new buffers; sliding-window layers keep at most window - 1 + one
prefill chunk) or a paged layout rounded to blocks, optionally quantized. Activations are the
working set of one prefill chunk (mlx-lm prefills in chunks of 2048 and computes logits for the
last token only): the attention scores and masks from the shapes, every other array from
coefficients measured per model family (unimap/calibration.py, fitted by
tools/calibrate_activations.py); tools/bench_estimate.py checks the whole peak against
mx.get_peak_memory(). No mlx here, and one read only: for a Metal plan of a family with a
recurrent state, mlx-lm's source says whether its scan is a fused kernel (metal_fused_scan, once
per family).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from typing import Literal

from unimap.calibration import COEFFICIENTS
from unimap.checks import MAX_BATCH_SIZE, MAX_IMAGE_LENGTH, MAX_NUM_IMAGES, MAX_SEQ_LEN, short, whole_number
from unimap.errors import ArgumentTypeError, ConfigError
from unimap.families import Architecture, LayerCache, Vision, vlm_package
from unimap.family_calibration import FAMILY_EXTRA
from unimap.inspect import (
    GROUP_SIZE,
    NON_MAPPED_SLOT,
    VISION_SLOT,
    ModelSpec,
    Slot,
    dtype_bytes,
    trained_context,
)
from unimap.metal_calibration import METAL_ARRAYS_FACTORS, METAL_FAMILY_KINDS
from unimap.vision_calibration import VISION_COEFFICIENTS

ISQ_BITS = (2, 3, 4, 5, 6, 8)
KV_BITS = (2, 3, 4, 5, 6, 8)
KV_STEP_TOKENS = 256  # mlx-lm KVCache.step
PREFILL_STEP_TOKENS = 2048  # mlx-lm generate_step's prefill_step_size
FUSED_HEAD_DIMS = (64, 80, 128)  # head dims MLX's fused prefill attention kernel handles
# How a device runs attention: "unfused" (MLX's CPU backend, and any GPU not measured), "metal"
# (fused kernel, no scores), "cuda" (measured on an H200, MLX 0.32.4; docs/BENCHMARKS.md).
Kernel = Literal["unfused", "metal", "cuda"]
# MLX's CUDA backend frees an array only when the kernels using it have run, so more of a chunk's
# arrays are alive at once than on the CPU. Measured factor over the CPU-calibrated figure, per
# mlx-lm family: the least that covers every case an H200 measured (bf16, tools/bench_estimate.py
# on the GPU, 256-8192 tokens x batch 1-4; refitted to the CPU coefficients by
# tools/calibrate_cuda.py). Families not measured there take the largest.
CUDA_ARRAYS_FACTORS = {"llama": 1.31, "qwen3": 1.21, "phi3": 2.03, "gemma3_text": 1.74}
# CUDA attention (tools/gpu_attention_probe.py): bf16 with no mask or "causal" is fused for head
# dims 64 and 96 (80 and 128 assumed, as on Metal); a boolean array mask (a sliding window past
# its size), or float32, runs unfused with float32-sized scores, and in a model two such score
# buffers were alive at once (gemma3, 2048 and 4096 tokens).
CUDA_FUSED_HEAD_DIMS = (64, 80, 96, 128)
CUDA_UNFUSED_SCORE_BYTES = 2 * 4
# The vision tower on CUDA, evaluated block by block (runtime.py does on a CUDA GPU): 1.045 times
# the CPU-calibrated figure (Qwen2-VL, 448 px; as one lazy graph it held 2.65 times).
CUDA_VISION_FACTOR = 1.05

KvLayout = Literal["mlx-lm", "paged"]


DEFAULT_SEQ_LEN = 4096  # --max-seq-len when none is given (or the trained context, if shorter)
# mlx-lm's RotatingKVCache keeps the first 4 tokens (attention sinks) beside the window
KV_KEEP_TOKENS = 4
MIN_KV_SIZE = 2 * KV_KEEP_TOKENS


@dataclass(frozen=True)
class Options:
    """The mapping parameters: what the run must have room for."""

    max_seq_len: int = 4096
    max_batch_size: int = 1
    max_num_images: int = 1
    max_image_length: int = 1024
    isq: int | None = None
    dtype: str | None = None  # "bfloat16", "float16", "float32": cast float weights
    kv_bits: int | None = None
    kv_layout: KvLayout = "mlx-lm"
    max_kv_size: int | None = None  # a rotating cache of this many tokens per layer (mlx-lm's flag)
    kv_block_tokens: int = 32  # paged layout only
    cpu_dtype: str | None = None  # compute dtype of the CPU part of a split (None: the model's)
    prefill_step_tokens: int = PREFILL_STEP_TOKENS

    @property
    def prefill_chunk_tokens(self) -> int:
        """Tokens one prefill step takes: never more than a rotating cache's window (a chunk is
        held beside the window while it is added)."""
        return min(self.prefill_step_tokens, self.max_kv_size or self.prefill_step_tokens)

    def check(self) -> None:
        for name, low, high in (("max_seq_len", 1, MAX_SEQ_LEN), ("max_batch_size", 1, MAX_BATCH_SIZE),
                                ("max_image_length", 1, MAX_IMAGE_LENGTH),
                                ("max_num_images", 0, MAX_NUM_IMAGES),
                                ("kv_block_tokens", 1, MAX_SEQ_LEN),
                                ("prefill_step_tokens", 1, MAX_SEQ_LEN)):
            whole_number(getattr(self, name), f"--{name.replace('_', '-')}", low, high)
        if self.max_kv_size is not None:
            whole_number(self.max_kv_size, "--max-kv-size", MIN_KV_SIZE, MAX_SEQ_LEN)
            if self.kv_bits is not None:
                raise ConfigError("--max-kv-size and --kv-bits: mlx-lm has no quantized rotating "
                                  "cache; give one of them")
            if self.kv_layout == "paged":
                raise ConfigError("--max-kv-size keeps mlx-lm's rotating cache: drop --kv-layout paged")
        for name in ("isq", "kv_bits"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ArgumentTypeError(f"--{name.replace('_', '-')} must be a whole number of bits, "
                                        f"not {short(value)}")
        if self.isq is not None and self.isq not in ISQ_BITS:
            raise ConfigError(f"--isq {self.isq!r}: MLX quantizes to {', '.join(map(str, ISQ_BITS))} bits")
        if self.kv_bits is not None and self.kv_bits not in KV_BITS:
            raise ConfigError(f"--kv-bits {self.kv_bits!r}: use one of {', '.join(map(str, KV_BITS))}")
        if self.dtype not in (None, "bfloat16", "float16", "float32"):
            raise ConfigError(f"--dtype {self.dtype!r}: use bfloat16, float16 or float32")
        if self.cpu_dtype not in (None, "bfloat16", "float16", "float32"):
            raise ConfigError(f"--cpu-dtype {self.cpu_dtype!r}: use bfloat16, float16 or float32")
        if self.kv_layout not in ("mlx-lm", "paged"):
            raise ConfigError(f"kv layout {self.kv_layout!r}: use 'mlx-lm' or 'paged'")


@dataclass(frozen=True)
class LayerEstimate:
    index: int
    kind: str  # "full", "sliding", "recurrent"
    weight_bytes: int
    kv_bytes: int  # cache (or recurrent state) at its largest
    source_bytes: int = 0  # the layer as stored: held beside its result while it is converted
    expert_bytes: int = 0  # its routed experts, as loaded (part of weight_bytes; never recast)
    expert_source_bytes: int = 0  # its routed experts as stored

    @property
    def dense_bytes(self) -> int:
        """Everything of the layer but its routed experts: attention, norms, router, shared
        experts (what stays on the GPU when its experts move to the CPU)."""
        return self.weight_bytes - self.expert_bytes


@dataclass(frozen=True)
class Estimate:
    options: Options
    dtype: str  # activation dtype
    layers: tuple[LayerEstimate, ...]
    non_mapped_weight_bytes: int  # embeddings, lm_head, final norm, ...
    vision_weight_bytes: int  # vision tower and projector
    parts_source_bytes: int  # the largest non-mapped tensor as stored (converted one at a time)
    kv_growth_bytes: int  # transient: one layer's cache while it is copied to grow
    sequence_tokens: int  # max_seq_len plus the image tokens
    image_tokens: int
    activation_terms: dict[str, int] = field(default_factory=dict)  # unfused attention
    fused_activation_terms: dict[str, int] = field(default_factory=dict)  # Metal's fused kernel
    cuda_activation_terms: dict[str, int] = field(default_factory=dict)  # MLX's CUDA backend
    vision_activation_terms: dict[str, int] = field(default_factory=dict)
    # the same layers priced for the CPU part of a split, in its compute dtype
    cpu_dtype: str = ""
    cpu_layers: tuple[LayerEstimate, ...] = ()
    cpu_activation_terms: dict[str, int] = field(default_factory=dict)
    trained_context: int | None = None  # tokens the model was trained for, if its config says
    trained_context_source: str = ""
    head_read_bytes: int = 0  # what a decode step reads of the non-mapped parts (the head)
    largest_array_bytes: int = 0  # the largest single array a prefill chunk makes

    @property
    def weight_bytes(self) -> int:
        return (sum(layer.weight_bytes for layer in self.layers) + self.non_mapped_weight_bytes
                + self.vision_weight_bytes)

    @property
    def kv_bytes(self) -> int:
        return sum(layer.kv_bytes for layer in self.layers)

    def terms(self, kernel: Kernel = "unfused", cpu_part: bool = False) -> dict[str, int]:
        """The activation terms of a device that runs attention with `kernel` (the CPU part of
        a split: in its own compute dtype)."""
        if cpu_part:
            return self.cpu_activation_terms
        return {"unfused": self.activation_terms, "metal": self.fused_activation_terms,
                "cuda": self.cuda_activation_terms}[kernel]

    def vision_terms(self, kernel: Kernel = "unfused") -> dict[str, int]:
        """The vision phase's terms on a device that runs attention with `kernel`."""
        if kernel != "cuda" or "vision/encoder" not in self.vision_activation_terms:
            return self.vision_activation_terms
        encoder = int(self.vision_activation_terms["vision/encoder"] * CUDA_VISION_FACTOR)
        return {**self.vision_activation_terms, "vision/encoder": encoder}

    def activation_bytes(self, kernel: Kernel = "unfused", cpu_part: bool = False) -> int:
        """Peak working set of a prefill chunk (beside the pixels and input embeddings of a run
        with images), or of the vision encoder, when larger."""
        vision = self.vision_terms(kernel)
        shared = sum(v for k, v in vision.items() if k.startswith("all/"))
        return max(_phase_peak(self.terms(kernel, cpu_part)) + shared, _phase_peak(vision))

    def growth_arrays_bytes(self, kernel: Kernel = "unfused", cpu_part: bool = False) -> int:
        """The chunk's arrays alive while a layer's cache is copied to grow (not its scores:
        those come after the cache update)."""
        return self.terms(kernel, cpu_part).get("prefill/arrays", 0)

    def working_bytes(self, kernel: Kernel = "unfused", cpu_part: bool = False) -> int:
        """Above weights and KV: the larger of a working set and a cache growing mid-chunk."""
        growth = self.kv_growth_bytes + self.growth_arrays_bytes(kernel, cpu_part)
        return max(self.activation_bytes(kernel, cpu_part), growth if self.kv_growth_bytes else 0)

    @property
    def converts(self) -> bool:
        """Whether loading converts stored weights (--isq or --dtype): each unit's stored form
        is then held beside its result for a moment."""
        return self.options.isq is not None or self.options.dtype is not None

    def peak_bytes(self, kernel: Kernel = "unfused") -> int:
        return self.weight_bytes + self.kv_bytes + self.working_bytes(kernel)


def _phase_peak(terms: dict[str, int]) -> int:
    """Terms are named "<phase>/<what>" plus "all/<what>" shared by every phase; the peak is the
    largest phase plus the shared terms (MLX frees a phase's arrays before the next)."""
    shared = sum(v for k, v in terms.items() if k.startswith("all/"))
    phases: dict[str, int] = {}
    for key, value in terms.items():
        phase = key.split("/", 1)[0]
        if phase != "all":
            phases[phase] = phases.get(phase, 0) + value
    return shared + max(phases.values(), default=0)


def estimate(spec: ModelSpec, options: Options | None = None) -> Estimate:
    """Count the bytes of weights, KV cache and activations for `spec` under `options`."""
    if not isinstance(spec, ModelSpec):
        raise ArgumentTypeError(f"estimate needs a ModelSpec (from unimap.inspect), not {short(spec)}")
    if options is not None and not isinstance(options, Options):
        raise ArgumentTypeError(f"options must be an Options or None, not {short(options)}")
    options = options or Options()
    options.check()
    if options.isq is not None and spec.quantization is not None:
        raise ConfigError(f"{spec.source} is already MLX-quantized to {spec.quantization.bits} bits; "
                          "--isq applies to bf16/fp16/fp32 checkpoints: drop --isq")
    if options.kv_bits is not None:
        _check_kv_bits(spec)
    if spec.arch.vision is not None and spec.arch.vision.single_image and options.max_num_images > 1:
        raise ConfigError(f"{spec.arch.model_type} takes one image a prompt (mlx-vlm refuses more "
                          f"for it), not {options.max_num_images}: plan --max-num-images 1")
    act_dtype = options.dtype or spec.dtype
    d = dtype_bytes(act_dtype)
    arch = spec.arch if options.max_kv_size is None else rotating(spec, options.max_kv_size)
    image_tokens = _image_tokens(arch, options)
    tokens = options.max_seq_len + image_tokens
    priced = {slot.slot: slot_bytes(slot, options, d) for slot in spec.slots}
    trained = trained_context(spec.config)
    weights = [priced[i] for i in range(arch.num_layers)]
    non_mapped, vision = priced[NON_MAPPED_SLOT], priced[VISION_SLOT]
    one_pass = one_pass_prefill(arch, options)
    # mlx-vlm's one pass takes the whole prompt, its last token too
    chunk = tokens if one_pass else min(options.prefill_chunk_tokens, max(tokens - 1, 1))
    # a model whose language model computes in float32 with images, whatever the weights' dtype:
    # its activations and the keys and values it caches are float32
    float32_run = arch.vision is not None and arch.vision.float32_embeddings and image_tokens > 0
    kv_d = 4 if float32_run else d
    kv = [kv_bytes(arch, i, tokens, chunk, options, kv_d) for i in range(arch.num_layers)]
    experts = [(slot_bytes(s.experts, options, d), s.experts.header_bytes) if s.experts else (0, 0)
               for s in spec.slots[:arch.num_layers]]
    layers = tuple(LayerEstimate(i, kind, weights[i], kv[i], spec.slots[i].header_bytes, *experts[i])
                   for i, kind in enumerate(arch.layer_kinds))
    growth = max((kv[i] for i, k in enumerate(arch.layer_kinds) if k != "recurrent"), default=0)
    if options.kv_layout == "paged":
        growth = 0  # preallocated once, never copied
    # packed uint32 weights: an MLX-quantized checkpoint or quantized GGUF tensors
    quantized = options.isq is not None or spec.packed
    cpu_name = options.cpu_dtype or act_dtype
    cpu_d = dtype_bytes(cpu_name)
    cpu_options = replace(options, dtype=cpu_name) if cpu_name != act_dtype else options
    cpu_layers = tuple(LayerEstimate(i, kind, cpu_slot_bytes(spec.slots[i], options, d, cpu_options, cpu_d),
                                     kv_bytes(arch, i, tokens, chunk, options, 4 if float32_run else cpu_d),
                                     spec.slots[i].header_bytes, *experts[i])
                       for i, kind in enumerate(arch.layer_kinds)) if cpu_name != act_dtype else layers
    act_d, act_cpu_d = (4, 4) if float32_run else (d, cpu_d)
    act_name, cpu_act_name = ("float32", "float32") if float32_run else (act_dtype, cpu_name)
    expert_elements = upcast_expert_elements(spec, options)
    upcast = upcast_terms(arch, options, chunk, expert_elements, act_d)
    cpu_upcast = upcast_terms(arch, options, chunk, expert_elements, act_cpu_d)
    return Estimate(
        options=options, dtype=act_dtype, layers=layers, non_mapped_weight_bytes=non_mapped,
        vision_weight_bytes=vision,
        parts_source_bytes=max(spec.slots[-2].largest_bytes, spec.slots[-1].largest_bytes),
        kv_growth_bytes=growth, sequence_tokens=tokens,
        image_tokens=image_tokens,
        activation_terms=with_upcast(
            activation_terms(arch, options, chunk, tokens, act_d, "unfused", quantized, act_name), upcast),
        fused_activation_terms=activation_terms(arch, options, chunk, tokens, act_d, "metal", quantized,
                                                act_name),
        cuda_activation_terms=activation_terms(arch, options, chunk, tokens, act_d, "cuda", quantized,
                                               act_name),
        vision_activation_terms=vision_activation_terms(arch, options, d, act_d,
                                                        largest_float32_bytes(spec.slots[VISION_SLOT])),
        cpu_dtype=cpu_name, cpu_layers=cpu_layers,
        cpu_activation_terms=with_upcast(activation_terms(arch, options, chunk, tokens, act_cpu_d, "unfused",
                                                          quantized, cpu_act_name), cpu_upcast),
        trained_context=trained[0] if trained else None,
        trained_context_source=trained[1] if trained else "",
        head_read_bytes=head_read_bytes(spec, arch, non_mapped, d),
        largest_array_bytes=largest_array_bytes(arch, options, chunk, tokens, act_d),
    )


def with_upcast(terms: dict[str, int], upcast: dict[str, int]) -> dict[str, int]:
    """Activation terms with the CPU's expert upcasts (upcast_terms) in a phase of their own,
    "moe": the chunk's arrays (of a hybrid's either kind of layer, which its MoE layers follow)
    and the upcast call's, without the attention's scores. Each upcast call evaluates its inputs
    before it multiplies (it reads its routing indices), so the attention before it is done and
    its scores are freed."""
    if not upcast:
        return terms
    arrays = max(terms["prefill/arrays"], terms.get("scan/arrays", 0))
    return {**terms, "moe/arrays": arrays, **upcast}


def largest_float32_bytes(slot: Slot) -> int:
    """The slot's largest tensor as float32 (its elements at the slot's mean float size)."""
    if not slot.float_elements or not slot.float_bytes:
        return 0
    return slot.largest_bytes * 4 * slot.float_elements // slot.float_bytes


def one_pass_prefill(arch: Architecture, options: Options) -> bool:
    """Whether mlx-vlm prefills this run's prompt in one pass, not in the plan's chunks: a
    model whose policy always does, or does for prompts with images when the plan has room for
    images."""
    v = arch.vision
    return v is not None and (v.one_pass == "always" or (v.one_pass == "images"
                                                          and options.max_num_images > 0))


def head_read_bytes(spec: ModelSpec, arch: Architecture, non_mapped_bytes: int, d: int) -> int:
    """The output head as loaded (scaled like the non-mapped parts by --isq or --dtype); a
    vocabulary x hidden matrix where the headers name no head, never above the parts."""
    stored = spec.slots[-2].header_bytes if spec.slots else 0  # the non-mapped slot
    head = spec.head_bytes or arch.vocab_size * arch.hidden_size * d
    if stored and spec.head_bytes:
        head = head * non_mapped_bytes // stored
    return min(head, non_mapped_bytes)


def rotating(spec: ModelSpec, window: int) -> Architecture:
    """The architecture with every layer's cache a rotating window of `window` tokens, as
    --max-kv-size makes it; only for models whose every cache is a plain KVCache (mlx-lm's own
    flag does nothing to models that make their own caches); not for a vision-language model,
    whose cache mlx-vlm makes (unimap.generate refuses it there)."""
    from unimap.vlm import NO_MAX_KV_SIZE

    arch = spec.arch
    if arch.vision is not None:
        raise ConfigError(NO_MAX_KV_SIZE)
    plain = all(c.kind == "full" and c.quantizable and not c.state_elements for c in arch.caches) \
        if arch.caches else all(k == "full" for k in arch.layer_kinds)
    if not plain:
        kinds = sorted({c.kind for c in arch.caches} | set(arch.layer_kinds))
        raise ConfigError(f"--max-kv-size: {spec.source} makes its own caches ({', '.join(kinds)} "
                          "layers), which a rotating window cannot replace; drop --max-kv-size")
    return replace(arch, layer_kinds=("sliding",) * arch.num_layers, sliding_window=window,
                   caches=tuple(replace(c, kind="sliding", window=window, quantizable=False)
                                for c in arch.caches))


def _check_kv_bits(spec: ModelSpec) -> None:
    """mlx-lm quantizes plain KV caches in groups of 64 along the head dimension; mlx-vlm's
    caches are not quantized as the plan would price them (unimap.vlm.NO_KV_BITS); a model whose
    forward pass fails on a quantized cache (Architecture.kv_bits_refusal) cannot take one."""
    from unimap.vlm import NO_KV_BITS

    arch = spec.arch
    if arch.vision is not None:
        raise ConfigError(NO_KV_BITS)
    dims = {c.head_dim for c in arch.caches if c.quantizable} if arch.caches else {arch.head_dim}
    if arch.caches and not dims:
        raise ConfigError(f"--kv-bits: {spec.source} has no plain KV cache for mlx-lm to quantize "
                          "(its layers keep windowed or recurrent caches): drop --kv-bits")
    odd = sorted(d for d in dims if d % GROUP_SIZE)
    if odd:
        raise ConfigError(f"--kv-bits needs a head dimension divisible by {GROUP_SIZE} (mlx-lm "
                          f"quantizes keys per {GROUP_SIZE}); {spec.source} has {odd[0]}: drop --kv-bits")
    if arch.kv_bits_refusal:
        raise ConfigError(f"--kv-bits: {spec.source}: {arch.kv_bits_refusal}; drop --kv-bits")


# ---------------------------------------------------------------- weights


def quantized_bytes(n_elements: int, bits: int, scale_bytes: int, group_size: int = GROUP_SIZE) -> int:
    """MLX affine quantization: packed values plus a scale and a bias per group."""
    return n_elements * bits // 8 + 2 * (n_elements // group_size) * scale_bytes


def slot_bytes(slot: Slot, options: Options, act_bytes: int) -> int:
    """A slot's weight bytes after --isq (quantizable weights) and --dtype (other floats).
    Every quantizable tensor's size divides by the group, so the sums price exactly."""
    total = slot.header_bytes
    cast_elements, cast_bytes = slot.float_elements, slot.float_bytes
    if options.isq is not None:
        total += (quantized_bytes(slot.q_elements, options.isq, act_bytes) - slot.q_bytes
                  + quantized_bytes(slot.q8_elements, 8, act_bytes) - slot.q8_bytes)
        cast_elements -= slot.q_elements + slot.q8_elements
        cast_bytes -= slot.q_bytes + slot.q8_bytes
    if options.dtype is not None:
        total += cast_elements * act_bytes - cast_bytes
    return total


def cpu_slot_bytes(slot: Slot, options: Options, act_bytes: int, cpu_options: Options,
                   cpu_bytes: int) -> int:
    """A layer on the CPU part of a split: in the CPU's compute dtype, but for its routed
    experts, which stay as loaded (the runtime upcasts call by call what a call selects)."""
    total = slot_bytes(slot, cpu_options, cpu_bytes)
    if slot.experts is not None:
        total += slot_bytes(slot.experts, options, act_bytes) - slot_bytes(slot.experts, cpu_options,
                                                                            cpu_bytes)
    return total


# float32 experts a CPU MoE call holds at once: the runtime multiplies a group of one
# projection's experts and evaluates it (freeing them) before it makes the next
UPCAST_GROUP_BYTES = 256 * 2**20


def upcast_expert_elements(spec: ModelSpec, options: Options) -> int:
    """Elements of one routed expert (all its projections) that a call on MLX's CPU kernels
    upcasts to float32: experts held in half precision and not quantized (MLX's CPU gather_qmm
    takes any float dtype); 0 for every other model."""
    moe = spec.arch.moe
    if moe is None or moe.num_experts < 1:
        return 0
    worst = 0
    for slot in spec.slots[:spec.arch.num_layers]:
        e = slot.experts
        if e is None or e.header_bytes != e.float_bytes or options.isq is not None and e.q_elements:
            continue  # packed (quantized) experts
        half = options.dtype != "float32" if options.dtype else e.float_bytes < 4 * e.float_elements
        if half:
            worst = max(worst, e.float_elements)
    return worst // moe.num_experts


# Per routed row, the float32 arrays an MoE call on the upcast path holds beyond the experts'
# copies, measured on mlx-lm's SwitchGLU alone (tools/bench_moe_upcast.py): of the expert
# width (the gate and up projections' outputs and their joined copies, the activation, the down
# projection's float32 input) and of the hidden width. The same call in float32 without the
# upcast (MLX's gather_mm) holds 2 of the expert width and 3 of the hidden width (MOE_ROUTED_COPIES)
# per routed row, what the chunk's arrays price (unimap.estimate.chunk_array_bytes).
MOE_ROUTED_COPIES = 3  # hidden-wide copies per routed row in mlx-lm's SwitchGLU (moe_routed_bytes)
UPCAST_ROW_ARRAYS = (6.5, 1.25)
GATHER_ROW_ARRAYS = (2, MOE_ROUTED_COPIES)
# Of one routed expert's elements, the float32 copies a call holds at once: a call multiplies one
# projection (of 3 in a SwitchGLU, 2 in a SwitchMLP), whose selected experts' copies measured
# 1.24 times their size (tools/bench_moe_upcast.py): 1.25 / 2.
UPCAST_EXPERT_SHARE = 0.625


def upcast_terms(arch: Architecture, options: Options, chunk: int, expert_elements: int,
                 d: int = 4) -> dict[str, int]:
    """The float32 copies of routed experts one MoE call on MLX's CPU kernels makes
    (unimap/runtime.py upcast_gather_mm): one projection's selected experts at a time, in groups
    of at most UPCAST_GROUP_BYTES or one expert (UPCAST_EXPERT_SHARE of an expert's elements),
    and what its routed rows hold in float32 (UPCAST_ROW_ARRAYS) beyond what the chunk's arrays
    price for them in `d`-byte activations (GATHER_ROW_ARRAYS). Without the rows' part (one
    joined copy was priced), olmoe's, minimax's and phimoe's bf16 twins twice as wide (top-4 of
    16 experts) peaked at 1/0.911, 1/0.895 and 1/0.989 of their plans at 500 tokens."""
    if arch.moe is None or not expert_elements:
        return {}
    moe = arch.moe
    one, group = int(expert_elements * 4 * UPCAST_EXPERT_SHARE), UPCAST_GROUP_BYTES
    widths = (moe.expert_intermediate_size, arch.hidden_size)
    upcast = sum(n * w * 4 for n, w in zip(UPCAST_ROW_ARRAYS, widths, strict=True))
    priced = sum(n * w * d for n, w in zip(GATHER_ROW_ARRAYS, widths, strict=True))
    row = max(int(upcast - priced), 0)

    def held(rows: int) -> int:
        return min(min(rows, moe.num_experts) * one, max(group, one)) + rows * row

    rows = options.max_batch_size * moe.experts_per_token
    return {"moe/experts-upcast": held(rows * chunk), "decode/experts-upcast": held(rows)}


# ---------------------------------------------------------------- KV cache


def kv_token_bytes(arch: Architecture, options: Options, d: int, kind: str = "full") -> int:
    """Bytes one token adds to one attention layer's cache, keys and values, whole batch.
    --kv-bits quantizes growing caches only: mlx-lm has no quantized rotating cache."""
    per_head = arch.head_dim * d
    if options.kv_bits is not None and kind == "full":  # QuantizedKVCache: packed + scale, bias
        per_head = quantized_bytes(arch.head_dim, options.kv_bits, d)
    return 2 * options.max_batch_size * arch.num_kv_heads * per_head


def cached_tokens(kind: str, tokens: int, chunk: int, window: int | None, options: Options,
                  chunked: bool = False) -> int:
    if options.kv_layout == "paged":
        held = tokens if kind == "full" else min(tokens, window or tokens)
        return _round_up(held, options.kv_block_tokens)
    full = _round_up(tokens, KV_STEP_TOKENS)
    if kind == "full" or window is None:
        return full
    if chunked:  # ChunkedKVCache: grows as a KVCache up to its window; past it, the window's
        # tokens are kept and a new buffer of whole steps is concatenated for what comes next
        return full if tokens <= window else window + _round_up(max(chunk, 1), KV_STEP_TOKENS)
    # RotatingKVCache concatenates a whole prefill chunk onto window - 1 kept tokens; below its
    # window, a decode step after a prefill grows it by a step of 256 past the prompt's tokens
    # (up to the window): one token short of the plan's end, tokens - 1 + 256 are held
    concat = min(tokens, window - 1 + chunk)
    return max(concat, min(window, tokens - 1 + KV_STEP_TOKENS))


def kv_bytes(arch: Architecture, index: int, tokens: int, chunk: int, options: Options, d: int) -> int:
    """Layer `index`'s cache at its largest, whole batch."""
    if arch.caches:
        return layer_cache_bytes(arch.caches[index], tokens, chunk, options, d)
    kind = arch.layer_kinds[index]
    held = cached_tokens(kind, tokens, chunk, arch.sliding_window, options)
    return held * kv_token_bytes(arch, options, d, kind)


def layer_cache_bytes(cache: LayerCache, tokens: int, chunk: int, options: Options, d: int) -> int:
    """A cache read from mlx-lm's model: tokens held x what one token adds (packed when --kv-bits
    quantizes it), plus its fixed state (float32 where the model keeps it so)."""
    b = options.max_batch_size
    state = cache.state_elements * (4 if cache.state_float32 else d)
    if not cache.token_elements:
        return b * state
    per_token = cache.token_elements * d
    if options.kv_bits is not None and cache.quantizable:
        per_token = quantized_bytes(cache.token_elements, options.kv_bits, d)
    held = cached_tokens(cache.kind, tokens, chunk, cache.window, options, cache.chunked)
    return b * (held * per_token + state)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


# ---------------------------------------------------------------- activations


def activation_terms(arch: Architecture, options: Options, chunk: int, tokens: int, d: int,
                     kernel: Kernel = "unfused", quantized: bool = False,
                     dtype: str | None = None) -> dict[str, int]:
    """The working set of the phases that can peak: one prefill chunk through the worst
    decoder layer (the last chunk, which attends to every cached token), through a hybrid's
    layers with a recurrent state ("scan", where those keep it apart from attention), and a
    decode step's logits. Scores and masks are exact shapes; every other array of the chunk is priced with the
    coefficients measured by tools/calibrate_activations.py (unimap/calibration.py), scaled by
    what the CUDA backend measured on top of them, or what published Metal peaks need."""
    b = options.max_batch_size
    # on Metal, mlx-lm runs gated-delta and RWKV-7 scans as fused kernels that keep their state
    # in registers: none of the states per token its op-by-op scan (CPU, CUDA) holds
    fused = kernel == "metal" and arch.state_elements > 0 and metal_fused_scan(arch.family)
    # a family's own share of the priced arrays was fitted on MLX's CPU, whose op-by-op path CUDA
    # shares (its factor is over the CPU's figure); Metal's factors were fitted to published Mac
    # peaks over the whole priced arrays, and its fused kernels keep other arrays
    own = kernel != "metal"
    factor = {"cuda": cuda_arrays_factor(arch.family), "metal": metal_arrays_factor(arch)}.get(kernel, 1.0)
    # a hybrid whose recurrent state lives in layers of its own: the chunk's scan states and its
    # scores are made by different layers, so the prefill peaks in one or the other ("scan")
    apart = priced_apart(arch)

    def arrays(state: bool) -> int:
        return int(chunk_array_bytes(arch, b * chunk, d, quantized, options.kv_bits, chunk, tokens,
                                     fused, own, state) * factor)

    # a float16 model whose module computes its attention in float32: float32 scores
    score_d = 4 if dtype == "float16" and float32_scores_in_float16(arch.family) else d
    return {
        "prefill/scores-and-masks": attention_bytes(arch, options, chunk, tokens, score_d, kernel),
        "prefill/arrays": arrays(state=not apart),
        **({"prefill/window-copies": window_copy_bytes(arch, options, tokens, d)}
           if options.max_kv_size is not None else {}),
        **({"scan/arrays": arrays(state=True)} if apart else {}),
        # two steps in flight (mlx-lm evaluates the next while the last is read): logits plus
        # their float32 logsumexp and logprobs, each over the vocabulary
        "decode/logits": 2 * b * arch.vocab_size * (d + 4 + 4),
        # a one-pass prefill whose language model makes logits for every prompt row
        **({"prefill/logits": b * chunk * arch.vocab_size * d}
           if arch.vision is not None and arch.vision.all_logits and one_pass_prefill(arch, options)
           else {}),
        "decode/arrays": chunk_array_bytes(arch, b, d, quantized, options.kv_bits, fused=fused, own=own),
    }


def window_copy_bytes(arch: Architecture, options: Options, tokens: int, d: int) -> int:
    """What --max-kv-size's rotating caches hold in a prefill chunk beyond their priced tokens:
    each layer's kept window, copied (trimmed and put in order) before the chunk is joined on,
    all layers' copies made ahead of the chunk's computation. Measured: llama's and phi3's twins
    (4 and 8 layers, windows of 128 to 512) passed their plans by 0.25 to 0.33 of their caches
    without it (plan / need 0.958 to 0.989). A model's own sliding-window layers are in its
    family's fit."""
    window = min(arch.sliding_window or tokens, tokens)
    layers = sum(1 for kind in arch.layer_kinds if kind == "sliding")
    return layers * (window - 1) * kv_token_bytes(arch, options, d, "sliding")


# What marks a module that casts a float16 model's queries to float32 for its attention (cohere2:
# "since attention may be in higher precision"; its bfloat16 queries stay as they are).
FLOAT16_UPCAST_MARK = re.compile(r"mx\.float32 if \w+\.dtype == mx\.float16")


@functools.cache
def float32_scores_in_float16(module: str) -> bool:
    """Whether mlx-lm's `module` computes a float16 model's attention scores in float32, read
    from its source. Measured: Command R7B's twin twice as wide in float16 needed 1/0.878 of its
    plan at 700 tokens with the scores priced in float16."""
    from unimap.structure import model_source

    return bool(FLOAT16_UPCAST_MARK.search(model_source(module) or ""))


def largest_array_bytes(arch: Architecture, options: Options, chunk: int, tokens: int, d: int) -> int:
    """The largest single array a prefill chunk makes, at most: its unfused attention scores and
    masks, or a row per batch and chunk token of the widest thing a layer computes (any
    projection mlx-lm builds, the MLP over the routed experts, MoE's routed copies, fused
    q/k/v), each element counted at 4 bytes. MLX's evaluation checks its memory limit after an
    array is allocated, so a run held to a limit can pass it by this much (unimap.plan's
    memory_limit_bytes leaves it as headroom)."""
    b = options.max_batch_size
    prefixes = arch.layer_prefixes
    projections = [shape[0] for name, shape in arch.matrix_shapes
                   if shape[0] != arch.vocab_size and name.startswith(prefixes)] if prefixes else []
    fused_qkv = (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
    routed = arch.moe.experts_per_token * arch.hidden_size if arch.moe is not None else 0
    logits = arch.vocab_size if (arch.vision is not None and arch.vision.all_logits
                                 and one_pass_prefill(arch, options)) else 0
    widest = max(arch.hidden_size, fused_qkv, 2 * _mlp_width(arch), routed, logits, *projections)
    return max(b * chunk * widest * max(d, 4), attention_bytes(arch, options, chunk, tokens, 4))


def attention_bytes(arch: Architecture, options: Options, chunk: int, tokens: int, d: int,
                    kernel: Kernel = "unfused") -> int:
    """What grows with chunk x keys in the worst layer: the scores (B, heads, chunk, keys) and
    the causal mask (chunk x keys booleans) that MLX's unfused attention builds, plus mlx-lm's
    sliding-window mask, which lives for the whole forward pass. Metal's fused kernel (for
    FUSED_HEAD_DIMS) builds neither scores nor causal mask. On CUDA (measured): fused attention
    leaves a boolean per batch row, chunk and key when the chunk follows cached tokens; a layer
    given an array mask (a sliding window the sequence has passed) or a float32 model runs
    unfused, with two float32-sized score buffers alive."""
    b = options.max_batch_size
    window_keys = min(tokens, (arch.sliding_window or tokens) - 1 + chunk)
    window_mask = chunk * window_keys if "sliding" in arch.layer_kinds else 0
    fused = arch.head_dim in FUSED_HEAD_DIMS
    worst = 0
    for kind in set(arch.layer_kinds) - {"recurrent"}:
        keys = tokens if kind == "full" else window_keys
        heads, fresh = kind_attention(arch, kind)
        inputs = b * keys * fresh * d  # keys and values made for the attention alone
        if kernel == "metal" and fused:
            worst = max(worst, inputs)
            continue
        if kernel == "cuda":
            array_mask = kind == "sliding" and tokens > (arch.sliding_window or tokens)
            if arch.head_dim in CUDA_FUSED_HEAD_DIMS and d < 4 and not array_mask:
                worst = max(worst, (b * chunk * keys if keys > chunk + 1 else 0) + inputs)
            else:
                worst = max(worst, b * heads * chunk * keys * CUDA_UNFUSED_SCORE_BYTES
                            + chunk * keys + inputs)
            continue
        worst = max(worst, b * heads * chunk * keys * d + chunk * keys + inputs)
    return worst + window_mask


def kind_attention(arch: Architecture, kind: str) -> tuple[int, int]:
    """Of the layers of `kind` ("full", "sliding"): the most query heads (their scores are heads
    x chunk x keys), and the most key and value elements per key their attention reads beyond
    what their cache holds (MLA's keys and values decompressed from its latent; heads repeated
    for grouped queries), which exist while the layer attends. A layer whose heads were not
    read counts as the model's most; one whose attention was not seen reads its cache."""
    heads, fresh = 0, 0
    for i, (found, cache) in enumerate(zip_longest(arch.layer_kinds, arch.caches)):
        if found != kind:
            continue
        heads = max(heads, (arch.layer_heads[i] if i < len(arch.layer_heads) else 0) or arch.num_heads)
        reads = arch.attention_reads[i] if i < len(arch.attention_reads) else 0
        if cache is not None and reads:
            fresh = max(fresh, reads - cache.token_elements)
    return heads or arch.num_heads, fresh


def cuda_arrays_factor(model_type: str) -> float:
    """How many times the CPU-calibrated chunk arrays MLX's CUDA backend holds, per family."""
    family = CALIBRATED_AS.get(model_type, model_type)
    return CUDA_ARRAYS_FACTORS.get(family, max(CUDA_ARRAYS_FACTORS.values()))


def metal_arrays_factor(arch: Architecture) -> float:
    """How many times the CPU-calibrated chunk arrays MLX's Metal backend holds, per family, as
    published Mac peaks require (unimap/metal_calibration.py). A family with no published peak
    takes the largest of its kind: of the families with recurrent-state layers (their Metal
    kernels keep state-sized buffers the CPU build does not) or of the attention-only ones."""
    family = CALIBRATED_AS.get(arch.family, arch.family)
    if family in METAL_ARRAYS_FACTORS:
        return METAL_ARRAYS_FACTORS[family]
    kind = metal_kind(arch)
    alike = [f for name, f in METAL_ARRAYS_FACTORS.items() if METAL_FAMILY_KINDS.get(name) == kind]
    return max(alike or METAL_ARRAYS_FACTORS.values())


def metal_kind(arch: Architecture) -> str:
    """"recurrent" for a model with any recurrent-state layer, else "attention"."""
    return "recurrent" if "recurrent" in arch.layer_kinds else "attention"


def chunk_array_bytes(arch: Architecture, tokens: int, d: int, quantized: bool = False,
                      kv_bits: int | None = None, chunk: int = 1, keys: int = 1,
                      fused: bool = False, own: bool = True, state: bool = True) -> int:
    """Every other array a chunk of `tokens` (batch x length) makes in a decoder layer, from the
    measured coefficients for the family and dtype (for a family not measured, its own share of
    the largest of all families', or all of them when `own` is False), plus what quantized
    weights and a quantized cache add; `state`: with the scan's state arrays of a family whose
    layers keep a recurrent state (family_extra_bytes)."""
    dtype = "float32" if d >= 4 else "bfloat16"
    *_, qw, qkv = coefficients(arch.family, dtype)
    q_width = arch.num_heads * arch.head_dim
    base = family_base_bytes(arch, d) if own else base_array_bytes(arch, d)
    if own and measured_family(arch.family, dtype):  # a fitted family's extra holds it already
        base += IN_FLIGHT_ARRAYS * arch.hidden_size * 4
    per_token = base + moe_routed_bytes(arch, d)
    per_token += family_extra_bytes(arch, chunk, keys, fused, half=d < 4, state=state)
    if quantized:
        per_token += qw * arch.hidden_size * 4
    if kv_bits is not None:
        per_token += qkv * q_width * d
    return int(tokens * per_token)


# Hidden-wide float32 arrays per chunk token for what MLX's evaluation holds in flight beyond a
# measured run: its allocations run ahead of the work in flight, by a different amount from one
# run to the next (docs/BENCHMARKS.md, "Run to run"). Added to every family fit's hidden-width
# part (tools/calibrate_families.py) and to the measured coefficients' price (chunk_array_bytes):
# those cover their calibration's runs exactly, and Gemma 3's twin with 4 times the query heads
# needed 0.77 of such an array per token more when plain mlx-lm had run before it in the process,
# and 1.02 in a later clean-clone CI run (the same test, 0.99984 of a plan with 1.0).
IN_FLIGHT_ARRAYS = 1.25


def measured_family(family: str, dtype: str) -> bool:
    """Whether the family's coefficients for `dtype` were measured (unimap/calibration.py)."""
    return (CALIBRATED_AS.get(family, family), dtype) in COEFFICIENTS


def base_array_bytes(arch: Architecture, d: int) -> float:
    """Per chunk token, the hidden, query, key/value and MLP arrays priced with the measured
    coefficients (the largest of every measured family for a family not measured)."""
    return sum(base_array_parts(arch, d))


def base_array_parts(arch: Architecture, d: int) -> tuple[float, float, float, float]:
    """base_array_bytes by kind of array: hidden, query, key/value, MLP."""
    a, b, c, e, *_ = coefficients(arch.family, "float32" if d >= 4 else "bfloat16")
    q_width = arch.num_heads * arch.head_dim
    return (a * arch.hidden_size * 4, b * q_width * d, c * arch.num_kv_heads * arch.head_dim * d,
            e * _mlp_width(arch) * d)


# the mlx-lm module that runs each model type, where it is not the type itself
CALIBRATED_AS = {"mistral": "llama", "llava": "llama", "gemma3": "gemma3_text",
                 "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2"}


def coefficients(model_type: str, dtype: str) -> tuple[float, ...]:
    """The measured coefficients (a, b, c, e, quantized weights, quantized KV) of a family; for a
    family not measured, the largest of each over every family."""
    return _measured_or_largest(COEFFICIENTS, CALIBRATED_AS.get(model_type, model_type), dtype)


def _measured_or_largest(table: Mapping[tuple[str, str], tuple[float, ...]], family: str,
                         dtype: str) -> tuple[float, ...]:
    """The row of (family, dtype), or the largest of each column over the dtype's rows."""
    found = table.get((family, dtype))
    if found is not None:
        return found
    rows = [v for (_, kind), v in table.items() if kind == dtype]
    return tuple(max(column) for column in zip(*rows, strict=True))


SCAN_STEP_TOKENS = 256  # mlx-lm's SSM scan (ssm_attn) works in blocks of this many tokens
SCAN_STATE_UNITS = (2, 3)  # extra_units' "scan" parts for states per block token and per token
SCAN_LAYER_UNITS = (0, 1, 2, 3)  # the "scan" parts a layer with a recurrent state makes
SSD = "ssd"  # a fit in units of mlx-lm's SSD scan (extra_units)
# per basis, the extra_units parts a layer with a recurrent state makes, and the hidden width's
LAYER_UNITS = {"scan": SCAN_LAYER_UNITS, SSD: (0, 1, 2, 3, 4)}
HIDDEN_UNIT = {"hidden": 0, "scan": 4, SSD: 5}
# What marks a Metal scan kernel in prefill: mlx-lm's gated delta (in the module or one it
# imports from), or a kernel of the module's own (RWKV-7). ssm.py's kernel serves decode steps
# only: its prefill scan runs op by op on Metal too.
FUSED_SCAN_MARK, OWN_KERNEL_MARK = "gated_delta", "metal_kernel"


@functools.cache
def metal_fused_scan(module: str) -> bool:
    """Whether mlx-lm's `module` runs its recurrent scan as a fused Metal kernel, read from its
    source and that of the sibling modules it imports from, so planning for a Mac imports
    neither MLX nor mlx-lm."""
    from unimap.structure import model_source

    return OWN_KERNEL_MARK in (model_source(module) or "") or delta_scan(module)


@functools.cache
def delta_scan(module: str) -> bool:
    """Whether mlx-lm's `module` (or a sibling module it imports from) runs mlx-lm's gated-delta
    scan: a fused kernel on Metal, and elsewhere (the CPU, CUDA) an op-by-op step per token
    that holds one state per token of the chunk until its output is made (DELTA_STATES_PER_TOKEN)."""
    from unimap.structure import model_source

    source = model_source(module) or ""
    siblings = re.findall(r"^from \.(?: import )?(\w+)", source, re.MULTILINE)
    return any(FUSED_SCAN_MARK in text for text in (source, *(model_source(m) or "" for m in siblings)))


# The states per chunk token (float32, of the largest layer's) that gated delta's op-by-op
# path holds at its peak: tools/bench_delta_scan.py measured 1.01 at 700 and 1000 tokens (1.03
# at 300, 1.10 at 100, which a fixed ten states explain) for heads x key x value dims from
# 4 x 32 x 32 to 8 x 128 x 256. A family fit's per-token state part is never under it
# (tools/calibrate_families.py): fitted to twins whose attention scores grew with their state,
# Kimi-Linear's took 0.44, and its twin twice as wide with 4 times the head dims was at 0.756.
DELTA_STATES_PER_TOKEN = 1.0


def family_shares(family: str) -> tuple[float, float, float, float]:
    """What a family without measured coefficients holds of the arrays the largest coefficients
    price (base_array_parts), as its twins measured (unimap/family_calibration.py): of the
    hidden, query, key/value and MLP arrays. A fit holds one share of each group of kinds its
    twins moved apart: one of the whole; two (hidden, query and key/value; MLP); three (hidden;
    query and key/value; MLP); or four. (1, 1, 1, 1) for a measured family or one the
    calibration has not run."""
    found = FAMILY_EXTRA.get(family)
    if found is None:
        return 1.0, 1.0, 1.0, 1.0
    share = found[1]
    if not isinstance(share, tuple):
        return share, share, share, share
    if len(share) == 2:
        return share[0], share[0], share[0], share[1]
    if len(share) == 3:
        return share[0], share[1], share[1], share[2]
    return share[0], share[1], share[2], share[3]


def family_base_bytes(arch: Architecture, d: int) -> float:
    """Per chunk token, the family's shares of the priced arrays (family_shares) times their
    price by kind. Twins with 4 times the MLP widths tell the MLP's share apart, twins with 4
    times the query heads the queries', and twins with 4 times the head dims the keys' and
    values' (tools/calibrate_families.py)."""
    shares = family_shares(arch.family)
    return sum(s * part for s, part in zip(shares, base_array_parts(arch, d), strict=True))


SCAN_APART = "scan-apart"  # a "scan" fit made with the scan's states in a phase of their own


def priced_apart(arch: Architecture) -> bool:
    """Whether the chunk's scan states are priced in a phase apart from its scores: a hybrid
    that keeps them in layers of their own (state_apart) whose family's fit was made so
    (unimap/family_calibration.py basis SCAN_APART; one fitted to their sum keeps the sum)."""
    found = FAMILY_EXTRA.get(arch.family)
    return found is not None and found[0] == SCAN_APART and state_apart(arch)


def state_apart(arch: Architecture) -> bool:
    """A hybrid whose recurrent states live only in layers without attention (Qwen3-Next's
    gated-delta layers, Nemotron-H's Mamba layers beside attention layers): a chunk's scan
    states and its attention scores are made by different layers."""
    kinds = arch.layer_kinds
    return (arch.state_elements > 0 and len(arch.caches) == len(kinds)
            and any(k != "recurrent" for k in kinds)
            and all(c.state_elements == 0
                    for c, k in zip(arch.caches, kinds, strict=True) if k != "recurrent"))


def family_extra_bytes(arch: Architecture, chunk: int, keys: int, fused: bool = False,
                       half: bool = False, state: bool = True) -> float:
    """Per chunk token, what the twins of a family without measured coefficients needed beyond
    its scaled share of the priced arrays (unimap/family_calibration.py), in units that grow
    with the model as those arrays do (extra_units): per unit of hidden width and per head and
    key, or, for families whose layers keep a recurrent state, per unit of that state and of
    the scan's blocks; `half`: the model computes in half precision. Every part is >= 0."""
    found = FAMILY_EXTRA.get(arch.family)
    if found is None:
        return 0.0
    basis, _, fit = found
    basis = "scan" if basis == SCAN_APART else basis
    units = extra_units(arch, basis, chunk, keys, half)
    if fused and basis == "scan":  # a fused scan kernel: no states per block or per token
        units = tuple(0.0 if i in SCAN_STATE_UNITS else u for i, u in enumerate(units))
    if not state and basis in LAYER_UNITS:  # the chunk in a layer without a recurrent state
        units = tuple(0.0 if i in LAYER_UNITS[basis] else u for i, u in enumerate(units))
    return sum(c * u for c, u in zip(fit, units, strict=True)) * 4


def extra_units(arch: Architecture, basis: str, chunk: int, keys: int,
                half: bool = False) -> tuple[float, ...]:
    """The units a family's extra is counted in, per chunk token (the last of each basis: heads
    x keys again in a half-precision model, whose attention some families compute in float32,
    so its scores take 4 bytes where 2 are priced):
    - "hidden": the hidden width, and heads x keys;
    - "scan" (layers with a fixed-size state: SSM and linear-attention scans other than SSD):
      mlx-lm's chunked scans run in blocks of SCAN_STEP_TOKENS, one block's arrays alive at a time (block =
      the chunk, at most a step); its per-token scans (Mamba-1, the ops path of gated delta) keep
      state-sized arrays for every token. Per chunk token: state heads x block^2 (a block's decay
      and score squares) and the largest layer state once and once per block token (a block
      that follows a state broadcasts it over its tokens), each spread over the chunk; the state
      per token; the hidden width, for what grows with the chunk; and heads x keys.
    - SSD ("ssd": mlx-lm's ssm_attn, Mamba-2 and its hybrids): per chunk token, state heads x
      block^2 over the chunk (one block's decay and score squares); the largest layer state once
      (over the chunk); the scan's inputs per token, heads x state size (B repeated over the
      heads) and heads x head dim (x, the output and their products); state heads x block (what
      each block keeps of its squares until the chunk's output is made: a slice of its decay);
      the hidden width; and heads x keys. A state is never made per token: the "scan" units'
      state per token, fitted to twins whose state size is their head dim, priced published SSD
      models at up to 1.8 times their peak."""
    scores = float(arch.num_heads * keys)
    if basis == SSD:
        chunk = max(chunk, 1)
        block = min(chunk, SCAN_STEP_TOKENS)
        by_dim, by_size = arch.scan_widths
        return (arch.state_heads * block * block / chunk, arch.state_elements / chunk, float(by_size),
                float(by_dim), float(arch.state_heads * block), float(arch.hidden_size), scores,
                scores if half else 0.0)
    if basis == "scan":
        chunk = max(chunk, 1)
        block = min(chunk, SCAN_STEP_TOKENS)
        state = arch.state_elements
        return (arch.state_heads * block * block / chunk, state / chunk, state * block / chunk,
                float(state), float(arch.hidden_size), scores, scores if half else 0.0)
    return float(arch.hidden_size), scores, scores if half else 0.0


def moe_routed_bytes(arch: Architecture, d: int) -> int:
    """Per token, what an MoE layer's routing copies beyond its expert widths: mlx-lm's SwitchGLU
    sorts the token x top-k rows by expert (a hidden-wide copy of each), the experts' outputs are
    unsorted (another) and weighted (a third). Three hidden-wide rows per routed expert cover
    top-k 1 to 8 with 8, 64 and 128 experts (predicted/measured 1.013-1.072,
    docs/BENCHMARKS.md); two were under at top-8."""
    if arch.moe is None or not any(arch.moe.sparse_layers):
        return 0
    return MOE_ROUTED_COPIES * arch.moe.experts_per_token * arch.hidden_size * d


def _mlp_width(arch: Architecture) -> int:
    if arch.moe is None or not any(arch.moe.sparse_layers):
        return arch.intermediate_size
    moe = arch.moe
    sparse = moe.experts_per_token * moe.expert_intermediate_size + moe.shared_intermediate_size
    dense = arch.intermediate_size if not all(moe.sparse_layers) else 0
    return max(sparse, dense)


def _image_patches(arch: Architecture, options: Options) -> int:
    """Encoder patches per image: fixed encoders resize; qwen2_vl keeps the resolution (square
    image of max_image_length, rounded to whole merged patches; at most patches_per_image where
    the processor caps an image's pixels)."""
    v = arch.vision
    if v is None:
        return 0
    if v.whole_image:  # an image whole at its own resolution, in whole merged patches
        unit = v.patch_size * v.merge_size
        patches = (_round_up(options.max_image_length, unit) // v.patch_size) ** 2
        if v.min_pixels:  # a small image scaled up to min_pixels, in pixels
            least = _scaled_up(v.min_pixels, options.max_image_length, unit)
            patches = max(patches, least // (v.patch_size * v.patch_size) + 1)
        return patches
    if v.keeps_size:  # as large as the image, at most image_size, in whole merged patches
        edge = min(v.image_size or options.max_image_length, options.max_image_length)
        side = _round_up(edge, v.patch_size * v.merge_size) // v.patch_size
        return side * side
    if v.kind == "fixed":
        side = (v.image_size or 0) // v.patch_size
        per_tile = v.patches_per_image or side * side
        return per_tile * image_tiles(v, options)
    unit = v.patch_size * v.merge_size
    side = _round_up(options.max_image_length, unit) // v.patch_size
    patches = min(side * side, v.patches_per_image or side * side)
    if v.min_patches and patches < v.min_patches:  # scaled up to min_patches, in patches
        patches = _scaled_up(v.min_patches, side, max(v.merge_size, 2))
    return patches


def _scaled_up(least: int, longest: int, unit: int) -> int:
    """The most area (in squared units of `longest`) an image takes once a processor scales it
    up to `least` and rounds each side up to a multiple of `unit` (less than `unit` more a side):
    least + unit x (h + w) + unit^2, h + w the largest for the thinnest image a side of `longest`
    admits (h x w = least with w / h = longest)."""
    sides = math.isqrt(least // max(longest, 1)) + math.isqrt(least * longest) + 2
    return least + unit * sides + unit * unit


def image_tiles(v: Vision, options: Options) -> int:
    """Tiles of image_size an image of max_image_length may be cut into, plus a thumbnail (one
    tile when the family resizes, or the image is no larger than a tile)."""
    size = v.image_size or 0
    if v.whole_image:  # never cut
        return 1
    if v.split_tiles:  # cut as the processor cuts it (Idefics 3: every image, resized first)
        return v.split_tiles if options.max_image_length ** 2 > v.split_over_pixels else 1
    if v.grids:  # anyres: the smallest grid that holds a square image of max_image_length
        # whole (a smaller or thinner image takes no larger one), else the grid of most tiles
        def tiles(g: tuple[int, int]) -> int:
            return -(-g[0] // size) * -(-g[1] // size)
        side = options.max_image_length
        holding = [g for g in v.grids if g[0] >= side and g[1] >= side]
        return 1 + (min(tiles(g) for g in holding) if holding else max(tiles(g) for g in v.grids))
    if not v.tiled or size <= 0 or options.max_image_length <= size:
        return v.min_tiles if v.tiled else 1
    side = -(-options.max_image_length // size)
    return max(side * side + 1, v.min_tiles)


def _image_tokens(arch: Architecture, options: Options) -> int:
    v = arch.vision
    if v is None or options.max_num_images == 0:
        return 0
    tiles = image_tiles(v, options)
    if v.pooled_tiles:  # LLaVA-OneVision pools a larger grid's features to so many tiles
        tiles = min(tiles, v.pooled_tiles)
    # anyres: at most a newline after each row of each tile's features
    newlines = math.isqrt(v.tokens_per_image or 0) * tiles if v.newlines else 0
    per_image = (v.tokens_per_image or 0) * tiles + newlines if v.kind == "fixed" else (
        _image_patches(arch, options) // (v.merge_size * v.merge_size))
    if v.keeps_size:  # rows of merged patches, each ended by a break (the last: an end) token
        rows = math.isqrt(_image_patches(arch, options)) // v.merge_size
        per_image = rows * (rows + 1)
    if v.whole_image:  # a token per merged patch
        per_image = -(-_image_patches(arch, options) // (v.merge_size * v.merge_size))
    if v.features_per_patch:  # the features in place of the tokens: the tower's every patch
        per_image = max(per_image, v.features_per_patch * _image_patches(arch, options))
    # the text the processor and the chat template put around an image and its tiles
    marks = IMAGE_MARKERS + (TILE_MARKERS * tiles if tiles > 1 else 0)
    return options.max_num_images * (per_image + marks)


# Text tokens around an image's tokens, at most: its start and end marks (Qwen2-VL's
# <|vision_start|> and <|vision_end|>, Llama 4's <|image_start|>, <|image|> and <|image_end|>,
# MiniMax-M3-VL's, Idefics 2's <fake_token_around_image>, Gemma 3's blank lines around
# <start_of_image>) and around each tile of a cut image (Aya Vision's "TILE_12", a few tokens in a
# BPE vocabulary; Llama 4's separators)
IMAGE_MARKERS = 8
TILE_MARKERS = 4


def projector_bytes(arch: Architecture, options: Options, patches: int, d: int) -> int:
    """What a tower not measured with its projector (vision_calibration.py's towers were) adds
    beyond its encoder's terms: a projector wider than the tower's MLP, its widest output on each
    row it takes (the tower's outputs, merged or pixel-shuffled to its input width: Aya Vision's
    SwiGLU on a quarter of the patches was 2.02 times its plan on a tiny twin before this), and a
    perceiver's attention of its latents over each image's patches (Idefics 2's, 1.28 times)."""
    v = arch.vision
    if v is None or (vlm_package(arch.model_type), "float32") in VISION_COEFFICIENTS:
        return 0
    total = 0
    if v.projector_width > max(v.intermediate_size, v.hidden_size):
        rows = -(-patches * v.hidden_size // v.projector_input) if v.projector_input else patches
        total += PROJECTOR_COPIES * rows * v.projector_width * d
    latents, heads, kv_heads, head_dim = v.resampler
    if latents:  # per image: queries, their copies and the output (6), keys and values with
        # their copies (4), the scores, softmax and the fallback's copy (3)
        images = options.max_num_images * image_tiles(v, options)
        context = patches // max(images, 1) + latents
        total += images * d * (6 * latents * heads * head_dim + 4 * context * kv_heads * head_dim
                               + 3 * heads * latents * context)
    return total


# a gated MLP's two projections and the activation of one, alive together
PROJECTOR_COPIES = 3
PIXEL_CAST_BYTES = 9  # per pixel element in a half-precision tower's patch embedding (8.5 measured)
ONE_HOT_BYTES = 10  # per element of a tower's one-hot position lookup, all its copies


def vision_activation_terms(arch: Architecture, options: Options, d: int, embed_d: int | None = None,
                            largest_float32_bytes: int = 0) -> dict[str, int]:
    """The vision phase: the float32 pixel values and the prompt's input embeddings (alive
    through every phase of a run with images; `embed_d` bytes an element where mlx-vlm makes
    them float32), and the encoder's working set over all images from the coefficients
    tools/calibrate_vision.py measured (unimap/vision_calibration.py). A half-precision tower
    not measured may be handed float32 pixels: MLX then computes its first matrix product in
    float32, beside a float32 copy of the weight (Gemma 4 unified's patch embedder, measured),
    so the largest tower tensor in float32 is priced too."""
    v = arch.vision
    if v is None or options.max_num_images == 0:
        return {}
    embed_d = embed_d or d
    tiles = image_tiles(v, options)
    n = _image_patches(arch, options) // tiles  # patches one attention sees (an image or a tile)
    images = options.max_num_images * tiles
    p = images * n
    # Qwen2-VL attends within one image at a time; RADIO takes same-sized images as a batch
    at_once = 1 if v.kind == "qwen2_vl" and not v.min_patches else images
    # every image's patches in one attention (Pixtral, MoonViT): scores over all of them, and
    # the block mask beside them: float32, and its copy in the tower's dtype
    if v.joint_attention:
        n, at_once = p, 1
    mask = (4 + (d if d < 4 else 0)) * n * n if v.joint_attention else 0
    pixels = p * 3 * v.patch_size * v.patch_size * v.temporal_patch_size * 4
    cp, ch, cm, cs, ck = vision_coefficients(arch.model_type, "float32" if d >= 4 else "bfloat16")
    encoder = (cp * pixels + ch * p * v.hidden_size * d + cm * p * v.intermediate_size * d
               + cs * v.num_heads * n * n * d * at_once + ck * v.num_layers * p * v.hidden_size * d)
    b = options.max_batch_size
    tokens = options.max_seq_len + _image_tokens(arch, options)
    # a one-hot position lookup (Gemma 4): the comparison (1 byte), its float32 copy and the
    # contiguous copy the matmul with the table reads, an element each (9 bytes; 9.1 measured
    # on the tiny twin, so 10 priced), beside the patch and position embeddings. It runs in the
    # patch embedder and is freed before the encoder's layers (measured: the tower held the
    # lookup and 12 MiB more at widths 256 and 512, 2,304 patches), so the tower takes the
    # larger of the two phases; priced here beyond the encoder.
    lookup = p * v.position_one_hot * ONE_HOT_BYTES + 2 * p * v.hidden_size * 4
    one_hot = b * max(0, lookup - int(encoder)) if v.position_one_hot else 0
    # the rotary grid, per position and unit of head dim, all in one lazy graph: the angles (2
    # bytes: float32, a quarter of the dim per axis), their cosines and sines (4), the imaginary
    # parts and complex64 pairs (4 + 4), the stacked table and its reshaped copy (4 + 4)
    head_dim = v.hidden_size // max(v.num_heads, 1)
    grid = v.rope_grid * head_dim * 22
    projector = projector_bytes(arch, options, p, d)
    # a half-precision tower casts the processor's float32 pixels to its dtype, and the CPU's
    # convolution works on float32 copies of them: 8.5 bytes a pixel element measured (Qwen2-VL's
    # tiny bfloat16 twin, six images: 1.37 times its plan before this); at real widths a few
    # percent of the encoder, which fits across widths did not tell apart
    cast = PIXEL_CAST_BYTES * pixels // 4 if d < 4 else 0
    return {
        **({"vision/position-one-hot": one_hot} if one_hot else {}),
        **({"vision/rope-grid": grid} if grid else {}),
        "all/pixels": b * pixels,
        "all/input-embeddings": b * tokens * arch.hidden_size * embed_d,
        "vision/encoder": b * int(encoder),
        **({"vision/block-mask": b * mask} if mask else {}),
        **({"vision/projector": b * projector} if projector else {}),
        **({"vision/pixels-cast": b * cast} if cast else {}),
        **({"vision/float32-weights": largest_float32_bytes}
           if d < 4 and vlm_package(arch.model_type) not in WIDTH_FITTED else {}),
    }


# the towers tools/calibrate_vision.py fits across widths, heads, MLPs and depths; their
# half-precision fits hold whatever their float32 copies of weights take, while every other
# half-precision tower is priced its largest tensor in float32 apart
WIDTH_FITTED = ("gemma3", "qwen2_vl", "qwen2_5_vl")


def vision_coefficients(model_type: str, dtype: str) -> tuple[float, ...]:
    """The measured encoder coefficients (pixels, width, MLP, scores, depth) of an mlx-vlm
    family; for a family not measured (LLaVA's CLIP tower), the largest of each over the
    towers fitted across widths (WIDTH_FITTED)."""
    family = vlm_package(model_type)
    if (family, dtype) in VISION_COEFFICIENTS:
        return VISION_COEFFICIENTS[(family, dtype)]
    # the largest over the towers fitted across widths (a tower fixed in code, priced per pixel
    # alone, says nothing of another's)
    fitted = {k: v for k, v in VISION_COEFFICIENTS.items() if k[0] in WIDTH_FITTED}
    return _measured_or_largest(fitted, family, dtype)
