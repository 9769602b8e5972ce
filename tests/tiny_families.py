"""Tiny config.json dicts for every architecture the installed mlx-lm ships, so tests and tools
can build real random-weight instances through mlx-lm's own Model classes (no downloads).

`tiny_config(model_type)` fills each field a family's ModelArgs requires from one table of small
values (4 layers, 64 wide, 4 heads, 4 experts with top-2), then applies that family's own
overrides: the few fields whose meaning differs (layer patterns, rope settings, nested configs).
Wrapper families (the multimodal ones, whose ModelArgs holds the language model's fields under
"text_config") get a tiny text config built the same way, from the family or args class that
TEXT_CONFIGS names. Families that cannot be built here are listed in UNBUILDABLE with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil
from typing import Any

LAYERS = 4
# One small value per common ModelArgs field name.
BASE: dict[str, Any] = {
    "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": LAYERS,
    "intermediate_size": 128, "rms_norm_eps": 1e-5, "num_key_value_heads": 2,
    "max_position_embeddings": 1024, "rope_theta": 10000.0, "head_dim": 16,
    "num_experts_per_tok": 2, "moe_intermediate_size": 32, "attention_bias": False,
    "num_experts": 4, "tie_word_embeddings": False, "norm_topk_prob": True,
    "routed_scaling_factor": 1.0, "first_k_dense_replace": 1, "n_routed_experts": 4,
    "n_shared_experts": 1, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
    "v_head_dim": 16, "layer_norm_epsilon": 1e-5, "partial_rotary_factor": 0.5,
    "n_group": 1, "topk_group": 1, "use_bias": False, "q_lora_rank": 32, "num_layers": LAYERS,
    "mlp_bias": False, "num_shared_experts": 1, "norm_eps": 1e-5, "mlp_only_layers": [],
    "decoder_sparse_step": 1, "use_qk_norm": True, "n_embd": 64, "n_head": 4, "n_layer": LAYERS,
    "layer_norm_eps": 1e-5, "logits_scaling": 1.0, "attention_multiplier": 1.0,
    "embedding_multiplier": 1.0, "residual_multiplier": 1.0, "moe_topk": 2, "conv_kernel": 4,
    "use_conv_bias": True, "num_heads": 4, "num_kv_heads": 2, "sliding_window": 8,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "moe_layer_freq": 1,
    "num_local_experts": 4, "conv_bias": True, "conv_L_cache": 3, "ffn_hidden_size": 128,
    "expert_ffn_hidden_size": 32, "zero_expert_num": 0, "state_size": 16, "time_step_rank": 8,
    "n_groups": 1, "dim_model_base": 64, "scale_depth": 1.4, "scale_emb": 1.0,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
    "shared_expert_intermediate_size": 64, "hidden_dim": 128, "n_positions": 1024,
    "n_ctx": 1024, "n_inner": 128, "rotary_emb_base": 10000.0, "rotary_pct": 0.25,
    "d_model": 64, "n_layers": LAYERS, "n_heads": 4, "n_kv_heads": 2, "hidden_act": "silu",
    "moe_num_experts": 4, "num_shared_expert": 1, "qk_norm": True, "post_norm": False,
    "layer_group_size": 2, "group_norm_size": 1, "mamba_d_conv": 4, "mamba_d_state": 16,
    "mamba_expand": 2, "model_max_length": 1024, "index_head_dim": 16, "index_n_heads": 2,
    "index_topk": 8, "rotary_dim": 8, "ssm_state_size": 16, "mamba_num_heads": 4,
    "mamba_head_dim": 32, "mamba_proj_bias": False, "time_step_limit": [0.0, float("inf")],
    "conv_window": 4, "block_dim": 64, "block_multiple_of": 32,
    "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True, "use_expert_bias": False,
    "num_dense_layers": 1, "block_size": 4, "intermediate_size_mlp": 128,
    "use_mixed_mlp_moe": False, "use_cla": False, "cla_share_factor": 1,
    "attn_layer_offset": 1, "attn_layer_period": 2, "expert_layer_offset": 1,
    "expert_layer_period": 2, "num_kv_reuse_layers": 0, "shared_intermediate_size": 64,
    "linear_allow_neg_eigval": False, "attention_method": "sdpa", "zero_expert_type": "identity",
    "is_moe_layer": [False, True, True, True], "sliding_window_layers": [0, 2],
    "no_rope_layers": [1, 1, 1, 0], "sliding_window_pattern": 2, "layernorm_epsilon": 1e-5,
    "sliding_window_size": 8, "swa_rope_theta": 10000.0, "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 2, "swa_head_dim": 16, "swa_v_head_dim": 16,
    "add_swa_attention_sink_bias": False, "add_full_attention_sink_bias": False,
    "mla_scale_q_lora": False, "mla_scale_kv_lora": False, "rope_scaling": None,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2),
}

# Fields set even where the family has a default: the sizes (defaults are real-model sized).
SIZES = {k for k, v in BASE.items() if isinstance(v, int) and not isinstance(v, bool)} - {
    "first_k_dense_replace", "moe_layer_freq", "decoder_sparse_step", "sliding_window_pattern",
    "num_dense_layers", "attn_layer_offset", "attn_layer_period", "expert_layer_offset",
    "expert_layer_period", "num_kv_reuse_layers", "cla_share_factor", "layer_group_size",
    "group_norm_size", "n_group", "topk_group", "zero_expert_num", "n_groups"}

# Small rope settings shared by several families (yarn over a 256-token original context).
_YARN: dict[str, Any] = {
    "rope_type": "yarn", "type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
    "original_max_position_embeddings": 256, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
_MISTRAL_YARN: dict[str, Any] = {**_YARN, "llama_4_scaling_beta": 0.1}
_LLAMA3_ROPE: dict[str, Any] = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
_SWA_FULL_ROPE: dict[str, Any] = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
}
_QWEN35_ROPE: dict[str, Any] = {
    "type": "default", "mrope_section": [1, 1, 0], "rope_theta": 10000000.0,
    "partial_rotary_factor": 0.25,
}
_SWA3_FULL = ["sliding_attention"] * (LAYERS - 1) + ["full_attention"]

# Per family: the fields whose shape the table cannot guess.
OVERRIDES: dict[str, dict[str, Any]] = {
    "afm7": {"hidden_dim": 64, "num_kv_reuse_layers": 2},
    "baichuan_m1": {"conv_window": 2, "sliding_window_layers": [0, 2],
                    "num_swa_attention_heads": 4, "num_swa_key_value_heads": 4},
    "bailing_moe_v3": {"n_group": 2, "topk_group": 1, "moe_shared_expert_intermediate_size": 32},
    "dbrx": {"ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
             "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0}},
    "deepseek_v2": {"rope_scaling": _YARN, "topk_method": "group_limited_greedy", "n_group": 2,
                    "topk_group": 1},
    "deepseek_v41": {"o_groups": 2, "o_lora_rank": 16, "compress_ratios": [0, 2, 1, 1],
                     "kv_source_layer_ids": [1, 2], "index_source_layer_ids": [1, 2, 3],
                     "candidate_source_layer_id": 2, "candidate_topk_blocks": 2,
                     "candidate_block_size": 2, "index_topk": 4},
    "exaone4": {"sliding_window_pattern": "LLLG", "rope_scaling": None,
                "layer_types": _SWA3_FULL},
    "falcon_h1": {"mamba_d_ssm": 128, "mamba_n_heads": 8, "mamba_d_head": 16,
                  "mamba_chunk_size": 16},
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {"sliding_window_pattern": 2, "query_pre_attn_scalar": 16},
    "gemma3n": {"text_config": {
        "model_type": "gemma3n_text", "num_kv_shared_layers": 2, "vocab_size_per_layer_input": 128,
        "sliding_window": 8, "rope_local_base_freq": 10000.0, "final_logit_softcapping": 30.0,
        "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2),
        "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0], "hidden_size_per_layer_input": 16,
        "altup_num_inputs": 4, "altup_coef_clip": 120.0, "altup_correct_scale": True,
        "altup_active_idx": 0, "laurel_rank": 16}},
    # gemma4: the MoE variant (26B-A4B); gemma4_text: the per-layer-input, kv-sharing one (E2B).
    "gemma4": {"text_config": {
        "global_head_dim": 32, "num_kv_shared_layers": 0, "hidden_size_per_layer_input": 0,
        "attention_k_eq_v": True, "num_global_key_value_heads": 1, "use_double_wide_mlp": False,
        "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
        "moe_intermediate_size": 32, "sliding_window_pattern": 2,
        "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2)}},
    "gemma4_text": {"global_head_dim": 32, "num_kv_shared_layers": 2,
                    "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": 128,
                    "sliding_window_pattern": 2},
    "granitemoehybrid": {"layer_types": ["mamba", "attention", "mamba", "mamba"],
                         "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_expand": 2,
                         "mamba_proj_bias": False, "mamba_conv_bias": True,
                         "position_embedding_type": "nope"},
    "hunyuan": {"rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"},
                "use_mixed_mlp_moe": True, "use_cla": True, "cla_share_factor": 2,
                "moe_intermediate_size": 32},
    "iquestloopcoder": {"loop_window_size": 8},
    "kimi_k25": {"text_config": {"model_type": "kimi_k2"}},
    "kimi_k3": {"text_config": {
        "model_type": "kimi_k3", "num_experts": 4, "num_experts_per_token": 2,
        "num_shared_experts": 1, "moe_intermediate_size": 32, "first_k_dense_replace": 1,
        "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
        "v_head_dim": 16, "mla_use_output_gate": True, "attn_res_block_size": 2,
        "routed_expert_hidden_size": 32, "latent_moe_use_norm": True,
        "linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4], "num_heads": 4,
                               "head_dim": 16, "short_conv_kernel_size": 4}}},
    "kimi_linear": {"mla_use_nope": True, "num_experts_per_token": 2, "num_shared_experts": 1,
                    "first_k_dense_replace": 1, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                    "v_head_dim": 16,
                    "linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4],
                                           "num_heads": 4, "head_dim": 16,
                                           "short_conv_kernel_size": 4}},
    "kimi_vl": {"text_config": {"model_type": "deepseek_v3"}},
    "laguna": {"layer_types": ["full_attention"] + ["sliding_attention"] * (LAYERS - 1),
               "num_attention_heads_per_layer": [4] + [8] * (LAYERS - 1),
               "rope_parameters": {
                   "full_attention": {**_YARN, "partial_rotary_factor": 0.5},
                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    "lfm2": {"layer_types": ["conv", "conv", "full_attention", "conv"], "block_ff_dim": 128},
    "lfm2_moe": {"layer_types": ["conv", "conv", "full_attention", "conv"]},
    "lfm2-vl": {"text_config": {}},
    "llama4": {"text_config": {
        "model_type": "llama4_text", "num_experts_per_tok": 1, "attention_chunk_size": 8,
        "interleave_moe_layer_step": 1, "intermediate_size": 32, "intermediate_size_mlp": 128,
        "rope_scaling": _LLAMA3_ROPE, "rope_theta": 500000.0}},
    "longcat_flash": {"mla_scale_q_lora": True, "mla_scale_kv_lora": True, "zero_expert_num": 2},
    "longcat_flash_ngram": {"mla_scale_q_lora": True, "mla_scale_kv_lora": True,
                            "zero_expert_num": 2, "ngram_vocab_size_ratio": 4,
                            "emb_neighbor_num": 3, "emb_split_num": 2},
    # Mamba-2's SSM heads: num_heads * head_dim = expand * hidden_size (transformers checks it).
    "mamba2": {"num_heads": 8, "expand": 2},
    "mellum": {"layer_types": _SWA3_FULL, "rope_parameters": _SWA_FULL_ROPE},
    "mimo_v2_flash": {"hybrid_layer_pattern": [0, 1, 1, 1], "moe_layer_freq": [0, 1, 1, 1],
                      "n_group": 1, "topk_group": 1, "partial_rotary_factor": 0.5,
                      "add_swa_attention_sink_bias": True},
    "minicpm3": {"rope_scaling": {"type": "longrope", "original_max_position_embeddings": 256,
                                  "short_factor": [1.0] * 4,
                                  "long_factor": [1.0, 1.5, 2.0, 2.5]}},
    "minimax_m3_vl": {"text_config": {
        "model_type": "minimax_m3", "intermediate_size": 32, "dense_intermediate_size": 128,
        "shared_intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
        "rotary_dim": 8, "moe_layer_freq": [0, 1, 1, 1],
        "sparse_attention_config": {"sparse_num_index_heads": 2, "sparse_index_dim": 16,
                                    "sparse_block_size": 4, "sparse_topk_blocks": 2,
                                    "sparse_local_block": 1,
                                    "sparse_attention_freq": [0, 1, 1, 1]}}},
    "ministral3": {"rope_parameters": _MISTRAL_YARN},
    "mistral3": {"text_config": {}},
    "mistral4": {"rope_parameters": _MISTRAL_YARN, "first_k_dense_replace": 0},
    "muse_spark": {"text_config": {
        "post_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0},
        "layer_rope_theta": [10000.0] * (LAYERS - 1) + [0.0], "layer_types": _SWA3_FULL,
        "final_logit_softcapping": 30.0, "output_multiplier": 1.0, "num_local_experts": 4,
        "num_experts_per_tok": 2, "num_shared_experts": 0, "moe_hidden_size": 32,
        "moe_intermediate_size": 32, "mlp_layer_types": ["sparse"] * LAYERS}},
    "nemotron-nas": {"block_configs": [
        {"attention": {"n_heads_in_group": 2}, "ffn": {"ffn_mult": 2.0}},
        {"attention": {"no_op": True}, "ffn": {"ffn_mult": 1.0}},
        {"attention": {"replace_with_linear": True}, "ffn": {"replace_with_linear": True}},
        {"attention": {"n_heads_in_group": 4}, "ffn": {"no_op": True}}]},
    "nemotron_h": {"hybrid_override_pattern": ["M", "E", "*", "E"], "n_routed_experts": 4,
                   "moe_shared_expert_intermediate_size": 64, "mamba_head_dim": 16,
                   "mamba_num_heads": 8, "n_group": 1, "topk_group": 1,
                   "num_experts_per_tok": 2, "norm_topk_prob": True,
                   "routed_scaling_factor": 1.0},
    "openelm": {"num_transformer_layers": LAYERS, "model_dim": 64, "ffn_dim_divisor": 32,
                "num_query_heads": [4, 4, 4, 4], "num_kv_heads": [2, 2, 2, 2],
                "ffn_multipliers": [0.5, 1.0, 1.5, 2.0]},
    # phi3small writes -inf into logits at fixed token ids up to 100351: a smaller vocab makes that
    # scatter write out of bounds (heap corruption, random crashes), so it keeps its real vocab.
    "phi3small": {"dense_attention_every_n_layers": 2, "ff_intermediate_size": 128,
                  "gegelu_limit": 20.0, "vocab_size": 100352},
    "phixtral": {"model_dim": 64, "num_vocab": 128},
    # its default 0.4 of a head makes rotary dims that are odd at some widths (MLX's rope refuses)
    "phi": {"partial_rotary_factor": 0.5},
    "pixtral": {"text_config": {"model_type": "mistral"}},
    "plamo": {"n_shared_head": 2},
    "plamo2": {"hidden_size_per_head": 16, "mamba_num_heads": 8, "attention_window_size": 8,
               "intermediate_size": 128},
    "plamo3": {"sliding_window_pattern": 4},
    "prism_hadamard_qwen35": {
        "schema_version": 1, "tensor_namespace": "mlx-lm-text",
        "quantization": {"bits": 2, "group_size": 128, "mode": "affine"},
        "modules": [{"path": f"model.layers.{i}.mlp.down_proj", "embedding": False,
                     "dtype": "float16", "block": 512} for i in range(LAYERS)],
        "text_config": {"model_type": "qwen3_5_text", "intermediate_size": 512, "num_experts": 0,
                        "num_experts_per_tok": 0, "rope_parameters": _QWEN35_ROPE}},
    "qwen": {"kv_channels": 16},
    "qwen2_vl": {"text_config": {}},
    "qwen3": {"rope_theta": 1000000.0},
    "qwen3_5": {"text_config": {"model_type": "qwen3_5_text", "num_experts": 0,
                                "num_experts_per_tok": 0, "rope_parameters": _QWEN35_ROPE}},
    "qwen3_5_moe": {"text_config": {"model_type": "qwen3_5_moe_text",
                                    "rope_parameters": _QWEN35_ROPE}},
    "qwen3_vl": {"text_config": {}},
    "qwen3_vl_moe": {"text_config": {}},
    "recurrent_gemma": {"conv1d_width": 4, "logits_soft_cap": 30.0, "attention_window_size": 8,
                        "block_types": ["recurrent", "recurrent", "attention"]},
    "rwkv7": {"a_low_rank_dim": 8, "v_low_rank_dim": 8, "gate_low_rank_dim": 16,
              "decay_low_rank_dim": 8},
    "spark2_5": {"layer_types": _SWA3_FULL, "hidden_act": "gelu",
                 "rope_parameters": {
                     "sliding_attention": {"rope_theta": 10000.0, "partial_rotary_factor": 1.0},
                     "full_attention": {"rope_theta": 1000000.0, "partial_rotary_factor": 0.5}}},
    "stablelm": {"use_qkv_bias": True},
    "step3p5": {"num_attention_groups": 2, "moe_num_experts": 4, "moe_top_k": 2,
                "moe_intermediate_size": 32, "share_expert_dim": 64, "sliding_window": 8,
                "layer_types": ["full_attention"] + ["sliding_attention"] * (LAYERS - 1),
                "attention_other_setting": {"num_attention_heads": 8, "num_attention_groups": 2},
                "partial_rotary_factors": [0.5, 1.0, 1.0, 1.0], "rope_scaling": _YARN,
                "yarn_only_types": ["full_attention"], "moe_layers_enum": "1,2,3",
                "swiglu_limits": [0.0, 0.0, 7.0, 7.0],
                "swiglu_limits_shared": [0.0, 0.0, 0.0, 16.0]},
}

# Wrapper families whose language model is configured under "text_config": the tiny config of the
# named family, or of the named "module.Class" args class, plus OVERRIDES[family]["text_config"].
TEXT_CONFIGS: dict[str, str] = {
    "gemma3": "gemma3_text", "gemma3n": "gemma3n.TextConfig", "gemma4": "gemma4_text",
    "kimi_k25": "deepseek_v3", "kimi_k3": "kimi_k3.TextArgs", "kimi_vl": "kimi_vl.TextArgs",
    "lfm2-vl": "lfm2", "llama4": "llama4.TextArgs", "minimax_m3_vl": "minimax_m3_vl.TextArgs",
    "mistral3": "ministral3", "muse_spark": "muse_spark.TextArgs", "pixtral": "llama",
    "prism_hadamard_qwen35": "qwen3_5.TextModelArgs", "qwen2_vl": "qwen2",
    "qwen3_5": "qwen3_5.TextModelArgs", "qwen3_5_moe": "qwen3_5.TextModelArgs", "qwen3_vl": "qwen3",
    "qwen3_vl_moe": "qwen3_moe",
}

UNBUILDABLE: dict[str, str] = {
    "bitnet": "its BitLinear layers run a custom Metal kernel; MLX's CPU build has no Metal back-end",
    "olmo": "mlx-lm's module needs the ai2-olmo package (hf_olmo) and exits on import without it",
    "muse_spark": "its attention, norms and expert routing run mlx-lm's Metal kernels, with no fallback",
}


def families() -> list[str]:
    """Every mlx-lm module with a Model and a ModelArgs class (by module name)."""
    import mlx_lm.models as models

    found = []
    for info in pkgutil.iter_modules(models.__path__):
        try:
            module = importlib.import_module(f"mlx_lm.models.{info.name}")
        except (ImportError, SystemExit):
            continue
        if hasattr(module, "Model") and hasattr(module, "ModelArgs"):
            found.append(info.name)
    return sorted(found)


def _fill(args_class: type) -> dict[str, Any]:
    """The BASE value of each field of `args_class` that is required or is a size."""
    config: dict[str, Any] = {}
    for f in dataclasses.fields(args_class):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in BASE and (required or f.name in SIZES):
            config[f.name] = copy.deepcopy(BASE[f.name])
    return config


def tiny_config(family: str) -> dict[str, Any]:
    """A small config.json dict for `family` (an mlx-lm module name)."""
    module = importlib.import_module(f"mlx_lm.models.{family}")
    config: dict[str, Any] = {"model_type": family, **_fill(module.ModelArgs)}
    overrides = copy.deepcopy(OVERRIDES.get(family, {}))
    text_overrides = overrides.pop("text_config", {})
    config.update(overrides)
    if family in TEXT_CONFIGS:
        source = TEXT_CONFIGS[family]
        if "." in source:
            module_name, class_name = source.split(".")
            args_class = getattr(importlib.import_module(f"mlx_lm.models.{module_name}"), class_name)
            text = _fill(args_class)
        else:
            text = tiny_config(source)
        config["text_config"] = {**text, **text_overrides}
    return config


def deep_config(family: str, factor: int = 2) -> dict[str, Any]:
    """`tiny_config(family)` with `factor` times the layers (every per-layer list and pattern
    repeated). A 4-layer twin of a hybrid family often has its one attention layer last, whose
    prefill attention MLX never evaluates (only its cache is needed): a deeper twin measures
    what a real model's attention layers hold."""
    return _deepen(tiny_config(family), factor)


