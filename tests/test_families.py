"""Every architecture the installed mlx-lm ships, as a tiny random model built through its own
Model class (tests/tiny_families.py): unimap reads its structure from the model, plans it, and
generates the same greedy tokens as plain mlx-lm all on one device and split across two, with
the measured peak within the plan."""

from __future__ import annotations

import contextlib
import gc
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from tiny_families import UNBUILDABLE, families, tiny_config
from tiny_models import FamilyCheckpoints, mlx_lm_tokens, stand_in_machine, write_random_model

import unimap
from unimap.api import load
from unimap.errors import ModelError
from unimap.generate import stream_generate

PROMPT = [1, 7, 12, 5, 33, 90, 41, 8, 19, 64, 3, 77]
BUILDABLE = [f for f in families() if f not in UNBUILDABLE]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> FamilyCheckpoints:
    return FamilyCheckpoints(tmp_path_factory.mktemp("families"))


def reference(path: Path, steps: int = 6) -> list[int]:
    return mlx_lm_tokens(path, PROMPT, steps)


def run(model: Any, tokenizer: Any, steps: int = 6) -> list[int]:
    out = [r.token for r in stream_generate(model, tokenizer, list(PROMPT), max_tokens=steps)]
    return [t for t in out if t is not None]


def test_most_of_mlx_lm_is_buildable() -> None:
    assert len(families()) >= 100
    assert len(BUILDABLE) >= 0.9 * len(families())


