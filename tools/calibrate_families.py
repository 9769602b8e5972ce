"""Measure every mlx-lm family the activation coefficients were not fitted on, on twins.

Usage: python tools/calibrate_families.py [--write] [--only FAMILY,...] [--save RUNS.json[.gz]]
       python tools/calibrate_families.py --refit RUNS.json[.gz] [--write] [--only FAMILY,...]
                                          [--twins KIND,... --save RUNS.json[.gz]]

The runs behind unimap/family_calibration.py are kept in tools/family_runs.json.gz, so
`--refit tools/family_runs.json.gz --write` redoes the fits without measuring.

For each family of tests/tiny_families.py whose module has no measured coefficients in
unimap/calibration.py, a tiny random checkpoint is built through mlx-lm's own Model class,
loaded through unimap (all on one device) and run on prompts of 8 to 64 tokens, of 160 and 600
tokens (batch 1 and 2, prefill chunks of 128, so several chunks follow cached tokens) and of 252
to 2049 tokens in one chunk each (mlx-lm's default chunk is 2048), each plus 4 decoded tokens.
The same runs go through an 8-layer twin of families with recurrent state; some of them through
twins 4 times as wide (4 times the experts, twice the top-k; and 4 times the state heads), with
4 times the MLP widths, with 4 times the query heads and with 4 times the head dims (where the
config sets its head dims: queries wider than the hidden width; that twin in bfloat16 too; the
state-heavy and head-dim twins of families with a recurrent state also on a chunk of 1000
tokens), in bfloat16, and 8 times as wide (REAL_WIDTH: hidden 512, head dims 128, widths like
real models'; 252 and 2044 tokens);
SSD families' tiny twin also with 4 times its state size; and every family's tiny twin (8 layers
deep where its layers differ in kind) on a prompt of 8196 tokens, 4 chunks (LONG_RUNS).
Each run is compared with the plan made with the largest coefficients of every measured family
and no fit (measured peak against it, the price of the chunk's hidden, query, key/value and MLP
arrays by kind, and the exact scores). The family's fit is its shares of that price, one for
each group of kinds of array its twins move apart (share_groups: hidden, query, key/value, MLP)
plus extras in units that grow with the model as those arrays do
(unimap.estimate.extra_units): the least that covers every run of every twin (see fit for the
shares' floor; a gated-delta scan keeps at least the states per token the op holds,
unimap.estimate.DELTA_STATES_PER_TOKEN). A hybrid whose recurrent states live in layers
without attention is fitted with its scan's states and its scores in phases apart
(fit_apart). --write regenerates unimap/family_calibration.py with the machine and versions
(with --only, the other families keep what they had); --save keeps every run's measurement so
that --refit can fit again without measuring.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# (prompt tokens, batch, prefill chunk): prompts of a few tokens (where fixed arrays and one
# scan block decide), several chunks after cached tokens, a batch, and prompts in one chunk each,
# up to a whole chunk of mlx-lm's default 2048 (the chunk every long prompt runs in), whose keys
# are all the plan's tokens, and one a few tokens short of it (2044 + 4 decoded fill a plan of
# 2048 exactly; a chunk that is not whole can take more: minimax_m3_vl's 2043 tokens held 5 %
# more than its 2048)
RUNS = ((8, 1, 2048), (24, 1, 2048), (64, 1, 2048), (160, 1, 128), (600, 2, 128),
        (252, 1, 2048), (300, 1, 2048), (1000, 1, 2048), (2044, 1, 2048), (2049, 1, 2048))
# on the long twin (the tiny twin, 8 layers deep where its layers differ in kind or keep a
# recurrent state: longer): a prompt 4 times mlx-lm's
# chunk, its last chunk attending to 4 times its tokens. Fitted to chunks of at most 2048 keys,
# DeepSeek V3's twin was under at 8,192 tokens (0.994) and 16,384 (0.987), GLM-4.7-Flash's at
# 8,192 (0.983): MLA's rope scores and the attention's own stay apart there, where at 2,048
# keys MLX reuses one's buffer for the other.
LONG_RUNS = ((8196, 1, 2048),)
# on the wide twin (slower: a mamba scan at 4 times the width takes a minute a run): a few
# tokens, a part of a scan block, several chunks in a batch, and a whole chunk
WIDE_RUNS = ((8, 1, 2048), (64, 1, 2048), (252, 1, 2048), (600, 2, 128), (2049, 1, 2048))
# on the state-heavy twin and the twin with 4 times the head dims of a family with a recurrent
# state (whose state grows as the head dims squared, its attention heads as they were), also a
# chunk of 1000 tokens: a scan that keeps a state per token (gated delta's op-by-op path,
# Mamba-1) holds them for the whole chunk, where mlx-lm's blocked scans keep a block's (at most
# SCAN_STEP_TOKENS). Without a chunk between a block and 2049 tokens, whose scores are large, a
# fit could price the states per token with the blocks' unit and the scores': Kimi-Linear's
# twin twice as wide with 4 times its head dims was at 0.756 of its peak at 700 tokens (one
# state per token alive, 0.55 priced).
STATE_RUNS = WIDE_RUNS[:4] + ((1000, 1, 2048),) + WIDE_RUNS[4:]
# on the twin with 4 times the MLP widths, and the tiny twin in bfloat16 (where the hidden-wide
# float32 arrays weigh twice as much against the others as in float32)
MIX_RUNS = ((64, 1, 2048), (252, 1, 2048), (600, 2, 128), (2049, 1, 2048))
BF16_RUNS = ((64, 1, 2048), (252, 1, 2048), (2049, 1, 2048))
# on the twin at widths like real models' (REAL_WIDTH times the tiny twin's: hidden 512, head
# dims 128 where the tiny twin's are 16), a part of a chunk and a whole chunk: there the arrays a
# chunk makes, not the fixed ones, set the peak, and the share of the price a family holds is the
# one real models hold (tiny twins hold less of it: what they make is sized by per-op minimums)
REAL_RUNS = ((252, 1, 2048), (2044, 1, 2048))
REAL_WIDTH, REAL_EXPERTS = 8, 2
DECODE = 4
OUT = ROOT / "unimap" / "family_calibration.py"


class Run(NamedTuple):
    """One run of a twin, per token of its chunk: the extra's units at that chunk and keys (x 4
    bytes), what the plan without the fit missed (negative: to spare), the priced base arrays,
    the measured peak."""

    basis: str
    twin: str
    tokens: int
    batch: int
    step: int
    units: list[float]
    missing: float
    base: float
    peak: float
    # the plan's exact scores and masks per chunk token, and the base by kind of array (hidden,
    # query, key/value, MLP; unimap.estimate.base_array_parts); empty in runs saved before
    scores: float = 0.0
    parts: tuple[float, ...] = ()


def measure(family: str, work: Path, deep: bool = True, only: set[str] | None = None) -> list[Run]:
    """Every run of every twin of the family (of the kinds in `only`, when given), measured
    against the plan without its fit."""
    import mlx.core as mx
    from tiny_families import tiny_config
    from tiny_models import stand_in_machine, write_random_model

    import unimap
    from unimap.device_map import parse_device_map
    from unimap.estimate import SSD, Options, base_array_bytes, base_array_parts, extra_units
    from unimap.generate import make_cache
    from unimap.inspect import dtype_bytes
    from unimap.plan import make_plan

    machine = stand_in_machine()
    path = write_random_model(work / family, tiny_config(family))
    spec = unimap.inspect(path)
    state = has_state(spec.arch)
    kind = basis(spec.arch)
    # (kind, how to build it, its runs, whether the family's fit may go on without it)
    kinds: list[tuple[str, Callable[[], Path | None], tuple[tuple[int, int, int], ...], bool]] = [
        ("tiny", lambda: path, RUNS, False),
        # and 8 layers: a hybrid's attention is not only its last
        ("deep", lambda: deeper(family, work) if deep and state else None, RUNS, False),
        ("wide", lambda: wider(family, work), WIDE_RUNS, True),
        ("long", lambda: longer(family, work, state or mixed_kinds(spec.arch)), LONG_RUNS, True),
        # and one whose state outweighs its hidden width as real ones do
        ("wide-state", lambda: wider(family, work, STATE_HEADS) if state else None, STATE_RUNS, True),
        # and an SSD scan's state 4 times its head dim, as published ones are (only SSD families)
        ("state-size", lambda: sized(family, work) if kind == SSD else None, WIDE_RUNS, True),
        ("mix", lambda: mixed(family, work), MIX_RUNS, True),
        # and 4 times the query heads: queries wider than the hidden width, as in real models
        ("heads", lambda: headed(family, work), WIDE_RUNS, True),
        # and 4 times the head dims: keys and values as wide as those queries
        ("hd", lambda: head_dims(family, work), STATE_RUNS if state else WIDE_RUNS, True),
        # and that twin in bfloat16: queries and keys wider than the hidden width where some
        # families keep arrays of them in float32 that a bfloat16 price counts at 2 bytes
        ("hd-bf16", lambda: head_dims(family, work, "bfloat16"), BF16_RUNS, True),
        ("bf16", lambda: half(family, work), BF16_RUNS, True),
        ("real", lambda: real_width(family, work), REAL_RUNS, True),
    ]
    twins = [(p, some, optional) for kind, make, some, optional in kinds
             if (only is None or kind in only) and (p := make()) is not None]
    runs: list[Run] = []
    for path, some, optional in twins:
        done: list[Run] = []
        try:
            for tokens, batch, step in some:
                spec = unimap.inspect(path)
                options = Options(max_seq_len=tokens + DECODE, max_batch_size=batch,
                                  prefill_step_tokens=step)
                plan = make_plan(spec, machine, options, parse_device_map("auto"))
                model, _, _ = unimap.load(path, planned=plan)
                model._unimap.limits.release()  # the need itself, not what MLX's limit holds it to
                gc.collect()
                mx.clear_cache()
                mx.reset_peak_memory()
                run(model, make_cache(model), tokens, batch, step)
                peak = mx.get_peak_memory()
                chunk, n = min(step, tokens - 1), batch * min(step, tokens - 1)
                d = dtype_bytes(plan.estimate.dtype)
                units = [4 * u for u in extra_units(spec.arch, kind, chunk, tokens + DECODE, d < 4)]
                scores = plan.estimate.activation_terms["prefill/scores-and-masks"] / n
                done.append(Run(kind, path.name, tokens, batch, step, units, (peak - plan.peak_bytes) / n,
                                base_array_bytes(spec.arch, d), peak / n, scores,
                                base_array_parts(spec.arch, d)))
                model._unimap.limits.release()
                del model
        except Exception as exc:  # noqa: BLE001 - a twin mlx-lm cannot run: the others decide
            if not optional:
                raise
            print(f"{family:24s} {path.name} skipped: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
            continue
        runs += done
    return runs


def state_apart_family(family: str, work: Path) -> bool:
    """Whether the family's tiny twin keeps its recurrent states in layers without attention
    (unimap.estimate.state_apart), read from the twin as unimap inspects it."""
    from tiny_families import tiny_config
    from tiny_models import write_random_model

    import unimap
    from unimap.estimate import state_apart

    return state_apart(unimap.inspect(write_random_model(work / f"{family}-apart", tiny_config(family))).arch)


def has_state(arch: Any) -> bool:
    """Layers with a convolution, SSM or linear-attention state beside or instead of a KV cache."""
    return "recurrent" in arch.layer_kinds or any(c.state_elements for c in arch.caches)


def deeper(family: str, work: Path) -> Path | None:
    """The family's twin with 8 layers (tests/tiny_families.py deep_config), or None when mlx-lm
    cannot build that: in a 4-layer twin of a hybrid the one attention layer is often the last,
    whose prefill attention MLX never evaluates (only its cache is needed), so its arrays would
    never be measured."""
    from tiny_families import deep_config

    try:
        config = deep_config(family)
    except Exception:  # noqa: BLE001 - a config whose patterns do not repeat: the 4-layer twin
        return None
    return built(work / f"{family}-8", config)


def built(path: Path, config: dict[str, Any], dtype: str = "float32") -> Path | None:
    """A random-weight twin of `config` written to `path` and read by unimap, or None when
    mlx-lm, transformers or unimap refuses it (a config whose fields do not scale together, a
    family mlx-lm builds in float32 only)."""
    from tiny_models import write_random_model

    import unimap

    try:
        write_random_model(path, config, dtype=dtype)
        unimap.inspect(path)
        return path
    except Exception as exc:  # noqa: BLE001 - the other twins decide
        print(f"{path.name:24s} not built: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
        return None


STATE_HEADS = 4  # the state-heavy twin's state heads, times the tiny twin's


def wider(family: str, work: Path, state_heads: int = 1) -> Path | None:
    """The family's twin 4 times as wide, with 4 times the experts and twice the experts per
    token (tests/tiny_families.py wide_config), or None when mlx-lm cannot build it (or, with
    `state_heads`, when the family names no state heads to multiply). A fit to the tiny twin
    alone can put what grows with the widths on a unit that does not (a linear-attention state
    grows as its head dim squared): fitted to both, the extra holds at other widths. With 4 times
    the state heads too, the state outweighs the hidden width as in real models (Qwen3-Next's
    is 256 times it): what a scan keeps per token then sets the peak, as it does there (mlx-lm's
    gated-delta and Mamba-1 scans keep about one state per token of the chunk), where in smaller
    twins the attention layer's scores hide it."""
    from tiny_families import wide_config

    config = wide_config(family, state_heads=state_heads)
    if state_heads > 1 and config == wide_config(family):
        return None
    return built(work / f"{family}-wide{state_heads}", config)


