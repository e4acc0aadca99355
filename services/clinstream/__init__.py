"""clinstream: site-local streaming of wearable telemetry and biobank events."""

__version__ = "0.1.0"
