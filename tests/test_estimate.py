"""Every estimator term against a hand computation on a tiny model.

The model: hidden 128, 2 layers, 2 heads of 64, 1 KV head, MLP 256, vocabulary 256, bf16.
Per layer: q, o 128x128; k, v 64x128; gate, up 256x128; down 128x256 -> 147456 linear elements,
plus two 128-element norms = 147712 elements = 295424 bytes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import fixtures as fx
import pytest

from unimap import ConfigError, Options, estimate, inspect
from unimap.calibration import COEFFICIENTS
from unimap.estimate import CUDA_ARRAYS_FACTORS, IMAGE_MARKERS, IN_FLIGHT_ARRAYS, quantized_bytes
from unimap.metal_calibration import METAL_ARRAYS_FACTORS, METAL_FAMILY_KINDS
from unimap.vision_calibration import VISION_COEFFICIENTS

TINY = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 64, "vocab_size": 256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("tiny")
    return inspect(fx.write_model(folder, TINY, fx.llama_like(TINY)))


def test_weights_exact(tiny) -> None:  # type: ignore[no-untyped-def]
    est = estimate(tiny, Options(max_seq_len=1000))
    assert [layer.weight_bytes for layer in est.layers] == [295424, 295424]
    assert est.non_mapped_weight_bytes == (256 * 128 * 2 + 128) * 2  # embed, lm_head, norm
    assert est.vision_weight_bytes == 0
    assert est.weight_bytes == 2 * 295424 + 131328


def test_isq_prices_mlx_affine_quantization(tiny) -> None:  # type: ignore[no-untyped-def]
    est = estimate(tiny, Options(max_seq_len=1000, isq=4))
    # 147456 linear elements: 4 bits each, plus a bf16 scale and bias per 64; norms stay bf16
    assert est.layers[0].weight_bytes == 147456 // 2 + 2 * (147456 // 64) * 2 + 256 * 2 == 83456
    eight = estimate(tiny, Options(max_seq_len=1000, isq=8))
    assert eight.non_mapped_weight_bytes == 65536 + 2 * 1024 * 2 + 128 * 2 == 69888
    three = estimate(tiny, Options(isq=3))
    assert three.layers[0].weight_bytes == 147456 * 3 // 8 + 9216 + 512


def test_quantized_bytes_formula() -> None:
    assert quantized_bytes(4096 * 4096, 4, 2) == 4096 * 4096 // 2 + 2 * 4096 * 64 * 2
    assert quantized_bytes(64, 8, 4) == 64 + 8


def test_dtype_override(tiny) -> None:  # type: ignore[no-untyped-def]
    est = estimate(tiny, Options(dtype="float32"))
    assert est.layers[0].weight_bytes == 147712 * 4
    assert est.dtype == "float32"
    both = estimate(tiny, Options(dtype="float32", isq=4))  # scales follow the compute dtype
    assert both.layers[0].weight_bytes == 147456 // 2 + 2 * 2304 * 4 + 256 * 4


def test_kv_cache_mlx_lm_layout(tiny) -> None:  # type: ignore[no-untyped-def]
    # 1000 tokens -> 1024 (KVCache steps of 256); per token 2 (K,V) x 1 head x 64 x 2 bytes
    est = estimate(tiny, Options(max_seq_len=1000))
    assert [layer.kv_bytes for layer in est.layers] == [1024 * 256] * 2
    assert est.kv_growth_bytes == 1024 * 256  # one layer's cache while it is copied
    assert estimate(tiny, Options(max_seq_len=1024)).layers[0].kv_bytes == 1024 * 256
    assert estimate(tiny, Options(max_seq_len=1025)).layers[0].kv_bytes == 1280 * 256
    batch = estimate(tiny, Options(max_seq_len=1000, max_batch_size=2))
    assert batch.layers[0].kv_bytes == 2 * 1024 * 256


def test_kv_cache_quantized_and_paged(tiny) -> None:  # type: ignore[no-untyped-def]
    # 8-bit: 64 bytes of values + one bf16 scale and bias per group of 64, for K and V
    assert estimate(tiny, Options(max_seq_len=1000, kv_bits=8)).layers[0].kv_bytes == 1024 * 2 * 68
    assert estimate(tiny, Options(max_seq_len=1000, kv_bits=4)).layers[0].kv_bytes == 1024 * 2 * 36
    paged = estimate(tiny, Options(max_seq_len=1000, kv_layout="paged", kv_block_tokens=48))
    assert paged.layers[0].kv_bytes == 21 * 48 * 256  # 21 blocks of 48 tokens
    assert paged.kv_growth_bytes == 0


def test_sliding_window_and_recurrent_layers(tmp_path: Path) -> None:
    config = {**fx.GEMMA3_1B, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
              "vocab_size": 256, "sliding_window": 512}
    spec = inspect(fx.write_model(tmp_path / "g", config, fx.gemma3_text(config)))
    est = estimate(spec, Options(max_seq_len=4096))
    per_token = 2 * 64 * 2
    # sliding layers keep window - 1 tokens plus one 2048-token prefill chunk; layer 5 is global
    assert [layer.kv_bytes // per_token for layer in est.layers] == [2559] * 5 + [4096]
    short = estimate(spec, Options(max_seq_len=300))
    assert short.layers[0].kv_bytes == 512 * per_token  # 300 -> 512: the window caps the step
    lfm = {**fx.LFM2_1_2B, "hidden_size": 128, "block_dim": 128, "block_ff_dim": 384, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 256,
           "layer_types": ["conv", "full_attention"]}
    est = estimate(inspect(fx.write_model(tmp_path / "l", lfm, fx.lfm2(lfm))), Options(max_seq_len=1000))
    assert est.layers[0].kind == "recurrent"
    assert est.layers[0].kv_bytes == 1 * 2 * 128 * 2  # (batch, L_cache - 1, hidden) in bf16
    assert est.layers[1].kv_bytes == 1024 * 2 * 1 * 64 * 2
    assert est.kv_growth_bytes == est.layers[1].kv_bytes


def test_activations_hand_computed(tiny) -> None:  # type: ignore[no-untyped-def]
    est = estimate(tiny, Options(max_seq_len=1000))
    chunk, keys = 999, 1000  # mlx-lm prefills all but the last token, then decodes it
    t = est.activation_terms
    # unfused attention: bf16 scores (batch, 2 heads, chunk, keys) and the boolean causal mask
    assert t["prefill/scores-and-masks"] == 2 * chunk * keys * 2 + chunk * keys
    a, b, c, e, qw, qkv = COEFFICIENTS[("llama", "bfloat16")]  # hidden 128, q 2x64, kv 1x64, MLP 256
    per_token = a * 128 * 4 + b * 128 * 2 + c * 64 * 2 + e * 256 * 2
    # and a hidden-wide float32 array for what MLX holds in flight beyond a measured run
    assert t["prefill/arrays"] == int(chunk * (per_token + IN_FLIGHT_ARRAYS * 128 * 4))
    quantized = estimate(tiny, Options(max_seq_len=1000, isq=4, kv_bits=8)).activation_terms
    assert quantized["prefill/arrays"] == int(chunk * (per_token + IN_FLIGHT_ARRAYS * 128 * 4
                                                       + qw * 128 * 4 + qkv * 128 * 2))
    assert t["decode/logits"] == 2 * 256 * (2 + 4 + 4)
    assert est.activation_bytes("unfused") == t["prefill/scores-and-masks"] + t["prefill/arrays"]
    # head_dim 64 runs in MLX's fused kernel on Metal: no scores and no causal mask; the chunk's
    # arrays times what published Mac peaks need for a family without its own: the largest of
    # the attention-only families
    metal = est.fused_activation_terms
    assert metal["prefill/scores-and-masks"] == 0
    largest = max(f for k, f in METAL_ARRAYS_FACTORS.items() if METAL_FAMILY_KINDS[k] == "attention")
    assert "llama" not in METAL_ARRAYS_FACTORS and largest < max(METAL_ARRAYS_FACTORS.values())
    assert metal["prefill/arrays"] == int(int(chunk * per_token) * largest)
    assert est.activation_bytes("metal") == metal["prefill/arrays"]
    # a cache grows beside the chunk's arrays, not beside its scores
    growth = 1024 * 2 * 64 * 2
    assert est.kv_growth_bytes == growth
    assert est.working_bytes("metal") == metal["prefill/arrays"] + growth
    assert est.working_bytes("unfused") == est.activation_bytes("unfused")
    assert est.peak_bytes("unfused") == est.weight_bytes + est.kv_bytes + est.activation_bytes()


def test_cpu_layers_keep_routed_experts_as_stored(tmp_path: Path) -> None:
    """A bf16 MoE layer on the CPU: the routed experts stay bf16 (4 experts x gate, up, down of
    32x64), the rest goes to float32 (q, o 64x64; k, v 32x64; q/k norms 16; router 4x64; two
    norms 64). A CPU call upcasts one projection's selected experts (all of them fit one group
    here), and its routed rows hold float32 arrays of the expert and hidden widths beyond what
    the chunk's arrays price for them (in float32 on the CPU layers, bf16 on the stand-in GPU)."""
    from tiny_models import write_tiny_model

    from unimap.estimate import (
        GATHER_ROW_ARRAYS,
        UPCAST_EXPERT_SHARE,
        UPCAST_GROUP_BYTES,
        UPCAST_ROW_ARRAYS,
        upcast_terms,
    )

    spec = inspect(write_tiny_model(tmp_path / "moe", "qwen3_moe", dtype="bfloat16"))
    experts, rest = 4 * 3 * 32 * 64, 2 * 64 * 64 + 2 * 32 * 64 + 2 * 16 + 4 * 64 + 2 * 64
    est = estimate(spec, Options(max_seq_len=100, max_batch_size=2, cpu_dtype="float32"))
    assert [x.weight_bytes for x in est.layers] == [(experts + rest) * 2] * 4
    assert [x.weight_bytes for x in est.cpu_layers] == [experts * 2 + rest * 4] * 4
    one = int(3 * 32 * 64 * 4 * UPCAST_EXPERT_SHARE)  # of one expert's float32 copy

    def row(d: int) -> int:  # one routed row: expert width 32, hidden 64
        (ui, uh), (gi, gh) = UPCAST_ROW_ARRAYS, GATHER_ROW_ARRAYS
        return int((ui * 32 + uh * 64) * 4 - (gi * 32 + gh * 64) * d)

    assert row(4) > 0 and row(2) > row(4)
    chunk = 99  # prefill: all but the last token, 2 x 99 x top-2 rows

    def upcast(d: int) -> dict[str, int]:
        return {"moe/experts-upcast": 4 * one + 2 * chunk * 2 * row(d),  # at most every expert
                "decode/experts-upcast": 4 * one + 4 * row(d)}  # 2 rows x top-2

    assert {k: est.cpu_activation_terms[k] for k in upcast(4)} == upcast(4)
    assert {k: est.activation_terms[k] for k in upcast(2)} == upcast(2)  # MLX's CPU kernels run all
    # the upcast calls in a phase of their own: the chunk's arrays, without the scores
    terms = est.activation_terms
    assert terms["moe/arrays"] == terms["prefill/arrays"] and "prefill/experts-upcast" not in terms
    assert est.activation_bytes() == max(terms["prefill/arrays"] + terms["prefill/scores-and-masks"],
                                         terms["moe/arrays"] + terms["moe/experts-upcast"],
                                         terms["decode/logits"] + terms["decode/arrays"]
                                         + terms["decode/experts-upcast"])
    assert not set(upcast(2)) & (set(est.fused_activation_terms) | set(est.cuda_activation_terms))
    one_row = estimate(spec, Options(max_seq_len=100))  # a decode step routes 2 of 4 experts
    assert one_row.activation_terms["decode/experts-upcast"] == 2 * one + 2 * row(2)
    # many experts: one group of one projection at a time
    big = upcast_terms(spec.arch, Options(), 2048, 2**26)
    assert big["moe/experts-upcast"] == UPCAST_GROUP_BYTES + 2048 * 2 * row(4)
    assert upcast_terms(spec.arch, Options(), 2048, 2**28)["decode/experts-upcast"] == (
        int(2**28 * 4 * UPCAST_EXPERT_SHARE) + 2 * row(4))  # one expert larger than a group
    for options in (Options(dtype="float32"), Options(isq=4)):  # experts float32, or quantized
        assert "decode/experts-upcast" not in estimate(spec, options).activation_terms


