"""Credentials for simulated clients: a fresh device token per simulated device and a LIMS API key."""

from __future__ import annotations

from collections.abc import Sequence

from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.ingest.credentials import register_device, register_lims, revoke_devices
from clinstream.store.migrate import migrate
from clinstream_devtools.simulate.profiles import Participant


def device_tokens(settings: Settings, cohort: Sequence[Participant]) -> dict[str, str]:
    """Register (re-register) every simulated device for its participant; device_id -> token.

    Secrets are never retrievable, so a device that had a credential is revoked and registered again.
    """
    migrate(settings)
    tokens: dict[str, str] = {}
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        for p in cohort:
            revoke_devices(conn, device_id=p.device_id)
            tokens[p.device_id] = register_device(conn, p.device_id, p.participant_id).token
        conn.commit()
    return tokens


def lims_token(settings: Settings, name: str = "simulated-lims") -> str:
    """A new API key for a simulated LIMS."""
    migrate(settings)
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        token = register_lims(conn, name).token
        conn.commit()
    return token
