"""Where a backend's working set goes, measured piece by piece (run on a lent GPU; see GPU.md).

    python tools/gpu_attention_probe.py [--out DIR]

1. mx.fast.scaled_dot_product_attention alone, per head dim (64 fused-capable, 96 not), mask
   (none, "causal", a boolean array) and keys (= queries, or twice: a chunk after cached
   tokens): peak above the inputs, in bytes per score element (heads x queries x keys).
2. The tiny Qwen2-VL vision tower of the benchmark (f32, one 448-pixel image) with and without
   an evaluation after every block: whether the backend holds more than one block's arrays when
   the whole tower is one lazy graph.
Writes DIR/attention_probe.json ($OUT when set) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def attention(head_dim: int, mask: str, queries: int, keys: int, dtype: str, heads: int = 4) -> float:
    import mlx.core as mx

    mx.random.seed(0)
    dt = getattr(mx, dtype)
    q = mx.random.normal((1, heads, queries, head_dim)).astype(dt)
    k = mx.random.normal((1, heads, keys, head_dim)).astype(dt)
    v = mx.random.normal((1, heads, keys, head_dim)).astype(dt)
    given: Any = None
    if mask == "causal":
        given = "causal"
    elif mask == "array":
        offset = keys - queries
        given = mx.arange(queries)[:, None] + offset >= mx.arange(keys)[None]
    mx.eval(q, k, v, given) if given is not None and not isinstance(given, str) else mx.eval(q, k, v)
    mx.synchronize()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim ** -0.5, mask=given)
    mx.eval(out)
    mx.synchronize()
    extra = mx.get_peak_memory() - base - out.nbytes
    return extra / (heads * queries * keys)


def vision(per_block: bool, tmp: Path) -> int:
    import mlx.core as mx
    from bench_estimate import VISION
    from mlx_vlm import load
    from PIL import Image
    from tiny_vlms import write_image, write_tiny_vlm

    from unimap import vlm

    path = write_tiny_vlm(tmp / "qwen2_vl", "qwen2_vl", vision=VISION["qwen2_vl"])
    image = Image.open(write_image(tmp / "image.png", 448, 448)).convert("RGB")
    model, processor = load(str(path))
    if per_block:
        for block in model.vision_tower.blocks:
            cls = type(block)

            class Evaluated(cls):  # type: ignore[misc, valid-type]
                def __call__(self, *args: Any, **kwargs: Any) -> Any:
                    out = super().__call__(*args, **kwargs)
                    mx.eval(out)
                    return out

            block.__class__ = Evaluated
    inputs = vlm.prepare(model, processor, "w1", [image])
    mx.eval(model.parameters(), inputs.input_ids, inputs.pixel_values,
            *[v for v in inputs.extra.values() if isinstance(v, mx.array)])
    mx.synchronize()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = model.get_input_embeddings(inputs.input_ids, inputs.pixel_values, mask=inputs.mask, **inputs.extra)
    mx.eval(out.inputs_embeds)
    mx.synchronize()
    return int(mx.get_peak_memory() - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--length", type=int, default=2048)
    args = parser.parse_args()
    import mlx.core as mx

    n = args.length
    rows: list[dict[str, Any]] = []
    for dtype in ("bfloat16", "float32"):
        for head_dim in (64, 96):
            for mask in ("none", "causal", "array"):
                for keys in (n, 2 * n):
                    if mask == "none" and keys != n:
                        continue
                    per = attention(head_dim, mask, n, keys, dtype)
                    rows.append({"dtype": dtype, "head_dim": head_dim, "mask": mask, "queries": n,
                                 "keys": keys, "bytes_per_score": round(per, 3)})
    with tempfile.TemporaryDirectory() as tmp:
        lazy = vision(False, Path(tmp) / "a")
        blockwise = vision(True, Path(tmp) / "b")
    report = {"mlx": mx.__version__, "gpu": bool(mx.is_available(mx.gpu)), "attention": rows,
              "vision_working_bytes": {"one_graph": lazy, "eval_per_block": blockwise}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_probe.json").write_text(json.dumps(report, indent=1))
    for r in rows:
        print(f"{r['dtype']:9s} hd{r['head_dim']:<3d} {r['mask']:7s} {r['queries']}x{r['keys']}: "
              f"{r['bytes_per_score']} bytes/score")
    print(f"qwen2_vl tower, 448 px: one graph {lazy}, eval per block {blockwise}")


if __name__ == "__main__":
    main()
