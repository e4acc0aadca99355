"""What `clinstream devices|lims` commands share: issuing a credential, listing credentials, running an update."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, NoReturn

import psycopg
import typer
from rich.console import Console

from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit, timestamp
from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.ingest.credentials import CredentialError, IssuedToken
from clinstream.store.migrate import migrate

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


def listing_row(row: Any) -> dict[str, Any]:
    """A credential row (a dataclass, never a secret) as a listing row: its fields in order, times as ISO 8601."""
    return {k: timestamp(v) if isinstance(v, datetime) else v for k, v in asdict(row).items()}


def listing_command(read: Callable[..., Sequence[Any]], columns: Sequence[Column], *, title: str,
                    noun: str) -> Callable[[bool, OutputFormat], None]:
    """A `list` command over `read(conn, include_revoked=...)`: newest first, `--all` adds revoked ones, --output."""

    def command(include_revoked: bool = typer.Option(False, "--all", help=f"Include revoked {noun}."),
                output: OutputFormat = OUTPUT_OPTION) -> None:
        settings = get_settings()
        migrate(settings)
        with connect_with_retry(settings, max_wait_s=_DB_WAIT_S) as conn:
            rows = [listing_row(r) for r in read(conn, include_revoked=include_revoked)]
        emit(rows, columns, output, title=title + (" (with revoked)" if include_revoked else ""),
             empty=f"No {noun}" + ("." if include_revoked else " are active (--all shows revoked ones)."))

    command.__doc__ = f"{title} (never secrets), newest first."
    return command


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
