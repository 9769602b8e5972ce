"""Print (or --write) the golden plans the test suite compares against.

Every family of tools/fixtures.py on several preset machines, with default options and a
long-context case. Regenerate only on purpose, and read the diff: a changed golden is a changed
promise to users.

    python tools/golden_plans.py [--write tests/golden/plans.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fixtures  # noqa: E402

from unimap.estimate import Options  # noqa: E402
from unimap.inspect import inspect  # noqa: E402
from unimap.machines import preset_machine  # noqa: E402
from unimap.plan import make_plan  # noqa: E402
from unimap.settings import Reserves  # noqa: E402

MACHINES = ("mac-16gb", "mac-64gb", "jetson-orin-64gb", "h100-80gb")
CASES = {"default": Options(), "long": Options(max_seq_len=32768, max_batch_size=2)}
# vision-language families also plan for several large images
VISION_CASES = {"images": Options(max_num_images=4, max_image_length=1792)}


def summary(spec_dir: Path, machine: str, options: Options) -> dict[str, object]:
    plan = make_plan(inspect(spec_dir), preset_machine(machine, {}, Reserves()), options)
    vision = {"vision_device": plan.vision_device, "image_tokens": plan.estimate.image_tokens,
              "notes": list(plan.notes)} if plan.estimate.vision_weight_bytes else {}
    return {**vision,
        "fits": plan.fits,
        "all_on_gpu": plan.all_on_gpu,
        "layers": {d.name: len(d.layers) for d in plan.devices},
        "used_bytes": {d.name: d.used_bytes for d in plan.devices},
        "wired_limit_bytes": plan.wired_limit_bytes,
        "peak_bytes": plan.peak_bytes,
        "ways_out": list(plan.ways_out),
    }


def golden(models: Path) -> dict[str, object]:
    found = {}
    for family in fixtures.FAMILIES:
        cases = {**CASES, **(VISION_CASES if inspect(models / family).arch.vision else {})}
        for machine in MACHINES:
            for case, options in cases.items():
                found[f"{family}|{machine}|{case}"] = summary(models / family, machine, options)
    return found


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for family in fixtures.FAMILIES:
            fixtures.write_family(Path(tmp), family)
        text = json.dumps(golden(Path(tmp)), indent=1, sort_keys=True) + "\n"
    if argv[:1] == ["--write"]:
        Path(argv[1]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
