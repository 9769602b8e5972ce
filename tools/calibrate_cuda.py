"""Fit MLX's CUDA factors (unimap.estimate.CUDA_ARRAYS_FACTORS) to the peaks a lent H200 measured.

Usage: python tools/calibrate_cuda.py

MLX's CUDA backend frees an array only once the kernels using it have run, so more of a chunk's
arrays are alive at once than on the CPU. Each family's factor is the least, in steps of 0.01,
that makes every plan for the recorded cases (docs/gpu/h200_bench_text_*.json, written by
tools/bench_estimate.py on the GPU; the checkpoints rebuilt here) reach its measured peak, with
the checkout's CPU coefficients and fits: a change to those changes what the factor is over.
It prints the table to put in unimap/estimate.py; no GPU is needed.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")]


def main() -> None:
    import importlib

    import bench_estimate as bench

    from unimap.inspect import inspect

    estimate = importlib.import_module("unimap.estimate")  # the module, not the function unimap exports

    records = [r for name in ("h200_bench_text_1.json", "h200_bench_text_2.json")
               for r in json.loads((ROOT / "docs" / "gpu" / name).read_text())]
    found: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        by_family: dict[str, list[tuple[Any, Path, int]]] = {}
        for record in records:  # each case's checkpoint rebuilt and read once
            case = bench.Case(**record["case"])
            path = bench.checkpoint(Path(tmp), case.model, case.weights)
            arch = inspect(path).arch
            family = estimate.CALIBRATED_AS.get(arch.family, arch.family)
            by_family.setdefault(family, []).append((case, path, record["measured"]))
        for family in list(estimate.CUDA_ARRAYS_FACTORS):
            fit_family(estimate, bench, family, by_family.get(family, []), found)
    print("CUDA_ARRAYS_FACTORS = " + repr(found))


def fit_family(estimate: Any, bench: Any, family: str, cases: list[tuple[Any, Path, int]],
               found: dict[str, float]) -> None:
    """The least factor (steps of 0.01) at which every one of the family's cases is covered,
    into `found` (and left in estimate.CUDA_ARRAYS_FACTORS for the families after it)."""
    import unimap
    from unimap.inspect import inspect

    def short(factor: float) -> float:
        """The most a measured peak needs over its plan at `factor`."""
        estimate.CUDA_ARRAYS_FACTORS[family] = factor
        worst = 0.0
        for case, path, measured in cases:
            kwargs = bench.load_kwargs(case, inspect(path).num_layers, gpu=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the placements are manual maps
                plan = unimap.plan(path, machine="h100-80gb", **kwargs)
            worst = max(worst, measured / plan.peak_bytes)
        return worst

    low, high = 1.0, 4.0
    if not cases or short(low) <= 1.0:
        found[family] = estimate.CUDA_ARRAYS_FACTORS[family] = low
        return
    while high - low > 0.001:
        middle = (low + high) / 2
        low, high = (low, middle) if short(middle) <= 1.0 else (middle, high)
    found[family] = math.ceil(high * 100) / 100
    print(f"{family:12s} {len(cases):2d} cases  factor {found[family]:.2f}  "
          f"(plan / measured at it: {1 / short(found[family]):.3f} for the closest)", flush=True)


if __name__ == "__main__":
    main()
