"""tools/calibrate_families.py's fit, on runs whose need is known: the shares it finds cover every
run, tell the MLP's arrays from the others where twins vary their proportions, and keep the
floor that protects widths no twin ran."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from calibrate_families import LEAST_SCALE, SHARE_SPREAD, WIDEST_TWINS, Run, fit  # noqa: E402

from unimap.estimate import IN_FLIGHT_ARRAYS, delta_scan  # noqa: E402

# per chunk token, the priced base arrays of each twin by kind (hidden, query, key/value, MLP):
# the MLP four times wider in "-mix", every width 4 and 8 times in "-wide1" and "-real"
TWINS = {"fam": (100.0, 50.0, 25.0, 80.0), "fam-mix": (100.0, 50.0, 25.0, 320.0),
         "fam-wide1": (400.0, 200.0, 100.0, 320.0), "fam-real": (800.0, 400.0, 200.0, 640.0)}
CHUNKS = (8, 64, 252, 2044)
OTHER = 5000.0  # per token, what the plan counts besides the chunk's arrays (weights, KV, scores)


def runs(need, units=lambda twin, chunk: [0.0, 0.0, 0.0], parts: bool = True) -> list[Run]:
    """One run per twin and chunk whose arrays need `need(twin, chunk)` per token; `missing` is
    measured against the plan that prices the whole base (share 1, no extra)."""
    out = []
    for twin, kinds in TWINS.items():
        base = sum(kinds)
        for chunk in CHUNKS:
            arrays = need(twin, chunk)
            peak = OTHER + arrays
            out.append(Run("hidden", twin, chunk + 1, 1, 2048, units(twin, chunk), arrays - base, base, peak,
                           0.0, kinds if parts else ()))
    return out


def covered(run: Run, shares: tuple[float, ...], extra: tuple[float, ...]) -> float:
    """What the fit prices for the run's arrays, per token."""
    hidden, query, kv, mlp = run.parts
    if len(shares) == 4:
        priced = shares[0] * hidden + shares[1] * query + shares[2] * kv + shares[3] * mlp
    elif len(shares) == 3:
        priced = shares[0] * hidden + shares[1] * (query + kv) + shares[2] * mlp
    elif len(shares) == 2:
        priced = shares[0] * (hidden + query + kv) + shares[1] * mlp
    else:
        priced = shares[0] * run.base
    return priced + sum(c * u for c, u in zip(extra, run.units, strict=True))


def test_two_shares_recover_a_need_that_differs_by_kind() -> None:
    """A need of 0.7 of the hidden, query and key/value arrays and 1.3 of the MLP's: the fit finds
    both, where one share of the whole would have to take the larger everywhere."""
    def need(twin: str, chunk: int) -> float:
        hidden, query, kv, mlp = TWINS[twin]
        return 0.7 * (hidden + query + kv) + 1.3 * mlp

    found = fit(runs(need))
    assert found is not None
    _, shares, extra = found
    assert shares == pytest.approx((0.7, 1.3), abs=1e-6)
    # nothing beyond, but one more hidden-wide array per token for what MLX holds in flight
    assert extra == pytest.approx((IN_FLIGHT_ARRAYS, 0.0, 0.0), abs=1e-6)
    for run in runs(need):
        assert covered(run, shares, extra) >= run.missing + run.base - 1e-6
    # the same runs without the price by kind (saved before it was recorded): one share, which
    # must cover the twin whose MLP weighs most, so every other twin is priced over its need
    _, (scale,), _ = fit(runs(need, parts=False))
    assert scale == pytest.approx(max((0.7 * (h + q + kv) + 1.3 * m) / (h + q + kv + m)
                                      for h, q, kv, m in TWINS.values()), rel=1e-6)


