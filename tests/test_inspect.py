"""inspect(): sparse-header fixtures of every family, cross-checked against mlx-lm's model
classes, the Hugging Face cache path, and every bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import fixtures as fx
import pytest

from unimap import ModelError, inspect
from unimap.headers import read_header
from unimap.inspect import is_expert

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
VISION = ("visual.", "vision_tower.", "multi_modal_projector.")


def header_bytes_by_layer(folder: Path, num_layers: int) -> tuple[list[int], int, int]:
    """Sum the headers ourselves: per layer, non-mapped and vision."""
    layers, other, vision = [0] * num_layers, 0, 0
    for file in sorted(folder.glob("*.safetensors")):
        for name, t in read_header(file)[0].items():
            match = LAYER.search(name)
            if name.startswith(VISION):
                vision += t.nbytes
            elif match:
                layers[int(match.group(1))] += t.nbytes
            else:
                other += t.nbytes
    return layers, other, vision


@pytest.mark.parametrize("family", list(fx.FAMILIES))
def test_per_layer_bytes_equal_header_bytes(models: Path, family: str) -> None:
    spec = inspect(models / family)
    layers, other, vision = header_bytes_by_layer(models / family, spec.num_layers)
    assert list(spec.layer_weight_bytes()) == layers
    assert spec.slots[-2].header_bytes == other  # non-mapped
    assert spec.slots[-1].header_bytes == vision
    data_bytes = 0
    for file in (models / family).glob("*.safetensors"):
        with file.open("rb") as f:  # the files are sparse and huge: read the length prefix only
            data_bytes += file.stat().st_size - 8 - int.from_bytes(f.read(8), "little")
    assert sum(s.header_bytes for s in spec.slots) == data_bytes


def test_llama3_8b_sizes(models: Path) -> None:
    spec = inspect(models / "llama3-8b")
    # per layer: q,o 4096x4096; k,v 1024x4096; gate,up,down 14336x4096; two norms; bf16
    per_layer = 2 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096 + 2 * 4096)
    assert spec.layer_weight_bytes() == (per_layer,) * 32
    assert spec.slots[-2].header_bytes == 2 * (2 * 128256 * 4096 + 4096)  # embed, lm_head, norm
    assert spec.dtype == "bfloat16" and spec.where == "local" and spec.quantization is None


def test_layer_kinds(models: Path) -> None:
    gemma = inspect(models / "gemma3-1b").arch
    assert gemma.layer_kinds[:6] == ("sliding",) * 5 + ("full",)
    assert gemma.sliding_window == 512 and gemma.tie_word_embeddings
    lfm = inspect(models / "lfm2-1.2b").arch
    assert lfm.layer_kinds[:3] == ("recurrent", "recurrent", "full")
    # the short-conv state as mlx-lm's cache holds it: (batch, L_cache - 1, hidden)
    assert lfm.caches[0].state_elements == 2 * lfm.hidden_size and not lfm.caches[0].token_elements
    assert inspect(models / "mistral-7b").arch.layer_kinds == ("full",) * 32


def test_routed_experts_summed_apart(models: Path) -> None:
    """Each MoE layer's routed experts (checkpoint names: experts.E.*) are summed on their own:
    a layer on the CPU keeps them as stored."""
    mixtral = inspect(models / "mixtral-8x7b")
    experts = mixtral.slots[0].experts
    assert experts is not None
    assert experts.header_bytes == experts.float_bytes == 8 * 3 * 14336 * 4096 * 2  # w1, w2, w3
    assert experts.float_elements == experts.q_elements == 8 * 3 * 14336 * 4096
    assert mixtral.slots[0].header_bytes - experts.header_bytes == 2 * (
        2 * 4096 * 4096 + 2 * 1024 * 4096 + 8 * 4096 + 2 * 4096)  # attention, router, norms
    qwen = inspect(models / "qwen3-30b-a3b")
    assert all(s.experts is not None and s.experts.header_bytes == 128 * 3 * 768 * 2048 * 2
               for s in qwen.slots[:qwen.num_layers])
    assert qwen.slots[-2].experts is None and inspect(models / "llama3-8b").slots[0].experts is None
    for name, routed in (("model.layers.0.mlp.switch_mlp.up_proj.weight", True),
                         ("model.layers.0.ffn.experts.mlp.w1", True),
                         ("model.layers.0.mlp.shared_experts.up_proj.weight", False),
                         ("model.layers.0.mlp.shared_expert.up_proj.weight", False),
                         ("model.layers.0.mlp.gate.weight", False)):
        assert is_expert(name) is routed, name


def test_moe_and_vision_configs(models: Path) -> None:
    moe = inspect(models / "qwen3-30b-a3b").arch.moe
    assert moe is not None and (moe.num_experts, moe.experts_per_token) == (128, 8)
    mixtral = inspect(models / "mixtral-8x7b").arch.moe
    assert mixtral is not None and mixtral.expert_intermediate_size == 14336
    qwen_vl = inspect(models / "qwen2.5-vl-7b")
    assert qwen_vl.arch.vision is not None and qwen_vl.arch.vision.hidden_size == 1280
    gemma_vl = inspect(models / "gemma3-4b-vl")
    assert gemma_vl.arch.vision is not None and gemma_vl.arch.vision.tokens_per_image == 256
    assert gemma_vl.arch.num_layers == 34  # text_config, not the vision tower's 27 layers


def test_mlx_quantized_checkpoint(models: Path) -> None:
    spec = inspect(models / "llama3.2-1b-mlx-4bit")
    quant = spec.quantization
    assert quant is not None and (quant.bits, quant.group_size) == (4, 64)
    # q_proj 2048x2048 at 4 bits: packed uint32 plus bf16 scales and biases per 64
    t = {h.name: h for h in spec.headers}
    assert t["model.layers.0.self_attn.q_proj.weight"].nbytes == 2048 * 2048 // 2
    assert t["model.layers.0.self_attn.q_proj.scales"].nbytes == 2048 * 32 * 2
    assert spec.classify("model.layers.0.self_attn.q_proj.weight").isq == ""  # already packed


def test_isq_classification(models: Path) -> None:
    spec = inspect(models / "qwen3-30b-a3b")
    assert spec.classify("model.layers.3.mlp.gate.weight").isq == "q8"  # router stays 8-bit
    assert spec.classify("model.layers.3.mlp.experts.7.up_proj.weight").isq == "q"
    assert spec.classify("model.layers.3.input_layernorm.weight").isq == ""
    assert spec.classify("model.embed_tokens.weight").part == "embed"
    vl = inspect(models / "qwen2.5-vl-7b")
    assert vl.classify("visual.blocks.3.attn.qkv.weight").part == "vision"
    assert vl.classify("visual.blocks.3.attn.qkv.weight").isq == ""
    gemma = inspect(models / "gemma3-4b-vl")
    assert gemma.classify("vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight").layer is None
    assert gemma.classify("language_model.model.layers.3.mlp.up_proj.weight").layer == 3


@pytest.mark.parametrize("name", [
    "vision.blocks.3.attn.qkv.weight",  # DeepSeek-VL2's tower
    "projector.layers.0.weight",
    "model.audio_tower.conformer.layers.3.ffw_layer_start.ffw_layer_1.weight",  # Gemma 3n
    "model.embed_audio.embedding.weight",
    "model.connector.modality_projection.proj.weight",  # Idefics3
    "mlp1.1.weight",  # InternVL's projector
    "gen_vision_model.encoder.conv_in.weight",  # Janus
])
def test_encoders_beside_the_language_model_are_not_decoder_layers(name: str) -> None:
    """Numbered blocks of another encoder are the tower's, never decoder layer N."""
    from unimap.headers import TensorHeader
    from unimap.inspect import classify

    assert classify(TensorHeader(name, "BF16", (64, 64), 0, 8192), 4).part == "vision"


