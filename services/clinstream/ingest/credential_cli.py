"""What `clinstream devices|lims` commands share: issuing a credential, listing credentials, running an update."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import psycopg
import typer
from rich.console import Console

from clinstream.core.cli_output import Column, OutputFormat, emit
from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.ingest.credentials import CredentialError, IssuedToken
from clinstream.store.migrate import migrate

Row = TypeVar("Row")
_DB_WAIT_S = 30.0


def _fail(exc: CredentialError) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2) from None


def run_register(issue: Callable[[psycopg.Connection[Any]], IssuedToken], shown_once: str) -> None:
    """Issue one credential (exit 2 if refused); the key id and `shown_once` on stderr, the secret alone on stdout."""
    settings = get_settings()
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=_DB_WAIT_S) as conn:
        try:
            issued = issue(conn)
        except CredentialError as exc:
            _fail(exc)
        conn.commit()
    Console(stderr=True).print(f"key id {issued.key_id}; {shown_once}", highlight=False)
    typer.echo(issued.token)


def run_listing(read: Callable[[psycopg.Connection[Any]], Sequence[Row]], as_row: Callable[[Row], dict[str, Any]],
                columns: Sequence[Column], output: OutputFormat, *, title: str, empty: str) -> None:
    """Read credentials (never secrets) and print them as a table, JSON or CSV."""
    settings = get_settings()
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=_DB_WAIT_S) as conn:
        rows = [as_row(r) for r in read(conn)]
    emit(rows, columns, output, title=title, empty=empty)


def run_update(update: Callable[[psycopg.Connection[Any]], int], done: str) -> NoReturn:
    """Commit one credential update and print `done` with its count; exit 0 if it changed a row, 1 if not, 2 if bad."""
    with connect_with_retry(get_settings(), max_wait_s=_DB_WAIT_S) as conn:
        try:
            count = update(conn)
        except CredentialError as exc:
            _fail(exc)
        conn.commit()
    Console().print(done.format(count=count), highlight=False)
    raise typer.Exit(0 if count else 1)
