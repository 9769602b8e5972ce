"""A cache on disk of the structures read from mlx-lm's models (unimap/structure.py), so that
planning a model again imports neither mlx nor mlx-lm (about 0.7 s of a 1 s `unimap plan`).

An entry is keyed by the config's content, the installed mlx, mlx-lm and mlx-vlm, unimap's version and
the reader's own source: a structure is never trusted across versions. Each is one JSON file,
written atomically, with a checksum of its content. A missing, unreadable, stale or malformed
entry is a miss (and is written anew), never an error: the cache only saves time. Only what was
read successfully is kept. The folder is UNIMAP_CACHE_DIR, else $XDG_CACHE_HOME/unimap, else
~/.cache/unimap; the oldest entries go past MAX_ENTRIES.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from unimap.checks import read_json
from unimap.errors import ModelError
from unimap.families import LayerCache
from unimap.structure import Structure

FORMAT = 4  # the layout of an entry; a change makes every older entry a miss
MAX_ENTRY_BYTES = 16 * 1024 * 1024  # a structure is tens of kB (one shape per 2-D parameter)
MAX_ENTRIES = 512  # distinct configs planned; the fuzzer makes thousands


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where entries live: UNIMAP_CACHE_DIR, else $XDG_CACHE_HOME/unimap, else ~/.cache/unimap."""
    if env.get("UNIMAP_CACHE_DIR"):
        return Path(env["UNIMAP_CACHE_DIR"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unimap"


def structure_key(config: Mapping[str, Any]) -> str:
    """The entry for `config` read by this unimap with the installed mlx, mlx-lm and mlx-vlm."""
    from unimap import __version__

    stamp = {"format": FORMAT, "config": config, "unimap": __version__, "reader": _reader(),
             "mlx": _version("mlx"), "mlx-lm": _version("mlx-lm"),
             "mlx-vlm": _version("mlx-vlm")}
    return hashlib.sha256(_canonical(stamp)).hexdigest()


def load_structure(key: str) -> Structure | None:
    """The cached structure for `key`, or None (and the entry is left to be rewritten)."""
    path = cache_dir() / f"structure-{key}.json"
    try:
        found = _decode(read_json(path, MAX_ENTRY_BYTES), key)
    except (ModelError, OSError, RecursionError):  # RecursionError: nested deep, hashed again
        return None
    if found is not None:
        with contextlib.suppress(OSError):  # recently used: pruned last (a read-only cache is fine)
            os.utime(path)
    return found


def store_structure(key: str, structure: Structure) -> None:
    """Write the entry for `key` atomically (a rename); any failure leaves the cache as it was."""
    folder = cache_dir()
    payload = asdict(structure)
    entry = {"format": FORMAT, "key": key, "sha256": hashlib.sha256(_canonical(payload)).hexdigest(),
             "structure": payload}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".structure-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(_canonical(entry))
            os.replace(temporary, folder / f"structure-{key}.json")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        _prune(folder)
    except OSError:
        pass


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("structure-*.json"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:max(0, len(entries) - MAX_ENTRIES)]:
        with contextlib.suppress(OSError):
            old.unlink()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@cache
def _reader() -> str:
    """A digest of structure.py: a changed reader never reads an older reader's entries."""
    import unimap.structure

    return hashlib.sha256(Path(unimap.structure.__file__).read_bytes()).hexdigest()


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return ""


# ---------------------------------------------------------------- an entry back to a Structure


def _decode(entry: Any, key: str) -> Structure | None:
    """The Structure an entry holds, when it is whole and for `key`; None for anything else."""
    if not (isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("key") == key):
        return None
    payload = entry.get("structure")
    if not isinstance(payload, dict) or entry.get("sha256") != hashlib.sha256(
            _canonical(payload)).hexdigest():
        return None
    try:
        structure = Structure(**{name: _FIELDS[name](value) for name, value in payload.items()})
    except (KeyError, TypeError, ValueError):  # a field unknown, missing or of the wrong type
        return None
    # every field there, nothing more (a missing one would take its default)
    return structure if _canonical(asdict(structure)) == _canonical(payload) else None


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(value)
    return value


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(value)
    return value


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(value)
    return value


def _tuple(item: Any) -> Any:
    def read(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise TypeError(value)
        return tuple(item(v) for v in value)
    return read


def _cache(value: Any) -> LayerCache:
    if type(value) is not dict:
        raise TypeError(value)
    window = value["window"]
    return LayerCache(
        kind=_text(value["kind"]), token_elements=_int(value["token_elements"]),
        state_elements=_int(value["state_elements"]), window=None if window is None else _int(window),
        head_dim=_int(value["head_dim"]), quantizable=_flag(value["quantizable"]),
        state_float32=_flag(value["state_float32"]), state_heads=_int(value["state_heads"]),
        chunked=_flag(value["chunked"]), state_dims=_pair(value["state_dims"]))


def _pair(value: Any) -> tuple[int, int]:
    first, second = _tuple(_int)(value)
    return first, second


def _shape(value: Any) -> tuple[str, tuple[int, ...]]:
    name, shape = _tuple(lambda v: v)(value)
    return _text(name), _tuple(_int)(shape)


_FIELDS: dict[str, Any] = {
    "module": _text, "num_layers": _int, "hidden_size": _int, "vocab_size": _int,
    "num_heads": _int, "num_kv_heads": _int, "head_dim": _int, "mlp_widths": _tuple(_int),
    "caches": _tuple(_cache), "num_experts": _int, "experts_per_token": _int,
    "expert_width": _int, "shared_width": _int, "sparse_layers": _tuple(_flag),
    "layer_prefixes": _tuple(_text), "matrix_shapes": _tuple(_shape), "kv_bits_refusal": _text,
    "layer_heads": _tuple(_int), "attention_reads": _tuple(_int),
}
