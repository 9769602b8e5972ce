"""`unimap run` and the Python generation API keep the plan's promises and behave as mlx-lm users
expect: a chat keeps its KV cache between turns (only new messages prefill) and gives the same
replies as generating from the whole conversation, flags take mlx-lm's names and are checked
before anything loads, and plans never pass the model's trained context without saying so."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from click.testing import CliRunner
from tiny_models import stand_in_machine, write_tiny_model

import unimap
from unimap.cli import cli
from unimap.errors import ArgumentTypeError
from unimap.generate import Chat, ContextFullError, make_cache, plain_conversation, stream_generate
from unimap.inspect import trained_context

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"
needs_stories = pytest.mark.skipif(not STORIES.is_file(), reason="stories260K.gguf is not beside the project")


def with_template(folder: Path) -> Path:
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_template(write_tiny_model(tmp_path_factory.mktemp("chat") / "llama", "llama"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("plain") / "llama", "llama")


def fresh_reply(model: Any, tokenizer: Any, ids: list[int], max_tokens: int) -> list[int]:
    """The greedy reply to the whole conversation, prefilled from an empty cache."""
    fresh = make_cache(model)
    return [r.token for r in stream_generate(model, tokenizer, ids, max_tokens, prompt_cache=fresh)
            if r.token is not None]


# ---------------------------------------------------------------- chat keeps its cache


@pytest.mark.parametrize("fixture", ["templated", "plain"])
def test_chat_prefills_only_new_messages(fixture: str, request: pytest.FixtureRequest) -> None:
    """Three turns: each prefills only what the cache lacks, and every reply equals the reply
    generated from the whole conversation in a fresh cache."""
    model, tokenizer, _ = unimap.load(request.getfixturevalue(fixture), max_seq_len=512,
                                      machine=stand_in_machine())
    chat = Chat(model, tokenizer, system_prompt="w9 w8")
    assert chat.templated is (fixture == "templated")
    held_before, lengths = 0, []
    for message in ("w1 w2 w3", "w4 w5", "w6 w7 w8 w9"):
        ids = chat.prompt_ids([*chat.messages, {"role": "user", "content": message}])
        responses = list(chat.send(message, max_tokens=6))
        lengths.append(len(ids))
        prefilled = responses[0].prompt_tokens
        assert prefilled == len(ids) - held_before  # the earlier turns came from the cache
        generated = [r.token for r in responses if r.token is not None]
        assert generated == fresh_reply(model, tokenizer, ids, 6)
        held_before = chat.tokens
        assert held_before >= len(ids) + len(generated) - 1
    assert lengths[2] > lengths[1] > lengths[0]
    third_prefill = lengths[2] - lengths[1]
    assert third_prefill < lengths[2] // 2  # far less than the whole history


def test_plain_format_keeps_every_turn(plain: Path) -> None:
    model, tokenizer, _ = unimap.load(plain, max_seq_len=512, machine=stand_in_machine())
    chat = Chat(model, tokenizer, system_prompt="w50")
    list(chat.send("w1 w2", max_tokens=4))
    list(chat.send("w3", max_tokens=4))
    text = plain_conversation(chat.messages)
    assert text.startswith("w50\n\nUser: w1 w2\nAssistant:")
    assert "\n\nUser: w3\nAssistant:" in text
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_plain_reply_ends_where_the_model_starts_the_next_turn() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert plain_conversation(messages) == "User: hi\nAssistant: hello\n\n"


def test_interrupted_reply_leaves_a_consistent_cache(templated: Path) -> None:
    """A reply closed after two tokens (Ctrl-C) keeps what was said; the next turn's reply is
    still the one the whole conversation gives."""
    model, tokenizer, _ = unimap.load(templated, max_seq_len=512, machine=stand_in_machine())
    chat = Chat(model, tokenizer)
    stream = chat.send("w1 w2 w3", max_tokens=20)
    next(stream), next(stream)
    stream.close()
    assert chat.messages[-1]["role"] == "assistant"
    ids = chat.prompt_ids([*chat.messages, {"role": "user", "content": "w4"}])
    generated = [r.token for r in chat.send("w4", max_tokens=5) if r.token is not None]
    assert generated == fresh_reply(model, tokenizer, ids, 5)


def test_full_conversation_says_so_and_clear_starts_over(templated: Path) -> None:
    model, tokenizer, plan = unimap.load(templated, max_seq_len=40, machine=stand_in_machine())
    chat = Chat(model, tokenizer)
    list(chat.send("w1 w2 w3 w4 w5 w6", max_tokens=30))
    assert chat.tokens <= plan.estimate.sequence_tokens
    held = chat.tokens
    with pytest.raises(ContextFullError, match=r"the conversation is full: it holds \d+ tokens"):
        list(chat.send("w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18", max_tokens=4))
    assert chat.tokens == held and chat.messages[-1]["role"] == "assistant"  # nothing changed
    chat.clear()
    assert chat.tokens == 0 and chat.messages == []
    assert list(chat.send("w7 w8", max_tokens=2))


def test_chat_refuses_bad_messages(templated: Path) -> None:
    model, tokenizer, _ = unimap.load(templated, max_seq_len=64, machine=stand_in_machine())
    chat = Chat(model, tokenizer)
    with pytest.raises(unimap.ConfigError, match="the message is empty"):
        list(chat.send("  "))
    with pytest.raises(ArgumentTypeError, match="message must be text"):
        list(chat.send(3))  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="system_prompt must be text"):
        Chat(model, tokenizer, system_prompt=5)  # type: ignore[arg-type]
    with pytest.raises(unimap.ConfigError, match="--top-k must be"):
        list(chat.send("w1", top_k=-1))


# ---------------------------------------------------------------- the plan bounds every run


def test_an_over_long_prompt_never_lifts_the_peak_above_the_plan(plain: Path) -> None:
    """Refused before prefill; the longest prompt the plan allows, then a reply to the plan's
    end, stay within the predicted peak."""
    gc.collect()  # other tests' models: the plan counts this one's arrays
    mx.clear_cache()
    before = mx.get_active_memory()
    model, tokenizer, plan = unimap.load(plain, max_seq_len=96, machine=stand_in_machine())
    mx.synchronize()
    mx.reset_peak_memory()
    with pytest.raises(ContextFullError, match="the plan was made for 96"):
        list(stream_generate(model, tokenizer, [5] * 300, max_tokens=10))
    responses = list(stream_generate(model, tokenizer, [5 + i % 50 for i in range(95)], max_tokens=50))
    assert responses[-1].finish_reason == "length" and responses[-1].generation_tokens == 1
    responses = list(stream_generate(model, tokenizer, [5, 6, 7], max_tokens=500))
    assert responses[-1].generation_tokens == 93  # the reply stops where the plan ends
    assert 0 < mx.get_peak_memory() - before <= plan.peak_bytes


# ---------------------------------------------------------------- trained context


@pytest.mark.parametrize(("config", "expected"), [
    ({"max_position_embeddings": 2048}, 2048),
    ({"text_config": {"max_position_embeddings": 8192}}, 8192),
    ({"n_positions": 1024}, 1024),
    # Llama 3.1: the stated limit already includes the stretch
    ({"max_position_embeddings": 131072, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}, 131072),
    # Qwen2.5 with YaRN switched on: 4 x 32768
    ({"max_position_embeddings": 32768, "rope_scaling": {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, 131072),
    ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}}, 8192),
    ({"max_position_embeddings": 4096, "rope_scaling": {"type": "yarn", "factor": "x"}}, 4096),
    ({"hidden_size": 8}, None),
    ({"max_position_embeddings": -5}, None),
])
def test_trained_context(config: dict[str, Any], expected: int | None) -> None:
    found = trained_context(config)
    assert (found[0] if found else None) == expected


def test_default_context_never_passes_training_and_longer_plans_say_so(plain: Path) -> None:
    plan = unimap.plan(plain, machine=stand_in_machine())  # trained for 1024 (tiny config)
    assert plan.estimate.options.max_seq_len == 1024 and not any("trained" in n for n in plan.notes)
    longer = unimap.plan(plain, max_seq_len=4096, machine=stand_in_machine())
    assert any("past the 1024 tokens the model was trained for" in n for n in longer.notes)
    assert longer.to_dict()["totals"]["trained_context"] == 1024


def test_ways_out_never_suggest_more_than_the_model_was_trained_for(plain: Path) -> None:
    plan = unimap.plan(plain, max_seq_len=1 << 20, machine="h100-80gb", ram="64MB",
                       gpu_budget="8MB")
    assert not plan.fits
    suggested = [int(m.group(1)) for w in plan.ways_out for m in [re.search(r"--max-seq-len (\d+)", w)] if m]
    assert suggested and all(n <= 1024 for n in suggested)


@needs_stories
def test_gguf_context_length_is_the_default() -> None:
    plan = unimap.plan(str(STORIES), machine=stand_in_machine())
    assert plan.estimate.options.max_seq_len == plan.estimate.trained_context
    assert plan.estimate.trained_context is not None and plan.estimate.trained_context < 4096


# ---------------------------------------------------------------- the CLI


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["run", *args], input=stdin)


def test_cli_prompt_goes_through_the_chat_template(templated: Path) -> None:
    """As mlx_lm.generate: -p is a user message in the chat template (not echoed);
    --ignore-chat-template continues it as plain text (echoed); the model may come first."""
    templated_run = run(str(templated), "-p", "w1 w2", "--max-tokens", "3", "--max-seq-len", "64")
    assert templated_run.exit_code == 0, templated_run.output
    assert not templated_run.stdout.startswith("w1 w2")
    assert "prompt: 4 tokens" in templated_run.stderr  # "user: w1 w2 assistant:"
    raw = run("-m", str(templated), "-p", "w1 w2", "--ignore-chat-template", "--max-tokens", "3",
              "--max-seq-len", "64")
    assert raw.exit_code == 0 and raw.stdout.startswith("w1 w2")
    assert "prompt: 2 tokens" in raw.stderr
    system = run(str(templated), "-p", "w1 w2", "--system-prompt", "w3 w4 w5", "--max-tokens", "3",
                 "--max-seq-len", "64")
    assert "prompt: 8 tokens" in system.stderr  # "system: w3 w4 w5 " added


def test_cli_chat_prefills_only_new_messages(templated: Path) -> None:
    result = run(str(templated), "-i", "--max-tokens", "4", "--max-seq-len", "256",
                 stdin="w1 w2 w3\nw4\n/help\n/nonsense\nw5 w6\n/clear\nw7\n")  # ends with Ctrl-D
    assert result.exit_code == 0, result.output
    prefilled = [int(n) for n in re.findall(r"prompt: (\d+) tokens", result.stderr)]
    assert len(prefilled) == 4
    first, second, third, after_clear = prefilled
    assert first == 5  # "user: w1 w2 w3 assistant:"
    assert second < first and third < first  # the history came from the cache
    assert after_clear == 3  # "user: w7 assistant:": the conversation started over
    assert "/clear starts the conversation over" in result.stderr
    assert "unknown command /nonsense" in result.stderr
    held = [int(n) for n in re.findall(r"\((\d+) of 256 planned tokens held\)", result.stderr)]
    assert held[0] < held[1] < held[2] and held[3] < held[2]


def test_cli_sampling_flags_are_mlx_lms_and_checked_before_loading(plain: Path) -> None:
    greedy = run(str(plain), "-p", "w1 w2", "--max-tokens", "8", "-q")
    top1 = run(str(plain), "-p", "w1 w2", "--max-tokens", "8", "-q", "--temp", "1.5", "--top-k", "1",
               "--seed", "3")
    assert greedy.exit_code == 0 and top1.exit_code == 0, top1.output
    assert greedy.stdout == top1.stdout  # top-k 1 is greedy at any temperature
    penalized = run(str(plain), "-p", "w1 w2", "--max-tokens", "8", "-q", "--repetition-penalty", "50",
                    "--repetition-context-size", "8", "--min-p", "0.05", "--xtc-probability", "0.5",
                    "--xtc-threshold", "0.2")
    assert penalized.exit_code == 0, penalized.output
    for flags, message in [(("--top-k", "-1"), "--top-k must be from 0"),
                           (("--min-p", "2"), "--min-p must be from 0 to 1"),
                           (("--xtc-threshold", "0.9"), "--xtc-threshold must be from 0 to 0.5"),
                           (("--repetition-penalty", "0"), "--repetition-penalty must be above 0"),
                           (("--repetition-context-size", "0"), "--repetition-context-size must be"),
                           (("--temp", "-1"), "--temp must be from 0 to 100")]:
        refused = run(str(plain), "-p", "w1", *flags)
        assert refused.exit_code == 2 and message in refused.stderr, refused.output
        assert "plan:" not in refused.stderr  # nothing was planned or loaded


def test_cli_json_verbose_quiet(plain: Path) -> None:
    as_json = run(str(plain), "-p", "w1 w2", "--max-tokens", "5", "--max-seq-len", "64", "--json")
    assert as_json.exit_code == 0, as_json.output
    figures = json.loads(as_json.stdout)
    assert figures["generation_tokens"] <= 5 and figures["prompt_tokens"] == 2
    assert figures["peak_memory_bytes"] <= figures["predicted_peak_bytes"]
    assert figures["planned_tokens"] == 64 and isinstance(figures["text"], str)
    quiet = run(str(plain), "-p", "w1 w2", "--max-tokens", "5", "-q")
    assert quiet.stderr == "" and quiet.stdout.startswith("w1 w2")
    verbose = run(str(plain), "-p", "w1 w2", "--max-tokens", "5", "-v")
    assert "budget" in verbose.stderr and "prompt: 2 tokens" in verbose.stderr
    for args, message in [(("-v", "-q"), "not both"), (("-i", "--json"), "--json prints one reply")]:
        refused = run(str(plain), "-p", "w1", *args)
        assert refused.exit_code == 2 and message in refused.stderr


def test_cli_model_first_or_with_m(plain: Path) -> None:
    assert run("-h").exit_code == 0 and "--system-prompt" in run("-h").stdout
    both = run(str(plain), "-m", "other", "-p", "w1")
    assert both.exit_code == 2 and "two models given" in both.stderr
    none = run("-p", "w1")
    assert none.exit_code == 2 and "give a model" in none.stderr
    planned = CliRunner().invoke(cli, ["plan", "-m", str(plain), "--json"])
    assert planned.exit_code == 0 and json.loads(planned.stdout)["totals"]["trained_context"] == 1024


@needs_stories
def test_stories_story_reads_as_words() -> None:
    """The README's main job: a continuation whose words are spaced (no "littlegirl")."""
    result = run(str(STORIES), "-p", "Once upon a time", "--max-tokens", "40", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Once upon a time, there was a little girl")
    assert re.search(r"[a-z][A-Z]|[a-z]{25,}", result.stdout) is None


# ---------------------------------------------------------------- --max-kv-size


@pytest.mark.parametrize("family", ["phi3", "llama"])
def test_rotating_caches_copies_are_priced(tmp_path: Path, family: str) -> None:
    """--max-kv-size 256 on an 8-layer twin, a 700-token prompt in chunks of the window: every
    layer's kept window is copied (trimmed, put in order) before each chunk is joined on. Its
    need (the plan's memory limit released) within the plan; without the copies priced, phi3's
    was 1/0.959 of the plan (llama's twins at other widths and lengths: 1/0.98)."""
    from tiny_families import tiny_config
    from tiny_models import write_random_model

    path = write_random_model(tmp_path / family, {**tiny_config(family), "num_hidden_layers": 8})
    gc.collect()
    model, tokenizer, plan = unimap.load(path, max_seq_len=704, max_kv_size=256,
                                         machine=stand_in_machine())
    model._unimap.limits.release()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    prompt = [(31 * i) % 120 + 3 for i in range(700)]
    assert len([r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4)]) == 4
    assert mx.get_peak_memory() - before <= plan.peak_bytes - plan.estimate.weight_bytes
    assert plan.estimate.activation_terms["prefill/window-copies"] == 8 * 255 * 2 * 2 * 16 * 4


