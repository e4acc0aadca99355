"""Prometheus metrics of the gateway, in a registry per app; labels come from fixed vocabularies, never from input."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ENDPOINTS = frozenset({"/v1/telemetry", "/v1/biobank/events", "/healthz", "/readyz", "/metrics"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """Counters and histograms of one gateway app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("clinstream_gateway_requests_total", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("clinstream_gateway_request_seconds", "Request latency by endpoint.",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.body_bytes = Histogram("clinstream_gateway_body_bytes", "Decoded JSON body size.", ["endpoint"],
                                    buckets=(1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7, 3.2e7), registry=r)
        self.blocks = Counter("clinstream_gateway_blocks_total", "Telemetry blocks by schema and outcome.",
                              ["schema", "outcome"], registry=r)
        self.readings = Counter("clinstream_gateway_readings_total", "Readings in accepted telemetry blocks.",
                                ["schema"], registry=r)
        self.events = Counter("clinstream_gateway_biobank_events_total", "LIMS events by kind and outcome.",
                              ["kind", "outcome"], registry=r)
        self.produce = Histogram("clinstream_gateway_produce_seconds", "Time until the broker acknowledged.",
                                 ["stream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter("clinstream_gateway_auth_failures_total", "Refused credentials.", ["reason"],
                                     registry=r)
        self.unavailable = Counter("clinstream_gateway_unavailable_total", "503 answers by cause.", ["cause"],
                                   registry=r)
        self.credential_lookups = Counter("clinstream_gateway_credential_lookups_total", "Credential look-ups by "
                                          "source: the process's cache or the database.", ["source"], registry=r)
        self.limit_usage = Histogram("clinstream_gateway_limit_usage_ratio", "How much of its per-minute bucket a "
                                     "credential had used after a request (1: at its limit), by unit.", ["unit"],
                                     buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0), registry=r)
        self.rate_limited = Counter("clinstream_gateway_rate_limited_total", "429 answers by unit.", ["unit"],
                                    registry=r)
        self.broker_up = Gauge("clinstream_gateway_broker_up", "1 while the broker is reachable.", registry=r)
        self.broker_up.set(1)

    @staticmethod
    def endpoint_label(path: str) -> str:
        """The route of a request path, or 'other' (raw paths are client input)."""
        return path if path in ENDPOINTS else "other"
