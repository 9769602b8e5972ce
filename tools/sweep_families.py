"""Predicted against measured peak for every buildable mlx-lm family's twin, in one process.

Usage: python tools/sweep_families.py [--tokens 8,252,2044] [--width 1|2|4] [--experts N]
       [--mlp N] [--heads N] [--head-dims N] [--batch N] [--dtype float32|bfloat16] [--repeat N]
       [--only FAMILY,...] [--held]

Each family of tests/tiny_families.py is written as a random-weight checkpoint (its tiny twin,
or wide_config's twin `--width` times as wide with `--experts` times the experts and twice the
top-k, its MLP widths `--mlp` times more, its query heads `--heads` times more and its head dims
`--head-dims` times more, so the queries are wider than the hidden width as in real models;
weights in `--dtype`), planned all on one device of the
stand-in machine for exactly each prompt plus 4 decoded tokens (`--batch` rows), loaded through
unimap and run by mlx-lm's own stream_generate (one prefill chunk of up to 2048 tokens; with
`--batch`, the rows prefilled together through the model's own caches), `--repeat` times. The line per family
gives plan / the largest measured peak (mx.get_peak_memory()) at each prompt length, "UNDER"
where the plan was exceeded, the spread of the peaks over their smallest (with --repeat) and, with
--held, how far a run passed the plan's memory limit in units of the largest array a prefill
chunk makes. MLX allocates ahead of the work in flight, so a shape's peak varies
from run to run: runs go without the plan's MLX memory limit (the need itself) unless `--held`
keeps it, as unimap.load leaves it. Faster than tools/bench_estimate.py's fresh process per
case, so it sweeps every family at several lengths in minutes.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))


class Case(NamedTuple):
    """One prompt length: plan / the largest peak, the spread of the peaks over the smallest, and
    (held runs) how far the largest passed the plan's MLX memory limit, in units of the largest
    array a prefill chunk makes (Estimate.largest_array_bytes)."""

    ratio: float
    spread: float
    overshoot: float


def sweep(family: str, work: Path, tokens: list[int], width: int, experts: int,
          held: bool = False, mlp: int = 1, repeat: int = 1, batch: int = 1,
          dtype: str = "float32", heads: int = 1, head_dims: int = 1) -> list[Case]:
    import mlx.core as mx
    from bench_estimate import run_batched
    from calibrate_families import DECODE
    from mlx_lm import stream_generate
    from tiny_families import ALL_HEAD_DIMS, MLP_WIDTHS, QUERY_HEADS, scale_fields, tiny_config, wide_config
    from tiny_models import stand_in_machine, write_random_model

    import unimap
    from unimap.device_map import parse_device_map
    from unimap.estimate import Options
    from unimap.plan import make_plan

    config = wide_config(family, width, experts) if width > 1 else tiny_config(family)
    for keys, factor in ((MLP_WIDTHS, mlp), (QUERY_HEADS, heads), (ALL_HEAD_DIMS, head_dims)):
        config = scale_fields(config, keys, factor)
    path = write_random_model(work / family, config, dtype=dtype)
    spec = unimap.inspect(path)
    cases = []
    for n in tokens:
        options = Options(max_seq_len=n + DECODE, max_batch_size=batch)
        plan = make_plan(spec, stand_in_machine(), options, parse_device_map("auto"))
        model, tokenizer, _ = unimap.load(path, planned=plan)
        if not held:  # the need itself, not what MLX's memory limit holds it to
            model._unimap.limits.release()
        rows = [[(31 * i + 17 * r) % 120 + 3 for i in range(n)] for r in range(batch)]
        peaks = []
        for _ in range(repeat):
            gc.collect()
            mx.clear_cache()
            mx.reset_peak_memory()
            if batch == 1:
                for _ in stream_generate(model, tokenizer, rows[0], max_tokens=DECODE):
                    pass
            else:  # rows of one length through the model's own caches, as mlx-lm's generate_step
                from mlx_lm.models.cache import make_prompt_cache

                run_batched(model, mx.array(rows), DECODE, make_prompt_cache(model))
            peaks.append(mx.get_peak_memory())
        largest = max(plan.estimate.largest_array_bytes, 1)
        overshoot = max(max(peaks) - plan.memory_limit_bytes, 0) / largest if held else 0.0
        cases.append(Case(plan.peak_bytes / max(peaks), max(peaks) / min(peaks) - 1, overshoot))
        model._unimap.limits.release()
        del model
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="8,252,2044", help="prompt lengths, comma-separated")
    parser.add_argument("--width", type=int, default=1, help="1: the tiny twin; N: N times as wide")
    parser.add_argument("--experts", type=int, default=None, help="times the experts (default: --width)")
    parser.add_argument("--mlp", type=int, default=1, help="times the MLP and expert widths")
    parser.add_argument("--heads", type=int, default=1, help="times the query heads")
    parser.add_argument("--head-dims", type=int, default=1, help="times every head dim")
    parser.add_argument("--batch", type=int, default=1, help="prompt rows (batch > 1: prefilled "
                        "together, as tools/bench_estimate.py's batched cases)")
    parser.add_argument("--dtype", default="float32", help="the checkpoint's weights: float32 or bfloat16")
    parser.add_argument("--repeat", type=int, default=1, help="runs per length (the largest peak counts)")
    parser.add_argument("--only", default="", help="comma-separated families")
    parser.add_argument("--held", action="store_true",
                        help="run under the plan's MLX memory limit, as unimap.load leaves it")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from tiny_families import UNBUILDABLE, families

    tokens = [int(t) for t in args.tokens.split(",")]
    chosen = args.only.split(",") if args.only else [f for f in families() if f not in UNBUILDABLE]
    experts = args.experts or args.width
    every: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in chosen:
            start = time.perf_counter()
            try:
                cases = sweep(family, Path(tmp), tokens, args.width, experts, args.held, args.mlp,
                              args.repeat, args.batch, args.dtype, args.heads, args.head_dims)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"{family:24s} failed: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            every += cases
            shown = " ".join(f"{c.ratio:.3f}" for c in cases)
            flag = "  UNDER" if min(c.ratio for c in cases) < 1 else ""
            spread = f"  spread {100 * max(c.spread for c in cases):.2f} %" if args.repeat > 1 else ""
            over = f"  past the limit {max(c.overshoot for c in cases):.2f}" if args.held else ""
            print(f"{family:24s} {shown}{flag}{spread}{over}  ({time.perf_counter() - start:.1f} s)",
                  flush=True)
    if every:
        ratios = [c.ratio for c in every]
        print(f"{len(every)} cases at {tokens} tokens, width x{args.width}, experts x{experts}, "
              f"MLP x{args.mlp}, heads x{args.heads}, head dims x{args.head_dims}, batch {args.batch}, "
              f"{args.dtype}, {args.repeat} run(s) each"
              f"{', held' if args.held else ''}: "
              f"{sum(r < 1 for r in ratios)} under; median {statistics.median(ratios):.3f}, "
              f"max {max(ratios):.3f}, min {min(ratios):.3f}")
        if args.repeat > 1:
            spreads = [100 * c.spread for c in every]
            print(f"spread of the peaks over their smallest: median {statistics.median(spreads):.2f} %, "
                  f"max {max(spreads):.2f} %")
        if args.held:
            print(f"past the memory limit, in largest arrays: max {max(c.overshoot for c in every):.2f}")

if __name__ == "__main__":
    main()
