"""Vision-language models end to end: tiny random Qwen2-VL, Qwen2.5-VL and Gemma 3 checkpoints
built from mlx-vlm's own classes (tests/tiny_vlms.py), inspected, planned, loaded through unimap
and generated from with images, against plain mlx-vlm on the same files."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from click.testing import CliRunner
from tiny_models import stand_in_machine, write_tiny_model
from tiny_vlms import write_image, write_tiny_vlm

import unimap
from unimap.cli import cli
from unimap.errors import ConfigError, ModelError
from unimap.estimate import IMAGE_MARKERS

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "gemma3")
PROMPT = "w1 w2 w3"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vlms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("vlms")
    return {family: write_tiny_vlm(out / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("images")
    return [write_image(out / "wide.png", 96, 64, seed=0), write_image(out / "tall.png", 64, 96, seed=1)]


def reference(path: Path, image: Path, max_tokens: int = 8) -> list[int]:
    """Greedy tokens from plain mlx-vlm: its loader, chat template and generate."""
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template

    model, processor = load(str(path))
    prompt = apply_chat_template(processor, model.config, PROMPT, num_images=1)
    result = generate(model, processor, prompt, image=[str(image)], max_tokens=max_tokens,
                      temperature=0.0)
    return list(result.token_ids)


def unimap_tokens(path: Path, image: Any, max_tokens: int = 8, **kwargs: Any) -> tuple[list[int], Any]:
    model, processor, plan = unimap.load(path, max_seq_len=256, **kwargs)
    tokens = [r.token for r in unimap.stream_generate(model, processor, PROMPT, images=[image],
                                                       max_tokens=max_tokens)]
    model._unimap.limits.release()
    return tokens, plan


# ---------------------------------------------------------------- inspect and plan


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_reads_the_mlx_vlm_layout(vlms: dict[str, Path], family: str) -> None:
    """Vision tower and projector tensors are the vision slot, language_model.model.layers.N the
    decoder layers, the rest (embeddings, norm, head) non-mapped: byte for byte."""
    path = vlms[family]
    tensors = mx.load(str(path / "model.safetensors"))
    assert isinstance(tensors, dict)
    spec = unimap.inspect(path)
    vision = sum(a.nbytes for name, a in tensors.items()
                 if name.startswith(("vision_tower.", "multi_modal_projector.")))
    assert vision > 0 and unimap.estimate(spec).vision_weight_bytes == vision
    for i in range(spec.num_layers):
        layer = sum(a.nbytes for name, a in tensors.items()
                    if name.startswith(f"language_model.model.layers.{i}."))
        assert spec.slots[i].header_bytes == layer > 0
    assert sum(s.header_bytes for s in spec.slots) == sum(a.nbytes for a in tensors.values())
    assert spec.arch.vision is not None
    assert spec.arch.vision.kind == ("fixed" if family == "gemma3" else "qwen2_vl")


def test_unknown_vision_family_is_a_clear_error(vlms: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    shutil.copy(vlms["qwen2_vl"] / "model.safetensors", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "idefics3", "vision_config": {"hidden_size": 64, "num_hidden_layers": 2,
                                                "num_attention_heads": 2},
        "text_config": {}}))
    with pytest.raises(ModelError, match="'idefics3' is a vision-language model whose language "
                       "model mlx-lm cannot build .*not an architecture the installed mlx-lm runs"):
        unimap.inspect(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_planned_image_tokens_cover_the_processor(vlms: dict[str, Path], tmp_path: Path,
                                                  family: str) -> None:
    """The plan's image tokens are what the model's processor makes of an image of
    max_image_length a side, and at least what it makes of a smaller one."""
    from unimap import vlm

    path = vlms[family]
    model, processor, plan = unimap.load(path, max_seq_len=64, max_image_length=112)
    config = model.config
    image_id = getattr(config, "image_token_id", None) or config.image_token_index
    for side, exact in ((112, True), (80, False)):
        image = write_image(tmp_path / f"{side}.png", side, side)
        checked = vlm.read_images([image], 1, 112)
        inputs = vlm.prepare(model, processor, PROMPT, checked.images)
        made = int((inputs.input_ids == image_id).sum().item())
        assert made > 0
        # the image's own tokens exactly, beside the marks around it (none in this template)
        planned = plan.estimate.image_tokens - IMAGE_MARKERS
        assert made == planned if exact else made <= planned


@pytest.mark.filterwarnings("ignore:manual device maps:DeprecationWarning")
def test_vision_tower_goes_to_the_gpu_before_any_layer(vlms: dict[str, Path]) -> None:
    seen: list[str] = []
    model, _, plan = unimap.load(vlms["qwen2_vl"], max_seq_len=256, device_map=2,
                                 machine=stand_in_machine(),
                                 progress=lambda done, total, what: seen.append(what))
    model._unimap.limits.release()
    assert plan.vision_device == plan.non_mapped_device == "gpu:0"
    assert seen[0] == "embeddings, head and vision tower" and seen[1] == "layer 0"
    assert plan.device("gpu:0").weight_bytes >= plan.estimate.vision_weight_bytes


def test_a_vision_tower_too_big_for_the_gpu_says_what_would_fit(vlms: dict[str, Path]) -> None:
    est = unimap.plan(vlms["qwen2_vl"], max_seq_len=256, machine=stand_in_machine()).estimate
    budget = est.non_mapped_weight_bytes + est.vision_weight_bytes + est.activation_bytes() * 3 // 4
    plan = unimap.plan(vlms["qwen2_vl"], max_seq_len=256, machine=stand_in_machine(),
                       gpu_budget=budget, max_image_length=1024)
    assert plan.vision_device == "cpu"
    assert "vision tower" in plan.notes[0] and "would fit gpu:0 with --max-image-length" in plan.notes[0]
    length = int(plan.notes[0].rsplit("--max-image-length ", 1)[1].split()[0])
    smaller = unimap.plan(vlms["qwen2_vl"], max_seq_len=256, machine=stand_in_machine(),
                          gpu_budget=budget, max_image_length=length)
    assert smaller.vision_device == "gpu:0"


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_changes_the_output(vlms: dict[str, Path], images: list[Path], family: str) -> None:
    """The comparisons below would mean little if the tokens ignored the image."""
    assert reference(vlms[family], images[0]) != reference(vlms[family], images[1])


PLACEMENTS = {
    "all on the GPU": {"machine": "stand-in"},
    "split 2+2": {"machine": "stand-in", "device_map": 2},
    "layers on the CPU, parts on the GPU": {"machine": "stand-in", "device_map": 0},
    "everything on the CPU (GPU too small)": {"machine": "stand-in", "gpu_budget": 4096},
    "probed machine": {},
}


@pytest.mark.filterwarnings("ignore:manual device maps:DeprecationWarning")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_outputs_match_mlx_vlm(vlms: dict[str, Path], images: list[Path], family: str,
                               placement: str) -> None:
    kwargs = dict(PLACEMENTS[placement])
    if kwargs.get("machine") == "stand-in":
        kwargs["machine"] = stand_in_machine()
    for image in images:
        tokens, plan = unimap_tokens(vlms[family], image, **kwargs)
        assert plan.fits
        assert tokens == reference(vlms[family], image), f"{family}, {placement}, {image.name}"


def test_isq_quantizes_the_language_model_only(vlms: dict[str, Path], images: list[Path]) -> None:
    import mlx.nn as nn

    mx.clear_cache()
    model, processor, plan = unimap.load(vlms["qwen2_vl"], max_seq_len=256, isq=4)
    kinds = {type(m) for _, m in model.language_model.model.layers[0].named_modules()}
    assert nn.QuantizedLinear in kinds
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in model.vision_tower.named_modules())
    weights = sum(d.weight_bytes for d in plan.devices)
    assert abs(mx.get_active_memory() - weights) < 64 * 1024
    text = unimap.generate(model, processor, PROMPT, images=[images[0]], max_tokens=4)
    assert text.strip()


def test_an_image_larger_than_planned_is_scaled_down_with_a_note(vlms: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    big = write_image(tmp_path / "big.png", 300, 200, seed=3)
    small = write_image(tmp_path / "small.png", 96, 64, seed=3)
    model, processor, _ = unimap.load(vlms["qwen2_vl"], max_seq_len=256, max_image_length=96)
    note = r"scaled from 300x200 to 96x64 to stay within --max-image-length 96"
    with pytest.warns(UserWarning, match=note):
        scaled = list(unimap.stream_generate(model, processor, PROMPT, images=[big], max_tokens=2))
    plain = list(unimap.stream_generate(model, processor, PROMPT, images=[small], max_tokens=2))
    assert scaled[-1].prompt_tokens == plain[-1].prompt_tokens


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def qwen(vlms: dict[str, Path]) -> tuple[Any, Any]:
    model, processor, _ = unimap.load(vlms["qwen2_vl"], max_seq_len=256, max_num_images=2)
    return model, processor


def _generate(qwen: tuple[Any, Any], images: list[Any]) -> None:
    model, processor = qwen
    list(unimap.stream_generate(model, processor, PROMPT, images=images, max_tokens=1))


def test_missing_image(qwen: tuple[Any, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"image .*nope\.png: no such file"):
        _generate(qwen, [tmp_path / "nope.png"])


def test_a_folder_is_not_an_image(qwen: tuple[Any, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        _generate(qwen, [tmp_path])


def test_a_text_file_is_not_an_image(qwen: tuple[Any, Any], tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    with pytest.raises(ConfigError, match="not an image Pillow can read; give a PNG, JPEG"):
        _generate(qwen, [text])


def test_a_truncated_image(qwen: tuple[Any, Any], images: list[Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.png"
    cut.write_bytes(images[0].read_bytes()[:200])
    with pytest.raises(ConfigError, match="cannot be decoded .*is the file complete"):
        _generate(qwen, [cut])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_image(qwen: tuple[Any, Any], images: list[Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(images[0].read_bytes())
    locked.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        _generate(qwen, [locked])


def test_more_images_than_planned(qwen: tuple[Any, Any], images: list[Path]) -> None:
    with pytest.raises(ConfigError, match="3 images given but the plan made room for 2: pass "
                                          "--max-num-images 3"):
        _generate(qwen, [*images, images[0]])


def test_a_text_only_model_given_an_image(tmp_path: Path, images: list[Path]) -> None:
    path = write_tiny_model(tmp_path / "llama", "llama")
    model, tokenizer, _ = unimap.load(path, max_seq_len=64)
    with pytest.raises(ConfigError, match="is a text-only model and cannot take images: drop --image"):
        list(unimap.stream_generate(model, tokenizer, "w1 w2", images=[images[0]], max_tokens=1))
    with pytest.raises(ConfigError, match="give it text .* not a list of messages"):
        list(unimap.stream_generate(model, tokenizer, [{"role": "user", "content": "w1"}], max_tokens=1))


# ---------------------------------------------------------------- CLI and example


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_run_with_images_matches_the_api(vlms: dict[str, Path], images: list[Path]) -> None:
    path = vlms["qwen2_vl"]
    result = run_cli("run", "-m", str(path), "--image", str(images[0]), "--image", str(images[1]),
                     "-p", PROMPT, "--max-tokens", "6", "--max-seq-len", "256")
    # two images without --max-num-images (default 1): the CLI planned for the images given
    assert result.exit_code == 0, result.output
    model, processor, _ = unimap.load(path, max_seq_len=256, max_num_images=2)
    text = unimap.generate(model, processor, PROMPT, images=images, max_tokens=6)
    assert result.stdout.strip() == text.strip() and text.strip()
    assert "fits" in result.stderr and "peak memory" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "{missing}"], "no such file"),
    (["--image", "{image}", "--image", "{image}", "--max-num-images", "1"],
     "2 images given but the plan made room for 1"),
])
def test_cli_run_bad_images(vlms: dict[str, Path], images: list[Path], tmp_path: Path,
                            args: list[str], message: str) -> None:
    filled = [a.format(missing=tmp_path / "missing.png", image=images[0]) for a in args]
    result = run_cli("run", "-m", str(vlms["qwen2_vl"]), "-p", PROMPT, "--max-seq-len", "256", *filled)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_cli_run_text_only_model_with_an_image(tmp_path: Path, images: list[Path]) -> None:
    path = write_tiny_model(tmp_path / "llama", "llama")
    result = run_cli("run", "-m", str(path), "--image", str(images[0]), "-p", "w1", "--max-seq-len", "64")
    assert result.exit_code == 2
    assert "is a text-only model and cannot take images" in result.output


def test_example_runs(vlms: dict[str, Path], images: list[Path]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "vision_auto_device_map.py"),
                           "--model", str(vlms["qwen2_vl"]), "--image", str(images[0]),
                           "--max-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "predicted peak" in done.stdout and "measured peak" in done.stdout


@pytest.mark.parametrize(("family", "blocks"), [("qwen2_vl", 2), ("qwen2_5_vl", 2), ("gemma3", 2)])
def test_blockwise_vision_tower_gives_the_same_tokens(vlms: dict[str, Path], images: list[Path],
                                                      family: str, blocks: int) -> None:
    """What the runtime does on a CUDA GPU, forced here on the CPU build: every block found,
    the same tokens. (What it saves is a CUDA effect, recorded in the next test; on the CPU
    build both ways peak within noise of each other.)"""
    from unimap.runtime import evaluate_blockwise

    model, processor, _ = unimap.load(vlms[family], max_seq_len=256)
    assert evaluate_blockwise(model.vision_tower) == blocks
    tokens = [r.token for r in unimap.stream_generate(model, processor, PROMPT, images=[images[0]],
                                                       max_tokens=8)]
    assert tokens == reference(vlms[family], images[0])


def test_blockwise_evaluation_was_measured_to_pay_on_cuda() -> None:
    """The H200 record behind evaluating the tower block by block on CUDA (and pricing it at
    CUDA_VISION_FACTOR): tools/gpu_attention_probe.py's Qwen2-VL tower, 448 px."""
    import json

    from unimap.estimate import CUDA_VISION_FACTOR

    record = json.loads((ROOT / "docs" / "gpu" / "h200_attention_probe.json").read_text())
    assert record["gpu"] is True
    found = record["vision_working_bytes"]
    assert found["eval_per_block"] * 2 < found["one_graph"]
    assert 1.0 < CUDA_VISION_FACTOR < found["one_graph"] / found["eval_per_block"]


