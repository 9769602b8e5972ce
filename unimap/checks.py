"""The edge: JSON files and config values are checked here, once, before any stage reads them.

Every limit below is a named constant with the reason it is safe. A value past a limit, of the
wrong type, or not a number where a number belongs is a ModelError that names the file, the field
and what is wrong. The stages behind this module trust what they get: inspect reads config.json
and the safetensors index only through `read_json` and `check_config`; the safetensors headers
(unimap/headers.py) and GGUF metadata (unimap/gguf.py) keep their own checks beside their
parsers, and sizes, numbers and paths from users are checked where they are parsed
(unimap/units.py, estimate.Options, api.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unimap.errors import ArgumentTypeError, ConfigError, ModelError

# A config.json is a few kB; a safetensors index lists one line per tensor (DeepSeek V3's ~91k
# tensors: ~9 MB). Files past these are not what they claim to be, and are refused before reading
# (parsing JSON takes several times its size in memory).
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_INDEX_BYTES = 24 * 1024 * 1024
# Nesting in real configs is at most 4 deep (a VLM's text_config.rope_scaling); 32 is generous
# and keeps every walk over a config shallow.
MAX_CONFIG_DEPTH = 32
# Any integer past 2**53 is not a size, count or id (JSON readers in other languages cannot even
# hold it exactly).
MAX_CONFIG_INT = 1 << 53
# The largest published models have 126 decoder layers (Llama 3.1 405B), a 16,384-wide residual
# stream, FFNs up to ~74k wide, 256k-token vocabularies, 128 heads and 512 experts; each limit
# is far past that and far below what would make a plan overflow or a lazy model build take long.
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 20
MAX_VOCAB = 1 << 24
MAX_HEADS = 1 << 14
MAX_EXPERTS = 1 << 16

# the names configs give the decoder layer count
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layers", "n_layer", "num_transformer_layers")
# size fields that must be positive integers when present: (limit, what it is)
_POSITIVE: dict[str, int] = {
    **dict.fromkeys(LAYER_KEYS, MAX_LAYERS),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "intermediate_size", "ffn_dim",
                     "n_inner", "moe_intermediate_size", "head_dim", "kv_lora_rank",
                     "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
                     "global_head_dim", "block_dim", "block_ff_dim"), MAX_WIDTH),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads",
                     "num_key_value_heads", "n_kv_heads", "num_kv_heads"), MAX_HEADS),
    "vocab_size": MAX_VOCAB,
}
# counts that may be 0 (a dense model's expert count, no shared expert)
_COUNTS: dict[str, int] = {
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
                     "n_shared_experts", "top_k_experts", "moe_topk"), MAX_EXPERTS),
    **dict.fromkeys(("shared_expert_intermediate_size", "num_nextn_predict_layers",
                     "first_k_dense_replace", "sliding_window", "max_position_embeddings"),
                    MAX_CONFIG_INT),
}
_PER_LAYER = ("num_kv_heads", "num_query_heads", "num_heads", "intermediate_size")  # lists allowed
_INDEX_LISTS = ("mlp_only_layers",)  # layer numbers: Qwen MoE's dense layers
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "use_qk_norm",
          "norm_topk_prob", "attention_k_eq_v")
_DICTS = ("text_config", "vision_config", "audio_config", "rope_scaling", "quantization",
          "quantization_config")
DTYPES = ("bfloat16", "float16", "float32")
# a Hugging Face model_type names a module: never a path, never dotted (mlx-lm imports it)
_MODEL_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
QUANT_BITS = (2, 3, 4, 5, 6, 8)
QUANT_GROUPS = (16, 32, 64, 128)


def read_json(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The parsed content of a JSON file, refused (as a ModelError naming the file) when it is not
    a regular file, is larger than `max_bytes`, is not UTF-8, is not JSON, nests too deep, or
    holds an integer of thousands of digits."""
    try:
        info = os.stat(path)  # before opening: opening a FIFO would wait for a writer
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{path}: not a regular file; pass a model folder whose "
                             f"{path.name} is a file")
        if info.st_size > max_bytes:
            raise ModelError(f"{path}: {info.st_size} bytes, more than a {path.name} can be "
                             f"({max_bytes}); the file is not what its name says")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ModelError(f"{path}: more than {max_bytes} bytes; the file is not what its name says")
    return decode_json(data, str(path), "fix or re-download it")


def quick_json(data: bytes) -> Any:
    """`data` as orjson reads it (about twice as fast as the standard library on a large MoE's
    headers) where orjson is installed and takes it; else None, and decode_json reads it and
    says what is wrong. orjson reads an integer past 64 bits as a float where the standard
    library keeps it whole, so a caller takes the result only where every value it keeps
    checks out, and otherwise reads `data` again with decode_json (the error is that one's)."""
    try:
        import orjson
    except ImportError:
        return None
    try:
        return orjson.loads(data)
    except ValueError:  # orjson.JSONDecodeError; also a BOM, NaN, a lone surrogate, deep nesting
        return None


