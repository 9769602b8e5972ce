"""`unimap doctor` through click's CliRunner on fake machines and on this one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import FakeGpu, FakeTorch, GiB, MiB, fake_linux, fake_mac, meminfo

from unimap.cli import cli
from unimap.doctor import blas_library, find_openblas, hf_cache_dir
from unimap.host import Host


def doctor(host: Host | None, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli, ["doctor", *args], obj={"host": host} if host else None)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_mac_16gb_default_suggests_sysctl() -> None:
    code, out, _ = doctor(fake_mac(16 * GiB, 11453251584, 12 * GiB))
    assert code == 0
    assert "sudo sysctl iogpu.wired_limit_mb=12288" in out  # 16 GiB - 4 GiB kept for macOS
    assert "0 (macOS default)" in out
    assert "unified memory  yes" in out
    assert "metal" in out and "selected" in out


def test_mac_64gb_with_raised_limit_needs_no_sysctl() -> None:
    host = fake_mac(64 * GiB, 56 * GiB, 60 * GiB, sysctl={"iogpu.wired_limit_mb": "57344"})
    code, out, _ = doctor(host)
    assert code == 0
    assert "sudo sysctl" not in out
    assert "iogpu.wired_limit_mb = 56.00 GiB" in out


def test_mac_8gb_gets_no_sysctl_advice() -> None:
    # 8 GiB - 4 GiB kept for macOS is below the default 5.33 GiB working set
    _, out, _ = doctor(fake_mac(8 * GiB, 5726623744, 6 * GiB))
    assert "sudo sysctl" not in out


def test_macos13_command_uses_bytes_key() -> None:
    host = fake_mac(32 * GiB, 21 * GiB, 28 * GiB, os_name="macOS 13.6",
                    sysctl={"iogpu.wired_limit_mb": None, "debug.iogpu.wired_limit": "0"})
    _, out, _ = doctor(host)
    assert f"sudo sysctl debug.iogpu.wired_limit={28 * GiB}" in out
    assert "macOS 13.6" in out


def test_mac_json_shape() -> None:
    code, out, _ = doctor(fake_mac(36 * GiB, 24 * GiB, 30 * GiB), "--json")
    data = json.loads(out)
    assert code == 0 and data["broken"] is False
    gpu = data["machine"]["devices"][0]
    assert gpu["budget_bytes"] == 24 * GiB - 512 * MiB
    assert gpu["unified"] is True
    assert {c["name"] for c in data["checks"]} >= {"backend", "unified memory", "gpu:0 budget",
                                                   "cpu budget", "wired limit", "mlx", "hf cache",
                                                   "disk"}


def test_jetson(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("Orin", 64 * GiB, 20 * GiB, is_integrated=1)])
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(67108864, 60000000)}, torch=torch,
                      arch="aarch64")
    code, out, _ = doctor(host, "--no-bench")
    assert code == 0
    assert "is_integrated=1" in out
    assert "cuda" in out and "selected" in out
    # MLX here is a CPU build while torch found a GPU: doctor says how to fix it
    assert "WARN" in out and "unimap[cuda]" in out
    assert "skipped (--no-bench)" in out


def test_h100_json(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("NVIDIA H100 80GB HBM3", 85520809984, 84_000_000_000)])
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(268435456, 250_000_000)}, torch=torch)
    code, out, _ = doctor(host, "--json", "--no-bench")
    machine = json.loads(out)["machine"]
    assert code == 0
    assert machine["backend"] == "cuda"
    assert [d["unified"] for d in machine["devices"]] == [False, False]


def test_unknown_ram_is_broken(tmp_path: Path) -> None:
    code, out, _ = doctor(fake_linux(tmp_path, {}), "--no-bench")
    assert code == 1
    assert "ERROR" in out and "cannot read /proc/meminfo" in out
    assert "broken" in out


def test_bad_fraction_is_one_line_error(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("Orin", 64 * GiB, 20 * GiB, is_integrated=1)])
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(67108864, 60000000)}, torch=torch,
                      env={"UNIMAP_IGPU_MEMORY_FRACTION": "1.5"})
    code, out, err = doctor(host)
    assert code == 2
    assert out == ""
    assert err.startswith("error: environment UNIMAP_IGPU_MEMORY_FRACTION='1.5'")
    assert "Traceback" not in err


def test_bad_backend_flag_is_one_line_error() -> None:
    code, _, err = doctor(fake_mac(16 * GiB, 11453251584, 12 * GiB), "--backend", "cuda")
    assert code == 2
    assert "asks for backend 'cuda', but it cannot run here: PyTorch is not installed" in err


def test_bad_reserve_flag_is_one_line_error() -> None:
    code, _, err = doctor(fake_mac(16 * GiB, 11453251584, 12 * GiB), "--gpu-reserve", "much")
    assert code == 2
    assert err.strip() == ("error: flag --gpu-reserve: 'much' is not a size; use bytes or a "
                           "number with a unit such as 512MiB, 48GiB or 48GB")


def test_warnings_are_marked(tmp_path: Path) -> None:
    files = {"/proc/meminfo": meminfo(67108864, 62914560), "/proc/self/cgroup": "0::/\n",
             "/sys/fs/cgroup/memory.max": "lots\n"}
    code, out, _ = doctor(fake_linux(tmp_path, files), "--no-bench")
    assert code == 0
    assert "WARN" in out and "container memory limit unknown" in out
    assert "ready (see warnings)" in out


def test_real_machine_text() -> None:
    code, out, _ = doctor(None)
    assert code == 0, out
    assert "cpu budget" in out
    if sys.platform == "linux":
        assert "cpu matmul" in out and "GFLOP/s" in out


def test_real_machine_json_measures_blas() -> None:
    code, out, _ = doctor(None, "--json")
    data = json.loads(out)
    assert code == 0
    assert data["mlx"]["version"] and data["mlx"]["error"] is None
    if sys.platform == "linux":
        blas = data["blas"]
        assert blas["gflops"] > 0 and blas["kind"] in {"reference", "openblas", "mkl", "unknown"}
        assert blas["shape"] == [128, 1024, 1024]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_blas_library_is_read_from_this_process() -> None:
    import mlx.core  # noqa: F401  (maps its BLAS into this process)

    path, kind = blas_library(Host.real())
    assert kind in {"reference", "openblas", "mkl"}
    assert Path(path).exists()


def test_find_openblas_in_fake_root(tmp_path: Path) -> None:
    host = fake_linux(tmp_path, {"/usr/lib/aarch64-linux-gnu/libopenblas.so.0": ""}, arch="aarch64")
    assert find_openblas(host) == "/usr/lib/aarch64-linux-gnu/libopenblas.so.0"
    assert find_openblas(fake_linux(tmp_path / "empty", {})) is None


def test_hf_cache_dir_matches_huggingface_hub(tmp_path: Path) -> None:
    script = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    for env in ({"HF_HOME": str(tmp_path / "hf")}, {"HF_HUB_CACHE": str(tmp_path / "c")},
                {"XDG_CACHE_HOME": str(tmp_path / "x")}, {}):
        full = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **env}
        done = subprocess.run([sys.executable, "-c", script], env=full, capture_output=True,
                              text=True, check=True)
        assert str(hf_cache_dir(full)) == done.stdout.strip(), env


def test_unusable_cache_is_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be created")
    host = fake_mac(16 * GiB, 11453251584, 12 * GiB, env={"HF_HUB_CACHE": str(blocker / "hub")})
    code, out, _ = doctor(host)
    assert code == 0
    assert "not writable" in out and "set HF_HOME or HF_HUB_CACHE" in out


def test_python_dash_m_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "unimap", "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "unimap, version 0.1.0"


@pytest.mark.parametrize(("libs", "kind"), [
    (["/venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0",
      "/venv/numpy.libs/libscipy_openblas64_-32a4b2a6.so"], "reference"),
    (["/venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0",
      "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so"], "openblas"),
    (["/opt/intel/libmkl_rt.so.2"], "mkl"),
    (["/usr/lib/libc.so.6"], "unknown"),
])
def test_blas_library_from_maps(tmp_path: Path, libs: list[str], kind: str) -> None:
    maps = "".join(f"7f00-7f01 r-xp 00000000 fe:01 123 {lib}\n" for lib in libs)
    host = fake_linux(tmp_path, {"/proc/self/maps": maps})
    assert blas_library(host)[1] == kind
