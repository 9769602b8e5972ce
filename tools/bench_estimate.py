"""Predicted against measured peak memory over a matrix of models and settings (issue 5).

Usage: python tools/bench_estimate.py [--quick] [--only SUBSTRING] [--json OUT] [--png OUT] [--free]
       python tools/bench_estimate.py --results JSON [--reprice] [--json OUT] [--png OUT]

Every case runs in a fresh process: `unimap.load` plans and loads a random-weight checkpoint
(real safetensors written by MLX, or the shipped GGUF model), then the real workload runs through
unimap's runtime: a prefill of max_seq_len - DECODE tokens in mlx-lm's chunks, then DECODE
greedy tokens, so the cache ends at max_seq_len. Batch 1 goes through `unimap.stream_generate`;
larger batches through a loop that does what mlx-lm's generate_step does, row-batched. The child
reports mx.get_peak_memory() (loading and running), the resident weights after loading, the KV
cache's bytes at the end and the growth of the process RSS. Each case is also priced with the
published mistral.rs formulas (`mistralrs_bytes`, written here from FACTS.md) as a baseline.

Prints Markdown (the table and summary in docs/BENCHMARKS.md); --png draws predicted against
measured. `tests/test_estimate_measured.py` runs a few of these cases as a correctness check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DECODE_TOKENS = 4
VISION_TEMPLATE_TOKENS = 16  # at most what the tiny models' chat templates add around a prompt
GGUF = ROOT.parent / "shared" / "models" / "stories260K" / "stories260K.gguf"
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")

# Small random models (head_dim 64, so --kv-bits applies) with the smallest vocabulary in common
# use (32,000: Llama 2, Mistral): the embeddings and head are most of the weights, as in the small
# real models, while a 2-core CPU still prefills 8,192 tokens in about a minute.
BASE = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 32000,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "max_position_embeddings": 16384}
MODELS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **BASE},
    "llama-wide": {"model_type": "llama", **BASE, "hidden_size": 512, "intermediate_size": 1536,
                   "num_attention_heads": 8, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", **BASE, "rope_theta": 1e6},
    "qwen2": {"model_type": "qwen2", **BASE, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", **BASE},
    "gemma3": {"model_type": "gemma3_text", **BASE, "sliding_window": 512,
               "sliding_window_pattern": 2, "query_pre_attn_scalar": 64},
    "phi3": {"model_type": "phi3", **BASE, "num_key_value_heads": 4},
    "qwen3_moe": {"model_type": "qwen3_moe", **BASE, "num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 256, "decoder_sparse_step": 1, "mlp_only_layers": [],
                  "norm_topk_prob": True},
    "mixtral": {"model_type": "mixtral", **BASE, "num_local_experts": 4, "num_experts_per_tok": 2},
}


# MoE routing at top-k 1, 2, 4, 8 over 8, 64 and 128 experts (qwen3_moe's layout)
for _experts in (8, 64, 128):
    for _k in (1, 2, 4, 8):
        MODELS[f"moe-e{_experts}-k{_k}"] = {**MODELS["qwen3_moe"], "num_experts": _experts,
                                             "num_experts_per_tok": _k}
MOE = ("qwen3_moe", "mixtral", *(m for m in MODELS if m.startswith("moe-")))
FAMILY = "family:"  # a model "family:<mlx-lm module>": tests/tiny_families.py's tiny config
DEEP = "family8:"  # the same with 8 layers (deep_config): a hybrid's attention not only last
# the same 4 times as wide with 4 times the experts, twice the top-k (wide_config: the shape
# tools/calibrate_families.py fits to besides the tiny one), and a shape neither fit saw (twice as
# wide, twice the experts and top-k)
WIDE, HELD_OUT = "familyx4:", "familyx2:"
WIDENED = {WIDE: (4, 4), HELD_OUT: (2, 2)}
# Real widths: a published config (tools/published_configs.json) cut to a few layers (per-layer
# lists cut alike), a 1024-token vocabulary and at most 16 experts, so a 2-core CPU with 24 GiB
# runs it in float32; what the tiny twins' calibration must extrapolate to (a state of
# 128 heads x 64 x 128, not 8 x 16 x 16).
PUBLISHED = "published:"
DROP = "<drop>"  # a cut's value that removes the key from the published config
PUBLISHED_CUTS: dict[str, dict[str, Any]] = {
    "mamba2": {"num_hidden_layers": 2},  # Codestral Mamba 7B: 128 heads x 64 x state 128
    "qwen3_next": {"num_hidden_layers": 4, "num_experts": 16},  # 3 linear layers, 1 full
    "nemotron_h": {"num_hidden_layers": 2, "hybrid_override_pattern": "M*"},  # 56B: state 256
    # 0.5B: attention and SSD in every layer, state 2 x head dim; its config as found leaves the
    # SSD width to expand x hidden (2048), which 24 heads do not divide: 24 x 64 as mlx-lm needs
    "falcon_h1": {"num_hidden_layers": 2, "mamba_d_ssm": 1536},
    "gemma2": {"num_hidden_layers": 2},  # 9B
    # 20B, top-4; its experts in bf16, as mlx-community's bf16 conversions hold them
    "gpt_oss": {"num_hidden_layers": 2, "num_local_experts": 16, "quantization_config": DROP},
    "deepseek_v2": {"num_hidden_layers": 3, "n_routed_experts": 16},  # Lite: MLA, 1 dense layer
    "olmoe": {"num_hidden_layers": 2, "num_experts": 16},  # top-8
    # families priced with their own share of the largest coefficients (2026-11-30): dense ones
    # at their real MLP proportions, sliding-window patterns kept whole, MoE cut to 16 experts
    "granite": {"num_hidden_layers": 2},  # 3.3 8B
    "olmo2": {"num_hidden_layers": 2},  # 7B
    "starcoder2": {"num_hidden_layers": 2},  # 7B: MLP 4x, no gate
    "internlm2": {"num_hidden_layers": 2},  # 2.5 7B
    # 32B: 3 sliding layers and a global one; its published config.json lists the layer types,
    # which transformers' config (read for the tokenizer) needs beside mlx-lm's string pattern
    "exaone4": {"num_hidden_layers": 4,
                "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
    "cohere2": {"num_hidden_layers": 4},  # Command R7B: 3 sliding layers and a global one
    "smollm3": {"num_hidden_layers": 4},  # 3B: every fourth layer without rope
    "phimoe": {"num_hidden_layers": 2},  # Phi-3.5-MoE: 16 experts, top-2
    # 4.5-Air: 1 dense layer, top-8 (mlx-lm's ModelArgs needs rope_scaling, given or not)
    "glm4_moe": {"num_hidden_layers": 2, "n_routed_experts": 16, "rope_scaling": None},
    "ernie4_5_moe": {"num_hidden_layers": 2, "moe_num_experts": 16},  # 21B-A3B
    "minimax": {"num_hidden_layers": 2, "num_local_experts": 16,  # M2: top-8, as a bf16 copy
                "quantization_config": DROP},
    "qwen2_moe": {"num_hidden_layers": 2, "num_experts": 16},  # 1.5-MoE-A2.7B: top-4, shared
    "granitemoe": {"num_hidden_layers": 2},  # 3.1 1B-A400M: 32 experts, top-8
}
# vision-language models (tests/tiny_vlms.py: mlx-vlm's classes) with towers wide enough that the
# encoder, not the tiny text model, sets the peak at the larger images
VISION: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"embed_dim": 256, "num_heads": 4, "mlp_ratio": 2, "depth": 4},
    "qwen2_5_vl": {"hidden_size": 256, "num_heads": 4, "intermediate_size": 512, "depth": 4,
                   "fullatt_block_indexes": [3]},
    "gemma3_vl": {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512,
                  "num_hidden_layers": 4, "image_size": 448},  # fixed size: every image -> 448
    # a prompt mlx-vlm prefills in one pass (the text attends both ways): no chunks to price
    "paligemma": {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512,
                  "num_hidden_layers": 4, "image_size": 224},
}

# Any mlx-vlm family (tests/tiny_vlms.py's write_any_vlm: the tiny language model, a generic image
# processor beside the family's processor class) whose processor takes an image so: its tower at
# its published widths, 4 layers deep. Gemma 4's processor fills its 280-token budget whatever the
# image's size, and its tower matches positions against a one-hot table; MoonViT (Kimi-VL) keeps
# an image's resolution and builds its whole 512 x 512 rotary grid on every call.
ANY_VLM = "vlm:"
FREE_ENV = "UNIMAP_BENCH_FREE"
FREE = os.environ.get(FREE_ENV) == "1"
TOWERS: dict[str, dict[str, int]] = {
    "gemma4": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 4,
               "num_attention_heads": 12, "num_key_value_heads": 12},
    "kimi_vl": {"hidden_size": 1152, "embed_dim": 1152, "intermediate_size": 4304, "depth": 4,
                "num_heads": 16},
    # Mistral Small 3.1's Pixtral tower: every image's patches in one attention
    "mistral3": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
                 "num_attention_heads": 16, "head_dim": 64},
    # Aya Vision 8B's SigLIP at 364 px: 12 tiles and a thumbnail for any image, and a
    # 28,672-wide projector on every image token
    "aya_vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 4,
                   "num_attention_heads": 16, "image_size": 364},
    # InternVL3's InternViT-300M at 448 px: 12 tiles and a thumbnail for a 4:3 image
    "internvl_chat": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
                      "num_attention_heads": 16, "image_size": 448},
    # Llama 4 Scout's tower: 336-px tiles, pixel shuffle 0.5
    "llama4": {"hidden_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 16,
               "image_size": 336},
    # Idefics3-8B's SigLIP at 364 px: the image resized to its longest edge, then 4 x 4 tiles
    "idefics3": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 4,
                 "num_attention_heads": 16, "image_size": 364},
    # Nemotron Nano Omni's RADIO: an image's own patches, at least 1,024
    "nemotron_h_nano_omni": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 4,
                             "num_attention_heads": 16},
    # LLaVA-NeXT's CLIP-L at 336 px, anyres tiles
    "llava_next": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
                   "num_attention_heads": 16, "image_size": 336},
    # Qwen3-VL-8B's tower: an image whole at its own resolution, 16-px patches merged 2 x 2
    "qwen3_vl": {"hidden_size": 1152, "intermediate_size": 4304, "depth": 4, "num_heads": 16,
                 "patch_size": 16},
}
# through the family's own processor (tests/tiny_vlms.py's use_family_processor), which cuts tiles
# or keeps sizes as the published one does
OWN_PROCESSOR = ("mistral3", "aya_vision", "internvl_chat", "llama4", "idefics3",
                 "nemotron_h_nano_omni", "llava_next", "qwen3_vl")


@dataclass(frozen=True)
class Case:
    model: str  # a MODELS key, or "stories260k" (the shipped GGUF)
    weights: str  # bf16, f32, q4, q8 (MLX-quantized checkpoints), isq4, isq8, gguf
    seq: int
    batch: int = 1
    kv_bits: int | None = None
    place: str = "gpu"  # gpu: all on one device; split: half the layers on the CPU; cpu
    image: int = 0  # vision models: one square image of this many pixels a side
    images: int = 1  # ...or this many
    wide: bool = False  # 4:3 images (the side is their width), where a processor cuts more tiles

    @property
    def name(self) -> str:
        kv = f"kv{self.kv_bits}" if self.kv_bits else "kv16"
        image = f"/image{self.image}" if self.image else ""
        image += f"x{self.images}" if self.images > 1 else ""
        image += "wide" if self.wide else ""
        return f"{self.model}/{self.weights}/{self.seq}x{self.batch}/{kv}/{self.place}{image}"


def matrix() -> list[Case]:
    """Sequence x batch on llama; every architecture at two lengths; weight formats x KV;
    placements; the GGUF model. Lengths and widths are kept where a 2-core CPU finishes them."""
    cases: list[Case] = []
    for seq in (256, 1024, 4096, 8192):
        for batch in (1, 2, 4):
            if seq * batch <= 16384:
                cases.append(Case("llama", "bf16", seq, batch))
    for model in ("mistral", "qwen2", "qwen3", "gemma3", "phi3", "qwen3_moe", "mixtral", "llama-wide"):
        for seq in (256, 2048):
            cases.append(Case(model, "f32" if model in MOE else "bf16", seq, 1 if seq > 256 else 2))
    cases.append(Case("gemma3", "bf16", 4096, 1))
    # MoE in float32 (MLX's CPU gather_mm) and in bfloat16, whose experts MLX's CPU build runs
    # through unimap's upcast path (unimap/runtime.py upcast_gather_mm)
    for model in (m for m in MODELS if m.startswith("moe-")):
        for weights in ("f32", "bf16"):
            cases.append(Case(model, weights, 1024, 1))
    for model in ("qwen3_moe", "mixtral"):
        for seq in (256, 2048):
            cases.append(Case(model, "bf16", seq, 1 if seq > 256 else 2))
    cases += family_cases()
    cases += published_cases()
    for weights in ("bf16", "f32", "q4", "q8", "isq4", "isq8"):
        for kv in (None, 8, 4):
            cases.append(Case("llama", weights, 1024, 2, kv))
    for weights in ("q4", "isq8"):
        cases.append(Case("qwen3", weights, 2048, 1, 8))
    for model, weights in (("llama", "bf16"), ("llama", "q4"), ("gemma3", "bf16"),
                           ("qwen3_moe", "f32"), ("llama-wide", "q8")):
        for place in ("split", "cpu"):
            cases.append(Case(model, weights, 1024, 1, None, place))
    for seq, batch in ((256, 1), (512, 4), (2048, 1)):
        for place in ("gpu", "split", "cpu"):
            cases.append(Case("stories260k", "gguf", seq, batch, None, place))
    for weights, image, place in (("f32", 224, "gpu"), ("f32", 448, "gpu"), ("bf16", 448, "gpu"),
                                  ("f32", 672, "gpu"), ("f32", 448, "split"), ("f32", 448, "cpu")):
        cases.append(Case("qwen2_vl", weights, 256, 1, None, place, image))
    for weights, image in (("f32", 448), ("bf16", 448), ("f32", 672)):
        cases.append(Case("qwen2_5_vl", weights, 256, 1, None, "gpu", image))
    for weights, place in (("f32", "gpu"), ("bf16", "gpu"), ("f32", "split")):
        cases.append(Case("gemma3_vl", weights, 256, 1, None, place, 448))
    # one pass over a prompt longer than mlx-lm's 2048-token chunk, a bfloat16 model whose
    # prompt embeddings with an image are float32, and a split
    for weights, seq, place in (("f32", 256, "gpu"), ("f32", 2600, "gpu"), ("bf16", 2600, "gpu"),
                                ("f32", 2600, "split")):
        cases.append(Case("paligemma", weights, seq, 1, None, place, 224))
    for module in ("gemma4", "kimi_vl"):  # a small image and one past the tower's own size
        for image in (224, 896):
            cases.append(Case(f"{ANY_VLM}{module}", "f32", 512, 1, None, "gpu", image))
    for images in (1, 4):  # Pixtral's tower attends over all images' patches at once
        cases.append(Case(f"{ANY_VLM}mistral3", "f32", 512, 1, None, "gpu", 448, images))
    for image in (224, 896):  # a 4:3 image takes 4 x 3 tiles and a thumbnail, however small
        cases.append(Case(f"{ANY_VLM}aya_vision", "f32", 512, 1, None, "gpu", image, wide=True))
    for module in ("internvl_chat", "llama4", "idefics3", "nemotron_h_nano_omni", "llava_next",
                   "qwen3_vl"):  # a photo-sized 4:3 image through each processor
        cases.append(Case(f"{ANY_VLM}{module}", "f32", 512, 1, None, "gpu", 896, wide=True))
    return list(dict.fromkeys(cases))


QUICK = [Case("llama", "bf16", 256, 2), Case("qwen3", "q4", 512, 1, 8),
         Case("gemma3", "bf16", 1024, 1), Case("qwen3_moe", "f32", 256, 1, None, "split"),
         Case("llama", "isq4", 512, 1, None, "cpu"), Case("stories260k", "gguf", 256, 2)]


def family_cases() -> list[Case]:
    """Every buildable mlx-lm family (tests/tiny_families.py) at a short and a long prompt: its
    tiny twin, 8 layers deep, 4 times as wide and twice as wide."""
    from tiny_families import UNBUILDABLE, families

    return [Case(f"{prefix}{f}", "f32", seq, 1) for f in families() if f not in UNBUILDABLE
            for seq in (256, 2048) for prefix in (FAMILY, DEEP, WIDE, HELD_OUT)] + long_cases()


# Families at prompts 8 times mlx-lm's chunk, twice what their calibration ran (8,196 tokens):
# MLA's (DeepSeek V3 and V2, GLM-4.7-Flash, Kimi K2.5, Mistral 4), one whose fit kept a per-key
# part it does not need there (Step-3.5), and sliding-window and plain ones beside them.
LONG_FAMILIES = ("deepseek_v3", "deepseek_v2", "glm4_moe_lite", "kimi_k25", "mistral4", "step3p5",
                 "minimax", "gemma2", "cohere2", "olmo2", "exaone4", "olmo3")


# Tiny twins whose one global-attention layer is their last, whose prefill attention MLX never
# evaluates (only its cache is needed): run 8 layers deep (Command R7B's 4-layer twin held 1/6.55
# of its plan at 16,384 tokens, its window's scores alone).
GLOBAL_LAST = ("cohere2", "exaone4", "olmo3")


def long_cases() -> list[Case]:
    """LONG_FAMILIES' tiny twins at 16,384 tokens (GLOBAL_LAST 8 layers deep)."""
    return [Case(f"{DEEP if f in GLOBAL_LAST else FAMILY}{f}", "f32", 16384, 1) for f in LONG_FAMILIES]


