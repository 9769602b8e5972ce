"""MoE expert placement: a layer's attention, router, shared experts and KV cache on the GPU, its
routed experts on the CPU. The planner (which layers, and whether that or whole layers by
predicted decode speed), llama.cpp's --cpu-moe / --n-cpu-moe and their bad values, and the
runtime: real mlx-lm MoE models of many families with their experts on the CPU stream give the
same greedy tokens as plain mlx-lm, within the planned peak."""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import fixtures
import mlx.core as mx
import pytest
from click.testing import CliRunner
from tiny_families import tiny_config
from tiny_models import FamilyCheckpoints, mlx_lm_tokens, stand_in_machine

import unimap
from unimap import ConfigError, inspect
from unimap.api import load
from unimap.cli import cli
from unimap.errors import ArgumentTypeError
from unimap.generate import stream_generate
from unimap.machines import preset_machine, with_gpu_budget
from unimap.plan import UPCAST_EXTRA_BYTES, make_plan
from unimap.runtime import expert_modules
from unimap.settings import Reserves
from unimap.units import GiB

PROMPT = [1, 7, 12, 5, 33, 90, 41, 8, 19, 64, 3, 77]
# Every family of the installed mlx-lm whose layers hold routed experts (the coverage test below
# keeps this list whole): SwitchGLU / SwitchMLP under any name, dense first layers, MoE every
# other layer, shared experts, linear attention and SSM hybrids.
FAMILIES = [
    "Klear", "afmoe", "bailing_hybrid", "bailing_moe", "bailing_moe_linear", "bailing_moe_v3",
    "dbrx", "deepseek", "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v41", "dots1",
    "ernie4_5_moe", "exaone_moe", "gemma4", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "gpt_oss",
    "granitemoe", "granitemoehybrid", "hunyuan", "jamba", "kimi_k25", "kimi_k3", "kimi_linear",
    "kimi_vl", "laguna", "lfm2_moe", "llama4", "longcat_flash", "longcat_flash_ngram", "mellum",
    "mimo_v2_flash", "minimax", "minimax_m3_vl", "mistral4", "mixtral", "nemotron_h", "olmoe",
    "phimoe", "phixtral", "qwen2_moe", "qwen3_5_moe", "qwen3_moe", "qwen3_next", "qwen3_vl_moe",
    "solar_open", "step3p5"]


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sparse")
    for family in ("mixtral-8x7b", "qwen3-30b-a3b", "llama3-8b"):
        fixtures.write_family(root, family)
    return root


def machine(name: str = "h100-80gb", gpu_budget: int | None = None) -> Any:
    found = preset_machine(name, {}, Reserves())
    return found if gpu_budget is None else with_gpu_budget(found, gpu_budget, Reserves())


# ---------------------------------------------------------------- planning


def test_moe_that_does_not_fit_moves_the_fewest_experts(sparse: Path) -> None:
    spec = inspect(sparse / "mixtral-8x7b")
    plan = make_plan(spec, machine())  # 87 GiB of bf16 weights on an 80 GB GPU
    moved = plan.device("cpu").expert_layers
    assert plan.fits and moved and moved == tuple(range(len(moved)))
    assert plan.device("gpu:0").layers == tuple(range(spec.num_layers))  # every dense part
    assert not plan.all_on_gpu and plan.cpu_dtype is None  # nothing is recast
    for p in plan.layers:
        assert p.experts_device == ("cpu" if p.index in moved else "gpu:0") and p.expert_bytes
    # one layer fewer does not keep every dense part on the GPU: a whole layer goes instead
    fewer = make_plan(spec, machine(), n_cpu_moe=len(moved) - 1)
    assert len(fewer.device("gpu:0").layers) < spec.num_layers
    est = plan.estimate
    assert plan.device("cpu").weight_bytes == sum(est.layers[i].expert_bytes for i in moved)
    assert plan.device("gpu:0").weight_bytes == (
        sum(x.weight_bytes for x in est.layers) - plan.device("cpu").weight_bytes
        + est.non_mapped_weight_bytes)
    assert any("routed experts of layers 0-" in n and "tokens/s" in n for n in plan.notes)


