"""Measure every mlx-lm family the activation coefficients were not fitted on, on tiny twins.

Usage: python tools/calibrate_families.py [--write] [--only FAMILY,...]

For each family of tests/tiny_families.py whose module has no measured coefficients in
unimap/calibration.py, a tiny random checkpoint is built through mlx-lm's own Model class,
loaded through unimap (all on one device) and run on prompts of 8 to 64 tokens, of 160 and 600
tokens (batch 1 and 2, prefill chunks of 128, so several chunks follow cached tokens) and of 252
to 2049 tokens in one chunk each (mlx-lm's default chunk is 2048), each plus 4 decoded tokens.
The same runs go through an 8-layer twin of families with recurrent state, and five of them
through a twin 4 times as wide (4 times the experts, twice the top-k).
The chunk arrays the estimate prices with the largest coefficients of every measured family
are compared with what the run needed (measured peak minus everything else the plan counts).
What is missing, per token of the chunk, is fitted in units that grow with the model as those
arrays do (unimap.estimate.extra_units): the least extra that covers every run of every twin
becomes that family's extra. --write regenerates unimap/family_calibration.py with the machine
and versions (with --only, the other families keep what they had).
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import warnings
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# (prompt tokens, batch, prefill chunk): prompts of a few tokens (where fixed arrays and one
# scan block decide), several chunks after cached tokens, a batch, and prompts in one chunk each,
# up to a whole chunk of mlx-lm's default 2048 (the chunk every long prompt runs in), whose keys
# are all the plan's tokens
RUNS = ((8, 1, 2048), (24, 1, 2048), (64, 1, 2048), (160, 1, 128), (600, 2, 128),
        (252, 1, 2048), (300, 1, 2048), (1000, 1, 2048), (2049, 1, 2048))
# on the wide twin (slower: a mamba scan at 4 times the width takes a minute a run): a few
# tokens, a part of a scan block, several chunks in a batch, and a whole chunk
WIDE_RUNS = ((8, 1, 2048), (64, 1, 2048), (252, 1, 2048), (600, 2, 128), (2049, 1, 2048))
DECODE = 4
OUT = ROOT / "unimap" / "family_calibration.py"


def measure(family: str, work: Path, deep: bool = True) -> tuple[str, list[tuple[float, ...]]]:
    """(basis, fits) of what the family needed beyond the priced chunk arrays (an empty list:
    nothing more was needed)."""
    import mlx.core as mx
    from tiny_families import tiny_config
    from tiny_models import stand_in_machine, write_random_model

    import unimap
    from unimap.device_map import parse_device_map
    from unimap.estimate import Options
    from unimap.generate import make_cache
    from unimap.plan import make_plan

    machine = stand_in_machine()
    path = write_random_model(work / family, tiny_config(family))
    spec = unimap.inspect(path)
    twins = [(path, RUNS)]
    if deep and has_state(spec.arch):  # and 8 layers: a hybrid's attention is not only its last
        twins += [(p, RUNS) for p in [deeper(family, work)] if p is not None]
    twins += [(p, WIDE_RUNS) for p in [wider(family, work)] if p is not None]
    if has_state(spec.arch):  # and one whose state outweighs its hidden width as real ones do
        twins += [(p, WIDE_RUNS) for p in [wider(family, work, STATE_HEADS)] if p is not None]
    # (the twin's architecture, chunk tokens, keys, missing bytes per chunk token)
    runs: list[tuple[Any, int, int, float]] = []
    for path, (tokens, batch, step) in ((p, r) for p, some in twins for r in some):
        spec = unimap.inspect(path)
        options = Options(max_seq_len=tokens + DECODE, max_batch_size=batch, prefill_step_tokens=step)
        plan = make_plan(spec, machine, options, parse_device_map("auto"))
        model, _, _ = unimap.load(path, planned=plan)
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        run(model, make_cache(model), tokens, batch, step)
        missing = mx.get_peak_memory() - plan.peak_bytes
        chunk = min(step, tokens - 1)
        runs.append((spec.arch, chunk, tokens + DECODE, missing / (batch * chunk)))
        model._unimap.wired.release()
        del model
    return fit(runs)


def has_state(arch: Any) -> bool:
    """Layers with a convolution, SSM or linear-attention state beside or instead of a KV cache."""
    return "recurrent" in arch.layer_kinds or any(c.state_elements for c in arch.caches)


def deeper(family: str, work: Path) -> Path | None:
    """The family's twin with 8 layers (tests/tiny_families.py deep_config), or None when mlx-lm
    cannot build that: in a 4-layer twin of a hybrid the one attention layer is often the last,
    whose prefill attention MLX never evaluates (only its cache is needed), so its arrays would
    never be measured."""
    from tiny_families import deep_config
    from tiny_models import write_random_model

    try:
        return write_random_model(work / f"{family}-8", deep_config(family))
    except Exception:  # noqa: BLE001 - a config whose patterns do not repeat: the 4-layer twin
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
    from tiny_models import write_random_model

    import unimap

    config = wide_config(family, state_heads=state_heads)
    if state_heads > 1 and config == wide_config(family):
        return None
    try:
        path = write_random_model(work / f"{family}-wide{state_heads}", config)
        unimap.inspect(path)
        return path
    except Exception:  # noqa: BLE001 - a config whose fields do not scale together
        return None


def fit(runs: list[tuple[Any, int, int, float]]) -> tuple[str, list[tuple[float, ...]]]:
    """The least extras that cover every run: per chunk token, coefficients times the family's
    units (unimap.estimate.extra_units of that run's twin at its chunk and keys) x 4 bytes, each
    at least what the run missed, with the least total over-prediction. Two fits: one with every
    coefficient >= 0 (right for short prompts), one whose per-width part is free (the largest
    coefficients may over-cover what does not grow with the keys while what does still needs
    its slope: right for long ones; "hidden" basis only); the estimate takes the larger, and
    never less than nothing. Each is a small linear program: its optimum is at a vertex."""
    from unimap.estimate import extra_units

    kind = basis(runs[0][0])
    rows = [([4 * u for u in extra_units(arch, kind, chunk, keys)], missing)
            for arch, chunk, keys, missing in runs]
    if all(m <= 0 for _, m in rows):
        return kind, []
    positive = least_cover(rows, frozenset())
    free = FREE_PART.get(kind)
    if free is None:
        return kind, [positive]
    loose = least_cover(rows, frozenset({free}))
    return kind, [positive] if loose == positive else [positive, loose]


# The coefficient the second fit lets go below zero. Not for "scan": its units (state per block
# token, hidden width) grow alike from one twin to the other but apart at real sizes (a real
# state is hundreds of times the twins' per unit of width), where a negative part on one and a
# large one on the other would extrapolate to gigabytes.
FREE_PART = {"hidden": 0}


def least_cover(rows: list[tuple[list[float], float]], free: frozenset[int]) -> tuple[float, ...]:
    """min sum_i (c . u_i - m_i) subject to c . u_i >= m_i for every row and c_j >= 0 unless j is
    in `free`: every vertex (n tight constraints among the rows and the c_j = 0) is tried, all
    at once as stacked n x n systems."""
    import itertools

    import numpy as np

    n = len(rows[0][0])
    units = np.array([u for u, _ in rows], dtype=float)
    missing = np.array([m for _, m in rows], dtype=float)
    bounds = [j for j in range(n) if j not in free]
    a_all = np.vstack([units, np.eye(n)[bounds]])
    b_all = np.concatenate([missing, np.zeros(len(bounds))])
    norms = np.linalg.norm(a_all, axis=1, keepdims=True)  # unit rows: one singularity test
    a_all, b_all = a_all / np.maximum(norms, 1e-300), b_all / np.maximum(norms[:, 0], 1e-300)
    best: tuple[float, tuple[float, ...]] | None = None
    combos = itertools.combinations(range(len(a_all)), n)
    while len(batch := np.array(list(itertools.islice(combos, 100_000)), dtype=int)):
        a, b = a_all[batch], b_all[batch]
        ok = np.abs(np.linalg.det(a)) >= 1e-10
        if not ok.any():
            continue
        c = np.linalg.solve(a[ok], b[ok][..., None])[..., 0]
        ok = np.all(c[:, bounds] >= -1e-12, axis=1) if bounds else np.ones(len(c), dtype=bool)
        covered = c @ units.T
        ok &= np.all(covered >= missing - 1e-9 * np.abs(missing) - 1e-6, axis=1)
        if not ok.any():
            continue
        total = (covered - missing).sum(axis=1)
        i = int(np.argmin(np.where(ok, total, np.inf)))
        if best is None or total[i] < best[0]:
            best = (float(total[i]), tuple(float(x) for x in c[i]))
    if best is None:
        raise ValueError("no extra covers every run")
    return best[1]


def basis(arch: Any) -> str:
    """Families whose layers keep a recurrent state (SSM, linear attention, convolution) are
    priced in units of that state; the others in hidden width and score units."""
    return "scan" if arch.state_elements else "hidden"


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


def render(factors: dict[str, tuple[str, tuple[tuple[float, ...], ...]]]) -> str:
    import mlx.core as mx
    import mlx_lm

    rows = "".join(f"    {name!r}: {value},\n" for name, value in sorted(factors.items()))
    return f'''"""Chunk-array factors of mlx-lm families without measured coefficients, measured by
tools/calibrate_families.py on tiny twins built through mlx-lm's own classes.

Generated {date.today()} on {platform.platform()} ({platform.machine()}), MLX {mx.__version__},
mlx-lm {mlx_lm.__version__}, MLX's CPU backend. Do not edit by hand: rerun the tool with --write.

A family listed here needed more than the largest measured coefficients price for its chunk
arrays. Each fit is a tuple of coefficients for the units of its basis (unimap.estimate.extra_units,
per chunk token, times 4 bytes): "hidden" (hidden width; heads x keys) or "scan" (families with a
recurrent state: state heads x block^2, the largest layer state once and per block token, each
over the chunk; the state per token; hidden width; heads x keys). Fitted to each family's tiny
twin and its twin 4 times as wide. The estimate adds the largest fit when it is positive (a
negative part: what does not grow with the keys is over-covered already); families not listed
needed no more.
"""

FAMILY_EXTRA: dict[str, tuple[str, tuple[tuple[float, ...], ...]]] = {{
{rows}}}
'''


def _up(fit: tuple[float, ...]) -> tuple[float, ...]:
    """5 % more (a negative part 5 % nearer zero), and a little more per key: other shapes and
    MLX's run-to-run variation. Rounded away from under-prediction."""
    import math

    *parts, score = fit
    up = [math.ceil(c * 105) / 100 if c > 0 else math.ceil(c * 95) / 100 for c in parts]
    return (*up, math.ceil(score * 105 + 1) / 100 if score > 0 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"regenerate {OUT.relative_to(ROOT)}")
    parser.add_argument("--only", default="", help="comma-separated families")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    from unimap.family_calibration import FAMILY_EXTRA

    kept = dict(FAMILY_EXTRA)
    FAMILY_EXTRA.clear()  # measure against the plan without the extras being refitted
    families = args.only.split(",") if args.only else uncalibrated()
    # with --only, the other families keep what was measured before
    factors = {k: v for k, v in kept.items() if args.only and k not in families}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            try:
                try:
                    unit, fits = measure(family, Path(tmp))
                except Exception:  # noqa: BLE001 - a deeper twin mlx-lm or transformers refuses
                    unit, fits = measure(family, Path(tmp), deep=False)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"{family:24s} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                if family in kept:
                    factors[family] = kept[family]
                continue
            shown = " or ".join(" + ".join(f"{c:.2f}" for c in fit) for fit in fits) or "nothing"
            print(f"{family:24s} per chunk token ({unit} units): {shown}", flush=True)
            if fits:
                factors[family] = (unit, tuple(_up(fit) for fit in fits))
            else:
                factors.pop(family, None)
    if args.write:
        OUT.write_text(render(factors))
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
