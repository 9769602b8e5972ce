"""A model's structure read from mlx-lm's own Model class, built lazily from config.json.

Nothing is evaluated: MLX arrays are lazy, so constructing `Model(ModelArgs.from_dict(config))`
and running a few tokens through it only records shapes. From that we read what the estimate
needs for any architecture mlx-lm runs: the decoder layers, each layer's cache (the cache objects
the model makes, and the elements one token adds to each, measured from what they hold after 4 and
6 tokens), the MoE routing (experts from the switch layers' weights, top-k from what the router
hands the experts) and the widths of the layers as mlx-lm builds them. A config mlx-lm cannot build is a
ModelError naming the field or the reason. For a vision-language model the caches are read the same
way from the language model mlx-vlm builds (the one that runs), and the whole structure from it
where mlx-lm has no class for the language model's type. This module imports mlx and mlx-lm, lazily, and not
at all for a config whose structure is on disk already (unimap/cache.py).
"""

from __future__ import annotations

import copy
import functools
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from unimap.checks import check_config, foreign
from unimap.errors import ModelError
from unimap.families import LayerCache

PROBE_TOKENS = (4, 6)  # two short lazy forwards: per-token cache growth and fixed state
TOP_K_NAMES = ("top_k", "num_experts_per_tok", "moe_topk", "moe_top_k", "moe_k",
               "num_experts_per_token", "experts_per_token", "n_activated_experts", "k")
HEAD_NAMES = ("num_attention_heads", "n_heads", "num_heads", "n_head", "num_query_heads")
_ATTENTION_ONLY = re.compile(r"attn|attention")
_ATTENTION = re.compile(r"attn|attention|mixer|self_attn|linear_attn|mamba|ssm|conv")


@dataclass(frozen=True)
class Structure:
    module: str  # the mlx-lm module that runs the model
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_widths: tuple[int, ...]  # per layer: the dense MLP's width (0 when the layer has none)
    caches: tuple[LayerCache, ...]
    num_experts: int = 0
    experts_per_token: int = 0
    expert_width: int = 0
    shared_width: int = 0  # shared experts' total width (0 when none)
    sparse_layers: tuple[bool, ...] = ()
    layer_prefixes: tuple[str, ...] = ()  # each layer's parameter path, e.g. "model.layers.0."
    matrix_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # 2-D parameters as mlx-lm builds them
    kv_bits_refusal: str = ""  # why its forward pass cannot run on a quantized KV cache ("" when it can)
    layer_heads: tuple[int, ...] = ()  # per layer: its attention's query heads (0 when it says none)
    # per layer: the key and value elements per key its attention reads (0: none seen), which
    # exceed its cache's per-token elements where it decompresses them (MLA) or repeats heads
    attention_reads: tuple[int, ...] = ()


def package_folder(name: str) -> Path | None:
    """An installed package's folder, found without importing it (or None)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    folders = list(spec.submodule_search_locations or []) if spec else []
    return Path(folders[0]) if folders else None


def mlx_lm_folder() -> Path | None:
    """The installed mlx-lm package's folder, found without importing it (or None)."""
    return package_folder("mlx_lm")


def model_source(module: str) -> str | None:
    """The source of mlx-lm's model module `module` (mlx_lm/models/<module>.py), read without
    importing mlx or mlx-lm; None when there is none."""
    root = mlx_lm_folder()
    if root is None or not re.fullmatch(r"[\w-]+", module):
        return None
    try:
        return (root / "models" / f"{module}.py").read_text()
    except OSError:
        return None


@functools.cache
def vlm_source(module: str) -> str:
    """The model code of mlx-vlm's package `module` (mlx_vlm/models/<module>/, its processors
    left out) and of the sibling packages it imports from (gemma4_unified runs gemma4's language
    model), read without importing mlx or mlx-vlm; "" when there is none."""
    root = package_folder("mlx_vlm")
    if root is None or not re.fullmatch(r"\w+", module):
        return ""
    models = root / "models"

    def read(package: str) -> str:
        files = sorted((models / package).glob("*.py"))
        return "\n".join(f.read_text() for f in files if not f.name.startswith("processing"))

    own = read(module)
    siblings = sorted(set(re.findall(r"^from \.\.(\w+)\.", own, re.MULTILINE)) - {module})
    return "\n".join([own, *(read(s) for s in siblings if (models / s).is_dir())])


class UnknownArchitecture(ModelError):
    """mlx-lm has no model for a config's model_type (a vision-language model's language model
    may still be mlx-vlm's own: read_vlm_language)."""


