"""Read and check safetensors headers, never tensor data.

The format: 8 bytes little-endian u64 N, then N bytes of JSON mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the first byte after the
header), plus an optional "__metadata__" of strings; tensor data follows. Reading a header costs
one small read, so a sparse file with a valid header and no data inspects fine. Every way a
header can lie (length past the end of the file, bad JSON, unknown dtype, offsets out of range or
overlapping, sizes that disagree with shape x dtype) is a ModelError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import stat
import struct
from collections.abc import Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from unimap.checks import decode_json, quick_json, short
from unimap.errors import ModelError

# bytes per element of every dtype safetensors defines with a whole-byte width
DTYPE_BYTES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# The safetensors library allows 100 MB; a real header is at most a few MB (~100 bytes a tensor),
# and parsing one takes several times its size in memory
MAX_HEADER_BYTES = 32 * 1024 * 1024
MAX_TENSOR_DIMS = 8  # model tensors have at most 5 (a video patch embedding's convolution)
MAX_TENSOR_BYTES = 1 << 46  # 64 TiB: past any one tensor of any model, far below int64 overflow


class TensorHeader(NamedTuple):
    """One tensor as its header describes it (a tuple: models have tens of thousands)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # data offsets, relative to the end of the header
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, TensorHeader], dict[str, str]]:
    """Tensors and metadata of one .safetensors file, checked against the file's size."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # checked before opening: a FIFO would wait for a writer
            raise ModelError(f"{path}: not a regular file; a safetensors file must be one")
        size = info.st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelError(f"{path}: truncated safetensors file ({size} bytes; the header "
                                 "length alone takes 8). Re-download the file.")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES and 8 + length <= size:
                raise ModelError(f"{path}: header length {length} is more than a safetensors header "
                                 f"has ({MAX_HEADER_BYTES}): the file is not safetensors. Re-download it.")
            if 8 + length > size:
                raise ModelError(f"{path}: header length {length} runs past the end of the file "
                                 f"({size} bytes): the file is truncated or not safetensors. "
                                 "Re-download it.")
            raw = f.read(length)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) < length:
        raise ModelError(f"{path}: truncated header ({len(raw)} of {length} bytes). Re-download it.")
    quick = quick_json(raw)
    if quick is not None:  # what parse_header takes from it, the standard library reads alike
        with contextlib.suppress(ModelError):
            return parse_header(quick, str(path), data_bytes=size - 8 - length)
    header = decode_json(raw, f"{path}: the safetensors header", "re-download the file")
    return parse_header(header, str(path), data_bytes=size - 8 - length)


def parse_header(
    header: Any, where: str, data_bytes: int | None = None
) -> tuple[dict[str, TensorHeader], dict[str, str]]:
    """Check a decoded header. `data_bytes` (the data section's size) is None when unknown,
    as for headers fetched from the Hugging Face Hub."""
    if not isinstance(header, dict):
        raise ModelError(f"{where}: the safetensors header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelError(f"{where}: __metadata__ is not an object of strings (as safetensors requires); "
                         "re-download the file")
    tensors: dict[str, TensorHeader] = {}
    widths, new = DTYPE_BYTES, tuple.__new__
    in_order, last_end = True, 0  # writers lay tensors out in header order, back to back
    for name, entry in header.items():
        try:  # the common, valid case, checked inline (models have tens of thousands of tensors)
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = widths[dtype] if len(shape) <= MAX_TENSOR_DIMS else -1
            if count > 0:  # a long shape is left to _entry: no product of thousands of numbers
                for dim in shape:
                    count = count * dim if type(dim) is int and dim >= 0 else -1
            if 0 <= count <= MAX_TENSOR_BYTES and type(begin) is int and type(end) is int \
                    and 0 <= begin <= end and end - begin == count:
                if begin < last_end:
                    in_order = False
                last_end = end
                tensors[name] = new(TensorHeader, (name, dtype, tuple(shape), begin, end))
                continue
        except (TypeError, KeyError, ValueError):
            pass
        if name != "__metadata__":  # its values are strings: it never passes the check above
            tensors[name] = _entry(name, entry, where)  # raises with the precise complaint
    if not (in_order and (data_bytes is None or last_end <= data_bytes)):
        _check_layout(tensors, where, data_bytes)  # finds the first fault in data order
    return tensors, dict(metadata)


def _entry(name: str, entry: Any, where: str) -> TensorHeader:
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: tensor {name!r} is not described by an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        known = ", ".join(DTYPE_BYTES)
        raise ModelError(f"{where}: tensor {name!r} has unknown dtype {short(dtype)} (known: {known})")
    if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS
            and all(_is_count(d) and d <= MAX_TENSOR_BYTES for d in shape)):
        raise ModelError(f"{where}: tensor {name!r} has an invalid shape {short(shape)} (at most "
                         f"{MAX_TENSOR_DIMS} dimensions of whole numbers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ModelError(f"{where}: tensor {name!r} has invalid data_offsets {short(offsets)}")
    tensor = TensorHeader(name, dtype, tuple(shape), offsets[0], offsets[1])
    expected = DTYPE_BYTES[dtype]
    for dim in tensor.shape:  # stops growing past the limit: no product of huge numbers
        expected = min(expected * dim, MAX_TENSOR_BYTES + 1)
    if expected > MAX_TENSOR_BYTES:
        raise ModelError(f"{where}: tensor {name!r} of shape {short(shape)} would take more than "
                         f"{MAX_TENSOR_BYTES} bytes: the header is corrupt")
    if tensor.nbytes != expected:
        raise ModelError(f"{where}: tensor {name!r} spans {tensor.nbytes} bytes but shape "
                         f"{list(tensor.shape)} of {dtype} needs {expected}: the header is corrupt")
    return tensor


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(tensors: dict[str, TensorHeader], where: str, data_bytes: int | None) -> None:
    """Tensors in data order must not overlap nor run past the data section. parse_header skips
    this when its own pass saw each tensor begin at or after the one before it ends and the
    last end within the data: then the header order is the data order and nothing overlaps."""
    previous: TensorHeader | None = None
    for tensor in sorted(tensors.values(), key=itemgetter(3, 4)):  # by (begin, end)
        if data_bytes is not None and tensor.end > data_bytes:
            raise ModelError(f"{where}: tensor {tensor.name!r} ends at byte {tensor.end} of the "
                             f"data section, which has only {data_bytes}: the file is truncated. "
                             "Re-download it.")
        if previous is not None and tensor.begin < previous.end and tensor.nbytes > 0:
            raise ModelError(f"{where}: tensors {previous.name!r} and {tensor.name!r} overlap "
                             f"(bytes {tensor.begin}-{previous.end}): the header is corrupt")
        if tensor.nbytes > 0:
            previous = tensor


def write_header(path: Path, tensors: Mapping[str, tuple[str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> int:
    """Write a sparse safetensors file: a real header, and data that is only a hole.

    Used by tests and tools to build fixtures of any size on a small disk. Returns the file size.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer pads to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset
