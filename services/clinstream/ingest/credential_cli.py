"""What `clinstream devices|lims` commands share: running one credential update and reporting how many it changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import psycopg
import typer
from rich.console import Console

from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.ingest.credentials import CredentialError


def run_update(update: Callable[[psycopg.Connection[Any]], int], done: str) -> NoReturn:
    """Commit one credential update and print `done` with its count; exit 0 if it changed a row, 1 if not, 2 if bad."""
    with connect_with_retry(get_settings(), max_wait_s=30.0) as conn:
        try:
            count = update(conn)
        except CredentialError as exc:
            Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        conn.commit()
    Console().print(done.format(count=count), highlight=False)
    raise typer.Exit(0 if count else 1)
