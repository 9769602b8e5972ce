"""The estimate against real runs: a few cases of tools/bench_estimate.py, each in a fresh process
(load through unimap, prefill max_seq_len tokens in mlx-lm's chunks, decode). A correctness check
that the plan's peak is never below mx.get_peak_memory(), not a timing check; the full matrix and
its over-prediction figures are in docs/BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bench_estimate as bench
import pytest

STORIES = bench.Case("stories260k", "gguf", 256, 2, None, "split")  # the GGUF model in ../shared
CASES = [
    bench.Case("llama", "bf16", 300, 2),  # batch 2 through the batched loop, a partly used KV step
    bench.Case("gemma3", "bf16", 640, 1),  # sliding-window layers past their window
    bench.Case("qwen3_moe", "f32", 256, 1, None, "split"),  # MoE, half the layers on the CPU stream
    bench.Case("llama", "f32", 512, 1, 8, "cpu"),  # quantized KV cache, the probed machine
    bench.Case("qwen2_vl", "f32", 256, 1, None, "split", 448),  # vision: 1024 patches, one image
    bench.Case("gemma3_vl", "bf16", 256, 1, None, "gpu", 448),  # a fixed-size SigLIP tower
    # mlx-vlm prefills PaliGemma in one pass (2856 tokens with the image's 256), not in 2048-token
    # chunks, and its bfloat16 language model computes in float32 with an image
    bench.Case("paligemma", "bf16", 2600, 1, None, "gpu", 224),
    STORIES,
]
PARAMS = [*CASES[:-1], pytest.param(STORIES, marks=pytest.mark.skipif(
    not bench.GGUF.exists(), reason="../shared/models is not here"))]
IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("bench")
    return {r["name"]: r for r in bench.measure(bench.available(CASES), work, timeout=300)}


@pytest.mark.parametrize("case", PARAMS, ids=IDS)
def test_predicted_peak_covers_the_measured_peak(results: dict[str, dict[str, Any]],
                                                 case: bench.Case) -> None:
    r = results[case.name]
    assert 0 < r["measured"] <= r["predicted"], f"{case.name}: measured {r['measured']} > {r['predicted']}"


@pytest.mark.parametrize("case", PARAMS, ids=IDS)
def test_weights_and_cache_are_priced_exactly(results: dict[str, dict[str, Any]],
                                              case: bench.Case) -> None:
    """The resident weights after loading are the planned bytes (plus the tokenizer's and
    RoPE's few small arrays), and a full-attention cache ends at exactly its planned size."""
    r = results[case.name]
    if case.image:  # mlx-vlm keeps one small array fewer than the checkpoint holds (Gemma 3)
        assert abs(r["weights_measured"] - r["weights_predicted"]) < 64 * 1024
        assert 0 < r["kv_measured"] <= r["kv_predicted"]  # the prompt leaves room for the template
        return
    assert 0 <= r["weights_measured"] - r["weights_predicted"] < 64 * 1024
    if case.model != "gemma3":  # sliding layers are priced at their largest, mid-prefill
        assert r["kv_measured"] == r["kv_predicted"]


def test_the_baseline_prices_what_mistralrs_documents(tmp_path: Path) -> None:
    """The mistral.rs baseline on a hand-checkable case: header weights, max_seq_len of KV per
    layer in the activation dtype, batch x heads x min(seq, 1024)^2 activation elements."""
    from unimap.estimate import Options
    from unimap.inspect import inspect

    path = bench.checkpoint(tmp_path, "llama", "bf16")
    spec = inspect(path)
    config = bench.MODELS["llama"]
    got = bench.mistralrs_bytes(spec, Options(max_seq_len=2048, max_batch_size=2), "bfloat16")
    kv = config["num_hidden_layers"] * 2 * 2 * config["num_key_value_heads"] * 2048 * 64 * 2
    act = 2 * config["num_attention_heads"] * 1024 * 1024 * 2
    assert got == sum(slot.header_bytes for slot in spec.slots) + kv + act
    # 8-bit ISQ gets no credit from a bf16 checkpoint: Q8_0's pack factor is 2 * 32 // 34 = 1
    isq8 = bench.mistralrs_bytes(spec, Options(max_seq_len=2048, max_batch_size=2, isq=8), "bfloat16")
    assert isq8 == got


def test_reprice_plans_a_saved_case_as_the_bench_did(results: dict[str, dict[str, Any]],
                                                     tmp_path: Path) -> None:
    """`--results --reprice` plans a saved case again with this checkout: with the same code and
    fits, the same plan as the run it was saved from. A run held to its plan's memory limit
    (these are: free is False) is refused, since its peak followed the plan."""
    saved = [results[CASES[0].name], results[CASES[1].name]]
    assert all(r["free"] is False for r in saved)
    with pytest.raises(SystemExit, match="held to their plan's memory limit"):
        bench.reprice(saved, tmp_path)
    again = bench.reprice([{**r, "free": True} for r in saved], tmp_path)
    for before, after in zip(saved, again, strict=True):
        for key in ("predicted", "weights_predicted", "kv_predicted", "working_predicted", "measured"):
            assert after[key] == before[key], (before["name"], key)
