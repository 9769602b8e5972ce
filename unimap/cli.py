"""The `unimap` command: a thin shell over the stages, and the only importer of click and rich.

Errors a user can cause (UnimapError) become one line on stderr and exit code 2, here and
nowhere else; anything else is a bug and keeps its traceback. Tests pass a fake machine through
click's context object: `runner.invoke(cli, [...], obj={"host": fake_host})`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from unimap import __version__, preload
from unimap.api import plan as make_plan
from unimap.api import resolve_machine
from unimap.checks import check_sampling, is_utf8
from unimap.errors import ConfigError, UnimapError
from unimap.host import Host
from unimap.machine import Machine
from unimap.machines import PRESETS
from unimap.plan import DevicePlan, DoesNotFitError, Plan
from unimap.preload import DONE_VARIABLE
from unimap.probe import probe
from unimap.render import device_layers, layer_span, memory_bar, speed_line
from unimap.units import format_bytes

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table

    from unimap.doctor import Report


def escape(text: str) -> str:
    """`text` shown as is inside rich markup (rich is imported on first use: about 8 ms)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class LazyConsole:
    """A rich Console made on the first message shown. Importing rich takes about 17 ms, a sixth
    of what unimap adds to a run's start-up, so `run -q` and a run that loads quickly never
    import it. `quiet` holds everything back, as the Console's own flag does."""

    def __init__(self, file: Any = None, quiet: bool = False, width: int | None = None) -> None:
        self.file, self.quiet, self._width = file, quiet, width
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.file or sys.stderr, highlight=False,
                                    quiet=self.quiet, width=self._width)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        if not self.quiet:
            self.real.print(*objects, **options)

    def line(self, text: str) -> None:
        """`text` as it is (no markup, not wrapped): what a run says needs no rich."""
        if not self.quiet:
            click.echo(text, file=self.file or sys.stderr)

    def __getattr__(self, name: str) -> Any:  # width, measure, options, ...: the real Console's
        return getattr(self.real, name)


_MARK = {"ok": "[green]ok[/]", "info": "[cyan]info[/]", "warn": "[yellow]WARN[/]",
         "error": "[bold red]ERROR[/]"}


LOAD_BAR_AFTER_S = 0.3  # a load this long shows a progress bar
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
    from unimap.doctor import diagnose

    host = _host(ctx)
    machine = probe(host, backend=backend, gpu_reserve=gpu_reserve, host_reserve=host_reserve)
    report = diagnose(host, machine, bench=not no_bench)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _render_doctor(report, LazyConsole(sys.stdout, width=_width()))
    ctx.exit(1 if report.broken else 0)


def _width() -> int | None:
    """The terminal's width on a tty; otherwise COLUMNS when it is a width, else 120 columns."""
    if sys.stdout.isatty():
        return None  # rich asks the terminal (and honours COLUMNS too)
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 120


def _render_doctor(report: Report, console: LazyConsole) -> None:
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
    from rich.table import Table

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
    from rich.table import Table

    table = Table(title="devices (memory a plan may use)", title_justify="left")
    for column in ("device", "what", "unified", "total", "ceiling", "available", "reserve",
                   "budget", "reads"):
        table.add_column(column, justify="right" if column not in ("device", "what") else "left")
    for d in machine.devices:
        rate = d.bandwidth_bytes_per_s
        table.add_row(d.name, escape(d.description), "yes" if d.unified else "no",
                      *(format_bytes(v) for v in (d.total_bytes, d.ceiling_bytes,
                                                  d.available_bytes, d.reserve_bytes)),
                      f"[bold]{format_bytes(d.budget_bytes)}[/]",
                      "unknown" if rate is None else f"{rate / 1e9:g} GB/s")
    return table


def _host_line(machine: Machine) -> str:
    cgroup = format_bytes(machine.cgroup_limit_bytes) if machine.cgroup_limit_bytes else "none"
    return (f"RAM {format_bytes(machine.ram_total_bytes)} total, "
            f"{format_bytes(machine.ram_available_bytes)} available · swap "
            f"{format_bytes(machine.swap_free_bytes)} free of {format_bytes(machine.swap_total_bytes)}"
            f" · container limit {cgroup}")


def _print_checks(report: Report, console: LazyConsole) -> None:
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
@click.option("--max-seq-len", type=int, help="Tokens of context to make room for (prompt and "
              "reply) [default: 4096, or the model's trained context if shorter]")
@click.option("--max-batch-size", type=int, default=1, show_default=True)
@click.option("--max-num-images", type=int, default=1, show_default=True,
              help="Images per request to make room for (vision-language models).")
@click.option("--max-image-length", type=int, default=1024, show_default=True,
              help="Longest image edge in pixels to make room for.")
@click.option("--isq", type=int, help="Quantize weights in situ to 2, 3, 4, 5, 6 or 8 bits.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]),
              help="Cast floating-point weights to this dtype.")
@click.option("--kv-bits", type=int, help="Quantize the KV cache to this many bits.")
@click.option("--max-kv-size", type=int, help="Keep at most this many tokens per layer in a rotating KV "
              "cache (mlx-lm's flag): the sequence may run past it, the model sees the latest tokens.")
@click.option("--kv-layout", type=click.Choice(["mlx-lm", "paged"]), default="mlx-lm",
              show_default=True, help="mlx-lm's growing cache, or one preallocated in blocks.")
@click.option("-n", "--device-map", "device_map",
              help='Deprecated manual map: "16" (layers on GPU 0) or "0:16;1:16".')
@click.option("--cpu-moe", is_flag=True, help="Keep every layer's routed experts on the CPU, "
              "the rest of the model on the GPU (llama.cpp's flag; by default the plan decides).")
@click.option("--n-cpu-moe", type=int, metavar="N", help="Keep the routed experts of the first N "
              "layers on the CPU (llama.cpp's flag).")
@click.option("--machine", "machine_name", metavar="NAME",
              help="Plan for a preset machine (see --list-machines) or a machine description "
              "(FILE.json from `unimap doctor --json` there) instead of this one.")
