"""apply, across ranks: MLX's own distributed layer (the ring backend on TCP; JACCL, MPI or NCCL
where MLX has them) runs a cluster plan. No transport of our own.

- `launch_local` starts N ranks of `unimap run` on this machine (a hostfile of free ports on
  127.0.0.1, MLX_RANK per process), prints rank 0's output, and supervises them: when one rank
  fails, the others are stopped and the exit code is nonzero (mlx.launch returns 0 then).
- In a rank (MLX_RANK set), `join` opens the group, and `keep_stage` turns the lazily built model
  into its pipeline stage before any weight is evaluated: mlx-lm's own `pipeline(group, split)`
  where the family has it, otherwise a stage of our own (receive from the next rank, run the
  layers, send to the previous rank tied into the cache with `mx.depends`, then all_gather so
  every rank samples the same token).
- A `Watchdog` ends a rank whose peers stopped answering (a hung peer blocks MLX's ring forever).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unimap.errors import ConfigError

SPLIT_VARIABLE = "UNIMAP_SPLIT"  # layers per rank, rank 0 first, set by the launcher
MODE_VARIABLE = "UNIMAP_PARALLEL"  # "pipeline" or "tensor"
TIMEOUT_VARIABLE = "UNIMAP_RANK_TIMEOUT"  # seconds without progress before a rank gives up
DEFAULT_TIMEOUT_S = 120.0
STOP_GRACE_S = 3.0


def in_rank(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return bool(env.get("MLX_RANK"))


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def rank_timeout(env: dict[str, str] | os._Environ[str] = os.environ) -> float:
    raw = env.get(TIMEOUT_VARIABLE, "")
    if not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.5 <= value <= 86400:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={raw!r}: give seconds from 0.5 to 86400")
    return value


# ---------------------------------------------------------------- the launcher


def launch_local(argv: Sequence[str], ranks: int, split: Sequence[int], mode: str) -> int:
    """Run `unimap run ARGV` as `ranks` processes on 127.0.0.1 and wait for them. Rank 0 prints;
    the others write to logs shown only when they fail. Returns the exit code: 0 when every rank
    ended well, else the first failure's (130 after Ctrl-C)."""
    timeout = rank_timeout()
    folder = Path(tempfile.mkdtemp(prefix="unimap-ranks-"))
    hostfile = folder / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in free_ports(ranks)]))
    args = list(argv)
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for rank in range(ranks):
            env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile),
                   "MLX_WORLD_SIZE": str(ranks), SPLIT_VARIABLE: ",".join(map(str, split)),
                   MODE_VARIABLE: mode, TIMEOUT_VARIABLE: str(timeout)}
            log = open(folder / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed below)
            logs.append(log)
            out = None if rank == 0 else log
            processes.append(subprocess.Popen([sys.executable, "-m", "unimap", "run", *args],
                                              env=env, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=None if rank == 0 else subprocess.STDOUT))
        return _supervise(processes, folder)
    except KeyboardInterrupt:
        _stop(processes)
        return 130
    finally:
        _stop(processes)
        for log in logs:
            log.close()
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _supervise(processes: list[subprocess.Popen[bytes]], folder: Path) -> int:
    """Wait for every rank; the first one that fails stops the rest."""
    while True:
        codes = [p.poll() for p in processes]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            rank, code = failed[0]
            _stop(processes)
            why = _last_lines(folder / f"rank{rank}.log") if rank else ""
            sys.stderr.write(f"error: rank {rank} of {len(processes)} failed (exit code {code})"
                             + (f": {why}" if why else "") + "; the other ranks were stopped\n")
            return code if code and code > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.05)


def _last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-count:])[-400:]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every rank still running, SIGKILL what is left after a grace period (a stopped
    or hung process included): nothing is left running."""
    alive = [p for p in processes if p.poll() is None]
    for p in alive:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM only when resumed
    deadline = time.monotonic() + STOP_GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()


# ---------------------------------------------------------------- inside a rank


class Watchdog:
    """Ends this process (exit code 3) when `beat()` has not been called for `timeout` seconds:
    a peer that hangs would otherwise block MLX's ring backend forever."""

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = timeout, what
        self.last = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self.done.set()

    def _watch(self) -> None:
        while not self.done.wait(0.25):
            if time.monotonic() - self.last > self.timeout:
                sys.stderr.write(f"error: {self.what}: no progress for {self.timeout:g} s (a peer "
                                 f"rank stopped answering); {TIMEOUT_VARIABLE} sets the limit\n")
                sys.stderr.flush()
                os._exit(3)