def test_rotating_cache_is_mlx_lms_and_within_its_plan(plain: Path) -> None:
    """--max-kv-size: the KV cache is a rotating window (priced so), generation runs past the
    window with the tokens mlx-lm's own --max-kv-size gives, and the peak stays in the plan."""
    from mlx_lm import load as mlx_load
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import RotatingKVCache
    from mlx_lm.sample_utils import make_sampler

    machine = stand_in_machine()
    whole = unimap.plan(plain, max_seq_len=1024, machine=machine)
    windowed = unimap.plan(plain, max_seq_len=1024, max_kv_size=32, machine=machine)
    kv = sum(layer.kv_bytes for layer in windowed.estimate.layers)
    assert kv < sum(layer.kv_bytes for layer in whole.estimate.layers) // 8
    prompt = [5 + (7 * i) % 90 for i in range(40)]
    reference, _ = mlx_load(str(plain))
    # mlx-lm's own flag builds no rotating cache for a model with make_cache (llama has one
    # since 0.32), so the reference gets mlx-lm's RotatingKVCache directly, as --max-kv-size does
    window = [RotatingKVCache(max_size=32, keep=4) for _ in reference.layers]
    expected = [int(t) for t, _ in generate_step(mx.array(prompt), reference, max_tokens=120,
                                                 prompt_cache=window, prefill_step_size=32,
                                                 sampler=make_sampler(0.0))]
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    model, tokenizer, plan = unimap.load(plain, max_seq_len=1024, max_kv_size=32, machine=machine)
    mx.reset_peak_memory()
    tokens = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=120)]
    assert tokens == expected[:len(tokens)] and len(tokens) >= 60  # well past the 32-token window
    assert 0 < mx.get_peak_memory() - before <= plan.peak_bytes


