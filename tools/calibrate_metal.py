"""Fit the Metal estimate to peak memory that mlx-lm users and maintainers published from Macs.

Usage: python tools/calibrate_metal.py [--write] [--json FILE]

docs/metal/published.json holds every usable published figure: the `Peak memory` line mlx-lm
printed (mx.get_peak_memory()), the exact checkpoint, prompt and generated tokens, the Mac, the
versions and the source. Each point is replayed here without a Mac: a sparse fixture of the same
checkpoint (its real config.json from docs/metal/configs.json, quantized as the config records,
through mlx-lm's own Model class) is planned for a Mac with the point's RAM, all on the GPU, at
prompt + generated tokens, and the plan's peak is compared with the reported one.

Points with `"use": "calibrate"` fit the factor over the CPU-calibrated chunk arrays that Metal
needs (per mlx-lm family: the least factor, rounded up to 0.01, with which every calibration
point of the family is covered); points with `"use": "verify"` only check the fit. Points from
mlx-lm versions whose prefill differs from today's (before 0.27.0 the last prefill chunk
computed logits over the whole chunk) are kept in the file with `"use": "excluded"` and the reason.
--write regenerates unimap/metal_calibration.py.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

DOCS = ROOT / "docs" / "metal"
OUT = ROOT / "unimap" / "metal_calibration.py"
UNITS = {"GB": 10**9, "GiB": 2**30}
# Working sets of checkpoints the estimate prices alike differ by a few per cent (Qwen3-4B at
# 4 and 5 bits: 1.92 and 1.94 times the priced arrays): each factor is the most its calibration
# points need times this, so a checkpoint it has not seen is covered too (the held-out points
# check it).
HEADROOM = 1.05


@dataclass(frozen=True)
class Point:
    """One published measurement (a record of docs/metal/published.json)."""

    id: str
    model: str
    use: str  # "calibrate", "verify" or "excluded"
    prompt_tokens: int
    generated_tokens: int
    batch_size: int
    reported_bytes: int
    bound_bytes: int  # the most the printed figure can stand for (it was rounded when printed)
    ram_gb: int | None  # the Mac's unified memory, as sold (GB); None where not stated
    record: dict[str, Any]

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens


def load_points(path: Path = DOCS / "published.json") -> list[Point]:
    points = []
    for r in json.loads(path.read_text()):
        unit = UNITS[r["unit"]]
        text = r.get("reported_text", "")  # as printed: "4.00" was rounded to 0.005 either way
        step = 10 ** -len(text.partition(".")[2]) if text else 0
        points.append(Point(
            id=r["id"], model=r["model"], use=r["use"], prompt_tokens=r["prompt_tokens"],
            generated_tokens=r["generated_tokens"], batch_size=r.get("batch_size", 1),
            reported_bytes=round(r["reported"] * unit),
            bound_bytes=round((r["reported"] + step / 2) * unit), ram_gb=r["ram_gb"], record=r))
    return points


def config_of(point: Point, configs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's config.json: the published file itself, or its base model's file plus
    the quantization block mlx_lm.convert writes (the record says which, and why)."""
    configs = configs if configs is not None else json.loads((DOCS / "configs.json").read_text())
    if point.model in configs:
        return dict(configs[point.model]["config"])
    base = point.record.get("base_model")
    if base is None or base not in configs:
        raise KeyError(f"{point.id}: no config for {point.model} (nor a base_model) in configs.json")
    config = dict(configs[base]["config"])
    if point.record.get("quantization") is not None:
        config["quantization"] = dict(point.record["quantization"])
    return config


def checkpoint(point: Point, work: Path, configs: dict[str, Any] | None = None) -> Path:
    """A sparse fixture of the point's checkpoint under `work` (written once per checkpoint)."""
    import fixtures

    config = config_of(point, configs)
    folder = work / point.model.replace("/", "--")
    if not (folder / "config.json").exists():
        fixtures.write_model(folder, config, fixtures.mlx_checkpoint(config), shards=1)
    return folder


