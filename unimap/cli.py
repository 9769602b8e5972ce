"""The `unimap` command: a thin shell over the stages, and the only importer of click and rich.

Errors a user can cause (UnimapError) become one line on stderr and exit code 2, here and
nowhere else; anything else is a bug and keeps its traceback. Tests pass a fake machine through
click's context object: `runner.invoke(cli, [...], obj={"host": fake_host})`.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from unimap import __version__
from unimap.api import plan as make_plan
from unimap.api import resolve_machine
from unimap.checks import check_sampling, is_utf8
from unimap.doctor import Report, diagnose
from unimap.errors import ConfigError, UnimapError
from unimap.host import Host
from unimap.machine import Machine
from unimap.machines import PRESETS
from unimap.plan import DoesNotFitError, Plan
from unimap.probe import probe
from unimap.render import layer_span, memory_bar
from unimap.units import format_bytes

_MARK = {"ok": "[green]ok[/]", "info": "[cyan]info[/]", "warn": "[yellow]WARN[/]",
         "error": "[bold red]ERROR[/]"}


MAX_ERROR_CHARS = 400  # an error is one line a terminal shows whole, never an echo of the input


def one_line(message: str) -> str:
    """A message as one line of at most MAX_ERROR_CHARS characters."""
    text = " ".join(message.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


class _Group(click.Group):
    """Every way out of a command is one line on stderr and an exit code: "error: ..." and 2 for
    bad input (unimap's errors and click's usage errors alike), "interrupted" and 130 for Ctrl-C."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())} (see --help)", err=True)
            code = exc.exit_code
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnimapError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unimap")
def cli() -> None:
    """Run LLMs with MLX on unified-memory machines, mapping layers to fit the memory."""


def _host(ctx: click.Context) -> Host:
    obj = ctx.obj or {}
    host = obj.get("host")
    return host if isinstance(host, Host) else Host.real()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--backend", help="Use this backend instead of the best viable one "
              "(also UNIMAP_BACKEND).")
@click.option("--gpu-reserve", metavar="SIZE", help="Memory to leave free on each GPU, e.g. 1GiB "
              "(also UNIMAP_GPU_RESERVE; default max(512 MiB, 2%)).")
@click.option("--host-reserve", metavar="SIZE", help="RAM to leave to the OS and other programs "
              "(also UNIMAP_HOST_RESERVE; default max(1 GiB, 5%)).")
@click.option("--no-bench", is_flag=True, help="Skip the sub-second CPU matmul benchmark.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, backend: str | None, gpu_reserve: str | None,
           host_reserve: str | None, no_bench: bool) -> None:
    """Say what this machine is and how much memory the GPU and CPU may use."""
    host = _host(ctx)
    machine = probe(host, backend=backend, gpu_reserve=gpu_reserve, host_reserve=host_reserve)
    report = diagnose(host, machine, bench=not no_bench)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _render_doctor(report, Console(file=sys.stdout, highlight=False, width=_width()))
    ctx.exit(1 if report.broken else 0)


def _width() -> int | None:
    return None if sys.stdout.isatty() else 120


def _render_doctor(report: Report, console: Console) -> None:
    machine, mlx = report.machine, report.mlx
    console.print(f"[bold]unimap doctor[/]  {machine.os_name} · {machine.arch} · "
                  f"MLX {mlx.version or 'not importable'} ({mlx.default_device or 'no device'})")
    console.print(_backends_table(machine))
    console.print(_devices_table(machine))
    console.print(_host_line(machine))
    _print_checks(report, console)
    verdict = ("[bold red]broken[/]: fix the errors above" if report.broken else
               "[green]ready[/]" + (" (see warnings)" if any(
                   c.status == "warn" for c in report.checks) else ""))
    console.print(verdict)


