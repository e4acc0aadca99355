"""`clinstream federated`: a site's reader role, SuperLink, SuperNodes and runs of the federated CRP task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from clinstream.core import constants as c
from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit
from clinstream.core.config import Settings, get_settings

SUMMARY_COLUMNS = (
    Column("model", "model", key_column=True), Column("site", "site", key_column=True),
    Column("roc_auc", "ROC AUC", empty="(no held-out examples)", right=True),
    Column("spread", "spread over participant splits", empty="(one run)"),
    Column("balanced_accuracy", "balanced accuracy", empty="(not computed)", right=True),
)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

SET_HELP = "Extra run-config override key=value (repeatable), e.g. --set local-epochs=80 --set dp=server-fixed."


@app.callback()
def federated() -> None:
    """Federated training across sites with Flower (deployment engine, no Ray, telemetry off)."""


def print_summary(report: dict[str, Any], run_id: int, output: OutputFormat) -> None:
    """The federated model beside the local-only models and the pooled reference (table, JSON or CSV)."""
    from clinstream.federated.report import summary_rows

    emit(summary_rows(report), SUMMARY_COLUMNS, output, title=f"Federated run {run_id}: ROC AUC on held-out "
         "participants", json_document={"final": report["final"], "declines": report["declines"],
                                         "comparison": report.get("comparison")})


def site_settings(site_id: str) -> Settings:
    """The settings of `site_id` (the environment's, with that site id)."""
    return Settings(**{**get_settings().model_dump(), "site_id": site_id})


def _tls(ca: Path | None, cert: Path | None = None, key: Path | None = None,
         auth_key: Path | None = None) -> Any:
    from clinstream.federated.deployment import Tls

    return Tls(ca, cert, key, auth_key)


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def run_config_of(rounds: int | None, strategy: str | None, dp: str | None, sets: list[str],
                  report_dir: Path | None) -> dict[str, Any]:
    """The run config from the options (`--set` pairs first, then the named options); checked before use."""
    from clinstream.federated.config import TaskConfig

    config: dict[str, Any] = _parse_sets(sets)
    for key, value in (("num-rounds", rounds), ("strategy", strategy), ("dp", dp)):
        if value is not None:
            config[key] = value
    if report_dir is not None:
        config["report-dir"] = str(report_dir.resolve())
    TaskConfig.from_run_config(config)  # fail fast on bad values
    return config


def federated_work_dir(work_dir: Path | None) -> Path:
    """The federated work directory (created): the given one, else <data dir>/federated."""
    path = work_dir or get_settings().data_dir / "federated"
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@app.command("grant")
def grant(site: list[str] = typer.Option(..., "--site", help="Site id (repeatable).")) -> None:
    """Create or refresh each site's read-only ClientApp role (fl_reader_<site>) on its feature tables and views."""
    from clinstream.federated.roles import ensure_reader_role, reader_url

    for site_id in site:
        settings = site_settings(site_id)
        role = ensure_reader_role(settings)
        typer.echo(f"{site_id}: role {role} -> {reader_url(settings.database_url, site_id)}")


@app.command("superlink")
def superlink(port: int = typer.Option(c.FLOWER_SUPERLINK_PORT, help="Fleet + Control + runtime HTTP API port."),
              ssl_ca_certfile: Path | None = typer.Option(None), ssl_certfile: Path | None = typer.Option(None),
              ssl_keyfile: Path | None = typer.Option(None),
              database: Path | None = typer.Option(None, help="SQLite state file (default: in memory)."),
              work_dir: Path | None = typer.Option(None)) -> None:
    """Run the SuperLink in the foreground (--insecure on loopback unless TLS files are given)."""
    from clinstream.federated.deployment import flower_env, superlink_command

    cmd = superlink_command(port, _tls(ssl_ca_certfile, ssl_certfile, ssl_keyfile), database)
    os.execve(cmd[0], cmd, flower_env(federated_work_dir(work_dir) / "flwr-home" / "superlink"))  # noqa: S606 (fixed argv)


@app.command("supernode")
def supernode(site: str = typer.Option(..., "--site"),
              index: int = typer.Option(0, help="Runtime API port = FLOWER_CLIENTAPPIO_BASE_PORT + index."),
              superlink: str = typer.Option(f"127.0.0.1:{c.FLOWER_SUPERLINK_PORT}"),
              database_url: str = typer.Option("", help="libpq URL of the reader role (default: derived)."),
              min_participants: int = typer.Option(0, help="This site's own minimum cohort (0: the run's)."),
              root_certificates: Path | None = typer.Option(None),
              auth_supernode_private_key: Path | None = typer.Option(None),
              work_dir: Path | None = typer.Option(None)) -> None:
    """Run one site's SuperNode in the foreground; its ClientApp reads the store as fl_reader_<site>."""
    from clinstream.federated.config import SiteNodeConfig
    from clinstream.federated.deployment import flower_env, supernode_command
    from clinstream.federated.roles import reader_url

    settings = site_settings(site)
    node = SiteNodeConfig(site, database_url or reader_url(settings.database_url, site), min_participants)
    cmd = supernode_command(node, c.FLOWER_CLIENTAPPIO_BASE_PORT + index, superlink,
                            _tls(root_certificates, auth_key=auth_supernode_private_key))
    os.execve(cmd[0], cmd, flower_env(federated_work_dir(work_dir) / "flwr-home" / f"supernode-{site}"))  # noqa: S606


@app.command("run")
def run(superlink: str = typer.Option(f"127.0.0.1:{c.FLOWER_SUPERLINK_PORT}"),
        root_certificates: Path | None = typer.Option(None),
        rounds: int | None = typer.Option(None, min=1), strategy: str | None = typer.Option(None),
        dp: str | None = typer.Option(None, help="off | client-fixed | server-fixed"),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        report_dir: Path | None = typer.Option(None), work_dir: Path | None = typer.Option(None),
        timeout: float = typer.Option(c.FEDERATED_RUN_TIMEOUT_S), output: OutputFormat = OUTPUT_OPTION) -> None:
    """Submit the app to a running SuperLink (`flwr run`), wait for the end and print the report summary."""
    from clinstream.federated.config import report_paths
    from clinstream.federated.deployment import start_run, wait_run, write_connection
    from clinstream.federated.report import read_report

    work = federated_work_dir(work_dir)
    reports = (report_dir or work / "reports").resolve()
    config = run_config_of(rounds, strategy, dp, set_, reports)
    home = work / "flwr-cli"
    write_connection(home, superlink, _tls(root_certificates))
    run_id = start_run(home, config)
    notes = output is not OutputFormat.TABLE  # json/csv keep stdout for the summary alone
    typer.echo(f"run {run_id} submitted", err=notes)
    status = wait_run(home, run_id, timeout, done_file=report_paths(reports, run_id)[0])
    json_path, png_path = report_paths(reports, run_id)
    typer.echo(f"run {run_id}: {status}", err=notes)
    if json_path.exists():
        print_summary(read_report(json_path), run_id, output)
        typer.echo(f"report: {json_path}\nchart:  {png_path}", err=notes)
    if status != "finished:completed":
        raise typer.Exit(1)
