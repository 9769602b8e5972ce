"""`unimap serve`: the real `openai` client against a live server on a free port (a tiny mlx-lm
model with a chat template, and the real stories260K GGUF). Greedy replies equal
`unimap.generate` on the same prompt; admission follows the plan (400 for a request no slot can
hold, a bounded FIFO queue, 429 past it); a client that leaves frees its reservation and stops
its generation; bad requests leave the server healthy; SIGTERM and Ctrl-C finish what runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from test_run import STORIES, needs_stories, with_template
from tiny_models import stand_in_machine, write_tiny_model

import unimap
from unimap.cli import cli
from unimap.generate import conversation_ids
from unimap.serve import (
    MAX_BODY_BYTES,
    Active,
    Admission,
    Job,
    RequestError,
    Served,
    StopText,
    create_app,
    parse_request,
)

openai = pytest.importorskip("openai", reason="the dev extra's openai client is not installed")
try:  # the client the openai package uses: httpx2 in openai 3, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

MESSAGES = [{"role": "system", "content": "w3 w4"}, {"role": "user", "content": "w7 w9 w11"}]


@contextlib.contextmanager
def live(app: Any, loaded: bool = True) -> Iterator[str]:
    """`app` on uvicorn in a thread, on a free port; its base URL once the server is up (and,
    with `loaded`, once /health no longer says the model is loading)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, "the server to start")
        if loaded:
            wait_for(lambda: httpx.get(base + "/health").json()["status"] != "loading", "the model")
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(condition: Callable[[], Any], what: str, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics").text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def idle(base: str) -> bool:
    m = metrics(base)
    return m["unimap_active_requests"] == 0 and m["unimap_kv_reserved_tokens"] == 0 and \
        m["unimap_queue_depth"] == 0 and m["unimap_batch_size"] == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Any, unimap.Plan]]:
    """A server for the templated tiny llama (2 slots of 256 tokens), and the same model loaded
    here for the reference replies."""
    path = with_template(write_tiny_model(tmp_path_factory.mktemp("serve") / "llama", "llama"))
    planned = unimap.plan(path, max_seq_len=256, max_batch_size=2, machine=stand_in_machine())
    model, tokenizer, _ = unimap.load(path, planned=planned)
    with live(create_app(str(path), planned)) as base:
        yield base, model, tokenizer, planned


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One slot of 1024 tokens and a queue of one: a long reply holds the server."""
    path = with_template(write_tiny_model(tmp_path_factory.mktemp("busy") / "llama", "llama"))
    planned = unimap.plan(path, max_seq_len=1024, machine=stand_in_machine())
    with live(create_app(str(path), planned, max_queue=1)) as base:
        yield base


@pytest.fixture(scope="module")
def stories() -> Iterator[tuple[str, Any, Any]]:
    if not STORIES.is_file():
        pytest.skip("stories260K.gguf is not beside the project")
    planned = unimap.plan(STORIES, max_seq_len=512, max_batch_size=4)
    model, tokenizer, _ = unimap.load(STORIES, planned=planned)
    with live(create_app(str(STORIES), planned)) as base:
        yield base, model, tokenizer


# ---------------------------------------------------------------- replies


def test_chat_reply_is_unimap_generate_greedy(tiny: Any) -> None:
    base, model, tokenizer, _ = tiny
    ids = conversation_ids(tokenizer, MESSAGES, templated=True)
    expected = unimap.generate(model, tokenizer, ids, max_tokens=12)
    reply = client(base).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12,
                                                 temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.object == "chat.completion"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), 12)


def test_streamed_chat_equals_whole_with_usage_last(tiny: Any) -> None:
    base = tiny[0]
    whole = client(base).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10)
    chunks = list(client(base).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # include_usage: alone, last


def test_completion_streamed_and_whole(tiny: Any) -> None:
    base, model, tokenizer, _ = tiny
    expected = unimap.generate(model, tokenizer, "w5 w6 w7", max_tokens=9)
    whole = client(base).completions.create(model="tiny", prompt="w5 w6 w7", max_tokens=9)
    assert whole.choices[0].text == expected and whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.completion_tokens == 9
    chunks = list(client(base).completions.create(model="tiny", prompt="w5 w6 w7", max_tokens=9,
                                                  stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].usage == whole.usage  # without include_usage: on the finishing chunk
    ids = client(base).completions.create(model="tiny", prompt=[1, 8, 9, 10], max_tokens=4)
    assert ids.choices[0].text == unimap.generate(model, tokenizer, [1, 8, 9, 10], max_tokens=4)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_reply_before_them(tiny: Any, stream: bool) -> None:
    base, model, tokenizer, _ = tiny
    reference = unimap.generate(model, tokenizer, "w20 w21", max_tokens=12)
    words = reference.split()
    stop = words[3]
    expected = reference[:reference.index(stop)]
    asked = {"model": "tiny", "prompt": "w20 w21", "max_tokens": 12, "stop": ["w999", stop]}
    if stream:
        chunks = list(client(base).completions.create(**asked, stream=True))
        text, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        reply = client(base).completions.create(**asked)
        text, reason = reply.choices[0].text, reply.choices[0].finish_reason
    assert (text, reason) == (expected, "stop")
    wait_for(lambda: idle(base), "the stopped request to leave the batch")


def test_seeded_sampling_repeats(tiny: Any) -> None:
    base = tiny[0]
    asked = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 16, "temperature": 1.0, "seed": 7}
    first, second = (client(base).completions.create(**asked).choices[0].text for _ in range(2))
    assert first == second


def test_concurrent_requests_batch_and_each_gets_its_own_reply(tiny: Any) -> None:
    base, model, tokenizer, _ = tiny
    prompts = [f"w{i} w{i + 1} w{i + 2}" for i in range(10, 16)]
    expected = {p: unimap.generate(model, tokenizer, p, max_tokens=8 + i) for i, p in enumerate(prompts)}
    got: dict[str, str] = {}

    def ask(i: int, prompt: str) -> None:
        got[prompt] = client(base).completions.create(model="tiny", prompt=prompt,
                                                      max_tokens=8 + i).choices[0].text

    threads = [threading.Thread(target=ask, args=item) for item in enumerate(prompts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected  # greedy replies in a batch of two equal the ones generated alone
    assert idle(base)


@needs_stories
def test_stories260k_completion_and_plain_chat(stories: Any) -> None:
    base, model, tokenizer = stories
    expected = unimap.generate(model, tokenizer, "Once upon a time", max_tokens=40)
    reply = client(base).completions.create(model="stories", prompt="Once upon a time", max_tokens=40)
    assert reply.choices[0].text == expected and expected.startswith(",")
    chat = client(base).chat.completions.create(
        model="stories", messages=[{"role": "user", "content": "Tell me about a cat."}], max_tokens=30)
    text = chat.choices[0].message.content or ""
    assert text and text == text.lstrip() and "User:" not in text  # the plain User:/Assistant: format
    assert chat.usage is not None and chat.usage.total_tokens == chat.usage.prompt_tokens + \
        chat.usage.completion_tokens
    models = client(base).models.list()
    assert [m.id for m in models.data] == [str(STORIES)]


@pytest.mark.parametrize(("family", "options"), [
    ("gemma3", {}),  # sliding-window layers: mlx-lm's rotating caches
    ("llama-hd64", {"kv_bits": 8}),  # a quantized KV cache from the first token
    ("llama", {"max_kv_size": 16}),  # a rotating window
])
def test_caches_that_cannot_share_slots_are_served_one_at_a_time(
        tmp_path: Path, family: str, options: dict[str, Any]) -> None:
    path = write_tiny_model(tmp_path / family, family)
    planned = unimap.plan(path, max_seq_len=64, machine=stand_in_machine(), **options)
    model, tokenizer, _ = unimap.load(path, planned=planned)
    prompts = ["w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20", "w30 w31"]
    expected = [unimap.generate(model, tokenizer, p, max_tokens=30) for p in prompts]
    with live(create_app(str(path), planned)) as base:
        got: list[str] = ["", ""]

        def ask(i: int) -> None:
            got[i] = client(base).completions.create(model="m", prompt=prompts[i],
                                                     max_tokens=30).choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert got == expected
        assert idle(base)


# ---------------------------------------------------------------- admission


def test_request_longer_than_a_slot_is_400_naming_both_limits(tiny: Any) -> None:
    base = tiny[0]
    with pytest.raises(openai.BadRequestError) as caught:
        client(base).completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=300)
    message = str(caught.value)
    assert "256" in message and "--max-seq-len" in message and "trained for 1024" in message
    assert "303 tokens" in message
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client(base).completions.create(model="tiny", prompt=" ".join(["w5"] * 300))
    assert metrics(base)["unimap_kv_reserved_tokens"] == 0


def test_queue_429_and_a_client_that_leaves_frees_its_slot(busy: str) -> None:
    """One slot, a queue of one: a long streamed reply holds the slot, a second request waits, a
    third is 429 with Retry-After; when the first client leaves, its generation stops and the
    waiting request runs."""
    base = busy
    long = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 1000, "stream": True}
    waiting: dict[str, Any] = {}
    with httpx.stream("POST", base + "/v1/completions", json=long, timeout=60) as first:
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")
        m = metrics(base)
        assert (m["unimap_active_requests"], m["unimap_kv_reserved_tokens"]) == (1, 1002)

        def second() -> None:
            waiting["reply"] = client(base).completions.create(model="tiny", prompt="w3", max_tokens=5)

        thread = threading.Thread(target=second)
        thread.start()
        wait_for(lambda: metrics(base)["unimap_queue_depth"] == 1, "the second request to queue")
        with pytest.raises(openai.RateLimitError) as caught:
            client(base).completions.create(model="tiny", prompt="w4", max_tokens=5)
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert "--max-queue 1" in str(caught.value)
        assert "reply" not in waiting
    thread.join(30)  # the first client left: the second ran
    assert waiting["reply"].choices[0].finish_reason == "length"
    wait_for(lambda: idle(base), "every reservation to be released")
    m = metrics(base)
    assert m['unimap_requests_total{outcome="cancelled"}'] == 1
    assert m['unimap_requests_total{outcome="rejected_429"}'] == 1
    assert m["unimap_generation_tokens_total"] < 1000  # the first reply's generation stopped


def raw_request(base: str, body: dict[str, Any]) -> socket.socket:
    """A request sent on a socket of our own, to be closed without reading the answer."""
    data = json.dumps(body).encode()
    raw = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return raw


def test_a_waiting_or_running_plain_request_that_leaves_frees_its_slot(busy: str) -> None:
    base = busy
    before = metrics(base)
    with raw_request(base, {"prompt": "w1 w2", "max_tokens": 1000}):
        wait_for(lambda: metrics(base)["unimap_active_requests"] == 1, "the request to start")
        with raw_request(base, {"prompt": "w3", "max_tokens": 5}):
            wait_for(lambda: metrics(base)["unimap_queue_depth"] == 1, "the second to queue")
        wait_for(lambda: metrics(base)["unimap_queue_depth"] == 0, "the second to leave the queue")
        assert metrics(base)["unimap_active_requests"] == 1
    wait_for(lambda: idle(base), "the reservation to be released")
    after = metrics(base)
    for outcome in ("cancelled", "left_queue"):
        key = f'unimap_requests_total{{outcome="{outcome}"}}'
        assert after[key] == before.get(key, 0) + 1


# ---------------------------------------------------------------- bad requests


BAD = [
    (b"", "no body"),
    (b"garbage{", "invalid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 100_000, "nested too deep"),
    (b'{"messages": []}', "non-empty list"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "text or a list of text parts"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
     "'image_url' part"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "UTF-8"),
    (b'{"messages": [{"role": "user", "content": "   "}]}', "no text"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "temperature": -1}', "temperature must be"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "temperature": NaN}', "temperature must be"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "top_p": 0}', "top_p must be above 0"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "top_k": 1.5}', "top_k must be a whole"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "max_tokens": 0}', "at least 1"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "max_tokens": "9"}', "max_tokens must be"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "seed": -3}', "seed must be from 0"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "stop": [""]}', "stop must be"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "stream": "yes"}', "stream must be"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "n": 2}', "n must be 1"),
    (b'{"messages": [{"role": "user", "content": "w1"}], "model": 3}', "model must be text"),
]


@pytest.mark.parametrize(("body", "said"), BAD, ids=[said for _, said in BAD])
def test_bad_chat_request_is_400_and_the_server_stays_healthy(tiny: Any, body: bytes, said: str) -> None:
    base = tiny[0]
    answer = httpx.post(base + "/v1/chat/completions", content=body)
    assert answer.status_code == 400
    assert said in answer.json()["error"]["message"]
    assert httpx.get(base + "/health").status_code == 200


@pytest.mark.parametrize(("body", "said"), [
    (b'{"prompt": ""}', "empty"),
    (b'{"prompt": [1, 99999]}', "vocabulary"),
    (b'{"prompt": ["a", "b"]}', "one prompt a request"),
    (b'{"prompt": {"text": "w1"}}', "text or a list of token ids"),
    (b'{"prompt": [true]}', "text or a list of token ids"),
])
def test_bad_completion_request_is_400(tiny: Any, body: bytes, said: str) -> None:
    answer = httpx.post(tiny[0] + "/v1/completions", content=body)
    assert answer.status_code == 400 and said in answer.json()["error"]["message"]


def test_what_the_server_does_not_do_is_refused_not_ignored(tiny: Any) -> None:
    """The real openai client asking for logprobs, a logit bias, penalties, tools, a response
    format, echo, a suffix or best_of gets a 400 naming the field, not a reply that looks as if
    it had been honored; the values that ask for nothing pass."""
    from openai import BadRequestError

    api = client(tiny[0])
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "w1"}], "max_tokens": 2}
    for extra, field in [({"logprobs": True, "top_logprobs": 2}, "logprobs"),
                         ({"top_logprobs": 3}, "top_logprobs"),
                         ({"logit_bias": {"5": 100}}, "logit_bias"),
                         ({"presence_penalty": 0.5}, "presence_penalty"),
                         ({"frequency_penalty": 1}, "frequency_penalty"),
                         ({"tools": [{"type": "function",
                                      "function": {"name": "f", "parameters": {}}}]}, "tools"),
                         ({"response_format": {"type": "json_object"}}, "response_format")]:
        with pytest.raises(BadRequestError) as refused:
            api.chat.completions.create(**chat, **extra)
        assert f"{field} " in refused.value.message and "not served" in refused.value.message
    for extra, field in [({"echo": True}, "echo"), ({"suffix": "end"}, "suffix"),
                         ({"best_of": 2}, "best_of")]:
        with pytest.raises(BadRequestError) as refused:
            api.completions.create(model="tiny", prompt="w1", max_tokens=2, **extra)
        assert f"{field} " in refused.value.message
    nothing = api.chat.completions.create(**chat, logprobs=False, presence_penalty=0, frequency_penalty=0.0,
                                          logit_bias={}, tools=[], response_format={"type": "text"})
    assert nothing.choices[0].finish_reason == "length"
    assert api.completions.create(model="tiny", prompt="w1", max_tokens=2, echo=False, best_of=1).choices
    assert idle(tiny[0])


def test_garbage_leaves_the_server_serving(tiny: Any) -> None:
    base = tiny[0]
    assert httpx.post(base + "/v1/completions", content=b"x" * (MAX_BODY_BYTES + 1)).status_code == 413
    assert httpx.get(base + "/v1/chat/completions").status_code == 405
    assert httpx.get(base + "/nowhere").status_code == 404
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"\x00\xff garbage \r\n\r\n")  # not HTTP at all
        raw.recv(1024)
    reply = client(base).completions.create(model="tiny", prompt="w1", max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert idle(base)


def test_a_failing_step_fails_its_request_not_the_server(tmp_path: Path) -> None:
    path = with_template(write_tiny_model(tmp_path / "llama", "llama"))
    planned = unimap.plan(path, max_seq_len=64, machine=stand_in_machine())

    def touchy_model() -> Any:  # raises whenever token 77 ("w74") goes through it
        model, tokenizer, plan = unimap.load(path, planned=planned)

        class Touchy(type(model)):  # type: ignore[misc]
            def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
                if (inputs == 77).any().item():
                    raise RuntimeError("token 77 breaks this model")
                return super().__call__(inputs, *args, **kwargs)

        model.__class__ = Touchy
        return model, tokenizer, plan

    with live(create_app(str(path), planned, loader=touchy_model)) as base:
        with pytest.raises(openai.InternalServerError, match="token 77 breaks"):
            client(base).completions.create(model="tiny", prompt="w74 w1 w2", max_tokens=4)
        asked = {"prompt": "w1 w74 w2", "max_tokens": 4, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=asked) as answer:
            chunks = [line for line in answer.iter_lines() if line]
        assert "token 77 breaks" in json.loads(chunks[-1][6:])["error"]["message"]
        reply = client(base).completions.create(model="tiny", prompt="w1 w2", max_tokens=4)
        assert reply.choices[0].finish_reason == "length"
        assert httpx.get(base + "/health").status_code == 200
        wait_for(lambda: idle(base), "every reservation to be released")
        assert metrics(base)['unimap_requests_total{outcome="failed"}'] == 2


# ---------------------------------------------------------------- health, plan, metrics


def test_models_plan_and_metrics(tiny: Any) -> None:
    base, _, _, planned = tiny
    assert json.loads(httpx.get(base + "/v1/plan").text) == json.loads(planned.to_json())
    assert httpx.get(base + "/v1/models").json()["data"][0]["object"] == "model"
    m = metrics(base)
    assert m["unimap_ready"] == 1 and m["unimap_slots"] == 2
    assert m["unimap_kv_budget_tokens"] == 512
    assert m["unimap_planned_peak_bytes"] == planned.peak_bytes
    assert m["unimap_peak_memory_bytes"] > 0  # (this process holds other models too: see below)
    text = httpx.get(base + "/metrics").text
    assert "# TYPE unimap_requests_total counter" in text


def test_health_is_503_while_loading_then_200(tmp_path: Path) -> None:
    path = with_template(write_tiny_model(tmp_path / "llama", "llama"))
    planned = unimap.plan(path, max_seq_len=64, machine=stand_in_machine())
    go = threading.Event()

    def slow_load() -> Any:
        go.wait(30)
        return unimap.load(path, planned=planned)

    with live(create_app(str(path), planned, loader=slow_load), loaded=False) as base:
        health = httpx.get(base + "/health")
        assert (health.status_code, health.json()["status"]) == (503, "loading")
        with pytest.raises(openai.InternalServerError, match="still loading"):
            client(base).completions.create(model="tiny", prompt="w1", max_tokens=2)
        go.set()
        wait_for(lambda: httpx.get(base + "/health").status_code == 200, "the model")


def test_a_model_that_fails_to_load_says_why(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "llama", "llama")
    planned = unimap.plan(path, max_seq_len=64, machine=stand_in_machine())

    def broken() -> Any:
        raise unimap.ModelError("the weights are gone")

    with live(create_app(str(path), planned, loader=broken)) as base:
        health = httpx.get(base + "/health")
        assert health.status_code == 503 and health.json() == {
            "status": "failed", "model": str(path), "error": "the weights are gone"}
        answer = httpx.post(base + "/v1/completions", json={"prompt": "w1"})
        assert answer.status_code == 503 and "failed to load" in answer.json()["error"]["message"]


# ---------------------------------------------------------------- the parts, without a server


class WordTokenizer:
    """Words "wN" are token N; a template that joins the messages."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(w[1:]) for w in text.split() if w.startswith("w")]

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool,
                            add_generation_prompt: bool) -> str:
        return " ".join(m["content"] for m in messages)


