"""How long planning takes from local headers: inspect (read and check every header), then plan
(estimate, place, and search the ways out when it does not fit).

Usage: python tools/bench_plan.py [--repeats N] [--only NAME,...] [--machine PRESET]
Writes sparse fixtures of every family in tools/fixtures.py (FAMILIES and LARGE_FAMILIES, e.g.
Qwen3-235B-A22B's 36,945 tensors in 118 shards), and of every published config in
tools/published_configs.json (names and shapes from mlx-lm's own lazily built model), to a
temporary folder and prints a Markdown table. "first" is the first inspect: it imports the
family's mlx-lm module and, for a family read through mlx-lm's model class, builds it and runs two
lazy forwards, filling the structure cache (unimap/cache.py, here in the temporary folder); the
other columns are best of N with a warm file cache and the structure cached: inspect, plan, their
sum (wall clock), and the sum in CPU time (steadier on a shared machine). Each repeat starts
with the previous result freed and garbage collected. Figures in docs/BENCHMARKS.md come from
this tool.
"""
from __future__ import annotations

import argparse
import gc
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

from unimap.estimate import Options  # noqa: E402
from unimap.inspect import inspect  # noqa: E402
from unimap.machines import preset_machine  # noqa: E402
from unimap.plan import make_plan  # noqa: E402
from unimap.settings import Reserves  # noqa: E402


def best(fn, repeats: int) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    """(best wall seconds, best CPU seconds, the last result) of `repeats` calls."""
    result, walls, cpus = None, [], []
    for _ in range(repeats):
        result = None
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def models(tmp: Path, only: list[str]) -> list[tuple[str, Path, int]]:
    """(name, folder, shards) of every fixture whose name contains one of `only` (all without)."""
    wanted = (lambda name: not only or any(o in name for o in only))  # noqa: E731
    found = [(family, fixtures.write_family(tmp, family), shards)
             for family, (_, _, shards) in {**fixtures.FAMILIES, **fixtures.LARGE_FAMILIES}.items()
             if wanted(family)]
    published = json.loads((Path(fixtures.__file__).parent / "published_configs.json").read_text())
    for family, entry in published.items():
        config = {k: v for k, v in entry["config"].items() if k != "quantization_config"}
        name = f"{entry['model']} ({family})"
        if "vision_config" not in config and wanted(name):
            folder = fixtures.write_model(tmp / f"published-{family}", config, fixtures.from_model(config))
            found.append((name, folder, 1))
    return found


MOE_MACHINES = ("mac-128gb", "dgx-spark-128gb")
MOE_MODELS = ("qwen3-235b-a22b", "DeepSeek-V3")


def moe_presets(tmp: Path) -> None:
    """The big MoE models on 128 GB unified machines: at each --isq, where each layer's dense
    part and routed experts go, and the decode speed the plan expects (its roofline)."""
    from unimap.render import layer_span

    print("\n| model | machine | --isq | fits | GPU: dense parts of layers | routed experts on the "
          "CPU | whole layers on the CPU | predicted decode | placement |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, folder, _ in models(tmp, list(MOE_MODELS)):
        spec = inspect(folder)
        for machine_name in MOE_MACHINES:
            machine = preset_machine(machine_name, {}, Reserves())
            for isq in (None, 4, 3, 2):
                plan = make_plan(spec, machine, Options(max_seq_len=8192, isq=isq))
                gpu, cpu = plan.device("gpu:0"), plan.device("cpu")
                rate = plan.decode.tokens_per_s if plan.decode else None
                why = next((n for n in plan.notes if "CPU (" in n or "live on the CPU" in n), "")
                why = why[why.find("(") + 1:-1] if why else ("all on the GPU" if plan.all_on_gpu else "")
                print(f"| {name} | {machine_name} | {isq or '-'} | "
                      f"{'yes' if plan.fits else 'no: ' + plan.problem} | {layer_span(gpu.layers)} | "
                      f"{layer_span(cpu.expert_layers)} | {layer_span(cpu.layers)} | "
                      f"{'-' if rate is None else f'{rate:.1f} tokens/s'} | {why} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--machine", default="mac-16gb")
    parser.add_argument("--only", default="", help="comma-separated parts of model names")
    parser.add_argument("--moe", action="store_true", help="only Qwen3-235B-A22B and DeepSeek-V3 "
                        "on the 128 GB presets: expert placement and predicted decode")
    args = parser.parse_args()
    if args.moe:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["UNIMAP_CACHE_DIR"] = str(Path(tmp) / "cache")
            moe_presets(Path(tmp))
        return
    machine = preset_machine(args.machine, {}, Reserves())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"planning for {args.machine}")
    print("\n| model | tensors | files | first | inspect | plan | total | total CPU | fits |\n"
          "|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UNIMAP_CACHE_DIR"] = str(Path(tmp) / "cache")
        for name, folder, shards in models(Path(tmp), [o for o in args.only.split(",") if o]):
            start = time.perf_counter()
            inspect(folder)
            first = time.perf_counter() - start
            inspect_s, inspect_cpu, spec = best(lambda f=folder: inspect(f), args.repeats)
            plan_s, plan_cpu, plan = best(lambda s=spec: make_plan(s, machine), args.repeats)
            print(f"| {name} | {len(spec.headers)} | {shards} | {first * 1000:.1f} ms | "  # type: ignore[attr-defined]
                  f"{inspect_s * 1000:.1f} ms | {plan_s * 1000:.1f} ms | "
                  f"{(inspect_s + plan_s) * 1000:.1f} ms | {(inspect_cpu + plan_cpu) * 1000:.1f} ms | "
                  f"{plan.fits} |")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
