"""Shared helpers of the biobank feature tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from features_factories import decoded

from clinstream.core.records import OutRecord


def latest_samples(outs: Iterable[OutRecord]) -> dict[str, dict[str, Any]]:
    """What an upserting store keeps: per sample pseudonym the sample feature record of the highest revision."""
    best: dict[str, dict[str, Any]] = {}
    for rec, _ in decoded(outs, ".feature.sample.v1"):
        cur = best.get(rec["sample_pseudonym"])
        if cur is None or rec["revision"] > cur["revision"]:
            best[rec["sample_pseudonym"]] = rec
    return best
