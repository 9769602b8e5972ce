"""Backends from other installed distributions are found through the entry point group.

Each test installs a real distribution (a module plus its .dist-info with entry_points.txt) into
a folder on sys.path, which is what pip does; the loader is not patched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fakes import meminfo

from unimap import probe
from unimap.backends import discover

PLUGIN = '''
from unimap import Backend, BackendUnavailable, Device

class RocmBackend(Backend):
    name = "rocm"

    def priority(self, host):
        if host.env.get("FAKE_ROCM") != "1":
            raise BackendUnavailable("no ROCm device (set FAKE_ROCM=1)")
        return 95

    def devices(self, host, memory, reserves, warnings):
        reserve, source = reserves.gpu_for(64 * 2**30)
        return [Device(name="gpu:0", kind="gpu", backend=self.name, description="Fake MI300",
                       unified=False, unified_reason="discrete", total_bytes=64 * 2**30,
                       ceiling_bytes=64 * 2**30, available_bytes=60 * 2**30,
                       reserve_bytes=reserve, budget_bytes=60 * 2**30 - reserve,
                       sources={"reserve_bytes": source})]
'''


def install_distribution(site: Path, dist: str, module: str, source: str, entry: str) -> None:
    """Lay out an installed distribution the way pip does: module + .dist-info."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[unimap.backends]\n{entry}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site-packages"
    folder.mkdir()
    install_distribution(folder, "unimap_rocm", "unimap_rocm", PLUGIN, "rocm = unimap_rocm:RocmBackend")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def linux_host(tmp_path: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    from fakes import fake_linux

    return fake_linux(tmp_path / "root", {"/proc/meminfo": meminfo(33554432, 30000000)}, env=env)


def test_third_party_backend_is_discovered(site: Path) -> None:
    found = {f.name: f for f in discover()}
    assert found["rocm"].distribution == "unimap_rocm"
    assert {"metal", "cuda", "cpu"} <= set(found)


def test_third_party_backend_wins_when_viable(site: Path, tmp_path: Path) -> None:
    machine = probe(linux_host(tmp_path, {"FAKE_ROCM": "1"}))
    assert machine.backend == "rocm"
    assert machine.gpus[0].description == "Fake MI300"
    assert machine.gpus[0].budget_bytes == 60 * 2**30 - 1374389534  # 2% of 64 GiB


def test_third_party_backend_reports_its_reason(site: Path, tmp_path: Path) -> None:
    machine = probe(linux_host(tmp_path, {}))
    rocm = next(b for b in machine.backends if b.name == "rocm")
    assert machine.backend == "cpu"
    assert rocm.reason == "no ROCm device (set FAKE_ROCM=1)"


def test_broken_plugin_is_listed_not_fatal(site: Path, tmp_path: Path) -> None:
    install_distribution(site, "unimap_broken", "unimap_broken", "import no_such_module\n",
                         "broken = unimap_broken:Nothing")
    install_distribution(site, "unimap_wrong", "unimap_wrong", "class NotABackend: pass\n",
                         "wrong = unimap_wrong:NotABackend")
    machine = probe(linux_host(tmp_path, {}))
    status = {b.name: b for b in machine.backends}
    assert "cannot be loaded: ModuleNotFoundError" in status["broken"].reason
    assert "not a unimap.backends.Backend subclass" in status["wrong"].reason
    assert machine.backend == "cpu"


def test_plugin_crash_in_priority_is_reported(site: Path, tmp_path: Path) -> None:
    source = ("from unimap import Backend\nclass Bad(Backend):\n    name = 'bad'\n"
              "    def priority(self, host):\n        raise KeyError('oops')\n")
    install_distribution(site, "unimap_bad", "unimap_bad", source, "bad = unimap_bad:Bad")
    machine = probe(linux_host(tmp_path, {}))
    bad = next(b for b in machine.backends if b.name == "bad")
    assert bad.reason == "its viability check failed: KeyError: 'oops'"


def test_doctor_lists_plugin_in_a_real_process(site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]),
           "UNIMAP_BACKEND": "cpu"}
    done = subprocess.run([sys.executable, "-m", "unimap", "doctor", "--json", "--no-bench"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    backends = {b["name"]: b for b in json.loads(done.stdout)["machine"]["backends"]}
    assert backends["rocm"]["distribution"] == "unimap_rocm"
    assert backends["rocm"]["reason"] == "no ROCm device (set FAKE_ROCM=1)"
    assert backends["cpu"]["selected"]


def test_builtin_backends_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """A checkout copied to a machine and run with PYTHONPATH has no entry points registered
    (seen on the lent GPU machine); unimap's own backends must still be found and probe must work."""
    from importlib import metadata

    monkeypatch.setattr(metadata, "entry_points", lambda **_: [])
    found = {f.name: f for f in discover()}
    assert set(found) == {"metal", "cuda", "cpu"}
    assert all(f.backend is not None and f.distribution == "unimap (source tree)" for f in found.values())
    assert probe(linux_host(tmp_path, {})).backend == "cpu"
