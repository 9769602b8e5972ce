"""`unimap run` on Linux restarts itself once with an installed OpenBLAS preloaded when MLX's
CPU wheel carries the slow reference BLAS; flags and variables turn it off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import fake_linux, fake_mac

from unimap.host import Host
from unimap.preload import DONE_VARIABLE, OFF_VARIABLE, bundled_reference_blas, find_openblas, preload_env

OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K" / "stories260K.gguf"


@pytest.fixture()
def linux(tmp_path: Path) -> Host:
    return fake_linux(tmp_path, {OPENBLAS.lstrip("/"): ""})


def test_run_is_restarted_with_the_openblas(linux: Host, tmp_path: Path) -> None:
    env = preload_env({"PATH": "/bin"}, ["unimap", "run", "m", "-p", "x"], linux, tmp_path)
    assert env is not None and env["LD_PRELOAD"] == OPENBLAS and env[DONE_VARIABLE] == OPENBLAS
    assert env["PATH"] == "/bin"
    kept = preload_env({"LD_PRELOAD": "/opt/libfoo.so"}, ["unimap", "run"], linux, tmp_path)
    assert kept is not None and kept["LD_PRELOAD"] == f"{OPENBLAS} /opt/libfoo.so"


@pytest.mark.parametrize(("env", "argv"), [
    ({}, ["unimap", "plan", "m"]),  # only run computes
    ({}, ["unimap"]),
    ({}, ["unimap", "run", "m", "--no-blas-preload"]),
    ({OFF_VARIABLE: "1"}, ["unimap", "run", "m"]),
    ({OFF_VARIABLE: "yes"}, ["unimap", "run", "m"]),
    ({DONE_VARIABLE: OPENBLAS}, ["unimap", "run", "m"]),  # never twice
    ({"LD_PRELOAD": "/usr/lib/libmkl_rt.so"}, ["unimap", "run", "m"]),
    ({"LD_PRELOAD": "/opt/libopenblas64.so"}, ["unimap", "run", "m"]),
])
def test_not_restarted(linux: Host, tmp_path: Path, env: dict[str, str], argv: list[str]) -> None:
    assert preload_env(env, argv, linux, tmp_path) is None


def test_not_restarted_without_openblas_or_off_linux(tmp_path: Path) -> None:
    bare = fake_linux(tmp_path / "bare", {})
    assert preload_env({}, ["unimap", "run"], bare, tmp_path) is None
    mac = fake_mac(16 << 30, 12 << 30, 8 << 30)
    assert preload_env({}, ["unimap", "run"], mac, tmp_path) is None
    assert preload_env({OFF_VARIABLE: "0"}, ["unimap", "run"], bare, tmp_path) is None


def test_the_bundled_blas_is_found_without_importing_mlx() -> None:
    code = ("import sys; from unimap.preload import bundled_reference_blas as b; "
            "print(b()); print('mlx.core' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found, imported = done.stdout.split()
    assert imported == "False"
    if sys.platform == "linux":  # the mlx-cpu wheel carries its reference BLAS
        assert "libblas" in found and found == str(bundled_reference_blas())


@pytest.mark.skipif(not (sys.platform == "linux" and STORIES.is_file() and find_openblas(Host.real())
                         and bundled_reference_blas()), reason="needs Linux, an installed OpenBLAS "
                    "and the stories260K model")
def test_a_real_run_restarts_with_the_openblas() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (OFF_VARIABLE, DONE_VARIABLE, "LD_PRELOAD")}
    args = [sys.executable, "-m", "unimap", "run", str(STORIES), "-p", "Once upon a time",
            "--max-tokens", "8", "--max-seq-len", "128"]
    on = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert on.returncode == 0, on.stderr
    assert "use the installed OpenBLAS" in on.stderr and on.stdout.startswith("Once upon a time,")
    off = subprocess.run([*args, "--no-blas-preload"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert off.returncode == 0 and "OpenBLAS" not in off.stderr
    assert off.stdout == on.stdout  # the same story either way


@pytest.mark.skipif(not (sys.platform == "linux" and find_openblas(Host.real()) and bundled_reference_blas()),
                    reason="needs Linux, an installed OpenBLAS and MLX's bundled reference BLAS")
@pytest.mark.parametrize("given", [None, "12"])
def test_the_loaded_openblas_does_not_spin_at_start(given: str | None) -> None:
    """Its worker threads sleep when idle instead of spinning for 0.1 s (a core of a 2-core
    machine, taken from the start-up), unless the user chose a timeout."""
    env = {k: v for k, v in os.environ.items()
           if k not in (OFF_VARIABLE, DONE_VARIABLE, "LD_PRELOAD", "OPENBLAS_THREAD_TIMEOUT")}
    if given is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    code = ("import os; from unimap.preload import load_openblas; "
            "print(load_openblas(['unimap', 'run']), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    path, timeout = done.stdout.split()
    assert path == find_openblas(Host.real()) and timeout == (given or "4")


@pytest.mark.skipif(not (sys.platform == "linux" and find_openblas(Host.real()) and bundled_reference_blas()),
                    reason="needs Linux, an installed OpenBLAS and MLX's bundled reference BLAS")
@pytest.mark.parametrize(("code", "rc"), [("3", 3), ("None", 0), ("'bad input'", 1)])
def test_a_run_with_the_openblas_ends_without_its_exit_handler(code: str, rc: int) -> None:
    """OpenBLAS 0.3.21's exit handler can wait forever for a worker thread that missed its wake-up;
    `unimap` ends past it (unimap.preload.leave) with the exit code, Python's exit handlers run
    and the output flushed."""
    env = {k: v for k, v in os.environ.items() if k not in (OFF_VARIABLE, DONE_VARIABLE, "LD_PRELOAD")}
    script = ("import atexit, ctypes, sys; from unimap import preload\n"
              "assert preload.load_openblas(['unimap', 'run'])\n"
              "import mlx.core as mx; print(mx.ones(4).sum().item(), end=' ')\n"
              "atexit.register(print, 'atexit ran', end=' ')\n"
              f"preload.leave({code})")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == rc
    assert done.stdout == "4.0 atexit ran "
    assert done.stderr.strip() == ("bad input" if rc == 1 else "")


def test_leave_without_the_openblas_is_a_plain_exit() -> None:
    script = ("import threading, time; from unimap import preload\n"
              "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
              "preload.leave(5)")
    env = {k: v for k, v in os.environ.items() if k not in (DONE_VARIABLE, "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=60)
    assert (done.returncode, done.stdout) == (5, "thread done\n")  # its threads were waited for
