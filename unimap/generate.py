"""generate -> tokens: mlx-lm's generation loop under the plan's memory regime.

Drives mlx-lm's `generate_step` directly (its `stream_generate` would raise the wired limit to
the maximum), on the stream that holds the embeddings and head, with the plan's KV settings.
Yields text as it becomes printable and ends with timing and peak-memory figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimap import vlm
from unimap.checks import MAX_TOKENS, check_sampling, is_utf8, short
from unimap.errors import ArgumentTypeError, ConfigError


@dataclass(frozen=True)
class Response:
    text: str  # new text since the previous response
    token: int | None
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory_bytes: int
    predicted_peak_bytes: int | None
    finish_reason: str | None  # None while generating, then "stop" or "length"


class _Detokenizer:
    """Text as it becomes printable: mlx-lm's streaming detokenizer when the tokenizer has one,
    else decoding the tokens so far (fine for the small GGUF vocabularies)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.emitted = tokenizer, ""
        self.tokens: list[int] = []
        self.streaming = getattr(tokenizer, "detokenizer", None)
        if self.streaming is not None:
            self.streaming.reset()

    def add(self, token: int) -> str:
        if self.streaming is not None:
            self.streaming.add_token(token)
            return str(self.streaming.last_segment)
        return self._add(token)

    def finish(self) -> str:
        """Whatever text is still held back (an unfinished word or byte sequence)."""
        if self.streaming is None:
            return ""
        self.streaming.finalize()
        return str(self.streaming.last_segment)

    def _add(self, token: int) -> str:
        self.tokens.append(token)
        text = str(self.tokenizer.decode(self.tokens))
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its last byte
            return ""
        new, self.emitted = text[len(self.emitted):], text
        return new


def encode_prompt(tokenizer: Any, prompt: str | list[int], vocab_size: int | None = None) -> list[int]:
    """Token ids for `prompt` (text, or ids already), each one a token of the vocabulary."""
    if isinstance(prompt, list):
        ids = prompt
    elif not prompt.strip():
        raise ConfigError("the prompt is empty: give some text (--prompt) to continue")
    elif not is_utf8(prompt):
        raise ConfigError("the prompt is not valid UTF-8 text (it holds an undecodable byte); "
                          "give it as UTF-8")
    else:
        bos = getattr(tokenizer, "bos_token", None)
        if hasattr(tokenizer, "bos_token") and hasattr(tokenizer, "_tokenizer"):  # mlx-lm wrapper
            add_special = bos is None or not prompt.startswith(bos)
            ids = list(tokenizer.encode(prompt, add_special_tokens=add_special))
        else:
            ids = list(tokenizer.encode(prompt))
        if not ids:
            raise ConfigError(f"the prompt {short(prompt)} encodes to no tokens with this model's "
                              "tokenizer: give other text")
    if not ids:
        raise ConfigError("the prompt is empty: give some text (--prompt) to continue")
    high = vocab_size if vocab_size is not None else 1 << 31
    bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < high), None)
    if bad is not None or len(ids) > MAX_TOKENS:
        raise ConfigError(f"prompt token {short(bad)} is not a token id of this model's "
                          f"{vocab_size or ''}-token vocabulary" if bad is not None else
                          f"the prompt has {len(ids)} tokens, more than {MAX_TOKENS}")
    return ids


def within_plan(state: Any, prompt_tokens: int, max_tokens: int) -> int:
    """The reply's length within the plan: a prompt the plan has no room for is refused before
    prefill; the reply stops where the planned sequence ends (finish reason "length")."""
    if state is None:
        return max_tokens
    planned: int = state.plan.estimate.sequence_tokens
    if prompt_tokens >= planned:
        raise ConfigError(f"the prompt is {prompt_tokens} tokens, and the plan was made for {planned} "
                          "in all (--max-seq-len, prompt and reply); plan with a longer --max-seq-len, "
                          "or shorten the prompt")
    return min(max_tokens, planned - prompt_tokens)


