"""inspect -> ModelSpec: what a model is made of, from config.json and safetensors headers.

Works on a local folder (one .safetensors file or shards listed in model.safetensors.index.json)
and on a Hugging Face repo id (a cached snapshot is read from disk; otherwise config.json is
fetched and the headers are read with the Hub's header-only metadata call). Tensor data is never
read. Each tensor is assigned to a decoder layer (the integer after `layers.`), to the vision
tower, or to the non-mapped rest. Bad input is a ModelError that says what to do.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from unimap.checks import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, check_config, claimed_layers, read_json, short
from unimap.errors import ArgumentTypeError, ModelError
from unimap.families import PROCESSOR_FILE, PROCESSOR_KEY, Architecture, read_architecture
from unimap.headers import DTYPE_BYTES, TensorHeader, parse_header, read_header

INDEX_FILE = "model.safetensors.index.json"
_VISION = re.compile(r"(?:^|\.)(vision_tower|visual|vision_model|vision_encoder|multi_modal_projector|"
                     r"mm_projector|image_newline)(?:\.|$)")
_VISION_HINT = re.compile(r"vis|multi_modal|mm_proj|image_newline")
# Other encoders and projectors mlx-vlm's checkpoints keep beside the language model, at the top
# (or under "model."): DeepSeek-VL2's vision.blocks.N and projector, Gemma 3n's audio_tower.
# layers.N and embed_audio/embed_vision, Idefics3's connector, Janus's aligner and gen_*,
# InternVL's mlp1, ... Their numbered blocks are not decoder layers; they count with the tower.
_ENCODER_ROOT = re.compile(r"^(?:model\.)?(?:vision|vision_\w+|audio_\w+|sound_\w+|embed_audio|"
                           r"embed_vision|connector|projector|aligner|gen_\w+|mlp1|sam_model|"
                           r"image_proj\w*|vit_\w+|patch_merge\w*)\.", re.ASCII)
# Decoder layers under any prefix mlx-lm's families use: model.layers.N, language_model.model.
# layers.N, backbone.layers.N, transformer.h.N, model.blocks.N, ...
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d{1,9})(?:\.|$)", re.ASCII)
# Any numbered list of layers, for the count check (afm7 keeps a second list, kv_reuse_layers.N)
_LAYER_LIST = re.compile(r"(?:^|\.)(?:\w*layers|h|blocks?)\.(\d{1,9})(?:\.|$)", re.ASCII)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYERS_PREFIX = "model.layers."  # where most checkpoints keep their decoder layers
FLOAT_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_FLOAT_WIDTH = {"BF16": 2, "F16": 2, "F32": 4}
GROUP_SIZE = 64  # MLX affine quantization's default group (mlx-lm and --isq)
# Module paths whose quant_predicate in mlx-lm keeps them at 8 bits (qwen3_moe routers).
EIGHT_BIT_MODULES: dict[str, tuple[str, ...]] = {"qwen3_moe": ("mlp.gate",)}
# Routed experts, as checkpoints (mlp.experts.3.up_proj, ffn.experts.mlp.w1) and mlx-lm
# (mlp.switch_mlp.up_proj, experts.switch_glu.up_proj) name them; not shared_experts.
EXPERT_MARKS = (".experts.", ".switch_mlp.", ".switch_glu.")


def is_expert(name: str) -> bool:
    """Whether tensor `name` belongs to a layer's routed experts, which a CPU layer keeps as
    loaded (unimap/runtime.py upcasts them call by call)."""
    return any(mark in name for mark in EXPERT_MARKS)


class Tensor(NamedTuple):
    """Where a tensor goes: a decoder layer, the vision tower, or the non-mapped rest."""

    name: str
    layer: int | None  # decoder layer index; None for non-mapped tensors
    part: str  # "layer", "vision", "embed", "lm_head", "other"
    isq: str  # how --isq treats it: "" (kept), "q" (quantized to --isq bits), "q8" (8 bits)


class Slot(NamedTuple):
    """Sums over the tensors of one decoder layer (slot = index), the non-mapped parts (-1) or
    the vision tower (-2): what the estimate needs to re-price weights without a tensor loop."""

    slot: int
    header_bytes: int
    float_elements: int  # BF16/F16/F32 elements (a --dtype cast changes their size)
    float_bytes: int
    q_elements: int  # elements --isq quantizes to the chosen bits
    q_bytes: int
    q8_elements: int  # elements --isq keeps at 8 bits (mlx-lm's quant_predicate, e.g. routers)
    q8_bytes: int
    largest_bytes: int  # the biggest single tensor (the unit a cast or --isq loads at once)
    experts: Slot | None = None  # the same sums over the layer's routed experts alone

NON_MAPPED_SLOT, VISION_SLOT = -1, -2


@dataclass(frozen=True)
class Quantization:
    """An MLX-quantized checkpoint's `quantization` config entry."""

    group_size: int
    bits: int
    mode: str = "affine"
    overrides: dict[str, Any] = field(default_factory=dict)  # module path -> params or False


