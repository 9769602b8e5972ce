"""The `unimap` command: a thin shell over the stages, and the only importer of click and rich.

Errors a user can cause (UnimapError) become one line on stderr and exit code 2, here and
nowhere else; anything else is a bug and keeps its traceback. Tests pass a fake machine through
click's context object: `runner.invoke(cli, [...], obj={"host": fake_host})`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from unimap import __version__
from unimap.doctor import Report, diagnose
from unimap.errors import UnimapError
from unimap.host import Host
from unimap.machine import Machine
from unimap.probe import probe
from unimap.units import format_bytes

_MARK = {"ok": "[green]ok[/]", "info": "[cyan]info[/]", "warn": "[yellow]WARN[/]",
         "error": "[bold red]ERROR[/]"}


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnimapError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
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
    return None if sys.stdout.isatty() else 110


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


def main() -> None:
    cli(prog_name="unimap")