@click.option("--list-machines", is_flag=True, help="List the machine presets and exit.")
@click.option("--ram", metavar="SIZE", help="What if the machine had this much RAM (e.g. 48GB)?")
@click.option("--gpu-budget", metavar="SIZE", help="What if the first GPU could use this much?")
@click.option("--gpu-reserve", metavar="SIZE", help="Memory to leave free on each GPU.")
@click.option("--host-reserve", metavar="SIZE", help="RAM to leave to the OS and other programs.")
@click.option("--backend", help="Probe with this backend instead of the best viable one.")
@click.option("--ranks", type=int, help="Plan N ranks (processes) on this machine: a pipeline "
              "split, each rank with its share of the memory.")
@click.option("--hosts", help="Plan a cluster: a comma-separated list of presets (mac-64gb), "
              "machine descriptions (FILE.json from `unimap doctor --json`) or 127.0.0.1; or an MLX "
              "hostfile.")
@click.option("--tensor-parallel", is_flag=True, help="With --ranks/--hosts: every rank holds 1/N "
              "of each layer instead of a range of layers.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write the plan "
              "as HTML (the notebook rendering) to this file.")
def plan_command(model_arg: str | None, model: str | None, max_seq_len: int | None, max_batch_size: int,
                 max_num_images: int, max_image_length: int, isq: int | None, dtype: str | None,
                 kv_bits: int | None, max_kv_size: int | None, kv_layout: str,
                 device_map: str | None, machine_name: str | None, list_machines: bool, ram: str | None,
                 gpu_budget: str | None, gpu_reserve: str | None, host_reserve: str | None,
                 backend: str | None, ranks: int | None, hosts: str | None,
                 tensor_parallel: bool, as_json: bool, html_path: str | None, cpu_moe: bool,
                 n_cpu_moe: int | None) -> None:
    """Say before loading anything what goes where, and why; exit 3 if the model does not fit."""
    if list_machines:
        for preset in PRESETS.values():
            click.echo(f"{preset.name:18} {preset.source}")
        return
    target = _model_argument(model_arg, model, "plan")
    if ranks is not None or hosts is not None:
        if (machine_name or ram or gpu_budget or device_map or html_path or max_num_images != 1
                or cpu_moe or n_cpu_moe is not None):
            raise click.UsageError("with --ranks or --hosts, give the machines through --hosts "
                                   "(presets or descriptions); --machine, --ram, --gpu-budget, -n, "
                                   "--cpu-moe, --n-cpu-moe, --html and images are for one machine")
        from unimap.api import plan_cluster

        cluster = plan_cluster(target, hosts, ranks, max_seq_len, max_batch_size, isq,
                               mode="tensor" if tensor_parallel else "pipeline", dtype=dtype,
                               kv_bits=kv_bits, max_kv_size=max_kv_size, gpu_reserve=gpu_reserve,
                               host_reserve=host_reserve, backend=backend)
        if as_json:
            click.echo(cluster.to_json())
        else:
            _render_cluster(cluster, LazyConsole(sys.stdout, width=_width()))
        if not cluster.fits:
            sys.exit(DoesNotFitError.exit_code)
        return
    if tensor_parallel:
        raise click.UsageError("--tensor-parallel needs --ranks or --hosts")
    machine = resolve_machine(machine_name, ram=ram, gpu_budget=gpu_budget,
                              gpu_reserve=gpu_reserve, host_reserve=host_reserve, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # shown as a plan note instead
        result = make_plan(target, max_seq_len, max_batch_size, max_num_images, max_image_length,
                           isq, "auto" if device_map is None else device_map, machine, dtype=dtype,
                           kv_bits=kv_bits, max_kv_size=max_kv_size, cpu_moe=cpu_moe,
                           n_cpu_moe=n_cpu_moe, kv_layout=kv_layout)  # type: ignore[arg-type]
    if device_map is None and not cpu_moe and n_cpu_moe is None:
        from unimap.api import gpu_group

        group, result = gpu_group(result)
        if group is not None:  # several CUDA GPUs: one rank each, tensor parallel
            if html_path:
                raise click.UsageError("--html renders one process's plan; this machine runs the "
                                       "model as a group of ranks (UNIMAP_NO_NCCL=1 for one)")
            if as_json:
                click.echo(group.to_json())
            else:
                _render_cluster(group, LazyConsole(sys.stdout, width=_width()))
            return
    if html_path:
        _write_html(html_path, result)
    if as_json:
        click.echo(result.to_json())
    else:
        _render_plan(result, LazyConsole(sys.stdout, width=_width()))
    if not result.fits:
        sys.exit(DoesNotFitError.exit_code)


def _render_cluster(cluster: Any, console: LazyConsole) -> None:
    """A cluster plan: one row per rank (its layers, bytes and headroom), the token budget
    against a split in proportion to memory, and the ways out."""
    from rich import box
    from rich.table import Table

    verdict = "[green]fits[/]" if cluster.fits else f"[bold red]does not fit[/]: {escape(cluster.problem)}"
    console.print(f"[bold]{escape(cluster.model)}[/] across {len(cluster.ranks)} ranks "
                  f"({cluster.mode}): {verdict}", soft_wrap=True)
    opts = cluster.options
    versus = ("" if cluster.mode == "tensor" else  # every rank holds every layer: no split
              f"; in proportion to memory {list(cluster.proportional_split)}: "
              f"{cluster.proportional_budget}")
    console.print(f"  max-seq-len {opts.max_seq_len} x batch {opts.max_batch_size}; token budget "
                  f"{cluster.token_budget} (the longest context every rank holds){versus}",
                  soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("rank", "host", "layers", "where", "weights", "KV", "peak", "budget", "free"):
        table.add_column(column, justify="right" if column in ("weights", "KV", "peak", "budget",
                                                               "free") else "left")
    for r in cluster.ranks:
        where = "; ".join(f"{d.name} {layer_span(tuple(r.layers[0] + i for i in d.layers))}"
                          for d in r.plan.devices if d.layers)
        free = format_bytes(r.headroom_bytes)
        table.add_row(str(r.index), escape(r.host), layer_span(r.layers), where,
                      format_bytes(sum(d.weight_bytes for d in r.plan.devices)),
                      format_bytes(sum(d.kv_bytes + d.kv_growth_bytes for d in r.plan.devices)),
                      format_bytes(r.peak_bytes), format_bytes(r.budget_bytes),
                      free if r.headroom_bytes >= 0 else f"[red]{free}[/]")
    console.print(table)
    for note in cluster.notes:
        console.print(f"  note: {escape(note)}", soft_wrap=True)
    for way in cluster.ways_out:
        console.print(f"  way out: {escape(way)}", soft_wrap=True)


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


def _render_plan(result: Plan, console: LazyConsole) -> None:
    """The plan at the console's width: lines wrap with a hanging indent, and the device table
    takes the widest layout that fits, so no number is ever cut."""
    est, opts = result.estimate, result.estimate.options
    verdict = ("[green]fits, all on the GPU[/] (nothing moves: plain mlx-lm placement)"
               if result.all_on_gpu else "[green]fits[/]" if result.fits
               else f"[bold red]does not fit[/]: {escape(result.problem)}")
    _wrapped(console, f"[bold]{escape(result.model)}[/] on {escape(result.machine.os_name)} "
             f"({escape(result.machine.backend)}): {verdict}", 4)
    _wrapped(console, "  devices: " + "; ".join(f"{escape(d.name)} {escape(d.description)}"
                                                for d in result.devices), 11)
    _wrapped(console, f"  {len(est.layers)} layers, {est.dtype}; max-seq-len {opts.max_seq_len} x "
             f"batch {opts.max_batch_size}"
             + (f" + {est.image_tokens} image tokens" if est.image_tokens else "")
             + (f"; isq {opts.isq}-bit" if opts.isq else "")
             + (f"; kv {opts.kv_bits}-bit" if opts.kv_bits else "")
             + (f"; map {escape(result.mode)}" if result.mode != "auto" else ""), 4)
    console.print(_device_tables(result, console))
    placed = f"non-mapped parts ({format_bytes(est.non_mapped_weight_bytes)}) on {result.non_mapped_device}"
    if result.vision_device:
        placed += f"; vision tower ({format_bytes(est.vision_weight_bytes)}) on {result.vision_device}"
    _wrapped(console, f"  {placed}; predicted peak {format_bytes(result.peak_bytes)}"
             + f" (MLX memory limit {format_bytes(result.memory_limit_bytes)})"
             + ("" if result.wired_limit_bytes is None else
                f"; wired limit {format_bytes(result.wired_limit_bytes)}"), 4)
    if speed_line(result):
        _wrapped(console, f"  {escape(speed_line(result))}", 4)
    for note in result.notes:
        _wrapped(console, f"  note: {escape(note)}", 8)
    for way in result.ways_out:
        _wrapped(console, f"  way out: {escape(way)}", 11)
    if not result.fits and not result.ways_out:
        _wrapped(console, "  no setting found that fits: use a smaller model or a bigger machine", 4)


def _wrapped(console: LazyConsole, markup: str, indent: int) -> None:
    """Print `markup` wrapped at the console's width with continuation lines indented by
    `indent` (rich starts them at column 0); a size ("10.35 GiB") stays on one line, and a
    word longer than a line is folded, never cut."""
    from rich.text import Text

    text = Text.from_markup(markup.replace("\n", " "))
    lines = text.divide(_breaks(text.plain, console.width, indent))
    for number, line in enumerate(lines):
        line.rstrip()
        console.print(Text(" " * indent if number else "") + line, soft_wrap=True)


_WORD = re.compile(r"\S+(?: (?:B|KiB|MiB|GiB|TiB)\b\S*)?\s*")  # a size with its unit is one word


def _breaks(plain: str, width: int, indent: int) -> list[int]:
    """Where greedy wrapping at `width` breaks `plain`, continuation lines `indent` shorter."""
    breaks: list[int] = []
    start, room = 0, max(width, 10)
    for word in _WORD.finditer(plain):
        end = word.start() + len(word.group().rstrip())
        if end - start > room and plain[start:word.start()].strip():  # it starts the next line
            breaks.append(start := word.start())
            room = max(width - indent, 10)
        while end - start > room:  # longer than a whole line: fold it
            breaks.append(start := start + room)
            room = max(width - indent, 10)
    return breaks


_LEGEND = "█ weights  ▓ KV cache  ▒ activations  · free"
_HEADS = ("device", "layers", "weights", "KV", "activ.", "used", "budget", "free")


def _device_tables(result: Plan, console: LazyConsole) -> Group:
    """A row per device with a 16-cell memory bar, else an 8-cell one, else none; on consoles
    too narrow for that (80 columns), devices become columns, as many per table as fit."""
    from rich.console import Group
    from rich.text import Text

    for bar in (16, 8, 0):
        table = _device_rows(result.devices, bar)
        if _natural_width(console, table) <= console.width:
            return Group(table)
    devices = list(result.devices)
    fit = 1
    while fit < len(devices) and _natural_width(
            console, _device_columns(devices[:fit + 1])) <= console.width:
        fit += 1
    per = -(-len(devices) // -(-len(devices) // fit))  # tables of even size, none wider
    return Group(*(_device_columns(devices[i:i + per]) for i in range(0, len(devices), per)),
                 Text(_LEGEND))


def _device_cells(d: DevicePlan) -> list[str]:
    free = format_bytes(d.free_bytes)
    return [escape(d.name), device_layers(d), format_bytes(d.weight_bytes),
            format_bytes(d.kv_bytes + d.kv_growth_bytes), format_bytes(d.activation_bytes),
            format_bytes(d.used_bytes), format_bytes(d.budget_bytes),
            free if d.free_bytes >= 0 else f"[red]{free}[/]"]


def _device_rows(devices: tuple[DevicePlan, ...], bar: int) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, caption=_LEGEND if bar else None, caption_justify="left")
    for head in _HEADS + (("memory",) if bar else ()):
        table.add_column(head, justify="left" if head in ("device", "layers", "memory")
                         else "right", no_wrap=True)
    for d in devices:
        table.add_row(*_device_cells(d), *([memory_bar(d, bar)] if bar else []))
    return table


def _device_columns(devices: list[DevicePlan]) -> Table:
    """Devices as columns and quantities as rows: the layout for narrow consoles."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    table.add_column(_HEADS[0], no_wrap=True)
    for d in devices:
        table.add_column(escape(d.name), justify="right", no_wrap=True)
    cells = [_device_cells(d)[1:] for d in devices]
    for row, head in enumerate(_HEADS[1:]):
        table.add_row(head, *(c[row] for c in cells))
    table.add_row("memory", *(memory_bar(d, 8) for d in devices))
    return table


def _natural_width(console: LazyConsole, table: Table) -> int:
    """Columns `table` takes when nothing in it is shortened."""
    real = console.real
    return int(real.measure(table, options=real.options.update_width(10_000)).maximum)


def _plan_options(f: Any) -> Any:
    """The mapping flags `unimap run` shares with `unimap plan` (mistral.rs names)."""
    for option in reversed([
        click.argument("model_arg", required=False, metavar="[MODEL]"),
        click.option("-m", "--model", help="Model folder, .gguf file, or Hugging Face repo id "
                     "(owner/name); or give it first, without -m."),
        click.option("--max-seq-len", type=int, help="Tokens of context to make room for (prompt "
                     "and reply) [default: 4096, or the model's trained context if shorter]"),
        click.option("--max-batch-size", type=int, default=1, show_default=True),
        click.option("--max-num-images", type=int, default=1, show_default=True),
        click.option("--max-image-length", type=int, default=1024, show_default=True),
        click.option("--isq", type=int, help="Quantize weights while loading: 2-6 or 8 bits."),
        click.option("--kv-bits", type=int, help="Quantize the KV cache to this many bits."),
        click.option("--max-kv-size", type=int, help="Keep at most this many tokens per layer "
                     "in a rotating KV cache (mlx-lm's flag): the sequence may run past it, the "
                     "model sees the latest tokens."),
        click.option("-n", "--device-map", "device_map", help='Deprecated manual map: "16".'),
        click.option("--cpu-moe", is_flag=True, help="Keep every layer's routed experts on the "
                     "CPU, the rest on the GPU (llama.cpp's flag; by default the plan decides)."),
        click.option("--n-cpu-moe", type=int, metavar="N", help="Keep the routed experts of the "
                     "first N layers on the CPU (llama.cpp's flag)."),
    ]):
        f = option(f)
    return f


def _sampling_options(f: Any) -> Any:
    """mlx_lm.generate's sampling flags, with its defaults."""
    for option in reversed([
        click.option("--max-tokens", type=int, default=256, show_default=True),
        click.option("--temp", type=float, default=0.0, show_default=True, help="0 is greedy."),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True, help="0 keeps every token."),
        click.option("--min-p", type=float, default=0.0, show_default=True),
        click.option("--xtc-probability", type=float, default=0.0, show_default=True),
        click.option("--xtc-threshold", type=float, default=0.1, show_default=True),
        click.option("--repetition-penalty", type=float, help="Above 1 discourages repeats."),
        click.option("--repetition-context-size", type=int, default=20, show_default=True),
        click.option("--seed", type=int, help="Random seed for sampling."),
    ]):
        f = option(f)
    return f


SAMPLING = ("temp", "top_p", "top_k", "min_p", "xtc_probability", "xtc_threshold",
            "repetition_penalty", "repetition_context_size")

CHAT_HELP = ("/clear starts the conversation over, /quit (or Ctrl-D) leaves, Ctrl-C stops a reply; "
             "Up and Down recall earlier messages")


@cli.command("run")
@_plan_options
@click.option("--prompt", "-p", help="The message (in the model's chat template), or the text to "
              "continue for a model without one; '-' reads it from standard input.")
@click.option("--system-prompt", help="A system message that opens the conversation.")
@click.option("--ignore-chat-template", is_flag=True, help="Continue --prompt as plain text.")
@click.option("-i", "--interactive", is_flag=True, help="Chat: read messages from the terminal.")
@_sampling_options
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="An image to go with the prompt (vision-language models; repeat for more). "
                   "--max-num-images defaults to the number given.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the plan's table.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the generated text.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply and its figures as one JSON "
              "object.")
