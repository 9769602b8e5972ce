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
    from unimap.estimate import Options, _image_tokens

    for processor, tokens in ((None, 280), ({"max_soft_tokens": 560}, 560)):
        arch = _arch_with_processor("gemma4", processor, tmp_path)
        for length in (64, 4096):  # resized to the budget, up or down
            assert _image_tokens(arch, Options(max_num_images=2, max_image_length=length)) == 2 * tokens


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
    from unimap.estimate import Options, _image_patches, _image_tokens, image_tiles

    arch = _arch_with_processor("lfm2_vl", None, tmp_path / "a")
    v = arch.vision
    assert v is not None and v.patches_per_image == 256 * 2 * 2  # max_image_tokens x 2^2
    threshold = 2 * 256 * (v.patch_size * 2) ** 2  # tolerance x tokens x (patch x factor)^2
    small, large = int(threshold ** 0.5), int(threshold ** 0.5) + 1
    assert image_tiles(v, Options(max_image_length=small)) == 1
    assert image_tiles(v, Options(max_image_length=large)) == 10 + 1
    options = Options(max_num_images=1, max_image_length=64)
    assert _image_patches(arch, options) == 1024 and _image_tokens(arch, options) == 256 + 2
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
