"""After loading: each device's measured weights equal the plan's (they come from the headers),
and the usage lines name every device that holds something, in at most 80 columns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tiny_models import stand_in_machine, write_tiny_model

import unimap
from unimap.api import load
from unimap.plan import DevicePlan
from unimap.units import GiB, format_bytes
from unimap.usage import DeviceUsage, device_usage, usage_lines

# GPU budgets for the tiny llama (4 layers of 144.5 KiB, 64 KiB of parts) at --max-seq-len 64:
# (planned layers on gpu:0, planned layers on cpu)
SPLITS = [("400KiB", (), (0, 1, 2, 3)),  # not even the parts fit the GPU: all on the CPU
          ("600KiB", (), (0, 1, 2, 3)),  # the embeddings and head on the GPU, layers on the CPU
          ("1000KiB", (0, 1), (2, 3)),
          ("1GiB", (0, 1, 2, 3), ())]  # all on the GPU


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("usage") / "llama", "llama")


@pytest.mark.parametrize(("budget", "gpu_layers", "cpu_layers"), SPLITS)
def test_measured_weights_per_device_are_the_planned_ones(llama: Path, budget: str,
                                                          gpu_layers: tuple[int, ...],
                                                          cpu_layers: tuple[int, ...]) -> None:
    model, _, plan = load(llama, max_seq_len=64, machine=stand_in_machine(), gpu_budget=budget)
    assert (plan.device("gpu:0").layers, plan.device("cpu").layers) == (gpu_layers, cpu_layers)
    usages = device_usage(model)
    holding = [d for d in plan.devices if d.used_bytes]
    assert [u.name for u in usages] == [d.name for d in holding]
    for u, d in zip(usages, holding, strict=True):
        assert u.layers == d.layers and u.weight_bytes == d.weight_bytes > 0
        assert u.used_bytes == d.used_bytes and u.budget_bytes == d.budget_bytes
    lines = usage_lines(usages, 3 * 2**20)
    assert all(len(line) <= 80 for line in lines)
    if len(usages) == 1:  # one device: one line
        assert lines == [f"{usages[0].name}: weights {format_bytes(usages[0].weight_bytes)} as "
                         f"planned; peak 3.00 MiB of {format_bytes(usages[0].budget_bytes)}"]
    else:  # a header, a row per device, the peak
        assert len(lines) == len(usages) + 2 and lines[-1].startswith("peak 3.00 MiB measured")
        for u, line in zip(usages, lines[1:], strict=False):
            assert line.split()[0] == u.name
            assert line.count(format_bytes(u.weight_bytes)) == 2  # measured and planned
            assert format_bytes(u.used_bytes) in line and format_bytes(u.budget_bytes) in line


def test_cpu_part_converted_to_float32_is_measured_as_planned(tmp_path: Path) -> None:
    """x86-64 runs a split's CPU layers in float32: the CPU holds twice the stored bytes."""
    path = write_tiny_model(tmp_path / "bf16", "llama", dtype="bfloat16")
    model, _, plan = load(path, max_seq_len=64, machine=stand_in_machine(), gpu_budget="600KiB")
    assert plan.cpu_dtype == "float32"
    assert [(u.name, u.weight_bytes) for u in device_usage(model)] == [
        (d.name, d.weight_bytes) for d in plan.devices if d.used_bytes]


def test_device_usage_needs_a_model_loaded_by_unimap(llama: Path) -> None:
    from mlx_lm import load as mlx_load

    plain, _ = mlx_load(str(llama))
    with pytest.raises(unimap.ConfigError, match="loaded by unimap.load"):
        device_usage(plain)


def usage(name: str, weight_bytes: int, planned_bytes: int, budget_bytes: int) -> DeviceUsage:
    planned = DevicePlan(name=name, description="", budget_bytes=budget_bytes,
                         layers=tuple(range(100, 126)), weight_bytes=planned_bytes,
                         kv_bytes=GiB, kv_growth_bytes=0, activation_bytes=GiB)
    return DeviceUsage(name, planned.layers, weight_bytes, planned)


def test_usage_lines_stay_within_80_columns_for_huge_figures() -> None:
    huge = 1023 * GiB + 1000 * 2**20  # "1023.98 GiB": the widest a figure gets
    one = usage_lines([usage("gpu:0", huge, huge - 1, huge)], huge)
    assert len(one) == 1 and "(plan 1023.98 GiB)" in one[0] and len(one[0]) <= 80
    several = usage_lines([usage("gpu:0", huge, huge, huge), replace(
        usage("cpu", huge, huge, huge), layers=(126,))], huge)
    assert len(several) == 4 and all(len(line) <= 80 for line in several)
    assert several[0].split() == ["device", "layers", "weights", "planned", "KV+activ.", "used",
                                  "budget"]
