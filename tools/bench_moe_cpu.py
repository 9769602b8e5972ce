"""Routed experts of a half-precision MoE model on the CPU: ways to run them, measured.

Usage: python tools/bench_moe_cpu.py [--model qwen3_moe|mixtral] [--prompt 64] [--tokens 32]
                                     [--rounds 3] [--only NAME,...] [--blas reference|openblas]
                                     [--layer-only]
First times one MoE decoder layer on the CPU stream each way (built in this process, interleaved
rounds). Then writes a random bf16 MoE checkpoint (real safetensors written by MLX) to a
temporary folder and runs it split in two: the first half of the layers on the stand-in GPU (a
CPU stream on this build, upcasting its experts as unimap does in every way), the second half on
the CPU stream, each way below in a fresh process:

- f32-experts: what unimap did before: the CPU layers cast to float32 whole (MLX's CPU gather_mm
  takes float32 only).
- upcast-take: experts kept in bf16; each call takes the experts its tokens selected (or all of
  them when the tokens select at least 2/3 as many) and upcasts those to float32 for gather_mm.
- upcast-views: unimap's way now (unimap/runtime.py upcast_gather_mm): each call reads its
  indices (a host sync), sorts its rows by expert and multiplies each selected expert's slice of
  the stack, upcast alone (no gathered copy), by its rows, in groups evaluated one at a time.
- upcast-take/bf16-rest: upcast-take with the layers' other weights (attention, router, norms)
  left in bf16 too, computing in bf16.
- q8-experts, q4-experts: experts quantized (gather_qmm, bf16 scales) and float32 activations:
  smaller than stored, but a different model.
- unimap: `unimap.load` with the split as its device map (upcast-views, built by unimap), with
  its plan's CPU weights and peak beside the measurement.
And whether MLX's CPU gather_mm takes bf16 at all. Every run prints the greedy tokens; "same"
compares them with f32-experts (the float32 reference), and max |dlogit| is over the first
step's log-probabilities. Prints Markdown; docs/BENCHMARKS.md records the output.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

COMMON = {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
          "num_key_value_heads": 4, "vocab_size": 4096, "rms_norm_eps": 1e-6,
          "rope_theta": 1e6, "tie_word_embeddings": False, "max_position_embeddings": 4096}
MODELS = {
    "qwen3_moe": {"model_type": "qwen3_moe", **COMMON, "head_dim": 64, "intermediate_size": 3072,
                  "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True},
    "mixtral": {"model_type": "mixtral", **COMMON, "intermediate_size": 2816,
                "num_local_experts": 8, "num_experts_per_tok": 2},
}
WAYS = ("f32-experts", "upcast-take", "upcast-views", "upcast-take/bf16-rest", "q8-experts",
        "q4-experts", "unimap")
DEFAULT_WAYS = ("f32-experts", "upcast-take", "upcast-take/bf16-rest", "q8-experts", "q4-experts",
                "unimap")
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"

CHILD = r"""
import json, sys, time
sys.path[:0] = sys.argv[4:6]
import mlx.core as mx
from mlx.utils import tree_flatten
import bench_moe_cpu as b
path, way, prompt_tokens, max_tokens = sys.argv[1], sys.argv[2], *map(int, sys.argv[3].split(","))
print(json.dumps(b.child(path, way, prompt_tokens, max_tokens)))
"""


# ---------------------------------------------------------------- the ways, as module classes


def take_upcast_call(self, x, indices, sorted_indices=False):  # noqa: ANN001, ANN201
    """upcast-take: gather the selected experts (or all), upcast them, gather_mm in float32."""
    import mlx.core as mx

    weight, rows = self["weight"], indices
    if 3 * indices.size < 2 * weight.shape[0]:
        weight = mx.take(weight, indices.flatten(), axis=0)
        rows = mx.arange(indices.size, dtype=mx.uint32).reshape(indices.shape)
    out = mx.gather_mm(x.astype(mx.float32), weight.astype(mx.float32).swapaxes(-1, -2),
                       rhs_indices=rows, sorted_indices=sorted_indices)
    return out.astype(x.dtype)


def with_call(module, call) -> None:  # noqa: ANN001
    base = type(module)
    module.__class__ = type(base.__name__, (base,), {"__call__": call})


def expert_modules(layer):  # noqa: ANN001, ANN201
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    return [m for _, m in layer.named_modules() if isinstance(m, SwitchLinear | QuantizedSwitchLinear)]


def prepare_cpu_layer(layer, way: str) -> object:  # noqa: ANN001
    """Make `layer` run `way` on the CPU; returns its compute dtype (None: the model's)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    from unimap.runtime import cast_floats, upcast_experts

    if way == "f32-experts":
        cast_floats(layer, "float32")
        return mx.float32
    experts = expert_modules(layer)
    kept = {id(m) for m in experts}
    if way in ("q8-experts", "q4-experts"):
        nn.quantize(layer, group_size=64, bits=int(way[1]),  # type: ignore[attr-defined]
                    class_predicate=lambda _, m: id(m) in kept)
        experts = expert_modules(layer)
        kept = {id(m) for m in experts}
    elif way in ("upcast-take", "upcast-take/bf16-rest"):
        for module in experts:
            with_call(module, take_upcast_call)
    elif way.startswith("upcast-views"):
        upcast_experts(layer)
    if way.endswith("bf16-rest"):
        return None
    saved = [(m, dict(m.parameters())) for m in experts]
    layer.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p,
                          layer.parameters()))
    for module, params in saved:  # the experts as stored (or as quantized)
        module.update(params)
    return mx.float32


