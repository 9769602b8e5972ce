"""The planner: golden plans, invariants over every golden case, manual maps, ways out, the CLI."""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import golden_plans
import pytest
from click.testing import CliRunner

import unimap
from unimap import ConfigError, Options, inspect
from unimap.cli import cli
from unimap.estimate import IMAGE_MARKERS
from unimap.machines import PRESETS, preset_machine
from unimap.plan import LIMIT_HEADROOM_ARRAYS, Plan, make_plan
from unimap.render import device_layers
from unimap.settings import Reserves
from unimap.units import GiB, format_bytes

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
    moved = {p.index for p in plan.layers if p.experts_device not in (None, p.device)}
    for d in plan.devices:  # a split's CPU layers are priced in the CPU's compute dtype
        priced = est.cpu_layers if d.name == "cpu" and split else est.layers
        layer_bytes = sum(priced[i].dense_bytes if i in moved else priced[i].weight_bytes
                          for i in d.layers)
        layer_bytes += sum(est.layers[i].expert_bytes for i in d.expert_layers)
        assert d.weight_bytes - layer_bytes in (0, parts)
    # routed experts live on the CPU only for layers whose dense part is on a GPU, and each
    # moved layer's experts are listed on the CPU
    assert set(plan.device("cpu").expert_layers) == moved
    assert not moved & set(plan.device("cpu").layers)
    assert all(est.layers[i].expert_bytes for i in moved)
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
    spec = inspect(models / "mixtral-8x7b")
    plan = make_plan(spec, preset_machine("h100-80gb", {}, Reserves()), n_cpu_moe=0)  # whole layers
    est = plan.estimate
    assert plan.cpu_dtype == "float32" and est.dtype == "bfloat16"
    cpu = plan.device("cpu")
    # the routed experts stay bf16 as stored (upcast call by call); the rest doubles
    experts = [spec.slots[i].experts.header_bytes for i in cpu.layers]  # type: ignore[union-attr]
    stored = [est.layers[i].weight_bytes for i in cpu.layers]
    assert cpu.weight_bytes == sum(2 * s - e for s, e in zip(stored, experts, strict=True))
    assert sum(stored) < cpu.weight_bytes <= 1.05 * sum(stored)
    assert cpu.kv_bytes == 2 * sum(est.layers[i].kv_bytes for i in cpu.layers)
    assert any("routed experts on cpu stay bfloat16" in note for note in plan.notes)
    assert not any("routed experts on gpu" in note for note in plan.notes)  # CUDA runs bf16
    mac = make_plan(inspect(models / "llama3-8b"), preset_machine("mac-16gb", {}, Reserves()))
    assert mac.cpu_dtype is None and mac.device("cpu").layers  # arm64: not measured, unchanged
    # MLX's CPU gather_mm takes float32 only: a bf16 MoE's CPU layers run in float32 everywhere
    moe = make_plan(inspect(models / "qwen3-30b-a3b"), preset_machine("mac-64gb", {}, Reserves()),
                    n_cpu_moe=0)
    assert moe.cpu_dtype == "float32" and moe.device("cpu").layers
    kept = make_plan(inspect(models / "mixtral-8x7b"), preset_machine("h100-80gb", {}, Reserves()),
                     Options(cpu_dtype="bfloat16"), n_cpu_moe=0)
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
    plan = unimap.plan(models / "gemma3-4b-vl", machine="mac-16gb")
    data = json.loads(plan.to_json())
    assert isinstance(data["fits"], bool) and isinstance(data["wired_limit_bytes"], int)
    # the run's MLX memory limit: below the peak by room for the chunk's largest arrays
    resident = data["totals"]["weight_bytes"] + data["totals"]["kv_bytes"]
    assert resident < data["memory_limit_bytes"] < data["totals"]["peak_bytes"]
    room = LIMIT_HEADROOM_ARRAYS * plan.estimate.largest_array_bytes
    assert data["totals"]["peak_bytes"] - data["memory_limit_bytes"] == room
    assert [set(d) >= {"name", "budget_bytes", "used_bytes", "layers"} for d in data["devices"]] == [True] * 2
    assert set(data["layers"][0]) >= {"index", "device", "weight_bytes", "kv_bytes"}
    assert set(data["non_mapped"]) == {"device", "weight_bytes"}
    assert set(data["totals"]) >= {"weight_bytes", "kv_bytes", "activation_bytes", "peak_bytes"}
    assert data["vision"]["image_tokens"] == 256 + IMAGE_MARKERS
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
    data = json.loads(out)
    assert code == 0 and data["layers"][-1]["device"] == "gpu:0"
    # the routed experts of the first layers live on the CPU, their dense parts on the GPU
    moved = [layer["index"] for layer in data["layers"] if layer["experts_device"] == "cpu"]
    assert moved == data["devices"][-1]["expert_layers"] == list(range(len(moved))) and moved
    assert data["decode"]["tokens_per_s"] > 0 and data["decode"]["crossings"] == 2 * len(moved)
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