@pytest.mark.parametrize("family", BUILDABLE)
def test_same_tokens_as_mlx_lm_whole_and_split(checkpoints: FamilyCheckpoints, family: str) -> None:
    path = checkpoints[family]
    expected = reference(path)
    spec = unimap.inspect(path)
    n = spec.num_layers
    assert sum(s.header_bytes for s in spec.slots) == sum(h.end - h.begin for h in spec.headers)
    for split in (n, n // 2):
        gc.collect()  # the reference model (and the last split's) may sit in reference cycles
        mx.clear_cache()
        mx.reset_peak_memory()
        with pytest.warns(DeprecationWarning):
            model, tokenizer, plan = load(path, device_map=split, machine=stand_in_machine(),
                                          max_seq_len=64)
        assert [len(d.layers) for d in plan.devices] == [split, n - split]
        assert run(model, tokenizer) == expected, f"{family} split at {split}"
        assert 0 < mx.get_peak_memory() <= plan.peak_bytes, f"{family} split at {split}"
        model._unimap.limits.release()
        del model


REASONS = {"bitnet": "No Metal back-end", "muse_spark": "No Metal back-end",
           "olmo": "cannot be imported"}


@pytest.mark.parametrize("family", sorted(UNBUILDABLE))
def test_families_that_cannot_run_here_are_refused_with_a_reason(family: str) -> None:
    """A one-line ModelError that says why: Metal-only kernels on this CPU build, a module
    that needs another package."""
    config = tiny_config(family) if family in families() else {"model_type": family}
    with pytest.raises(ModelError, match=REASONS[family]):
        unimap.families.read_architecture(config, "config.json")


def test_a_config_missing_a_field_names_it() -> None:
    config = {k: v for k, v in tiny_config("olmo2").items() if k != "hidden_size"}
    with pytest.raises(ModelError, match="missing 'hidden_size', which mlx-lm's .*olmo2 needs"):
        unimap.families.read_architecture(config, "config.json")


def test_a_config_mlx_lm_cannot_build_says_why() -> None:
    # well-typed, so past the edge checks (a head count not dividing the width is refused there
    # now, see tests/test_bad_input.py), but a RoPE type mlx-lm does not have
    config = {**tiny_config("llama"), "rope_scaling": {"rope_type": "bogus", "factor": 2.0}}
    with pytest.raises(ModelError, match="config.json: mlx-lm cannot build .*Unsupported RoPE type"):
        unimap.families.read_architecture({**config, "model_type": "olmo2"}, "config.json")


DBRX = {"model_type": "dbrx", "vocab_size": 100352, "d_model": 6144, "n_heads": 48,
        "n_layers": 40, "max_seq_len": 32768,
        "attn_config": {"clip_qkv": 8, "kv_n_heads": 8, "rope_theta": 500000},
        "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4}}


def test_a_large_model_that_evaluates_while_probed_is_refused() -> None:
    """dbrx routes with .tolist(): reading its caches from mlx-lm's model would compute through
    every weight, so a full-size one is refused with the reason by the structure reader (its tiny
    twin is read and runs), and nothing of its 245 GiB is computed."""
    from unimap.structure import read_structure

    with pytest.raises(ModelError, match="evaluates arrays inside its forward pass"):
        read_structure(dict(DBRX), "config.json")
    assert mx.get_active_memory() < 1 << 30


def test_layers_that_differ_in_query_heads_are_priced_by_their_own(checkpoints: FamilyCheckpoints) -> None:
    """Step-3.5's sliding layers have twice the query heads of its full-attention layer (its
    attention_other_setting): each layer's heads are read from the attention call it makes, and
    each kind of layer's scores take its own most (the first layer's alone priced the sliding
    layers' scores at half)."""
    from unimap.estimate import Options, attention_bytes, kind_attention

    model, _ = _mlx_lm(checkpoints["step3p5"])
    made = tuple(layer.self_attn.num_heads for layer in model.layers)
    assert len(set(made)) > 1
    arch = unimap.inspect(checkpoints["step3p5"]).arch
    assert arch.layer_heads == made and arch.num_heads == max(made)
    kinds = dict(zip(arch.layer_kinds, made, strict=True))
    window = arch.sliding_window or 0
    for kind in ("full", "sliding"):
        assert kind_attention(arch, kind) == (max(h for k, h in zip(arch.layer_kinds, made, strict=True)
                                                  if k == kind), 0)
    chunk = tokens = 64
    keys = {"full": tokens, "sliding": min(tokens, window - 1 + chunk)}
    expected = max(kinds[k] * chunk * keys[k] * 4 + chunk * keys[k] for k in kinds) + chunk * keys["sliding"]
    assert attention_bytes(arch, Options(max_seq_len=tokens), chunk, tokens, 4) == expected


# (family, whether its prefill attention's keys carry the rope part: Mistral 4 concatenates it
# onto every head's decompressed keys, DeepSeek V3 scores it apart)
MLA = [("deepseek_v3", False), ("mistral4", True)]


@pytest.mark.parametrize(("family", "rope_keys"), MLA, ids=[f for f, _ in MLA])
def test_mla_keys_and_values_decompressed_for_attention_are_priced(checkpoints: FamilyCheckpoints,
                                                                   family: str, rope_keys: bool) -> None:
    """MLA caches one latent and one rope key per token, and decompresses every head's keys and
    values from it for the attention of a prefill chunk: heads x (nope + value dims) per key,
    arrays that exist only while the layer attends. Read from the attention call itself."""
    from unimap.estimate import Options, attention_bytes, kind_attention

    config = tiny_config(family)
    arch = unimap.inspect(checkpoints[family]).arch
    heads, nope, value, rope = (config["num_attention_heads"], config["qk_nope_head_dim"],
                                config["v_head_dim"], config["qk_rope_head_dim"])
    latent = config["kv_lora_rank"] + rope
    assert arch.caches[0].token_elements == latent
    fresh = heads * (nope + (rope if rope_keys else 0) + value) - latent
    assert kind_attention(arch, "full") == (heads, fresh)
    chunk, tokens = 100, 300
    scores = heads * chunk * tokens * 4 + chunk * tokens
    assert attention_bytes(arch, Options(max_seq_len=tokens), chunk, tokens, 4) == scores + tokens * fresh * 4


def _mlx_lm(path: Path) -> tuple[Any, Any]:
    import mlx_lm

    return mlx_lm.load(str(path))  # type: ignore[no-any-return]


def test_a_full_size_dbrx_plans_through_its_reader() -> None:
    """...which is why dbrx has a hand reader: DBRX's 40 layers of 16 experts (top-4, 10752 wide)
    and 8 KV heads of 128, read from its own field names, agree with what mlx-lm's model shows
    for its tiny twin (test_same_tokens_as_mlx_lm_whole_and_split runs that one)."""
    from unimap.structure import read_structure

    arch = unimap.families.read_architecture(DBRX, "config.json")
    assert (arch.num_layers, arch.num_kv_heads, arch.head_dim) == (40, 8, 128)
    assert arch.moe is not None and (arch.moe.num_experts, arch.moe.experts_per_token) == (16, 4)
    assert arch.moe.expert_intermediate_size == 10752 and all(arch.moe.sparse_layers)
    tiny = tiny_config("dbrx")
    read = unimap.families.read_architecture(tiny, "tiny dbrx")
    probed = read_structure(dict(tiny), "tiny dbrx")
    per_token = 2 * read.num_kv_heads * read.head_dim  # keys and values of every KV head
    assert [c.token_elements for c in probed.caches] == [per_token] * read.num_layers
    for bad in ({**DBRX, "ffn_config": None}, {**DBRX, "attn_config": {}}):
        with pytest.raises(ModelError, match="dbrx config|kv_n_heads"):
            unimap.families.read_architecture(bad, "config.json")


@pytest.mark.parametrize(("key", "value"), [("num_hidden_layers", 10**7), ("hidden_size", 10**30),
                                            ("vocab_size", -(10**20))])
def test_absurd_sizes_are_refused_before_building(key: str, value: int) -> None:
    config = {**tiny_config("olmo2"), key: value}
    with pytest.raises(ModelError, match=f"'{key}' (must be a whole number from 1 to|= a .*-digit "
                                         "number is not a number a config has)"):
        unimap.families.read_architecture(config, "config.json")


WRAPPERS = sorted(f for f in BUILDABLE if "text_config" in tiny_config(f)
                  and f not in unimap.families.VISION_TYPES)
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "patch_size": 14, "image_size": 224}


# mlx-vlm's language model caches differently from mlx-lm's of the same type (Kimi-VL: full
# keys and values for MLA's latent)
VLM_CACHES = {"kimi_vl"}


def test_vision_language_wrappers_are_many() -> None:
    """Of the wrappers' bare vision configs, most build in mlx-vlm and plan."""
    assert len(WRAPPERS) >= 8
    planned = 0
    for family in WRAPPERS:
        with contextlib.suppress(ModelError):
            unimap.families.read_architecture({**tiny_config(family), "vision_config": VISION},
                                              "config.json")
            planned += 1
    assert planned >= 8, planned


@pytest.mark.parametrize("family", WRAPPERS)
def test_vision_language_config_plans_its_language_model_and_tower(family: str) -> None:
    """A vision-language config of a family without a tower reader: the language model as
    mlx-lm builds it (the same layers as its text-only config; the caches as mlx-vlm's language
    model makes them), the tower from vision_config. A bare tower config that mlx-vlm's classes
    cannot build a model from is refused with mlx-vlm's reason: it could not load it either."""
    text_only = unimap.families.read_architecture(tiny_config(family), "config.json")
    try:
        arch = unimap.families.read_architecture({**tiny_config(family), "vision_config": VISION},
                                                 "config.json")
    except ModelError as exc:
        assert re.search(r"mlx-vlm cannot build this model|mlx-vlm's model fails", str(exc)), exc
        return
    assert arch.num_layers == text_only.num_layers
    assert [c.kind for c in arch.caches] == [c.kind for c in text_only.caches] or family in VLM_CACHES
    assert arch.vision is not None and arch.vision.num_layers == 2
    if arch.model_type in unimap.families.OWN_RESOLUTION:  # an image at its own size, capped
        assert arch.vision.kind == "qwen2_vl" and arch.vision.image_size is None
        assert arch.vision.patches_per_image == 672 * 672 // 14 ** 2
        return
    if arch.model_type in unimap.families.PADDED_ROWS:  # sized by its processor's rows
        assert arch.vision.patches_per_image == max(256 * 2 * 2, (512 // 14) ** 2)
        assert arch.vision.tokens_per_image == 258
        return
    assert arch.vision.image_size == 224 and arch.vision.tokens_per_image == (224 // 14) ** 2


def test_vision_language_type_mlx_lm_lacks_plans_through_its_text_config() -> None:
    """LLaVA-NeXT, Idefics 3, InternVL...: mlx-lm has no module for the wrapper, but one for the
    language model that text_config names."""
    config = {"model_type": "llava_next", "text_config": tiny_config("llama"),
              "vision_config": {**VISION, "image_size": 336, "model_type": "clip_vision_model"},
              "image_seq_length": 576}
    arch = unimap.families.read_architecture(config, "config.json")
    assert arch.family == "llama" and arch.vision is not None  # mlx-vlm's LLaVA-NeXT takes llama only
    assert arch.vision.tokens_per_image == 576 and arch.vision.tiled
    bare = {**config, "text_config": {k: v for k, v in tiny_config("llama").items() if k != "model_type"}}
    with pytest.raises(ModelError, match="'llava_next' is a vision-language model whose language model"):
        unimap.families.read_architecture(bare, "config.json")


def test_config_and_weights_that_disagree_name_the_first_tensor(checkpoints: FamilyCheckpoints,
                                                                 tmp_path: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "olmo2"
    shutil.copytree(checkpoints["olmo2"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ModelError, match=r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' is "
                                         r"\[\d+, \d+\] in the weights but .* config and weights disagree"):
        unimap.inspect(folder)


def _generate_within_plan(path: Path, prompt: list[int], max_tokens: int, max_seq_len: int,
                          what: str = "") -> list[int]:
    """Plan `path` for `max_seq_len` tokens on the stand-in machine, load it through unimap and
    generate: the tokens, with the peak (from a fresh reset) checked against the plan."""
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=max_seq_len)
    out = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens)]
    assert 0 < mx.get_peak_memory() <= plan.peak_bytes, what
    model._unimap.limits.release()
    return out


STATE_FAMILIES = ["mamba2", "falcon_h1", "nemotron_h", "jamba", "bailing_moe_v3", "qwen3_next",
                  "granitemoehybrid", "plamo2", "rwkv7", "mamba"]


@pytest.mark.parametrize("family", STATE_FAMILIES)
def test_deeper_twins_of_state_families_stay_within_the_plan(tmp_path: Path, family: str) -> None:
    """Families with convolution or SSM state, 16 layers deep, a 300-token prompt: the same
    tokens as plain mlx-lm and a peak within the plan. Their working set once grew with depth
    (every layer's scan blocks and chunk inputs alive at the end of prefill: 0.67 of the plan at
    8 layers); unimap now evaluates such layers one at a time in prefill and keeps copies of
    their convolution state."""
    from tiny_families import deep_config

    path = write_random_model(tmp_path / family, deep_config(family, 4))
    prompt = [(31 * i) % 120 + 3 for i in range(300)]
    expected = mlx_lm_tokens(path, prompt, 4)
    assert _generate_within_plan(path, prompt, 4, 320) == expected


# Families whose extra was once fitted to the tiny twin alone and fell short of the plan at 4
# times the width (linear-attention and SSM states grow as their head dim squared): 0.55-0.96.
WIDTH_FAMILIES = ["mamba2", "rwkv7", "qwen3_next", "qwen3_5", "kimi_linear", "olmo_hybrid",
                  "bailing_moe_linear", "deepseek_v41", "gemma3n"]


@pytest.mark.parametrize("family", WIDTH_FAMILIES)
def test_twice_as_wide_twins_stay_within_the_plan(tmp_path: Path, family: str) -> None:
    """A shape the calibration never ran (twice the widths, the experts and the top-k; it fits
    the tiny twin and one 4 times as wide), at 8 and 252 tokens: the same tokens as plain mlx-lm
    and a peak within the plan."""
    from tiny_families import wide_config

    path = write_random_model(tmp_path / family, wide_config(family, 2, 2))
    for length in (8, 252):
        prompt = [(31 * i) % 120 + 3 for i in range(length)]
        expected = mlx_lm_tokens(path, prompt, 3)
        assert _generate_within_plan(path, prompt, 3, length + 3, f"{family} at {length} tokens") == expected


# families whose twins with queries 4 times the hidden width were over their plans before the
# calibration ran such twins (and the layers' heads were read per layer): (family, how widened);
# and hybrids of MLA and gated-delta layers whose recurrent state grows with the head dims
# squared, over their plans (0.756-0.776) before their fits held a state per token
WIDE_QUERIES = [("gemma3_text", "heads"), ("step3p5", "heads"), ("talkie", "heads"),
                ("baichuan_m1", "full-layer heads"), ("hunyuan_v1_dense", "dims"),
                ("ernie4_5_moe", "dims"), ("mistral4", "dims"), ("plamo3", "dims"),
                ("deepseek_v3", "dims"), ("kimi_linear", "dims"), ("bailing_moe_v3", "dims")]


@pytest.mark.parametrize(("family", "how"), WIDE_QUERIES, ids=[f"{f}-{h}" for f, h in WIDE_QUERIES])
def test_queries_wider_than_the_hidden_width_stay_within_the_plan(tmp_path: Path, family: str,
                                                                    how: str) -> None:
    """Twice as wide, then 4 times the query heads (or only the full-attention layers' heads:
    Baichuan-M1's sliding layers keep theirs), or 4 times every head dim (keys and values with
    the queries; MLA's parts of a head too), at 700 tokens: shapes none of the family's fitted
    twins had (those widen the tiny twin). The same tokens as plain mlx-lm and a peak within the
    plan."""
    from tiny_families import ALL_HEAD_DIMS, QUERY_HEADS, scale_fields, wide_config

    keys = {"heads": QUERY_HEADS, "dims": ALL_HEAD_DIMS,
            "full-layer heads": frozenset({"num_attention_heads"})}[how]
    path = write_random_model(tmp_path / family, scale_fields(wide_config(family, 2, 2), keys, 4))
    prompt = [(31 * i) % 120 + 3 for i in range(700)]
    expected = mlx_lm_tokens(path, prompt, 3)
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=703)
    model._unimap.limits.release()  # the need itself, not what MLX's limit holds it to
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    assert [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=3)] == expected
    assert 0 < mx.get_peak_memory() <= plan.peak_bytes, f"{family} {how}"


def _least_shares(count: int) -> list[str]:
    """`count` buildable families whose fits keep the least of the arrays the largest
    coefficients price (unimap/family_calibration.py; ties in name order): where a fit that does
    not hold elsewhere would show."""
    from tiny_families import UNBUILDABLE

    from unimap.estimate import family_shares
    from unimap.family_calibration import FAMILY_EXTRA

    return sorted((f for f in FAMILY_EXTRA if f not in UNBUILDABLE),
                  key=lambda f: min(family_shares(f)))[:count]


@pytest.mark.parametrize("family", _least_shares(8))
def test_the_least_shares_hold_at_proportions_no_fit_ran(tmp_path: Path, family: str) -> None:
    """Twice as wide (twice the experts and the top-k) with the MLP widths twice more, at 500
    tokens: a shape none of the family's fitted twins had. The same tokens as plain mlx-lm and a
    peak within the plan."""
    from tiny_families import MLP_WIDTHS, scale_fields, wide_config

    path = write_random_model(tmp_path / family, scale_fields(wide_config(family, 2, 2), MLP_WIDTHS, 2))
    prompt = [(31 * i) % 120 + 3 for i in range(500)]
    expected = mlx_lm_tokens(path, prompt, 3)
    assert _generate_within_plan(path, prompt, 3, 503) == expected


@pytest.mark.parametrize("family", ["mamba2", "falcon_h1"])
def test_every_run_stays_within_the_plan_however_mlx_schedules_it(tmp_path: Path, family: str) -> None:
    """MLX allocates ahead of the work in flight, so one shape's peak varies from run to run:
    generated by mlx-lm's own stream_generate, these twins (twice as wide, twice the MLP widths,
    500 tokens) measured 0.936 to 1.055 of their plans over five runs each. Held to the plan's
    memory limit, MLX waits instead: every run within the plan."""
    from mlx_lm import stream_generate as mlx_lm_stream
    from tiny_families import MLP_WIDTHS, scale_fields, wide_config

    path = write_random_model(tmp_path / family, scale_fields(wide_config(family, 2, 2), MLP_WIDTHS, 2))
    prompt = [(31 * i) % 120 + 3 for i in range(500)]
    gc.collect()  # models other tests let go of give their limits back first
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=503)
    for run in range(5):
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        assert len(list(mlx_lm_stream(model, tokenizer, prompt, max_tokens=3))) == 3
        assert mx.get_peak_memory() <= plan.peak_bytes, f"{family}, run {run + 1}"
    model._unimap.limits.release()


