"""Vision-language models through mlx-vlm (the optional extra: pip install 'unimap[vision]').

What the apply and generate stages need beyond a text model: loading the model lazily with
mlx-vlm's loader (vision tower, projector and language model in one module tree, so the plan is
applied to it as to a text model), checking the images a run is given, and turning prompt and
images into the inputs mlx-vlm's generation step takes. Images larger than the plan's
--max-image-length are scaled down (longest edge), with a note, so a run stays inside the plan.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimap.checks import foreign
from unimap.errors import ConfigError, ModelError

INSTALL = "pip install 'unimap[vision]'"
NO_MAX_KV_SIZE = "--max-kv-size is for text models: drop it for a vision-language model"
NO_KV_BITS = ("--kv-bits is not supported for vision-language models yet (mlx-vlm quantizes its "
              "cache after filling it at full precision, which the plan does not price): drop --kv-bits")


def text_only(name: str) -> ConfigError:
    """The error for images given to a model without a vision tower."""
    return ConfigError(f"{name} is a text-only model and cannot take images: drop --image, or run a "
                       "vision-language model (Qwen2-VL, Gemma 3, LLaVA, ...)")


def require() -> None:
    """Raise a ConfigError that says how to install mlx-vlm when it is missing."""
    try:
        import mlx_vlm  # noqa: F401
    except ImportError:
        raise ConfigError(f"vision-language models run through mlx-vlm, which is not installed: "
                          f"{INSTALL}") from None


# what mlx-vlm's models call their vision encoder: vision_tower (LLaVA, Gemma 3, Qwen-VL's
# "visual"), vision_model (Idefics 3, SmolVLM, Llama 4), vision_backbone (llm-jp), ...
TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_backbone", "vision_encoder",
               "vision", "vision_embedder")


def is_vlm(model: Any) -> bool:
    """Whether `model` is one of mlx-vlm's vision-language models (its language model beside a
    tower, whatever the family names the tower), as mlx-vlm's loader builds them."""
    return type(model).__module__.startswith("mlx_vlm.models.") and hasattr(model, "language_model")


def vision_tower(model: Any) -> Any:
    """The vision encoder of an mlx-vlm model, under whichever name its family gives it; None
    where it has none of TOWER_NAMES."""
    return next((getattr(model, name) for name in TOWER_NAMES
                 if getattr(model, name, None) is not None), None)


def lazy_vlm(source: str) -> tuple[Any, Any]:
    """An mlx-vlm model and processor (a local folder, or a Hub repo id that mlx-vlm downloads),
    parameters not yet evaluated."""
    require()
    from mlx_vlm.utils import load

    try:
        model, processor = load(source, lazy=True)
    except Exception as exc:  # noqa: BLE001 - mlx-vlm's loader and the transformers classes it
        # hands the checkpoint's files to raise anything from files they cannot take
        raise ModelError(f"{source}: mlx-vlm cannot load it ({foreign(exc)})") from None
    return model, processor


@dataclass
class Images:
    """Images checked and ready for the processor, with what was done to them."""

    images: list[Any] = field(default_factory=list)  # PIL images, RGB
    notes: list[str] = field(default_factory=list)


# 64 megapixels (8192 x 8192): past any camera's photo; a header claiming more is refused before
# decoding (a 20000 x 20000 PNG of a few kB would decode to 1.2 GB)
MAX_IMAGE_PIXELS = 1 << 26


