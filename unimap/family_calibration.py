"""Chunk-array factors of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on tiny twins built through mlx-lm's own classes.

Generated 2026-11-29 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

A family listed here needed more than the largest measured coefficients price for its chunk
arrays. Each fit is a tuple of coefficients for the units of its basis (unimap.estimate.extra_units,
per chunk token, times 4 bytes): "hidden" (hidden width; heads x keys) or "scan" (families with a
(heads, dim, dim) state: state heads x block^2 / chunk, state heads x 256, heads x keys). The
estimate adds the largest fit when it is positive (a negative part: what does not grow with the
keys is over-covered already); families not listed needed no more.
"""

FAMILY_EXTRA: dict[str, tuple[str, tuple[tuple[float, ...], ...]]] = {
    'bailing_hybrid': ('scan', ((0.0, 0.0, 0.86), (0.22, -1.73, 1.12))),
    'bailing_moe_v3': ('scan', ((0.0, 0.0, 0.84), (0.01, -0.72, 0.94))),
    'deepseek_v3': ('hidden', ((0.0, 0.88), (-21.52, 1.08))),
    'deepseek_v32': ('hidden', ((0.0, 1.93), (-32.82, 2.25))),
    'deepseek_v41': ('hidden', ((0.48, 0.19),)),
    'falcon_h1': ('scan', ((3.2, 0.0, 0.27), (3.22, -0.02, 0.28))),
    'gemma4_text': ('hidden', ((0.0, 0.03), (-2.77, 0.06))),
    'glm4_moe_lite': ('hidden', ((0.0, 0.87), (-23.18, 1.09))),
    'glm_moe_dsa': ('hidden', ((0.0, 1.91), (-35.29, 2.26))),
    'gpt_oss': ('hidden', ((0.0, 2.0), (-15.16, 2.13))),
    'granitemoehybrid': ('scan', ((2.63, 0.0, 0.0), (2.9, -0.23, 0.0))),
    'iquestloopcoder': ('hidden', ((0.0, 1.07), (-13.89, 1.19))),
    'jamba': ('hidden', ((362.62, 0.0),)),
    'kimi_k25': ('hidden', ((0.0, 0.89), (-21.88, 1.09))),
    'kimi_k3': ('scan', ((0.0, 0.0, 0.95), (0.32, -1.42, 1.17))),
    'kimi_linear': ('scan', ((0.0, 0.0, 0.88), (0.0, -1.12, 1.03))),
    'kimi_vl': ('hidden', ((0.0, 0.88), (-21.23, 1.08))),
    'laguna': ('hidden', ((0.0, 0.93), (-16.81, 1.07))),
    'llama4': ('hidden', ((0.0, 0.12), (-21.79, 0.32))),
    'longcat_flash': ('hidden', ((0.0, 0.9), (-18.67, 1.06))),
    'longcat_flash_ngram': ('hidden', ((0.0, 0.93), (-16.37, 1.09))),
    'mamba': ('hidden', ((43.36, 0.0),)),
    'mamba2': ('scan', ((3.05, 0.95, 0.09),)),
    'mimo_v2_flash': ('hidden', ((0.0, 1.93), (-21.01, 2.12))),
    'minimax_m3_vl': ('hidden', ((0.0, 0.37), (-27.39, 0.73))),
    'nemotron_h': ('scan', ((2.81, 0.0, 0.0), (3.23, -0.28, 0.0))),
    'phi3small': ('hidden', ((0.0, 1.49), (-19.9, 1.68))),
    'plamo2': ('scan', ((2.67, 0.0, 0.0), (3.11, -0.37, 0.0))),
    'rwkv7': ('scan', ((0.0, 1.04, 0.0),)),
    'step3p5': ('hidden', ((0.0, 0.93), (-15.3, 1.06))),
}