def test_rotating_cache_refusals(plain: Path, tmp_path: Path) -> None:
    with pytest.raises(unimap.ConfigError, match="no quantized rotating cache"):
        unimap.plan(plain, max_kv_size=64, kv_bits=8, machine=stand_in_machine())
    with pytest.raises(unimap.ConfigError, match="--max-kv-size must be from 8"):
        unimap.plan(plain, max_kv_size=3, machine=stand_in_machine())
    gemma = write_tiny_model(tmp_path / "gemma3", "gemma3")
    with pytest.raises(unimap.ConfigError, match="makes its own caches"):
        unimap.plan(gemma, max_kv_size=64, machine=stand_in_machine())
    refused = run(str(plain), "-p", "w1", "--max-kv-size", "abc")
    assert refused.exit_code == 2 and "--max-kv-size" in refused.stderr


def test_a_rotating_cache_is_a_way_out(plain: Path) -> None:
    plan = unimap.plan(plain, max_seq_len=1 << 20, machine="h100-80gb", ram="64MB", gpu_budget="8MB")
    assert any(w.startswith("--max-kv-size ") for w in plan.ways_out), plan.ways_out


def test_a_plain_tokenizer_streams_the_whole_text(plain: Path) -> None:
    """A tokenizer without a streaming detokenizer (a raw transformers one) is decoded line by
    line; the streamed pieces add up to the decoded reply."""
    from transformers import AutoTokenizer

    model, _, _ = unimap.load(plain, max_seq_len=128, machine=stand_in_machine())
    raw = AutoTokenizer.from_pretrained(str(plain))
    assert not hasattr(raw, "detokenizer")
    responses = list(stream_generate(model, raw, [5, 6, 7, 8], max_tokens=30))
    tokens = [r.token for r in responses if r.token is not None and r.token != raw.eos_token_id]
    assert "".join(r.text for r in responses) == raw.decode(tokens)


