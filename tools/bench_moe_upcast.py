"""What one MoE call holds at its peak on MLX's CPU build, on the op alone (docs/BENCHMARKS.md,
"Half-precision experts on the CPU"): mlx-lm's SwitchGLU over T tokens routed to k of E experts
(hidden width h, expert width i), its outputs weighted and summed as mlx-lm's MoE blocks do,
in float32 (MLX's gather_mm) and in bfloat16 through unimap's upcast path
(unimap/runtime.py upcast_gather_mm). Prints each shape's peak over the inputs and weights per
routed row (T x k), in float32 elements, and the least cover of all shapes in the units
unimap.estimate prices them in: the float32 copies of one projection's experts (E x h x i), and
per routed row the expert width and the hidden width (plus, per token, the hidden width).

Usage: python tools/bench_moe_upcast.py [--tokens 256,1000] [--experts 16]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

WIDTHS = ((128, 128), (128, 512), (512, 128), (512, 512))  # (hidden, expert width)
TOP_K = (2, 8)


def peak_bytes(tokens: int, hidden: int, width: int, experts: int, k: int, dtype: str) -> int:
    """The call's peak over its inputs and weights, in bytes: one batch row of `tokens`."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import SwitchGLU

    from unimap.runtime import upcast_experts

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.switch_mlp = SwitchGLU(hidden, width, experts)

    kind = getattr(mx, dtype)
    block = Block()
    block.set_dtype(kind)
    mx.eval(block.parameters())
    if kind != mx.float32:
        upcast_experts(block)  # as unimap does for a layer on the CPU
    x = mx.random.normal((1, tokens, hidden)).astype(kind)
    indices = mx.random.randint(0, experts, (1, tokens, k)).astype(mx.uint32)
    scores = mx.random.uniform(shape=(1, tokens, k)).astype(kind)
    mx.eval(x, indices, scores)
    gc.collect()
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    held = mx.get_active_memory()
    y = (block.switch_mlp(x, indices) * scores[..., None]).sum(axis=-2)
    mx.eval(y)
    return int(mx.get_peak_memory() - held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="256,1000", help="tokens per call, comma-separated")
    parser.add_argument("--experts", type=int, default=16)
    args = parser.parse_args()
    from calibrate_families import least_cover

    lengths, e = [int(t) for t in args.tokens.split(",")], args.experts
    runs: dict[str, list[tuple[list[float], float]]] = {"float32": [], "bfloat16": []}
    print("| tokens | hidden | expert width | top-k | float32, per routed row | bf16 upcast, per row |")
    print("|---|---|---|---|---|---|")
    for k in TOP_K:
        for h, i in WIDTHS:
            for t in lengths:
                rows = t * k
                shown = []
                for dtype in runs:
                    need = peak_bytes(t, h, i, e, k, dtype) / 4
                    runs[dtype].append(([e * h * i, rows * i, rows * h, t * h], need))
                    shown.append(f"{need / rows:.0f}")
                print(f"| {t} | {h} | {i} | {k} | " + " | ".join(shown) + " |", flush=True)
    for dtype, found in runs.items():
        cover = least_cover(found, [1 / need for _, need in found])
        ratios = [sum(c * u for c, u in zip(cover, units, strict=True)) / need for units, need in found]
        print(f"{dtype}: least cover, float32 elements: {cover[0]:.2f} x E*h*i + {cover[1]:.2f} x rows*i "
              f"+ {cover[2]:.2f} x rows*h + {cover[3]:.2f} x tokens*h; cover / peak "
              f"{min(ratios):.3f} to {max(ratios):.3f}")


if __name__ == "__main__":
    main()