def model_classes(config: dict[str, Any], where: str) -> tuple[Any, Any]:
    """mlx-lm's (Model, ModelArgs) for `config`, or a ModelError saying why there are none."""
    from mlx_lm.utils import _get_classes

    try:
        return _get_classes(config)  # type: ignore[no-any-return]
    except (ValueError, AttributeError):  # no such module, or a module that is not a model
        raise UnknownArchitecture(f"{where}: model_type {config.get('model_type')!r} is not an architecture "
                         "the installed mlx-lm runs (upgrade mlx-lm, or check the config)") from None
    except (ImportError, SystemExit) as exc:
        raise ModelError(f"{where}: mlx-lm's module for {config.get('model_type')!r} cannot be "
                         f"imported ({exc}); install what it needs") from None


def build_lazy(config: dict[str, Any], where: str) -> Any:
    """The mlx-lm model for `config`, parameters not evaluated."""
    import mlx.core as mx

    check_config(config, where)  # sizes that would make even a lazy build unbounded are refused
    model_class, args_class = model_classes(config, where)
    try:
        args = args_class.from_dict(config)
        model = model_class(args)
        # The layers' random initialisers split MLX's global key without evaluating it: each build
        # left a longer graph behind it (~1.5 MiB for Qwen3-Next, growing without end in a
        # long-lived process). Evaluating the key (two integers) cuts that graph; the weights
        # stay unevaluated.
        mx.eval(mx.random.state)
        return model
    except TypeError as exc:
        if "required positional argument" not in str(exc):
            raise _unbuildable(where, exc) from None
        names = ", ".join(repr(m) for m in re.findall(r"'(\w+)'", str(exc)))
        raise ModelError(f"{where}: missing {names}, which mlx-lm's {model_class.__module__} needs; "
                         "the config is incomplete") from None
    except Exception as exc:  # mlx-lm raises anything from a config it cannot build
        raise _unbuildable(where, exc) from None


def _unbuildable(where: str, exc: Exception) -> ModelError:
    return ModelError(f"{where}: mlx-lm cannot build this model from its config ({foreign(exc)}); "
                      "check the config's fields")


def read_structure(config: dict[str, Any], where: str) -> Structure:
    """Build `config`'s model lazily and read its structure (see the module docstring), or take
    it from the disk cache (unimap/cache.py) where the same config was read before by the same
    unimap, mlx, mlx-lm and mlx-vlm: then none is imported. `config` is left as it was (mlx-lm's
    from_dict changes some configs it is given, Mistral 3's text_config among them: a caller that
    keyed anything on it after a read would key on what it never read again)."""
    return _cached(config, lambda: _read_structure(copy.deepcopy(config), where))


def read_vlm_structure(text: dict[str, Any], config: dict[str, Any], where: str,
                       text_where: str) -> Structure:
    """The structure of the vision-language model `config`'s language model: read from mlx-lm's
    model for `text` (the whole config, or its language model's), its caches from the language
    model mlx-vlm builds for `config` (read_vlm_caches); cached as read_structure is."""
    return _cached({"language model": text, "mlx-vlm": config},
                   lambda: read_vlm_caches(read_structure(text, text_where), config, where))


def read_vlm_language(config: dict[str, Any], where: str) -> Structure:
    """The structure of the language model mlx-vlm builds for the vision-language `config`,
    read from it as read_structure reads mlx-lm's model: for models whose language model is
    mlx-vlm's own (Llama 3.2 Vision, Mistral Large 3, Phi-4 multimodal, ...), which mlx-lm has no
    class for. Its parameter paths are the whole model's ("language_model.model.layers.0."), as
    mlx-vlm's checkpoints name them. Cached as read_structure is."""
    def read() -> Structure:
        try:
            from mlx_vlm.models.cache import make_prompt_cache
        except ImportError:
            raise ModelError(f"{where}: its language model is mlx-vlm's own, and mlx-vlm is not "
                             "installed: pip install 'unimap[vision]'") from None
        model = _build_vlm(config, where)
        language = _language_model(model, where)
        try:
            return _read_model(language, model, {}, where, make_prompt_cache)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign model unlike any mlx-lm builds
            raise ModelError(f"{where}: mlx-vlm's language model cannot be read as a decoder "
                             f"({foreign(exc)}); unimap cannot map it layer by layer") from None

    return _cached({"mlx-vlm language model": config}, read)


def _cached(config: dict[str, Any], read: Callable[[], Structure]) -> Structure:
    from unimap.cache import load_structure, store_structure, structure_key

    try:
        key = structure_key(config)
    except (TypeError, ValueError):  # a value JSON cannot hold (not from a config.json)
        return read()
    found = load_structure(key)
    if found is None:
        found = read()
        store_structure(key, found)
    return found


