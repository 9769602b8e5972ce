"""generate -> tokens: mlx-lm's generation loop under the plan's memory regime.

Drives mlx-lm's `generate_step` directly (its `stream_generate` would raise the wired limit to
the maximum), on the stream that holds the embeddings and head, with the plan's KV settings.
Yields text as it becomes printable and ends with timing and peak-memory figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from unimap import vlm
from unimap.checks import MAX_TOKENS, check_sampling, foreign, is_utf8, short
from unimap.errors import ArgumentTypeError, ConfigError, ModelError, UnimapError


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
    """Text as it becomes printable: mlx-lm's streaming detokenizer when the tokenizer has one
    (every tokenizer unimap.load returns does), else decoding the tokens of the current line
    (each line is decoded afresh only until it ends, so the work stays linear in the reply)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.emitted = tokenizer, ""  # emitted: text of the current line shown
        self.tokens: list[int] = []  # tokens of the current line
        self.streaming = getattr(tokenizer, "detokenizer", None)
        if self.streaming is not None:
            self.streaming.reset()

    def add(self, token: int) -> str:
        if self.streaming is not None:
            self.streaming.add_token(token)
            return str(self.streaming.last_segment)
        self.tokens.append(token)
        text = str(self.tokenizer.decode(self.tokens))
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its last byte
            return ""
        new, self.emitted = text[len(self.emitted):], text
        if text.endswith("\n"):  # the line is done: the next one is decoded on its own
            self.tokens, self.emitted = [], ""
        return new

    def finish(self) -> str:
        """Whatever text is still held back (an unfinished word or byte sequence)."""
        if self.streaming is not None:
            self.streaming.finalize()
            return str(self.streaming.last_segment)
        text = str(self.tokenizer.decode(self.tokens)) if self.tokens else ""
        new, self.tokens, self.emitted = text[len(self.emitted):], [], ""
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


class ContextFullError(ConfigError):
    """The plan has no room for this prompt (with what the cache already holds)."""


def within_plan(state: Any, prompt_tokens: int, max_tokens: int, held_tokens: int = 0) -> int:
    """The reply's length within the plan: a prompt the plan has no room for (counting the
    `held_tokens` a kept cache already holds) is refused before prefill; the reply stops where
    the planned sequence ends (finish reason "length")."""
    if state is None:
        return max_tokens
    planned: int = state.plan.estimate.sequence_tokens
    if held_tokens + prompt_tokens >= planned:
        if held_tokens:
            raise ContextFullError(
                f"the conversation is full: it holds {held_tokens} tokens and the new message "
                f"{prompt_tokens}, and the plan was made for {planned} in all (--max-seq-len); "
                "start over (/clear in a chat), or plan a longer --max-seq-len")
        raise ContextFullError(
            f"the prompt is {prompt_tokens} tokens, and the plan was made for {planned} in all "
            f"(--max-seq-len, prompt and reply); {_longer(state, prompt_tokens)}")
    return min(max_tokens, planned - held_tokens - prompt_tokens)


def _longer(state: Any, prompt_tokens: int) -> str:
    """The ways out of a prompt the plan has no room for, priced on the plan's machine."""
    est = state.plan.estimate
    trained = est.trained_context
    needed = prompt_tokens + 1  # room for at least one token of reply
    ways = state.plan.room_for(needed)
    if trained is not None and prompt_tokens >= trained and not ways:
        return f"the model was trained for {trained} tokens, so shorten the prompt below that"
    if not ways:
        return "no --max-seq-len or --max-kv-size holds it on this machine: shorten the prompt"
    return "load it again with " + ", or ".join(ways) + "; or shorten the prompt"


def held_tokens(cache: Sequence[Any]) -> int:
    """Tokens a prompt cache already holds (its layers' largest offset)."""
    return max((int(getattr(c, "offset", 0) or 0) for c in cache), default=0)


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
    """The cache the plan priced: mlx-lm's, quantized from the first token under --kv-bits, a
    rotating window under --max-kv-size (for a vision-language model: mlx-vlm's cache of its
    language model)."""
    from mlx_lm.models.cache import make_prompt_cache

    state = getattr(model, "_unimap", None)
    options = state.plan.estimate.options if state is not None else None
    bits = options.kv_bits if options is not None else None
    window = options.max_kv_size if options is not None else None
    if vlm.is_vlm(model):
        from mlx_vlm.models.cache import make_prompt_cache as make_vlm_cache

        if bits:
            raise ConfigError(vlm.NO_KV_BITS)
        if window:
            raise ConfigError(vlm.NO_MAX_KV_SIZE)
        return list(make_vlm_cache(model.language_model))
    if window:
        return rotating_cache(model, window)
    return unpinned(quantized_cache(model, bits) if bits else make_prompt_cache(model))