def build(path: str, way: str):  # noqa: ANN201
    """The model split in two the way `way` says; (model, plan or None)."""
    import mlx.core as mx
    from mlx_lm.utils import load
    from tiny_models import stand_in_machine

    import unimap
    from unimap.runtime import new_streams, pin, upcast_experts

    if way == "unimap":
        model, _, plan = unimap.load(path, device_map=len(load(path, lazy=True)[0].layers) // 2,
                                     machine=stand_in_machine(), max_seq_len=512)
        return model, plan
    model = load(path, lazy=True)[0]
    streams = new_streams()
    layers = model.layers
    half = len(layers) // 2
    for index, layer in enumerate(layers):
        cpu = index >= half
        dtype = prepare_cpu_layer(layer, way) if cpu else None
        if not cpu:  # the stand-in GPU is a CPU stream here: its bf16 experts upcast as they run
            upcast_experts(layer)
        stream = streams.cpu_stream if cpu else streams.gpu_stream
        with mx.stream(stream):
            mx.eval(layer.parameters())
        pin(layer, stream, dtype)
    mx.eval(model.parameters())
    return model, None


def child(path: str, way: str, prompt_tokens: int, max_tokens: int) -> dict[str, object]:
    import time

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    from unimap.headers import read_header

    mx.reset_peak_memory()
    model, plan = build(path, way)
    half = len(model.layers) // 2
    stored = {name: t.nbytes for name, t in read_header(Path(path) / "model.safetensors")[0].items()}
    cpu_names = [f"model.layers.{i}." for i in range(half, len(model.layers))]
    expert_bytes = other_bytes = stored_experts = stored_other = 0
    for i in range(half, len(model.layers)):
        layer = model.layers[i]
        for name, p in tree_flatten(layer.parameters()):
            if "switch_mlp" in name:
                expert_bytes += p.nbytes
            else:
                other_bytes += p.nbytes
    for name, nbytes in stored.items():
        if name.startswith(tuple(cpu_names)):
            if "switch_mlp" in name:
                stored_experts += nbytes
            else:
                stored_other += nbytes
    prompt = mx.array([1] + [(13 * i) % 4000 + 3 for i in range(prompt_tokens - 1)])
    tokens, stamps, logprobs = [], [], None
    start = time.perf_counter()
    for token, step in generate_step(prompt, model, max_tokens=max_tokens, sampler=make_sampler(0.0)):
        tokens.append(int(token))
        stamps.append(time.perf_counter())
        if logprobs is None:  # the prompt's last logits, less their logsumexp
            logprobs = step.astype(mx.float32).tolist()
    first, rest = stamps[0] - start, stamps[-1] - stamps[0]
    out: dict[str, object] = {
        "tokens": tokens, "logits": logprobs, "peak": mx.get_peak_memory(),
        "cpu_expert_bytes": expert_bytes, "cpu_other_bytes": other_bytes,
        "stored_expert_bytes": stored_experts, "stored_other_bytes": stored_other,
        "prefill_tps": prompt_tokens / first, "decode_tps": (len(tokens) - 1) / rest}
    if plan is not None:
        out["plan_cpu_weight_bytes"] = plan.device("cpu").weight_bytes
        out["plan_peak"] = plan.peak_bytes
        out["notes"] = list(plan.notes)
    return out