# Widths a family's fields name (each scaled by wide_config), and its expert counts and top-k.
WIDTHS = frozenset({
    "hidden_size", "intermediate_size", "head_dim", "moe_intermediate_size", "kv_lora_rank",
    "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "n_embd",
    "ffn_hidden_size", "expert_ffn_hidden_size", "linear_key_head_dim", "linear_value_head_dim",
    "shared_expert_intermediate_size", "hidden_dim", "n_inner", "d_model", "dim_model_base",
    "block_dim", "intermediate_size_mlp", "shared_intermediate_size", "swa_head_dim",
    "swa_v_head_dim", "mamba_head_dim", "index_head_dim", "rotary_dim",
    "moe_shared_expert_intermediate_size", "mamba_d_head", "mamba_d_ssm", "model_dim",
    "global_head_dim", "hidden_size_per_head", "kv_channels", "block_ff_dim",
    "dense_intermediate_size", "moe_hidden_size", "share_expert_dim", "routed_expert_hidden_size",
    "ff_intermediate_size", "hidden_size_per_layer_input", "laurel_rank", "o_lora_rank",
    # an SSM's state per channel: with the head dims, a state grows factor^2 as real ones do
    "state_size", "ssm_state_size", "mamba_d_state", "time_step_rank"})
EXPERT_COUNTS = frozenset({"num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts"})
TOP_K = frozenset({"num_experts_per_tok", "moe_topk", "moe_top_k", "num_experts_per_token",
                   "top_k_experts"})
