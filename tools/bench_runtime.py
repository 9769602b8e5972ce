"""Runtime figures: unimap's generation speed against plain mlx-lm, the loading peak against the
final size, and the speed of the CPU part of a split by weight and activation dtype.

Usage: python tools/bench_runtime.py [--tokens 128] [--rounds 3] [--skip-dtypes]
Writes a random llama checkpoint (real safetensors written by MLX) to a temporary folder. Each
loading-peak case runs in a fresh process. Prints Markdown; docs/BENCHMARKS.md records the output.
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BENCH = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816,
         "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
         "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "tie_word_embeddings": False, "max_position_embeddings": 4096}


def speed(path: Path, tokens: int, rounds: int) -> list[str]:
    """Tokens/s of plain mlx-lm and of unimap on the same model, prompt and settings. Each rate
    is taken the same way, from the wall clock: tokens after the first over the time since the
    first (mlx-lm's own generation_tps counts the first token too, which reads 1/N faster), and
    the order of the runs rotates from round to round."""
    import mlx.core as mx
    from mlx_lm import load as mlx_load
    from mlx_lm.generate import stream_generate as mlx_stream
    from mlx_lm.sample_utils import make_sampler

    import unimap

    prompt = [1] + [(13 * i) % 190 + 3 for i in range(63)]
    plain, plain_tok = mlx_load(str(path))
    mapped, mapped_tok, plan = unimap.load(path, max_seq_len=512)
    split, split_tok, _ = unimap.load(path, max_seq_len=512, device_map=4, machine="h100-80gb")

    def rate(responses: Any) -> float:
        stamps = [time.perf_counter() for _ in responses]
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    runs = {
        "mlx-lm": lambda: rate(mlx_stream(plain, plain_tok, mx.array(prompt), max_tokens=tokens,
                                          sampler=make_sampler(0.0))),
        "unimap (plan: all on one device)": lambda: rate(unimap.stream_generate(
            mapped, mapped_tok, prompt, max_tokens=tokens)),
        "unimap split 4+4 (two streams)": lambda: rate(unimap.stream_generate(
            split, split_tok, prompt, max_tokens=tokens)),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            rates[name].append(runs[name]())
    base = statistics.median(rates["mlx-lm"])
    rows = [f"| {name} | {statistics.median(v):.1f} | {statistics.median(v) / base:.3f} |"
            for name, v in rates.items()]
    return ["| run | tokens/s (median) | ratio to mlx-lm |", "|---|---|---|", *rows]


LOAD_CHILD = r"""
import json, sys
import mlx.core as mx
from mlx.utils import tree_flatten
import unimap
path, isq = sys.argv[1], (int(sys.argv[2]) if sys.argv[2] != "-" else None)
mx.reset_peak_memory()
model, tok, plan = unimap.load(path, max_seq_len=512, isq=isq)
final = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
layer = max(sum(p.nbytes for _, p in tree_flatten(l.parameters())) for l in model.layers)
print(json.dumps({"peak": mx.get_peak_memory(), "final": final, "planned": plan.estimate.weight_bytes}))
"""


def load_peaks(paths: dict[str, Path]) -> list[str]:
    rows = ["| checkpoint | --isq | final size | loading peak | peak / final | allowed |",
            "|---|---|---|---|---|---|"]
    from unimap.headers import read_header
    from unimap.inspect import inspect

    for label, path in paths.items():
        # the largest unit quantized at once: a decoder layer, or one non-mapped matrix
        biggest_tensor = max(t.nbytes for t in read_header(path / "model.safetensors")[0].values())
        source_layer = max(max(inspect(path).layer_weight_bytes()), biggest_tensor)
        for isq in (None, 4):
            done = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(path), str(isq or "-")],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout)
            allowed = (f"final + largest source unit = {(r['final'] + source_layer) / r['final']:.3f}"
                       if isq else "1.05")
            rows.append(f"| {label} | {isq or '-'} | {r['final'] / 2**20:.1f} MiB | "
                        f"{r['peak'] / 2**20:.1f} MiB | {r['peak'] / r['final']:.3f} | {allowed} |")
    return rows


def cpu_layer_dtypes(rounds: int) -> list[str]:
    """One decoder layer of the bench model on the CPU stream: decode (1 token) and a 16-token
    chunk, by weight format and activation dtype."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models.cache import KVCache
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes({**BENCH, "num_hidden_layers": 1})
    rows = ["| weights | activations | decode ms/token | 16-token chunk ms |", "|---|---|---|---|"]
    cases = [(w, a) for w in ("float32", "bfloat16", "float16", "q8", "q4")
             for a in ("float32", "bfloat16", "float16") if w in (a, "q8", "q4")]
    with mx.stream(mx.cpu):
        for weights, act in cases:
            layer = model_class(args_class.from_dict({**BENCH, "num_hidden_layers": 1})).layers[0]
            layer.set_dtype(getattr(mx, act))
            if weights.startswith("q"):
                nn.quantize(layer, group_size=64, bits=int(weights[1:]))
            mx.eval(layer.parameters())
            timings = {}
            for n in (1, 16):
                x = mx.random.normal((1, n, BENCH["hidden_size"])).astype(getattr(mx, act))
                best = float("inf")
                for _ in range(rounds):
                    cache = KVCache()
                    mx.eval(layer(x, mask="causal" if n > 1 else None, cache=cache))
                    start = time.perf_counter()
                    mx.eval(layer(x, mask="causal" if n > 1 else None, cache=cache))
                    best = min(best, time.perf_counter() - start)
                timings[n] = best * 1000
            rows.append(f"| {weights} | {act} | {timings[1]:.2f} | {timings[16]:.1f} |")
    return rows


MEASURE = r"""
import json, statistics, sys, time
import mlx.core as mx
from mlx.utils import tree_flatten
import unimap
from unimap.doctor import blas_library
from unimap.host import Host


def bandwidth(stream):
    # bytes/s one device reads, the best of two ways to read 256 MiB of float32: a sum (one
    # thread on MLX's CPU) and a matrix-vector product (as many threads as the BLAS uses),
    # each best of 5
    with mx.stream(stream):
        a = mx.ones((64 * 2**20,), dtype=mx.float32)
        w = a.reshape(8192, 8192)
        x = mx.ones((1, 8192), dtype=mx.float32)
        mx.eval(a, x)
        best = float("inf")
        for make in (lambda: a.sum(), lambda: x @ w):
            mx.eval(make())
            for _ in range(5):
                start = time.perf_counter()
                mx.eval(make())
                best = min(best, time.perf_counter() - start)
    return a.nbytes / best


def crossing(first, second):
    # seconds to hand a (1, 1, hidden) activation from one stream to the other and back
    with mx.stream(first):
        x = mx.ones((1, 1, 1024))
        mx.eval(x)
    best = float("inf")
    for _ in range(50):
        start = time.perf_counter()
        with mx.stream(second):
            y = x + 1
        with mx.stream(first):
            z = y * 2
        mx.eval(z)
        best = min(best, time.perf_counter() - start)
    return best
"""

ROOFLINE_CHILD = MEASURE + r"""
path, tokens, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompt = [1] + [(13 * i) % 190 + 3 for i in range(63)]
out = {"blas": blas_library(Host.real())[1], "cases": []}
for label, kwargs in (("all on one device", {}),
                      ("split 4 + 4 (two streams)", {"device_map": 4, "machine": "h100-80gb"})):
    model, tok, plan = unimap.load(path, max_seq_len=512, **kwargs)
    state = model._unimap
    streams = {d.name: (state.placement.gpu_stream if d.name != "cpu" else state.placement.cpu_stream)
               for d in plan.devices if d.layers}
    rates, prefill = [], []
    for _ in range(rounds):
        responses = list(unimap.stream_generate(model, tok, prompt, max_tokens=tokens))
        rates.append(responses[-1].generation_tps)
        prefill.append(responses[-1].prompt_tps)
    # bytes each decode step reads: every layer's parameters, the head and final norm, one
    # embedding row, and the KV cache at the average context
    layers = [sum(v.nbytes for _, v in tree_flatten(l.parameters())) for l in model.layers]
    head = sum(v.nbytes for _, v in tree_flatten(model.lm_head.parameters()))
    norm = sum(v.nbytes for _, v in tree_flatten(model.model.norm.parameters()))
    context = len(prompt) + tokens // 2
    kv = sum(layer.kv_bytes for layer in plan.estimate.layers) * context // plan.estimate.sequence_tokens
    per_device = {}
    for d in plan.devices:
        if d.layers:
            per_device[d.name] = sum(layers[i] for i in d.layers)
    per_device[plan.non_mapped_device] = per_device.get(plan.non_mapped_device, 0) + head + norm
    per_device[max(per_device, key=per_device.get)] += kv
    widths = {name: bandwidth(streams.get(name, state.placement.cpu_stream)) for name in per_device}
    seconds = sum(n / widths[name] for name, n in per_device.items())
    crossings = 0.0
    if len(streams) > 1:
        a, b = list(streams.values())[:2]
        crossings = crossing(a, b)  # one there and back per token
    out["cases"].append({"label": label, "tps": statistics.median(rates),
                         "prefill_tps": statistics.median(prefill),
                         "bytes": sum(per_device.values()),
                         "bandwidth": {k: round(v / 1e9, 2) for k, v in widths.items()},
                         "roofline_tps": 1 / (seconds + crossings), "crossing_us": crossings * 1e6})
print(json.dumps(out))
"""


def roofline(path: Path, tokens: int, rounds: int) -> list[str]:
    """Decode tokens/s of each placement against its roofline (bytes read per token over each
    device's measured read bandwidth, plus the measured stream crossing), with MLX's bundled
    BLAS and with an installed OpenBLAS preloaded; each in a fresh process."""
    from unimap.host import Host
    from unimap.preload import DONE_VARIABLE, OFF_VARIABLE, find_openblas

    rows = ["| BLAS | placement | bytes read / token | read bandwidth | crossing | roofline | "
            "decode | of roofline | prefill (64 tokens) |", "|---|---|---|---|---|---|---|---|---|"]
    openblas = find_openblas(Host.real())
    variants = [("bundled", {OFF_VARIABLE: "1"})]
    if openblas:
        variants.append(("OpenBLAS preloaded", {"LD_PRELOAD": openblas, DONE_VARIABLE: openblas}))
    for name, extra in variants:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", DONE_VARIABLE)}
        done = subprocess.run([sys.executable, "-c", ROOFLINE_CHILD, str(path), str(tokens), str(rounds)],
                              capture_output=True, text=True, check=True, env={**env, **extra})
        result = json.loads(done.stdout.strip().splitlines()[-1])
        for case in result["cases"]:
            widths = ", ".join(f"{k} {v} GB/s" for k, v in case["bandwidth"].items())
            rows.append(f"| {name} ({result['blas']}) | {case['label']} | "
                        f"{case['bytes'] / 2**20:.1f} MiB | {widths} | {case['crossing_us']:.0f} us | "
                        f"{case['roofline_tps']:.1f} tokens/s | {case['tps']:.1f} tokens/s | "
                        f"{case['tps'] / case['roofline_tps']:.0%} | "
                        f"{case['prefill_tps']:.1f} tokens/s |")
    return rows


# A float32 qwen3_moe (MLX's CPU build runs half-precision routed experts only on its CPU stream):
# 8 layers of 32 experts, 4 routed per token; the experts are 94 % of each layer's bytes.
MOE_BENCH = {"model_type": "qwen3_moe", "hidden_size": 1024, "intermediate_size": 2816,
             "moe_intermediate_size": 768, "num_hidden_layers": 8, "num_attention_heads": 16,
             "num_key_value_heads": 4, "head_dim": 64, "num_experts": 32, "num_experts_per_tok": 4,
             "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
             "vocab_size": 32000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
             "tie_word_embeddings": False, "max_position_embeddings": 4096}

EXPERTS_CHILD = MEASURE + r"""
sys.path.insert(0, sys.argv[6])
from tiny_models import stand_in_machine
from unimap.machines import with_gpu_budget
from unimap.settings import Reserves

path, tokens, rounds, budget, n_cpu_moe = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                           int(sys.argv[4]), sys.argv[5])
machine = with_gpu_budget(stand_in_machine(), budget, Reserves())
flags = {} if n_cpu_moe == "auto" else {"n_cpu_moe": int(n_cpu_moe)}
model, tok, plan = unimap.load(path, max_seq_len=512, machine=machine, **flags)
placement = model._unimap.placement
prompt = [1] + [(13 * i) % 190 + 3 for i in range(63)]
rates, prefill = [], []
for _ in range(rounds):
    responses = list(unimap.stream_generate(model, tok, prompt, max_tokens=tokens))
    rates.append(responses[-1].generation_tps)
    prefill.append(responses[-1].prompt_tps)
speed = plan.decode
print(json.dumps({
    "blas": blas_library(Host.real())[1], "tps": statistics.median(rates),
    "prefill_tps": statistics.median(prefill), "peak": mx.get_peak_memory(),
    "planned_peak": plan.peak_bytes, "read": speed.read_bytes, "crossings": speed.crossings,
    "gpu_layers": len(plan.device("gpu:0").layers), "cpu_layers": len(plan.device("cpu").layers),
    "cpu_experts": len(plan.device("cpu").expert_layers),
    "gpu_bytes": plan.device("gpu:0").used_bytes,
    "bandwidth": {"gpu:0": bandwidth(placement.gpu_stream), "cpu": bandwidth(placement.cpu_stream)},
    "crossing": crossing(placement.gpu_stream, placement.cpu_stream)}))
"""


def expert_placement(path: Path, tokens: int, rounds: int) -> list[str]:
    """Decode tokens/s with routed experts on the CPU against whole layers on the CPU, at the
    same GPU budget (the one that holds 4 of the 8 whole layers), each in a fresh process with
    an installed OpenBLAS preloaded as `unimap run` does; beside each, the plan's decode
    roofline with this machine's measured read rates and hand-over cost."""
    import warnings

    from tiny_models import stand_in_machine

    from unimap.host import Host
    from unimap.preload import DONE_VARIABLE, find_openblas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import unimap

        budget = unimap.plan(path, max_seq_len=512, machine=stand_in_machine(),
                             device_map=4).device("gpu:0").used_bytes
    from dataclasses import replace

    from unimap.machines import with_gpu_budget
    from unimap.settings import Reserves

    machine = with_gpu_budget(stand_in_machine(), budget, Reserves())
    fewest = next(n for n in range(1, 9) if len(unimap.plan(
        path, max_seq_len=512, machine=machine, n_cpu_moe=n).device("gpu:0").layers) == 8)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", DONE_VARIABLE)}
    openblas = find_openblas(Host.real())
    if openblas:
        env.update({"LD_PRELOAD": openblas, DONE_VARIABLE: openblas})
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    rows = ["| placement | GPU: layers (dense parts) | CPU: whole layers, experts of | "
            "hand-overs / token | decode (measured) | roofline (plan, measured rates) | "
            "of roofline | prefill (64 tokens) | peak / planned |", "|---|---|---|---|---|---|---|---|---|"]
    found = {}
    for label, flag in (("whole layers on the CPU", "0"),
                        (f"routed experts of the first {fewest} layers on the CPU", str(fewest))):
        done = subprocess.run([sys.executable, "-c", EXPERTS_CHILD, str(path), str(tokens),
                               str(rounds), str(budget), flag, tests],
                              capture_output=True, text=True, check=True, env=env)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = sum(n / r["bandwidth"][d] for d, n in r["read"].items() if n)
        seconds += r["crossings"] * r["crossing"]
        found[flag] = r
        rows.append(f"| {label} | {r['gpu_layers']} | {r['cpu_layers']}, {r['cpu_experts']} | "
                    f"{r['crossings']} | {r['tps']:.1f} tokens/s | {1 / seconds:.1f} tokens/s | "
                    f"{r['tps'] * seconds:.0%} | {r['prefill_tps']:.1f} tokens/s | "
                    f"{r['peak'] / 2**20:.0f} / {r['planned_peak'] / 2**20:.0f} MiB |")
    rates = {d: int(v) for d, v in r["bandwidth"].items()}
    measured = replace(machine, devices=tuple(replace(d, bandwidth_bytes_per_s=rates[d.name])
                                              for d in machine.devices))
    chosen = unimap.plan(path, max_seq_len=512, machine=measured)
    rows.append("")
    rows.append(f"GPU budget {budget / 2**20:.0f} MiB (4 whole layers); BLAS: {r['blas']}; read "
                f"rates gpu:0 {rates['gpu:0'] / 1e9:.1f} GB/s, cpu {rates['cpu'] / 1e9:.1f} GB/s; "
                f"hand-over {r['crossing'] * 1e6:.0f} us. The plan, given these rates, chooses: "
                + "; ".join(n for n in chosen.notes if "CPU (" in n or "live on the CPU" in n))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-dtypes", action="store_true")
    parser.add_argument("--roofline", action="store_true", help="only the split roofline section")
    parser.add_argument("--no-roofline", action="store_true", help="skip the split roofline section")
    parser.add_argument("--experts", action="store_true", help="only MoE expert placement against "
                        "whole-layer placement")
    args = parser.parse_args()
    import mlx.core as mx

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, MLX {mx.__version__}, "
          f"GPU available: {mx.is_available(mx.gpu)}; bench model: llama, hidden 1024, 8 layers")
    with tempfile.TemporaryDirectory() as tmp:
        from tiny_models import write_random_model

        if args.experts:
            print("\n### MoE: routed experts on the CPU against whole layers (float32 qwen3_moe, "
                  "1024 wide, 8 layers of 32 experts, top-4)\n")
            moe = write_random_model(Path(tmp) / "moe", MOE_BENCH)
            print("\n".join(expert_placement(moe, args.tokens, args.rounds)))
            return
        paths = {dtype: write_random_model(Path(tmp) / dtype, BENCH, dtype=dtype)
                 for dtype in ("float32", "bfloat16")}
        if not args.no_roofline:
            print("\n### Decode against its roofline (float32 checkpoint, fresh process each)\n")
            print("\n".join(roofline(paths["float32"], args.tokens, args.rounds)))
        if args.roofline:
            return
        print("\n### Generation speed (float32 checkpoint, 64-token prompt, greedy)\n")
        print("\n".join(speed(paths["float32"], args.tokens, args.rounds)))
        print("\n### Loading peak (fresh process each)\n")
        print("\n".join(load_peaks(paths)))
    if not args.skip_dtypes:
        print("\n### One decoder layer on the CPU stream\n")
        print("\n".join(cpu_layer_dtypes(args.rounds)))


if __name__ == "__main__":
    main()