def published_twin(family: str) -> dict[str, Any]:
    """`family`'s published config with PUBLISHED_CUTS applied and a 1024-token vocabulary."""
    entry = json.loads((ROOT / "tools" / "published_configs.json").read_text())[family]

    config, cuts = entry["config"], PUBLISHED_CUTS[family]
    layers, kept = config["num_hidden_layers"], cuts["num_hidden_layers"]
    out = {k: v[:kept] if isinstance(v, list) and len(v) == layers else v for k, v in config.items()}
    return {k: v for k, v in {**out, **cuts, "vocab_size": 1024}.items() if v != DROP}


# Published twins whose scans run in blocks of 256 tokens (SSD, chunked gated delta), also run
# at 1024: a chunk of four blocks keeps other arrays than one block or eight.
BLOCK_SCANS = ("mamba2", "nemotron_h", "falcon_h1", "qwen3_next")


def published_cases() -> list[Case]:
    """The published twins at a short and a long prompt (and one between for BLOCK_SCANS)."""
    return [Case(f"{PUBLISHED}{f}", "f32", seq, 1) for f in PUBLISHED_CUTS
            for seq in ((256, 1024, 2048) if f in BLOCK_SCANS else (256, 2048))]


def available(cases: list[Case]) -> list[Case]:
    """The cases this checkout can run: the GGUF ones need ../shared/models beside the project."""
    if GGUF.exists():
        return cases
    print(f"note: {GGUF} is not here; its cases are left out", file=sys.stderr)
    return [c for c in cases if c.model != "stories260k"]