def decode_json(data: bytes, where: str, remedy: str) -> Any:
    """Parse JSON bytes, every way they can be bad a ModelError that says where and `remedy`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{where}: not UTF-8 text (byte {exc.start}); {remedy}") from None
    try:  # Infinity and NaN stay readable: published configs hold them (Mamba's time_step_limit)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{where}: invalid JSON ({exc}); {remedy}") from None
    except RecursionError:
        raise ModelError(f"{where}: nested too deep to be a model file; {remedy}") from None
    except ValueError:  # an integer past Python's digit limit
        raise ModelError(f"{where}: holds a number of thousands of digits; {remedy}") from None


def check_config(config: Any, where: str) -> dict[str, Any]:
    """`config` as a config.json must be: an object whose known fields have the types and ranges
    a model can have, wherever they sit (top level, text_config, vision_config, ...), and whose
    head counts divide as attention needs. Returns it, checked."""
    if not isinstance(config, dict):
        raise ModelError(f"{where}: expected a JSON object, not {type(config).__name__}")
    stack: list[tuple[Any, str, str, int]] = [(config, where, "", 0)]
    while stack:
        node, at, key, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ModelError(f"{where}: field {key!r} is nested more than {MAX_CONFIG_DEPTH} deep; not a "
                             "model config")
        if isinstance(node, list):
            for item in node:
                if isinstance(item, dict | list):
                    stack.append((item, at, key, depth + 1))
                elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_CONFIG_INT:
                    raise ModelError(f"{at}: {key!r} holds {short(item)}, not a number a config has")
            continue
        for name, value in node.items():
            _check_field(name, value, at)
            if isinstance(value, dict | list):
                stack.append((value, f"{at} {name}" if isinstance(value, dict) else at, name, depth + 1))
        _check_heads(node, at)
        if isinstance(node.get("quantization"), dict):
            check_quantization(node["quantization"], f"{at} quantization")
    return config


def _check_field(key: str, value: Any, at: str) -> None:
    if value is None:
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and abs(value) > MAX_CONFIG_INT:
        raise ModelError(f"{at}: {key!r} = {short(value)} is not a number a config has; fix it")
    for table, low in ((_POSITIVE, 1), (_COUNTS, 0)):
        limit = table.get(key)
        # a per-layer list of sizes (OpenELM's num_kv_heads) is checked item by item
        items = value if key in _PER_LAYER and isinstance(value, list) and value else [value]
        if limit is not None and not all(_whole(v, low, limit) for v in items):
            raise ModelError(f"{at}: {key!r} must be a whole number from {low} to {limit}, "
                             f"not {short(value)}")
    positive = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if (key.endswith(("_eps", "_epsilon")) or key in ("eps", "rope_theta")) and not (
            positive and math.isfinite(value)):
        raise ModelError(f"{at}: {key!r} must be a positive number, not {short(value)}")
    if key in _BOOLS and not isinstance(value, bool):
        raise ModelError(f"{at}: {key!r} must be true or false, not {short(value)}")
    if key in _DICTS and not isinstance(value, dict):
        raise ModelError(f"{at}: {key!r} must be a JSON object, not {short(value)}")
    if key in ("torch_dtype", "dtype") and value not in DTYPES:
        raise ModelError(f"{at}: {key!r} = {short(value)} is not a dtype MLX loads weights in "
                         f"({', '.join(DTYPES)})")
    if key == "model_type" and not (isinstance(value, str) and _MODEL_TYPE.match(value)):
        raise ModelError(f"{at}: 'model_type' must be a model type name (letters, digits, _ and -), "
                         f"not {short(value)}")
    if key == "architectures" and not (isinstance(value, str) or isinstance(value, list) and all(
            isinstance(a, str) for a in value)):
        raise ModelError(f"{at}: 'architectures' must be a list of class names, not {short(value)}")
    if key in _INDEX_LISTS and not (isinstance(value, list) and all(_whole(v, 0, MAX_LAYERS) for v in value)):
        raise ModelError(f"{at}: {key!r} must be a list of layer numbers, not {short(value)}")
    if key == "layer_types" and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
        raise ModelError(f"{at}: 'layer_types' must be a list of strings, not {short(value)}")


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_heads(node: Mapping[str, Any], at: str) -> None:
    """Grouped-query attention shares each KV head among a whole number of query heads; without
    an explicit head_dim, the width splits evenly among the heads."""
    heads, kv = node.get("num_attention_heads"), node.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise ModelError(f"{at}: num_attention_heads {heads} is not a multiple of "
                         f"num_key_value_heads {kv}; attention cannot share the KV heads")
    hidden = node.get("hidden_size")
    if (isinstance(hidden, int) and isinstance(heads, int) and node.get("head_dim") is None
            and hidden % heads):
        raise ModelError(f"{at}: hidden_size {hidden} does not split among {heads} attention heads "
                         "and no head_dim is given")


def check_quantization(block: Mapping[str, Any], at: str) -> None:
    """An MLX quantization block: bits and group size MLX's kernels have, per-layer entries alike."""
    for key, value in [("", block), *((k, v) for k, v in block.items() if isinstance(v, dict))]:
        where = f"{at} {key}".rstrip()
        bits, group = value.get("bits"), value.get("group_size")
        if bits not in QUANT_BITS or isinstance(bits, bool):
            raise ModelError(f"{where}: 'bits' must be one of {', '.join(map(str, QUANT_BITS))}, "
                             f"not {short(bits)}")
        if group not in QUANT_GROUPS or isinstance(group, bool):
            raise ModelError(f"{where}: 'group_size' must be one of {', '.join(map(str, QUANT_GROUPS))}, "
                             f"not {short(group)}")
        if "mode" in value and not isinstance(value["mode"], str):
            raise ModelError(f"{where}: 'mode' must be a string, not {short(value['mode'])}")


