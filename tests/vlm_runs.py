"""Runs of mlx-vlm's vision-language models through unimap, shared by tests/test_vlm_runs.py and
tools/bench_vlm_images.py: a random checkpoint built through the family's own mlx-vlm classes
(tiny_vlms.write_any_vlm), planned from its headers, loaded all on one device and split, generated
from with a text prompt, then given images through a generic and through the family's own image
processor. Each run's peak is read in the process that runs it, after a reset, so one process
may run many families; run it in a child so that the peaks are the run's alone.

`run_family` returns one family's row (JSON-able):
- built, why: whether the writer could build the family, and what stopped it;
- weights: [bytes the plan weighs, bytes the file stores];
- reference, reference_error: plain mlx-vlm's greedy tokens, or what stopped it, and then
  unimap_text: what unimap says for a short text prompt (long_text);
- whole, split: {tokens, peak, plan, layers} through unimap;
- kv: [bytes the caches hold after a prompt that fills the plan (about 1,000 tokens), bytes the
  plan's KV, the run's peak, the plan's peak];
- image, own_processor, and one entry per larger image case asked for: "ran PEAK PLAN TOKENS
  PLANNED_TOKENS" or unimap's error ("ConfigError: ...", "ModelError: ...");
- long_whole, long_split, where asked for: a long text prompt, "ran PEAK PLAN" or the error."""

from __future__ import annotations

import gc
import json
import struct
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

import unimap
from unimap.errors import ModelError

PROMPT, TOKENS = "w1 w2 w3", 6
PLACEMENTS: dict[str, dict[str, Any]] = {
    "whole": {},
    "split": {"device_map": 1},  # one layer on the GPU, the rest on the CPU
}
# The larger image cases: (row key, dtype, image side, image count). A 1024-px photo (4:3 only
# below 1024 px, so a square here) and six 224-px images.
LARGE = ("own_processor_large", "float32", 1024, 1)
SIX = ("own_processor_images", "float32", 224, 6)
HALF_LARGE = ("bfloat16_large", "bfloat16", 1024, 1)
HALF_SIX = ("bfloat16_images", "bfloat16", 224, 6)
CASES = {case[0]: case for case in (LARGE, SIX, HALF_LARGE, HALF_SIX)}


def reference(folder: Path) -> list[int]:
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template
    model, processor = load(str(folder))
    prompt = apply_chat_template(processor, model.config, PROMPT, num_images=0)
    return list(generate(model, processor, prompt, max_tokens=TOKENS, temperature=0.0).token_ids)


def _fresh() -> None:
    """Free what earlier runs left and start the peak from here."""
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()


def _said(run: Callable[[], str]) -> str:
    """What `run` returns, or unimap's error ("ConfigError: ..."), or what else it raised."""
    try:
        return run()
    except unimap.UnimapError as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"[:300]


def _load(folder: Path, **options: Any) -> tuple[Any, Any, Any]:
    from tiny_models import stand_in_machine
    return unimap.load(folder, machine=stand_in_machine(), **options)


def _filling_prompt(model: Any, processor: Any, words: int) -> str:
    """About `words` words that, with 4 decoded tokens, fill a plan of words + 16 tokens: fewer
    where the chat template adds more than the plan's 16 tokens of room."""
    from unimap import vlm
    prompt = " ".join(f"w{i % 120}" for i in range(words))
    extra = vlm.prepare(model, processor, prompt, []).num_tokens + 4 - (words + 16)
    return " ".join(f"w{i % 120}" for i in range(words - max(extra, 0)))


def through_unimap(folder: Path, placement: str) -> dict[str, Any]:
    _fresh()
    model, processor, plan = _load(folder, max_seq_len=64, max_num_images=0, **PLACEMENTS[placement])
    tokens = [r.token for r in unimap.stream_generate(model, processor, PROMPT, max_tokens=TOKENS)]
    peak = mx.get_peak_memory()
    model._unimap.limits.release()
    return {"tokens": tokens, "peak": peak, "plan": plan.peak_bytes,
            "layers": [list(d.layers) for d in plan.devices]}


def kv_run(folder: Path, words: int = 1000) -> list[int]:
    """The caches a prompt that fills the plan leaves, as allocated, against the plan's KV; and
    the run's peak against the plan's."""
    from unimap.generate import make_cache
    from unimap.structure import state_arrays
    _fresh()
    model, processor, plan = _load(folder, max_seq_len=words + 16, max_num_images=0)
    cache = make_cache(model)
    try:
        list(unimap.stream_generate(model, processor, _filling_prompt(model, processor, words),
                                    max_tokens=4, prompt_cache=cache))
    finally:
        model._unimap.limits.release()
    held = sum(a.nbytes for c in cache for a in (
        [c.keys, c.values] if getattr(c, "keys", None) is not None else state_arrays(c.state)))
    return [held, plan.estimate.kv_bytes, mx.get_peak_memory(), plan.peak_bytes]