def test_cuda_activations_hand_computed(tiny) -> None:  # type: ignore[no-untyped-def]
    """MLX's CUDA backend (measured on an H200): no scores, the other arrays x the family's CUDA factor,
    and a boolean mask per batch row only when a chunk follows cached tokens."""
    from unimap.estimate import cuda_arrays_factor

    one_chunk = estimate(tiny, Options(max_seq_len=1000, max_batch_size=2))
    cuda = one_chunk.cuda_activation_terms
    assert cuda["prefill/scores-and-masks"] == 0
    factor = cuda_arrays_factor("llama")
    assert cuda["prefill/arrays"] == int(one_chunk.activation_terms["prefill/arrays"] * factor)
    assert cuda_arrays_factor("qwen2") == max(CUDA_ARRAYS_FACTORS.values())  # not measured on CUDA
    assert cuda["decode/logits"] == one_chunk.activation_terms["decode/logits"]
    two_chunks = estimate(tiny, Options(max_seq_len=3000, max_batch_size=2)).cuda_activation_terms
    assert two_chunks["prefill/scores-and-masks"] == 2 * 2048 * 3000  # last chunk x every key


def test_cuda_prices_windowed_layers_past_their_window_unfused(tmp_path: Path) -> None:
    """mlx-lm hands a sliding-window layer a boolean array mask once the sequence passes the
    window; MLX's CUDA attention then runs unfused: two float32-sized score buffers and the mask,
    beside the window mask every windowed layer shares."""
    config = {**TINY, "model_type": "gemma3_text", "sliding_window": 512, "sliding_window_pattern": 2,
              "num_hidden_layers": 4, "query_pre_attn_scalar": 64}
    spec = inspect(fx.write_model(tmp_path / "g", config, fx.gemma3_text(config)))
    chunk, tokens = 2047, 2048
    keys = min(tokens, 511 + chunk)
    past = estimate(spec, Options(max_seq_len=tokens)).cuda_activation_terms
    assert past["prefill/scores-and-masks"] == 2 * chunk * keys * 8 + chunk * keys + chunk * keys
    inside = estimate(spec, Options(max_seq_len=400)).cuda_activation_terms  # fused, "causal"
    assert inside["prefill/scores-and-masks"] == 399 * 400  # only the shared window mask


