"""GGUF llama checkpoints: the real stories260K model from ../shared, and malformed files."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gguf_writer import header_bytes

import unimap
from unimap.cli import cli
from unimap.gguf import gguf_config, read_gguf, spm_tokenizer

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"
needs_stories = pytest.mark.skipif(not STORIES.exists(), reason="../shared/models is not here")


LLAMA_META = {"general.architecture": "llama", "tokenizer.ggml.model": "llama",
              "llama.block_count": 1, "llama.embedding_length": 8, "llama.feed_forward_length": 16,
              "llama.attention.head_count": 2, "llama.attention.layer_norm_rms_epsilon": 1e-5,
              "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a"]}


@needs_stories
def test_reads_the_real_header() -> None:
    gguf = read_gguf(STORIES)
    assert gguf.version == 3 and len(gguf.tensors) == 48
    config = gguf_config(gguf)
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (5, 64, 172)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (8, 4, 8)
    assert config["vocab_size"] == 512 and config["rope_traditional"] is True


@needs_stories
def test_plan_counts_the_real_tensors() -> None:
    import mlx.core as mx

    plan = unimap.plan(STORIES, max_seq_len=256)
    arrays = mx.load(str(STORIES))
    assert plan.estimate.weight_bytes == sum(a.nbytes for a in arrays.values())
    assert plan.fits and len(plan.layers) == 5


# Texts for the tokenizer: spaces at either end and in runs, newlines and tabs, characters outside
# stories260K's 512 pieces (byte fallback: accents, CJK, emoji, a ZWJ sequence), a literal "▁".
TEXTS = ["Once upon a time, there was a little girl named Lily.", "héllo wörld 😀", "  two  spaces",
         'Tom said: "Hi!"\nThe end.', "x", "abcabcabc aaaa", "日本語", "", " ", "   ", " a", "a ",
         "ends with spaces   ", "\n", "\n\nTwo newlines\n\n", "tab\there\t", "mixed \t \n  spaces ",
         "▁already▁escaped", "party 🎉🎉 family 👩‍👩‍👧", "ÅÄÖ åäö ß ñ Ω", "3.14 $ 100% #1 @x (a) [b] {c}"]


def stories_meta() -> dict[str, Any]:
    """stories260K's metadata as tests/gguf_writer.py takes it."""
    return {k: ([float(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], float) else v)
            for k, v in read_gguf(STORIES).metadata.items()}


def vocabulary_file(tmp_path: Path, **changes: Any) -> Path:
    """A GGUF file (header only) holding stories260K's tokenizer with `changes` to its metadata
    (keys after "tokenizer.ggml.", or "chat_template")."""
    meta = stories_meta()
    for key, value in changes.items():
        meta[f"tokenizer.{key}" if key == "chat_template" else f"tokenizer.ggml.{key}"] = value
    path = tmp_path / "vocabulary.gguf"
    path.write_bytes(header_bytes(meta, []))
    return path


def without_bytes(meta: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer entries of `meta` with the byte pieces left out (unknown text is then <unk>)."""
    keep = [i for i, kind in enumerate(meta["tokenizer.ggml.token_type"]) if kind != 6]
    return {key: [meta[f"tokenizer.ggml.{key}"][i] for i in keep]
            for key in ("tokens", "scores", "token_type")}


def sentencepiece_of(gguf: Any) -> Any:
    """The reference: Google's SentencePiece given the same vocabulary as a BPE model (scores,
    types, byte fallback, the leading "▁" as add_dummy_prefix, no other normalization)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    meta = gguf.metadata
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = 6 in meta["tokenizer.ggml.token_type"]
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    proto.normalizer_spec.remove_extra_whitespaces = False
    for piece, score, kind in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                                  meta["tokenizer.ggml.token_type"], strict=True):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.fixture(scope="module")
