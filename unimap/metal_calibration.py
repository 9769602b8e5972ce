"""Metal's chunk-array factors, fitted by tools/calibrate_metal.py to published Mac peaks.

Generated 2026-12-01 from docs/metal/published.json (16 calibration points), replayed with
MLX 0.32.4 and mlx-lm 0.32.2. Do not edit by hand: rerun the tool with --write.

MLX's Metal backend frees an array only once the command buffer that used it has completed,
so more of a prefill chunk's arrays are alive at once than on the CPU backend the activation
coefficients were measured on (unimap/calibration.py). Per mlx-lm family: the least factor
over those chunk arrays with which the plan covers every calibration point's reported
peak, times 1.05 (headroom for checkpoints not seen), rounded up to 0.01. A family
with no published peak takes the largest of its kind (recurrent-state layers or attention
only; unimap/estimate.py metal_arrays_factor).
"""

METAL_ARRAYS_FACTORS: dict[str, float] = {
    "gemma4": 1.17,
    "qwen3": 1.93,
    "qwen3_5": 2.5,
    "qwen3_5_moe": 2.42,
    "qwen3_moe": 1.25,
}

# whether each family has recurrent-state layers ("recurrent") or attention only
METAL_FAMILY_KINDS: dict[str, str] = {
    "gemma4": "attention",
    "qwen3": "attention",
    "qwen3_5": "recurrent",
    "qwen3_5_moe": "recurrent",
    "qwen3_moe": "attention",
}

# the published points (docs/metal/published.json ids) each factor was fitted on
METAL_CALIBRATION_POINTS: dict[str, tuple[str, ...]] = {
    "gemma4": (
        "ax-engine/gemma-4-26b-a4b-it-4bit-p128",
        "ax-engine/gemma-4-26b-a4b-it-4bit-p512",
        "ax-engine/gemma-4-26b-a4b-it-4bit-p2048",
        "ax-engine/gemma-4-31b-it-4bit-p128",
        "ax-engine/gemma-4-31b-it-4bit-p512",
        "ax-engine/gemma-4-31b-it-4bit-p2048",
    ),
    "qwen3": (
        "mlx-lm-benchmarks/qwen3-4b-2507-bf16",
        "mlx-lm-benchmarks/qwen3-4b-2507-q4-g32",
        "mlx-lm-benchmarks/qwen3-4b-2507-q4",
    ),
    "qwen3_5": (
        "ax-engine/qwen3_6-27b-4bit-p128",
        "ax-engine/qwen3_6-27b-4bit-p512",
        "ax-engine/qwen3_6-27b-4bit-p2048",
    ),
    "qwen3_5_moe": (
        "ax-engine/qwen3_6-35b-a3b-4bit-p128",
        "ax-engine/qwen3_6-35b-a3b-4bit-p512",
        "ax-engine/qwen3_6-35b-a3b-4bit-p2048",
    ),
    "qwen3_moe": (
        "mlx-lm-benchmarks/qwen3-30b-a3b-2507-q4",
    ),
}
