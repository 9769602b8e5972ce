"""serve -> HTTP: an OpenAI-compatible server whose admission control is the plan.

The plan for --max-seq-len x --max-batch-size is the KV budget. Each request reserves its prompt
plus max_tokens, waits in a bounded FIFO queue while the slots or the budget are taken (429 when
the queue is full), and gives the reservation back on finish, error or disconnect. One thread
loads the model (MLX streams belong to the thread that made them) and decodes the admitted
requests together over KV buffers allocated once, slots x max-seq-len; the ASGI app (Starlette on
uvicorn) validates each request before it reaches that thread. It does not keep prompt caches
between requests, take images, or return logprobs, tool calls or more than one choice: a request
that asks for those (or for a logit bias, penalties, a response format, echo or suffix) is refused
with 400, not answered as if it had been honored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import queue
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from unimap.checks import check_sampling, decode_json, foreign, is_utf8, short
from unimap.errors import ConfigError, ModelError, UnimapError
from unimap.plan import Plan

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

T = TypeVar("T")
Kind = Literal["chat", "completion"]

# 8 MiB of JSON is about two million tokens of text, past any prompt a plan holds; nothing larger
# is read, so parsing stays bounded in time and memory.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Stop strings are matched against the reply after every token: at most 16 of 512 characters
# (OpenAI allows 4) keeps that work small.
MAX_STOPS = 16
MAX_STOP_CHARS = 512
DEFAULT_MAX_QUEUE = 64
FLUSH_SECONDS = 0.02  # text goes to the event loop at most this often (a reply's end at once)
MARK = "\x00"  # stands for a chunk's text in the chunk's JSON, which is made once a request
ROLES = ("system", "developer", "user", "assistant", "tool")
# check_sampling names the CLI's flags; a request names the API's fields
_FIELDS = {"--max-tokens": "max_tokens", "--temp": "temperature", "--top-p": "top_p",
           "--top-k": "top_k", "--min-p": "min_p", "--seed": "seed"}


class RequestError(ConfigError):
    """A request the server refuses, answered with `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 kind: str = "invalid_request_error", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.kind, self.retry_after = status, param, kind, retry_after


# ---------------------------------------------------------------- requests, checked at the edge


@dataclass(frozen=True)
class Served:
    """What a request is checked against: the loaded tokenizer and the plan's lengths."""

    tokenizer: Any
    vocab_size: int | None
    templated: bool
    sequence_tokens: int  # --max-seq-len: a request's prompt and reply together
    trained_context: int | None


@dataclass(frozen=True)
class Job:
    """A checked request: token ids and settings the generation thread trusts."""

    kind: Kind
    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    plain_chat: bool  # a conversation in the plain User:/Assistant: format (no chat template)

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt_ids) + self.max_tokens


def parse_request(body: bytes, kind: Kind, served: Served) -> Job:
    """The request body as a Job, or a RequestError saying what is wrong with it."""
    data = _json_object(body)
    for name in ("model", "user"):
        _typed(data, name, str, "text")
    if _typed(data, "n", int, "a whole number", 1) != 1:
        raise RequestError("n must be 1: the server returns one choice a request", param="n")
    _refuse_unhonored(data, kind)
    if kind == "chat":
        ids, plain = _chat_ids(data, served), not served.templated
    else:
        ids, plain = _completion_ids(data, served), False
    stream = _typed(data, "stream", bool, "true or false", False)
    options = _typed(data, "stream_options", dict, "an object", {})
    usage = _typed(options, "include_usage", bool, "true or false", False)
    sampling = {"temp": _number(data, "temperature", 0.0), "top_p": _number(data, "top_p", 1.0),
                "top_k": _typed(data, "top_k", int, "a whole number", 0),
                "min_p": _number(data, "min_p", 0.0)}
    seed = _typed(data, "seed", int, "a whole number", None)
    max_tokens = _max_tokens(data, len(ids), served)
    try:
        check_sampling(max_tokens, seed=seed, **sampling)
    except ConfigError as exc:
        message = str(exc)
        for flag, name in _FIELDS.items():
            message = message.replace(flag, name)
        raise RequestError(message) from None
    stop = _stop(data) + (("\nUser:",) if plain else ())
    return Job(kind, tuple(ids), max_tokens, sampling["temp"], sampling["top_p"], sampling["top_k"],
               sampling["min_p"], seed, stop, stream, usage and stream, plain)


# Fields of the OpenAI API the server does not act on, and the values that ask for nothing (any
# other is refused: a reply that silently ignored it would look like one that honored it).
UNHONORED: dict[str, tuple[tuple[Any, ...], str]] = {
    "logprobs": ((False,), "it returns no logprobs"),
    "top_logprobs": ((0,), "it returns no logprobs"),
    "logit_bias": (({},), "it applies no logit bias"),
    "presence_penalty": ((0, 0.0), "it applies no presence penalty"),
    "frequency_penalty": ((0, 0.0), "it applies no frequency penalty"),
    "tools": (([],), "it makes no tool calls"),
    "functions": (([],), "it makes no function calls"),
}
UNHONORED_COMPLETION = {
    "echo": ((False,), "it does not echo the prompt"),
    "suffix": (("",), "it does not fill in before a suffix"),
    "best_of": ((1,), "it returns the one reply it makes"),
}


def _refuse_unhonored(data: dict[str, Any], kind: Kind) -> None:
    """A RequestError for a field that asks for something the server does not do."""
    fields = {**UNHONORED, **(UNHONORED_COMPLETION if kind == "completion" else {})}
    for name, (nothing, why) in fields.items():
        value = data.get(name)
        if value is not None and not any(type(value) is type(v) and value == v for v in nothing):
            raise RequestError(f"{name} {short(value)} is not served: {why}; leave it out",
                               param=name)
    form = data.get("response_format")
    if form is not None and not (isinstance(form, dict) and form.get("type") == "text"):
        raise RequestError(f"response_format {short(form)} is not served: the reply is free text "
                           "(only {\"type\": \"text\"}); leave it out", param="response_format")


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise RequestError("the request has no body: send a JSON object, as the OpenAI API takes")
    try:
        data = decode_json(body, "the request body", "send a JSON object")
    except ModelError as exc:
        raise RequestError(str(exc)) from None
    if not isinstance(data, dict):
        raise RequestError(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _typed(data: dict[str, Any], name: str, kind: type[T], what: str, default: Any = None) -> Any:
    """data[name] when it is of `kind` (JSON null or absent: `default`)."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RequestError(f"{name} must be {what}, not {short(value)}", param=name)
    return value


def _number(data: dict[str, Any], name: str, default: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RequestError(f"{name} must be a number, not {short(value)}", param=name)
    return float(value)


def _text(value: Any, where: str) -> str:
    """A message's content: text, or a list of text parts (joined)."""
    if value is None:
        return ""
    if isinstance(value, list):
        parts = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                what = f"a {short(kind)} part" if isinstance(kind, str) else short(part)
                raise RequestError(f"{where} holds {what}: unimap serve takes text parts "
                                   "({\"type\": \"text\", \"text\": ...}) only", param="messages")
            parts.append(part["text"])
        value = "".join(parts)
    if not isinstance(value, str):
        raise RequestError(f"{where} must be text or a list of text parts, not {short(value)}",
                           param="messages")
    if not is_utf8(value):
        raise RequestError(f"{where} is not valid UTF-8 text (it holds a lone surrogate)",
                           param="messages")
    return value


def _chat_ids(data: dict[str, Any], served: Served) -> list[int]:
    from unimap.generate import conversation_ids

    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {\"role\", \"content\"} objects",
                           param="messages")
    conversation = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise RequestError(f"messages[{i}] must have a role of {', '.join(ROLES)}, not "
                               f"{short(role)}", param="messages")
        content = _text(message.get("content"), f"messages[{i}].content")
        conversation.append({"role": "system" if role == "developer" else role, "content": content})
    if not any(m["content"].strip() for m in conversation):
        raise RequestError("the messages hold no text: give some", param="messages")
    try:
        ids = conversation_ids(served.tokenizer, conversation, served.templated)
    except UnimapError as exc:
        raise RequestError(str(exc), param="messages") from None
    except Exception as exc:  # the model's own Jinja template refused the conversation
        raise RequestError(f"the model's chat template refused these messages ({foreign(exc)})",
                           param="messages") from None
    if not ids:
        raise RequestError("the messages encode to no tokens: give some text", param="messages")
    return ids


def _completion_ids(data: dict[str, Any], served: Served) -> list[int]:
    from unimap.generate import encode_prompt

    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one prompt
    if not (isinstance(prompt, str) or isinstance(prompt, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
        raise RequestError(f"prompt must be text or a list of token ids (one prompt a request), "
                           f"not {short(prompt)}", param="prompt")
    try:
        return encode_prompt(served.tokenizer, prompt, served.vocab_size)
    except UnimapError as exc:
        raise RequestError(str(exc).replace(" (--prompt)", ""), param="prompt") from None


def _max_tokens(data: dict[str, Any], prompt_tokens: int, served: Served) -> int:
    """The reply's token limit: asked for, or what the plan leaves after the prompt; a request
    that alone cannot fit the plan's sequence or the model's trained context is refused."""
    asked = _typed(data, "max_completion_tokens", int, "a whole number", None)
    name = "max_completion_tokens"
    if asked is None:
        asked, name = _typed(data, "max_tokens", int, "a whole number", None), "max_tokens"
    limit = min(served.sequence_tokens, served.trained_context or served.sequence_tokens)
    if asked is not None and asked < 1:
        raise RequestError(f"{name} must be at least 1, not {asked}", param=name)
    need = prompt_tokens + (asked or 1)
    if need <= limit:
        return asked if asked is not None else limit - prompt_tokens
    what = (f"{need} tokens (a {prompt_tokens}-token prompt and {name} {asked})" if asked
            else f"its {prompt_tokens}-token prompt and a reply")
    trained = (f"the model was trained for {served.trained_context}" if served.trained_context
               else "the model does not say what context it was trained for")
    longer = (served.trained_context or 0) > served.sequence_tokens
    raise RequestError(f"this request needs {what}, more than one request may hold: the server's "
                       f"plan holds {served.sequence_tokens} tokens a request (--max-seq-len) and "
                       f"{trained}; shorten the prompt or ask for fewer tokens"
                       + (", or restart the server with a longer --max-seq-len" if longer else ""),
                       param=name if asked else "messages" if "messages" in data else "prompt")


def _stop(data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("stop")
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS and is_utf8(s) for s in stops):
        raise RequestError(f"stop must be a string or a list of at most {MAX_STOPS} non-empty "
                           f"strings of at most {MAX_STOP_CHARS} characters, not {short(value)}",
                           param="stop")
    return tuple(stops)


# ---------------------------------------------------------------- admission


class Admission:
    """The plan's slots and KV tokens, handed out in arrival order: a request waits while the
    slots or the budget are taken, and nobody overtakes a waiting request; `max_queue` requests
    may wait, the next one is refused (429). The event loop enqueues requests and withdraws
    those whose clients leave; the generation thread takes them into its batch and releases
    them as they leave it, so a slot is free the moment its sequence is out of the batch."""

    def __init__(self, slots: int, budget_tokens: int, max_queue: int) -> None:
        self.slots, self.budget_tokens, self.max_queue = slots, budget_tokens, max_queue
        self.lock = threading.Lock()
        self.waiting: deque[Active] = deque()
        self.active = 0
        self.reserved_tokens = 0
        self.hold_seconds = 1.0  # how long a request holds its slot (moving average)

    def _fits(self, tokens: int) -> bool:
        return self.active < self.slots and self.reserved_tokens + tokens <= self.budget_tokens

    def enqueue(self, active: Active) -> None:
        """Queue a request, or refuse it (429) when the queue is full."""
        with self.lock:
            if len(self.waiting) >= self.max_queue and (
                    self.waiting or not self._fits(active.job.reserved_tokens)):
                raise RequestError(f"the server is busy: {self.active} requests run and "
                                   f"{len(self.waiting)} wait (--max-queue {self.max_queue}); "
                                   "retry later", status=429, kind="queue_full",
                                   retry_after=self._retry_after())
            self.waiting.append(active)

    def withdraw(self, active: Active) -> bool:
        """Take a request out of the queue; False when it has already left it for the batch."""
        with self.lock:
            try:
                self.waiting.remove(active)
            except ValueError:
                return False
            return True

    def take(self) -> list[Active]:
        """The waiting requests that fit now, in order, with their slots and tokens reserved."""
        taken = []
        with self.lock:
            while self.waiting and self._fits(self.waiting[0].job.reserved_tokens):
                active = self.waiting.popleft()
                self.active += 1
                self.reserved_tokens += active.job.reserved_tokens
                active.admitted_at = time.monotonic()
                taken.append(active)
        return taken

    def release(self, active: Active) -> None:
        with self.lock:
            self.active -= 1
            self.reserved_tokens -= active.job.reserved_tokens
            self.hold_seconds = 0.8 * self.hold_seconds + 0.2 * (time.monotonic() - active.admitted_at)

    def _retry_after(self) -> int:
        """Seconds until a slot is likely free for one more request."""
        return max(1, math.ceil(self.hold_seconds * (len(self.waiting) + 1) / self.slots))


# ---------------------------------------------------------------- the generation thread


class Active:
    """An admitted request, between the event loop (its events) and the generation thread."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job, self.loop = job, loop
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.id = uuid.uuid4().hex[:24]
        self.created, self.admitted_at = int(time.time()), 0.0
        self.outcome: str | None = None  # "finished" or "failed" once the handler has read it
        self.settled = False
        # generation thread only
        self.slot: int | None = None
        self.generated = 0
        self.detokenizer: Any = None
        self.stopper = StopText(job.stop)
        self.started = False


class StopText:
    """Stop strings over streamed text: text that may begin a stop string is held back until it
    cannot; the reply ends before the first stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.held = stops, ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that may be sent now, and whether a stop string was reached."""
        if not self.stops:
            return text, False
        text, self.held = self.held + text, ""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            return text[:min(found)], True
        keep = max(_begins(text, s) for s in self.stops)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


def _begins(text: str, stop: str) -> int:
    """The length of the longest end of `text` that `stop` begins with (shorter than `stop`)."""
    at = text.find(stop[0], max(0, len(text) - len(stop) + 1))
    while at != -1:
        if stop.startswith(text[at:]):
            return len(text) - at
        at = text.find(stop[0], at + 1)
    return 0


@dataclass
class Stats:
    """What the generation thread measured (written there, read by /metrics)."""

    batch: int = 0
    used_tokens: int = 0
    kv_cache_bytes: int = 0
    peak_bytes: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    load_seconds: float = 0.0


class Engine:
    """The generation thread: loads the model (`loader`, in this thread), then runs every
    admitted request in one batch (SlotBatch; OneAtATime for caches that cannot share slots).
    Commands come through a queue in the order the event loop sent them; a failed step fails
    the requests in the batch and starts a fresh one, never ending the thread."""

    def __init__(self, planned: Plan, loader: Callable[[], tuple[Any, Any, Plan]],
                 admission: Admission) -> None:
        self.plan, self.loader, self.admission = planned, loader, admission
        self.commands: queue.SimpleQueue[tuple[str, Active | None]] = queue.SimpleQueue()
        self.status = "loading"  # then "ready" or "failed"
        self.failure: BaseException | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self.served: Served | None = None
        self.eos: set[int] = set()
        self.stream: Any = None
        self.stats = Stats()
        self.log: Callable[[str], None] = lambda message: None
        self.thread = threading.Thread(target=self._main, name="unimap-generation", daemon=True)
        self.outbox: list[tuple[Active, tuple[Any, ...]]] = []  # events not handed out yet
        self.urgent, self.flushed_at = False, 0.0

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """A request was queued: the thread takes it when it fits."""
        self.commands.put(("wake", None))

    def cancel(self, active: Active) -> None:
        self.commands.put(("cancel", active))

    def stop(self) -> None:
        """Finish what runs, then end the thread (the plan's wired limit is given back). A
        model still loading is left to the (daemon) thread: the process may exit meanwhile."""
        self.commands.put(("stop", None))
        if self.status != "loading":
            self.thread.join()

    def _main(self) -> None:
        import mlx.core as mx

        try:
            mx.reset_peak_memory()
            started = time.perf_counter()
            model, tokenizer, _ = self.loader()
        except BaseException as exc:
            self._fail(exc)
            return
        try:
            make = self._ready(model, tokenizer, time.perf_counter() - started)
            self._serve(make)
        except BaseException as exc:
            self._fail(exc)
        finally:
            model._unimap.limits.release()  # the previous wired and memory limits, on every way out

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc if isinstance(exc, UnimapError) else ModelError(
            f"the server could not load the model ({foreign(exc)})")
        self.status = "failed"
        self.on_failure()

    def _ready(self, model: Any, tokenizer: Any, seconds: float) -> Callable[[], Any]:
        """Check what was loaded; the maker of the batch that will run it."""
        from mlx_lm.models.cache import KVCache

        from unimap import vlm
        from unimap.generate import _eos_ids, has_chat_template, make_cache, vocab_size

        if vlm.is_vlm(model):
            raise ConfigError(NOT_VISION)
        caches = make_cache(model)
        options, est = self.plan.estimate.options, self.plan.estimate
        shared = all(type(c) is KVCache for c in caches)
        if not shared and options.max_batch_size > 1:
            kinds = ", ".join(sorted({type(c).__name__ for c in caches} - {"KVCache"}))
            raise ConfigError(f"this model's caches ({kinds}) cannot share a batch's slots: serve "
                              "it with --max-batch-size 1")
        self.served = Served(tokenizer, vocab_size(model), has_chat_template(tokenizer),
                             est.sequence_tokens, est.trained_context)
        self.eos = _eos_ids(tokenizer)
        self.stream = model._unimap.parts_stream
        self.stats.load_seconds = seconds
        self.status = "ready"
        self.log(f"ready: the model loaded in {seconds:.1f} s")
        if shared:
            return lambda: SlotBatch(model, options.max_batch_size, est.sequence_tokens,
                                     options.prefill_chunk_tokens, len(caches))
        return lambda: OneAtATime(model, tokenizer)

    def _serve(self, make: Callable[[], Any]) -> None:
        import mlx.core as mx

        batch = make()
        live: set[Active] = set()
        stopping = False
        while not (stopping and not live and not self.admission.waiting):
            try:
                for command, active in self._commands(block=not live and not self.admission.waiting):
                    stopping = stopping or command == "stop"
                    if command == "cancel" and active in live:
                        batch.remove(active)
                        self._leave(live, active)
                for active in self.admission.take():
                    self._add(batch, live, active)
                with mx.stream(self.stream):  # where the plan put the embeddings and head
                    for active, token in batch.step() if live else ():
                        self._deliver(batch, live, active, token)
            except Exception as exc:  # the batch is lost, the server is not
                for active in list(live):
                    self._leave(live, active, "error", f"generation failed ({foreign(exc)})")
                batch = make()
            self._flush(now=self.urgent or not live)
            self._measure(batch, live, mx)

    def _leave(self, live: set[Active], active: Active, *event: Any) -> None:
        """A request is out of the batch: its slot and tokens are free; `event` tells it why."""
        live.discard(active)
        self.admission.release(active)
        if event:
            self._post(active, *event)

    def _post(self, active: Active, *event: Any) -> None:
        self.outbox.append((active, event))
        self.urgent = self.urgent or event[0] != "text"

    def _flush(self, now: bool) -> None:
        """The events to their requests, in one wake-up of the event loop: at once when a
        request ends, else at most every FLUSH_SECONDS (a wake-up per token costs throughput)."""
        if not self.outbox or not now and time.monotonic() - self.flushed_at < FLUSH_SECONDS:
            return
        sent, self.outbox, self.urgent, self.flushed_at = self.outbox, [], False, time.monotonic()
        with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody is listening
            sent[0][0].loop.call_soon_threadsafe(_hand_out, sent)

    def _commands(self, block: bool) -> Iterator[tuple[str, Active | None]]:
        if block:
            yield self.commands.get()
        while True:
            try:
                yield self.commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, batch: Any, live: set[Active], active: Active) -> None:
        from unimap.generate import _Detokenizer

        try:
            batch.start(active)
        except Exception as exc:
            self._leave(live, active, "error", f"the request could not start ({foreign(exc)})")
            return
        active.detokenizer = _Detokenizer(self.served.tokenizer if self.served else None)
        live.add(active)
        self.stats.prompt_tokens += len(active.job.prompt_ids)

    def _deliver(self, batch: Any, live: set[Active], active: Active, token: int) -> None:
        """One generated token to its request: text through its detokenizer and stop strings;
        the end of the reply at an end-of-sequence token, max_tokens or a stop string."""
        active.generated += 1
        self.stats.generation_tokens += 1
        job = active.job
        reason = ("stop" if token in self.eos else
                  "length" if active.generated >= job.max_tokens else None)
        try:
            text = "" if reason == "stop" else active.detokenizer.add(token)
            text += active.detokenizer.finish() if reason else ""
            text, hit = active.stopper.feed(text)
            reason = "stop" if hit else reason
            text += active.stopper.flush() if reason and not hit else ""
            if job.plain_chat and not active.started:  # the space after "Assistant:"
                text = text.lstrip()
                active.started = bool(text)
        except Exception as exc:  # this request's text failed: it ends, the batch goes on
            batch.remove(active)
            self._leave(live, active, "error", f"decoding the reply failed ({foreign(exc)})")
            return
        if text:
            self._post(active, "text", text)
        if reason:
            batch.remove(active)
            self._leave(live, active, "done", reason, len(job.prompt_ids), active.generated)

    def _measure(self, batch: Any, live: set[Active], mx: Any) -> None:
        stats = self.stats
        stats.batch = len(live)
        stats.used_tokens = sum(len(a.job.prompt_ids) + a.generated for a in live)
        stats.kv_cache_bytes = batch.cache_bytes()
        stats.peak_bytes = max(stats.peak_bytes, int(mx.get_peak_memory()))


def _hand_out(events: list[tuple[Active, tuple[Any, ...]]]) -> None:
    for active, event in events:
        active.events.put_nowait(event)


NOT_VISION = ("unimap serve serves text models; run a vision-language model with unimap run "
              "--image")


# ---------------------------------------------------------------- batches


class SlotBatch:
    """Up to `slots` sequences decoded together over KV buffers allocated once. Slot s holds
    its sequence's keys and values at positions 0..length-1 of row s of each layer's
    (slots, kv heads, tokens, head dim) buffers, written in place: sequences come and go without
    a copy, so the KV cache is the plan's --max-batch-size x --max-seq-len and no more (mlx-lm's
    BatchGenerator pads, concatenates and filters its caches as sequences join and leave, and
    held up to 3.8 times the batch's KV here). A new sequence prefills alone, one plan-sized
    chunk between decode steps; a decode step runs the rows up to the highest busy slot, each
    at its own position (a RoPE offset and a key mask per row)."""

    def __init__(self, model: Any, slots: int, tokens: int, chunk: int, layers: int) -> None:
        self.model, self.slots, self.tokens, self.chunk = model, slots, tokens, chunk
        self.keys: list[Any] = [None] * layers
        self.values: list[Any] = [None] * layers
        self.rows: list[Active | None] = [None] * slots
        self.lengths = [0] * slots  # tokens each slot holds
        self.next_token = [0] * slots  # what each slot feeds next
        self.samplers: list[Any] = [None] * slots
        self.prefill: dict[int, list[int]] = {}  # slot -> prompt tokens not yet prefilled
        self.order: deque[int] = deque()  # slots waiting to prefill, first come first

    def start(self, active: Active) -> None:
        s = self.rows.index(None)
        ids = list(active.job.prompt_ids)
        self.rows[s], self.lengths[s], self.samplers[s] = active, 0, sampler(active.job)
        self.prefill[s], self.next_token[s] = ids[:-1], ids[-1]  # the last goes with the decode
        self.order.append(s)
        active.slot = s

    def remove(self, active: Active) -> None:
        s = active.slot
        if s is None or self.rows[s] is not active:
            return
        self.rows[s], self.lengths[s], self.samplers[s] = None, 0, None
        if self.prefill.pop(s, None) is not None:
            self.order.remove(s)

    def cache_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.keys + self.values if a is not None)

    def step(self) -> list[tuple[Active, int]]:
        """One prefill chunk (when a sequence waits for it), then one token for every
        sequence that has prefilled."""
        if self.order:
            self._prefill(self.order[0])
        return self._decode()

    def buffers(self, layer: int, keys: Any, values: Any) -> tuple[Any, Any]:
        """Layer `layer`'s buffers, made at its first write in the dtype and shapes it writes."""
        import mlx.core as mx

        if self.keys[layer] is None:
            self.keys[layer] = mx.zeros((self.slots, keys.shape[1], self.tokens, keys.shape[3]),
                                        keys.dtype)
            self.values[layer] = mx.zeros((self.slots, values.shape[1], self.tokens,
                                           values.shape[3]), values.dtype)
        return self.keys[layer], self.values[layer]

    def _arrays(self) -> list[Any]:
        return [a for a in self.keys + self.values if a is not None]

    def _prefill(self, s: int) -> None:
        import mlx.core as mx

        ids = self.prefill[s]
        chunk = ids[:self.chunk]
        if chunk:
            self.model(mx.array([chunk]), cache=[_Row(self, layer, s, self.lengths[s])
                                                 for layer in range(len(self.keys))])
            mx.eval(self._arrays())  # the logits are never computed: only the cache is
            mx.clear_cache()
            self.lengths[s] += len(chunk)
        self.prefill[s] = ids[len(chunk):]
        if not self.prefill[s]:
            del self.prefill[s]
            self.order.popleft()

    def _decode(self) -> list[tuple[Active, int]]:
        import mlx.core as mx

        running = {s: a for s, a in enumerate(self.rows) if a is not None and s not in self.prefill}
        busy = list(running)
        if not busy:
            return []
        rows = max(busy) + 1  # idle rows below it compute along, masked, and are ignored
        at = mx.array(self.lengths[:rows])
        keys = max(self.lengths[s] for s in busy) + 1
        inputs = mx.array([self.next_token[s] if s in busy else 0 for s in range(rows)])[:, None]
        logits = self.model(inputs, cache=[_Rows(self, layer, rows, at, keys)
                                           for layer in range(len(self.keys))])[:, -1, :]
        picked = mx.argmax(logits, axis=-1)
        own = [s for s in busy if self.samplers[s] is not None]
        if own:
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            picked = mx.concatenate([self.samplers[s](logprobs[s:s + 1]) if s in own
                                     else picked[s:s + 1] for s in range(rows)])
        mx.eval(picked, self._arrays())
        tokens: list[int] = picked.tolist()  # type: ignore[assignment]
        for s in busy:
            self.lengths[s] += 1
            self.next_token[s] = tokens[s]
        return [(active, tokens[s]) for s, active in running.items()]


class _Row:
    """Layer `layer`'s cache as one slot's prefill sees it: a batch of one row, at `offset`."""

    def __init__(self, batch: SlotBatch, layer: int, slot: int, offset: int) -> None:
        self.batch, self.layer, self.slot, self.offset = batch, layer, slot, offset

    def update_and_fetch(self, keys: Any, values: Any) -> tuple[Any, Any]:
        k, v = self.batch.buffers(self.layer, keys, values)
        s, start, end = self.slot, self.offset, self.offset + keys.shape[2]
        k[s:s + 1, :, start:end, :] = keys  # in place: nothing else holds the buffer
        v[s:s + 1, :, start:end, :] = values
        return k[s:s + 1, :, :end, :], v[s:s + 1, :, :end, :]

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        from mlx_lm.models.cache import create_attention_mask

        return create_attention_mask(n, self.offset, return_array, window_size)


class _Rows:
    """Layer `layer`'s cache as a decode step sees it: the first `rows` slots, row r writing at
    its own position at[r] and attending to the keys before and at it."""

    def __init__(self, batch: SlotBatch, layer: int, rows: int, at: Any, keys: int) -> None:
        self.batch, self.layer, self.rows, self.offset, self.keys = batch, layer, rows, at, keys

    def update_and_fetch(self, keys: Any, values: Any) -> tuple[Any, Any]:
        import mlx.core as mx

        k, v = self.batch.buffers(self.layer, keys, values)
        rows, at = mx.arange(self.rows)[:, None], self.offset[:, None]
        k[rows, mx.arange(k.shape[1])[None], at] = keys[:, :, 0, :]  # a scatter, in place
        v[rows, mx.arange(v.shape[1])[None], at] = values[:, :, 0, :]
        return k[:self.rows, :, :self.keys, :], v[:self.rows, :, :self.keys, :]

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        import mlx.core as mx

        return (mx.arange(self.keys)[None] <= self.offset[:, None])[:, None, None, :]


class OneAtATime:
    """One sequence at a time, through unimap's own generation (mlx-lm's generate_step with the
    plan's cache: quantized under --kv-bits, rotating under --max-kv-size, or the model's own
    sliding-window and recurrent caches), for --max-batch-size 1."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.active: Active | None = None
        self.steps: Any = None
        self.cache: list[Any] = []

    def start(self, active: Active) -> None:
        from unimap.generate import _text_steps, make_cache

        job = active.job
        self.cache = make_cache(self.model)
        self.steps, _, _, _ = _text_steps(self.model, self.tokenizer, list(job.prompt_ids),
                                          job.max_tokens, sampler(job) or greedy, [], self.cache)
        self.active = active

    def remove(self, active: Active) -> None:
        if self.active is active:
            self.steps.close()
            self.active, self.steps, self.cache = None, None, []

    def cache_bytes(self) -> int:
        total = 0
        for cache in self.cache:
            with contextlib.suppress(Exception):  # a cache not yet written may not say
                total += int(cache.nbytes)
        return total

    def step(self) -> list[tuple[Active, int]]:
        if self.active is None:
            return []
        token, _ = next(self.steps)
        return [(self.active, int(token))]


def greedy(logprobs: Any) -> Any:
    import mlx.core as mx

    return mx.argmax(logprobs, axis=-1)


class SeededSampler:
    """mlx-lm's sampling (top-p, min-p, top-k, then temperature) with a random key of the
    request's own, so a seed gives the same reply whatever else is in the batch."""

    def __init__(self, job: Job) -> None:
        import mlx.core as mx

        self.job = job
        self.key = mx.random.key(job.seed or 0)

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        job = self.job
        if 0 < job.top_p < 1:
            logprobs = apply_top_p(logprobs, job.top_p)
        if job.min_p:
            logprobs = apply_min_p(logprobs, job.min_p)
        if job.top_k > 0:
            logprobs = apply_top_k(logprobs, job.top_k)
        self.key, key = mx.random.split(self.key)
        return mx.random.categorical(logprobs * (1 / job.temperature), key=key)


def sampler(job: Job) -> Any:
    """None (the batch's greedy argmax) at temperature 0, else mlx-lm's sampler for the job."""
    from mlx_lm.sample_utils import make_sampler

    if job.temperature == 0:
        return None
    if job.seed is not None:
        return SeededSampler(job)
    return make_sampler(job.temperature, job.top_p, job.min_p, 1, top_k=job.top_k)


def check_servable(planned: Plan) -> None:
    """What the server cannot serve, refused before anything loads."""
    if planned.estimate.vision_weight_bytes:
        raise ConfigError(NOT_VISION)
    options = planned.estimate.options
    if options.max_batch_size > 1:
        own = [f"--{name.replace('_', '-')}" for name in ("kv_bits", "max_kv_size")
               if getattr(options, name) is not None]
        kinds = sorted({layer.kind for layer in planned.estimate.layers} - {"full"})
        if own or kinds:
            what = " and ".join(own) if own else f"this model's {' and '.join(kinds)} layers"
            raise ConfigError(f"{what}: a batch's slots hold plain KV caches only; serve with "
                              "--max-batch-size 1 (one request at a time)"
                              + (f", or drop {' and '.join(own)}" if own else ""))
    planned.require_fit()


# ---------------------------------------------------------------- HTTP


class Gone(Exception):
    """The client disconnected."""


class Server:
    """The endpoints over one Engine and its Admission."""

    def __init__(self, model_id: str, planned: Plan, engine: Engine) -> None:
        self.model_id, self.plan, self.engine = model_id, planned, engine
        self.admission = engine.admission
        self.slots = engine.admission.slots
        self.outcomes: Counter[str] = Counter()
        self.created = int(time.time())
        # requests are tokenized one at a time, off the event loop (a tokenizer is not made
        # to be used by many threads at once; the generation thread only decodes)
        self.parser = ThreadPoolExecutor(1, thread_name_prefix="unimap-requests")

    async def health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        status = self.engine.status
        body: dict[str, Any] = {"status": "ok" if status == "ready" else status, "model": self.model_id}
        if self.engine.failure is not None:
            body["error"] = str(self.engine.failure)
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    async def models(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "unimap"}]})

    async def plan_json(self, request: Request) -> Response:
        from starlette.responses import Response

        return Response(self.plan.to_json(), media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse(metrics_text(self), media_type="text/plain; version=0.0.4")

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, "completion")

    async def _complete(self, request: Request, kind: Kind) -> Response:
        from starlette.background import BackgroundTask
        from starlette.responses import Response, StreamingResponse

        try:
            served = self._served()
            body = await _read_body(request)
            job = await asyncio.get_running_loop().run_in_executor(self.parser, parse_request,
                                                                   body, kind, served)
            active = Active(job, asyncio.get_running_loop())
            self.admission.enqueue(active)
        except RequestError as exc:
            self.outcomes[f"rejected_{exc.status}"] += 1
            return error_response(exc)
        self.engine.wake()
        if job.stream:
            return StreamingResponse(self._stream(active), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"},
                                     background=BackgroundTask(self._settle, active))
        try:
            return await _unless_gone(request, self._whole(active))
        except Gone:
            return Response(status_code=499)
        finally:
            self._settle(active)

    def _served(self) -> Served:
        engine = self.engine
        if engine.status == "ready" and engine.served is not None:
            return engine.served
        if engine.status == "failed":
            raise RequestError(f"the model failed to load: {engine.failure}", status=503,
                               kind="not_ready")
        raise RequestError("the model is still loading; retry when /health answers 200",
                           status=503, kind="not_ready", retry_after=5)

    def _settle(self, active: Active) -> None:
        """Once the handler is done with a request: one that did not finish leaves the queue, or
        is stopped in the generation thread, which then releases its slot and tokens."""
        if active.settled:
            return
        active.settled = True
        if active.outcome is None:
            if self.admission.withdraw(active):
                active.outcome = "left_queue"
            else:
                self.engine.cancel(active)
                active.outcome = "cancelled"
        self.outcomes[active.outcome] += 1

    async def _whole(self, active: Active) -> Response:
        from starlette.responses import JSONResponse

        pieces = []
        while True:
            event = await active.events.get()
            if event[0] == "text":
                pieces.append(event[1])
                continue
            if event[0] == "error":
                active.outcome = "failed"
                return error_response(RequestError(event[1], status=500, kind="server_error"))
            active.outcome = "finished"
            return JSONResponse(self._body(active, "".join(pieces), event[1], usage(event)))

    async def _stream(self, active: Active) -> AsyncIterator[str]:
        """Server-sent events: a chunk per piece of text (what has queued up goes out in one
        write), the finish reason with the usage (or, with stream_options.include_usage, a last
        chunk of usage alone), then [DONE]."""
        head, tail = sse(self._chunk(active, MARK, None)).split(json.dumps(MARK))
        try:
            if active.job.kind == "chat":
                yield sse(self._chunk(active, {"role": "assistant", "content": ""}, None))
            while True:
                events = [await active.events.get()]
                while not active.events.empty():
                    events.append(active.events.get_nowait())
                text = "".join(head + json.dumps(e[1], ensure_ascii=False) + tail
                               for e in events if e[0] == "text")
                end = events[-1]
                if end[0] == "text":
                    yield text
                    continue
                yield text + self._end(active, end)
                return
        finally:
            self._settle(active)

    def _end(self, active: Active, event: tuple[Any, ...]) -> str:
        if event[0] == "error":
            active.outcome = "failed"
            return sse(error_body(RequestError(event[1], status=500, kind="server_error")))
        active.outcome = "finished"
        last = self._chunk(active, "", event[1])
        if not active.job.include_usage:
            last["usage"] = usage(event)
        alone = {**self._chunk(active, "", None), "choices": [], "usage": usage(event)}
        return sse(last) + (sse(alone) if active.job.include_usage else "") + "data: [DONE]\n\n"

    def _body(self, active: Active, text: str, reason: str, used: dict[str, int]) -> dict[str, Any]:
        chat = active.job.kind == "chat"
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}}
                                  if chat else {"index": 0, "text": text})
        return {"id": ("chatcmpl-" if chat else "cmpl-") + active.id,
                "object": "chat.completion" if chat else "text_completion",
                "created": active.created, "model": self.model_id,
                "choices": [{**choice, "finish_reason": reason, "logprobs": None}], "usage": used}

    def _chunk(self, active: Active, content: Any, reason: str | None) -> dict[str, Any]:
        chat = active.job.kind == "chat"
        delta = content if isinstance(content, dict) else {"content": content} if content else {}
        choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": content}
        return {"id": ("chatcmpl-" if chat else "cmpl-") + active.id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": active.created, "model": self.model_id,
                "choices": [{**choice, "finish_reason": reason, "logprobs": None}]}


def usage(event: tuple[Any, ...]) -> dict[str, int]:
    _, _, prompt, generated = event
    return {"prompt_tokens": prompt, "completion_tokens": generated,
            "total_tokens": prompt + generated}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def error_body(exc: RequestError) -> dict[str, Any]:
    return {"error": {"message": str(exc), "type": exc.kind, "param": exc.param, "code": exc.kind}}


def error_response(exc: RequestError) -> Response:
    from starlette.responses import JSONResponse

    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = RequestError(f"the request is larger than {MAX_BODY_BYTES} bytes, more than any "
                           "prompt the plan holds", status=413)
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, unless the client disconnects first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise Gone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def metrics_text(server: Server) -> str:
    """Prometheus text: the queue, the requests, the tokens, the KV budget and its use, and the
    measured peak memory beside the plan's."""
    stats, admission, plan = server.engine.stats, server.admission, server.plan
    rows: list[tuple[str, str, str, Any]] = [
        ("ready", "gauge", "1 once the model is loaded", int(server.engine.status == "ready")),
        ("queue_depth", "gauge", "requests waiting for a slot", len(admission.waiting)),
        ("queue_limit", "gauge", "requests that may wait (--max-queue)", admission.max_queue),
        ("active_requests", "gauge", "requests holding a slot", admission.active),
        ("slots", "gauge", "requests that decode together (--max-batch-size)", server.slots),
        ("batch_size", "gauge", "sequences in the generation thread's batch", stats.batch),
        ("requests_total", "counter", "requests by outcome", dict(server.outcomes)),
        ("prompt_tokens_total", "counter", "prompt tokens admitted", stats.prompt_tokens),
        ("generation_tokens_total", "counter", "tokens generated", stats.generation_tokens),
        ("kv_budget_tokens", "gauge", "KV tokens the plan holds (--max-seq-len x --max-batch-size)",
         admission.budget_tokens),
        ("kv_reserved_tokens", "gauge", "KV tokens reserved by admitted requests (prompt + max_tokens)",
         admission.reserved_tokens),
        ("kv_used_tokens", "gauge", "tokens the admitted requests hold now", stats.used_tokens),
        ("kv_cache_bytes", "gauge", "bytes the KV cache holds (slots x max-seq-len, made once)",
         stats.kv_cache_bytes),
        ("kv_planned_bytes", "gauge", "the plan's KV cache bytes", plan.estimate.kv_bytes),
        ("peak_memory_bytes", "gauge", "measured MLX peak memory", stats.peak_bytes),
        ("load_seconds", "gauge", "seconds the model took to load", round(stats.load_seconds, 3)),
        ("planned_peak_bytes", "gauge", "the plan's predicted peak memory", plan.peak_bytes),
    ]
    lines = []
    for name, kind, description, value in rows:
        lines += [f"# HELP unimap_{name} {description}", f"# TYPE unimap_{name} {kind}"]
        values = value if isinstance(value, dict) else {None: value}
        for label, number in sorted(values.items(), key=lambda item: str(item[0])):
            where = f'{{outcome="{label}"}}' if label is not None else ""
            lines.append(f"unimap_{name}{where} {number}")
    return "\n".join(lines) + "\n"


def create_app(model: str, planned: Plan, *, max_queue: int = DEFAULT_MAX_QUEUE,
               loader: Callable[[], tuple[Any, Any, Plan]] | None = None,
               log: Callable[[str], None] | None = None) -> Starlette:
    """The ASGI app serving `model` under `planned` (from unimap.plan). The model loads in the
    generation thread when the app starts (/health answers 503 until then); `loader` replaces
    unimap.load(model, planned=planned); `log` gets a line when it is ready. `app.state.server`
    is the Server."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from unimap.checks import whole_number

    whole_number(max_queue, "--max-queue", 0, 1 << 20)
    check_servable(planned)

    def load_model() -> tuple[Any, Any, Plan]:
        from unimap.api import load

        return load(model, planned=planned)

    slots = planned.estimate.options.max_batch_size
    admission = Admission(slots, planned.estimate.sequence_tokens * slots, max_queue)
    engine = Engine(planned, loader or load_model, admission)
    if log is not None:
        engine.log = log
    server = Server(model, planned, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)
            server.parser.shutdown()

    app = Starlette(routes=[
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/plan", server.plan_json, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.server = server
    return app


# ---------------------------------------------------------------- running it


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (before anything loads, so a taken port is a clear error)."""
    from unimap.checks import whole_number

    whole_number(port, "--port", 0, 65535)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                          f"({exc.strerror or exc}); pick another --port, or stop what uses it") from None
    return sock


def serve(model: str, planned: Plan, sock: socket.socket, *, max_queue: int = DEFAULT_MAX_QUEUE,
          loader: Callable[[], tuple[Any, Any, Plan]] | None = None,
          log: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or Ctrl-C: then stop accepting, finish the requests in flight and
    return. A model that fails to load stops the server and raises its error."""
    import uvicorn

    app = create_app(model, planned, max_queue=max_queue, loader=loader, log=log)
    server: Server = app.state.server
    host, port = sock.getsockname()[:2]
    runner = _uvicorn_server()(uvicorn.Config(app, host=host, port=port, log_level="info",
                                              timeout_graceful_shutdown=None))
    server.engine.on_failure = lambda: setattr(runner, "should_exit", True)
    budget = server.admission.budget_tokens
    slots = f"{server.slots} slot" + ("s" if server.slots != 1 else "")
    log(f"serving {model} on http://{host}:{port}/v1: {slots}, "
        f"{planned.estimate.sequence_tokens} tokens a request ({budget} KV tokens in all), "
        f"queue {max_queue}; /health answers 200 once the model is loaded")
    runner.run(sockets=[sock])
    if server.engine.failure is not None:
        raise server.engine.failure


def _uvicorn_server() -> type[Any]:
    import uvicorn

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """SIGTERM and Ctrl-C stop accepting and let the requests in flight finish; unlike
            uvicorn's own, the process then exits normally (uvicorn raises the signal again)."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            kept = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in kept.items():
                    signal.signal(sig, handler)

    return Quiet