def test_too_small_a_gpu_moves_every_expert_then_whole_layers(sparse: Path) -> None:
    spec = inspect(sparse / "mixtral-8x7b")
    plan = make_plan(spec, machine(gpu_budget=4 * GiB))
    gpu, cpu = plan.device("gpu:0"), plan.device("cpu")
    assert plan.fits and 0 < len(gpu.layers) < spec.num_layers
    assert cpu.expert_layers == gpu.layers and cpu.layers == tuple(range(len(gpu.layers), 32))
    assert gpu.weight_bytes == plan.estimate.non_mapped_weight_bytes + sum(
        plan.estimate.layers[i].dense_bytes for i in gpu.layers)


def test_the_plan_takes_the_placement_predicted_faster(sparse: Path) -> None:
    spec = inspect(sparse / "mixtral-8x7b")
    experts = make_plan(spec, machine())
    layers = make_plan(spec, machine(), n_cpu_moe=0)  # whole layers on the CPU
    assert layers.device("cpu").layers and not layers.device("cpu").expert_layers
    assert experts.decode and layers.decode
    assert experts.decode.tokens_per_s >= layers.decode.tokens_per_s  # type: ignore[operator]
    # a CPU that reads as fast as it likes: moving whole layers (two hand-overs a token, not
    # two per layer) is then faster, and chosen
    base = machine()
    quick = replace(base, devices=(base.gpus[0], replace(base.cpu, bandwidth_bytes_per_s=10**15)))
    chosen = make_plan(spec, quick)
    assert chosen.device("cpu").layers and not chosen.device("cpu").expert_layers
    assert any(n.startswith("whole layers") and "tokens/s against" in n for n in chosen.notes)
    # bandwidths unknown: the expert placement, saying why
    blind = replace(base, devices=(replace(base.gpus[0], bandwidth_bytes_per_s=None), base.cpu))
    unknown = make_plan(spec, blind)
    assert unknown.device("cpu").expert_layers and unknown.decode
    assert unknown.decode.tokens_per_s is None
    assert any("bandwidths unknown" in n for n in unknown.notes)


def test_decode_speed_counts_what_each_device_reads(sparse: Path) -> None:
    spec = inspect(sparse / "mixtral-8x7b")
    plan = make_plan(spec, machine(), n_cpu_moe=8)  # every dense part fits the GPU then
    est, speed = plan.estimate, plan.decode
    assert speed is not None and plan.device("gpu:0").layers == tuple(range(32))
    share = 2 / 8  # top-2 of 8 experts
    upcast = 1 + UPCAST_EXTRA_BYTES / 2  # bf16 experts upcast to float32 on the CPU
    cpu = sum(est.layers[i].expert_bytes for i in range(8)) * share * upcast
    gpu = (sum(x.dense_bytes + x.kv_bytes for x in est.layers) + est.head_read_bytes
           + sum(est.layers[i].expert_bytes for i in range(8, 32)) * share)
    assert speed.read_bytes["cpu"] == pytest.approx(cpu, rel=1e-9)
    assert speed.read_bytes["gpu:0"] == pytest.approx(gpu, rel=1e-9)
    assert speed.crossings == 16  # there and back for each of 8 layers
    seconds = cpu / 200e9 + gpu / 3350e9 + 16 * speed.crossing_seconds
    assert speed.tokens_per_s == pytest.approx(1 / seconds)
    # the head is read, the embedding table is not (untied: half the non-mapped bytes)
    assert est.head_read_bytes == 32000 * 4096 * 2


def test_all_on_gpu_and_dense_models_are_unchanged(sparse: Path) -> None:
    big = make_plan(inspect(sparse / "qwen3-30b-a3b"), machine())
    assert big.all_on_gpu and not big.device("cpu").expert_layers
    dense = make_plan(inspect(sparse / "llama3-8b"), machine("mac-16gb"))
    assert not dense.device("cpu").expert_layers and all(p.experts_device is None for p in dense.layers)


