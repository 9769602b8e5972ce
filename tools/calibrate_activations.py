"""Fit the activation working-set coefficients in unimap/calibration.py from measurements.

Usage: python tools/calibrate_activations.py [--write]

For each mlx-lm model family and activation dtype, random-weight models are built in several
shapes (the base shape, then twice the hidden size, twice and 4 times the query heads, twice the
KV heads, the head dim or the MLP width) and one
prefill chunk is run through mlx-lm's cache at three chunk shapes. The measured working set is
mx.get_peak_memory() above the weights and input, less the KV cache written. The attention
scores (batch x heads x chunk x keys, in the activation dtype) and causal masks (chunk x keys
bytes) are known exactly, so what remains is fitted as a sum of arrays the size of the chunk:

    rest = a * B*L*hidden*4 + b * B*L*q_width*d + c * B*L*kv_width*d + e * B*L*mlp_width*d

(the hidden-sized arrays counted in float32: MLX's CPU rms_norm and rope upcast). Coefficients are
non-negative least squares, then scaled up by the largest under-prediction left, so no measured
shape exceeds its fit. Quantized weights and a quantized KV cache add arrays of their own: two
more coefficients per family and dtype, the largest extra over the unquantized run at 4 and 8
bits. --write regenerates unimap/calibration.py with the machine and versions.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "max_position_embeddings": 16384}
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **BASE},
    "qwen2": {"model_type": "qwen2", **BASE},
    "qwen3": {"model_type": "qwen3", **BASE},
    "gemma3_text": {"model_type": "gemma3_text", **BASE, "sliding_window": 256,
                    "sliding_window_pattern": 2, "query_pre_attn_scalar": 64},
    "phi3": {"model_type": "phi3", **BASE},
    "qwen3_moe": {"model_type": "qwen3_moe", **BASE, "num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 384, "decoder_sparse_step": 1, "mlp_only_layers": [],
                  "norm_topk_prob": True},
    "mixtral": {"model_type": "mixtral", **BASE, "num_local_experts": 4, "num_experts_per_tok": 2},
}
MOE_ONLY_FLOAT32 = ("qwen3_moe", "mixtral")  # MLX's CPU gather_mm takes float32 only
SHAPES = ((1, 1024, 0), (2, 512, 0), (1, 768, 0))  # (batch, chunk, tokens already cached)


def variants(config: dict[str, Any]) -> list[dict[str, Any]]:
    width = "moe_intermediate_size" if "moe_intermediate_size" in config else "intermediate_size"
    return [config, {**config, "hidden_size": 512}, {**config, "num_attention_heads": 8},
            {**config, "num_attention_heads": 16}, {**config, "num_key_value_heads": 4},
            {**config, "head_dim": 2 * config["head_dim"]}, {**config, width: 2 * config[width]}]


def features(config: dict[str, Any], batch: int, chunk: int, d: int) -> list[int]:
    """Element counts of one chunk's hidden, query, key/value and MLP arrays, in bytes."""
    from unimap.estimate import _mlp_width
    from unimap.families import read_architecture

    arch = read_architecture(config, "calibration")
    bl = batch * chunk
    return [bl * arch.hidden_size * 4, bl * arch.num_heads * arch.head_dim * d,
            bl * arch.num_kv_heads * arch.head_dim * d, bl * _mlp_width(arch) * d]


def known_bytes(config: dict[str, Any], batch: int, chunk: int, prior: int, d: int) -> int:
    from unimap.estimate import Options, attention_bytes
    from unimap.families import read_architecture

    arch = read_architecture(config, "calibration")
    return attention_bytes(arch, Options(max_batch_size=batch), chunk, prior + chunk, d, "unfused")


