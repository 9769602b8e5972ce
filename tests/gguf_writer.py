"""Write real GGUF v3 files (header, metadata and tensor data) for tests: float tensors and the
ggml block formats Q8_0 and Q4_0 (32 weights a block, a float16 scale first)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8}


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(v: Any) -> bytes:
    if isinstance(v, str):
        return struct.pack("<I", 8) + _string(v)
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<II", 4, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if all(isinstance(x, str) for x in v):
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_string(x) for x in v)
    if all(isinstance(x, float) for x in v):
        return struct.pack("<IIQ", 9, 6, len(v)) + struct.pack(f"<{len(v)}f", *v)
    return struct.pack("<IIQ", 9, 5, len(v)) + struct.pack(f"<{len(v)}i", *v)


def _blocks(scale: np.ndarray, payload: np.ndarray) -> bytes:
    """Each block: its float16 scale, then its packed values."""
    halves = scale.astype(np.float16)
    return b"".join(s.tobytes() + row.tobytes() for s, row in zip(halves, payload, strict=True))


def q8_0(w: np.ndarray) -> bytes:
    blocks = w.reshape(-1, 32).astype(np.float32)
    scale = np.abs(blocks).max(axis=1) / 127.0
    q = np.round(blocks / np.where(scale == 0, 1, scale)[:, None]).astype(np.int8)
    return _blocks(scale, q)


def q4_0(w: np.ndarray) -> bytes:
    blocks = w.reshape(-1, 32).astype(np.float32)
    extreme = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    scale = extreme / -8.0
    q = np.clip(np.round(blocks / np.where(scale == 0, 1, scale)[:, None]) + 8, 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)  # low nibbles: first half; high nibbles: second half
    return _blocks(scale, packed)


def encode(w: np.ndarray, kind: str) -> bytes:
    if kind == "F32":
        return w.astype(np.float32).tobytes()
    if kind == "F16":
        return w.astype(np.float16).tobytes()
    return q8_0(w) if kind == "Q8_0" else q4_0(w)


def write_gguf(path: Path, metadata: dict[str, Any],
               tensors: list[tuple[str, np.ndarray, str]], align: int = 32) -> Path:
    """tensors: (llama.cpp name, array in MLX order, type name)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(_string(k) + _value(v) for k, v in metadata.items())
    infos, data = b"", b""
    for name, array, kind in tensors:
        data += b"\0" * (-len(data) % align)
        dims = list(reversed(array.shape))
        infos += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", TYPES[kind], len(data))
        data += encode(array, kind)
    blob = head + infos
    path.write_bytes(blob + b"\0" * (-len(blob) % align) + data)
    return path


def header_bytes(metadata: dict[str, Any], tensors: list[tuple[str, list[int], int]],
                 version: int = 3) -> bytes:
    """A GGUF header alone (no tensor data), for malformed-file tests: (name, GGUF dims, type id)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    out += b"".join(_string(k) + _value(v) for k, v in metadata.items())
    for name, dims, kind in tensors:
        out += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, 0)
    return out
