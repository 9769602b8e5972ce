"""The structure cache (unimap/cache.py): a model planned once plans again without mlx, to the
same plan; whatever is wrong with an entry makes it a miss that is written anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fixtures as fx
import pytest
from tiny_families import tiny_config

import unimap
from unimap import cache
from unimap.cache import cache_dir, structure_key
from unimap.structure import _read_structure

FAMILY = "gemma2"  # read from mlx-lm's own model: no hand-written reader


@pytest.fixture
def model(tmp_path: Path) -> Path:
    config = {**tiny_config(FAMILY), "torch_dtype": "bfloat16"}
    return fx.write_model(tmp_path / FAMILY, config, fx.from_model(config))


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UNIMAP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("structure-*.json"))


def planned(model: Path) -> dict[str, Any]:
    return unimap.plan(unimap.inspect(model), machine="mac-16gb").to_dict()


def no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(config: dict[str, Any], where: str) -> None:
        raise AssertionError("the structure was read again, not taken from the cache")

    monkeypatch.setattr("unimap.structure._read_structure", fail)


def test_a_cached_plan_is_the_uncached_plan(model: Path, folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    first = unimap.inspect(model)
    assert len(entries(folder)) == 1
    no_reading(monkeypatch)
    again = unimap.inspect(model)
    assert again.arch == first.arch
    assert planned(model) == unimap.plan(first, machine="mac-16gb").to_dict()


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:len(raw) // 2],  # cut short
    lambda raw: b"\xff\xfe" + raw,  # not UTF-8
    lambda raw: b"[]",
    lambda raw: raw.replace(b'"num_layers":4', b'"num_layers":5'),  # checksum no longer matches
    lambda raw: raw.replace(b'"format":1', b'"format":99'),
])
def test_a_damaged_entry_is_read_again_and_rewritten(model: Path, folder: Path, damage: Any) -> None:
    expected = planned(model)
    (entry,) = entries(folder)
    entry.write_bytes(damage(entry.read_bytes()))
    assert planned(model) == expected
    assert json.loads(entry.read_text())["structure"]["num_layers"] == 4  # written anew


def _retyped(entry: dict[str, Any]) -> None:
    entry["structure"]["num_layers"] = "4"


def _unknown_field(entry: dict[str, Any]) -> None:
    entry["structure"]["unknown"] = 1


def _missing_field(entry: dict[str, Any]) -> None:
    del entry["structure"]["caches"]


@pytest.mark.parametrize("edit", [_retyped, _unknown_field, _missing_field])
def test_an_entry_of_the_wrong_shape_is_a_miss(model: Path, folder: Path, edit: Any) -> None:
    """Even with a checksum that matches, an entry that is not a Structure is not used."""
    expected = planned(model)
    (path,) = entries(folder)
    entry = json.loads(path.read_text())
    edit(entry)
    entry["sha256"] = cache.hashlib.sha256(cache._canonical(entry["structure"])).hexdigest()
    path.write_text(json.dumps(entry))
    key = entry["key"]
    assert cache.load_structure(key) is None
    assert planned(model) == expected
    assert cache.load_structure(key) is not None


def test_entries_are_not_trusted_across_versions(model: Path, folder: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.loads((model / "config.json").read_text())
    key = structure_key(config)
    unimap.inspect(model)
    assert cache.load_structure(key) is not None
    monkeypatch.setattr(cache, "_version", lambda name: "0.0.0-other")
    assert structure_key(config) != key and cache.load_structure(structure_key(config)) is None
    unimap.inspect(model)  # read again under the other version
    assert len(entries(folder)) == 2


def test_where_the_cache_lives(tmp_path: Path) -> None:
    assert cache_dir({"UNIMAP_CACHE_DIR": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/unimap")
    assert cache_dir({"UNIMAP_CACHE_DIR": "", "XDG_CACHE_HOME": ""}) == Path(
        "~/.cache/unimap").expanduser()


def test_the_cache_dir_env_var_is_honoured(model: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIMAP_CACHE_DIR", str(tmp_path / "elsewhere"))
    unimap.inspect(model)
    assert len(entries(tmp_path / "elsewhere")) == 1


def test_a_cache_that_cannot_be_written_costs_nothing_but_time(model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("UNIMAP_CACHE_DIR", str(tmp_path / "a-file"))
    assert unimap.inspect(model).arch.num_layers == 4


def test_the_oldest_entries_go(model: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 2)
    structure = _read_structure(tiny_config(FAMILY), "x")  # not stored
    for age, key in enumerate("ab"):
        cache.store_structure(key * 64, structure)
        os.utime(folder / f"structure-{key * 64}.json", (age, age))
    cache.store_structure("c" * 64, structure)
    assert [p.name for p in entries(folder)] == [f"structure-{k * 64}.json" for k in "bc"]


def test_unimap_plan_imports_no_mlx_once_the_structure_is_cached(model: Path, folder: Path) -> None:
    unimap.inspect(model)
    probe = ("import sys\nfrom unimap.cli import cli\ntry:\n"
             f"    cli(['plan', {str(model)!r}, '--machine', 'mac-16gb'], prog_name='unimap')\n"
             "except SystemExit as exit:\n    code = exit.code\n"
             "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm'}))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.splitlines()[-1] == "0 []", found.stdout + found.stderr


def test_a_vision_language_model_planned_again_is_read_from_the_cache(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mistral 3's config, which mlx-lm's from_dict changes when it builds the model: the plan
    keys its entries on the config as given, so the second read finds both (the language
    model's, and its caches as mlx-vlm's language model makes them) and builds nothing."""
    import copy

    from tiny_vlm_configs import vlm_config

    from unimap import structure
    from unimap.families import read_architecture

    config = vlm_config("mistral3")
    given = copy.deepcopy(config)
    first = read_architecture(config, "mistral3")
    assert config == given
    written = entries(folder)
    assert len(written) == 2

    def built(*args: Any) -> None:
        raise AssertionError("read again")

    monkeypatch.setattr(structure, "_read_structure", built)
    monkeypatch.setattr(structure, "_build_vlm", built)
    assert read_architecture(copy.deepcopy(given), "mistral3") == first
    assert entries(folder) == written