def plan_point(point: Point, path: Path) -> Any:
    """The plan for the run as it was measured: a Mac with the point's RAM, every layer on the
    GPU (the budget raised to the RAM, as a user who published the figure ran it)."""
    import unimap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plan = unimap.plan(path, max_seq_len=point.tokens, max_batch_size=point.batch_size,
                           max_num_images=0, machine="mac-64gb", ram=point.ram_gb * 10**9,
                           gpu_budget=point.ram_gb * 10**9)
    if plan.machine.backend != "metal" or not plan.all_on_gpu:
        raise ValueError(f"{point.id}: the replay must plan the whole run on Metal")
    return plan


@contextmanager
def metal_factor(family: str, factor: float) -> Iterator[None]:
    """Price `family` with another Metal factor for a moment (the fit searches it)."""
    from unimap.metal_calibration import METAL_ARRAYS_FACTORS as table
    saved = dict(table)
    table[family] = factor
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def family_of(path: Path) -> str:
    from unimap.estimate import CALIBRATED_AS
    from unimap.inspect import inspect

    family = inspect(path).arch.family
    return CALIBRATED_AS.get(family, family)


def kind_of(path: Path) -> str:
    from unimap.estimate import metal_kind
    from unimap.inspect import inspect

    return metal_kind(inspect(path).arch)


def needed_factor(point: Point, path: Path) -> float:
    """The least factor (to 0.001) with which the plan covers the most the reported peak can
    have been before it was rounded for printing."""
    family = family_of(path)
    low, high = 0.0, 8.0
    with metal_factor(family, high):
        if plan_point(point, path).peak_bytes < point.bound_bytes:
            raise ValueError(f"{point.id}: even a factor of {high} is under the reported peak")
    while high - low > 0.001:
        mid = (low + high) / 2
        with metal_factor(family, mid):
            covered = plan_point(point, path).peak_bytes >= point.bound_bytes
        low, high = (low, mid) if covered else (mid, high)
    return high


def fit(points: list[Point], work: Path) -> tuple[dict[str, float], dict[str, list[str]], dict[str, str]]:
    """Per family, the largest factor any calibration point needs (with the headroom), rounded
    up to 0.01; the points it was fitted on; and the family's kind."""
    factors: dict[str, float] = {}
    used: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for point in points:
        if point.use != "calibrate":
            continue
        path = checkpoint(point, work)
        family = family_of(path)
        kinds[family] = kind_of(path)
        need = math.ceil(needed_factor(point, path) * HEADROOM * 100) / 100
        factors[family] = max(factors.get(family, 0.0), need)
        used.setdefault(family, []).append(point.id)
    return factors, used, kinds


def replay(points: list[Point], work: Path) -> list[dict[str, Any]]:
    """Every current-version point against the plan, as the estimate now prices it."""
    rows = []
    for point in points:
        if point.use == "excluded":
            continue
        path = checkpoint(point, work)
        plan = plan_point(point, path)
        rows.append({"id": point.id, "use": point.use, "family": family_of(path),
                     "reported_bytes": point.reported_bytes, "predicted_bytes": plan.peak_bytes,
                     "ratio": plan.peak_bytes / point.reported_bytes})
    return rows


def leave_one_out(points: list[Point], work: Path) -> list[dict[str, Any]]:
    """Each calibration point replayed with factors fitted on every other calibration point
    (its family's own others, else the largest factor): how the fit does on a point it did
    not see."""
    from unimap.metal_calibration import METAL_ARRAYS_FACTORS as table

    needs = {}
    for p in points:
        if p.use == "calibrate":
            path = checkpoint(p, work)
            needs[p.id] = (family_of(path), math.ceil(needed_factor(p, path) * HEADROOM * 100) / 100)
    rows = []
    saved = dict(table)
    try:
        for point in points:
            if point.use != "calibrate":
                continue
            others: dict[str, float] = {}
            for pid, (family, need) in needs.items():
                if pid != point.id:
                    others[family] = max(others.get(family, 0.0), need)
            table.clear()
            table.update(others)
            plan = plan_point(point, checkpoint(point, work))
            rows.append({"id": point.id, "family": needs[point.id][0],
                         "ratio": plan.peak_bytes / point.reported_bytes,
                         "own_family_seen": needs[point.id][0] in others})
    finally:
        table.clear()
        table.update(saved)
    return rows


