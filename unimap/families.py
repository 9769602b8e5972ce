"""Model families unimap can plan: how a config.json becomes an Architecture.

Any `model_type` the installed mlx-lm runs is read from mlx-lm's own Model class
(unimap/structure.py: layers, each layer's cache, MoE routing and widths as mlx-lm builds them).
A few families keep hand-written readers as overrides: the ones the activation coefficients were
measured with (so the coefficients keep meaning what they measured) and the vision-language
models, whose tower mlx-lm does not build. Those readers are pure functions over dicts with
mlx-lm's defaults; a missing or mistyped key is a ModelError naming it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from unimap.checks import MAX_IMAGE_LENGTH, short
from unimap.errors import ModelError

LayerKind = str  # "full" (KV cache grows), "sliding" (KV bounded by a window), "recurrent" (fixed state)


@dataclass(frozen=True)
class Moe:
    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    shared_intermediate_size: int  # 0 when there is no shared expert
    sparse_layers: tuple[bool, ...]  # which decoder layers are MoE (others are dense MLPs)


@dataclass(frozen=True)
class Vision:
    """The vision encoder's shape, enough to size its activations and the image tokens."""

    kind: str  # "qwen2_vl" (dynamic resolution) or "fixed" (resized to image_size)
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    merge_size: int  # patches merged per side before the language model (qwen2_vl)
    image_size: int | None  # fixed-resolution encoders
    tokens_per_image: int | None  # language-model tokens per image for fixed encoders
    temporal_patch_size: int = 1
    # fixed-size towers of families without a reader: an image larger than image_size may be cut
    # into tiles of that size plus a thumbnail (Llama 4, LLaVA-NeXT, InternVL), so price those
    tiled: bool = False
    # anyres towers (LLaVA-NeXT, LLaVA-OneVision: image_grid_pinpoints): the processor fits every
    # image, however small, to a grid of tiles beside the base image, so at least this many tiles
    # (1 + the smallest grid's), and a newline token after each row of a tile's features
    min_tiles: int = 1
    newlines: bool = False
    # ...and the grids themselves ([height, width] in pixels): the processor takes the smallest
    # grid that holds the image whole, upscaling it (LLaVA-OneVision's 2304-px grid for a 1024-px
    # image when no smaller one holds it: 36 tiles and the base image), else the one keeping most
    grids: tuple[tuple[int, int], ...] = ()
    # image tokens of at most this many tiles however many the tower sees: LLaVA-OneVision pools
    # the features of a larger grid down to vision_aspect_ratio's "anyres_max_9" (and the base)
    pooled_tiles: int = 0
    # mlx-vlm puts the image's features in place of the prompt's image tokens however many the
    # processor wrote (LLaVA-NeXT, Granite Vision, Janus: text around, all features between), so
    # the language model sees the features' count; where it appends a newline row to each
    # feature first, twice the tiles' patches (features_per_patch 2)
    features_per_patch: int = 0
    # elements per patch of a one-hot position lookup (Gemma 4's tower: 2 x
    # position_embedding_size, float32, matched against a table rather than indexed)
    position_one_hot: int = 0
    # tiles of every image, however large or small, where the processor resizes it to its
    # longest edge before cutting (Idefics 3, SmolVLM: a square image's, with the whole image
    # at tile size); 0 where the image's own size decides
    split_tiles: int = 0
    # ...once the image has more pixels than this (LFM2-VL); 0: every image (Idefics 3)
    split_over_pixels: int = 0
    # a tower of fixed image_size whose processor may instead keep an image whole at its own
    # resolution, one attention over all its patches (Qwen3-VL's, Kimi-VL's: a temporal patch
    # and merged patches, as Qwen2-VL's): priced for both, the larger
    whole_image: bool = False
    # ...scaling a smaller image up to this many pixels (the processor's min_pixels, or its
    # size's shortest_edge, a pixel count in Qwen-style processors)
    min_pixels: int = 0
    # positions of a 2D rotary table the tower computes whole on each call (MoonViT's 512 x 512,
    # complex64, head_dim / 2 an entry), whatever the images' sizes
    rope_grid: int = 0
    # patches the tower sees per image where they are not (image_size / patch_size)^2: an
    # encoder-free embedder (Gemma 4 unified) takes up to this many patches of any image
    patches_per_image: int | None = None
    # mlx-vlm prefills the prompt in one pass, never in chunks: "always", or "images" (a prompt
    # with images, whose tokens attend both ways); "" when it takes the plan's chunks
    one_pass: str = ""
    # that one pass makes logits for every prompt row (its language model has no logits_to_keep)
    all_logits: bool = False
    # with images, mlx-vlm hands the language model float32 embeddings whatever the weights'
    # dtype, so a half-precision model's prefill computes in float32
    float32_embeddings: bool = False
    # the tower attends over all images' patches at once, as one sequence under a block mask
    # (Pixtral's, MoonViT's in Kimi-VL): scores and mask grow with the square of all patches
    joint_attention: bool = False
    # an image no larger than image_size keeps its own size (Pixtral's processor resizes only
    # down), and each row of its merged patches ends in a break or end token
    keeps_size: bool = False
    # the projector's widest matrix, from the checkpoint's headers: its outputs (Aya Vision's
    # 28,672-wide SwiGLU, Idefics 2's projection to the text model's MLP width) and inputs (the
    # tower's width times the patches merged into one row; 0 where not known)
    projector_width: int = 0
    projector_input: int = 0
    # a perceiver resampler between tower and language model (Idefics 2): its latents, heads,
    # key/value heads and head dim, attending over each image's patches and the latents
    resampler: tuple[int, int, int, int] = (0, 0, 0, 0)
    # an image's own resolution, but never fewer patches than this: the processor scales a small
    # image up (RADIO in Nemotron Nano Omni: 1,024), and same-sized images go through the tower
    # as one batch
    min_patches: int = 0
    # mlx-vlm takes one image per prompt for this model (its prompt_utils' single-image list)
    single_image: bool = False


