"""Bad input, everywhere a user can give it, is refused cleanly: the rule of unimap/errors.py.

Through the real CLI (click's CliRunner, in-process) every malformed config.json, safetensors
header, index, GGUF file, flag, path, device map, environment variable and image must end in one
line on stderr starting with "error: " that names the problem, exit code 2, no traceback, and no
file written in the model's folder or the current directory. Through the Python API the same
inputs raise unimap's own errors (UnimapError; wrong types also TypeError, wrong values also
ValueError). The inputs are built once or per case from sparse fixtures (no weights) and tiny
models; this module does not test what happens to good input, nor the Hub over the network.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fixtures as model_fixtures
import pytest
from click.testing import CliRunner, Result
from gguf_writer import _string, _value, header_bytes
from tiny_families import tiny_config
from tiny_models import stand_in_machine, write_random_model
from tiny_vlms import write_image, write_tiny_vlm

import unimap
from unimap.cli import cli

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"
needs_stories = pytest.mark.skipif(not STORIES.exists(), reason="../shared/models is not here")

# A tiny llama as a sparse fixture: a real config and safetensors header, no weights.
BASE: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "max_position_embeddings": 1024}
SHAPES = model_fixtures.llama_like(BASE)
# A tiny GGUF llama's metadata (as tests/test_gguf.py): a 4-token vocabulary, one block.
GGUF_META: dict[str, Any] = {
    "general.architecture": "llama", "tokenizer.ggml.model": "llama", "llama.block_count": 1,
    "llama.embedding_length": 8, "llama.feed_forward_length": 16, "llama.attention.head_count": 2,
    "llama.attention.layer_norm_rms_epsilon": 1e-5, "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a"]}
LONG = 5000  # characters: past any path length a file system takes
Build = Callable[[Path], list[str]]  # writes what a case needs under a folder; returns the CLI args


# ---------------------------------------------------------------- building bad inputs


def sparse_model(root: Path, shapes: model_fixtures.Shapes | None = None, shards: int = 1) -> Path:
    return model_fixtures.write_model(root / "model", BASE, SHAPES if shapes is None else shapes, shards)


def plan_args(target: Path | str, *extra: str, machine: str = "mac-16gb") -> list[str]:
    return ["plan", "-m", str(target), "--machine", machine, *extra]


def config(raw: bytes | None = None, **changes: Any) -> Build:
    """The sparse llama with config.json replaced by `raw`, or by BASE with `changes`."""
    def build(root: Path) -> list[str]:
        folder = sparse_model(root)
        text = raw if raw is not None else json.dumps({**BASE, **changes}).encode()
        (folder / "config.json").write_bytes(text)
        return plan_args(folder)
    return build


def config_without(*keys: str) -> Build:
    return config(json.dumps({k: v for k, v in BASE.items() if k not in keys}).encode())


def config_special(kind: str) -> Build:
    """config.json as a 9 MB sparse file, a FIFO, or a folder."""
    def build(root: Path) -> list[str]:
        folder = sparse_model(root)
        path = folder / "config.json"
        path.unlink()
        if kind == "huge":
            with path.open("wb") as f:
                f.truncate(9 * 1024 * 1024)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
        return plan_args(folder)
    return build


def nested(depth: int, leaf: str = "1") -> bytes:
    return ('{"a":' * depth + leaf + "}" * depth).encode()


def safetensors(header: Any = None, data: int = 0, raw: bytes | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian length, the header, `data` zero bytes."""
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + b"\0" * data


