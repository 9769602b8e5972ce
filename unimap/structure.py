"""A model's structure read from mlx-lm's own Model class, built lazily from config.json.

Nothing is evaluated: MLX arrays are lazy, so constructing `Model(ModelArgs.from_dict(config))`
and running a few tokens through it only records shapes. From that we read what the estimate
needs for any architecture mlx-lm runs: the decoder layers, each layer's cache (the cache objects
the model makes, and the elements one token adds to each, measured from their state after 256 and
512 tokens), the MoE routing (experts from the switch layers' weights, top-k from the block that
routes) and the widths of the layers as mlx-lm builds them. A config mlx-lm cannot build is a
ModelError naming the field or the reason. This module imports mlx and mlx-lm, lazily.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from unimap.errors import ModelError
from unimap.families import LayerCache

PROBE_TOKENS = (256, 512)  # two lazy forwards, whole steps of mlx-lm's KVCache (which holds
# its buffer in steps of 256 tokens): per-token cache growth and fixed state
TOP_K_NAMES = ("top_k", "num_experts_per_tok", "moe_topk", "moe_top_k", "moe_k",
               "num_experts_per_token", "experts_per_token", "n_activated_experts", "k")
HEAD_NAMES = ("num_attention_heads", "n_heads", "num_heads", "n_head", "num_query_heads")
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


def model_classes(config: dict[str, Any], where: str) -> tuple[Any, Any]:
    """mlx-lm's (Model, ModelArgs) for `config`, or a ModelError saying why there are none."""
    from mlx_lm.utils import _get_classes

    try:
        return _get_classes(config)  # type: ignore[no-any-return]
    except ValueError:
        raise ModelError(f"{where}: model_type {config.get('model_type')!r} is not an architecture "
                         "the installed mlx-lm runs (upgrade mlx-lm, or check the config)") from None
    except (ImportError, SystemExit) as exc:
        raise ModelError(f"{where}: mlx-lm's module for {config.get('model_type')!r} cannot be "
                         f"imported ({exc}); install what it needs") from None


def build_lazy(config: dict[str, Any], where: str) -> Any:
    """The mlx-lm model for `config`, parameters not evaluated."""
    model_class, args_class = model_classes(config, where)
    try:
        args = args_class.from_dict(config)
        return model_class(args)
    except TypeError as exc:
        if "required positional argument" not in str(exc):
            raise _unbuildable(where, exc) from None
        names = ", ".join(repr(m) for m in re.findall(r"'(\w+)'", str(exc)))
        raise ModelError(f"{where}: missing {names}, which mlx-lm's {model_class.__module__} needs; "
                         "the config is incomplete") from None
    except Exception as exc:  # mlx-lm raises anything from a config it cannot build
        raise _unbuildable(where, exc) from None


def _unbuildable(where: str, exc: Exception) -> ModelError:
    return ModelError(f"{where}: mlx-lm cannot build this model from its config "
                      f"({type(exc).__name__}: {exc}); check the config's fields")


def read_structure(config: dict[str, Any], where: str) -> Structure:
    """Build `config`'s model lazily and read its structure (see the module docstring)."""
    import mlx.core as mx

    model = build_lazy(config, where)
    layers = _layers(model, where)
    vocab, hidden = _embedding(model, where)
    model.set_dtype(mx.float16)  # lazy: the caches then show which arrays follow the model dtype
    caches = [_probe_caches(model, tokens, where) for tokens in PROBE_TOKENS]
    per_cache = [_cache_reading(a, b) for a, b in zip(caches[0], caches[1], strict=True)]
    layer_caches = _assign(per_cache, len(layers))
    args = getattr(model, "args", None) or getattr(model, "config", None)
    kv_heads, head_dim = _kv_shape(caches[1])
    heads = _first_int(args, HEAD_NAMES) or kv_heads
    moe = _moe(layers, args)
    experts = moe.get("num_experts", 0)
    return Structure(
        module=type(model).__module__.rsplit(".", 1)[-1], num_layers=len(layers),
        hidden_size=hidden, vocab_size=vocab, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, mlp_widths=tuple(_mlp_width(layer, hidden, experts) for layer in layers),
        caches=tuple(layer_caches), **moe)


def _layers(model: Any, where: str) -> list[Any]:
    try:
        layers = list(model.layers)
    except (AttributeError, TypeError):
        raise ModelError(f"{where}: mlx-lm's model exposes no list of decoder layers; unimap "
                         "cannot map it layer by layer") from None
    if not layers:
        raise ModelError(f"{where}: the model has no decoder layers")
    return layers


def _embedding(model: Any, where: str) -> tuple[int, int]:
    """(vocabulary, width) of the token embedding: the Embedding with the most rows."""
    import mlx.nn as nn

    kinds = (nn.Embedding, nn.QuantizedEmbedding)  # type: ignore[attr-defined]
    found = [m for _, m in model.named_modules() if isinstance(m, kinds)]
    if not found:
        raise ModelError(f"{where}: mlx-lm's model has no token embedding; unimap cannot size it")
    rows, width = max((m.weight.shape[0], m.weight.shape[1]) for m in found
                      if len(m.weight.shape) == 2)
    return int(rows), int(width)


def _probe_caches(model: Any, tokens: int, where: str) -> list[Any]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    try:
        model(mx.zeros((1, tokens), dtype=mx.int32), cache=cache)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign forward pass
        raise ModelError(f"{where}: mlx-lm's model fails on a {tokens}-token prompt "
                         f"({type(exc).__name__}: {exc}); unimap cannot read its caches") from None
    return list(cache)