# The heads of a recurrent state (linear attention, SSM scans), set apart from attention heads.
STATE_HEADS = frozenset({"linear_num_value_heads", "linear_num_key_heads", "mamba_num_heads",
                         "mamba_n_heads"})


# An SSM's inner width that its config sets apart from its heads x head dim, which must agree
# with them: scaled with the state heads too, as a width (Falcon-H1's mamba_d_ssm) or as a
# multiple of the hidden width (Granite 4's mamba_expand).
STATE_INNER = frozenset({"mamba_d_ssm"})
STATE_EXPAND = frozenset({"mamba_expand"})


# An SSM's state size per head (the width of SSD's B and C inputs), which state_config scales alone.
STATE_SIZES = frozenset({"state_size", "ssm_state_size", "mamba_d_state"})


def state_config(family: str, factor: int = 4) -> dict[str, Any]:
    """`tiny_config(family)` with only its SSM state size `factor` times larger: in every twin
    an SSD state's size is its head dim, where published ones keep 2 to 4 times it (Nemotron-H
    56B: 64 x 256), so a fit to the others cannot tell the arrays that grow with one from those
    that grow with the other."""
    return scale_fields(tiny_config(family), STATE_SIZES, factor)


def wide_config(family: str, factor: int = 4, experts: int = 4, state_heads: int = 1) -> dict[str, Any]:
    """`tiny_config(family)` with every width `factor` times larger (heads keep their number, so
    head dims and SSM state sizes grow too: a state of heads x dim x dim grows factor^2),
    `experts` times the experts and twice the experts per token (when that many are left to
    route to). `state_heads` times the heads of a recurrent state: real models keep states
    hundreds of times their hidden width (Qwen3-Next: 32 x 128 x 128 against 2048), where what a
    scan holds per token, not the attention layers, sets the peak. What a family's arrays hold
    beyond the priced ones must scale with the model as these twins show, not only fit the tiny
    one. Families whose linear attention runs on the attention heads (Ling's, Kimi's
    linear_attn_config) have those multiplied."""
    config = tiny_config(family)
    named = state_heads > 1 and _names(config, STATE_HEADS)
    keys = STATE_HEADS if named or state_heads == 1 else STATE_HEADS | {"num_attention_heads"}
    return _widen(config, factor, experts, state_heads, keys)