def unpinned(caches: list[Any]) -> list[Any]:
    """`caches` with every array cache (mlx-lm's ArraysCache: convolution and SSM state) keeping
    a copy of what it is given. mamba2, nemotron_h and falcon_h1 store their convolution state as
    the last rows of the chunk's input (a slice, which shares the whole input's buffer), so each
    such layer would hold its whole prefill chunk's input until the next step: all layers' at
    once at the end of prefill (measured: the working set grew with depth, 0.67 of the plan for
    an 8-layer falcon_h1 twin). Values are unchanged."""
    from mlx_lm.models.cache import ArraysCache

    def swap(cache: Any) -> None:
        for inner in getattr(cache, "caches", ()) or ():  # CacheList
            swap(inner)
        if isinstance(cache, ArraysCache):
            cache.__class__ = _unpinned_class(type(cache))

    for cache in caches:
        swap(cache)
    return caches


def keep_caches_unpinned(model: Any) -> None:
    """Make `model.make_cache()` (what mlx-lm's make_prompt_cache calls, so what its own
    generate_step and stream_generate fill) return unpinned caches, for a model whose class
    makes its own caches (the only ones with array caches): a user who loads through unimap and
    generates with plain mlx-lm stays within the plan too. Measured: rwkv7's and mamba's 8-layer
    twins at 252 tokens through mlx-lm's stream_generate peaked at 1/0.955 and 1/0.975 of their
    plans with the caches their classes make (a convolution or token-shift state holds each
    layer's chunk input). A vision-language model's language model is swapped alike. The class
    is swapped (no closure over the model: a reference cycle would keep a model let go of, and
    its limits, alive until Python's collector ran). Values are unchanged."""
    from unimap.runtime import swapped_class

    language = getattr(model, "language_model", None)
    for target in (model, language) if language is not None and language is not model else (model,):
        if getattr(type(target), "make_cache", None) is not None:
            target.__class__ = swapped_class(type(target), "unpinned_caches", _make_unpinned_caches)


def _make_unpinned_caches(cls: type) -> type:
    class UnpinnedCaches(cls):  # type: ignore[misc]
        def make_cache(self) -> list[Any]:
            return unpinned(list(super().make_cache()))

    return UnpinnedCaches


def _unpinned_class(cls: type) -> type:
    from unimap.runtime import swapped_class

    return swapped_class(cls, "unpinned", _make_unpinned)


def _make_unpinned(cls: type) -> type:
    import mlx.core as mx

    class Unpinned(cls):  # type: ignore[misc]
        def __setitem__(self, idx: Any, value: Any) -> None:
            super().__setitem__(idx, mx.contiguous(value) if isinstance(value, mx.array) else value)

    return Unpinned