def real_width(family: str, work: Path) -> Path | None:
    """The family's twin REAL_WIDTH times as wide (tests/tiny_families.py wide_config), with
    REAL_EXPERTS times the experts, or None when mlx-lm cannot build it."""
    from tiny_families import wide_config

    return built(work / f"{family}-real", wide_config(family, REAL_WIDTH, REAL_EXPERTS))


def mixed_kinds(arch: Any) -> bool:
    """Layers of more than one kind (sliding and full attention, recurrent and attention)."""
    return len({c.kind for c in arch.caches} or set(arch.layer_kinds)) > 1


def longer(family: str, work: Path, deep: bool) -> Path | None:
    """The twin the long prompt runs on: the tiny twin, or with `deep` (layers of more than one
    kind) the 8-layer one: in a 4-layer twin the one global-attention layer is often the last,
    whose prefill attention MLX never evaluates (only its cache is needed), so a fit to it would
    not hold where that layer is not last (Command R7B's 8-layer twin at 16,384 tokens: 0.999).
    Under a name of its own; None when mlx-lm cannot build it."""
    from tiny_families import deep_config, tiny_config

    try:
        config = deep_config(family) if deep else tiny_config(family)
    except Exception:  # noqa: BLE001 - a config whose patterns do not repeat: the tiny twin
        config = tiny_config(family)
    return built(work / f"{family}-long", config)