def _backends_table(machine: Machine) -> Table:
    table = Table(title="backends (unimap.backends entry points)", title_justify="left")
    for column in ("backend", "from", "priority", "status"):
        table.add_column(column)
    ranked = sorted(machine.backends, key=lambda b: (b.priority is None, -(b.priority or 0), b.name))
    for status in ranked:
        state = ("[bold green]selected[/]" if status.selected else "viable" if status.viable
                 else f"not viable: {escape(status.reason)}")
        priority = "-" if status.priority is None else str(status.priority)
        table.add_row(escape(status.name), escape(status.distribution), priority, state)
    return table


def _devices_table(machine: Machine) -> Table:
    table = Table(title="devices (memory a plan may use)", title_justify="left")
    for column in ("device", "what", "unified", "total", "ceiling", "available", "reserve",
                   "budget"):
        table.add_column(column, justify="right" if column not in ("device", "what") else "left")
    for d in machine.devices:
        table.add_row(d.name, escape(d.description), "yes" if d.unified else "no",
                      *(format_bytes(v) for v in (d.total_bytes, d.ceiling_bytes,
                                                  d.available_bytes, d.reserve_bytes)),
                      f"[bold]{format_bytes(d.budget_bytes)}[/]")
    return table


def _host_line(machine: Machine) -> str:
    cgroup = format_bytes(machine.cgroup_limit_bytes) if machine.cgroup_limit_bytes else "none"
    return (f"RAM {format_bytes(machine.ram_total_bytes)} total, "
            f"{format_bytes(machine.ram_available_bytes)} available · swap "
            f"{format_bytes(machine.swap_free_bytes)} free of {format_bytes(machine.swap_total_bytes)}"
            f" · container limit {cgroup}")


def _print_checks(report: Report, console: Console) -> None:
    """One line per check, advice below it; long lines wrap rather than being cut."""
    console.print("[italic]checks[/]")
    width = max(len(c.name) for c in report.checks)
    for check in report.checks:
        pad = " " * (5 - len(check.status))
        console.print(f"  {_MARK[check.status]}{pad} {escape(check.name):<{width}}  "
                      f"{escape(check.message)}", soft_wrap=True)
        if check.advice:
            console.print(f"  {'':5} {'':<{width}}  -> {escape(check.advice)}", soft_wrap=True)


@cli.command("plan")
@click.argument("model_arg", required=False, metavar="[MODEL]")
@click.option("-m", "--model", help="Model folder, Hugging Face repo id (owner/name).")
@click.option("--max-seq-len", type=int, default=4096, show_default=True,
              help="Tokens of context to make room for (prompt plus output).")
@click.option("--max-batch-size", type=int, default=1, show_default=True)
@click.option("--max-num-images", type=int, default=1, show_default=True,
              help="Images per request to make room for (vision-language models).")
@click.option("--max-image-length", type=int, default=1024, show_default=True,
              help="Longest image edge in pixels to make room for.")
@click.option("--isq", type=int, help="Quantize weights in situ to 2, 3, 4, 5, 6 or 8 bits.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]),
              help="Cast floating-point weights to this dtype.")
@click.option("--kv-bits", type=int, help="Quantize the KV cache to this many bits.")
@click.option("--kv-layout", type=click.Choice(["mlx-lm", "paged"]), default="mlx-lm",
              show_default=True, help="mlx-lm's growing cache, or one preallocated in blocks.")
@click.option("-n", "--device-map", "device_map",
              help='Deprecated manual map: "16" (layers on GPU 0) or "0:16;1:16".')
@click.option("--machine", "machine_name", metavar="NAME",
              help="Plan for a preset machine instead of this one (see --list-machines).")
@click.option("--list-machines", is_flag=True, help="List the machine presets and exit.")
@click.option("--ram", metavar="SIZE", help="What if the machine had this much RAM (e.g. 48GB)?")
@click.option("--gpu-budget", metavar="SIZE", help="What if the first GPU could use this much?")
@click.option("--gpu-reserve", metavar="SIZE", help="Memory to leave free on each GPU.")
@click.option("--host-reserve", metavar="SIZE", help="RAM to leave to the OS and other programs.")
@click.option("--backend", help="Probe with this backend instead of the best viable one.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write the plan "
              "as HTML (the notebook rendering) to this file.")
