"""GGUF checkpoints (llama, qwen2, qwen3, gemma, gemma2, gemma3): header, config and tokenizer from
the metadata, without tensor data.

`read_gguf` parses the GGUF v2/v3 header (metadata key/values and tensor infos) in pure Python,
so planning needs no MLX. `gguf_config` turns the metadata into the config.json of mlx-lm's
model for the architecture (llama.cpp permutes llama's query and key rows to rotate interleaved
pairs: `rope_traditional`; qwen2, qwen3 and the Gemmas keep mlx-lm's rotation; Gemma 2 and 3 name
their norms their own way, and llama.cpp stores every Gemma norm as 1 + weight). Both tokenizers GGUF files
embed are rebuilt on the tokenizers library and wrapped as mlx-lm wraps its own: `spm_tokenizer`
the SentencePiece-style one of llama (`tokenizer.ggml.model = llama`: scored pieces, merges
recovered from the scores, byte fallback), `bpe_tokenizer` the byte-level BPE one (`gpt2`, as
Qwen's). Tensor data is loaded by the runtime with `mx.load`. Anything else is a ModelError naming
what is unsupported.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from unimap.checks import short
from unimap.errors import ModelError
from unimap.headers import DTYPE_BYTES, TensorHeader

MAGIC = b"GGUF"
# ggml tensor types unimap runs: id -> (name, bits per weight). Floats load as they are; mx.load
# turns Q4_0/Q4_1/Q8_0 into MLX's affine layout: packed uint32 weights plus float16 scales and
# biases per block of 32.
TENSOR_TYPES: dict[int, tuple[str, int]] = {0: ("F32", 32), 1: ("F16", 16), 30: ("BF16", 16),
                                            2: ("Q4_0", 4), 3: ("Q4_1", 4), 8: ("Q8_0", 8)}
FLOAT_TYPES = ("F32", "F16", "BF16")
GGML_BLOCK = 32
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
# llama.cpp tensor names -> mlx-lm llama parameter names
NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
               "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma 2 and 3 (llama.cpp's names): ffn_norm is the norm before the MLP, and each block has
# norms after its attention and its MLP ("sandwich" norms)
GEMMA_BLOCK_NAMES = {**BLOCK_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                     "post_attention_norm": "post_attention_layernorm",
                     "post_ffw_norm": "post_feedforward_layernorm"}
# GGUF architectures whose metadata is all mlx-lm's model of the same name needs; the value says
# whether llama.cpp permuted the query/key rows for an interleaved rotation.
ARCHITECTURES = {"llama": True, "qwen2": False, "qwen3": False, "gemma": False, "gemma2": False,
                 "gemma3": False}
MODEL_TYPES = {"gemma3": "gemma3_text"}  # the mlx-lm module, where its name differs
# Gemma's RMSNorm scales by 1 + weight; llama.cpp stores 1 + weight (NORM_SHIFTED): unimap takes
# the 1 off again as it loads
NORM_SHIFTED = ("gemma", "gemma2", "gemma3")
# the 27B models, which llama.cpp scales queries by hidden / heads instead of the head size
GEMMA_27B_BLOCKS = {"gemma2": 46, "gemma3": 62}
# tokenizer.ggml.pre -> the regex that splits text before byte-level BPE (as the models' own
# tokenizer.json files do)
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}
PRE_TOKENIZERS["default"] = PRE_TOKENIZERS["gpt2"]


@dataclass(frozen=True)
class GgufTensor:
    name: str  # llama.cpp name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # in MLX order (GGUF lists dimensions fastest-first)
    type_name: str

    @property
    def bits(self) -> int:
        return dict(TENSOR_TYPES.values())[self.type_name]

    @property
    def quantized(self) -> bool:
        return self.type_name not in FLOAT_TYPES


@dataclass(frozen=True)
class GgufFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]


# Limits on what a GGUF header may claim, checked before anything is read or allocated for it:
MAX_GGUF_STRING = 1 << 24  # 16 MiB: a chat template or a token is far shorter
MAX_GGUF_ARRAY = 1 << 21  # 2M items: vocabularies have ~256k tokens, merges ~500k
MAX_GGUF_DEPTH = 2  # llama.cpp writes flat arrays; an array of arrays is as deep as the format goes
MAX_GGUF_DIMS = 4  # GGML_MAX_DIMS
_STRING, _ARRAY = 8, 9
# bytes per block of GGML_BLOCK weights, by ggml type (floats: per weight)
_TYPE_BYTES = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20),
               "Q8_0": (32, 34)}


class _Reader:
    """Reads a GGUF header, every count checked against the bytes left in the file."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def left(self) -> int:
        return self.size - self.f.tell()

    def corrupt(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: {what}; the GGUF file is truncated or corrupt (re-download it)")

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) < size:
            raise self.corrupt("the header ends early")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        length = self.take("<Q")
        if length > min(MAX_GGUF_STRING, self.left()):
            raise self.corrupt(f"a string claims {length} bytes")
        return self.f.read(length).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.take("<I"), self.take("<Q")
            if depth >= MAX_GGUF_DEPTH:
                raise self.corrupt(f"metadata arrays nest more than {MAX_GGUF_DEPTH} deep")
            least = struct.calcsize(_SCALARS[inner]) if inner in _SCALARS else 8  # a string's length
            if count > MAX_GGUF_ARRAY or count * least > self.left():
                raise self.corrupt(f"an array claims {count} items")
            if inner in _SCALARS:  # in one read: vocabularies' scores and types are long
                code = _SCALARS[inner][1]
                raw = self.f.read(count * least)
                return list(struct.unpack(f"<{count}{code}", raw))
            return [self.value(inner, depth + 1) for _ in range(count)]
        raise self.corrupt(f"unknown metadata type {kind}")


