"""The fastest CPU path for `unimap run` and `unimap serve`: on Linux, MLX's CPU wheel links a
bundled reference BLAS that multiplies float32 matrices about 17x slower than an installed OpenBLAS
(docs/BENCHMARKS.md). Those commands load the OpenBLAS into their own process before anything
imports MLX, with RTLD_GLOBAL, so MLX's BLAS calls resolve to it as they would under LD_PRELOAD
(as `unimap doctor` advises), without restarting the process.

Off with `--no-blas-preload` or UNIMAP_NO_BLAS_PRELOAD=1; never when LD_PRELOAD already names a
BLAS, when no OpenBLAS is installed, when MLX does not bundle the reference one, or once MLX is
imported (a library mapped into a process cannot be swapped afterwards).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from unimap.host import Host

OFF_VARIABLE = "UNIMAP_NO_BLAS_PRELOAD"
DONE_VARIABLE = "UNIMAP_BLAS_PRELOADED"  # set where LD_PRELOAD already carries it: never twice
OFF_FLAG = "--no-blas-preload"
PRELOADED_COMMANDS = ("run", "serve")
OPENBLAS_CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


def find_openblas(host: Host) -> str | None:
    """An installed OpenBLAS that LD_PRELOAD could put in front of MLX's BLAS."""
    for pattern in OPENBLAS_CANDIDATES:
        path = pattern.format(arch=host.arch)
        if (host.root / path.lstrip("/")).exists():
            return path
    return None


def bundled_reference_blas() -> Path | None:
    """The reference BLAS an mlx-cpu wheel carries (mlx_cpu.libs/libblas-*), found without
    importing MLX."""
    try:
        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        libs = Path(location).parent / "mlx_cpu.libs"
        found = sorted(libs.glob("libblas*")) if libs.is_dir() else []
        if found:
            return found[0]
    return None


def switched_off(env: Mapping[str, str], argv: Sequence[str]) -> bool:
    value = env.get(OFF_VARIABLE, "").strip().lower()
    return OFF_FLAG in argv or value not in ("", "0", "false", "no")


def preload_env(env: Mapping[str, str], argv: Sequence[str], host: Host | None = None,
                reference: Path | None = None) -> dict[str, str] | None:
    """The environment to re-execute `unimap run` or `serve` with, or None to run as is."""
    if len(argv) < 2 or argv[1] not in PRELOADED_COMMANDS or switched_off(env, argv):
        return None
    if env.get(DONE_VARIABLE):
        return None
    host = host or Host.real()
    if host.system != "Linux":
        return None
    preloaded = env.get("LD_PRELOAD", "")
    if "blas" in preloaded.lower() or "mkl" in preloaded.lower():
        return None
    openblas = find_openblas(host)
    if openblas is None or (reference or bundled_reference_blas()) is None:
        return None
    return {**env, "LD_PRELOAD": " ".join(p for p in (openblas, preloaded) if p),
            DONE_VARIABLE: openblas}


# The OpenBLAS this process loaded ahead of MLX, if it did (load_openblas)
LOADED: str | None = None

# OpenBLAS's worker threads spin for 2**OPENBLAS_THREAD_TIMEOUT cycles (default 2**28, about
# 0.1 s) whenever they run out of work, and so right after the library starts. On a 2-core machine
# that spin, next to numpy's own OpenBLAS doing the same, took a core from the import of mlx-lm:
# 40-50 ms more start-up in half the runs. At 4 they sleep at once; decode and prefill speed did
# not change (docs/BENCHMARKS.md). A value the user set is kept.
THREAD_TIMEOUT = ("OPENBLAS_THREAD_TIMEOUT", "4")


def load_openblas(argv: Sequence[str]) -> str | None:
    """Load the installed OpenBLAS into this process ahead of MLX when that is the faster path
    (see preload_env); returns its path, or None when it stays on the bundled BLAS."""
    global LOADED
    env = preload_env(os.environ, argv)
    if env is None or "mlx.core" in sys.modules:
        return None
    path = env[DONE_VARIABLE]
    os.environ.setdefault(*THREAD_TIMEOUT)  # read once, as the library starts
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:  # unreadable or not a library: the bundled BLAS still works
        return None
    LOADED = path
    return path


def leave(code: object) -> NoReturn:
    """End the process with `code` (what SystemExit carries). With an OpenBLAS loaded here, the
    library's exit handler is skipped: at exit it signals its sleeping worker threads and joins
    them, and the Debian 12 build (0.3.21) sometimes misses its own wake-up and waits forever, a
    finished run hanging after its last line (seen twice in one benchmark session, with its
    default thread timeout as with ours). Python's own exit handlers run first and the streams are
    flushed; only when no other thread of ours is still alive (else the interpreter's normal exit
    waits for them)."""
    import atexit
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    rc = code if isinstance(code, int) and not isinstance(code, bool) else 0 if code is None else 1
    alive = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    # loaded here, or by LD_PRELOAD where a parent (a launcher of ranks) set it up
    if (LOADED is None and not os.environ.get(DONE_VARIABLE)) or alive:
        sys.exit(rc)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe or stream: nothing more can be written
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(rc & 0xFF)
