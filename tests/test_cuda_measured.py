"""The estimate against what MLX's CUDA backend measured on a lent NVIDIA H200 (docs/gpu/*.json,
written by tools/bench_estimate.py and tools/gpu_check.py there; docs/BENCHMARKS.md). The plans
are rebuilt here for the h100-80gb preset (the CUDA backend, every placement as it ran) and must
not fall below any recorded peak. A record of real measurements, replayed: no GPU needed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import bench_estimate as bench
import pytest

import unimap
from unimap.inspect import inspect

DOCS = Path(__file__).resolve().parents[1] / "docs" / "gpu"
TEXT = [r for name in ("h200_bench_text_1.json", "h200_bench_text_2.json")
        for r in json.loads((DOCS / name).read_text())]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cuda")


@pytest.mark.parametrize("record", TEXT, ids=[r["name"] for r in TEXT])
def test_plan_covers_the_h200_peak(work: Path, record: dict[str, Any]) -> None:
    case = bench.Case(**record["case"])
    path = bench.checkpoint(work, case.model, case.weights)
    kwargs = bench.load_kwargs(case, inspect(path).num_layers, gpu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the placements are manual maps
        plan = unimap.plan(path, machine="h100-80gb", **kwargs)
    assert plan.machine.backend == "cuda" and record["backend"] == "cuda"
    assert plan.peak_bytes >= record["measured"], f"{case.name}: {plan.peak_bytes} < {record['measured']}"
    # and not far above it: within 7 % (a windowed layer's cache is counted at its largest, after
    # the first decode step grows it by 256 tokens past a prompt shorter than its window, beside
    # the prefill's working set: gemma3 at 256 tokens, batch 2, 1.059)
    assert plan.peak_bytes < 1.07 * record["measured"]


def test_plan_covers_the_h200_vision_peak_of_a_fixed_size_tower(work: Path) -> None:
    """Gemma 3's SigLIP tower (bf16, one 448-pixel image), all on the GPU and split 2 + 2, as
    tools/gpu_check.py --vision ran it (one lazy graph; the runtime now evaluates block by
    block on CUDA, which can only hold less)."""
    from tiny_vlms import write_tiny_vlm

    found = json.loads((DOCS / "h200_gpu_check_vision.json").read_text())["vision"]["gemma3_vl"]
    path = write_tiny_vlm(work / "gemma3_vl", "gemma3", dtype="bfloat16", vision=bench.VISION["gemma3_vl"])
    for run, kwargs in (("whole", {}), ("split", {"device_map": 2})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            plan = unimap.plan(path, max_seq_len=256, max_image_length=448, machine="h100-80gb", **kwargs)
        assert {d.name: list(d.layers) for d in plan.devices} == found[run]["plan"]
        assert plan.peak_bytes >= found[run]["peak_bytes"]