def rotating_cache(model: Any, window: int) -> list[Any]:
    """A rotating cache of `window` tokens for every layer (keeping the first KV_KEEP_TOKENS),
    as mlx-lm's --max-kv-size makes it; the plan only allows it where every cache is plain."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

    from unimap.estimate import KV_KEEP_TOKENS

    made = make_prompt_cache(model)
    if any(type(c) is not KVCache for c in made):
        raise ConfigError("--max-kv-size: this model makes its own caches, which a rotating window "
                          "cannot replace; drop --max-kv-size")
    return [RotatingKVCache(max_size=window, keep=KV_KEEP_TOKENS)  # type: ignore[no-untyped-call]
            for _ in made]


def stream_generate(model: Any, tokenizer: Any, prompt: str | list[int] | list[dict[str, Any]],
                    max_tokens: int = 256,
                    temp: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                    prompt_cache: list[Any] | None = None,
                    images: Sequence[str | Path | Any] | None = None, *,
                    top_k: int = 0, min_p: float = 0.0, xtc_probability: float = 0.0,
                    xtc_threshold: float = 0.1, repetition_penalty: float | None = None,
                    repetition_context_size: int = 20) -> Iterator[Response]:
    """Generate from `prompt`, yielding each piece of text as it is decoded. Sampling takes
    mlx-lm's settings (its `make_sampler` and `make_logits_processors`), checked first.
    `prompt_cache` (from `make_cache(model)`) is filled in place, to be kept for a later turn:
    what it already holds counts against the plan, and only `prompt` is prefilled (`Chat` does
    this for a conversation). `images` (paths or PIL images) go with the prompt to a
    vision-language model loaded by `unimap.load`; the prompt is then put in the model's chat
    template with one image placeholder per image, or is a conversation (a list of
    {"role", "content"} messages; `vlm.user_message` makes one with image placeholders)."""
    import mlx.core as mx

    sampling: dict[str, Any] = {"top_k": top_k, "min_p": min_p, "xtc_probability": xtc_probability,
                "xtc_threshold": xtc_threshold, "repetition_penalty": repetition_penalty,
                "repetition_context_size": repetition_context_size}
    check_sampling(max_tokens, temp, top_p, seed, **sampling)
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
    sampler, processors = _sampling(tokenizer, temp, top_p, **sampling)
    if vlm.is_vlm(model):
        if not prompt or isinstance(prompt, str) and not prompt.strip() or isinstance(prompt[0], int):
            raise ConfigError("the prompt is empty: give some text (--prompt) to go with the images")
        steps, n_prompt, eos, max_tokens = _vlm_steps(model, tokenizer, prompt, list(images or ()),
                                                      max_tokens, sampler, processors, cache)
    else:
        name = state.plan.model if state is not None else "this model"
        if images:
            raise vlm.text_only(name)
        if prompt and not isinstance(prompt, str) and isinstance(prompt[0], dict):
            raise ConfigError(f"{name} is a text-only model: give it text (the conversation in its "
                              "tokenizer's chat template) or token ids, not a list of messages")
        steps, n_prompt, eos, max_tokens = _text_steps(model, tokenizer, prompt, max_tokens,  # type: ignore[arg-type]
                                                       sampler, processors, cache)
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
        if reason is not None:  # as mlx-lm: never resume the steps (it would wait for one more)
            break


def _sampling(tokenizer: Any, temp: float, top_p: float, top_k: int, min_p: float,
              xtc_probability: float, xtc_threshold: float, repetition_penalty: float | None,
              repetition_context_size: int) -> tuple[Any, list[Any]]:
    """mlx-lm's sampler and logits processors, as mlx_lm.generate makes them (XTC never drops a
    newline or an end-of-sequence token)."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    special: list[int] = []
    if xtc_probability > 0:
        special = list(_eos_ids(tokenizer)) + list(_encode_plain(tokenizer, "\n"))
    sampler = make_sampler(temp, top_p, min_p, 1, top_k=top_k, xtc_probability=xtc_probability,
                           xtc_threshold=xtc_threshold, xtc_special_tokens=special)
    return sampler, make_logits_processors(None, repetition_penalty, repetition_context_size)


def _eos_ids(tokenizer: Any) -> set[int]:
    """The tokens that end a reply: mlx-lm's eos_token_ids, else the tokenizer's (or its inner
    tokenizer's, for mlx-vlm's processor) eos_token_id."""
    inner = getattr(tokenizer, "tokenizer", None)
    found: set[int] = set()
    for source in (tokenizer, inner):
        for name in ("eos_token_ids", "eos_token_id"):
            value = getattr(source, name, None)
            values = value if isinstance(value, list | tuple | set) else [value]
            found.update(int(i) for i in values if isinstance(i, int) and not isinstance(i, bool))
        if found:
            return found
    return found


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """`text`'s tokens without a BOS."""
    encoder = tokenizer if hasattr(tokenizer, "encode") else getattr(tokenizer, "tokenizer", None)
    if encoder is None:
        return []
    try:
        return list(encoder.encode(text, add_special_tokens=False))
    except TypeError:
        return list(encoder.encode(text))


