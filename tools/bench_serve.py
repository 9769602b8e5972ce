"""Serving under load: `unimap serve` and `mlx_lm.server` side by side, on the same model.

Usage: python tools/bench_serve.py [--model GGUF-or-folder] [--clients 64] [--requests 2]
                                   [--batch-sizes 1,4,16] [--rounds 1] [--json out.json]
                                   [--no-mlx-lm]

The model (default: ../shared/models/stories260K/stories260K.gguf) is written as an mlx-lm
folder (safetensors, config.json, tokenizer.json) that both servers load. For each batch size,
each server runs as its own process; --clients concurrent clients each send --requests
completions with mixed prompt lengths (4 to 140 words) and reply lengths (16 to 256 tokens),
half streamed, all greedy, every prompt unique (--repeat-prompts: four prompts recur, which
mlx_lm.server's prompt cache then serves without their prefill). A response is lost when it
errs or ends early (not 200, no [DONE]), and corrupted when its text differs from
`unimap.generate` on the same prompt or its usage does not add up. Prints Markdown for
docs/BENCHMARKS.md: p50/p99 latency, time to first token, tokens/s, and peak memory (MLX's
measured peak against the plan, and each process's peak RSS). With --rounds N the servers take
turns N times; a row shows the round of median tokens/s (of two: the faster), with the
requests, lost and corrupted of every round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STORIES = ROOT.parent / "shared" / "models" / "stories260K" / "stories260K.gguf"
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
         "park with her friends. One day, she saw a big red ball under a tree. She ran to the ball "
         "and picked it up. Her mom smiled and said they could take it home. Lily was very happy "
         "and hugged her mom. The sun was warm and the birds were singing in the sky. ")
PROMPT_WORDS = (4, 24, 72, 140)  # up to 242 tokens: with 256 to generate, within 512
REPLY_TOKENS = (16, 48, 128, 256)
MAX_SEQ_LEN = 512


Request = tuple[str, int, bool]  # prompt, max_tokens, streamed


def prompt_of(words: int, tag: str = "") -> str:
    """`words` words of the story; a tag in front makes the prompt unique (no prefix in common
    with another request's, so no server can reuse a cached prefill)."""
    text = (STORY * (1 + words // 60)).split()
    return (f"Story {tag}: " if tag else "") + " ".join(text[:words])


WARM_UP: Request = (prompt_of(4, "warm-up"), 16, False)


def mlx_folder(model: Path, out: Path) -> Path:
    """The model as an mlx-lm folder both servers load (a GGUF is converted; a folder is used)."""
    if model.is_dir():
        return model
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from unimap.gguf import gguf_config, read_gguf
    from unimap.runtime import gguf_model

    loaded, tokenizer = gguf_model(model)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(loaded.parameters())),
                        metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(gguf_config(read_gguf(model))))
    tokenizer._tokenizer.save_pretrained(str(out))
    return out


def references(folder: Path, asked: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """unimap.generate's greedy reply to each (prompt, max_tokens) of the load."""
    import unimap

    model, tokenizer, _ = unimap.load(str(folder), max_seq_len=MAX_SEQ_LEN)
    longest = max(len(tokenizer.encode(p)) + n for p, n in asked)
    if longest > MAX_SEQ_LEN:
        raise SystemExit(f"the longest request needs {longest} tokens, more than {MAX_SEQ_LEN}")
    return {(p, n): unimap.generate(model, tokenizer, p, max_tokens=n) for p, n in sorted(asked)}


def workload(clients: int, requests: int, repeat: bool, seed: int = 0) -> list[list[Request]]:
    """Each client's requests, every prompt unique unless `repeat` (then 4 prompts recur)."""
    rng = random.Random(seed)
    return [[(prompt_of(rng.choice(PROMPT_WORDS), "" if repeat else f"{c}.{i}"),
              rng.choice(REPLY_TOKENS), rng.random() < 0.5)
             for i in range(requests)] for c in range(clients)]


@dataclass
class Outcome:
    ok: bool
    correct: bool
    seconds: float
    first_token_seconds: float | None
    completion_tokens: int
    error: str = ""


async def one(client: Any, base: str, prompt: str, max_tokens: int, stream: bool,
              expected: str) -> Outcome:
    body: dict[str, Any] = {"model": "default_model", "prompt": prompt,  # mlx_lm.server's name
                            "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    first, text, used, done = None, "", None, not stream
    try:
        if stream:
            async with client.stream("POST", base + "/v1/completions", json=body) as answer:
                if answer.status_code != 200:
                    return Outcome(False, False, time.perf_counter() - start, None, 0,
                                   f"HTTP {answer.status_code}")
                async for line in answer.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    used = chunk.get("usage") or used
                    for choice in chunk.get("choices") or []:
                        if choice.get("text") and first is None:
                            first = time.perf_counter() - start
                        text += choice.get("text") or ""
        else:
            answer = await client.post(base + "/v1/completions", json=body)
            if answer.status_code != 200:
                return Outcome(False, False, time.perf_counter() - start, None, 0,
                               f"HTTP {answer.status_code}: {answer.text[:200]}")
            reply = answer.json()
            text, used = reply["choices"][0]["text"], reply.get("usage")
    except Exception as exc:
        return Outcome(False, False, time.perf_counter() - start, None, 0, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    tokens = int(used["completion_tokens"]) if used else 0
    adds_up = bool(used) and used["total_tokens"] == used["prompt_tokens"] + tokens and tokens <= max_tokens
    return Outcome(done, done and adds_up and text == expected, seconds, first, tokens,
                   "" if done else "no [DONE]")


async def load(base: str, plan: list[list[Request]], expected: dict[tuple[str, int], str],
               fresh: bool = False) -> tuple[list[Outcome], float]:
    """Every client's requests in turn, all clients at once; pooled connections (as the openai
    client keeps them), or with `fresh` a new connection for every request."""
    import httpx2 as httpx

    limits = httpx.Limits(max_connections=len(plan) + 8, max_keepalive_connections=len(plan) + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def ask(p: str, n: int, s: bool) -> Outcome:
            if not fresh:
                return await one(client, base, p, n, s, expected[(p, n)])
            async with httpx.AsyncClient(timeout=600) as own:
                return await one(own, base, p, n, s, expected[(p, n)])

        async def run(requests: list[Request]) -> list[Outcome]:
            return [await ask(p, n, s) for p, n, s in requests]

        start = time.perf_counter()
        results = await asyncio.gather(*(run(r) for r in plan))
        return [o for r in results for o in r], time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, folder: Path, batch: int, port: int, queue: int,
          log: Any) -> subprocess.Popen[bytes]:
    """The server as its own process, its log (stderr) to the file `log`."""
    env = {**os.environ, "UNIMAP_NO_BLAS_PRELOAD": "1"}  # both servers on MLX's own BLAS
    if kind == "unimap":
        command = [sys.executable, "-m", "unimap", "serve", str(folder), "--port", str(port),
                   "--max-seq-len", str(MAX_SEQ_LEN), "--max-batch-size", str(batch),
                   "--max-queue", str(queue)]
    else:
        command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(folder), "--port",
                   str(port), "--decode-concurrency", str(batch), "--prompt-concurrency",
                   str(batch), "--log-level", "WARNING"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_ready(base: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import httpx2 as httpx

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base} did not become ready")


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def unimap_metrics(base: str) -> dict[str, float]:
    import httpx2 as httpx

    text = httpx.get(base + "/metrics").text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def bench(kind: str, folder: Path, batch: int, plan: list[list[Request]],
          expected: dict[tuple[str, int], str], fresh: bool) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = start(kind, folder, batch, port, len(plan) * 2, log)
        try:
            wait_ready(base, process)
            asyncio.run(load(base, [[WARM_UP]], expected))
            outcomes, wall = asyncio.run(load(base, plan, expected, fresh))
            rss = peak_rss_bytes(process.pid)
            figures = unimap_metrics(base) if kind == "unimap" else {}
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        log.seek(0)
        said = [line for line in log.read().decode(errors="replace").splitlines()
                if ' - "' not in line]  # without the access log
    ok = [o for o in outcomes if o.ok]
    latencies = sorted(o.seconds for o in ok)
    firsts = sorted(o.first_token_seconds for o in ok if o.first_token_seconds is not None)
    tokens = sum(o.completion_tokens for o in ok)
    errors = sorted({o.error for o in outcomes if o.error})
    return {"server": kind, "batch": batch, "requests": len(outcomes), "lost": len(outcomes) - len(ok),
            "corrupted": sum(not o.correct for o in ok), "errors": errors[:5],
            "p50_s": quantile(latencies, 0.5), "p99_s": quantile(latencies, 0.99),
            "first_token_p50_s": quantile(firsts, 0.5), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "peak_rss_bytes": rss,
            "mlx_peak_bytes": figures.get("unimap_peak_memory_bytes"),
            "planned_peak_bytes": figures.get("unimap_planned_peak_bytes"),
            "exit_code": code, "log_tail": said[-5:], "outcomes": [asdict(o) for o in outcomes]}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, batch): the round of median tokens/s, with every round's counts."""
    out = []
    for key in dict.fromkeys((r["server"], r["batch"]) for r in rows):
        rounds = sorted((r for r in rows if (r["server"], r["batch"]) == key),
                        key=lambda r: r["tokens_per_s"])
        out.append({**rounds[len(rounds) // 2], **{k: sum(r[k] for r in rounds)
                                                  for k in ("requests", "lost", "corrupted")},
                    "exit_code": ",".join(sorted({str(r["exit_code"]) for r in rounds}))})
    return out


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, model: Path, load: str) -> str:
    import mlx.core as mx
    import mlx_lm

    machine = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, MLX {mx.__version__} "
               f"({'GPU' if mx.is_available(mx.gpu) else 'CPU'}), mlx-lm {mlx_lm.__version__}")
    lines = [f"`python tools/bench_serve.py --clients {args.clients} --requests {args.requests} "
             f"--batch-sizes {args.batch_sizes} --rounds {args.rounds}"
             + (" --fresh-connections" if args.fresh_connections else "")
             + (" --repeat-prompts" if args.repeat_prompts else "") + f"` on {machine}; model "
             f"{model.name}, --max-seq-len {MAX_SEQ_LEN}; load average {load}.", "",
             "| server | batch | requests | lost | corrupted | p50 latency | p99 latency | "
             "first token p50 | tokens/s | MLX peak / plan | peak RSS | exit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary(rows):
        peak = ("-" if r["mlx_peak_bytes"] is None else
                f"{mib(r['mlx_peak_bytes'])} / {mib(r['planned_peak_bytes'])}")
        lines.append(f"| {r['server']} | {r['batch']} | {r['requests']} | {r['lost']} | "
                     f"{r['corrupted']} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | "
                     f"{r['first_token_p50_s']:.2f} s | {r['tokens_per_s']:.0f} | {peak} | "
                     f"{mib(r['peak_rss_bytes'])} | {r['exit_code']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=STORIES)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends in turn")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=1, help="times each server runs each batch size")
    parser.add_argument("--no-mlx-lm", action="store_true", help="bench unimap serve only")
    parser.add_argument("--repeat-prompts", action="store_true", help="4 prompts recur (a server "
                        "with a prompt cache then skips their prefill); default: every prompt unique")
    parser.add_argument("--fresh-connections", action="store_true",
                        help="a new connection for every request (default: pooled, as the openai client)")
    parser.add_argument("--json", type=Path, help="also write every figure and outcome here")
    args = parser.parse_args()
    if not args.model.exists():
        raise SystemExit(f"{args.model} is not here: pass --model PATH")
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlx_folder(args.model, Path(tmp) / "model")
        plan = workload(args.clients, args.requests, args.repeat_prompts)
        expected = references(folder, {(p, n) for r in [*plan, [WARM_UP]] for p, n, _ in r})
        rows = []
        before = os.getloadavg()
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for _ in range(args.rounds):
                for kind in ("unimap",) + (() if args.no_mlx_lm else ("mlx-lm",)):
                    row = bench(kind, folder, batch, plan, expected, args.fresh_connections)
                    print(f"{kind} batch {batch}: {row['tokens_per_s']:.0f} tokens/s, lost "
                          f"{row['lost']}, corrupted {row['corrupted']} {row['errors']}", file=sys.stderr)
                    rows.append(row)
        after = os.getloadavg()
    load = f"{before[0]:.1f} before, {after[0]:.1f} after (1 minute)"
    print(markdown(rows, args, args.model, load))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
