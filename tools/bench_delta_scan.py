"""What mlx-lm's gated-delta scan holds at its peak off Metal, on the op alone (docs/BENCHMARKS.md,
"A state per token"): `gated_delta_update` (mlx_lm/models/gated_delta.py), which on the CPU and
CUDA runs its op-by-op path, one step per token, on random float32 inputs from a zero state, for
a few (heads, key dim, value dim) at prompts of 100 to 1000 tokens. Prints the peak over the
inputs in MiB and per token in states (heads x value dim x key dim float32 elements).

Usage: python tools/bench_delta_scan.py [--tokens 100,300,700,1000]
"""

from __future__ import annotations

import argparse

SHAPES = ((4, 32, 32), (4, 64, 64), (4, 128, 128), (16, 64, 64), (8, 128, 256))


def peak_bytes(heads: int, key_dim: int, value_dim: int, tokens: int) -> int:
    """The scan's peak over its inputs, in bytes, one batch row of `tokens` from a zero state."""
    import mlx.core as mx
    from mlx_lm.models.gated_delta import gated_delta_update

    q = mx.random.normal((1, tokens, heads, key_dim))
    k = mx.random.normal((1, tokens, heads, key_dim))
    v = mx.random.normal((1, tokens, heads, value_dim))
    a = mx.random.normal((1, tokens, heads))
    b = mx.random.normal((1, tokens, heads))
    a_log, dt_bias = mx.random.normal((heads,)), mx.zeros((heads,))
    mx.eval(q, k, v, a, b, a_log, dt_bias)
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    held = mx.get_active_memory()
    y, state = gated_delta_update(q, k, v, a, b, a_log, dt_bias)
    mx.eval(y, state)
    return int(mx.get_peak_memory() - held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", default="100,300,700,1000", help="prompt lengths, comma-separated")
    lengths = [int(t) for t in parser.parse_args().tokens.split(",")]
    print("| heads x key x value | " + " | ".join(f"{n} tokens MiB" for n in lengths)
          + " | per token, in states |")
    print("|---" * (len(lengths) + 2) + "|")
    for h, dk, dv in SHAPES:
        peaks = [peak_bytes(h, dk, dv, t) for t in lengths]
        per = " / ".join(f"{p / t / (4 * h * dk * dv):.2f}" for p, t in zip(peaks, lengths, strict=True))
        print(f"| {h} x {dk} x {dv} | " + " | ".join(f"{p / 2**20:.1f}" for p in peaks) + f" | {per} |",
              flush=True)


if __name__ == "__main__":
    main()