def test_n_cpu_moe_with_a_manual_map(sparse: Path) -> None:
    spec = inspect(sparse / "mixtral-8x7b")
    with pytest.warns(DeprecationWarning):
        plan = unimap.plan(spec, machine="h100-80gb", device_map=20, n_cpu_moe=6)
    assert plan.device("gpu:0").layers == tuple(range(20))
    assert plan.device("cpu").expert_layers == tuple(range(6))
    assert plan.device("cpu").layers == tuple(range(20, 32))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"n_cpu_moe": -1}, ConfigError, "has 32 layers; give 0 to 32"),
    ({"n_cpu_moe": 33}, ConfigError, "has 32 layers; give 0 to 32"),
    ({"n_cpu_moe": True}, ArgumentTypeError, "whole number of layers"),
    ({"n_cpu_moe": "4"}, ArgumentTypeError, "whole number of layers"),
    ({"cpu_moe": "yes"}, ArgumentTypeError, "True or False"),
    ({"cpu_moe": True, "n_cpu_moe": 3}, ConfigError, "not both"),
])
def test_bad_expert_flags_are_clear_errors(sparse: Path, kwargs: dict[str, Any], error: type,
                                            match: str) -> None:
    with pytest.raises(error, match=match):
        unimap.plan(sparse / "mixtral-8x7b", machine="h100-80gb", **kwargs)


def test_expert_flags_need_experts_and_a_gpu(sparse: Path) -> None:
    with pytest.raises(ConfigError, match="no routed experts"):
        unimap.plan(sparse / "llama3-8b", machine="mac-16gb", cpu_moe=True)
    cpu_only = machine()
    cpu_only = replace(cpu_only, devices=(cpu_only.cpu,))
    with pytest.raises(ConfigError, match="no GPU"):
        unimap.plan(sparse / "mixtral-8x7b", machine=cpu_only, cpu_moe=True)


def test_cli_plan_shows_where_experts_live(sparse: Path) -> None:
    model = str(sparse / "mixtral-8x7b")
    result = CliRunner().invoke(cli, ["plan", model, "--machine", "h100-80gb", "--cpu-moe",
                                      "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["devices"][-1]["expert_layers"] == list(range(32))
    assert all(layer["device"] == "gpu:0" and layer["experts_device"] == "cpu"
               for layer in data["layers"])
    table = CliRunner().invoke(cli, ["plan", model, "--machine", "h100-80gb", "--n-cpu-moe", "12"],
                               env={"COLUMNS": "120"})
    assert table.exit_code == 0 and "experts 0-11" in table.stdout
    assert "decode at most" in table.stdout and "24 hand-overs" in table.stdout
    for argv, message in ((["--n-cpu-moe", "-2"], "give 0 to 32"),
                          (["--n-cpu-moe", "40"], "give 0 to 32"),
                          (["--n-cpu-moe", "x"], "is not a valid integer"),
                          (["--cpu-moe", "--n-cpu-moe", "2"], "not both")):
        bad = CliRunner().invoke(cli, ["plan", model, "--machine", "h100-80gb", *argv])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output
    dense = CliRunner().invoke(cli, ["plan", str(sparse / "llama3-8b"), "--machine", "mac-16gb",
                                     "--cpu-moe"])
    assert dense.exit_code == 2 and "no routed experts" in dense.output


# ---------------------------------------------------------------- runtime


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> FamilyCheckpoints:
    return FamilyCheckpoints(tmp_path_factory.mktemp("families"))


def reference(path: Path, steps: int = 6) -> list[int]:
    return mlx_lm_tokens(path, PROMPT, steps)


def test_every_mlx_lm_family_with_experts_is_covered() -> None:
    from mlx_lm.utils import _get_classes
    from tiny_families import UNBUILDABLE, families

    found = []
    for family in families():
        if family in UNBUILDABLE:
            continue
        config = tiny_config(family)
        model_class, args_class = _get_classes(config)
        model = model_class(args_class.from_dict(config))
        if any(expert_modules(layer) for layer in getattr(model, "layers", [])):
            found.append(family)
    assert sorted(found) == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_experts_on_the_cpu_stream_give_mlx_lm_tokens(checkpoints: FamilyCheckpoints, family: str) -> None:
    path = checkpoints[family]
    expected = reference(path)
    spec = unimap.inspect(path)
    routed = tuple(i for i, s in enumerate(spec.slots[:spec.num_layers]) if s.experts)
    # every layer's experts, then those of the first N layers, N up to the first MoE layer
    for flags, want in (({"cpu_moe": True}, routed), ({"n_cpu_moe": routed[0] + 1}, routed[:1])):
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=64, **flags)
        moved = plan.device("cpu").expert_layers
        placement = model._unimap.placement
        assert moved == want and placement.cpu_experts == moved and not plan.device("cpu").layers
        for index, layer in enumerate(model.layers):  # dense part on the GPU's stream ...
            assert layer._unimap_stream == placement.gpu_stream
            for module in expert_modules(layer):  # ... the experts of the moved layers on the CPU's
                want = placement.cpu_stream if index in moved else None
                assert getattr(module, "_unimap_stream", None) == want, (family, index)
        out = [r.token for r in stream_generate(model, tokenizer, list(PROMPT), max_tokens=6)]
        assert out == expected, (family, flags)
        assert 0 < mx.get_peak_memory() <= plan.peak_bytes, (family, flags)
        model._unimap.limits.release()
        del model


def test_quantized_experts_on_the_cpu_match_the_same_quantization_on_one_device(
        checkpoints: FamilyCheckpoints) -> None:
    path = checkpoints["qwen3_moe"]
    tokens = []
    for flags in ({}, {"cpu_moe": True}):
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=64, isq=4, **flags)
        tokens.append([r.token for r in stream_generate(model, tokenizer, list(PROMPT), max_tokens=6)])
        assert 0 < mx.get_peak_memory() <= plan.peak_bytes
        model._unimap.limits.release()
        del model
    assert tokens[0] == tokens[1]


