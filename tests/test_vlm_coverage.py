"""mlx-vlm's vision-language models against unimap's planner, from configs shaped like published
checkpoints' (tests/tiny_vlm_configs.py): every one whose language model is a planned mlx-lm
family plans with its vision tower, or is refused with a reason that names what its config lacks
(the rows of docs/COVERAGE.md's second table).

The configs are built and read in one child process: importing mlx-vlm's 99 model modules
allocates MLX arrays that would stay in this process and count in the peaks later tests compare
with their plans."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_families import UNBUILDABLE

HERE = Path(__file__).resolve().parent

# What the child reports per module: its language model, and what read_architecture read or why
# it refused; plus the two configs whose language model sits under another key, read again with
# that key renamed.
CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from tiny_vlm_configs import language_model, vlm_config, vlm_modules
from unimap.errors import ModelError
from unimap.families import read_architecture

def read(config, where):
    try:
        arch = read_architecture(config, where)
    except ModelError as exc:
        return {"error": str(exc)}
    v = arch.vision
    return {"error": None, "layers": arch.num_layers, "hidden": arch.hidden_size,
            "module": arch.module, "vision": None if v is None else {
                "kind": v.kind, "num_layers": v.num_layers, "hidden_size": v.hidden_size,
                "num_heads": v.num_heads, "image_size": v.image_size,
                "tokens_per_image": v.tokens_per_image, "merge_size": v.merge_size}}

rows = {}
for m in vlm_modules()[0]:
    text_type, family = language_model(m)
    config = vlm_config(m)
    numbers = sorted({v for v in config["vision_config"].values()
                      if isinstance(v, int) and not isinstance(v, bool)})
    rows[m] = {"text_type": text_type, "family": family, "model_type": config["model_type"],
               "keys": sorted(config), "vision_numbers": numbers, **read(config, f"{m} config")}
renamed = vlm_config("internvl_chat")
renamed["backbone_config"] = renamed.pop("llm_config")
rows["internvl_chat/renamed"] = read(renamed, "config.json")
print(json.dumps(rows))
"""


def _rows() -> dict[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=600, cwd=HERE)
    if done.returncode != 0:
        raise RuntimeError(f"reading mlx-vlm's configs failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


ROWS = _rows()
MODULES = sorted(m for m in ROWS if "/" not in m)
# the modules whose language model runs on an mlx-lm family that plans (docs/COVERAGE.md)
PLANNED = [m for m in MODULES if ROWS[m]["family"] not in (None, *UNBUILDABLE)]
OTHERS = [m for m in MODULES if ROWS[m]["family"] is None]

# Refused though their language model plans: what the config lacks, as the refusal names it.
REFUSED = {
    # FastViTHD, a convolutional tower whose depth and heads are fixed in code, not in the config
    "fastvlm": r"vision_config: none of 'num_hidden_layers', .*; cannot size the vision tower",
    # encoder-free: patches go straight into the language model, no tower sizes to read
    "gemma4_unified": r"vision_config: none of 'hidden_size', .*; cannot size the vision tower",
}


def test_most_vision_language_models_run_on_a_planned_language_model() -> None:
    assert len(MODULES) >= 90 and len(PLANNED) >= 40
    assert set(REFUSED) <= set(PLANNED)


@pytest.mark.parametrize("module", PLANNED)
def test_vision_language_model_plans_with_its_tower(module: str) -> None:
    row = ROWS[module]
    if module in REFUSED:
        assert row["error"] is not None and re.search(REFUSED[module], row["error"])
        return
    assert row["error"] is None, row["error"]
    # the tiny language model (4 layers, 64 wide), run by the mlx-lm module expected
    assert (row["layers"], row["hidden"]) == (4, 64)
    assert row["module"] in ("", row["family"])  # "": a hand reader (LLaVA, Gemma 3, Qwen2-VL)
    v = row["vision"]
    assert v is not None and v["num_layers"] > 0 and v["num_heads"] > 0
    # the tower's sizes come from its own config, not from defaults
    assert {v["num_layers"], v["hidden_size"], v["num_heads"]} <= set(row["vision_numbers"])
    if v["kind"] == "fixed":
        assert v["image_size"] and v["tokens_per_image"] and v["tokens_per_image"] > 0
    else:  # dynamic resolution: tokens follow the image, merge_size patches a side to a token
        assert v["image_size"] is None and v["merge_size"] >= 1


@pytest.mark.parametrize("module", OTHERS)
def test_language_model_mlx_lm_lacks_is_refused_by_name(module: str) -> None:
    row = ROWS[module]
    named = row["text_type"] or row["model_type"]
    assert row["error"] is not None
    assert f"model_type '{named}' is not an architecture" in row["error"]


def test_language_model_under_another_key_is_found_or_named() -> None:
    """InternVL keeps its language model under llm_config, DeepSeek-VL2 under language_config;
    under a key nobody uses it is refused, naming the keys read."""
    for module, key in (("internvl_chat", "llm_config"), ("deepseek_vl_v2", "language_config")):
        row = ROWS[module]
        assert key in row["keys"] and "text_config" not in row["keys"]
        assert row["error"] is None and row["layers"] == 4
    refused = ROWS["internvl_chat/renamed"]["error"]
    assert refused and "no text_config, llm_config or language_config names" in refused