# Query heads, and the head dims whose presence says a config's heads do not set its head dim.
QUERY_HEADS = frozenset({"num_attention_heads", "n_head", "n_heads", "num_heads",
                         "swa_num_attention_heads", "num_swa_attention_heads", "num_query_heads"})
HEAD_DIMS = frozenset({"head_dim", "swa_head_dim", "kv_channels", "hidden_size_per_head",
                       "qk_nope_head_dim", "global_head_dim"})


def heads_config(family: str, factor: int = 4) -> dict[str, Any]:
    """`tiny_config(family)` with `factor` times the query heads where the config sets its head
    dims (the key/value heads as they were): queries `factor` times the hidden width, where every
    other twin keeps them at it. Real models' are 1 to 3.4 times it (Qwen3-0.6B 2, GLM-4.5 2.4,
    DeepSeek V3 3.4), and a fit to twins that never move the two apart can price one with the
    other's arrays (Step-3.5's twin with 4 times the heads at 0.949 of its peak)."""
    return _more_heads(tiny_config(family), factor)


def _more_heads(config: dict[str, Any], factor: int, inherited: bool = False) -> dict[str, Any]:
    own = inherited or any(k in HEAD_DIMS for k in config)  # a sub-config takes its parent's dims
    return {k: _more_heads(v, factor, own) if isinstance(v, dict)
            else v * factor if own and k in QUERY_HEADS and isinstance(v, int) and not isinstance(v, bool)
            else v for k, v in config.items()}