def test_an_over_long_prompt_gets_ways_out_priced_on_the_machine(plain: Path) -> None:
    """The refusal names the longest --max-seq-len that holds the prompt (never past the
    trained context), or a rotating window when no full cache that long fits; what it names
    fits when planned."""
    machine = stand_in_machine()
    model, tokenizer, plan = unimap.load(plain, max_seq_len=64, machine=machine)
    with pytest.raises(ContextFullError) as refused:
        list(stream_generate(model, tokenizer, [5] * 200, max_tokens=4))
    seq = re.search(r"--max-seq-len (\d+) \(the longest that fits\)", str(refused.value))
    assert seq and 201 <= int(seq.group(1)) <= 1024, str(refused.value)  # trained for 1024
    assert unimap.plan(plain, max_seq_len=int(seq.group(1)), machine=machine).fits
    past = list(stream_generate(model, tokenizer, [5] * 63, max_tokens=4))  # room for one token
    assert len(past) == 1
    with pytest.raises(ContextFullError, match="the model was trained for 1024 tokens"):
        list(stream_generate(model, tokenizer, [5] * 1100, max_tokens=4))


def test_a_rotating_window_is_offered_when_no_full_cache_fits(plain: Path) -> None:
    tight = unimap.plan(plain, max_seq_len=64, machine="h100-80gb", ram="64MB", gpu_budget="8MB")
    assert tight.fits
    ways = tight.room_for(1000)
    assert len(ways) == 1 and ways[0].startswith("--max-kv-size "), ways
    window = int(ways[0].split()[1])
    assert 8 <= window < 1000
    assert unimap.plan(plain, max_seq_len=1000, max_kv_size=window, machine="h100-80gb", ram="64MB",
                       gpu_budget="8MB").fits
    assert tight.room_for(2000) == []  # past the trained context: nothing to offer