@dataclass(frozen=True)
class LayerCache:
    """What one decoder layer's cache holds per batch row, as mlx-lm's cache objects show it."""

    kind: str  # "full" (grows), "sliding" (bounded by window), "recurrent" (fixed), "none"
    token_elements: int  # elements one token adds (keys and values of every head)
    state_elements: int  # elements held whatever the length (SSM / conv state)
    window: int | None  # sliding and chunked caches: tokens kept at most
    head_dim: int  # the keys' last dimension (what --kv-bits quantizes in groups)
    quantizable: bool  # a plain KVCache, which --kv-bits turns into a QuantizedKVCache
    state_float32: bool = False  # state kept in float32 whatever the model's dtype
    state_heads: int = 0  # heads of a (batch, heads, dim, dim) recurrent state (SSM, linear attention)
    chunked: bool = False  # a ChunkedKVCache: it keeps `window` tokens and grows in steps past them
    # the two dims of that state: an SSD scan's (head dim, state size), gated delta's (key, value)
    state_dims: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Architecture:
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_kinds: tuple[LayerKind, ...]
    sliding_window: int | None
    tie_word_embeddings: bool
    torch_dtype: str | None
    moe: Moe | None = None
    vision: Vision | None = None
    # read from mlx-lm's model (unimap/structure.py): one per layer; empty for the hand readers
    caches: tuple[LayerCache, ...] = ()
    module: str = ""  # the mlx-lm module that runs the model (its family for the coefficients)
    layer_prefixes: tuple[str, ...] = ()  # each layer's parameter path in mlx-lm ("model.layers.0.")
    matrix_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # mlx-lm's 2-D parameters
    kv_bits_refusal: str = ""  # why mlx-lm's model cannot run on a quantized KV cache ("" when it can)
    layer_heads: tuple[int, ...] = ()  # per layer: its attention's query heads (0: not read)
    attention_reads: tuple[int, ...] = ()  # per layer: key/value elements per key attention reads

    @property
    def family(self) -> str:
        return self.module or self.model_type

    @property
    def state_heads(self) -> int:
        """The most heads any layer's recurrent state has (0 without one)."""
        return max((c.state_heads for c in self.caches), default=0)

    @property
    def scan_widths(self) -> tuple[int, int]:
        """Per token, the widths of a (batch, heads, dim, dim) state's scan inputs: heads times
        each of its two dims (an SSD scan's heads x head dim and heads x state size), the most
        of any layer ((0, 0) without such a state)."""
        return (max((c.state_heads * c.state_dims[0] for c in self.caches), default=0),
                max((c.state_heads * c.state_dims[1] for c in self.caches), default=0))

    @property
    def state_elements(self) -> int:
        """The most elements any layer's fixed-size state holds per batch row (0 without one)."""
        return max((c.state_elements for c in self.caches), default=0)


def _need(cfg: Mapping[str, Any], key: str, where: str, kind: type = int) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ModelError(f"{where}: missing {key!r}; the config is incomplete for this model type")
    return _typed(cfg[key], key, where, kind)


def _opt(cfg: Mapping[str, Any], key: str, where: str, default: Any, kind: type = int) -> Any:
    value = cfg.get(key)
    return default if value is None else _typed(value, key, where, kind)


def _typed(value: Any, key: str, where: str, kind: type) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is int and ok and value < 0:
        ok = False
    if not ok:
        wanted = "non-negative integer" if kind is int else kind.__name__
        raise ModelError(f"{where}: {key!r} should be a {wanted}, not {value!r}")
    return value