def test_kv_bits_with_a_vision_model_is_refused_before_loading(vlms: dict[str, Path]) -> None:
    """mlx-vlm's run would not match a quantized cache's price: the plan refuses --kv-bits for a
    vision-language model, and so does load, given a plan made with it another way."""
    path = vlms["qwen2_vl"]
    with pytest.raises(ConfigError, match="--kv-bits is not supported for vision-language models"):
        unimap.plan(path, max_seq_len=256, kv_bits=8)
    # nor is a rotating window, which mlx-vlm's cache would not keep; and neither is offered as
    # a way out of a plan that does not fit
    with pytest.raises(ConfigError, match="--max-kv-size is for text models"):
        unimap.plan(path, max_seq_len=256, max_kv_size=128)
    machine = stand_in_machine("mac-16gb")
    small = replace(machine, devices=tuple(replace(d, budget_bytes=700 << 20) for d in machine.devices))
    tight = unimap.plan(path, max_seq_len=32768, machine=small)
    assert not tight.fits and tight.ways_out
    assert not any(w.startswith(("--kv-bits", "--max-kv-size")) for w in tight.ways_out), tight.ways_out
    plan = unimap.plan(path, max_seq_len=256)
    with pytest.raises(ConfigError, match="--kv-bits is not supported for vision-language models"):
        unimap.load(path, planned=replace(plan, estimate=replace(
            plan.estimate, options=replace(plan.estimate.options, kv_bits=8))))