def _read_structure(config: dict[str, Any], where: str) -> Structure:
    model = build_lazy(config, where)
    return _read_model(model, model, config, where)


def _read_model(model: Any, root: Any, config: dict[str, Any], where: str,
                make_cache: Callable[[Any], list[Any]] | None = None) -> Structure:
    """The structure of `model` (a language model, built lazily), through the caches
    `make_cache` makes (mlx-lm's make_prompt_cache by default). `root` is the model whose
    parameter tree names the checkpoint's tensors: `model` itself, or the vision-language model
    it sits in."""
    from mlx.utils import tree_flatten

    layers = _layers(model, where)
    args = _text_args(model, config)
    vocab, hidden = _embedding(model, args, where)
    _weightless(model)
    inside = [list(layer.named_modules()) for layer in layers]  # (path, module) of each layer
    blocks = _switch_blocks(inside)
    probes = [_probe(model, layers, blocks, tokens, where, make_cache) for tokens in PROBE_TOKENS]
    kv_heads, head_dim = _kv_shape(probes[1].caches)
    # the heads each layer's attention call was handed, or its module says if more (a module
    # could fold repeated heads into another axis before the call)
    seen = probes[1].attention
    layer_heads = tuple(max(seen[i][0] if i in seen else 0, _heads(modules))
                        for i, modules in enumerate(inside))
    heads = max(layer_heads, default=0) or _first_int(args, HEAD_NAMES) or kv_heads
    moe = _moe(layers, inside, blocks, probes[1].top_k, args, hidden)
    flat: list[tuple[str, Any]] = tree_flatten(root.parameters())  # type: ignore[assignment]
    experts = moe.get("num_experts", 0)
    return Structure(
        module=_module_name(model), num_layers=len(layers),
        hidden_size=hidden, vocab_size=vocab, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, mlp_widths=tuple(_mlp_width(modules, hidden, experts) for modules in inside),
        caches=tuple(_layer_caches(probes, len(layers))), layer_prefixes=_prefixes(flat, layers),
        matrix_shapes=tuple((name, tuple(p.shape)) for name, p in flat if p.ndim == 2),
        kv_bits_refusal=_quantized_kv_refusal(model, make_cache) if root is model else "",
        layer_heads=layer_heads, attention_reads=_reads(probes[1], len(layers)), **moe)


