"""Vision-encoder working-set coefficients, fitted by tools/calibrate_vision.py.

Generated 2026-11-30 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, mlx-vlm 0.7.10, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

The vision tower and projector on `images` images of n patches each (P = images * n) need,
besides the pixel values and the image embeddings:
    p * pixel bytes + h * P*width*d + m * P*mlp*d + s * heads*n*n*d * images_at_once
    + k * depth*P*width*d
bytes, with d the dtype's size and images_at_once 1 (Qwen2-VL, Qwen2.5-VL) or images (fixed-size
towers, one batch). Keys: (mlx-vlm family, dtype). A tower whose shape mlx-vlm fixes in code
(fastvlm) has only p, measured on the tower itself.
"""

VISION_COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float, float]] = {
    ('fastvlm', 'bfloat16'): (78.06, 0.0, 0.0, 0.0, 0.0),
    ('fastvlm', 'float32'): (79.01, 0.0, 0.0, 0.0, 0.0),
    ('gemma3', 'bfloat16'): (4.61, 27.46, 0.01, 1.17, 0.01),
    ('gemma3', 'float32'): (1.59, 16.77, 1.54, 0.98, 0.01),
    ('qwen2_5_vl', 'bfloat16'): (0.15, 37.75, 1.96, 1.01, 0.32),
    ('qwen2_5_vl', 'float32'): (0.25, 23.73, 2.15, 1.02, 0.66),
    ('qwen2_vl', 'bfloat16'): (0.01, 41.57, 1.18, 1.09, 0.13),
    ('qwen2_vl', 'float32'): (0.01, 27.45, 0.94, 1.09, 0.26),
}