def vocab_size(model: Any) -> int | None:
    """The rows of the model's token embedding (the first embedding it holds), if it has one."""
    for _, module in model.named_modules():
        if type(module).__name__ in ("Embedding", "QuantizedEmbedding"):
            return int(module.weight.shape[0])
    return None


def quantized_cache(model: Any, bits: int) -> list[Any]:
    """mlx-lm's cache with every growing KVCache quantized from the first token, as the plan
    priced it (mlx-lm's own kv_bits path fills a full-precision cache first and converts it)."""
    from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

    return [QuantizedKVCache(group_size=64, bits=bits) if type(c) is KVCache else c
            for c in make_prompt_cache(model)]


def make_cache(model: Any) -> list[Any]:
    """The cache the plan priced: mlx-lm's, quantized from the first token under --kv-bits
    (for a vision-language model: mlx-vlm's cache of its language model)."""
    from mlx_lm.models.cache import make_prompt_cache

    state = getattr(model, "_unimap", None)
    bits = state.plan.estimate.options.kv_bits if state is not None else None
    if vlm.is_vlm(model):
        from mlx_vlm.models.cache import make_prompt_cache as make_vlm_cache

        if bits:
            raise ConfigError(vlm.NO_KV_BITS)
        return list(make_vlm_cache(model.language_model))
    return quantized_cache(model, bits) if bits else make_prompt_cache(model)


def stream_generate(model: Any, tokenizer: Any, prompt: str | list[int] | list[dict[str, Any]],
                    max_tokens: int = 256,
                    temp: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                    prompt_cache: list[Any] | None = None,
                    images: Sequence[str | Path | Any] | None = None) -> Iterator[Response]:
    """Generate from `prompt`, yielding each piece of text as it is decoded. `prompt_cache`
    (from `make_cache(model)`) is filled in place, to be kept for a later turn or inspected.
    `images` (paths or PIL images) go with the prompt to a vision-language model loaded by
    `unimap.load`; the prompt is then put in the model's chat template with one image placeholder
    per image, or is a conversation (a list of {"role", "content"} messages; `vlm.user_message`
    makes one with image placeholders)."""
    import mlx.core as mx

    check_sampling(max_tokens, temp, top_p, seed)
    if not callable(model):
        raise ArgumentTypeError(f"model must be the model unimap.load returned, not {short(model)}")
    if not (hasattr(tokenizer, "encode") or hasattr(tokenizer, "tokenizer")):
        raise ArgumentTypeError(f"tokenizer must be the tokenizer unimap.load returned, not "
                                f"{short(tokenizer)}")
    if not isinstance(prompt, str | list):
        raise ArgumentTypeError(f"prompt must be text, token ids or a list of messages, not "
                                f"{short(prompt)}")
    if seed is not None:
        mx.random.seed(seed)
    state = getattr(model, "_unimap", None)
    cache = prompt_cache if prompt_cache is not None else make_cache(model)
    if vlm.is_vlm(model):
        if not prompt or isinstance(prompt, str) and not prompt.strip() or isinstance(prompt[0], int):
            raise ConfigError("the prompt is empty: give some text (--prompt) to go with the images")
        steps, n_prompt, eos, max_tokens = _vlm_steps(model, tokenizer, prompt, list(images or ()),
                                                      max_tokens, temp, top_p, cache)
    else:
        name = state.plan.model if state is not None else "this model"
        if images:
            raise vlm.text_only(name)
        if prompt and not isinstance(prompt, str) and isinstance(prompt[0], dict):
            raise ConfigError(f"{name} is a text-only model: give it text (the conversation in its "
                              "tokenizer's chat template) or token ids, not a list of messages")
        steps, n_prompt, eos, max_tokens = _text_steps(model, tokenizer, prompt, max_tokens, temp,  # type: ignore[arg-type]
                                                       top_p, cache)
    detok = _Detokenizer(tokenizer)
    predicted = state.plan.peak_bytes if state is not None else None
    start = time.perf_counter()
    prompt_tps, first_at, count = 0.0, start, 0
    for count, (step_token, _) in enumerate(steps, start=1):
        token = int(step_token)
        if count == 1:
            first_at = time.perf_counter()
            prompt_tps = n_prompt / max(first_at - start, 1e-9)
        done = token in eos
        text = "" if done else detok.add(token)
        rate = (count - 1) / max(time.perf_counter() - first_at, 1e-9) if count > 1 else 0.0
        reason = "stop" if done else "length" if count == max_tokens else None
        if reason is not None:
            text += detok.finish()
        yield Response(text, token, n_prompt, prompt_tps, count, rate, mx.get_peak_memory(),
                       predicted, reason)
        if done:
            break


