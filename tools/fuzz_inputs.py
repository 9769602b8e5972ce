"""Fuzz unimap's model readers: every input must end in success or a UnimapError, fast and small.

Usage: python tools/fuzz_inputs.py [--count 100000] [--seed 0] [--kinds config,safetensors,index,gguf]
           [--jobs N] [--out /tmp/fuzz-findings] [--json FILE] [--shrink-steps 200] [--replay I]

Inputs of four kinds grow from valid seeds: config.json of real configs (tools/fixtures.py and
some of tools/published_configs.json, and tiny vision-language checkpoints of ten mlx-vlm
families, VLM_SEEDS) beside sparse safetensors headers, the safetensors files
themselves, model.safetensors.index.json of sharded models, and GGUF files (the real stories260K
from ../shared, and small quantized llama/qwen3 ones). Each is mutated structurally (fields
dropped, duplicated, retyped, nested deep, sizes made absurd, counts and lengths that lie) and byte
by byte (flips, splices, truncation), written to a scratch folder and read through the public
path: unimap.inspect(path), then unimap.plan(spec, machine="mac-16gb", max_num_images=0).
Anything but success or a UnimapError is a finding, grouped by exception type and the innermost
unimap frame (with the library frame that raised it); so are inputs that take more than 1 s of
CPU (CPU, not wall time: the machine may be shared; a read is stopped at 5 s) and inputs whose
peak RSS grows more than 256 MiB (each worker's address space is also capped 256 MiB above what it
held before each input, so a runaway allocation is a MemoryError, not a dead machine).
Input i is a pure function of (--seed, i): `--replay I` reruns one. Each group's smallest input,
shrunk further, is saved under --out with a one-line description. It does not fuzz the Hub path,
loading weights, or the CLI's flags. The exit status is 0: this measures, it does not gate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import re
import reprlib
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

KINDS = ("config", "safetensors", "index", "gguf")
MACHINE = "mac-16gb"
SLOW_S = 1.0  # the rule: each input is read within a second...
MEMORY_BYTES = 256 << 20  # ...and with at most 256 MiB more than the reader held before
HARD_S = 5.0  # an input still running after this is stopped by SIGALRM and reported as a hang
KILL_S = HARD_S + 30  # a worker silent for this long is stuck in native code: killed, restarted
SHRINK_S = 60.0  # shrinking one finding stops after this long
STORIES = ROOT.parent / "shared" / "models" / "stories260K" / "stories260K.gguf"
INDEX = "model.safetensors.index.json"
MAX_SPARSE = 1 << 43  # ext4 refuses 16 TiB files; a larger data section is written short
FOLDER_SEEDS = ("llama3.2-1b", "qwen3-8b", "qwen3-30b-a3b", "gemma3-1b", "phi3-mini", "mixtral-8x7b",
                "lfm2-1.2b", "qwen2.5-vl-7b", "gemma3-4b-vl")
PUBLISHED_SEEDS = ("gemma2", "deepseek_v2", "qwen3_next", "llama4", "gpt_oss", "mamba2", "falcon_h1",
                   "nemotron_h")
# vision-language checkpoints written by tests/tiny_vlms.py through mlx-vlm's own classes (the
# language model tiny, the tower small; headers only): language models mlx-lm runs and mlx-vlm's
# own, towers sized each family's way, processor files beside config.json. Read through mlx-vlm's
# model too, so a worker needs the `vision` extra for them (skipped without it).
VLM_SEEDS = ("mistral_large3", "dots_ocr", "kimi_vl", "idefics2", "llava_next", "internvl_chat",
             "minimax_m3_vl", "nemotron_h_nano_omni", "pixtral", "lfm2_vl")
SHARDS = {"llama3.2-1b": 3, "qwen3-8b": 5, "phi3-mini": 2, "gemma3-4b-vl": 2, "qwen2.5-vl-7b": 4}
MANY_TENSORS = ("qwen3-30b-a3b",)  # 18k tensors: too slow to re-encode for every header mutation

File = tuple[bytes, int]  # (content, size): a size beyond the content is a sparse hole of zeros


class Case(NamedTuple):
    kind: str
    number: int  # the input's index in the run
    files: dict[str, File]
    target: str  # what inspect reads: "" for the folder, else a file in it
    note: str  # the seed and the mutations applied

    @property
    def size(self) -> int:
        return sum(len(content) for content, _ in self.files.values())


class Outcome(NamedTuple):
    number: int  # the input's index in the run
    kind: str
    status: str  # "ok", "unimap" (a UnimapError), "bug" (anything else), "hang", "crash", "fuzzer"
    group: str  # bugs: "Type at unimap/file.py:N in f < library/file.py:M in g"
    detail: str  # a UnimapError's message, a bug's traceback tail
    seconds: float  # wall clock
    grown_bytes: int  # peak RSS while reading, minus RSS before
    size: int
    note: str
    held_bytes: int = 0  # the worker's RSS before this input: what earlier inputs left behind
    cpu_seconds: float = 0.0  # the worker's CPU time: what "slow" means on a machine shared with others


# ---------------------------------------------------------------- JSON values that lie

_MARK = "\u2063"
_MARKED = re.compile(r'"\\u2063(list|dict|big):(\d+)\\u2063"')
SIZES = (0, 1, -1, 3, 4095, 4096, 4097, 10**7, 10**9, 2**31, 2**32, 10**12, 2**40, 2**40 + 1, 10**18,
         2**63, 2**64, 10**30, 10**400)
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlong, _short.maxlevel = 40, 40, 40, 2


def marker(kind: str, n: int) -> str:
    """A JSON value too deep or too long to build as a Python object: `list`/`dict` nested n deep,
    or an integer of n digits (past Python's 4300-digit limit on int(str))."""
    return f"{_MARK}{kind}:{n}{_MARK}"


def _unmark(found: re.Match[str]) -> str:
    kind, n = found.group(1), int(found.group(2))
    if kind == "big":
        return "9" * n
    return "[" * n + "1" + "]" * n if kind == "list" else '{"a":' * n + "1" + "}" * n


def encode_json(value: Any) -> bytes:
    """json.dumps with markers expanded (NaN and Infinity kept, as Python writes them)."""
    return _MARKED.sub(_unmark, json.dumps(value)).encode()


def nest(rng: random.Random, value: Any, depth: int) -> Any:
    if depth > 300:
        return marker(rng.choice(("list", "dict")), depth)
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


_ODD: tuple[Callable[[random.Random, Any], Any], ...] = (
    lambda r, v: str(v), lambda r, v: [v], lambda r, v: {"value": v},
    lambda r, v: r.choice((True, False, None)),
    lambda r, v: r.choice((math.nan, math.inf, -math.inf, 1.5, -0.0, 1e308, 2.0)),
    lambda r, v: r.choice(SIZES), lambda r, v: r.choice(SIZES),
    lambda r, v: r.choice(("", "\udcff", "x" * 10000, "null", "1e3", "0x10", "llama", "bfloat16")),
    lambda r, v: r.choice(([], {}, [1, "a", None], {"": {}}, [[]])),
    lambda r, v: marker("big", 5000),
    lambda r, v: nest(r, v, r.choice((5, 200, 900, 990, 100_000))),
)


def odd_value(rng: random.Random, value: Any = None) -> Any:
    """A value of the wrong type or an absurd size, often built from the one it replaces."""
    return rng.choice(_ODD)(rng, value)


def _say(value: Any) -> str:
    """A short repr for the notes, markers spelled out."""
    found = _MARKED.fullmatch(json.dumps(value)) if isinstance(value, str) else None
    if found is None:
        return _short.repr(value)
    kind, n = found.group(1), found.group(2)
    return f"<a {n}-digit integer>" if kind == "big" else f"<a {kind} nested {n} deep>"


# ---------------------------------------------------------------- config.json

IMPORTANT = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "vocab_size", "torch_dtype", "dtype",
             "tie_word_embeddings", "sliding_window", "sliding_window_pattern", "layer_types",
             "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
             "decoder_sparse_step", "mlp_only_layers", "max_position_embeddings", "rope_theta",
             "rope_scaling", "num_nextn_predict_layers", "quantization", "quantization_config",
             "text_config", "vision_config", "mm_tokens_per_image", "rms_norm_eps", "block_ff_dim",
             "depth", "embed_dim", "patch_size", "image_size", "num_heads", "spatial_merge_size",
             "temporal_patch_size", "mlp_ratio", "architectures")
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layers", "n_layer", "depth")
SECTIONS = ("text_config", "vision_config", "rope_scaling", "quantization", "quantization_config")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text", "gemma3", "mixtral",
               "qwen3_moe", "qwen2_vl", "qwen2_5_vl", "llava", "lfm2", "gemma2", "deepseek_v3",
               "qwen3_next", "mamba2", "llama4", "dbrx", "gpt_oss", "bert", "", "LLAMA", "../llama",
               "llama\u0000", "__init__", "cache", "base", "switch_layers", "rope_utils", "llama.x")
_SECTION_ODD: tuple[dict[str, Any], ...] = (
                {}, {"model_type": "llama"}, {"hidden_size": 0, "patch_size": 0, "image_size": 0},
                {"image_size": 10**30, "patch_size": 1, "hidden_size": 8, "num_hidden_layers": 1,
                 "intermediate_size": 8, "num_attention_heads": 1}, {"patch_size": [14, 0], "depth": -1},
                {"type": "yarn", "factor": "x"}, {"rope_type": "llama3", "factor": 0.0},
                {"group_size": 64}, {"quant_method": None})
EXTRA_KEYS = ("num_nextn_predict_layers", "sliding_window", "head_dim", "num_key_value_heads",
              "mm_tokens_per_image", "image_seq_length", "max_position_embeddings", "torch_dtype",
              "dtype", "tie_word_embeddings", "rope_scaling", "attention_chunk_size", "kv_lora_rank",
              "first_k_dense_replace", "architectures", "mlp_only_layers", "decoder_sparse_step")


def _key(d: dict[str, Any], rng: random.Random) -> str:
    known = [k for k in IMPORTANT if k in d]
    if known and rng.random() < 0.7:
        return rng.choice(known)
    return rng.choice(list(d) or list(IMPORTANT))