# ---------------------------------------------------------------- checkpoints


def checkpoint(work: Path, model: str, weights: str) -> Path:
    """The checkpoint a case loads, written once per (model, stored format) into `work`."""
    if model == "stories260k":
        return GGUF
    stored = {"isq4": "bf16", "isq8": "bf16"}.get(weights, weights)
    folder = work / f"{model}-{stored}"
    if (folder / "config.json").exists():
        return folder
    if model in VISION:
        from tiny_vlms import write_tiny_vlm

        family = "gemma3" if model == "gemma3_vl" else model
        dtype = "float32" if stored == "f32" else "bfloat16"
        return write_tiny_vlm(folder, family, dtype=dtype, vision=VISION[model])
    from tiny_models import write_random_model

    if model.startswith(ANY_VLM):
        from tiny_vlms import write_any_vlm

        module = model[len(ANY_VLM):]
        return write_any_vlm(folder, module, TOWERS[module],
                             dtype="float32" if stored == "f32" else "bfloat16",
                             family_processor=module in OWN_PROCESSOR)
    if model.startswith(FAMILY):
        from tiny_families import tiny_config

        return write_random_model(work / model.replace(":", "-"), tiny_config(model[len(FAMILY):]))
    if model.startswith(DEEP):
        from tiny_families import deep_config

        return write_random_model(work / model.replace(":", "-"), deep_config(model[len(DEEP):]))
    prefix = model.split(":")[0] + ":"
    if prefix == PUBLISHED:
        return write_random_model(work / model.replace(":", "-"), published_twin(model[len(prefix):]),
                                  dtype="float32")
    if prefix in WIDENED:
        from tiny_families import wide_config

        factor, experts = WIDENED[prefix]
        config = wide_config(model[len(prefix):], factor, experts)
        return write_random_model(work / model.replace(":", "-"), config)
    if stored == "f32":
        return write_random_model(folder, MODELS[model], dtype="float32")
    bits = None if stored == "bf16" else int(stored[1:])  # q4, q8: MLX-quantized bf16 weights
    return write_random_model(folder, MODELS[model], dtype="bfloat16", bits=bits)


