"""`clinstream topics`: list and apply the site's topic catalogue."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit
from clinstream.core.config import Settings, get_settings
from clinstream.core.topic_admin import PartitionLayoutError, apply_topics, grow_partitions
from clinstream.core.topics import ALL_TOPICS, DAY_MS, TopicSpec, partitions_of

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


TOPIC_COLUMNS = (
    Column("topic", "topic", key_column=True), Column("partitions", "partitions", right=True),
    Column("policy", "policy"), Column("retention_days", "retention (days)", empty="forever", right=True),
    Column("value_schema", "value schema"), Column("doc", "doc"),
)


def topic_row(spec: TopicSpec, settings: Settings) -> dict[str, Any]:
    """One catalogue topic as a listing row; retention_days None means kept forever."""
    days = spec.retention_ms / DAY_MS
    return {"topic": spec.name(settings.site_id), "partitions": partitions_of(spec, settings),
            "policy": "compact" if spec.compacted else "delete",
            "retention_days": None if spec.retention_ms < 0 else int(days) if days.is_integer() else days,
            "value_schema": spec.value_schema, "doc": spec.doc}


@app.command("list")
def list_topics(output: OutputFormat = OUTPUT_OPTION) -> None:
    """Print the catalogue of the configured site (what `topics apply` creates)."""
    settings = get_settings()
    emit([topic_row(spec, settings) for spec in ALL_TOPICS], TOPIC_COLUMNS, output,
         title=f"Topic catalogue of site {settings.site_id}")


@app.command("apply")
def apply() -> None:
    """Create or update the site's topics idempotently."""
    try:
        changes = apply_topics(get_settings())
    except PartitionLayoutError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    for ch in changes:
        console.print(f"{ch.action:>22}  {ch.name}")


@app.command("grow")
def grow(partitions: int = typer.Option(..., "--partitions", min=1, max=256,
                                        help="The new partition count of every co-partitioned topic.")) -> None:
    """Grow the site's co-partitioned topics and state changelogs together; refused once any holds records."""
    try:
        changes = grow_partitions(get_settings(), partitions)
    except PartitionLayoutError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    for ch in changes:
        console.print(f"{ch.action:>22}  {ch.name}")
    console.print(f"start every worker with CLINSTREAM_TOPIC_PARTITIONS={partitions}", highlight=False)