def _dense(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    layers = _need(cfg, "num_hidden_layers", where)
    hidden = _need(cfg, "hidden_size", where)
    heads = _need(cfg, "num_attention_heads", where)
    if heads == 0 or layers == 0:
        raise ModelError(f"{where}: num_attention_heads and num_hidden_layers must be positive")
    return Architecture(
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=_need(cfg, "intermediate_size", where),
        vocab_size=_need(cfg, "vocab_size", where),
        num_heads=heads,
        num_kv_heads=_opt(cfg, "num_key_value_heads", where, heads),
        head_dim=_opt(cfg, "head_dim", where, hidden // heads),
        layer_kinds=("full",) * layers,
        sliding_window=None,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
    )


def _with(arch: Architecture, **changes: Any) -> Architecture:
    return Architecture(**{**arch.__dict__, **changes})


def _llama(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    """llama and mistral (mlx-lm runs mistral as llama): sliding only where layer_types says."""
    arch = _dense(cfg, model_type, where)
    types = cfg.get("layer_types")
    if types is None:
        return arch
    kinds = _layer_types(types, arch.num_layers, where, {"full_attention": "full",
                                                        "sliding_attention": "sliding"})
    window = _need(cfg, "sliding_window", where) if "sliding" in kinds else None
    return _with(arch, layer_kinds=kinds, sliding_window=window)


def _layer_types(types: Any, layers: int, where: str, names: Mapping[str, str]) -> tuple[str, ...]:
    if not isinstance(types, list) or len(types) != layers:
        raise ModelError(f"{where}: 'layer_types' should list one entry per layer ({layers})")
    unknown = sorted({t for t in types if t not in names})
    if unknown:
        raise ModelError(f"{where}: unknown layer_types {unknown}; known: {sorted(names)}")
    return tuple(names[t] for t in types)


def _gemma3_text(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    # mlx-lm's gemma3_text defaults; every `pattern`-th layer is global, the rest slide.
    filled = {"head_dim": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
              "vocab_size": 262208, **{k: v for k, v in cfg.items() if v is not None}}
    arch = _dense(filled, model_type, where)
    pattern = _opt(cfg, "sliding_window_pattern", where, 6)
    window = _opt(cfg, "sliding_window", where, 512)
    if pattern == 0:
        raise ModelError(f"{where}: 'sliding_window_pattern' must be positive")
    kinds = tuple("full" if i % pattern == pattern - 1 else "sliding" for i in range(arch.num_layers))
    return _with(arch, layer_kinds=kinds, sliding_window=window,
                 tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)))


def _mixtral(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    arch = _dense(cfg, model_type, where)
    moe = Moe(num_experts=_need(cfg, "num_local_experts", where),
              experts_per_token=_need(cfg, "num_experts_per_tok", where),
              expert_intermediate_size=arch.intermediate_size, shared_intermediate_size=0,
              sparse_layers=(True,) * arch.num_layers)
    return _with(arch, moe=moe)


def _dbrx(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    """DBRX: its own field names (d_model, n_layers, attn_config, ffn_config). mlx-lm's model
    routes with .tolist() inside its forward pass, so a full-size one cannot be probed without
    computing through every weight: this reader is what plans it."""
    attn, ffn = cfg.get("attn_config"), cfg.get("ffn_config")
    if not isinstance(attn, dict) or not isinstance(ffn, dict):
        raise ModelError(f"{where}: a dbrx config needs 'attn_config' and 'ffn_config' objects")
    layers = _need(cfg, "n_layers", where)
    hidden = _need(cfg, "d_model", where)
    heads = _need(cfg, "n_heads", where)
    if heads == 0 or layers == 0:
        raise ModelError(f"{where}: n_heads and n_layers must be positive")
    width = _need(ffn, "ffn_hidden_size", f"{where} ffn_config")
    moe = Moe(num_experts=_need(ffn, "moe_num_experts", f"{where} ffn_config"),
              experts_per_token=_need(ffn, "moe_top_k", f"{where} ffn_config"),
              expert_intermediate_size=width, shared_intermediate_size=0,
              sparse_layers=(True,) * layers)
    return Architecture(model_type=model_type, num_layers=layers, hidden_size=hidden,
                        intermediate_size=width, vocab_size=_need(cfg, "vocab_size", where),
                        num_heads=heads, num_kv_heads=_need(attn, "kv_n_heads", f"{where} attn_config"),
                        head_dim=hidden // heads, layer_kinds=("full",) * layers,
                        sliding_window=None, tie_word_embeddings=False,
                        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"), moe=moe)


def _qwen3_moe(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    arch = _dense(cfg, model_type, where)
    step = _opt(cfg, "decoder_sparse_step", where, 1)
    dense_only = set(cfg.get("mlp_only_layers") or [])
    sparse = tuple(i not in dense_only and step > 0 and (i + 1) % step == 0
                   for i in range(arch.num_layers))
    moe = Moe(num_experts=_need(cfg, "num_experts", where),
              experts_per_token=_need(cfg, "num_experts_per_tok", where),
              expert_intermediate_size=_need(cfg, "moe_intermediate_size", where),
              shared_intermediate_size=0, sparse_layers=sparse)
    return _with(arch, moe=moe)


def _qwen2_vl(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    text = cfg.get("text_config") or cfg  # Qwen2-VL keeps the text fields at the top level
    arch = _dense(text, model_type, where)
    v = cfg.get("vision_config")
    if not isinstance(v, dict):
        raise ModelError(f"{where}: a {model_type} config needs a 'vision_config' object")
    vw = f"{where} vision_config"
    hidden = _opt(v, "hidden_size", vw, None) if model_type == "qwen2_5_vl" else None
    hidden = hidden or _need(v, "embed_dim", vw)
    inter = _opt(v, "intermediate_size", vw, None)
    if inter is None:  # the MLP as a ratio of the width (4, or 4.0 as mlx-vlm's default writes it)
        ratio = v.get("mlp_ratio", 4)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1e6:
            raise ModelError(f"{vw}: 'mlp_ratio' should be a positive number, not {ratio!r}")
        inter = int(hidden * ratio)
    vision = Vision(kind="qwen2_vl", num_layers=_need(v, "depth", vw), hidden_size=hidden,
                    intermediate_size=inter,
                    num_heads=_need(v, "num_heads", vw), patch_size=_opt(v, "patch_size", vw, 14),
                    merge_size=_opt(v, "spatial_merge_size", vw, 2), image_size=None,
                    tokens_per_image=None, temporal_patch_size=_opt(v, "temporal_patch_size", vw, 2))
    tie = bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    return _with(arch, vision=vision, tie_word_embeddings=tie)


def _fixed_vision(cfg: Mapping[str, Any], where: str, tokens_key: str | None) -> Vision:
    v = cfg.get("vision_config")
    if not isinstance(v, dict):
        raise ModelError(f"{where}: a vision-language config needs a 'vision_config' object")
    vw = f"{where} vision_config"
    size, patch = _need(v, "image_size", vw), _need(v, "patch_size", vw)
    if patch == 0:
        raise ModelError(f"{vw}: 'patch_size' must be positive")
    tokens = _opt(cfg, tokens_key, where, (size // patch) ** 2) if tokens_key else (size // patch) ** 2
    return Vision(kind="fixed", num_layers=_need(v, "num_hidden_layers", vw),
                  hidden_size=_need(v, "hidden_size", vw),
                  intermediate_size=_need(v, "intermediate_size", vw),
                  num_heads=_need(v, "num_attention_heads", vw), patch_size=patch, merge_size=1,
                  image_size=size, tokens_per_image=tokens)


def _gemma3(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    if "vision_config" not in cfg:  # a text-only checkpoint saved under the gemma3 type
        return _gemma3_text(cfg.get("text_config") or cfg, model_type, where)
    # mlx-lm's gemma3 takes the vocabulary from the top level (default 262208), not text_config
    text = {**(cfg.get("text_config") or {}), "vocab_size": _opt(cfg, "vocab_size", where, 262208)}
    arch = _gemma3_text(text, model_type, f"{where} text_config")
    return _with(arch, vision=_fixed_vision(cfg, where, "mm_tokens_per_image"))


def _llava(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise ModelError(f"{where}: a llava config needs a 'text_config' object")
    arch = _llama(text, model_type, f"{where} text_config")
    return _with(arch, vision=_fixed_vision(cfg, where, None))


READERS: dict[str, Callable[[Mapping[str, Any], str, str], Architecture]] = {
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _dense,
    "qwen3": _dense,
    "phi3": _dense,
    "gemma3_text": _gemma3_text,
    "gemma3": _gemma3,
    "mixtral": _mixtral,
    "qwen3_moe": _qwen3_moe,
    "dbrx": _dbrx,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_vl,
    "llava": _llava,
}


def read_architecture(cfg: Mapping[str, Any], where: str) -> Architecture:
    """The Architecture of a config.json; ModelError for unknown or incomplete configs."""
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise ModelError(f"{where}: no 'model_type' string; is this a Hugging Face model config?")
    reader = READERS.get(model_type)
    # a text-only checkpoint saved under a VLM's type runs on mlx-lm's model (gemma3's reader
    # handles its own)
    text_only = model_type in VISION_TYPES and "vision_config" not in cfg and model_type != "gemma3"
    if reader is not None and not text_only:
        return reader(cfg, model_type, where)
    from unimap.structure import read_structure

    if isinstance(cfg.get("vision_config"), dict) or model_type in FASTVITHD_TYPES:
        return _vision_language(cfg, model_type, where)
    return from_structure(read_structure(dict(cfg), where), cfg, model_type)


def _vision_language(cfg: Mapping[str, Any], model_type: str, where: str) -> Architecture:
    """A vision-language config without a hand reader: the language model from mlx-lm (its module
    for this model_type builds the language model alone, or the module of the type text_config,
    llm_config or language_config names) with the caches of the language model mlx-vlm runs, or,
    where mlx-lm has no class for that type, from mlx-vlm's own language model; the vision tower
    sized from vision_config's common fields."""
    from unimap.structure import UnknownArchitecture, read_structure, read_vlm_language, read_vlm_structure

    # the tower first: its fields are checked by name before mlx-vlm builds the model from them
    vision = replace(_any_vision(cfg, where), **read_vlm_code(cfg, model_type))
    # what mlx-lm and mlx-vlm build their models from: config.json (not the image processor's
    # settings that inspect adds, which no model class reads: a plan for another processor reads
    # no model again)
    model_cfg = {k: v for k, v in cfg.items() if k != PROCESSOR_KEY}
    text: Any = dict(model_cfg)
    text_where = where
    try:
        read_structure(text, where)  # mlx-lm's module for this model_type builds it
    except ModelError as whole:
        # the language model's own config: text_config, or where InternVL and Nemotron-H VL
        # (llm_config) and DeepSeek-VL2 (language_config) checkpoints keep it
        key = next((k for k in ("text_config", "llm_config", "language_config")
                    if isinstance(cfg.get(k), dict) and "model_type" in cfg[k]), "text_config")
        text = cfg.get(key)
        if model_type in FASTVITHD_TYPES and not isinstance(text, dict):
            # FastVLM checkpoints keep their Qwen2 language model's fields at the top level
            text = {k: v for k, v in model_cfg.items() if k != "vision_config"} | {"model_type": "qwen2"}
        unnamed = not isinstance(text, dict) or not isinstance(text.get("model_type"), str)
        why = (f"{whole}, and no text_config, llm_config or language_config names its model_type"
               if unnamed else "")
        if not unnamed:
            text, text_where = dict(text), f"{where} {key}"
            try:
                read_structure(text, text_where)
            except UnknownArchitecture as unknown:
                why = str(unknown)
        if why:  # mlx-lm has no class for it: the language model mlx-vlm builds, if it can
            try:
                structure = read_vlm_language(model_cfg, where)
            except ModelError as own:
                raise ModelError(f"{where}: {model_type!r} is a vision-language model whose language "
                                 f"model mlx-lm cannot build ({why}) and mlx-vlm's cannot be read "
                                 f"({own}); unimap plans it when mlx-lm or mlx-vlm has a model "
                                 "it can read") from None
            return _with(from_structure(structure, cfg, model_type), vision=vision)
    structure = read_vlm_structure(text, model_cfg, where, text_where)
    return _with(from_structure(structure, cfg, model_type), vision=vision)


# mlx-vlm models whose prompt embeddings with images are float32 in any dtype: PaliGemma merges
# text and image features into mx.zeros' float32 and casts the tower's output back to the
# float32 pixels' dtype (measured: a bfloat16 twin's prefill holds what its float32 twin does)
FLOAT32_EMBEDDINGS = ("paligemma",)

# mlx-vlm models whose chunked_prefill_policy turns chunking off by a language-model config
# field: (the field, mlx-vlm's default for it, the value that turns chunking off or None for any
# true value, when: "always" or "images"). PaliGemma's text attends both ways over the whole
# prompt; Gemma 4's image tokens attend both ways among themselves.
ONE_PASS_POLICIES: dict[str, tuple[str, Any, Any, str]] = {
    "paligemma": ("use_bidirectional_attention", True, None, "always"),
    "gemma4": ("use_bidirectional_attention", None, "vision", "images"),
    "gemma4_unified": ("use_bidirectional_attention", "vision", "vision", "images"),
}


def read_vlm_code(cfg: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    """What mlx-vlm's code for this model decides, read from its source: when it prefills the
    prompt in one pass instead of the plan's chunks (its policy, or a class that sets
    no_chunked_prefill), whether that pass makes logits for every row, whether its embeddings
    with images are float32, and the positions of a rotary grid its tower builds whole: Vision's
    one_pass, all_logits, float32_embeddings and rope_grid."""
    from unimap.structure import vlm_source

    source = vlm_source(vlm_package(model_type))
    # a class attribute, or one set in __init__, that turns chunking off whatever the prompt
    when = "always" if re.search(r"^\s+(?:self\.)?no_chunked_prefill\s*=\s*True\b", source,
                                 re.MULTILINE) else ""
    policy = ONE_PASS_POLICIES.get(model_type)
    if policy and not when:
        key, default, off, mode = policy
        text = cfg.get("text_config")
        value = (text if isinstance(text, dict) else {}).get(key, cfg.get(key))
        value = default if value is None else value
        when = mode if (value == off if off is not None else bool(value)) else ""
    # a tower that builds its whole 2D rotary grid on every call (MoonViT: Kimi-VL, Kimi K2.5,
    # LocateAnything), however few patches the images have
    grid = ROPE_GRID.search(source)
    return {"one_pass": when, "all_logits": bool(when) and "logits_to_keep" not in source,
            "float32_embeddings": model_type in FLOAT32_EMBEDDINGS,
            "rope_grid": int(grid[1]) * int(grid[2]) if grid else 0,
            "joint_attention": BLOCK_MASK.search(source) is not None,
            "features_per_patch": (2 if NEWLINE_PER_FEATURE.search(source) else 1)
            if INSERTED_FEATURES.search(source) else 0,
            "single_image": model_type.lower() in single_image_models()}


@functools.cache
def single_image_models() -> frozenset[str]:
    """The model types mlx-vlm refuses more than one image a prompt for, read from its
    prompt_utils.py (SINGLE_IMAGE_ONLY_MODELS) without importing it."""
    from unimap.structure import package_folder

    root = package_folder("mlx_vlm")
    path = root / "prompt_utils.py" if root is not None else None
    found = SINGLE_IMAGE_SET.search(path.read_text()) if path is not None and path.is_file() else None
    return frozenset(re.findall(r"[\"']([^\"']+)[\"']", found[1])) if found else frozenset()


SINGLE_IMAGE_SET = re.compile(r"^SINGLE_IMAGE_ONLY_MODELS\s*=\s*\{([^}]*)\}", re.MULTILINE)


ROPE_GRID = re.compile(r"Rope2DPosEmb\(\s*\w+\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
# a merge that splits the prompt's embeddings at its image tokens and concatenates the text
# segments with every image's features (mlx-vlm's LLaVA-NeXT, Granite Vision, Janus, Bunny)
INSERTED_FEATURES = re.compile(r"^\s+text_segments\.append\(", re.MULTILINE)
# ...after a newline embedding of the features' own shape is stacked beside them
NEWLINE_PER_FEATURE = re.compile(r"broadcast_to\([^()]{0,80}?newline[^()]{0,80}?image_features\.shape")
# a tower that concatenates every image's patches and builds one patches x patches block mask
# for them (Pixtral's generate_block_attention_mask, MoonViT's make_block_attention_mask)
BLOCK_MASK = re.compile(r"^def \w*block_attention_mask\(", re.MULTILINE)


def _first_of(cfg: Mapping[str, Any], keys: tuple[str, ...], where: str, default: Any = None) -> Any:
    """The first of `keys` present (a size given as [h, w] counts as its larger side)."""
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            value = max(value)
        if value is not None:
            return _typed(value, key, where, int)
    if default is None:
        raise ModelError(f"{where}: none of {', '.join(repr(k) for k in keys)}; cannot size the "
                         "vision tower")
    return default


# mlx-vlm's FastViTHD (FastVLM, model_type llava_qwen2): a convolutional tower whose stages,
# widths and depths are fixed in code (class attributes, not config fields). It resizes every
# image to image_size and gives one token per 64 x 64 pixels; its working set grows with the
# pixels (tools/calibrate_vision.py measures it per pixel).
FASTVITHD_TYPES = ("fastvlm", "llava_qwen2")
FASTVITHD_STRIDE = 64


def vlm_package(model_type: str) -> str:
    """The mlx-vlm package that runs a model_type (FastVLM checkpoints say llava_qwen2)."""
    return "fastvlm" if model_type in FASTVITHD_TYPES else model_type


def _fastvithd(cfg: Mapping[str, Any], where: str) -> Vision:
    v = cfg.get("vision_config") or {}
    vw = f"{where} vision_config"
    size = _opt(v, "image_size", vw, 1024)
    if size < FASTVITHD_STRIDE:
        raise ModelError(f"{vw}: 'image_size' {size} is smaller than FastViTHD's {FASTVITHD_STRIDE} "
                         "pixels a token")
    tokens = (size // FASTVITHD_STRIDE) ** 2
    return Vision(kind="fixed", num_layers=0, hidden_size=_opt(cfg, "mm_hidden_size", where, 3072),
                  intermediate_size=0, num_heads=0, patch_size=FASTVITHD_STRIDE, merge_size=1,
                  image_size=size, tokens_per_image=tokens)


def _encoder_free(v: Mapping[str, Any], vw: str) -> Vision:
    """Gemma 4 unified: image patches of model_patch_size go through one linear embedder into
    the language model, at most num_soft_tokens an image (mlx-vlm pads every image to that)."""
    tokens = _first_of(v, ("num_soft_tokens", "max_soft_tokens", "default_output_length"), vw)
    patch = _first_of(v, ("model_patch_size",), vw)
    if patch == 0 or tokens == 0:
        raise ModelError(f"{vw}: 'model_patch_size' and 'num_soft_tokens' must be positive")
    return Vision(kind="fixed", num_layers=0, hidden_size=_first_of(v, ("mm_embed_dim",), vw),
                  intermediate_size=0, num_heads=0, patch_size=patch, merge_size=1,
                  image_size=None, tokens_per_image=tokens, patches_per_image=tokens)


# fixed-size towers whose processor resizes every image to image_size, never cutting tiles
# (PaliGemma's SiglipImageProcessor)
RESIZED = ("paligemma",)
ANYRES_MAX = re.compile(r"anyres_max_(\d{1,4})")  # LLaVA-OneVision's pooling of a large grid
# towers (vision_config model_type) whose processor keeps an image's aspect, resized down to
# its longest edge, never tiled, and ends each row of (merged) patches with a break token, the
# last with an end token: Pixtral's, in Pixtral and Mistral 3 (Mistral Small 3.1)
ROW_BREAKS = ("pixtral",)


def _any_vision(cfg: Mapping[str, Any], where: str) -> Vision:
    """The vision tower from the fields most vision configs use. With no fixed image_size, the
    tower takes images at their own resolution (patches of max_image_length, merged per side by
    spatial_merge_size); tokens per image from the config, else one per (merged) patch."""
    if cfg.get("model_type") in FASTVITHD_TYPES:
        return _fastvithd(cfg, where)
    v = cfg["vision_config"]
    vw = f"{where} vision_config"
    if "model_patch_size" in v and "mm_embed_dim" in v:
        return _encoder_free(v, vw)
    # "vt_*": Kimi's MoonViT-3D names its tower's sizes with a prefix
    hidden = _first_of(v, ("hidden_size", "embed_dim", "width", "d_model", "hidden_dim",
                           "vt_hidden_size"), vw)
    ratio = v.get("mlp_ratio") if isinstance(v.get("mlp_ratio"), int | float) else 4
    inter = _first_of(v, ("intermediate_size", "mlp_dim", "ffn_dim", "vt_intermediate_size"), vw,
                      int(hidden * ratio))
    patch = _first_of(v, ("patch_size",), vw, 14)
    size = _first_of(v, ("image_size",), vw, 0)
    if patch == 0:
        raise ModelError(f"{vw}: 'patch_size' must be positive")
    # patches merged (or pooled, Gemma 4) per side into one language-model token
    merge = _first_of(v, ("spatial_merge_size", "merge_size", "merge_kernel_size",
                          "pooling_kernel_size"), vw, 0) or _first_of(
        cfg, ("spatial_merge_size",), where, 1) or 1  # Mistral 3 merges outside its tower
    tokens = _first_of(cfg, ("mm_tokens_per_image", "image_seq_length", "num_image_tokens"), where, 0)
    fixed = size > 0
    shuffle = v.get("pixel_shuffle_ratio", cfg.get("downsample_ratio"))  # Llama 4, InternVL
    if not tokens and fixed and isinstance(shuffle, int | float) and 0 < shuffle < 1:
        tokens = max(1, int((size // patch) ** 2 * shuffle * shuffle))
    perceiver = cfg.get("perceiver_config")  # Idefics 2: a perceiver's latents stand for an image
    resampler = (0, 0, 0, 0)
    if fixed and isinstance(perceiver, dict) and "resampler_n_latents" in perceiver:
        where_p = f"{where} perceiver_config"
        resampler = (_first_of(perceiver, ("resampler_n_latents",), where_p),
                     _first_of(perceiver, ("resampler_n_heads",), where_p, 16),
                     _first_of(perceiver, ("num_key_value_heads",), where_p, 4),
                     _first_of(perceiver, ("resampler_head_dim",), where_p, 96))
        tokens = tokens or resampler[0]
    factor = cfg.get("downsample_factor")  # Aya Vision: patches pixel-shuffled factor x factor
    if not tokens and fixed and isinstance(factor, int) and not isinstance(factor, bool) and factor > 1:
        tokens = max(1, (size // patch // factor) ** 2)
    found = cfg.get(PROCESSOR_KEY)
    processor: Mapping[str, Any] = found if isinstance(found, dict) else {}
    # where its settings came from: preprocessor_config.json beside config.json
    pw = (where[:-len("config.json")] if where.endswith("config.json") else f"{where} ") + PROCESSOR_FILE
    row_breaks = v.get("model_type") in ROW_BREAKS
    if row_breaks:  # resized to the processor's longest edge, else the tower's image_size
        size = _edge(processor.get("size"), pw) or size
        fixed = size > 0
    budget = v.get("default_output_length")
    if "max_soft_tokens" in processor:  # the processor's own budget, where it sets one
        budget = processor["max_soft_tokens"]
        if not isinstance(budget, int) or isinstance(budget, bool) or not 0 < budget <= MAX_IMAGE_TOKENS:
            raise ModelError(f"{pw}: max_soft_tokens {budget!r} is not a number of image tokens "
                             f"a processor makes (1 to {MAX_IMAGE_TOKENS}); fix or re-download "
                             "the file")
    if not fixed and isinstance(budget, int) and budget > 0 and "position_embedding_size" in v:
        # Gemma 4: the processor resizes every image, up or down, to fill default_output_length
        # tokens of merge x merge patches, so an image takes that many whatever its size
        positions = _first_of(v, ("position_embedding_size",), vw)
        return Vision(kind="fixed", num_layers=_first_of(v, ("num_hidden_layers",), vw),
                      hidden_size=hidden, intermediate_size=inter,
                      num_heads=_first_of(v, ("num_attention_heads",), vw), patch_size=patch,
                      merge_size=merge, image_size=None, tokens_per_image=budget,
                      patches_per_image=budget * merge * merge, position_one_hot=2 * positions)
    if cfg.get("model_type") in PADDED_ROWS:
        return _padded_rows(cfg, processor, pw, hidden, inter, patch, vw)
    if cfg.get("model_type") in OWN_RESOLUTION:
        # MiniMax-M3-VL: its config's image_size is a bound, not the size: the processor keeps an
        # image's resolution (in merged patches) up to max_pixels, as Qwen2-VL's does, and the
        # tower attends within each image
        default = _pixels_of(processor.get("size"), OWN_RESOLUTION[cfg["model_type"]])
        most = processor.get("max_pixels", default)
        if isinstance(most, bool) or not isinstance(most, int) or not 0 < most <= MAX_IMAGE_LENGTH ** 2:
            raise ModelError(f"{pw}: max_pixels (or size) {most!r} is not a pixel count a "
                             "processor takes; fix or re-download the file")
        merge = _edge(processor.get("merge_size"), pw) or 2
        return Vision(kind="qwen2_vl", num_layers=_first_of(v, ("num_hidden_layers",), vw),
                      hidden_size=hidden, intermediate_size=inter,
                      num_heads=_first_of(v, ("num_attention_heads",), vw), patch_size=patch,
                      merge_size=merge, image_size=None, tokens_per_image=None,
                      temporal_patch_size=_edge(processor.get("temporal_patch_size"), pw) or 2,
                      patches_per_image=most // (patch * patch))
    low = processor.get("min_num_patches", v.get("dynamic_image_min_num_patches"))
    high = processor.get("max_num_patches", v.get("dynamic_image_max_num_patches"))
    if low is not None or high is not None:
        # RADIO (Nemotron Nano Omni): its processor sizes each image to its own patches, at most
        # max_num_patches and, however small, at least min_num_patches (either may be unset)
        for name, value in (("min_num_patches", low), ("max_num_patches", high)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 < value <= MAX_IMAGE_TOKENS):
                raise ModelError(f"{pw} (or {vw}): {name} {value!r} is not a patch count a "
                                 f"processor takes (1 to {MAX_IMAGE_TOKENS}); fix or re-download the file")
        ratio = cfg.get("downsample_ratio")  # pixel shuffle: 0.5 merges 2 x 2 patches
        merge = round(1 / ratio) if isinstance(ratio, int | float) and 0 < ratio < 1 else merge
        return Vision(kind="qwen2_vl", num_layers=_first_of(v, ("num_hidden_layers",), vw),
                      hidden_size=hidden, intermediate_size=inter,
                      num_heads=_first_of(v, ("num_attention_heads",), vw), patch_size=patch,
                      merge_size=merge, image_size=None, tokens_per_image=None,
                      patches_per_image=max(low or 0, high or 0) if high else None,
                      min_patches=low or 0)
    # a tower of fixed image_size whose processor keeps each image whole at its own resolution,
    # as Qwen2-VL's (a temporal patch and merged patches): Qwen3-VL, Qwen3.5, Kimi-VL
    whole = fixed and "temporal_patch_size" in v and "spatial_merge_size" in v
    grids = _grids(cfg, where) or _grids(processor, pw)
    anyres = fixed and bool(grids)
    min_tiles = 1 + min(-(-g[0] // size) * -(-g[1] // size) for g in grids) if anyres else 1
    pooled = ANYRES_MAX.fullmatch(str(cfg.get("vision_aspect_ratio", "")))
    split_tiles, tiled = 0, fixed and cfg.get("model_type") not in RESIZED and not row_breaks
    if fixed and cfg.get("model_type") in SPLIT_AT_LONGEST_EDGE:
        tile = _edge(processor.get("max_image_size"), pw) or size
        # without splitting, the processor resizes the whole image to one tile
        tiled = processor.get("do_image_splitting", True)
        if not isinstance(tiled, bool):
            raise ModelError(f"{pw}: do_image_splitting is {tiled!r}, not true or false; fix or "
                             "re-download the file")
        side = -(-(_edge(processor.get("size"), pw) or 4 * tile) // tile)
        split_tiles = side * side + 1 if tiled else 0
    if fixed and cfg.get("model_type") in ASPECT_TILES:
        key = ASPECT_TILES[cfg["model_type"]]
        most = processor.get(key, DEFAULT_ASPECT_TILES)
        if isinstance(most, bool) or not isinstance(most, int) or not 0 < most <= MAX_ASPECT_TILES:
            raise ModelError(f"{pw}: {key} {most!r} is not a number of tiles the processor cuts "
                             f"(1 to {MAX_ASPECT_TILES}); fix or re-download the file")
        # the most tiles, and a thumbnail beside more than one, whatever the image's size
        split_tiles, tiled = most + (most > 1), True
    return Vision(kind="fixed" if fixed else "qwen2_vl",
                  num_layers=_first_of(v, ("num_hidden_layers", "depth", "num_layers", "layers",
                                           "vt_num_hidden_layers"), vw),
                  hidden_size=hidden, intermediate_size=inter,
                  num_heads=_first_of(v, ("num_attention_heads", "num_heads", "heads", "n_heads",
                                          "vt_num_attention_heads"), vw),
                  patch_size=patch, merge_size=merge, image_size=size if fixed else None,
                  tokens_per_image=(tokens or (size // patch) ** 2 // (merge * merge)) if fixed else None,
                  temporal_patch_size=_first_of(v, ("temporal_patch_size",), vw, 1),
                  tiled=tiled,
                  min_tiles=min_tiles, newlines=anyres, split_tiles=split_tiles, keeps_size=row_breaks,
                  grids=tuple(grids) if anyres else (),
                  pooled_tiles=1 + int(pooled[1]) if pooled and anyres else 0,
                  resampler=resampler,
                  whole_image=whole, min_pixels=_min_pixels(processor, pw) if whole else 0)


# LFM2-VL: its processor pads each image, tile or thumbnail to the same patch count, so the tower
# runs that many patches a row whatever the image; an image past a pixel count is cut into tiles
# (up to max_tiles, and a thumbnail: mlx-vlm applies the official splitting defaults whatever the
# checkpoint's file says)
PADDED_ROWS = ("lfm2-vl", "lfm2_vl")
LFM2_VL_DEFAULTS = {"max_image_tokens": 256, "downsample_factor": 2, "tile_size": 512,
                    "max_tiles": 10, "max_pixels_tolerance": 2.0}
ROW_MARKERS = 2  # text tokens the processor puts around each row's image tokens, at most
# towers whose processor keeps an image's own resolution though their config names an
# image_size, with the processor's default cap on an image's pixels (mlx-vlm's MiniMax-M3-VL
# processor: 672 x 672)
OWN_RESOLUTION = {"minimax_m3_vl": 451584}


def _padded_rows(cfg: Mapping[str, Any], processor: Mapping[str, Any], pw: str, hidden: int,
                 inter: int, patch: int, vw: str) -> Vision:
    """LFM2-VL's tower, as its processor (mlx-vlm's) feeds it: rows of max_num_patches patches
    each (the larger of max_image_tokens x downsample^2 and a tile's patches), one row for an
    image up to max_pixels_tolerance x max_image_tokens x (patch x downsample)^2 pixels, else
    max_tiles tiles and a thumbnail, each row up to max_image_tokens tokens and its markers."""
    v = cfg["vision_config"]
    found: dict[str, float] = {}
    for key, default in LFM2_VL_DEFAULTS.items():
        value = processor.get(key, cfg.get(key, default) if key == "downsample_factor" else default)
        whole = key != "max_pixels_tolerance"
        if (isinstance(value, bool) or not isinstance(value, int if whole else int | float)
                or not 0 < value <= MAX_IMAGE_LENGTH):
            raise ModelError(f"{pw}: {key} {value!r} is not a value the LFM2-VL processor takes; "
                             "fix or re-download the file")
        # mlx-vlm re-applies the official splitting defaults over the file's
        found[key] = max(default, value) if key == "max_tiles" else value
    patch = _edge(processor.get("encoder_patch_size"), pw) or patch
    tokens, factor, tile = (int(found[k]) for k in ("max_image_tokens", "downsample_factor", "tile_size"))
    per_row = max(tokens * factor * factor, (tile // patch) ** 2)
    return Vision(kind="fixed", num_layers=_first_of(v, ("num_hidden_layers",), vw),
                  hidden_size=hidden, intermediate_size=inter,
                  num_heads=_first_of(v, ("num_attention_heads",), vw), patch_size=patch,
                  merge_size=1, image_size=tile, tokens_per_image=tokens + ROW_MARKERS,
                  patches_per_image=per_row, tiled=True, split_tiles=int(found["max_tiles"]) + 1,
                  split_over_pixels=int(found["max_pixels_tolerance"] * tokens * (patch * factor) ** 2))


# processors that choose a grid of tiles by an image's aspect ratio, up to a most, scaling even a
# small image up to fill it (a 64 x 48 image: 4 x 3 tiles), and add a thumbnail: transformers'
# GotOcr2 cropping (Aya Vision, InternVL) and mlx-vlm's InternVL-chat processor; model type ->
# the processor's field for the most tiles (12 by default in each)
ASPECT_TILES = {"aya_vision": "max_patches", "internvl": "max_patches",
                "internvl_chat": "dynamic_max_num"}
DEFAULT_ASPECT_TILES = 12
MAX_ASPECT_TILES = 1024

# processors that resize every image to their longest edge (4 tiles a side by default, as
# transformers' Idefics3 and SmolVLM image processors do), then cut it into tiles of the tower's
# size plus the whole image at that size
SPLIT_AT_LONGEST_EDGE = ("idefics3", "smolvlm")
PROCESSOR_KEY = "preprocessor_config"  # where inspect puts the image processor's settings
PROCESSOR_FILE = "preprocessor_config.json"  # the file they are read from
MAX_IMAGE_TOKENS = 1 << 16  # language-model tokens one image may take, past any processor's


# the least pixels a Qwen-style processor scales an image up to where its file sets none: the
# larger of the defaults (mlx-vlm's Qwen3-VL processor: 128 x 128; transformers': 56 x 56)
QWEN_MIN_PIXELS = 128 * 128


def _min_pixels(processor: Mapping[str, Any], pw: str) -> int:
    """A Qwen-style processor's min_pixels (or its size's shortest_edge, a pixel count there)."""
    size = processor.get("size")
    value = processor.get("min_pixels", size.get("shortest_edge") if isinstance(size, dict) else None)
    if value is None:
        return QWEN_MIN_PIXELS
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_IMAGE_LENGTH ** 2:
        raise ModelError(f"{pw}: min_pixels (or size's shortest_edge) {value!r} is not a pixel "
                         "count a processor takes; fix or re-download the file")
    return value


def _pixels_of(size: Any, default: int) -> Any:
    """The most pixels a processor's `size` setting allows an image, as mlx-vlm's MiniMax-M3-VL
    processor reads it (height x width, else longest_edge as a pixel count); `default` if none."""
    if isinstance(size, dict) and "height" in size and "width" in size:
        height, width = size["height"], size["width"]
        if all(isinstance(n, int) and not isinstance(n, bool) for n in (height, width)):
            return height * width
        return f"{height!r} x {width!r}"
    return size.get("longest_edge", default) if isinstance(size, dict) else default


def _grids(cfg: Mapping[str, Any], where: str) -> list[tuple[int, int]]:
    """The anyres grids ([height, width] pairs in pixels) `cfg` lists under image_grid_pinpoints;
    a list that is not such pairs is refused, naming the field."""
    found = cfg.get("image_grid_pinpoints")
    if found is None:
        return []
    if not isinstance(found, list) or not found or not all(
            isinstance(g, list) and len(g) == 2 and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_IMAGE_LENGTH for n in g)
            for g in found):
        raise ModelError(f"{where}: image_grid_pinpoints should be [height, width] pairs of "
                         f"pixels (1 to {MAX_IMAGE_LENGTH}), not {short(found)}; fix or re-download the file")
    return [(g[0], g[1]) for g in found]


def _edge(size: Any, where: str) -> int:
    """The longest edge of a processor's size setting ({"longest_edge": n}, or an int); 0 where
    it sets none."""
    value = size.get("longest_edge") if isinstance(size, dict) else size
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_IMAGE_LENGTH:
        raise ModelError(f"{where}: an image edge of {value!r} pixels is not one a processor "
                         "has; fix or re-download the file")
    return value


VISION_TYPES = ("gemma3", "llava", "qwen2_5_vl", "qwen2_vl")


def from_structure(s: Any, cfg: Mapping[str, Any], model_type: str) -> Architecture:
    """An Architecture from a unimap.structure.Structure (what mlx-lm's model showed)."""
    kinds = tuple("recurrent" if c.kind == "none" else c.kind for c in s.caches)
    windows = [c.window for c in s.caches if c.kind == "sliding" and c.window]
    moe = None
    if s.num_experts:
        moe = Moe(num_experts=s.num_experts, experts_per_token=s.experts_per_token,
                  expert_intermediate_size=s.expert_width, shared_intermediate_size=s.shared_width,
                  sparse_layers=s.sparse_layers)
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    return Architecture(
        model_type=model_type, num_layers=s.num_layers, hidden_size=s.hidden_size,
        intermediate_size=max(s.mlp_widths, default=0), vocab_size=s.vocab_size,
        num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, head_dim=s.head_dim,
        layer_kinds=kinds, sliding_window=max(windows) if windows else None,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        torch_dtype=dtype if isinstance(dtype, str) else None, moe=moe, caches=s.caches,
        module=s.module, layer_prefixes=s.layer_prefixes, matrix_shapes=s.matrix_shapes,
        kv_bits_refusal=s.kv_bits_refusal, layer_heads=s.layer_heads,
        attention_reads=s.attention_reads)
