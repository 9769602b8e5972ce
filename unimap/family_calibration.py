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
    'bailing_hybrid': ('state', ((0.0, 0.86), (-1.72, 1.08))),
    'bailing_moe_v3': ('state', ((0.0, 0.84), (-1.9, 1.08))),
    'deepseek_v3': ('hidden', ((0.0, 0.89), (-24.48, 1.09))),
    'deepseek_v32': ('hidden', ((0.0, 1.92), (-35.05, 2.22))),
    'deepseek_v41': ('hidden', ((0.51, 0.18),)),
    'falcon_h1': ('state', ((3.32, 0.0),)),
    'gemma4_text': ('hidden', ((0.0, 0.03), (-3.53, 0.05))),
    'glm4_moe_lite': ('hidden', ((0.0, 0.87), (-25.94, 1.09))),
    'glm_moe_dsa': ('hidden', ((0.0, 1.91), (-38.83, 2.26))),
    'gpt_oss': ('hidden', ((0.0, 1.99), (-16.55, 2.12))),
    'granitemoehybrid': ('state', ((2.65, 0.0),)),
    'iquestloopcoder': ('hidden', ((0.0, 1.07), (-20.6, 1.26))),
    'jamba': ('hidden', ((357.81, 0.0),)),
    'kimi_k25': ('hidden', ((0.0, 0.88), (-27.05, 1.14))),
    'kimi_k3': ('state', ((0.0, 0.94), (-1.21, 1.09))),
    'kimi_linear': ('state', ((0.0, 0.88), (-1.54, 1.08))),
    'kimi_vl': ('hidden', ((0.0, 0.89), (-24.14, 1.08))),
    'laguna': ('hidden', ((0.0, 0.92), (-18.6, 1.07))),
    'llama4': ('hidden', ((0.0, 0.12), (-21.84, 0.29))),
    'longcat_flash': ('hidden', ((0.0, 0.89), (-24.14, 1.14))),
    'longcat_flash_ngram': ('hidden', ((0.0, 0.91), (-18.11, 1.08))),
    'mamba': ('hidden', ((29.17, 0.0),)),
    'mamba2': ('state', ((4.76, 0.02),)),
    'mimo_v2_flash': ('hidden', ((0.0, 1.91), (-22.25, 2.09))),
    'minimax_m3_vl': ('hidden', ((0.0, 0.36), (-30.45, 0.71))),
    'nemotron_h': ('state', ((2.8, 0.0),)),
    'phi3small': ('hidden', ((0.0, 1.49), (-19.49, 1.64))),
    'plamo2': ('state', ((2.67, 0.0),)),
    'rwkv7': ('state', ((0.61, 0.06),)),
    'step3p5': ('hidden', ((0.0, 0.92), (-15.66, 1.04))),
}
