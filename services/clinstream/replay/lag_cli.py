"""`clinstream lag`: consumer groups of the site with their lag per topic and partition, and feature freshness."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import psycopg
import typer

from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit, resolve
from clinstream.core.config import get_settings

app = typer.Typer(no_args_is_help=False, pretty_exceptions_enable=False)

GROUP_COLUMNS = (
    Column("stage", "stage", key_column=True), Column("kind", "kind"),
    Column("state", "state", empty="(not reported)"), Column("topic", "topic", key_column=True),
    Column("partition", "partition", key_column=True, right=True),
    Column("committed", "committed", empty="(none committed)", right=True), Column("end", "end", right=True),
    Column("lag", "lag", right=True), Column("group", "group", key_column=True),
)
FRESHNESS_COLUMNS = (
    Column("feature_set", "feature set", key_column=True), Column("version", "version", right=True),
    Column("active", "active", empty="no"), Column("rows", "rows", right=True),
    Column("latest_window_end", "latest window end", empty="(no rows)"),
    Column("latest_stored", "latest stored", empty="(no rows)"), Column("age", "age", empty="(no rows)", right=True),
)


def group_rows(site_id: str, lags: list[Any], all_partitions: bool) -> list[dict[str, Any]]:
    """One row per lagging (or, with all_partitions, every) partition, then one total row per group."""
    from clinstream.replay.lag import group_kind

    prefix = f"clinstream-{site_id}-"
    rows: list[dict[str, Any]] = []
    totals: dict[str, list[Any]] = {}
    for pl in lags:
        stage = pl.group[len(prefix):] if pl.group.startswith(prefix) else pl.group
        kind = group_kind(site_id, pl.group)
        totals.setdefault(pl.group, []).append(pl)
        if pl.lag or all_partitions:
            rows.append({"group": pl.group, "stage": stage, "kind": kind, "state": pl.state or None,
                         "topic": pl.topic, "partition": pl.partition,
                         "committed": pl.committed if pl.committed >= 0 else None, "end": pl.end, "lag": pl.lag})
    for group, parts in totals.items():
        topics = sorted({p.topic for p in parts})
        rows.append({"group": group, "stage": group[len(prefix):] if group.startswith(prefix) else group,
                     "kind": group_kind(site_id, group), "state": parts[0].state or None,
                     "topic": ", ".join(topics), "partition": f"total of {len(parts)}",
                     "committed": sum(max(p.committed, 0) for p in parts), "end": sum(p.end for p in parts),
                     "lag": sum(p.lag for p in parts), "_total": True})
    return rows


@app.command()
def lag(output: OutputFormat = OUTPUT_OPTION,
        as_json: bool = typer.Option(False, "--json", help="Same as --output json."),
        all_partitions: bool = typer.Option(False, "--all", help="Also list partitions without lag.")) -> None:
    """Lag of every consumer group of the site (live, replay, re-drive) and how fresh each feature set is.

    csv prints the consumer-group rows; json holds both groups and freshness.
    """
    from clinstream.replay.lag import freshness, group_kind, group_lags

    settings = get_settings()
    output = resolve(output, as_json)
    lags = group_lags(settings)
    try:
        fresh = freshness(settings)
        db_error = None
    except psycopg.Error as exc:
        fresh, db_error = [], type(exc).__name__
    document = {
        "groups": [{**asdict(pl), "lag": pl.lag, "kind": group_kind(settings.site_id, pl.group)} for pl in lags],
        "freshness": [asdict(f) for f in fresh], "db_error": db_error}
    rows = group_rows(settings.site_id, lags, all_partitions)
    emit(rows, GROUP_COLUMNS, output, title=f"Consumer groups of site {settings.site_id}", json_document=document,
         empty="No consumer group of this site has committed offsets (no worker has run yet).")
    if output is not OutputFormat.TABLE:
        return
    if db_error:
        print(f"feature store unavailable ({db_error}): no freshness")
        return
    emit([{"feature_set": f.feature_set, "version": f.version, "active": "yes" if f.active else None,
           "rows": f.rows, "latest_window_end": f.latest_window_end.isoformat() if f.latest_window_end else None,
           "latest_stored": f.latest_stored.isoformat() if f.latest_stored else None,
           "age": f"{f.age_s:,.0f} s" if f.age_s is not None else None} for f in fresh],
         FRESHNESS_COLUMNS, output, title="Feature freshness",
         empty="The feature store holds no feature rows yet.")
