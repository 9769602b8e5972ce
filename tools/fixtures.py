"""Write sparse-header model fixtures: real config.json files and safetensors headers, no data.

Each family below is a real published config (sizes as on the Hugging Face Hub) and the tensor
names and shapes its checkpoints use; the files are sparse, so an 8B model costs a few kB of
disk. Tests cross-check the names and shapes against mlx-lm's own model classes.

    python tools/fixtures.py OUT_DIR [FAMILY ...]     # writes OUT_DIR/FAMILY/ for each family

Without FAMILY it writes FAMILIES (what the tests use); LARGE_FAMILIES are written by name.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unimap.headers import write_header  # noqa: E402

Shapes = dict[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)


def _attn(p: str, c: dict[str, Any], dt: str, bias: bool = False, qk_norm: bool = False) -> Shapes:
    h, heads = c["hidden_size"], c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads", heads), c.get("head_dim") or h // heads
    out: Shapes = {
        f"{p}.self_attn.q_proj.weight": (dt, (heads * hd, h)),
        f"{p}.self_attn.k_proj.weight": (dt, (kv * hd, h)),
        f"{p}.self_attn.v_proj.weight": (dt, (kv * hd, h)),
        f"{p}.self_attn.o_proj.weight": (dt, (h, heads * hd)),
    }
    if bias:
        for name, width in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
            out[f"{p}.self_attn.{name}_proj.bias"] = (dt, (width,))
    if qk_norm:
        out[f"{p}.self_attn.q_norm.weight"] = (dt, (hd,))
        out[f"{p}.self_attn.k_norm.weight"] = (dt, (hd,))
    return out


def _mlp(p: str, h: int, inter: int, dt: str) -> Shapes:
    return {f"{p}.mlp.gate_proj.weight": (dt, (inter, h)), f"{p}.mlp.up_proj.weight": (dt, (inter, h)),
            f"{p}.mlp.down_proj.weight": (dt, (h, inter))}


def _ends(c: dict[str, Any], dt: str, prefix: str = "model") -> Shapes:
    h, v = c["hidden_size"], c["vocab_size"]
    out: Shapes = {f"{prefix}.embed_tokens.weight": (dt, (v, h)), f"{prefix}.norm.weight": (dt, (h,))}
    if not c.get("tie_word_embeddings", False):
        head = "lm_head.weight" if prefix == "model" else f"{prefix.rsplit('.', 1)[0]}.lm_head.weight"
        out[head] = (dt, (v, h))
    return out


def llama_like(c: dict[str, Any], dt: str = "BF16", bias: bool = False, qk_norm: bool = False,
               prefix: str = "model") -> Shapes:
    """Llama 3, Mistral, Qwen 2.5 (bias), Qwen 3 (qk_norm)."""
    h, out = c["hidden_size"], {}
    for i in range(c["num_hidden_layers"]):
        p = f"{prefix}.layers.{i}"
        out.update(_attn(p, c, dt, bias, qk_norm))
        out.update(_mlp(p, h, c["intermediate_size"], dt))
        out[f"{p}.input_layernorm.weight"] = (dt, (h,))
        out[f"{p}.post_attention_layernorm.weight"] = (dt, (h,))
    out.update(_ends(c, dt, prefix))
    return out


def gemma3_text(c: dict[str, Any], dt: str = "BF16", prefix: str = "model") -> Shapes:
    h, out = c["hidden_size"], {}
    for i in range(c["num_hidden_layers"]):
        p = f"{prefix}.layers.{i}"
        out.update(_attn(p, c, dt, qk_norm=True))
        out.update(_mlp(p, h, c["intermediate_size"], dt))
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            out[f"{p}.{norm}.weight"] = (dt, (h,))
    out.update(_ends({**c, "tie_word_embeddings": True}, dt, prefix))
    return out


def phi3(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    h, heads, inter = c["hidden_size"], c["num_attention_heads"], c["intermediate_size"]
    kv, hd = c.get("num_key_value_heads", heads), h // heads
    out: Shapes = {}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out[f"{p}.self_attn.qkv_proj.weight"] = (dt, ((heads + 2 * kv) * hd, h))
        out[f"{p}.self_attn.o_proj.weight"] = (dt, (h, heads * hd))
        out[f"{p}.mlp.gate_up_proj.weight"] = (dt, (2 * inter, h))
        out[f"{p}.mlp.down_proj.weight"] = (dt, (h, inter))
        out[f"{p}.input_layernorm.weight"] = (dt, (h,))
        out[f"{p}.post_attention_layernorm.weight"] = (dt, (h,))
    out.update(_ends(c, dt))
    return out


def mixtral(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    h, inter, experts = c["hidden_size"], c["intermediate_size"], c["num_local_experts"]
    out: Shapes = {}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out.update(_attn(p, c, dt))
        out[f"{p}.block_sparse_moe.gate.weight"] = (dt, (experts, h))
        for e in range(experts):
            q = f"{p}.block_sparse_moe.experts.{e}"
            out[f"{q}.w1.weight"] = (dt, (inter, h))
            out[f"{q}.w2.weight"] = (dt, (h, inter))
            out[f"{q}.w3.weight"] = (dt, (inter, h))
        out[f"{p}.input_layernorm.weight"] = (dt, (h,))
        out[f"{p}.post_attention_layernorm.weight"] = (dt, (h,))
    out.update(_ends(c, dt))
    return out


def qwen3_moe(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    h, inter, experts = c["hidden_size"], c["moe_intermediate_size"], c["num_experts"]
    out: Shapes = {}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out.update(_attn(p, c, dt, qk_norm=True))
        out[f"{p}.mlp.gate.weight"] = (dt, (experts, h))
        for e in range(experts):
            out.update({k.replace(".mlp.", f".mlp.experts.{e}."): v
                        for k, v in _mlp(p, h, inter, dt).items()})
        out[f"{p}.input_layernorm.weight"] = (dt, (h,))
        out[f"{p}.post_attention_layernorm.weight"] = (dt, (h,))
    out.update(_ends(c, dt))
    return out


def lfm2(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    h, heads = c["hidden_size"], c["num_attention_heads"]
    ff = int(2 * c["block_ff_dim"] / 3)
    ff = int(c.get("block_ffn_dim_multiplier", 1.0) * ff)
    m = c["block_multiple_of"]
    ff = m * ((ff + m - 1) // m)
    out: Shapes = {}
    for i, kind in enumerate(c["layer_types"]):
        p = f"model.layers.{i}"
        if kind == "full_attention":
            hd, kv = h // heads, c["num_key_value_heads"]
            out.update({f"{p}.self_attn.q_proj.weight": (dt, (h, h)),
                        f"{p}.self_attn.k_proj.weight": (dt, (kv * hd, h)),
                        f"{p}.self_attn.v_proj.weight": (dt, (kv * hd, h)),
                        f"{p}.self_attn.out_proj.weight": (dt, (h, h)),
                        f"{p}.self_attn.q_layernorm.weight": (dt, (hd,)),
                        f"{p}.self_attn.k_layernorm.weight": (dt, (hd,))})
        else:
            out.update({f"{p}.conv.conv.weight": (dt, (h, 1, c["conv_L_cache"])),
                        f"{p}.conv.in_proj.weight": (dt, (3 * h, h)),
                        f"{p}.conv.out_proj.weight": (dt, (h, h))})
        out.update({f"{p}.feed_forward.w1.weight": (dt, (ff, h)),
                    f"{p}.feed_forward.w3.weight": (dt, (ff, h)),
                    f"{p}.feed_forward.w2.weight": (dt, (h, ff)),
                    f"{p}.operator_norm.weight": (dt, (h,)), f"{p}.ffn_norm.weight": (dt, (h,))})
    out["model.embed_tokens.weight"] = (dt, (c["vocab_size"], h))
    out["model.embedding_norm.weight"] = (dt, (h,))
    return out


def qwen2_5_vl(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    out = llama_like(c, dt, bias=True)
    v = c["vision_config"]
    vh, vi, ps, tp = v["hidden_size"], v["intermediate_size"], v["patch_size"], v["temporal_patch_size"]
    merged = vh * v["spatial_merge_size"] ** 2
    out["visual.patch_embed.proj.weight"] = (dt, (vh, 3, tp, ps, ps))
    for i in range(v["depth"]):
        p = f"visual.blocks.{i}"
        out.update({f"{p}.norm1.weight": (dt, (vh,)), f"{p}.norm2.weight": (dt, (vh,)),
                    f"{p}.attn.qkv.weight": (dt, (3 * vh, vh)), f"{p}.attn.qkv.bias": (dt, (3 * vh,)),
                    f"{p}.attn.proj.weight": (dt, (vh, vh)), f"{p}.attn.proj.bias": (dt, (vh,))})
        for name, shape in (("gate_proj", (vi, vh)), ("up_proj", (vi, vh)), ("down_proj", (vh, vi))):
            out[f"{p}.mlp.{name}.weight"] = (dt, shape)
            out[f"{p}.mlp.{name}.bias"] = (dt, (shape[0],))
    out.update({"visual.merger.ln_q.weight": (dt, (vh,)),
                "visual.merger.mlp.0.weight": (dt, (merged, merged)),
                "visual.merger.mlp.0.bias": (dt, (merged,)),
                "visual.merger.mlp.2.weight": (dt, (v["out_hidden_size"], merged)),
                "visual.merger.mlp.2.bias": (dt, (v["out_hidden_size"],))})
    return out


def gemma3_vl(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    t, v = c["text_config"], c["vision_config"]
    out = gemma3_text(t, dt, prefix="language_model.model")
    vh, vi, ps = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    q = "vision_tower.vision_model"
    out[f"{q}.embeddings.patch_embedding.weight"] = (dt, (vh, 3, ps, ps))
    out[f"{q}.embeddings.patch_embedding.bias"] = (dt, (vh,))
    out[f"{q}.embeddings.position_embedding.weight"] = (dt, ((v["image_size"] // ps) ** 2, vh))
    for i in range(v["num_hidden_layers"]):
        p = f"{q}.encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{p}.self_attn.{name}.weight"] = (dt, (vh, vh))
            out[f"{p}.self_attn.{name}.bias"] = (dt, (vh,))
        out.update({f"{p}.mlp.fc1.weight": (dt, (vi, vh)), f"{p}.mlp.fc1.bias": (dt, (vi,)),
                    f"{p}.mlp.fc2.weight": (dt, (vh, vi)), f"{p}.mlp.fc2.bias": (dt, (vh,))})
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{p}.{norm}.weight"] = (dt, (vh,))
            out[f"{p}.{norm}.bias"] = (dt, (vh,))
    out[f"{q}.post_layernorm.weight"] = (dt, (vh,))
    out[f"{q}.post_layernorm.bias"] = (dt, (vh,))
    out["multi_modal_projector.mm_input_projection_weight"] = (dt, (vh, t["hidden_size"]))
    out["multi_modal_projector.mm_soft_emb_norm.weight"] = (dt, (vh,))
    return out


def from_model(c: dict[str, Any], dt: str = "BF16") -> Shapes:
    """Any architecture mlx-lm runs: the names and shapes of its own Model's parameters (as an
    MLX checkpoint stores them), read from a lazily built model (nothing allocated)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(c)
    model = model_class(args_class.from_dict(c))
    return {name: (dt, tuple(array.shape)) for name, array in tree_flatten(model.parameters())}


