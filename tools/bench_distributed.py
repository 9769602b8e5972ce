"""Distributed figures: decode tokens/s of 1 against 2 ranks on loopback (MLX's ring backend on
127.0.0.1), bytes each token sends between ranks, and the token budget of unimap's KV-aware
pipeline split against a split in proportion to memory (exo's) for cluster presets.

Usage: python tools/bench_distributed.py [--tokens 64] [--rounds 3] [--skip-run]
Writes a random llama checkpoint and sparse-header fixtures of published configs (no weights) to
a temporary folder. Prints Markdown for docs/BENCHMARKS.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import bench_runtime  # noqa: E402

BENCH = bench_runtime.BENCH  # the same random llama as tools/bench_runtime.py

LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
             "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5,
             "rope_theta": 500000.0, "max_position_embeddings": 131072,
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"},
             "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
QWEN3_235B = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
              "hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536,
              "num_hidden_layers": 94, "num_attention_heads": 64, "num_key_value_heads": 4,
              "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
              "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
              "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "max_position_embeddings": 40960, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16"}


def speed(tokens: int, rounds: int) -> list[str]:
    """Decode tokens/s of one process and of 2 ranks (each a fresh launch), median of rounds."""
    from tiny_models import write_random_model

    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    rows = ["| run | decode tokens/s (median) | prefill tokens/s | bytes sent per token |",
            "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_model(Path(tmp) / "llama", BENCH, dtype="float32")
        prompt = " ".join(f"w{3 + (13 * i) % 190}" for i in range(64))
        base = [sys.executable, "-m", "unimap", "run", str(path), "-p", prompt, "--max-tokens",
                str(tokens), "--max-seq-len", "512", "--json", "--ignore-chat-template"]
        for label, extra in (("1 process", []), ("2 ranks, pipeline (ring, 127.0.0.1)", ["--ranks", "2"]),
                             ("2 ranks, tensor parallel", ["--ranks", "2", "--tensor-parallel"])):
            decode, prefill = [], []
            for _ in range(rounds):
                done = subprocess.run([*base, *extra], capture_output=True, text=True, env=env,
                                      check=True, timeout=600)
                text = done.stdout.strip()  # one process: indented; a rank: one line
                figures = json.loads(text if text.startswith("{\n") else text.splitlines()[-1])
                decode.append(figures["generation_tps"])
                prefill.append(figures["prompt_tps"])
            hidden = BENCH["hidden_size"] * 4  # float32 activations
            sent = {"1 process": 0,
                    # one stage boundary (send) plus the all_gather of the last hidden state
                    "2 ranks, pipeline (ring, 127.0.0.1)": hidden + 2 * hidden,
                    # shard_linear: an all_sum after attention and after the MLP of every layer
                    "2 ranks, tensor parallel": 2 * BENCH["num_hidden_layers"] * hidden}[label]
            rows.append(f"| {label} | {statistics.median(decode):.1f} | "
                        f"{statistics.median(prefill):.1f} | {sent / 1024:.0f} KiB |")
    return rows


def budgets() -> list[str]:
    """Token budget of unimap's split against the memory-proportional split."""
    import fixtures

    from unimap.api import resolve_machine
    from unimap.cluster import plan_cluster
    from unimap.estimate import Options
    from unimap.inspect import inspect

    published = json.loads((Path(fixtures.__file__).parent / "published_configs.json").read_text())
    deepseek = {k: v for k, v in published["deepseek_v3"]["config"].items()
                if k != "quantization_config"}
    cases: list[tuple[str, dict[str, Any], list[tuple[str, Any]], Options]] = [
        ("Llama 3.1 70B, 4-bit (--isq 4)", LLAMA_70B,
         [("40 GiB Mac", resolve_machine("mac-64gb", ram="40GiB")),
          ("mac-16gb", resolve_machine("mac-16gb"))], Options(max_seq_len=8192, isq=4)),
        ("DeepSeek V3, 4-bit (--isq 4)", deepseek,
         [(f"mac-64gb #{i}", resolve_machine("mac-64gb")) for i in range(4)],
         Options(max_seq_len=8192, isq=4)),
        ("DeepSeek V3, 4-bit (--isq 4)", deepseek,
         [(f"mac-128gb #{i}", resolve_machine("mac-128gb")) for i in range(4)],
         Options(max_seq_len=8192, isq=4)),
        ("DeepSeek V3, MLX 4-bit checkpoint", {**deepseek, "quantization": {"group_size": 64,
                                                                         "bits": 4}},
         [(f"mac-128gb #{i}", resolve_machine("mac-128gb")) for i in range(4)],
         Options(max_seq_len=8192)),
        ("DeepSeek V3, MLX 4-bit checkpoint", {**deepseek, "quantization": {"group_size": 64,
                                                                         "bits": 4}},
         [(f"mac-64gb #{i}", resolve_machine("mac-64gb")) for i in range(8)],
         Options(max_seq_len=8192)),
        ("Qwen3-235B-A22B, bf16", QWEN3_235B,
         [(f"dgx-spark-128gb #{i}", resolve_machine("dgx-spark-128gb")) for i in range(2)],
         Options(max_seq_len=8192)),
        ("Qwen3-235B-A22B, bf16", QWEN3_235B,
         [(f"dgx-spark-128gb #{i}", resolve_machine("dgx-spark-128gb")) for i in range(4)],
         Options(max_seq_len=8192)),
        ("Qwen3-235B-A22B, 8-bit (--isq 8)", QWEN3_235B,
         [("mac-128gb", resolve_machine("mac-128gb")),
          ("dgx-spark-128gb", resolve_machine("dgx-spark-128gb")),
          ("mac-64gb", resolve_machine("mac-64gb"))], Options(max_seq_len=8192, isq=8)),
    ]
    rows = ["| model | cluster | unimap split (rank 0 first) | token budget | memory-proportional "
            "split | its token budget | fits at 8192 |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, machines, options in cases:
            folder = Path(tmp) / name.replace(" ", "-").replace(",", "")
            if not folder.exists():  # a published MLX-quantized checkpoint's tensors, or bf16
                shapes = (fixtures.mlx_checkpoint(config) if "quantization" in config
                          else fixtures.from_model(config))
                fixtures.write_model(folder, config, shapes)
            spec = inspect(folder)
            cluster = plan_cluster(spec, machines, options)
            hosts = " + ".join(h for h, _ in machines)
            rows.append(f"| {name} | {hosts} | {list(cluster.split)} | {cluster.token_budget} | "
                        f"{list(cluster.proportional_split)} | {cluster.proportional_budget} | "
                        f"{cluster.fits} |")
    return rows


def gpu_groups() -> list[str]:
    """The automatic choice on multi-GPU CUDA machines: one process (GPU 0 and the CPU) or a
    tensor-parallel rank per GPU over NCCL (unimap.cluster.gpu_group)."""
    from dataclasses import replace

    import fixtures

    import unimap
    from unimap.api import gpu_group, resolve_machine
    from unimap.units import format_bytes

    h100 = resolve_machine("h100-80gb")

    def gpus(n: int) -> Any:
        gpu = h100.gpus[0]
        return replace(h100, devices=(*(replace(gpu, name=f"gpu:{i}") for i in range(n)), h100.cpu))

    cases = [("Llama 3.1 70B, bf16", LLAMA_70B, 2), ("Llama 3.1 70B, bf16", LLAMA_70B, 4),
             ("Llama 3.1 70B, bf16", LLAMA_70B, 3), ("Qwen3-235B-A22B, bf16", QWEN3_235B, 8)]
    rows = ["| model | machine | one process: layers per device | its decode roofline | chosen | "
            "per rank: predicted peak of its GPU's budget |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, n in cases:
            folder = Path(tmp) / name.replace(" ", "-").replace(",", "")
            if not folder.exists():
                fixtures.write_model(folder, config, fixtures.from_model(config))
            single = unimap.plan(folder, max_seq_len=8192, machine=gpus(n))
            group, single = gpu_group(single)
            layers = " + ".join(f"{d.name} {len(d.layers)}" for d in single.devices if d.layers)
            speed = f"{single.decode.tokens_per_s:.1f} tokens/s" if single.decode else "-"
            if group is None:
                chosen, ranks = "one process: " + single.notes[-1].replace(str(folder), name), "-"
            else:
                chosen = f"{len(group.ranks)} ranks, tensor parallel (NCCL)"
                r = group.ranks[0]
                gpu = r.plan.devices[0]
                ranks = f"{format_bytes(r.peak_bytes)} of {gpu.name}'s {format_bytes(gpu.budget_bytes)}"
            rows.append(f"| {name} | {n} x H100 80GB | {layers} | {speed} | {chosen} | {ranks} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="only the planned budgets")
    args = parser.parse_args()
    import mlx.core as mx

    print(f"machine: {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs; "
          f"MLX {mx.__version__} {mx.default_device()}\n")
    print("### Token budget: KV-aware split against a memory-proportional one\n")
    print("\n".join(budgets()))
    print("\n### The GPUs of one CUDA machine: one process or a rank per GPU (--max-seq-len 8192)\n")
    print("\n".join(gpu_groups()))
    if not args.skip_run:
        print(f"\n### 1 against 2 ranks on loopback (random float32 llama, 1024 wide, 8 layers; "
              f"64-token prompt, {args.tokens} tokens, median of {args.rounds})\n")
        print("\n".join(speed(args.tokens, args.rounds)))


if __name__ == "__main__":
    main()