@dataclass(frozen=True)
class ModelSpec:
    source: str
    where: str  # "local" or "hub"
    arch: Architecture
    headers: tuple[TensorHeader, ...]  # every tensor, as the safetensors headers describe it
    dtype: str  # activation dtype: "bfloat16", "float16" or "float32"
    quantization: Quantization | None
    config: dict[str, Any]
    slots: tuple[Slot, ...] = ()

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    def layer_weight_bytes(self) -> tuple[int, ...]:
        """Exact header bytes of each decoder layer."""
        return tuple(s.header_bytes for s in self.slots[:self.arch.num_layers])

    def classify(self, name: str) -> Tensor:
        """Where tensor `name` goes (KeyError for a name the headers do not list)."""
        eight_bit = EIGHT_BIT_MODULES.get(self.arch.model_type, ())
        return classify(self._by_name[name], self.arch.num_layers, eight_bit)

    @cached_property
    def _by_name(self) -> dict[str, TensorHeader]:
        return {h.name: h for h in self.headers}

    @cached_property
    def head_bytes(self) -> int:
        """Bytes of the output head as stored (lm_head's tensors, or the embedding table's when
        the head is tied to it): what each decode step reads of the non-mapped parts."""
        head = embed = 0
        for h in self.headers:
            if "lm_head" in h.name:
                head += h.end - h.begin
            elif "embed_tokens" in h.name or h.name.endswith("wte.weight"):
                embed += h.end - h.begin
        return head or embed

    @cached_property
    def packed(self) -> bool:
        """Whether any weight is packed in uint32 (MLX-quantized, or quantized GGUF tensors);
        computed once: every estimate of a plan's search asks."""
        return any(h.dtype == "U32" for h in self.headers)


# Keys under which configs give the context a model was trained for, most specific first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                "n_ctx", "max_seq_len")


def trained_context(config: dict[str, Any]) -> tuple[int, str] | None:
    """The context (tokens) the model was trained for, and where that number comes from: its
    position limit, extended by RoPE scaling where the config says the scaling stretches an
    original, shorter one (YaRN, Llama 3, LongRoPE, linear, dynamic NTK). None when the config
    names none (the model then has no trained limit unimap can check)."""
    for scope in (config, config.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key in CONTEXT_KEYS:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return _scaled(scope, value, key)
    return None


def _scaled(scope: dict[str, Any], positions: int, key: str) -> tuple[int, str]:
    scaling = scope.get("rope_scaling") or scope.get("rope_parameters")
    if not isinstance(scaling, dict):
        return positions, key
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = scaling.get("factor")
    original = scaling.get("original_max_position_embeddings",
                           scope.get("original_max_position_embeddings"))
    if not isinstance(factor, int | float) or isinstance(factor, bool) or not 1 < factor < 1e4:
        return positions, key
    if isinstance(original, int) and not isinstance(original, bool) and original > 0:
        stretched = int(original * factor)
        if stretched > positions:
            return stretched, f"{key} {positions}, RoPE {kind or 'scaling'} x{factor:g} of {original}"
        return positions, key
    if kind in ("linear", "dynamic"):  # the factor stretches the stated limit itself
        return int(positions * factor), f"{key} {positions}, RoPE {kind} x{factor:g}"
    return positions, key


def inspect(model: str | Path) -> ModelSpec:
    """Read a model's config and safetensors headers: a local folder or a Hub repo id."""
    with _collector_paused():
        return _inspect(model)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Headers of a large MoE make hundreds of thousands of small objects, none of them garbage;
    the cyclic collector would walk them again and again (a third of the reading time). Not
    gc.freeze(): that would also keep the program's own young garbage (MLX arrays in cycles,
    whose memory a measured peak then counts) until a full collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _inspect(model: str | Path) -> ModelSpec:
    if not isinstance(model, str | Path) or not str(model).strip():
        raise ArgumentTypeError(f"model must be a folder, a .gguf file or a Hub repo id, not {short(model)}")
    try:
        path = Path(model).expanduser()
        mode = os.stat(path).st_mode  # not Path.exists(): it takes a symlink loop for "missing"
        kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
    except FileNotFoundError:
        kind = ""
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a symlink loop, a NUL byte
        why = getattr(exc, "strerror", None) or exc
        raise ModelError(f"{short(str(model))}: not a usable path ({why})") from None
    if kind == "dir":
        return _local(path, str(model))
    if kind == "file" and path.suffix.lower() == ".gguf":
        return _gguf(path, str(model))
    if kind:
        raise ModelError(f"{short(str(model))}: is a file; pass the model's folder (with config.json and "
                         ".safetensors files) or a .gguf file")
    if _REPO_ID.match(str(model)) and _valid_repo_id(str(model)):
        return _hub(str(model))
    raise ModelError(f"{short(str(model))}: no such folder, and not a Hugging Face repo id (owner/name)")


