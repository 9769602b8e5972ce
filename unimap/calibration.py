"""Activation working-set coefficients, fitted by tools/calibrate_activations.py.

Generated 2026-11-27 on Linux-6.18.44-fc-v782-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

One prefill chunk of B x L tokens needs, besides the attention scores and masks:
    a * B*L*hidden*4 + b * B*L*q_width*d + c * B*L*kv_width*d + e * B*L*mlp_width*d
bytes, with d the activation dtype's size; plus qw * B*L*hidden*4 with quantized weights
(an MLX-quantized checkpoint, GGUF quantized tensors or --isq) and qkv * B*L*q_width*d
with a quantized KV cache (--kv-bits). Keys: (mlx-lm family, activation dtype).
"""

COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float, float, float]] = {
    ("gemma3_text", "bfloat16"): (11.62, 3.2, 0.01, 2.79, 2.26, 0.72),
    ("gemma3_text", "float32"): (9.07, 3.61, 0.66, 2.91, 3.01, 2.72),
    ("llama", "bfloat16"): (8.15, 5.05, 1.12, 1.99, 0.63, 0.01),
    ("llama", "float32"): (6.87, 6.82, 1.96, 1.97, 1.5, 0.91),
    ("mixtral", "bfloat16"): (14.46, 0.78, 2.02, 4.12, 1.01, 0.56),
    ("mixtral", "float32"): (14.46, 0.39, 1.01, 2.06, 1.01, 0.28),
    ("phi3", "bfloat16"): (11.59, 0.01, 1.44, 3.0, 0.51, 0.01),
    ("phi3", "float32"): (13.85, 0.01, 2.35, 2.95, 0.87, 0.79),
    ("qwen2", "bfloat16"): (10.8, 0.01, 1.51, 1.86, 0.32, 0.01),
    ("qwen2", "float32"): (13.6, 0.01, 2.01, 1.94, 1.25, 0.01),
    ("qwen3", "bfloat16"): (8.49, 5.2, 4.45, 1.81, 1.5, 1.27),
    ("qwen3", "float32"): (6.89, 6.79, 1.89, 1.99, 2.0, 0.78),
    ("qwen3_moe", "bfloat16"): (11.69, 8.34, 0.02, 3.76, 1.25, 0.32),
    ("qwen3_moe", "float32"): (11.69, 4.17, 0.01, 1.88, 1.25, 0.16),
}