@pytest.mark.parametrize("name", ["model.layers.3.mlp.up_proj.weight",
                                  "language_model.model.layers.3.self_attn.q_proj.weight",
                                  "model.language_model.layers.3.mlp.down_proj.weight",
                                  "backbone.layers.3.mixer.in_proj.weight"])
def test_decoder_layers_under_any_prefix_stay_layers(name: str) -> None:
    from unimap.headers import TensorHeader
    from unimap.inspect import classify

    assert classify(TensorHeader(name, "BF16", (64, 64), 0, 8192), 4).layer == 3


# ----------------------------------------------------------------- against mlx-lm itself

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
TINY_CONFIGS = {
    "llama3-8b": {**fx.LLAMA3_8B, **TINY},
    "qwen2.5-7b": {**fx.QWEN25_7B, **TINY},
    "qwen3-8b": {**fx.QWEN3_8B, **TINY, "head_dim": 16},
    "gemma3-1b": {**fx.GEMMA3_1B, **TINY, "head_dim": 16},
    "mistral-7b": {**fx.MISTRAL_7B, **TINY},
    "phi3-mini": {**fx.PHI3_MINI, **TINY, "num_key_value_heads": 4},
    "mixtral-8x7b": {**fx.MIXTRAL_8X7B, **TINY, "num_local_experts": 4},
    "qwen3-30b-a3b": {**fx.QWEN3_30B_A3B, **TINY, "head_dim": 16, "num_experts": 4,
                      "num_experts_per_tok": 2, "moe_intermediate_size": 64},
    "lfm2-1.2b": {**fx.LFM2_1_2B, **TINY, "block_dim": 64, "block_ff_dim": 192,
                  "layer_types": ["conv", "full_attention"]},
    "qwen2.5-vl-7b": {**fx.QWEN25_VL_7B, **TINY, "vision_config": {
        **fx.QWEN25_VL_7B["vision_config"], "depth": 2, "hidden_size": 32, "intermediate_size": 64,
        "num_heads": 2, "out_hidden_size": 64}},
    "gemma3-4b-vl": {**fx.GEMMA3_4B_VL, "vocab_size": 128,
                     "text_config": {**fx.GEMMA3_4B_VL["text_config"], **TINY, "head_dim": 16},
                     "vision_config": {**fx.GEMMA3_4B_VL["vision_config"], "hidden_size": 32,
                                       "intermediate_size": 64, "num_hidden_layers": 2,
                                       "image_size": 56}},
}