def measure(config: dict[str, Any], batch: int, chunk: int, prior: int, dtype: str,
            bits: int | None = None, kv_bits: int | None = None) -> int:
    """The working set of one prefill chunk: peak above weights and input, less the KV written.
    `bits` quantizes the weights as --isq does; `kv_bits` uses unimap's quantized cache."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import _get_classes

    from unimap.generate import quantized_cache
    from unimap.runtime import quantize_in_place

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(getattr(mx, dtype))
    if bits is not None:
        quantize_in_place(model, bits)
    mx.eval(model.parameters())
    cache = quantized_cache(model, kv_bits) if kv_bits else make_prompt_cache(model)
    if prior:
        model(mx.zeros((batch, prior), mx.int32), cache=cache)
        mx.eval([c.state for c in cache])
    tokens = mx.random.randint(0, 100, (batch, chunk))
    mx.eval(tokens)
    held = _cache_bytes(cache)
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    model(tokens, cache=cache)
    mx.eval([c.state for c in cache])
    working = mx.get_peak_memory() - base - (_cache_bytes(cache) - held)
    del model, cache
    gc.collect()
    mx.clear_cache()
    return int(working)


def _cache_bytes(cache: list[Any]) -> int:
    from mlx.utils import tree_flatten

    return sum(a.nbytes for c in cache for _, a in tree_flatten([c.keys, c.values]) if a is not None)


def fit(rows: list[tuple[list[int], int]]) -> tuple[list[float], float]:
    """Non-negative least squares (drop a negative coefficient, refit), then the scale that
    lifts every row to at least its measurement."""
    import numpy as np

    x = np.array([r[0] for r in rows], dtype=float)
    y = np.array([r[1] for r in rows], dtype=float)
    active = list(range(x.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (coef >= 0).all():
            break
        active.pop(int(np.argmin(coef)))
    full = np.zeros(x.shape[1])
    full[active] = coef
    predicted = x @ full
    scale = float(max(1.0, (y / np.maximum(predicted, 1)).max()))
    return [float(c) * scale for c in full], float((predicted * scale / y).max())


def calibrate(verbose: bool = True) -> dict[tuple[str, str], tuple[float, ...]]:
    """(family, dtype) -> (a, b, c, e, quantized weights, quantized KV)."""
    table: dict[tuple[str, str], tuple[float, ...]] = {}
    for family, config in FAMILIES.items():
        for dtype, d in (("bfloat16", 2), ("float32", 4)):
            if dtype != "float32" and family in MOE_ONLY_FLOAT32:
                continue
            rows, plain = [], {}
            for index, variant in enumerate(variants(config)):
                for batch, chunk, prior in SHAPES:
                    working = measure(variant, batch, chunk, prior, dtype)
                    if index == 0:
                        plain[(batch, chunk, prior)] = working
                    rest = working - known_bytes(variant, batch, chunk, prior, d)
                    rows.append((features(variant, batch, chunk, d), rest))
            coef, worst_over = fit(rows)
            extras = quantized_extras(config, dtype, d, plain)
            table[(family, dtype)] = tuple(round(c + 0.005, 2) for c in [*coef, *extras])
            if verbose:
                print(f"{family:12s} {dtype:9s} a b c e qw qkv = {table[(family, dtype)]}  "
                      f"(largest over-fit {worst_over:.2f}x)", file=sys.stderr)
    for family in MOE_ONLY_FLOAT32:  # same arrays in half precision: take the float32 bytes
        a, b, c, e, qw, qkv = table[(family, "float32")]
        table[(family, "bfloat16")] = (a, 2 * b, 2 * c, 2 * e, qw, 2 * qkv)
    return table


def quantized_extras(config: dict[str, Any], dtype: str, d: int,
                     plain: dict[tuple[int, int, int], int]) -> tuple[float, float]:
    """What quantized weights (per B*L*hidden*4 bytes) and a quantized cache (per B*L*q_width*d
    bytes) add to the unquantized run's working set: the largest over 4 and 8 bits and two
    chunk shapes, never below zero (a quantized cache can need less)."""
    weights = kv = 0.0
    for batch, chunk, prior in SHAPES[:2]:
        hidden, q_width = features(config, batch, chunk, d)[:2]
        base = plain[(batch, chunk, prior)]
        for bits in (4, 8):
            weights = max(weights, (measure(config, batch, chunk, prior, dtype, bits=bits) - base) / hidden)
            kv = max(kv, (measure(config, batch, chunk, prior, dtype, kv_bits=bits) - base) / q_width)
    return weights, kv


def render(table: dict[tuple[str, str], tuple[float, ...]]) -> str:
    import mlx.core as mx

    lines = [
        '"""Activation working-set coefficients, fitted by tools/calibrate_activations.py.',
        "",
        f"Generated {date.today().isoformat()} on {platform.platform()} ({platform.machine()}), "
        f"MLX {mx.__version__},",
        f"mlx-lm {_mlx_lm_version()}, MLX's CPU backend. Do not edit by hand: rerun the tool with "
        "--write.",
        "",
        "One prefill chunk of B x L tokens needs, besides the attention scores and masks:",
        "    a * B*L*hidden*4 + b * B*L*q_width*d + c * B*L*kv_width*d + e * B*L*mlp_width*d",
        "bytes, with d the activation dtype's size; plus qw * B*L*hidden*4 with quantized weights",
        "(an MLX-quantized checkpoint, GGUF quantized tensors or --isq) and qkv * B*L*q_width*d",
        "with a quantized KV cache (--kv-bits). Keys: (mlx-lm family, activation dtype).",
        '"""',
        "",
        "COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float, float, float]] = {",
    ]
    for (family, dtype), coef in sorted(table.items()):
        lines.append(f'    ("{family}", "{dtype}"): {coef!r},')
    lines += ["}", ""]
    return "\n".join(lines)


def _mlx_lm_version() -> str:
    from importlib.metadata import version

    return version("mlx-lm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate unimap/calibration.py")
    args = parser.parse_args()
    text = render(calibrate())
    if args.write:
        (ROOT / "unimap" / "calibration.py").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