def _text_steps(model: Any, tokenizer: Any, prompt: str | list[int], max_tokens: int, sampler: Any,
                processors: list[Any], cache: list[Any]) -> tuple[Iterator[Any], int, set[int], int]:
    """mlx-lm's generate_step on the stream that holds the embeddings and head."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    ids = encode_prompt(tokenizer, prompt, vocab_size(model))
    state = getattr(model, "_unimap", None)
    max_tokens = within_plan(state, len(ids), max_tokens, held_tokens(cache))
    options: dict[str, Any] = {"prompt_cache": cache}
    if state is not None:  # the prefill step the plan priced, and its stream where it placed
        options["prefill_step_size"] = state.plan.estimate.options.prefill_chunk_tokens
        if state.placement.pinned:  # otherwise nothing moved: mlx-lm's own generation stream
            options["stream"] = state.parts_stream
    steps = generate_step(mx.array(ids), model, max_tokens=max_tokens, sampler=sampler,
                          logits_processors=processors, **options)
    return steps, len(ids), _eos_ids(tokenizer), max_tokens


def _vlm_steps(model: Any, processor: Any, prompt: Any, images: list[Any], max_tokens: int,
               sampler: Any, processors: list[Any],
               cache: list[Any]) -> tuple[Iterator[Any], int, set[int], int]:
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
    max_tokens = within_plan(state, inputs.num_tokens, max_tokens, held_tokens(cache))
    step_tokens = options.prefill_chunk_tokens if options else None
    stream = state.parts_stream if state is not None else None
    return (_on_stream(stream, inputs, model, max_tokens, sampler, processors, cache, step_tokens),
            inputs.num_tokens, vlm.eos_ids(model, processor), max_tokens)


def _on_stream(stream: Any, inputs: vlm.Inputs, model: Any, max_tokens: int, sampler: Any,
               processors: list[Any], cache: list[Any], step_tokens: int | None) -> Iterator[Any]:
    """mlx-vlm's generate_step with its generation stream swapped for `stream` while it runs."""
    from mlx_vlm.generate import ar

    kept = ar.generation_stream
    if stream is not None:
        ar.generation_stream = stream
    try:
        steps = ar.generate_step(inputs.input_ids, model, inputs.pixel_values, inputs.mask,
                                 max_tokens=max_tokens, sampler=sampler,
                                 logits_processors=processors, prompt_cache=cache,
                                 prefill_step_size=step_tokens, **inputs.extra)
        try:  # the prefill: the images through the tower into the prompt's image tokens
            first = next(steps)
        except StopIteration:
            return
        except UnimapError:  # unimap's own (a ConfigError is a ValueError too): as it is
            raise
        except (ValueError, TypeError) as exc:
            if isinstance(exc, TypeError) and inputs.pixel_values is None:
                where = _mlx_vlm_frame(exc)
                if where is None:
                    raise  # not the images' path, nor mlx-vlm's code: a bug to see whole
                # mlx-vlm's own model code failing on a text prompt (ZAYA1-VL's language model
                # is called without its input ids): said in a line, not mlx-vlm's traceback
                raise ModelError(f"mlx-vlm's model failed on this text prompt ({foreign(exc)}), "
                                 f"in mlx-vlm's own code ({where}), not in unimap's plan; check "
                                 "whether plain mlx-vlm generates with the model, and update "
                                 "mlx-vlm or report it there") from None
            # a TypeError with images: a config that names no image token (Pixtral's None)
            with_images = " and its images" if inputs.pixel_values is not None else ""
            raise ModelError(f"mlx-vlm's model cannot take this prompt{with_images} "
                             f"({foreign(exc)}): what the model's processor made does not fit "
                             "the model (image tokens, patch shapes); check that the checkpoint's "
                             "processor files are the published model's") from None
        yield first
        yield from steps
    finally:
        ar.generation_stream = kept


def _mlx_vlm_frame(exc: BaseException) -> str | None:
    """Where in mlx-vlm's package `exc` was raised ("generate/dispatch.py:1268"), or None when
    its innermost frame is not mlx-vlm's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return None
    path = Path(tb.tb_frame.f_code.co_filename)
    if "mlx_vlm" not in path.parts:
        return None
    inside = path.parts[path.parts.index("mlx_vlm") + 1:]
    return f"{'/'.join(inside)}:{tb.tb_lineno}"


def generate(model: Any, tokenizer: Any, prompt: str | list[int], **kwargs: Any) -> str:
    """The whole continuation of `prompt` as one string (see stream_generate for the options)."""
    return "".join(r.text for r in stream_generate(model, tokenizer, prompt, **kwargs))


# ---------------------------------------------------------------- conversations

# A model without a chat template gets this plain format: every turn kept, the reply ends where
# the model starts the next "User:" line (documented in README "Chat").
PLAIN_USER, PLAIN_ASSISTANT = "User:", "Assistant:"
PLAIN_STOP = "\n" + PLAIN_USER


def plain_conversation(messages: Sequence[dict[str, str]]) -> str:
    """The conversation as plain text: the system prompt, then "User: ..." and "Assistant: ..."
    turns, ending with "Assistant:" for the reply to follow."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(f"{PLAIN_USER} {m['content']}\n{PLAIN_ASSISTANT}")
        else:
            parts.append(f" {m['content']}\n\n")
    return "".join(parts)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "has_chat_template", False)
                or getattr(tokenizer, "chat_template", None))