def plan_command(model_arg: str | None, model: str | None, max_seq_len: int, max_batch_size: int,
                 max_num_images: int, max_image_length: int, isq: int | None, dtype: str | None,
                 kv_bits: int | None, kv_layout: str, device_map: str | None,
                 machine_name: str | None, list_machines: bool, ram: str | None,
                 gpu_budget: str | None, gpu_reserve: str | None, host_reserve: str | None,
                 backend: str | None, as_json: bool, html_path: str | None) -> None:
    """Say before loading anything what goes where, and why; exit 3 if the model does not fit."""
    if list_machines:
        for preset in PRESETS.values():
            click.echo(f"{preset.name:18} {preset.source}")
        return
    target = model or model_arg
    if not target:
        raise click.UsageError("give a model: unimap plan -m MODEL (a folder or owner/name)")
    machine = resolve_machine(machine_name, ram=ram, gpu_budget=gpu_budget,
                              gpu_reserve=gpu_reserve, host_reserve=host_reserve, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # shown as a plan note instead
        result = make_plan(target, max_seq_len, max_batch_size, max_num_images, max_image_length,
                           isq, "auto" if device_map is None else device_map, machine, dtype=dtype,
                           kv_bits=kv_bits,
                           kv_layout=kv_layout)  # type: ignore[arg-type]
    if html_path:
        _write_html(html_path, result)
    if as_json:
        click.echo(result.to_json())
    else:
        _render_plan(result, Console(file=sys.stdout, highlight=False, width=_width()))
    if not result.fits:
        sys.exit(DoesNotFitError.exit_code)


def _write_html(path: str, result: Plan) -> None:
    from pathlib import Path

    target = Path(path)
    temporary = target.with_name(target.name + ".partial")
    try:
        temporary.write_text("<!doctype html><meta charset=utf-8>" + result._repr_html_())
        temporary.replace(target)  # never leave a half-written file behind
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"--html: cannot write {path} ({exc.strerror or exc}); give a path in "
                          "a folder that exists and is writable") from None


def _render_plan(result: Plan, console: Console) -> None:
    est, opts = result.estimate, result.estimate.options
    verdict = ("[green]fits, all on the GPU[/] (nothing moves: plain mlx-lm placement)"
               if result.all_on_gpu else "[green]fits[/]" if result.fits
               else f"[bold red]does not fit[/]: {escape(result.problem)}")
    console.print(f"[bold]{escape(result.model)}[/] on {escape(result.machine.os_name)} "
                  f"({result.machine.backend}): {verdict}", soft_wrap=True)
    console.print("  devices: " + "; ".join(f"{d.name} {escape(d.description)}"
                                            for d in result.devices), soft_wrap=True)
    console.print(f"  {len(est.layers)} layers, {est.dtype}; max-seq-len {opts.max_seq_len} x "
                  f"batch {opts.max_batch_size}"
                  + (f" + {est.image_tokens} image tokens" if est.image_tokens else "")
                  + (f"; isq {opts.isq}-bit" if opts.isq else "")
                  + (f"; kv {opts.kv_bits}-bit" if opts.kv_bits else "")
                  + (f"; map {result.mode}" if result.mode != "auto" else ""))
    table = Table(box=box.SIMPLE_HEAD, caption="█ weights  ▓ KV cache  ▒ activations  · free",
                  caption_justify="left")
    for column in ("device", "layers", "weights", "KV", "activ.", "used", "budget", "free",
                   "memory"):
        table.add_column(column, justify="left" if column in ("device", "layers", "memory")
                         else "right", no_wrap=True)
    for d in result.devices:
        free = format_bytes(d.free_bytes)
        table.add_row(d.name, layer_span(d.layers), format_bytes(d.weight_bytes),
                      format_bytes(d.kv_bytes + d.kv_growth_bytes),
                      format_bytes(d.activation_bytes), format_bytes(d.used_bytes),
                      format_bytes(d.budget_bytes),
                      free if d.free_bytes >= 0 else f"[red]{free}[/]", memory_bar(d, 16))
    console.print(table)
    placed = f"non-mapped parts ({format_bytes(est.non_mapped_weight_bytes)}) on {result.non_mapped_device}"
    if result.vision_device:
        placed += f"; vision tower ({format_bytes(est.vision_weight_bytes)}) on {result.vision_device}"
    console.print(f"  {placed}; predicted peak {format_bytes(result.peak_bytes)}"
                  + ("" if result.wired_limit_bytes is None else
                     f"; wired limit {format_bytes(result.wired_limit_bytes)}"), soft_wrap=True)
    for note in result.notes:
        console.print(f"  note: {escape(note)}", soft_wrap=True)
    for way in result.ways_out:
        console.print(f"  way out: {escape(way)}", soft_wrap=True)
    if not result.fits and not result.ways_out:
        console.print("  no setting found that fits: use a smaller model or a bigger machine")


