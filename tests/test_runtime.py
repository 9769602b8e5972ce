"""The runtime: a loaded, mapped model generates what plain mlx-lm generates, each layer runs on
the stream its plan gave it, memory stays within the plan, and global state is restored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_models import CONFIGS, stand_in_machine, write_tiny_model

import unimap
from unimap.api import load
from unimap.generate import generate, stream_generate
from unimap.plan import LIMIT_HEADROOM_ARRAYS
from unimap.runtime import Limits

PROMPT = [1, 7, 12, 5, 33, 90, 41, 8, 19, 64, 3, 77]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: write_tiny_model(root / family, family) for family in CONFIGS}


def reference(path: Path, steps: int = 10) -> tuple[list[int], np.ndarray]:
    """Plain mlx-lm: greedy tokens and the prompt's logits."""
    from mlx_lm import load as mlx_load

    return reference_of(mlx_load(str(path))[0], steps)


def reference_of(model: Any, steps: int = 10) -> tuple[list[int], np.ndarray]:
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    tokens = [int(t) for t, _ in generate_step(mx.array(PROMPT), model, max_tokens=steps,
                                                  sampler=make_sampler(0.0))]
    return tokens, np.array(model(mx.array([PROMPT])).astype(mx.float32))


def unimap_run(model: Any, tokenizer: Any, steps: int = 10) -> tuple[list[int], np.ndarray]:
    tokens = [r.token for r in stream_generate(model, tokenizer, list(PROMPT), max_tokens=steps)]
    return [t for t in tokens if t is not None], np.array(model(mx.array([PROMPT])).astype(mx.float32))


def mapped(path: Path, device_map: object = "auto", **kwargs: Any) -> tuple[Any, Any, Any]:
    with pytest.warns(DeprecationWarning) if device_map != "auto" else _nothing():
        return load(path, device_map=device_map, max_seq_len=64, **kwargs)  # type: ignore[arg-type]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("split", [0, 1, 3, 4])
def test_same_tokens_as_mlx_lm_for_every_placement(tiny: dict[str, Path], family: str,
                                                    split: int) -> None:
    """Layers 0..split-1 on the GPU part, the rest on the CPU (split 4 = all on the GPU)."""
    expected_tokens, expected_logits = reference(tiny[family])
    model, tokenizer, plan = mapped(tiny[family], device_map=split, machine=stand_in_machine())
    assert [len(d.layers) for d in plan.devices] == [split, 4 - split]
    tokens, logits = unimap_run(model, tokenizer)
    assert tokens == expected_tokens
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_each_layer_runs_on_its_planned_stream(tiny: dict[str, Path], family: str) -> None:
    model, tokenizer, plan = mapped(tiny[family], device_map=2, machine=stand_in_machine())
    state = model._unimap
    placement = state.placement
    seen: dict[int, Any] = {}
    for index, layer in enumerate(model.layers):  # record the default stream inside each MLP
        mlp = layer.mlp if hasattr(layer, "mlp") else layer.block_sparse_moe
        base = type(mlp)

        def call(self: Any, x: Any, _base: type = base, _i: int = index) -> Any:
            seen[_i] = mx.default_stream(mx.default_device())
            return _base.__call__(self, x)

        mlp.__class__ = type(base.__name__, (base,), {"__call__": call})
    unimap_run(model, tokenizer, steps=2)
    assert placement.pinned and not placement.gpu_is_real  # the CPU build: two CPU streams
    assert [seen[i] == placement.gpu_stream for i in range(4)] == [True, True, False, False]
    assert [seen[i] == placement.cpu_stream for i in range(4)] == [False, False, True, True]
    assert plan.device("cpu").layers == (2, 3)