def read_gguf(path: Path) -> GgufFile:
    """The metadata and tensor list of a GGUF file (v2 or v3)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # before opening: a FIFO would wait for a writer
            raise ModelError(f"{path}: not a regular file; a GGUF model must be one")
        with path.open("rb") as f:
            r = _Reader(f, path, os.fstat(f.fileno()).st_size)
            if f.read(4) != MAGIC:
                raise ModelError(f"{path}: not a GGUF file (no GGUF magic bytes)")
            version = r.take("<I")
            if version not in (2, 3):
                raise ModelError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
            n_tensors, n_kv = r.take("<Q"), r.take("<Q")
            # a key/value takes at least 13 bytes, a tensor's description at least 24
            if n_kv * 13 > r.left() or n_tensors * 24 > r.left():
                raise r.corrupt(f"the header claims {n_tensors} tensors and {n_kv} metadata entries")
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                metadata[key] = r.value(r.take("<I"))
            infos = [_tensor_info(r) for _ in range(n_tensors)]
            alignment = metadata.get("general.alignment", 32)
            if not isinstance(alignment, int) or isinstance(alignment, bool) or not 1 <= alignment <= 1 << 20:
                raise r.corrupt(f"general.alignment is {alignment!r}")
            data_start = -(-f.tell() // alignment) * alignment
            tensors = [_check_data(r, info, data_start) for info in infos]
            _check_packing(r, infos, alignment)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return GgufFile(path, version, metadata, tuple(tensors))


def _tensor_info(r: _Reader) -> tuple[str, tuple[int, ...], str, int]:
    """One tensor's description: name, shape in MLX order, ggml type and data offset."""
    name = r.string()
    n_dims = r.take("<I")
    if n_dims > MAX_GGUF_DIMS:
        raise r.corrupt(f"tensor {name[:80]!r} claims {n_dims} dimensions")
    dims = [r.take("<Q") for _ in range(n_dims)]
    kind = r.take("<I")
    offset = r.take("<Q")
    if kind not in TENSOR_TYPES:
        raise ModelError(f"{r.path}: tensor {name[:80]!r} has ggml type {kind}, which MLX does not "
                         f"load; supported: {', '.join(t for t, _ in TENSOR_TYPES.values())}")
    shape = tuple(reversed(dims))
    type_name = TENSOR_TYPES[kind][0]
    if type_name not in FLOAT_TYPES and (len(shape) != 2 or shape[-1] % GGML_BLOCK):
        raise ModelError(f"{r.path}: quantized tensor {name[:80]!r} has shape {list(shape)}; "
                         f"expected a matrix whose rows divide into blocks of {GGML_BLOCK}")
    return name, shape, type_name, offset


