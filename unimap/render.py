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
    """Layer indices as runs: "0-15", "3", "1, 3, 5-7"; "-" for none."""
    if not layers:
        return "-"
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def device_layers(d: DevicePlan) -> str:
    """The layers a device runs, then those whose routed experts alone it holds."""
    if not d.expert_layers:
        return layer_span(d.layers)
    experts = f"experts {layer_span(d.expert_layers)}"
    return experts if not d.layers else f"{layer_span(d.layers)}, {experts}"


def speed_line(plan: Plan) -> str:
    """The plan's predicted decode speed in words, or "" when a bandwidth is unknown."""
    speed = plan.decode
    rate = speed.tokens_per_s if speed else None
    if speed is None or rate is None:
        return ""
    reads = ", ".join(f"{name} {format_bytes(n)}" for name, n in speed.read_bytes.items() if n)
    return (f"decode at most {rate:.1f} tokens/s at the planned context (reads per token: {reads}; "
            f"{speed.crossings} hand-overs between devices)")


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


_HTML_HEADS = ("device", "what", "layers", "weights", "KV", "activations", "used", "budget",
               "free", "memory")
_RED, _GREEN = "#c62828", "#2e7d32"


def _size(n_bytes: int) -> str:
    return html.escape(format_bytes(n_bytes))


def plan_html(plan: Plan) -> str:
    """The plan for Jupyter's _repr_html_: the verdict, a row per device (what it holds, used
    of budget, free, and a stacked bar scaled to the budget), where the parts go, the predicted
    peak and wired limit, notes and ways out. Every text from the plan is escaped."""
    e = html.escape
    said = "fits, all on the GPU" if plan.all_on_gpu else "fits" if plan.fits else "does not fit"
    verdict = (f'<b style="color:{_GREEN if plan.fits else _RED}">{said}</b>'
               + ("" if plan.fits else f": {e(plan.problem)}"))
    est = plan.estimate
    placed = f"non-mapped parts ({_size(est.non_mapped_weight_bytes)}) on {e(plan.non_mapped_device)}"
    if plan.vision_device:
        placed += f"; vision tower ({_size(est.vision_weight_bytes)}) on {e(plan.vision_device)}"
    wired = ("" if plan.wired_limit_bytes is None
             else f"; wired limit {_size(plan.wired_limit_bytes)}")
    notes = "".join(f"<li>{e(n)}</li>" for n in plan.notes)
    ways = "".join(f"<li>{e(w)}</li>" for w in plan.ways_out)
    heads = "".join(f"<th>{h}</th>" for h in _HTML_HEADS)
    return (f"<div><p><b>{e(plan.model)}</b> on {e(plan.machine.os_name)} "
            f"({e(plan.machine.backend)}): {verdict}</p>"
            f"<table><thead><tr>{heads}</tr></thead><tbody>"
            + "".join(_html_row(d) for d in plan.devices) + "</tbody></table>"
            f"<p>{placed}; predicted peak {_size(plan.peak_bytes)} (MLX memory limit "
            f"{_size(plan.memory_limit_bytes)}){wired}</p>"
            + (f"<p>{e(speed_line(plan))}</p>" if speed_line(plan) else "")
            + (f"<p>notes:</p><ul>{notes}</ul>" if notes else "")
            + (f"<p>ways out:</p><ul>{ways}</ul>" if ways else "") + "</div>")


def _html_row(d: DevicePlan) -> str:
    """One device: its figures, then its memory as a bar; over budget, the bar is outlined red."""
    scale = max(d.budget_bytes, d.used_bytes, 1)
    bar = "".join(
        f'<div title="{name} {_size(n)}" style="width:{100 * n / scale:.2f}%;'
        f'background:{colour};height:12px"></div>'
        for (name, n), (_, _, colour) in zip(_segments(d), SEGMENTS, strict=True) if n > 0)
    over = f"outline:2px solid {_RED};" if d.used_bytes > d.budget_bytes else ""
    free = _size(d.free_bytes) if d.free_bytes >= 0 else (
        f'<span style="color:{_RED}">{_size(d.free_bytes)}</span>')
    figures = [_size(n) for n in (d.weight_bytes, d.kv_bytes + d.kv_growth_bytes,
                                  d.activation_bytes, d.used_bytes, d.budget_bytes)] + [free]
    title = html.escape(f"used {format_bytes(d.used_bytes)} of {format_bytes(d.budget_bytes)}")
    return (f"<tr><td>{html.escape(d.name)}</td><td>{html.escape(d.description)}</td>"
            f"<td>{html.escape(device_layers(d))}</td>"
            + "".join(f'<td style="text-align:right">{f}</td>' for f in figures)
            + f'<td style="min-width:200px"><div title="{title}" style="display:flex;width:100%;'
            f'background:#eee;{over}">{bar}</div></td></tr>')