def long_text(folder: Path, words: int, placement: str) -> str:
    """A text prompt that fills a plan of words + 16 tokens, with 4 tokens decoded: "ran PEAK
    PLAN", or unimap's error."""
    def run() -> str:
        model, processor, plan = _load(folder, max_seq_len=words + 16, max_num_images=0,
                                       **PLACEMENTS[placement])
        try:
            list(unimap.stream_generate(model, processor, _filling_prompt(model, processor, words),
                                        max_tokens=4))
        finally:
            model._unimap.limits.release()
        return f"ran {mx.get_peak_memory()} {plan.peak_bytes}"
    _fresh()
    return _said(run)


def with_image(folder: Path, side: int = 64, count: int = 1) -> str:
    """What unimap says for `count` square images of `side` px (one 4:3 below 1024 px), or
    "ran PEAK PLAN TOKENS PLANNED_TOKENS": the peak and the image tokens the processor made,
    against the plan's. A plan may refuse the images (a model mlx-vlm takes one image a prompt
    for)."""
    from tiny_vlms import write_image

    from unimap import vlm
    images = [write_image(folder / f"image{i}.png", side, side * 3 // 4 if side < 1024 and count == 1
                          else side, seed=i) for i in range(count)]

    def run() -> str:
        model, processor, plan = _load(folder, max_seq_len=512, max_num_images=count,
                                       max_image_length=side)
        try:
            list(unimap.stream_generate(model, processor, PROMPT, images=images, max_tokens=2))
        finally:
            model._unimap.limits.release()
        peak = mx.get_peak_memory()
        read = vlm.read_images(images, count, side).images
        tokens = (vlm.prepare(model, processor, PROMPT, read).num_tokens
                  - vlm.prepare(model, processor, PROMPT, []).num_tokens)
        return f"ran {peak} {plan.peak_bytes} {tokens} {plan.estimate.image_tokens}"
    _fresh()
    return _said(run)


def file_bytes(folder: Path) -> int:
    with open(folder / "model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__")


def runnable(module: str) -> bool:
    """Whether the plan reads the family's language model (the families tests run)."""
    from tiny_families import UNBUILDABLE
    from tiny_vlm_configs import language_model, vlm_config

    from unimap.families import read_architecture
    family = language_model(module)[1]
    if family in UNBUILDABLE:
        return False
    if family is None:  # a language model of mlx-vlm's own: run where the plan reads it
        try:
            read_architecture(vlm_config(module), module)
        except ModelError:
            return False
    return True


def run_family(module: str, work: Path, cases: tuple[str, ...] = (), *,
               text: bool = True, long_words: int = 0) -> dict[str, Any]:
    """One family's row. `cases` names the larger image cases (keys of CASES) to run through the
    family's own processor, where its small image ran; `text=False` skips the text runs;
    `long_words` adds "long_whole" and "long_split": a prompt of that many words (long_text)."""
    from tiny_vlms import write_any_vlm
    try:
        folder = write_any_vlm(work / module, module)
    except Exception as exc:
        return {"built": False, "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    row: dict[str, Any] = {"built": True}
    try:
        if long_words:
            for placement in PLACEMENTS:
                row[f"long_{placement}"] = long_text(folder, long_words, placement)
        if text:
            spec = unimap.inspect(folder)
            row["weights"] = [sum(h.nbytes for h in spec.headers), file_bytes(folder)]
            try:
                row["reference"] = reference(folder)
            except Exception as exc:
                row["reference_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                # where plain mlx-vlm fails, what unimap says for a short prompt
                row["unimap_text"] = long_text(folder, 8, "whole")
                raise
            for placement in PLACEMENTS:
                row[placement] = through_unimap(folder, placement)
            row["kv"] = kv_run(folder)
            row["image"] = with_image(folder)
        try:  # again with the family's own image processor and its image token
            own = write_any_vlm(work / f"{module}-own", module, family_processor=True)
            row["own_processor"] = with_image(own)
            if row["own_processor"].startswith("ran "):  # and a photo's size, and several
                folders = {"float32": own}
                for key in cases:
                    _, dtype, side, count = CASES[key]
                    if dtype not in folders:  # a bfloat16 checkpoint: its tower casts the pixels
                        folders[dtype] = write_any_vlm(work / f"{module}-{dtype}", module,
                                                       dtype=dtype, family_processor=True)
                    row[key] = with_image(folders[dtype], side, count)
        except Exception as exc:
            row["own_processor"] = f"not built: {type(exc).__name__}: {exc}"[:300]
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        row["where"] = [f"{f.filename}:{f.lineno}"
                        for f in traceback.extract_tb(exc.__traceback__)[-3:]]
    gc.collect()
    mx.clear_cache()
    return row