def test_cpu_part_of_a_split_computes_in_float32(tmp_path: Path) -> None:
    """On x86-64 a split's CPU layers run in float32 (the fast MLX CPU path); the plan priced
    them so, and what the layers hand back stays in the model's dtype."""
    path = write_tiny_model(tmp_path / "bf16", "llama", dtype="bfloat16")
    mx.clear_cache()
    mx.reset_peak_memory()
    model, tokenizer, plan = mapped(path, device_map=2, machine=stand_in_machine())
    assert plan.cpu_dtype == "float32"
    assert model.layers[3].mlp.up_proj.weight.dtype == mx.float32
    assert model.layers[0].mlp.up_proj.weight.dtype == mx.bfloat16
    out = model.layers[3](mx.zeros((1, 4, 64), mx.bfloat16), mask="causal", cache=None)
    assert out.dtype == mx.bfloat16
    expected_tokens, expected_logits = reference(path)
    tokens, logits = unimap_run(model, tokenizer)
    np.testing.assert_allclose(logits, expected_logits, atol=0.1)  # bf16 vs float32 rounding
    resident = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
    assert resident == sum(d.weight_bytes for d in plan.devices)
    assert mx.get_peak_memory() <= plan.peak_bytes


def float32_reference(path: Path, cpu_layers: range) -> tuple[list[int], np.ndarray]:
    """What unimap ran before it kept experts as stored: the CPU layers cast to float32 whole
    (MLX's CPU gather_mm takes float32 only), handing back the model's dtype; the other layers
    (a stand-in GPU's, on a CPU stream here) upcasting their experts as unimap does."""
    from mlx_lm import load as mlx_load

    from unimap.runtime import cast_floats, new_streams, pin, upcast_experts

    model, _ = mlx_load(str(path), lazy=True)
    streams = new_streams()
    for index, layer in enumerate(model.layers):
        on_cpu = index in cpu_layers
        cast_floats(layer, "float32") if on_cpu else upcast_experts(layer)
        pin(layer, streams.cpu_stream if on_cpu else streams.gpu_stream,
            mx.float32 if on_cpu else None)
    mx.eval(model.parameters())
    return reference_of(model)


def expert_bytes(model: Any, layers: range) -> tuple[int, set[Any]]:
    """Bytes and dtypes of the routed experts' parameters in `layers`."""
    from unimap.runtime import is_expert_path

    found = [p for i in layers for name, p in tree_flatten(model.layers[i].parameters())
             if is_expert_path(name)]
    return sum(p.nbytes for p in found), {p.dtype for p in found}


def stored_expert_bytes(path: Path, layers: range) -> int:
    from unimap.headers import read_header
    from unimap.inspect import is_expert

    prefixes = tuple(f"model.layers.{i}." for i in layers)
    return sum(t.nbytes for name, t in read_header(path / "model.safetensors")[0].items()
               if name.startswith(prefixes) and is_expert(name))


def test_half_precision_moe_on_a_cpu_only_machine_keeps_its_experts_as_stored(tmp_path: Path) -> None:
    """MLX's CPU gather_mm takes float32 only: plain mlx-lm cannot run a bf16 MoE on the CPU.
    unimap keeps the experts in bf16 and upcasts per call only the experts a call selects; the
    rest of each layer computes in float32, so tokens and logits equal the float32 path's."""
    from mlx_lm import load as mlx_load

    path = write_tiny_model(tmp_path / "moe", "qwen3_moe", dtype="bfloat16")
    plain, _ = mlx_load(str(path))
    with pytest.raises(RuntimeError, match="float32"):
        mx.eval(plain(mx.array([PROMPT])))
    expected_tokens, expected_logits = float32_reference(path, range(4))
    mx.clear_cache()
    mx.reset_peak_memory()
    model, tokenizer, plan = load(path, max_seq_len=64)
    assert [d.name for d in plan.devices] == ["cpu"] and plan.cpu_dtype == "float32"
    assert expert_bytes(model, range(4)) == (stored_expert_bytes(path, range(4)), {mx.bfloat16})
    assert model.layers[0].mlp.gate.weight.dtype == mx.float32
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16
    assert any("upcasts to float32 just those its tokens select" in note for note in plan.notes)
    tokens, logits = unimap_run(model, tokenizer)
    assert tokens == expected_tokens
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert mx.get_peak_memory() <= plan.peak_bytes
    resident = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
    assert resident == sum(d.weight_bytes for d in plan.devices)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_split_half_precision_moe_keeps_cpu_experts_as_stored(tmp_path: Path, family: str) -> None:
    """A bf16 MoE split 2/2: the CPU layers' experts stay bf16 at their stored size (the plan
    prices them so) and the run equals the float32 path's, token for token."""
    path = write_tiny_model(tmp_path / family, family, dtype="bfloat16")
    expected_tokens, expected_logits = float32_reference(path, range(2, 4))
    mx.clear_cache()
    mx.reset_peak_memory()
    model, tokenizer, plan = mapped(path, device_map=2, machine=stand_in_machine())
    assert plan.device("cpu").layers == (2, 3) and plan.cpu_dtype == "float32"
    assert expert_bytes(model, range(2, 4)) == (stored_expert_bytes(path, range(2, 4)), {mx.bfloat16})
    on_cpu = sum(p.nbytes for i in (2, 3) for _, p in tree_flatten(model.layers[i].parameters()))
    assert on_cpu == plan.device("cpu").weight_bytes
    tokens, logits = unimap_run(model, tokenizer)
    assert tokens == expected_tokens
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert mx.get_peak_memory() <= plan.peak_bytes


