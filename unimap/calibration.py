"""Activation working-set coefficients, fitted by tools/calibrate_activations.py.

Generated 2026-11-27 on Linux-6.18.44-fc-v782-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

One prefill chunk of B x L tokens needs, besides the attention scores and masks:
    a * B*L*hidden*4 + b * B*L*q_width*d + c * B*L*kv_width*d + e * B*L*mlp_width*d
bytes, with d the activation dtype's size. Keys: (mlx-lm family, activation dtype).
"""

COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("gemma3_text", "bfloat16"): (11.79, 2.24, 0.01, 3.0),
    ("gemma3_text", "float32"): (9.07, 3.61, 0.66, 2.91),
    ("llama", "bfloat16"): (8.46, 5.72, 0.75, 1.99),
    ("llama", "float32"): (7.06, 6.74, 1.81, 1.98),
    ("mixtral", "bfloat16"): (14.46, 0.78, 2.02, 4.12),
    ("mixtral", "float32"): (14.46, 0.39, 1.01, 2.06),
    ("phi3", "bfloat16"): (11.9, 0.01, 1.47, 2.94),
    ("phi3", "float32"): (13.72, 0.01, 2.67, 2.88),
    ("qwen2", "bfloat16"): (10.91, 0.01, 0.77, 1.94),
    ("qwen2", "float32"): (14.43, 0.01, 0.76, 2.03),
    ("qwen3", "bfloat16"): (8.49, 5.48, 3.59, 1.78),
    ("qwen3", "float32"): (7.02, 6.96, 1.53, 1.93),
    ("qwen3_moe", "bfloat16"): (11.79, 6.62, 0.02, 3.84),
    ("qwen3_moe", "float32"): (11.79, 3.31, 0.01, 1.92),
}


# with quantized weights (an MLX-quantized checkpoint or --isq), per B*L*hidden*4 bytes
QUANTIZED_WEIGHTS = 2.0
# with a quantized KV cache (--kv-bits), per B*L*q_width*d bytes
QUANTIZED_KV = 1.51