LAYER_WAYS = ("f32-experts", "upcast-views", "upcast-views/bf16-rest", "upcast-take", "q8-experts",
              "q4-experts")


def cpu_layer_times(config: dict[str, object], rounds: int) -> list[str]:
    """One MoE decoder layer of the bench model on the CPU stream, each way built in this process
    and timed in interleaved rounds (median): a decode step (after a 16-token prefill), a 4-token
    chunk (fewer routed rows than experts) and a 64-token chunk (more)."""
    import statistics
    import time

    import mlx.core as mx
    from mlx_lm.models.cache import KVCache
    from mlx_lm.utils import _get_classes

    one = {**config, "num_hidden_layers": 1}
    model_class, args_class = _get_classes(one)
    layers = {}
    for way in LAYER_WAYS:
        mx.random.seed(0)
        layer = model_class(args_class.from_dict(one)).layers[0]
        layer.set_dtype(mx.bfloat16)
        dtype = prepare_cpu_layer(layer, way) or mx.bfloat16
        with mx.stream(mx.cpu):
            mx.eval(layer.parameters())
        layers[way] = (layer, dtype)
    width = int(config["hidden_size"])  # type: ignore[call-overload]
    times: dict[str, dict[int, list[float]]] = {w: {1: [], 4: [], 64: []} for w in LAYER_WAYS}
    with mx.stream(mx.cpu):
        for _ in range(rounds):
            for way, (layer, dtype) in layers.items():
                for n in (1, 4, 64):
                    cache = KVCache()
                    mx.eval(layer(mx.random.normal((1, 16, width)).astype(dtype), mask="causal", cache=cache))
                    x = mx.random.normal((1, n, width)).astype(dtype)
                    mx.eval(x)
                    start = time.perf_counter()
                    mx.eval(layer(x, mask="causal" if n > 1 else None, cache=cache))
                    times[way][n].append((time.perf_counter() - start) * 1000)
    base = {n: statistics.median(times["f32-experts"][n]) for n in (1, 4, 64)}
    rows = ["| way | decode ms/token | 4-token chunk ms | 64-token chunk ms | decode vs f32-experts |",
            "|---|---|---|---|---|"]
    for way, by_n in times.items():
        med = {n: statistics.median(v) for n, v in by_n.items()}
        rows.append(f"| {way} | {med[1]:.1f} | {med[4]:.1f} | {med[64]:.1f} | {med[1] / base[1]:.2f}x |")
    return rows


def gather_mm_dtypes() -> list[str]:
    """Which dtypes MLX's CPU gather_mm and gather_qmm take."""
    import mlx.core as mx

    rows = []
    x = mx.ones((2, 1, 64))
    idx = mx.array([[1], [3]], dtype=mx.uint32)
    for name in ("float32", "bfloat16", "float16"):
        dtype = getattr(mx, name)
        try:
            mx.eval(mx.gather_mm(x.astype(dtype), mx.ones((4, 64, 64), dtype), rhs_indices=idx))
            mm = "yes"
        except (RuntimeError, ValueError) as exc:
            mm = f"no ({str(exc).splitlines()[0]})"
        q, s, b = mx.quantize(mx.ones((4, 64, 64), dtype), group_size=64, bits=4)
        qmm = mx.gather_qmm(x, q, s, b, rhs_indices=idx, transpose=True, group_size=64, bits=4)
        rows.append(f"| {name} | {mm} | yes (float32 activations give {qmm.dtype}) |")
    return ["| weights | gather_mm | gather_qmm (weights quantized, scales in this dtype) |",
            "|---|---|---|", *rows]


