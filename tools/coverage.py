"""Which of the installed mlx-lm's architectures and mlx-vlm's vision-language models unimap
plans, and why the others are refused.

Usage: python tools/coverage.py [--write docs/COVERAGE.md]

Each mlx-lm model module (tests/tiny_families.py builds a tiny config for it) is read the way
`unimap plan` reads a config: through mlx-lm's own Model class (unimap/structure.py), or a
hand-written reader where one overrides it. A family plans when its structure is read (layers,
caches, MoE routing); the table shows what was read, or the one-line reason it was refused.
Each mlx-vlm model module is read likewise from a config shaped like a published checkpoint's
(tests/tiny_vlm_configs.py): it plans when its language model and its vision tower are read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def row(family: str) -> tuple[bool, str]:
    from tiny_families import UNBUILDABLE, families, tiny_config

    from unimap.errors import ModelError
    from unimap.families import READERS, read_architecture

    if family in UNBUILDABLE:
        return False, UNBUILDABLE[family]
    try:
        config = tiny_config(family) if family in families() else {"model_type": family}
        arch = read_architecture(config, f"{family} config")
    except ModelError as exc:
        return False, str(exc).split(": ", 1)[-1]
    kinds = sorted({c.kind for c in arch.caches} or set(arch.layer_kinds))
    moe = f"MoE {arch.moe.num_experts} experts, top-{arch.moe.experts_per_token}" if arch.moe else ""
    how = "hand reader" if family in READERS else "mlx-lm model"
    return True, "; ".join(x for x in (how, "/".join(kinds), moe) if x)


def vlm_row(module: str) -> tuple[bool, str]:
    """(plans, what was read or why not) for mlx-vlm's `module`."""
    from tiny_vlm_configs import language_model, vlm_config

    from unimap.errors import ModelError
    from unimap.families import READERS, read_architecture

    try:
        config = vlm_config(module)
        arch = read_architecture(config, f"{module} config")
    except ModelError as exc:
        return False, _brief(str(exc), f"{module} config")
    if arch.vision is None:
        return False, "read without a vision tower"
    kinds = sorted({c.kind for c in arch.caches} or set(arch.layer_kinds))
    moe = f"MoE {arch.moe.num_experts} experts, top-{arch.moe.experts_per_token}" if arch.moe else ""
    # mlx-vlm's own language model: mlx-lm has no class for its type; a port of an mlx-lm module
    # (Mistral Large 3's deepseek_v3) is priced as that family
    own_language = language_model(module)[1] is None
    how = ("hand reader" if config["model_type"] in READERS
           else "mlx-vlm's language model" + ("" if "." in arch.module else f", priced as {arch.module}")
           if own_language else "mlx-lm model")
    v = arch.vision
    tokens = (f"{v.tokens_per_image} tokens/image" if v.tokens_per_image
              else f"dynamic resolution, {v.merge_size}x{v.merge_size} patches/token")
    own = "FastViTHD (fixed in code), priced per pixel" if v.image_size else "encoder-free patch embedder"
    tower = (f"vision {v.num_layers} layers x {v.hidden_size}, {tokens}" if v.num_layers
             else f"vision {own} x {v.hidden_size}, {tokens}")
    # how its processor sizes images and how its tower attends, where the plan reads it so
    traits = [("one attention over all images" if v.joint_attention else ""),
              (f"up to {v.split_tiles} tiles for " + (f"images past {v.split_over_pixels} pixels"
                                                       if v.split_over_pixels else "any image")
               if v.split_tiles else ""),
              (f"at least {v.min_patches} patches an image" if v.min_patches else ""),
              ("image size kept, row breaks" if v.keeps_size else ""),
              ("perceiver resampler" if v.resampler[0] else ""),
              ("one image a prompt" if v.single_image else "")]
    tower += "".join(f", {t}" for t in traits if t)
    prefill = {"always": "prefilled in one pass", "images": "prompts with images prefilled in one pass"}
    return True, "; ".join(x for x in (how, "/".join(kinds), moe, tower, prefill.get(v.one_pass, ""))
                           if x)


# advice that ModelError messages end with: a table row keeps the reason
ADVICE = (" (upgrade mlx-lm, or check the config)", "; unimap plans it when mlx-lm has a model for it",
          "; unimap plans it when mlx-lm or mlx-vlm has a model it can read")


def _brief(reason: str, where: str) -> str:
    """A ModelError's reason without the config's name and the closing advice."""
    for text in (*ADVICE, f"{where}: "):
        reason = reason.replace(text, "")
    return reason.removeprefix(where).lstrip(": ")