SERVED = Served(WordTokenizer(), 100, True, 64, 128)


def test_parse_request_defaults_and_reservation() -> None:
    job = parse_request(b'{"messages": [{"role": "user", "content": "w5 w6"}], "stop": "w7"}',
                        "chat", SERVED)
    assert job == Job("chat", (5, 6), 62, 0.0, 1.0, 0, 0.0, None, ("w7",), False, False, False)
    assert job.reserved_tokens == 64  # no max_tokens: the rest of the planned sequence
    job = parse_request(b'{"prompt": "w1 w2 w3", "max_completion_tokens": 5, "max_tokens": 50, '
                        b'"stream": true, "stream_options": {"include_usage": true}, "seed": 3, '
                        b'"temperature": 1, "top_k": 4, "min_p": 0.1, "top_p": 0.5}', "completion", SERVED)
    assert (job.max_tokens, job.stream, job.include_usage, job.seed, job.top_k) == (5, True, True, 3, 4)
    plain = Served(WordTokenizer(), 100, False, 64, None)
    with pytest.raises(RequestError, match="does not say what context"):
        parse_request(b'{"prompt": "w1", "max_tokens": 64}', "completion", plain)


def test_trained_context_shorter_than_the_plan_bounds_a_request() -> None:
    served = Served(WordTokenizer(), 100, True, 256, 100)
    with pytest.raises(RequestError, match="trained for 100") as caught:
        parse_request(b'{"prompt": "w1 w2", "max_tokens": 99}', "completion", served)
    assert "256 tokens a request" in str(caught.value) and caught.value.status == 400
    assert parse_request(b'{"prompt": "w1 w2"}', "completion", served).max_tokens == 98


