"""Activation working-set coefficients, fitted by tools/calibrate_activations.py.

Generated 2026-12-01 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

One prefill chunk of B x L tokens needs, besides the attention scores and masks:
    a * B*L*hidden*4 + b * B*L*q_width*d + c * B*L*kv_width*d + e * B*L*mlp_width*d
bytes, with d the activation dtype's size; plus qw * B*L*hidden*4 with quantized weights
(an MLX-quantized checkpoint, GGUF quantized tensors or --isq) and qkv * B*L*q_width*d
with a quantized KV cache (--kv-bits). Keys: (mlx-lm family, activation dtype).
"""

COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float, float, float]] = {
    ("gemma3_text", "bfloat16"): (10.61, 3.84, 0.01, 2.94, 2.51, 1.72),
    ("gemma3_text", "float32"): (8.26, 5.85, 0.01, 2.81, 2.01, 1.22),
    ("llama", "bfloat16"): (8.39, 7.02, 0.01, 1.67, 0.56, 0.01),
    ("llama", "float32"): (7.46, 7.44, 0.78, 1.95, 1.19, 0.66),
    ("mixtral", "bfloat16"): (14.87, 0.4, 0.02, 4.14, 1.01, 0.02),
    ("mixtral", "float32"): (14.87, 0.2, 0.01, 2.07, 1.01, 0.01),
    ("phi3", "bfloat16"): (12.02, 0.01, 0.92, 3.04, 0.39, 0.01),
    ("phi3", "float32"): (14.95, 0.01, 1.53, 3.02, 0.56, 0.66),
    ("qwen2", "bfloat16"): (11.37, 0.01, 0.01, 1.86, 1.07, 1.53),
    ("qwen2", "float32"): (14.27, 0.01, 0.01, 2.09, 1.25, 0.34),
    ("qwen3", "bfloat16"): (8.84, 6.65, 1.0, 1.92, 1.31, 1.51),
    ("qwen3", "float32"): (7.4, 7.16, 0.57, 2.06, 1.75, 0.41),
    ("qwen3_moe", "bfloat16"): (11.24, 10.12, 0.02, 3.64, 1.01, 0.58),
    ("qwen3_moe", "float32"): (11.24, 5.06, 0.01, 1.82, 1.01, 0.29),
}
