"""Ingest: the authenticated HTTP gateway for wearable telemetry and biobank LIMS events."""
