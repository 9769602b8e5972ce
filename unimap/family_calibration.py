"""Chunk-array factors of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on tiny twins built through mlx-lm's own classes.

Generated 2026-11-29 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

A family listed here needed more than the largest measured coefficients price for its chunk
arrays: for each (unit, score) pair the estimate takes, per chunk token, unit times hidden x 4
bytes ("hidden") or times state heads x scan-block tokens x 4 bytes ("state": families with an
SSM-like state), plus score times heads x keys x 4 bytes (score-like arrays this family's attention
keeps beyond the priced ones), and adds the largest of the pairs when it is positive (a negative
unit: what does not grow with the keys is over-covered already); families not listed needed no
more.
"""

FAMILY_EXTRA: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {
    'bailing_hybrid': ('state', ((0.0, 0.84), (-1.57, 1.03))),
    'deepseek_v3': ('hidden', ((0.0, 0.89), (-24.48, 1.09))),
    'deepseek_v32': ('hidden', ((0.0, 1.92), (-35.05, 2.22))),
    'deepseek_v41': ('hidden', ((0.38, 0.0),)),
    'falcon_h1': ('state', ((5.87, 0.0),)),
    'glm4_moe_lite': ('hidden', ((0.0, 0.87), (-25.94, 1.09))),
    'glm_moe_dsa': ('hidden', ((0.0, 1.91), (-38.83, 2.26))),
    'gpt_oss': ('hidden', ((0.0, 1.99), (-16.55, 2.12))),
    'granitemoehybrid': ('state', ((4.14, 0.0),)),
    'iquestloopcoder': ('hidden', ((0.0, 1.07), (-20.6, 1.26))),
    'jamba': ('hidden', ((393.18, 0.0),)),
    'kimi_k25': ('hidden', ((0.0, 0.88), (-27.05, 1.14))),
    'kimi_vl': ('hidden', ((0.0, 0.89), (-24.14, 1.08))),
    'laguna': ('hidden', ((0.0, 0.92), (-18.6, 1.07))),
    'llama4': ('hidden', ((0.0, 0.12), (-21.84, 0.29))),
    'longcat_flash': ('hidden', ((0.0, 0.89), (-24.14, 1.14))),
    'longcat_flash_ngram': ('hidden', ((0.0, 0.9), (-24.15, 1.14))),
    'mamba': ('hidden', ((35.53, 0.0),)),
    'mamba2': ('state', ((7.33, 0.52),)),
    'mimo_v2_flash': ('hidden', ((0.0, 1.91), (-22.25, 2.09))),
    'minimax_m3_vl': ('hidden', ((0.0, 0.36), (-30.45, 0.71))),
    'nemotron_h': ('state', ((2.61, 0.0),)),
    'phi3small': ('hidden', ((0.0, 1.49), (-19.49, 1.64))),
    'plamo2': ('state', ((3.53, 0.0),)),
    'rwkv7': ('state', ((1.21, 0.09),)),
    'step3p5': ('hidden', ((0.0, 0.92), (-15.66, 1.04))),
}
