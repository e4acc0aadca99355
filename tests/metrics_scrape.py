"""Scraping a process's Prometheus endpoint in tests: samples by name and labels, and the no-identifier check."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from clinstream.core.constants import METRICS_PORT_OFFSETS
from ports import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
LABEL_VALUE = re.compile(r"[a-z]+(?:_[a-z]+)*")  # stage, reason and kind words: no digits, no hex, no ids
LABEL_NAMES = frozenset({"stage", "reason", "kind", "le"})


def metrics_on_free_port(env: dict[str, str], stage: str) -> str:
    """Set a worker's CLINSTREAM_METRICS_PORT so that its stage serves on a free port; that endpoint's URL."""
    port = free_port()
    env["CLINSTREAM_METRICS_PORT"] = str(port - METRICS_PORT_OFFSETS[stage])
    return f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> Samples:
    """Every sample the endpoint serves now ({} while it does not answer)."""
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry these labels."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def assert_names_consistent_and_labels_anonymous(samples: Samples, body: str, pseudonyms: list[str]) -> None:
    """clinstream_<component>_<what> names; only stage/reason/kind labels with plain-word values; no pseudonym
    (nor a 12-hex prefix of one) anywhere in the scraped text."""
    for pseudonym in pseudonyms:
        assert pseudonym[:12] not in body
    for name, labels in samples:
        if name.startswith("clinstream_"):
            assert re.fullmatch(r"clinstream_[a-z]+_[a-z0-9_]+", name), name
            for label, val in labels:
                assert label in LABEL_NAMES, (name, label)
                if label != "le":
                    assert LABEL_VALUE.fullmatch(val), (name, label, val)
