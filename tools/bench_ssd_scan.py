"""What mlx-lm's SSD scan holds at its peak, on the op alone (docs/BENCHMARKS.md, "SSD scans
priced in their own units"): `ssm_attn` (mlx_lm/models/ssm.py) on random float32 inputs with a
state, for a few (heads, head dim, state size, groups) at prompts of 256, 1024 and 2048 tokens.
Prints the peak over the inputs in MiB and per token in arrays of heads x head dim.

Usage: python tools/bench_ssd_scan.py [--tokens 256,1024,2048]
"""

from __future__ import annotations

import argparse

SHAPES = ((32, 64, 64, 1), (32, 64, 256, 1), (32, 256, 64, 1), (128, 64, 128, 8), (256, 64, 256, 8))


def peak_bytes(heads: int, head_dim: int, state: int, groups: int, tokens: int) -> int:
    """The scan's peak over its inputs, in bytes, one batch row of `tokens` from a zero state."""
    import mlx.core as mx
    from mlx_lm.models.ssm import ssm_attn

    x = mx.random.normal((1, tokens, heads, head_dim))
    b = mx.random.normal((1, tokens, groups, state))
    c = mx.random.normal((1, tokens, groups, state))
    dt = mx.random.normal((1, tokens, heads))
    a_log, d, bias = mx.random.normal((heads,)), mx.random.normal((heads,)), mx.zeros((heads,))
    s = mx.zeros((1, heads, head_dim, state))
    mx.eval(x, b, c, dt, a_log, d, bias, s)
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    held = mx.get_active_memory()
    y, s = ssm_attn(x, a_log, b, c, d, dt, bias, s)
    mx.eval(y, s)
    return int(mx.get_peak_memory() - held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", default="256,1024,2048", help="prompt lengths, comma-separated")
    lengths = [int(t) for t in parser.parse_args().tokens.split(",")]
    print("| h x p x n, g | " + " | ".join(f"{n} tokens MiB" for n in lengths) + " | per token, in h x p |")
    print("|---" * (len(lengths) + 2) + "|")
    for h, p, n, g in SHAPES:
        peaks = [peak_bytes(h, p, n, g, t) for t in lengths]
        per = " / ".join(f"{b / t / 4 / (h * p):.1f}" for b, t in zip(peaks, lengths, strict=True))
        print(f"| {h} x {p} x {n}, {g} | " + " | ".join(f"{b / 2**20:.1f}" for b in peaks) + f" | {per} |",
              flush=True)


if __name__ == "__main__":
    main()