@click.option("--no-blas-preload", is_flag=True, help="On Linux, keep MLX's bundled BLAS (by "
              "default `unimap run` loads an installed OpenBLAS ahead of MLX's; also "
              "UNIMAP_NO_BLAS_PRELOAD=1).")
@click.option("--ranks", type=int, help="Run as N ranks on this machine (MLX's ring backend on "
              "127.0.0.1), the model split by a cluster plan.")
@click.option("--hosts", "run_hosts", help="Run one rank on each of these machines through MLX's "
              "launcher (mlx.launch: ssh, ring backend): host names or IP addresses, comma-separated, "
              "or an MLX hostfile. Every host needs this Python environment and the model at the "
              "same path.")
@click.option("--tensor-parallel", is_flag=True, help="With --ranks: every rank holds 1/N of each "
              "layer (mlx-lm's shard()) instead of a range of layers.")
@click.pass_context
def run_command(ctx: click.Context, /, model_arg: str | None, model: str | None,
                max_seq_len: int | None, max_batch_size: int, max_num_images: int,
                max_image_length: int, isq: int | None, kv_bits: int | None,
                max_kv_size: int | None,
                device_map: str | None, prompt: str | None, system_prompt: str | None,
                ignore_chat_template: bool, interactive: bool, max_tokens: int, seed: int | None,
                images: tuple[str, ...], verbose: bool, quiet: bool, as_json: bool,
                no_blas_preload: bool, ranks: int | None, tensor_parallel: bool, cpu_moe: bool,
                n_cpu_moe: int | None, run_hosts: str | None, **sampling: Any) -> None:
    """Load MODEL the way its plan says and generate text (or chat, with -i)."""
    from unimap import vlm
    from unimap.distributed import in_rank

    target = _model_argument(model_arg, model, "run")
    if verbose and quiet:
        raise click.UsageError("give --verbose or --quiet, not both")
    if as_json and interactive:
        raise click.UsageError("--json prints one reply: leave out -i")
    if prompt == "-":  # as mlx_lm.generate: the prompt from standard input
        prompt = sys.stdin.read()
    if not interactive and not (prompt and prompt.strip()):
        raise click.UsageError("give a non-empty --prompt, or -i to chat")
    check_sampling(max_tokens, seed=seed, **sampling)  # before anything is planned or loaded
    for name, text in (("prompt", prompt), ("system prompt", system_prompt)):
        if text is not None and not is_utf8(text):
            raise ConfigError(f"the {name} is not valid UTF-8 text (it holds an undecodable byte); "
                              "give it as UTF-8")
    if images and ctx.get_parameter_source("max_num_images") is click.core.ParameterSource.DEFAULT:
        max_num_images = max(max_num_images, len(images))  # plan for the images given
    if ranks is not None or run_hosts is not None or in_rank():
        if images or device_map or cpu_moe or n_cpu_moe is not None:
            raise click.UsageError("--ranks and --hosts run a text model (no --image, -n, "
                                   "--cpu-moe or --n-cpu-moe yet)")
        if ranks is not None and run_hosts is not None:
            raise click.UsageError("give --ranks (ranks on this machine) or --hosts, not both")
        settings = {"max_tokens": max_tokens, "seed": seed, **sampling}
        options = {"max_seq_len": max_seq_len, "max_batch_size": max_batch_size, "isq": isq,
                   "kv_bits": kv_bits, "max_kv_size": max_kv_size,
                   "mode": "tensor" if tensor_parallel else "pipeline"}
        if in_rank():
            _run_as_rank(target, prompt or "", system_prompt, ignore_chat_template, options,
                         settings, quiet, as_json, interactive)
            return
        if run_hosts is not None:
            from unimap.cluster import host_names
            from unimap.distributed import launch_hosts, ring_hosts

            hosts = ring_hosts(host_names(run_hosts))
            sys.exit(launch_hosts(_rank_arguments(ctx, prompt or ""), hosts, str(options["mode"]),
                                  interactive))
        _launch_ranks(ctx, target, ranks or 1, prompt or "", options, quiet or as_json, interactive)
        return
    if tensor_parallel:
        raise click.UsageError("--tensor-parallel needs --ranks")
    console = LazyConsole(sys.stderr, quiet=quiet or as_json)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        planned = make_plan(target, max_seq_len, max_batch_size, max_num_images, max_image_length,
                            isq, "auto" if device_map is None else device_map, None, kv_bits=kv_bits,
                            max_kv_size=max_kv_size, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe)
    if device_map is None and not cpu_moe and n_cpu_moe is None:
        from unimap.api import gpu_group

        group, planned = gpu_group(planned)
        if group is not None:  # several CUDA GPUs: a rank on each, tensor parallel over NCCL
            _launch_gpus(ctx, group, prompt or "", quiet or as_json, interactive, images)
    vision = planned.estimate.vision_weight_bytes > 0
    if images and not vision:
        raise vlm.text_only(target)
    pictures: list[Any] = []
    if images:  # every image checked before the model loads
        vlm.require()
        checked = vlm.read_images(list(images), max_num_images, max_image_length)
        pictures = checked.images
        for note in checked.notes:
            console.line(f"note: {note}")
    if verbose:
        _render_plan(planned, LazyConsole(sys.stderr, width=_width()))
    else:
        _summary(planned, console)
    preloaded = os.environ.get(DONE_VARIABLE) or preload.LOADED
    if preloaded and any(d.name == "cpu" and d.layers for d in planned.devices):
        console.line(f"note: the CPU layers use the installed OpenBLAS ({preloaded}, preloaded); "
                     "--no-blas-preload keeps MLX's bundled BLAS")
    planned.require_fit()
    loaded = None
    try:
        _reset_peak()
        loaded, tokenizer, planned = _load(target, planned, console)
        settings = {"max_tokens": max_tokens, "seed": seed, **sampling}
        if interactive and not vision:
            _chat(loaded, tokenizer, planned, prompt, system_prompt, not ignore_chat_template,
                  settings, console)
        elif interactive:
            _vision_chat(loaded, tokenizer, planned, prompt, system_prompt, pictures, settings,
                         console)
        else:
            _once(loaded, tokenizer, planned, prompt or "", system_prompt, ignore_chat_template,
                  pictures, settings, console, as_json)
    except KeyboardInterrupt:
        console.line("interrupted")
        sys.exit(130)
    finally:
        state = getattr(loaded, "_unimap", None) if loaded is not None else None
        if state is not None:
            state.limits.release()  # the previous wired and memory limits, on every way out