def _plan_options(f: Any) -> Any:
    """The mapping flags `unimap run` shares with `unimap plan` (mistral.rs names)."""
    for option in reversed([
        click.option("-m", "--model", required=True,
                     help="Model folder, .gguf file, or Hugging Face repo id (owner/name)."),
        click.option("--max-seq-len", type=int, default=4096, show_default=True),
        click.option("--max-batch-size", type=int, default=1, show_default=True),
        click.option("--max-num-images", type=int, default=1, show_default=True),
        click.option("--max-image-length", type=int, default=1024, show_default=True),
        click.option("--isq", type=int, help="Quantize weights while loading: 2-6 or 8 bits."),
        click.option("--kv-bits", type=int, help="Quantize the KV cache to this many bits."),
        click.option("-n", "--device-map", "device_map", help='Deprecated manual map: "16".'),
    ]):
        f = option(f)
    return f


@cli.command("run")
@_plan_options
@click.option("--prompt", "-p", help="Text to continue (or the first chat message with -i); "
              "'-' reads it from standard input.")
@click.option("-i", "--interactive", is_flag=True, help="Chat: read messages from the terminal.")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temp", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, help="Random seed for sampling.")
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="An image to go with the prompt (vision-language models; repeat for more). "
                   "--max-num-images defaults to the number given.")
