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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")]


def main() -> None:
    import importlib

    import bench_estimate as bench

    import unimap
    from unimap.inspect import inspect

    estimate = importlib.import_module("unimap.estimate")  # the module, not the function unimap exports

    records = [r for name in ("h200_bench_text_1.json", "h200_bench_text_2.json")
               for r in json.loads((ROOT / "docs" / "gpu" / name).read_text())]
    work = Path(tempfile.mkdtemp())
    found: dict[str, float] = {}
    for family in estimate.CUDA_ARRAYS_FACTORS:
        cases = []
        for record in records:
            case = bench.Case(**record["case"])
            path = bench.checkpoint(work, case.model, case.weights)
            if estimate.CALIBRATED_AS.get(inspect(path).arch.family, inspect(path).arch.family) != family:
                continue
            cases.append((case, path, record["measured"]))

        def short(factor: float, cases: list = cases, family: str = family) -> float:
            estimate.CUDA_ARRAYS_FACTORS[family] = factor
            worst = 0.0
            for case, path, measured in cases:
                kwargs = bench.load_kwargs(case, inspect(path).num_layers, gpu=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    plan = unimap.plan(path, machine="h100-80gb", **kwargs)
                worst = max(worst, measured / plan.peak_bytes)
            return worst

        low, high = 1.0, 4.0
        if not cases or short(low) <= 1.0:
            found[family] = low
            continue
        while high - low > 0.001:
            middle = (low + high) / 2
            low, high = (low, middle) if short(middle) <= 1.0 else (middle, high)
        found[family] = math.ceil(high * 100) / 100
        print(f"{family:12s} {len(cases):2d} cases  factor {found[family]:.2f}  "
              f"(plan / measured at it: {1 / short(found[family]):.3f} for the closest)", flush=True)
    print("CUDA_ARRAYS_FACTORS = " + repr(found))


if __name__ == "__main__":
    main()