def stories_tokenizer() -> Any:
    return spm_tokenizer(read_gguf(STORIES))


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Texts of words the vocabulary knows, odd characters and spacing, mixed at random."""
    import random

    rng = random.Random(seed)
    words = ["the", "a", "little", "girl", "Lily", "was", "happy", "Once", "upon", "time", "said",
             "dog", "ball", "park", "Tom", "éclair", "naïve", "日本", "🙂", "x", "zz", "qu"]
    glue = [" ", " ", " ", "", "  ", ", ", ". ", "\n", "!\n\n", " \t", '"', "'s "]
    chars = "abcdefghijklmnopqrstuvwxyzLT  ,.!?\n\t'\"é日😀"
    return ["".join(rng.choice(words) + rng.choice(glue) for _ in range(rng.randint(0, 24))) if i % 2
            else "".join(rng.choice(chars) for _ in range(rng.randint(0, 48))) for i in range(count)]


@needs_stories
@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_sentencepiece(stories_tokenizer: Any, text: str) -> None:
    reference = sentencepiece_of(read_gguf(STORIES))
    ids = stories_tokenizer.encode(text)
    assert ids == [1, *reference.encode(text)]  # BOS, as llama.cpp adds it by default
    expected = text.replace("▁", " ")  # "▁" is how both spell a space
    assert stories_tokenizer.decode(ids[1:]) == reference.decode(ids[1:]) == expected
    assert stories_tokenizer.decode(ids, skip_special_tokens=True) == expected


@needs_stories
def test_tokenizer_matches_sentencepiece_on_many_and_long_texts(stories_tokenizer: Any) -> None:
    reference = sentencepiece_of(read_gguf(STORIES))
    texts = random_texts(400)
    for text in texts:
        assert stories_tokenizer.encode(text, add_special_tokens=False) == reference.encode(text), text
    long = "".join(texts) * 2  # ~20k characters in one piece of text, as SentencePiece takes it
    assert len(long) > 16_000
    ids = stories_tokenizer.encode(long, add_special_tokens=False)
    assert ids == reference.encode(long)
    assert stories_tokenizer.decode(ids) == long


@needs_stories
@pytest.mark.parametrize("changes", [{"add_space_prefix": False}, {"add_space_prefix": True},
                                     {"add_bos_token": False}, "no byte pieces"], ids=str)
def test_tokenizer_follows_the_metadata(tmp_path: Path, changes: Any) -> None:
    """What the metadata says about the leading space, BOS and byte fallback, against
    SentencePiece given the same."""
    changes = without_bytes(stories_meta()) if changes == "no byte pieces" else changes
    gguf = read_gguf(vocabulary_file(tmp_path, **changes))
    ours, reference = spm_tokenizer(gguf), sentencepiece_of(gguf)
    bos = [] if changes.get("add_bos_token") is False else [1]
    for text in TEXTS + random_texts(60, seed=1):
        assert ours.encode(text) == bos + reference.encode(text), text
    if "tokens" in changes:  # unknown characters in a row are one <unk>, as SentencePiece has them
        assert ours.encode("a 日本語😀 b", add_special_tokens=False).count(0) == 1
    if changes.get("add_space_prefix") is False:
        assert ours.convert_ids_to_tokens(ours.encode(" a", add_special_tokens=False)) == ["▁a"]


@needs_stories
def test_tokenizer_special_tokens_eos_and_chat_template(tmp_path: Path, stories_tokenizer: Any) -> None:
    assert stories_tokenizer.encode("Hi</s>", add_special_tokens=False)[-1] == 2  # matched whole
    assert stories_tokenizer.encode("<s>", add_special_tokens=False) == [1]
    assert (stories_tokenizer.bos_token, stories_tokenizer.eos_token_ids) == ("<s>", {2})
    assert not stories_tokenizer.has_chat_template
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    gguf = read_gguf(vocabulary_file(tmp_path, add_eos_token=True, chat_template=template))
    tokenizer = spm_tokenizer(gguf)
    assert tokenizer.encode("Hi")[0] == 1 and tokenizer.encode("Hi")[-1] == 2
    assert tokenizer.has_chat_template
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert chat == "[user] Hi\n"


@pytest.mark.parametrize(("changes", "message"), [
    ({"tokens": ["<unk>", "<s>", "</s>", "a", "a"]}, "token 'a' appears twice"),
    ({"scores": [0.0, 0.0, 0.0, float("nan")]}, "scores must be numbers"),
    ({"scores": [0.0, 0.0]}, "differ in length"),
    ({"token_type": [2, 3, 3, 6]}, "byte token 'a' is not of the form"),
    ({"add_space_prefix": 1}, "'tokenizer.ggml.add_space_prefix' should be true or false"),
    ({"add_bos_token": "yes"}, "'tokenizer.ggml.add_bos_token' should be true or false"),
    ({"eos_token_id": 9}, "'tokenizer.ggml.eos_token_id' is 9, not a token"),
])
def test_bad_tokenizer_metadata_is_refused_at_inspect_time(tmp_path: Path, changes: dict[str, Any],
                                                           message: str) -> None:
    from unimap.gguf import check_tokenizer

    meta = dict(LLAMA_META)
    meta.update({f"tokenizer.ggml.{k}": v for k, v in changes.items()})
    path = tmp_path / "vocabulary.gguf"
    path.write_bytes(header_bytes(meta, []))
    gguf = read_gguf(path)
    for build in (check_tokenizer, spm_tokenizer):
        with pytest.raises(unimap.ModelError, match=message):
            build(gguf)


@needs_stories
def test_mlx_lm_generate_runs_with_the_gguf_tokenizer() -> None:
    """mlx-lm's own generate takes the tokenizer unimap.load returns (an mlx-lm TokenizerWrapper)."""
    import mlx_lm
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    model, tokenizer, _ = unimap.load(STORIES, max_seq_len=256)
    assert isinstance(tokenizer, TokenizerWrapper)
    text = mlx_lm.generate(model, tokenizer, "Once upon a time", max_tokens=24)
    assert text.startswith(", there was a little girl named Lily.")  # greedy, real weights