def _drop(d: dict[str, Any], rng: random.Random) -> str:
    key = _key(d, rng)
    d.pop(key, None)
    return f"drop {key}"


def _retype(d: dict[str, Any], rng: random.Random) -> str:
    key = _key(d, rng)
    d[key] = odd_value(rng, d.get(key))
    return f"{key}={_say(d[key])}"


def _absurd(d: dict[str, Any], rng: random.Random) -> str:
    ints = [k for k, v in d.items() if type(v) is int]
    key = rng.choice(ints) if ints and rng.random() < 0.6 else rng.choice(IMPORTANT[1:9] + LAYER_KEYS)
    d[key] = rng.choice(SIZES)
    return f"{key}={_say(d[key])}"


def _model_type(d: dict[str, Any], rng: random.Random) -> str:
    d["model_type"] = rng.choice(MODEL_TYPES)
    return f"model_type={d['model_type']!r}"


def _section(d: dict[str, Any], rng: random.Random) -> str:
    key = rng.choice(SECTIONS)
    d[key] = odd_value(rng, d.get(key)) if rng.random() < 0.5 else copy.deepcopy(rng.choice(_SECTION_ODD))
    return f"{key}={_say(d[key])}"


def _nest_field(d: dict[str, Any], rng: random.Random) -> str:
    key, depth = _key(d, rng), rng.choice((2, 10, 300, 900, 980, 995, 2000))
    d[key] = nest(rng, d.get(key, 1), depth)
    return f"{key} nested {depth} deep"


def _quantization(d: dict[str, Any], rng: random.Random) -> str:
    q: dict[str, Any] = {
        "group_size": rng.choice((64, 32, 0, -1, 7, 10**30, True, "64", None, 2**63)),
        "bits": rng.choice((4, 8, 0, 1, 3, 33, -8, 2**63, 4.0, None, True))}
    if rng.random() < 0.3:
        q["mode"] = rng.choice(("mxfp4", "nvfp4", "", None, 4))
    if rng.random() < 0.3:
        module = rng.choice(("model.layers.0.mlp.gate_proj", "lm_head", "model.embed_tokens", ""))
        q[module] = rng.choice(({"bits": 8, "group_size": 64}, False, True, {"bits": "x"}, [], None,
                                {"bits": 0, "group_size": 0}))
    key = rng.choice(("quantization", "quantization_config"))
    if key == "quantization_config" and rng.random() < 0.5:
        q["quant_method"] = rng.choice(("fp8", None, 1, ["awq"], {}))
    d[key] = q
    return f"{key}={_say(q)}"


def _layer_types(d: dict[str, Any], rng: random.Random) -> str:
    layers = d.get("num_hidden_layers")
    n = min(max(layers, 0), 100) if isinstance(layers, int) else 4
    d["layer_types"] = rng.choice((
        ["full_attention"] * n, ["sliding_attention"] * n, ["conv"] * n, ["bogus"] * n,
        ["full_attention"] * (n + 1), [], [1] * n, [None] * n, [["full_attention"]] * n,
        [{"a": 1}] * n, "full_attention", {"0": "full_attention"}))
    return f"layer_types={_say(d['layer_types'])}"


def _extra(d: dict[str, Any], rng: random.Random) -> str:
    key = rng.choice(EXTRA_KEYS)
    d[key] = odd_value(rng, d.get(key)) if rng.random() < 0.5 else rng.choice(SIZES)
    return f"{key}={_say(d[key])}"


CONFIG_OPS = (_drop, _retype, _retype, _absurd, _absurd, _model_type, _section, _nest_field,
              _quantization, _layer_types, _extra)


# ---------------------------------------------------------------- whole JSON files, as bytes

