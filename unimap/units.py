"""Byte sizes: parse what users type ("48GiB", "48GB", "512m", "1073741824"), print what we know.

Memory is an int of bytes everywhere in unimap; only this module turns it into text and back.
Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB, and the
single letters k, m, g, t) powers of 1024. Parsing raises ValueError; callers name the source.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

GiB = 1024**3
MiB = 1024**2


def parse_size(text: str) -> int:
    """Return the number of bytes `text` names; raise ValueError with the accepted forms."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{_shown(text)} is not a size; use bytes or a number with a unit such as 512MiB, 48GiB "
            "or 48GB"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value > MAX_BYTES:
        raise ValueError(f"{_shown(text)} is more memory than any machine has")
    return int(value)


MAX_BYTES = 1 << 60  # 1 EiB: past any machine's memory, far inside int64 arithmetic


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def format_bytes(n_bytes: int | None) -> str:
    """Binary units with two significant decimals: 1536 MiB -> '1.50 GiB'; None -> 'unknown'."""
    if n_bytes is None:
        return "unknown"
    sign = "-" if n_bytes < 0 else ""
    value = float(abs(n_bytes))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} B" if unit == "B" else f"{sign}{value:.2f} {unit}"
        value /= 1024
    return f"{sign}{value:.2f} TiB"
