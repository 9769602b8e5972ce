"""Fit the vision-encoder working-set coefficients in unimap/vision_calibration.py.

Usage: python tools/calibrate_vision.py [--write] [--fixed-only]

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

FastVLM's FastViTHD tower is fixed in mlx-vlm's code (no config field changes its stages), so it
is measured as it is, at two image sizes, and priced per float32 pixel byte alone: its working
set grows with the pixels (58.5, 234 and 936 MiB at 256, 512 and 1024 pixels a side in float32).
--fixed-only measures just those towers and keeps the other rows.
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


# Towers whose shape mlx-vlm fixes in code (FastVLM's FastViTHD: stages, widths and depths are
# class attributes, no config field changes them), measured as they are, per float32 pixel byte
# of the image the processor resized (image sides in pixels; the real checkpoints take 1024)
FIXED_TOWERS: dict[str, tuple[int, ...]] = {"fastvlm": (256, 512, 1024)}
FASTVLM_TEXT = {"hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 160, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False}


def measure_fixed(family: str, side: int, dtype: str) -> tuple[int, int, int]:
    """(working bytes, pixel bytes, its largest tower tensor in float32) of a tower fixed in
    code and its projector (as mlx-vlm's get_input_embeddings runs them) on one random
    side x side float32 image."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    config = {"model_type": "llava_qwen2", **FASTVLM_TEXT, "mm_hidden_size": 3072,
              "mm_projector_type": "mlp2x_gelu", "vision_config": {"image_size": side},
              "text_config": {"model_type": "qwen2", **FASTVLM_TEXT}}
    model_class, _ = get_model_and_args(config)
    built = update_module_configs(model_class.ModelConfig.from_dict(dict(config)), model_class,
                                  dict(config), ["text", "vision", "projector"])
    model = model_class.Model(built)
    model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())
    pixels = mx.random.uniform(shape=(1, 3, side, side))
    ids = mx.array([[5, built.image_token_index, 6]])
    mx.eval(pixels, ids)
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = model.get_input_embeddings(ids, pixels, mask=mx.ones_like(ids))
    mx.eval(out.inputs_embeds)
    working = mx.get_peak_memory() - base
    largest = max(v.size for _, v in tree_flatten(model.vision_tower.parameters())) * 4
    del model, out
    gc.collect()
    mx.clear_cache()
    return int(working), int(pixels.nbytes), int(largest)


def calibrate_fixed(verbose: bool = True) -> dict[tuple[str, str], tuple[float, ...]]:
    """(family, dtype) -> (p, 0, 0, 0, 0): the most working bytes per pixel byte measured,
    beside what the estimate prices apart for a half-precision tower (its largest tensor in
    float32: the bfloat16 FastViTHD holds 29 MiB more at 256 pixels than its per-pixel rate)."""
    table: dict[tuple[str, str], tuple[float, ...]] = {}
    for family, sides in FIXED_TOWERS.items():
        for dtype in ("bfloat16", "float32"):
            ratios = []
            for side in sides:
                working, pixel_bytes, largest = measure_fixed(family, side, dtype)
                apart = largest if dtype != "float32" else 0
                ratios.append((working - apart) / pixel_bytes)
                if verbose:
                    print(f"{family:9s} {dtype:9s} {side} px: {working / 2**20:.1f} MiB, "
                          f"{ratios[-1]:.3f} per pixel byte besides {apart / 2**20:.0f} MiB",
                          file=sys.stderr)
            table[(family, dtype)] = (round(max(ratios) + 0.005, 2), 0.0, 0.0, 0.0, 0.0)
    return table


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
        "towers, one batch). Keys: (mlx-vlm family, dtype). A tower whose shape mlx-vlm fixes in code",
        "(fastvlm) has only p, measured on the tower itself.",
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
    parser.add_argument("--fixed-only", action="store_true",
                        help="measure only the towers fixed in code; keep the other rows")
    args = parser.parse_args()
    if args.fixed_only:
        from unimap.vision_calibration import VISION_COEFFICIENTS

        table = {**VISION_COEFFICIENTS, **calibrate_fixed()}
    else:
        table = {**calibrate(), **calibrate_fixed()}
    text = render(table)
    if args.write:
        (ROOT / "unimap" / "vision_calibration.py").write_text(text)
        print("wrote unimap/vision_calibration.py", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
