"""Manual device maps (deprecated, still accepted): `-n 16`, `-n "0:16;1:16"`, `["0:16", "1:16"]`.

A map is an ordered list of (GPU ordinal, layer count): the first layers go to the first ordinal
listed, and so on; whatever is left runs on the CPU. Parsing checks the text alone; the planner
checks it against the machine and the model. Nonsense is a ConfigError saying what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from unimap.checks import MAX_LAYERS, short
from unimap.errors import ConfigError

DeviceMap = tuple[tuple[int, int], ...]  # ((ordinal, layers), ...)
FORMS = 'a layer count ("16"), ordinal:layers pairs ("0:16;1:16"), or "auto"'
MAX_GPUS = 1024  # ordinals past any machine's GPU count (the planner checks the machine's own)
_WHOLE = re.compile(r"^-?\d+$")
_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\S+?)\s*$")


def parse_device_map(value: str | int | Sequence[str] | None) -> DeviceMap | None:
    """None for automatic mapping ("auto" or None); a DeviceMap otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"device map {short(value)}: use {FORMS}")
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
        raise ConfigError(f"device map {short(value)}: use {FORMS}")
    return _pairs(parts, value)


def _pairs(parts: list[object], whole: object) -> DeviceMap:
    pairs: list[tuple[int, int]] = []
    seen: set[int] = set()
    for part in parts:
        match = _PAIR.match(part) if isinstance(part, str) else None
        if match is None:
            raise ConfigError(f"device map {short(whole)}: {short(part)} is not ordinal:layers; use {FORMS}")
        digits = match.group(1)
        ordinal, count = int(digits) if len(digits) <= 6 else MAX_GPUS + 1, _count(match.group(2), whole)
        if not 0 <= ordinal <= MAX_GPUS:
            raise ConfigError(f"device map {short(whole)}: GPU ordinal {short(digits)} is not from 0 "
                              f"to {MAX_GPUS}")
        if ordinal in seen:
            raise ConfigError(f"device map {short(whole)}: GPU ordinal {ordinal} appears twice")
        seen.add(ordinal)
        pairs.append((ordinal, count))
    if not pairs:
        raise ConfigError(f"device map {short(whole)} is empty; use {FORMS}")
    return tuple(pairs)


def _count(text: object, whole: object) -> int:
    digits = str(text).strip()
    if not _WHOLE.match(digits):
        raise ConfigError(f"device map {short(whole)}: layer count {short(text)} is not a whole number; "
                          f"use {FORMS}")
    if len(digits) > 6 or not 0 <= int(digits) <= MAX_LAYERS:  # no int() of thousands of digits
        shown = digits if len(digits) <= 20 else digits[:17] + "..."
        raise ConfigError(f"device map {short(whole)}: layer count {shown} is not from 0 to {MAX_LAYERS}")
    return int(digits)


def format_device_map(device_map: DeviceMap) -> str:
    return ";".join(f"{ordinal}:{count}" for ordinal, count in device_map)