def test_the_shares_stay_within_a_factor_of_each_other() -> None:
    """A need of 0.1 of the hidden, query and key/value arrays and 1.3 of the MLP's: the twins
    never vary the query and key/value widths against the hidden width, so a share that small
    would not hold where a model's query is wider than its hidden width. Neither share goes
    under 1/SHARE_SPREAD of the other, and every run is still covered."""
    def need(twin: str, chunk: int) -> float:
        hidden, query, kv, mlp = TWINS[twin]
        return 0.1 * (hidden + query + kv) + 1.3 * mlp

    found = fit(runs(need))
    assert found is not None
    _, (attention, mlp), extra = found
    assert attention >= mlp / SHARE_SPREAD - 1e-9 and mlp >= attention / SHARE_SPREAD - 1e-9
    assert attention > 0.1 + 0.1  # held up by the spread, not by the runs
    for run in runs(need):
        assert covered(run, (attention, mlp), extra) >= run.missing + run.base - 1e-6


def test_a_twin_with_more_query_heads_gives_the_queries_a_share_of_their_own() -> None:
    """A need of 0.8 of the hidden arrays but 1.6 of the query and key/value arrays (a family
    whose attention makes more query-wide copies than the largest coefficients price): twins
    whose queries keep the hidden width's proportions cannot tell the two apart, and their two
    shares fall short on a model whose queries are twice its hidden width. With the twin of 4
    times the query heads the fit finds three shares, and they hold there."""
    def need(twin: str, chunk: int) -> float:
        hidden, query, kv, mlp = TWINS[twin]
        return 0.8 * hidden + 1.6 * (query + kv) + 1.0 * mlp

    held_out = Run("hidden", "fam-held", 253, 1, 2048, [0.0, 0.0, 0.0], 0.0, 0.0, 0.0, 0.0,
                   (400.0, 400.0, 100.0, 640.0))  # queries twice the hidden width

    def wanted(run: Run) -> float:
        hidden, query, kv, mlp = run.parts
        return 0.8 * hidden + 1.6 * (query + kv) + 1.0 * mlp

    plain = runs(need)
    _, two, extra = fit(plain)
    assert len(two) == 2
    assert covered(held_out, two, extra) < wanted(held_out)
    TWINS["fam-heads"] = (100.0, 200.0, 25.0, 80.0)  # queries 4 times the hidden width
    try:
        with_heads = runs(need)
    finally:
        del TWINS["fam-heads"]
    _, three, extra = fit(with_heads)
    assert three == pytest.approx((0.8, 1.6, 1.0), abs=1e-6)
    assert covered(held_out, three, extra) >= wanted(held_out) - 1e-6
    for run in with_heads:
        assert covered(run, three, extra) >= run.missing + run.base - 1e-6


def test_twins_with_more_heads_and_wider_heads_give_keys_and_values_a_share() -> None:
    """A need of 1.5 of the key/value arrays against 1.6 of the queries': with the twins of 4
    times the query heads (queries alone) and 4 times the head dims (queries, keys and values)
    the fit finds four shares, and they hold where keys are as wide as the queries."""
    def need(twin: str, chunk: int) -> float:
        hidden, query, kv, mlp = TWINS[twin]
        return 0.8 * hidden + 1.6 * query + 1.5 * kv + 1.0 * mlp

    TWINS["fam-heads"] = (100.0, 200.0, 25.0, 80.0)
    TWINS["fam-hd"] = (100.0, 200.0, 100.0, 80.0)
    try:
        measured = runs(need)
    finally:
        del TWINS["fam-heads"], TWINS["fam-hd"]
    _, four, extra = fit(measured)
    assert four == pytest.approx((0.8, 1.6, 1.5, 1.0), abs=1e-6)
    wide_keys = Run("hidden", "fam-held", 253, 1, 2048, [0.0, 0.0, 0.0], 0.0, 0.0, 0.0, 0.0,
                    (400.0, 400.0, 400.0, 640.0))
    assert covered(wide_keys, four, extra) >= 0.8 * 400 + 1.6 * 400 + 1.5 * 400 + 640 - 1e-6


