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
    model._unimap.wired.release()
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
            model._unimap.wired.release()
            del model, processor
        found[name] = runs
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--vision", action="store_true", help="also check vision-language runs")
    parser.add_argument("--no-text", action="store_true", help="skip the text-model runs")
    args = parser.parse_args()
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
