"""usage -> DeviceUsage: what a model loaded by `unimap.load` holds on each device, beside its plan.

Weights are measured: the bytes of the arrays each device's stream materialized (the layers
placed there; the embeddings, head and vision tower on the parts' stream). The KV cache and
working sets come and go while generating, so those are the plan's. `usage_lines` renders the
result as plain text of at most 80 columns a line, for `unimap run` after generation (as
`ollama ps` shows where a model sits). Nothing here allocates or evaluates an array.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from unimap.checks import short
from unimap.errors import ArgumentTypeError
from unimap.plan import DevicePlan
from unimap.render import layer_span
from unimap.runtime import Mapped, decoder_layers, expert_modules
from unimap.units import format_bytes

LINE_COLUMNS = 80


@dataclass(frozen=True)
class DeviceUsage:
    name: str  # "gpu:0", "cpu", as in the plan
    layers: tuple[int, ...]  # measured: the decoder layers this device's stream materialized
    weight_bytes: int  # measured: bytes of the parameters materialized on this device
    planned: DevicePlan

    @property
    def other_bytes(self) -> int:
        """The plan's bytes beyond the weights: KV cache and working set (or, where larger, the
        loading transient)."""
        return self.planned.used_bytes - self.planned.weight_bytes

    @property
    def used_bytes(self) -> int:
        """Measured weights plus the plan's KV cache and working set."""
        return self.weight_bytes + self.other_bytes

    @property
    def budget_bytes(self) -> int:
        return self.planned.budget_bytes


def device_usage(model: Any) -> list[DeviceUsage]:
    """Each device of the plan that holds something: its measured weights beside the plan's.
    `model` is the first value `unimap.load` returns."""
    mapped = getattr(model, "_unimap", None)
    if not isinstance(mapped, Mapped):
        raise ArgumentTypeError(f"device_usage() takes a model loaded by unimap.load, not "
                                f"{short(model)}; load it with unimap.load(...)")
    plan, placement = mapped.plan, mapped.placement
    gpu = next((d.name for d in plan.devices if d.name != "cpu"), "gpu")

    def device(stream: Any) -> str:
        return "cpu" if stream == placement.cpu_stream else gpu

    seen: set[int] = set()  # an array shared by two modules (tied weights) counts once
    weights: dict[str, int] = {}
    layers: dict[str, list[int]] = {}
    for index, layer in enumerate(decoder_layers(model)):
        name = device(placement.layer_streams[index])
        if index in placement.cpu_experts:  # its routed experts live on the CPU
            moved = sum(_nbytes(m.parameters(), seen) for m in expert_modules(layer))
            weights["cpu"] = weights.get("cpu", 0) + moved
        weights[name] = weights.get(name, 0) + _nbytes(layer.parameters(), seen)
        layers.setdefault(name, []).append(index)
    parts = device(mapped.parts_stream)  # everything the layers do not hold
    weights[parts] = weights.get(parts, 0) + _nbytes(model.parameters(), seen)
    return [DeviceUsage(d.name, tuple(layers.get(d.name, ())), weights.get(d.name, 0), d)
            for d in plan.devices if d.used_bytes or weights.get(d.name)]


def _nbytes(tree: Any, seen: set[int]) -> int:
    from mlx.utils import tree_flatten

    total = 0
    arrays: list[Any] = [value for _, value in tree_flatten(tree)]  # type: ignore[str-unpack]
    for array in arrays:
        if id(array) not in seen:
            seen.add(id(array))
            total += array.nbytes
    return total


# ---------------------------------------------------------------- text


_HEADS = ("device", "layers", "weights", "planned", "KV+activ.", "used", "budget")


def usage_lines(usages: Iterable[DeviceUsage], peak_bytes: int) -> list[str]:
    """Plain text, at most 80 columns a line. One device: one line (weights measured against
    the plan, the measured peak against the budget). Several: a table of measured weights,
    planned weights, planned KV cache and working set, used and budget, then the peak."""
    found = list(usages)
    peak = format_bytes(peak_bytes)
    if len(found) == 1:
        u = found[0]
        weights = format_bytes(u.weight_bytes)
        versus = ("as planned" if u.weight_bytes == u.planned.weight_bytes
                  else f"(plan {format_bytes(u.planned.weight_bytes)})")
        return [f"{u.name}: weights {weights} {versus}; peak {peak} of "
                f"{format_bytes(u.budget_bytes)}"]
    rows = [list(_HEADS)] + [[u.name, layer_span(u.layers), *(format_bytes(n) for n in (
        u.weight_bytes, u.planned.weight_bytes, u.other_bytes, u.used_bytes, u.budget_bytes))]
        for u in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADS))]
    gap = "  " if sum(widths) + 2 * (len(widths) - 1) <= LINE_COLUMNS else " "
    lines = [gap.join(cell.ljust(w) if i < 2 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return [*lines, f"peak {peak} measured, all devices together; KV+activ. as planned"]