@pytest.mark.parametrize("group_bytes", [2**20, 2 * 8 * 16 * 4])  # every expert, or 2 at once
def test_upcast_gather_mm_equals_float32_gather_mm(group_bytes: int) -> None:
    """The upcast call gives gather_mm's float32 result for every shape SwitchGLU passes (its
    rows sorted by expert or not, repeated experts, one row), in one group or several."""
    from unimap.runtime import upcast_gather_mm

    mx.random.seed(3)
    weight = mx.random.normal((6, 8, 16)).astype(mx.bfloat16)  # (experts, out, in)
    stack = weight.astype(mx.float32).swapaxes(-1, -2)
    for tokens in (1, 2, 5, 40):
        x = mx.random.normal((1, tokens, 1, 1, 16)).astype(mx.bfloat16)
        indices = mx.random.randint(0, 6, (1, tokens, 2)).astype(mx.uint32)
        expected = mx.gather_mm(x.astype(mx.float32), stack, rhs_indices=indices)
        got = upcast_gather_mm(x, weight, indices, group_bytes=group_bytes)
        assert got.shape == expected.shape and got.dtype == mx.float32
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-6)
        flat, order = indices.flatten(), mx.argsort(indices.flatten())
        rows = x.flatten(0, -3)[order // 2]  # as SwitchGLU's _gather_sort passes them
        expected = mx.gather_mm(rows.astype(mx.float32), stack, rhs_indices=flat[order],
                                sorted_indices=True)
        got = upcast_gather_mm(rows, weight, flat[order], True, group_bytes=group_bytes)
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-6)
    # batch dims of x and of the indices that broadcast together: DeepSeek V4.1's grouped output
    # projection hands every token's groups as x and one index per group
    x = mx.random.normal((7, 6, 1, 16)).astype(mx.bfloat16)
    groups = mx.arange(6, dtype=mx.uint32)[None]
    expected = mx.gather_mm(x.astype(mx.float32), stack, rhs_indices=groups)
    got = upcast_gather_mm(x, weight, groups, group_bytes=group_bytes)
    assert got.shape == expected.shape == (7, 6, 1, 8)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-6)


def test_pinning_keeps_names_and_classes(tiny: dict[str, Path]) -> None:
    from mlx_lm import load as mlx_load

    plain, _ = mlx_load(str(tiny["qwen3"]))
    model, _, _ = mapped(tiny["qwen3"], device_map=1, machine=stand_in_machine())
    assert [k for k, _ in tree_flatten(model.parameters())] == [
        k for k, _ in tree_flatten(plain.parameters())]
    for layer, original in zip(model.layers, plain.layers, strict=True):
        assert type(layer).__name__ == type(original).__name__
        assert isinstance(layer, type(original))
        assert layer._unimap_stream in (model._unimap.placement.gpu_stream,
                                        model._unimap.placement.cpu_stream)


def test_all_on_gpu_changes_nothing(tiny: dict[str, Path]) -> None:
    model, _, plan = mapped(tiny["llama"], machine=stand_in_machine())
    assert plan.all_on_gpu and not model._unimap.placement.pinned
    assert all(not hasattr(layer, "_unimap_stream") for layer in model.layers)