@cli.command("serve")
@_plan_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--max-queue", type=int, default=64, show_default=True, help="Requests that may wait "
              "for a slot; one more is answered 429 with Retry-After.")
@click.option("--no-blas-preload", is_flag=True, help="On Linux, keep MLX's bundled BLAS (see "
              "`unimap run --help`).")
def serve_command(model_arg: str | None, model: str | None, max_seq_len: int | None,
                  max_batch_size: int, max_num_images: int, max_image_length: int, isq: int | None,
                  kv_bits: int | None, max_kv_size: int | None, device_map: str | None,
                  cpu_moe: bool, n_cpu_moe: int | None, host: str, port: int, max_queue: int,
                  no_blas_preload: bool) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API; the plan for --max-seq-len x
    --max-batch-size is the admission control (see the README's `unimap serve`)."""
    from unimap.checks import whole_number
    from unimap.serve import check_servable, listen, serve

    target = _model_argument(model_arg, model, "serve")
    whole_number(max_queue, "--max-queue", 0, 1 << 20)
    whole_number(port, "--port", 0, 65535)
    console = LazyConsole(sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        planned = make_plan(target, max_seq_len, max_batch_size, max_num_images, max_image_length,
                            isq, "auto" if device_map is None else device_map, None, kv_bits=kv_bits,
                            max_kv_size=max_kv_size, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe)
    _summary(planned, console)
    check_servable(planned)  # before the port is taken or anything loads
    sock = listen(host, port)

    def log(line: str) -> None:
        console.line(line)

    serve(target, planned, sock, max_queue=max_queue, log=log,
          loader=lambda: _load(target, planned, console))
    log("stopped")
    # Everything is finished and flushed. Tearing the interpreter down after MLX ran in another
    # thread aborted now and then ("terminate called without an active exception", about 1 run
    # in 10 after 64 concurrent clients), so a server that stopped cleanly leaves at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch_ranks(ctx: click.Context, target: str, ranks: int, prompt: str,
                  options: dict[str, Any], quiet: bool, interactive: bool = False) -> None:
    """Plan the ranks on this machine, then start them (rank 0 prints) and wait for them all."""
    from unimap.api import plan_cluster
    from unimap.distributed import launch_local

    mode = options.pop("mode")
    cluster = plan_cluster(target, None, ranks, mode=mode, **options)
    console = LazyConsole(sys.stderr, quiet=quiet)
    for r in cluster.ranks:
        console.line(f"plan: rank {r.index}: layers {layer_span(r.layers)}, predicted peak "
                     f"{format_bytes(r.peak_bytes)} of {format_bytes(r.budget_bytes)}")
    cluster.require_fit()
    code = launch_local(_rank_arguments(ctx, prompt), ranks, cluster.split, mode, interactive)
    sys.exit(code)


def _launch_gpus(ctx: click.Context, group: Any, prompt: str, quiet: bool, interactive: bool,
                 images: tuple[str, ...]) -> None:
    """Run as the tensor-parallel group planned over this machine's GPUs, then exit."""
    from unimap.distributed import launch_gpus

    if images:
        raise ConfigError("this machine runs the model as a rank per GPU (tensor parallel over "
                          "NCCL), and a group takes no images yet; set UNIMAP_NO_NCCL=1 to show "
                          "images in one process")
    console = LazyConsole(sys.stderr, quiet=quiet)
    for note in group.notes:
        console.line(f"note: {note}")
    for r in group.ranks:
        console.line(f"plan: rank {r.index} (GPU {r.index}): 1/{len(group.ranks)} of every layer, "
                     f"predicted peak {format_bytes(r.peak_bytes)} of {format_bytes(r.budget_bytes)}")
    group.require_fit()
    sys.exit(launch_gpus(_rank_arguments(ctx, prompt), len(group.ranks), interactive))


def _rank_arguments(ctx: click.Context, prompt: str) -> list[str]:
    """This `unimap run` command's arguments for each rank: every flag the user gave, except
    --ranks, with the prompt as read (stdin is not passed on)."""
    out: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        given = ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        if name in ("ranks", "run_hosts") or not given:
            continue
        value = prompt if name == "prompt" else ctx.params[name]
        if isinstance(param, click.Argument):
            out.append(str(value))
        elif isinstance(param, click.Option):
            flag = param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0]
            if param.is_flag:
                if value:
                    out.append(flag)
            elif param.multiple:
                for item in value:
                    out += [flag, str(item)]
            else:
                out += [flag, str(value)]
    return out