@pytest.mark.parametrize("family", ["rwkv7", "mamba", "baichuan_m1"])
def test_plain_mlx_lm_generation_stays_within_the_plan(tmp_path: Path, family: str) -> None:
    """A model loaded through unimap and generated from with plain mlx-lm (its stream_generate
    makes the caches through the model's make_cache): the caches the plan priced, so the same
    tokens as mlx-lm alone and a peak within the plan, the plan's memory limit kept as load
    leaves it. With the caches these classes make, whose convolution or token-shift state is a
    slice of each layer's chunk input, the 8-layer twins at 252 tokens peaked at 1/0.955
    (rwkv7), 1/0.975 (mamba) and 1/0.889 (baichuan_m1, limit released) of their plans."""
    from mlx_lm import stream_generate as mlx_lm_stream
    from mlx_lm.models.cache import ArraysCache, make_prompt_cache
    from tiny_families import deep_config

    path = write_random_model(tmp_path / family, deep_config(family, 2))
    prompt = [(31 * i) % 120 + 3 for i in range(252)]
    expected = mlx_lm_tokens(path, prompt, 4)
    gc.collect()  # models other tests let go of give their limits back first
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=256)
    def array_caches(caches: list[Any]) -> list[Any]:  # inside mlx-lm's CacheList too
        return [a for c in caches
                for a in ([c] if isinstance(c, ArraysCache) else array_caches(getattr(c, "caches", [])))]

    arrays = array_caches(make_prompt_cache(model))
    assert arrays and all(getattr(type(c), "_unimap_unpinned", False) for c in arrays)
    mx.clear_cache()
    mx.reset_peak_memory()
    out = [r.token for r in mlx_lm_stream(model, tokenizer, prompt, max_tokens=4)]
    assert out == expected
    assert mx.get_peak_memory() <= plan.peak_bytes
    model._unimap.limits.release()


