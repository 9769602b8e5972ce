"""Start-up: a whole `unimap run` process to its first token against `mlx_lm.generate` on the
same model (issue 14: ratio <= 1.05), and where unimap's time goes.

Usage: python tools/bench_startup.py [--rounds 15]
Writes a random llama checkpoint (real safetensors written by MLX) to a temporary folder, then
times each command as a fresh process generating one token (--rounds rounds in turn; best and
median, warm file cache).
Prints Markdown for docs/BENCHMARKS.md with the machine named.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_runtime  # noqa: E402

BENCH = bench_runtime.BENCH  # the same random llama as tools/bench_runtime.py
PROMPT = "w1 w2 w3 w4 w5 w6 w7 w8"


def timed(cases: dict[str, list[str]], rounds: int, env: dict[str, str]) -> dict[str, list[float]]:
    """Seconds of each command per round. The commands take turns within a round, so a slow
    spell of a shared machine falls on all of them alike, not on whichever ran then."""
    for command in cases.values():  # warm: files, bytecode
        subprocess.run(command, capture_output=True, check=True, env=env)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, command in cases.items():
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True, env=env)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    import mlx.core as mx
    from tiny_models import write_random_model

    # Bytecode cached as a user's machine caches it: pip wrote mlx-lm's .pyc files, so unimap's
    # are written too (by a first, untimed run) even where PYTHONDONTWRITEBYTECODE is set, as it
    # is on the development VM; otherwise every unimap process compiles its modules (60-80 ms).
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "UNIMAP_BLAS_PRELOADED", "PYTHONDONTWRITEBYTECODE")}
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_random_model(Path(tmp) / "llama", BENCH, dtype="bfloat16"))
        cases = {
            "mlx_lm.generate": [python, "-m", "mlx_lm", "generate", "--model", path, "--prompt",
                                PROMPT, "--max-tokens", "1"],
            "unimap run -q": [python, "-m", "unimap", "run", path, "-p", PROMPT, "--max-tokens",
                              "1", "-q"],
            "unimap run": [python, "-m", "unimap", "run", path, "-p", PROMPT, "--max-tokens", "1"],
            "unimap run --no-blas-preload": [python, "-m", "unimap", "run", path, "-p", PROMPT,
                                             "--max-tokens", "1", "-q", "--no-blas-preload"],
            "import mlx_lm (python -c)": [python, "-c", "import mlx_lm.generate"],
            "import unimap.cli (python -c)": [python, "-c", "import unimap.cli"],
            "unimap plan (no MLX needed)": [python, "-m", "unimap", "plan", path, "--json"],
        }
        seconds = timed(cases, args.rounds, env)
    print(f"machine: {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs; "
          f"MLX {mx.__version__}; random bf16 llama, 1024 wide, 8 layers (126 MiB); {args.rounds} "
          "rounds, the commands taking turns, a fresh process each\n")
    best = {name: min(values) for name, values in seconds.items()}
    middle = {name: statistics.median(values) for name, values in seconds.items()}
    print("| process | best | median | ratio to mlx_lm.generate (best) | (median) |")
    print("|---|---:|---:|---:|---:|")
    for name in cases:
        print(f"| {name} | {best[name]:.3f} | {middle[name]:.3f} | "
              f"{best[name] / best['mlx_lm.generate']:.3f} | "
              f"{middle[name] / middle['mlx_lm.generate']:.3f} |")


if __name__ == "__main__":
    main()