def _run_as_rank(target: str, prompt: str, system_prompt: str | None, ignore_template: bool,
                 options: dict[str, Any], settings: dict[str, Any], quiet: bool,
                 as_json: bool, interactive: bool = False) -> None:
    """One rank of a distributed run: join the group, agree on the split, load this rank's
    stage as its own plan says, generate in step with the others; rank 0 prints (and, with -i,
    reads the chat's messages and tells the others)."""
    import mlx.core as mx

    from unimap import distributed
    from unimap.api import load
    from unimap.api import plan_cluster as cluster_plan
    from unimap.cluster import machine_from_dict
    from unimap.generate import Chat, has_chat_template, stream_generate
    from unimap.inspect import inspect

    # the watchdog times what peers hold up (joining, agreeing, generating in step); reading,
    # planning and loading are this rank's own work, however long a large model takes
    watchdog = distributed.Watchdog(distributed.rank_timeout(), f"rank {os.environ.get('MLX_RANK')}")
    group = distributed.join()
    watchdog.beat()
    rank, size = group.rank(), group.size()
    mode = options.pop("mode")
    split = distributed.rank_split(os.environ, size)
    mode = os.environ.get(distributed.MODE_VARIABLE, mode)
    with watchdog.waiting():
        spec = inspect(target)
    if split is None:  # started by mlx.launch: every rank describes its machine, all plan alike
        machines = [(f"rank {i}", machine_from_dict(json.loads(text), f"rank {i}'s machine"))
                    for i, text in enumerate(distributed.agree(group, _this_machine_json()))]
        with watchdog.waiting():
            cluster = cluster_plan(spec, mode=mode, machines=machines, **options)
    else:
        with watchdog.waiting():
            cluster = cluster_plan(spec, None, size, mode=mode, **options)
        if mode == "pipeline" and list(cluster.split) != split:
            from unimap.cluster import _ranks

            kept = [(r.host, r.machine) for r in cluster.ranks]
            with watchdog.waiting():
                cluster = replace(cluster, ranks=tuple(_ranks(spec, kept, cluster.options, split)))
    planned = cluster.ranks[rank].plan
    watchdog.beat()

    def stage(model: Any) -> None:
        if mode == "tensor":
            if not hasattr(model, "shard"):
                raise ConfigError(f"{target}: mlx-lm has no tensor parallelism (shard()) for this "
                                  "family; run without --tensor-parallel")
            model.shard(group)
        else:
            distributed.keep_stage(model, group, cluster.split)

    speaking = rank == 0 and not as_json  # rank 0 prints the text; -q keeps only the text
    console = LazyConsole(sys.stderr, quiet=not speaking or quiet)
    try:
        _reset_peak()
        with watchdog.waiting():
            loaded, tokenizer, planned = load(target, planned=planned, before_apply=stage)
        mx.random.seed(distributed.shared_seed(group, settings.get("seed")))
        settings = {**settings, "seed": None}
        if interactive:
            _chat(loaded, tokenizer, planned, prompt or None, system_prompt, not ignore_template,
                  settings, console, messages=_rank_messages(group, loaded, prompt, console, watchdog),
                  echo=speaking, beat=watchdog.beat)
            distributed.settle(loaded)
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))
            if os.environ.get(distributed.REPORT_VARIABLE):
                sys.stdout.flush()
                sys.stderr.write(f"{distributed.DONE_MARK} {rank}\n")
                sys.stderr.flush()
            return
        if has_chat_template(tokenizer) and not ignore_template:
            responses = Chat(loaded, tokenizer, system_prompt).send(prompt, **settings)
        else:
            text = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
            if speaking:
                click.echo(text, nl=False)
            responses = stream_generate(loaded, tokenizer, text, **settings)
        reply, last = "", None
        for last in responses:
            watchdog.beat()
            if speaking:
                click.echo(last.text, nl=False)
            reply += last.text
        if speaking:
            click.echo()
            _report(last, planned, settings["max_tokens"], console)
            console.line(f"rank 0 of {size}: layers {layer_span(cluster.ranks[0].layers)}")
        reporting = bool(os.environ.get(distributed.REPORT_VARIABLE))
        if as_json and (rank == 0 or not reporting):  # each its own figures (mlx.launch merges)
            click.echo(json.dumps({"text": reply, **_figures(last, planned), "rank": rank,
                                   "ranks": size, "layers": list(cluster.ranks[rank].layers)}))
        distributed.settle(loaded)
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))  # end together
        if reporting:
            sys.stdout.flush()
            sys.stderr.write(f"{distributed.DONE_MARK} {rank}\n")
            sys.stderr.flush()
    finally:
        watchdog.stop()