def _quantized_kv_refusal(model: Any, make_cache: Callable[[Any], list[Any]] | None = None) -> str:
    """Why mlx-lm's forward pass of `model` cannot run on the quantized KV cache --kv-bits makes
    (unimap.generate.quantized_cache: every plain KVCache quantized in groups of 64), or "" when
    it can or has no plain KVCache: one lazy, traced forward pass of a few tokens through such
    caches. MLA models (DeepSeek V3, Kimi K2, GLM-4.7-Flash, Mistral 4) read their cache's arrays
    directly and fail on the quantized cache's tuples; a cached array narrower than a group (MLA's
    rope keys) fails to quantize."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

    made = (make_cache or make_prompt_cache)(model)
    if not any(type(c) is KVCache for c in made):
        return ""
    caches = [QuantizedKVCache(group_size=64, bits=8) if type(c) is KVCache else c for c in made]
    prompt = mx.zeros((1, PROBE_TOKENS[0]), dtype=mx.int32)
    try:
        mx.compile(lambda x: (model(x, cache=caches), x)[1])(prompt)
    except ValueError as exc:
        if "eval" in str(exc):  # a forward pass that evaluates arrays cannot be traced: not known
            return ""
        return _refusal(model, exc)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign forward pass
        return _refusal(model, exc)
    return ""


def _refusal(model: Any, exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return (f"{_runner(model)}'s {_module_name(model)} model cannot run on a "
            f"quantized KV cache ({type(exc).__name__}: {text[:160]})")


# mlx-vlm's shared MLA attention helpers, imported by the language models that attend as
# DeepSeek V3 does (a rotary score array beside the attention's own), and that family
MLA_IMPORT = re.compile(r"^from \.\.mla import", re.MULTILINE)
MLA_FAMILY = "deepseek_v3"


def _module_name(model: Any) -> str:
    """The module whose class `model` is, whose family's fit prices its arrays: mlx-lm's model
    module ("llama"); for mlx-vlm's language model of a package named as an mlx-lm module, that
    module (mlx-vlm's port of it: Mistral Large 3 runs mlx-vlm's deepseek_v3, MLA's score arrays
    and all; priced as no family's, it held 1.13 times its plan at 8,000 tokens); for one of
    mlx-vlm's own built on its MLA helpers (Youtu-VL), DeepSeek V3's; else mlx-vlm's package and
    module ("mllama.language"), a family no mlx-lm module's name can be."""
    module: str = type(model).__module__
    vlm = "mlx_vlm.models."
    if not module.startswith(vlm):
        return module.rsplit(".", 1)[-1]
    package, _, inner = module[len(vlm):].partition(".")
    if inner == "language" and model_source(package) is not None:
        return package
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        source = Path(path).read_text() if path else ""
    except OSError:
        source = ""
    return MLA_FAMILY if MLA_IMPORT.search(source) else module[len(vlm):]


def _reads(probe: _Probe, num_layers: int) -> tuple[int, ...]:
    """Per layer, the key and value elements per key its fused attention call read (0 where the
    probe saw none)."""
    return tuple(probe.attention[i][1] if i in probe.attention else 0 for i in range(num_layers))


def _layer_caches(probes: list[_Probe], num_layers: int) -> list[LayerCache]:
    """Each layer's cache, from the caches of the two probes (PROBE_TOKENS)."""
    per_cache = [_cache_reading(a, b) for a, b in zip(probes[0].caches, probes[1].caches,
                                                       strict=True)]
    return _assign(per_cache, num_layers, probes[1].handed)


def _language_model(model: Any, where: str) -> Any:
    import mlx.nn as nn

    language = getattr(model, "language_model", None)
    if not isinstance(language, nn.Module):  # type: ignore[attr-defined]
        raise ModelError(f"{where}: mlx-vlm's model has no language_model; unimap plans "
                         "models that generate text")
    return language


def read_vlm_caches(structure: Structure, config: dict[str, Any], where: str) -> Structure:
    """`structure` with its caches read from the language model mlx-vlm builds for the
    vision-language `config`: that one runs, and its caches may not be mlx-lm's (measured:
    Kimi-VL's keeps full keys and values where mlx-lm's keeps DeepSeek V3's compressed latent,
    4.0 times the bytes; Granite 4 Vision's attends in every layer where mlx-lm's granitemoehybrid
    has Mamba layers, 3.6 times; MiniMax-M3-VL's keeps an indexer's keys in more layers, 1.17
    times). Read as mlx-lm's are: a lazy forward through the caches the model makes. Without
    mlx-vlm nothing loads the model with its tower (unimap.load asks for mlx-vlm), and the
    structure stays mlx-lm's."""
    try:
        from mlx_vlm.models.cache import make_prompt_cache
    except ImportError:
        return structure
    language = _language_model(_build_vlm(config, where), where)
    layers = _layers(language, where)
    _weightless(language)
    probes = [_probe(language, layers, [], tokens, where, make_prompt_cache)
              for tokens in PROBE_TOKENS]
    caches = _layer_caches(probes, len(layers))
    if len(caches) != structure.num_layers:
        raise ModelError(f"{where}: mlx-vlm's language model has {len(caches)} decoder layers "
                         f"and mlx-lm's {structure.num_layers}; unimap cannot tell which runs "
                         "where (check the config's layer counts)")
    return replace(structure, caches=tuple(caches), attention_reads=_reads(probes[1], len(layers)))


def _build_vlm(config: dict[str, Any], where: str) -> Any:
    """mlx-vlm's Model for `config`, built as its loader builds it, parameters not evaluated."""
    import mlx.core as mx
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    config = copy.deepcopy(config)
    try:
        model_class, _ = get_model_and_args(config=config)
        config.setdefault("text_config", config.pop("llm_config", {}))
        config.setdefault("vision_config", {})
        config.setdefault("audio_config", {})
        model_config = update_module_configs(
            model_class.ModelConfig.from_dict(config), model_class, config,
            ["text", "vision", "perceiver", "projector", "audio"])
        model = model_class.Model(model_config)
        mx.eval(mx.random.state)  # as in build_lazy: cut the initialisers' key graph
        return model
    except Exception as exc:  # mlx-vlm raises anything from a config it cannot build
        raise ModelError(f"{where}: mlx-vlm cannot build this model from its config "
                         f"({foreign(exc)}); check the config's fields") from None


def _weightless(model: Any) -> None:
    """Give every parameter the value 0 broadcast to its shape, float ones in float16 (the caches
    then show which arrays follow the model's dtype). Shapes are all the probe reads; and should a
    model evaluate mid-forward (dbrx routes with .tolist()), a broadcast scalar allocates nothing,
    where a lazily initialized full-size weight would be materialized and kept."""
    import mlx.core as mx
    from mlx.utils import tree_map

    def zero(p: Any) -> Any:
        dtype = mx.float16 if mx.issubdtype(p.dtype, mx.floating) else p.dtype
        return mx.broadcast_to(mx.zeros((), dtype=dtype), p.shape)

    model.update(tree_map(zero, model.parameters()))


def _layers(model: Any, where: str) -> list[Any]:
    try:
        layers = list(model.layers)
    except (AttributeError, TypeError):
        raise ModelError(f"{where}: {_runner(model)}'s model exposes no list of decoder layers; unimap "
                         "cannot map it layer by layer") from None
    if not layers:
        raise ModelError(f"{where}: the model has no decoder layers")
    return layers


def _prefixes(flat: list[tuple[str, Any]], layers: list[Any]) -> tuple[str, ...]:
    """Where each layer's parameters sit in the model's tree ("model.layers.3."), from the
    model's flattened parameters."""
    from mlx.utils import tree_flatten

    names = {id(v): k for k, v in flat}
    out = []
    for layer in layers:
        own: list[tuple[str, Any]] = tree_flatten(layer.parameters())  # type: ignore[assignment]
        full = names.get(id(own[0][1]), "") if own else ""
        out.append(full[:len(full) - len(own[0][0])] if full else "")
    return tuple(out)


def _text_args(model: Any, config: dict[str, Any]) -> Any:
    """The language model's arguments: the model's own, or its text_config for wrappers."""
    args = getattr(model, "args", None) or getattr(model, "config", None)
    text = getattr(args, "text_config", None) or config.get("text_config")
    if isinstance(text, dict):
        return SimpleNamespace(**text)
    return text if text is not None else args


TOKEN_EMBEDDINGS = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embedding",
                    "embeddings", "emb")