def _valid_repo_id(repo_id: str) -> bool:
    """The Hub's own rules for a repo id (no '--' or '..', no leading or trailing '-' or '.')."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


# ---------------------------------------------------------------- local folders


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a model folder, read and checked at the edge (unimap/checks.py)."""
    config_path = path / "config.json"
    try:
        config = read_json(config_path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        gguf = sorted(p.name for p in path.glob("*.gguf"))
        if gguf:
            raise ModelError(f"{path}: no config.json, but {gguf[0]} is here; pass the .gguf file "
                             f"itself ({path / gguf[0]})") from None
        raise ModelError(f"{path}: no config.json; pass the folder of a Hugging Face or MLX "
                         "model") from None
    return check_config(config, str(config_path))


def with_processor(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """`config` with the image processor's settings of a vision-language model beside it
    (preprocessor_config.json, under its file name's stem): some processors size every image
    themselves (Idefics 3's longest edge, Gemma 4's token budget), whatever its size."""
    if "vision_config" not in config:
        return config
    try:
        processor = read_json(path / PROCESSOR_FILE, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return config
    if not isinstance(processor, dict):
        raise ModelError(f"{path / PROCESSOR_FILE}: expected a JSON object, not "
                         f"{type(processor).__name__}; fix or re-download it")
    return {**config, PROCESSOR_KEY: processor}


def _local(path: Path, source: str) -> ModelSpec:
    config = with_processor(read_config(path), path)
    files, weight_map = _weight_files(path)
    located: dict[str, str] = {}  # tensor name -> file
    headers: list[TensorHeader] = []
    for file in files:
        found, _ = read_header(path / file)
        twice = found.keys() & located.keys()
        if twice:
            name = min(twice)
            raise ModelError(f"{path}: tensor {name!r} is in both {located[name]} and {file}")
        located.update(dict.fromkeys(found, file))
        headers.extend(found.values())
    _check_index(path, weight_map, located)
    return build_spec(source, "local", config, headers, str(path / "config.json"))


def _weight_files(path: Path) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files to read, and the index's weight map when the model is sharded."""
    index = path / INDEX_FILE
    if index.exists():
        weight_map = _index_map(index)
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise ModelError(f"{path}: {INDEX_FILE} lists {', '.join(missing)}, which "
                             "is missing; finish the download")
        return files, weight_map
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path}: no .safetensors files (unimap reads safetensors headers; for a "
                         "GGUF file pass the .gguf path)")
    return files, None


def _index_map(index: Path) -> dict[str, str]:
    """The index's weight_map: tensor names to shard files of this folder (the standard
    library reads a pretty-printed index faster than orjson does)."""
    found = read_json(index, MAX_INDEX_BYTES)
    weight_map = found.get("weight_map") if isinstance(found, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelError(f"{index}: not a safetensors index (no 'weight_map' object); re-download it")
    try:  # a sharded model names a few files tens of thousands of times: check each file once
        if all(_shard_file(file) for file in set(weight_map.values())):
            return weight_map
    except TypeError:  # a list or an object where a file name belongs
        pass
    for name, file in weight_map.items():  # the first bad entry, in the index's order
        if not _shard_file(file):
            raise ModelError(f"{index}: tensor {name[:80]!r} maps to {str(file)[:80]!r}, not a "
                             ".safetensors file of this folder; re-download the index")
    return weight_map


def _shard_file(file: Any) -> bool:
    """Whether an index entry names a .safetensors file in the model's own folder."""
    return isinstance(file, str) and file.endswith(".safetensors") and "/" not in file and (
        "\\" not in file and not file.startswith("."))


def _check_index(path: Path, weight_map: dict[str, str] | None, located: dict[str, str]) -> None:
    if weight_map is None or weight_map == located:
        return
    for name, file in weight_map.items():
        if located.get(name) != file:
            raise ModelError(f"{path / INDEX_FILE}: says {name!r} is in {file}, but that file's "
                             "header does not list it; the download is inconsistent")


def _gguf(path: Path, source: str) -> ModelSpec:
    from unimap.gguf import check_complete, check_tokenizer, gguf_config, gguf_headers, read_gguf

    gguf = read_gguf(path)
    spec = build_spec(source, "local", gguf_config(gguf), gguf_headers(gguf), f"{path} metadata")
    check_complete(gguf)
    check_tokenizer(gguf)
    return spec


# ---------------------------------------------------------------- the Hugging Face Hub


def _hub(repo_id: str) -> ModelSpec:
    import huggingface_hub as hf
    from huggingface_hub import errors

    try:
        cached = hf.snapshot_download(repo_id, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors"])
        if (Path(cached) / "config.json").exists() and _complete(Path(cached)):
            return _local(Path(cached), repo_id)
    except (errors.LocalEntryNotFoundError, OSError, ValueError):
        pass  # not cached: ask the Hub
    if not hf.constants.HF_HUB_OFFLINE and not _hub_reachable():
        raise ModelError(f"{repo_id}: not in the local Hugging Face cache, and the Hub cannot be "
                         f"reached within {HUB_PROBE_SECONDS:g} s; check the network, or download "
                         "the model and pass its folder")
    try:
        folder = Path(hf.hf_hub_download(repo_id, "config.json")).parent
        if "vision_config" in (config := read_config(folder)):
            # a checkpoint without one: its processor's defaults
            with contextlib.suppress(errors.EntryNotFoundError):
                hf.hf_hub_download(repo_id, PROCESSOR_FILE)
        config = with_processor(config, folder)
        meta = hf.get_safetensors_metadata(repo_id)
    except errors.GatedRepoError:
        raise ModelError(f"{repo_id}: gated on the Hugging Face Hub; accept its licence on the "
                         "model page and log in (`hf auth login`)") from None
    except errors.RepositoryNotFoundError:
        raise ModelError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private: "
                         "log in with `hf auth login`)") from None
    except errors.NotASafetensorsRepoError:
        raise ModelError(f"{repo_id}: has no safetensors weights; unimap reads safetensors "
                         "headers (or a local .gguf file)") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        raise _unreachable(repo_id, exc) from None
    except errors.EntryNotFoundError:  # after LocalEntryNotFoundError, its subclass
        raise ModelError(f"{repo_id}: the repo has no config.json; is it a model repo in Hugging "
                         "Face format?") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise _unreachable(repo_id, exc) from None
    headers: list[TensorHeader] = []
    for file, file_meta in meta.files_metadata.items():
        raw = {name: {"dtype": info.dtype, "shape": list(info.shape),
                      "data_offsets": list(info.data_offsets)}
               for name, info in file_meta.tensors.items()}
        headers.extend(parse_header(raw, f"{repo_id}/{file}")[0].values())
    return build_spec(repo_id, "hub", config, headers, f"{repo_id}/config.json")


HUB_PROBE_SECONDS = 3.0  # an unreachable Hub is told in seconds, not after the client's retries


def _hub_reachable() -> bool:
    """Whether the Hub's host accepts a connection within HUB_PROBE_SECONDS (name lookup
    included, so it runs in a thread); behind a proxy the client's own reach decides."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    found: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((url.hostname or "huggingface.co", url.port or 443),
                                          timeout=HUB_PROBE_SECONDS):
                found.append(True)
        except OSError:
            found.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(HUB_PROBE_SECONDS)
    return bool(found and found[0])


def _unreachable(repo_id: str, exc: Exception) -> ModelError:
    return ModelError(f"{repo_id}: cannot reach the Hugging Face Hub ({type(exc).__name__}); "
                      "check the network, or download the model and pass its folder")


def _complete(folder: Path) -> bool:
    try:
        return bool(_weight_files(folder)[0])
    except ModelError:
        return False


# ---------------------------------------------------------------- from headers to a spec


def build_spec(source: str, where: str, config: dict[str, Any], headers: list[TensorHeader],
               config_where: str) -> ModelSpec:
    check_config(config, config_where)
    layered = _layered(headers, EIGHT_BIT_MODULES.get(str(config.get("model_type")), ()))
    _check_layer_count(config, layered, config_where)
    arch = read_architecture(config, config_where)
    if arch.vision is not None:
        wide, into = projector_shape(layered.others)
        if wide:
            arch = replace(arch, vision=replace(arch.vision, projector_width=wide, projector_input=into))
    quant = _quantization(config, config_where)
    if not headers:
        raise ModelError(f"{source}: the safetensors files hold no tensors")
    _check_shapes(source, headers, arch)
    dropped = _nextn_layers(config)
    slots, dtype_bytes_used = _slots(source, layered, arch, dropped)
    empty = [s.slot for s in slots[:arch.num_layers] if s.header_bytes == 0]
    if empty:
        raise ModelError(f"{source}: config.json says {arch.num_layers} layers but the weights have "
                         f"no tensors for layer(s) {_ranges(empty)}; config and weights disagree")
    return ModelSpec(source, where, arch, tuple(headers), _dtype(arch, dtype_bytes_used), quant,
                     config, slots)


# the projector between the tower and the language model, under any name mlx-vlm's checkpoints
# give it (LLaVA's multi_modal_projector, Idefics 3's connector, Janus's aligner, InternVL's
# mlp1, Qwen2-VL's merger)
_PROJECTOR = re.compile(r"(?:^|\.)(?:multi_modal_projector|mm_projector|projector|connector|aligner|"
                        r"mlp1|merger)\.")


def projector_shape(others: list[TensorHeader]) -> tuple[int, int]:
    """(outputs, inputs) of the projector's widest matrix (a Linear's weight, as MLX and
    transformers store it: outputs first; an MLX-quantized one's inputs packed, so not read);
    (0, 0) where the checkpoint has none."""
    shapes = [(h.shape[0], 0 if h.dtype == "U32" else h.shape[1]) for h in others
              # the language model's tensors (most of a large checkpoint's) are skipped first
              if not h.name.startswith(_LANGUAGE_ROOTS) and len(h.shape) == 2
              and (m := _PROJECTOR.search(h.name))
              and "layers." not in h.name[:m.start()]]  # not a decoder layer's part
    return max(shapes, default=(0, 0))


_LANGUAGE_ROOTS = ("language_model.", "model.language_model.", "text_model.", "llm.", "model.layers.")


def _check_layer_count(config: dict[str, Any], layered: Layered, config_where: str) -> None:
    """Before anything is built per layer: a config that claims more decoder layers than the
    weights hold contradicts them (and could make planning work in proportion to a made-up
    count). Weights that name no layers at all are left to the family's own reading."""
    claimed = claimed_layers(config)
    if claimed is None:
        return
    numbers = {_layer_number(digits) for digits, *_ in layered.groups}
    if -1 in numbers:  # "model.layers.x.": the names are read one by one
        lists = _layer_lists(layered.headers)
    else:  # _LAYER_LIST's first match in model.layers.N.* is "model.layers.", N
        lists = _layer_lists(layered.others)
        if numbers:
            lists[LAYERS_PREFIX] = max(lists.get(LAYERS_PREFIX, 0), max(numbers) + 1)
    held = sum(lists.values())
    if lists and claimed > held:
        raise ModelError(f"{config_where} says {claimed} layers but the weights hold {held}; "
                         "config and weights disagree")


def _layer_lists(headers: list[TensorHeader]) -> dict[str, int]:
    """Each list of numbered layers the names show (a family may keep several) -> its length."""
    lists: dict[str, int] = {}
    for h in headers:
        found = _LAYER_LIST.search(h.name)
        if found:
            where = h.name[:found.start(1)]
            lists[where] = max(lists.get(where, 0), int(found.group(1)) + 1)
    return lists


def _layer_number(digits: str) -> int:
    """The layer named by the digits after "model.layers." (1 to 9 ASCII digits, as _LAYER and
    _LAYER_LIST read them; not "²", which isdigit() accepts), or -1."""
    return int(digits) if len(digits) <= 9 and digits.isascii() and digits.isdigit() else -1


def _check_shapes(source: str, headers: list[TensorHeader], arch: Architecture) -> None:
    """A float matrix stored under one of mlx-lm's own parameter names must have the shape the
    config makes (or its transpose, which a family's sanitize may undo). Families read by hand
    (no shapes from mlx-lm's model) are held to their embedding and attention projections."""
    expected = dict(arch.matrix_shapes) or _hand_read_shapes(arch)
    for h in headers:
        want = expected.get(h.name)
        if want is None or h.dtype not in FLOAT_DTYPES or len(h.shape) != 2:
            continue
        if tuple(h.shape) not in (want, want[::-1]):
            raise ModelError(f"{source}: tensor {h.name!r} is {list(h.shape)} in the weights but "
                             f"{list(want)} in the model config.json describes; config and weights "
                             "disagree")


def _hand_read_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The shapes a hand-read family's config makes for its token embedding and each layer's
    attention projections, under mlx-lm's names."""
    if arch.vision is not None:  # the language model's names carry the VLM's own prefixes
        return {}
    h = arch.hidden_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (arch.vocab_size, h)}
    for i in range(arch.num_layers):
        attn = f"model.layers.{i}.self_attn."
        shapes.update({f"{attn}q_proj.weight": (q, h), f"{attn}k_proj.weight": (kv, h),
                       f"{attn}v_proj.weight": (kv, h), f"{attn}o_proj.weight": (h, q)})
    return shapes


def classify(h: TensorHeader, num_layers: int, eight_bit: tuple[str, ...] = ()) -> Tensor:
    """Assign a tensor by name: vision tower, decoder layer (the integer after `layers.`), or
    the non-mapped rest; and say whether --isq would quantize it (mlx-lm's quantize_model takes
    Linear/Embedding weights whose last dimension divides by the group size)."""
    name = h.name
    isq = _isq(h, eight_bit)
    if (_VISION_HINT.search(name) and _VISION.search(name)) or _ENCODER_ROOT.match(name):
        return Tensor(name, None, "vision", "")
    found = _LAYER.search(name)  # the first "<layers|h|blocks>.<int>." on component boundaries
    if found:
        return Tensor(name, int(found.group(1)), "layer", isq)
    part = ("embed" if "embed_tokens" in name or name.endswith("wte.weight")
            else "lm_head" if "lm_head" in name else "other")
    return Tensor(name, None, part, isq)


def _isq(h: TensorHeader, eight_bit: tuple[str, ...]) -> str:
    if not (h.name.endswith(".weight") and 2 <= len(h.shape) <= 3 and h.dtype in FLOAT_DTYPES
            and h.shape[-1] % GROUP_SIZE == 0):
        return ""
    return "q8" if eight_bit and h.name[:-7].endswith(eight_bit) else "q"


MTP_PREFIX = "mtp."  # multi-token-prediction heads (Qwen3-Next): mlx-lm drops them on load


def _nextn_layers(config: dict[str, Any]) -> int:
    """Layers past num_hidden_layers that hold next-token-prediction modules (DeepSeek V3,
    GLM-4.5: `num_nextn_predict_layers`), which mlx-lm's sanitize drops on load."""
    value = config.get("num_nextn_predict_layers")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _slots(source: str, layered: Layered, arch: Architecture, dropped: int = 0) -> tuple[
        tuple[Slot, ...], dict[str, int]]:
    """Per-slot sums (layers 0..n-1, non-mapped -1, vision -2) and float bytes by dtype; the
    `dropped` layers after the last (next-token prediction) and the multi-token-prediction heads
    (MTP_PREFIX) are not loaded, so not counted. From the layered reading where it holds, else
    (a fault to report, which the reading in tensor order finds first) tensor by tensor."""
    groups = _by_row(source, layered, arch, dropped)
    slots, by_dtype = _sums(groups or _in_order(source, layered.headers, arch, dropped), arch)
    tops = sorted(by_dtype.values())[-2:]
    if groups and len(tops) == 2 and tops[0] == tops[1]:  # _dtype takes the first dtype seen
        slots, by_dtype = _sums(_in_order(source, layered.headers, arch, dropped), arch)
    return slots, by_dtype


def _sums(groups: dict[Group, list[int]], arch: Architecture) -> tuple[tuple[Slot, ...], dict[str, int]]:
    n = arch.num_layers
    sums = [[0] * 8 for _ in range(n + 2)]
    experts = [[0] * 8 for _ in range(n + 2)]  # the same sums over routed experts alone
    by_dtype: dict[str, int] = {}
    for (row, dtype, isq, routed), sizes in groups.items():
        total, width = sum(sizes), _FLOAT_WIDTH.get(dtype)
        if width:  # dtypes in the order first seen
            by_dtype[dtype] = by_dtype.get(dtype, 0) + total
        for sum_ in (sums[row], experts[row]) if routed else (sums[row],):
            sum_[0] += total
            sum_[7] = max(sum_[7], max(sizes))
            if width:  # each tensor holds whole elements (headers.py and gguf.py make sure)
                sum_[1] += total // width
                sum_[2] += total
                if isq:
                    k = 3 if isq == "q" else 5
                    sum_[k] += total // width
                    sum_[k + 1] += total
    ids = [*range(n), NON_MAPPED_SLOT, VISION_SLOT]
    return tuple(Slot._make([i, *row, Slot._make([i, *part, None]) if part[0] else None])
                 for i, row, part in zip(ids, sums, experts, strict=True)), by_dtype


# What the slot sums tell apart: (row: a layer, n for the non-mapped parts, n + 1 for the vision
# tower; dtype; how --isq treats it; whether it is a routed expert)
Group = tuple[int, str, str, bool]
_OTHER, _DROPPED = -1, -2  # rows of names the general classifier reads, and of layers not loaded
_EXPERT = re.compile("|".join(re.escape(mark) for mark in EXPERT_MARKS))  # is_expert in one search
# is_expert(model.layers.N<rest>) is is_expert(<rest>) when no mark holds a digit or fits in
# "model.layers." (a mark there could reach across N)
_REST_TELLS_EXPERTS = not any(m in LAYERS_PREFIX or any(c.isdigit() for c in m) for m in EXPERT_MARKS)


class Layered(NamedTuple):
    """The headers read once, before the architecture is known: tensors named model.layers.N<rest>
    (most of them) as byte sizes grouped by (N as written, dtype, --isq treatment, routed expert),
    the rest as they are, in order. Large MoE checkpoints have tens of thousands of tensors in a
    few hundred groups."""

    headers: list[TensorHeader]
    groups: dict[tuple[str, str, str, bool], list[int]]
    others: list[TensorHeader]
    eight_bit: tuple[str, ...]  # the 8-bit modules the --isq treatments were read with


def _layered(headers: list[TensorHeader], eight_bit: tuple[str, ...]) -> Layered:
    groups: dict[tuple[str, str, str, bool], list[int]] = {}
    others: list[TensorHeader] = []
    kinds: dict[str, tuple[str, bool] | tuple[()]] = {}  # <rest> -> _kind(<rest>)
    for h in headers:
        name, dtype, shape, begin, end = h
        dot = name.find(".", 13) if name.startswith(LAYERS_PREFIX) else -1
        kind = kinds.get(name[dot:]) if dot > 13 else ()
        if kind is None:
            kind = kinds[name[dot:]] = _kind(name[dot:], eight_bit)
        if not kind:
            others.append(h)
            continue
        isq = kind[0] if dtype in _FLOAT_WIDTH and 2 <= len(shape) <= 3 and (
            shape[-1] % GROUP_SIZE == 0) else ""  # as _isq
        key = (name[13:dot], dtype, isq, kind[1])
        sizes = groups.get(key)
        if sizes is None:
            groups[key] = [end - begin]
        else:
            sizes.append(end - begin)
    return Layered(headers, groups, others, eight_bit)


def _kind(rest: str, eight_bit: tuple[str, ...]) -> tuple[str, bool] | tuple[()]:
    """For tensors named model.layers.N<rest>: how --isq treats one of a shape it quantizes ("q",
    "q8" or "" as _isq), and whether it is a routed expert; () when <rest> alone cannot tell."""
    if not _REST_TELLS_EXPERTS or any(len(mark) > len(rest) - 7 for mark in eight_bit):
        return ()
    isq = ("q8" if eight_bit and rest[:-7].endswith(eight_bit) else "q") if rest.endswith(
        ".weight") else ""
    return isq, _EXPERT.search(rest) is not None


def _by_row(source: str, layered: Layered, arch: Architecture,
            dropped: int) -> dict[Group, list[int]] | None:
    """The layered reading's groups by row; None where it cannot stand for the reading in tensor
    order: a fault (reported for the first tensor that has one), or --isq treatments read for
    another model type."""
    n = arch.num_layers
    eight_bit = EIGHT_BIT_MODULES.get(arch.model_type, ())
    if eight_bit != layered.eight_bit:
        return None
    moe = arch.moe is not None
    owned = {p: i for i, p in enumerate(arch.layer_prefixes) if not p.startswith(LAYERS_PREFIX)}
    groups: dict[Group, list[int]] = {}
    try:
        for (digits, dtype, isq, routed), sizes in layered.groups.items():
            row = _layer_row(source, digits, digits, n, dropped)
            if row == _OTHER:
                return None
            if row != _DROPPED:
                groups.setdefault((row, dtype, isq, routed and moe), []).extend(sizes)
        for h in layered.others:
            key = _group(source, h, n, dropped, owned, eight_bit, moe)
            if key is not None:
                groups.setdefault(key, []).append(h.end - h.begin)
    except ModelError:
        return None
    return groups


def _in_order(source: str, headers: list[TensorHeader], arch: Architecture,
              dropped: int) -> dict[Group, list[int]]:
    """The groups, tensor by tensor in the headers' order: a fault is the first tensor's."""
    n = arch.num_layers
    eight_bit = EIGHT_BIT_MODULES.get(arch.model_type, ())
    owned = {p: i for i, p in enumerate(arch.layer_prefixes) if not p.startswith(LAYERS_PREFIX)}
    groups: dict[Group, list[int]] = {}
    for h in headers:
        key = _group(source, h, n, dropped, owned, eight_bit, arch.moe is not None)
        if key is not None:
            groups.setdefault(key, []).append(h.end - h.begin)
    return groups


def _layer_row(source: str, name: str, digits: str, n: int, dropped: int) -> int:
    """The layer `digits` (after "model.layers." in `name`) name: _OTHER when they are not a
    number ("²" passes isdigit(), not isascii()), _DROPPED for a layer not loaded."""
    if not (digits.isascii() and digits.isdigit()):
        return _OTHER
    if len(digits) > 9:
        raise ModelError(f"{source}: tensor {short(name)} names layer {short(digits)}, more "
                         "than any model has; the weights are corrupt")
    layer = int(digits)
    if n <= layer < n + dropped:
        return _DROPPED
    if layer >= n:
        raise ModelError(f"{source}: tensor {name!r} belongs to layer {layer}, but "
                         f"config.json says num_hidden_layers={n}; config and weights disagree")
    return layer


def _group(source: str, h: TensorHeader, n: int, dropped: int, owned: dict[str, int],
           eight_bit: tuple[str, ...], moe: bool) -> Group | None:
    """One tensor's group: model.layers.N.* by N; a name under a layer path mlx-lm keeps
    elsewhere (e.g. a second list of shared-KV layers) by that layer; any other by the general
    classifier. None for a tensor not loaded."""
    name, layer = h.name, None
    if name.startswith(MTP_PREFIX):
        return None
    if name.startswith(LAYERS_PREFIX):
        dot = name.find(".", 13)
        row = _layer_row(source, name, name[13:dot] if dot >= 0 else name[13:], n, dropped)
        if row == _DROPPED:
            return None
        layer = None if row == _OTHER else row
    elif owned:
        layer = _owner(name, owned)
    if layer is None:
        t = classify(h, n, eight_bit)
        layer, vision, isq = t.layer, t.part == "vision", t.isq
    else:
        vision, isq = False, _isq(h, eight_bit)
    if layer is not None and n <= layer < n + dropped:
        return None
    if layer is not None and layer >= n:
        raise ModelError(f"{source}: tensor {name!r} belongs to layer {layer}, but "
                         f"config.json says num_hidden_layers={n}; config and weights disagree")
    routed = moe and layer is not None and is_expert(name)
    return (layer if layer is not None else n + vision, h.dtype, isq, routed)


def _owner(name: str, owned: dict[str, int]) -> int | None:
    """The layer whose parameter path (`owned`: prefix -> index) starts `name`, if any."""
    at = name.find(".")
    while at >= 0:
        found = owned.get(name[:at + 1])
        if found is not None:
            return found
        at = name.find(".", at + 1)
    return None


def _quantization(config: dict[str, Any], where: str) -> Quantization | None:
    q = config.get("quantization")
    if q is None:
        qc = config.get("quantization_config")
        if isinstance(qc, dict) and "group_size" in qc and "bits" in qc and "quant_method" not in qc:
            q = qc
        elif isinstance(qc, dict):
            method = qc.get("quant_method", "unknown")
            raise ModelError(f"{where}: {method!r} quantization is not something MLX loads; use the "
                             "original bf16 checkpoint (optionally with --isq) or an MLX-quantized one")
    if q is None:
        return None
    if not isinstance(q, dict) or not isinstance(q.get("group_size"), int) or not isinstance(
            q.get("bits"), int):
        raise ModelError(f"{where}: 'quantization' needs integer 'group_size' and 'bits'")
    overrides = {k: v for k, v in q.items() if isinstance(v, dict | bool)}
    return Quantization(q["group_size"], q["bits"], str(q.get("mode", "affine")), overrides)


def _dtype(arch: Architecture, float_bytes: dict[str, int]) -> str:
    """The activation dtype: config's torch_dtype, else the dtype most float bytes use."""
    if arch.torch_dtype is not None and arch.torch_dtype in FLOAT_DTYPES.values():
        return arch.torch_dtype
    if not float_bytes:
        return "float32"
    return FLOAT_DTYPES[max(float_bytes, key=lambda d: float_bytes[d])]


def _ranges(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:8])
    return shown + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of an activation dtype name ("bfloat16") or safetensors name ("BF16")."""
    names = {v: k for k, v in FLOAT_DTYPES.items()}
    return DTYPE_BYTES[names.get(dtype, dtype)]