def test_the_shares_alone_cover_the_widest_twins() -> None:
    """A need the twins' runs fit exactly as 0.3 of the price plus 100 bytes a unit of an extra
    that grows slower than the widths (1 in the tiny twins, 2 in the wide ones): past the widest
    twin it would fall short. The fit may use it, but the shares alone still cover each of the
    widest twins' runs at chunks of 252 tokens or more (up to LEAST_SCALE of their price), so
    the price holds past them."""
    slow = {"fam": 1.0, "fam-mix": 1.0, "fam-wide1": 2.0, "fam-real": 2.0}

    def need(twin: str, chunk: int) -> float:
        return 0.3 * sum(TWINS[twin]) + 100.0 * slow[twin]

    def units(twin: str, chunk: int) -> list[float]:
        return [slow[twin], 0.0, 0.0]

    found = fit(runs(need, units))
    assert found is not None
    _, shares, extra = found
    for run in runs(need, units):
        assert covered(run, shares, extra) >= run.missing + run.base - 1e-6
        if run.twin.endswith(WIDEST_TWINS) and run.tokens - 1 >= 252:
            alone = covered(run, shares, tuple(0.0 for _ in extra))
            assert alone >= min(run.missing + run.base, LEAST_SCALE * run.base) - 1e-6


def test_without_a_twin_at_real_widths_each_share_keeps_the_floor() -> None:
    """Twins that need far less than LEAST_SCALE of the price, none at real widths: no share goes
    under it, since no run says what real widths hold."""
    def need(twin: str, chunk: int) -> float:
        return 0.2 * sum(TWINS[twin])

    measured = [r for r in runs(need) if not r.twin.endswith("-real")]
    found = fit(measured)
    assert found is not None
    assert all(s >= LEAST_SCALE - 1e-9 for s in found[1])
    assert fit([]) is None


def test_a_hybrid_needs_the_larger_of_its_scores_and_its_scan_states() -> None:
    """A hybrid's attention layers make the scores, its other layers the scan's states: a run
    needs its arrays plus the larger of the two. Fitted as such (apart), every run is covered,
    the scan's part is found, and the plan is tighter than one that adds the two."""
    # short chunks peak in the scan, long ones in the scores
    state = {"fam": 100.0, "fam-mix": 100.0, "fam-wide1": 200.0, "fam-real": 400.0}

    def scores(chunk: int) -> float:  # per chunk token: the scores grow with the keys
        return 4.0 * chunk

    def hybrid_runs() -> list[Run]:
        out = []
        for twin, kinds in TWINS.items():
            base = sum(kinds)
            for chunk in CHUNKS:
                need = 0.5 * base + max(scores(chunk), 2.0 * state[twin])  # beyond the rest
                units = [0.0, 0.0, 0.0, state[twin], 0.0, 0.0, 0.0]
                # measured against the plan without the fit: the scores plus the whole price
                missing = need - scores(chunk) - base
                out.append(Run("scan", twin, chunk + 1, 1, 2048, units, missing, base,
                               OTHER + need, scores(chunk), kinds))
        return out

    def priced(run: Run, shares: tuple[float, ...], extra: tuple[float, ...], apart: bool) -> float:
        hidden, query, kv, mlp = run.parts
        arrays = shares[0] * (hidden + query + kv) + shares[1] * mlp
        scan = sum(c * u for c, u in zip(extra, run.units, strict=True))
        return arrays + (max(run.scores, scan) if apart else run.scores + scan)

    runs = hybrid_runs()
    over = {}
    for apart in (False, True):
        found = fit(runs, apart=apart)
        assert found is not None
        basis, shares, extra = found
        assert basis == ("scan-apart" if apart else "scan")
        prices = [priced(r, shares, extra, apart) for r in runs]
        needs = [r.missing + r.base + r.scores for r in runs]
        assert all(p >= n - 1e-6 * n for p, n in zip(prices, needs, strict=True))
        over[apart] = sum((p - n) / r.peak for p, n, r in zip(prices, needs, runs, strict=True))
        if apart:  # the need is exactly of this form: found without over-prediction
            assert shares == pytest.approx((0.5, 0.5), abs=1e-3)
            assert extra[3] == pytest.approx(2.0, rel=1e-3)
    assert over[True] < 1e-3 < over[False]


