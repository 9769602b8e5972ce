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
- `launch_hosts` starts one rank per host through MLX's own launcher (`mlx.launch`: ssh to every
  host but 127.0.0.1, ring backend) and checks that every rank reported success: mlx.launch
  exits 0 even when a rank fails. `launch_gpus` starts one rank per GPU of this machine the same
  way, tensor parallel over NCCL (mlx.launch gives rank i CUDA_VISIBLE_DEVICES=i).
- A `Watchdog` ends a rank whose peers stopped answering (a hung peer blocks MLX's ring forever).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unimap.errors import ConfigError

SPLIT_VARIABLE = "UNIMAP_SPLIT"  # layers per rank, rank 0 first, set by the launcher
MODE_VARIABLE = "UNIMAP_PARALLEL"  # "pipeline" or "tensor"
TIMEOUT_VARIABLE = "UNIMAP_RANK_TIMEOUT"  # seconds without progress before a rank gives up
DEFAULT_TIMEOUT_S = 120.0
STOP_GRACE_S = 3.0
REPORT_VARIABLE = "UNIMAP_REPORT_DONE"  # set by launch_hosts: each rank says when it succeeded
DONE_MARK = "unimap: rank finished:"  # the line a rank writes to stderr then (never shown)
RING_PORT_VARIABLE = "UNIMAP_RING_PORT"  # the first port of the ring on remote hosts
DEFAULT_RING_PORT = 32323  # mlx.launch's own default
DIST_BACKEND_VARIABLE = "UNIMAP_BACKEND_DIST"  # the backend a rank joins with ("any" by default)
GPU_GROUP_VARIABLE = "UNIMAP_GPU_GROUP"  # ranks sharing this host, one per GPU (launch_gpus)


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


def launch_local(argv: Sequence[str], ranks: int, split: Sequence[int], mode: str,
                 interactive: bool = False) -> int:
    """Run `unimap run ARGV` as `ranks` processes on 127.0.0.1 and wait for them. Rank 0 prints
    (and, for a chat, reads this terminal); the others write to logs shown only when they fail.
    Returns the exit code: 0 when every rank ended well, else the first failure's (130 after
    Ctrl-C)."""
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
            reads = rank == 0 and interactive
            processes.append(subprocess.Popen([sys.executable, "-m", "unimap", "run", *args],
                                              env=env, stdin=None if reads else subprocess.DEVNULL,
                                              stdout=out,
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


def ring_hosts(hosts: Sequence[str]) -> list[tuple[str, str]]:
    """(ssh name, IP) of each rank's host for MLX's ring launcher, which needs IP addresses:
    names are resolved here, so an unknown host is an error before anything starts."""
    import ipaddress

    out = []
    for name in hosts:
        try:
            ipaddress.ip_address(name)
            out.append((name, name))
            continue
        except ValueError:
            pass
        if name.endswith(".json") or name in _presets():
            raise ConfigError(f"run --hosts: {name!r} is a machine to plan for, not one to run on; "
                              "give host names or IP addresses (or an MLX hostfile), and plan "
                              "what-if clusters with `unimap plan --hosts`")
        try:
            out.append((name, socket.gethostbyname(name)))
        except (OSError, UnicodeError):
            raise ConfigError(f"run --hosts: cannot resolve host {name!r}; give its IP address or a "
                              "name this machine resolves") from None
    return out


def _presets() -> tuple[str, ...]:
    from unimap.machines import PRESETS

    return tuple(PRESETS)


def launch_hosts(argv: Sequence[str], hosts: Sequence[tuple[str, str]], mode: str,
                 interactive: bool = False) -> int:
    """Run `unimap run ARGV` on each host (one rank each) through mlx.launch's ring backend,
    with this machine's Python path on every host (as mlx.launch expects the same environment
    there); see _launch for what comes through and the exit code."""
    folder = Path(tempfile.mkdtemp(prefix="unimap-hosts-"))
    hostfile = folder / "hostfile.json"
    hostfile.write_text(json.dumps([{"ssh": ssh, "ips": [ip]} for ssh, ip in hosts]))
    local = all(ip == "127.0.0.1" for _, ip in hosts)
    port = _free_run(len(hosts)) if local else int(os.environ.get(RING_PORT_VARIABLE)
                                                     or DEFAULT_RING_PORT)
    try:
        return _launch(["--backend", "ring", "--hostfile", str(hostfile), "--starting-port",
                        str(port)], argv, mode, hosts, interactive)
    finally:
        hostfile.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def launch_gpus(argv: Sequence[str], gpus: int, interactive: bool = False) -> int:
    """Run `unimap run ARGV` as one rank per GPU of this machine, tensor parallel over NCCL,
    through mlx.launch (which gives rank i CUDA_VISIBLE_DEVICES=i); each rank plans its share
    of the host's RAM (GPU_GROUP_VARIABLE)."""
    options = ["--backend", "nccl", "--hosts", "127.0.0.1", "-n", str(gpus), "--nccl-port",
               str(free_ports(1)[0]), "--env", f"{DIST_BACKEND_VARIABLE}=nccl",
               "--env", f"{GPU_GROUP_VARIABLE}={gpus}"]
    return _launch(options, argv, "tensor", [(f"GPU {i}", "127.0.0.1") for i in range(gpus)],
                   interactive)


def _launch(options: list[str], argv: Sequence[str], mode: str,
            ranks: Sequence[tuple[str, str]], interactive: bool = False) -> int:
    """mlx.launch with `options` running `unimap run ARGV` in every rank; (name, ip) per rank.
    Rank 0's text comes through; each rank writes DONE_MARK when it succeeded, and a run that
    misses one exits nonzero with the launcher's last words about it."""
    timeout = rank_timeout()
    command = [*_launcher(), *options, "--env", f"{MODE_VARIABLE}={mode}",
               "--env", f"{TIMEOUT_VARIABLE}={timeout}", "--env", f"{REPORT_VARIABLE}=1", "--",
               sys.executable, "-m", "unimap", "run", *argv]
    done: set[str] = set()
    said: list[str] = []
    launcher = subprocess.Popen(command, stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    if interactive:
        threading.Thread(target=_feed, args=(launcher,), daemon=True).start()

    def relay() -> None:  # the launcher's stderr, less the ranks' reports
        for raw in iter(launcher.stderr.readline, b""):  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            if line.startswith(DONE_MARK):
                done.add(line[len(DONE_MARK):].strip())
                continue
            said.append(line.strip())
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = _wait_launcher(launcher, said)
        reader.join(timeout=STOP_GRACE_S)
    except KeyboardInterrupt:
        return 130
    finally:
        _stop_tree(launcher)
    missing = [i for i in range(len(ranks)) if str(i) not in done]
    if not missing and code == 0:
        return 0
    # the launcher's "Node with rank N exited with code C": the first rank that failed on its
    # own (a positive code) rather than being stopped by the launcher after it
    exits = [(int(m.group(1)), int(m.group(2))) for m in (
        re.search(r"rank (\d+) exited with code (-?\d+)", _plain(w)) for w in said) if m]
    rank, failed = next(((r, c) for r, c in exits if c > 0), exits[0] if exits else (
        missing[0] if missing else 0, code))
    ssh = failed == 255 and ranks[rank][1] != "127.0.0.1"
    sys.stderr.write(f"error: rank {rank} of {len(ranks)} (on {ranks[rank][0]}) failed"
                     + (f" (exit code {failed})" if failed else " (it did not report finishing)")
                     + ("; ssh could not reach that host or start the command there (check "
                        "`ssh HOST` works without a password and the same Python path exists)"
                        if ssh else "") + "; the run was stopped\n")
    return failed if failed > 0 else 1


def _feed(launcher: subprocess.Popen[bytes]) -> None:
    """A chat's lines to mlx.launch, which hands them to every rank (rank 0 reads them). It
    never closes the ranks' input, so the end of ours (Ctrl-D) is sent as /quit."""
    pipe = launcher.stdin
    assert pipe is not None
    with contextlib.suppress(OSError, ValueError):
        for line in sys.stdin.buffer:
            pipe.write(line)
            pipe.flush()
        pipe.write(b"/quit\n")
        pipe.flush()


def _wait_launcher(launcher: subprocess.Popen[bytes], said: list[str]) -> int:
    """mlx.launch's exit code. Once it reports a rank gone, it has STOP_GRACE_S to stop the
    others: it cannot stop a rank that hangs in a stopped state, and would wait for it forever."""
    failed_at = None
    while launcher.poll() is None:
        if failed_at is None and any("exited with code" in w or "was killed" in w for w in said):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > STOP_GRACE_S:
            _stop_tree(launcher)
            break
        time.sleep(0.05)
    return launcher.wait()


def _stop_tree(launcher: subprocess.Popen[bytes]) -> None:
    """Stop the launcher and every process it started on this machine (its ranks on 127.0.0.1,
    its ssh clients), resumed first so that a stopped one ends too."""
    import psutil

    try:
        tree = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGCONT)
            process.kill()
    _stop([launcher])


def _launcher() -> list[str]:
    """mlx.launch from this environment: its console script, else its module's main()."""
    script = Path(sys.executable).with_name("mlx.launch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; "
            "sys.argv[0] = 'mlx.launch'; main()"]


def _free_run(count: int, tries: int = 50) -> int:
    """The first of `count` consecutive TCP ports free on 127.0.0.1 (mlx.launch numbers the
    ring's ports from a starting one)."""
    for _ in range(tries):
        start = free_ports(1)[0]
        if start + count >= 65536:
            continue
        sockets = []
        try:
            for port in range(start, start + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise ConfigError(f"no {count} consecutive free ports on 127.0.0.1; free some and try again")


def _plain(text: str) -> str:
    """A launcher line without its terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


# ---------------------------------------------------------------- inside a rank


class Watchdog:
    """Ends this process (exit code 3) when `beat()` has not been called for `timeout` seconds:
    a peer that hangs would otherwise block MLX's ring backend forever."""

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = timeout, what
        self.last = time.monotonic()
        self.paused = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self.done.set()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """No limit inside: the ranks wait for a person (a chat's next message), or this rank
        does work of its own that no peer holds up (reading, planning, loading a model)."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False
            self.beat()

    def _watch(self) -> None:
        while not self.done.wait(0.25):
            if not self.paused and time.monotonic() - self.last > self.timeout:
                sys.stderr.write(f"error: {self.what}: no progress for {self.timeout:g} s (a peer "
                                 f"rank stopped answering); {TIMEOUT_VARIABLE} sets the limit\n")
                sys.stderr.flush()
                os._exit(3)


def join() -> Any:
    """This process's group (MLX_RANK and MLX_HOSTFILE set by the launcher or by mlx.launch)."""
    import mlx.core as mx

    backend = os.environ.get(DIST_BACKEND_VARIABLE, "any")
    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except (RuntimeError, ValueError) as exc:
        check = ("that MLX is its CUDA build (pip install mlx[cuda]) with NCCL, and that this "
                 "machine has a GPU per rank" if backend == "nccl" else
                 "MLX_HOSTFILE and that every host's port is free and reachable")
        raise ConfigError(f"rank {os.environ.get('MLX_RANK')}: cannot join the group ({exc}); "
                          f"check {check}") from None
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


def settle(model: Any) -> None:
    """Wait for everything this rank queued: the step mlx-lm computes ahead of the token it
    yields holds the pipeline's sends and receives, on the generation (or placement) streams.
    A collective issued on another stream before they finish can pair with them on a peer."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    streams = [generation_stream]
    state = getattr(model, "_unimap", None)
    if state is not None:
        p = state.placement
        streams += [p.gpu_stream, p.cpu_stream, *p.layer_streams.values()]
    seen: set[str] = set()
    for stream in streams:
        if str(stream) not in seen:
            seen.add(str(stream))
            mx.synchronize(stream)


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