def _arrays(state: Any) -> list[Any]:
    """Every MLX array inside a cache's state (nested lists, tuples, other caches)."""
    import mlx.core as mx

    if isinstance(state, mx.array):
        return [state]
    if isinstance(state, list | tuple):
        return [a for item in state for a in _arrays(item)]
    return []


def _state(cache: Any) -> list[Any]:
    try:
        return _arrays(cache.state)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return []


def _elements(arrays: list[Any], wide: bool) -> int:
    """Elements of the arrays that follow the model dtype (wide=False) or are float32 (True)."""
    return sum(a.size for a in arrays if (a.dtype.size >= 4) == wide and a.dtype.size > 1)


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


def _cache_reading(two: Any, three: Any) -> LayerCache:
    small, large = _state(two), _state(three)
    half = [_elements(small, False), _elements(large, False)]
    wide = [_elements(small, True), _elements(large, True)]
    short, long = PROBE_TOKENS
    token = (half[1] - half[0] + wide[1] - wide[0]) // (long - short)
    state = half[0] + wide[0] - short * token
    keys = _keys(large)
    head_dim = int(keys[0].shape[-1]) if keys else 0
    window = _window(three)
    kind = ("full" if token and window is None else "sliding" if token
            else "recurrent" if state else "none")
    from mlx_lm.models.cache import KVCache

    return LayerCache(kind=kind, token_elements=token, state_elements=max(state, 0),
                      window=window if token else None, head_dim=head_dim,
                      quantizable=type(three) is KVCache,
                      state_float32=bool(wide[0]) and not token)


def _assign(per_cache: list[LayerCache], num_layers: int) -> list[LayerCache]:
    """Caches to layers: cache i belongs to layer i mod the layer count (fewer caches than
    layers: later layers share an earlier one's; more: a layer used in several passes)."""
    empty = LayerCache("none", 0, 0, None, 0, False)
    out = [empty] * num_layers
    for i, cache in enumerate(per_cache):
        layer = i % num_layers
        out[layer] = cache if out[layer] is empty else _merge(out[layer], cache)
    return out


def _merge(a: LayerCache, b: LayerCache) -> LayerCache:
    token = a.token_elements + b.token_elements
    window = None if "full" in (a.kind, b.kind) else max(a.window or 0, b.window or 0) or None
    kind = "full" if "full" in (a.kind, b.kind) else "sliding" if token else a.kind
    return LayerCache(kind, token, a.state_elements + b.state_elements, window,
                      max(a.head_dim, b.head_dim), a.quantizable and b.quantizable,
                      a.state_float32 or b.state_float32)


def _keys(arrays: list[Any]) -> list[Any]:
    """The arrays shaped like keys (B, heads, tokens, dim) after the longer probe."""
    return [a for a in arrays if len(a.shape) == 4 and a.shape[2] == PROBE_TOKENS[1]]


def _kv_shape(caches: list[Any]) -> tuple[int, int]:
    """(kv heads, head dim) of the first attention cache's keys; (0, 0) without attention."""
    for cache in caches:
        keys = _keys(_state(cache))
        if keys:
            return int(keys[0].shape[1]), int(keys[0].shape[3])
    return 0, 0


def _first_int(obj: Any, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(obj, name, None) if obj is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _linears(module: Any) -> list[tuple[str, Any]]:
    import mlx.nn as nn

    kinds = (nn.Linear, nn.QuantizedLinear)  # type: ignore[attr-defined]
    return [(path, m) for path, m in module.named_modules() if isinstance(m, kinds)]


def _mlp_width(layer: Any, hidden: int, experts: int) -> int:
    """The widest projection out of the hidden size outside attention (the MLP as built; an
    MoE router, with one output per expert, is not an MLP)."""
    widths = [m.weight.shape[0] for path, m in _linears(layer)
              if not _ATTENTION.search(path) and _in_dims(m) == hidden
              and not (experts and m.weight.shape[0] == experts)]
    return int(max(widths, default=0))


def _in_dims(linear: Any) -> int:
    bits = getattr(linear, "bits", None)
    width = int(linear.weight.shape[-1])
    return width * 32 // bits if bits else width


def _moe(layers: list[Any], args: Any) -> dict[str, Any]:
    """Experts, top-k, expert and shared widths from the switch layers mlx-lm builds."""
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    switch = (SwitchLinear, QuantizedSwitchLinear)
    sparse, experts, width, top_k, shared = [], 0, 0, 0, 0
    for layer in layers:
        blocks = [(p, m) for p, m in layer.named_modules()
                  if any(isinstance(c, switch) for c in _children(m))]
        sparse.append(bool(blocks))
        for path, block in blocks:
            linears = [c for c in _children(block) if isinstance(c, switch)]
            experts = max(experts, max(int(c.weight.shape[0]) for c in linears))
            width = max(width, max(int(c.weight.shape[1]) for c in linears))
            parent = _parent(layer, path)
            top_k = max(top_k, _first_int(parent, TOP_K_NAMES) or _first_int(args, TOP_K_NAMES))
            shared = max(shared, _shared_width(parent))
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


def _shared_width(moe_block: Any) -> int:
    for name, child in moe_block.children().items():
        if "shared" in name and hasattr(child, "named_modules"):
            return int(max((m.weight.shape[0] for _, m in _linears(child)), default=0))
    return 0