def mlx_checkpoint(c: dict[str, Any]) -> Shapes:
    """The tensors of a published MLX checkpoint with config `c`: mlx-lm's own Model, quantized
    as its config's "quantization" block records (a per-layer entry where the block has one,
    else its default bits and group where mlx_lm.convert quantizes: a module with
    `to_quantized` whose input width divides by the group and that the model's own
    `quant_predicate` does not exclude). Packed weights are uint32; every other tensor, scales
    and biases included, is in the config's dtype."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(c)
    model = model_class(args_class.from_dict(c))
    block = c.get("quantization")
    if block:
        group, bits = block["group_size"], block["bits"]
        own = getattr(model, "quant_predicate", None)

        def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
            if path in block:
                return block[path]  # type: ignore[no-any-return]
            if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group:
                return False
            return own is None or own(path, module) is not False

        nn.quantize(model, group, bits, mode=block.get("mode", "affine"), class_predicate=predicate)
    dtype = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[
        c.get("torch_dtype") or c.get("dtype") or "bfloat16"]
    return {name: ("U32" if a.dtype == mx.uint32 else dtype, tuple(a.shape))
            for name, a in tree_flatten(model.parameters())}


def mlx_quantized(shapes: Shapes, bits: int, group_size: int = 64) -> Shapes:
    """What mlx_lm.convert -q writes: Linear/Embedding weights as packed uint32 plus scales and
    biases in the model dtype; norms untouched."""
    out: Shapes = {}
    for name, (dt, shape) in shapes.items():
        if name.endswith(".weight") and len(shape) == 2 and shape[-1] % group_size == 0:
            stem = name.removesuffix(".weight")
            out[name] = ("U32", (shape[0], shape[1] * bits // 32))
            out[f"{stem}.scales"] = (dt, (shape[0], shape[1] // group_size))
            out[f"{stem}.biases"] = (dt, (shape[0], shape[1] // group_size))
        else:
            out[name] = (dt, shape)
    return out


LLAMA3_8B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5,
             "rope_theta": 500000.0, "max_position_embeddings": 131072,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
LLAMA32_1B = {**LLAMA3_8B, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
              "head_dim": 64, "tie_word_embeddings": True}
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
             "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
             "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
QWEN25_05B = {**QWEN25_7B, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "tie_word_embeddings": True}
QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 40960}
QWEN3_30B_A3B = {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                 "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
                 "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
                 "norm_topk_prob": True, "vocab_size": 151936, "rms_norm_eps": 1e-6,
                 "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                 "max_position_embeddings": 40960}
# Qwen/Qwen3-235B-A22B: 94 layers of 128 experts, 36,945 tensors in 118 shards
QWEN3_235B_A22B = {**QWEN3_30B_A3B, "hidden_size": 4096, "intermediate_size": 12288,
                   "moe_intermediate_size": 1536, "num_hidden_layers": 94,
                   "num_attention_heads": 64, "num_key_value_heads": 4}
GEMMA3_1B = {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
             "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
             "head_dim": 256, "vocab_size": 262144, "sliding_window": 512,
             "sliding_window_pattern": 6, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
             "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256,
             "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
MISTRAL_7B = {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
              "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "max_position_embeddings": 32768}
PHI3_MINI = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "vocab_size": 32064, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
             "max_position_embeddings": 4096, "original_max_position_embeddings": 4096}
MIXTRAL_8X7B = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
                "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "tie_word_embeddings": False,
                "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
LFM2_1_2B = {"model_type": "lfm2", "hidden_size": 2048, "num_hidden_layers": 16,
             "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536,
             "block_dim": 2048, "block_ff_dim": 12288, "block_multiple_of": 256,
             "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
             "conv_L_cache": 3, "conv_bias": False, "norm_eps": 1e-5,
             "max_position_embeddings": 128000, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
             "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention",
                             "conv", "conv", "full_attention", "conv", "full_attention", "conv",
                             "full_attention", "conv", "full_attention", "conv"]}
QWEN25_VL_7B = {**QWEN25_7B, "model_type": "qwen2_5_vl", "image_token_id": 151655,
                "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                                  "num_heads": 16, "patch_size": 14, "spatial_merge_size": 2,
                                  "temporal_patch_size": 2, "out_hidden_size": 3584,
                                  "window_size": 112, "in_chans": 3}}
GEMMA3_4B_VL = {"model_type": "gemma3", "mm_tokens_per_image": 256, "torch_dtype": "bfloat16",
                "text_config": {"model_type": "gemma3_text", "hidden_size": 2560,
                                "intermediate_size": 10240, "num_hidden_layers": 34,
                                "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                                "vocab_size": 262208, "sliding_window": 1024,
                                "sliding_window_pattern": 6},
                "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                                  "intermediate_size": 4304, "num_hidden_layers": 27,
                                  "num_attention_heads": 16, "image_size": 896, "patch_size": 14}}

Family = tuple[dict[str, Any], Callable[[dict[str, Any]], Shapes], int]  # config, tensors, shards
FAMILIES: dict[str, Family] = {
    "llama3-8b": (LLAMA3_8B, llama_like, 4),
    "llama3.2-1b": (LLAMA32_1B, llama_like, 1),
    "qwen2.5-7b": (QWEN25_7B, lambda c: llama_like(c, bias=True), 4),
    "qwen2.5-0.5b": (QWEN25_05B, lambda c: llama_like(c, bias=True), 1),
    "qwen3-8b": (QWEN3_8B, lambda c: llama_like(c, qk_norm=True), 5),
    "qwen3-30b-a3b": (QWEN3_30B_A3B, qwen3_moe, 16),
    "gemma3-1b": (GEMMA3_1B, gemma3_text, 1),
    "mistral-7b": (MISTRAL_7B, llama_like, 3),
    "phi3-mini": (PHI3_MINI, phi3, 2),
    "mixtral-8x7b": (MIXTRAL_8X7B, mixtral, 19),
    "lfm2-1.2b": (LFM2_1_2B, lfm2, 1),
    "qwen2.5-vl-7b": (QWEN25_VL_7B, qwen2_5_vl, 5),
    "gemma3-4b-vl": (GEMMA3_4B_VL, gemma3_vl, 2),
    "llama3.2-1b-mlx-4bit": ({**LLAMA32_1B, "quantization": {"group_size": 64, "bits": 4}},
                             lambda c: mlx_quantized(llama_like(c), 4), 1),
}
# Too many tensors to write for every test session; tools/bench_plan.py plans them.
LARGE_FAMILIES: dict[str, Family] = {
    "qwen3-235b-a22b": (QWEN3_235B_A22B, qwen3_moe, 118),
}


def write_model(folder: Path, config: dict[str, Any], shapes: Shapes, shards: int = 1) -> Path:
    """Write config.json and `shards` sparse safetensors files (with an index when sharded)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    names = list(shapes)
    per_shard = math.ceil(len(names) / shards)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        chunk = names[s * per_shard:(s + 1) * per_shard]
        file = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_header(folder / file, {n: shapes[n] for n in chunk}, {"format": "pt"})
        weight_map.update({n: file for n in chunk})
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_family(out: Path, family: str) -> Path:
    config, make, shards = FAMILIES[family] if family in FAMILIES else LARGE_FAMILIES[family]
    return write_model(out / family, config, make(config), shards)


def main(argv: list[str]) -> None:
    if not argv:
        print(__doc__)
        raise SystemExit(2)
    out = Path(argv[0])
    for family in argv[1:] or FAMILIES:
        print(write_family(out, family))


if __name__ == "__main__":
    main(sys.argv[1:])