def test_float32_and_unknown_families_use_their_coefficients(tmp_path: Path) -> None:
    from unimap.estimate import coefficients

    assert coefficients("mistral", "float32") == COEFFICIENTS[("llama", "float32")]
    assert coefficients("qwen2_5_vl", "bfloat16") == COEFFICIENTS[("qwen2", "bfloat16")]
    from unimap.estimate import WIDTH_FITTED, vision_coefficients

    # CLIP towers are not measured: the largest of the towers fitted across widths (FastViTHD's
    # per-pixel rate, measured on a tower fixed in code, says nothing of another tower's)
    llava = vision_coefficients("llava", "float32")
    towers = [row for (family, dtype), row in VISION_COEFFICIENTS.items()
              if dtype == "float32" and family in WIDTH_FITTED]
    assert llava == tuple(max(column) for column in zip(*towers, strict=True))
    assert vision_coefficients("llava_qwen2", "float32") == VISION_COEFFICIENTS[("fastvlm", "float32")]
    assert llava[0] < VISION_COEFFICIENTS[("fastvlm", "float32")][0]
    unknown = coefficients("lfm2", "bfloat16")  # not measured: the largest of every family
    rows = [row for (_, dtype), row in COEFFICIENTS.items() if dtype == "bfloat16"]
    assert unknown == tuple(max(column) for column in zip(*rows, strict=True))
    assert all(u >= r for row in rows for u, r in zip(unknown, row, strict=True))


