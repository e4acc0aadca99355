"""Prometheus counters of the pseudonymise stage; labels are the site and an outcome name, never identifiers."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter

RECORDS = Counter("clinstream_pseudonymise_events_total",
                  "Pseudonymise stage outcomes (forwarded, dropped without consent, consent changes, DLQ...).",
                  ["site", "outcome"])


def observe(site_id: str, counters: Mapping[str, int]) -> None:
    """Add a batch's counters to the process's metrics."""
    for outcome, n in counters.items():
        RECORDS.labels(site=site_id, outcome=outcome).inc(n)