# ----------------------------------------------------------------- widths

ROWS = ("device", "layers", "weights", "KV", "activ.", "used", "budget", "free")
WIDTH_CASES = [
    ("qwen2.5-vl-7b", ["--machine", "mac-16gb"]),  # does not fit; vision tower; a way out
    ("mixtral-8x7b", ["--machine", "h100-80gb", "--gpu-budget", "8GiB"]),  # 100+ GiB figures
    ("gemma3-1b", ["--machine", "mac-16gb"]),  # all on the GPU
    ("llama3-8b", ["--machine", "mac-64gb", "--ram", "24GB", "-n", "20"]),  # a long note
]


def figures(device: dict[str, Any]) -> list[str]:
    """A device's cells as the plan table shows them, from the plan's JSON."""
    held = SimpleNamespace(layers=tuple(device["layers"]), expert_layers=tuple(device["expert_layers"]))
    return [device["name"], device_layers(held), *(format_bytes(n) for n in (  # type: ignore[arg-type]
        device["weight_bytes"], device["kv_bytes"] + device["kv_growth_bytes"],
        device["activation_bytes"], device["used_bytes"], device["budget_bytes"],
        device["free_bytes"]))]


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize(("family", "args"), WIDTH_CASES)
def test_cli_plan_fits_the_width(models: Path, family: str, args: list[str], width: int) -> None:
    argv = ["plan", "-m", str(models / family), *args]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = json.loads(CliRunner().invoke(cli, [*argv, "--json"]).stdout)
    result = CliRunner().invoke(cli, argv, env={"COLUMNS": str(width)})
    assert result.exit_code == (0 if data["fits"] else 3), result.output
    out = result.stdout
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= width
    assert str(models / family) in out.replace("\n    ", "")  # wrapped, never cut
    cells = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    devices = [figures(d) for d in data["devices"]]
    if width >= 100:  # a row per device, with its memory bar where there is room
        for row in devices:
            assert [*row, "["] in [c[:len(row)] + [c[-1][:1]] for c in cells] or width < 120, row
            assert row in [c[:len(row)] for c in cells], row
    else:  # a column per device, a row per figure
        for index, head in enumerate(ROWS):
            assert [head, *(row[index] for row in devices)] in cells, head
        assert "memory" in out
    for text in data["notes"] + data["ways_out"]:  # wrapped with a hanging indent, whole
        assert text in re.sub(r"\n +", " ", out)


def test_cli_plan_narrow_table_takes_as_many_devices_as_fit(models: Path) -> None:
    from unimap.cli import LazyConsole, _render_plan

    plan = unimap.plan(models / "llama3-8b", machine="mac-16gb")
    many = replace(plan, devices=plan.devices * 3)  # six devices: two tables of three
    out = io.StringIO()
    _render_plan(many, LazyConsole(out, width=80))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    tables = [line.split() for line in text.splitlines() if line.startswith("  device ")]
    assert tables == [["device", "gpu:0", "cpu", "gpu:0"], ["device", "cpu", "gpu:0", "cpu"]]
    assert text.count("8.86 GiB") == 3 and text.count("6.09 GiB") == 3  # each device's weights


@pytest.mark.parametrize(("columns", "layout"), [("", "memory"), ("wide", "memory"), ("0", "memory"),
                                                 ("100", "free")])
