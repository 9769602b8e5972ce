"""Config.json dicts for every vision-language model module the installed mlx-vlm ships, shaped
the way a published checkpoint's config looks, so tools/coverage.py and the tests can ask which
ones unimap plans (no downloads, nothing built here).

`vlm_config(module)` holds the model type a checkpoint carries, the language model under the key
published checkpoints use (text_config, or llm_config / language_config where they use those),
the vision tower from mlx-vlm's own VisionConfig defaults, and what mlx-vlm's ModelConfig
requires at the top level. A language model that is an mlx-lm architecture is the tiny one of
tests/tiny_families.py (4 layers, 64 wide); any other is filled from mlx-vlm's TextConfig with
small values. The vision tower keeps mlx-vlm's (real-model) sizes: unimap only reads them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import pkgutil
from typing import Any

from tiny_families import families, tiny_config

# The language model's model_type where published checkpoints name one that mlx-vlm's TextConfig
# does not default to, with the checkpoint it is read from. Only types known for sure.
LANGUAGE_MODELS: dict[str, tuple[str, str]] = {
    "aya_vision": ("cohere2", "CohereLabs/aya-vision-8b"),
    "deepseek_vl_v2": ("deepseek_v2", "deepseek-ai/deepseek-vl2-tiny"),
    "fastvlm": ("qwen2", "apple/FastVLM-0.5B"),
    "gemma3": ("gemma3_text", "google/gemma-3-4b-it"),
    "glm4v": ("glm4v_text", "zai-org/GLM-4.1V-9B-Thinking"),
    "glm4v_moe": ("glm4v_moe_text", "zai-org/GLM-4.5V"),
    "idefics2": ("mistral", "HuggingFaceM4/idefics2-8b"),
    "idefics3": ("llama", "HuggingFaceM4/Idefics3-8B-Llama3"),
    "internvl": ("qwen2", "OpenGVLab/InternVL3-1B-hf"),
    "internvl_chat": ("qwen2", "OpenGVLab/InternVL3-8B"),
    "llama4": ("llama4_text", "meta-llama/Llama-4-Scout-17B-16E-Instruct"),
    "llava": ("llama", "llava-hf/llava-1.5-7b-hf"),
    "llava_next": ("mistral", "llava-hf/llava-v1.6-mistral-7b-hf"),
    "llava_onevision": ("qwen2", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
    "mistral3": ("mistral", "mistralai/Mistral-Small-3.1-24B-Instruct-2503"),
    "mllama": ("mllama_text_model", "meta-llama/Llama-3.2-11B-Vision-Instruct"),
    "multi_modality": ("llama", "deepseek-ai/Janus-Pro-7B"),
    "nemotron_h_nano_omni": ("nemotron_h", "no checkpoint at hand: as mlx-vlm's module builds it"),
    "paligemma": ("gemma", "google/paligemma-3b-pt-224"),
    "smolvlm": ("llama", "HuggingFaceTB/SmolVLM2-2.2B-Instruct"),
}

# Fields published checkpoints carry beyond what mlx-vlm's ModelConfig defaults (a dict is merged
# into the sub-config of that name): the anyres
# grids LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf), LLaVA-OneVision
# (llava-hf/llava-onevision-qwen2-0.5b-ov-hf, its first and last grids) and Granite Vision
# (ibm-granite/granite-vision-3.2-2b, its first and last) fit images to
PUBLISHED: dict[str, dict[str, Any]] = {
    # Youtu-VL's language model is MLA (its own module): the latent and head widths of mlx-lm's
    # tiny deepseek_v3, where mlx-vlm's defaults are the published 512-wide latent
    "youtu_vl": {"text_config": {"kv_lora_rank": 32, "q_lora_rank": 32, "qk_rope_head_dim": 8,
                                 "v_head_dim": 16, "qk_nope_head_dim": 16}},
    # ZAYA1-VL's language model (its own, CCA attention and MoE): widths in names of its own
    "zaya1_vl": {"text_config": {"ffn_hidden_size": 128, "num_experts": 4, "head_dim": 32,
                                 "zaya_mlp_expansion": 32}},
    "llava_next": {"image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336],
                                            [336, 1008]]},
    "llava_onevision": {"image_grid_pinpoints": [[384, 384], [2304, 2304]]},
    "granite_vision": {"image_grid_pinpoints": [[384, 384], [3840, 384]]},
    # HuggingFaceTB/SmolVLM2-2.2B-Instruct's pixel shuffle: its 27 x 27 patches (384 / 14) in
    # 3 x 3 blocks (mlx-vlm's default of 2 does not divide 27)
    "smolvlm": {"scale_factor": 3},
    # the sub-configs mlx-vlm's classes require a model_type of (HuggingFaceM4/idefics2-8b's
    # perceiver, deepseek-ai/Janus-Pro-7B's aligner), and Gemma 3n's MLP widths, one a layer
    "idefics2": {"perceiver_config": {"model_type": "idefics2_perceiver", "hidden_act": "silu",
                                      "resampler_n_latents": 64, "resampler_depth": 3,
                                      "resampler_n_heads": 16, "resampler_head_dim": 96,
                                      "num_key_value_heads": 4, "attention_dropout": 0.0}},
    "multi_modality": {"aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                                          "params": {"depth": 2, "input_dim": 1024, "n_embed": 4096,
                                                     "projector_type": "mlp_gelu"}}},
    "gemma3n": {"text_config": {"intermediate_size": [128] * 4}},
    "qwen2_vl": {"vision_config": {"mlp_ratio": 4}},  # an int, as transformers' config checks
    # deepseek-ai/deepseek-vl2-tiny routes greedily (mlx-vlm knows no group_limited_greedy), as
    # do DeepSeek-OCR and its offspring (mlx-vlm's TextConfig default)
    "deepseek_vl_v2": {"language_config": {"topk_method": "greedy"}},
    "deepseekocr": {"text_config": {"topk_method": "greedy"}},
    "deepseekocr_2": {"text_config": {"topk_method": "greedy"},
                      # deepseek-ai/DeepSeek-OCR-2's two encoders, keyed by name under width
                      "vision_config": {"width": {"qwen2-0-5b": {"dim": 896},
                                                  "sam_vit_b": {"width": 768, "layers": 12}}}},
    "unlimited_ocr": {"text_config": {"topk_method": "greedy"}},
    # a vision-language Hadamard pack: schema 2, keyed like mlx-vlm's qwen3_5 (schema 1 is
    # mlx-lm's text-only pack, which mlx-vlm refuses)
    "prism_hadamard_qwen35": {"schema_version": 2, "tensor_namespace": "mlx-vlm-qwen3_5",
                              "base_model_type": "qwen3_5"},
}

# Checkpoints whose language model's fields are both at the top level (where mlx-lm reads them)
# and under text_config (where mlx-vlm does, defaulting to the real model's sizes without it)
NESTED_TEXT = ("muse_glimmer",)

# Checkpoints that keep the language model under another key than "text_config".
LANGUAGE_KEYS: dict[str, str] = {
    "deepseek_vl_v2": "language_config", "internvl_chat": "llm_config",
    "nemotron_h_nano_omni": "llm_config",
}

# vision_config's model_type where mlx-vlm's VisionConfig has no default.
VISION_MODEL_TYPES: dict[str, str] = {
    "aya_vision": "siglip_vision_model", "gemma3": "siglip_vision_model",
    "internvl": "internvl_vision", "internvl_chat": "intern_vit_6b",
    "llama4": "llama4_vision_model", "llava": "clip_vision_model",
    "llava_bunny": "siglip_vision_model", "llava_next": "clip_vision_model",
    # DeepSeek-VL2's, DeepSeek-OCR's and Janus's towers: mlx-vlm builds them only for this name
    "deepseek_vl_v2": "vision", "deepseekocr": "vision", "deepseekocr_2": "vision",
    "unlimited_ocr": "vision",
    "multi_modality": "vision",
}

# One plausible small value per field that mlx-vlm's config classes require (no default).
SMALL: dict[str, Any] = {
    # vision towers
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
    "patch_size": 14, "image_size": 224, "depth": 2, "num_heads": 2, "num_channels": 3,
    "initializer_range": 0.02, "norm_eps": 1e-5, "pixel_shuffle_ratio": 0.5,
    "projector_dropout": 0.0, "projector_input_dim": 128, "projector_output_dim": 64,
    "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
    "vision_output_dim": 64, "mm_hidden_size": 64, "auto_map": {},
    # a projector named by its class (Janus's aligner)
    "cls": "MlpProjector", "params": {},
    # language models mlx-lm does not run (4 layers, 64 wide, like tests/tiny_families.py)
    "vocab_size": 128, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "head_dim": 16,
    "max_position_embeddings": 1024, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4, "num_experts": 4,
    "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "n_group": 1,
    "topk_group": 1, "n_shared_experts": 1, "n_routed_experts": 4, "routed_scaling_factor": 1.0,
    "first_k_dense_replace": 1, "use_qk_norm": True, "attention_bias": False,
    "partial_rotary_factor": 0.5, "mamba_num_heads": 4, "mamba_head_dim": 32,
    "mamba_proj_bias": False, "ssm_state_size": 16, "conv_kernel": 4, "n_groups": 1,
    "mlp_bias": False, "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True,
    "post_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0},
    "layer_rope_theta": [10000.0] * 4, "layer_types": ["full_attention"] * 4,
    "sliding_window": 8, "final_logit_softcapping": 30.0, "output_multiplier": 1.0,
    "num_local_experts": 4, "moe_hidden_size": 32,
}
# the language model's size fields set even where mlx-vlm has a (real-model) default
TEXT_SIZES = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "head_dim")


@functools.cache
def vlm_modules() -> tuple[tuple[str, ...], dict[str, str]]:
    """mlx-vlm's vision-language model modules (packages with a VisionConfig), and the ones that
    cannot be imported here with the reason."""
    import mlx_vlm.models as models

    found, failed = [], {}
    for info in pkgutil.iter_modules(models.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"mlx_vlm.models.{info.name}")
        except (Exception, SystemExit) as exc:  # any import failure is a row of its own
            failed[info.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        if hasattr(module, "VisionConfig") and hasattr(module, "ModelConfig"):
            found.append(info.name)
    return tuple(sorted(found)), failed


def published_type(module: str) -> str:
    """The model_type a checkpoint for `module` carries: mlx-vlm loads `module` for its own name
    and for each name its MODEL_REMAPPING maps there; where the module's ModelConfig defaults to
    one of those remapped names (Apple's "llava_qwen2", Liquid's "lfm2-vl"), that one."""
    from mlx_vlm.utils import MODEL_REMAPPING

    default = _default(_module(module).ModelConfig, "model_type")
    return default if MODEL_REMAPPING.get(default) == module else module


def mlx_lm_module(model_type: str | None) -> str | None:
    """The mlx-lm module that runs `model_type` (through mlx-lm's MODEL_REMAPPING), or None."""
    from mlx_lm.utils import MODEL_REMAPPING

    if model_type is None:
        return None
    name = MODEL_REMAPPING.get(model_type, model_type)
    return name if name in _families() else None


def language_model(module: str) -> tuple[str | None, str | None]:
    """(the language model's model_type, the mlx-lm module that runs it): the VLM's own mlx-lm
    module where mlx-lm has one for its type (it builds the language model alone), else the one of
    the text type; either is None where there is none."""
    own = mlx_lm_module(published_type(module))
    text_type = _text_type(module)
    if own is not None:
        text = _own_config(module, own).get("text_config") or {}
        return text.get("model_type", text_type), own
    return text_type, mlx_lm_module(text_type)


def vlm_config(module: str) -> dict[str, Any]:
    """A config.json-like dict for mlx-vlm's `module` (see the module docstring)."""
    classes = _module(module)
    model_type = published_type(module)
    own = mlx_lm_module(model_type)
    config: dict[str, Any] = {"model_type": model_type}
    if own is not None:  # mlx-lm's module for the VLM's own type: its tiny config, as the tests build it
        config.update(_own_config(module, own))
        config["model_type"] = model_type
        _published_text_fields(module, config)
    else:
        config[LANGUAGE_KEYS.get(module, "text_config")] = _text_config(module)
        _published_text_fields(module, config)
    vision = _fields(classes.VisionConfig, none_from_small=True)
    if not isinstance(vision.get("model_type"), str):
        vision["model_type"] = VISION_MODEL_TYPES.get(module, f"{module}_vision")
    config["vision_config"] = vision
    for key, value in _fields(classes.ModelConfig, skip=("text_config", "vision_config")).items():
        config.setdefault(key, value)
    for key, value in copy.deepcopy(PUBLISHED.get(module, {})).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)  # fields of a sub-config
        else:
            config[key] = value
    if module == "multi_modality":
        config.pop("projector_config", None)  # mlx-vlm reads the aligner's under this name
    if module in NESTED_TEXT and not config.get("text_config"):
        config["text_config"] = {k: copy.deepcopy(v) for k, v in config.items()
                                 if k not in ("vision_config", "text_config", "model_type")}
    return config