@pytest.mark.parametrize("family", list(TINY_CONFIGS))
def test_fixture_names_are_what_mlx_lm_loads(family: str) -> None:
    """Load the fixture's tensor names and shapes into mlx-lm's own model class: after its
    sanitize step, names and shapes must match the model's parameters exactly."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    config = TINY_CONFIGS[family]
    shapes = fx.FAMILIES[family][1](config)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    dtypes = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32, "U32": mx.uint32}
    weights = {n: mx.zeros(shape, dtypes[dt]) for n, (dt, shape) in shapes.items()}  # lazy
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    expected = {n: tuple(p.shape) for n, p in tree_flatten(model.parameters())}
    assert {n: tuple(w.shape) for n, w in weights.items()} == expected


def test_mlx_4bit_fixture_matches_mlx_quantize() -> None:
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    config = {**fx.LLAMA32_1B, **TINY, "head_dim": 16, "quantization": {"group_size": 64, "bits": 4}}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    nn.quantize(model, group_size=64, bits=4)
    expected = {n: tuple(p.shape) for n, p in tree_flatten(model.parameters())}
    shapes = fx.mlx_quantized(fx.llama_like(config), 4)
    assert {n: shape for n, (_, shape) in shapes.items()} == expected


def test_real_mlx_checkpoint_bytes_match_loaded_parameters(tmp_path: Path) -> None:
    """Save a real random model with mlx, inspect its headers, load it with mlx-lm: each layer's
    planned bytes are the bytes its parameters take in memory."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes, load_model

    config = {**fx.QWEN3_8B, **TINY, "head_dim": 16}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(mx.bfloat16)
    mx.save_safetensors(str(tmp_path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = inspect(tmp_path)
    loaded, _ = load_model(tmp_path)
    for i, layer in enumerate(loaded.layers):
        assert spec.layer_weight_bytes()[i] == sum(p.nbytes for _, p in tree_flatten(layer.parameters()))


# ----------------------------------------------------------------- bad input


def copy_family(models: Path, tmp_path: Path, family: str = "qwen2.5-0.5b") -> Path:
    target = tmp_path / family
    config, make, shards = fx.FAMILIES[family]
    return fx.write_model(target, config, make(config), shards)


def test_missing_folder() -> None:
    with pytest.raises(ModelError, match="no such folder, and not a Hugging Face repo id"):
        inspect("/no/such/place")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="is a file; pass the model's folder"):
        inspect(tmp_path / "x.safetensors")


def test_no_config(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        inspect(folder)


@pytest.mark.parametrize(("text", "message"), [
    ("{oops", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"hidden_size": 8}', "no 'model_type' string"),
    ('{"model_type": "gpt9"}', "model_type 'gpt9' is not an architecture the installed mlx-lm runs"),
    ('{"model_type": "llama", "hidden_size": 64}', "missing 'num_hidden_layers'"),
    ('{"model_type": "llama", "num_hidden_layers": "24", "hidden_size": 64}',
     "'num_hidden_layers' must be a whole number from 1 to 4096, not '24'"),
])
def test_bad_config(models: Path, tmp_path: Path, text: str, message: str) -> None:
    folder = copy_family(models, tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(ModelError, match=message):
        inspect(folder)


def test_config_and_weights_disagree(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 20}))
    with pytest.raises(ModelError, match="belongs to layer 20, but config.json says num_hidden_layers=20"):
        inspect(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 30}))
    with pytest.raises(ModelError, match="config.json says 30 layers but the weights hold 24"):
        inspect(folder)


