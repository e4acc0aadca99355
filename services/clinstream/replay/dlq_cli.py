"""`clinstream dlq`: list and inspect a stage's dead letters, and re-drive them after a fix."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit, resolve
from clinstream.core.config import get_settings
from clinstream.core.topics import Stage, dlq

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)

_STAGE = typer.Option(..., "--stage", help="ingest, pseudonymise, features or store.")


@app.callback()
def dlq_group() -> None:
    """Dead-lettered records by stage: list, show, re-drive. Identifiers are never printed by default."""


def _stage(name: str) -> Stage:
    try:
        return Stage(name)
    except ValueError:
        err.print(f"[red]error:[/red] unknown stage {name!r}; one of {', '.join(s.value for s in Stage)}")
        raise typer.Exit(2) from None


_RECORD_COLUMNS = (
    Column("position", "position", key_column=True), Column("reason", "reason", key_column=True),
    Column("field_path", "field path", empty="(whole record)"),
    Column("source", "source", empty="(hashed: raw-zone source)"), Column("replay_run", "replay run", empty="(live)"),
    Column("redriven", "re-driven", empty="no"),
)
_VIEW_COLUMNS = (Column("field", "field", key_column=True), Column("value", "value", empty="(none)"))
_GROUP_COLUMNS = (
    Column("reason", "reason", key_column=True), Column("field_path", "field path", empty="(whole record)"),
    Column("records", "records", right=True), Column("sources", "sources", right=True),
    Column("from_replays", "from replays", right=True), Column("redriven", "re-driven", right=True),
    Column("first_failed", "first failed", empty="(no failure time)"),
    Column("last_failed", "last failed", empty="(no failure time)"), Column("example", "example", empty="(none)"),
)


@app.command("list")
def list_(stage: str = _STAGE,
          records: bool = typer.Option(False, "--records", help="One line per dead letter instead of counts."),
          output: OutputFormat = OUTPUT_OPTION,
          as_json: bool = typer.Option(False, "--json", help="Same as --output json.")) -> None:
    """Dead letters of a stage grouped by reason and field path (records, distinct sources, re-driven)."""
    from clinstream.replay.dlq import read_dead_letters, summarise
    from clinstream.replay.redrive import redrive_progress, redriven_positions

    settings = get_settings()
    st = _stage(stage)
    output = resolve(output, as_json)
    recs = list(read_dead_letters(settings, st))
    done = redriven_positions(redrive_progress(settings, st), recs)
    title = f"{dlq(st).name(settings.site_id)}: {len(recs)} dead letters"
    empty = f"No dead letters in {dlq(st).name(settings.site_id)}."
    if records:
        rows = [{"position": r.position, "reason": r.reason, "field_path": r.field_path,
                 "source": ":".join(str(x) for x in r.source) if r.source[0] != "sha256" else None,
                 "replay_run": r.replay_run, "redriven": (r.partition, r.offset) in done} for r in recs]
        shown = [{**row, "redriven": "yes" if row["redriven"] else None} for row in rows]
        emit(shown, _RECORD_COLUMNS, output, title=title, empty=empty, json_document=rows)
        return
    groups = [{"reason": g.reason, "field_path": g.field_path, "records": g.records, "sources": g.sources,
               "from_replays": g.from_replays, "redriven": g.redriven, "example": g.example,
               "first_failed": g.first_failed.isoformat() if g.first_failed else None,
               "last_failed": g.last_failed.isoformat() if g.last_failed else None}
              for g in summarise(recs, done)]
    emit(groups, _GROUP_COLUMNS, output, title=title, empty=empty)
    if output is OutputFormat.TABLE and groups:
        console.print("show one with: clinstream dlq show --stage " + st.value + " <partition:offset>")


@app.command("show")
def show(position: str = typer.Argument(..., help="partition:offset in the stage's DLQ topic."),
         stage: str = _STAGE,
         show_payload: bool = typer.Option(False, "--show-payload",
                                           help="Also print the original bytes (may hold identifiers in raw-zone "
                                                "stages: ingest, pseudonymise)."),
         output: OutputFormat = OUTPUT_OPTION,
         as_json: bool = typer.Option(False, "--json", help="Same as --output json.")) -> None:
    """One dead letter: its envelope; the original bytes only with --show-payload (json: one object)."""
    from clinstream.replay.dlq import is_raw_zone, parse_position, read_dead_letters, safe_view

    settings = get_settings()
    st = _stage(stage)
    try:
        p, o = parse_position(position)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    rec = next((r for r in read_dead_letters(settings, st, starts={p: o}) if r.partition == p and r.offset == o),
               None)
    if rec is None:
        err.print(f"[red]error:[/red] no dead letter at {position} of {dlq(st).name(settings.site_id)}")
        raise typer.Exit(1)
    if show_payload and is_raw_zone(st):
        err.print("[yellow]warning:[/yellow] raw-zone payload: it may contain direct identifiers")
    view = safe_view(rec, st, show_payload=show_payload)
    emit([{"field": k, "value": v} for k, v in view.items()], _VIEW_COLUMNS, resolve(output, as_json),
         title=f"dead letter {position}", json_document=view)


@app.command("redrive")
def redrive_cmd(stage: str = _STAGE,
                reason: str | None = typer.Option(None, "--reason", help="Only dead letters with this reason."),
                dry_run: bool = typer.Option(False, "--dry-run", help="Judge only: send and commit nothing."),
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Re-run dead letters through the stage's current logic; passing ones go back into the stream, once.

    Stream stages: the record goes back to its input topic for the live worker (deploy the fix there first).
    Ingest: re-validated with the current CLINSTREAM_INGEST_* limits, as the device and at the receipt instant
    on the dead letter, and produced to the raw topic as the gateway would (LIMS events: once per event id).
    """
    from clinstream.replay.redrive import redrive, redrive_group

    settings = get_settings()
    st = _stage(stage)
    try:
        report = redrive(settings, st, reason=reason, dry_run=dry_run)
    except LookupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        console.print_json(json.dumps({
            "examined": report.examined, "redriven": report.redriven, "duplicates": report.duplicates,
            "still_failing": report.still_failing,
            "left_out": report.left_out, "already_redriven": report.already_redriven, "dry_run": dry_run,
            "targets": dict(report.targets), "failures": dict(report.failures)}))
        return
    title = "Re-drive (dry run: nothing sent)" if dry_run else "Re-drive"
    table = Table("", "", title=title)
    table.add_row("examined", str(report.examined))
    table.add_row("re-driven into the stream", str(report.redriven))
    table.add_row("already in the stream (nothing sent)", str(report.duplicates))
    table.add_row("still failing (stay in the DLQ)", str(report.still_failing))
    table.add_row("left out (other reasons)", str(report.left_out))
    table.add_row("re-driven by earlier runs (skipped)", str(report.already_redriven))
    for topic, n in sorted(report.targets.items()):
        table.add_row(f"  -> {topic}", str(n))
    for why, n in report.failures.most_common():
        table.add_row(f"  still: {why}", str(n))
    console.print(table)
    console.print(f"progress group: {redrive_group(settings, st)}")
