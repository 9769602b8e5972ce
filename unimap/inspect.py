"""inspect -> ModelSpec: what a model is made of, from config.json and safetensors headers.

Works on a local folder (one .safetensors file or shards listed in model.safetensors.index.json)
and on a Hugging Face repo id (a cached snapshot is read from disk; otherwise config.json is
fetched and the headers are read with the Hub's header-only metadata call). Tensor data is never
read. Each tensor is assigned to a decoder layer (the integer after `layers.`), to the vision
tower, or to the non-mapped rest. Bad input is a ModelError that says what to do.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from unimap.checks import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, check_config, claimed_layers, read_json, short
from unimap.errors import ArgumentTypeError, ModelError
from unimap.families import Architecture, read_architecture
from unimap.headers import DTYPE_BYTES, TensorHeader, parse_header, read_header

INDEX_FILE = "model.safetensors.index.json"
_VISION = re.compile(r"(?:^|\.)(vision_tower|visual|vision_model|vision_encoder|multi_modal_projector|"
                     r"mm_projector|image_newline)(?:\.|$)")
_VISION_HINT = re.compile(r"vis|multi_modal|mm_proj|image_newline")
# Decoder layers under any prefix mlx-lm's families use: model.layers.N, language_model.model.
# layers.N, backbone.layers.N, transformer.h.N, model.blocks.N, ...
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d{1,9})(?:\.|$)", re.ASCII)
# Any numbered list of layers, for the count check (afm7 keeps a second list, kv_reuse_layers.N)
_LAYER_LIST = re.compile(r"(?:^|\.)(?:\w*layers|h|blocks?)\.(\d{1,9})(?:\.|$)", re.ASCII)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FLOAT_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_FLOAT_WIDTH = {"BF16": 2, "F16": 2, "F32": 4}
GROUP_SIZE = 64  # MLX affine quantization's default group (mlx-lm and --isq)
# Module paths whose quant_predicate in mlx-lm keeps them at 8 bits (qwen3_moe routers).
EIGHT_BIT_MODULES: dict[str, tuple[str, ...]] = {"qwen3_moe": ("mlp.gate",)}


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
        eight_bit = EIGHT_BIT_MODULES.get(self.arch.model_type, ())
        header = next(h for h in self.headers if h.name == name)
        return classify(header, self.arch.num_layers, eight_bit)


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


def _local(path: Path, source: str) -> ModelSpec:
    config = read_config(path)
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
    """The index's weight_map: tensor names to shard files of this folder."""
    found = read_json(index, MAX_INDEX_BYTES)
    weight_map = found.get("weight_map") if isinstance(found, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelError(f"{index}: not a safetensors index (no 'weight_map' object); re-download it")
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file.endswith(".safetensors") or "/" in file or (
                "\\" in file or file.startswith(".")):
            raise ModelError(f"{index}: tensor {name[:80]!r} maps to {str(file)[:80]!r}, not a "
                             ".safetensors file of this folder; re-download the index")
    return weight_map


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
        config = read_config(Path(hf.hf_hub_download(repo_id, "config.json")).parent)
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
    _check_layer_count(source, config, headers, config_where)
    arch = read_architecture(config, config_where)
    quant = _quantization(config, config_where)
    if not headers:
        raise ModelError(f"{source}: the safetensors files hold no tensors")
    _check_shapes(source, headers, arch)
    dropped = _nextn_layers(config)
    kept = [h for h in headers if not h.name.startswith(MTP_PREFIX)]
    slots, dtype_bytes_used = _slots(source, kept, arch, dropped)
    empty = [s.slot for s in slots[:arch.num_layers] if s.header_bytes == 0]
    if empty:
        raise ModelError(f"{source}: config.json says {arch.num_layers} layers but the weights have "
                         f"no tensors for layer(s) {_ranges(empty)}; config and weights disagree")
    return ModelSpec(source, where, arch, tuple(headers), _dtype(arch, dtype_bytes_used), quant,
                     config, slots)


def _check_layer_count(source: str, config: dict[str, Any], headers: list[TensorHeader],
                       config_where: str) -> None:
    """Before anything is built per layer: a config that claims more decoder layers than the
    weights hold contradicts them (and could make planning work in proportion to a made-up
    count). Weights that name no layers at all are left to the family's own reading."""
    claimed = claimed_layers(config)
    if claimed is None:
        return
    lists: dict[str, int] = {}  # each list of numbered layers (a family may keep several) -> length
    for h in headers:
        found = _LAYER_LIST.search(h.name)
        if found:
            where = h.name[:found.start(1)]
            lists[where] = max(lists.get(where, 0), int(found.group(1)) + 1)
    held = sum(lists.values())
    if lists and claimed > held:
        raise ModelError(f"{config_where} says {claimed} layers but the weights hold {held}; "
                         "config and weights disagree")


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
    if _VISION_HINT.search(name) and _VISION.search(name):
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


def _slots(source: str, headers: list[TensorHeader], arch: Architecture, dropped: int = 0) -> tuple[
        tuple[Slot, ...], dict[str, int]]:
    """Per-slot sums (layers 0..n-1, non-mapped -1, vision -2) and float bytes by dtype; the
    `dropped` layers after the last (next-token prediction) are not loaded, so not counted."""
    n = arch.num_layers
    eight_bit = EIGHT_BIT_MODULES.get(arch.model_type, ())
    sums = [[0] * 8 for _ in range(n + 2)]
    by_dtype: dict[str, int] = {}
    prefix = "model.layers."
    owned = {p: i for i, p in enumerate(arch.layer_prefixes) if not p.startswith(prefix)}
    for h in headers:
        name, layer = h.name, None
        if name.startswith(prefix):  # most tensors: skip the general classifier
            digits = name[13:name.find(".", 13)]
            number = digits.isascii() and digits.isdigit()  # not "²", which isdigit() accepts
            if number and len(digits) > 9:
                raise ModelError(f"{source}: tensor {short(name)} names layer {short(digits)}, more "
                                 "than any model has; the weights are corrupt")
            layer = int(digits) if number else None
        elif owned:  # layers mlx-lm keeps elsewhere (e.g. a second list of shared-KV layers)
            layer = _owner(name, owned)
        if layer is None:
            t = classify(h, n, eight_bit)
            layer, vision, isq = t.layer, t.part == "vision", t.isq
        else:
            vision, isq = False, _isq(h, eight_bit)
        if layer is not None and n <= layer < n + dropped:
            continue
        if layer is not None and layer >= n:
            raise ModelError(f"{source}: tensor {name!r} belongs to layer {layer}, but "
                             f"config.json says num_hidden_layers={n}; config and weights disagree")
        row = sums[layer if layer is not None else n + vision]
        nbytes = h.end - h.begin
        row[0] += nbytes
        if nbytes > row[7]:
            row[7] = nbytes
        width = _FLOAT_WIDTH.get(h.dtype)
        if width:
            by_dtype[h.dtype] = by_dtype.get(h.dtype, 0) + nbytes
            row[1] += nbytes // width
            row[2] += nbytes
            if isq:
                k = 3 if isq == "q" else 5
                row[k] += nbytes // width
                row[k + 1] += nbytes
    ids = [*range(n), NON_MAPPED_SLOT, VISION_SLOT]
    return tuple(Slot(i, *row) for i, row in zip(ids, sums, strict=True)), by_dtype


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