def test_stop_text_holds_back_what_may_begin_a_stop_string() -> None:
    stopper = StopText(("END", "\nUser:"))
    assert stopper.feed("hello E") == ("hello ", False)
    assert stopper.feed("N") == ("", False)
    assert stopper.feed("x\n") == ("ENx", False)
    assert stopper.feed("Us") == ("", False)
    assert stopper.feed("er: more") == ("", True)
    assert StopText(()).feed("as is") == ("as is", False)
    tail = StopText(("END",))
    assert tail.feed("abcE") == ("abc", False) and tail.flush() == "E"


def test_admission_is_fifo_bounded_and_gives_back_what_leaves() -> None:
    loop = asyncio.new_event_loop()

    def request(tokens: int) -> Active:
        job = Job("completion", (1,) * (tokens - 1), 1, 0.0, 1.0, 0, 0.0, None, (), False, False, False)
        return Active(job, loop)

    admission = Admission(slots=2, budget_tokens=100, max_queue=2)
    first, second, third, fourth = request(60), request(30), request(50), request(5)
    for active in (first, second):
        admission.enqueue(active)
    assert admission.take() == [first, second]  # two slots, 90 tokens reserved
    admission.enqueue(third)
    admission.enqueue(fourth)  # would fit, but may not overtake the third
    assert admission.take() == [] and len(admission.waiting) == 2
    with pytest.raises(RequestError) as caught:
        admission.enqueue(request(1))
    assert caught.value.status == 429 and caught.value.retry_after is not None
    admission.release(second)  # a slot, but 60 + 50 > 100: the head still waits
    assert admission.take() == []
    admission.release(first)
    assert admission.take() == [third, fourth]
    assert (admission.active, admission.reserved_tokens) == (2, 55)
    leaving = request(10)
    admission.enqueue(leaving)
    assert admission.withdraw(leaving) and not admission.waiting  # a client that left the queue
    assert not admission.withdraw(third)  # already in the batch: the generation thread stops it
    admission.release(third)
    admission.release(fourth)
    assert (admission.active, admission.reserved_tokens) == (0, 0)
    none_may_wait = Admission(slots=1, budget_tokens=10, max_queue=0)
    none_may_wait.enqueue(request(5))  # a free slot: no waiting needed
    with pytest.raises(RequestError):
        none_may_wait.enqueue(request(5))
    loop.close()