@pytest.mark.parametrize("family", ["deepseek_v3", "gemma2", "gpt_oss", "phi"])
def test_kv_bits_is_refused_where_mlx_lm_cannot_run_a_quantized_cache(tmp_path: Path,
                                                                      family: str) -> None:
    """Twins with head dims of 64 (MLA's rope keys too): the plan accepted --kv-bits, and mlx-lm's
    forward pass then failed on the quantized cache's tuples (MLA, gemma2's soft-capping, phi's
    dtype read) or refused it (gpt-oss's attention sinks), a traceback from inside mlx-lm. The
    structure read runs one traced forward pass on such a cache: the plan refuses --kv-bits
    saying why, through the CLI without a traceback, and plans without it."""
    from click.testing import CliRunner
    from tiny_families import wide_config

    from unimap.cli import cli

    config = wide_config(family, 4, 1)
    config.update({k: 64 for k in config if k == "qk_rope_head_dim"})
    path = write_random_model(tmp_path / family, config)
    with pytest.raises(unimap.ConfigError, match=r"--kv-bits: .* cannot run on a quantized KV "
                                                 r"cache \(\w+: .*\); drop --kv-bits"):
        unimap.plan(path, max_seq_len=256, kv_bits=4, machine=stand_in_machine())
    result = CliRunner().invoke(cli, ["plan", str(path), "--max-seq-len", "256", "--kv-bits", "4",
                                      "--machine", "mac-16gb"])
    assert result.exit_code == 2 and "cannot run on a quantized KV cache" in result.output
    assert "Traceback" not in result.output
    assert unimap.plan(path, max_seq_len=256, machine=stand_in_machine()).fits


