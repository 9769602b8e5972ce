"""How fast the GGUF `llama` (SentencePiece-style) tokenizer is: encoding English text of growing
length, streaming decode (mlx-lm's SPMStreamingDetokenizer, one token at a time) of growing token
counts, and building the tokenizer, for stories260K and for a synthetic 256k-piece vocabulary
(recovering its merges from the scores is the part that grows with the vocabulary).

Usage: python tools/bench_tokenizer.py [--repeats N] [--model PATH]
Prints a Markdown table (best of N). Time per character and per token staying flat as the input
grows is what linear means. (mlx-lm's detokenizer appends each segment to one str attribute, a
copy of the text so far: past some 16k tokens the time per token grows with the text.)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unimap.gguf import (  # noqa: E402
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    GgufFile,
    read_gguf,
    spm_merges,
    spm_tokenizer,
    spm_vocab,
)

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"
SENTENCES = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her red ball.",
    "One day, she saw a big dog sitting under an old tree.",
    "The dog looked sad, because it could not find its way home.",
    'Lily said, "Don\'t worry, I will help you find your family!"',
    "They walked along the river, past the bakery and the small school.",
    "A kind man with a blue hat pointed to a house at the end of the street.",
    "The dog wagged its tail and ran to the door, where a boy was waiting.",
    "Everyone smiled, and Lily went home happy, thinking about her new friend.",
]


def english(chars: int, seed: int = 0) -> str:
    """`chars` characters of plain English: the sentences above in a shuffled order, in paragraphs."""
    rng, parts, size = random.Random(seed), [], 0
    while size < chars:
        sentence = rng.choice(SENTENCES) + ("\n" if rng.random() < 0.2 else " ")
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)[:chars]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def stream(tokenizer: Any, ids: list[int]) -> str:
    detokenizer = tokenizer.detokenizer
    for token in ids:
        detokenizer.add_token(token)
        detokenizer.last_segment  # noqa: B018 (what a generation loop reads after every token)
    detokenizer.finalize()
    return str(detokenizer.text)


def synthetic_vocab(size: int, seed: int = 0) -> GgufFile:
    """A `llama` vocabulary of `size` pieces grown as BPE training grows one: control and byte
    pieces, the characters, then pieces joined from two earlier ones (short ones more often; at
    most 16 characters; "▁" only at the start), each scoring below the pieces it joins."""
    rng = random.Random(seed)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [UNKNOWN, CONTROL, CONTROL, *[BYTE] * 256]
    chars = ["▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-"]
    pieces, seen = list(chars), set(chars)
    while len(pieces) < size - len(tokens):
        left = pieces[int(len(pieces) * rng.random() ** 3)]
        right = pieces[int(len(pieces) * rng.random() ** 3)]
        piece = left + right
        if len(piece) <= 16 and "▁" not in piece[1:] and piece not in seen:
            pieces.append(piece)
            seen.add(piece)
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    metadata = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens + pieces,
                "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types + [NORMAL] * len(pieces)}
    return GgufFile(Path(f"synthetic-{size}.gguf"), 3, metadata, ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=STORIES)
    args = parser.parse_args()
    import mlx_lm
    import tokenizers

    print(f"machine: {platform.platform()}, {cpu_name()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, tokenizers "
          f"{tokenizers.__version__}, mlx-lm {mlx_lm.__version__}; best of {args.repeats}")
    gguf = read_gguf(args.model)
    tokenizer = spm_tokenizer(gguf)
    print(f"\n{args.model.name}: {len(tokenizer)} tokens\n")
    print("| work | size | result | time | per unit |\n|---|---|---|---|---|")
    for chars in (1024, 4096, 16384, 65536):
        text = english(chars)
        seconds, ids = best(lambda t=text: tokenizer.encode(t), args.repeats)
        print(f"| encode | {chars} chars | {len(ids)} tokens | {seconds * 1e3:.2f} ms | "
              f"{seconds / chars * 1e6:.2f} µs/char |")
    ids = tokenizer.encode(english(1 << 20), add_special_tokens=False)
    for count in (1024, 4096, 16384, 65536, 262144):
        seconds, text = best(lambda n=count: stream(tokenizer, ids[:n]), args.repeats)
        assert text == " " + tokenizer.decode(ids[:count])  # the decoder strips the first space
        print(f"| stream decode | {count} tokens | {len(text)} chars | {seconds * 1e3:.2f} ms | "
              f"{seconds / count * 1e6:.2f} µs/token |")
    seconds, _ = best(lambda: spm_tokenizer(gguf), args.repeats)
    print(f"| build tokenizer | {len(tokenizer)} tokens | | {seconds * 1e3:.2f} ms | |")
    big = synthetic_vocab(256_000)
    vocab = spm_vocab(big)
    seconds, merges = best(lambda: spm_merges(vocab), args.repeats)
    mean = sum(map(len, vocab.tokens)) / len(vocab.tokens)
    print(f"| recover merges (synthetic) | {len(vocab.tokens)} tokens of {mean:.1f} chars | "
          f"{len(merges)} merges | {seconds * 1e3:.0f} ms | |")
    seconds, _ = best(lambda: spm_vocab(big), args.repeats)
    print(f"| check vocabulary (synthetic) | {len(vocab.tokens)} tokens | | {seconds * 1e3:.0f} ms | |")
    seconds, _ = best(lambda: spm_tokenizer(big), args.repeats)
    print(f"| build tokenizer (synthetic) | {len(vocab.tokens)} tokens | | {seconds * 1e3:.0f} ms | |")


if __name__ == "__main__":
    main()
