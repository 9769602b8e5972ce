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
    'bailing_hybrid': ('state', 0.0, 1.05),
    'deepseek_v3': ('hidden', 0.0, 0.92),
    'deepseek_v32': ('hidden', 0.0, 1.66),
    'deepseek_v41': ('hidden', 1.54, 0.0),
    'falcon_h1': ('state', 5.87, 0.0),
    'glm4_moe_lite': ('hidden', 0.0, 0.87),
    'glm_moe_dsa': ('hidden', 0.0, 1.64),
    'gpt_oss': ('hidden', 0.0, 1.64),
    'granitemoehybrid': ('state', 4.13, 0.0),
    'jamba': ('hidden', 383.4, 0.0),
    'kimi_k25': ('hidden', 0.0, 0.88),
    'kimi_vl': ('hidden', 0.0, 0.94),
    'longcat_flash': ('hidden', 0.0, 0.79),
    'longcat_flash_ngram': ('hidden', 0.0, 0.74),
    'mamba': ('hidden', 30.55, 0.52),
    'mamba2': ('state', 9.41, 0.0),
    'minimax_m3_vl': ('hidden', 0.0, 0.11),
    'mistral4': ('hidden', 0.0, 0.08),
    'nemotron_h': ('state', 2.54, 0.0),
    'phi3small': ('hidden', 0.0, 1.22),
    'plamo2': ('state', 3.52, 0.0),
    'recurrent_gemma': ('hidden', 0.0, 0.16),
    'rwkv7': ('state', 1.31, 0.08),
}
