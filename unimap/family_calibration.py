"""Chunk-array fits of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on twins built through mlx-lm's own classes.

Generated 2026-12-01 on Linux-6.18.44-fc-v857-x86_64-with-glibc2.36 (x86_64), MLX 0.32.4,
mlx-lm 0.32.2, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

Per family: (basis, share, extra). The chunk's hidden, query, key/value and MLP arrays are
priced with the largest measured coefficients (unimap.estimate.base_array_parts); the family
holds its share of that price: one share of the whole, or where its runs recorded the price by
kind of array, one of each group of kinds its twins move apart (unimap.estimate.family_shares):
two (of the hidden, query and key/value arrays; of the MLP arrays), three (of the hidden
arrays; of the query and key/value arrays; of the MLP arrays) where a twin with 4 times the
query heads or the head dims moved the queries apart from the hidden width, or four (hidden,
query, key/value, MLP) where both did. Plus the extra: coefficients (all >= 0) for the units of the basis
(unimap.estimate.extra_units, per chunk token, times 4 bytes): "hidden" (hidden width; heads x
keys) or "scan" (families with a recurrent state: state heads x block^2, the largest layer
state once and per block token, each over the chunk; the state per token; hidden width; heads x
keys), "ssd" (families that run mlx-lm's SSD scan: state heads x block^2 over the chunk, the
largest layer state over the chunk, state heads x state size and x head dim, state heads x
block, hidden width, heads x keys), and last heads x keys again for a model in half precision
(scores some families compute in float32); "scan-apart": "scan" units for a hybrid whose states
live in layers without attention, fitted with the chunk's scan states in a phase apart from its
scores (the prefill
needs the larger of the two, unimap.estimate.priced_apart). Fitted to cover every run of the
family's tiny twin, its 8-layer twin (state families), its twins 4 times as wide (and with 4
times the state heads; SSD families: with 4 times the state size alone), with 4 times the MLP
widths, with 4 times the query heads and with 4 times the head dims (where its config sets its
head dims), in bfloat16 and, where it was measured (not the slowest state families), 8 times as
wide: those take their own shares (the shares alone never under what the widest twins' runs
need, up to 0.77 of their price), the others never under 0.77. Families not listed keep the
largest coefficients.
"""