def vlm_table(planned_families: set[str]) -> list[str]:
    """The mlx-vlm table's Markdown lines, with its summary; `planned_families`: the mlx-lm
    modules that plan (the first table)."""
    import mlx_vlm
    from tiny_vlm_configs import language_model, vlm_modules

    modules, failed = vlm_modules()
    rows = []
    for module in modules:
        text_type, family = language_model(module)
        ok, what = vlm_row(module)
        if family is None and not ok:  # the reason says which type mlx-lm lacks
            what = f"not an mlx-lm language model: {what}"
        lm = " ".join(x for x in (text_type, f"(mlx-lm {family})" if family else "") if x) or "none named"
        rows.append((module, lm, ok, what, family in planned_families))
    planned = sum(ok for *_, ok, _, _ in rows)
    ours = [(m, ok, what) for m, _, ok, what, in_lm in rows if in_lm]
    missed = [f"{m} ({what})" for m, ok, what in ours if not ok]
    verdict = ("every one of them plans" if not missed
               else f"{len(ours) - len(missed)} of them plan; not: " + "; ".join(missed))
    own = [m for m, _, ok, what, in_lm in rows if ok and not in_lm]
    lines = [f"## mlx-vlm {mlx_vlm.__version__} vision-language models", "",
             f"{planned} of {len(rows)} vision-language model modules (the packages of "
             "`mlx_vlm.models` with a VisionConfig) plan. "
             f"{len(ours)} have a language model that is a planned mlx-lm family (the table "
             f"above): {verdict}. {len(own)} more plan from the language model mlx-vlm "
             f"builds, of its own, which mlx-lm has no class for ({', '.join(own)}); the others "
             "are refused naming why mlx-lm and mlx-vlm's model could not be read. "
             "Each is read from a config shaped like a published checkpoint's "
             "(`tests/tiny_vlm_configs.py`: the language model tiny, under the key checkpoints "
             "use; the vision tower with mlx-vlm's VisionConfig defaults): the language model "
             "through mlx-lm (the module for the VLM's own type, else for its language model's "
             "type) with the caches of the language model mlx-vlm builds, the vision tower "
             "from its config's common fields (FastVLM's FastViTHD, "
             "fixed in mlx-vlm's code, is priced per pixel as measured). Where mlx-vlm turns "
             "chunked prefill off (its own policy, checked per model), the plan prices the "
             "whole prompt in one pass. "
             "`tests/test_vlm_coverage.py` checks each row whose language model plans. "
             "`tests/test_vlm_runs.py` builds each of them through mlx-vlm's own classes with "
             "the tower made small and runs it through unimap (text prompts, all on one device "
             "and split): 40 give plain mlx-vlm's tokens within their plan; mlx-vlm's classes "
             "do not build the others' tiny configs, or plain mlx-vlm cannot run a text prompt "
             "on them (the test names each); 34 of the 40 also take a 4:3 image through their "
             "own processors, and one family of each kind of processor a 1024-px image and "
             "six, each peak and image-token count within its plan "
             "(`tools/bench_vlm_images.py` gives every family those, in float32 and bfloat16: "
             "171 cases over 36 families, none over its plan). "
             "`tests/test_vision.py` runs Qwen2-VL, Qwen2.5-VL, "
             "Gemma 3 and PaliGemma with images through their own processors."]
    if failed:
        lines += ["", "Not imported here: " + "; ".join(f"{m} ({why})" for m, why in failed.items())]
    lines += ["", "| module | language model (type) | plans | read / reason |", "|---|---|---|---|"]
    lines += [f"| {m} | {lm} | {'yes' if ok else 'no'} | {what.replace('|', '/')} |"
              for m, lm, ok, what, _ in rows]
    return lines


def unimportable() -> list[str]:
    """mlx-lm model modules that cannot even be imported here (they need another package)."""
    import importlib
    import pkgutil

    import mlx_lm.models as models

    out = []
    for info in pkgutil.iter_modules(models.__path__):
        try:
            importlib.import_module(f"mlx_lm.models.{info.name}")
        except (ImportError, SystemExit):
            out.append(info.name)
    return out


def main() -> None:
    import mlx_lm
    from tiny_families import families

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [(f, *row(f)) for f in sorted(set(families()) | set(unimportable()))]
    planned = sum(ok for _, ok, _ in rows)
    lines = [f"# Architecture coverage: mlx-lm {mlx_lm.__version__}", "",
             f"Generated by `tools/coverage.py` ({time.perf_counter() - start:.0f} s) on the Linux CPU "
             f"build. {planned} of {len(rows)} model modules plan ({100 * planned / len(rows):.0f} %): "
             "each is read from a small config of its own fields (`tests/tiny_families.py`), "
             "through mlx-lm's own Model class unless a hand reader overrides it; the kinds are "
             "the caches its layers hold (none: a layer that shares another's cache or has none). "
             "Every planned module is also run by `tests/test_families.py` (same greedy tokens as "
             "plain mlx-lm, whole and split, peak within the plan).",
             "", "| module | plans | read / reason |", "|---|---|---|"]
    lines += [f"| {f} | {'yes' if ok else 'no'} | {what.replace('|', '/')} |" for f, ok, what in rows]
    lines += ["", *vlm_table({f for f, ok, _ in rows if ok})]
    text = "\n".join(lines) + "\n"
    if args.write:
        args.write.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