def _published_text_fields(module: str, config: dict[str, Any]) -> None:
    """Fields mlx-vlm's TextConfig requires or leaves None that published checkpoints carry
    (Kimi-VL's n_group, Mistral-Small-3.1's rope_theta, Qwen3.5's rms_norm_eps), from SMALL,
    where mlx-lm's tiny config lacks them."""
    text, text_class = config.get("text_config"), getattr(_module(module), "TextConfig", None)
    if not isinstance(text, dict) or text_class is None:
        return
    for f in dataclasses.fields(text_class):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in SMALL and f.name not in text and (f.default is None or required):
            text[f.name] = copy.deepcopy(SMALL[f.name])


def _own_config(module: str, own: str) -> dict[str, Any]:
    config = tiny_config(own)
    text_type = LANGUAGE_MODELS.get(module, (None, ""))[0]
    text = config.get("text_config")
    # a published checkpoint whose language model is another mlx-lm type than the tiny one's
    # (Mistral-Small-3.1's "mistral" under mlx-lm's mistral3 module)
    if isinstance(text, dict) and text_type and text.get("model_type") != text_type:
        tiny = _tiny_text(text_type)
        if tiny is not None:
            config["text_config"] = tiny
    return config


def _text_type(module: str) -> str | None:
    if module in LANGUAGE_MODELS:
        return LANGUAGE_MODELS[module][0]
    text_class = getattr(_module(module), "TextConfig", None)
    default = _default(text_class, "model_type") if text_class is not None else None
    return default if isinstance(default, str) and default not in ("", "none") else None


