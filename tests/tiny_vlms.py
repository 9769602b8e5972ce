"""Tiny random-weight vision-language models built from mlx-vlm's own model classes and saved as
real checkpoints (config.json, model.safetensors written by MLX, a word-level tokenizer with the
family's special tokens, a chat template and the image processor's config), so mlx-vlm's loader
and processors read them offline. Four families: Qwen2-VL (dynamic resolution, merged patches),
Qwen2.5-VL (the same with windowed attention in the tower), Gemma 3 (a SigLIP tower at a
fixed size, pooled to a fixed number of image tokens, a projector, a text model with
sliding-window layers) and PaliGemma (a SigLIP tower and a Gemma text model that attends both
ways over the prompt, so mlx-vlm prefills it in one pass, never in chunks). write_any_vlm builds
any other mlx-vlm family the same way with a tower made small, for text prompts, or with the
family's own processor files as its published checkpoint has them (use_family_processor), for
images."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
        "tie_word_embeddings": False}
VOCAB = 160
WORDS = 120  # plain words w0..w119; the rest of the vocabulary is special tokens and padding

QWEN2_VL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>"]
PALIGEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<image>"]
GEMMA3_SPECIAL = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]

# one placeholder per image, in the content-list form mlx-vlm's apply_chat_template produces
QWEN2_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }} {% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<start_of_image> {% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn> {% endfor %}{% if add_generation_prompt %}<start_of_turn>model {% endif %}")

# PaliGemma takes a plain prompt: its processor puts the image tokens and <bos> before it
PALIGEMMA_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _tokenizer(folder: Path, special: list[str], eos: str, pad: str, template: str,
               extra: dict[str, Any] | None = None) -> dict[str, int]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    words = ["<unk>"] + [f"w{i}" for i in range(WORDS)]
    words += [f"x{i}" for i in range(VOCAB - len(words) - len(special))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
        "unk_token": "<unk>", "model_max_length": 8192, "chat_template": template, **(extra or {})}))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return {s: int(tokenizer.token_to_id(s)) for s in special}


def qwen2_vl_config(ids: dict[str, int]) -> dict[str, Any]:
    return {"model_type": "qwen2_vl", **TEXT, "vocab_size": VOCAB, "rope_theta": 1e6,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "eos_token_id": ids["<|im_end|>"],
            "vision_config": {"model_type": "qwen2_vl", "depth": 2, "embed_dim": 64, "hidden_size": 64,
                              "num_heads": 2, "mlp_ratio": 2, "patch_size": 14, "spatial_patch_size": 14,
                              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}}


def qwen2_5_vl_config(ids: dict[str, int]) -> dict[str, Any]:
    """Qwen2.5-VL: windowed attention in the tower (112-px windows) but for its last block, an
    RMSNorm'd gated MLP, and the merger's output width set apart from the tower's."""
    config = qwen2_vl_config(ids)
    config["model_type"] = "qwen2_5_vl"
    config["vision_config"] = {
        "model_type": "qwen2_5_vl", "depth": 2, "hidden_size": 64, "intermediate_size": 128,
        "out_hidden_size": TEXT["hidden_size"], "num_heads": 2, "patch_size": 14,
        "spatial_patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "window_size": 112, "fullatt_block_indexes": [1], "in_channels": 3, "tokens_per_second": 2}
    return config


def gemma3_config(ids: dict[str, int]) -> dict[str, Any]:
    text = {**TEXT, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64,
            "sliding_window_pattern": 2, "rope_global_base_freq": 1e6, "rope_local_base_freq": 1e4}
    return {"model_type": "gemma3", "vocab_size": VOCAB, "image_token_index": ids["<image_soft_token>"],
            "boi_token_index": ids["<start_of_image>"], "eoi_token_index": ids["<end_of_image>"],
            "mm_tokens_per_image": 4, "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
            "pad_token_id": ids["<pad>"], "hidden_size": TEXT["hidden_size"],
            "text_config": {"model_type": "gemma3_text", **text, "vocab_size": VOCAB,
                            "mm_tokens_per_image": 4},
            "vision_config": {"model_type": "siglip_vision_model", "num_hidden_layers": 2, "hidden_size": 64,
                              "intermediate_size": 128, "num_attention_heads": 2, "image_size": 56,
                              "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6}}


def paligemma_config(ids: dict[str, int]) -> dict[str, Any]:
    # the image tokens: (image_size / patch_size)^2, one per patch of the SigLIP tower
    text = {"model_type": "gemma", **TEXT, "head_dim": 16, "vocab_size": VOCAB, "num_image_tokens": 16}
    return {"model_type": "paligemma", "vocab_size": VOCAB, "image_token_index": ids["<image>"],
            "hidden_size": TEXT["hidden_size"], "projection_dim": TEXT["hidden_size"],
            "pad_token_id": ids["<pad>"], "eos_token_id": [ids["<eos>"]], "text_config": text,
            "vision_config": {"model_type": "siglip_vision_model", "num_hidden_layers": 2, "hidden_size": 64,
                              "intermediate_size": 128, "num_attention_heads": 2, "image_size": 56,
                              "patch_size": 14, "projection_dim": TEXT["hidden_size"]}}


def _processor_files(folder: Path, family: str, config: dict[str, Any]) -> None:
    if family in ("qwen2_vl", "qwen2_5_vl"):
        processor = "Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor"
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor,
            "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 4096, "patch_size": 14, "merge_size": 2,
            "temporal_patch_size": 2, "image_mean": MEAN, "image_std": STD}))
        return
    size = config["vision_config"]["image_size"]
    if family == "paligemma":
        tokens = (size // config["vision_config"]["patch_size"]) ** 2
        config["text_config"]["num_image_tokens"] = tokens
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "SiglipImageProcessor", "processor_class": "PaliGemmaProcessor",
            "size": {"height": size, "width": size}, "do_resize": True, "do_normalize": True,
            "do_rescale": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3,
            "image_seq_length": tokens}))
        (folder / "processor_config.json").write_text(json.dumps({
            "processor_class": "PaliGemmaProcessor", "image_seq_length": tokens}))
        return
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
        "size": {"height": size, "width": size}, "do_resize": True, "do_normalize": True,
        "do_rescale": True, "do_convert_rgb": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "resample": 2, "do_pan_and_scan": False, "image_seq_length": config["mm_tokens_per_image"]}))
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "Gemma3Processor", "image_seq_length": config["mm_tokens_per_image"]}))