def test_kv_bits_runs_where_mlx_lm_takes_a_quantized_cache(tmp_path: Path) -> None:
    """The same probe passes a family whose attention takes mlx-lm's quantized cache (llama at
    head dim 64): --kv-bits plans and generates mlx-lm's tokens from a quantized cache."""
    from tiny_families import wide_config

    path = write_random_model(tmp_path / "llama", wide_config("llama", 4, 1))
    model, tokenizer, plan = load(path, max_seq_len=64, kv_bits=8, machine=stand_in_machine())
    assert not plan.spec.arch.kv_bits_refusal
    assert len([r.token for r in stream_generate(model, tokenizer, list(range(3, 40)), max_tokens=3)]) == 3
    model._unimap.limits.release()


def test_a_float16_model_whose_attention_runs_in_float32_stays_within_the_plan(tmp_path: Path) -> None:
    """Command R7B's module (cohere2) casts a float16 model's queries to float32 for its
    attention (bfloat16 stays as it is), so its scores are float32: read from mlx-lm's source.
    Its twin twice as wide in float16 at 700 tokens needs (limit released) at most its plan;
    with the scores priced in float16 it needed 1/0.878 of it."""
    from tiny_families import wide_config

    from unimap.estimate import float32_scores_in_float16

    assert float32_scores_in_float16("cohere2") and not float32_scores_in_float16("llama")
    path = write_random_model(tmp_path / "cohere2", wide_config("cohere2", 2, 2))
    gc.collect()
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=704, dtype="float16")
    half = unimap.plan(path, machine=stand_in_machine(), max_seq_len=704, dtype="bfloat16")
    scores = "prefill/scores-and-masks"
    assert plan.estimate.activation_terms[scores] > 1.5 * half.estimate.activation_terms[scores]
    model._unimap.limits.release()
    mx.clear_cache()
    mx.reset_peak_memory()
    prompt = [(31 * i) % 120 + 3 for i in range(700)]
    assert len([r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4)]) == 4
    assert mx.get_peak_memory() <= plan.peak_bytes


