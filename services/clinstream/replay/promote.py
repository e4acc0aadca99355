"""`clinstream features promote --version N`: switch the feature version researchers and the federated layer read.

The `*_current` views join `active_version`, so one row update switches every reader at once (in one
transaction; readers see the old or the new version, never a mix). A version without any stored row is
refused unless `--force`. The previous version and the exact rollback command are printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from rich.console import Console

from clinstream.core.config import Settings, get_settings
from clinstream.core.db import connect

console = Console()


@dataclass(frozen=True, slots=True)
class Promotion:
    """Result of a promotion."""

    previous: int | None
    previous_since: datetime | None
    version: int
    wearable_rows: int
    sample_rows: int
    changed: bool
    previous_has_rows: bool = True


def promote(settings: Settings, version: int, *, force: bool = False) -> Promotion:
    """Make `version` the active one; raises ValueError if it has no rows (unless force)."""
    with connect(settings) as conn, conn.transaction():
        row: Any = conn.execute("SELECT version, promoted_at FROM active_version FOR UPDATE").fetchone()
        previous, since = (int(row[0]), row[1]) if row else (None, None)
        counts: Any = conn.execute(
            "SELECT (SELECT count(*) FROM wearable_features WHERE version = %s),"
            " (SELECT count(*) FROM sample_features WHERE version = %s)", (version, version)).fetchone()
        wearable, samples = int(counts[0]), int(counts[1])
        if wearable + samples == 0 and not force:
            raise ValueError(f"version {version} has no stored features; replay into it first (or --force)")
        if previous == version:
            return Promotion(previous, since, version, wearable, samples, False)
        prev_rows: Any = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM wearable_features WHERE version = %s)"
            " OR EXISTS (SELECT 1 FROM sample_features WHERE version = %s)", (previous, previous)).fetchone()
        conn.execute("INSERT INTO active_version (singleton, version, promoted_at) VALUES (true, %s, now())"
                     " ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, promoted_at = now()",
                     (version,))
    return Promotion(previous, since, version, wearable, samples, True, bool(prev_rows[0]))


def promote_command(
    version: int = typer.Option(..., "--version", min=1, help="The feature version to make active."),
    force: bool = typer.Option(False, "--force", help="Promote even if the version has no stored rows."),
) -> None:
    """Make a (reprocessed) feature version the one the *_current views serve; prints how to roll back."""
    settings = get_settings()
    try:
        result = promote(settings, version, force=force)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    before = (f"version {result.previous} (active since {result.previous_since.isoformat()})"
              if result.previous is not None and result.previous_since is not None else "none")
    console.print(f"site {settings.site_id}: active feature version before: {before}")
    if not result.changed:
        console.print(f"version {version} is already active; nothing changed")
        return
    console.print(f"active feature version now: {version} ({result.wearable_rows:,} wearable rows, "
                  f"{result.sample_rows:,} sample rows); wearable_features_current and sample_features_current "
                  "serve it")
    if result.previous is not None:
        force_flag = "" if result.previous_has_rows else " --force"
        console.print(f"roll back with: clinstream features promote --version {result.previous}{force_flag}")