def _this_machine_json() -> str:
    """This rank's machine; a rank of a GPU group (one per GPU of one host) shares its RAM."""
    from unimap.api import resolve_machine
    from unimap.distributed import GPU_GROUP_VARIABLE

    machine = resolve_machine(None)
    raw = os.environ.get(GPU_GROUP_VARIABLE, "")
    if raw.isdigit() and int(raw) > 1:
        from unimap.cluster import shared_machine

        cpu = shared_machine(machine, int(raw)).cpu
        machine = replace(machine, devices=tuple(cpu if d.name == "cpu" else d
                                                 for d in machine.devices))
    return machine.to_json(indent=None)


def _reset_peak() -> None:
    """The peaks a run reports are its own (not those of earlier work in this process)."""
    import mlx.core as mx

    mx.reset_peak_memory()


def _model_argument(positional: str | None, option: str | None, command: str) -> str:
    if positional and option and positional != option:
        raise click.UsageError(f"two models given ({positional!r} and -m {option!r}): give one")
    target = option or positional
    if not target:
        raise click.UsageError(f"give a model: unimap {command} MODEL (a folder, a .gguf file or "
                               "owner/name)")
    return target


def _load(target: str, planned: Plan, console: LazyConsole) -> tuple[Any, Any, Plan]:
    """Load as planned; a progress bar appears once loading has taken LOAD_BAR_AFTER_S seconds
    (a model that loads at once never imports rich's progress display)."""
    from unimap.api import load

    bar: Any = None
    start: float | None = None  # the first part materialized

    def progress(done: int, total: int, what: str) -> None:
        nonlocal bar, start
        if bar is None:
            now = time.perf_counter()
            start = now if start is None else start
            if console.quiet or now - start < LOAD_BAR_AFTER_S or done >= total > 0:
                return
            from rich.progress import Progress

            bar = Progress(console=console.real, transient=True)
            bar.start()
            bar.add_task("loading", total=None)
        bar.update(bar.task_ids[0], completed=done, total=total, description=f"loading {what}")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return load(target, progress=progress, planned=planned)
    finally:
        if bar is not None:
            bar.stop()