@click.pass_context
def run_command(ctx: click.Context, model: str, max_seq_len: int, max_batch_size: int,
                max_num_images: int, max_image_length: int, isq: int | None, kv_bits: int | None,
                device_map: str | None, prompt: str | None, interactive: bool, max_tokens: int,
                temp: float, top_p: float, seed: int | None, images: tuple[str, ...]) -> None:
    """Load MODEL the way its plan says and generate text."""
    from rich.progress import Progress as Bar

    from unimap import vlm
    from unimap.api import load
    from unimap.generate import stream_generate

    if prompt == "-":  # as mlx_lm.generate: the prompt from standard input
        prompt = sys.stdin.read()
    if not interactive and not (prompt and prompt.strip()):
        raise click.UsageError("give a non-empty --prompt, or -i to chat")
    check_sampling(max_tokens, temp, top_p, seed)  # before anything is planned or loaded
    if prompt is not None and not is_utf8(prompt):
        raise ConfigError("the prompt is not valid UTF-8 text (it holds an undecodable byte); give "
                          "it as UTF-8")
    if images and ctx.get_parameter_source("max_num_images") is click.core.ParameterSource.DEFAULT:
        max_num_images = max(max_num_images, len(images))  # plan for the images given
    console = Console(file=sys.stderr, highlight=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        planned = make_plan(model, max_seq_len, max_batch_size, max_num_images, max_image_length,
                            isq, "auto" if device_map is None else device_map, None, kv_bits=kv_bits)
    vision = planned.estimate.vision_weight_bytes > 0
    if images and not vision:
        raise vlm.text_only(model)
    pictures: list[Any] = []
    if images:  # every image checked before the model loads
        vlm.require()
        checked = vlm.read_images(list(images), max_num_images, max_image_length)
        pictures = checked.images
        for note in checked.notes:
            console.print(f"note: {escape(note)}", soft_wrap=True)
    _summary(planned, console)
    planned.require_fit()
    loaded = None
    try:
        with Bar(console=console, transient=True) as bar:
            task = bar.add_task("loading", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=f"loading {what}")

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                loaded, tokenizer, planned = load(model, progress=progress, planned=planned)
        history: list[dict[str, Any]] = []
        turns = _messages(prompt) if interactive else iter([prompt or ""])
        for message in turns:
            text: Any = message
            if interactive and vision:  # the images go with the first message of the chat
                history.append(vlm.user_message(message, 0 if history else len(pictures)))
                text = history
            elif interactive:
                text = _chat_prompt(tokenizer, history, message)
            click.echo("" if interactive or vision else message, nl=False)  # a VLM answers
            reply, last = "", None
            for last in stream_generate(loaded, tokenizer, text, max_tokens=max_tokens, temp=temp,
                                        top_p=top_p, seed=seed, images=pictures):
                click.echo(last.text, nl=False)
                reply += last.text
            click.echo()
            history.append({"role": "assistant", "content": reply})  # the next turn sees it
            if last is not None:
                console.print(_stats(last), highlight=False, soft_wrap=True)
                if last.finish_reason == "length" and last.generation_tokens < max_tokens:
                    end = planned.estimate.sequence_tokens
                    console.print(f"note: the reply stopped at the plan's end ({end} tokens with the "
                                  "prompt); plan a longer --max-seq-len for more", soft_wrap=True)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    finally:
        state = getattr(loaded, "_unimap", None) if loaded is not None else None
        if state is not None:
            state.wired.release()  # the previous wired limit, on every way out


def _summary(result: Plan, console: Console) -> None:
    gpu = [d for d in result.devices if d.name != "cpu" and d.layers]
    where = ("all on " + result.devices[0].name if result.all_on_gpu else
             ", ".join(f"{d.name} layers {layer_span(d.layers)}" for d in result.devices if d.layers))
    status = "fits" if result.fits else f"does not fit: {result.problem}"
    wired = ("" if result.wired_limit_bytes is None
             else f", wired limit {format_bytes(result.wired_limit_bytes)}")
    console.print(f"plan: {escape(result.model)} {status}; {where}; predicted peak "
                  f"{format_bytes(result.peak_bytes)}{wired}"
                  + (" (split: layers on the CPU run slower)" if gpu and not result.all_on_gpu else ""),
                  soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)


def _stats(r: Any) -> str:
    peak = format_bytes(r.peak_memory_bytes)
    versus = "" if r.predicted_peak_bytes is None else f" (plan: {format_bytes(r.predicted_peak_bytes)})"
    return (f"prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.1f} tokens/s; generation: "
            f"{r.generation_tokens} tokens, {r.generation_tps:.1f} tokens/s; peak memory {peak}{versus}")


def _messages(first: str | None) -> Any:
    """Chat messages: the --prompt first, then lines typed at "> " until /quit or end of input."""
    if first and first.strip():
        yield first
    while True:
        try:
            message = input("> ")
        except EOFError:
            return
        if message.strip() in ("/quit", "/exit"):
            return
        if message.strip():
            yield message


def _chat_prompt(tokenizer: Any, history: list[dict[str, str]], message: str) -> str:
    """The conversation so far in the tokenizer's chat template, or the bare message without one."""
    history.append({"role": "user", "content": message})
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True))
    return message


def main() -> None:
    cli(prog_name="unimap")
