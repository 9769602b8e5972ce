"""Published configs of families planned from mlx-lm's own classes (tools/published_configs.json,
each with its source): sparse-header checkpoints with the names and shapes mlx-lm's Model holds
plan, and the structure read from the model is what the architecture is known to be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fixtures
import pytest

import unimap
from unimap.estimate import IMAGE_MARKERS, TILE_MARKERS, Options, estimate

PUBLISHED: dict[str, dict[str, Any]] = json.loads(
    (Path(fixtures.__file__).parent / "published_configs.json").read_text())
# The fixtures hold bf16 weights (as mlx-community's bf16 conversions do), so the fp8 / mxfp4
# quantization_config of the original checkpoints is left out.
for _entry in PUBLISHED.values():
    _entry["config"].pop("quantization_config", None)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {family: fixtures.write_model(root / family, entry["config"], shapes(entry["config"]))
            for family, entry in PUBLISHED.items()}


def shapes(config: dict[str, Any]) -> fixtures.Shapes:
    """mlx-lm's parameters; for a vision-language config (mlx-lm builds its language model only)
    plus a vision tower's worth of tensors under the names such checkpoints use."""
    out = fixtures.from_model(config)
    if "vision_config" in config:
        v = config["vision_config"]
        for i in range(v["num_hidden_layers"]):
            out[f"vision_model.model.layers.{i}.mlp.fc1.weight"] = (
                "BF16", (v["intermediate_size"], v["hidden_size"]))
        out["multi_modal_projector.linear_1.weight"] = ("BF16", (5120, v["vision_output_dim"]))
    return out


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_published_config_plans_with_exact_weights(published: dict[str, Path], family: str) -> None:
    spec = unimap.inspect(published[family])
    est = estimate(spec, Options(max_seq_len=8192))
    assert sum(s.header_bytes for s in spec.slots) == sum(h.end - h.begin for h in spec.headers)
    assert all(s.header_bytes for s in spec.slots[:spec.num_layers])
    assert est.kv_bytes > 0 and est.activation_bytes() > 0
    plan = unimap.plan(spec, max_seq_len=8192, machine="mac-64gb")
    assert plan.peak_bytes >= est.weight_bytes + est.kv_bytes


