"""GGUF llama checkpoints: the real stories260K model from ../shared, and malformed files."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gguf_writer import header_bytes

import unimap
from unimap.cli import cli
from unimap.gguf import SpmTokenizer, gguf_config, read_gguf

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


SAMPLES = ["Once upon a time, there was a little girl named Lily.", "héllo wörld 😀",
           "  two  spaces", 'Tom said: "Hi!"\nThe end.', "x", "abcabcabc aaaa", "日本語"]


@needs_stories
@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_matches_sentencepiece(text: str) -> None:
    """The reference: Google's SentencePiece, given the same vocabulary as a BPE model."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    gguf = read_gguf(STORIES)
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    meta = gguf.metadata
    for piece, score, kind in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                                  meta["tokenizer.ggml.token_type"], strict=True):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    reference = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    ours = SpmTokenizer.from_gguf(gguf)
    ids = ours.encode(text)
    assert ids == [1, *reference.encode(text)]
    assert ours.decode(ids[1:]) == reference.decode(ids[1:]) == text


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
     "not part of a llama/qwen2/qwen3 block"),
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
                               "--max-seq-len", "256"], input="Once upon a time\n/quit\n")
    assert chat.exit_code == 0, chat.output
    assert "there was a little girl" in chat.stdout

    released: list[bool] = []
    monkeypatch.setattr("unimap.runtime.WiredLimit.release", lambda self: released.append(True))

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

    gguf = read_gguf(STORIES)
    arrays = {k: np.array(v) for k, v in mx.load(str(STORIES)).items()}
    meta = {k: ([float(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], float) else v)
            for k, v in gguf.metadata.items()}
    return gguf, meta, arrays


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
