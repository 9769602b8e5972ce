"""GGUF files of architectures beyond llama (qwen2 with its attention biases, qwen3 with its q/k
norms), written from tiny random mlx-lm models with a byte-level BPE vocabulary as llama.cpp
stores it: unimap plans their exact bytes, generates what plain mlx-lm generates from the same
weights, and rebuilds the tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from gguf_writer import write_gguf
from mlx.utils import tree_flatten
from tiny_families import tiny_config
from tiny_models import stand_in_machine, write_random_model

import unimap
from unimap.errors import ModelError
from unimap.generate import stream_generate
from unimap.gguf import BLOCK_NAMES, NAMES

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("o", "n"), ("e", "r")]
SPECIAL = "<|endoftext|>"
PROMPT = [5, 77, 12, 201, 33, 90, 41, 8]


def byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def vocabulary(size: int) -> list[str]:
    tokens = byte_chars() + ["".join(m) for m in MERGES] + [SPECIAL]
    return tokens + [f"<unused{i}>" for i in range(size - len(tokens))]


def gguf_name(name: str, arch: str = "llama") -> str:
    """mlx-lm's parameter name -> llama.cpp's, for `arch`."""
    from unimap.gguf import GEMMA_BLOCK_NAMES

    blocks = {v: k for k, v in (GEMMA_BLOCK_NAMES if arch in ("gemma2", "gemma3")
                                else BLOCK_NAMES).items()}
    stems = {v: k for k, v in NAMES.items()}
    stem, _, suffix = name.rpartition(".")
    if stem.startswith("model.layers."):
        _, _, index, part = stem.split(".", 3)
        return f"blk.{index}.{blocks[part]}.{suffix}"
    return f"{stems[stem]}.{suffix}"


def metadata(arch: str, config: dict[str, Any], rope_theta: float = 10000.0) -> dict[str, Any]:
    """llama.cpp's metadata for a model of `config`, with the byte-level BPE vocabulary above."""
    tokens = vocabulary(config["vocab_size"])
    meta: dict[str, Any] = {
        "general.architecture": arch, f"{arch}.block_count": config["num_hidden_layers"],
        f"{arch}.embedding_length": config["hidden_size"],
        f"{arch}.feed_forward_length": config["intermediate_size"],
        f"{arch}.attention.head_count": config["num_attention_heads"],
        f"{arch}.attention.head_count_kv": config["num_key_value_heads"],
        f"{arch}.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        f"{arch}.rope.freq_base": float(config.get("rope_theta", rope_theta)),
        f"{arch}.context_length": 1024,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t == SPECIAL else 1 for t in tokens],
        "tokenizer.ggml.merges": [" ".join(m) for m in MERGES],
        "tokenizer.ggml.eos_token_id": tokens.index(SPECIAL),
    }
    if "head_dim" in config:
        meta[f"{arch}.attention.key_length"] = config["head_dim"]
    return meta


def write_model(tmp_path: Path, arch: str) -> tuple[Path, Path]:
    """The same random weights as an MLX checkpoint and as a GGUF file."""
    config = {**tiny_config(arch), "vocab_size": 300, "tie_word_embeddings": False}
    folder = write_random_model(tmp_path / arch, config)
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    tensors = [(gguf_name(k), v, "F32") for k, v in weights.items()]
    return folder, write_gguf(tmp_path / f"{arch}.gguf", metadata(arch, config), tensors)


def reference(folder: Path, steps: int = 6) -> list[int]:
    from mlx_lm import load as mlx_load
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, _ = mlx_load(str(folder))
    return [int(t) for t, _ in generate_step(mx.array(PROMPT), model, max_tokens=steps,
                                             sampler=make_sampler(0.0))]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_gguf_architecture_plans_and_generates_like_mlx_lm(tmp_path: Path, arch: str) -> None:
    folder, path = write_model(tmp_path, arch)
    spec = unimap.inspect(path)
    assert spec.arch.model_type == arch and spec.num_layers == 4
    expected = reference(folder)
    for split in (4, 2):
        with pytest.warns(DeprecationWarning):
            model, tokenizer, plan = unimap.load(path, device_map=split, machine=stand_in_machine(),
                                                 max_seq_len=64)
        resident = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
        assert resident == plan.estimate.weight_bytes
        out = [r.token for r in stream_generate(model, tokenizer, list(PROMPT), max_tokens=6)]
        assert [t for t in out if t is not None] == expected, f"{arch} split at {split}"
        model._unimap.limits.release()