def test_no_safetensors(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no .safetensors files"):
        inspect(folder)


def test_index_lists_missing_shard(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path, "llama3-8b")
    (folder / "model-00003-of-00004.safetensors").unlink()
    with pytest.raises(ModelError, match="lists model-00003-of-00004.safetensors, which is missing"):
        inspect(folder)


def test_index_inconsistent_with_headers(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path, "llama3-8b")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00004.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="says 'model.norm.weight' is in model-00001"):
        inspect(folder)


def test_tensor_in_two_files(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path)
    fx.write_model(tmp_path / "other", {}, {"model.norm.weight": ("BF16", (896,))})
    (tmp_path / "other" / "model.safetensors").rename(folder / "extra.safetensors")
    with pytest.raises(ModelError, match="'model.norm.weight' is in both"):
        inspect(folder)


def test_corrupt_shard_names_the_file(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path)
    with (folder / "model.safetensors").open("r+b") as f:
        f.write((10**12).to_bytes(8, "little"))
    with pytest.raises(ModelError, match=r"model.safetensors: header length 1000000000000 runs past"):
        inspect(folder)


def test_unsupported_quantization(models: Path, tmp_path: Path) -> None:
    folder = copy_family(models, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="'gptq' quantization is not something MLX loads"):
        inspect(folder)


# ----------------------------------------------------------------- Hugging Face repo ids

HUB_SCRIPT = textwrap.dedent("""
    import sys, unimap
    try:
        spec = unimap.inspect(sys.argv[1])
        print("OK", spec.where, spec.num_layers, sum(spec.layer_weight_bytes()))
    except unimap.UnimapError as exc:
        print("ERROR", exc)
""")


