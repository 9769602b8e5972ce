"""Manual device maps (deprecated, still accepted): `-n 16`, `-n "0:16;1:16"`, `["0:16", "1:16"]`.

A map is an ordered list of (GPU ordinal, layer count): the first layers go to the first ordinal
listed, and so on; whatever is left runs on the CPU. Parsing checks the text alone; the planner
checks it against the machine and the model. Nonsense is a ConfigError saying what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from unimap.errors import ConfigError

DeviceMap = tuple[tuple[int, int], ...]  # ((ordinal, layers), ...)
FORMS = 'a layer count ("16"), ordinal:layers pairs ("0:16;1:16"), or "auto"'
_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\S+?)\s*$")


def parse_device_map(value: str | int | Sequence[str] | None) -> DeviceMap | None:
    """None for automatic mapping ("auto" or None); a DeviceMap otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"device map {value!r}: use {FORMS}")
    if isinstance(value, int):
        return ((0, _count(str(value), value)),)
    if isinstance(value, str):
        text = value.strip()
        if ":" not in text and ";" not in text:
            return ((0, _count(text, text)),)
        parts: list[object] = list(text.split(";"))
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f"device map {value!r}: use {FORMS}")
    return _pairs(parts, value)


def _pairs(parts: list[object], whole: object) -> DeviceMap:
    pairs: list[tuple[int, int]] = []
    for part in parts:
        match = _PAIR.match(part) if isinstance(part, str) else None
        if match is None:
            raise ConfigError(f"device map {whole!r}: {part!r} is not ordinal:layers; use {FORMS}")
        ordinal, count = int(match.group(1)), _count(match.group(2), whole)
        if ordinal < 0:
            raise ConfigError(f"device map {whole!r}: GPU ordinal {ordinal} is negative")
        if any(ordinal == seen for seen, _ in pairs):
            raise ConfigError(f"device map {whole!r}: GPU ordinal {ordinal} appears twice")
        pairs.append((ordinal, count))
    if not pairs:
        raise ConfigError(f"device map {whole!r} is empty; use {FORMS}")
    return tuple(pairs)


def _count(text: object, whole: object) -> int:
    try:
        count = int(str(text))
    except ValueError:
        raise ConfigError(f"device map {whole!r}: layer count {text!r} is not a whole number; "
                          f"use {FORMS}") from None
    if count < 0:
        raise ConfigError(f"device map {whole!r}: layer count {count} is negative")
    return count


def format_device_map(device_map: DeviceMap) -> str:
    return ";".join(f"{ordinal}:{count}" for ordinal, count in device_map)