# Every per-head dim a config can set: an attention head's (and MLA's parts of one).
ALL_HEAD_DIMS = HEAD_DIMS | {"v_head_dim", "qk_rope_head_dim", "swa_v_head_dim"}


def head_dim_config(family: str, factor: int = 4) -> dict[str, Any]:
    """`tiny_config(family)` with `factor` times the head dims the config sets (query and
    key/value widths `factor` times the hidden width, the heads as they were): where
    heads_config moves the queries alone, this moves the keys and values with them, and what
    grows with a head's width rather than with the heads (Gemma 3's twin with head dims 4 times
    its hidden width / heads at 0.968 of its peak)."""
    return scale_fields(tiny_config(family), ALL_HEAD_DIMS, factor)


# The MLP (and expert) widths among WIDTHS: mix_config scales these alone.
MLP_WIDTHS = frozenset({
    "intermediate_size", "moe_intermediate_size", "ffn_hidden_size", "expert_ffn_hidden_size",
    "shared_expert_intermediate_size", "n_inner", "intermediate_size_mlp", "shared_intermediate_size",
    "moe_shared_expert_intermediate_size", "block_ff_dim", "dense_intermediate_size",
    "moe_hidden_size", "share_expert_dim", "routed_expert_hidden_size", "ff_intermediate_size"})


