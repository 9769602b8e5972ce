"""How long probing takes: `unimap.probe()` in-process, and `unimap doctor` as a user runs it.

Usage: python tools/bench_probe.py [--repeats N]
Prints a Markdown table; the figures recorded in docs/BENCHMARKS.md come from this tool.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import unimap


def time_calls(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = []
    probe_s = time_calls(unimap.probe, args.repeats)
    rows.append(("unimap.probe() (in process, warm)", probe_s))
    for label, extra in (("`unimap doctor --no-bench` (new process)", ["--no-bench"]),
                         ("`unimap doctor` (new process, with BLAS check)", [])):
        cmd = [sys.executable, "-m", "unimap", "doctor", "--json", *extra]
        rows.append((label, time_calls(lambda c=cmd: subprocess.run(c, capture_output=True, check=False),
                                       max(3, args.repeats // 4))))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print("\n| what | median | min | max | runs |\n|---|---|---|---|---|")
    for label, times in rows:
        print(f"| {label} | {statistics.median(times) * 1000:.1f} ms | {min(times) * 1000:.1f} ms "
              f"| {max(times) * 1000:.1f} ms | {len(times)} |")


if __name__ == "__main__":
    main()