def sized(family: str, work: Path) -> Path | None:
    """The family's tiny twin with 4 times its SSM state size (tests/tiny_families.py
    state_config), or None when mlx-lm cannot build it."""
    from tiny_families import state_config

    return built(work / f"{family}-state4", state_config(family))


def mixed(family: str, work: Path) -> Path | None:
    """The family's twin with 4 times the MLP and expert widths (tests/tiny_families.py
    mix_config), or None when it names none or mlx-lm cannot build it."""
    from tiny_families import mix_config, tiny_config

    config = mix_config(family)
    return None if config == tiny_config(family) else built(work / f"{family}-mix", config)


def headed(family: str, work: Path) -> Path | None:
    """The family's twin with 4 times the query heads at the same head dims (tests/tiny_families.py
    heads_config), or None when its heads set its head dims (queries as wide as the hidden
    width whatever the heads) or mlx-lm cannot build it."""
    from tiny_families import heads_config, tiny_config

    config = heads_config(family)
    return None if config == tiny_config(family) else built(work / f"{family}-heads", config)


def head_dims(family: str, work: Path, dtype: str = "float32") -> Path | None:
    """The family's twin with 4 times the head dims its config sets (tests/tiny_families.py
    head_dim_config), with weights in `dtype`, or None when it sets none or mlx-lm cannot build
    it."""
    from tiny_families import head_dim_config, tiny_config

    config = head_dim_config(family)
    name = f"{family}-hd" if dtype == "float32" else f"{family}-hd-bf16"
    return None if config == tiny_config(family) else built(work / name, config, dtype=dtype)