def _embedding(model: Any, args: Any, where: str) -> tuple[int, int]:
    """(vocabulary, width) of the token embedding: by its usual names, else the one with as many
    rows as the vocabulary, else the first (position and n-gram tables come later or differ)."""
    import mlx.nn as nn

    kinds = (nn.Embedding, nn.QuantizedEmbedding)  # type: ignore[attr-defined]
    found = [(p, m) for p, m in model.named_modules() if isinstance(m, kinds) and m.weight.ndim == 2]
    if not found:
        raise ModelError(f"{where}: {_runner(model)}'s model has no token embedding; unimap cannot "
                         "size it")
    vocab = _first_int(args, ("vocab_size", "n_vocab", "padded_vocab_size"))
    named = [m for p, m in found if p.rsplit(".", 1)[-1] in TOKEN_EMBEDDINGS]
    sized = [m for _, m in found if m.weight.shape[0] == vocab]
    chosen = (named or sized or [m for _, m in found])[0]
    rows, width = chosen.weight.shape
    bits = getattr(chosen, "bits", None)
    return int(rows), int(width * 32 // bits if bits else width)


def _heads(modules: list[tuple[str, Any]]) -> int:
    """A layer's query heads, from its first attention module that says (n_heads, num_heads,
    ...); 0 when none does. Layers of one model can differ: Step-3.5's and Laguna's sliding
    layers, Baichuan-M1's (num_swa_attention_heads)."""
    for path, module in modules:
        if _ATTENTION_ONLY.search(path.rsplit(".", 1)[-1]):
            found = _first_int(module, HEAD_NAMES)
            if found:
                return found
    return 0


@dataclass
class _Probe:
    caches: list[Any]
    handed: dict[int, list[int]]  # layer index -> indices of the caches it was handed
    top_k: dict[int, int]  # id of a switch block -> experts each token was routed to
    # layer index -> (query heads, key/value elements per key) of its first fused attention call
    attention: dict[int, tuple[int, int]] = field(default_factory=dict)


def _probe(model: Any, layers: list[Any], blocks: list[Any], tokens: int, where: str,
           make_cache: Callable[[Any], list[Any]] | None = None) -> _Probe:
    """A lazy forward of `tokens` tokens through the model's own caches (mlx-lm's
    make_prompt_cache, or the given one), noting which caches each layer is handed and how many
    experts each MoE block routes every token to."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    make = make_cache or make_prompt_cache
    found = _Probe(make(model), {}, {})
    positions = {id(c): j for j, c in enumerate(found.caches)}
    current = [-1]  # the layer the forward pass is in

    def on_layer(index: int, values: tuple[Any, ...]) -> None:
        current[0] = index
        for value in values:
            j = positions.get(id(value))
            if j is not None and j not in found.handed.setdefault(index, []):
                found.handed[index].append(j)

    def on_block(index: int, values: tuple[Any, ...]) -> None:
        routed = [v.shape[-1] for v in values if isinstance(v, mx.array) and v.ndim >= 2
                  and mx.issubdtype(v.dtype, mx.integer)]
        if routed:
            found.top_k[id(blocks[index])] = max(routed)

    def on_attention(q: Any, k: Any, v: Any) -> None:
        if current[0] >= 0 and q.ndim == k.ndim == v.ndim == 4:
            found.attention.setdefault(current[0], (q.shape[1], k.shape[1] * k.shape[3]
                                                    + v.shape[1] * v.shape[3]))

    prompt = mx.zeros((1, tokens), dtype=mx.int32)
    with _watching(layers, on_layer), _watching(blocks, on_block), _attending(on_attention):
        try:  # traced by mx.compile, which refuses a forward pass that evaluates arrays (the
            # traced function hands back its input: nothing is left for compile to optimize)
            mx.compile(lambda x: (model(x, cache=found.caches), x)[1])(prompt)
        except ValueError as exc:
            if "eval" not in str(exc):
                raise _fails(model, where, tokens, exc) from None
            _evaluates(model, where)
            found = _Probe(make(model), {}, {})
            positions.update({id(c): j for j, c in enumerate(found.caches)})
            try:
                model(prompt, cache=found.caches)
            except Exception as again:  # noqa: BLE001 - any failure of a foreign forward pass
                raise _fails(model, where, tokens, again) from None
        except Exception as exc:  # noqa: BLE001 - any failure of a foreign forward pass
            raise _fails(model, where, tokens, exc) from None
    found.caches = list(found.caches)
    return found


EAGER_PROBE_BYTES = 1 << 30  # the most parameters (float16) a forward that evaluates may touch


def _evaluates(model: Any, where: str) -> None:
    """A model whose forward pass evaluates arrays (dbrx routes with .tolist()) computes as it is
    probed: allowed while its weights are small, else a ModelError that says so."""
    from mlx.utils import tree_flatten

    flat: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    size = sum(p.size * p.dtype.size for _, p in flat)
    if size > EAGER_PROBE_BYTES:
        raise ModelError(f"{where}: {_runner(model)}'s {type(model).__module__} evaluates arrays inside its "
                         "forward pass, so unimap cannot read its caches without computing through "
                         f"{size / 2**30:.0f} GiB of weights; plan it with a manual map (-n)")


def _fails(model: Any, where: str, tokens: int, exc: Exception) -> ModelError:
    return ModelError(f"{where}: {_runner(model)}'s model fails on a {tokens}-token prompt "
                      f"({type(exc).__name__}: {exc}); unimap cannot read its caches")


def _runner(model: Any) -> str:
    """The package whose class `model` is, as users install it: mlx-lm or mlx-vlm."""
    return type(model).__module__.split(".", 1)[0].replace("_", "-")


@contextmanager
def _attending(seen: Callable[[Any, Any, Any], None]) -> Iterator[None]:
    """Within the block, every call of MLX's fused attention first hands `seen(q, k, v)`: the
    shapes attention really reads, whatever a module's attributes say (mlx-lm's models call it
    through mlx_lm.models.base, which looks it up at each call)."""
    import mlx.core as mx

    fused = mx.fast.scaled_dot_product_attention

    def noted(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> Any:
        seen(q, k, v)
        return fused(q, k, v, *args, **kwargs)

    mx.fast.scaled_dot_product_attention = noted
    try:
        yield
    finally:
        mx.fast.scaled_dot_product_attention = fused


@contextmanager
def _watching(modules: list[Any], seen: Callable[[int, tuple[Any, ...]], None]) -> Iterator[None]:
    """Within the block, each call of modules[i] first hands `seen(i, its arguments)`."""
    classes = [type(m) for m in modules]
    try:
        for index, module in enumerate(modules):
            module.__class__ = _noting(classes[index], index, seen)
        yield
    finally:
        for module, cls in zip(modules, classes, strict=True):
            module.__class__ = cls


def _noting(cls: type, index: int, seen: Callable[[int, tuple[Any, ...]], None]) -> type:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen(index, (*args, *kwargs.values()))
        return cls.__call__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": call})


Held = tuple[tuple[int, ...], int]  # (shape, bytes per element) of an array a cache holds


def state_arrays(state: Any) -> list[Any]:
    """Every MLX array inside a cache's state (nested lists and tuples that may hold None)."""
    import mlx.core as mx

    if isinstance(state, mx.array):
        return [state]
    if isinstance(state, list | tuple):
        return [a for item in state for a in state_arrays(item)]
    return []