def test_cli_chat_ctrl_c_stops_the_reply_not_the_chat(templated: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a reply ends that reply and returns to the prompt; Ctrl-C at the prompt
    gives a fresh line; Ctrl-D leaves with exit code 0."""
    import sys

    module = sys.modules["unimap.generate"]
    real = module.stream_generate
    calls: list[int] = []

    def interrupted_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        for n, response in enumerate(real(*args, **kwargs)):
            if len(calls) == 1 and n == 1:
                raise KeyboardInterrupt
            yield response

    monkeypatch.setattr(module, "stream_generate", interrupted_once)
    typed = iter(["w1 w2", KeyboardInterrupt(), "w3"])

    def fake_input(prompt: str = "") -> str:
        item = next(typed, None)
        if item is None:
            raise EOFError
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr("builtins.input", fake_input)
    result = run(str(templated), "-i", "--max-tokens", "4", "--max-seq-len", "256")
    assert result.exit_code == 0, result.output
    assert "(reply stopped)" in result.stderr
    assert len(re.findall(r"prompt: \d+ tokens", result.stderr)) == 1  # the second turn finished
    assert len(calls) == 2


@pytest.mark.parametrize("quiet", [True, False])
def test_a_run_that_loads_at_once_never_imports_rich(plain: Path, quiet: bool) -> None:
    """What unimap adds to a run's start-up (issue 14): rich, a sixth of it, is imported only for
    the plan's table (-v) or a progress bar (a load that takes a while); a run says its plan and
    figures as plain lines, and -q prints the text alone."""
    import subprocess
    import sys

    args = ["run", str(plain), "-p", "w1 w2", "--max-tokens", "3"] + (["-q"] if quiet else [])
    # main() ends the process (unimap.preload.leave); Python's exit handlers still run
    code = ("import atexit, sys; from unimap.cli import main\n"
            "atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich')))\n"
            f"sys.argv[1:] = {args!r}\nmain()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("w1 w2") and done.stdout.splitlines()[-1] == "[]"
    if quiet:
        assert done.stderr == ""
    else:
        assert "plan: " in done.stderr and " fits; " in done.stderr and "peak memory" in done.stderr


@pytest.mark.parametrize("after", [0.0, 60.0])
def test_the_load_bar_appears_only_when_loading_takes_a_while(plain: Path, after: float,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from unimap import cli as cli_module

    monkeypatch.setattr(cli_module, "LOAD_BAR_AFTER_S", after)
    console = cli_module.LazyConsole(io.StringIO())
    planned = unimap.plan(plain)
    model, _, _ = cli_module._load(str(plain), planned, console)
    assert model is not None
    assert (console._console is not None) == (after == 0.0)  # rich's Console made for the bar
