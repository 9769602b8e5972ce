"""The planner: golden plans, invariants over every golden case, manual maps, ways out, the CLI."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import golden_plans
import pytest
from click.testing import CliRunner

import unimap
from unimap import ConfigError, Options, inspect
from unimap.cli import cli
from unimap.machines import PRESETS, preset_machine
from unimap.plan import Plan, make_plan
from unimap.settings import Reserves
from unimap.units import GiB

GOLDEN = json.loads((Path(__file__).parent / "golden" / "plans.json").read_text())


def plan_case(models: Path, key: str) -> Plan:
    family, machine, case = key.split("|")
    return make_plan(inspect(models / family), preset_machine(machine, {}, Reserves()),
                     {**golden_plans.CASES, **golden_plans.VISION_CASES}[case])


def test_golden_plans(models: Path) -> None:
    assert golden_plans.golden(models) == GOLDEN


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_plan_invariants(models: Path, key: str) -> None:
    plan = plan_case(models, key)
    n = len(plan.estimate.layers)
    placed = [layer.index for layer in plan.layers]
    assert placed == list(range(n))  # every layer once, in order
    by_device = [d.layers for d in plan.devices]
    assert sum(len(layers) for layers in by_device) == n
    for layers in by_device:  # each device holds one contiguous block
        assert list(layers) == list(range(layers[0], layers[0] + len(layers))) if layers else True
    assert plan.devices[-1].name == "cpu"  # the CPU block comes last
    est = plan.estimate
    parts = est.non_mapped_weight_bytes + est.vision_weight_bytes
    split = plan.cpu_dtype is not None
    assert sum(d.weight_bytes for d in plan.devices) == est.weight_bytes or split
    for d in plan.devices:  # a split's CPU layers are priced in the CPU's compute dtype
        priced = est.cpu_layers if d.name == "cpu" and split else est.layers
        layer_bytes = sum(priced[i].weight_bytes for i in d.layers)
        assert d.weight_bytes - layer_bytes in (0, parts)
    assert plan.peak_bytes >= sum(d.weight_bytes + d.kv_bytes for d in plan.devices)
    assert plan.fits == all(d.used_bytes <= d.budget_bytes for d in plan.devices)
    gpu = plan.machine.gpus[0]
    if plan.wired_limit_bytes is not None:
        assert gpu.backend == "metal" and plan.wired_limit_bytes <= (gpu.ceiling_bytes or 0)
    if plan.all_on_gpu:
        assert plan.devices[0].layers == tuple(range(n)) and plan.fits
    assert plan.to_dict() == plan_case(models, key).to_dict()  # deterministic


@pytest.mark.parametrize("key", sorted(k for k, v in GOLDEN.items() if v["ways_out"]))
def test_each_way_out_fits(models: Path, key: str) -> None:
    plan = plan_case(models, key)
    spec, machine, options = inspect(models / key.split("|")[0]), plan.machine, plan.estimate.options
    for way in plan.ways_out:
        flag, value = way.split(" (")[0].split()[:2]
        if flag.startswith("`"):
            continue  # a sysctl: tested below
        changed = replace(options, **{flag[2:].replace("-", "_"): int(value)})
        assert make_plan(spec, machine, changed).fits, way
        if flag == "--max-seq-len":  # and it is the longest that fits, to within one 256 step
            assert not make_plan(spec, machine, replace(changed, max_seq_len=int(value) + 257)).fits


def test_wired_limit_way_out(models: Path) -> None:
    spec = inspect(models / "qwen3-8b")
    plan = make_plan(spec, preset_machine("mac-36gb", {}, Reserves()), Options(max_seq_len=65536))
    assert not plan.fits
    tip = next(w for w in plan.ways_out if "sysctl" in w)
    limit_mb = int(tip.split("wired_limit_mb=")[1].split("`")[0])
    # a Mac whose working set was raised to that limit runs every layer on the GPU
    raised = preset_machine("mac-36gb", {}, Reserves())
    gpu = replace(raised.gpus[0], ceiling_bytes=limit_mb * 2**20,
                  budget_bytes=limit_mb * 2**20 - raised.gpus[0].reserve_bytes)
    assert make_plan(spec, replace(raised, devices=(gpu, raised.cpu)), plan.estimate.options).all_on_gpu


def test_x86_cpu_part_of_a_split_runs_in_float32(models: Path) -> None:
    plan = make_plan(inspect(models / "mixtral-8x7b"), preset_machine("h100-80gb", {}, Reserves()))
    est = plan.estimate
    assert plan.cpu_dtype == "float32" and est.dtype == "bfloat16"
    cpu = plan.device("cpu")
    assert cpu.weight_bytes == 2 * sum(est.layers[i].weight_bytes for i in cpu.layers)
    assert cpu.kv_bytes == 2 * sum(est.layers[i].kv_bytes for i in cpu.layers)
    mac = make_plan(inspect(models / "llama3-8b"), preset_machine("mac-16gb", {}, Reserves()))
    assert mac.cpu_dtype is None and mac.device("cpu").layers  # arm64: not measured, unchanged
    # MLX's CPU gather_mm takes float32 only: a bf16 MoE's CPU layers run in float32 everywhere
    moe = make_plan(inspect(models / "qwen3-30b-a3b"), preset_machine("mac-64gb", {}, Reserves()))
    assert moe.cpu_dtype == "float32" and moe.device("cpu").layers
    kept = make_plan(inspect(models / "mixtral-8x7b"), preset_machine("h100-80gb", {}, Reserves()),
                     Options(cpu_dtype="bfloat16"))
    assert kept.cpu_dtype is None and kept.device("cpu").weight_bytes < cpu.weight_bytes


def test_all_on_gpu_changes_nothing(models: Path) -> None:
    plan = make_plan(inspect(models / "llama3-8b"), preset_machine("h100-80gb", {}, Reserves()))
    assert plan.all_on_gpu and plan.fits and plan.wired_limit_bytes is None  # not Metal
    assert plan.device("cpu").used_bytes == 0 and plan.non_mapped_device == "gpu:0"


def test_metal_wired_limit_is_what_the_gpu_part_needs(models: Path) -> None:
    machine = preset_machine("mac-64gb", {}, Reserves())
    plan = make_plan(inspect(models / "llama3-8b"), machine)
    need = plan.device("gpu:0").used_bytes + machine.gpus[0].reserve_bytes
    assert need <= plan.wired_limit_bytes < need + 2**20  # rounded up to a MiB
    assert plan.wired_limit_bytes < machine.gpus[0].ceiling_bytes


def test_vision_tower_goes_to_the_gpu_first(models: Path) -> None:
    plan = make_plan(inspect(models / "qwen2.5-vl-7b"), preset_machine("mac-16gb", {}, Reserves()))
    assert plan.vision_device == "gpu:0" and plan.devices[0].layers[0] == 0
    assert plan.device("gpu:0").weight_bytes >= plan.estimate.vision_weight_bytes


def test_parts_too_big_for_the_gpu_run_on_the_cpu(models: Path) -> None:
    plan = unimap.plan(models / "qwen2.5-vl-7b", machine="mac-16gb", gpu_budget="1GiB")
    assert plan.non_mapped_device == plan.vision_device == "cpu"
    assert plan.device("gpu:0").layers == () and plan.device("gpu:0").used_bytes == 0
    assert "vision tower" in plan.notes[0] and "everything runs on the CPU" in plan.notes[0]


def test_cpu_only_machine_runs_everything_on_the_cpu(models: Path) -> None:
    plan = unimap.plan(models / "qwen2.5-0.5b", machine=None, backend="cpu")
    assert [d.name for d in plan.devices] == ["cpu"]
    assert plan.fits and not plan.all_on_gpu and plan.device("cpu").layers == tuple(range(24))
    assert plan.wired_limit_bytes is None


# ----------------------------------------------------------------- machines you do not have


def test_will_it_run_on_a_48gb_mac(models: Path) -> None:
    plan = unimap.plan(models / "qwen3-30b-a3b", machine="mac-64gb", ram="48GB")
    assert plan.machine.ram_total_bytes == 48 * 10**9
    assert plan.machine.gpus[0].ceiling_bytes == 48 * 10**9 * 3 // 4
    assert not plan.fits
    assert unimap.plan(models / "qwen3-30b-a3b", machine="mac-64gb", ram="48GB", isq=4).fits


def test_gpu_budget_override(models: Path) -> None:
    plan = unimap.plan(models / "llama3-8b", machine="h100-80gb", gpu_budget="8GiB")
    assert plan.device("gpu:0").budget_bytes == 8 * GiB
    assert 0 < len(plan.device("gpu:0").layers) < 32 and plan.fits


def test_presets_document_their_sources() -> None:
    assert {"mac-16gb", "mac-36gb", "mac-64gb", "mac-128gb", "jetson-orin-64gb", "dgx-spark-128gb",
            "h100-80gb"} <= set(PRESETS)
    for preset in PRESETS.values():
        assert preset.source
    spark = preset_machine("dgx-spark-128gb", {"MISTRALRS_IGPU_MEMORY_FRACTION": "0.5"}, Reserves())
    assert spark.gpus[0].ceiling_bytes == 64 * GiB


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="--machine 'mac-2gb' is not a preset; choose one of mac-16gb"):
        preset_machine("mac-2gb", {}, Reserves())


def test_gpu_budget_on_a_machine_without_gpu(models: Path) -> None:
    with pytest.raises(ConfigError, match="--gpu-budget: this machine has no GPU"):
        unimap.plan(models / "qwen2.5-0.5b", backend="cpu", gpu_budget="4GiB")


# ----------------------------------------------------------------- manual maps


def test_manual_maps(models: Path) -> None:
    spec = inspect(models / "llama3-8b")
    with pytest.warns(DeprecationWarning, match="manual device maps"):
        plan = unimap.plan(spec, device_map=16, machine="h100-80gb")
    assert plan.device("gpu:0").layers == tuple(range(16))
    assert plan.device("cpu").layers == tuple(range(16, 32))
    assert plan.mode == "0:16" and "deprecated" in plan.notes[-1]
    with pytest.warns(DeprecationWarning):
        assert unimap.plan(spec, device_map="32", machine="h100-80gb").all_on_gpu


def test_manual_map_over_budget_does_not_fit(models: Path) -> None:
    with pytest.warns(DeprecationWarning):
        plan = unimap.plan(models / "llama3-8b", device_map=["0:32"], machine="mac-16gb")
    assert not plan.fits and "gpu:0 is over its budget" in plan.problem


@pytest.mark.parametrize(("device_map", "message"), [
    ("abc", "layer count 'abc' is not a whole number; use a layer count"),
    ("0:x", "layer count 'x' is not a whole number"),
    ("1.5", "layer count '1.5' is not a whole number"),
    ("-3", "layer count -3 is not from 0 to 4096"),
    ("0:4;0:4", "GPU ordinal 0 appears twice"),
    ("1:4", "this machine has no GPU 1"),
    ("40", "places 40 layers, but"),
    (["0:16", "0:x"], "layer count 'x'"),
    ("0:16;", "'' is not ordinal:layers"),
])
def test_bad_manual_maps(models: Path, device_map: object, message: str) -> None:
    with warnings.catch_warnings(), pytest.raises(ConfigError, match=message):
        warnings.simplefilter("ignore", DeprecationWarning)
        unimap.plan(models / "llama3-8b", device_map=device_map, machine="mac-64gb")  # type: ignore[arg-type]


# ----------------------------------------------------------------- output


def test_json_shape(models: Path) -> None:
    data = json.loads(unimap.plan(models / "gemma3-4b-vl", machine="mac-16gb").to_json())
    assert isinstance(data["fits"], bool) and isinstance(data["wired_limit_bytes"], int)
    assert [set(d) >= {"name", "budget_bytes", "used_bytes", "layers"} for d in data["devices"]] == [True] * 2
    assert set(data["layers"][0]) >= {"index", "device", "weight_bytes", "kv_bytes"}
    assert set(data["non_mapped"]) == {"device", "weight_bytes"}
    assert set(data["totals"]) >= {"weight_bytes", "kv_bytes", "activation_bytes", "peak_bytes"}
    assert data["vision"]["image_tokens"] == 256
    assert [d["name"] for d in data["devices"]] == ["gpu:0", "cpu"]


def test_notebook_html(models: Path) -> None:
    html = unimap.plan(models / "llama3-8b", machine="mac-16gb")._repr_html_()
    assert html.startswith("<div>") and "<table>" in html and "gpu:0" in html
    assert "does not fit" in html and "--isq 8" in html


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_plan_fits(models: Path) -> None:
    code, out, _ = run_cli("plan", "-m", str(models / "gemma3-1b"), "--machine", "mac-16gb")
    assert code == 0
    assert "fits, all on the GPU" in out and "0-25" in out and "wired limit" in out


def test_cli_plan_does_not_fit(models: Path) -> None:
    code, out, _ = run_cli("plan", str(models / "llama3-8b"), "--machine", "mac-16gb")
    assert code == 3
    assert "does not fit: cpu is over its budget" in out and "way out: --isq 8" in out


def test_cli_plan_json_and_html(models: Path, tmp_path: Path) -> None:
    html = tmp_path / "plan.html"
    code, out, _ = run_cli("plan", "-m", str(models / "mixtral-8x7b"), "--machine", "h100-80gb",
                           "--json", "--html", str(html))
    assert code == 0 and json.loads(out)["layers"][-1]["device"] == "cpu"
    assert html.read_text().startswith("<!doctype html>")


def test_cli_html_unwritable_leaves_nothing(models: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "plan.html"
    code, _, err = run_cli("plan", "-m", str(models / "gemma3-1b"), "--machine", "mac-16gb",
                           "--html", str(target))
    assert code == 2 and "cannot write" in err
    assert not target.parent.exists()


def test_cli_manual_map_and_what_if(models: Path) -> None:
    code, out, _ = run_cli("plan", "-m", str(models / "llama3-8b"), "--machine", "mac-64gb",
                           "--ram", "32GiB", "-n", "20")
    assert code == 0 and "map 0:20" in out and "deprecated" in out


@pytest.mark.parametrize(("args", "message"), [
    (["-n", "0:x"], "error: device map '0:x': layer count 'x' is not a whole number"),
    (["--machine", "pc"], "error: --machine 'pc' is not a preset"),
    (["--isq", "7"], "error: --isq 7: MLX quantizes to 2, 3, 4, 5, 6, 8 bits"),
    (["--ram", "lots"], "error: --ram: 'lots' is not a size"),
    (["--max-seq-len", "0"], "error: --max-seq-len must be from 1 to 16777216, not 0"),
])
def test_cli_bad_flags(models: Path, args: list[str], message: str) -> None:
    code, out, err = run_cli("plan", "-m", str(models / "llama3-8b"), *args)
    assert code == 2 and err.strip().startswith(message) and "Traceback" not in err


def test_cli_bad_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{broken")
    code, _, err = run_cli("plan", "-m", str(tmp_path), "--machine", "mac-16gb")
    assert code == 2 and "invalid JSON" in err


def test_cli_list_machines() -> None:
    code, out, _ = run_cli("plan", "--list-machines")
    assert code == 0 and all(name in out for name in PRESETS)


def test_cli_plan_on_this_machine(models: Path) -> None:
    code, out, _ = run_cli("plan", "-m", str(models / "qwen2.5-0.5b"), "--json")
    assert code == 0 and json.loads(out)["fits"] is True


def test_explain_and_repr_say_what_the_plan_is(models: Path) -> None:
    fits = unimap.plan(models / "llama3.2-1b", machine="mac-16gb")
    text = fits.explain()
    assert fits.fits and "fits preset mac-16gb: all on gpu:0" in text and "does not fit" not in text
    assert "way out" not in text and "gpu:0: needs" in text
    tight = unimap.plan(models / "llama3-8b", machine="mac-16gb")
    assert not tight.fits and "does not fit" in tight.explain() and "way out: " in tight.explain()
    for plan in (fits, tight):  # one line, not the whole dataclass
        assert "\n" not in repr(plan) and len(repr(plan)) < 200 and f"fits={plan.fits}" in repr(plan)