def _truncate(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(len(raw) + 1)
    return raw[:cut], f"cut at byte {cut}"


def _not_utf8(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    at, bad = rng.randrange(len(raw) + 1), rng.choice((b"\xff", b"\xc3\x28", b"\xe9", b"\xed\xa0\x80"))
    return raw[:at] + bad + raw[at:], f"{bad!r} at byte {at}"


def _encoding(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        return b"\xef\xbb\xbf" + raw, "UTF-8 BOM"
    return raw.decode("utf-8", "replace").encode("utf-16"), "UTF-16"


def _top_level(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    new = rng.choice((b"[]", b"null", b'"config"', b"1", b"", b"{}", b"  ", b"[{}]", b"NaN", b"1e999"))
    return new, f"the file is {new!r}"


def _deep_file(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.choice((995, 1000, 100_000))
    text = "[" * n + "]" * n if rng.random() < 0.5 else '{"a":' * n + "1" + "}" * n
    return text.encode(), f"the file nested {n} deep"


def _flip(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(raw)
    for _ in range(rng.choice((1, 2, 8))):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data), "bytes flipped"


def _splice(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    a = rng.randrange(len(raw) + 1)
    b = rng.randrange(a, len(raw) + 1)
    return (raw[:a] + raw[b:], f"bytes {a}-{b} cut out") if rng.random() < 0.5 else \
        (raw[:b] + raw[a:b] + raw[b:], f"bytes {a}-{b} doubled")


def _duplicate_key(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not raw.startswith(b"{") or len(raw) < 3:
        return raw, "-"
    key = rng.choice(IMPORTANT)
    value = encode_json(odd_value(rng))
    return b"{" + json.dumps(key).encode() + b":" + value + b"," + raw[1:], f"{key} given twice"


FILE_OPS = (_truncate, _not_utf8, _encoding, _top_level, _deep_file, _flip, _splice, _duplicate_key)


def _file_op(raw: bytes, rng: random.Random, notes: list[str]) -> bytes:
    raw, note = rng.choice(FILE_OPS)(raw, rng)
    notes.append(note)
    return raw


# ---------------------------------------------------------------- safetensors headers

ODD_DTYPES = ("bf16", "F4", "Q4_0", "", None, 2, ["BF16"], {"a": 1}, "BOOL", "F8_E4M3", "U64", "BF16 ",
              "F64", "I4", "\udcff")
ODD_SHAPES: tuple[Any, ...] = (None, "4096", [-1, 2], [1.5], [True], [[2]], [], [2**64], [0], [10**400],
                               {"a": 1}, [4096, "2048"], [math.nan], [2**63])
HUGE_SHAPES = ([2**31, 2**31], [2**20] * 3, [65536] * 4, [10**6, 10**6], [2**40] * 3, [3] * 60)
WEIRD_NAMES = ("model.layers.\u00b2.mlp.down_proj.weight", "model.layers.\u0663.self_attn.q_proj.weight",
               "model.layers.99999999999999999999999.mlp.up_proj.weight", "model.layers.-1.mlp.weight",
               "model.layers..weight", "model.layers.1", "", "layers.0", "h.4294967296.attn.weight",
               "blocks.10000000.x", "a" * 5000, "vision_tower.layers.0.x", "lm_head.weight",
               "model.layers.0\u0000", "\ud800", "mtp.layers.0.weight", "model.embed_tokens.weight")


def st_header(content: bytes, size: int) -> tuple[Any, int]:
    """(decoded header, data section bytes) of a valid safetensors file."""
    (length,) = struct.unpack("<Q", content[:8])
    return json.loads(content[8:8 + length]), size - 8 - length


def st_file(header: Any, data: int, rng: random.Random | None = None) -> File:
    raw = encode_json(header)
    if rng is not None and rng.random() < 0.1:
        raw += b" " * rng.randrange(1, 8)  # the reference writer pads with spaces
    content = struct.pack("<Q", len(raw)) + raw
    return content, len(content) + data


def _offsets(entry: Any) -> tuple[int, int] | None:
    found = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(found, list) and len(found) == 2 and all(type(o) is int for o in found):
        return found[0], found[1]
    return None


def _tensor(h: dict[str, Any], rng: random.Random) -> str | None:
    names = [k for k in h if k != "__metadata__"]
    return rng.choice(names) if names else None


def _h_field(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    name = _tensor(h, rng) if isinstance(h, dict) else None
    entry = h.get(name) if name is not None else None
    if not isinstance(entry, dict):
        return h, data, "-"
    key = rng.choice(("dtype", "shape", "shape", "data_offsets", "data_offsets", "entry"))
    if key == "entry":
        h[name] = odd_value(rng, entry) if rng.random() < 0.5 else {k: v for k, v in entry.items()
                                                                     if k != rng.choice(list(entry))}
        return h, data, f"tensor {name!r} = {_say(h[name])}"
    h[name] = {**entry, key: _odd_field(key, entry, rng)}  # the seed's entry is shared: never edit it
    return h, data, f"{name!r} {key}={_say(h[name][key])}"


def _odd_field(key: str, entry: dict[str, Any], rng: random.Random) -> Any:
    if key == "dtype":
        return rng.choice(ODD_DTYPES)
    if key == "shape":
        pick = rng.randrange(len(ODD_SHAPES) + 2)
        if pick == len(ODD_SHAPES):  # dims whose product overflows 64 bits many times over
            return [2**62] * rng.choice((100, 1000))
        return [1] * rng.choice((50_000, 100_000)) if pick > len(ODD_SHAPES) else ODD_SHAPES[pick]
    begin, end = _offsets(entry) or (0, 0)
    return rng.choice(([end, begin], [-1, end], [begin, end + 1], [begin + 0.5, end], [str(begin), str(end)],
                       [begin], [begin, end, end], None, [0, 2**64], [0, 10**400], [begin, math.nan],
                       [True, end], {"begin": begin}, [begin, 2**63 - 1]))


def _h_rename(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    name = _tensor(h, rng) if isinstance(h, dict) else None
    if name is None:
        return h, data, "-"
    new = rng.choice(WEIRD_NAMES)
    h[new] = h.pop(name)
    return h, data, f"{name!r} renamed {_say(new)}"


def _h_drop(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    if not isinstance(h, dict):
        return h, data, "-"
    names = [k for k in h if k != "__metadata__"]
    gone = set(rng.sample(names, rng.choice((1, max(1, len(names) // 2), len(names))))) if names else set()
    return {k: v for k, v in h.items() if k not in gone}, data, f"{len(gone)} tensors dropped"


def _h_metadata(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    if not isinstance(h, dict):
        return h, data, "-"
    if rng.random() < 0.2:
        h.pop("__metadata__", None)
        return h, data, "no __metadata__"
    many = rng.random() < 0.1
    h["__metadata__"] = {str(i): i for i in range(100_000)} if many else rng.choice(
        (odd_value(rng, h.get("__metadata__")), {"format": None}, {"a": {"b": [1]}}))
    return h, data, f"__metadata__={_say(h['__metadata__'])}"


def _h_many(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    if not isinstance(h, dict) or rng.random() < 0.8:  # costly to build and read: 1 in 5 of its turns
        return h, data, "-"
    n = rng.choice((20_000, 100_000))
    for i in range(n):
        h[f"model.extra.{i}"] = {"dtype": "U8", "shape": [1], "data_offsets": [data + i, data + i + 1]}
    return h, data + n, f"{n} more tensors"


def _h_huge(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    name = _tensor(h, rng) if isinstance(h, dict) else None
    if name is None:
        return h, data, "-"
    shape = rng.choice(HUGE_SHAPES)
    nbytes = math.prod(shape) * 2
    h[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [data, data + nbytes]}
    return h, data + nbytes, f"{name!r} shape {_say(shape)}, offsets consistent"


def _h_overlap(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    name = _tensor(h, rng) if isinstance(h, dict) else None
    entry = h.get(name) if name is not None else None
    offsets = _offsets(entry)
    if name is None or offsets is None:
        return h, data, "-"
    if rng.random() < 0.5:
        h[name + ".copy"] = copy.deepcopy(entry)
        return h, data, f"{name!r} listed twice at the same offsets"
    begin, end = offsets
    shift = min(begin, rng.choice((1, 2, 64)))
    h[name] = {**h[name], "data_offsets": [begin - shift, end - shift]}
    return h, data, f"{name!r} shifted back {shift} bytes"


def _h_top(h: Any, data: int, rng: random.Random) -> tuple[Any, int, str]:
    new = rng.choice(([], "x", 1, None, [h], True))
    return new, data, f"the header is {_say(new)}"


HEADER_OPS = (_h_field, _h_field, _h_field, _h_rename, _h_drop, _h_metadata, _h_many, _h_huge, _h_overlap,
              _h_top)


def _f_length(content: bytes, size: int, rng: random.Random) -> tuple[bytes, int, str]:
    real = len(content) - 8
    length = rng.choice((0, 1, 7, real - 1, real + 1, size - 8, size - 7, 2**63, 2**64 - 1, 100_000_001))
    length = min(max(length, 0), 2**64 - 1)  # a data section past 2**64 bytes makes size - 8 too big
    return struct.pack("<Q", length) + content[8:], size, f"header length {length}"


def _f_truncate(content: bytes, size: int, rng: random.Random) -> tuple[bytes, int, str]:
    cut = rng.randrange(len(content) + 1) if rng.random() < 0.6 else rng.randrange(size + 1)
    return content[:cut], max(cut, 0), f"file cut at byte {cut} of {size}"


def _f_short_data(content: bytes, size: int, rng: random.Random) -> tuple[bytes, int, str]:
    data = size - len(content)
    less = min(data, rng.choice((1, 2, max(1, data // 2))))
    return content, size - less, f"data section {less} bytes short"


def _f_body(content: bytes, size: int, rng: random.Random) -> tuple[bytes, int, str]:
    body = rng.choice((b"not json", b"\xff\xfe\x00", b"[" * 100_000, b'{"a":' * 100_000, b"NaN",
                       b"\xef\xbb\xbf{}", b'{"x": 1', b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000
                       + b'], "data_offsets": [0, 1]}}', b'{"a": ' + b"[" * 995 + b"]" * 995 + b"}"))
    new = struct.pack("<Q", len(body)) + body
    return new, len(new) + size - len(content), f"header {_say(body)}"


def _f_flip(content: bytes, size: int, rng: random.Random) -> tuple[bytes, int, str]:
    head, note = _flip(content[8:], rng)
    return content[:8] + head, size, "header " + note


def _f_tiny(content: bytes, size: int, rng: random.Random) -> tuple[bytes, int, str]:
    cut = rng.randrange(8)
    return content[:cut], cut, f"file of {cut} bytes"


FRAME_OPS = (_f_length, _f_truncate, _f_short_data, _f_body, _f_flip, _f_tiny)


# ---------------------------------------------------------------- GGUF files

GG_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
              12: "<d"}
GG_STRING, GG_ARRAY = 8, 9
GG_ODD: tuple[tuple[int, Any], ...] = (
    (8, "5"), (8, "abc"), (8, ""), (6, math.nan), (6, math.inf), (6, -1.0), (12, 1e308), (10, 2**64 - 1),
    (10, 2**63), (11, -(2**63)), (5, -1), (4, 0), (0, 255), (7, True), (7, False), (9, (5, [1, 2])),
    (9, (8, [])), (9, (8, ["a", "b"])), (9, (6, [0.5])), (9, (9, [(5, [1])])), (9, (7, [True])))
GG_NUMBERS = ((10, 0), (4, 0), (4, 1), (10, 2**64 - 1), (10, 2**63), (5, -1), (11, -(2**63)), (10, 10**7),
              (10, 2**40), (6, math.nan), (6, math.inf), (12, 1e308), (6, -1.0), (8, "8"), (8, "eight"),
              (7, True), (4, 3), (4, 7))


def _gstr(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value  # already framed (a length that lies, bytes that are not UTF-8)
    raw = value.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _gval(kind: int, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if kind == GG_STRING:
        return _gstr(value)
    if kind == GG_ARRAY:
        inner, items = value
        return struct.pack("<IQ", inner, len(items)) + b"".join(_gval(inner, x) for x in items)
    return struct.pack(GG_SCALARS[kind], value)


@dataclass
class Gguf:
    """A GGUF header as lists the mutators edit; raw bytes anywhere are written as they are."""

    name: str
    kvs: list[list[Any]]  # [key, type, value]; an array is (item type, items)
    tensors: list[list[Any]]  # [name, dims (GGUF order, or raw bytes with their count), type, offset]
    data_bytes: int  # tensor data after the header (written as a sparse hole)
    version: int = 3
    magic: bytes = b"GGUF"
    counts: tuple[int, int] | None = None  # (tensors, kvs) written instead of the true counts

    def to_bytes(self) -> bytes:
        n_tensors, n_kv = self.counts or (len(self.tensors), len(self.kvs))
        out = [self.magic, struct.pack("<IQQ", self.version, n_tensors, n_kv)]
        for key, kind, value in self.kvs:
            out += [_gstr(key), struct.pack("<I", kind), _gval(kind, value)]
        for name, dims, kind, offset in self.tensors:
            framed = dims if isinstance(dims, bytes) else struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
            out += [_gstr(name), framed, struct.pack("<IQ", kind, offset)]
        blob = b"".join(out)
        return blob + b"\0" * (-len(blob) % 32)


class _Cursor:
    def __init__(self, raw: bytes, at: int = 0) -> None:
        self.raw, self.at = raw, at

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.raw, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.at + n > len(self.raw):
            raise ValueError("string past the end")
        self.at += n
        return self.raw[self.at - n:self.at].decode("utf-8", "surrogateescape")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in GG_SCALARS:
            return self.take(GG_SCALARS[kind])
        if kind == GG_STRING:
            return self.string()
        if kind == GG_ARRAY and depth < 50:
            inner, n = self.take("<I"), self.take("<Q")
            if n > len(self.raw):
                raise ValueError("array past the end")
            return inner, [self.value(inner, depth + 1) for _ in range(n)]
        raise ValueError(f"type {kind}")


def parse_gguf(name: str, raw: bytes, size: int) -> Gguf:
    """The fuzzer's own reader (not unimap's): for seeds, and to shrink findings; ValueError or
    struct.error when `raw` is not a whole, valid header."""
    if raw[:4] != b"GGUF":
        raise ValueError("no magic")
    c = _Cursor(raw, 4)
    version, n_tensors, n_kv = c.take("<I"), c.take("<Q"), c.take("<Q")
    if n_tensors > len(raw) or n_kv > len(raw):
        raise ValueError("counts past the end")
    kvs = []
    for _ in range(n_kv):
        key = c.string()
        kind = c.take("<I")
        kvs.append([key, kind, c.value(kind)])
    tensors = []
    for _ in range(n_tensors):
        tname, n_dims = c.string(), c.take("<I")
        dims = [c.take("<Q") for _ in range(min(n_dims, len(raw)))]
        tensors.append([tname, dims, c.take("<I"), c.take("<Q")])
    end = c.at + (-c.at % 32)
    return Gguf(name, kvs, tensors, max(size - end, 0), version)


def _arch(g: Gguf) -> str:
    found = [v for k, _, v in g.kvs if k == "general.architecture" and isinstance(v, str)]
    return found[0] if found else "llama"


def _important_kv(g: Gguf, rng: random.Random) -> list[Any] | None:
    arch = _arch(g)
    prefixes = (arch + ".", "tokenizer.", "general.")
    keys = [kv for kv in g.kvs if isinstance(kv[0], str) and kv[0].startswith(prefixes)]
    pool = keys if keys and rng.random() < 0.8 else g.kvs
    return rng.choice(pool) if pool else None


def _g_retype(g: Gguf, rng: random.Random) -> str:
    kv = _important_kv(g, rng)
    if kv is None:
        return "-"
    if rng.random() < 0.3:  # a type tag that lies about the value behind it
        kv[2], kv[1] = _gval(kv[1], kv[2]), rng.choice((*range(13), 13, 2**32 - 1))
        return f"{kv[0]!r} tagged type {kv[1]}"
    kv[1], kv[2] = copy.deepcopy(rng.choice(GG_ODD))
    return f"{kv[0]!r}=type {kv[1]} {_say(kv[2])}"


def _g_number(g: Gguf, rng: random.Random) -> str:
    arch = _arch(g)
    numbers = [kv for kv in g.kvs if isinstance(kv[0], str) and kv[0].startswith(arch + ".")]
    kv = rng.choice(numbers) if numbers else None
    if kv is None:
        return "-"
    kv[1], kv[2] = rng.choice(GG_NUMBERS)
    return f"{kv[0]}=type {kv[1]} {_say(kv[2])}"


def _g_drop(g: Gguf, rng: random.Random) -> str:
    kv = _important_kv(g, rng)
    if kv is None:
        return "-"
    g.kvs.remove(kv)
    return f"drop {kv[0]!r}"


def _g_duplicate(g: Gguf, rng: random.Random) -> str:
    kv = _important_kv(g, rng)
    if kv is None:
        return "-"
    g.kvs.append([kv[0], *copy.deepcopy(rng.choice(GG_ODD))])
    return f"{kv[0]!r} given twice, the second {_say(g.kvs[-1][2])}"


def _g_key(g: Gguf, rng: random.Random) -> str:
    key = rng.choice(("", "\udcff", "x" * 100_000, struct.pack("<Q", 2) + b"\xff\xfe",
                      struct.pack("<Q", 1 << 24) + b"abc", struct.pack("<Q", 2**63) + b"abc",
                      struct.pack("<Q", 2**64 - 1)))
    at = rng.randrange(len(g.kvs) + 1)
    g.kvs.insert(at, [key, 4, 1])
    return f"a key {_say(key)} at {at}"


def _g_nested(g: Gguf, rng: random.Random) -> str:
    depth = rng.choice((2, 100, 990, 1000, 1200, 5000, 100_000))
    raw = struct.pack("<IQ", GG_ARRAY, 1) * (depth - 1) + struct.pack("<IQi", 5, 1, 7)
    kv = _important_kv(g, rng)
    if kv is None or rng.random() < 0.3:
        kv = ["general.nested", 9, b""]
        g.kvs.insert(rng.randrange(len(g.kvs) + 1), kv)
    kv[1], kv[2] = GG_ARRAY, raw
    return f"{kv[0]!r} arrays nested {depth} deep"


def _g_counts(g: Gguf, rng: random.Random) -> str:
    lies = (2**60, 2**64 - 1, 2**32, 0, 1)
    n_tensors = rng.choice((*lies, len(g.tensors) + 1, len(g.tensors)))
    n_kv = rng.choice((*lies, len(g.kvs) + 1, len(g.kvs)))
    g.counts = (n_tensors, n_kv)
    return f"counts: {n_tensors} tensors, {n_kv} key/values"


def _g_array_count(g: Gguf, rng: random.Random) -> str:
    kv = _important_kv(g, rng)
    if kv is None:
        return "-"
    inner = rng.choice((0, 5, 8, 9, 10, 13))
    count = rng.choice((1 << 24, (1 << 24) + 1, 2**40, 2**64 - 1, 1000))
    kv[1], kv[2] = GG_ARRAY, struct.pack("<IQ", inner, count) + b"\x01\x00\x00\x00" * 4
    return f"{kv[0]!r} an array of type {inner} claiming {count} items"


def _g_string_length(g: Gguf, rng: random.Random) -> str:
    kv = _important_kv(g, rng)
    if kv is None:
        return "-"
    length = rng.choice((1 << 24, (1 << 24) + 1, 2**40, 2**63, 100))
    kv[1], kv[2] = GG_STRING, struct.pack("<Q", length) + b"llama"
    return f"{kv[0]!r} a string claiming {length} bytes"


def _g_tensor(g: Gguf, rng: random.Random) -> str:
    if not g.tensors:
        return "-"
    t = rng.choice(g.tensors)
    part = rng.randrange(4)
    if part == 0:
        t[1] = rng.choice(([0], [2**63], [2**64 - 1], [1] * 1000, [32, 2**40], [], [1, 1, 1, 1, 1], [31, 7],
                           [2**32, 2**32], struct.pack("<IQ", 2**31, 1), struct.pack("<I", 2**32 - 1)))
    elif part == 1:
        t[2] = rng.choice((99, 2**32 - 1, 2, 8, 3, 30, 1, 6, 12))
    elif part == 2:
        t[0] = rng.choice(("blk.0.attn_q", "blk.x.attn_q.weight", "blk.\u00b2.attn_q.weight", "blk..weight",
                           "", "blk.0.unknown.weight", "output", "token_embd.weight", "blk.0",
                           "blk.99999999999999999999.attn_q.weight", "blk.-1.attn_q.weight",
                           struct.pack("<Q", 3) + b"\xff\xfe\xfd", "blk.0.attn_q.weight\u0000", "blk"))
    else:
        t[3] = rng.choice((2**64 - 1, 1, 2**63))
    slot = (1, 2, 0, 3)[part]
    return f"tensor {('dims', 'type', 'name', 'offset')[part]} -> {_say(t[slot])}"


def _g_tensors(g: Gguf, rng: random.Random) -> str:
    if not g.tensors:
        return "-"
    t = rng.choice(g.tensors)
    if rng.random() < 0.5:
        g.tensors.remove(t)
        return f"drop tensor {_say(t[0])}"
    g.tensors.append(list(t))
    return f"tensor {_say(t[0])} twice"


def _g_header(g: Gguf, rng: random.Random) -> str:
    if rng.random() < 0.5:
        g.magic = rng.choice((b"GGUG", b"FUGG", b"", b"GGU", b"gguf", b"GGML"))
        return f"magic {g.magic!r}"
    g.version = rng.choice((0, 1, 2, 4, 2**32 - 1))
    return f"version {g.version}"


def _g_arch(g: Gguf, rng: random.Random) -> str:
    key = rng.choice(("general.architecture", "tokenizer.ggml.model"))
    value = rng.choice(("qwen2", "qwen3", "llama", "gpt2", "mamba", "", "bert", "llama\u0000"))
    for kv in g.kvs:
        if kv[0] == key:
            kv[1], kv[2] = GG_STRING, value
    if key == "general.architecture" and rng.random() < 0.5:  # the keys follow the architecture
        for kv in g.kvs:
            if isinstance(kv[0], str) and kv[0].split(".")[0] in ("llama", "qwen2", "qwen3"):
                kv[0] = value + "." + kv[0].split(".", 1)[1]
    return f"{key}={value!r}"


def _g_tokens(g: Gguf, rng: random.Random) -> str:
    key = rng.choice(("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                      "tokenizer.ggml.merges"))
    kind, value = rng.choice(((9, (5, [1, 2, 3])), (8, "abc"), (9, (8, [])), (4, 7), (9, (9, [])),
                              (9, (8, ["\udcff"] * 3))))
    for kv in g.kvs:
        if kv[0] == key:
            kv[1], kv[2] = kind, value
    return f"{key}=type {kind} {_say(value)}"


def _g_hole(g: Gguf, rng: random.Random) -> str:
    g.data_bytes = rng.choice((0, 1 << 20, 1 << 30, 1 << 34))
    return f"{g.data_bytes} bytes of zeros after the header"


GGUF_OPS = (_g_retype, _g_retype, _g_number, _g_number, _g_drop, _g_duplicate, _g_key, _g_nested, _g_counts,
            _g_array_count, _g_string_length, _g_tensor, _g_tensor, _g_tensors, _g_header, _g_arch,
            _g_tokens, _g_hole)


def synthetic_gguf(arch: str, tokenizer: str, weight_type: int) -> Gguf:
    """A small GGUF header the way llama.cpp writes one: 2 blocks, float norms, matrices of
    `weight_type` (0 F32, 1 F16, 2 Q4_0, 8 Q8_0)."""
    h, ff, heads, kv_heads, vocab = 64, 128, 4, 2, 32
    head_dim = h // heads
    tokens = ["<unk>", "<s>", "</s>", *[f"t{i}" for i in range(vocab - 3)]]
    kvs: list[list[Any]] = [["general.architecture", 8, arch], [f"{arch}.block_count", 4, 2],
                            [f"{arch}.embedding_length", 4, h], [f"{arch}.feed_forward_length", 4, ff],
                            [f"{arch}.attention.head_count", 4, heads],
                            [f"{arch}.attention.head_count_kv", 4, kv_heads],
                            [f"{arch}.attention.layer_norm_rms_epsilon", 6, 1e-6],
                            [f"{arch}.context_length", 4, 4096], [f"{arch}.rope.freq_base", 6, 1e6],
                            ["tokenizer.ggml.model", 8, tokenizer], ["tokenizer.ggml.tokens", 9, (8, tokens)],
                            ["tokenizer.ggml.token_type", 9, (5, [1] * vocab)],
                            ["tokenizer.ggml.bos_token_id", 4, 1], ["tokenizer.ggml.eos_token_id", 4, 2]]
    if tokenizer == "gpt2":
        kvs.append(["tokenizer.ggml.merges", 9, (8, ["t 1", "t1 0"])])
    shapes = {"token_embd.weight": (vocab, h), "output_norm.weight": (h,), "output.weight": (vocab, h)}
    for i in range(2):
        b = f"blk.{i}"
        kv = kv_heads * head_dim
        shapes.update({f"{b}.attn_q.weight": (heads * head_dim, h), f"{b}.attn_k.weight": (kv, h),
                       f"{b}.attn_v.weight": (kv, h), f"{b}.attn_output.weight": (h, h),
                       f"{b}.ffn_gate.weight": (ff, h), f"{b}.ffn_up.weight": (ff, h),
                       f"{b}.ffn_down.weight": (h, ff), f"{b}.attn_norm.weight": (h,),
                       f"{b}.ffn_norm.weight": (h,)})
        if arch == "qwen3":
            shapes.update({f"{b}.attn_q_norm.weight": (head_dim,), f"{b}.attn_k_norm.weight": (head_dim,)})
    tensors: list[list[Any]] = []
    offset = 0
    for name, shape in shapes.items():  # laid out one after another, each aligned to 32 bytes
        kind = weight_type if len(shape) == 2 else 0
        per_block, block_bytes = _GG_SIZES[kind]
        tensors.append([name, list(reversed(shape)), kind, offset])
        offset += -(-math.prod(shape) // per_block) * block_bytes
        offset += -offset % 32
    return Gguf(f"synthetic {arch}/{tokenizer}/type {weight_type}", kvs, tensors, max(offset, 1 << 16))


# ggml type id -> (weights per block, bytes per block)
_GG_SIZES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34)}


# ---------------------------------------------------------------- seeds and the four kinds


class FolderSeed(NamedTuple):
    name: str
    config: dict[str, Any]
    make: Callable[[dict[str, Any]], Any]  # config -> {tensor name: (dtype, shape)}
    files: dict[str, File]  # config.json and one safetensors file
    sharded: dict[str, File]  # config.json, shards and their index; empty when not sharded
    header: tuple[dict[str, Any], int]  # the safetensors file's header, decoded, and its data bytes
    index_json: dict[str, Any]  # the index, decoded (mutators copy what they edit: seeds are shared)


def snapshot(folder: Path) -> dict[str, File]:
    """The files of a written model, safetensors reduced to their header (the rest is a hole)."""
    files: dict[str, File] = {}
    for path in sorted(folder.iterdir()):
        with path.open("rb") as f:
            if path.suffix == ".safetensors":
                prefix = f.read(8)
                content = prefix + f.read(struct.unpack("<Q", prefix)[0])
            else:
                content = f.read()
        files[path.name] = (content, path.stat().st_size)
    return files


class Seeds:
    """The valid inputs everything grows from, built once per worker (sparse files, kilobytes)."""

    def __init__(self, work: Path) -> None:
        import fixtures

        self.work = work
        published = json.loads((ROOT / "tools" / "published_configs.json").read_text())
        sources: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], Any]]] = []
        for name in FOLDER_SEEDS:
            config, make, _ = fixtures.FAMILIES[name]
            sources.append((name, config, make))
        for name in PUBLISHED_SEEDS:
            config = {k: v for k, v in published[name]["config"].items() if k != "quantization_config"}
            sources.append((name, config, fixtures.from_model))
        self.folders = [self._folder(*source) for source in sources] + self._vlm_folders()
        self.single = [s for s in self.folders if s.name not in MANY_TENSORS]
        self.sharded = [s for s in self.folders if s.sharded]
        self.ggufs = [synthetic_gguf("llama", "llama", 2), synthetic_gguf("qwen3", "gpt2", 8),
                      synthetic_gguf("qwen2", "gpt2", 1)]
        if STORIES.exists():
            raw = STORIES.read_bytes()
            self.ggufs.insert(0, parse_gguf("stories260K", raw, len(raw)))

    def _folder(self, name: str, config: dict[str, Any], make: Callable[[dict[str, Any]], Any]) -> FolderSeed:
        from fixtures import write_model

        shapes = make(config)
        files = snapshot(write_model(self.work / name, config, shapes))
        sharded = snapshot(write_model(self.work / f"{name}-sharded", config, shapes, SHARDS[name])) \
            if name in SHARDS else {}
        index = json.loads(sharded[INDEX][0]) if sharded else {}
        return FolderSeed(name, config, make, files, sharded, st_header(*files["model.safetensors"]), index)

    def _vlm_folders(self) -> list[FolderSeed]:
        try:
            import mlx_vlm  # noqa: F401
        except ImportError:
            return []
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_vlms import write_any_vlm

        def no_headers(config: dict[str, Any]) -> Any:  # fewer_layers keeps the seed's headers
            raise ValueError("headers of a vision-language seed are written once")

        seeds = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for module in VLM_SEEDS:
                folder = write_any_vlm(self.work / f"vlm-{module}", module)
                files = snapshot(folder)
                config = json.loads(files["config.json"][0])
                seeds.append(FolderSeed(f"vlm {module}", config, no_headers, files, {},
                                        st_header(*files["model.safetensors"]), {}))
        return seeds

    def fewer_layers(self, seed: FolderSeed, config: dict[str, Any], rng: random.Random) -> tuple[
            dict[str, File], str]:
        """Headers that match `config` cut to 1-3 layers (a valid, different model), else the seed's."""
        from fixtures import write_model

        n = rng.randint(1, 3)
        for section in (config, config.get("text_config"), config.get("vision_config")):
            if isinstance(section, dict):
                for key in LAYER_KEYS:
                    if type(section.get(key)) is int:
                        section[key] = n
                if isinstance(section.get("layer_types"), list):
                    section["layer_types"] = section["layer_types"][:n]
        folder = self.work / "fewer"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            return snapshot(write_model(folder, config, seed.make(config))), f"{n} layers, headers to match"
        except Exception:  # noqa: BLE001 - the fixture cannot build this config; keep the seed's headers
            return dict(seed.files), f"{n} layers, the seed's headers"

    def valid_cases(self) -> list[Case]:
        cases = [Case("config", -1, s.files, "", f"seed {s.name}") for s in self.folders]
        cases += [Case("index", -1, s.sharded, "", f"seed {s.name} sharded") for s in self.sharded]
        for g in self.ggufs:
            raw = g.to_bytes()
            cases.append(Case("gguf", -1, {"model.gguf": (raw, len(raw) + g.data_bytes)}, "model.gguf",
                              f"seed {g.name}"))
        return cases


Made = tuple[dict[str, File], str, list[str]]  # files, target, notes


def config_input(seeds: Seeds, rng: random.Random) -> Made:
    seed = rng.choice(seeds.folders)
    config = copy.deepcopy(seed.config)
    files, notes = dict(seed.files), [seed.name]
    fewer = rng.random() < 0.2
    if fewer:
        files, note = seeds.fewer_layers(seed, config, rng)
        notes.append(note)
    for _ in range(rng.choice((0, 1, 1, 2, 3)) if fewer else rng.choice((1, 1, 2, 2, 3, 4))):
        nested = [k for k in ("text_config", "vision_config", "rope_scaling", "quantization")
                  if isinstance(config.get(k), dict)]
        if nested and rng.random() < 0.3:
            where = rng.choice(nested)
            notes.append(f"{where}.{rng.choice(CONFIG_OPS)(config[where], rng)}")
        else:
            notes.append(rng.choice(CONFIG_OPS)(config, rng))
    raw = encode_json(config)
    if rng.random() < 0.25:
        raw = _file_op(raw, rng, notes)
    files["config.json"] = (raw, len(raw))
    return files, "", notes


def safetensors_input(seeds: Seeds, rng: random.Random) -> Made:
    seed = rng.choice(seeds.single)
    files, notes = dict(seed.files), [seed.name]
    name = "model.safetensors"
    header: Any = dict(seed.header[0])  # a shallow copy: the ops replace entries, never edit them
    data = seed.header[1]
    for _ in range(rng.choice((1, 1, 2, 3))):
        header, data, note = rng.choice(HEADER_OPS)(header, data, rng)
        notes.append(note)
    content, size = st_file(header, data, rng)
    if rng.random() < 0.35:
        content, size, note = rng.choice(FRAME_OPS)(content, size, rng)
        notes.append(note)
    files[name] = (content, size)
    if rng.random() < 0.05:
        files["extra.safetensors"] = files[name]
        notes.append("the same file twice")
    return files, "", notes


ODD_SHARDS: tuple[Any, ...] = (
    None, 1, 1.5, True, [], {}, ["model.safetensors"], "", ".", "..", "/etc/hostname", "/", "config.json",
    INDEX, "a\u0000b", "x" * 300, "../model.safetensors", "missing.safetensors", "model.safetensors\n",
    "\udcff.safetensors", "a/b.safetensors")


def _weight_map(index: Any) -> dict[str, Any] | None:
    found = index.get("weight_map") if isinstance(index, dict) else None
    return found if isinstance(found, dict) and found else None


def _i_values(index: Any, files: dict[str, File], rng: random.Random) -> tuple[Any, str]:
    wm = _weight_map(index)
    if wm is None:
        return index, "-"
    names = rng.sample(list(wm), min(len(wm), rng.choice((1, 1, 3, len(wm)))))
    value = rng.choice(ODD_SHARDS) if rng.random() < 0.7 else odd_value(rng)
    for name in names:
        wm[name] = copy.deepcopy(value)
    return index, f"{len(names)} weight_map values = {_say(value)}"


def _i_map(index: Any, files: dict[str, File], rng: random.Random) -> tuple[Any, str]:
    if not isinstance(index, dict):
        return index, "-"
    if rng.random() < 0.2:
        index.pop("weight_map", None)
        return index, "no weight_map"
    index["weight_map"] = rng.choice((odd_value(rng, index.get("weight_map")), [], "model.safetensors", {}))
    return index, f"weight_map={_say(index['weight_map'])}"


def _i_top(index: Any, files: dict[str, File], rng: random.Random) -> tuple[Any, str]:
    new: Any = rng.choice(([], "x", 1, None, [index], {"metadata": {}}))
    return new, f"the index is {_say(new)}"


def _i_entries(index: Any, files: dict[str, File], rng: random.Random) -> tuple[Any, str]:
    wm = _weight_map(index)
    if wm is None:
        return index, "-"
    shards = sorted(set(v for v in wm.values() if isinstance(v, str)))
    name = rng.choice(list(wm))
    choice = rng.randrange(4)
    if choice == 0:
        del wm[name]
        return index, f"{name!r} not in the index"
    if choice == 1 and shards:
        wm[name] = rng.choice(shards)
        return index, f"{name!r} said to be in {wm[name]}"
    if choice == 2 and shards:
        for i in range(rng.choice((1, 1, 1, 1, 200_000))):
            wm[f"model.layers.{i}.ghost.weight"] = shards[0]
        return index, "tensors no shard holds"
    index["weight_map"] = {k: wm[k] for k in sorted(wm, reverse=True)}
    return index, "weight_map reordered"


def _i_shard(index: Any, files: dict[str, File], rng: random.Random) -> tuple[Any, str]:
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    if not shards:
        return index, "-"
    name = rng.choice(shards)
    choice = rng.randrange(3)
    if choice == 0:
        del files[name]
        return index, f"{name} missing"
    content, size = files[name]
    if choice == 1:
        cut = rng.randrange(len(content))
        files[name] = (content[:cut], cut)
        return index, f"{name} cut at byte {cut}"
    other = rng.choice(shards)
    try:
        header, data = st_header(*files[other])
        source, _ = st_header(content, size)
    except (ValueError, struct.error):  # a shard an earlier mutation cut short
        return index, "-"
    tensor = next((k for k in source if k != "__metadata__"), None)
    if tensor is None or other == name:
        return index, "-"
    entry = dict(source[tensor])
    nbytes = entry["data_offsets"][1] - entry["data_offsets"][0]
    header[tensor] = {**entry, "data_offsets": [data, data + nbytes]}
    files[other] = st_file(header, data + nbytes)
    return index, f"{tensor!r} in both {name} and {other}"


INDEX_OPS = (_i_values, _i_values, _i_map, _i_top, _i_entries, _i_entries, _i_shard)


def index_input(seeds: Seeds, rng: random.Random) -> Made:
    seed = rng.choice(seeds.sharded)
    files, notes = dict(seed.sharded), [f"{seed.name} in {SHARDS[seed.name]} shards"]
    index: Any = {**seed.index_json, "weight_map": dict(seed.index_json["weight_map"])}
    for _ in range(rng.choice((1, 1, 2, 3))):
        index, note = rng.choice(INDEX_OPS)(index, files, rng)
        notes.append(note)
    raw = encode_json(index)
    if rng.random() < 0.2:
        raw = _file_op(raw, rng, notes)
    files[INDEX] = (raw, len(raw))
    return files, "", notes


def gguf_input(seeds: Seeds, rng: random.Random) -> Made:
    g = copy.deepcopy(rng.choice(seeds.ggufs))
    notes = [g.name]
    for _ in range(rng.choice((1, 1, 2, 3))):
        notes.append(rng.choice(GGUF_OPS)(g, rng))
    raw = g.to_bytes()
    size = len(raw) + g.data_bytes
    if rng.random() < 0.15:
        cut = rng.randrange(len(raw) + 1)
        raw, size = raw[:cut], cut
        notes.append(f"cut at byte {cut}")
    elif rng.random() < 0.15:
        raw = _flip(raw, rng)[0]
        notes.append("bytes flipped")
    return {"model.gguf": (raw, size)}, "model.gguf", notes


MAKERS: dict[str, Callable[[Seeds, random.Random], Made]] = {
    "config": config_input, "safetensors": safetensors_input, "index": index_input, "gguf": gguf_input}


def make_case(seeds: Seeds, seed: int, index: int, kinds: Sequence[str]) -> Case:
    """Input `index` of the run seeded `seed`: the same whatever the worker or the job count."""
    kind = kinds[index % len(kinds)]
    rng = random.Random(f"{seed}:{index}")
    files, target, notes = MAKERS[kind](seeds, rng)
    return Case(kind, index, files, target, "; ".join(n for n in notes if n != "-"))


def write_case(case: Case, folder: Path) -> Path:
    """Write the case's files (data sections as sparse holes) into `folder`, emptied first (files
    are unlinked: removing and remaking the folder costs ten times more)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for name, (content, size) in case.files.items():
        with (folder / name).open("wb") as f:
            f.write(content)
            if size > len(content):
                f.truncate(min(size, MAX_SPARSE))
    return folder / case.target if case.target else folder


# ---------------------------------------------------------------- shrinking a finding


def _chunks(n: int, smallest: int = 1) -> Iterator[range]:
    """Spans to remove, largest first (all, halves, quarters, ... down to `smallest` items)."""
    size = n
    while size >= max(smallest, 1):
        for start in range(0, n, size):
            yield range(start, min(start + size, n))
        size //= 2


def smaller_json(value: Any, depth: int = 0) -> Iterator[Any]:
    if depth > 30:
        return
    if isinstance(value, dict):
        keys = list(value)
        for span in _chunks(len(keys)):
            gone = {keys[i] for i in span}
            yield {k: v for k, v in value.items() if k not in gone}
        for k in keys:
            for sub in smaller_json(value[k], depth + 1):
                yield {**value, k: sub}
    elif isinstance(value, list):
        for span in _chunks(len(value)):
            yield value[:span.start] + value[span.stop:]
        for i, item in enumerate(value[:50]):
            for sub in smaller_json(item, depth + 1):
                yield value[:i] + [sub] + value[i + 1:]
    elif isinstance(value, str) and len(value) > 8:
        yield value[:8]


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _smaller_file(name: str, content: bytes, size: int) -> Iterator[File]:
    if name.endswith(".json") and _json_or_none(content) is not None:
        for value in smaller_json(_json_or_none(content)):
            raw = encode_json(value)
            yield raw, len(raw)
    elif name.endswith(".safetensors") and len(content) >= 8:
        length = struct.unpack("<Q", content[:8])[0]
        header = _json_or_none(content[8:8 + length]) if 8 + length == len(content) else None
        for value in smaller_json(header) if header is not None else ():
            yield st_file(value, size - len(content))
    elif name.endswith(".gguf"):
        yield from _smaller_gguf(content, size)
    for span in _chunks(len(content), len(content) // 64):
        yield content[:span.start] + content[span.stop:], size - len(span)


def _smaller_gguf(content: bytes, size: int) -> Iterator[File]:
    try:
        g = parse_gguf("", content, size)
    except (ValueError, struct.error, RecursionError, OverflowError):
        return
    for part in ("kvs", "tensors"):
        items = getattr(g, part)
        for span in _chunks(len(items)):
            smaller = copy.copy(g)
            setattr(smaller, part, items[:span.start] + items[span.stop:])
            raw = smaller.to_bytes()
            yield raw, len(raw) + g.data_bytes
    for i, (key, kind, value) in enumerate(g.kvs):
        if kind == GG_ARRAY and len(value[1]) > 1:  # a shorter array (the 512 tokens of a vocabulary)
            smaller = copy.copy(g)
            smaller.kvs = [*g.kvs[:i], [key, kind, (value[0], value[1][:len(value[1]) // 4])], *g.kvs[i + 1:]]
            raw = smaller.to_bytes()
            yield raw, len(raw) + g.data_bytes
    if g.data_bytes:
        yield content, len(content)


def smaller_cases(case: Case) -> Iterator[Case]:
    """Variants of `case` with a file fewer or a file smaller, the largest files first."""
    for name in case.files:
        if name != case.target:
            yield case._replace(files={k: v for k, v in case.files.items() if k != name})
    for name, (content, size) in sorted(case.files.items(), key=lambda item: -len(item[1][0])):
        for new in _smaller_file(name, content, size):
            if len(new[0]) < len(content) or new[1] < size:
                yield case._replace(files={**case.files, name: new})


# ---------------------------------------------------------------- the worker


class _Overtime(BaseException):
    """Raised by SIGALRM: a BaseException, so no `except Exception` in the reader swallows it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Overtime


def _proc_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


_PROC = Path("/proc/self/clear_refs").exists()


def _rss_now() -> int:
    """RSS in bytes after resetting the peak (Linux); elsewhere the peak so far, which only grows."""
    if _PROC:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return _proc_kib("VmRSS") * 1024
        except OSError:
            pass
    return _peak_rss()


def _peak_rss() -> int:
    if _PROC:
        return _proc_kib("VmHWM") * 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cap(extra: int) -> None:
    """Cap the address space `extra` bytes above what the worker maps now (the hard limit stays
    unlimited, so the cap can be lifted again)."""
    resource.setrlimit(resource.RLIMIT_AS, (_proc_kib("VmSize") * 1024 + extra, resource.RLIM_INFINITY))


def _uncap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _read(path: Path) -> None:
    """The public reading path under test."""
    import unimap

    spec = unimap.inspect(path)
    unimap.plan(spec, machine=MACHINE, max_num_images=0)


def _site(frame: traceback.FrameSummary) -> str:
    path = frame.filename
    if "site-packages" + os.sep in path:
        path = path.split("site-packages" + os.sep, 1)[1]
    elif path.startswith(str(ROOT) + os.sep):
        path = path[len(str(ROOT)) + 1:]
    else:
        path = "/".join(Path(path).parts[-2:])
    return f"{path}:{frame.lineno} in {frame.name}"


class Runner:
    """Writes cases into one scratch folder and reads them through unimap, under the limits."""

    def __init__(self, seed: int, kinds: Sequence[str], scratch: Path, cap: bool) -> None:
        warnings.simplefilter("ignore")
        import unimap
        from unimap.errors import UnimapError

        self.unimap_dir = str(Path(unimap.__file__).resolve().parent) + os.sep
        self.project_error = UnimapError
        self.seed, self.kinds = seed, tuple(kinds)
        self.cap = cap and _PROC and resource.getrlimit(resource.RLIMIT_AS)[1] == resource.RLIM_INFINITY
        self.folder = scratch / "case"
        self.seeds = Seeds(scratch / "seeds")
        os.environ["UNIMAP_CACHE_DIR"] = str(scratch / "cache")  # not the user's structure cache
        signal.signal(signal.SIGALRM, _alarm)

    def case(self, index: int) -> Case:
        return make_case(self.seeds, self.seed, index, self.kinds)

    def warm_up(self) -> dict[str, Any]:
        """Read every seed once (imports mlx-lm's modules, so no input pays for them); say which
        seeds fail (they should all plan) and which unimap this worker reads with."""
        failures = []
        for case in self.seeds.valid_cases():
            got = self.measure(case)
            if got.status != "ok":
                failures.append(f"{case.note}: {got.status} {got.group} {got.detail[:300]}")
        return {"seed_failures": failures, "unimap": _fingerprint(Path(self.unimap_dir)),
                "rss_bytes": _rss_now()}

    def outcome(self, index: int) -> Outcome:
        try:
            case = self.case(index)
        except Exception as exc:  # noqa: BLE001 - the generator's own bug: reported, never fatal
            kind = self.kinds[index % len(self.kinds)]
            return Outcome(index, kind, "fuzzer", self.where(exc), _tail(exc), 0.0, 0, 0, "")
        first = self.measure(case)
        if (first.cpu_seconds > SLOW_S and first.seconds < HARD_S) or first.group.startswith("MemoryError"):
            again = self.measure(case)  # a module imported once, a cold cache: measure it warm
            first = min(first, again, key=lambda o: (o.group.startswith("MemoryError"), o.cpu_seconds))
        return first

    def measure(self, case: Case) -> Outcome:
        target = write_case(case, self.folder)
        caught: BaseException | None = None
        before = _rss_now()
        if self.cap:
            _cap(MEMORY_BYTES)
        start, cpu = time.perf_counter(), time.process_time()
        signal.setitimer(signal.ITIMER_REAL, HARD_S)
        try:
            _read(target)
        except BaseException as exc:  # noqa: BLE001 - classified below, after the limits are lifted
            caught = exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            if self.cap:
                _uncap()
        grown = _peak_rss() - before
        status, group, detail = self.classify(caught)
        del caught
        return Outcome(case.number, case.kind, status, group, detail, seconds, grown, case.size, case.note,
                       before, cpu)

    def classify(self, exc: BaseException | None) -> tuple[str, str, str]:
        if exc is None:
            return "ok", "", ""
        if isinstance(exc, _Overtime):
            return "hang", f"over {HARD_S:g} s", ""
        if isinstance(exc, self.project_error):
            return "unimap", "", _message(exc).replace(str(self.folder), "CASE")
        return "bug", self.where(exc), _tail(exc).replace(str(self.folder), "CASE")

    def where(self, exc: BaseException) -> str:
        """The group of a non-project exception: its type, the innermost unimap frame, and the
        library frame below it that raised."""
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if f.filename.startswith(self.unimap_dir)]
        text = f"{type(exc).__name__} at {_site(ours[-1]) if ours else 'no unimap frame'}"
        if frames and (not ours or frames[-1] is not ours[-1]):
            text += f" < {_site(frames[-1])}"
        return text

    def shrink(self, index: int, group: str, steps: int) -> tuple[Case, Outcome, int]:
        """The smallest variant of input `index` still in `group` that `steps` reads (or
        SHRINK_S seconds) find."""
        case = self.case(index)
        best = self.measure(case)
        used, improved = 0, best.group == group
        until = time.monotonic() + SHRINK_S
        while improved and used < steps and time.monotonic() < until:
            improved = False
            for candidate in smaller_cases(case):
                used += 1
                got = self.measure(candidate)
                if got.group == group:
                    case, best, improved = candidate, got, True
                    break
                if used >= steps or time.monotonic() > until:
                    break
        return case, best, used

    def handle(self, task: tuple[Any, ...]) -> Any:
        if task[0] == "run":
            return self.outcome(task[1])
        if task[0] == "case":
            return self.case(task[1])
        return self.shrink(*task[1:])


def _fingerprint(package: Path) -> str:
    """Where the unimap under test lives and a digest of its sources (another engineer may be
    editing them while the fuzzer runs)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{package} sha256:{digest.hexdigest()[:16]}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    except Exception:  # noqa: BLE001 - a message that cannot even be printed
        return f"{type(exc).__name__} (its message cannot be printed)"


def _tail(exc: BaseException) -> str:
    try:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8)
    except Exception:  # noqa: BLE001
        lines = [f"{type(exc).__name__} (the traceback cannot be formatted)"]
    return "".join(lines)[-3000:]


def _serve(conn: Any, number: int, seed: int, kinds: Sequence[str], scratch: str, cap: bool) -> None:
    """A worker process: answer tasks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    log = open(Path(scratch) / f"worker-{number}.log", "ab")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    runner = Runner(seed, kinds, Path(scratch) / f"w{number}", cap)
    conn.send(runner.warm_up())
    while True:
        task = conn.recv()
        if task[0] == "stop":
            return
        try:
            conn.send(runner.handle(task))
        except _Overtime:  # the alarm fired between the read and disarming it
            conn.send(Outcome(task[1], "", "hang", f"over {HARD_S:g} s", "", HARD_S, 0, 0, ""))


class Worker:
    """One worker process and the task it is busy with."""

    def __init__(self, number: int, args: tuple[Any, ...]) -> None:
        self.number, self.args = number, args
        self.task: tuple[Any, ...] | None = None
        self.since = 0.0
        self.warm_up: dict[str, Any] = {}
        self._spawn()

    def _spawn(self) -> None:
        ctx = get_context("spawn")  # mlx is not fork-safe
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(theirs, self.number, *self.args), daemon=True)
        self.proc.start()
        theirs.close()
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            if not self.conn.poll(900):
                raise RuntimeError(f"fuzz worker {self.number} did not start within 15 minutes")
            self.warm_up, self.ready = self.conn.recv(), True

    def give(self, task: tuple[Any, ...] | None) -> None:
        self.task, self.since = task, time.monotonic()
        if task is not None:
            self.conn.send(task)

    def restart(self) -> int | None:
        """Kill and respawn; the old process's exit code (negative: the signal that ended it)."""
        self.proc.kill()
        self.proc.join()
        code = self.proc.exitcode
        self.conn.close()
        self._spawn()
        self.wait_ready()
        return code

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


Task = tuple[Any, ...]  # ("run", i), ("case", i) or ("shrink", i, group, steps)


def drive(workers: list[Worker], tasks: Iterable[Task], answer: Callable[[Task, Any], None],
          lost: Callable[[Task, str], None]) -> None:
    """Hand tasks to idle workers until all are answered; a worker that dies or stays silent past
    KILL_S loses its task (`lost` says why) and is restarted."""
    queue = iter(tasks)
    for w in workers:
        w.wait_ready()
        w.give(next(queue, None))
    while any(w.task is not None for w in workers):
        busy = {w.conn: w for w in workers if w.task is not None}
        for conn in connection.wait(list(busy), timeout=1.0):
            w = busy[conn]  # type: ignore[index]
            task = w.task
            assert task is not None
            try:
                result = w.conn.recv()
            except (EOFError, OSError):
                code = w.restart()
                lost(task, f"worker died (exit code {code})")
            else:
                answer(task, result)
            w.give(next(queue, None))
        for w in busy.values():
            if w.task is not None and time.monotonic() - w.since > _allowance(w.task):
                task = w.task
                w.restart()
                lost(task, f"stuck over {_allowance(task):g} s in native code")
                w.give(next(queue, None))


def _allowance(task: tuple[Any, ...]) -> float:
    """Seconds a worker may take before it is presumed stuck: a shrink reads up to `steps` inputs."""
    return KILL_S + (SHRINK_S + HARD_S if task[0] == "shrink" else 0)


# ---------------------------------------------------------------- the report


@dataclass
class Group:
    """Non-project exceptions (or dead workers) that share a type and a place."""

    key: str
    count: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    example: Outcome | None = None  # the smallest input seen
    reproducer: str = ""
    description: str = ""

    def add(self, o: Outcome) -> None:
        self.count += 1
        self.kinds[o.kind] += 1
        if self.example is None or (o.size, o.number) < (self.example.size, self.example.number):
            self.example = o

    def to_json(self) -> dict[str, Any]:
        e = self.example
        return {"key": self.key, "count": self.count, "kinds": dict(self.kinds),
                "example_index": e.number if e else None, "mutations": e.note if e else "",
                "detail": e.detail if e else "", "reproducer": self.reproducer,
                "description": self.description}


def _brief(o: Outcome) -> dict[str, Any]:
    return {"index": o.number, "kind": o.kind, "status": o.status, "seconds": round(o.seconds, 3),
            "cpu_seconds": round(o.cpu_seconds, 3),
            "grown_mib": round(o.grown_bytes / 2**20, 1), "mutations": o.note, "group": o.group}


@dataclass
class Report:
    seed: int
    count: int
    kinds: tuple[str, ...]
    jobs: int
    seconds: float = 0.0  # fuzzing, from starting the workers to the last answer
    save_seconds: float = 0.0  # shrinking and saving the reproducers
    per_kind: dict[str, Counter[str]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    fuzzer_errors: dict[str, Group] = field(default_factory=dict)  # inputs the generator failed to build
    slow: list[Outcome] = field(default_factory=list)
    memory: list[Outcome] = field(default_factory=list)
    seed_failures: list[str] = field(default_factory=list)
    unimap: str = ""  # the package read, and a digest of its sources
    warm_rss: int = 0  # a worker's RSS after reading every seed once
    held_max: int = 0  # the largest RSS a worker held before an input (memory kept across inputs)
    interrupted: bool = False

    def add(self, o: Outcome) -> None:
        self.per_kind.setdefault(o.kind, Counter())[o.status] += 1
        if o.status in ("bug", "crash"):
            self.groups.setdefault(o.group, Group(o.group)).add(o)
        elif o.status == "fuzzer":
            self.fuzzer_errors.setdefault(o.group, Group(o.group)).add(o)
        if o.cpu_seconds > SLOW_S or o.status == "hang":
            self.slow.append(o)
        if o.grown_bytes > MEMORY_BYTES or o.group.startswith("MemoryError"):
            self.memory.append(o)
        self.held_max = max(self.held_max, o.held_bytes)

    @property
    def non_project(self) -> int:
        return sum(g.count for g in self.groups.values())

    def ranked(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.key))

    def to_json(self) -> dict[str, Any]:
        slowest = sorted(self.slow, key=lambda o: -o.cpu_seconds)[:200]
        done = sum(sum(c.values()) for c in self.per_kind.values())
        return {"seed": self.seed, "count": self.count, "done": done, "kinds": list(self.kinds),
                "jobs": self.jobs,
                "seconds": round(self.seconds, 1), "save_seconds": round(self.save_seconds, 1),
                "interrupted": self.interrupted,
                "per_kind": {k: dict(v) for k, v in self.per_kind.items()},
                "non_project_exceptions": self.non_project, "groups": [g.to_json() for g in self.ranked()],
                "fuzzer_errors": [g.to_json() for g in self.fuzzer_errors.values()],
                "slow_count": len(self.slow), "slow": [_brief(o) for o in slowest],
                "memory_count": len(self.memory), "memory": [_brief(o) for o in self.memory[:200]],
                "seed_failures": self.seed_failures, "unimap": self.unimap,
                "worker_rss_after_warm_up_mib": self.warm_rss >> 20,
                "worker_rss_max_mib": self.held_max >> 20}

    def summary(self) -> str:
        done = sum(sum(c.values()) for c in self.per_kind.values())
        rate = done / self.seconds if self.seconds else 0.0
        lines = [f"unimap fuzz: {done} inputs (seed {self.seed}, kinds {','.join(self.kinds)}), {self.jobs} "
                 f"jobs, {self.seconds:.1f} s ({rate:.1f}/s, workers' start included), reproducers "
                 f"{self.save_seconds:.1f} s{' - interrupted' if self.interrupted else ''}",
                 f"unimap under test: {self.unimap}",
                 f"{'kind':<12} {'inputs':>8} {'ok':>8} {'UnimapError':>12} {'non-project':>12} "
                 f"{'>1 s':>6} {'>256 MiB':>9}"]
        for kind in self.kinds:
            c = self.per_kind.get(kind, Counter())
            slow = sum(1 for o in self.slow if o.kind == kind)
            memory = sum(1 for o in self.memory if o.kind == kind)
            lines.append(f"{kind:<12} {sum(c.values()):>8} {c['ok']:>8} {c['unimap']:>12} "
                         f"{c['bug'] + c['crash']:>12} {slow:>6} {memory:>9}")
        lines += self._findings()
        for g in self.fuzzer_errors.values():
            lines.append(f"the fuzzer failed to build {g.count} inputs (its own bug, not unimap's): {g.key}")
        if self.seed_failures:
            lines.append(f"{len(self.seed_failures)} seeds do not plan (fix the fuzzer's seeds):")
            lines += [f"  {s}" for s in self.seed_failures]
        return "\n".join(lines)

    def _findings(self) -> list[str]:
        if not self.groups:
            lines = ["0 non-project exceptions"]
        else:
            lines = [f"{self.non_project} non-project exceptions in {len(self.groups)} groups:"]
            for g in self.ranked():
                kinds = ",".join(f"{k} {n}" for k, n in sorted(g.kinds.items()))
                lines.append(f"  {g.count:>6}  {g.key}  [{kinds}]")
                if g.reproducer:
                    lines.append(f"          {g.reproducer}")
        lines.append(f"{len(self.slow)} inputs slower than {SLOW_S:g} s, {len(self.memory)} over "
                     f"{MEMORY_BYTES >> 20} MiB; a worker held {self.warm_rss >> 20} MiB after reading the "
                     f"seeds, up to {self.held_max >> 20} MiB later (memory kept across inputs)")
        for o in sorted(self.slow, key=lambda o: -o.cpu_seconds)[:10]:
            lines.append(f"  {o.cpu_seconds:6.2f} s CPU ({o.seconds:.2f} s wall)  {o.kind} #{o.number} "
                         f"{o.status} {o.group}: {o.note[:150]}")
        for o in self.memory[:10]:
            grown = f"{o.grown_bytes / 2**20:6.0f} MiB" if o.grown_bytes > MEMORY_BYTES // 2 else "  refused "
            lines.append(f"  {grown}  {o.kind} #{o.number} {o.group}: {o.note[:150]}")
        return lines


# ---------------------------------------------------------------- running and saving


def _lost(kinds: Sequence[str], task: tuple[Any, ...], why: str) -> Outcome:
    """The outcome of an input whose worker died (a crash: a finding) or went silent (a hang)."""
    index = task[1]
    kind = kinds[index % len(kinds)]
    if why.startswith("stuck"):
        return Outcome(index, kind, "hang", "", why, KILL_S, 0, 0, "", cpu_seconds=KILL_S)
    return Outcome(index, kind, "crash", why, why, 0.0, 0, 0, "")


def run(count: int, seed: int = 0, kinds: Sequence[str] = KINDS, jobs: int = 1, out: Path | None = None,
        shrink_steps: int = 200, progress: bool = False, json_path: Path | None = None) -> Report:
    """Fuzz `count` inputs in `jobs` worker processes; with `out`, save a shrunk reproducer of each
    group there. A test can run a short sample and assert `not report.groups` (300 inputs take
    about 10 s on 2 cores). Workers are spawned, so a calling script needs the usual
    `if __name__ == "__main__":` guard (pytest's runner has it). With `json_path`, the report is
    also written there every 30 s while fuzzing (a run that is killed leaves what it found)."""
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    report = Report(seed, count, kinds, jobs)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="unimap-fuzz-") as scratch:
        cap = sys.platform == "linux"
        workers = [Worker(n, (seed, kinds, scratch, cap)) for n in range(max(jobs, 1))]
        try:
            _fuzz(workers, report, progress, start, json_path)
            report.seconds = time.monotonic() - start
            if out is not None and not report.interrupted:
                save(report, workers, out, shrink_steps)
                report.save_seconds = time.monotonic() - start - report.seconds
        finally:
            for w in workers:
                w.stop()
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _fuzz(workers: list[Worker], report: Report, progress: bool, start: float,
          json_path: Path | None) -> None:
    last = [time.monotonic()]

    def answer(task: tuple[Any, ...], o: Outcome) -> None:
        report.add(o)
        if time.monotonic() - last[0] < 30:
            return
        last[0] = time.monotonic()
        report.seconds = last[0] - start
        if json_path is not None:  # a checkpoint: what a killed run leaves behind
            json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        if progress:
            done = sum(sum(c.values()) for c in report.per_kind.values())
            print(f"  {done}/{report.count} inputs, {report.non_project} non-project in "
                  f"{len(report.groups)} groups, {len(report.slow)} slow", file=sys.stderr, flush=True)

    try:
        workers[0].wait_ready()
        report.seed_failures = workers[0].warm_up["seed_failures"]
        report.unimap = workers[0].warm_up["unimap"]
        report.warm_rss = workers[0].warm_up["rss_bytes"]
        drive(workers, (("run", i) for i in range(report.count)), answer,
              lambda task, why: report.add(_lost(report.kinds, task, why)))
    except KeyboardInterrupt:
        report.interrupted = True


def save(report: Report, workers: list[Worker], out: Path, steps: int) -> None:
    """Shrink each group's smallest input and write it under `out` with its description; the
    five slowest inputs too (unshrunk)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if re.match(r"\d{3}-", old.name):
            shutil.rmtree(old)
    jobs: list[tuple[tuple[Any, ...], Group | None, Outcome | None]] = []
    for g in report.ranked():
        if g.example is not None:
            n = g.example.number
            crashed = g.key.startswith("worker died")  # a crash cannot be shrunk inside a worker
            jobs.append((("case", n) if crashed else ("shrink", n, g.key, steps), g, None))
    jobs += [(("case", o.number), None, o) for o in sorted(report.slow, key=lambda o: -o.cpu_seconds)[:5]]
    results: dict[tuple[Any, ...], Any] = {}
    drive(workers, [task for task, _, _ in jobs], results.__setitem__, lambda task, why: None)
    unshrunk = [(("case", t[1]), g, s) for t, g, s in jobs if t not in results]  # a shrink got stuck
    drive(workers, [task for task, _, _ in unshrunk], results.__setitem__, lambda task, why: None)
    jobs += unshrunk
    lines = []
    for n, (task, group, slow) in enumerate(jobs):
        found = results.get(task)
        if found is None:
            continue
        case, outcome = (found[0], found[1]) if task[0] == "shrink" else (found, None)
        name = group.key if group is not None else f"slow {case.kind} {case.number}"
        folder = out / f"{n:03d}-{re.sub(r'[^A-Za-z0-9]+', '-', name)[:70].strip('-')}"
        target = write_case(case, folder / "model")
        line = _describe(report, case, target, group, outcome, slow)
        seen = outcome or (group.example if group is not None else slow)
        details = seen.detail if seen is not None else ""
        (folder / "description.txt").write_text(f"{line}\n\n{_contents(case)}\n\n{details}\n")
        if group is not None:
            group.reproducer, group.description = str(folder), line
        lines.append(line)
    (out / "findings.txt").write_text("\n".join(lines) + "\n")


def _describe(report: Report, case: Case, target: Path, group: Group | None, outcome: Outcome | None,
              slow: Outcome | None) -> str:
    call = (f"python -c \"import unimap; unimap.plan(unimap.inspect('{target}'), machine='{MACHINE}', "
            "max_num_images=0)\"")
    if group is None and slow is not None:
        return (f"slow: {slow.kind} input #{slow.number} took {slow.cpu_seconds:.2f} s of CPU "
                f"({slow.seconds:.2f} s wall; {slow.status}); mutations: {slow.note}; reproduce: {call}")
    assert group is not None and group.example is not None
    if outcome is None:
        shrunk = "not shrunk"
    elif outcome.group == group.key:
        shrunk = f"shrunk to {case.size} bytes"
    else:
        shrunk = f"not shrunk: alone it gave {outcome.status} {outcome.group}".rstrip()
    return (f"{group.key}: {group.count} inputs ({', '.join(f'{k} {n}' for k, n in group.kinds.items())}); "
            f"smallest: {group.example.kind} input #{group.example.number} (seed {report.seed}), "
            f"mutations: {group.example.note}; {shrunk}; reproduce: {call}")


def _contents(case: Case) -> str:
    """The shrunk files, shown when small enough to read."""
    parts = []
    for name, (content, size) in case.files.items():
        hole = f", {size} with its hole" if size > len(content) else ""
        more = " ..." if len(content) > 600 else ""
        parts.append(f"--- {name} ({len(content)} bytes{hole})\n{content[:600]!r}{more}")
    return "\n".join(parts)


def replay(index: int, seed: int, kinds: Sequence[str], out: Path) -> str:
    """Rerun one input alone, save it under `out` and say what happened."""
    with tempfile.TemporaryDirectory(prefix="unimap-fuzz-") as scratch:
        worker = Worker(0, (seed, tuple(kinds), scratch, sys.platform == "linux"))
        found: dict[str, Any] = {}
        try:
            drive([worker], [("case", index), ("run", index)], lambda t, r: found.__setitem__(t[0], r),
                  lambda t, why: found.__setitem__(t[0], why))
        finally:
            worker.stop()
    case, outcome = found.get("case"), found.get("run")
    target = write_case(case, out / f"replay-{index}" / "model") if isinstance(case, Case) else None
    if not isinstance(outcome, Outcome):
        return f"input #{index}: {outcome}; saved as {target}"
    return (f"input #{index} ({outcome.kind}): {outcome.status} {outcome.group} in {outcome.seconds:.3f} s "
            f"({outcome.cpu_seconds:.3f} s CPU), "
            f"+{outcome.grown_bytes / 2**20:.0f} MiB\nmutations: {outcome.note}\nsaved as {target}\n"
            f"{outcome.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="a comma-separated subset of these")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fuzz-findings"))
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--shrink-steps", type=int, default=200, help="reads tried to shrink each finding")
    parser.add_argument("--replay", type=int, metavar="I", help="rerun input I alone and save it under --out")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if args.replay is not None:
        print(replay(args.replay, args.seed, kinds, args.out))
        return 0
    report = run(args.count, args.seed, kinds, args.jobs, args.out, args.shrink_steps, progress=True,
                 json_path=args.json)
    print(report.summary())
    if not report.interrupted:
        print(f"reproducers: {args.out}/findings.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