def test_vision_tokens_and_activations(tmp_path: Path) -> None:
    config = fx.QWEN25_VL_7B
    spec = inspect(fx.write_model(tmp_path / "vl", config, fx.qwen2_5_vl(config), 5))
    est = estimate(spec, Options(max_seq_len=4096, max_num_images=2, max_image_length=1024))
    # 1024 px -> 1036 (whole 28-px merged patches) -> 74 x 74 patches -> 1369 tokens each, and
    # the marks around each image
    assert est.image_tokens == 2 * (1369 + IMAGE_MARKERS)
    assert est.sequence_tokens == 4096 + 2 * (1369 + IMAGE_MARKERS)
    assert est.vision_weight_bytes == spec.slots[-1].header_bytes > 0
    cp, ch, cm, cs, ck = VISION_COEFFICIENTS[("qwen2_5_vl", "bfloat16")]  # measured for the family
    v, n = spec.arch.vision, 5476
    assert v is not None and (v.hidden_size, v.intermediate_size, v.num_heads, v.num_layers) == (
        1280, 3420, 16, 32)
    pixels = 2 * n * 3 * 14 * 14 * 2 * 4  # float32, temporal patches of 2 frames
    terms = est.vision_activation_terms
    assert terms["all/pixels"] == pixels
    assert terms["all/input-embeddings"] == est.sequence_tokens * 3584 * 2
    assert terms["vision/encoder"] == int(cp * pixels + ch * 2 * n * 1280 * 2 + cm * 2 * n * 3420 * 2
                                          + cs * 16 * n * n * 2 + ck * 32 * 2 * n * 1280 * 2)
    # the pixels and input embeddings stay alive through the language model's prefill
    text = max(t + a for t, a in [(est.activation_terms["prefill/scores-and-masks"],
                                   est.activation_terms["prefill/arrays"])])
    assert est.activation_bytes() == max(text + pixels + terms["all/input-embeddings"], sum(terms.values()))
    none = estimate(spec, Options(max_num_images=0))
    assert none.image_tokens == 0 and none.vision_activation_terms == {}
    gemma = inspect(fx.write_model(tmp_path / "g", fx.GEMMA3_4B_VL, fx.gemma3_vl(fx.GEMMA3_4B_VL), 2))
    assert estimate(gemma, Options(max_image_length=4000)).image_tokens == 256 + IMAGE_MARKERS  # fixed 896 px


