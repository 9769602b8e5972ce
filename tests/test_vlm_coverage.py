"""mlx-vlm's vision-language models against unimap's planner, from configs shaped like published
checkpoints' (tests/tiny_vlm_configs.py): every one whose language model is a planned mlx-lm
family plans with its vision tower, or is refused with a reason that names what its config lacks
(the rows of docs/COVERAGE.md's second table).

The configs are built and read in one child process: importing mlx-vlm's 99 model modules
allocates MLX arrays that would stay in this process and count in the peaks later tests compare
with their plans."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tiny_families import UNBUILDABLE

from unimap.structure import model_source

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
REFUSED: dict[str, str] = {}
# Towers sized from no common field: FastViTHD (fixed in mlx-vlm's code, priced per pixel) and
# Gemma 4 unified's encoder-free patch embedder (no layers; num_soft_tokens patches an image).
# Towers whose processor resizes every image, up or down, to a fixed token budget (Gemma 4's
# default_output_length), priced at that budget whatever --max-image-length says.
BUDGETED = {"gemma4": 280}
OWN_TOWERS = {"fastvlm": {"kind": "fixed", "num_layers": 0, "image_size": 1024, "tokens_per_image": 256},
              "gemma4_unified": {"kind": "fixed", "num_layers": 0, "image_size": None,
                                 "tokens_per_image": 280}}


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
    if module in OWN_TOWERS:
        assert v is not None and OWN_TOWERS[module].items() <= v.items()
        return
    assert v is not None and v["num_layers"] > 0 and v["num_heads"] > 0
    # the tower's sizes come from its own config, not from defaults
    assert {v["num_layers"], v["hidden_size"], v["num_heads"]} <= set(row["vision_numbers"])
    if v["kind"] == "fixed" and module in BUDGETED:  # resized to its token budget, any size
        assert v["image_size"] is None and v["tokens_per_image"] == BUDGETED[module]
    elif v["kind"] == "fixed":
        assert v["image_size"] and v["tokens_per_image"] and v["tokens_per_image"] > 0
    else:  # dynamic resolution: tokens follow the image, merge_size patches a side to a token
        assert v["image_size"] is None and v["merge_size"] >= 1


# Language models mlx-lm has no class for that plan from the one mlx-vlm builds (Llama 3.2
# Vision, Mistral Large 3, Phi-4 with SigLIP, dots.ocr, ...), at least these.
OWN_LANGUAGE = {"mllama", "mistral_large3", "phi4_siglip", "dots_ocr", "moondream2"}


def test_a_port_of_an_mlx_lm_module_is_priced_as_that_family() -> None:
    """Mistral Large 3's language model is mlx-vlm's deepseek_v3 package, a port of mlx-lm's
    deepseek_v3: it takes that family's fit (MLA's score arrays; priced as no family's, a run of
    8,000 tokens held 1.13 times its plan). Youtu-VL's is its own, on mlx-vlm's MLA helpers:
    DeepSeek V3's too. Another language model mlx-lm has no module for keeps mlx-vlm's name, and
    the largest coefficients."""
    assert ROWS["mistral_large3"]["module"] == "deepseek_v3"
    assert ROWS["youtu_vl"]["module"] == "deepseek_v3"
    assert ROWS["mllama"]["module"] == "mllama.language"
    assert ROWS["dots_ocr"]["module"] == "llava_bunny.language"


@pytest.mark.parametrize("module", OTHERS)
def test_language_model_mlx_lm_lacks_is_read_from_mlx_vlm_or_refused_by_name(module: str) -> None:
    """mlx-lm has no class for these language models: each plans from the language model
    mlx-vlm builds (its layers, caches and widths read as mlx-lm's are), or is refused naming
    the type mlx-lm lacks and why mlx-vlm's model could not be read, or its tower."""
    row = ROWS[module]
    named = row["text_type"] or row["model_type"]
    if row["error"] is None:
        # mlx-vlm's package and module, or the mlx-lm module mlx-vlm's language model ports
        # (whose fits price it: Mistral Large 3's is mlx-vlm's deepseek_v3)
        assert "." in row["module"] or model_source(row["module"]), row
        assert row["layers"] > 0 and row["vision"] is not None, row
    elif "vision_config" not in row["error"]:  # the language model read, the tower not
        assert f"model_type '{named}' is not an architecture" in row["error"]
        assert "mlx-vlm" in row["error"], row["error"]
    assert module not in OWN_LANGUAGE or row["error"] is None, row["error"]


def test_language_model_under_another_key_is_found_or_named() -> None:
    """InternVL keeps its language model under llm_config, DeepSeek-VL2 under language_config;
    under a key nobody uses it is refused, naming the keys read."""
    for module, key in (("internvl_chat", "llm_config"), ("deepseek_vl_v2", "language_config")):
        row = ROWS[module]
        assert key in row["keys"] and "text_config" not in row["keys"]
        assert row["error"] is None and row["layers"] == 4
    refused = ROWS["internvl_chat/renamed"]["error"]
    assert refused and "no text_config, llm_config or language_config names" in refused


# mlx-vlm's own chunked-prefill decision for each planned model, built lazily from its config
# (nothing evaluated), for a prompt without and with an image token: whether it would prefill in
# chunks. Gemma 4 also with the field its published checkpoints set (image tokens attend both ways).
POLICY_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import mlx.core as mx
from mlx_vlm.generate.common import _chunked_prefill_enabled
from mlx_vlm.utils import get_model_and_args, update_module_configs
from tiny_vlm_configs import vlm_config
from unimap.families import read_architecture

def chunked(model, config, image):
    token = next((config[k] for k in ("image_token_index", "image_token_id")
                  if isinstance(config.get(k), int)), 5)
    ids = mx.array([[5, token if image else 6, 7, 8]])
    types = mx.array([[0, 1 if image else 0, 0, 0]])
    return bool(_chunked_prefill_enabled(model, input_ids=ids, prefill_kwargs={
        "token_type_ids": types, "mm_token_type_ids": types}))

rows = {}
for name in sys.argv[1:]:
    module, _, variant = name.partition("/")
    config = vlm_config(module)
    if variant:
        config["text_config"]["use_bidirectional_attention"] = variant
    v = read_architecture(config, name).vision
    row = {"one_pass": v.one_pass, "all_logits": v.all_logits}
    try:
        built = json.loads(json.dumps(config))
        model_class, _ = get_model_and_args(built)
        built.setdefault("text_config", {})
        model = model_class.Model(update_module_configs(
            model_class.ModelConfig.from_dict(built), model_class, built, ["text", "vision", "projector"]))
        row["chunked"] = [chunked(model, config, False), chunked(model, config, True)]
    except Exception as exc:  # a config shaped for reading that mlx-vlm's classes cannot build
        row["chunked"] = f"{type(exc).__name__}: {exc}"
    rows[name] = row
print(json.dumps(rows))
"""


def test_one_pass_prefill_is_what_mlx_vlm_decides() -> None:
    """The plan prices a prompt in one pass exactly where mlx-vlm's own policy turns chunked
    prefill off (PaliGemma always; Gemma 4 for prompts with images when its text attends both
    ways over them); the models mlx-vlm's classes cannot build from these configs have no
    switch in their code that unimap does not know."""
    from unimap.families import ONE_PASS_POLICIES
    from unimap.structure import vlm_source

    names = [m for m in PLANNED if m not in REFUSED] + ["gemma4/vision"]
    done = subprocess.run([sys.executable, "-c", POLICY_CHILD, *names], capture_output=True,
                          text=True, timeout=600, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"": [True, True], "images": [True, False], "always": [False, False]}
    built = {name: row for name, row in rows.items() if isinstance(row["chunked"], list)}
    assert len(built) >= 25 and {"paligemma", "gemma4", "gemma4/vision"} <= set(built)
    for name, row in built.items():
        assert row["chunked"] == expected[row["one_pass"]], (name, row)
    assert rows["paligemma"]["one_pass"] == "always" and rows["paligemma"]["all_logits"]
    assert rows["gemma4/vision"]["one_pass"] == "images" and not rows["gemma4/vision"]["all_logits"]
    for name in set(rows) - set(built):
        source = vlm_source(name)
        assert source and "no_chunked_prefill" not in source and name not in ONE_PASS_POLICIES, name


# The caches the language model mlx-vlm builds for each planned config fills in an evaluated
# forward of 3 and of 5 tokens (random weights, float32): elements one token adds and elements
# held whatever the length, against the plan's caches (the hand-read families, whose caches the
# plan prices from the config, have none: tests/test_vlm_runs.py checks them in runs).
KV_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import mlx.core as mx
from mlx_vlm.models.cache import make_prompt_cache
from mlx_vlm.utils import get_model_and_args, update_module_configs
from tiny_vlm_configs import vlm_config
from unimap.families import read_architecture

def elements(state):
    if isinstance(state, mx.array):
        return state.size
    return sum(elements(s) for s in state) if isinstance(state, list | tuple) else 0

rows = {}
for module in sys.argv[1:]:
    config = vlm_config(module)
    arch = read_architecture(config, module)
    if not arch.caches:
        continue
    built = json.loads(json.dumps(config))
    model_class, _ = get_model_and_args(built)
    built.setdefault("text_config", built.pop("llm_config", {}))
    language = model_class.Model(update_module_configs(
        model_class.ModelConfig.from_dict(built), model_class, built,
        ["text", "vision", "perceiver", "projector", "audio"])).language_model
    held = []
    for tokens in (3, 5):
        cache = make_prompt_cache(language)
        mx.eval(language(mx.arange(tokens, dtype=mx.int32)[None] + 1, cache=cache))
        held.append(sum(elements(c.state) for c in cache))
    per_token = (held[1] - held[0]) // 2
    rows[module] = {"run": [per_token, held[0] - 3 * per_token],
                    "plan": [sum(c.token_elements for c in arch.caches),
                             sum(c.state_elements for c in arch.caches)]}
print(json.dumps(rows))
"""


def test_the_plans_caches_are_those_mlx_vlms_language_model_fills() -> None:
    """mlx-vlm runs its own language model classes, whose caches may not be mlx-lm's (Kimi-VL's
    keeps full keys and values where mlx-lm's keeps DeepSeek V3's latent; Granite 4 Vision's
    attends in every layer; MiniMax-M3-VL's keeps indexer keys): every planned model's caches,
    per token and fixed, are what that language model fills."""
    names = [m for m in MODULES if ROWS[m]["error"] is None]
    done = subprocess.run([sys.executable, "-c", KV_CHILD, *names], capture_output=True,
                          text=True, timeout=600, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) >= 45 and {"kimi_vl", "granite4_vision", "minimax_m3_vl", *OWN_LANGUAGE} <= set(rows)
    for module, row in rows.items():
        assert row["run"] == row["plan"], (module, row)


def test_a_config_mlx_vlm_cannot_build_is_refused_naming_mlx_vlm() -> None:
    """A text-only Hadamard pack (schema 1, which mlx-lm runs) under a vision tower: mlx-vlm,
    which would load it, refuses it; so does the plan, with mlx-vlm's reason."""
    from tiny_vlm_configs import vlm_config

    from unimap.errors import ModelError
    from unimap.families import read_architecture

    config = json.loads(json.dumps(vlm_config("prism_hadamard_qwen35")))
    config.update(schema_version=1, tensor_namespace="mlx-lm-text")
    with pytest.raises(ModelError, match="mlx-vlm cannot build this model from its config "
                                         r"\(ValueError: Only schema 2"):
        read_architecture(config, "pack")


def test_language_models_that_disagree_on_their_layers_are_refused() -> None:
    """Muse Glimmer's language model without its text_config: mlx-lm reads 4 layers from the top
    level, mlx-vlm its real model's 52 from its defaults; the plan says so instead of guessing."""
    from tiny_vlm_configs import vlm_config

    from unimap.errors import ModelError
    from unimap.families import read_architecture

    config = json.loads(json.dumps(vlm_config("muse_glimmer")))
    del config["text_config"]
    with pytest.raises(ModelError, match="mlx-vlm's language model has 52 decoder layers and "
                                         "mlx-lm's 4"):
        read_architecture(config, "glimmer")


# The two towers no common field sizes, run by mlx-vlm as it runs them (bfloat16 weights,
# float32 pixels) against what the plan prices for them: FastViTHD at a 256-pixel image_size
# (4 times fewer pixels than the checkpoints' 1024, the tower's widths as they ship), and Gemma 4
# unified's embedder at its checkpoints' sizes.
TOWER_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_vlm.utils import get_model_and_args, update_module_configs
from tiny_vlm_configs import vlm_config
from unimap.estimate import Options, vision_activation_terms
from unimap.families import read_architecture

rows = {}
for module in ("fastvlm", "gemma4_unified"):
    config = vlm_config(module)
    if module == "fastvlm":
        config["vision_config"]["image_size"] = 256
    arch = read_architecture(config, module)
    built = json.loads(json.dumps(config))
    model_class, _ = get_model_and_args(built)
    model = model_class.Model(update_module_configs(
        model_class.ModelConfig.from_dict(built), model_class, built, ["text", "vision", "projector"]))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    tower = model.vision_tower if module == "fastvlm" else model.vision_embedder
    largest = max(v.size for _, v in tree_flatten(tower.parameters())) * 4
    if module == "fastvlm":
        pixels = mx.random.uniform(shape=(1, 3, 256, 256))
        ids = mx.array([[5, model.config.image_token_index, 6]])
        mx.eval(pixels, ids)
        run = lambda: model.get_input_embeddings(ids, pixels, mask=mx.ones_like(ids)).inputs_embeds
    else:
        v = model.config.vision_config
        pixels = mx.random.uniform(shape=(1, v.num_soft_tokens, v.model_patch_size ** 2 * 3))
        side = int(v.num_soft_tokens ** 0.5) + 1
        positions = mx.array([[[i % side, i // side] for i in range(v.num_soft_tokens)]], dtype=mx.int32)
        mx.eval(pixels, positions)
        run = lambda: model.get_image_features(pixels, positions)
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(run())
    working = mx.get_peak_memory() - base
    terms = vision_activation_terms(arch, Options(max_num_images=1), 2, None, largest)
    rows[module] = {"working": working, "priced": terms["vision/encoder"] + terms["vision/float32-weights"]}
print(json.dumps(rows))
"""


def test_towers_of_their_own_are_priced_above_their_peak() -> None:
    done = subprocess.run([sys.executable, "-c", TOWER_CHILD], capture_output=True, text=True,
                          timeout=600, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    for module, row in rows.items():
        assert 0 < row["working"] <= row["priced"] <= 2 * row["working"], (module, row)


@pytest.mark.parametrize(("module", "section", "field", "value", "named"), [
    ("gemma4_unified", "vision_config", "num_soft_tokens", "many", "num_soft_tokens"),
    ("gemma4_unified", "vision_config", "model_patch_size", 0, "model_patch_size"),
    ("fastvlm", "vision_config", "image_size", 32, "image_size"),
    ("fastvlm", "vision_config", "image_size", "large", "image_size"),
])
def test_towers_of_their_own_refuse_bad_fields_by_name(module: str, section: str, field: str,
                                                       value: Any, named: str) -> None:
    from tiny_vlm_configs import vlm_config

    from unimap.errors import ModelError
    from unimap.families import read_architecture

    config = vlm_config(module)
    config[section][field] = value
    with pytest.raises(ModelError, match=named):
        read_architecture(config, "config.json")


# ---------------------------------------------------------------- images the processor sizes


def _arch_with_processor(module: str, processor: dict[str, Any] | None, tmp_path: Path) -> Any:
    """The architecture inspect reads for `module`'s config with `processor` as its
    preprocessor_config.json (none when None), through the same reading inspect does."""
    from tiny_vlm_configs import vlm_config

    from unimap.families import read_architecture
    from unimap.inspect import with_processor

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(vlm_config(module)))
    if processor is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    config = with_processor(json.loads((tmp_path / "config.json").read_text()), tmp_path)
    return read_architecture(config, module)


@pytest.mark.parametrize("module", ["idefics3", "smolvlm"])
@pytest.mark.parametrize("published", [True, False])
def test_tiles_cover_what_the_processor_cuts_whatever_the_image(module: str, published: bool,
                                                                tmp_path: Path) -> None:
    """Idefics 3 and SmolVLM resize every image to the processor's longest edge, up or down,
    then cut it into tiles of the tower's size plus the whole image: a 64-px image takes as many
    tiles as a photo. The plan counts them from preprocessor_config.json (the processor's class
    defaults, 4 tiles a side, without one), never fewer than transformers' own processor cuts."""
    import numpy as np
    from PIL import Image
    from transformers import Idefics3ImageProcessorPil, SmolVLMImageProcessorPil

    from unimap.estimate import Options, image_tiles

    tile = 224
    settings = {"size": {"longest_edge": 3 * tile}, "max_image_size": {"longest_edge": tile}}
    arch = _arch_with_processor(module, {"image_processor_type": "x", **settings} if published
                                else None, tmp_path)
    cls = Idefics3ImageProcessorPil if module == "idefics3" else SmolVLMImageProcessorPil
    processor = cls(**(settings if published else {"max_image_size": {"longest_edge": tile},
                                                   "size": {"longest_edge": 4 * tile}}))
    assert arch.vision is not None
    for width, height in ((64, 48), (48, 64), (1024, 1024), (3000, 500), (224, 224)):
        image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
        cut = processor(images=[image], return_tensors="np")["pixel_values"].shape[1]
        planned = image_tiles(arch.vision, Options(max_num_images=1, max_image_length=max(width, height)))
        assert planned >= cut, (module, width, height, planned, cut)
    assert planned == (3 if published else 4) ** 2 + 1  # the square worst case, exactly


def test_a_processor_that_does_not_split_takes_one_tile(tmp_path: Path) -> None:
    from unimap.estimate import Options, image_tiles

    arch = _arch_with_processor("idefics3", {"do_image_splitting": False}, tmp_path)
    assert arch.vision is not None
    assert image_tiles(arch.vision, Options(max_num_images=1, max_image_length=4096)) == 1


def test_gemma_4_takes_its_processors_token_budget(tmp_path: Path) -> None:
    from unimap.estimate import IMAGE_MARKERS, Options, _image_tokens

    for processor, tokens in ((None, 280), ({"max_soft_tokens": 560}, 560)):
        arch = _arch_with_processor("gemma4", processor, tmp_path)
        for length in (64, 4096):  # resized to the budget, up or down; and the marks around
            assert _image_tokens(arch, Options(max_num_images=2, max_image_length=length)) == 2 * (
                tokens + IMAGE_MARKERS)


@pytest.mark.parametrize("module,processor,named", [
    ("idefics3", {"size": {"longest_edge": "big"}}, "an image edge of 'big'"),
    ("idefics3", {"size": {"longest_edge": -4}}, "an image edge of -4"),
    ("idefics3", {"max_image_size": {"longest_edge": 10 ** 9}}, "an image edge of 1000000000"),
    ("idefics3", {"do_image_splitting": "no"}, "do_image_splitting is 'no', not true or false"),
    ("idefics3", [1, 2], "expected a JSON object"),
    ("gemma4", {"max_soft_tokens": 0}, "max_soft_tokens 0 is not a number of image tokens"),
    ("gemma4", {"max_soft_tokens": 10 ** 12}, "max_soft_tokens 1000000000000 is not"),
    ("gemma4", {"max_soft_tokens": "280"}, "max_soft_tokens '280' is not"),
    ("granite4_vision", {"image_grid_pinpoints": [[0, 5]]}, "image_grid_pinpoints should be"),
    ("granite4_vision", {"image_grid_pinpoints": "abc"}, "image_grid_pinpoints should be"),
    ("granite4_vision", {"image_grid_pinpoints": [[384, 768, 2]]}, "image_grid_pinpoints should be"),
    ("nemotron_h_nano_omni", {"min_num_patches": "many"}, "min_num_patches 'many' is not a patch count"),
    ("nemotron_h_nano_omni", {"max_num_patches": -1}, "max_num_patches -1 is not a patch count"),
    ("pixtral", {"size": {"longest_edge": -3}}, "an image edge of -3"),
    ("internvl_chat", {"dynamic_max_num": 10 ** 6}, "dynamic_max_num 1000000 is not a number of tiles"),
])
def test_a_bad_processor_config_is_refused_naming_it(module: str, processor: Any, named: str,
                                                     tmp_path: Path) -> None:
    """Each refused naming the file and the field, never silently read past."""
    from unimap.errors import ModelError

    with pytest.raises(ModelError, match=re.escape(named)) as refused:
        _arch_with_processor(module, processor, tmp_path)
    assert "preprocessor_config.json" in str(refused.value)


def test_bad_anyres_grids_in_config_json_are_refused(tmp_path: Path) -> None:
    from tiny_vlm_configs import vlm_config

    from unimap.errors import ModelError
    from unimap.families import read_architecture

    config = {**vlm_config("llava_next"), "image_grid_pinpoints": [[336, "672"]]}
    with pytest.raises(ModelError, match=r"config.json: image_grid_pinpoints should be"):
        read_architecture(config, "config.json")


def test_anyres_grids_from_the_processor_count_a_tile_for_any_image(tmp_path: Path) -> None:
    """LLaVA-NeXT's processor fits even a tiny image to its smallest grid beside the base image;
    the grids come from config.json or, where only the processor lists them, its
    preprocessor_config.json. Without grids, one tile."""
    from unimap.estimate import Options, image_tiles

    small = Options(max_num_images=1, max_image_length=64)
    plain = _arch_with_processor("granite4_vision", None, tmp_path / "a")
    size = plain.vision.image_size
    assert image_tiles(plain.vision, small) == 1
    grids = {"image_grid_pinpoints": [[size, 2 * size], [2 * size, 2 * size]]}
    arch = _arch_with_processor("granite4_vision", grids, tmp_path / "b")
    assert image_tiles(arch.vision, small) == 1 + 2  # the base image and the 1 x 2 grid


def test_lfm2_vl_rows_are_padded_and_cut_as_its_processor_does(tmp_path: Path) -> None:
    """LFM2-VL's processor (mlx-vlm's) pads every row to the same patch count: the plan prices
    that many patches for any image, one row up to its pixel threshold and the most tiles with a
    thumbnail past it; the processor's own settings move both."""
    from unimap.estimate import IMAGE_MARKERS, Options, _image_patches, _image_tokens, image_tiles

    arch = _arch_with_processor("lfm2_vl", None, tmp_path / "a")
    v = arch.vision
    assert v is not None and v.patches_per_image == 256 * 2 * 2  # max_image_tokens x 2^2
    threshold = 2 * 256 * (v.patch_size * 2) ** 2  # tolerance x tokens x (patch x factor)^2
    small, large = int(threshold ** 0.5), int(threshold ** 0.5) + 1
    assert image_tiles(v, Options(max_image_length=small)) == 1
    assert image_tiles(v, Options(max_image_length=large)) == 10 + 1
    options = Options(max_num_images=1, max_image_length=64)
    assert _image_patches(arch, options) == 1024 and _image_tokens(arch, options) == 256 + 2 + IMAGE_MARKERS
    fewer = _arch_with_processor("lfm2_vl", {"max_image_tokens": 64, "max_tiles": 4}, tmp_path / "b")
    assert fewer.vision is not None
    assert fewer.vision.patches_per_image == max(64 * 4, (512 // v.patch_size) ** 2)
    assert image_tiles(fewer.vision, Options(max_image_length=4096)) == 10 + 1  # mlx-vlm's 10
    from unimap.errors import ModelError

    with pytest.raises(ModelError, match=r"preprocessor_config.json: tile_size 'big' is not"):
        _arch_with_processor("lfm2_vl", {"tile_size": "big"}, tmp_path / "c")


def test_minimax_m3_vl_keeps_an_images_resolution_up_to_its_processors_cap(tmp_path: Path) -> None:
    """MiniMax-M3-VL's config names a 2016-px image_size, but its processor (mlx-vlm's) keeps an
    image's own resolution in merged patches up to max_pixels (672 x 672 by default, or the
    file's max_pixels, or its size's height x width): planned so, not as 2016-px tiles."""
    from unimap.errors import ModelError
    from unimap.estimate import Options, _image_patches

    def patches(processor: dict[str, Any] | None, length: int, name: str) -> int:
        arch = _arch_with_processor("minimax_m3_vl", processor, tmp_path / name)
        return _image_patches(arch, Options(max_num_images=1, max_image_length=length))

    assert patches(None, 64, "a") == (84 // 14) ** 2  # rounded up to merged patches
    assert patches(None, 4096, "b") == 672 * 672 // 14 ** 2
    assert patches({"max_pixels": 1024 * 1024}, 4096, "c") == 1024 * 1024 // 14 ** 2
    assert patches({"size": {"height": 2016, "width": 2016}}, 1024, "d") == (1036 // 14) ** 2
    with pytest.raises(ModelError, match=r"max_pixels \(or size\) 'many' is not a pixel count"):
        patches({"max_pixels": "many"}, 64, "e")
    with pytest.raises(ModelError, match=r"max_pixels \(or size\) \"'x' x 5\" is not a pixel count"):
        patches({"size": {"height": "x", "width": 5}}, 64, "f")


@pytest.mark.parametrize("module", ["pixtral", "mistral3"])
def test_pixtral_keeps_an_images_size_and_breaks_its_rows(module: str, tmp_path: Path) -> None:
    """Pixtral's processor (Mistral 3's too) resizes an image down to its longest edge, never up
    and never into tiles, and ends each row of (merged) patches with a break token. The plan
    counts patches and tokens so, never fewer than transformers' processor makes, from the
    processor's edge (else the tower's image_size); Mistral 3 merges 2 x 2 patches outside its
    tower (spatial_merge_size at the top of config.json)."""
    import numpy as np
    from PIL import Image
    from transformers import PixtralImageProcessorPil

    from unimap.estimate import IMAGE_MARKERS, Options, _image_patches, _image_tokens, image_tiles

    arch = _arch_with_processor(module, {"size": {"longest_edge": 448}}, tmp_path)
    v = arch.vision
    assert v is not None and v.keeps_size and v.joint_attention and v.image_size == 448
    merge = 2 if module == "mistral3" else 1
    assert v.merge_size == merge
    processor = PixtralImageProcessorPil(size={"longest_edge": 448},
                                         patch_size={"height": v.patch_size * merge,
                                                     "width": v.patch_size * merge})
    for width, height in ((64, 48), (48, 64), (448, 448), (3000, 500), (1024, 1024), (300, 200)):
        image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
        pixels = processor(images=[image], return_tensors="np")["pixel_values"]
        rows, cols = (side // (v.patch_size * merge) for side in pixels.shape[-2:])
        options = Options(max_num_images=1, max_image_length=max(width, height))
        assert image_tiles(v, options) == 1
        assert _image_patches(arch, options) >= rows * cols * merge * merge
        assert _image_tokens(arch, options) >= rows * (cols + 1), (width, height)
    side = 448 // (v.patch_size * merge)  # the square worst case, exactly, and the marks
    assert _image_tokens(arch, Options(max_num_images=2, max_image_length=4096)) == 2 * (
        side * (side + 1) + IMAGE_MARKERS)


def test_joint_attention_is_read_from_the_towers_code() -> None:
    """Pixtral's and MoonViT's towers attend over every image's patches at once under a block
    mask (mlx-vlm's code builds it), Qwen2-VL's within each image: the plan prices the scores of
    the first over all patches together, so more images cost the square."""
    from tiny_vlm_configs import vlm_config

    from unimap.estimate import Options, vision_activation_terms
    from unimap.families import read_architecture

    joint = {m: read_architecture(vlm_config(m), m).vision.joint_attention  # type: ignore[union-attr]
             for m in ("pixtral", "mistral3", "kimi_vl", "qwen2_vl", "gemma3", "kimi_k25")}
    assert joint == {"pixtral": True, "mistral3": True, "kimi_vl": True, "qwen2_vl": False,
                     "gemma3": False, "kimi_k25": False}
    arch = read_architecture(vlm_config("pixtral"), "pixtral")
    assert arch.vision is not None
    apart = replace(arch, vision=replace(arch.vision, joint_attention=False))

    def more(images: int) -> int:  # what attending jointly adds
        def encoder(a: Any) -> int:
            terms = vision_activation_terms(a, Options(max_num_images=images, max_image_length=512), 2)
            return terms["vision/encoder"] + terms.get("vision/block-mask", 0)
        return encoder(arch) - encoder(apart)

    # one image: the mask alone (float32, and its bfloat16 copy); four: 16 masks, and the
    # scores of 16 image pairs where 4 were priced
    v = arch.vision
    patches = (min(512, v.image_size or 0) // v.patch_size) ** 2  # the tower's image_size: 336
    assert more(1) == (4 + 2) * patches ** 2
    assert more(4) > 16 * more(1)


@pytest.mark.parametrize("module", ["aya_vision", "internvl"])
def test_aspect_tiles_cover_what_the_processor_cuts_for_any_image(module: str, tmp_path: Path) -> None:
    """Aya Vision's and InternVL's processors (transformers' GotOcr2 cropping) pick a grid of
    tiles by an image's aspect ratio, up to max_patches, scaling even a small image up to fill
    it, and add a thumbnail: a 64 x 48 image takes 4 x 3 tiles and one more. The plan counts
    the most for any image, from preprocessor_config.json's max_patches (12 without one); each
    tile's tokens are its patches pixel-shuffled (Aya Vision's downsample_factor 2, InternVL's
    downsample_ratio 0.5)."""
    import numpy as np
    from PIL import Image
    from transformers import GotOcr2ImageProcessorPil

    from unimap.estimate import IMAGE_MARKERS, TILE_MARKERS, Options, _image_tokens, image_tiles

    for most in (None, 6):
        arch = _arch_with_processor(module, {"max_patches": most} if most else None, tmp_path / str(most))
        v = arch.vision
        assert v is not None and v.image_size is not None
        processor = GotOcr2ImageProcessorPil(size={"height": v.image_size, "width": v.image_size},
                                             crop_to_patches=True, max_patches=most or 12)
        for width, height in ((64, 48), (48, 64), (1024, 1024), (3000, 500), (224, 224), (900, 300)):
            image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
            cut = processor(images=[image], return_tensors="np")["pixel_values"].shape[0]
            options = Options(max_num_images=1, max_image_length=max(width, height))
            assert image_tiles(v, options) >= cut, (module, most, width, height, cut)
        tiles = (most or 12) + 1
        assert image_tiles(v, Options(max_num_images=1, max_image_length=64)) == tiles
        per_tile = (v.image_size // v.patch_size // 2) ** 2
        assert _image_tokens(arch, Options(max_num_images=2, max_image_length=64)) == 2 * (
            tiles * (per_tile + TILE_MARKERS) + IMAGE_MARKERS)
    from unimap.errors import ModelError

    with pytest.raises(ModelError, match=r"preprocessor_config.json: max_patches 0 is not a number of tiles"):
        _arch_with_processor(module, {"max_patches": 0}, tmp_path / "bad")


def test_radio_scales_a_small_image_up_to_its_least_patches(tmp_path: Path) -> None:
    """Nemotron Nano Omni's processor (mlx-vlm's) sizes an image to its own patches, at most
    max_num_patches and at least min_num_patches, scaling a small image up: the plan prices
    at least that many, never fewer than the processor makes for any image within the plan."""
    from mlx_vlm.models.nemotron_h_nano_omni.image_processing_nemotron_h_nano_omni import (
        NemotronHNanoOmniImageProcessor,
    )
    from PIL import Image

    from unimap.estimate import Options, _image_patches

    settings = {"min_num_patches": 256, "max_num_patches": 2048}
    arch = _arch_with_processor("nemotron_h_nano_omni", {"patch_size": 16, **settings}, tmp_path)
    v = arch.vision
    assert v is not None and v.min_patches == 256 and v.patches_per_image == 2048
    processor = NemotronHNanoOmniImageProcessor(patch_size=16, **settings)
    for width, height in ((64, 48), (48, 64), (1000, 16), (16, 300), (512, 512), (1024, 700), (4000, 3000)):
        wide, high = processor._compute_target_patches(Image.new("RGB", (width, height)), 2048)
        planned = _image_patches(arch, Options(max_num_images=1, max_image_length=max(width, height)))
        assert planned >= wide * high, (width, height, planned, wide * high)
    assert _image_patches(arch, Options(max_num_images=1, max_image_length=4096)) == 2048


def test_a_projector_wider_than_the_tower_is_priced_on_the_rows_it_takes() -> None:
    """Aya Vision's projector is a SwiGLU 28,672 wide on the pixel-shuffled patches (4 tower
    rows in one): read from the checkpoint's headers (its widest matrix, not a decoder layer's),
    priced on a quarter of the patches, three copies of its widest output. A tower fitted with
    its projector (Qwen2-VL's) adds nothing. (tests/test_vlm_runs.py runs Aya Vision's tiny
    twin with an image: 2.02 times its plan before this was priced.)"""
    from tiny_vlm_configs import vlm_config

    from unimap.estimate import PROJECTOR_COPIES, Options, vision_activation_terms
    from unimap.families import read_architecture
    from unimap.headers import TensorHeader
    from unimap.inspect import projector_shape

    arch = read_architecture(vlm_config("aya_vision"), "aya")
    v = arch.vision
    assert v is not None
    shapes = {"multi_modal_projector.linear_1.weight": (28672, 4 * v.hidden_size),
              "multi_modal_projector.linear_2.weight": (64, 14336),
              "language_model.model.layers.0.mlp.merger.weight": (99999, 8),  # a decoder layer's
              "vision_tower.encoder.layers.0.mlp.fc1.weight": (4304, 1152)}  # the tower's
    headers = [TensorHeader(name, "BF16", shape, 0, 0) for name, shape in shapes.items()]
    wide, into = projector_shape(headers)
    assert (wide, into) == (28672, 4 * v.hidden_size)
    priced = replace(arch, vision=replace(v, projector_width=wide, projector_input=into))
    options = Options(max_num_images=1, max_image_length=64)
    patches = 13 * (v.image_size // v.patch_size) ** 2  # 12 tiles and a thumbnail
    terms = vision_activation_terms(priced, options, 2)
    assert terms["vision/projector"] == PROJECTOR_COPIES * (patches // 4) * 28672 * 2
    assert "vision/projector" not in vision_activation_terms(arch, options, 2)  # none read
    qwen = read_architecture(vlm_config("qwen2_5_vl"), "qwen")
    assert qwen.vision is not None
    fitted = replace(qwen, vision=replace(qwen.vision, projector_width=99999, projector_input=8))
    assert "vision/projector" not in vision_activation_terms(fitted, options, 2)


def test_the_models_mlx_vlm_takes_one_image_for_are_read_from_it() -> None:
    """mlx-vlm refuses a second image for some models (LLaVA-NeXT, PaliGemma, ...): read from
    its prompt_utils.py, so that a plan for more says so before loading (tests/test_vlm_runs.py
    plans LLaVA-NeXT for 6 images)."""
    from tiny_vlm_configs import vlm_config

    from unimap.families import read_architecture, single_image_models

    assert {"llava_next", "paligemma", "multi_modality"} <= single_image_models()
    assert read_architecture(vlm_config("llava_next"), "x").vision.single_image  # type: ignore[union-attr]
    assert not read_architecture(vlm_config("qwen2_vl"), "x").vision.single_image  # type: ignore[union-attr]


# every preprocessor_config.json field a plan reads, and the families whose reading takes it
PROCESSOR_FIELDS = ("size", "max_image_size", "do_image_splitting", "max_soft_tokens", "max_patches",
                    "dynamic_max_num", "min_num_patches", "max_num_patches", "max_pixels", "merge_size",
                    "temporal_patch_size", "image_grid_pinpoints", "encoder_patch_size",
                    "max_image_tokens", "downsample_factor", "tile_size", "max_tiles",
                    "max_pixels_tolerance")
ODD_VALUES = (None, True, -1, 0, 10 ** 12, "x", [], {}, 1.5, [[0, 1]], {"longest_edge": "x"},
              {"height": None, "width": 3}, {"longest_edge": 10 ** 9})


@pytest.mark.parametrize("module", ["aya_vision", "internvl_chat", "pixtral", "mistral3", "idefics3",
                                    "nemotron_h_nano_omni", "lfm2_vl", "gemma4", "minimax_m3_vl",
                                    "granite4_vision", "idefics2", "kimi_vl"])
def test_any_processor_setting_plans_or_is_refused_by_name(module: str) -> None:
    """Every field the plan reads from preprocessor_config.json, set to values no processor has
    (absent, a bool, negative, zero, huge, a string, a list, a dict, a fraction, nested nonsense):
    the tower plans (its tokens, patches and working set whole non-negative numbers) or the
    reading stops with a ModelError that names preprocessor_config.json, never another error."""
    from tiny_vlm_configs import vlm_config

    from unimap.errors import ModelError
    from unimap.estimate import Options, _image_patches, _image_tokens, vision_activation_terms
    from unimap.families import read_architecture

    config = vlm_config(module)
    options = Options(max_num_images=2, max_image_length=1024)
    refused = 0
    for key in PROCESSOR_FIELDS:
        for value in ODD_VALUES:
            processor = {} if value is None else {key: value}
            try:
                arch = read_architecture({**config, "preprocessor_config": processor},
                                         "m/config.json")
            except ModelError as exc:
                assert "preprocessor_config.json" in str(exc), (key, value, str(exc))
                refused += 1
                continue
            terms = vision_activation_terms(arch, options, 2)
            numbers = [_image_tokens(arch, options), _image_patches(arch, options), *terms.values()]
            assert all(isinstance(n, int) and n >= 0 for n in numbers), (key, value, numbers)
    assert refused > 0  # each family reads some of these fields


@pytest.mark.parametrize("grids", [[[384, 384], [2304, 2304]],  # the tiny config's first and last
                                   [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                                   [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]])
def test_anyres_tiles_cover_the_grid_the_processor_picks(grids: list[list[int]]) -> None:
    """An anyres processor takes the smallest grid that holds the image whole, scaling the image
    up to it (LLaVA-OneVision's 2304-px grid, 36 tiles, for a 1024-px image where no smaller grid
    holds it: the tower ran 3.7 times the tiles planned, 1.6 times the plan unheld), else the grid
    that keeps most of it. The plan's tiles are never fewer than the grid transformers' own
    select_best_resolution picks for any image within --max-image-length, plus the base image."""
    from tiny_vlm_configs import vlm_config
    from transformers.image_processing_utils import select_best_resolution

    from unimap.estimate import Options, image_tiles
    from unimap.families import read_architecture

    arch = read_architecture({**vlm_config("llava_onevision"), "image_grid_pinpoints": grids}, "x")
    v = arch.vision
    assert v is not None and v.image_size is not None and v.grids
    size = v.image_size
    for length in (64, 300, 384, 700, 1024, 2000, 4096):
        planned = image_tiles(v, Options(max_num_images=1, max_image_length=length))
        for height, width in ((length, length), (length, length // 3 or 1), (length // 2 or 1, length)):
            h, w = select_best_resolution((height, width), [tuple(g) for g in grids])
            assert planned >= 1 + -(-h // size) * -(-w // size), (length, height, width, (h, w))


def test_llava_onevision_pools_a_large_grid_to_its_anyres_max(tmp_path: Path) -> None:
    """LLaVA-OneVision's tower sees every tile of the grid, but its features are pooled to
    vision_aspect_ratio's anyres_max_9 tiles (and the base image): the tower priced for all,
    the image tokens for at most 10 tiles."""
    from unimap.estimate import IMAGE_MARKERS, TILE_MARKERS, Options, _image_tokens, image_tiles

    arch = _arch_with_processor("llava_onevision", {"image_grid_pinpoints": [[384, 384], [2304, 2304]]},
                                tmp_path)
    v = arch.vision
    assert v is not None and v.pooled_tiles == 10 and v.tokens_per_image
    options = Options(max_num_images=1, max_image_length=1024)
    assert image_tiles(v, options) == 1 + 36
    newlines = math.isqrt(v.tokens_per_image) * 10
    assert _image_tokens(arch, options) == 10 * (v.tokens_per_image + TILE_MARKERS) + newlines + IMAGE_MARKERS


def test_features_put_in_place_of_image_tokens_are_counted_as_the_model_makes_them() -> None:
    """mlx-vlm's LLaVA-NeXT and Granite Vision put all of an image's features between the text
    around its tokens, with a newline row beside each feature (twice the tiles' patches); Janus
    without one. The language model sees that many, whatever the processor wrote: LLaVA-NeXT's
    1024-px image made 2,931 prompt tokens and a 5,763-row sequence, 1.23 times its plan."""
    from tiny_vlm_configs import vlm_config

    from unimap.estimate import Options, _image_patches, _image_tokens
    from unimap.families import read_architecture

    read = {m: read_architecture(vlm_config(m), m) for m in ("llava_next", "granite_vision",
                                                             "multi_modality", "llava_onevision")}
    assert {m: a.vision.features_per_patch for m, a in read.items()} == {  # type: ignore[union-attr]
        "llava_next": 2, "granite_vision": 2, "multi_modality": 1, "llava_onevision": 0}
    options = Options(max_num_images=1, max_image_length=1024)
    arch = read["llava_next"]
    assert _image_tokens(arch, options) >= 2 * _image_patches(arch, options)


@pytest.mark.parametrize("min_pixels", [None, 56 * 56, 65536])
def test_qwen_style_towers_take_the_whole_image_and_its_least_pixels(min_pixels: int | None,
                                                                    tmp_path: Path) -> None:
    """Qwen3-VL's processor keeps an image whole at its own resolution (never the config's
    384-px tiles: priced for both before, 2.1 times a published-width tower's peak), scaling a
    small one up to min_pixels (the file's min_pixels or size's shortest_edge; 128 x 128 by
    default, the larger of mlx-vlm's and transformers' defaults). The plan's patches are never
    fewer than transformers' smart_resize (the one mlx-vlm's Qwen3-VL processor calls) makes of
    any image within --max-image-length."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from unimap.estimate import Options, _image_patches, image_tiles

    processor = {} if min_pixels is None else {"size": {"shortest_edge": min_pixels}}
    arch = _arch_with_processor("qwen3_vl", processor, tmp_path)
    v = arch.vision
    assert v is not None and v.whole_image and v.min_pixels == (min_pixels or 128 * 128)
    unit = v.patch_size * v.merge_size
    for length in (64, 300, 1024, 2048):
        options = Options(max_num_images=1, max_image_length=length)
        assert image_tiles(v, options) == 1
        planned = _image_patches(arch, options)
        for height, width in ((length, length), (length, length // 4), (unit, length), (length, unit)):
            h, w = smart_resize(height, width, factor=unit, min_pixels=v.min_pixels,
                                max_pixels=1 << 40)
            assert planned >= (h // v.patch_size) * (w // v.patch_size), (length, height, width)
    from unimap.errors import ModelError

    with pytest.raises(ModelError, match="min_pixels .or size's shortest_edge. 'x' is not a pixel count"):
        _arch_with_processor("qwen3_vl", {"min_pixels": "x"}, tmp_path / "bad")
