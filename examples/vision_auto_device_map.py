"""Plan, load and generate from a vision-language model with automatic device mapping.

    pip install 'unimap[vision]'
    python examples/vision_auto_device_map.py --image photo.jpg [--model MODEL] [--prompt TEXT]

MODEL is a folder or a Hugging Face repo id of an mlx-vlm model (Qwen2-VL, Qwen2.5-VL, Gemma 3);
by default mlx-community/Qwen2-VL-2B-Instruct-4bit, which mlx-vlm downloads. The plan, with the
vision tower placed before any decoder layer and room for the images, is printed before anything
is loaded; the run's measured peak is printed beside the plan's prediction at the end.
"""

from __future__ import annotations

import argparse

import unimap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlx-community/Qwen2-VL-2B-Instruct-4bit")
    parser.add_argument("--image", action="append", required=True, help="repeat for more images")
    parser.add_argument("--prompt", default="Describe this image.")
    parser.add_argument("--max-image-length", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=100)
    args = parser.parse_args()
    mapping = {"max_seq_len": 2048, "max_num_images": len(args.image),
               "max_image_length": args.max_image_length}
    plan = unimap.plan(args.model, **mapping)  # device_map="auto" is the default
    print(plan.explain())
    if not plan.fits:
        raise SystemExit(3)
    model, processor, plan = unimap.load(args.model, planned=plan)
    print(f"vision tower on {plan.vision_device}, {plan.estimate.image_tokens} image tokens planned")
    for response in unimap.stream_generate(model, processor, args.prompt, images=args.image,
                                           max_tokens=args.max_tokens):
        print(response.text, end="", flush=True)
    print(f"\n[{response.generation_tps:.0f} tokens/s; measured peak {response.peak_memory_bytes} "
          f"bytes, predicted peak {response.predicted_peak_bytes} bytes]")


if __name__ == "__main__":
    main()