def test_usage_counts_moved_experts_on_the_cpu(checkpoints: FamilyCheckpoints) -> None:
    from unimap.usage import device_usage

    model, _, plan = load(checkpoints["mixtral"], machine=stand_in_machine(), max_seq_len=64,
                          n_cpu_moe=3)
    used = {u.name: u.weight_bytes for u in device_usage(model)}
    assert used == {d.name: d.weight_bytes for d in plan.devices}
    model._unimap.limits.release()


def test_cli_run_with_expert_flags_on_a_machine_without_gpu(checkpoints: FamilyCheckpoints) -> None:
    """This machine (MLX's CPU build) has no GPU to keep the dense parts on: a clear refusal
    before anything loads, from run and serve alike."""
    for command in ("run", "serve"):
        argv = [command, str(checkpoints["qwen3_moe"]), "--cpu-moe", "--max-seq-len", "64"]
        result = CliRunner().invoke(cli, [*argv, "-p", "hi"] if command == "run" else argv)
        assert result.exit_code == 2 and "no GPU" in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize(("tokens", "hidden", "width", "top_k"),
                         [(256, 128, 512, 2), (300, 256, 128, 8), (1000, 128, 128, 4)])
def test_the_upcast_price_covers_the_call_alone(tokens: int, hidden: int, width: int, top_k: int) -> None:
    """mlx-lm's SwitchGLU in bf16 through unimap's upcast call (tools/bench_moe_upcast.py),
    weighted and summed as mlx-lm's MoE blocks do: its peak over its inputs and weights within
    what the estimate prices for it, one projection's expert copies and float32 arrays of the
    expert and hidden widths per routed row (as a float32 call without the upcast holds 2 and 3
    of them, measured alike)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from bench_moe_upcast import peak_bytes

    from unimap.estimate import GATHER_ROW_ARRAYS, UPCAST_EXPERT_SHARE, UPCAST_ROW_ARRAYS

    experts, rows = 16, tokens * top_k
    copies = int(min(rows, experts) * 3 * hidden * width * 4 * UPCAST_EXPERT_SHARE)
    (ui, uh), (gi, gh) = UPCAST_ROW_ARRAYS, GATHER_ROW_ARRAYS
    upcast = peak_bytes(tokens, hidden, width, experts, top_k, "bfloat16")
    assert upcast <= copies + rows * (ui * width + uh * hidden) * 4
    gather = peak_bytes(tokens, hidden, width, experts, top_k, "float32")
    assert gather <= (rows * (gi * width + gh * hidden) + tokens * hidden) * 4 * 1.05
