"""A short sample of tools/fuzz_inputs.py in the suite: configs, safetensors headers, indexes and
GGUF files grown from real seeds and mutated, each read through unimap.inspect and unimap.plan,
must end in success or a UnimapError (the full run of 100,000 inputs is in docs/BENCHMARKS.md).
The seed differs from the full run's, so the suite looks at inputs that run did not."""

from __future__ import annotations

import fuzz_inputs


def test_a_fuzz_sample_raises_only_project_errors() -> None:
    report = fuzz_inputs.run(count=240, seed=20261129, jobs=2)
    found = {key: group.count for key, group in report.groups.items()}
    assert not found, f"non-project exceptions: {found}"
    assert not report.fuzzer_errors and not report.seed_failures
    assert not report.memory, [o for o in report.memory]
    assert sum(sum(c.values()) for c in report.per_kind.values()) == 240