def _once(loaded: Any, tokenizer: Any, planned: Plan, prompt: str, system_prompt: str | None,
          ignore_template: bool, pictures: list[Any], settings: dict[str, Any], console: LazyConsole,
          as_json: bool) -> None:
    """One reply to --prompt: in the chat template when the model has one (as mlx_lm.generate),
    else the prompt continued as plain text, echoed first."""
    from unimap import vlm
    from unimap.generate import Chat, has_chat_template, stream_generate

    if vlm.is_vlm(loaded):
        message: Any = vlm.user_message(prompt, len(pictures))
        conversation = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        text: Any = [*conversation, message] if system_prompt else prompt
        stream = stream_generate(loaded, tokenizer, text, images=pictures, **settings)
    elif has_chat_template(tokenizer) and not ignore_template:
        stream = Chat(loaded, tokenizer, system_prompt).send(prompt, **settings)
    else:
        text = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
        if not as_json:
            click.echo(text, nl=False)
        stream = stream_generate(loaded, tokenizer, text, **settings)
    reply, last = _stream(stream, echo=not as_json)
    if as_json:
        click.echo(json.dumps({"text": reply, **_figures(last, planned),
                               "devices": _devices(loaded)}, indent=2))
    else:
        _report(last, planned, settings["max_tokens"], console)
        _where(loaded, last, console)


def _stream(responses: Any, echo: bool = True) -> tuple[str, Any]:
    """Print each piece of a reply as it comes; the whole reply and its last Response."""
    reply, last = "", None
    try:
        for last in responses:
            if echo:
                click.echo(last.text, nl=False)
            reply += last.text
    finally:
        responses.close()  # an interrupted reply settles its cache now
        if echo:
            click.echo()
    return reply, last


def _trimmed(responses: Any) -> Any:
    """A chat reply without the space its first token may carry (the text after "Assistant:")."""
    started = False
    try:
        for response in responses:
            if not started:
                text = response.text.lstrip()
                started = bool(text)
                response = replace(response, text=text)
            yield response
    finally:
        responses.close()


def _figures(last: Any, planned: Plan) -> dict[str, Any]:
    if last is None:
        return {}
    return {"finish_reason": last.finish_reason, "prompt_tokens": last.prompt_tokens,
            "generation_tokens": last.generation_tokens, "prompt_tps": round(last.prompt_tps, 3),
            "generation_tps": round(last.generation_tps, 3),
            "peak_memory_bytes": last.peak_memory_bytes, "predicted_peak_bytes": planned.peak_bytes,
            "planned_tokens": planned.estimate.sequence_tokens}


def _devices(loaded: Any) -> list[dict[str, Any]]:
    """Where the model sits, measured: each device's weights and layers beside its plan."""
    from unimap.usage import device_usage

    return [{"device": u.name, "layers": list(u.layers), "weight_bytes": u.weight_bytes,
             "planned_weight_bytes": u.planned.weight_bytes, "used_bytes": u.used_bytes,
             "planned_used_bytes": u.planned.used_bytes, "budget_bytes": u.budget_bytes}
            for u in device_usage(loaded)]


def _where(loaded: Any, last: Any, console: LazyConsole) -> None:
    """Each device's memory measured against its plan, as `ollama ps` shows where a model sits."""
    from unimap.usage import device_usage, usage_lines

    if last is not None and not console.quiet:  # -q: nothing is shown, nothing is measured
        for line in usage_lines(device_usage(loaded), last.peak_memory_bytes):
            console.line(line)


def _report(last: Any, planned: Plan, max_tokens: int, console: LazyConsole) -> None:
    """The figures of a reply, and why it stopped early when the plan stopped it."""
    if last is None:
        return
    console.line(_stats(last))
    if last.finish_reason == "length" and last.generation_tokens < max_tokens:
        end = planned.estimate.sequence_tokens
        console.line(f"note: the reply stopped at the plan's end ({end} tokens with the prompt); "
                      "plan a longer --max-seq-len for more")