def write_tiny_vlm(folder: Path, family: str, seed: int = 0, dtype: str = "float32",
                   vision: dict[str, Any] | None = None) -> Path:
    """A random `family` ("qwen2_vl", "qwen2_5_vl", "gemma3" or "paligemma") checkpoint mlx-vlm
    loads; `vision` overrides fields of its vision_config (a wider or deeper tower)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    folder.mkdir(parents=True, exist_ok=True)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        ids = _tokenizer(folder, QWEN2_VL_SPECIAL, "<|im_end|>", "<|endoftext|>", QWEN2_VL_TEMPLATE)
        config = qwen2_vl_config(ids) if family == "qwen2_vl" else qwen2_5_vl_config(ids)
    elif family == "gemma3":
        ids = _tokenizer(folder, GEMMA3_SPECIAL, "<end_of_turn>", "<pad>", GEMMA3_TEMPLATE, {
            "bos_token": "<bos>", "extra_special_tokens": {
                "image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>"}})
        config = gemma3_config(ids)
    elif family == "paligemma":
        ids = _tokenizer(folder, PALIGEMMA_SPECIAL, "<eos>", "<pad>", PALIGEMMA_TEMPLATE,
                         {"bos_token": "<bos>"})
        config = paligemma_config(ids)
    else:
        raise ValueError(f"no tiny {family} vision-language model")
    config["vision_config"].update(vision or {})
    config["torch_dtype"] = dtype
    _processor_files(folder, family, config)
    mx.random.seed(seed)
    built = json.loads(json.dumps(config))
    model_class, _ = get_model_and_args(built)
    built.setdefault("text_config", {})
    model_config = update_module_configs(model_class.ModelConfig.from_dict(built), model_class, built,
                                         ["text", "vision", "projector"])
    model = model_class.Model(model_config)
    # sharper logits than the default initialisation, so greedy tokens vary with the input
    language = model.language_model
    if hasattr(language, "lm_head"):
        language.lm_head.weight = language.lm_head.weight * 16.0
    else:  # tied (PaliGemma's Gemma): the embeddings of random width, so that a token's own
        # embedding (scaled up by sqrt(hidden)) does not outweigh what its layers add to it
        embed = language.model.embed_tokens
        embed.weight = mx.random.normal(embed.weight.shape) * 0.02
    model.set_dtype(getattr(mx, dtype))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A random RGB PNG of width x height pixels."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# What write_any_vlm sets a tower's sizes to, wherever its vision_config has the field: small
# enough that every tower builds in a few MB, as the tiny language model does.
TOWER_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "depth": 2,
               "num_layers": 2, "num_attention_heads": 2, "num_heads": 2, "embed_dim": 64,
               "num_key_value_heads": 2, "head_dim": 32,
               # the same under other names: DeepSeek-VL2's and Step's (width, layers, heads),
               # Kimi K3's MoonViT-3D (vt_*), Gemma 4 unified's embedder (mm_*)
               "width": 64, "layers": 2, "heads": 2, "vt_hidden_size": 64,
               "vt_intermediate_size": 128, "vt_num_hidden_layers": 2, "vt_num_attention_heads": 2,
               "qkv_hidden_size": 192, "mm_hidden_size": 64, "mm_embed_dim": 64,
               "output_proj_dims": 64}
# Qwen2-VL and Qwen2.5-VL checkpoints keep the language model's fields at the top level, where
# mlx-vlm reads them
# Youtu-VL's and ZAYA1-VL's mlx-vlm configs take their language model's fields from the top
# level only
FLAT_TEXT = ("qwen2_vl", "qwen2_5_vl", "youtu_vl", "zaya1_vl")
MAX_TINY_BYTES = 64 << 20  # a tower whose sizes are not in those fields stays real-sized: refused
# a chat template for any model: the text of each turn, an <image> per image placeholder
ANY_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}")


def write_any_vlm(folder: Path, module: str, tower_sizes: dict[str, int] | None = None,
                  dtype: str = "float32", family_processor: bool = False) -> Path:
    """A random checkpoint of any mlx-vlm `module`, built through its own Model class from
    tests/tiny_vlm_configs.py's config (the tiny language model; the tower's sizes set small by
    TOWER_SIZES) with a word-level tokenizer and a plain chat template, so mlx-vlm's loader reads
    it offline (its processor is then the tokenizer: text prompts only). Raises what mlx-vlm
    raises where its classes cannot build the config, and ValueError where the tower keeps its
    real size. `tower_sizes` sets the tower's fields instead of TOWER_SIZES (a wider tower).
    `family_processor`: the family's own image processor (transformers', sized to the tower)
    where transformers has one, and the processor's image token in the tokenizer, the chat
    template and the config, so that some families take images (use_family_processor)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs
    from tiny_vlm_configs import vlm_config

    config = json.loads(json.dumps(vlm_config(module)))  # the cached dict stays as it is
    tower = config["vision_config"]
    for key, value in (tower_sizes or TOWER_SIZES).items():
        if isinstance(tower.get(key), int) and not isinstance(tower.get(key), bool):
            tower[key] = value
    text = config.get("text_config") or {}
    text_hidden = text.get("hidden_size", config.get("hidden_size"))
    for key in ("vit_hidden_size", "projector_hidden_size"):  # a projector sized at the top
        if isinstance(config.get(key), int):
            config[key] = (tower_sizes or TOWER_SIZES).get("hidden_size", TOWER_SIZES["hidden_size"])
    projector = config.get("projector_config") or {}
    if isinstance(projector.get("input_dim"), int):  # DeepSeek-VL2's projector: tower to text
        width = tower.get("width")  # DeepSeek-OCR-2 keys its encoders' widths by name
        projector["input_dim"] = width if isinstance(width, int) else tower.get("hidden_size")
        projector["n_embed"] = (config.get("language_config") or text).get("hidden_size")
    # Muse Glimmer's out_hidden_size: the tower's width over its merged patches (its adapter's input)
    if isinstance(config.get("out_hidden_size"), int) and isinstance(tower.get("merge_size"), int):
        config["out_hidden_size"] = tower["hidden_size"] * tower["merge_size"] ** 2
    # widths that must be the language model's: a projector's output (Qwen3-VL's
    # out_hidden_size, Kimi K3's text_hidden_size), Gemma 4 unified's hidden_size
    for owner, key in ((tower, "out_hidden_size"), (tower, "text_hidden_size"), (config, "hidden_size")):
        if isinstance(owner.get(key), int) and isinstance(text_hidden, int) and key in owner:
            owner[key] = text_hidden
    if config.get("model_type") == "paligemma" and isinstance(text_hidden, int):
        # PaliGemma's projector maps the tower to the language model's width: projection_dim
        for owner in (config, tower):
            owner["projection_dim"] = text_hidden
    if isinstance(tower.get("pixel_shuffle_ratio"), float):  # Llama 4: its projector MLP takes
        # the pixel-shuffled patches, hidden_size / ratio^2 wide, as intermediate_size (Scout's
        # 5632 = 1408 / 0.5^2), and keeps its width (projector_input_dim = projector_output_dim)
        tower["intermediate_size"] = round(tower["hidden_size"] / tower["pixel_shuffle_ratio"] ** 2)
        tower["projector_input_dim"] = tower["projector_output_dim"]
    if isinstance(tower.get("layer_types"), list):  # one per layer (Gemma 4's tower)
        tower["layer_types"] = tower["layer_types"][:tower.get("num_hidden_layers", 0)]
    # built as mlx-vlm's load_model builds it: a language model under llm_config taken as the
    # text config, and every module config it updates
    if module in FLAT_TEXT:  # published with the language model's fields at the top level
        config.update({k: v for k, v in config.pop("text_config").items() if k != "model_type"})
    built = json.loads(json.dumps(config))
    model_class, _ = get_model_and_args(built)
    built.setdefault("text_config", built.pop("llm_config", {}))
    built.setdefault("vision_config", {})
    # no audio tower: a checkpoint without its weights runs without it (mlx-vlm disables it)
    model_config = update_module_configs(model_class.ModelConfig.from_dict(built), model_class, built,
                                         ["text", "vision", "perceiver", "projector"])
    model = model_class.Model(model_config)
    model.set_dtype(getattr(mx, dtype))
    weights = dict(tree_flatten(model.parameters()))
    size = sum(w.nbytes for w in weights.values())
    if size > MAX_TINY_BYTES and tower_sizes is None:
        largest = max(weights, key=lambda k: weights[k].nbytes)
        raise ValueError(f"{module}: {size >> 20} MiB with its tower's sizes set small "
                         f"(largest: {largest}); its sizes are in fields TOWER_SIZES does not set")
    folder.mkdir(parents=True, exist_ok=True)
    # the image marks some processors look up on the tokenizer (Gemma 3's, Idefics 2's)
    marks = {"image_token": "<image>", "boi_token": "<boi>", "eoi_token": "<eoi>",
             "image_boundary_token": "<fake_token_around_image>",
             "end_of_utterance_token": "<end_of_utterance>"}
    _tokenizer(folder, ["<eos>", "<pad>", *marks.values()], "<eos>", "<pad>", ANY_TEMPLATE,
               {"extra_special_tokens": marks})
    # an image processor for the family's processor class to be built with (mlx-vlm's loader
    # requires one); the images a test gives go to the four families above, not these
    side = tower.get("image_size") if isinstance(tower.get("image_size"), int) else 224
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"height": side, "width": side},
        "crop_size": {"height": side, "width": side}, "do_resize": True, "do_normalize": True,
        "do_rescale": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}))
    if family_processor:
        use_family_processor(folder, side, marks)
    return folder