def join() -> Any:
    """This process's group (MLX_RANK and MLX_HOSTFILE set by the launcher or by mlx.launch)."""
    import mlx.core as mx

    try:
        group = mx.distributed.init(strict=True, backend=os.environ.get("UNIMAP_BACKEND_DIST", "any"))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"rank {os.environ.get('MLX_RANK')}: cannot join the group ({exc}); check "
                          "MLX_HOSTFILE and that every host's port is free and reachable") from None
    return group


def rank_split(env: dict[str, str] | os._Environ[str], size: int) -> list[int] | None:
    raw = env.get(SPLIT_VARIABLE)
    if raw is None:
        return None
    try:
        split = [int(x) for x in raw.split(",")]
    except ValueError:
        split = []
    if len(split) != size or any(c < 1 for c in split):
        raise ConfigError(f"{SPLIT_VARIABLE}={raw!r} does not give a positive layer count for each "
                          f"of the {size} ranks")
    return split


def agree(group: Any, text: str) -> list[str]:
    """Every rank's `text`, in rank order, on every rank (all_gather of UTF-8 bytes)."""
    import mlx.core as mx
    import numpy as np

    data = text.encode()
    length = mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int32), group=group)
    longest = max(np.array(length).tolist())
    padded = np.zeros(max(longest, 1), dtype=np.uint8)
    padded[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    gathered = mx.distributed.all_gather(mx.array(padded), group=group)
    rows = np.array(gathered).reshape(group.size(), -1)
    sizes = np.array(length).tolist()
    return [bytes(rows[i, :sizes[i]]).decode() for i in range(group.size())]


def shared_seed(group: Any, seed: int | None) -> int:
    """One sampling seed for every rank: the given one, or rank 0's random draw."""
    import mlx.core as mx

    if seed is not None:
        return seed
    mine = int.from_bytes(os.urandom(4), "little") if group.rank() == 0 else 0
    total = mx.distributed.all_sum(mx.array(mine, dtype=mx.int64), group=group)
    return int(total.tolist())  # type: ignore[arg-type]


def keep_stage(model: Any, group: Any, split: Sequence[int]) -> tuple[int, int]:
    """Make `model` (lazy: nothing evaluated yet) this rank's pipeline stage; returns its layer
    range. Rank r runs the layers after those of ranks r+1..N-1 (mlx-lm's order)."""
    rank, size = group.rank(), group.size()
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):
        inner.pipeline(group, list(split))
        return int(inner.start_idx), int(inner.end_idx)
    layers = getattr(inner, "layers", None) if inner is not None else None
    if inner is None or not isinstance(layers, list):
        raise ConfigError("this model keeps its decoder layers where unimap's pipeline stage cannot "
                          "reach them; run it on one machine")
    start = sum(split[rank + 1:])
    end = start + split[rank]
    kept = layers[start:end]
    for layer in kept:
        layer.__class__ = _stage_class(type(layer))
        layer._unimap_stage = (group, rank, size, False, False)
    first, last = kept[0], kept[-1]
    first._unimap_stage = (group, rank, size, True, last is first)
    if last is not first:
        last._unimap_stage = (group, rank, size, False, True)
    inner.layers = kept
    return start, end


_STAGE_CLASSES: dict[type, type] = {}


def _stage_class(cls: type) -> type:
    """A subclass of a decoder layer class whose first instance of a stage receives its input
    from the next rank and whose last sends its output to the previous rank and gathers."""
    if cls in _STAGE_CLASSES or getattr(cls, "_unimap_stage_class", False):
        return _STAGE_CLASSES.get(cls, cls)

    class Stage(cls):  # type: ignore[misc]
        _unimap_stage_class = True

        def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            import mlx.core as mx

            group, rank, size, first, last = self._unimap_stage
            if first and rank < size - 1:
                x = mx.distributed.recv_like(x, rank + 1, group=group)
            h = super().__call__(x, *args, **kwargs)
            if last:
                if rank != 0:
                    h = mx.distributed.send(h, rank - 1, group=group)
                    cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
                    if cache is not None and getattr(cache, "keys", None) is not None:
                        cache.keys = mx.depends(cache.keys, h)
                if size > 1:
                    h = mx.distributed.all_gather(h, group=group)[: h.shape[0]]
            return h

    Stage.__name__ = Stage.__qualname__ = cls.__name__
    Stage.__module__ = cls.__module__
    _STAGE_CLASSES[cls] = Stage
    return Stage