def _check_packing(r: _Reader, infos: list[tuple[str, tuple[int, ...], str, int]], alignment: int) -> None:
    """Tensors follow one another, each padded to the alignment: data that overlaps the next
    tensor, or leaves more than the padding before it, means a type or shape that lies."""
    ordered = sorted(infos, key=lambda info: info[3])
    for (name, shape, type_name, offset), following in zip(ordered, ordered[1:], strict=False):
        end = offset + _data_bytes(shape, type_name, r.size)
        if not end <= following[3] < end + alignment + (-end % alignment):
            raise r.corrupt(f"tensor {name[:80]!r} ({type_name}, {list(shape)}) does not fill the room "
                            f"before {following[0][:80]!r}: its type or shape disagrees with its data")


def _data_bytes(shape: tuple[int, ...], type_name: str, limit: int) -> int:
    per_block, block_bytes = _TYPE_BYTES[type_name]
    elements = 1
    for dim in shape:  # stops growing past the file: no product of huge numbers
        elements = min(elements * dim, limit + 1)
    return -(-elements // per_block) * block_bytes


def _check_data(r: _Reader, info: tuple[str, tuple[int, ...], str, int], data_start: int) -> GgufTensor:
    """A tensor whose data lies inside the file (a plan from a truncated file would be a lie)."""
    name, shape, type_name, offset = info
    nbytes = _data_bytes(shape, type_name, r.size)
    if data_start + offset + nbytes > r.size:
        raise r.corrupt(f"tensor {name[:80]!r} runs past the end of the file ({r.size} bytes)")
    return GgufTensor(name, shape, type_name)


_BLOCK = re.compile(r"^blk\.(\d{1,6})\.(.+)$")


def mlx_name(name: str, arch: str = "llama") -> str:
    """llama.cpp tensor name -> the parameter name of mlx-lm's model for `arch`."""
    stem, _, suffix = name.rpartition(".")
    if stem.startswith("blk."):
        block = _BLOCK.match(stem)
        if block is None:
            raise ModelError(f"GGUF tensor {name[:80]!r} names no layer number (blk.N.part)")
        index, part = block.groups()
        names = GEMMA_BLOCK_NAMES if arch in ("gemma2", "gemma3") else BLOCK_NAMES
        if part not in names:
            raise ModelError(f"GGUF tensor {name!r} is not part of a {arch} block")
        return f"model.layers.{index}.{names[part]}.{suffix}"
    if stem not in NAMES:
        raise ModelError(f"GGUF tensor {name!r} is not part of a {arch} model")
    return f"{NAMES[stem]}.{suffix}"


def _meta(gguf: GgufFile, key: str, default: Any = None) -> Any:
    value = gguf.metadata.get(key, default)
    if value is None:
        raise ModelError(f"{gguf.path}: GGUF metadata lacks {key!r}; cannot build the config")
    return value


def _int(gguf: GgufFile, key: str, default: int | None = None) -> int:
    """A metadata entry that must be a whole number (its range is checked with the config)."""
    value = _meta(gguf, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelError(f"{gguf.path}: GGUF metadata {key!r} should be a whole number, not "
                         f"{short(value)}")
    return value


def _float(gguf: GgufFile, key: str, default: float | None = None) -> float:
    value = _meta(gguf, key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ModelError(f"{gguf.path}: GGUF metadata {key!r} should be a number, not {short(value)}")
    return float(value)


def _strings(gguf: GgufFile, key: str) -> list[str]:
    value = _meta(gguf, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"{gguf.path}: GGUF metadata {key!r} should be a list of strings")
    return value


def gguf_config(gguf: GgufFile) -> dict[str, Any]:
    """The config.json equivalent of a GGUF file's metadata, for mlx-lm's model of its architecture."""
    arch = gguf.metadata.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ModelError(f"{gguf.path}: GGUF architecture {short(arch)} is not supported; unimap runs "
                         f"{', '.join(ARCHITECTURES)} GGUF files (convert others to safetensors)")
    tokenizer = gguf.metadata.get("tokenizer.ggml.model")
    if not isinstance(tokenizer, str) or tokenizer not in ("llama", "gpt2"):
        raise ModelError(f"{gguf.path}: GGUF tokenizer kind {short(tokenizer)} is not supported; "
                         "unimap rebuilds SentencePiece-style ('llama') and byte-level BPE ('gpt2') "
                         "tokenizers")
    heads = _int(gguf, f"{arch}.attention.head_count")
    hidden = _int(gguf, f"{arch}.embedding_length")
    if heads < 1:
        raise ModelError(f"{gguf.path}: GGUF metadata {arch}.attention.head_count is {heads}; "
                         "a model has at least one attention head")
    names = {t.name for t in gguf.tensors}
    quantized = quantized_modules(gguf)
    extra: dict[str, Any] = {"rope_traditional": True} if ARCHITECTURES[arch] else {}
    if quantized:  # MLX's config form: defaults plus per-module entries
        bits = max(q["bits"] for q in quantized.values())
        extra["quantization"] = {"group_size": GGML_BLOCK, "bits": bits, **quantized}
    head_dim = _int(gguf, f"{arch}.attention.key_length",
                    _int(gguf, f"{arch}.rope.dimension_count", hidden // heads))
    if arch in NORM_SHIFTED:
        extra.update(_gemma_config(gguf, arch, hidden, heads, head_dim))
    return {**extra,
        "model_type": MODEL_TYPES.get(arch, arch),
        "hidden_size": hidden,
        "intermediate_size": _int(gguf, f"{arch}.feed_forward_length"),
        "num_hidden_layers": _int(gguf, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(gguf, f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _float(gguf, f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": _float(gguf, f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": _int(gguf, f"{arch}.context_length", 2048),
        "vocab_size": len(_strings(gguf, "tokenizer.ggml.tokens")),
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": _activation_dtype(gguf),
    }


def _gemma_config(gguf: GgufFile, arch: str, hidden: int, heads: int, head_dim: int) -> dict[str, Any]:
    """What mlx-lm's Gemma models need beyond the common fields, as llama.cpp reads it: the
    query scale (the head size; hidden / heads for the 27B models), Gemma 2's logit soft caps,
    Gemma 3's sliding window and linear rope scaling (its local rope base is 10000 in both)."""
    if arch == "gemma":
        return {}
    layers = _int(gguf, f"{arch}.block_count")
    scalar = hidden // heads if layers == GEMMA_27B_BLOCKS[arch] else head_dim
    if arch == "gemma2":
        return {"query_pre_attn_scalar": scalar,
                "attn_logit_softcapping": _float(gguf, f"{arch}.attn_logit_softcapping", 50.0),
                "final_logit_softcapping": _float(gguf, f"{arch}.final_logit_softcapping", 30.0)}
    out: dict[str, Any] = {"query_pre_attn_scalar": scalar, "rope_local_base_freq": 10000.0,
                           "sliding_window": _int(gguf, f"{arch}.attention.sliding_window", 512)}
    kind = gguf.metadata.get(f"{arch}.rope.scaling.type")
    if kind is not None:
        if kind != "linear":
            raise ModelError(f"{gguf.path}: GGUF rope scaling {short(kind)} is not supported for "
                             f"{arch} (linear is)")
        out["rope_scaling"] = {"rope_type": "linear",
                               "factor": _float(gguf, f"{arch}.rope.scaling.factor")}
    return out


def _activation_dtype(gguf: GgufFile) -> str:
    """What the embedding hands the layers: its own float type, or float16 (MLX dequantizes a
    quantized embedding with its float16 scales)."""
    embedding = next((t for t in gguf.tensors if t.name == "token_embd.weight"), None)
    kind = embedding.type_name if embedding is not None else "F16"
    return {"F32": "float32", "BF16": "bfloat16"}.get(kind, "float16")


# ---------------------------------------------------------------- tokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# Pieces SentencePiece merges into (BYTE pieces come from byte fallback, CONTROL/UNKNOWN match whole,
# UNUSED ones it would split again)
MERGEABLE = (NORMAL, USER_DEFINED)


@dataclass(frozen=True)
class SpmVocab:
    """A `llama` (SentencePiece-style) vocabulary from GGUF metadata, checked: pieces (byte pieces
    spelled `<0xNN>` in capitals), their scores and types, the special ids and llama.cpp's flags."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


def spm_vocab(gguf: GgufFile) -> SpmVocab:
    """The checked vocabulary of a `llama` tokenizer (cheap: what inspect runs before loading)."""
    tokens = _strings(gguf, "tokenizer.ggml.tokens")
    n = len(tokens)
    scores = gguf.metadata.get("tokenizer.ggml.scores", [0.0] * n)
    types = gguf.metadata.get("tokenizer.ggml.token_type", [NORMAL] * n)
    if not (isinstance(scores, list) and isinstance(types, list) and len(scores) == len(types) == n):
        raise ModelError(f"{gguf.path}: tokenizer tokens, scores and types differ in length")
    if not all(isinstance(s, int | float) and not isinstance(s, bool) and not math.isnan(s)
               for s in scores) or not all(isinstance(t, int) and not isinstance(t, bool) for t in types):
        raise ModelError(f"{gguf.path}: tokenizer scores must be numbers and token types integers")
    tokens = list(tokens)
    for i, kind in enumerate(types):
        if kind == BYTE:
            if not _BYTE_PIECE.match(tokens[i]):
                raise ModelError(f"{gguf.path}: byte token {short(tokens[i])} is not of the form "
                                 "<0xNN>; the tokenizer is corrupt")
            tokens[i] = f"<0x{tokens[i][3:5].upper()}>"  # as the tokenizers library spells them
    if len(set(tokens)) != n:  # one string, two ids: text could only ever reach one of them
        twice = next(t for t, count in Counter(tokens).items() if count > 1)
        raise ModelError(f"{gguf.path}: tokenizer token {short(twice)} appears twice; the tokenizer "
                         "is corrupt")
    return SpmVocab(tokens, [float(s) for s in scores], types,
                    special_id(gguf, "tokenizer.ggml.bos_token_id", 1, n),
                    special_id(gguf, "tokenizer.ggml.eos_token_id", 2, n),
                    special_id(gguf, "tokenizer.ggml.unknown_token_id", 0, n),
                    _flag(gguf, "tokenizer.ggml.add_bos_token", True),
                    _flag(gguf, "tokenizer.ggml.add_eos_token", False),
                    _flag(gguf, "tokenizer.ggml.add_space_prefix", True))


def _flag(gguf: GgufFile, key: str, default: bool) -> bool:
    value = gguf.metadata.get(key, default)
    if not isinstance(value, bool):
        raise ModelError(f"{gguf.path}: GGUF metadata {key!r} should be true or false, not {short(value)}")
    return value


def spm_merges(vocab: SpmVocab) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies, best first. SentencePiece (and llama.cpp)
    merge the adjacent pair whose merged piece scores highest, so every split of a piece into two
    pieces is a merge ranked by the piece's score; a split whose halves are not both pieces can
    never happen. Equal scores keep the file's order."""
    tokens, types = vocab.tokens, vocab.types
    pieces = {t for t, kind in zip(tokens, types, strict=True) if kind in MERGEABLE}
    best_first = [tokens[i] for i in sorted(range(len(tokens)), key=vocab.scores.__getitem__, reverse=True)
                  if types[i] in MERGEABLE]
    # one comprehension: about 0.7 s for 256k pieces averaging 11 characters
    return [(p[:k], p[k:]) for p in best_first for k in range(1, len(p))
            if p[:k] in pieces and p[k:] in pieces]


_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def special_id(gguf: GgufFile, key: str, default: int, vocab: int) -> int:
    """A special token's id, which must be a token of the vocabulary (an id past it would index
    past the embedding)."""
    value = gguf.metadata.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab:
        raise ModelError(f"{gguf.path}: GGUF metadata {key!r} is {short(value)}, not a token of the "
                         f"{vocab}-token vocabulary; the file is corrupt")
    return value


def check_complete(gguf: GgufFile) -> None:
    """The tensors every model of these architectures has (a file without them plans, then fails
    to load)."""
    present = {t.name for t in gguf.tensors}
    missing = [name for name in ("token_embd.weight", "output_norm.weight") if name not in present]
    if missing:
        raise ModelError(f"{gguf.path}: the GGUF file has no {missing[0]} tensor, which every "
                         f"{gguf.metadata.get('general.architecture')} model has; the file is incomplete")


def check_tokenizer(gguf: GgufFile) -> None:
    """The tokenizer metadata, checked when the file is inspected (before anything loads): what
    building the tokenizer would find wrong, without building it."""
    if gguf.metadata.get("tokenizer.ggml.model") == "gpt2":
        tokens = _strings(gguf, "tokenizer.ggml.tokens")
        if any(" " not in m for m in _strings(gguf, "tokenizer.ggml.merges")):
            raise ModelError(f"{gguf.path}: a tokenizer merge is not two pieces; the file is corrupt")
        for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
            if key in gguf.metadata:
                special_id(gguf, key, 0, len(tokens))
        pre = gguf.metadata.get("tokenizer.ggml.pre", "default")
        if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
            raise ModelError(f"{gguf.path}: GGUF pre-tokenizer {short(pre)} is not supported; known: "
                             f"{', '.join(sorted(PRE_TOKENIZERS))}")
    else:
        spm_vocab(gguf)


def gguf_tokenizer(gguf: GgufFile) -> Any:
    """The tokenizer the GGUF file embeds (SentencePiece-style or byte-level BPE), as an mlx-lm
    TokenizerWrapper."""
    if gguf.metadata.get("tokenizer.ggml.model") == "gpt2":
        return bpe_tokenizer(gguf)
    return spm_tokenizer(gguf)


def spm_tokenizer(gguf: GgufFile) -> Any:
    """llama.cpp's `llama` (SentencePiece BPE) tokenizer as an mlx-lm TokenizerWrapper, with
    mlx-lm's linear streaming detokenizer set to keep a reply's first space (a continuation of
    "a little" reads " girl", not "girl") and the file's chat template."""
    from functools import partial

    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer, TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

    vocab = spm_vocab(gguf)
    tokens = vocab.tokens
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_spm_backend(vocab), bos_token=tokens[vocab.bos_id],
        eos_token=tokens[vocab.eos_id], unk_token=tokens[vocab.unk_id],
        clean_up_tokenization_spaces=False)
    template = gguf.metadata.get("tokenizer.chat_template")
    if isinstance(template, str):
        wrapped.chat_template = template
    return TokenizerWrapper(wrapped, detokenizer_class=partial(SPMStreamingDetokenizer, trim_space=False))


def _spm_backend(vocab: SpmVocab) -> Any:
    """The tokenizers-library Tokenizer: BPE over the recovered merges with byte fallback (runs
    of unknown characters one <unk> without byte pieces), " " -> "▁" after a leading "▁" as
    llama.cpp and SentencePiece do (" a" is "▁▁a"; HF's Metaspace would make it "▁a"), BOS (and
    EOS) as the metadata says."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    tokens = vocab.tokens
    spm = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, spm_merges(vocab),
                               unk_token=tokens[vocab.unk_id], byte_fallback=True, fuse_unk=True))
    prefix = [normalizers.Prepend("▁")] if vocab.add_space_prefix else []
    spm.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(" ", 1, 0)] if vocab.add_space_prefix else []  # the prefix, once
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), *strip])
    # matched whole in the raw text, as llama.cpp does (control ones when it parses specials, as
    # chat templates need; user-defined ones always); each text between them gets its own "▁"
    kinds = list(zip(tokens, vocab.types, strict=True))
    spm.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, kind in kinds
                            if kind in (CONTROL, UNKNOWN)])
    spm.add_tokens([AddedToken(t, normalized=False) for t, kind in kinds if kind == USER_DEFINED])
    # BOS/EOS by name in the template: a token's own text may hold ":" or "$", which templates parse
    single = " ".join([*["BOS"] * vocab.add_bos, "$A", *["EOS"] * vocab.add_eos])
    spm.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} {single.replace('$A', '$B')}",
        special_tokens=[{"id": "BOS", "ids": [vocab.bos_id], "tokens": [tokens[vocab.bos_id]]},
                        {"id": "EOS", "ids": [vocab.eos_id], "tokens": [tokens[vocab.eos_id]]}])
    return spm


def bpe_tokenizer(gguf: GgufFile) -> Any:
    """A byte-level BPE tokenizer from GGUF metadata (tokens, merges, the pre-tokenizer's name),
    wrapped as mlx-lm wraps a Hugging Face tokenizer; control tokens match whole."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = _strings(gguf, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(gguf, "tokenizer.ggml.merges")]
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if key in gguf.metadata:
            special_id(gguf, key, 0, len(tokens))
    if any(len(m) != 2 for m in merges):
        raise ModelError(f"{gguf.path}: a tokenizer merge is not two pieces; the file is corrupt")
    pre = str(gguf.metadata.get("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise ModelError(f"{gguf.path}: GGUF pre-tokenizer {pre!r} is not supported; known: "
                         f"{', '.join(sorted(PRE_TOKENIZERS))}")
    bpe = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))  # type: ignore[arg-type]
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZERS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    types = gguf.metadata.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    bpe.add_special_tokens([AddedToken(t, special=True) for t, kind in zip(tokens, types, strict=False)
                            if kind == CONTROL])

    def token(key: str) -> str | None:
        index = gguf.metadata.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"))
    template = gguf.metadata.get("tokenizer.chat_template")
    if isinstance(template, str):
        wrapped.chat_template = template
    return TokenizerWrapper(wrapped)


def gguf_headers(gguf: GgufFile) -> list[TensorHeader]:
    """The GGUF tensors as MLX will hold them, as safetensors-style headers under mlx-lm names:
    float tensors as they are; quantized ones as packed weight, scales and biases."""
    entries: list[tuple[str, str, tuple[int, ...]]] = []
    for t in gguf.tensors:
        name = _mlx_name(gguf, t.name)
        if not t.quantized:
            entries.append((name, t.type_name, t.shape))
            continue
        rows, cols = t.shape
        stem = name.removesuffix(".weight")
        entries += [(name, "U32", (rows, cols * t.bits // 32)),
                    (f"{stem}.scales", "F16", (rows, cols // GGML_BLOCK)),
                    (f"{stem}.biases", "F16", (rows, cols // GGML_BLOCK))]
    headers: list[TensorHeader] = []
    offset = 0
    for name, dtype, shape in entries:
        nbytes = DTYPE_BYTES[dtype]
        for dim in shape:
            nbytes *= dim
        headers.append(TensorHeader(name, dtype, shape, offset, offset + nbytes))
        offset += nbytes
    return headers


def quantized_modules(gguf: GgufFile) -> dict[str, dict[str, int]]:
    """mlx-lm module path -> quantization parameters, for the GGUF's quantized tensors."""
    return {_mlx_name(gguf, t.name).removesuffix(".weight"): {"group_size": GGML_BLOCK, "bits": t.bits}
            for t in gguf.tensors if t.quantized}


def _mlx_name(gguf: GgufFile, name: str) -> str:
    """mlx_name, its complaint naming the file."""
    try:
        return mlx_name(name, str(gguf.metadata.get("general.architecture", "llama")))
    except ModelError as exc:
        raise ModelError(f"{gguf.path}: {exc}") from None