IMAGE_TOKEN_KEYS = ("image_token_index", "image_token_id")

# Families whose processor is mlx-vlm's own: the processor_config.json / preprocessor_config.json
# its from_pretrained reads, as the published checkpoint has them but sized to the tiny tower;
# config.json and tokenizer_config.json fields it needs; the chat template's image placeholder
# where the processor expands another text than its image token
MLX_PROCESSORS: dict[str, dict[str, Any]] = {
    # LiquidAI's d1 is published as LFM2-VL with its own model class: mlx-vlm loads it as d1
    # and builds LFM2-VL's processor for it
    "d1": {"config": {"model_type": "lfm2_vl", "auto_map": {"AutoModel": "modeling_d1.D1Model"}}},
    # deepseek-ai/deepseek-vl2-tiny: tiles of the tower's side, up to 3 x 3 of them; its
    # processor puts the tokenizer's bos before the prompt
    "deepseek_vl_v2": {"processor_config": lambda tower, side: {
        "processor_class": "DeepseekVLV2Processor", "patch_size": tower["patch_size"],
        "candidate_resolutions": [[side * h, side * w] for h in (1, 2, 3) for w in (1, 2, 3)],
        "downsample_ratio": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "normalize": True,
        "image_token": "<image>", "pad_token": "<pad>", "add_special_token": False,
        "sft_format": "deepseek", "mask_prompt": False, "ignore_id": -100},
        "tokenizer": {"bos_token": "<eos>"}},
    # its chat template writes <image-N>, which the processor expands to <img>, the image's
    # <IMG_CONTEXT> tokens, </img>
    "locateanything": {"processor_config": lambda tower, side: {
        "processor_class": "LocateAnythingProcessor", "patch_size": tower["patch_size"],
        "merge_kernel_size": tower["merge_kernel_size"], "image_token": "<IMG_CONTEXT>",
        "image_start_token": "<img>", "image_end_token": "</img>"},
        "placeholder": "<image-{{ loop.index }}>"},
    # google/gemma-3-4b-it's tokenizer marks an image with <start_of_image> (mlx-vlm's prompt
    # writes it), which the processor expands to <image_soft_token>s and <end_of_image>
    "gemma3": {"marks": {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                         "eoi_token": "<end_of_image>"}},
    # google/paligemma-3b-mix-224's: SigLIP's processor, with the image tokens the processor
    # writes (a token per patch) in its file
    "paligemma": {"preprocessor_config": lambda tower, side: {
        "image_processor_type": "SiglipImageProcessor", "size": {"height": side, "width": side},
        "do_resize": True, "do_normalize": True, "do_rescale": True, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "image_seq_length": (side // tower["patch_size"]) ** 2},
        "tokenizer": {"bos_token": "<eos>"}},  # its prompt: the image tokens, bos, the text
    # its image processor reads CLIP's normalisation and the tower's patch budget here
    "nemotron_h_nano_omni": {"preprocessor_config": lambda tower, side: {
        "norm_mean": MEAN, "norm_std": STD, "patch_size": tower["patch_size"],
        "downsample_ratio": 0.5, "min_num_patches": tower["dynamic_image_min_num_patches"],
        "max_num_patches": tower["dynamic_image_max_num_patches"]},
        "image_token_keys": ("img_context_token_id",)},  # the model's name for the image token
}


def use_family_processor(folder: Path, side: int, marks: dict[str, str]) -> None:
    """The checkpoint in `folder` with its family's image processor (transformers' class for
    its model type, its tiles or crops at the tower's `side`) and the processor's image token
    in the tokenizer, the chat template and the config's image token fields."""
    from transformers import AutoProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    config = json.loads((folder / "config.json").read_text())
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(config["model_type"]) or {}
    kind = names.get("pil") or names.get("torchvision")
    tower = config["vision_config"]
    if not kind and "temporal_patch_size" in tower:  # Qwen3-VL-MoE ships Qwen2-VL's
        kind = "Qwen2VLImageProcessorPil"
    if not kind and "image_grid_pinpoints" in config:  # Granite Vision 3 ships LLaVA-NeXT's
        kind = "LlavaNextImageProcessorPil"
    if kind:
        if "temporal_patch_size" in tower:  # Qwen-style: an image's own resolution, in the
            # tower's patches, merged as the tower merges them
            sized = {"patch_size": tower["patch_size"], "temporal_patch_size": tower["temporal_patch_size"],
                     "merge_size": tower.get("spatial_merge_size", 2)}
        elif kind.startswith("PixtralImageProcessor"):  # an image's own size, up to the edge
            sized = {"size": {"longest_edge": side},
                     "patch_size": {"height": tower["patch_size"], "width": tower["patch_size"]}}
            (folder / "processor_config.json").write_text(json.dumps({
                "patch_size": tower["patch_size"], "image_token": "[IMG]",
                "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                "spatial_merge_size": config.get("spatial_merge_size", 1)}))
        elif config["model_type"] in ("idefics3", "smolvlm"):
            sized = {"size": {"longest_edge": 2 * side}, "max_image_size": {"longest_edge": side}}
            # the image tokens a tile takes: its patches, pixel-shuffled by scale_factor
            # (Idefics3-8B's processor_config.json: (364 / 14)^2 / 2^2 = 169)
            seq_len = (side // tower["patch_size"]) ** 2 // config["scale_factor"] ** 2
            (folder / "processor_config.json").write_text(json.dumps({"image_seq_len": seq_len}))
        else:
            sized = {"size": {"height": side, "width": side}, "crop_size": {"height": side, "width": side}}
        if "image_grid_pinpoints" in config:  # anyres: the grids the model unpads to, as published
            sized["image_grid_pinpoints"] = config["image_grid_pinpoints"]
        elif kind.startswith("LlavaNextImageProcessor"):  # Granite 4 Vision: grids of tiles of
            # the tower's side in its processor's file alone (it cannot tile without them)
            sized["image_grid_pinpoints"] = [[side, side], [10 * side, side]]
        (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": kind,
                                                                     **sized}))
    own = MLX_PROCESSORS.get(config["model_type"], {})
    if "marks" in own:  # the published tokenizer's image marks, which mlx-vlm's prompt writes
        marks = {**marks, **own["marks"]}
        _tokenizer(folder, ["<eos>", "<pad>", *dict.fromkeys(marks.values())], "<eos>", "<pad>",
                   ANY_TEMPLATE, {"extra_special_tokens": marks})
    if "config" in own:  # the published config.json's own fields
        config.update(own["config"])
        (folder / "config.json").write_text(json.dumps(config))
    for name in ("processor_config", "preprocessor_config"):  # mlx-vlm's own processor's files
        if name in own:
            (folder / f"{name}.json").write_text(json.dumps(own[name](tower, side)))
    processor = AutoProcessor.from_pretrained(str(folder))
    # processor_config.json as published (llava-hf's, Aya Vision's): the fields of these names the
    # processor takes, from the tower and the config (+1 token where the tower has a class token)
    import mlx.core as mx

    with_class = any(k.endswith("class_embedding") for k in mx.load(str(folder / "model.safetensors")))
    known = {"patch_size": tower.get("patch_size"), "img_size": tower.get("image_size"),
             "vision_feature_select_strategy": config.get("vision_feature_select_strategy"),
             "downsample_factor": config.get("downsample_factor"),
             "num_additional_image_tokens": int(with_class),
             "image_seq_length": config.get("mm_tokens_per_image")}  # Gemma 3's, from its config
    takes = inspect.signature(type(processor).__init__).parameters
    fields = {k: v for k, v in known.items() if k in takes and v is not None}
    written = folder / "processor_config.json"
    if fields:
        old = json.loads(written.read_text()) if written.exists() else {}
        written.write_text(json.dumps({**fields, **old}))
    constants = vars(sys.modules[type(processor).__module__])
    token = getattr(processor, "image_token", None)  # what a prompt marks an image with
    # the token whose places the features take: most processors' image token; Llama 4's
    # <|patch|> (Scout's image_token_index, 200092), not the <|image|> that marks the image;
    # InternVL-chat's <IMG_CONTEXT>, a constant of its processor's module, for a prompt's <image>
    feature = getattr(processor, "img_patch_token", token)
    if token is None and isinstance(constants.get("IMG_CONTEXT_TOKEN"), str):
        token, feature = "<image>", constants["IMG_CONTEXT_TOKEN"]
    if not isinstance(token, str):
        return
    # the image token, and any other mark the processor writes around it (Pixtral's row breaks,
    # Llama 4's tile separators, InternVL-chat's <img>: constants of its module); not the empty
    # ones of a tower left out (Gemma 4's audio_token)
    marks = {**marks, **{k.lower(): v for k, v in [*vars(processor).items(), *constants.items()]
                         if k.lower().endswith("_token") and isinstance(v, str) and v.strip()},
             "image_token": token}
    ids = _tokenizer(folder, ["<eos>", "<pad>", *dict.fromkeys(marks.values())], "<eos>", "<pad>",
                     ANY_TEMPLATE.replace("<image> ", f"{own.get('placeholder', token)} "),
                     {"extra_special_tokens": marks, **own.get("tokenizer", {})})
    # the id the processor expands an image into (Aya Vision's <|IMG_PATCH|>, not its <image>):
    # its image_token_id, now that the tokenizer has its marks
    image_id = getattr(AutoProcessor.from_pretrained(str(folder)), "image_token_id", None)
    image_id = image_id if isinstance(image_id, int) and image_id in ids.values() else ids[feature]
    owners = [config, config.get("text_config") or {}]
    for key in IMAGE_TOKEN_KEYS:
        for owner in owners:
            if key in owner:
                owner[key] = image_id
    for key in own.get("image_token_keys", ()):
        config[key] = image_id
    if not any(key in config for key in IMAGE_TOKEN_KEYS):
        config["image_token_index"] = image_id
    (folder / "config.json").write_text(json.dumps(config))