def claimed_layers(config: Mapping[str, Any]) -> int | None:
    """The decoder layer count a config claims, at its top level or in its text_config."""
    for node in (config, config.get("text_config")):
        if isinstance(node, Mapping):
            for key in LAYER_KEYS:
                value = node.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
    return None


def foreign(exc: BaseException) -> str:
    """Another library's error as part of one line: its type and the start of its message."""
    said = " ".join(str(exc).split())  # MLX's binding errors span lines
    return f"{type(exc).__name__}: {said if len(said) <= 160 else said[:157] + '...'}"


def is_utf8(text: str) -> bool:
    """Whether text encodes as UTF-8 (a byte the terminal could not decode stays a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short(value: Any) -> str:
    """A value as an error message shows it: never more than 60 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return f"a {len(str(abs(value)))}-digit number" if abs(value) < 10**4000 else "a huge number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- numbers users give

# The longest context any model is trained for is ~10M tokens (Llama 4 Scout); 2**24 is past it,
# and keeps every count the plan multiplies far inside int64.
MAX_SEQ_LEN = 1 << 24
MAX_BATCH_SIZE = 1 << 16
MAX_NUM_IMAGES = 1 << 10
MAX_IMAGE_LENGTH = 1 << 15  # pixels a side: 32k, past any camera or tiled encoder's input
MAX_TOKENS = 1 << 24
MAX_SEED = (1 << 64) - 1  # MLX's random seed is an unsigned 64-bit integer


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """An integer argument within [low, high], else a ConfigError naming the flag and range (an
    ArgumentTypeError when it is not an integer at all)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a whole number, not {short(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {short(value)}")
    return value


def check_sampling(max_tokens: Any, temp: Any, top_p: Any, seed: Any, top_k: Any = 0,
                   min_p: Any = 0.0, xtc_probability: Any = 0.0, xtc_threshold: Any = 0.1,
                   repetition_penalty: Any = None, repetition_context_size: Any = 20) -> None:
    """Generation settings (mlx-lm's names and defaults), checked before anything loads."""
    whole_number(max_tokens, "--max-tokens", 1, MAX_TOKENS)
    for name, value, low, high in (("--temp", temp, 0.0, 100.0), ("--top-p", top_p, 0.0, 1.0),
                                   ("--min-p", min_p, 0.0, 1.0),
                                   ("--xtc-probability", xtc_probability, 0.0, 1.0),
                                   ("--xtc-threshold", xtc_threshold, 0.0, 0.5),
                                   ("--repetition-penalty", repetition_penalty, 0.0, 100.0)):
        if name == "--repetition-penalty" and value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ArgumentTypeError(f"{name} must be a number, not {short(value)}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{name} must be from {low:g} to {high:g}, not {short(value)}")
    if top_p == 0.0:
        raise ConfigError("--top-p must be above 0 (1 keeps every token)")
    if repetition_penalty == 0.0:
        raise ConfigError("--repetition-penalty must be above 0 (1 changes nothing; above 1 "
                          "discourages repeats)")
    whole_number(top_k, "--top-k", 0, 1 << 31)
    whole_number(repetition_context_size, "--repetition-context-size", 1, MAX_TOKENS)
    if seed is not None:
        whole_number(seed, "--seed", 0, MAX_SEED)
