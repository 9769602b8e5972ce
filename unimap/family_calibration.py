"""Chunk-array factors of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on tiny twins built through mlx-lm's own classes.

Generated 2026-11-29 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

A family listed here needed more than the largest measured coefficients price for its chunk
arrays: the estimate adds, per chunk token, the first coefficient times hidden x 4 bytes
("hidden") or times state heads x scan-block tokens x 4 bytes ("state": families with an
SSM-like state), plus the second times heads x keys x 4 bytes (score-like arrays this family's
attention keeps beyond the priced ones), when that sum is positive (the first may be negative:
what does not grow with the keys may be over-covered already); families not listed needed no more.
"""

FAMILY_EXTRA: dict[str, tuple[str, float, float]] = {
    'bailing_hybrid': ('state', -1.57, 1.03),
    'deepseek_v3': ('hidden', -23.95, 1.07),
    'deepseek_v32': ('hidden', -32.97, 2.19),
    'deepseek_v41': ('hidden', 0.38, 0.0),
    'falcon_h1': ('state', 5.77, 0.0),
    'glm4_moe_lite': ('hidden', -26.28, 1.08),
    'glm_moe_dsa': ('hidden', -34.41, 2.19),
    'gpt_oss': ('hidden', -17.28, 2.13),
    'granitemoehybrid': ('state', 4.24, 0.0),
    'iquestloopcoder': ('hidden', -15.29, 1.18),
    'jamba': ('hidden', 393.18, 0.0),
    'kimi_k25': ('hidden', -23.77, 1.08),
    'kimi_vl': ('hidden', -25.35, 1.11),
    'laguna': ('hidden', -19.54, 1.08),
    'llama4': ('hidden', -22.98, 0.3),
    'longcat_flash': ('hidden', -21.99, 1.08),
    'longcat_flash_ngram': ('hidden', -18.56, 1.04),
    'mamba': ('hidden', 35.53, 0.0),
    'mamba2': ('state', 8.17, 0.09),
    'mimo_v2_flash': ('hidden', -24.18, 2.12),
    'minimax_m3_vl': ('hidden', -31.71, 0.75),
    'nemotron_h': ('state', 2.61, 0.0),
    'phi3small': ('hidden', -18.84, 1.63),
    'plamo2': ('state', 3.57, 0.0),
    'rwkv7': ('state', 1.18, 0.1),
    'step3p5': ('hidden', -18.65, 1.07),
}
