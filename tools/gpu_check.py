"""The checks only a GPU machine can make, as one short script (see ../shared/GPU.md).

    python tools/gpu_check.py [--out DIR] [--tokens 128]

Prints a short table last and writes full results to DIR/gpu_check.json ($OUT when set):
- what MLX and the probe see (device_info, torch's is_integrated, budgets and their sources);
- a random bf16 llama (2048 wide, 8 layers) planned, loaded and run all on the GPU: tokens/s and
  measured peak against the plan's prediction;
- the same model split 4 GPU + 4 CPU layers: tokens/s, peak against the plan, and how far the
  logits move (the CPU part computes in float32 on x86-64).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    import mlx.core as mx
    import numpy as np

    import unimap

    gpu = bool(mx.is_available(mx.gpu))
    report: dict[str, Any] = {"mlx": mx.__version__, "gpu_available": gpu,
                              "device_info": dict(mx.device_info(mx.gpu)) if gpu else {}}
    machine = unimap.probe()
    report["machine"] = machine.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        from tiny_models import stand_in_machine, write_random_model

        path = write_random_model(Path(tmp), CONFIG, dtype="bfloat16")
        whole = run_case(path, args.tokens)
        split_args: dict[str, Any] = {"device_map": 4}
        if not gpu:
            split_args["machine"] = stand_in_machine()  # the CPU build has no GPU to split with
        split = run_case(path, args.tokens, **split_args)
    drift = float(np.abs(whole.pop("_logits") - split.pop("_logits")).max())
    report.update(whole=whole, split=split, split_logit_max_abs_diff=drift)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    rows = [("mlx / gpu", f"{report['mlx']} / {gpu}"),
            ("backend", machine.backend),
            *[(f"{d.name} budget", f"{d.budget_bytes} ({d.description}; unified={d.unified})")
              for d in machine.devices]]
    for name, case in (("all on one device", whole), ("split 4+4", split)):
        rows += [(f"{name}: tokens/s", f"{case['generation_tps']:.1f}"),
                 (f"{name}: peak / plan", f"{case['peak_bytes']} / {case['predicted_peak_bytes']} "
                                          f"({case['peak_bytes'] / case['predicted_peak_bytes']:.3f})")]
    rows += [("split logits max |diff|", f"{drift:.4f}"), ("split cpu dtype", str(split["cpu_dtype"]))]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
