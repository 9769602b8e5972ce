"""Plan, load and generate with automatic device mapping, from Python.

    python examples/text_auto_device_map.py [MODEL] [PROMPT]

MODEL is a folder, a .gguf file or a Hugging Face repo id; by default the TinyStories model that
sits beside the project in ../shared. The plan is printed before anything is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import unimap

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT)
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    plan = unimap.plan(model, max_seq_len=1024)  # device_map="auto" is the default
    print(f"plan: fits={plan.fits}, all on the GPU={plan.all_on_gpu}, "
          f"devices={[(d.name, len(d.layers)) for d in plan.devices]}, peak={plan.peak_bytes} bytes")
    if not plan.fits:
        print(plan.explain())
        raise SystemExit(3)
    model_obj, tokenizer, plan = unimap.load(model, max_seq_len=1024)
    print(prompt, end="", flush=True)
    for response in unimap.stream_generate(model_obj, tokenizer, prompt, max_tokens=120):
        print(response.text, end="", flush=True)
    print(f"\n[{response.generation_tps:.0f} tokens/s, peak {response.peak_memory_bytes} bytes, "
          f"plan {response.predicted_peak_bytes} bytes]")


if __name__ == "__main__":
    main()
