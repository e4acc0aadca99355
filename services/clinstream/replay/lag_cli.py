"""`clinstream lag`: consumer groups of the site with their lag per topic and partition, and feature freshness."""

from __future__ import annotations

import json
from dataclasses import asdict

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from clinstream.core.config import get_settings

app = typer.Typer(no_args_is_help=False, pretty_exceptions_enable=False)
console = Console()


@app.command()
def lag(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        all_partitions: bool = typer.Option(False, "--all", help="Also list partitions without lag.")) -> None:
    """Lag of every consumer group of the site (live, replay, re-drive) and how fresh each feature set is."""
    from clinstream.replay.lag import freshness, group_kind, group_lags

    settings = get_settings()
    lags = group_lags(settings)
    try:
        fresh = freshness(settings)
        db_error = None
    except psycopg.Error as exc:
        fresh, db_error = [], type(exc).__name__
    if as_json:
        console.print_json(json.dumps({
            "groups": [{**asdict(pl), "lag": pl.lag, "kind": group_kind(settings.site_id, pl.group)} for pl in lags],
            "freshness": [asdict(f) for f in fresh], "db_error": db_error}, default=str))
        return
    totals: dict[str, int] = {}
    for pl in lags:
        totals[pl.group] = totals.get(pl.group, 0) + pl.lag
    table = Table("group", "kind", "state", "topic", "partition", "committed", "end", "lag",
                  title=f"Consumer groups of site {settings.site_id}")
    for pl in lags:
        if pl.lag or all_partitions:
            table.add_row(pl.group, group_kind(settings.site_id, pl.group), pl.state, pl.topic, str(pl.partition),
                          str(pl.committed), str(pl.end), f"{pl.lag:,}")
    for group, total in totals.items():
        table.add_row(group, group_kind(settings.site_id, group), "", "(all)", "", "", "", f"{total:,}",
                      style="bold")
    console.print(table)
    if db_error:
        console.print(f"feature store unavailable ({db_error}): no freshness")
        return
    ft = Table("feature set", "version", "active", "rows", "latest window end", "latest stored", "age",
               title="Feature freshness")
    for f in fresh:
        ft.add_row(f.feature_set, str(f.version), "yes" if f.active else "", f"{f.rows:,}",
                   f.latest_window_end.isoformat() if f.latest_window_end else "",
                   f.latest_stored.isoformat() if f.latest_stored else "",
                   f"{f.age_s:,.0f} s" if f.age_s is not None else "")
    console.print(ft)