def _chat(loaded: Any, tokenizer: Any, planned: Plan, first: str | None, system_prompt: str | None,
          template: bool, settings: dict[str, Any], console: LazyConsole,
          messages: Any = None, echo: bool = True, beat: Any = None) -> None:
    """A chat at the terminal whose cache is kept between turns (only new messages prefill).
    A rank of a distributed chat passes the `messages` rank 0 read, `echo` on rank 0 only, and
    `beat` (its watchdog's) called at every token."""
    from unimap.generate import Chat, ContextFullError

    chat = Chat(loaded, tokenizer, system_prompt, template=template)
    _line_editing()
    last = None
    how = "its chat template" if chat.templated else "a plain User:/Assistant: format"
    console.line(f"chat ({how}; {planned.estimate.sequence_tokens} tokens planned): {CHAT_HELP}")
    for message in messages if messages is not None else _messages(first, console):
        if message == "/clear":
            chat.clear()
            console.line("(the conversation starts over)")
            continue
        try:
            _, last = _stream(_beating(_trimmed(chat.send(message, **settings)), beat), echo=echo)
        except KeyboardInterrupt:
            console.line("(reply stopped)")
            continue
        except ContextFullError as exc:
            console.line(f"error: {one_line(str(exc))}")
            continue
        if last is not None:
            _report(last, planned, settings["max_tokens"], console)
            console.line(f"({chat.tokens} of {planned.estimate.sequence_tokens} planned tokens "
                          "held)")
    _where(loaded, last, console)


def _beating(responses: Any, beat: Any) -> Any:
    """`responses`, calling `beat()` at each (a rank's watchdog sees progress)."""
    try:
        for response in responses:
            if beat is not None:
                beat()
            yield response
    finally:
        responses.close()


def _rank_messages(group: Any, model: Any, first: str | None, console: LazyConsole,
                   watchdog: Any) -> Any:
    """A distributed chat's messages: rank 0 reads them (as one process does) and every rank
    receives each in turn, so all prefill and generate in step. While rank 0 waits for the user
    the watchdogs wait too (a person typing is not a hung peer)."""
    from unimap import distributed

    source = _messages(first, console) if group.rank() == 0 else None
    while True:
        distributed.settle(model)  # the last reply's queued step, before the next collective
        with watchdog.waiting():
            typed = json.dumps(next(source, None)) if source is not None else ""
            message = json.loads(distributed.agree(group, typed)[0])
        if message is None:  # the user ended the chat on rank 0
            return
        yield message


def _vision_chat(loaded: Any, processor: Any, planned: Plan, first: str | None,
                 system_prompt: str | None, pictures: list[Any], settings: dict[str, Any],
                 console: LazyConsole) -> None:
    """A chat with a vision-language model: the images go with the first message, and each
    turn passes the whole conversation (mlx-vlm's cache is not kept between turns)."""
    from unimap import vlm
    from unimap.generate import ContextFullError, stream_generate

    history: list[dict[str, Any]] = ([{"role": "system", "content": system_prompt}]
                                     if system_prompt else [])
    console.line(f"chat: {CHAT_HELP}")
    for message in _messages(first, console):
        if message == "/clear":
            history = history[:1] if system_prompt else []
            console.line("(the conversation starts over)")
            continue
        users = sum(m["role"] == "user" for m in history)
        history.append(vlm.user_message(message, 0 if users else len(pictures)))
        try:
            reply, last = _stream(stream_generate(loaded, processor, history, images=pictures,
                                                  **settings))
        except KeyboardInterrupt:
            console.line("(reply stopped)")
            history.pop()
            continue
        except ContextFullError as exc:
            console.line(f"error: {one_line(str(exc))}")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
        _report(last, planned, settings["max_tokens"], console)


def _line_editing() -> None:
    """Line editing and history for input() at a terminal (readline, where Python has it)."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (imported for its effect on input())


def _summary(result: Plan, console: LazyConsole) -> None:
    gpu = [d for d in result.devices if d.name != "cpu" and d.layers]
    where = ("all on " + result.devices[0].name if result.all_on_gpu else
             ", ".join(f"{d.name} layers {device_layers(d)}" for d in result.devices
                       if d.layers or d.expert_layers))
    status = "fits" if result.fits else f"does not fit: {result.problem}"
    wired = ("" if result.wired_limit_bytes is None
             else f", wired limit {format_bytes(result.wired_limit_bytes)}")
    cpu = result.device("cpu")
    split = ("" if not gpu or result.all_on_gpu else " (split: layers on the CPU run slower)"
             if cpu.layers else " (routed experts on the CPU: their layers wait for the CPU)")
    console.line(f"plan: {result.model} {status}; {where}; predicted peak "
                  f"{format_bytes(result.peak_bytes)}{wired}{split}")
    for note in result.notes:
        console.line(f"note: {note}")


def _stats(r: Any) -> str:
    peak = format_bytes(r.peak_memory_bytes)
    versus = "" if r.predicted_peak_bytes is None else f" (plan: {format_bytes(r.predicted_peak_bytes)})"
    return (f"prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.1f} tokens/s; generation: "
            f"{r.generation_tokens} tokens, {r.generation_tps:.1f} tokens/s; peak memory {peak}{versus}")


def _messages(first: str | None, console: LazyConsole) -> Any:
    """Chat messages: the --prompt first, then lines typed at "> " until /quit or Ctrl-D;
    /help and unknown commands are answered here, /clear is passed on."""
    if first and first.strip():
        yield first
    while True:
        try:
            message = input("> ").strip()
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as a shell does
            click.echo()
            continue
        if message in ("/quit", "/exit", "/bye"):
            return
        if message in ("/help", "/?"):
            console.line(CHAT_HELP)
        elif message.startswith("/") and message != "/clear" and " " not in message:
            console.line(f"unknown command {message}: {CHAT_HELP}")
        elif message:
            yield message


def main() -> None:
    from unimap.preload import leave, load_openblas

    load_openblas(sys.argv)  # `unimap run` on Linux: the fastest CPU BLAS, before MLX loads
    try:
        cli(prog_name="unimap")  # standalone: it ends by raising SystemExit
    except SystemExit as done:
        leave(done.code)  # without OpenBLAS's exit handler, which can hang (unimap.preload)