def _text_steps(model: Any, tokenizer: Any, prompt: str | list[int], max_tokens: int, temp: float,
                top_p: float, cache: list[Any]) -> tuple[Iterator[Any], int, set[int], int]:
    """mlx-lm's generate_step on the stream that holds the embeddings and head."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    ids = encode_prompt(tokenizer, prompt, vocab_size(model))
    state = getattr(model, "_unimap", None)
    max_tokens = within_plan(state, len(ids), max_tokens)
    options: dict[str, Any] = {"prompt_cache": cache}
    if state is not None:
        options["stream"] = state.parts_stream
    eos = set(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    steps = generate_step(mx.array(ids), model, max_tokens=max_tokens,
                          sampler=make_sampler(temp, top_p), **options)
    return steps, len(ids), eos, max_tokens


def _vlm_steps(model: Any, processor: Any, prompt: Any, images: list[Any], max_tokens: int,
               temp: float, top_p: float, cache: list[Any]) -> tuple[Iterator[Any], int, set[int], int]:
    """mlx-vlm's generate_step (vision tower, projector, then the language model) with the
    images checked against the plan, on the stream that holds the embeddings, head and vision
    tower, in prefill chunks of the size the plan priced. mlx-vlm's own stream_generate is not
    used: it would raise the wired limit to the maximum."""
    import warnings

    state = getattr(model, "_unimap", None)
    options = state.plan.estimate.options if state is not None else None
    checked = vlm.read_images(images, options.max_num_images if options else len(images),
                              options.max_image_length if options else 1 << 30)
    for note in checked.notes:
        warnings.warn(note, stacklevel=3)
    inputs = vlm.prepare(model, processor, prompt, checked.images)
    max_tokens = within_plan(state, inputs.num_tokens, max_tokens)
    step_tokens = options.prefill_step_tokens if options else None
    stream = state.parts_stream if state is not None else None
    return (_on_stream(stream, inputs, model, max_tokens, temp, top_p, cache, step_tokens),
            inputs.num_tokens, vlm.eos_ids(model, processor), max_tokens)


def _on_stream(stream: Any, inputs: vlm.Inputs, model: Any, max_tokens: int, temp: float,
               top_p: float, cache: list[Any], step_tokens: int | None) -> Iterator[Any]:
    """mlx-vlm's generate_step with its generation stream swapped for `stream` while it runs."""
    from mlx_vlm.generate import ar

    kept = ar.generation_stream
    if stream is not None:
        ar.generation_stream = stream
    try:
        yield from ar.generate_step(inputs.input_ids, model, inputs.pixel_values, inputs.mask,
                                    max_tokens=max_tokens, temperature=temp, top_p=top_p,
                                    prompt_cache=cache, prefill_step_size=step_tokens,
                                    **inputs.extra)
    finally:
        ar.generation_stream = kept


def generate(model: Any, tokenizer: Any, prompt: str | list[int], **kwargs: Any) -> str:
    """The whole continuation of `prompt` as one string (see stream_generate for the options)."""
    return "".join(r.text for r in stream_generate(model, tokenizer, prompt, **kwargs))