def _held(cache: Any) -> list[Held]:
    """What a cache holds after the probe. KV caches allocate in steps of 256 tokens, so their
    (batch, heads, tokens, dim) arrays count only the tokens they hold (`size()`); nested caches
    (CacheList) are read member by member; anything else by its state."""
    inner = getattr(cache, "caches", None)
    if isinstance(inner, list | tuple):
        return [x for c in inner for x in _held(c)]
    size = cache.size() if callable(getattr(cache, "size", None)) else 0
    offset = getattr(cache, "offset", None)
    if not size and isinstance(offset, int):  # e.g. ChunkedKVCache: tokens since its start
        size = offset - getattr(cache, "start_position", 0)
    if getattr(cache, "keys", None) is not None and isinstance(size, int) and size > 0:
        arrays = state_arrays([cache.keys, getattr(cache, "values", None)])
        return [((*a.shape[:2], min(size, a.shape[2]), *a.shape[3:]) if a.ndim == 4 else a.shape,
                 a.dtype.size) for a in arrays]
    try:
        return [(a.shape, a.dtype.size) for a in state_arrays(cache.state)]
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return []


def _elements(held: list[Held], wide: bool) -> int:
    """Elements of the arrays that follow the model dtype (wide=False) or are float32 (True)."""
    return sum(math.prod(shape) for shape, size in held if (size >= 4) == wide and size > 1)