def kinds(arch: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for cache in arch.caches:
        out[cache.kind] = out.get(cache.kind, 0) + 1
    return out


def test_deepseek_v3_mla_and_routing(published: dict[str, Path]) -> None:
    arch = unimap.inspect(published["deepseek_v3"]).arch
    c = PUBLISHED["deepseek_v3"]["config"]
    # MLA caches the compressed latent and the shared rope key: one "head" of 512 + 64
    assert {cache.token_elements for cache in arch.caches} == {c["kv_lora_rank"] + c["qk_rope_head_dim"]}
    moe = arch.moe
    assert moe is not None and (moe.num_experts, moe.experts_per_token) == (256, 8)
    assert moe.sparse_layers[:4] == (False, False, False, True)  # first_k_dense_replace = 3
    assert moe.expert_intermediate_size == moe.shared_intermediate_size == 2048


def test_deepseek_v3_next_token_layer_is_not_counted(published: dict[str, Path], tmp_path: Path) -> None:
    """DeepSeek V3's checkpoints carry layer 61 (multi-token prediction), which mlx-lm drops.
    (A fresh sparse fixture: copying one would write its whole apparent size.)"""
    config = PUBLISHED["deepseek_v3"]["config"]
    shapes = {**fixtures.from_model(config), "model.layers.61.eh_proj.weight": ("BF16", (7168, 14336))}
    after = unimap.inspect(fixtures.write_model(tmp_path / "dsv3", config, shapes, shards=2))
    before = unimap.inspect(published["deepseek_v3"])
    assert after.layer_weight_bytes() == before.layer_weight_bytes()
    assert after.slots[-2].header_bytes == before.slots[-2].header_bytes


def test_sliding_chunked_and_recurrent_layers(published: dict[str, Path]) -> None:
    gpt_oss = unimap.inspect(published["gpt_oss"]).arch
    assert kinds(gpt_oss) == {"sliding": 12, "full": 12}
    assert {c.window for c in gpt_oss.caches if c.kind == "sliding"} == {128}
    assert gpt_oss.moe is not None and gpt_oss.moe.experts_per_token == 4
    qwen3_next = unimap.inspect(published["qwen3_next"]).arch
    assert kinds(qwen3_next) == {"recurrent": 36, "full": 12}  # full attention every 4th layer
    assert qwen3_next.caches[3].kind == "full" and qwen3_next.caches[0].state_heads > 0
    mamba2 = unimap.inspect(published["mamba2"]).arch
    assert kinds(mamba2) == {"recurrent": 64} and mamba2.head_dim == 0
    # the SSD state's heads and dims, as mlx-lm's cache holds it: (heads, head dim, state size)
    cfg = PUBLISHED["mamba2"]["config"]
    assert mamba2.caches[0].state_heads == cfg["num_heads"]
    assert mamba2.caches[0].state_dims == (cfg["head_dim"], cfg["state_size"])
    assert mamba2.scan_widths == (cfg["num_heads"] * cfg["head_dim"], cfg["num_heads"] * cfg["state_size"])
    linear = PUBLISHED["qwen3_next"]["config"]
    assert qwen3_next.caches[0].state_heads == linear["linear_num_value_heads"]
    assert sorted(qwen3_next.caches[0].state_dims) == sorted(
        (linear["linear_key_head_dim"], linear["linear_value_head_dim"]))
    falcon = unimap.inspect(published["falcon_h1"]).arch
    assert all(c.token_elements and c.state_elements for c in falcon.caches)  # attention + SSM
    nemotron = unimap.inspect(published["nemotron_h"]).arch
    pattern = PUBLISHED["nemotron_h"]["config"]["hybrid_override_pattern"]
    expected = {"M": "recurrent", "*": "full", "-": "none", "E": "none"}
    assert [c.kind for c in nemotron.caches] == [expected[p] for p in pattern]


def test_kv_per_token_follows_the_cache(published: dict[str, Path]) -> None:
    """Per layer and token: keys and values of every KV head, as mlx-lm's cache holds them."""
    for family in ("gemma2", "starcoder2", "olmo2", "smollm3", "internlm2", "granite"):
        c = PUBLISHED[family]["config"]
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        kv_heads = c.get("num_key_value_heads") or heads
        arch = unimap.inspect(published[family]).arch
        assert {cache.token_elements for cache in arch.caches} == {2 * kv_heads * head_dim}, family


def test_llama4_vision_language_config(published: dict[str, Path]) -> None:
    """Llama 4 Scout: the language model from mlx-lm's llama4 module (chunked attention on three
    layers of four, 16 experts with top-1 and a shared expert), the vision tower's tensors as
    vision weights, images cut into 336-px tiles plus a thumbnail, 144 tokens a tile (pixel
    shuffle 0.5)."""
    spec = unimap.inspect(published["llama4"])
    arch = spec.arch
    assert kinds(arch) == {"sliding": 36, "full": 12}
    assert {c.window for c in arch.caches if c.kind == "sliding"} == {8192}
    assert arch.moe is not None and (arch.moe.num_experts, arch.moe.experts_per_token) == (16, 1)
    assert arch.vision is not None and arch.vision.tokens_per_image == 144
    est = estimate(spec, Options(max_seq_len=4096, max_image_length=1024))
    # 1024 px: up to 4 x 4 tiles and a thumbnail, the marks around each tile and the image
    assert est.image_tokens == (4 * 4 + 1) * (144 + TILE_MARKERS) + IMAGE_MARKERS
    v = PUBLISHED["llama4"]["config"]["vision_config"]
    assert est.vision_weight_bytes == 2 * (v["num_hidden_layers"] * v["intermediate_size"] * v["hidden_size"]
                                           + 5120 * v["vision_output_dim"])
    one_tile = estimate(spec, Options(max_seq_len=4096, max_image_length=336))
    assert one_tile.image_tokens == 144 + IMAGE_MARKERS