@pytest.mark.parametrize("family", ["olmoe", "minimax"])
def test_half_precision_experts_on_the_cpu_stay_within_the_plan(tmp_path: Path, family: str) -> None:
    """A bf16 MoE twin twice as wide (top-4 of 16 experts) at 500 tokens: MLX's CPU build runs
    its experts through unimap's upcast path, whose routed rows are float32. Its need (the
    plan's memory limit released) within the plan; priced as bf16 rows beside one joined copy,
    it was 1/0.911 (olmoe) and 1/0.895 (minimax) of the plan."""
    from tiny_families import wide_config

    path = write_random_model(tmp_path / family, wide_config(family, 2, 2), dtype="bfloat16")
    prompt = [(31 * i) % 120 + 3 for i in range(500)]
    gc.collect()
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=504)
    model._unimap.limits.release()  # the need itself, not what the limit holds it to
    mx.clear_cache()
    mx.reset_peak_memory()
    assert len([r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4)]) == 4
    assert mx.get_peak_memory() <= plan.peak_bytes


def test_a_grouped_projection_in_half_precision_runs_on_the_cpu(tmp_path: Path) -> None:
    """DeepSeek V4.1's attention output goes through a SwitchLinear by group (its tokens as
    x, one index per group): in bf16 on MLX's CPU build, unimap's upcast call broadcast the
    indices alone and failed. Now it runs, within the plan."""
    from tiny_families import tiny_config

    path = write_random_model(tmp_path / "deepseek_v41", tiny_config("deepseek_v41"), dtype="bfloat16")
    prompt = [(31 * i) % 120 + 3 for i in range(60)]
    assert len(_generate_within_plan(path, prompt, 3, 64)) == 3


