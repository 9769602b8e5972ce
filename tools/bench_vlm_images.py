"""Every planned mlx-vlm family given larger images through its own image processor, predicted
against measured peak (issue 11).

Usage: python tools/bench_vlm_images.py [--only SUBSTRING[,SUBSTRING...]] [--json OUT] [--long WORDS]

Each family runs in a fresh process (tests/vlm_runs.py's run_family): a random checkpoint built
through the family's own mlx-vlm classes with its published image processor settings, planned for
the images (`--max-num-images`, `--max-image-length`), loaded all on one device and generated from
for two tokens. Cases: a 4:3 image of 64 x 48 px, a 1024-px image and six 224-px images, in float32
and in bfloat16 (a bfloat16 tower casts the float32 pixels). A case either runs, its peak
(mx.get_peak_memory()) and the image tokens its processor made against the plan's, or is refused
by unimap before loading with an error that says why.

tests/test_vlm_runs.py runs the small image for every family and the larger ones for one family
of each kind of processor; this runs them all. `--long WORDS` runs a text prompt of about WORDS
tokens instead, filling a plan of WORDS + 16 tokens, all on one device and split (one layer on
the GPU): the language model mlx-vlm runs, at a length tests/test_vlm_runs.py's 64-token plans
do not reach. Prints Markdown (the table in docs/BENCHMARKS.md): each case's
planned / measured peak, and the image tokens the processor made / the plan's.
Exits 1 when a case went over its plan or raised something other than unimap's errors.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

COLUMNS = {"own_processor": "64 x 48", "own_processor_large": "1024 px",
           "own_processor_images": "6 x 224 px", "bfloat16_large": "1024 px bf16",
           "bfloat16_images": "6 x 224 px bf16"}

CHILD = r"""
import json, sys, tempfile, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from vlm_runs import run_family
work = Path(tempfile.mkdtemp())
words = int(sys.argv[2])
print(json.dumps(run_family(sys.argv[1], work, () if words else tuple(sys.argv[3:]), text=False,
                            long_words=words)))
"""


def families() -> list[str]:
    from tiny_vlm_configs import vlm_modules
    from vlm_runs import runnable
    return [m for m in vlm_modules()[0] if runnable(m)]


def run(module: str, words: int = 0) -> dict[str, Any]:
    from vlm_runs import CASES  # every larger image case

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, module, str(words), *CASES], capture_output=True,
                          text=True, cwd=ROOT / "tests", timeout=1800)
    if done.returncode != 0:
        return {"built": False, "why": f"the child failed: {done.stderr.strip()[-300:]}",
                "seconds": time.perf_counter() - started}
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row["seconds"] = time.perf_counter() - started
    return row


def outcome(text: str) -> tuple[str, float | None, bool]:
    """(cell, plan / peak where it ran, whether the case is wrong: over the plan, or raised)."""
    if text.startswith("ran "):
        peak, planned, *made = map(int, text.split()[1:])
        ratio = planned / peak
        wrong = peak > planned or (bool(made) and made[0] > made[1])
        cell = f"{ratio:.3f}" + (f" ({made[0]}/{made[1]})" if made else "") + (
            " **OVER**" if wrong else "")
        return cell, ratio, wrong
    kind = text.split(":", 1)[0]
    if kind in ("ConfigError", "ModelError"):
        return f"refused ({kind})", None, False
    if text.startswith("not built"):
        return "not built", None, False
    return f"**{text[:60]}**", None, True


def render(rows: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    columns = COLUMNS
    if any("long_whole" in row for row in rows.values()):
        columns = {"long_whole": "long prompt, one device", "long_split": "long prompt, split"}
    lines = ["| family | " + " | ".join(columns.values()) + " | s |",
             "|---|" + "---|" * (len(columns) + 1)]
    ratios: dict[str, list[float]] = {key: [] for key in columns}
    refused: dict[str, list[str]] = {}
    failed = False
    for module, row in rows.items():
        if not row.get("built"):
            lines.append(f"| {module} | not built: {row.get('why', '')[:80]} |" + " |" * len(columns))
            continue
        cells = []
        for key in columns:
            if key not in row:
                cells.append("-")
                continue
            cell, ratio, wrong = outcome(row[key])
            failed |= wrong
            cells.append(cell)
            if ratio is not None:
                ratios[key].append(ratio)
            elif not row[key].startswith("not built"):
                refused.setdefault(f"{module}, {columns[key]}", []).append(row[key])
        lines.append(f"| {module} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    lines += ["", "| case | ran | min | median | max | over the plan |", "|---|---|---|---|---|---|"]
    for key, name in columns.items():
        got = ratios[key]
        if got:
            lines.append(f"| {name} | {len(got)} | {min(got):.3f} | {statistics.median(got):.3f} | "
                         f"{max(got):.3f} | {sum(r < 1 for r in got)} |")
    every = [r for got in ratios.values() for r in got]
    if every:
        lines.append(f"| all | {len(every)} | {min(every):.3f} | {statistics.median(every):.3f} | "
                     f"{max(every):.3f} | {sum(r < 1 for r in every)} |")
    if refused:
        lines += ["", "Refused by unimap, before loading:", ""]
        lines += [f"- {case}: {texts[0][:200]}" for case, texts in refused.items()]
    return "\n".join(lines), failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="families whose module name contains this "
                        "(or any of a comma-separated list)")
    parser.add_argument("--json", type=Path, help="write the raw rows here")
    parser.add_argument("--results", type=Path, help="render the table from a --json file")
    parser.add_argument("--long", type=int, default=0, metavar="WORDS",
                        help="a text prompt of about WORDS tokens instead of the images")
    args = parser.parse_args()
    if args.results:
        rows = json.loads(args.results.read_text())
    else:
        wanted = [w for w in args.only.split(",") if w]
        rows = {}
        for module in families():
            if wanted and not any(w in module for w in wanted):
                continue
            rows[module] = run(module, args.long)
            print(f"{module}: {rows[module]['seconds']:.0f} s", file=sys.stderr, flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    print(f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}\n")
    table, failed = render(rows)
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