def test_plan_json_carries_the_vision_part(vlms: dict[str, Path]) -> None:
    data = unimap.plan(vlms["qwen2_vl"], max_seq_len=256, max_image_length=224,
                       machine=stand_in_machine()).to_dict()
    vision = data["vision"]
    # 224 px -> 16 x 16 / 4, and the marks around the image
    assert vision["device"] == "gpu:0" and vision["image_tokens"] == 64 + IMAGE_MARKERS
    assert set(vision["activation_terms"]) == {"all/pixels", "all/input-embeddings", "vision/encoder"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_prompt_without_images_matches_mlx_vlm(vlms: dict[str, Path], family: str) -> None:
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template

    model, processor = load(str(vlms[family]))
    prompt = apply_chat_template(processor, model.config, PROMPT, num_images=0)
    expected = list(generate(model, processor, prompt, max_tokens=8, temperature=0.0).token_ids)
    mapped, mapped_processor, _ = unimap.load(vlms[family], max_seq_len=256, max_num_images=0)
    got = [r.token for r in unimap.stream_generate(mapped, mapped_processor, PROMPT, max_tokens=8)]
    assert got == expected


def test_chat_with_a_vision_model(vlms: dict[str, Path], images: list[Path]) -> None:
    """-i with --image: the images go with the first message; each reply is what plain mlx-vlm
    makes of the conversation so far in the model's chat template."""
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template

    from unimap.vlm import user_message

    path = vlms["qwen2_5_vl"]
    result = CliRunner().invoke(cli, ["run", "-m", str(path), "--image", str(images[0]), "-i", "-p", PROMPT,
                                      "--max-tokens", "4", "--max-seq-len", "256"], input="w5 w6\n/quit\n")
    assert result.exit_code == 0, result.output
    model, processor = load(str(path))
    conversation: list[dict[str, Any]] = [user_message(PROMPT, 1)]
    replies = []
    for follow_up in ("w5 w6", None):
        prompt = apply_chat_template(processor, model.config, conversation, num_images=1)
        reply = generate(model, processor, prompt, image=[str(images[0])], max_tokens=4, temperature=0.0).text
        replies.append(reply.strip())
        if follow_up:
            conversation += [{"role": "assistant", "content": reply}, user_message(follow_up)]
    assert all(replies) and replies[0] != replies[1]  # the second turn saw the first
    at = result.stdout.index(replies[0])
    assert result.stdout.index(replies[1], at + len(replies[0])) > at


# ---------------------------------------------------------------- one-pass prefill (PaliGemma)


@pytest.fixture(scope="module")
def paligemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vlm(tmp_path_factory.mktemp("paligemma") / "paligemma", "paligemma")


def test_paligemma_matches_mlx_vlm_with_and_without_an_image(paligemma: Path, images: list[Path]) -> None:
    """mlx-vlm prefills PaliGemma in one pass (its text attends both ways); unimap's run gives
    the same greedy tokens, and the image changes them."""
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template

    expected = [reference(paligemma, image) for image in images]
    assert expected[0] != expected[1]
    assert unimap_tokens(paligemma, images[0])[0] == expected[0]
    model, processor = load(str(paligemma))
    prompt = apply_chat_template(processor, model.config, PROMPT, num_images=0)
    text_only = list(generate(model, processor, prompt, max_tokens=8, temperature=0.0).token_ids)
    mapped, mapped_processor, _ = unimap.load(paligemma, max_seq_len=256, max_num_images=0)
    assert [r.token for r in unimap.stream_generate(mapped, mapped_processor, PROMPT,
                                                     max_tokens=8)] == text_only


def test_one_pass_prefill_is_priced_and_said(paligemma: Path) -> None:
    """The whole prompt (text and the image's 16 tokens) is the prefill chunk, with logits for
    every row (PaliGemma's language model has no logits_to_keep) and float32 activations for a
    bfloat16 model given an image; the plan says so."""
    plan = unimap.plan(paligemma, max_seq_len=3000, max_image_length=56, machine=stand_in_machine())
    est, arch = plan.estimate, plan.spec.arch
    tokens = 3000 + 16 + IMAGE_MARKERS
    assert est.sequence_tokens == tokens
    assert est.activation_terms["prefill/logits"] == tokens * arch.vocab_size * 4
    assert est.activation_terms["prefill/scores-and-masks"] >= arch.num_heads * tokens * tokens * 4
    assert any("in one pass" in n and f"{tokens} tokens" in n for n in plan.notes)
    chunked = unimap.plan(paligemma, max_seq_len=3000, max_image_length=56, max_num_images=0,
                          machine=stand_in_machine())
    assert chunked.estimate.activation_terms["prefill/scores-and-masks"] >= arch.num_heads * 3000 ** 2 * 4