def streamed(tokenizer: Any, ids: list[int]) -> list[str]:
    """The segments mlx-lm's streaming detokenizer hands out, token by token, then at the end."""
    detokenizer = tokenizer.detokenizer
    segments = []
    for token in ids:
        detokenizer.add_token(token)
        segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    return [*segments, detokenizer.last_segment]


@needs_stories
def test_streaming_decode_is_decode(stories_tokenizer: Any) -> None:
    text = "".join(t for t in TEXTS + random_texts(40, seed=2) if "▁" not in t)
    ids = stories_tokenizer.encode(text, add_special_tokens=False)
    segments = streamed(stories_tokenizer, ids)
    # the decoder drops the leading "▁" it takes for the added prefix; streaming keeps it, as a
    # reply (which continues a prompt) needs its first space
    assert "".join(segments) == " " + stories_tokenizer.decode(ids) == " " + text
    assert not any("\ufffd" in s for s in segments)  # never half a character
    reply = ids[ids.index(stories_tokenizer.encode(",", add_special_tokens=False)[-1]):]
    assert "".join(streamed(stories_tokenizer, reply)) == stories_tokenizer.decode(reply)


@needs_stories
@pytest.mark.parametrize("prompt", ["Once upon a time", "Once upon a time, there was a little"])
def test_a_continuation_keeps_its_spaces(prompt: str) -> None:
    """Every word boundary of a reply, first included: the streamed reply is the decoded prompt
    and reply less the prompt, through unimap's and mlx-lm's generation loops alike."""
    import mlx_lm

    model, tokenizer, _ = unimap.load(STORIES, max_seq_len=256)
    prompt_ids = tokenizer.encode(prompt)
    for stream_generate in (unimap.stream_generate, mlx_lm.stream_generate):
        responses = list(stream_generate(model, tokenizer, prompt, max_tokens=60))
        reply = "".join(r.text for r in responses)
        ids = [r.token for r in responses if r.token not in tokenizer.eos_token_ids]
        assert len(ids) > 40
        assert prompt + reply == tokenizer.decode(prompt_ids + ids, skip_special_tokens=True)
        assert reply.startswith(" girl named Lily" if prompt.endswith("little") else ", there was")
    result = CliRunner().invoke(cli, ["run", "-m", str(STORIES), "--prompt", prompt,
                                      "--max-tokens", "8", "--max-seq-len", "64"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{prompt}{reply[:10]}")


@needs_stories
def test_the_real_model_tells_a_story() -> None:
    model, tokenizer, plan = unimap.load(STORIES, max_seq_len=256)
    text = unimap.generate(model, tokenizer, "Once upon a time", max_tokens=24)
    assert text.startswith(", there was a little girl named Lily.")  # greedy, real weights


@needs_stories
def test_cli_run_streams_a_story() -> None:
    result = CliRunner().invoke(cli, ["run", "-m", str(STORIES), "--prompt", "Once upon a time",
                                      "--max-tokens", "30", "--max-seq-len", "256"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Once upon a time, there was a little girl")
    assert "plan: " in result.stderr and "fits" in result.stderr
    assert "tokens/s" in result.stderr and "peak memory" in result.stderr and "(plan: " in result.stderr


@pytest.mark.parametrize(("raw", "message"), [
    (b"GGML" + b"\0" * 20, "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "GGUF version 1 is not supported"),
    (header_bytes(LLAMA_META, [])[:40], "truncated or corrupt"),
    (header_bytes({**LLAMA_META, "general.architecture": "gpt2"}, []), "GGUF architecture 'gpt2'"),
    (header_bytes({**LLAMA_META, "tokenizer.ggml.model": "bert"}, []), "tokenizer kind 'bert'"),
    (header_bytes(LLAMA_META, [("blk.0.attn_q.weight", [64, 8], 12)]), "ggml type 12, which MLX"),
    (header_bytes(LLAMA_META, [("blk.0.attn_norm.weight", [64], 8)]), "expected a matrix whose rows"),
    (header_bytes(LLAMA_META, [("blk.0.attn_q.weight", [40, 8], 8)]), "expected a matrix whose rows"),
    (header_bytes({k: v for k, v in LLAMA_META.items() if k != "llama.block_count"}, []),
     "lacks 'llama.block_count'"),
    (header_bytes(LLAMA_META, [("blk.0.attn_qkv.weight", [8, 24], 0)]) + b"\0" * 1024,
     "is not part of a llama block"),
    (header_bytes(LLAMA_META, [("blk.attn_q.weight", [8, 8], 0)]) + b"\0" * 1024, "names no layer number"),
    (header_bytes(LLAMA_META, [("blk.0.attn_q.weight", [64, 64], 0)]), "runs past the end of the file"),
    (header_bytes({**LLAMA_META, "llama.block_count": "five"}, []), "should be a whole number, not 'five'"),
    (header_bytes({**LLAMA_META, "llama.attention.head_count": 0}, []), "at least one attention head"),
    (header_bytes({**LLAMA_META, "llama.attention.layer_norm_rms_epsilon": float("nan")}, []),
     "should be a number, not nan"),
    (header_bytes({**LLAMA_META, "llama.context_length": [1, 2]}, []), "should be a whole number"),
    (header_bytes({**LLAMA_META, "general.architecture": ["llama"]}, []), "architecture \\['llama'\\]"),
])
def test_bad_gguf_files(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw)
    with pytest.raises(unimap.ModelError, match=message):
        unimap.inspect(path)


def test_cli_run_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["run", "-m", str(tmp_path / "nope.gguf"), "--prompt", "hi"])
    assert missing.exit_code == 2 and "no such folder" in missing.stderr
    empty = runner.invoke(cli, ["run", "-m", str(tmp_path), "--prompt", "  "])
    assert empty.exit_code == 2 and "non-empty --prompt" in empty.stderr
    zero = runner.invoke(cli, ["run", "-m", str(tmp_path), "--prompt", "hi", "--max-tokens", "0"])
    assert zero.exit_code == 2 and "--max-tokens must be from 1 to" in zero.stderr


def test_cli_run_refuses_what_does_not_fit(models: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "-m", str(models / "qwen3-30b-a3b"), "--prompt", "hi"])
    assert result.exit_code == 3
    assert "does not fit" in result.stderr and "way out" in result.stderr


@needs_stories
def test_example_script_runs() -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[1] / "examples" / "text_auto_device_map.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "plan: fits=True" in done.stdout and "Once upon a time, there was" in done.stdout


@needs_stories
def test_cli_chat_and_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    chat = runner.invoke(cli, ["run", "-m", str(STORIES), "-i", "--max-tokens", "8",
                               "--max-seq-len", "256"], input="Once upon a time\nLily\n/quit\n")
    assert chat.exit_code == 0, chat.output
    assert "a plain User:/Assistant: format" in chat.stderr  # the GGUF has no chat template
    held = [int(n) for n in re.findall(r"\((\d+) of 256 planned tokens held\)", chat.stderr)]
    assert len(held) == 2 and 0 < held[0] < held[1] <= 256

    released: list[bool] = []
    monkeypatch.setattr("unimap.runtime.Limits.release", lambda self: released.append(True))

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt
        yield

    import sys

    monkeypatch.setattr(sys.modules["unimap.generate"], "stream_generate", interrupted)
    stopped = runner.invoke(cli, ["run", "-m", str(STORIES), "--prompt", "Once", "--max-seq-len", "256"])
    assert stopped.exit_code == 130 and "interrupted" in stopped.stderr
    assert released  # the previous wired limit is restored on Ctrl-C too


def stories_parts() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """stories260K's GGUF reading, its metadata as the writer takes it, and its arrays."""
    import mlx.core as mx
    import numpy as np

    arrays = {k: np.array(v) for k, v in mx.load(str(STORIES)).items()}
    return read_gguf(STORIES), stories_meta(), arrays


def requantized(tmp_path: Path, kind: str) -> tuple[Path, dict[str, Any]]:
    """stories260K rewritten with every 2-D weight whose rows split into 32-blocks as `kind`."""
    from gguf_writer import write_gguf

    gguf, meta, arrays = stories_parts()
    tensors = [(t.name, arrays[t.name], kind if arrays[t.name].ndim == 2
                and arrays[t.name].shape[1] % 32 == 0 else "F32") for t in gguf.tensors]
    return write_gguf(tmp_path / f"stories-{kind}.gguf", meta, tensors), arrays


@needs_stories
@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_quantized_gguf_loads_as_planned(tmp_path: Path, kind: str) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten

    path, originals = requantized(tmp_path, kind)
    plan = unimap.plan(path, max_seq_len=256)
    assert plan.estimate.dtype == "float16"  # the quantized embedding hands out float16
    model, tokenizer, plan = unimap.load(path, max_seq_len=256)
    q = model.layers[0].self_attn.q_proj
    assert isinstance(q, nn.QuantizedLinear) and (q.group_size, q.bits) == (32, int(kind[1]))
    assert sum(p.nbytes for _, p in tree_flatten(model.parameters())) == plan.estimate.weight_bytes
    restored = np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=q.bits))
    original = originals["blk.0.attn_q.weight"]
    step = np.abs(original).max() / (127 if kind == "Q8_0" else 7)
    assert np.abs(restored - original).max() <= step  # the ggml block layout was read right
    text = unimap.generate(model, tokenizer, "Once upon a time", max_tokens=12)
    assert text.strip()
    if kind == "Q8_0":
        assert text.startswith(", there was a little girl")
    with pytest.raises(unimap.ConfigError, match="already MLX-quantized"):
        unimap.plan(path, isq=4)


@needs_stories
def test_a_type_that_disagrees_with_the_data_is_refused(tmp_path: Path) -> None:
    """A tensor typed Q8_0 over data laid out as F32 leaves a gap before the next tensor: the
    packing check refuses it at plan time instead of loading garbage."""
    from gguf_writer import write_gguf

    gguf, meta, arrays = stories_parts()
    path = write_gguf(tmp_path / "lying.gguf", meta, [(t.name, arrays[t.name], "F32") for t in gguf.tensors])
    raw = bytearray(path.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = raw.index(name) + len(name)  # then n_dims, dims, type, offset
    dims = struct.unpack_from("<I", raw, at)[0]
    struct.pack_into("<I", raw, at + 4 + 8 * dims, 8)  # F32 -> Q8_0, data left as it was
    path.write_bytes(bytes(raw))
    with pytest.raises(unimap.ModelError, match="does not fill the room before"):
        unimap.inspect(path)


@needs_stories
def test_a_file_without_its_embedding_is_refused_before_loading(tmp_path: Path) -> None:
    from gguf_writer import write_gguf

    gguf, meta, arrays = stories_parts()
    kept = [(t.name, arrays[t.name], "F32") for t in gguf.tensors if t.name != "token_embd.weight"]
    path = write_gguf(tmp_path / "headless.gguf", meta, kept)
    with pytest.raises(unimap.ModelError, match="no token_embd.weight tensor"):
        unimap.plan(path, max_seq_len=64)


@needs_stories
def test_cli_run_reads_the_prompt_from_stdin_with_a_dash() -> None:
    result = CliRunner().invoke(cli, ["run", "-m", str(STORIES), "-p", "-", "--max-tokens", "8",
                                      "--max-seq-len", "64"], input="Once upon a time")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Once upon a time") and len(result.stdout) > len("Once upon a time")
    empty = CliRunner().invoke(cli, ["run", "-m", str(STORIES), "-p", "-"], input="   ")
    assert empty.exit_code == 2 and "non-empty --prompt" in empty.stderr