def _window(cache: Any) -> int | None:
    for name in ("max_size", "chunk_size"):
        value = getattr(cache, name, None)
        if isinstance(value, int) and value > 0:
            return value
    inner = getattr(cache, "caches", None)
    if isinstance(inner, list | tuple):
        windows = [w for w in (_window(c) for c in inner) if w]
        return max(windows) if windows else None
    return None


def _chunked(cache: Any) -> bool:
    """A ChunkedKVCache (llama4's chunked attention), alone or inside a CacheList: unlike a
    RotatingKVCache it keeps its chunk's tokens and allocates in steps of 256 past them."""
    inner = getattr(cache, "caches", None)
    if isinstance(inner, list | tuple):
        return any(_chunked(c) for c in inner)
    return isinstance(getattr(cache, "chunk_size", None), int)


def _cache_reading(two: Any, three: Any) -> LayerCache:
    small, large = _held(two), _held(three)
    half = [_elements(small, False), _elements(large, False)]
    wide = [_elements(small, True), _elements(large, True)]
    short, long = PROBE_TOKENS
    token = (half[1] - half[0] + wide[1] - wide[0]) // (long - short)
    state = half[0] + wide[0] - short * token
    keys = _keys(large)
    head_dim = keys[0][-1] if keys else 0
    window = _window(three)
    kind = ("full" if token and window is None else "sliding" if token
            else "recurrent" if state else "none")
    from mlx_lm.models.cache import KVCache

    states = [shape for shape, _ in large if len(shape) == 4 and shape[2] != PROBE_TOKENS[1]]
    largest = max(states, key=math.prod, default=(0, 0, 0, 0))
    return LayerCache(kind=kind, token_elements=token, state_elements=max(state, 0),
                      window=window if token else None, head_dim=head_dim,
                      quantizable=type(three) is KVCache,
                      state_float32=bool(wide[0]) and not token,
                      state_heads=max((shape[1] for shape in states), default=0),
                      chunked=bool(token) and _chunked(three), state_dims=(largest[2], largest[3]))


def _assign(per_cache: list[LayerCache], num_layers: int,
            handed: dict[int, list[int]]) -> list[LayerCache]:
    """Caches to layers: each cache to the first layer handed it in the forward pass (layers
    handed one already owned share it, so hold nothing more; a layer handed several, as in
    looped models, holds them all). A model that hands its layers no cache object: cache i to
    layer i mod the layer count."""
    owner: dict[int, int] = {}
    for layer in sorted(handed):
        for j in handed[layer]:
            owner.setdefault(j, layer)
    if len(owner) < len(per_cache):
        owner = {j: j % num_layers for j in range(len(per_cache))}
    empty = LayerCache("none", 0, 0, None, 0, False)
    out = [empty] * num_layers
    for j, cache in enumerate(per_cache):
        layer = owner[j]
        out[layer] = cache if out[layer] is empty else _merge(out[layer], cache)
    return out


def _merge(a: LayerCache, b: LayerCache) -> LayerCache:
    token = a.token_elements + b.token_elements
    window = None if "full" in (a.kind, b.kind) else max(a.window or 0, b.window or 0) or None
    kind = "full" if "full" in (a.kind, b.kind) else "sliding" if token else a.kind
    return LayerCache(kind, token, a.state_elements + b.state_elements, window,
                      max(a.head_dim, b.head_dim), a.quantizable and b.quantizable,
                      a.state_float32 or b.state_float32, max(a.state_heads, b.state_heads),
                      a.chunked or b.chunked, max(a.state_dims, b.state_dims, key=math.prod))