def render(factors: dict[str, float], used: dict[str, list[str]], kinds: dict[str, str],
           n_points: int) -> str:
    import mlx.core as mx
    import mlx_lm

    lines = [
        '"""Metal\'s chunk-array factors, fitted by tools/calibrate_metal.py to published Mac peaks.',
        "",
        f"Generated {date.today().isoformat()} from docs/metal/published.json ({n_points} calibration "
        f"points), replayed with",
        f"MLX {mx.__version__} and mlx-lm {mlx_lm.__version__}. Do not edit by hand: rerun the tool "
        "with --write.",
        "",
        "MLX's Metal backend frees an array only once the command buffer that used it has completed,",
        "so more of a prefill chunk's arrays are alive at once than on the CPU backend the activation",
        "coefficients were measured on (unimap/calibration.py). Per mlx-lm family: the least factor",
        "over those chunk arrays with which the plan covers every calibration point's reported",
        f"peak, times {HEADROOM} (headroom for checkpoints not seen), rounded up to 0.01. A family",
        "with no published peak takes the largest of its kind (recurrent-state layers or attention",
        "only; unimap/estimate.py metal_arrays_factor).",
        '"""',
        "",
        "METAL_ARRAYS_FACTORS: dict[str, float] = {",
        *(f'    "{k}": {v},' for k, v in sorted(factors.items())),
        "}",
        "",
        "# whether each family has recurrent-state layers (\"recurrent\") or attention only",
        "METAL_FAMILY_KINDS: dict[str, str] = {",
        *(f'    "{k}": "{v}",' for k, v in sorted(kinds.items())),
        "}",
        "",
        "# the published points (docs/metal/published.json ids) each factor was fitted on",
        "METAL_CALIBRATION_POINTS: dict[str, tuple[str, ...]] = {",
        *(line for k, v in sorted(used.items())
          for line in (f'    "{k}": (', *(f'        "{i}",' for i in v), "    ),")),
        "}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--write", action="store_true", help="regenerate unimap/metal_calibration.py")
    parser.add_argument("--json", type=Path, help="also write the replay rows here")
    parser.add_argument("--leave-one-out", action="store_true",
                        help="also replay each calibration point with a fit that did not see it")
    args = parser.parse_args()
    points = load_points()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        factors, used, kinds = fit(points, work)
        print("fitted:", ", ".join(f"{k} {v}" for k, v in sorted(factors.items())))
        if args.write:
            OUT.write_text(render(factors, used, kinds, sum(len(v) for v in used.values())))
            print(f"wrote {OUT}")
        from unimap.metal_calibration import METAL_ARRAYS_FACTORS
        METAL_ARRAYS_FACTORS.update(factors)
        rows = replay(points, work)
    print(f"{'point':44} {'use':9} {'family':10} {'reported':>9} {'predicted':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['id']:44} {r['use']:9} {r['family']:10} {r['reported_bytes'] / 1e9:8.3f}G "
              f"{r['predicted_bytes'] / 1e9:8.3f}G {r['ratio']:6.3f}")
    for use in ("calibrate", "verify"):
        ratios = [r["ratio"] for r in rows if r["use"] == use]
        if ratios:
            print(f"{use}: {len(ratios)} points, ratio {min(ratios):.3f}-{max(ratios):.3f}, "
                  f"median {statistics.median(ratios):.3f}, under {sum(x < 1 for x in ratios)}")
    if args.leave_one_out:
        with tempfile.TemporaryDirectory() as tmp:
            held = leave_one_out(points, Path(tmp))
        for r in held:
            seen = "" if r["own_family_seen"] else " (no other point of its family: largest factor)"
            print(f"left out {r['id']:44} {r['ratio']:7.4f}{seen}")
        ratios = [r["ratio"] for r in held]
        print(f"leave-one-out: {len(ratios)} points, ratio {min(ratios):.3f}-{max(ratios):.3f}, "
              f"median {statistics.median(ratios):.3f}, under {sum(x < 1 for x in ratios)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