FAMILY_EXTRA: dict[str, tuple[str, float | tuple[float, ...], tuple[float, ...]]] = {
    'Klear': ('hidden', (0.31, 0.62), (1.32, 0.0, 0.0)),
    'afm7': ('hidden', (0.54, 1.08), (1.32, 0.0, 0.0)),
    'afmoe': ('hidden', (0.45, 0.89, 0.84, 0.45), (1.32, 0.0, 0.12)),
    'apertus': ('hidden', (0.65, 0.33), (1.32, 0.02, 0.0)),
    'baichuan_m1': ('scan', (0.72, 0.55), (0.0, 0.0, 0.14, 0.0, 1.32, 0.0, 0.0)),
    'bailing_hybrid': ('scan', (1.01, 0.51, 1.01, 1.01), (0.0, 2.19, 0.03, 0.01, 1.32, 1.03, 0.0)),
    'bailing_moe': ('hidden', (0.6, 0.44), (1.32, 0.0, 0.0)),
    'bailing_moe_linear': ('scan', (0.94, 0.47, 0.47, 0.94), (0.0, 0.0, 0.16, 0.67, 1.32, 0.0, 0.0)),
    'bailing_moe_v3': ('scan', (1.01, 0.51, 1.01, 1.01), (0.0, 3.98, 0.0, 1.05, 1.32, 0.98, 0.0)),
    'cohere': ('hidden', (0.58, 0.68), (1.32, 0.02, 0.0)),
    'cohere2': ('hidden', (0.76, 0.44), (1.32, 0.0, 0.0)),
    'dbrx': ('hidden', (0.26, 0.52), (1.32, 0.05, 0.0)),
    'deepseek': ('hidden', (0.39, 0.59), (1.32, 0.0, 0.0)),
    'deepseek_v2': ('hidden', (0.26, 0.52, 0.26, 0.48), (1.32, 0.02, 0.04)),
    'deepseek_v3': ('hidden', (0.67, 0.67, 1.33, 1.33), (1.32, 1.05, 0.0)),
    'deepseek_v32': ('hidden', (1.02, 0.51, 1.02), (1.32, 2.13, 0.0)),
    'deepseek_v41': ('scan', (1.02, 1.02, 2.04), (0.0, 0.0, 0.0, 0.0, 1.51, 0.3, 0.46)),
    'dots1': ('hidden', (0.39, 0.77, 0.77, 0.44), (1.32, 0.02, 0.02)),
    'ernie4_5': ('hidden', (0.5, 0.74, 1.0, 0.69), (1.32, 0.02, 0.0)),
    'ernie4_5_moe': ('hidden', (0.39, 0.78, 0.78, 0.39), (1.32, 0.03, 0.0)),
    'exaone': ('hidden', (0.7, 0.59), (1.32, 0.0, 0.0)),
    'exaone4': ('hidden', (0.67, 0.8, 0.92, 0.46), (1.32, 0.0, 0.0)),
    'exaone_moe': ('hidden', (0.4, 0.79, 0.4, 0.42), (1.32, 0.0, 0.43)),
    'falcon_h1': ('ssd', (0.95, 0.58, 0.48, 0.81), (2.52, 0.0, 0.79, 9.47, 0.37, 1.32, 0.0, 0.0)),
    'gear': ('hidden', (0.48, 0.84, 0.95, 0.94), (1.32, 0.0, 0.0)),
    'gemma': ('hidden', (0.53, 0.71, 1.06, 0.68), (1.32, 0.02, 0.0)),
    'gemma2': ('hidden', (0.53, 0.61, 1.05, 1.05), (1.32, 0.03, 0.0)),
    'gemma3': ('hidden', (0.97, 1.48, 0.74, 0.89), (1.32, 0.0, 0.23)),
    'gemma3n': ('hidden', (1.25, 0.71, 0.71, 1.41), (1.32, 0.0, 0.0)),
    'gemma4': ('hidden', (0.76, 1.51, 0.76, 0.76), (1.32, 0.0, 0.16)),
    'gemma4_text': ('hidden', (1.02, 2.03, 2.03, 1.02), (1.32, 0.0, 0.0)),
    'glm': ('hidden', (0.45, 0.89, 0.89, 0.52), (1.32, 0.02, 0.0)),
    'glm4': ('hidden', (0.7, 0.53, 1.02, 0.51), (1.32, 0.02, 0.0)),
    'glm4_moe': ('hidden', (0.28, 0.49, 0.56, 0.56), (1.32, 0.03, 0.03)),
    'glm4_moe_lite': ('hidden', (1.01, 0.51, 1.01, 1.01), (1.32, 1.05, 0.0)),
    'glm_moe_dsa': ('hidden', (1.09, 0.55, 0.81), (1.32, 2.13, 0.0)),
    'gpt2': ('hidden', (0.51, 1.01), (1.32, 0.03, 0.0)),
    'gpt_bigcode': ('hidden', (0.81, 0.41), (1.32, 0.0, 0.0)),
    'gpt_neox': ('hidden', (0.55, 1.1), (1.32, 0.02, 0.0)),
    'gpt_oss': ('hidden', (0.6, 0.6, 0.6, 1.2), (1.32, 2.11, 0.0)),
    'gptj': ('hidden', (0.47, 0.94), (1.32, 0.03, 0.0)),
    'granite': ('hidden', (0.61, 0.68), (1.32, 0.02, 0.0)),
    'granitemoe': ('hidden', (0.36, 0.71), (1.32, 0.0, 0.0)),
    'granitemoehybrid': ('ssd', (0.48, 0.95), (2.76, 20.53, 0.0, 6.28, 0.0, 1.32, 0.0, 0.0)),
    'helium': ('hidden', (0.53, 1.06, 1.06, 0.58), (1.32, 0.0, 0.0)),
    'hunyuan': ('hidden', (0.32, 0.64), (1.32, 0.0, 0.0)),
    'hunyuan_v1_dense': ('hidden', (0.52, 1.03, 0.87, 0.52), (1.32, 0.0, 0.17)),
    'internlm2': ('hidden', (0.81, 0.66), (1.32, 0.0, 0.0)),
    'internlm3': ('hidden', (0.7, 0.59), (1.32, 0.0, 0.0)),
    'iquestloopcoder': ('hidden', (0.7, 0.99, 1.39, 0.81), (1.32, 1.12, 0.0)),
    'jamba': ('scan', 0.81, (0.0, 0.0, 0.11, 12.08, 0.0, 0.0, 0.0)),
    'kimi_k25': ('hidden', (0.67, 0.67, 1.33, 1.33), (1.32, 1.07, 0.0)),
    'kimi_k3': ('scan', (1.01, 0.51, 1.01, 1.01), (0.0, 4.47, 0.0, 1.05, 1.32, 1.0, 0.0)),
    'kimi_linear': ('scan', (0.8, 0.8, 1.59, 0.81), (0.0, 4.61, 0.0, 1.05, 1.32, 0.78, 0.0)),
    'kimi_vl': ('hidden', (0.67, 0.67, 1.33, 1.33), (1.32, 1.06, 0.0)),
    'laguna': ('hidden', (0.45, 0.89, 0.89, 0.45), (1.32, 0.0, 0.0)),
    'lfm2': ('scan', (0.77, 0.5), (0.0, 0.0, 0.0, 0.0, 1.32, 0.0, 0.0)),
    'lfm2-vl': ('scan', (0.77, 0.48), (0.0, 0.0, 0.0, 0.0, 1.32, 0.0, 0.0)),
    'lfm2_moe': ('scan', (0.48, 0.29), (0.0, 0.0, 1.68, 0.0, 1.32, 0.0, 0.0)),
    'lille-130m': ('hidden', (0.74, 0.69), (1.32, 0.0, 0.0)),
    'llama4': ('hidden', (1.0, 2.0, 2.0, 1.0), (1.32, 0.06, 0.15)),
    'llama4_text': ('hidden', (0.65, 0.81, 1.03, 0.55), (1.32, 0.0, 0.0)),
    'longcat_flash': ('hidden', (1.11, 0.56, 1.11, 0.74), (1.32, 1.09, 0.0)),
    'longcat_flash_ngram': ('scan', (1.07, 0.54, 1.07, 0.81), (0.0, 0.0, 0.0, 29.68, 1.32, 1.11, 0.0)),
    'mamba': ('scan', 0.81, (0.0, 5.24, 0.0, 1.04, 0.0, 0.0, 0.0)),
    'mamba2': ('ssd', (1.79, 3.58), (2.85, 9.69, 2.17, 0.0, 0.79, 1.32, 0.0, 0.0)),
    'mellum': ('hidden', (0.41, 0.82, 0.82, 0.41), (1.32, 0.0, 0.03)),
    'mimo': ('hidden', (0.76, 0.56), (1.32, 0.0, 0.0)),
    'mimo_v2_flash': ('hidden', (0.94, 0.47, 0.47, 0.94), (1.32, 2.09, 0.0)),
    'minicpm': ('hidden', (0.73, 0.56), (1.32, 0.0, 0.0)),
    'minicpm3': ('hidden', (0.71, 0.36, 0.68), (1.32, 0.03, 0.0)),
    'minimax': ('hidden', (0.34, 0.34, 0.34, 0.68), (1.32, 0.03, 0.0)),
    'minimax_m3_vl': ('hidden', (0.54, 0.54, 0.54, 1.08), (1.32, 0.58, 0.0)),
    'ministral3': ('hidden', (0.44, 0.88, 0.88, 0.63), (1.32, 0.03, 0.0)),
    'mistral3': ('hidden', (0.42, 0.84, 0.84, 0.73), (1.32, 0.04, 0.0)),
    'mistral4': ('hidden', (0.63, 0.32, 0.63, 0.32), (18.24, 0.03, 0.0)),
    'muse_glimmer': ('hidden', (0.66, 0.88, 0.91, 0.46), (1.32, 0.0, 0.0)),
    'nanbeige': ('hidden', (0.45, 0.89, 0.89, 0.68), (1.32, 0.02, 0.0)),
    'nanochat': ('hidden', (0.66, 0.33), (1.64, 0.0, 0.0)),
    'nemotron': ('hidden', (0.61, 0.6, 0.67, 0.34), (1.32, 0.02, 0.0)),
    'nemotron-nas': ('hidden', (0.71, 0.36), (1.32, 0.03, 0.0)),
    'nemotron_h': ('ssd', (0.06, 0.06, 0.06, 0.11), (2.88, 0.0, 1.27, 14.68, 0.0, 1.32, 0.0, 0.0)),
    'olmo2': ('hidden', (0.43, 0.85, 0.85, 0.71), (1.32, 0.03, 0.0)),
    'olmo3': ('hidden', (0.77, 0.8, 0.84, 0.42), (1.32, 0.0, 0.0)),
    'olmo_hybrid': ('scan', (1.07, 0.54, 0.54, 0.54), (0.0, 5.73, 0.0, 1.05, 1.32, 0.0, 0.0)),
    'olmoe': ('hidden', (0.34, 0.54, 0.68, 0.68), (1.32, 0.02, 0.0)),
    'openelm': ('hidden', (0.59, 1.17, 0.59), (1.32, 0.1, 0.0)),
    'phi': ('hidden', (0.56, 0.68), (1.32, 0.02, 0.53)),
    'phi3small': ('hidden', (0.81, 0.81), (1.32, 1.58, 0.0)),
    'phimoe': ('hidden', (0.21, 0.42), (4.9, 0.0, 0.0)),
    'phixtral': ('hidden', (0.56, 1.12), (1.32, 0.02, 0.38)),
    'pixtral': ('hidden', (0.61, 0.86, 0.77, 0.62), (1.32, 0.0, 0.0)),
    'plamo': ('hidden', (0.59, 0.64), (1.32, 0.03, 0.0)),
    'plamo2': ('ssd', (0.95, 0.48, 0.95, 0.53), (2.77, 1.04, 3.8, 4.98, 0.0, 1.32, 0.0, 0.0)),
    'plamo3': ('hidden', (0.63, 1.26, 1.26, 0.63), (1.32, 0.0, 0.0)),
    'prism_hadamard_qwen35': ('scan', (0.89, 0.45, 0.45, 0.89), (0.0, 4.9, 0.0, 1.05, 1.32, 0.0, 0.0)),
    'qwen': ('hidden', (0.83, 0.69), (1.32, 0.02, 0.0)),
    'qwen2_moe': ('hidden', (0.39, 0.62), (1.32, 0.0, 0.0)),
    'qwen2_vl': ('hidden', (0.96, 0.99), (1.32, 0.02, 0.0)),
    'qwen3_5': ('scan', (1.07, 0.54, 0.54, 0.54), (0.0, 5.67, 0.0, 1.05, 1.32, 0.0, 0.0)),
    'qwen3_5_moe': ('scan', (0.93, 0.47, 0.47, 0.93), (0.0, 5.08, 0.0, 1.05, 1.32, 0.0, 0.0)),
    'qwen3_next': ('scan', (0.93, 0.47, 0.47, 0.93), (0.0, 5.34, 0.0, 1.05, 1.32, 0.0, 0.0)),
    'qwen3_vl': ('hidden', (0.62, 0.86, 0.74, 0.59), (1.32, 0.0, 0.0)),
    'qwen3_vl_moe': ('hidden', (0.36, 0.71, 0.71, 0.44), (1.32, 0.05, 0.03)),
    'recurrent_gemma': ('scan', (0.53, 1.01), (0.0, 0.0, 0.64, 0.0, 1.32, 0.0, 0.0)),
    'rwkv7': ('scan', (0.89, 0.45, 0.63), (0.0, 13.03, 0.0, 0.99, 1.32, 0.0, 0.0)),
    'seed_oss': ('hidden', (0.52, 0.79, 1.03, 0.67), (1.32, 0.02, 0.0)),
    'smollm3': ('hidden', (0.52, 0.71, 1.03, 0.71), (1.32, 0.02, 0.0)),
    'solar_open': ('hidden', (0.31, 0.45, 0.62, 0.53), (1.32, 0.02, 0.0)),
    'spark2_5': ('hidden', (0.63, 0.81, 1.04, 0.52), (1.32, 0.0, 0.0)),
    'stablelm': ('hidden', (0.61, 0.67), (1.32, 0.0, 0.56)),
    'starcoder2': ('hidden', (0.61, 0.31), (3.53, 0.0, 0.0)),
    'step3p5': ('hidden', (0.45, 0.89, 0.89, 0.45), (1.32, 0.0, 0.0)),
    'talkie': ('hidden', (0.67, 1.33, 0.67, 0.67), (1.32, 0.0, 0.26)),
    'telechat3': ('hidden', (0.53, 0.77, 1.06, 0.68), (1.32, 0.02, 0.0)),
    'youtu_llm': ('hidden', (0.48, 0.48, 0.95, 0.69), (1.32, 0.03, 0.0)),
}