# ---------------------------------------------------------------- the command


def test_serve_refuses_what_it_cannot_serve_before_loading(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "llama", "llama-hd64")
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(path), "--kv-bits", "8", "--max-batch-size", "2"])
    assert result.exit_code == 2 and "--kv-bits: a batch's slots hold plain KV caches" in result.output
    gemma = write_tiny_model(tmp_path / "gemma3", "gemma3")
    result = runner.invoke(cli, ["serve", str(gemma), "--max-batch-size", "2"])
    assert result.exit_code == 2 and "sliding layers" in result.output and "--max-batch-size 1" in \
        result.output
    result = runner.invoke(cli, ["serve", str(path), "--max-queue", "-1"])
    assert result.exit_code == 2 and "--max-queue" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["serve", str(path), "--port", str(port), "--max-seq-len", "64"])
    assert result.exit_code == 2 and "cannot listen there" in result.output


@contextlib.contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`unimap serve ARGS` in its own process (its own MLX peak), ready, on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    process = subprocess.Popen([sys.executable, "-m", "unimap", "serve", *args, "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(base + "/health").status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    try:
        wait_for(ready, "unimap serve", 60)
        assert process.poll() is None, process.communicate()[1]
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_measured_peak_of_a_full_batch_is_within_the_plan(tmp_path: Path) -> None:
    """A model whose KV cache outweighs its weights (wide heads, 8 layers), four slots of 128
    tokens taken and retaken by eight requests of every length: the server's measured MLX peak
    stays within the plan's (mlx-lm's BatchGenerator peaked 20 % above it on this load)."""
    from tiny_models import TINY, write_random_model

    path = write_random_model(tmp_path / "wide", {
        "model_type": "llama", **TINY, "hidden_size": 128, "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 256, "num_hidden_layers": 8, "intermediate_size": 256})
    with serving(str(path), "--max-seq-len", "128", "--max-batch-size", "4") as (_, base):
        def ask(i: int) -> None:
            words = 10 + 13 * i
            time.sleep(0.05 * i)
            client(base).completions.create(model="wide", prompt=" ".join(["w7"] * words),
                                            max_tokens=120 - words)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        m = metrics(base)
    assert m['unimap_requests_total{outcome="finished"}'] == 8
    assert m["unimap_kv_cache_bytes"] == 4 * 128 * 8 * 2 * 2 * 256 * 4  # slots x tokens x layers x K,V
    assert m["unimap_peak_memory_bytes"] <= m["unimap_planned_peak_bytes"]


@needs_stories
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_accepting_finishes_in_flight_and_exits_0(sig: signal.Signals) -> None:
    with serving(str(STORIES), "--max-seq-len", "1024") as (process, base):
        asked = {"prompt": "Once upon a time", "max_tokens": 600, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=asked, timeout=60) as stream:
            lines = stream.iter_lines()
            next(lines)
            process.send_signal(sig)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the reply in flight was finished
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("length", "stop")
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "stopped" in err