def half(family: str, work: Path) -> Path | None:
    """The tiny twin with bfloat16 weights, or None when mlx-lm cannot build it."""
    from tiny_families import tiny_config

    return built(work / f"{family}-bf16", tiny_config(family), dtype="bfloat16")


# The least share of the priced arrays a family's fit may keep (the scale's floor): the most any
# family whose own coefficients were fitted on a matrix of shapes (unimap/calibration.py) holds
# of the largest coefficients' price at real shapes in float32 (phi3 0.77; the others 0.60 to
# 0.74, hidden 2048-4096). Tiny twins of some families need less (gemma's 0.47 at 252 tokens),
# which real widths did not bear out: with floors of 0.25 and 0.5, published configs cut to a
# few layers were under (DeepSeek-V2-Lite 0.996 at 256 tokens; EXAONE 4 and Command R7B 0.998
# and 0.997 at 2048).
LEAST_SCALE = 0.77
# A family whose fit ran its twin at real widths (REAL_WIDTH) takes its own share, but never less
# than the price alone must be for its widest twins (4 and 8 times as wide, 4 times the MLP
# widths) at a chunk of 252 tokens or more, the extras left at zero: capped at LEAST_SCALE. A fit
# that leans on an extra (per head and key, per unit of hidden width) where the price grows with
# the widths holds at the twins' widths but not past them: DeepSeek-V2's fit of 0.29 plus a
# per-head-and-key part held its twins, and a published DeepSeek-V2-Lite cut to 4 layers needed
# 0.38 of the price (0.975 of its peak at 2048 tokens); its 4-times-MLP twin needs 0.39 alone.
WIDEST_TWINS = ("-wide1", "-mix", "-real")


# How far apart the two shares may be: left free, the program put all of a family's price on
# one kind (gpt_oss's hidden, query and key/value arrays at 0), and gpt-oss-20b's published
# config, whose query is 1.42 times its hidden width where every twin's is 1, was planned at
# 0.9999 of its peak.
SHARE_SPREAD = 2.0
SCORE_TRACE = 0.005  # a per-key part under this is a trace of the program's vertex, not a need


def least_scale(runs: list[Run]) -> float:
    """The floor of one share of the whole (runs saved without the price by kind): with the twin
    at real widths among them, the largest share of the price its widest twins need alone (at
    chunks of 252 tokens or more), at most LEAST_SCALE; else LEAST_SCALE."""
    if not any(r.twin.endswith("-real") for r in runs):
        return LEAST_SCALE
    alone = [(r.missing + r.base) / r.base for r in runs
             if r.twin.endswith(WIDEST_TWINS) and min(r.step, r.tokens - 1) >= 252 and r.base > 0]
    return min(LEAST_SCALE, max(alone, default=LEAST_SCALE))