@pytest.mark.parametrize(("options", "message"), [
    (Options(max_seq_len=0), "--max-seq-len must be from 1 to"),
    (Options(max_batch_size=-2), "--max-batch-size must be from 1 to"),
    (Options(max_num_images=-1), "--max-num-images must be from 0 to"),
    (Options(isq=7), "MLX quantizes to 2, 3, 4, 5, 6, 8 bits"),
    (Options(kv_bits=1), "--kv-bits 1"),
    (Options(dtype="int8"), "--dtype 'int8'"),
    (Options(kv_layout="vllm"), "kv layout 'vllm'"),  # type: ignore[arg-type]
])
def test_bad_options(tiny, options: Options, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        estimate(tiny, options)


def test_isq_on_quantized_checkpoint_is_refused(models: Path) -> None:
    with pytest.raises(ConfigError, match="already MLX-quantized to 4 bits"):
        estimate(inspect(models / "llama3.2-1b-mlx-4bit"), Options(isq=4))


def test_a_hybrid_peaks_in_its_scores_or_its_scan_not_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hybrid whose recurrent states live in layers without attention: the chunk's arrays with
    the scores (prefill) or with the scan's state parts (scan), whichever is larger. A layer that
    keeps both (Falcon-H1's parallel attention and Mamba) adds them."""
    from unimap.estimate import (
        FAMILY_EXTRA,
        activation_terms,
        attention_bytes,
        chunk_array_bytes,
        state_apart,
    )
    from unimap.families import Architecture, LayerCache

    kv = LayerCache("full", token_elements=64, state_elements=0, window=None, head_dim=16, quantizable=True)
    ssm = LayerCache("recurrent", 0, state_elements=5000, window=None, head_dim=0, quantizable=False,
                     state_float32=True, state_heads=8)
    both = LayerCache("full", token_elements=64, state_elements=5000, window=None, head_dim=16,
                      quantizable=False, state_heads=8)

    def arch(kinds: tuple[str, ...], caches: tuple[LayerCache, ...]) -> Architecture:
        return Architecture(model_type="x", num_layers=len(kinds), hidden_size=64, intermediate_size=128,
                            vocab_size=100, num_heads=4, num_kv_heads=2, head_dim=16, layer_kinds=kinds,
                            sliding_window=None, tie_word_embeddings=False, torch_dtype=None,
                            caches=caches, module="x")

    opts = Options(max_seq_len=300)
    hybrid = arch(("recurrent", "full", "recurrent"), (ssm, kv, ssm))
    assert state_apart(hybrid)
    # a fit made to the sum of the two keeps the sum
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("scan", 0.5, (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)))
    summed = activation_terms(hybrid, opts, 299, 300, 4)
    assert "scan/arrays" not in summed
    assert summed["prefill/arrays"] == chunk_array_bytes(hybrid, 299, 4, chunk=299, keys=300)
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("scan-apart", 0.5, (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)))
    t = activation_terms(hybrid, opts, 299, 300, 4)
    without = chunk_array_bytes(hybrid, 299, 4, chunk=299, keys=300, state=False)
    with_state = chunk_array_bytes(hybrid, 299, 4, chunk=299, keys=300)
    assert with_state - without == 299 * 5000 * 4  # one state per chunk token, priced at 1.0
    assert t["prefill/arrays"] == without and t["scan/arrays"] == with_state
    scores = attention_bytes(hybrid, opts, 299, 300, 4)
    assert t["prefill/scores-and-masks"] == scores
    est = estimate_of_terms(t)
    assert est == max(scores + without, with_state)
    # both in one layer, or no attention at all: one phase with everything
    for other in (arch(("full", "full"), (both, both)), arch(("recurrent", "recurrent"), (ssm, ssm))):
        assert not state_apart(other)
        t = activation_terms(other, opts, 299, 300, 4)
        assert "scan/arrays" not in t
        assert t["prefill/arrays"] == chunk_array_bytes(other, 299, 4, chunk=299, keys=300)