def test_cpu_only_machine_changes_nothing(tiny: dict[str, Path]) -> None:
    model, tokenizer, plan = load(tiny["mistral"], max_seq_len=64)
    assert [d.name for d in plan.devices] == ["cpu"]
    assert not model._unimap.placement.pinned
    assert unimap_run(model, tokenizer)[0] == reference(tiny["mistral"])[0]


@pytest.mark.parametrize(("family", "kwargs"), [
    ("llama", {}),
    ("gemma3", {}),
    ("qwen3_moe", {"max_batch_size": 1}),
    ("phi3", {"isq": 8}),
    ("llama-hd64", {"kv_bits": 8}),
    ("qwen2", {"max_batch_size": 1}),
])
def test_measured_peak_within_the_plan(tiny: dict[str, Path], family: str,
                                       kwargs: dict[str, Any]) -> None:
    mx.clear_cache()
    mx.reset_peak_memory()
    model, tokenizer, plan = load(tiny[family], max_seq_len=96, **kwargs)
    prompt = [(7 * i) % 120 + 3 for i in range(80)]
    list(stream_generate(model, tokenizer, prompt, max_tokens=16))
    assert 0 < mx.get_peak_memory() <= plan.peak_bytes


def test_missing_tokenizer_is_a_clear_error(tiny: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(tiny["llama"], tmp_path / "no-tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(unimap.ModelError, match="no tokenizer .* beside config.json"):
        load(folder, max_seq_len=64)


def test_kv_bits_needs_whole_groups(tiny: dict[str, Path]) -> None:
    with pytest.raises(unimap.ConfigError, match="--kv-bits needs a head dimension divisible by 64"):
        load(tiny["qwen3"], max_seq_len=64, kv_bits=4)


@pytest.mark.parametrize("kwargs", [{"isq": 4}, {"device_map": 2, "machine": stand_in_machine()}])
def test_loading_peak_within_the_plan(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    """Wide layers, a short context: converting a layer while loading (--isq, or the float32
    CPU part of a split) is the peak, and the plan must cover it."""
    path = write_tiny_model(tmp_path / "wide", "llama-wide", dtype="bfloat16")
    mx.clear_cache()
    mx.reset_peak_memory()
    with pytest.warns(DeprecationWarning) if "device_map" in kwargs else _nothing():
        model, tokenizer, plan = load(path, max_seq_len=16, **kwargs)
    list(stream_generate(model, tokenizer, [1, 5, 9], max_tokens=4))
    loading = max(d.load_transient_bytes for d in plan.devices)
    assert loading > 0
    assert mx.get_peak_memory() <= plan.peak_bytes


def test_isq_quantizes_while_loading(tiny: dict[str, Path]) -> None:
    model, tokenizer, plan = load(tiny["llama"], max_seq_len=64, isq=4)
    import mlx.nn as nn

    assert isinstance(model.layers[0].mlp.gate_proj, nn.QuantizedLinear)
    resident = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
    assert resident == plan.estimate.weight_bytes  # the plan priced exactly what was built
    assert len(generate(model, tokenizer, list(PROMPT), max_tokens=4)) >= 0


# ----------------------------------------------------------------- global state


class FakeMetal:
    """Stands in for Metal's wired limit, which this machine cannot have."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
        self.limit = 1234
        self.events = events
        monkeypatch.setattr("unimap.runtime._metal", lambda: True)
        monkeypatch.setattr(mx, "set_wired_limit", self.set)
        real_eval = mx.eval
        monkeypatch.setattr(mx, "eval", lambda *a: (events.append("eval"), real_eval(*a))[1])

    def set(self, n: int) -> int:
        previous, self.limit = self.limit, n
        self.events.append(f"wired {n}")
        return previous


def test_wired_limit_set_before_any_weight_and_restored(tiny: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    metal = FakeMetal(monkeypatch, events)
    model, tokenizer, plan = load(tiny["llama"], machine="mac-16gb", max_seq_len=64)
    assert plan.wired_limit_bytes is not None
    assert events[0] == f"wired {plan.wired_limit_bytes}" and "eval" in events[1:]
    list(stream_generate(model, tokenizer, list(PROMPT), max_tokens=3))
    assert metal.limit == plan.wired_limit_bytes  # generation leaves the plan's limit alone
    model._unimap.limits.release()
    model._unimap.limits.release()  # twice is harmless
    assert metal.limit == 1234 and events.count("wired 1234") == 1


def test_wired_limit_restored_when_loading_fails(tiny: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    metal = FakeMetal(monkeypatch, [])

    def boom(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("unimap.runtime.pin", boom)
    with pytest.raises(KeyboardInterrupt), pytest.warns(DeprecationWarning):
        load(tiny["llama"], device_map=2, machine="mac-16gb", max_seq_len=64)
    assert metal.limit == 1234


def test_wired_limit_is_a_noop_off_metal() -> None:
    held = Limits()
    held.set(10**9)
    assert held.previous is None  # nothing was changed, so nothing to restore


def test_a_loaded_model_runs_under_its_plans_memory_limit(tiny: dict[str, Path]) -> None:
    """MLX's memory limit is the plan's (its peak less room for its largest arrays) while a model
    is loaded, the sum of theirs with two (and with any other model still held), and what it was
    once both are let go of: released by hand or by the garbage collector."""
    import gc

    from unimap import runtime

    gc.collect()
    others = sum(runtime._HELD.values())
    base = runtime._BEFORE[0] if runtime._HELD else mx.get_memory_limit()
    before = mx.get_memory_limit()
    first, _, plan = load(tiny["llama"], max_seq_len=64)
    assert 0 < plan.memory_limit_bytes < plan.peak_bytes < base
    headroom = LIMIT_HEADROOM_ARRAYS * plan.estimate.largest_array_bytes
    assert plan.peak_bytes - plan.memory_limit_bytes == headroom
    assert mx.get_memory_limit() == min(others + plan.memory_limit_bytes, base)
    second, _, other = load(tiny["qwen3"], max_seq_len=128)
    assert mx.get_memory_limit() == min(others + plan.memory_limit_bytes + other.memory_limit_bytes, base)
    first._unimap.limits.release()
    first._unimap.limits.release()  # once only
    assert mx.get_memory_limit() == min(others + other.memory_limit_bytes, base)
    del second
    gc.collect()
    assert mx.get_memory_limit() == before
    del first


def test_the_memory_limit_never_raises_mlxs() -> None:
    """A plan's limit above the one MLX had before any model was loaded leaves MLX's."""
    import gc

    from unimap import runtime

    gc.collect()
    base = runtime._BEFORE[0] if runtime._HELD else mx.get_memory_limit()
    before = mx.get_memory_limit()
    held = Limits()
    held.set(None, base * 4)
    try:
        assert mx.get_memory_limit() == base
    finally:
        held.release()
    assert mx.get_memory_limit() == before


# ----------------------------------------------------------------- bad input


def test_does_not_fit_is_refused_before_loading(models: Path) -> None:
    with pytest.raises(unimap.DoesNotFitError, match="does not fit"):
        load(models / "qwen3-30b-a3b", machine="mac-16gb")  # sparse files: loading would fail


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": []}, "the prompt is empty"),
    ({"prompt": [1, 2], "max_tokens": 0}, "--max-tokens must be from 1 to 16777216, not 0"),
    ({"prompt": [1, 2], "temp": -1.0}, "--temp must be from 0 to 100, not -1"),
])
def test_bad_generation_requests(tiny: dict[str, Path], kwargs: dict[str, Any], message: str) -> None:
    model, tokenizer, _ = load(tiny["llama"], max_seq_len=64)
    with pytest.raises(unimap.ConfigError, match=message):
        generate(model, tokenizer, **kwargs)


def test_streamed_text_is_the_whole_decoded_text(tiny: dict[str, Path]) -> None:
    model, tokenizer, _ = load(tiny["llama"], max_seq_len=64)
    responses = list(stream_generate(model, tokenizer, "w1 w2 w3", max_tokens=12))
    tokens = [r.token for r in responses if r.token not in tokenizer.eos_token_ids]
    assert "".join(r.text for r in responses) == tokenizer.decode(tokens)
    assert responses[-1].finish_reason in ("stop", "length")