def run_offline(repo: str, cache: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)}
    done = subprocess.run([sys.executable, "-c", HUB_SCRIPT, repo], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_hub_repo_from_the_local_cache(tmp_path: Path) -> None:
    """A repo id resolves through huggingface_hub's own cache lookup, with no network."""
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-qwen"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    config, make, _ = fx.FAMILIES["qwen2.5-0.5b"]
    fx.write_model(repo / "snapshots" / revision, config, make(config))
    expected = sum(inspect(repo / "snapshots" / revision).layer_weight_bytes())
    assert run_offline("tiny-org/tiny-qwen", cache) == f"OK local 24 {expected}"


def test_hub_repo_without_network(tmp_path: Path) -> None:
    out = run_offline("some-org/not-cached", tmp_path / "empty")
    assert out.startswith("ERROR some-org/not-cached: cannot reach the Hugging Face Hub")
    assert "download the model and pass its folder" in out


def run_against(endpoint: str, repo: str, cache: Path) -> str:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", HUB_SCRIPT, repo], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("family", ["qwen2.5-0.5b", "llama3-8b"])  # one file; four shards + index
def test_hub_repo_headers_by_range_request(models: Path, tmp_path: Path, family: str) -> None:
    """Not cached: config.json is downloaded and each safetensors header is fetched with a range
    request by huggingface_hub's own code, from a Hub stand-in on 127.0.0.1."""
    from fake_hub import serve

    expected = inspect(models / family)
    with serve({"org/model": models / family}) as (endpoint, seen):
        out = run_against(endpoint, "org/model", tmp_path / "cache")
    assert out == f"OK hub {expected.num_layers} {sum(expected.layer_weight_bytes())}"
    ranged = [s for s in seen if s.startswith("GET") and ".safetensors " in s]
    assert ranged and all("Range: " not in s and "bytes=" in s for s in ranged)  # headers only
    assert not any(s.startswith("GET") and s.endswith(".safetensors") for s in seen)  # no full GET


def test_hub_repo_missing(tmp_path: Path) -> None:
    from fake_hub import serve

    with serve({}) as (endpoint, _):
        out = run_against(endpoint, "org/absent", tmp_path / "cache")
    assert out.startswith("ERROR org/absent: no such model on the Hugging Face Hub")


def test_hub_repo_without_config_or_weights(tmp_path: Path) -> None:
    from fake_hub import serve

    (tmp_path / "empty").mkdir()
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text(json.dumps(fx.QWEN25_05B))
    with serve({"org/empty": tmp_path / "empty", "org/no-weights": tmp_path / "no-weights"}) as (
            endpoint, _):
        assert run_against(endpoint, "org/empty", tmp_path / "c1") == (
            "ERROR org/empty: the repo has no config.json; is it a model repo in Hugging Face format?")
        assert run_against(endpoint, "org/no-weights", tmp_path / "c2").startswith(
            "ERROR org/no-weights: has no safetensors weights")


def test_a_tensor_of_an_absurd_layer_is_refused(tmp_path: Path) -> None:
    config, make, _ = fx.FAMILIES["llama3.2-1b"]
    shapes = {**make(config), f"model.layers.{10**30}.mlp.up_proj.weight": ("BF16", (64, 64))}
    folder = fx.write_model(tmp_path / "absurd", config, shapes)
    with pytest.raises(ModelError, match="names layer '1000000000000000000000000000000', more than"):
        inspect(folder)


def test_a_layer_missing_inside_the_weights_is_named(tmp_path: Path) -> None:
    """The count check passes (layer 15 is there) but layer 5 has no tensors at all."""
    config, make, _ = fx.FAMILIES["llama3.2-1b"]
    shapes = {k: v for k, v in make(config).items() if not k.startswith("model.layers.5.")}
    folder = fx.write_model(tmp_path / "gap", config, shapes)
    with pytest.raises(ModelError, match=r"no tensors for layer\(s\) 5;"):
        inspect(folder)


@pytest.mark.parametrize("family", list(fx.FAMILIES))
def test_the_layered_reading_is_the_reading_in_order(models: Path, family: str) -> None:
    """Slots from the layered reading (model.layers.N.* grouped once) equal those read tensor by
    tensor in the headers' order, as inspect read them before."""
    from unimap.inspect import EIGHT_BIT_MODULES, _by_row, _in_order, _layered, _sums

    spec = inspect(models / family)
    headers = list(spec.headers)
    layered = _layered(headers, EIGHT_BIT_MODULES.get(spec.arch.model_type, ()))
    fast = _by_row(spec.source, layered, spec.arch, 0)
    assert fast is not None  # the fast path applies to every fixture
    assert layered.groups or not any(h.name.startswith("model.layers.") for h in headers)
    assert _sums(fast, spec.arch) == _sums(_in_order(spec.source, headers, spec.arch, 0), spec.arch)


@pytest.mark.parametrize(("embedding_first", "dtype"), [(True, "float32"), (False, "bfloat16")])
def test_a_dtype_tie_goes_to_the_first_dtype_in_the_headers(tmp_path: Path, embedding_first: bool,
                                                            dtype: str) -> None:
    """Without torch_dtype the activation dtype is the one most bytes use; on a tie, the first
    one the headers list (whatever order the layered reading groups them in)."""
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 64}
    layer = {f"model.layers.0.self_attn.{p}_proj.weight": ("BF16", (64, 64)) for p in "qk"}
    embedding = {"model.embed_tokens.weight": ("F32", (64, 64))}  # as many bytes as the layer
    shapes = {**embedding, **layer} if embedding_first else {**layer, **embedding}
    assert inspect(fx.write_model(tmp_path / "tie", config, shapes)).dtype == dtype


def test_hub_vision_model_brings_its_image_processor_settings(tmp_path: Path) -> None:
    """A vision-language repo not cached: its preprocessor_config.json is downloaded beside
    config.json, so an Idefics 3 processor that resizes every image to 3 tiles a side is
    planned at 3 x 3 + 1 tiles; a repo without one gets the processor's defaults (4 a side)."""
    from fake_hub import serve

    build = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, sys.argv[2])
        from tiny_vlms import write_any_vlm
        folder = write_any_vlm(Path(sys.argv[1]), "idefics3")
        side = json.loads((folder / "config.json").read_text())["vision_config"]["image_size"]
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "size": {"longest_edge": 3 * side}, "max_image_size": {"longest_edge": side}}))
    """)
    made = subprocess.run([sys.executable, "-c", build, str(tmp_path / "with"), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    without = tmp_path / "without"
    without.mkdir()
    for name in ("config.json", "model.safetensors"):
        (without / name).write_bytes((tmp_path / "with" / name).read_bytes())
    tiles = textwrap.dedent("""
        import sys, unimap
        from unimap.estimate import Options, image_tiles
        spec = unimap.inspect(sys.argv[1])
        print("OK", spec.where, image_tiles(spec.arch.vision, Options(max_image_length=64)))
    """)
    with serve({"org/with": tmp_path / "with", "org/without": without}) as (endpoint, seen):
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "cache"),
               "HF_HOME": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        for repo, expected in (("org/with", 10), ("org/without", 17)):
            done = subprocess.run([sys.executable, "-c", tiles, repo], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.stdout.strip() == f"OK hub {expected}", done.stderr[-2000:]
    assert any("org/with/resolve" in s and "preprocessor_config.json" in s for s in seen)