def test_a_scan_that_keeps_a_state_per_token_is_priced_one_at_least() -> None:
    """Twins whose attention scores grow with their state (the wider twins have more heads as
    well as larger states) let a fit price the scan's states per token with the scores' unit:
    covered there, under where the state grows and the heads do not. With the states per token
    the scan is known to hold, the fit keeps at least that many and still covers every run."""
    state = {"fam": 1000.0, "fam-mix": 1000.0, "fam-wide1": 4000.0, "fam-real": 16000.0}
    heads = {"fam": 4.0, "fam-mix": 4.0, "fam-wide1": 16.0, "fam-real": 64.0}

    def units(twin: str, chunk: int) -> list[float]:
        block = min(chunk, 256)
        return [0.0, state[twin] / chunk, state[twin] * block / chunk, state[twin], 0.0,
                heads[twin] * chunk, 0.0]

    def need(twin: str, chunk: int) -> float:
        """A score per head and key, and the states per token: all of them in a chunk of up to
        a block, fewer past it (MLX's evaluation frees some as the scan goes in a whole model)."""
        hidden, query, kv, mlp = TWINS[twin]
        states = 1.0 if chunk <= 256 else 0.6
        return hidden + query + kv + mlp + states * state[twin] + heads[twin] * chunk

    saved = [r._replace(basis="scan") for r in runs(need, units)]
    per_token = {}
    for least in (0.0, 1.0):
        found = fit(saved, per_token_states=least)
        assert found is not None
        _, shares, extra = found
        per_token[least] = extra[3]
        for run in saved:
            assert covered(run, shares, extra) >= run.missing + run.base - 1e-6 * run.peak
    assert per_token[0.0] < 1.0 <= per_token[1.0]  # left free, the fit takes fewer
    # the gated-delta families are the ones known to hold a state per token off Metal
    assert delta_scan("qwen3_next") and delta_scan("kimi_linear")
    assert not delta_scan("llama") and not delta_scan("mamba2")


def test_the_fits_are_what_the_saved_runs_need() -> None:
    """unimap/family_calibration.py holds what fit (with its 5 % more) makes of the runs kept in
    tools/family_runs.json.gz, for every family those runs cover; each fit covers every one of
    its family's runs."""
    from calibrate_families import RUNS_FILE, _up, read_runs, share_groups

    from unimap.estimate import DELTA_STATES_PER_TOKEN, SCAN_LAYER_UNITS
    from unimap.family_calibration import FAMILY_EXTRA

    saved = read_runs(RUNS_FILE)
    assert len(saved) >= 100
    for family, rows in saved.items():
        runs = [Run(*r) for r in rows]
        basis, share, extra = FAMILY_EXTRA[family]
        found = fit(runs, apart=basis == "scan-apart",
                    per_token_states=DELTA_STATES_PER_TOKEN if delta_scan(family) else 0.0)
        assert found is not None
        shares, up = _up(found[1], found[2])
        kept = share if isinstance(share, tuple) else (share,)
        assert (found[0], kept, extra) == (basis, shares, up), family
        for run in runs:
            arrays = sum(share * sum(run.parts[i] for i in group)
                         for share, group in zip(shares, share_groups(runs), strict=True))
            parts = [c * u for c, u in zip(extra, run.units, strict=True)]
            scan = sum(parts[i] for i in SCAN_LAYER_UNITS) if basis == "scan-apart" else 0.0
            need = run.missing + run.base
            priced = arrays + sum(parts) - scan + (max(run.scores, scan) - run.scores)
            assert priced >= need - 1e-9 * run.peak, (family, run.twin, run.tokens)