def _text_config(module: str) -> dict[str, Any]:
    text_type = _text_type(module)
    tiny = _tiny_text(text_type)
    if tiny is not None:
        return tiny
    text_class = getattr(_module(module), "TextConfig", None)
    text = _fields(text_class, required_only=True) if text_class is not None else {}
    for key in TEXT_SIZES:
        if text_class is not None and key in _field_names(text_class):
            text[key] = SMALL[key]
    if text_type is not None:
        text["model_type"] = text_type
    else:
        text.pop("model_type", None)  # the checkpoint names no language model type
    return text


def _tiny_text(text_type: str | None) -> dict[str, Any] | None:
    """tests/tiny_families.py's tiny config of the mlx-lm module that runs `text_type`."""
    family = mlx_lm_module(text_type)
    if family is None:
        return None
    return {**tiny_config(family), "model_type": text_type}


def _fields(cls: Any, skip: tuple[str, ...] = (), required_only: bool = False,
            none_from_small: bool = False) -> dict[str, Any]:
    """`cls`'s dataclass fields: defaults (JSON values only; None left out, or taken from SMALL
    with `none_from_small`: SmolVLM's tower leaves its sizes None for the checkpoint to give) and
    required ones from SMALL, or a nested config class's own fields."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            value = None if required_only else _json(_default(cls, f.name))
            if value is None and none_from_small and f.name in SMALL:
                value = copy.deepcopy(SMALL[f.name])
            if value is not None:
                out[f.name] = value
        elif f.name in SMALL:
            out[f.name] = copy.deepcopy(SMALL[f.name])
        elif dataclasses.is_dataclass(f.type):
            out[f.name] = _fields(f.type)
        elif f.name != "model_type":
            raise KeyError(f"{cls.__module__}.{cls.__name__} requires {f.name!r}: add it to SMALL")
    return out


def _default(cls: Any, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def _field_names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _json(value: Any) -> Any:
    """`value` as config.json would hold it (tuples as lists, nested configs as dicts), or None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def _module(module: str) -> Any:
    return importlib.import_module(f"mlx_vlm.models.{module}")


@functools.cache
def _families() -> frozenset[str]:
    return frozenset(families())