def conversation_ids(tokenizer: Any, messages: Sequence[dict[str, str]], templated: bool) -> list[int]:
    """A conversation's tokens, ready for the reply: through the tokenizer's chat template, or
    (`templated` False) as `plain_conversation` lays it out."""
    if templated:
        text = str(tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                 add_generation_prompt=True))
        return _encode_plain(tokenizer, text)
    return encode_prompt(tokenizer, plain_conversation(messages))


class Chat:
    """A conversation with a model loaded by `unimap.load` whose KV cache is kept between turns:
    each message prefills only the tokens the cache does not hold yet, within the plan.

    `send(message)` yields Responses like `stream_generate` (their `prompt_tokens` are the
    tokens prefilled for that turn); `clear()` starts over; `tokens` is what the cache holds.
    The model's chat template lays out the conversation (`template=False` or a tokenizer without
    one: `plain_conversation`). A reply interrupted (the generator closed, or Ctrl-C) keeps what
    was said so far."""

    def __init__(self, model: Any, tokenizer: Any, system_prompt: str | None = None,
                 template: bool = True) -> None:
        if vlm.is_vlm(model):
            raise ConfigError("a kept-cache chat is for text models; for a vision-language model "
                              "pass the whole conversation (a list of messages) to stream_generate")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ArgumentTypeError(f"system_prompt must be text, not {short(system_prompt)}")
        if system_prompt is not None and not is_utf8(system_prompt):
            raise ConfigError("the system prompt is not valid UTF-8 text; give it as UTF-8")
        self.model, self.tokenizer = model, tokenizer
        self.system_prompt = system_prompt or None
        self.templated = template and has_chat_template(tokenizer)
        self.clear()

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays) and empty the cache."""
        self.messages: list[dict[str, str]] = (
            [{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        self.cache = make_cache(self.model)
        self.fed: list[int] = []  # the tokens the cache holds, in order

    @property
    def tokens(self) -> int:
        return len(self.fed)

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The whole conversation's tokens, ready for the reply."""
        return conversation_ids(self.tokenizer, messages, self.templated)

    def send(self, message: str, max_tokens: int = 256, **sampling: Any) -> Iterator[Response]:
        """The reply to `message`, as stream_generate yields it."""
        if not isinstance(message, str):
            raise ArgumentTypeError(f"message must be text, not {short(message)}")
        if not message.strip():
            raise ConfigError("the message is empty: type some text")
        if not is_utf8(message):
            raise ConfigError("the message is not valid UTF-8 text; give it as UTF-8")
        asked = [*self.messages, {"role": "user", "content": message}]
        ids = self.prompt_ids(asked)
        kept = self._reuse(ids)
        state = getattr(self.model, "_unimap", None)
        within_plan(state, len(ids) - kept, max_tokens, kept)  # refused before anything changes
        self.messages = asked
        generated: list[int] = []
        reply, finished = "", False
        try:
            for response in stream_generate(self.model, self.tokenizer, ids[kept:], max_tokens,
                                            prompt_cache=self.cache, **sampling):
                if response.token is not None:
                    generated.append(response.token)
                reply += response.text
                if not self.templated and PLAIN_STOP in reply:  # the model began the next turn
                    cut = reply.index(PLAIN_STOP)
                    text = response.text[:len(response.text) - (len(reply) - cut)]
                    reply = reply[:cut]
                    yield replace(response, text=text, finish_reason="stop")
                    finished = True
                    return
                yield response
            finished = True
        finally:
            self._settle(ids + generated, finished)
            self.messages.append({"role": "assistant", "content": reply.strip()})

    def _reuse(self, ids: list[int]) -> int:
        """How many of `ids` the cache already holds (at least one token is left to prefill);
        the cache is cut back to them, or emptied when it cannot be cut."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        same = 0
        for a, b in zip(self.fed, ids[:-1], strict=False):
            if a != b:
                break
            same += 1
        if same < len(self.fed):
            if can_trim_prompt_cache(self.cache) and held_tokens(self.cache) == len(self.fed):
                trim_prompt_cache(self.cache, len(self.fed) - same)
                self.fed = self.fed[:same]
            else:  # a recurrent state cannot be cut back: prefill the conversation again
                self.cache, self.fed, same = make_cache(self.model), [], 0
        return same

    def _settle(self, sequence: list[int], finished: bool) -> None:
        """Record what the cache holds after a turn: every token but the last one generated
        (never fed back), or, after an interruption, as many as the cache says it holds."""
        held = held_tokens(self.cache)
        if held and held <= len(sequence):
            self.fed = sequence[:held]
        elif finished and sequence:
            self.fed = sequence[:-1]
        else:  # nothing tells how far the interrupted turn got
            self.cache, self.fed = make_cache(self.model), []
