"""`clinstream federated fill|demo`: demo data for the sites and a one-shot federation on this machine.

These commands join the site's `clinstream federated` group (grant, superlink, supernode, run) through the CLI's
development plugin; the site runtime never imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from clinstream.core import constants as c
from clinstream.core.cli_output import OUTPUT_OPTION, OutputFormat
from clinstream.core.config import Settings
from clinstream.federated.cli import SET_HELP, federated_work_dir, print_summary, run_config_of, site_settings

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


_SOURCE_HELP = ("synthetic: a synthetic pseudonymised cohort through the feature processor and store writer "
                "in-process (fast); pipeline: each site's real pipeline (gateway + workers) driven by the device "
                "and LIMS simulators over HTTP.")


def _source(source: str) -> str:
    from clinstream_devtools.federated.demo import SOURCES

    if source not in SOURCES:
        raise typer.BadParameter(f"source must be one of {', '.join(SOURCES)}")
    return source


def _fill_with_progress(sites: list[tuple[Settings, int, int]], days: int | None, source: str,
                        work_dir: Path) -> list[Any]:
    """Fill the sites behind a progress bar on stderr: site by site in-process, or all pipelines at once."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from clinstream_devtools.federated.demo import PIPELINE, prepare_sites

    reports: list[Any] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"fill {len(sites)} site(s) from {source}", total=len(sites))
        batches = [sites] if source == PIPELINE else [[one] for one in sites]  # pipelines run side by side
        for batch in batches:
            bar.update(task, description=f"fill {', '.join(s.site_id for s, _, _ in batch)} from {source}")
            reports.extend(prepare_sites(batch, days=days, source=source, work_dir=work_dir))
            bar.advance(task, len(batch))
        bar.update(task, description=f"filled {len(sites)} site(s) from {source}")
    return reports


@app.command("fill")
def fill(site: list[str] = typer.Option(..., "--site", help="Site id (repeatable)."),
         participants: int = typer.Option(30, min=1),
         days: int | None = typer.Option(None, min=14, help="Days of data (default: 40 synthetic, 24 pipeline)."),
         seed: int = typer.Option(0), source: str = typer.Option("synthetic", help=_SOURCE_HELP),
         work_dir: Path | None = typer.Option(None, help="Pipeline keys, state and logs (default: data dir).")) -> None:
    """Demo data: migrate each site and fill it (seed + i for the i-th site) from the chosen source."""
    from clinstream_devtools.federated.pipeline_fill import PipelineFillReport

    reports = _fill_with_progress([(site_settings(s), participants, seed + i) for i, s in enumerate(site)], days,
                                  _source(source), federated_work_dir(work_dir))
    for report in reports:
        assert report is not None
        extra = ""
        if isinstance(report, PipelineFillReport):
            extra = (f"; {report.blocks} blocks, {report.readings} readings and {report.lims_events} LIMS events "
                     f"through the gateway")
        typer.echo(f"{report.site_id}: {report.participants} participants, {report.samples} samples, "
                   f"{report.wearable_rows} day-window rows in {report.seconds:.1f} s{extra}")


@app.command("demo")
def demo(sites: str = typer.Option("site-a,site-b,site-c", help="Comma-separated site ids."),
         participants: int = typer.Option(30, help="Participants per site (0: use existing data)."),
         days: int | None = typer.Option(None, min=14, help="Days of data (default: 40 synthetic, 24 pipeline)."),
         seed: int = typer.Option(0), source: str = typer.Option("synthetic", help=_SOURCE_HELP),
         rounds: int | None = typer.Option(None, min=1), strategy: str | None = typer.Option(None),
         dp: str | None = typer.Option(None, help="off | client-fixed | server-fixed"),
         set_: list[str] = typer.Option([], "--set", help=SET_HELP),
         work_dir: Path | None = typer.Option(None), timeout: float = typer.Option(c.FEDERATED_RUN_TIMEOUT_S),
         output: OutputFormat = OUTPUT_OPTION) -> None:
    """Fill the sites (synthetic cohort or real pipelines), start SuperLink + one SuperNode per site, train, stop.

    Prints the federated model beside local-only models and a pooled reference, each over participant splits.
    """
    from clinstream_devtools.federated.demo import demo as run_demo

    work = federated_work_dir(work_dir)
    config = run_config_of(rounds, strategy, dp, set_, None)
    result = run_demo([site_settings(s.strip()) for s in sites.split(",") if s.strip()], work, config,
                      participants=participants, days=days, seed=seed, timeout_s=timeout, source=_source(source))
    print_summary(result.report(), result.run_id, output)
    typer.echo(f"run {result.run_id}: {result.status} in {result.seconds:.0f} s\nreport: {result.report_json}\n"
               f"chart:  {result.report_png}\nlogs:   {work / 'logs'}", err=output is not OutputFormat.TABLE)
