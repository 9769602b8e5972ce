"""Tiny random-weight mlx-lm models saved as real checkpoints: config.json, model.safetensors
(written by MLX) and a small word-level tokenizer, so mlx-lm's own loader reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "max_position_embeddings": 1024,
        "rope_theta": 10000.0}

CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **TINY},
    "mistral": {"model_type": "mistral", **TINY, "rope_theta": 1e6},
    "llama-wide": {"model_type": "llama", **TINY, "hidden_size": 256, "intermediate_size": 1024},
    "llama-hd64": {"model_type": "llama", **TINY, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "head_dim": 64},
    "qwen2": {"model_type": "qwen2", **TINY, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", **TINY, "head_dim": 16},
    "gemma3": {"model_type": "gemma3_text", **TINY, "head_dim": 16, "sliding_window": 8,
               "sliding_window_pattern": 2, "query_pre_attn_scalar": 16},
    "phi3": {"model_type": "phi3", **TINY, "num_key_value_heads": 4},
    "mixtral": {"model_type": "mixtral", **TINY, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"model_type": "qwen3_moe", **TINY, "head_dim": 16, "num_experts": 4,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
                  "mlp_only_layers": [], "norm_topk_prob": True},
}


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 1024}))


def write_tiny_model(folder: Path, family: str, seed: int = 0, dtype: str = "float32") -> Path:
    return write_random_model(folder, CONFIGS[family], seed, dtype)


def write_random_model(folder: Path, config: dict[str, Any], seed: int = 0,
                       dtype: str = "float32", bits: int | None = None) -> Path:
    """Any mlx-lm config with random weights, saved as a checkpoint mlx-lm loads; with `bits`,
    MLX-quantized (group 64, the model's own predicate) as mlx-lm's convert writes it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    from unimap.runtime import quantize_in_place

    config = {**config, "torch_dtype": dtype}
    if bits is not None:
        config["quantization"] = {"group_size": 64, "bits": bits}
    mx.random.seed(seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(getattr(mx, dtype))
    if bits is not None:
        quantize_in_place(model, bits)
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer(folder, min(_vocab_size(model), 200))
    return folder


def _vocab_size(model: Any) -> int:
    """Rows of the model's token embedding (wrapper families keep the vocabulary in text_config)."""
    import mlx.nn as nn

    return max(m.weight.shape[0] for _, m in model.named_modules()
               if isinstance(m, nn.Embedding | nn.QuantizedEmbedding))


def stand_in_machine(name: str = "h100-80gb") -> Any:
    """A preset GPU machine as MLX's CPU build runs it: its GPU's layers run on a CPU stream with
    MLX's CPU kernels, so the plan prices them that way (unfused attention, CPU-calibrated
    arrays) and the measured peaks of tests and benchmarks compare like with like."""
    from dataclasses import replace

    from unimap.machines import preset_machine
    from unimap.settings import Reserves

    machine = preset_machine(name, {}, Reserves())
    return replace(machine, backend="cpu", devices=tuple(
        replace(d, backend="cpu") if d.kind == "gpu" else d for d in machine.devices))


class FamilyCheckpoints(dict[str, Path]):
    """A random checkpoint per mlx-lm family (tests/tiny_families.py's tiny config), written
    into `root` when a test first asks for it."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        from tiny_families import tiny_config

        self[family] = write_random_model(self.root / family, tiny_config(family))
        return self[family]


def mlx_lm_tokens(path: Path, prompt: list[int], steps: int = 6) -> list[int]:
    """Plain mlx-lm's greedy tokens for `prompt` (its own loader and generate_step)."""
    import mlx.core as mx
    from mlx_lm import load as mlx_load
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, _ = mlx_load(str(path))
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=steps,
                                             sampler=make_sampler(0.0))]