@pytest.mark.parametrize("family", ["qwen3_next", "olmo_hybrid"])
def test_a_state_that_outweighs_the_hidden_width_stays_within_the_plan(tmp_path: Path,
                                                                        family: str) -> None:
    """mlx-lm's gated-delta scan (the ops path the CPU and CUDA take) keeps about one state per
    token of the chunk. Where a state outweighs the hidden width as real ones do (Qwen3-Next's is
    256 times it) that sets the peak. A twin twice as wide with 8 times the state heads (a shape
    the calibration never ran), at 1024 tokens. Fitted to the tiny twins alone, the
    plan held 0.46 of a real-width Qwen3-Next's peak (docs/BENCHMARKS.md)."""
    from tiny_families import wide_config

    path = write_random_model(tmp_path / family, wide_config(family, 2, 2, state_heads=8))
    prompt = [(31 * i) % 120 + 3 for i in range(1024)]
    assert len(_generate_within_plan(path, prompt, 3, 1027)) == 3


@pytest.mark.parametrize("family", ["falcon_h1", "nemotron_h", "mamba2"])
def test_an_ssd_state_larger_than_its_head_dim_stays_within_the_plan(tmp_path: Path, family: str) -> None:
    """Published SSD models keep a state 2 to 4 times their head dim (Falcon-H1-0.5B: 64 x 128;
    Nemotron-H 56B: 64 x 256), where the calibration's twins keep it equal but one. A twin twice
    as wide with 4 times the state size again (4 times its head dim), at 1,024 tokens: four scan
    blocks. Priced in units shaped after Mamba-1 and gated delta, Falcon-H1-0.5B's published
    twin at 1,024 tokens was under its peak (0.997, docs/BENCHMARKS.md)."""
    from tiny_families import STATE_SIZES, scale_fields, wide_config

    path = write_random_model(tmp_path / family, scale_fields(wide_config(family, 2, 2), STATE_SIZES, 4))
    prompt = [(31 * i) % 120 + 3 for i in range(1024)]
    assert len(_generate_within_plan(path, prompt, 3, 1027, family)) == 3