def _keys(held: list[Held]) -> list[tuple[int, ...]]:
    """The shapes like keys (B, heads, tokens, dim) after the longer probe."""
    return [shape for shape, _ in held if len(shape) == 4 and shape[2] == PROBE_TOKENS[1]]


def _kv_shape(caches: list[Any]) -> tuple[int, int]:
    """(kv heads, head dim) of the first attention cache's keys; (0, 0) without attention."""
    for cache in caches:
        keys = _keys(_held(cache))
        if keys:
            return keys[0][1], keys[0][3]
    return 0, 0


def _first_int(obj: Any, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(obj, name, None) if obj is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _linears(modules: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    import mlx.nn as nn

    kinds = (nn.Linear, nn.QuantizedLinear)  # type: ignore[attr-defined]
    return [(path, m) for path, m in modules if isinstance(m, kinds)]


ROUTERS = ("gate", "router", "wg", "gating", "classifier")  # last path part of MoE routers


def _mlp_width(modules: list[tuple[str, Any]], hidden: int, experts: int) -> int:
    """The widest projection out of the hidden size outside attention (the MLP as built; an
    MoE router, with one output per expert, is not an MLP)."""
    widths = [m.weight.shape[0] for path, m in _linears(modules)
              if not _ATTENTION.search(path) and _in_dims(m) == hidden
              and not (experts and m.weight.shape[0] == experts
                       and path.rsplit(".", 1)[-1] in ROUTERS)]
    return int(max(widths, default=0))


def _width(shapes: Sequence[tuple[int, ...]], hidden: int) -> int:
    """An MLP's width from its projections' (..., out, in) shapes: the side that is not the
    hidden size (the hidden size itself when both are)."""
    other = [out if out != hidden else inp for *_, out, inp in shapes]
    return max((w for w in other if w != hidden), default=hidden)


def _in_dims(linear: Any) -> int:
    bits = getattr(linear, "bits", None)
    width = int(linear.weight.shape[-1])
    return width * 32 // bits if bits else width


def _switch_blocks(inside: list[list[tuple[str, Any]]]) -> list[Any]:
    """The modules that hold switch (stacked-expert) linears: mlx-lm's SwitchGLU, SwitchMLP
    and their family variants."""
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    switch = (SwitchLinear, QuantizedSwitchLinear)
    return [m for modules in inside for _, m in modules
            if any(isinstance(c, switch) for c in _children(m))]


def _moe(layers: list[Any], inside: list[list[tuple[str, Any]]], blocks: list[Any],
         routed: dict[int, int], args: Any, hidden: int) -> dict[str, Any]:
    """Experts, top-k (what the forward pass routed each token to), expert and shared widths
    from the switch layers mlx-lm builds."""
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    switch = (SwitchLinear, QuantizedSwitchLinear)
    ids = {id(b) for b in blocks}
    sparse, experts, width, top_k, shared = [], 0, 0, 0, 0
    for layer, modules in zip(layers, inside, strict=True):
        found = [(p, m) for p, m in modules if id(m) in ids]
        sparse.append(bool(found))
        for path, block in found:
            linears = [c for c in _children(block) if isinstance(c, switch)]
            experts = max(experts, max(int(c.weight.shape[0]) for c in linears))
            width = max(width, _width([_dims(c) for c in linears], hidden))
            parent = _parent(layer, path)
            k = routed.get(id(block)) or _first_int(parent, TOP_K_NAMES) or _first_int(args, TOP_K_NAMES)
            top_k = max(top_k, k)
            shared = max(shared, _shared_width(parent, hidden))
    if not experts:
        return {}
    return {"num_experts": experts, "experts_per_token": min(top_k or experts, experts),
            "expert_width": width, "shared_width": shared, "sparse_layers": tuple(sparse)}


def _children(module: Any) -> list[Any]:
    return [c for c in module.children().values() if hasattr(c, "children")]


def _parent(layer: Any, path: str) -> Any:
    """The module that routes to the switch block at `path` (its parent, or the block itself)."""
    parts = path.split(".")[:-1] if path else []
    module = layer
    for part in parts:
        module = module[int(part)] if isinstance(module, list) else getattr(module, part, module)
    return module


def _dims(linear: Any) -> tuple[int, int]:
    """(out, in) of a linear or switch linear, unpacking quantized input dims."""
    return int(linear.weight.shape[-2]), _in_dims(linear)


def _shared_width(moe_block: Any, hidden: int) -> int:
    for name, child in moe_block.children().items():
        if "shared" in name and hasattr(child, "named_modules"):
            found = [_dims(m) for _, m in _linears(list(child.named_modules()))]
            return _width(found, hidden) if found else 0
    return 0
