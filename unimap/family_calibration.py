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
    'bailing_hybrid': ('state', -1.98, 1.14),
    'deepseek_v3': ('hidden', -22.83, 1.05),
    'deepseek_v32': ('hidden', -32.74, 2.18),
    'deepseek_v41': ('hidden', 1.27, 0.0),
    'falcon_h1': ('state', 5.98, 0.0),
    'glm4_moe_lite': ('hidden', -24.85, 1.07),
    'glm_moe_dsa': ('hidden', -34.26, 2.18),
    'gpt_oss': ('hidden', -16.62, 2.12),
    'granitemoehybrid': ('state', 4.14, 0.0),
    'iquestloopcoder': ('hidden', -14.5, 1.16),
    'jamba': ('hidden', 393.74, 0.0),
    'kimi_k25': ('hidden', -22.83, 1.05),
    'kimi_vl': ('hidden', -23.5, 1.07),
    'laguna': ('hidden', -18.77, 1.06),
    'longcat_flash': ('hidden', -21.35, 1.07),
    'longcat_flash_ngram': ('hidden', -20.66, 1.07),
    'mamba': ('hidden', 30.92, 0.5),
    'mamba2': ('state', 8.17, 0.09),
    'mimo_v2_flash': ('hidden', -22.86, 2.09),
    'minimax_m3_vl': ('hidden', -29.09, 0.71),
    'nemotron_h': ('state', 2.54, 0.0),
    'phi3small': ('hidden', -18.28, 1.61),
    'plamo2': ('state', 3.53, 0.0),
    'rwkv7': ('state', 1.19, 0.09),
    'step3p5': ('hidden', -15.64, 1.02),
}
