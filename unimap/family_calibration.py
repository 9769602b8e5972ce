"""Chunk-array factors of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on tiny twins built through mlx-lm's own classes.

Generated 2026-11-29 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

A family listed here needed more than the largest measured coefficients price for its chunk
arrays: the estimate adds, per chunk token, the first coefficient times hidden x 4 bytes
("hidden") or times state heads x scan-block tokens x 4 bytes ("state": families with an
SSM-like state), plus the second times heads x keys x 4 bytes (score-like arrays this family's
attention keeps beyond the priced ones); families not listed needed no more.
"""

FAMILY_EXTRA: dict[str, tuple[str, float, float]] = {
    'bailing_hybrid': ('state', 0.0, 0.77),
    'deepseek_v3': ('hidden', 0.0, 0.81),
    'deepseek_v32': ('hidden', 0.0, 1.79),
    'deepseek_v41': ('hidden', 0.38, 0.0),
    'falcon_h1': ('state', 5.72, 0.0),
    'glm4_moe_lite': ('hidden', 0.0, 0.8),
    'glm_moe_dsa': ('hidden', 0.0, 1.78),
    'gpt_oss': ('hidden', 0.0, 1.86),
    'granitemoehybrid': ('state', 4.14, 0.0),
    'iquestloopcoder': ('hidden', 0.0, 0.98),
    'jamba': ('hidden', 381.96, 0.0),
    'kimi_k25': ('hidden', 0.0, 0.81),
    'kimi_vl': ('hidden', 0.0, 0.81),
    'laguna': ('hidden', 0.0, 0.85),
    'llama4': ('hidden', 0.0, 0.08),
    'longcat_flash': ('hidden', 0.0, 0.84),
    'longcat_flash_ngram': ('hidden', 0.0, 0.82),
    'mamba': ('hidden', 34.52, 0.0),
    'mamba2': ('state', 8.31, 0.0),
    'mimo_v2_flash': ('hidden', 0.0, 1.8),
    'minimax_m3_vl': ('hidden', 0.0, 0.32),
    'nemotron_h': ('state', 2.48, 0.0),
    'phi3small': ('hidden', 0.0, 1.38),
    'plamo2': ('state', 3.47, 0.0),
    'rwkv7': ('state', 1.56, 0.0),
    'step3p5': ('hidden', 0.0, 0.85),
}
