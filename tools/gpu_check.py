"""The checks only a GPU machine can make, as one short script (see ../shared/GPU.md).

    python tools/gpu_check.py [--out DIR] [--tokens 128]

Prints a short table last and writes full results to DIR/gpu_check.json ($OUT when set):
- what MLX and the probe see (device_info, torch's is_integrated, budgets and their sources);
- a random bf16 llama (2048 wide, 8 layers) planned, loaded and run all on the GPU: tokens/s and
  measured peak against the plan's prediction;
- the same model split 4 GPU + 4 CPU layers: tokens/s, peak against the plan, and how far the
  logits move (the CPU part computes in float32 on x86-64).
- with --vision, tiny random Qwen2-VL and Gemma 3 models (mlx-vlm's classes, bf16, one 448-pixel
  image): greedy tokens from plain mlx-vlm against unimap all on the GPU and split 2 + 2, and the
  measured peak against the plan;
- with --no-text, only the vision part.
- with --metal MODEL[,MODEL...] (for a user with a Mac; docs/metal/README.md): each model (a Hub
  id or a folder) run as `mlx_lm.benchmark` runs it, plain mlx-lm, a random prompt of each
  --prompt-tokens length plus --tokens generated, and mlx-lm's peak memory written as records
  of docs/metal/published.json (metal_measured.json) with each model's config.json
  (metal_configs.json), so the figures replay in tests/test_metal_published.py.
On a machine without a GPU it runs the same steps on the CPU build (the split then uses a preset
machine), so the script itself is tested here before it spends device time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CONFIG = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
          "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
          "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "max_position_embeddings": 4096}


def run_case(path: Path, tokens: int, **kwargs: Any) -> dict[str, Any]:
    import mlx.core as mx
    import numpy as np

    import unimap

    mx.clear_cache()
    mx.reset_peak_memory()
    start = time.perf_counter()
    model, tokenizer, plan = unimap.load(path, max_seq_len=512, **kwargs)
    load_s = time.perf_counter() - start
    prompt = [1] + [(13 * i) % 190 + 3 for i in range(127)]
    responses = list(unimap.stream_generate(model, tokenizer, prompt, max_tokens=tokens))
    logits = np.array(model(mx.array([prompt[:16]])).astype(mx.float32))
    result = {
        "plan": {d.name: list(d.layers) for d in plan.devices}, "cpu_dtype": plan.cpu_dtype,
        "load_s": load_s, "prompt_tps": responses[-1].prompt_tps,
        "generation_tps": responses[-1].generation_tps,
        "peak_bytes": mx.get_peak_memory(), "predicted_peak_bytes": plan.peak_bytes,
        "tokens": [r.token for r in responses],
    }
    model._unimap.limits.release()
    return {**result, "_logits": logits}


def _ratio(case: dict[str, Any]) -> str:
    return (f"{case['peak_bytes']} / {case['predicted_peak_bytes']} "
            f"({case['peak_bytes'] / case['predicted_peak_bytes']:.3f})")


def vision_checks(tmp: Path, split_args: dict[str, Any]) -> dict[str, Any]:
    """Plain mlx-vlm's greedy tokens against unimap's, all on the GPU and split, per family."""
    import mlx.core as mx
    from bench_estimate import VISION
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template
    from tiny_vlms import write_image, write_tiny_vlm

    import unimap

    image = write_image(tmp / "image.png", 448, 448)
    found: dict[str, Any] = {}
    for name, family in (("qwen2_vl", "qwen2_vl"), ("gemma3_vl", "gemma3")):
        path = write_tiny_vlm(tmp / name, family, dtype="bfloat16", vision=VISION[name])
        model, processor = load(str(path))
        prompt = apply_chat_template(processor, model.config, "w1 w2 w3", num_images=1)
        reference = list(generate(model, processor, prompt, image=[str(image)], max_tokens=16,
                                  temperature=0.0).token_ids)
        del model, processor
        runs: dict[str, Any] = {"reference": reference}
        for run, kwargs in (("whole", {}), ("split", {"device_map": 2, **split_args})):
            mx.clear_cache()
            mx.reset_peak_memory()
            model, processor, plan = unimap.load(path, max_seq_len=256, max_image_length=448, **kwargs)
            tokens = [r.token for r in unimap.stream_generate(model, processor, "w1 w2 w3", images=[image],
                                                              max_tokens=16)]
            runs[run] = {"tokens": tokens, "peak_bytes": mx.get_peak_memory(),
                         "predicted_peak_bytes": plan.peak_bytes,
                         "plan": {d.name: list(d.layers) for d in plan.devices}}
            model._unimap.limits.release()
            del model, processor
        found[name] = runs
    return found


def metal_matrix(models: list[str], prompts: list[int], generated: int) -> tuple[list[dict[str, Any]],
                                                                               dict[str, Any]]:
    """Peak memory of plain mlx-lm runs, as `mlx_lm.benchmark -p P -g G` measures it (the peak
    since the model was loaded: weights, cache and the run's working set), one record per model
    and prompt length, in docs/metal/published.json's format."""
    import gc
    import platform
    import subprocess
    from datetime import date

    import mlx.core as mx
    import mlx_lm
    from mlx_lm import load, stream_generate

    gpu = bool(mx.is_available(mx.gpu))
    info = dict(mx.device_info(mx.gpu)) if gpu else {}
    chip = str(info.get("device_name") or platform.processor() or platform.machine())
    if platform.system() == "Darwin":
        chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                              text=True).stdout.strip() or chip
    ram_bytes = int(info.get("memory_size") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    records: list[dict[str, Any]] = []
    configs: dict[str, Any] = {}
    for name in models:
        for prompt_tokens in prompts:
            gc.collect()
            mx.clear_cache()
            mx.reset_peak_memory()
            model, tokenizer, config = load(name, return_config=True)
            configs[name] = {"source": f"config.json of {name}", "config": config}
            mx.random.seed(0)
            vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
            prompt = mx.random.randint(0, vocab, (prompt_tokens,)).tolist()
            tokenizer._eos_token_ids = set()  # as mlx_lm.benchmark: never stop early
            response = list(stream_generate(model, tokenizer, prompt, max_tokens=generated))[-1]
            peak = mx.get_peak_memory()
            quant = config.get("quantization")
            records.append({
                "id": f"local/{Path(name).name}-p{prompt_tokens}-g{generated}",
                "source": "https://REPLACE-WITH-THE-LINK-WHERE-THIS-IS-PUBLISHED",
                "quote": f"peak_memory={peak / 1e9:.6f} (mx.get_peak_memory() after stream_generate)",
                "model": name, "quantization_label": (f"q{quant['bits']} g{quant['group_size']}"
                                                      if quant else config.get("torch_dtype", "")),
                "prompt_tokens": prompt_tokens, "generated_tokens": response.generation_tokens,
                "batch_size": 1, "command": f"tools/gpu_check.py --metal {name} --prompt-tokens "
                f"{prompt_tokens} --tokens {generated}", "reported": peak / 1e9, "unit": "GB",
                "reported_bytes": peak, "mac": chip, "ram_gb": round(ram_bytes / 1e9),
                "backend": "metal" if gpu else "cpu", "mlx": mx.__version__,
                "mlx_lm": mlx_lm.__version__, "versions_inferred": False,
                "date": date.today().isoformat(), "current_prefill": True, "use": "verify"})
            print(f"{name} p{prompt_tokens} g{generated}: peak {peak / 1e9:.3f} GB", flush=True)
            del model, tokenizer
    return records, configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--vision", action="store_true", help="also check vision-language runs")
    parser.add_argument("--no-text", action="store_true", help="skip the text-model runs")
    parser.add_argument("--metal", help="comma-separated models to measure as mlx_lm.benchmark does")
    parser.add_argument("--prompt-tokens", default="2048", help="with --metal: prompt lengths, e.g. 512,2048")
    args = parser.parse_args()
    if args.metal:
        records, configs = metal_matrix(args.metal.split(","),
                                        [int(p) for p in args.prompt_tokens.split(",")], args.tokens)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metal_measured.json").write_text(json.dumps(records, indent=1) + "\n")
        (out / "metal_configs.json").write_text(json.dumps(configs, indent=1) + "\n")
        print(f"wrote {out / 'metal_measured.json'} and {out / 'metal_configs.json'}")
        return
    import mlx.core as mx
    import numpy as np

    import unimap

    gpu = bool(mx.is_available(mx.gpu))
    report: dict[str, Any] = {"mlx": mx.__version__, "gpu_available": gpu,
                              "device_info": dict(mx.device_info(mx.gpu)) if gpu else {}}
    machine = unimap.probe()
    report["machine"] = machine.to_dict()
    rows: list[tuple[str, str]] = [("mlx / gpu", f"{report['mlx']} / {gpu}"), ("backend", machine.backend),
                                   *[(f"{d.name} budget", f"{d.budget_bytes} ({d.description}; "
                                      f"unified={d.unified})") for d in machine.devices]]
    with tempfile.TemporaryDirectory() as tmp:
        from tiny_models import stand_in_machine, write_random_model

        split_args: dict[str, Any] = {} if gpu else {"machine": stand_in_machine()}
        if not args.no_text:
            path = write_random_model(Path(tmp) / "llama", CONFIG, dtype="bfloat16")
            whole = run_case(path, args.tokens)
            split = run_case(path, args.tokens, device_map=4, **split_args)
            drift = float(np.abs(whole.pop("_logits") - split.pop("_logits")).max())
            report.update(whole=whole, split=split, split_logit_max_abs_diff=drift)
            for name, case in (("all on one device", whole), ("split 4+4", split)):
                rows += [(f"{name}: tokens/s", f"{case['generation_tps']:.1f}"),
                         (f"{name}: peak / plan", _ratio(case))]
            rows += [("split logits max |diff|", f"{drift:.4f}"),
                     ("split cpu dtype", str(split["cpu_dtype"]))]
        if args.vision:
            report["vision"] = vision_checks(Path(tmp), split_args)
            for family, found in report["vision"].items():
                for name in ("whole", "split"):
                    rows += [(f"{family} {name}: same tokens as mlx-vlm",
                              str(found[name]["tokens"] == found["reference"])),
                             (f"{family} {name}: peak / plan", _ratio(found[name]))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
