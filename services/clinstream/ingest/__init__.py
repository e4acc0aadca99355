"""Ingest: the authenticated HTTP gateway for wearable telemetry and biobank LIMS events."""

from __future__ import annotations

from clinstream.core.stage_spec import StageSpec, lazy
from clinstream.core.topics import Stage

# the gateway is an HTTP service, not hosted: the spec gives the tools its dead-letter re-driver
SPEC = StageSpec(Stage.INGEST, processor=None, redriver=lazy("clinstream.ingest.redrive:make_redriver"))
