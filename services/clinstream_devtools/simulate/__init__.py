"""Simulators of synthetic participants: wearable telemetry and biobank LIMS events, with inflammatory flares."""
