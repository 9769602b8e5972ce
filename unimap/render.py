"""Plans as text bars and notebook HTML. No click or rich here: the CLI adds colour."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from unimap.units import format_bytes

if TYPE_CHECKING:
    from unimap.plan import DevicePlan, Plan

BAR_WIDTH = 40
SEGMENTS = (("weights", "█", "#4c72b0"), ("kv", "▓", "#dd8452"), ("activations", "▒", "#55a868"))


def _segments(d: DevicePlan) -> list[tuple[str, int]]:
    return [("weights", d.weight_bytes), ("kv", d.kv_bytes + d.kv_growth_bytes),
            ("activations", d.activation_bytes)]


def layer_span(layers: tuple[int, ...]) -> str:
    if not layers:
        return "-"
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def memory_bar(d: DevicePlan, width: int = BAR_WIDTH) -> str:
    """`[████▓▓▒····]` scaled to the device's budget; `!` marks use beyond the budget."""
    scale = max(d.budget_bytes, d.used_bytes, 1)
    cells = ""
    for (_, n_bytes), (_, mark, _) in zip(_segments(d), SEGMENTS, strict=True):
        cells += mark * round(n_bytes / scale * width)
    cells = cells[:width]
    if d.used_bytes > d.budget_bytes:
        cut = round(d.budget_bytes / scale * width)
        cells = cells[:cut] + "!" * (len(cells) - cut)
    return "[" + cells + "·" * (width - len(cells)) + "]"


def plan_html(plan: Plan) -> str:
    """A table per device with a stacked memory bar, for Jupyter's _repr_html_."""
    verdict = ("fits, all on the GPU" if plan.all_on_gpu else "fits" if plan.fits
               else f"does not fit: {plan.problem}")
    rows = []
    for d in plan.devices:
        scale = max(d.budget_bytes, d.used_bytes, 1)
        bar = "".join(
            f'<div title="{name} {format_bytes(n)}" style="width:{100 * n / scale:.2f}%;'
            f'background:{colour};height:12px"></div>'
            for (name, n), (_, _, colour) in zip(_segments(d), SEGMENTS, strict=True) if n > 0)
        rows.append(
            f"<tr><td>{html.escape(d.name)}</td><td>{html.escape(d.description)}</td>"
            f"<td>{layer_span(d.layers)}</td><td>{format_bytes(d.weight_bytes)}</td>"
            f"<td>{format_bytes(d.kv_bytes + d.kv_growth_bytes)}</td>"
            f"<td>{format_bytes(d.activation_bytes)}</td><td>{format_bytes(d.free_bytes)}</td>"
            f'<td style="min-width:200px"><div style="display:flex;width:100%;'
            f'background:#eee">{bar}</div></td></tr>')
    wired = "" if plan.wired_limit_bytes is None else (
        f"<p>wired limit: {format_bytes(plan.wired_limit_bytes)}</p>")
    ways = "".join(f"<li>{html.escape(w)}</li>" for w in plan.ways_out)
    return (f"<div><p><b>{html.escape(plan.model)}</b> on {html.escape(plan.machine.os_name)}: "
            f"{html.escape(verdict)}; peak {format_bytes(plan.peak_bytes)}</p>"
            "<table><tr><th>device</th><th>what</th><th>layers</th><th>weights</th><th>KV</th>"
            "<th>activations</th><th>free</th><th>memory</th></tr>" + "".join(rows) + "</table>"
            + wired + (f"<p>ways out:</p><ul>{ways}</ul>" if ways else "") + "</div>")