def test_byte_level_bpe_tokenizer_from_the_metadata(tmp_path: Path) -> None:
    _, path = write_model(tmp_path, "qwen2")
    _, tokenizer, _ = unimap.load(path, max_seq_len=64)
    text = "the thin otter in the rain, ünïcode!"
    ids = tokenizer.encode(text)
    tokens = vocabulary(300)
    assert tokens.index("Ġthe") in ids and tokens.index("in") in ids  # merges applied
    assert len(ids) < len(text.encode())
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(SPECIAL) == [tokens.index(SPECIAL)]  # a control token matches whole
    assert tokenizer.eos_token_id == tokens.index(SPECIAL)


def test_unsupported_gguf_architecture_and_pre_tokenizer(tmp_path: Path) -> None:
    _, path = write_model(tmp_path, "qwen2")
    raw = path.read_bytes()
    swapped = tmp_path / "other.gguf"
    swapped.write_bytes(raw.replace(b"qwen2.", b"phi99.").replace(b"\x05\x00\x00\x00\x00\x00\x00\x00qwen2",
                                                                   b"\x05\x00\x00\x00\x00\x00\x00\x00phi99"))
    with pytest.raises(ModelError, match="architecture 'phi99' is not supported; unimap runs llama, qwen2"):
        unimap.inspect(swapped)


GEMMA_CONFIGS = {
    "gemma": {},
    "gemma2": {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    # GGUF names no sliding pattern: llama.cpp's (and mlx-lm's default) every sixth layer global
    "gemma3": {"num_hidden_layers": 6, "sliding_window_pattern": 6, "sliding_window": 8},
}


@pytest.mark.parametrize("arch", sorted(GEMMA_CONFIGS))
def test_gemma_gguf_files_run_like_mlx_lm(tmp_path: Path, arch: str) -> None:
    """Gemma, Gemma 2 and Gemma 3 GGUF files as llama.cpp writes them: their own norm names
    (ffn_norm before the MLP, post_attention_norm and post_ffw_norm after), every norm stored as
    1 + weight, tied embeddings, Gemma 2's soft caps and Gemma 3's sliding window in the metadata.
    Greedy tokens equal mlx-lm's from the same weights, whole and split, within the plan."""
    from unimap.gguf import MODEL_TYPES

    family = MODEL_TYPES.get(arch, arch)
    config = {**tiny_config(family), "vocab_size": 300, **GEMMA_CONFIGS[arch]}
    folder = write_random_model(tmp_path / arch, config)
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    tensors = [(gguf_name(k, arch), v + 1 if k.endswith("norm.weight") else v, "F32")
               for k, v in weights.items()]
    meta = metadata(arch, config, 1_000_000.0 if arch == "gemma3" else 10000.0)
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if key in GEMMA_CONFIGS[arch]:
            meta[f"{arch}.{key}"] = GEMMA_CONFIGS[arch][key]
    if arch == "gemma3":
        meta[f"{arch}.attention.sliding_window"] = config["sliding_window"]
    path = write_gguf(tmp_path / f"{arch}.gguf", meta, tensors)
    spec = unimap.inspect(path)
    assert spec.arch.model_type == family and spec.num_layers == config["num_hidden_layers"]
    expected = reference(folder)
    from mlx_lm import load as mlx_load

    logits = np.array(mlx_load(str(folder))[0](mx.array([PROMPT])))
    n = spec.num_layers
    for split in (n, n // 2):
        with pytest.warns(DeprecationWarning):
            model, tokenizer, plan = unimap.load(path, device_map=split, machine=stand_in_machine(),
                                                 max_seq_len=64)
        resident = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
        assert resident == plan.estimate.weight_bytes
        assert np.allclose(np.array(model(mx.array([PROMPT]))), logits, atol=1e-4)  # same numbers
        out = [r.token for r in stream_generate(model, tokenizer, list(PROMPT), max_tokens=6)]
        assert [t for t in out if t is not None] == expected, f"{arch} split at {split}"
        model._unimap.limits.release()