def fit(runs: list[Run], apart: bool = False,
        per_token_states: float = 0.0) -> tuple[str, tuple[float, ...], tuple[float, ...]] | None:
    """The family's arrays per chunk token as its shares of the priced base arrays plus extras
    in its basis's units: the least that covers every run, counted as the sum of each run's
    over-prediction over its peak (a tiny run weighs as much as a wide one); a linear program.
    Where the runs recorded the price by kind of array, a share of each group of kinds its twins
    tell apart (share_groups; unimap.estimate.family_shares), else one of the whole.
    The shares' floor, where one of the whole is least_scale: with a twin at real widths, the
    shares alone (extras at zero) cover each of the widest twins' runs at chunks of 252 tokens
    or more, up to LEAST_SCALE of its price; without one, each share is at least LEAST_SCALE;
    no share under 1/SHARE_SPREAD of another. Per-key parts under SCORE_TRACE are solved
    away, and IN_FLIGHT_ARRAYS are added to the hidden-width part (with_in_flight). `apart`: a
    hybrid whose recurrent states live in layers of their own (unimap.estimate.state_apart),
    priced with its scan's state parts in a phase apart from the scores (fit_apart).
    `per_token_states`: the least of the "scan" basis's state per token, what the family's scan
    is known to hold (unimap.estimate.DELTA_STATES_PER_TOKEN for gated delta's op-by-op steps).
    None without runs."""
    from unimap.estimate import SCAN_APART, SCAN_STATE_UNITS

    if not runs:
        return None
    if not all(r.parts for r in runs):  # runs saved before the price by kind was recorded
        floor = least_scale(runs)
        # with scale = floor + t (t >= 0): t * base + c . units >= missing + (1 - floor) * base
        old = [([r.base, *r.units], r.missing + (1 - floor) * r.base) for r in runs]
        t, *extra = least_cover(old, [1 / r.peak for r in runs])
        return runs[0].basis, (floor + t,), with_in_flight(runs[0], tuple(extra))
    n = len(runs[0].units)
    groups = share_groups(runs)
    k = len(groups)

    def shares(r: Run) -> list[float]:
        return [sum(r.parts[i] for i in group) for group in groups]

    def unit(i: int, value: float = 1.0) -> list[float]:
        return [value if j == i else 0.0 for j in range(k)]

    rows = [([*shares(r), *r.units], r.missing + r.base) for r in runs]
    if any(r.twin.endswith("-real") for r in runs):
        guard = [([*shares(r), *[0.0] * n], min(r.missing + r.base, LEAST_SCALE * r.base))
                 for r in runs if r.twin.endswith(WIDEST_TWINS) and min(r.step, r.tokens - 1) >= 252]
    else:
        guard = [([*unit(i), *[0.0] * n], LEAST_SCALE) for i in range(k)]
    # no share under 1/SHARE_SPREAD of another (what the twins do not vary apart they cannot
    # tell apart further: the key/value widths never move against the query width)
    guard += [([*(a + b for a, b in zip(unit(i), unit(j, -1 / SHARE_SPREAD), strict=True)), *[0.0] * n], 0.0)
              for i in range(k) for j in range(k) if i != j]
    if per_token_states and runs[0].basis == "scan":  # the scan's own states per token, at least
        guard.append(([*[0.0] * k, *(1.0 if j == SCAN_STATE_UNITS[1] else 0.0 for j in range(n))],
                      per_token_states))

    def solve(rows: list[tuple[list[float], float]]) -> tuple[float, ...]:
        if apart:
            return fit_apart(runs, rows, guard)
        return least_cover(rows + guard, [1 / r.peak for r in runs] + [0.0] * len(guard))

    found = solve(rows)
    # a per-key part the program left at a trace (its vertex, not the runs, chose it) would be
    # rounded up to 0.02 of a float32 score per key by _up, which at long contexts on a backend
    # with fused attention prices hundreds of MB: solved again without it, until none is left
    dropped: set[int] = set()
    while trace := {k + i for i in (n - 2, n - 1) if 0 < found[k + i] < SCORE_TRACE} - dropped:
        dropped |= trace
        rows = [([0.0 if j in dropped else c for j, c in enumerate(cols)], m) for cols, m in rows]
        found = tuple(0.0 if j in dropped else c for j, c in enumerate(solve(rows)))
    return SCAN_APART if apart else runs[0].basis, tuple(found[:k]), with_in_flight(runs[0], tuple(found[k:]))




def share_groups(runs: list[Run]) -> tuple[tuple[int, ...], ...]:
    """The kinds of array (indices into Run.parts: hidden, query, key/value, MLP) each share of
    a fit prices: the twins with 4 times the MLP widths tell the MLP apart; those with 4 times
    the query heads (headed) the queries from the hidden width; those with 4 times the head dims
    (head_dims) the keys and values with them, and beside the first, the keys and values from
    the queries. What no twin moved apart shares one share."""
    heads = any(r.twin.endswith("-heads") for r in runs)
    dims = any(r.twin.endswith("-hd") for r in runs)
    if heads and dims:
        return (0,), (1,), (2,), (3,)
    if heads or dims:
        return (0,), (1, 2), (3,)
    return (0, 1, 2), (3,)


def with_in_flight(run: Run, extra: tuple[float, ...]) -> tuple[float, ...]:
    """The extra with IN_FLIGHT_ARRAYS more hidden-wide float32 arrays per chunk token (its
    hidden-width part, in units of 4 bytes): what MLX's evaluation can hold beyond a run it
    measured, by how far its allocations ran ahead of the work in flight (docs/BENCHMARKS.md,
    "Run to run"). The tiny twins run through mlx-lm's stream_generate measured up to that much
    over the calibration's own runs (Klear, granite, gemma2, mimo at 252 tokens: 62-64 kB, one
    252 x 64 x 4-byte array), where a fit without it left Klear's plan under its peak (0.998).
    Added after the fit, not inside it: a program asked to cover it put it on the per-key part,
    which _up's rounding then made four times larger at 2,048 keys."""
    from unimap.estimate import HIDDEN_UNIT, IN_FLIGHT_ARRAYS

    hidden = HIDDEN_UNIT[run.basis]  # extra_units' hidden width
    return tuple(c + IN_FLIGHT_ARRAYS if i == hidden else c for i, c in enumerate(extra))