def estimate_of_terms(terms: dict[str, int]) -> int:
    """The larger of the prefill phases (unimap.estimate's phase peak, decode left out)."""
    from unimap.estimate import _phase_peak

    return _phase_peak({k: v for k, v in terms.items() if not k.startswith("decode/")})


def test_terms_of_families_read_from_mlx_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-computed: a layer cache read from the model, MoE routing copies, tiny-twin extras."""
    from unimap.estimate import (
        FAMILY_EXTRA,
        base_array_bytes,
        base_array_parts,
        chunk_array_bytes,
        family_base_bytes,
        family_extra_bytes,
        family_shares,
        layer_cache_bytes,
        moe_routed_bytes,
    )
    from unimap.families import Architecture, LayerCache, Moe

    opts = Options(max_seq_len=1000, max_batch_size=2)
    kv = LayerCache("full", token_elements=576, state_elements=0, window=None, head_dim=512,
                    quantizable=True)
    # mlx-lm's cache grows in steps of 256 tokens: 1024 held, 2 rows, bf16
    assert layer_cache_bytes(kv, 1000, 999, opts, 2) == 2 * 1024 * 576 * 2
    q = Options(max_seq_len=1000, max_batch_size=2, kv_bits=4)
    assert layer_cache_bytes(kv, 1000, 999, q, 2) == 2 * 1024 * (576 * 4 // 8 + 2 * 9 * 2)
    ssm = LayerCache("recurrent", 0, state_elements=5000, window=None, head_dim=0,
                     quantizable=False, state_float32=True, state_heads=8)
    assert layer_cache_bytes(ssm, 1000, 999, opts, 2) == 2 * 5000 * 4
    window = LayerCache("sliding", 64, 0, window=128, head_dim=16, quantizable=False)
    # a window of 128 keeps 127 tokens plus a whole chunk, at most the sequence's tokens
    assert layer_cache_bytes(window, 1000, 999, opts, 2) == 2 * 1000 * 64 * 2
    assert layer_cache_bytes(window, 1000, 100, opts, 2) == 2 * (128 - 1 + 100) * 64 * 2
    # a window past the sequence: the first decode step after the prompt grows the cache by a
    # step of 256 (measured: EXAONE 4's 4096-token windows held 2043 + 256 tokens at 2048)
    wide = LayerCache("sliding", 64, 0, window=4096, head_dim=16, quantizable=False)
    assert layer_cache_bytes(wide, 1000, 999, opts, 2) == 2 * (1000 - 1 + 256) * 64 * 2
    assert layer_cache_bytes(wide, 4000, 2048, opts, 2) == 2 * 4096 * 64 * 2  # never past the window
    arch = Architecture(model_type="x", num_layers=2, hidden_size=64, intermediate_size=0,
                        vocab_size=100, num_heads=4, num_kv_heads=1, head_dim=16,
                        layer_kinds=("full", "recurrent"), sliding_window=None,
                        tie_word_embeddings=False, torch_dtype=None, caches=(kv, ssm), module="x",
                        moe=Moe(8, 4, 32, 0, (True, True)))
    assert moe_routed_bytes(arch, 2) == 3 * 4 * 64 * 2
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("hidden", 0.5, (1.5, 0.25, 0.5)))
    assert family_extra_bytes(arch, 512, 1000) == (1.5 * 64 + 0.25 * 4 * 1000) * 4
    # the scores some families keep in float32 when the model computes in half precision
    assert family_extra_bytes(arch, 512, 1000, half=True) == (1.5 * 64 + (0.25 + 0.5) * 4 * 1000) * 4
    # the scale takes its share of the arrays the largest coefficients price
    assert family_shares("x") == (0.5,) * 4 and family_shares("llama") == (1.0,) * 4
    full = chunk_array_bytes(arch, 512, 2, chunk=512, keys=1000)
    assert full == int(512 * (0.5 * base_array_bytes(arch, 2) + moe_routed_bytes(arch, 2)
                              + family_extra_bytes(arch, 512, 1000, half=True)))
    # two shares: of the hidden, query and key/value arrays, and of the MLP arrays
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("hidden", (0.25, 1.5), (0.0, 0.0, 0.0)))
    hidden, query, kv, mlp = base_array_parts(arch, 2)
    assert mlp > 0 and hidden > 0
    assert family_base_bytes(arch, 2) == pytest.approx(0.25 * (hidden + query + kv) + 1.5 * mlp)
    assert chunk_array_bytes(arch, 512, 2, chunk=512, keys=1000) == pytest.approx(int(
        512 * (0.25 * (hidden + query + kv) + 1.5 * mlp + moe_routed_bytes(arch, 2))), abs=1)
    # three shares: of the hidden arrays, of the query and key/value arrays, of the MLP arrays
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("hidden", (0.25, 0.75, 1.5), (0.0, 0.0, 0.0)))
    assert family_shares("x") == (0.25, 0.75, 0.75, 1.5)
    assert family_base_bytes(arch, 2) == pytest.approx(0.25 * hidden + 0.75 * (query + kv) + 1.5 * mlp)
    # four: the keys and values apart from the queries
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("hidden", (0.25, 0.75, 2.0, 1.5), (0.0, 0.0, 0.0)))
    assert family_base_bytes(arch, 2) == pytest.approx(0.25 * hidden + 0.75 * query + 2.0 * kv + 1.5 * mlp)
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("scan", 1.0, (2.0, 3.0, 0.5, 0.25, 1.5, 0.0, 0.0)))
    # one scan block of at most 256 tokens at a time: 8 state heads x block^2, the 5000-element
    # state once and once per block token, spread over the chunk's tokens; the state per token;
    # the hidden width
    def scan(chunk: int, block: int) -> float:
        return (2.0 * 8 * block * block / chunk + 3.0 * 5000 / chunk + 0.5 * 5000 * block / chunk
                + 0.25 * 5000 + 1.5 * 64) * 4
    assert family_extra_bytes(arch, 512, 1000) == scan(512, 256)
    assert family_extra_bytes(arch, 100, 1000) == scan(100, 100)
    assert family_extra_bytes(arch, 1, 1000) == scan(1, 1)  # a decode step
    # an SSD scan's units (mlx-lm's ssm_attn): every block's squares, the state once, the scan's
    # inputs per token (heads x state size, heads x head dim); never a state per token
    ssd = LayerCache("recurrent", 0, state_elements=8 * 16 * 64 + 300, window=None, head_dim=0,
                     quantizable=False, state_float32=True, state_heads=8, state_dims=(16, 64))
    mamba2 = dataclasses.replace(arch, caches=(arch.caches[0], ssd))
    assert mamba2.scan_widths == (8 * 16, 8 * 64)
    monkeypatch.setitem(FAMILY_EXTRA, "x", ("ssd", 1.0, (2.0, 3.0, 0.5, 0.25, 0.75, 1.5, 0.0, 0.0)))
    state = 8 * 16 * 64 + 300

    def by_block(chunk: int, block: int) -> float:
        return (2.0 * 8 * block * block / chunk + 3.0 * state / chunk + 0.5 * 8 * 64 + 0.25 * 8 * 16
                + 0.75 * 8 * block + 1.5 * 64) * 4
    assert family_extra_bytes(mamba2, 2048, 3000) == by_block(2048, 256)
    assert family_extra_bytes(mamba2, 100, 3000) == by_block(100, 100)
    # the chunk in a layer without the state: the hidden width alone
    assert family_extra_bytes(mamba2, 2048, 3000, state=False) == 1.5 * 64 * 4
    # a ChunkedKVCache (llama4): as a KVCache up to its window, then the window and a new step
    chunked = LayerCache("sliding", 64, 0, window=8, head_dim=16, quantizable=False, chunked=True)
    one = Options(max_seq_len=12)
    assert layer_cache_bytes(chunked, 12, 7, one, 2) == (8 + 256) * 64 * 2  # measured: 264 tokens
    assert layer_cache_bytes(chunked, 8, 7, one, 2) == 256 * 64 * 2  # not past its window yet