def run(path: Path, way: str, prompt: int, tokens: int, blas: str) -> dict[str, object]:
    env = dict(os.environ)
    if blas == "openblas":
        env["LD_PRELOAD"] = OPENBLAS
    here = Path(__file__).resolve()
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), way, f"{prompt},{tokens}",
                           str(here.parent), str(here.parents[1] / "tests")],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict[str, object]]]) -> list[str]:
    rows = ["| way | CPU expert bytes / stored | CPU other bytes / stored | decode tokens/s | "
            "prefill tokens/s | greedy tokens same | max abs dlogit | peak | plan CPU weights | plan peak |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    reference = results.get("f32-experts", [{}])[0]
    for way, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append(f"| {way} | error: {runs[0]['error']} |||||||||")
            continue
        r = good[0]
        same = "-"
        diff = "-"
        if "tokens" in reference:
            agree = sum(a == b for a, b in zip(r["tokens"], reference["tokens"], strict=True))
            same = "yes" if agree == len(r["tokens"]) else f"{agree}/{len(r['tokens'])}"
            diff = f"{max(abs(a - b) for a, b in zip(r['logits'], reference['logits'], strict=True)):.2e}"
        decode = statistics.median(float(x["decode_tps"]) for x in good)
        prefill = statistics.median(float(x["prefill_tps"]) for x in good)
        plan_w = f"{r['plan_cpu_weight_bytes'] / 2**20:.1f} MiB" if "plan_cpu_weight_bytes" in r else "-"
        plan_p = f"{r['plan_peak'] / 2**20:.1f} MiB" if "plan_peak" in r else "-"
        rows.append(
            f"| {way} | {r['cpu_expert_bytes'] / 2**20:.1f} MiB / {r['stored_expert_bytes'] / 2**20:.1f}"
            f" = {r['cpu_expert_bytes'] / r['stored_expert_bytes']:.3f} | "
            f"{r['cpu_other_bytes'] / 2**20:.1f} MiB / {r['stored_other_bytes'] / 2**20:.1f} | "
            f"{decode:.2f} | {prefill:.1f} | {same} | {diff} | "
            f"{max(int(x['peak']) for x in good) / 2**20:.1f} MiB | {plan_w} | {plan_p} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=list(MODELS), default="qwen3_moe")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(DEFAULT_WAYS), help=f"of {', '.join(WAYS)}")
    parser.add_argument("--blas", choices=["reference", "openblas"], default="reference")
    parser.add_argument("--layer-only", action="store_true", help="only the one-layer timings")
    args = parser.parse_args()
    if args.blas == "openblas" and "LD_PRELOAD" not in os.environ:  # before MLX loads: re-run
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_PRELOAD": OPENBLAS})
    import mlx.core as mx
    from tiny_models import write_random_model

    config = MODELS[args.model]
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, MLX {mx.__version__}, "
          f"BLAS: {args.blas}; model: random bf16 {args.model}, {json.dumps(config)}")
    print("\n### MLX's CPU gather kernels by dtype\n")
    print("\n".join(gather_mm_dtypes()))
    layer_rounds = max(args.rounds, 5)
    print(f"\n### One MoE decoder layer on the CPU stream, median of {layer_rounds} interleaved "
          f"rounds ({args.blas} BLAS)\n")
    print("\n".join(cpu_layer_times(config, layer_rounds)))
    if args.layer_only:
        return
    ways = [w for w in args.only.split(",") if w]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_model(Path(tmp) / args.model, config, dtype="bfloat16")
        results: dict[str, list[dict[str, object]]] = {w: [] for w in ways}
        for _ in range(args.rounds):  # interleaved: drift on a shared machine hits every way alike
            for way in ways:
                results[way].append(run(path, way, args.prompt, args.tokens, args.blas))
                shown = {k: v for k, v in results[way][-1].items() if k not in ("tokens", "logits")}
                print(f"  {way}: {json.dumps(shown)}", file=sys.stderr)
    print(f"\n### Split 4+4, {args.prompt}-token prompt, {args.tokens} greedy tokens, "
          f"median of {args.rounds} ({args.blas} BLAS)\n")
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
