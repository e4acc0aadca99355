"""`clinstream devices register|revoke|list`: device credentials, each bound to exactly one participant."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from clinstream.core.config import get_settings
from clinstream.core.db import connect_with_retry
from clinstream.ingest.credential_cli import run_update
from clinstream.ingest.credentials import CredentialError, list_devices, register_device, revoke_devices
from clinstream.store.migrate import migrate

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
err = Console(stderr=True)


@app.command("register")
def register(
    device_id: str = typer.Option(..., "--device-id", help="Device serial."),
    participant: str = typer.Option(..., "--participant", help="The one participant this device writes for."),
    time_zone: str | None = typer.Option(None, "--time-zone", help="The participant's IANA time zone, e.g. "
                                         "Europe/Berlin. Without it the gateway stamps the participant's zone "
                                         "from the LIMS consent event, else CLINSTREAM_INGEST_TIME_ZONE."),
    max_requests_per_min: int | None = typer.Option(None, "--max-requests-per-min", min=1,
                                                    help="Override the site's request limit for this device."),
    max_readings_per_min: int | None = typer.Option(None, "--max-readings-per-min", min=1,
                                                    help="Override the site's readings limit for this device."),
) -> None:
    """Issue a device token; it is printed once and only its hash is stored."""
    settings = get_settings()
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        try:
            issued = register_device(conn, device_id, participant,
                                     time_zone=time_zone,
                                     max_requests_per_min=max_requests_per_min,
                                     max_readings_per_min=max_readings_per_min)
        except CredentialError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        conn.commit()
    err.print(f"key id {issued.key_id}; the token below is shown once (send it as 'Authorization: Bearer <token>'):",
              highlight=False)
    typer.echo(issued.token)


@app.command("revoke")
def revoke(
    key_id: str | None = typer.Argument(None, help="Key id of the credential (see `devices list`)."),
    device_id: str | None = typer.Option(None, "--device-id", help="Revoke the device's active credential."),
    participant: str | None = typer.Option(None, "--participant", help="Revoke every device of a participant."),
) -> None:
    """Revoke credentials; every gateway refuses them within a second."""
    run_update(lambda conn: revoke_devices(conn, key_id=key_id, device_id=device_id, participant_id=participant),
               "revoked {count} credential(s)")


@app.command("list")
def list_(include_revoked: bool = typer.Option(False, "--all", help="Include revoked credentials.")) -> None:
    """Device credentials (never secrets)."""
    settings = get_settings()
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        rows = list_devices(conn, include_revoked=include_revoked)
    table = Table("key id", "device", "participant", "time zone", "created", "revoked")
    for row in rows:
        table.add_row(row.key_id, row.device_id, row.participant_id, row.time_zone or "",
                      f"{row.created_at:%Y-%m-%d %H:%M}", f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "")
    console.print(table)