def tensor(dtype: Any = "F32", shape: Any = (4,), offsets: Any = (0, 16)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def weights(blob: bytes | None = None, shapes: model_fixtures.Shapes | None = None) -> Build:
    """The sparse llama's config with model.safetensors replaced by `blob` (or other shapes)."""
    def build(root: Path) -> list[str]:
        folder = sparse_model(root, shapes)
        if blob is not None:
            (folder / "model.safetensors").write_bytes(blob)
        return plan_args(folder)
    return build


def weights_special(kind: str) -> Build:
    """No safetensors file at all, a FIFO, or one tensor in two files."""
    def build(root: Path) -> list[str]:
        folder = sparse_model(root)
        path = folder / "model.safetensors"
        if kind == "none":
            path.unlink()
        elif kind == "fifo":
            path.unlink()
            os.mkfifo(path)
        else:
            (folder / "extra.safetensors").write_bytes(
                safetensors({"model.norm.weight": tensor("BF16", (64,), (0, 128))}, data=128))
        return plan_args(folder)
    return build


def index(content: Any = None, raw: bytes | None = None, kind: str = "") -> Build:
    """The sparse llama in two shards with model.safetensors.index.json replaced."""
    def build(root: Path) -> list[str]:
        folder = sparse_model(root, shards=2)
        path = folder / "model.safetensors.index.json"
        if kind == "fifo":
            path.unlink()
            os.mkfifo(path)
        elif kind == "huge":
            with path.open("wb") as f:
                f.truncate(65 * 1024 * 1024)
        elif kind == "swapped":  # a tensor listed in the other shard
            found = json.loads(path.read_text())
            found["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
            path.write_text(json.dumps(found))
        else:
            path.write_bytes(raw if raw is not None else json.dumps(content).encode())
        return plan_args(folder)
    return build


def shard_map(file: Any) -> dict[str, Any]:
    return {"metadata": {}, "weight_map": {"model.norm.weight": file}}


@functools.cache
def stories() -> bytes:
    return STORIES.read_bytes()


def stories_patched(key: str, value: int) -> bytes:
    """The real stories260K.gguf with one uint32 metadata value changed in place."""
    data = stories()
    at = data.index(_string(key)) + len(_string(key))
    assert struct.unpack_from("<I", data, at)[0] == 4  # a uint32
    return data[:at + 4] + struct.pack("<I", value) + data[at + 8:]


def gguf_blob(meta: dict[str, Any], tensors: list[tuple[str, list[int], int]] | None = None,
              data: int = 0) -> bytes:
    """A GGUF file from tests/gguf_writer.py's header, padded to 32 bytes, then `data` zero bytes."""
    head = header_bytes(meta, tensors or [])
    return head + b"\0" * (-len(head) % 32 + data)


def raw_gguf(*entries: bytes, tensors: int = 0) -> bytes:
    """A GGUF v3 header of hand-made metadata entries (key and typed value bytes)."""
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, len(entries)) + b"".join(entries)


def nested_array(depth: int) -> bytes:
    """A metadata value: an array of arrays ... `depth` levels, one uint32 at the bottom."""
    inner = struct.pack("<IQI", 4, 1, 7)
    for _ in range(depth - 1):
        inner = struct.pack("<IQ", 9, 1) + inner
    return struct.pack("<I", 9) + inner


def gguf(blob: Callable[[], bytes]) -> Build:
    def build(root: Path) -> list[str]:
        path = root / "model.gguf"
        path.write_bytes(blob())
        return plan_args(path)
    return build


def flags(*extra: str, machine: str = "mac-16gb") -> Build:
    return lambda root: plan_args(sparse_model(root), *extra, machine=machine)


def run(*extra: str, sparse: bool = False) -> Build:
    """`unimap run` on a model that does not exist (or a sparse one): the flags must fail first."""
    return lambda root: ["run", "-m", str(sparse_model(root) if sparse else root / "missing"),
                         "-p", "w1 w2", *extra]


def path_case(make: Callable[[Path], str], command: str = "plan") -> Build:
    def build(root: Path) -> list[str]:
        target = make(root)
        return plan_args(target) if command == "plan" else [command, "-m", target, "-p", "hi"]
    return build


def given(text: str) -> Callable[[Path], str]:
    return lambda root: text


def symlink_loop(root: Path) -> str:
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    return str(root / "a")


def only_gguf(root: Path) -> str:
    folder = root / "model"
    folder.mkdir()
    (folder / "stories.gguf").write_bytes(gguf_blob(GGUF_META))
    return str(folder)


def no_config(root: Path) -> str:
    folder = sparse_model(root)
    (folder / "config.json").unlink()
    return str(folder)


def text_file(root: Path) -> str:
    (root / "notes.txt").write_text("not a model")
    return str(root / "notes.txt")


def html_into_a_folder(root: Path) -> list[str]:
    (root / "out.html").mkdir()
    return plan_args(sparse_model(root), "--html", str(root / "out.html"))


def doctor(*extra: str) -> Build:
    return lambda root: ["doctor", "--no-bench", *extra]


def probed_plan(root: Path) -> list[str]:
    return ["plan", "-m", str(sparse_model(root))]


def case(name: str, build: Build, expect: str, env: dict[str, str] | None = None,
         marks: Any = ()) -> Any:
    return pytest.param(build, expect, env or {}, id=name, marks=marks)


ST_HEADER = [  # (id, file bytes, what the message must name)
    ("length-past-end", struct.pack("<Q", 10**6) + b"{}", "runs past the end"),
    ("length-2**64-1", struct.pack("<Q", 2**64 - 1) + b"{}", "runs past the end"),
    ("3-bytes", b"\x01\x02\x03", "truncated safetensors file"),
    ("empty", b"", "truncated safetensors file"),
    ("not-json", safetensors(raw=b"{not json"), "invalid JSON"),
    ("not-utf8", safetensors(raw=b'{"\xff\xfe": 1}'), "not UTF-8"),
    ("nested-100k", safetensors(raw=b"[" * 100_000 + b"]" * 100_000), "nested too deep"),
    ("nested-100k-objects", safetensors(raw=nested(100_000)), "nested too deep"),
    ("5000-digit-dim", safetensors(raw=b'{"w": {"dtype": "F32", "shape": [' + b"9" * LONG
                                   + b'], "data_offsets": [0, 4]}}'), "thousands of digits"),
    ("dtype-list", safetensors({"w": tensor(["F32"])}, 16), "unknown dtype"),
    ("dtype-unknown", safetensors({"w": tensor("F128")}, 16), "unknown dtype 'F128'"),
    ("dtype-missing", safetensors({"w": {"shape": [4], "data_offsets": [0, 16]}}, 16), "unknown dtype"),
    ("60000-dims", safetensors({"w": tensor("F32", [1] * 60_000, (0, 4))}, 4), "invalid shape"),
    ("dims-overflow", safetensors({"w": tensor("F32", [2**40] * 3, (0, 4))}, 4), "would take more than"),
    ("negative-dim", safetensors({"w": tensor("F32", (-4,))}, 16), "invalid shape"),
    ("shape-string", safetensors({"w": tensor("F32", "4")}, 16), "invalid shape"),
    ("offsets-reversed", safetensors({"w": tensor("F32", (4,), (16, 0))}, 16), "invalid data_offsets"),
    ("offsets-floats", safetensors({"w": tensor("F32", (4,), (0.0, 16.0))}, 16), "invalid data_offsets"),
    ("offsets-three", safetensors({"w": tensor("F32", (4,), (0, 8, 16))}, 16), "invalid data_offsets"),
    ("size-mismatch", safetensors({"w": tensor("F32", (4,), (0, 10))}, 16), "spans 10 bytes"),
    ("overlap", safetensors({"a": tensor("F32", (4,), (0, 16)), "b": tensor("F32", (4,), (8, 24))}, 24),
     "overlap"),
    ("past-the-data", safetensors({"w": tensor("F32", (4,), (0, 16))}, 8), "ends at byte 16"),
    ("metadata-int", safetensors({"__metadata__": {"format": 1}, "w": tensor()}, 16), "__metadata__"),
    ("metadata-list", safetensors({"__metadata__": ["pt"], "w": tensor()}, 16), "__metadata__"),
    ("header-list", safetensors([]), "not a JSON object"),
    ("entry-string", safetensors({"w": "F32"}), "not described by an object"),
    ("no-tensors", safetensors({}), "hold no tensors"),
]

GGUF_BLOBS: list[tuple[str, Callable[[], bytes], str, bool]] = [  # id, file, message, needs stories
    ("wrong-magic", lambda: b"GGUX" + stories()[4:], "not a GGUF file", True),
    ("version-99", lambda: stories()[:4] + struct.pack("<I", 99) + stories()[8:], "version 99", True),
    ("version-1", lambda: stories()[:4] + struct.pack("<I", 1) + stories()[8:], "version 1", True),
    ("empty", lambda: b"", "not a GGUF file", False),
    ("cut-at-2", lambda: stories()[:2], "not a GGUF file", True),
    *((f"cut-at-{n}", (lambda n=n: stories()[:n]), "truncated or corrupt", True)
      for n in (12, 30, 4000, 600_000)),
    ("cut-last-byte", lambda: stories()[:-1], "truncated or corrupt", True),
    ("tensors-2**60", lambda: stories()[:8] + struct.pack("<Q", 2**60) + stories()[16:],
     "claims 1152921504606846976 tensors", True),
    ("entries-2**60", lambda: stories()[:16] + struct.pack("<Q", 2**60) + stories()[24:],
     "1152921504606846976 metadata entries", True),
    ("arrays-nested-3", lambda: raw_gguf(_string("general.architecture") + _value("llama"),
                                         _string("deep") + nested_array(3)), "nest more than 2 deep", False),
    ("arrays-nested-10k", lambda: raw_gguf(_string("deep") + nested_array(10_000)), "nest more than", False),
    ("string-2**40", lambda: raw_gguf(struct.pack("<Q", 2**40) + b"x" * 64), "a string claims", False),
    ("array-2**50", lambda: raw_gguf(_string("x") + struct.pack("<IIQ", 9, 4, 2**50)),
     "an array claims", False),
    ("value-type-99", lambda: raw_gguf(_string("x") + struct.pack("<I", 99)), "unknown metadata type 99",
     False),
    ("block-count-five", lambda: gguf_blob({**GGUF_META, "llama.block_count": "five"}), "block_count", False),
    ("rms-eps-string", lambda: gguf_blob({**GGUF_META, "llama.attention.layer_norm_rms_epsilon": "1e-5"}),
     "layer_norm_rms_epsilon", False),
    ("head-count-0", lambda: gguf_blob({**GGUF_META, "llama.attention.head_count": 0}), "head_count is 0",
     False),
    ("context-array", lambda: gguf_blob({**GGUF_META, "llama.context_length": [1, 2]}), "context_length",
     False),
    ("arch-gpt9", lambda: gguf_blob({**GGUF_META, "general.architecture": "gpt9"}), "architecture 'gpt9'",
     False),
    ("arch-missing", lambda: gguf_blob({k: v for k, v in GGUF_META.items() if k != "general.architecture"}),
     "architecture", False),
    ("tokens-missing", lambda: gguf_blob({k: v for k, v in GGUF_META.items()
                                          if k != "tokenizer.ggml.tokens"}), "tokenizer.ggml.tokens", False),
    ("tokenizer-kind", lambda: gguf_blob({**GGUF_META, "tokenizer.ggml.model": "t5"}), "tokenizer kind",
     False),
    ("alignment-0", lambda: gguf_blob({**GGUF_META, "general.alignment": 0}), "general.alignment", False),
    ("tensor-blk-no-number", lambda: gguf_blob(GGUF_META, [("blk.attn_q.weight", [8], 0)], 32),
     "names no layer number", False),
    ("tensor-unknown-name", lambda: gguf_blob(GGUF_META, [("foo.weight", [8], 0)], 32), "'foo.weight'",
     False),
    ("tensor-type-99", lambda: gguf_blob(GGUF_META, [("output_norm.weight", [8], 99)], 32), "ggml type 99",
     False),
    ("tensor-5-dims", lambda: gguf_blob(GGUF_META, [("output_norm.weight", [1] * 5, 0)], 32),
     "claims 5 dimensions", False),
    ("tensor-past-the-end", lambda: gguf_blob(GGUF_META, [("token_embd.weight", [8, 1024], 0)], 64),
     "runs past the end of the file", False),
    ("bos-100000", lambda: stories_patched("tokenizer.ggml.bos_token_id", 100_000), "bos_token_id", True),
    ("byte-token-not-hex", lambda: stories().replace(b"<0x41>", b"<0xZZ>", 1), "not of the form <0x", True),
    ("block-count-30", lambda: stories_patched("llama.block_count", 30), "says 30 layers", True),
    ("kv-heads-3", lambda: stories_patched("llama.attention.head_count_kv", 3), "not a multiple", True),
]

CLI_CASES = [
    # ---- config.json
    case("cfg-not-utf8", config(b'{"model_type": "llama\xff"}'), "not UTF-8"),
    case("cfg-latin1", config(json.dumps({**BASE, "name": "caf\u00e9"}, ensure_ascii=False)
                              .encode("latin-1")), "not UTF-8"),
    case("cfg-5000-digits", config(b'{"num_hidden_layers": ' + b"9" * LONG + b"}"), "thousands of digits"),
    case("cfg-5000-digits-unknown-key", config(b'{"foo": -' + b"7" * LONG + b', "model_type": "llama"}'),
         "thousands of digits"),
    case("cfg-nested-100k-lists", config(b"[" * 100_000 + b"]" * 100_000), "nested too deep"),
    case("cfg-nested-100k-objects", config(nested(100_000)), "nested too deep"),
    case("cfg-nested-40", config(json.dumps({**BASE, "extra": json.loads(nested(40))}).encode()),
         "nested more than 32 deep"),
    case("cfg-layers-list", config(num_hidden_layers=[4]), "num_hidden_layers"),
    case("cfg-layers-object", config(num_hidden_layers={"n": 4}), "num_hidden_layers"),
    case("cfg-layers-string", config(num_hidden_layers="4"), "num_hidden_layers"),
    case("cfg-layers-bool", config(num_hidden_layers=True), "num_hidden_layers"),
    case("cfg-layers-nan", config(num_hidden_layers=float("nan")), "num_hidden_layers"),
    case("cfg-layers-float", config(num_hidden_layers=4.0), "num_hidden_layers"),
    case("cfg-layers-negative", config(num_hidden_layers=-4), "num_hidden_layers"),
    case("cfg-layers-10**30", config(num_hidden_layers=10**30), "num_hidden_layers"),
    case("cfg-layers-10**7", config(num_hidden_layers=10**7), "num_hidden_layers"),
    case("cfg-layers-30-weights-4", config(num_hidden_layers=30), "says 30 layers but the weights hold 4"),
    case("cfg-hidden-string", config(hidden_size="64"), "hidden_size"),
    case("cfg-hidden-infinity", config(hidden_size=float("inf")), "hidden_size"),
    case("cfg-heads-float", config(num_attention_heads=4.5), "num_attention_heads"),
    case("cfg-vocab-list", config(vocab_size=[128]), "vocab_size"),
    case("cfg-vocab-256-rows-128", config(vocab_size=256), "model.embed_tokens.weight"),
    case("cfg-intermediate-negative", config(intermediate_size=-1), "intermediate_size"),
    case("cfg-eps-string", config(rms_norm_eps="1e-5"), "rms_norm_eps"),
    case("cfg-eps-zero", config(rms_norm_eps=0), "rms_norm_eps"),
    case("cfg-eps-nan", config(rms_norm_eps=float("nan")), "rms_norm_eps"),
    case("cfg-rope-theta-negative", config(rope_theta=-1.0), "rope_theta"),
    case("cfg-rope-theta-infinity", config(rope_theta=float("inf")), "rope_theta"),
    case("cfg-tie-string", config(tie_word_embeddings="no"), "tie_word_embeddings"),
    case("cfg-text-config-string", config(text_config="llama"), "text_config"),
    case("cfg-text-config-bad-layers", config(text_config={"num_hidden_layers": "x"}), "num_hidden_layers"),
    case("cfg-vision-config-hidden-0", config(vision_config={"hidden_size": 0}), "hidden_size"),
    case("cfg-quantization-list", config(quantization=[64, 4]), "quantization"),
    case("cfg-rope-scaling-string", config(rope_scaling="yarn"), "rope_scaling"),
    case("cfg-layer-types-string", config(layer_types="full_attention"), "layer_types"),
    case("cfg-sliding-window-negative", config(sliding_window=-1), "sliding_window"),
    case("cfg-experts-float", config(num_local_experts=2.5), "num_local_experts"),
    case("cfg-head-dim-0", config(head_dim=0), "head_dim"),
    case("cfg-kv-heads-3-of-4", config(num_key_value_heads=3), "not a multiple of num_key_value_heads"),
    case("cfg-kv-heads-0", config(num_key_value_heads=0), "num_key_value_heads"),
    case("cfg-hidden-65-over-4-heads", config(hidden_size=65), "does not split"),
    case("cfg-group-size-0", config(quantization={"group_size": 0, "bits": 4}), "group_size"),
    case("cfg-bits-99", config(quantization={"group_size": 64, "bits": 99}), "'bits' must be one of"),
    case("cfg-bits-true", config(quantization={"group_size": 64, "bits": True}), "'bits' must be one of"),
    case("cfg-gptq", config(quantization_config={"quant_method": "gptq", "bits": 4}), "'gptq' quantization"),
    case("cfg-dtype-int4", config(torch_dtype="int4"), "not a dtype"),
    case("cfg-model-type-path", config(model_type="../x"), "model_type"),
    case("cfg-model-type-int", config(model_type=123), "model_type"),
    case("cfg-model-type-unknown", config(model_type="nonexistent_arch"), "nonexistent_arch"),
    case("cfg-model-type-missing", config_without("model_type"), "model_type"),
    case("cfg-hidden-missing", config_without("hidden_size"), "missing 'hidden_size'"),
    case("cfg-json-list", config(b"[]"), "expected a JSON object"),
    case("cfg-json-string", config(b'"llama"'), "expected a JSON object"),
    case("cfg-json-null", config(b"null"), "expected a JSON object"),
    case("cfg-empty", config(b""), "invalid JSON"),
    case("cfg-9mb-sparse", config_special("huge"), "more than a config.json can be"),
    case("cfg-fifo", config_special("fifo"), "not a regular file"),
    case("cfg-folder", config_special("dir"), "not a regular file"),
    # ---- safetensors headers, and weights that contradict the config
    *(case(f"st-{name}", weights(blob), expect) for name, blob, expect in ST_HEADER),
    case("st-fifo", weights_special("fifo"), "not a regular file"),
    case("st-none", weights_special("none"), "no .safetensors files"),
    case("st-tensor-in-two-files", weights_special("twice"), "is in both"),
    case("st-layer-7-of-4", weights(shapes={**SHAPES, "model.layers.7.input_layernorm.weight":
                                            ("BF16", (64,))}), "belongs to layer 7"),
    case("st-layer-2-missing", weights(shapes={k: v for k, v in SHAPES.items() if ".layers.2." not in k}),
         "no tensors for layer(s) 2"),
    case("st-k-proj-shape", weights(shapes={**SHAPES, "model.layers.0.self_attn.k_proj.weight":
                                            ("BF16", (48, 64))}), "config and weights disagree"),
    # ---- model.safetensors.index.json
    case("idx-weight-map-list", index({"weight_map": ["model-00001-of-00002.safetensors"]}), "weight_map"),
    case("idx-no-weight-map", index({"metadata": {}}), "weight_map"),
    case("idx-json-list", index([]), "weight_map"),
    case("idx-value-int", index(shard_map(1)), "not a .safetensors file of this folder"),
    case("idx-value-null", index(shard_map(None)), "not a .safetensors file of this folder"),
    case("idx-value-dotdot", index(shard_map("../x.safetensors")), "not a .safetensors file of this folder"),
    case("idx-value-absolute", index(shard_map("/etc/x.safetensors")), "not a .safetensors file of this"),
    case("idx-value-bin", index(shard_map("pytorch_model.bin")), "not a .safetensors file of this folder"),
    case("idx-missing-shard", index(shard_map("model-00009-of-00009.safetensors")), "is missing"),
    case("idx-inconsistent", index(kind="swapped"), "inconsistent"),
    case("idx-not-json", index(raw=b"{weight_map"), "invalid JSON"),
    case("idx-not-utf8", index(raw=b'{"weight_map": {"\xff": 1}}'), "not UTF-8"),
    case("idx-nested-100k", index(raw=nested(100_000)), "nested too deep"),
    case("idx-fifo", index(kind="fifo"), "not a regular file"),
    case("idx-65mb-sparse", index(kind="huge"), "more than a model.safetensors.index.json can be"),
    # ---- GGUF files
    *(case(f"gguf-{name}", gguf(blob), expect, marks=needs_stories if stories_needed else ())
      for name, blob, expect, stories_needed in GGUF_BLOBS),
    # ---- numbers and sizes given to `unimap plan`
    *(case(f"{flag[2:]}-10**400", flags(flag, "1" + "0" * 400), flag)
      for flag in ("--max-seq-len", "--max-batch-size", "--max-image-length", "--max-num-images")),
    case("max-seq-len-0", flags("--max-seq-len", "0"), "--max-seq-len"),
    case("max-seq-len-minus-5", flags("--max-seq-len", "-5"), "--max-seq-len"),
    case("max-seq-len-abc", flags("--max-seq-len", "abc"), "not a valid integer"),
    case("max-batch-size-0", flags("--max-batch-size", "0"), "--max-batch-size"),
    case("max-num-images-minus-1", flags("--max-num-images", "-1"), "--max-num-images"),
    case("ram-1e999GB", flags("--ram", "1e999GB"), "not a size"),
    case("ram-minus-3GiB", flags("--ram", "-3GiB"), "not a size"),
    case("ram-12XB", flags("--ram", "12XB"), "not a size"),
    case("ram-400-digits", flags("--ram", "1" + "0" * 400), "more memory than any machine has"),
    case("ram-0", flags("--ram", "0"), "no memory at all"),
    case("ram-nan", flags("--ram", "nanGB"), "not a size"),
    case("gpu-budget-over-ram", flags("--gpu-budget", "64GB", "--ram", "8GB"), "is more than --ram"),
    case("gpu-budget-lots", flags("--gpu-budget", "lots"), "not a size"),
    case("gpu-reserve-minus-1", flags("--gpu-reserve", "-1"), "not a size"),
    case("host-reserve-abc", flags("--host-reserve", "abc"), "not a size"),
    case("isq-7", flags("--isq", "7"), "--isq 7"),
    case("isq-0", flags("--isq", "0"), "--isq 0"),
    case("kv-bits-9", flags("--kv-bits", "9"), "--kv-bits 9"),
    case("kv-bits-1", flags("--kv-bits", "1"), "--kv-bits 1"),
    case("dtype-int4", flags("--dtype", "int4"), "'int4' is not one of"),
    case("kv-layout-bogus", flags("--kv-layout", "bogus"), "'bogus' is not one of"),
    case("machine-unknown", flags(machine="mac-1tb"), "'mac-1tb' is not a preset"),
    case("unknown-option", flags("--bogus"), "No such option"),
    case("plan-without-model", lambda root: ["plan", "--machine", "mac-16gb"], "give a model"),
    # ---- `unimap run` flags: refused before anything is planned or loaded
    case("run-seed-minus-1", run("--seed", "-1"), "--seed"),
    case("run-seed-2**64", run("--seed", "18446744073709551616"), "--seed"),
    case("run-seed-minus-1-sparse", run("--seed", "-1", sparse=True), "--seed"),
    case("run-temp-nan", run("--temp", "nan"), "--temp"),
    case("run-temp-inf", run("--temp", "inf"), "--temp"),
    case("run-temp-minus-1", run("--temp", "-1"), "--temp"),
    case("run-temp-nan-sparse", run("--temp", "nan", sparse=True), "--temp"),
    case("run-top-p-2", run("--top-p", "2"), "--top-p"),
    case("run-top-p-0", run("--top-p", "0"), "--top-p"),
    case("run-top-p-nan", run("--top-p", "nan"), "--top-p"),
    case("run-max-tokens-0", run("--max-tokens", "0"), "--max-tokens"),
    case("run-max-tokens-10**30", run("--max-tokens", "1" + "0" * 30), "--max-tokens"),
    case("run-max-tokens-0-sparse", run("--max-tokens", "0", sparse=True), "--max-tokens"),
    case("run-max-tokens-abc", run("--max-tokens", "abc"), "not a valid integer"),
    case("run-empty-prompt", lambda root: ["run", "-m", str(root / "missing"), "-p", "  "],
         "non-empty --prompt"),
    case("run-without-model", lambda root: ["run", "-p", "hi"], "give a model"),
    case("run-max-seq-len-0-sparse", run("--max-seq-len", "0", sparse=True), "--max-seq-len"),
    # ---- paths and Hub ids
    case("path-empty", path_case(lambda root: ""), "give a model"),
    case("path-5000-chars", path_case(lambda root: str(root / ("x" * LONG))), "not a usable path"),
    case("path-5000-chars-run", path_case(lambda root: str(root / ("x" * LONG)), "run"), "not a usable path"),
    case("path-symlink-loop", path_case(symlink_loop), "not a usable path"),
    case("path-missing-folder", path_case(lambda root: str(root / "nope")), "no such folder"),
    case("path-folder-with-only-gguf", path_case(only_gguf), "model/stories.gguf"),
    case("path-folder-without-config", path_case(no_config), "no config.json"),
    case("path-text-file", path_case(text_file), "is a file"),
    case("path-empty-gguf", gguf(lambda: b""), "not a GGUF file"),
    *(case(f"hub-id-{name}", path_case(given(repo)), "not a Hugging Face repo id",
           env={"HF_HUB_OFFLINE": "1"})
      for name, repo in (("dash-name", "owner/-name"), ("double-dot", "a/b..c"), ("four-parts", "a/b/c/d"),
                         ("trailing-slash", "owner/"))),
    # ---- manual device maps
    *(case(f"map-{name}", flags("-n", value), expect) for name, value, expect in (
        ("empty", "", "not a whole number"),
        ("abc", "abc", "not a whole number"),
        ("minus-3", "-3", "layer count -3"),
        ("fraction", "0:1.5", "'1.5' is not a whole number"),
        ("ordinal-twice", "0:16;0:16", "appears twice"),
        ("20-digits", "99999999999999999999", "not from 0 to 4096"),
        ("4097-layers", "4097", "not from 0 to 4096"),
        ("semicolon-only", ";", "is not ordinal:layers"),
        ("gpu-5", "5:4", "no GPU 5"),
        ("80kb-letters", "x" * 80_000, "not a whole number"),
        ("80kb-digits", "9" * 80_000, "not from 0 to 4096"),
        ("80kb-pairs", "0:1;" * 20_000, "appears twice"),
    )),
    # ---- environment variables
    case("env-gpu-reserve-minus-1", flags(), "UNIMAP_GPU_RESERVE", {"UNIMAP_GPU_RESERVE": "-1"}),
    case("env-gpu-reserve-abc", flags(), "UNIMAP_GPU_RESERVE", {"UNIMAP_GPU_RESERVE": "abc"}),
    case("env-gpu-reserve-1e999", flags(), "UNIMAP_GPU_RESERVE", {"UNIMAP_GPU_RESERVE": "1e999"}),
    case("env-host-reserve-nan", flags(), "UNIMAP_HOST_RESERVE", {"UNIMAP_HOST_RESERVE": "nan"}),
    *(case(f"env-igpu-fraction-{value}", flags(machine="jetson-orin-64gb"), "MISTRALRS_IGPU_MEMORY_FRACTION",
           {"MISTRALRS_IGPU_MEMORY_FRACTION": value}) for value in ("2", "nan", "-0.1")),
    case("env-unimap-igpu-fraction-0", flags(machine="dgx-spark-128gb"), "UNIMAP_IGPU_MEMORY_FRACTION",
         {"UNIMAP_IGPU_MEMORY_FRACTION": "0"}),
    case("env-backend-nonsense", flags(), "UNIMAP_BACKEND", {"UNIMAP_BACKEND": "nonsense"}),
    case("env-backend-nonsense-probed", probed_plan, "UNIMAP_BACKEND", {"UNIMAP_BACKEND": "nonsense"}),
    case("env-backend-empty-doctor", doctor(), "UNIMAP_BACKEND", {"UNIMAP_BACKEND": " "}),
    case("env-backend-nonsense-doctor", doctor(), "UNIMAP_BACKEND", {"UNIMAP_BACKEND": "nonsense"}),
    case("backend-flag-nonsense", flags("--backend", "nonsense"), "'nonsense'"),
    case("doctor-gpu-reserve-abc", doctor("--gpu-reserve", "abc"), "--gpu-reserve"),
    case("doctor-backend-flag", doctor("--backend", "nonsense"), "'nonsense'"),
    # ---- --html
    case("html-missing-folder", flags("--html", "missing/plan.html"), "--html: cannot write"),
    case("html-a-folder", html_into_a_folder, "is a directory"),
]


# ---------------------------------------------------------------- checking a refusal


def listing(root: Path) -> list[str]:
    """Every path under `root` (symlinks not followed)."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, name), root) for name in dirs + files]
    return sorted(found)


def fifos(root: Path) -> list[Path]:
    return [Path(folder, name) for folder, _, files in os.walk(root) for name in files
            if Path(folder, name).is_fifo()]


def _unblock(fifo: Path) -> None:
    """Open the write end of a FIFO a reader waits on (and close it), so a bug ends as EOF, not a hang."""
    with contextlib.suppress(OSError):  # nobody reads it: as it should be
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def invoke(args: list[str], root: Path, env: dict[str, str]) -> Result:
    """Run the CLI with a watchdog on every FIFO under `root`."""
    timers = [threading.Timer(10.0, _unblock, (fifo,)) for fifo in fifos(root)]
    for timer in timers:
        timer.daemon = True
        timer.start()
    try:
        return CliRunner().invoke(cli, args, env=env)
    finally:
        for timer in timers:
            timer.cancel()


def assert_refused(result: Result, expect: str) -> None:
    """Exit code 2, one line "error: ..." on stderr naming the problem, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = f"exit {result.exit_code}, stderr {result.stderr[-600:]!r}, exception {result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert "Traceback" not in result.output, shown
    assert result.exit_code == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert len(lines[0]) <= 400, f"{len(lines[0])} characters: {lines[0][:120]!r}..."
    assert expect in lines[0], shown


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory under tmp_path, so the listing sees anything written there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield tmp_path


@pytest.mark.parametrize(("build", "expect", "env"), CLI_CASES)
def test_cli_refuses_bad_input(workdir: Path, build: Build, expect: str, env: dict[str, str]) -> None:
    args = build(workdir)
    before = listing(workdir)
    result = invoke(args, workdir, env)
    assert_refused(result, expect)
    assert listing(workdir) == before  # nothing written: no plan, no .partial, no cache


# ---------------------------------------------------------------- images given to `unimap run`


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2_vl", "qwen2_vl")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with one tiny IDAT chunk of no rows."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def image_file(name: str, content: Callable[[Path], bytes]) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        (root / name).write_bytes(content(root))
        return ["--image", str(root / name)]
    return build


def real_png(root: Path) -> bytes:
    return write_image(root / "source.png", 96, 64).read_bytes()


IMAGE_CASES = [
    pytest.param(image_file("bomb.png", lambda root: png_header(20_000, 20_000)), "pixels",
                 id="png-20000x20000"),
    pytest.param(image_file("big.png", lambda root: png_header(9000, 9000)), "9000 x 9000 pixels",
                 id="png-9000x9000"),
    pytest.param(image_file("cut.png", lambda root: real_png(root)[:200]), "cannot be decoded",
                 id="png-truncated"),
    pytest.param(image_file("sig.png", lambda root: real_png(root)[:8]), "not an image",
                 id="png-signature-only"),
    pytest.param(image_file("notes.png", lambda root: b"not pixels"), "not an image Pillow can read",
                 id="text-named-png"),
    pytest.param(image_file("empty.png", lambda root: b""), "not an image", id="empty-png"),
    pytest.param(lambda root: ["--image", str(root / "missing.png")], "no such file", id="missing"),
    pytest.param(lambda root: ["--image", str(root / ("x" * LONG + ".png"))], "not a usable path",
                 id="path-5000-chars"),
    pytest.param(lambda root: ["--image", str(root)], "not a file", id="a-folder"),
    pytest.param(lambda root: ["--image", str(write_image(root / "a.png", 32, 32)), "--max-num-images", "0"],
                 "the plan made room for 0", id="more-than-planned"),
]


@pytest.mark.parametrize(("images", "expect"), IMAGE_CASES)
def test_run_refuses_bad_images(vlm: Path, workdir: Path, images: Callable[[Path], list[str]],
                                expect: str) -> None:
    args = ["run", "-m", str(vlm), "-p", "w1 w2", "--max-seq-len", "256", *images(workdir)]
    before, model_files = listing(workdir), listing(vlm)
    result = invoke(args, workdir, {})
    assert_refused(result, expect)
    assert listing(workdir) == before and listing(vlm) == model_files


def test_run_refuses_an_image_for_a_text_only_model(workdir: Path) -> None:
    image = write_image(workdir / "a.png", 32, 32)
    args = ["run", "-m", str(sparse_model(workdir)), "-p", "w1", "--max-seq-len", "64", "--image", str(image)]
    before = listing(workdir)
    assert_refused(invoke(args, workdir, {}), "is a text-only model and cannot take images")
    assert listing(workdir) == before


# ---------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("tiny") / "llama", tiny_config("llama"))


@pytest.fixture(scope="module")
def loaded(tiny_llama: Path) -> tuple[Any, Any]:
    model, tokenizer, _ = unimap.load(tiny_llama, max_seq_len=64, machine=stand_in_machine())
    return model, tokenizer


Call = Callable[[Path], Any]
# (id, the call on a model folder, "type" or "value", what the message must name)
API_PLAN_CASES: list[tuple[str, Call, str, str]] = [
    ("plan-None", lambda p: unimap.plan(None), "type", "model must be"),  # type: ignore[arg-type]
    ("plan-123", lambda p: unimap.plan(123), "type", "model must be"),  # type: ignore[arg-type]
    ("plan-bytes", lambda p: unimap.plan(b"x"), "type", "model must be"),  # type: ignore[arg-type]
    ("plan-blank", lambda p: unimap.plan("  "), "", "model must be"),
    ("plan-machine-123", lambda p: unimap.plan(p, machine=123), "type", "machine"),  # type: ignore[arg-type]
    ("plan-ram-minus-1", lambda p: unimap.plan(p, ram=-1), "value", "--ram"),
    ("plan-ram-1.5", lambda p: unimap.plan(p, ram=1.5), "type", "--ram"),  # type: ignore[arg-type]
    ("plan-gpu-budget-lots", lambda p: unimap.plan(p, gpu_budget="lots"), "value", "--gpu-budget"),
    ("plan-max-seq-len-True", lambda p: unimap.plan(p, max_seq_len=True), "type", "--max-seq-len"),
    ("plan-max-seq-len-10**400", lambda p: unimap.plan(p, max_seq_len=10**400), "value", "--max-seq-len"),
    ("plan-device-map-empty", lambda p: unimap.plan(p, device_map=""), "value", "device map"),
    ("plan-isq-4.0", lambda p: unimap.plan(p, isq=4.0), "type", "--isq"),  # type: ignore[arg-type]
    ("plan-machine-unknown", lambda p: unimap.plan(p, machine="mac-1tb"), "value", "not a preset"),
    ("plan-missing-folder", lambda p: unimap.plan(p / "nope"), "", "no such folder"),
    ("inspect-None", lambda p: unimap.inspect(None), "type", "model must be"),  # type: ignore[arg-type]
    ("inspect-42", lambda p: unimap.inspect(42), "type", "model must be"),  # type: ignore[arg-type]
    ("estimate-None", lambda p: unimap.estimate(None), "type", "ModelSpec"),  # type: ignore[arg-type]
    ("load-planned-x", lambda p: unimap.load(p, planned="x"), "type", "planned"),  # type: ignore[arg-type]
    ("load-progress-1", lambda p: unimap.load(p, progress=1), "type", "progress"),
    ("load-bogus-kwarg", lambda p: unimap.load(p, bogus=1), "type", "bogus"),
]


@pytest.mark.parametrize(("call", "kind", "expect"), [pytest.param(*c[1:], id=c[0]) for c in API_PLAN_CASES])
def test_api_refuses_bad_arguments(tiny_llama: Path, call: Call, kind: str, expect: str) -> None:
    with pytest.raises(unimap.UnimapError) as caught:
        call(tiny_llama)
    assert_kind(caught.value, kind, expect)


def assert_kind(exc: BaseException, kind: str, expect: str) -> None:
    """Wrong types are TypeErrors, wrong values ValueErrors (and not TypeErrors)."""
    assert expect in str(exc), str(exc)
    if kind == "type":
        assert isinstance(exc, TypeError), f"{type(exc).__name__} is not a TypeError: {exc}"
    elif kind == "value":
        assert isinstance(exc, ValueError) and not isinstance(exc, TypeError), f"{type(exc).__name__}: {exc}"


# (id, keyword arguments of generate beside model, tokenizer and prompt, "type" or "value", message)
API_GENERATE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("prompt-123", {"prompt": 123}, "type", "prompt must be"),
    ("prompt-None", {"prompt": None}, "type", "prompt must be"),
    ("prompt-empty", {"prompt": ""}, "value", "the prompt is empty"),
    ("prompt-no-ids", {"prompt": []}, "value", "the prompt is empty"),
    ("prompt-id-10**6", {"prompt": [10**6]}, "value", "not a token id"),
    ("prompt-id-minus-1", {"prompt": [1, -1]}, "value", "not a token id"),
    ("prompt-lone-surrogate", {"prompt": "w1 \udcff"}, "value", "not valid UTF-8"),
    ("seed-minus-1", {"seed": -1}, "value", "--seed"),
    ("seed-2**64", {"seed": 2**64}, "value", "--seed"),
    ("seed-float", {"seed": 1.5}, "type", "--seed"),
    ("temp-nan", {"temp": float("nan")}, "value", "--temp"),
    ("temp-string", {"temp": "hot"}, "type", "--temp"),
    ("top-p-0", {"top_p": 0.0}, "value", "--top-p"),
    ("max-tokens-0", {"max_tokens": 0}, "value", "--max-tokens"),
    ("max-tokens-float", {"max_tokens": 8.0}, "type", "--max-tokens"),
    ("model-None", {"model": None}, "type", "model must be"),
    ("tokenizer-None", {"tokenizer": None}, "type", "tokenizer must be"),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize(("kwargs", "kind", "expect"),
                         [pytest.param(*c[1:], id=c[0]) for c in API_GENERATE_CASES])
def test_api_refuses_bad_generation(loaded: tuple[Any, Any], streaming: bool, kwargs: dict[str, Any],
                                    kind: str, expect: str) -> None:
    model, tokenizer = loaded
    arguments = {"model": model, "tokenizer": tokenizer, "prompt": "w1 w2", "max_tokens": 2, **kwargs}
    with pytest.raises(unimap.UnimapError) as caught:
        if streaming:
            list(unimap.stream_generate(**arguments))
        else:
            unimap.generate(**arguments)
    assert_kind(caught.value, kind, expect)


def test_the_plan_bounds_the_sequence(tiny_llama: Path) -> None:
    """A prompt longer than the plan is refused before prefill; a reply stops where the plan ends."""
    model, tokenizer, plan = unimap.load(tiny_llama, max_seq_len=32, machine=stand_in_machine())
    assert plan.estimate.sequence_tokens == 32
    with pytest.raises(unimap.ConfigError, match="the plan was made for 32"):
        unimap.generate(model, tokenizer, list(range(3, 43)), max_tokens=4)
    responses = list(unimap.stream_generate(model, tokenizer, list(range(3, 13)), max_tokens=100))
    assert len(responses) <= 22
    assert responses[-1].finish_reason == "length"
