"""Chat-turn latency: a conversation whose KV cache is kept between turns (unimap.Chat) against
prefilling the whole conversation each turn (what `unimap run -i` did before, and what a
stateless server does).

Usage: python tools/bench_chat.py [--turns 6] [--words 60] [--rounds 3]
Writes a random llama checkpoint (real safetensors written by MLX, with a chat template) to a
temporary folder. For each turn it records the tokens prefilled and the time to the first token
of the reply, best of --rounds; prints Markdown for docs/BENCHMARKS.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_runtime  # noqa: E402

BENCH = {**bench_runtime.BENCH, "max_position_embeddings": 8192}  # tools/bench_runtime.py's llama
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
REPLY_TOKENS = 32


def write_model(folder: Path) -> Path:
    from tiny_models import write_random_model

    path = write_random_model(folder / "llama", BENCH, dtype="float32")
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    return path


def first_token(stream: object) -> tuple[float, int, list[object]]:
    """Seconds to the first response, the tokens prefilled, and every response."""
    start = time.perf_counter()
    responses = []
    first = 0.0
    for response in stream:  # type: ignore[attr-defined]
        if not responses:
            first = time.perf_counter() - start
        responses.append(response)
    return first, responses[0].prompt_tokens, responses  # type: ignore[attr-defined]


def conversation(path: Path, turns: int, words: int, kept: bool) -> list[tuple[int, int, float]]:
    """(turn, tokens prefilled, seconds to first token) for each turn."""
    import unimap
    from unimap.generate import make_cache, stream_generate

    model, tokenizer, _ = unimap.load(path, max_seq_len=8192)  # this machine, as a user runs it
    chat = unimap.Chat(model, tokenizer, system_prompt=" ".join(f"w{i}" for i in range(20)))
    rows = []
    for turn in range(turns):
        message = " ".join(f"w{(turn * 31 + i) % 190 + 3}" for i in range(words))
        if kept:
            seconds, prefilled, _ = first_token(chat.send(message, max_tokens=REPLY_TOKENS))
        else:  # the whole conversation from an empty cache, then recorded as the chat would
            asked = [*chat.messages, {"role": "user", "content": message}]
            ids = chat.prompt_ids(asked)
            seconds, prefilled, responses = first_token(stream_generate(
                model, tokenizer, ids, REPLY_TOKENS, prompt_cache=make_cache(model)))
            reply = "".join(r.text for r in responses)  # type: ignore[attr-defined]
            chat.messages = [*asked, {"role": "assistant", "content": reply.strip()}]
        rows.append((turn + 1, prefilled, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--words", type=int, default=60, help="tokens in each user message")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import mlx.core as mx

    with tempfile.TemporaryDirectory() as tmp:
        path = write_model(Path(tmp))
        best: dict[bool, list[tuple[int, int, float]]] = {}
        for _ in range(args.rounds):
            for kept in (True, False):
                rows = conversation(path, args.turns, args.words, kept)
                old = best.get(kept)
                best[kept] = rows if old is None else [
                    (t, n, min(s, o[2])) for (t, n, s), o in zip(rows, old, strict=True)]
    print(f"machine: {platform.platform()} ({platform.machine()}, {platform.processor() or 'cpu'}); "
          f"MLX {mx.__version__} {mx.default_device()}; random llama {BENCH['hidden_size']}-wide, "
          f"{BENCH['num_hidden_layers']} layers, float32; {args.words}-token messages, "
          f"{REPLY_TOKENS}-token replies; best of {args.rounds}\n")
    print("| turn | kept cache: prefilled | time to first token | whole conversation: prefilled "
          "| time to first token | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for (turn, n_kept, s_kept), (_, n_all, s_all) in zip(best[True], best[False], strict=True):
        print(f"| {turn} | {n_kept} | {s_kept * 1000:.0f} ms | {n_all} | {s_all * 1000:.0f} ms | "
              f"{s_all / s_kept:.1f}x |")


if __name__ == "__main__":
    main()