def test_cli_width_comes_from_columns(models: Path, columns: str, layout: str) -> None:
    result = CliRunner().invoke(cli, ["plan", "-m", str(models / "gemma3-1b"), "--machine",
                                      "mac-16gb"], env={"COLUMNS": columns})
    header = next(line for line in result.stdout.splitlines() if line.startswith("  device "))
    assert header.split()[-1] == layout  # 120 columns: the memory bar; 100: none


# ----------------------------------------------------------------- notebook


class StrictHTML(HTMLParser):
    """Fails on an element closed out of order; collects the text and each table row's cells."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.rows: list[list[str]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes {self.open}"

    def handle_data(self, data: str) -> None:
        self.text += data
        if {"td", "th"} & set(self.open):
            self.rows[-1][-1] += data


def parsed(html: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(html)
    parser.close()
    assert parser.open == [], parser.open
    return parser


@pytest.mark.parametrize(("family", "machine", "verdict"), [
    ("gemma3-1b", "mac-16gb", "fits, all on the GPU"),
    ("mixtral-8x7b", "h100-80gb", "fits"),
    ("llama3-8b", "mac-16gb", "does not fit: cpu is over its budget"),
])
def test_notebook_html_shows_each_device(models: Path, family: str, machine: str,
                                         verdict: str) -> None:
    plan = unimap.plan(models / family, machine=machine)
    page = parsed(plan._repr_html_())
    assert f": {verdict}" in page.text and ("does not fit" in page.text) == (not plan.fits)
    for d in plan.devices:
        row = next(r for r in page.rows if r[0] == d.name)
        assert row[1:9] == [d.description, device_layers(d), *(format_bytes(n) for n in (
            d.weight_bytes, d.kv_bytes + d.kv_growth_bytes, d.activation_bytes, d.used_bytes,
            d.budget_bytes, d.free_bytes))]
    assert f"predicted peak {format_bytes(plan.peak_bytes)}" in page.text
    assert f"MLX memory limit {format_bytes(plan.memory_limit_bytes)}" in page.text
    assert (plan.wired_limit_bytes is None or
            f"wired limit {format_bytes(plan.wired_limit_bytes)}" in page.text)
    assert all(w in page.text for w in plan.ways_out) and all(n in page.text for n in plan.notes)


def test_notebook_html_escapes_everything(models: Path) -> None:
    plan = unimap.plan(models / "llama3-8b", machine="mac-16gb")
    hostile = "<script>alert('x')</script> & \"q\""
    gpu = replace(plan.devices[0], name="gpu:<0>", description=hostile)
    odd = replace(plan, model=hostile, problem=hostile, notes=(hostile,), ways_out=(hostile,),
                  devices=(gpu, *plan.devices[1:]))
    html = odd._repr_html_()
    assert "<script>" not in html and "gpu:<0>" not in html
    page = parsed(html)
    assert page.text.count(hostile) == 5  # model, problem, description, note, way out
    assert [r[0] for r in page.rows[1:]] == ["gpu:<0>", "cpu"]


def test_two_gpus_the_automatic_plan_uses_the_one_a_process_runs_on(models: Path) -> None:
    """One unimap process runs on gpu:0 (the runtime refuses layers on another GPU), so the
    automatic plan of a two-GPU machine spills to the CPU, not to gpu:1, and says so; a manual
    map still places layers on both, as mistral.rs's "0:16;1:16" does."""
    one = preset_machine("h100-80gb", {}, Reserves())
    two = replace(one, devices=(one.gpus[0], replace(one.gpus[0], name="gpu:1"), one.cpu))
    plan = unimap.plan(models / "mixtral-8x7b", machine=two)
    assert [d.name for d in plan.devices] == ["gpu:0", "cpu"] and plan.fits
    assert any(n.startswith("gpu:1 not used") for n in plan.notes)
    assert plan.to_dict()["devices"] == unimap.plan(models / "mixtral-8x7b", machine=one).to_dict()[
        "devices"]
    with pytest.warns(DeprecationWarning):
        manual = unimap.plan(models / "mixtral-8x7b", machine=two, device_map="0:16;1:16")
    assert [len(d.layers) for d in manual.devices] == [16, 16, 0]
