"""`clinstream topics`: list and apply the site's topic catalogue."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from clinstream.core.config import get_settings
from clinstream.core.topic_admin import PartitionLayoutError, apply_topics, grow_partitions
from clinstream.core.topics import ALL_TOPICS, partitions_of

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


@app.command("list")
def list_topics() -> None:
    """Print the catalogue of the configured site."""
    s = get_settings()
    table = Table("topic", "partitions", "policy", "retention (days)", "value schema", "doc")
    for spec in ALL_TOPICS:
        days = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms / 86_400_000:g}"
        table.add_row(spec.name(s.site_id), str(partitions_of(spec, s)), "compact" if spec.compacted else "delete",
                      days, spec.value_schema.rsplit(".", 1)[-1], spec.doc)
    console.print(table)


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
