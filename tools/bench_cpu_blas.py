"""MLX's CPU matmul speed by dtype, with the BLAS that MLX bundles and with OpenBLAS preloaded.

Usage: python tools/bench_cpu_blas.py [--m 128 --k 2048 --n 2048]
Each configuration runs in a fresh process (LD_PRELOAD must be set before MLX loads) and its
result is checked against numpy in float64, so a fast but wrong library would show. This is
what `unimap doctor`'s "cpu matmul" check condenses into one sub-second number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from unimap.doctor import find_openblas
from unimap.host import Host

CHILD = r"""
import json, sys, time
import numpy as np
import mlx.core as mx
m, k, n = map(int, sys.argv[1:4])
rng = np.random.default_rng(0)
a64, b64 = rng.standard_normal((m, k)), rng.standard_normal((k, n))
ref = a64 @ b64
out = {}
with mx.stream(mx.cpu):
    for name in ("float32", "bfloat16", "float16"):
        dtype = getattr(mx, name)
        a, b = mx.array(a64).astype(dtype), mx.array(b64).astype(dtype)
        mx.eval(a, b, a @ b)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter(); c = a @ b; mx.eval(c); best = min(best, time.perf_counter() - t)
        err = float(np.abs(np.array(c.astype(mx.float32)) - ref).max() / np.abs(ref).max())
        out[name] = {"gflops": 2 * m * k * n / best / 1e9, "ms": best * 1000, "max_rel_err": err}
maps = [l.split()[-1] for l in open("/proc/self/maps") if "blas" in l.lower()]
out["libraries"] = sorted({p.rsplit("/", 1)[-1] for p in maps})
print(json.dumps(out))
"""


def run(shape: tuple[int, int, int], preload: str | None) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = preload
    else:
        env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, shape)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--n", type=int, default=2048)
    args = parser.parse_args()
    shape = (args.m, args.k, args.n)
    configs = [("MLX's bundled BLAS", None)]
    openblas = find_openblas(Host.real())
    if openblas:
        configs.append((f"LD_PRELOAD={openblas}", openblas))
    else:
        print("no system OpenBLAS found (Debian/Ubuntu: apt install libopenblas0-pthread)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; matmul {shape[0]}x{shape[1]}x{shape[2]}")
    print("\n| BLAS | dtype | GFLOP/s | ms | max rel. error vs float64 |\n|---|---|---|---|---|")
    for label, preload in configs:
        result = run(shape, preload)
        for dtype in ("float32", "bfloat16", "float16"):
            r = result[dtype]
            print(f"| {label} | {dtype} | {r['gflops']:.2f} | {r['ms']:.1f} | {r['max_rel_err']:.1e} |")
        print(f"| (libraries mapped: {', '.join(result['libraries'])}) | | | | |")


if __name__ == "__main__":
    main()
