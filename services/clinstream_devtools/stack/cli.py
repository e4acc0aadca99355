"""`clinstream stack up|down|status`: the native local Kafka and PostgreSQL + TimescaleDB."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinstream.core import constants as c
from clinstream.core.config import Settings, get_settings
from clinstream_devtools.stack.common import ServiceStatus, StackError, stack_lock
from clinstream_devtools.stack.kafka import (
    check_kafka_prerequisites,
    cluster_bootstrap,
    ensure_kafka,
    kafka_pid,
    kafka_status,
    local_brokers,
    stop_kafka,
)
from clinstream_devtools.stack.postgres import (
    check_postgres_prerequisites,
    cluster_dir,
    ensure_postgres,
    postgres_pid,
    postgres_status,
    stop_postgres,
)

app = typer.Typer(help="Start, stop and inspect the local Kafka and TimescaleDB.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
_out = Console()
_err = Console(stderr=True)


def _fail(exc: StackError) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _timed(label: str, action: Callable[[Settings], None], settings: Settings,
           pid: Callable[[Settings], int | None], verb: str) -> None:
    before = pid(settings)
    started = time.monotonic()
    action(settings)
    after = pid(settings)
    state = f"{verb} (pid {after})" if after is not None and after != before else (
        f"running (pid {after})" if after is not None else ("stopped" if before is not None else "not running"))
    _out.print(f"{label:<9} {state:<24} {time.monotonic() - started:5.1f} s", highlight=False)


def stack_up(settings: Settings, brokers: int | None = None) -> None:
    """Start whatever is not running (prerequisites are checked before anything starts)."""
    check_kafka_prerequisites(settings)
    check_postgres_prerequisites()
    with stack_lock(settings):
        count = local_brokers(settings, brokers)
        label = "kafka" if count == 1 else f"kafka x{count}"
        running_before = (kafka_pid(settings), postgres_pid(settings))
        try:
            _timed(label, lambda s: ensure_kafka(s, count), settings, kafka_pid, "started")
            if cluster_dir(settings) != settings.postgres_dir:
                _out.print(f"postgres  data in {cluster_dir(settings)} (the postgres OS user cannot reach "
                           f"{settings.postgres_dir})", highlight=False, soft_wrap=True)
            _timed("postgres", ensure_postgres, settings, postgres_pid, "started")
        except BaseException:
            _stop_what_was_started(settings, running_before)
            raise
    if count != settings.kafka_brokers:
        _out.print(f"clients of this {count}-broker Kafka need: CLINSTREAM_KAFKA_BROKERS={count} "
                   f"CLINSTREAM_KAFKA_BOOTSTRAP={cluster_bootstrap(settings, count)}", highlight=False)


def _stop_what_was_started(settings: Settings, running_before: tuple[int | None, int | None]) -> None:
    """After a failed `up`: stop each service that this `up` started, so that nothing is left half-running."""
    for was_running, stop in zip(running_before, (stop_kafka, stop_postgres), strict=True):
        if was_running is None:
            try:
                stop(settings)
            except StackError as exc:
                _err.print(f"[yellow]warning:[/] could not stop after the failed start: {exc}", highlight=False)


def stack_down(settings: Settings) -> None:
    """Stop both services; a service that does not run is skipped."""
    with stack_lock(settings):
        _timed("kafka", stop_kafka, settings, kafka_pid, "")
        _timed("postgres", stop_postgres, settings, postgres_pid, "")


def stack_status(settings: Settings) -> list[ServiceStatus]:
    """The status of each service."""
    return [*kafka_status(settings), postgres_status(settings)]


@app.command()
def up(brokers: Annotated[int | None, typer.Option(
        "--brokers", min=1, max=c.KAFKA_MAX_LOCAL_BROKERS,
        help="Kafka nodes (KRaft, broker+controller each) on loopback ports derived from the configured ones; "
             "default CLINSTREAM_KAFKA_BROKERS, or what the data dir already holds.")] = None) -> None:
    """Start the local Kafka and PostgreSQL + TimescaleDB (installs nothing; see scripts/bootstrap)."""
    try:
        stack_up(get_settings(), brokers)
    except StackError as exc:
        raise _fail(exc) from None


@app.command()
def down() -> None:
    """Stop the local Kafka (every node, SIGTERM) and PostgreSQL (fast shutdown); their data stays."""
    try:
        stack_down(get_settings())
    except StackError as exc:
        raise _fail(exc) from None


@app.command()
def status() -> None:
    """Show each service, its address, pid and whether it answers. Exit code 1 if one does not answer."""
    settings = get_settings()
    rows = stack_status(settings)
    table = Table(title=f"clinstream stack ({settings.data_dir.resolve()})")
    for column in ("service", "address", "pid", "answers", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.name, row.address, str(row.pid) if row.pid else "-",
                      "[green]yes[/]" if row.answers else "[red]no[/]", row.detail)
    _out.print(table)
    if not all(row.answers for row in rows):
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