def fit_apart(runs: list[Run], rows: list[tuple[list[float], float]],
              guard: list[tuple[list[float], float]]) -> tuple[float, ...]:
    """The least cover of a hybrid whose scan states and attention scores come from different
    layers: a run's prefill then needs its arrays plus the larger of its scores (exact, S) and
    its scan's state parts (Es: the extra's SCAN_LAYER_UNITS), not their sum. Each run is covered
    one way or the other, arrays >= need or arrays + Es >= need + S, which a mixed-integer
    program picks per run (scipy's HiGHS) while it minimizes the over-prediction
    sum_r (arrays + max(S, Es) - need - S) / peak, plus the state parts once more: where the
    scores hide them on the CPU nothing else would keep them small, and a backend with fused
    attention (no scores) pays them in full. `rows` are fit's ([shares..., units...], need)
    rows, `guard` its floor rows."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp  # the mixed-integer program needs scipy

    from unimap.estimate import SCAN_LAYER_UNITS

    k, n = len(rows[0][0]), len(runs)
    shift = k - len(runs[0].units)  # the shares' columns come first
    state = [i + shift for i in SCAN_LAYER_UNITS]  # columns of the scan's state parts
    cols = np.array([c for c, _ in rows], dtype=float)
    st = np.zeros_like(cols)
    st[:, state] = cols[:, state]
    common = cols - st
    peak = np.array([r.peak for r in runs])
    need = np.array([m for _, m in rows]) / peak
    scores = np.array([r.scores for r in runs]) / peak
    common, st = common / peak[:, None], st / peak[:, None]
    g = np.array([c for c, _ in guard], dtype=float).reshape(-1, k)
    scale = np.maximum(np.abs(np.vstack([common, st, g])).max(axis=0), 1e-300)
    common, st, g = common / scale, st / scale, g / scale
    big = 4.0  # in units of a run's peak: more than any need
    eye, zero = np.eye(n), np.zeros((n, n))
    # variables: x (k), P (n: max(S, Es) per run), y (n: 1 where the scan's states decide)
    a = np.vstack([np.hstack([st, -eye, zero]),  # Es - P <= 0
                   np.hstack([common, zero, big * eye]),  # arrays + big y >= need
                   np.hstack([common + st, zero, -big * eye]),  # arrays + Es - big y >= need + S - big
                   np.hstack([g, np.zeros((len(g), 2 * n))])])
    low = np.concatenate([np.full(n, -np.inf), need, need + scores - big,
                          np.array([m for _, m in guard], dtype=float)])
    high = np.concatenate([np.zeros(n), np.full(2 * n + len(g), np.inf)])
    objective = np.concatenate([(common + st).sum(axis=0), np.ones(n), np.zeros(n)])
    bounds = Bounds(np.concatenate([np.zeros(k), scores, np.zeros(n)]),
                    np.concatenate([np.full(k + n, np.inf), np.ones(n)]))
    found = milp(objective, constraints=LinearConstraint(a, low, high), bounds=bounds,
                 integrality=np.concatenate([np.zeros(k + n), np.ones(n)]))
    if found.status != 0:
        raise ValueError(f"no fit covers every run: {found.message}")
    x = found.x[:k] / scale
    # HiGHS's tolerance: a run left short is covered by scaling the fit up
    cols_all = np.array([c for c, _ in rows], dtype=float)
    st_all = np.zeros_like(cols_all)
    st_all[:, state] = cols_all[:, state]
    prices = (cols_all - st_all) @ x + np.maximum(st_all @ x, scores * peak)
    wanted = need * peak + scores * peak
    short = (wanted - prices) / np.maximum(prices, 1e-300)
    if short.max() > 1e-9:
        x = x * (1 + float(short.max()))
    return tuple(float(v) for v in x)


def least_cover(rows: list[tuple[list[float], float]],
                weights: list[float] | None = None) -> tuple[float, ...]:
    """min sum_i w_i (c . u_i - m_i) subject to c . u_i >= m_i for every row and c >= 0. By
    scipy's linprog (HiGHS) where scipy is installed; else every vertex (n tight constraints
    among the rows and the c_j = 0) is tried, all at once as stacked n x n systems."""
    import numpy as np

    units = np.array([u for u, _ in rows], dtype=float)
    missing = np.array([m for _, m in rows], dtype=float)
    w = np.ones(len(rows)) if weights is None else np.array(weights, dtype=float)
    scale = np.maximum(np.abs(units).max(axis=0), 1e-300)  # columns of like size for the solver
    try:
        from scipy.optimize import linprog
    except ImportError:
        return tuple(float(x) for x in _vertices(units, missing, w))
    found = linprog(w @ units / scale, A_ub=-units / scale, b_ub=-missing, bounds=(0, None),
                    method="highs")
    if found.status != 0:
        raise ValueError(f"no extra covers every run: {found.message}")
    c = found.x / scale
    covered = c @ units.T
    # HiGHS's tolerance: what it leaves uncovered, added back (rounding-level shorts ignored: a
    # row the floor already covers exactly asks for nothing and may get nothing)
    short = missing - covered
    short[short <= 1e-9 * max(1.0, float(np.abs(missing).max()))] = 0.0
    if short.max() > 0:
        c = c * (1 + float((short / np.maximum(covered, 1e-300)).max()))
    return tuple(float(x) for x in c)


def _vertices(units: Any, missing: Any, w: Any) -> Any:
    import itertools

    import numpy as np

    n = units.shape[1]
    a_all = np.vstack([units, np.eye(n)])
    b_all = np.concatenate([missing, np.zeros(n)])
    norms = np.linalg.norm(a_all, axis=1, keepdims=True)  # unit rows: one singularity test
    a_all, b_all = a_all / np.maximum(norms, 1e-300), b_all / np.maximum(norms[:, 0], 1e-300)
    best: tuple[float, Any] | None = None
    combos = itertools.combinations(range(len(a_all)), n)
    while len(batch := np.array(list(itertools.islice(combos, 100_000)), dtype=int)):
        a, b = a_all[batch], b_all[batch]
        ok = np.abs(np.linalg.det(a)) >= 1e-10
        if not ok.any():
            continue
        c = np.linalg.solve(a[ok], b[ok][..., None])[..., 0]
        ok = np.all(c >= -1e-12, axis=1)
        covered = c @ units.T
        ok &= np.all(covered >= missing - 1e-9 * np.abs(missing) - 1e-6, axis=1)
        if not ok.any():
            continue
        total = ((covered - missing) * w).sum(axis=1)
        i = int(np.argmin(np.where(ok, total, np.inf)))
        if best is None or total[i] < best[0]:
            best = (float(total[i]), c[i])
    if best is None:
        raise ValueError("no extra covers every run")
    return best[1]


SSD_MARK = "ssm_update"  # what marks a module that runs mlx-lm's SSD scan (mlx_lm/models/ssm.py)


def basis(arch: Any) -> str:
    """Families whose layers keep a recurrent state (SSM, linear attention, convolution) are
    priced in units of that state (those that run mlx-lm's SSD scan in its own units); the
    others in hidden width and score units."""
    from unimap.estimate import SSD
    from unimap.structure import model_source, vlm_source

    if not arch.state_elements:
        return "hidden"
    source = model_source(arch.family) or vlm_source(arch.family)
    return SSD if SSD_MARK in source and arch.state_heads else "scan"


def run(model: Any, cache: list[Any], tokens: int, batch: int, step: int) -> None:
    """Prefill in chunks as mlx-lm's generate_step does, then decode a few tokens."""
    import mlx.core as mx

    prompt = mx.random.randint(3, 100, (batch, tokens))
    done = 0
    while tokens - done > 1:
        n = min(step, tokens - 1 - done)
        model(prompt[:, done:done + n], cache=cache)
        mx.eval([c.state for c in cache])
        done += n
        mx.clear_cache()
    y = prompt[:, done:]
    for _ in range(DECODE):
        logits = model(y, cache=cache)
        y = mx.argmax(logits[:, -1:, :], axis=-1)
        mx.eval(y)


def uncalibrated() -> list[str]:
    from tiny_families import UNBUILDABLE, families

    from unimap.calibration import COEFFICIENTS

    measured = {family for family, _ in COEFFICIENTS}
    return [f for f in families() if f not in UNBUILDABLE and f not in measured]


def render(factors: dict[str, tuple[str, Any, tuple[float, ...]]]) -> str:
    import mlx.core as mx
    import mlx_lm

    rows = "".join(f"    {name!r}: {value},\n" for name, value in sorted(factors.items()))
    return f'''"""Chunk-array fits of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on twins built through mlx-lm's own classes.

Generated {date.today()} on {platform.platform()} ({platform.machine()}), MLX {mx.__version__},
mlx-lm {mlx_lm.__version__}, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

Per family: (basis, share, extra). The chunk's hidden, query, key/value and MLP arrays are
priced with the largest measured coefficients (unimap.estimate.base_array_parts); the family
holds its share of that price: one share of the whole, or where its runs recorded the price by
kind of array, one of each group of kinds its twins move apart (unimap.estimate.family_shares):
two (of the hidden, query and key/value arrays; of the MLP arrays), three (of the hidden
arrays; of the query and key/value arrays; of the MLP arrays) where a twin with 4 times the
query heads or the head dims moved the queries apart from the hidden width, or four (hidden,
query, key/value, MLP) where both did. Plus the extra: coefficients (all >= 0) for the units of the basis
(unimap.estimate.extra_units, per chunk token, times 4 bytes): "hidden" (hidden width; heads x
keys) or "scan" (families with a recurrent state: state heads x block^2, the largest layer
state once and per block token, each over the chunk; the state per token; hidden width; heads x
keys), "ssd" (families that run mlx-lm's SSD scan: state heads x block^2 over the chunk, the
largest layer state over the chunk, state heads x state size and x head dim, state heads x
block, hidden width, heads x keys), and last heads x keys again for a model in half precision
(scores some families compute in float32); "scan-apart": "scan" units for a hybrid whose states
live in layers without attention, fitted with the chunk's scan states in a phase apart from its
scores (the prefill
needs the larger of the two, unimap.estimate.priced_apart). Fitted to cover every run of the
family's tiny twin, its 8-layer twin (state families), its twins 4 times as wide (and with 4
times the state heads; SSD families: with 4 times the state size alone), with 4 times the MLP
widths, with 4 times the query heads and with 4 times the head dims (where its config sets its
head dims), in bfloat16 and, where it was measured (not the slowest state families), 8 times as
wide: those take their own shares (the shares alone never under what the widest twins' runs
need, up to 0.77 of their price), the others never under 0.77. Families not listed keep the
largest coefficients.
"""

FAMILY_EXTRA: dict[str, tuple[str, float | tuple[float, ...], tuple[float, ...]]] = {{
{rows}}}
'''


def _up(shares: tuple[float, ...], extra: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """5 % more, and a little more per key (the last two parts, per head and key): other shapes
    and MLX's run-to-run variation. Rounded up."""
    import math

    *parts, score, half_score = extra
    return (tuple(math.ceil(s * 105) / 100 for s in shares),
            (*(math.ceil(c * 105) / 100 for c in parts),
             *(math.ceil(c * 105 + 1) / 100 if c > 0 else 0.0 for c in (score, half_score))))


# every run of the fits in unimap/family_calibration.py (--refit RUNS fits them again)
RUNS_FILE = ROOT / "tools" / "family_runs.json.gz"


def read_runs(path: Path) -> dict[str, Any]:
    """Saved runs by family (gzip-compressed where the name ends in .gz)."""
    import gzip
    import json

    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    found: dict[str, Any] = json.loads(data)
    return found


def write_runs(path: Path, runs: dict[str, Any]) -> None:
    """Save runs by family, keys sorted, gzip-compressed where the name ends in .gz; written to
    a temporary file first so an interrupted save leaves the old one whole."""
    import gzip
    import json

    data = json.dumps(runs, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    tmp.replace(path)


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"regenerate {OUT.relative_to(ROOT)}")
    parser.add_argument("--only", default="", help="comma-separated families")
    parser.add_argument("--save", type=Path, help="also write every run's measurement to this JSON file")
    parser.add_argument("--refit", type=Path, help="fit from a --save file instead of measuring")
    parser.add_argument("--twins", default="", help="measure only these twin kinds (comma-separated: "
                        "tiny, deep, wide, long, wide-state, state-size, mix, heads, hd, hd-bf16, bf16, "
                        "real) and, with --refit, fit them beside the saved runs of the others (saved "
                        "again with --save)")
    parser.add_argument("--apart", action="store_true", help="fit a hybrid whose recurrent states live in "
                        "layers without attention with its scan's states and its scores in phases apart "
                        "(fit_apart; measured and not used: docs/BENCHMARKS.md)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    from unimap.estimate import DELTA_STATES_PER_TOKEN, delta_scan
    from unimap.family_calibration import FAMILY_EXTRA

    kept = dict(FAMILY_EXTRA)
    FAMILY_EXTRA.clear()  # measure against the plan without the fits
    saved: dict[str, Any] = read_runs(args.refit) if args.refit else {}
    families = args.only.split(",") if args.only else (sorted(saved) if args.refit else uncalibrated())
    # the families not fitted now keep what was measured before (--only; a refit from runs
    # that lack some: jamba's twin at real widths takes an hour, so its runs are not saved)
    factors: dict[str, tuple[str, Any, tuple[float, ...]]] = {
        k: v for k, v in kept.items() if k not in families}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            try:
                if args.refit and args.twins:  # the saved runs of the other kinds, and these anew
                    only = set(args.twins.split(","))
                    fresh = measure(family, Path(tmp), only=only)
                    names = {r.twin for r in fresh}
                    runs = [r for r in (Run(*r) for r in saved[family]) if r.twin not in names] + fresh
                    saved[family] = [list(r) for r in runs]
                elif args.refit:
                    runs = [Run(*r) for r in saved[family]]
                else:
                    try:
                        runs = measure(family, Path(tmp))
                    except Exception:  # noqa: BLE001 - a deeper twin mlx-lm or transformers refuses
                        runs = measure(family, Path(tmp), deep=False)
                    saved[family] = [list(r) for r in runs]
                found = fit(runs, apart=args.apart and state_apart_family(family, Path(tmp)),
                            per_token_states=DELTA_STATES_PER_TOKEN if delta_scan(family) else 0.0)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"{family:24s} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                if family in kept:
                    factors[family] = kept[family]
                continue
            if found is None:
                print(f"{family:24s} nothing measured", flush=True)
                factors.pop(family, None)
                continue
            unit = found[0]
            shares, extra = _up(found[1], found[2])
            share: float | tuple[float, ...] = shares[0] if len(shares) == 1 else shares
            print(f"{family:24s} shares {' and '.join(f'{s:.2f}' for s in shares)}, per chunk token "
                  f"({unit} units): " + " + ".join(f"{c:.2f}" for c in extra), flush=True)
            factors[family] = (unit, share, tuple(extra))
            if args.save:
                write_runs(args.save, saved)
    if args.write:
        OUT.write_text(render(factors))
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
