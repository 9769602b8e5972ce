"""probe() on fake machines (table-driven) and on this real one.

Expected budgets are written out by hand from the rules in DESIGN.md:
GPU budget = min(ceiling, available) - max(512 MiB, 2% of ceiling);
CPU budget = available - max(1 GiB, 5% of RAM) [- unified GPU budget and reserve].
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from fakes import (
    FakeGpu,
    FakeTorch,
    GiB,
    MiB,
    fake_linux,
    fake_mac,
    meminfo,
    mlx_gpu,
)

from unimap import BackendError, ConfigError, Host, probe

# ----------------------------------------------------------------- Macs

MACS = [
    # ram, working set (MLX), available, gpu budget, cpu budget
    pytest.param(8 * GiB, 5726623744, 6 * GiB, 5726623744 - 512 * MiB, 0, id="mac-8gb"),
    pytest.param(16 * GiB, 11453251584, 12 * GiB, 11453251584 - 512 * MiB,
                 12 * GiB - 1 * GiB - 11453251584, id="mac-16gb"),
    pytest.param(36 * GiB, 24 * GiB, 30 * GiB, 24 * GiB - 512 * MiB,
                 30 * GiB - 1932735283 - 24 * GiB, id="mac-36gb"),
    # available RAM (40 GiB) binds before the 48 GiB working set
    pytest.param(64 * GiB, 48 * GiB, 40 * GiB, 40 * GiB - 1030792151, 0, id="mac-64gb-busy"),
    pytest.param(128 * GiB, 115448725504, 120 * GiB, 115448725504 - 2308974510,
                 120 * GiB - 6871947673 - 115448725504, id="mac-128gb-macos26"),
]


@pytest.mark.parametrize(("ram", "working_set", "available", "gpu_budget", "cpu_budget"), MACS)
def test_mac_budgets(ram: int, working_set: int, available: int, gpu_budget: int,
                     cpu_budget: int) -> None:
    machine = probe(fake_mac(ram, working_set, available))
    gpu, cpu = machine.devices
    assert machine.backend == "metal"
    assert (gpu.name, gpu.kind, gpu.unified) == ("gpu:0", "gpu", True)
    assert gpu.ceiling_bytes == working_set
    assert gpu.total_bytes == ram
    assert gpu.budget_bytes == gpu_budget
    assert cpu.budget_bytes == cpu_budget
    assert cpu.unified and machine.unified
    assert machine.ram_total_bytes == ram
    assert gpu.sources["ceiling_bytes"] == "MLX device_info max_recommended_working_set_size"
    assert machine.sources["ram_total_bytes"] == "sysctl hw.memsize"
    assert machine.warnings == ()


def test_mac_wired_limit_sysctl_set() -> None:
    host = fake_mac(64 * GiB, 56 * GiB, 60 * GiB, sysctl={"iogpu.wired_limit_mb": "57344"})
    gpu = probe(host).gpus[0]
    assert gpu.wired_limit_bytes == 57344 * MiB
    assert gpu.details["wired_limit_key"] == "iogpu.wired_limit_mb"
    assert gpu.sources["wired_limit_bytes"] == "sysctl iogpu.wired_limit_mb"


def test_mac_wired_limit_default_is_zero() -> None:
    gpu = probe(fake_mac(16 * GiB, 11453251584, 12 * GiB)).gpus[0]
    assert gpu.wired_limit_bytes == 0


def test_macos13_reads_debug_key_in_bytes() -> None:
    host = fake_mac(32 * GiB, 21 * GiB, 28 * GiB, os_name="macOS 13.6",
                    sysctl={"iogpu.wired_limit_mb": None, "debug.iogpu.wired_limit": "25769803776"})
    gpu = probe(host).gpus[0]
    assert gpu.wired_limit_bytes == 25769803776
    assert gpu.details["wired_limit_key"] == "debug.iogpu.wired_limit"


def test_mac_sysctl_missing_is_unknown_with_warning() -> None:
    host = fake_mac(16 * GiB, 11453251584, 12 * GiB,
                    sysctl={"iogpu.wired_limit_mb": None, "hw.memsize": None})
    machine = probe(host)
    assert machine.gpus[0].wired_limit_bytes is None
    assert machine.ram_total_bytes == 16 * GiB  # from psutil, and it says so
    assert machine.sources["ram_total_bytes"] == "psutil"
    assert any("hw.memsize" in w for w in machine.warnings)
    assert any("wired limit setting is unknown" in w for w in machine.warnings)


@pytest.mark.parametrize("garbage", ["", "abc", "-1", "12 MB", "0x10"])
def test_mac_sysctl_garbage_is_unknown_with_warning(garbage: str) -> None:
    host = fake_mac(16 * GiB, 11453251584, 12 * GiB, sysctl={"iogpu.wired_limit_mb": garbage})
    machine = probe(host)
    assert machine.gpus[0].wired_limit_bytes is None
    assert any("not a number" in w for w in machine.warnings)


def test_mac_without_working_set_has_unknown_budget() -> None:
    host = fake_mac(16 * GiB, 0, 12 * GiB)
    machine = probe(host)
    assert machine.gpus[0].budget_bytes is None
    assert machine.cpu.budget_bytes is None  # the shared pool cannot be split
    assert any("max_recommended_working_set_size" in w for w in machine.warnings)


def test_mac_zero_available_is_unknown_not_zero() -> None:
    # mistral.rs read "0 MB free" on macOS and refused to load; we say "unknown" instead
    machine = probe(fake_mac(16 * GiB, 11453251584, 0))
    assert machine.ram_available_bytes is None
    assert machine.gpus[0].budget_bytes is None
    assert any("available memory is unknown" in w for w in machine.warnings)


def test_intel_mac_has_no_metal() -> None:
    host = fake_mac(16 * GiB, 11453251584, 12 * GiB)
    intel = Host(**{**host.__dict__, "arch": "x86_64"})
    machine = probe(intel)
    assert machine.backend == "cpu"
    metal = next(b for b in machine.backends if b.name == "metal")
    assert "Apple Silicon" in metal.reason


# ----------------------------------------------------------------- CUDA machines

ORIN_TOTAL = 64335836 * 1024


def orin(tmp_path: Path, env: dict[str, str] | None = None) -> Host:
    torch = FakeTorch([FakeGpu("Orin", ORIN_TOTAL, 20 * GiB, is_integrated=1, major=8, minor=7)])
    return fake_linux(tmp_path, {"/proc/meminfo": meminfo(64335836, 60000000)}, env=env,
                      torch=torch, arch="aarch64", os_name="Ubuntu 22.04 (L4T 36.3)",
                      mlx=mlx_gpu(total_memory=ORIN_TOTAL, free_memory=20 * GiB))


def test_jetson_orin_64gb_integrated(tmp_path: Path) -> None:
    machine = probe(orin(tmp_path))
    gpu, cpu = machine.devices
    ceiling = int(ORIN_TOTAL * 0.75)
    assert machine.backend == "cuda"
    assert gpu.unified and "is_integrated=1" in gpu.unified_reason
    assert gpu.ceiling_bytes == ceiling == 49409922048
    # free memory comes from MemAvailable, never from cudaMemGetInfo's 20 GiB
    assert gpu.available_bytes == ceiling
    assert gpu.budget_bytes == ceiling - 988198440
    assert cpu.budget_bytes == 60000000 * 1024 - 3293994803 - ceiling
    assert gpu.sources["ceiling_bytes"] == "fraction 0.75 x RAM (default 0.75)"


def dgx_spark(tmp_path: Path, env: dict[str, str]) -> Host:
    total = 125_000_000 * 1024
    torch = FakeTorch([FakeGpu("NVIDIA GB10", total, 90 * GiB, is_integrated=1, major=12, minor=1)])
    return fake_linux(tmp_path, {"/proc/meminfo": meminfo(125_000_000, 120_000_000)}, env=env,
                      torch=torch, arch="aarch64", os_name="Ubuntu 24.04.3 LTS (DGX OS)")


def test_dgx_spark_honours_mistralrs_fraction(tmp_path: Path) -> None:
    machine = probe(dgx_spark(tmp_path, {"MISTRALRS_IGPU_MEMORY_FRACTION": "0.9"}))
    gpu = machine.gpus[0]
    assert gpu.ceiling_bytes == 115_200_000_000
    assert gpu.budget_bytes == 115_200_000_000 - 2_304_000_000
    assert "MISTRALRS_IGPU_MEMORY_FRACTION=0.9" in gpu.sources["ceiling_bytes"]


def test_unimap_fraction_wins_over_mistralrs(tmp_path: Path) -> None:
    env = {"MISTRALRS_IGPU_MEMORY_FRACTION": "0.9", "UNIMAP_IGPU_MEMORY_FRACTION": "0.5"}
    gpu = probe(dgx_spark(tmp_path, env)).gpus[0]
    assert gpu.ceiling_bytes == 64_000_000_000
    assert gpu.details["memory_fraction"] == 0.5


@pytest.mark.parametrize("value", ["abc", "", "0", "1.5", "-1", "nan", "inf", " "])
@pytest.mark.parametrize("var", ["UNIMAP_IGPU_MEMORY_FRACTION", "MISTRALRS_IGPU_MEMORY_FRACTION"])
def test_bad_fraction_is_a_clear_error(tmp_path: Path, var: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        probe(dgx_spark(tmp_path, {var: value}))
    assert var in str(err.value)
    assert "greater than 0 and at most 1" in str(err.value)


def test_fraction_of_one_is_allowed(tmp_path: Path) -> None:
    gpu = probe(dgx_spark(tmp_path, {"UNIMAP_IGPU_MEMORY_FRACTION": "1"})).gpus[0]
    assert gpu.ceiling_bytes == 128_000_000_000


def test_gh200_is_discrete_with_separate_host_ram(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("NVIDIA GH200 480GB", 102005473280, 100_000_000_000)])
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(503316480, 490_000_000)},
                      torch=torch, arch="aarch64")
    machine = probe(host)
    gpu, cpu = machine.devices
    assert not gpu.unified and not machine.unified
    assert gpu.total_bytes == 102005473280
    assert gpu.budget_bytes == 100_000_000_000 - 2040109465
    # host RAM is its own pool: not reduced by the GPU's budget
    assert cpu.budget_bytes == 490_000_000 * 1024 - 25769803776
    assert not cpu.unified


def test_h100_discrete(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("NVIDIA H100 80GB HBM3", 85520809984, 84_000_000_000)])
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(268435456, 250_000_000)}, torch=torch)
    gpu, cpu = probe(host).devices
    assert gpu.budget_bytes == 84_000_000_000 - 1710416199
    assert gpu.sources["available_bytes"] == "torch.cuda.mem_get_info free"
    assert cpu.budget_bytes == 256_000_000_000 - 13743895347
    assert gpu.details["compute_capability"] == "9.0"


def test_two_discrete_gpus_are_numbered(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("A", 24 * GiB, 20 * GiB), FakeGpu("B", 24 * GiB, 10 * GiB)])
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(67108864, 60000000)}, torch=torch)
    machine = probe(host)
    assert [d.name for d in machine.devices] == ["gpu:0", "gpu:1", "cpu"]
    assert machine.device("gpu:1").budget_bytes == 10 * GiB - 512 * MiB


def test_mem_get_info_failure_is_unknown_with_warning(tmp_path: Path) -> None:
    torch = FakeTorch([FakeGpu("NVIDIA H100", 80 * GiB, 70 * GiB)], fail_mem_get_info=True)
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(67108864, 60000000)}, torch=torch)
    machine = probe(host)
    assert machine.gpus[0].budget_bytes is None
    assert any("mem_get_info failed" in w for w in machine.warnings)


@pytest.mark.parametrize(("torch", "reason"), [
    (None, "PyTorch is not installed"),
    (FakeTorch([], cuda_version=None), "CPU-only build"),
    (FakeTorch([]), "sees no CUDA device"),
    (FakeTorch([FakeGpu("X", GiB, GiB)], fail=RuntimeError("CUDA driver version is insufficient")),
     "CUDA driver version is insufficient"),
])
def test_cuda_not_viable_reasons(tmp_path: Path, torch: FakeTorch | None, reason: str) -> None:
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(16777216, 12000000)}, torch=torch)
    machine = probe(host)
    cuda = next(b for b in machine.backends if b.name == "cuda")
    assert machine.backend == "cpu"
    assert not cuda.viable and reason in cuda.reason


# ----------------------------------------------------------------- containers and /proc


def test_cgroup_v2_limit_narrows_ram(tmp_path: Path) -> None:
    files = {
        "/proc/meminfo": meminfo(67108864, 62914560),
        "/proc/self/cgroup": "0::/docker/abc\n",
        "/sys/fs/cgroup/docker/abc/memory.max": "8589934592\n",
        "/sys/fs/cgroup/docker/abc/memory.current": "1073741824\n",
        "/sys/fs/cgroup/docker/abc/memory.stat": "anon 700000000\ninactive_file 268435456\n",
    }
    machine = probe(fake_linux(tmp_path, files))
    assert machine.ram_total_bytes == 8 * GiB
    assert machine.cgroup_limit_bytes == 8 * GiB
    # limit minus working set (usage minus reclaimable file cache)
    assert machine.ram_available_bytes == 8 * GiB - (1 * GiB - 256 * MiB)
    assert machine.cpu.budget_bytes == 8 * GiB - 768 * MiB - 1 * GiB
    assert "cgroup v2" in machine.sources["ram_total_bytes"]


def test_cgroup_v2_parent_limit_binds(tmp_path: Path) -> None:
    files = {
        "/proc/meminfo": meminfo(67108864, 62914560),
        "/proc/self/cgroup": "0::/user.slice/job\n",
        "/sys/fs/cgroup/user.slice/memory.max": "4294967296\n",
        "/sys/fs/cgroup/user.slice/memory.current": "0\n",
        "/sys/fs/cgroup/user.slice/job/memory.max": "max\n",
    }
    machine = probe(fake_linux(tmp_path, files))
    assert machine.cgroup_limit_bytes == 4 * GiB
    assert machine.ram_available_bytes == 4 * GiB


def test_cgroup_v2_namespaced_root(tmp_path: Path) -> None:
    files = {
        "/proc/meminfo": meminfo(67108864, 62914560),
        "/proc/self/cgroup": "0::/\n",
        "/sys/fs/cgroup/memory.max": "2147483648\n",
        "/sys/fs/cgroup/memory.current": "0\n",
    }
    assert probe(fake_linux(tmp_path, files)).ram_total_bytes == 2 * GiB


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    files = {
        "/proc/meminfo": meminfo(67108864, 62914560),
        "/proc/self/cgroup": "5:cpu,cpuacct:/\n4:memory:/docker/abc\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "2147483648\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": "536870912\n",
        "/sys/fs/cgroup/memory/memory.stat":
            "total_inactive_file 134217728\nhierarchical_memory_limit 2147483648\n",
    }
    machine = probe(fake_linux(tmp_path, files))
    assert machine.ram_total_bytes == 2 * GiB
    assert machine.ram_available_bytes == 2 * GiB - (512 * MiB - 128 * MiB)


def test_cgroup_v1_unlimited_keeps_meminfo(tmp_path: Path) -> None:
    files = {
        "/proc/meminfo": meminfo(67108864, 62914560),
        "/proc/self/cgroup": "4:memory:/process_api/x\n",
        "/sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/process_api/x/memory.usage_in_bytes": "583016448\n",
    }
    machine = probe(fake_linux(tmp_path, files))
    assert machine.cgroup_limit_bytes is None
    assert machine.ram_total_bytes == 64 * GiB
    assert machine.ram_available_bytes == 62914560 * 1024


@pytest.mark.parametrize("garbage", ["lots\n", "", "-5\n"])
def test_cgroup_garbage_is_a_warning(tmp_path: Path, garbage: str) -> None:
    files = {
        "/proc/meminfo": meminfo(67108864, 62914560),
        "/proc/self/cgroup": "0::/\n",
        "/sys/fs/cgroup/memory.max": garbage,
    }
    machine = probe(fake_linux(tmp_path, files))
    assert machine.ram_total_bytes == 64 * GiB
    assert any("container memory limit unknown" in w and "memory.max" in w
               for w in machine.warnings)


def test_unreadable_cgroup_file_is_a_warning(tmp_path: Path) -> None:
    files = {"/proc/meminfo": meminfo(67108864, 62914560), "/proc/self/cgroup": "0::/\n",
             "/sys/fs/cgroup/memory.max": "1073741824\n"}
    host = fake_linux(tmp_path, files)
    (tmp_path / "sys/fs/cgroup/memory.current").mkdir()  # a folder cannot be read as a file
    machine = probe(host)
    assert any("cannot read /sys/fs/cgroup/memory.current" in w for w in machine.warnings)


def test_missing_meminfo_is_unknown_with_warning(tmp_path: Path) -> None:
    machine = probe(fake_linux(tmp_path, {}))
    assert machine.ram_total_bytes is None
    assert machine.cpu.budget_bytes is None
    assert any("cannot read /proc/meminfo" in w for w in machine.warnings)


def test_garbled_meminfo_is_unknown_with_warning(tmp_path: Path) -> None:
    machine = probe(fake_linux(tmp_path, {"/proc/meminfo": "hello\nMemTotal: lots\n"}))
    assert machine.ram_total_bytes is None
    assert any("no readable MemTotal" in w for w in machine.warnings)


# ----------------------------------------------------------------- choosing a backend


def test_backend_override_by_environment(tmp_path: Path) -> None:
    machine = probe(orin(tmp_path, env={"UNIMAP_BACKEND": "cpu"}))
    assert machine.backend == "cpu"
    assert machine.gpus == ()
    assert machine.backend_source == "environment UNIMAP_BACKEND"


def test_backend_flag_beats_environment(tmp_path: Path) -> None:
    machine = probe(orin(tmp_path, env={"UNIMAP_BACKEND": "cpu"}), backend="cuda")
    assert machine.backend == "cuda"


def test_backend_override_not_viable(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="asks for backend 'metal', but it cannot run here: "
                       "Metal needs macOS; this is Linux. Viable backends: cuda, cpu|Viable "
                       "backends: cpu, cuda"):
        probe(orin(tmp_path), backend="metal")


def test_backend_override_unknown(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="'rocm', which is not installed; installed backends: "):
        probe(orin(tmp_path, env={"UNIMAP_BACKEND": "ROCm"}))


def test_backend_override_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UNIMAP_BACKEND is set but empty"):
        probe(orin(tmp_path, env={"UNIMAP_BACKEND": ""}))


def test_backends_report_priority_or_reason(tmp_path: Path) -> None:
    machine = probe(orin(tmp_path))
    by_name = {b.name: b for b in machine.backends}
    assert by_name["cuda"].priority == 90 and by_name["cuda"].selected
    assert by_name["cpu"].priority == 0 and not by_name["cpu"].selected
    assert by_name["metal"].priority is None and by_name["metal"].reason
    assert all(b.distribution == "unimap" for b in machine.backends)


# ----------------------------------------------------------------- reserves


def test_reserve_flags_override_defaults(tmp_path: Path) -> None:
    machine = probe(orin(tmp_path), gpu_reserve="2GiB", host_reserve=3 * GiB)
    gpu, cpu = machine.devices
    assert gpu.reserve_bytes == 2 * GiB
    assert gpu.budget_bytes == int(ORIN_TOTAL * 0.75) - 2 * GiB
    assert cpu.reserve_bytes == 3 * GiB
    assert gpu.sources["reserve_bytes"] == "flag --gpu-reserve = 2.00 GiB"


def test_reserve_environment(tmp_path: Path) -> None:
    env = {"UNIMAP_GPU_RESERVE": "1GB", "UNIMAP_HOST_RESERVE": "512MiB"}
    gpu, cpu = probe(orin(tmp_path, env=env)).devices
    assert gpu.reserve_bytes == 1_000_000_000
    assert cpu.reserve_bytes == 512 * MiB
    assert cpu.sources["reserve_bytes"] == "environment UNIMAP_HOST_RESERVE = 512.00 MiB"


@pytest.mark.parametrize("value", ["lots", "-1GiB", "1.5XB", ""])
def test_bad_reserve_is_a_clear_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="UNIMAP_GPU_RESERVE.*not a size"):
        probe(orin(tmp_path, env={"UNIMAP_GPU_RESERVE": value}))


def test_reserve_larger_than_memory_gives_zero_budget(tmp_path: Path) -> None:
    machine = probe(orin(tmp_path), gpu_reserve="1TiB")
    assert machine.gpus[0].budget_bytes == 0


# ----------------------------------------------------------------- this machine


def test_real_probe_agrees_with_psutil_and_proc() -> None:
    machine = probe()
    cpu = machine.cpu
    assert machine.backend in {b.name for b in machine.backends if b.viable}
    assert cpu.total_bytes is not None and cpu.budget_bytes is not None
    assert 0 < cpu.budget_bytes <= cpu.available_bytes <= cpu.total_bytes
    if machine.cgroup_limit_bytes is None:
        assert cpu.total_bytes == psutil.virtual_memory().total
    if not machine.unified:
        assert cpu.budget_bytes == cpu.available_bytes - cpu.reserve_bytes
    assert machine.to_dict()["devices"][-1]["name"] == "cpu"


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only")
def test_real_probe_on_linux_reads_meminfo() -> None:
    machine = probe()
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    assert machine.ram_total_bytes == min(total_kb * 1024, machine.cgroup_limit_bytes or 2**63)
    metal = next(b for b in machine.backends if b.name == "metal")
    assert not metal.viable


def test_cpu_name_from_cpuinfo_or_sysctl(tmp_path: Path) -> None:
    host = fake_linux(tmp_path, {"/proc/meminfo": meminfo(16777216, 12000000),
                                 "/proc/cpuinfo": "processor\t: 0\nmodel name\t: AMD EPYC 9654\n"})
    assert probe(host).cpu.description == "AMD EPYC 9654"
    assert probe(fake_linux(tmp_path / "bare", {"/proc/meminfo": meminfo(16777216, 12000000)})
                 ).cpu.description == "x86_64 CPU"
    mac = fake_mac(16 * GiB, 11453251584, 12 * GiB, sysctl={"machdep.cpu.brand_string": "Apple M3 Max"})
    assert probe(mac).cpu.description == "Apple M3 Max"


def test_real_torch_without_cuda_is_not_viable() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    cuda = next(b for b in probe().backends if b.name == "cuda")
    assert not cuda.viable
    expected = "CPU-only build" if torch.version.cuda is None else "sees no CUDA device"
    assert expected in cuda.reason and torch.__version__ in cuda.reason
