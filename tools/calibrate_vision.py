"""Fit the vision-encoder working-set coefficients in unimap/vision_calibration.py.

Usage: python tools/calibrate_vision.py [--write]

For each mlx-vlm vision family and dtype, tiny random-weight vision-language models
(tests/tiny_vlms.py) are built in several shapes (the base tower, then twice its width, heads
or MLP) and random images go through mlx-vlm's processor and the model's vision tower and
projector (`get_input_embeddings`) at several sizes and counts. The measured working set is
mx.get_peak_memory() above the weights, pixel values and token ids. It is fitted as

    encoder = p * pixel bytes + h * P*width*d + m * P*mlp*d + s * heads*n*n*d * images_at_once
              + k * depth*P*width*d

with P the patches of all images, n the patches of one image, d the dtype's size, and
images_at_once 1 for Qwen2-VL and Qwen2.5-VL (one image's attention at a time) or the image count for the
fixed-size towers (SigLIP: the images are one batch). Non-negative least squares, then scaled
up by the largest under-prediction left, so no measured shape exceeds its fit. --write
regenerates unimap/vision_calibration.py with the machine and versions.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))

BASE: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"embed_dim": 256, "num_heads": 4, "mlp_ratio": 2, "depth": 2},
    "qwen2_5_vl": {"hidden_size": 256, "num_heads": 4, "intermediate_size": 512, "depth": 2},
    "gemma3": {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512,
               "num_hidden_layers": 2},
}
WIDER: dict[str, list[dict[str, Any]]] = {  # the base, then one dimension doubled at a time
    "qwen2_vl": [{}, {"embed_dim": 512}, {"num_heads": 8}, {"mlp_ratio": 4}, {"depth": 6}],
    "qwen2_5_vl": [{}, {"hidden_size": 512}, {"num_heads": 8}, {"intermediate_size": 1024},
                   {"depth": 6}],
    "gemma3": [{}, {"hidden_size": 512}, {"num_attention_heads": 8}, {"intermediate_size": 1024},
               {"num_hidden_layers": 6}],
}
SIZES = ((224, 1), (336, 1), (448, 1), (224, 2))  # (image edge in pixels, images)


def features(family: str, vision: dict[str, Any], patches: int, images: int, pixel_bytes: int,
             d: int) -> list[int]:
    """pixel bytes, P*width*d, P*mlp*d, heads*n*n*d*images_at_once, depth*P*width*d for
    `images` images of `patches` patches each."""
    if family == "qwen2_vl":
        width, heads, depth = vision["embed_dim"], vision["num_heads"], vision["depth"]
        mlp, at_once = width * vision["mlp_ratio"], 1
    elif family == "qwen2_5_vl":
        width, heads, depth = vision["hidden_size"], vision["num_heads"], vision["depth"]
        mlp, at_once = vision["intermediate_size"], 1
    else:
        width, heads = vision["hidden_size"], vision["num_attention_heads"]
        depth = vision["num_hidden_layers"]
        mlp, at_once = vision["intermediate_size"], images
    p = patches * images
    return [pixel_bytes, p * width * d, p * mlp * d, heads * patches * patches * d * at_once,
            depth * p * width * d]


def measure(folder: Path, side: int, images: int) -> tuple[int, int, int]:
    """(working bytes, pixel bytes, patches per image) of the vision tower and projector on
    `images` random images of side x side pixels."""
    import mlx.core as mx
    from mlx_vlm.utils import load
    from PIL import Image
    from tiny_vlms import write_image

    from unimap import vlm

    model, processor = load(str(folder))
    mx.eval(model.parameters())
    pictures = [Image.open(write_image(folder / f"image{i}.png", side, side, seed=i)).convert("RGB")
                for i in range(images)]
    inputs = vlm.prepare(model, processor, "w1", pictures)
    mx.eval(inputs.input_ids, inputs.pixel_values, *[v for v in inputs.extra.values()
                                                     if isinstance(v, mx.array)])
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = model.get_input_embeddings(inputs.input_ids, inputs.pixel_values, mask=inputs.mask,
                                     **inputs.extra)
    mx.eval(out.inputs_embeds)
    working = mx.get_peak_memory() - base
    pixel_bytes = int(inputs.pixel_values.nbytes)
    grid = inputs.extra.get("image_grid_thw")
    patches = int(grid[0].prod().item()) if grid is not None else 0
    del model, out, inputs
    gc.collect()
    mx.clear_cache()
    return int(working), pixel_bytes, patches


def calibrate(verbose: bool = True) -> dict[tuple[str, str], tuple[float, ...]]:
    """(family, dtype) -> (p, h, m, s, k)."""
    from calibrate_activations import fit
    from tiny_vlms import write_tiny_vlm

    table: dict[tuple[str, str], tuple[float, ...]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, base in BASE.items():
            for dtype, d in (("bfloat16", 2), ("float32", 4)):
                rows, by_size = [], {}
                for index, change in enumerate(WIDER[family]):
                    for side, images in SIZES:
                        vision = {**base, **change}
                        if family == "gemma3":  # a fixed-size tower: the size is the config's
                            vision["image_size"] = side
                        folder = write_tiny_vlm(Path(tmp) / f"{family}-{dtype}-{index}-{side}", family,
                                                dtype=dtype, vision=vision)
                        working, pixel_bytes, patches = measure(folder, side, images)
                        patches = patches or (side // 14) ** 2
                        row = features(family, vision, patches, images, pixel_bytes, d)
                        rows.append((row, working))
                        by_size.setdefault((side, images), []).append((row, working))
                # depth is extrapolated furthest (2 blocks here, 24-32 in real towers): its
                # coefficient is the largest growth per block measured, the rest fitted after it
                k = max(0.0, *[(deep[1] - shallow[1]) / max(1, deep[0][4] - shallow[0][4])
                               for shallow, *_, deep in by_size.values()])
                coef, worst = fit([(row[:4], working - k * row[4]) for row, working in rows])
                coef = [*coef, k]
                table[(family, dtype)] = tuple(round(c + 0.005, 2) for c in coef)
                if verbose:
                    print(f"{family:9s} {dtype:9s} p h m s k = {table[(family, dtype)]}  "
                          f"(largest over-fit {worst:.2f}x)", file=sys.stderr)
    return table


def render(table: dict[tuple[str, str], tuple[float, ...]]) -> str:
    from importlib.metadata import version

    import mlx.core as mx
    from calibrate_activations import _mlx_lm_version

    lines = [
        '"""Vision-encoder working-set coefficients, fitted by tools/calibrate_vision.py.',
        "",
        f"Generated {date.today().isoformat()} on {platform.platform()} ({platform.machine()}), "
        f"MLX {mx.__version__},",
        f"mlx-lm {_mlx_lm_version()}, mlx-vlm {version('mlx-vlm')}, MLX's CPU backend. Do not edit "
        "by hand: rerun the tool with --write.",
        "",
        "The vision tower and projector on `images` images of n patches each (P = images * n) need,",
        "besides the pixel values and the image embeddings:",
        "    p * pixel bytes + h * P*width*d + m * P*mlp*d + s * heads*n*n*d * images_at_once",
        "    + k * depth*P*width*d",
        "bytes, with d the dtype's size and images_at_once 1 (Qwen2-VL, Qwen2.5-VL) or images (fixed-size",
        "towers, one batch). Keys: (mlx-vlm family, dtype).",
        '"""',
        "",
        "VISION_COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float, float]] = {",
        *[f"    {key!r}: {value!r}," for key, value in sorted(table.items())],
        "}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate unimap/vision_calibration.py")
    args = parser.parse_args()
    table = calibrate()
    text = render(table)
    if args.write:
        (ROOT / "unimap" / "vision_calibration.py").write_text(text)
        print("wrote unimap/vision_calibration.py", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
