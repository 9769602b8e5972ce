"""How long planning takes from local headers: inspect (read and check every header), then plan
(estimate, place, and search the ways out when it does not fit).

Usage: python tools/bench_plan.py [--repeats N]
Writes sparse fixtures of every family in tools/fixtures.py, and of every published config in
tools/published_configs.json (names and shapes from mlx-lm's own lazily built model; read through
mlx-lm's model class, so "inspect" includes building it and two lazy forwards), to a temporary
folder and prints a Markdown table (best of N, warm file cache, the family's mlx-lm module
already imported). Figures in docs/BENCHMARKS.md come from this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fixtures  # noqa: E402

from unimap.inspect import inspect  # noqa: E402
from unimap.machines import preset_machine  # noqa: E402
from unimap.plan import make_plan  # noqa: E402
from unimap.settings import Reserves  # noqa: E402


def best(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    result, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--machine", default="mac-16gb")
    args = parser.parse_args()
    machine = preset_machine(args.machine, {}, Reserves())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"planning for {args.machine}")
    print("\n| model | tensors | files | inspect | plan | total | fits |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folders = [(family, fixtures.write_family(Path(tmp), family), shards)
                   for family, (_, _, shards) in fixtures.FAMILIES.items()]
        published = json.loads((Path(fixtures.__file__).parent / "published_configs.json").read_text())
        for family, entry in published.items():
            config = {k: v for k, v in entry["config"].items() if k != "quantization_config"}
            if "vision_config" in config:
                continue
            folder = fixtures.write_model(Path(tmp) / f"published-{family}", config,
                                          fixtures.from_model(config))
            folders.append((f"{entry['model']} ({family})", folder, 1))
        for name, folder, shards in folders:
            inspect(folder)  # once first: the family's mlx-lm module is imported then
            t_inspect, spec = best(lambda f=folder: inspect(f), args.repeats)
            t_plan, plan = best(lambda s=spec: make_plan(s, machine), args.repeats)
            print(f"| {name} | {len(spec.headers)} | {shards} | "  # type: ignore[attr-defined]
                  f"{t_inspect * 1000:.1f} ms | {t_plan * 1000:.1f} ms | "
                  f"{(t_inspect + t_plan) * 1000:.1f} ms | {plan.fits} |")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