def test_falcon_h1_at_its_published_widths_stays_within_the_plan(tmp_path: Path) -> None:
    """Falcon-H1-0.5B's published config cut to 2 layers and a 1,024-token vocabulary
    (tools/bench_estimate.py published_twin), a 1,020-token prompt, run free of the plan's
    memory limit: the need itself. Priced in the units of Mamba-1 and gated delta, its plan was
    under this peak (0.997); in SSD units, 1.076."""
    from bench_estimate import published_twin

    path = write_random_model(tmp_path / "falcon_h1", published_twin("falcon_h1"))
    prompt = [(31 * i) % 1000 + 3 for i in range(1020)]
    gc.collect()
    mx.clear_cache()
    model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=1024)
    model._unimap.limits.release()  # the need, not what MLX's limit holds it to
    mx.reset_peak_memory()
    out = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4)]
    assert len(out) == 4
    assert 0 < mx.get_peak_memory() <= plan.peak_bytes


SHORT_FAMILIES = [*STATE_FAMILIES, "llama4", "llama4_text", "gemma3n", "qwen3_5", "kimi_linear",
                  "lfm2", "recurrent_gemma", "llama", "gpt_oss", "deepseek_v3"]


@pytest.mark.parametrize("family", SHORT_FAMILIES)
def test_short_prompts_stay_within_a_plan_made_for_them(checkpoints: FamilyCheckpoints,
                                                        family: str) -> None:
    """A plan for exactly the prompt and reply, at 8 and 64 tokens: fixed arrays and a single
    SSM scan block decide there, and mamba2 and rwkv7 once measured 0.94-0.96 of such a plan,
    llama4 0.90 (its chunked cache keeps its window plus a new 256-token step)."""
    path = checkpoints[family]
    for length in (8, 64):
        prompt = [(31 * i) % 120 + 3 for i in range(length)]
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        model, tokenizer, plan = load(path, machine=stand_in_machine(), max_seq_len=length + 4)
        out = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4)]
        assert len([t for t in out if t is not None]) == 4
        assert 0 < mx.get_peak_memory() <= plan.peak_bytes, f"{family} at {length} tokens"
        model._unimap.limits.release()
        del model
