"""Chunk-array factors of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on tiny twins built through mlx-lm's own classes.

Generated 2026-11-30 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

A family listed here needed more than the largest measured coefficients price for its chunk
arrays. Each fit is a tuple of coefficients for the units of its basis (unimap.estimate.extra_units,
per chunk token, times 4 bytes): "hidden" (hidden width; heads x keys) or "scan" (families with a
recurrent state: state heads x block^2, the largest layer state once and per block token, each
over the chunk; the state per token; hidden width; heads x keys). Fitted to each family's tiny
twin and its twin 4 times as wide. The estimate adds the largest fit when it is positive (a
negative part: what does not grow with the keys is over-covered already); families not listed
needed no more.
"""

FAMILY_EXTRA: dict[str, tuple[str, tuple[tuple[float, ...], ...]]] = {
    'bailing_hybrid': ('scan', ((0.0, 0.0, 0.0, 0.0, 0.0, 0.86),)),
    'bailing_moe_linear': ('scan', ((0.0, 0.0, 0.44, 0.0, 0.0, 0.0),)),
    'bailing_moe_v3': ('scan', ((0.0, 5.93, 0.69, 0.0, 0.0, 0.82),)),
    'deepseek_v3': ('hidden', ((0.0, 0.88), (-21.52, 1.08))),
    'deepseek_v32': ('hidden', ((0.0, 1.93), (-32.82, 2.25))),
    'deepseek_v41': ('scan', ((0.0, 0.0, 0.0, 0.0, 8.32, 0.13),)),
    'falcon_h1': ('scan', ((3.16, 0.0, 0.01, 0.0, 0.06, 0.29),)),
    'gemma3n': ('hidden', ((1.51, 0.0),)),
    'gemma4_text': ('hidden', ((0.0, 0.03), (-2.77, 0.06))),
    'glm4_moe_lite': ('hidden', ((0.0, 0.87), (-23.18, 1.09))),
    'glm_moe_dsa': ('hidden', ((0.0, 1.91), (-35.29, 2.26))),
    'gpt_oss': ('hidden', ((0.0, 2.0), (-15.16, 2.13))),
    'granitemoehybrid': ('scan', ((2.63, 0.0, 0.0, 0.0, 0.0, 0.0),)),
    'iquestloopcoder': ('hidden', ((0.0, 1.07), (-13.89, 1.19))),
    'jamba': ('scan', ((0.0, 0.0, 0.37, 11.34, 0.0, 0.0),)),
    'kimi_k25': ('hidden', ((0.0, 0.89), (-21.88, 1.09))),
    'kimi_k3': ('scan', ((0.0, 5.91, 0.72, 0.0, 0.0, 0.92),)),
    'kimi_linear': ('scan', ((0.0, 5.85, 0.69, 0.0, 0.0, 0.88),)),
    'kimi_vl': ('hidden', ((0.0, 0.88), (-21.23, 1.08))),
    'laguna': ('hidden', ((0.0, 0.93), (-16.81, 1.07))),
    'llama4': ('hidden', ((0.0, 0.13), (-14.51, 0.25))),
    'longcat_flash': ('hidden', ((0.0, 0.9), (-18.67, 1.06))),
    'longcat_flash_ngram': ('scan', ((0.0, 0.0, 0.0, 0.0, 0.0, 0.92),)),
    'mamba': ('scan', ((0.0, 5.57, 0.0, 0.97, 0.0, 0.0),)),
    'mamba2': ('scan', ((3.07, 0.0, 0.0, 0.0, 30.96, 0.08),)),
    'mimo_v2_flash': ('hidden', ((0.0, 1.93), (-21.01, 2.12))),
    'minimax_m3_vl': ('hidden', ((0.0, 0.37), (-27.39, 0.73))),
    'nemotron_h': ('scan', ((3.45, 0.0, 0.09, 0.07, 0.0, 0.0),)),
    'olmo_hybrid': ('scan', ((0.0, 6.48, 0.15, 0.79, 0.0, 0.0),)),
    'phi3small': ('hidden', ((0.0, 1.49), (-19.9, 1.68))),
    'plamo2': ('scan', ((2.84, 0.0, 0.04, 0.08, 0.0, 0.0),)),
    'prism_hadamard_qwen35': ('scan', ((0.0, 5.91, 0.15, 0.73, 0.0, 0.0),)),
    'qwen3_5': ('scan', ((0.0, 6.14, 0.16, 0.81, 0.0, 0.0),)),
    'qwen3_5_moe': ('scan', ((0.0, 6.0, 0.15, 0.75, 0.0, 0.0),)),
    'qwen3_next': ('scan', ((0.0, 6.0, 0.15, 0.79, 0.0, 0.0),)),
    'rwkv7': ('scan', ((0.0, 2.32, 0.02, 0.87, 0.0, 0.0),)),
    'step3p5': ('hidden', ((0.0, 0.93), (-15.3, 1.06))),
}