# ---------------------------------------------------------------- one case, in a fresh process


def load_kwargs(case: Case, num_layers: int, gpu: bool = False) -> dict[str, Any]:
    """Placement: on a machine with a GPU (`gpu`), the probed machine itself with a layer count
    (all, half, none); on the CPU build, a preset GPU machine whose "GPU" is a CPU stream."""
    from tiny_models import stand_in_machine

    kwargs: dict[str, Any] = {"max_seq_len": case.seq, "max_batch_size": case.batch,
                              "kv_bits": case.kv_bits}
    if case.image:
        kwargs.update(max_num_images=case.images, max_image_length=case.image)
    if case.weights.startswith("isq"):
        kwargs["isq"] = int(case.weights[3:])
    if gpu:
        kwargs["device_map"] = {"gpu": num_layers, "split": num_layers // 2, "cpu": 0}[case.place]
    elif case.place == "gpu":  # a machine where everything fits on the GPU (here: a CPU stream)
        kwargs["machine"] = stand_in_machine()
    elif case.place == "split":
        kwargs.update(machine=stand_in_machine(), device_map=num_layers // 2)
    # "cpu": the probed machine itself (this CPU build: one device, the CPU)
    return kwargs


def cache_bytes(cache: list[Any]) -> int:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return sum(a.nbytes for c in cache for _, a in tree_flatten(_state(c)) if isinstance(a, mx.array))


def _state(cache: Any) -> Any:
    """What a cache holds: its keys and values, or its state (recurrent and nested caches)."""
    if hasattr(cache, "keys") and hasattr(cache, "values"):
        return [cache.keys, cache.values]
    try:
        return [a for a in cache.state if not isinstance(a, str)]
    except (AttributeError, NotImplementedError, TypeError):
        return []


def run_batched(model: Any, tokens: Any, decode: int, cache: list[Any]) -> None:
    """mlx-lm's generate_step for a (batch, length) prompt: prefill chunks evaluated through the
    cache, then pipelined greedy steps."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    step_tokens: int = generate_step.__kwdefaults__["prefill_step_size"]
    stream = model._unimap.parts_stream

    def step(inputs: Any) -> tuple[Any, Any]:
        logits = model(inputs, cache=cache)[:, -1, :]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return mx.argmax(logprobs, axis=-1), logprobs

    with mx.stream(stream):
        done, total = 0, tokens.shape[1]
        while total - done > 1:
            n = min(step_tokens, total - done - 1)
            model(tokens[:, done:done + n], cache=cache)
            mx.eval([c.state for c in cache])
            done += n
            mx.clear_cache()
        y, logprobs = step(tokens[:, done:])
        mx.async_eval(y, logprobs)
        for _ in range(decode):
            next_y, next_logprobs = step(y[:, None])
            mx.async_eval(next_y, next_logprobs)
            mx.eval(y)
            y, logprobs = next_y, next_logprobs
        mx.eval(y, logprobs)


def child(case: Case, path: Path) -> dict[str, Any]:
    import resource

    import mlx.core as mx

    import unimap
    from unimap.generate import make_cache
    from unimap.inspect import inspect

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    num_layers = inspect(path).num_layers
    mx.reset_peak_memory()
    start = time.perf_counter()
    gpu = bool(mx.is_available(mx.gpu))
    model, tokenizer, plan = unimap.load(path, **load_kwargs(case, num_layers, gpu))
    if FREE:  # the run's need, not what the plan's MLX memory limit holds it to
        model._unimap.limits.release()
    load_peak = mx.get_peak_memory()
    weights = mx.get_active_memory()
    mx.reset_peak_memory()
    cache = make_cache(model)
    prompt_len = case.seq - DECODE_TOKENS
    from unimap.generate import vocab_size

    span = min(150, vocab_size(model) - 3)  # token ids the model has (tiny twins: 128)
    rows = [[(31 * i + 17 * r) % span + 3 for i in range(prompt_len)] for r in range(case.batch)]
    if case.image:  # words w0..w119 (one token each), the chat template's few tokens, the image
        from tiny_vlms import write_image

        height = case.image * 3 // 4 if case.wide else case.image
        images = [write_image(path.parent / f"image{case.image}-{i}.png", case.image, height, seed=i)
                  for i in range(case.images)]
        words = " ".join(f"w{(31 * i) % 120}" for i in range(prompt_len - VISION_TEMPLATE_TOKENS))
        for _ in unimap.stream_generate(model, tokenizer, words, max_tokens=DECODE_TOKENS,
                                        prompt_cache=cache, images=images):
            pass
    elif case.batch == 1:
        for _ in unimap.stream_generate(model, tokenizer, rows[0], max_tokens=DECODE_TOKENS,
                                        prompt_cache=cache):
            pass
    else:
        run_batched(model, mx.array(rows), DECODE_TOKENS, cache)
    run_peak = mx.get_peak_memory()
    est = plan.estimate
    return {
        "case": asdict(case), "name": case.name, "seconds": time.perf_counter() - start,
        "predicted": plan.peak_bytes, "measured": max(load_peak, run_peak), "free": FREE,
        "load_peak": load_peak, "run_peak": run_peak,
        "weights_predicted": sum(d.weight_bytes for d in plan.devices), "weights_measured": weights,
        "kv_predicted": sum(d.kv_bytes for d in plan.devices), "kv_measured": cache_bytes(cache),
        "working_predicted": plan.peak_bytes - sum(d.weight_bytes + d.kv_bytes for d in plan.devices),
        "rss_growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start,
        "mistralrs": mistralrs_bytes(inspect(path), est.options, est.dtype),
        "devices": {d.name: len(d.layers) for d in plan.devices},
        "cpu_dtype": plan.cpu_dtype, "backend": plan.machine.backend,
    }


# ---------------------------------------------------------------- the mistral.rs baseline


MISTRALRS_ATTENTION_CHUNK = 1024  # mistral.rs caps the attention activation at this many tokens
GGML_BLOCKS = {4: (256, 144), 8: (32, 34)}  # ISQ bits -> (block elements, block bytes): Q4K, Q8_0


def mistralrs_bytes(spec: Any, options: Any, dtype: str) -> int:
    """What mistral.rs's automatic device mapper counts for the same run, from its published
    rules (FACTS.md), written here: weights from headers, or for ISQ the float weights divided by
    an integer pack factor (dtype bytes x block elements // block bytes); a KV cache of
    max_seq_len for every layer in the activation dtype (no sliding windows, no KV quantization);
    activations = batch x heads x min(max_seq_len, 1024)^2 elements. Its safety margins are
    budget rules, not part of the estimate, and are left out."""
    from unimap.inspect import dtype_bytes

    d = dtype_bytes(dtype)
    arch = spec.arch
    weights = 0
    for slot in spec.slots:
        if options.isq is None:
            weights += slot.header_bytes
            continue
        elements, size = GGML_BLOCKS[options.isq]
        pack = max(1, dtype_bytes(spec.dtype) * elements // size)
        quantizable = slot.q_bytes + slot.q8_bytes
        weights += slot.header_bytes - quantizable + quantizable // pack
    kv = arch.num_layers * 2 * options.max_batch_size * arch.num_kv_heads * options.max_seq_len \
        * arch.head_dim * d
    act = options.max_batch_size * arch.num_heads * min(options.max_seq_len,
                                                         MISTRALRS_ATTENTION_CHUNK) ** 2 * d
    return int(weights + kv + act)


# ---------------------------------------------------------------- driver


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if OPENBLAS.exists() and "LD_PRELOAD" not in env:  # memory is the same; fp32 runs faster
        env["LD_PRELOAD"] = str(OPENBLAS)
    return env


def measure(cases: list[Case], work: Path, timeout: float = 900,
            keep_going: bool = False) -> Iterator[dict[str, Any]]:
    env = child_env()
    for case in cases:
        path = checkpoint(work, case.model, case.weights)
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(asdict(case)),
                               str(path)], capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode != 0:
            if not keep_going:
                raise RuntimeError(f"{case.name} failed:\n{done.stderr[-3000:]}")
            print(f"  {case.name} FAILED: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        yield json.loads(done.stdout.strip().splitlines()[-1])


def ratio(r: dict[str, Any], key: str = "predicted") -> float:
    return float(r[key]) / float(r["measured"])


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    rows = ["| case (model/weights/seq x batch/KV/placement) | measured peak MiB | unimap MiB | "
            "unimap / measured | mistral.rs MiB | mistral.rs / measured | weights pred/meas | "
            "KV pred/meas | working set pred/meas MiB | RSS growth MiB | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        working_measured = r["measured"] - r["weights_measured"] - r["kv_measured"]
        rows.append(
            f"| {r['name']} | {mib(r['measured'])} | {mib(r['predicted'])} | {ratio(r):.3f} | "
            f"{mib(r['mistralrs'])} | {ratio(r, 'mistralrs'):.3f} | "
            f"{r['weights_predicted'] / max(r['weights_measured'], 1):.3f} | "
            f"{r['kv_predicted'] / max(r['kv_measured'], 1):.3f} | "
            f"{mib(r['working_predicted'])} / {mib(working_measured)} | {mib(r['rss_growth'])} | "
            f"{r['seconds']:.1f} |")
    return rows


def summary(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| estimator | median predicted / measured | cases under (measured > predicted) | "
             "worst under | median over | max over |", "|---|---|---|---|---|---|"]
    for label, key in (("unimap", "predicted"), ("mistral.rs formulas", "mistralrs")):
        ratios = [ratio(r, key) for r in results]
        under = [x for x in ratios if x < 1.0]
        over = [x - 1.0 for x in ratios if x >= 1.0] or [0.0]
        worst = f"{(1.0 - min(under)) * 100:.1f} %" if under else "none"
        lines.append(f"| {label} | {statistics.median(ratios):.3f} | {len(under)} of {len(ratios)} | "
                     f"{worst} | {statistics.median(over) * 100:.1f} % | {max(over) * 100:.1f} % |")
    return lines


def draw(results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    measured = [r["measured"] / 2**20 for r in results]
    ax.scatter(measured, [r["mistralrs"] / 2**20 for r in results], s=14, marker="x",
               color="tab:orange", label="mistral.rs formulas")
    ax.scatter(measured, [r["predicted"] / 2**20 for r in results], s=14, color="tab:blue",
               label="unimap")
    low, high = min(measured) * 0.7, max(measured) * 1.6
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, label="predicted = measured")
    ax.plot([low, high], [low * 1.1, high * 1.1], color="grey", linewidth=0.6, linestyle="--",
            label="+10 %")
    ax.set(xscale="log", yscale="log", xlim=(low, high), xlabel="measured peak (MiB)",
           ylabel="predicted peak (MiB)",
           title=f"Predicted vs measured peak memory ({len(results)} runs)")
    ax.legend(loc="upper left")
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(Case(**json.loads(sys.argv[2])), Path(sys.argv[3]))), flush=True)
        # past the preloaded OpenBLAS's exit handler, which can wait forever (unimap.preload.leave)
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the small subset the tests run")
    parser.add_argument("--only", default="", help="cases whose name contains this (or any of a "
                                                   "comma-separated list)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--png", type=Path, help="draw predicted against measured here")
    parser.add_argument("--work", type=Path, help="keep checkpoints here (default: a temp folder)")
    parser.add_argument("--results", type=Path, help="render the tables (and --png) from a --json file")
    parser.add_argument("--keep-going", action="store_true", help="report a failing case and go on")
    parser.add_argument("--free", action="store_true", help="run without the plan's MLX memory "
                                                            "limit (the need, not the user's run)")
    parser.add_argument("--reprice", action="store_true", help="with --results: plan every case again "
                        "with this checkout (its fits) before rendering; for --free runs only, whose "
                        "measured peaks do not depend on the plan")
    args = parser.parse_args()
    if args.free:
        os.environ[FREE_ENV] = "1"  # the children read it
    if args.results:
        results = json.loads(args.results.read_text())
        if args.reprice:
            with tempfile.TemporaryDirectory() as tmp:
                results = reprice(results, args.work or Path(tmp))
        report(results, args.json, args.png)
        return
    if args.reprice:
        parser.error("--reprice needs --results FILE")
    import mlx.core as mx

    wanted = args.only.split(",")
    cases = [c for c in available(QUICK if args.quick else matrix()) if any(w in c.name for w in wanted)]
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, MLX {mx.__version__}, GPU available: {mx.is_available(mx.gpu)}, "
          f"BLAS preloaded: {child_env().get('LD_PRELOAD', 'none')}; {len(cases)} cases\n")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for result in measure(cases, work, keep_going=args.keep_going):
            results.append(result)
            print(f"  {result['name']}: {ratio(result):.3f} ({result['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
            if args.json:  # kept as it grows, so a run cut short still leaves its cases
                args.json.write_text(json.dumps(results, indent=1))
    report(results, args.json, args.png)


def reprice(results: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """The results with every case planned again by this checkout (`unimap.plan` on the same
    checkpoint and options), so a change to the estimate or its fits is measured against peaks
    already taken. Only runs made with --free qualify: a held run's peak follows its plan's
    memory limit."""
    import unimap

    held = [r["name"] for r in results if r.get("free") is False]
    if held:
        raise SystemExit(f"--reprice: {len(held)} results were held to their plan's memory limit "
                         f"(first: {held[0]}); rerun them with --free")
    out = []
    for r in results:
        if not r.get("measured"):
            out.append(r)
            continue
        case = Case(**r["case"])
        path = checkpoint(work, case.model, case.weights)
        plan = unimap.plan(path, **load_kwargs(case, unimap.inspect(path).num_layers))
        weights = sum(d.weight_bytes for d in plan.devices)
        kv = sum(d.kv_bytes for d in plan.devices)
        out.append({**r, "predicted": plan.peak_bytes, "weights_predicted": weights, "kv_predicted": kv,
                    "working_predicted": plan.peak_bytes - weights - kv})
    return out


def report(results: list[dict[str, Any]], json_out: Path | None, png: Path | None) -> None:
    print("\n".join(table(results)))
    print()
    print("\n".join(summary(results)))
    if json_out:
        json_out.write_text(json.dumps(results, indent=1))
    if png:
        draw(results, png)


if __name__ == "__main__":
    main()