def read_images(paths: list[Any], max_num_images: int, max_image_length: int) -> Images:
    """Open every image (a path, or a PIL image already open), or raise a ConfigError naming
    the first bad one: missing, not a file, unreadable, not an image, or more images than the
    plan made room for."""
    from PIL import Image, UnidentifiedImageError

    if len(paths) > max_num_images:
        raise ConfigError(f"{len(paths)} images given but the plan made room for {max_num_images}: "
                          f"pass --max-num-images {len(paths)} (max_num_images={len(paths)} in "
                          "Python) so the plan counts them, or give fewer images")
    found = Images()
    for given in paths:
        if isinstance(given, Image.Image):
            found.images.append(_within(given.convert("RGB"), "an image", max_image_length, found))
            continue
        name = str(given) if len(str(given)) <= 120 else str(given)[:117] + "..."
        try:
            path = Path(given).expanduser()
            kind = "file" if path.is_file() else "other" if path.exists() else ""
        except (OSError, RuntimeError, ValueError, TypeError) as exc:  # too long, a loop, a NUL
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"image {name}: not a usable path ({why})") from None
        if not kind:
            raise ConfigError(f"image {name}: no such file")
        if kind != "file":
            raise ConfigError(f"image {name}: not a file")
        try:
            with path.open("rb") as handle, warnings.catch_warnings():
                # the size is checked just below against our own, lower limit
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(handle)
                width, height = opened.size  # from the header: checked before any pixel is decoded
                if width * height > MAX_IMAGE_PIXELS:
                    raise ConfigError(f"image {name}: {width} x {height} pixels, more than "
                                      f"{MAX_IMAGE_PIXELS} (a decompression bomb?); give a smaller image")
                # JPEG decodes at a fraction of its size when the plan wants it smaller anyway
                opened.draft("RGB", (max_image_length, max_image_length))
                opened.load()
                image = opened.convert("RGB")
        except ConfigError:
            raise
        except Image.DecompressionBombError:
            raise ConfigError(f"image {name}: more pixels than Pillow decodes safely; give a "
                              "smaller image") from None
        except PermissionError:
            raise ConfigError(f"image {name}: not readable (permission denied)") from None
        except UnidentifiedImageError:
            raise ConfigError(f"image {name}: not an image Pillow can read; give a PNG, JPEG, WebP "
                              "or another common format") from None
        except (OSError, SyntaxError, ValueError) as exc:  # a truncated or corrupt image file
            raise ConfigError(f"image {name}: cannot be decoded ({exc}); is the file complete?") from None
        found.images.append(_within(image, f"image {name}", max_image_length, found, (width, height)))
    return found


def _within(image: Any, name: str, max_image_length: int, found: Images,
            stored: tuple[int, int] | None = None) -> Any:
    """`image` scaled down (aspect kept) so its longest edge is at most max_image_length (the
    note names the size as stored, which a JPEG's draft decoding may already have reduced)."""
    from PIL import Image

    width, height = image.size
    if max(width, height) <= max_image_length:
        if stored is not None and stored != image.size:
            found.notes.append(f"{name} scaled from {stored[0]}x{stored[1]} to {width}x{height} to "
                               f"stay within --max-image-length {max_image_length}")
        return image
    scale = max_image_length / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    width, height = stored or (width, height)
    found.notes.append(f"{name} scaled from {width}x{height} to {size[0]}x{size[1]} to stay within "
                       f"--max-image-length {max_image_length}")
    return image.resize(size, Image.Resampling.BICUBIC)


@dataclass
class Inputs:
    """What mlx-vlm's generate_step takes: token ids, pixels, mask and model-specific extras
    (Qwen2-VL's image_grid_thw, ...)."""

    input_ids: Any
    pixel_values: Any
    mask: Any
    extra: dict[str, Any]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[-1])


def user_message(text: str, images: int = 0) -> dict[str, Any]:
    """A chat message from the user, with placeholders for `images` images before its text."""
    content: list[dict[str, str]] = [{"type": "image"}] * images + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def prepare(model: Any, processor: Any, prompt: str | list[dict[str, Any]], images: list[Any]) -> Inputs:
    """The prompt (a message, or a conversation of {"role", "content"} messages whose image
    placeholders say where the images go) in the model's chat template, tokenized, and the
    images turned into pixels by the model's processor."""
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

    config = model.config
    try:
        text = apply_chat_template(processor, config, prompt, num_images=len(images))
        inputs = prepare_inputs(processor, images=images or None, prompts=text,
                                image_token_index=getattr(config, "image_token_index", None),
                                add_special_tokens=should_add_special_tokens(config.model_type, processor))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the model's processor cannot prepare this prompt and these images "
                          f"({exc})") from None
    if images and inputs.get("pixel_values") is None:  # a processor that is only a tokenizer
        raise ConfigError(f"the model's processor made no pixels of the {len(images)} image(s): "
                          f"mlx-vlm loaded only a {type(processor).__name__} for it, so the "
                          "checkpoint's processor files (preprocessor_config.json, "
                          "processor_config.json) are missing or name no processor for this model; "
                          "copy them from the published model, or run without images")
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    return Inputs(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask"), extra)


def eos_ids(model: Any, processor: Any) -> set[int]:
    """The tokens that end a reply: the model config's eos_token_id(s) and the tokenizer's."""
    found: set[int] = set()
    configured = getattr(model.config, "eos_token_id", None)
    if isinstance(configured, int):
        found.add(configured)
    elif isinstance(configured, list):
        found.update(int(t) for t in configured)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        found.add(int(tokenizer.eos_token_id))
    return found
