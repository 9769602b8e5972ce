"""Beyond one machine: cluster plans (pipeline splits chosen for the longest context, tensor
parallel shares) and real runs of 2 and 3 ranks over MLX's ring backend on 127.0.0.1, whose greedy
text equals one process; a killed or hung rank ends the run with a nonzero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner
from tiny_models import write_tiny_model

import unimap
from unimap.cli import cli
from unimap.cluster import host_names, plan_cluster, proportional_split, sliced
from unimap.distributed import free_ports
from unimap.errors import ConfigError
from unimap.estimate import Options
from unimap.inspect import inspect

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"
needs_stories = pytest.mark.skipif(not STORIES.is_file(), reason="stories260K.gguf is not beside the project")
PROMPT = "w1 w2 w3 w4 w5"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    return {family: write_tiny_model(root / family, family) for family in ("llama", "qwen3", "qwen3_moe")}


def machines(*names: str) -> list[tuple[str, Any]]:
    return [(name, unimap.api.resolve_machine(name)) for name in names]


# ---------------------------------------------------------------- planning


def test_sliced_stages_add_up_to_the_model(models: Path) -> None:
    spec = inspect(models / "llama3-8b")
    whole = sum(spec.layer_weight_bytes())
    parts = [sliced(spec, a, b) for a, b in ((0, 10), (10, 25), (25, 32))]
    assert sum(sum(p.layer_weight_bytes()) for p in parts) == whole
    assert [p.num_layers for p in parts] == [10, 15, 7]


def test_split_holds_at_least_the_memory_proportional_context(models: Path) -> None:
    """Two unequal Macs: the KV-aware split holds more tokens than one in proportion to memory,
    every rank fits, and the JSON shows each rank."""
    spec = inspect(models / "llama3-8b")
    pair = [("mac-36gb", unimap.api.resolve_machine("mac-36gb")),
            ("mac-16gb", unimap.api.resolve_machine("mac-16gb"))]
    cluster = plan_cluster(spec, pair, Options(max_seq_len=8192))
    assert cluster.fits and cluster.token_budget >= cluster.proportional_budget > 0
    assert sorted(i for r in cluster.ranks for i in r.layers) == list(range(32))
    assert cluster.ranks[0].layers[-1] == 31  # rank 0 runs the last layers (mlx-lm's order)
    assert all(r.plan.fits and r.peak_bytes <= r.budget_bytes for r in cluster.ranks)
    data = json.loads(cluster.to_json())
    assert data["split"] == list(cluster.split) and len(data["ranks"]) == 2
    # at its token budget the split still fits; one token more does not
    at_budget = plan_cluster(spec, pair, Options(max_seq_len=cluster.token_budget))
    assert at_budget.fits
    past = plan_cluster(spec, pair, Options(max_seq_len=cluster.token_budget + 1))
    assert not past.fits and past.problem and past.ways_out


def test_a_cluster_that_cannot_fit_says_by_how_much_and_what_would(models: Path) -> None:
    spec = inspect(models / "llama3-8b")
    small = [("a", unimap.api.resolve_machine("mac-16gb", ram="6GB")),
             ("b", unimap.api.resolve_machine("mac-16gb", ram="6GB"))]
    cluster = plan_cluster(spec, small, Options(max_seq_len=4096))
    assert not cluster.fits and "short" in cluster.problem
    assert any(w.startswith("one more machine with at least") for w in cluster.ways_out)
    assert any(w.startswith("--isq") for w in cluster.ways_out)


def test_proportional_split_gives_every_rank_a_layer() -> None:
    big, small = unimap.api.resolve_machine("mac-128gb"), unimap.api.resolve_machine("mac-16gb")
    assert proportional_split(32, [big, small]) == [28, 4]
    assert min(proportional_split(4, [big, small, small, small])) == 1


def test_tensor_parallel_needs_heads_that_divide(models: Path) -> None:
    spec = inspect(models / "llama3-8b")  # 32 heads, 8 KV heads
    two = plan_cluster(spec, machines("h100-80gb", "h100-80gb"), Options(max_seq_len=4096), "tensor")
    one = unimap.plan(spec, max_seq_len=4096, machine="h100-80gb")
    assert two.fits and two.ranks[0].peak_bytes < one.peak_bytes
    per_rank = sum(d.kv_bytes for d in two.ranks[0].plan.devices)
    assert per_rank * 2 >= sum(d.kv_bytes for d in one.devices)
    with pytest.raises(ConfigError, match="heads to divide by 3"):
        plan_cluster(spec, machines("h100-80gb", "h100-80gb", "h100-80gb"), Options(), "tensor")


def test_cli_plan_for_ranks_and_hosts(models: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["plan", str(models / "llama3-8b"), "--hosts", "mac-16gb,mac-16gb",
                                "--max-seq-len", "8192"])
    assert shown.exit_code == 0, shown.output
    assert "across 2 ranks (pipeline): fits" in shown.stdout and "token budget" in shown.stdout
    described = tmp_path / "box.json"
    described.write_text(unimap.api.resolve_machine("mac-64gb").to_json())
    both = runner.invoke(cli, ["plan", str(models / "llama3-8b"), "--hosts",
                               f"mac-16gb,{described}", "--json"])
    assert both.exit_code == 0, both.output
    assert json.loads(both.stdout)["ranks"][1]["host"] == str(described)
    local = runner.invoke(cli, ["plan", str(models / "llama3-8b"), "--ranks", "2", "--json"])
    assert local.exit_code in (0, 3) and len(json.loads(local.stdout)["ranks"]) == 2


@pytest.mark.parametrize(("content", "message"), [
    ("[]", "non-empty JSON list"),
    ('[["127.0.0.1"]]', "is not \"ip:port\""),
    ('[["127.0.0.1:99999"]]', "port from 1 to 65535"),
    ('[[1, 2]]', "should be a list of"),
    ('{"devices": 3}', "not a machine description"),
    ("[[", "invalid JSON"),
])
def test_bad_hostfiles(tmp_path: Path, content: str, message: str, models: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(content)
    result = CliRunner().invoke(cli, ["plan", str(models / "llama3-8b"), "--hosts", str(hostfile)])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_host_lists(models: Path) -> None:
    assert host_names("mac-16gb, mac-64gb") == ["mac-16gb", "mac-64gb"]
    for bad, message in (("a,,b", "empty entry"), ("", "--hosts is empty")):
        with pytest.raises(ConfigError, match=message):
            host_names(bad)
    with pytest.raises(ConfigError, match="neither a preset"):
        unimap.api.plan_cluster(models / "llama3-8b", hosts="gpu-box-7")


# ---------------------------------------------------------------- real ranks on 127.0.0.1


def run_ranks(model: Path, split: list[int] | None, ranks: int, *args: str,
              mode: str = "pipeline", timeout: float = 240) -> list[dict[str, Any]]:
    """Each rank of `unimap run MODEL --json` started as MLX's launcher would, its JSON back."""
    hostfile = model.parent / f"hosts-{os.getpid()}-{ranks}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(ranks)]))
    env = {**os.environ, "MLX_HOSTFILE": str(hostfile), "UNIMAP_PARALLEL": mode,
           "UNIMAP_NO_BLAS_PRELOAD": "1"}
    if split is not None:
        env["UNIMAP_SPLIT"] = ",".join(map(str, split))
    command = [sys.executable, "-m", "unimap", "run", str(model), "-p", PROMPT, "--json", *args]
    procs = [subprocess.Popen(command, env={**env, "MLX_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(ranks)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def one_process(model: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["run", str(model), "-p", PROMPT, "--json", *args])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


@pytest.mark.parametrize(("family", "split", "mode"), [
    ("llama", [1, 3], "pipeline"),  # no mlx-lm pipeline(): unimap's own stage, uneven
    ("qwen3_moe", [2, 2], "pipeline"),  # mlx-lm's pipeline() with an explicit split
    ("llama", None, "tensor"),  # mlx-lm's shard()
    ("qwen3", None, "pipeline"),  # as mlx.launch starts it: the ranks agree on their machines
])
def test_two_ranks_generate_what_one_process_does(tiny: dict[str, Path], family: str,
                                                  split: list[int] | None, mode: str) -> None:
    args = ("--max-tokens", "8", "--max-seq-len", "128")
    alone = one_process(tiny[family], *args)
    ranks = run_ranks(tiny[family], split, 2, *args, mode=mode)
    assert [r["text"] for r in ranks] == [alone["text"]] * 2
    for r in ranks:  # each rank within its own plan
        assert 0 < r["peak_memory_bytes"] <= r["predicted_peak_bytes"]
    if split is not None:
        assert [len(r["layers"]) for r in ranks] == split


def test_three_ranks_of_a_family_without_pipeline(tiny: dict[str, Path]) -> None:
    args = ("--max-tokens", "8", "--max-seq-len", "128")
    alone = one_process(tiny["qwen3"], *args)
    ranks = run_ranks(tiny["qwen3"], [1, 2, 1], 3, *args)
    assert [r["text"] for r in ranks] == [alone["text"]] * 3


@needs_stories
@pytest.mark.parametrize("launch", [["--ranks", "2"], ["--hosts", "127.0.0.1,127.0.0.1"]])
def test_stories_on_two_ranks_is_the_same_story(launch: list[str]) -> None:
    """`unimap run stories --ranks 2 --temp 0` (our launcher) and `--hosts 127.0.0.1,127.0.0.1`
    (mlx.launch) print what one process prints."""
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    base = [sys.executable, "-m", "unimap", "run", str(STORIES), "-p", "Once upon a time",
            "--max-tokens", "24", "--max-seq-len", "256", "--temp", "0", "-q"]
    alone = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    pair = subprocess.run([*base, *launch], capture_output=True, text=True, env=env, timeout=240)
    assert alone.returncode == 0 and pair.returncode == 0, pair.stderr
    assert pair.stdout == alone.stdout and pair.stdout.startswith("Once upon a time, there was")


def _children(parent: psutil.Process, count: int, deadline: float) -> list[psutil.Process]:
    while time.monotonic() < deadline:
        ranks = [c for c in parent.children(recursive=True) if "MLX_RANK" in _environ(c)]
        if len(ranks) >= count:
            return ranks
        time.sleep(0.1)
    raise AssertionError("the ranks did not start")


def _environ(process: psutil.Process) -> dict[str, str]:
    try:
        return dict(process.environ())
    except (psutil.Error, OSError):
        return {}


@pytest.mark.parametrize("launch", [["--ranks", "2"], ["--hosts", "127.0.0.1,127.0.0.1"]])
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_rank_that_dies_or_hangs_ends_the_run(tiny: dict[str, Path], how: str,
                                                launch: list[str]) -> None:
    """SIGKILL one rank mid-run (its peer raises at once), or SIGSTOP it (its peer's watchdog
    gives up): every process ends within 10 s, the exit code is nonzero, nothing is left;
    with our launcher and with MLX's (--hosts)."""
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1", "UNIMAP_RANK_TIMEOUT": "3"}
    command = [sys.executable, "-m", "unimap", "run", str(tiny["llama"]), "-p", PROMPT,
               "--max-tokens", "100000", "--max-seq-len", "1024", *launch,
               "--ignore-chat-template"]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(lambda: launcher.stdout.read(1), "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        parent = psutil.Process(launcher.pid)
        ranks = _children(parent, 2, time.monotonic() + 60)
        victim = next(r for r in ranks if _environ(r).get("MLX_RANK") == "1")
        deadline = time.monotonic() + 120
        while len("".join(printed)) < len(PROMPT) + 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # until rank 0 prints generated words: the ranks are talking
        assert len("".join(printed)) >= len(PROMPT) + 6, "the ranks never generated"
        hit = time.monotonic()
        victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        code = launcher.wait(timeout=30)
        took = time.monotonic() - hit
    finally:
        if launcher.poll() is None:
            launcher.kill()
        stderr = launcher.stderr.read() if launcher.stderr else ""
    assert code != 0, stderr
    assert took < 10, f"{took:.1f} s"
    assert "rank" in stderr and "failed" in stderr
    for r in ranks:
        assert not r.is_running() or r.status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------- --hosts: MLX's own launcher


def test_hosts_run_through_mlx_launch_as_one_process(tiny: dict[str, Path]) -> None:
    """`unimap run --hosts 127.0.0.1,127.0.0.1` starts its ranks with mlx.launch (ring backend;
    every host but 127.0.0.1 would be reached over ssh): the same text as one process, rank 0's
    figures once, each rank within its plan."""
    args = ("--max-tokens", "8", "--max-seq-len", "128")
    alone = one_process(tiny["qwen3"], *args)
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "unimap", "run", str(tiny["qwen3"]), "-p", PROMPT,
                           "--json", *args, "--hosts", "127.0.0.1,127.0.0.1"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["rank"] == 0 and printed[0]["ranks"] == 2
    assert printed[0]["text"] == alone["text"]
    assert 0 < printed[0]["peak_memory_bytes"] <= printed[0]["predicted_peak_bytes"]
    assert "rank finished" not in done.stderr  # the ranks' reports are the launcher's, not shown


def test_a_rank_that_fails_under_mlx_launch_fails_the_run(tiny: dict[str, Path]) -> None:
    """mlx.launch exits 0 when a rank fails; `unimap run --hosts` does not: the rank that failed
    first, with its own exit code (3: the plan does not fit)."""
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "unimap", "run", str(tiny["llama"]), "-p", PROMPT,
                           "--max-seq-len", "1000000", "--hosts", "127.0.0.1,127.0.0.1"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "failed (exit code 3)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("hosts", "message"), [
    ("mac-64gb,127.0.0.1", "a machine to plan for, not one to run on"),
    ("no-such-host.invalid,127.0.0.1", "cannot resolve host 'no-such-host.invalid'"),
    ("127.0.0.1,,127.0.0.1", "empty entry"),
])
def test_bad_run_hosts_are_refused_before_anything_starts(tiny: dict[str, Path], hosts: str,
                                                          message: str) -> None:
    result = CliRunner().invoke(cli, ["run", str(tiny["llama"]), "-p", PROMPT, "--hosts", hosts])
    assert result.exit_code == 2 and message in result.output, result.output
    both = CliRunner().invoke(cli, ["run", str(tiny["llama"]), "-p", PROMPT, "--hosts",
                                    "127.0.0.1", "--ranks", "2"])
    assert both.exit_code == 2 and "not both" in both.output


def test_an_unreachable_host_fails_the_run_and_names_it(tiny: dict[str, Path]) -> None:
    """127.0.0.2 is not 127.0.0.1, so mlx.launch reaches it over ssh, which nothing answers here
    (or no ssh client exists): the run fails at once, naming the host."""
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "unimap", "run", str(tiny["llama"]), "-p", PROMPT,
                           "--max-tokens", "2", "--hosts", "127.0.0.2,127.0.0.1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "rank 0 of 2 (on 127.0.0.2) failed" in done.stderr, done.stderr
    assert done.returncode != 255 or "ssh could not reach that host" in done.stderr


# ---------------------------------------------------------------- the GPUs of one machine (NCCL)


def cuda_machine(tmp_path: Path, gpus: int, gib: int, env: dict[str, str] | None = None) -> Any:
    """A CUDA machine of `gpus` discrete GPUs as the CUDA backend probes it (torch's device
    properties are the only fake), with 256 GiB of host RAM."""
    from fakes import FakeGpu, FakeTorch, fake_linux, meminfo

    from unimap.probe import probe

    torch = FakeTorch([FakeGpu("NVIDIA H100 80GB HBM3", gib * 2**30, gib * 2**30)] * gpus)
    host = fake_linux(tmp_path / f"root{gpus}x{gib}", {"/proc/meminfo": meminfo(256 * 2**20, 250 * 2**20)},
                      env=env, torch=torch)
    return probe(host)


def test_gpus_of_one_machine_run_tensor_parallel_when_one_gpu_is_not_enough(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mistral.rs's automatic NCCL: a model one process would spill to the CPU runs as a rank
    per GPU, each holding 1/N of every layer on its own GPU; one that fits a GPU stays there."""
    from unimap.api import gpu_group

    for name in ("UNIMAP_NO_NCCL", "MISTRALRS_NO_NCCL", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    two = cuda_machine(tmp_path, 2, 12)
    assert two.backend == "cuda" and [d.name for d in two.devices] == ["gpu:0", "gpu:1", "cpu"]
    single = unimap.plan(models / "llama3-8b", machine=two)
    assert not single.all_on_gpu  # 16 GB of bf16 weights: one 12 GiB GPU spills to the CPU
    group, kept = gpu_group(single)
    assert group is not None and group.fits and group.mode == "tensor" and kept is single
    assert len(group.ranks) == 2 and "through NCCL" in group.notes[0]
    spec = inspect(models / "llama3-8b")
    for rank in group.ranks:
        assert rank.plan.all_on_gpu and rank.peak_bytes <= rank.budget_bytes
        assert rank.machine.gpus[0].budget_bytes == two.gpus[0].budget_bytes  # a GPU each
        assert rank.machine.cpu.budget_bytes == two.cpu.budget_bytes // 2  # the host RAM shared
        layers = sum(d.weight_bytes for d in rank.plan.devices) - rank.plan.estimate.non_mapped_weight_bytes
        assert abs(layers - sum(spec.layer_weight_bytes()) / 2) < 2**20  # half of every layer
    small = unimap.plan(models / "llama3.2-1b", machine=two)
    assert small.all_on_gpu and gpu_group(small) == (None, small)  # fits one GPU: unchanged


@pytest.mark.parametrize("env, model, gpus, why", [
    ({"UNIMAP_NO_NCCL": "1"}, "llama3-8b", 2, "UNIMAP_NO_NCCL is set: one process on gpu:0"),
    ({"MISTRALRS_NO_NCCL": "true"}, "llama3-8b", 2, "MISTRALRS_NO_NCCL is set"),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, "llama3-8b", 2, "CUDA_VISIBLE_DEVICES=2,3: mlx.launch gives"),
    ({}, "llama3-8b", 3, "needs the heads to divide by 3"),
    ({}, "mixtral-8x7b", 2, "mlx-lm's mixtral model has no shard()"),
    ({}, "qwen3-30b-a3b", 2, "does not fit one GPU's budget (11.50 GiB) either"),
])
def test_gpus_of_one_machine_stay_one_process_and_say_why(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
        model: str, gpus: int, why: str) -> None:
    from unimap.api import gpu_group

    for name in ("UNIMAP_NO_NCCL", "MISTRALRS_NO_NCCL", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    single = unimap.plan(models / model, machine=cuda_machine(tmp_path, gpus, 12))
    group, kept = gpu_group(single)
    assert group is None and why in kept.notes[-1] and kept.devices == single.devices


@pytest.mark.parametrize("value", ["maybe", "2", "-1"])
def test_a_nonsense_no_nccl_value_is_refused(models: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from unimap.api import gpu_group

    monkeypatch.setenv("UNIMAP_NO_NCCL", value)
    single = unimap.plan(models / "llama3-8b", machine=cuda_machine(tmp_path, 2, 12))
    with pytest.raises(ConfigError, match=r"UNIMAP_NO_NCCL=.*give 1 .* or 0"):
        gpu_group(single)


def test_a_gpu_group_that_cannot_join_ends_with_the_failed_rank(tiny: dict[str, Path],
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """The launch itself, through mlx.launch's NCCL backend: on this machine (no CUDA) each rank
    fails to join its group, and the run ends nonzero naming the rank, nothing left running."""
    from unimap.distributed import launch_gpus

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = launch_gpus([str(tiny["llama"]), "-p", PROMPT, "--max-tokens", "2"], 2)
    said = capfd.readouterr().err
    assert code != 0 and "failed" in said and "(on GPU " in said
    assert "cannot join the group" in said and "mlx[cuda]" in said  # the rank says what to check
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left


@pytest.mark.parametrize("launch", [["--ranks", "2"], ["--ranks", "3"],
                                    ["--ranks", "2", "--tensor-parallel"],
                                    ["--hosts", "127.0.0.1,127.0.0.1"]])
def test_a_chat_across_ranks_replies_as_one_process(tiny: dict[str, Path], launch: list[str]) -> None:
    """`-i` over ranks: rank 0 reads the messages (through mlx.launch with --hosts, which hands
    the terminal's lines to the ranks) and tells the others; every turn, /clear and the end are
    the same as in one process, and nothing is left running."""
    messages = "w1 w2\nw5 w6 w7\n/clear\nw3 w4 w5\n"
    args = [sys.executable, "-m", "unimap", "run", str(tiny["llama"]), "-i", "--max-tokens", "5",
            "--temp", "0", "--max-seq-len", "128"]
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}
    alone = subprocess.run(args, input=messages, capture_output=True, text=True, env=env,
                           timeout=120)
    assert alone.returncode == 0, alone.stderr[-2000:]
    replies = [line for line in alone.stdout.splitlines() if line.strip("> ")]
    assert len(replies) == 3 and "(the conversation starts over)" in alone.stderr
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ranked = subprocess.run([*args, *launch], input=messages, capture_output=True, text=True,
                            env=env, timeout=240)
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    if "--hosts" in launch:  # mlx.launch never ends the ranks' input: the end comes as /quit
        assert ranked.stdout == alone.stdout.rstrip("\n")
    else:
        assert ranked.stdout == alone.stdout
    assert "(the conversation starts over)" in ranked.stderr and "Traceback" not in ranked.stderr
    assert not {p.pid for p in psutil.Process().children(recursive=True)} - before


def test_cli_plans_a_gpu_group_for_a_described_multi_gpu_machine(models: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`unimap doctor --json` written on a two-GPU CUDA machine, planned elsewhere with
    `unimap plan --machine FILE.json`: the group of ranks (tensor parallel, one per GPU), or with
    UNIMAP_NO_NCCL=1 the one-process plan saying why; a missing description is one line."""
    for name in ("UNIMAP_NO_NCCL", "MISTRALRS_NO_NCCL", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    described = tmp_path / "two-gpus.json"
    described.write_text(cuda_machine(tmp_path, 2, 12).to_json())
    args = ["plan", str(models / "llama3-8b"), "--machine", str(described), "--json"]
    group = CliRunner().invoke(cli, args)
    assert group.exit_code == 0, group.output
    data = json.loads(group.stdout)
    assert data["mode"] == "tensor" and len(data["ranks"]) == 2 and data["fits"]
    table = CliRunner().invoke(cli, args[:-1])
    assert "through NCCL" in table.stdout and "2 ranks" in table.stdout
    one = CliRunner().invoke(cli, args, env={"UNIMAP_NO_NCCL": "1"})
    assert one.exit_code == 0, one.output
    notes = json.loads(one.stdout)["notes"]
    assert any("UNIMAP_NO_NCCL is set" in n for n in notes)
    missing = CliRunner().invoke(cli, ["plan", str(models / "llama3-8b"), "--machine",
                                       str(tmp_path / "nowhere.json")])
    assert missing.exit_code == 2 and "cannot read it" in missing.stderr
    assert "Traceback" not in missing.output


def test_the_watchdog_times_what_peers_hold_up_not_a_ranks_own_work() -> None:
    """A rank's watchdog ends its process when nothing moves for its timeout (a peer stopped
    answering), but not while the rank does its own work (reading, planning, loading a large
    model can take minutes): `unimap run`'s ranks do those inside `waiting()`. Before, a rank's
    whole start-up was timed, and under load two ranks with a 3 s limit ended before they
    generated."""
    script = ("import time\nfrom unimap.distributed import Watchdog\n"
              "dog = Watchdog(0.5, 'rank 0')\n"
              "with dog.waiting():\n    time.sleep(1.5)\n"
              "dog.beat()\nprint('alive', flush=True)\n"
              "time.sleep(1.5)\nprint('still', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["alive"]
    assert done.returncode == 3 and "no progress for 0.5 s" in done.stderr
