"""`clinstream devices register|revoke|list`: device credentials, each bound to exactly one participant."""

from __future__ import annotations

import typer

from clinstream.core.cli_output import Column
from clinstream.ingest.credential_cli import listing_command, run_register, run_update
from clinstream.ingest.credentials import list_devices, register_device, revoke_devices

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

DEVICE_COLUMNS = (
    Column("key_id", "key id", key_column=True), Column("device_id", "device", key_column=True),
    Column("participant_id", "participant", key_column=True), Column("created_at", "created"),
    Column("revoked_at", "revoked", empty="(active)"),
    Column("time_zone", "time zone", empty="(from LIMS consent, else site default)"),
)


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
    run_register(lambda conn: register_device(conn, device_id, participant, time_zone=time_zone,
                                              max_requests_per_min=max_requests_per_min,
                                              max_readings_per_min=max_readings_per_min),
                 "the token below is shown once (send it as 'Authorization: Bearer <token>'):")


@app.command("revoke")
def revoke(
    key_id: str | None = typer.Argument(None, help="Key id of the credential (see `devices list`)."),
    device_id: str | None = typer.Option(None, "--device-id", help="Revoke the device's active credential."),
    participant: str | None = typer.Option(None, "--participant", help="Revoke every device of a participant."),
) -> None:
    """Revoke credentials; every gateway refuses them within a second."""
    run_update(lambda conn: revoke_devices(conn, key_id=key_id, device_id=device_id, participant_id=participant),
               "revoked {count} credential(s)")


app.command("list")(listing_command(list_devices, DEVICE_COLUMNS, title="Device credentials",
                                    noun="device credentials"))