def mix_config(family: str, factor: int = 4) -> dict[str, Any]:
    """`tiny_config(family)` with only the MLP and expert widths `factor` times larger: the
    arrays of a layer in other proportions than the tiny twin's (real models' MLPs are 2.7 to 8
    times their hidden width; the tiny twin's 2), so a fit to both cannot lean on one kind of
    array to cover another."""
    return scale_fields(tiny_config(family), MLP_WIDTHS, factor)


def scale_fields(config: dict[str, Any], keys: frozenset[str], factor: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = scale_fields(value, keys, factor)
        elif key in keys and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[key] = value * factor
        else:
            out[key] = value
    return out


def _names(config: dict[str, Any], keys: frozenset[str]) -> bool:
    return any(k in keys or (isinstance(v, dict) and _names(v, keys)) for k, v in config.items())


def _widen(config: dict[str, Any], factor: int, experts: int, heads: int = 1,
           head_keys: frozenset[str] = STATE_HEADS, parent: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = _widen(value, factor, experts, heads, head_keys, key)
        elif key == "num_heads" and parent == "linear_attn_config":  # Kimi's linear attention
            out[key] = value * heads
        elif key in ("short_factor", "long_factor"):  # longrope: one per rotary frequency
            out[key] = [v for v in value for _ in range(factor)]
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            out[key] = value
        elif key in STATE_INNER:  # the state heads' width: heads x head dim
            out[key] = value * factor * heads
        elif key in STATE_EXPAND:  # the same, as a multiple of the (widened) hidden width
            out[key] = value * heads
        elif key in WIDTHS:
            out[key] = value * factor
        elif key in EXPERT_COUNTS:
            out[key] = value * experts
        elif key in head_keys and ("head_dim" in config or key in STATE_HEADS):
            out[key] = value * heads
        elif key in TOP_K and value > 1:  # top-1 routers (llama4) route to one expert only
            out[key] = value * 2
        else:
            out[key] = value
    return out


def _deepen(config: dict[str, Any], factor: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        count = isinstance(value, int) and not isinstance(value, bool) and value == LAYERS and (
            "layer" in key.lower())
        per_layer = isinstance(value, list) and len(value) == LAYERS and key != "modules"
        pattern = isinstance(value, str) and len(value) == LAYERS and "pattern" in key
        if isinstance(value, dict):
            out[key] = _deepen(value, factor)
        elif count or per_layer or pattern:
            out[key] = value * factor
        else:
            out[key] = value
    return out
