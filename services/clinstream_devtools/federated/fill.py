"""Fills a site's feature store for the federated demo and tests: synthetic cohort -> feature processor -> store.

The three stages are the project's own code, run in-process without Kafka:

1. source: `synthetic.generate_site` emits PSEUDO_TELEMETRY / PSEUDO_BIOBANK records (Avro, one partition per
   participant, in arrival order), as the pseudonymiser would publish them;
2. the pure `FeatureProcessor` (the same class the features worker hosts) turns them into FeatureRecord and
   SampleFeatureRecord values;
3. the store's `BatchDecoder` + `StoreWriter` (the same code the store worker runs) validate and upsert them.

`pipeline_fill.py` fills through the real streaming pipeline instead (the site's gateway and workers, driven by
the device and LIMS simulators); `dataset.py` only reads the store, whichever way it was filled.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.core.records import InRecord, OutRecord
from clinstream.features.processor import make_processor
from clinstream.store.decode import SAMPLE, WEARABLE, BatchDecoder, records_of
from clinstream.store.writer import StoreWriter
from clinstream_devtools.federated.synthetic import CohortSpec, SyntheticSite, Truth, generate_site

DAY_WINDOWS: frozenset[str] = frozenset({"DAY", "LOCAL_DAY"})


@dataclass
class FillReport:
    """What one fill did."""

    site_id: str
    participants: int
    samples: int
    wearable_rows: int
    sample_rows: int
    rejected: int
    seconds: float
    truth: list[Truth] = field(default_factory=list, repr=False)


def _as_inputs(out: Iterable[OutRecord]) -> list[InRecord]:
    return [InRecord(o.topic, 0, i, o.key, o.value) for i, o in enumerate(out) if o.value is not None]


def fill_site(settings: Settings, participants: int, days: int, seed: int, *,
              window_kinds: frozenset[str] = DAY_WINDOWS,
              source: Callable[[CohortSpec], SyntheticSite] = generate_site,
              spec: CohortSpec | None = None) -> FillReport:
    """Generate, process and store one site's cohort; the site schema must be migrated.

    Only wearable rows of `window_kinds` are stored (the federated task reads day windows; MINUTE and HOUR rows
    would only slow the fill down). Returns counts and, for diagnostics, the ground truth of every sample.
    """
    t0 = time.monotonic()
    spec = spec or CohortSpec(settings.site_id, participants=participants, days=days, seed=seed)
    site = source(spec)
    codec = get_codec()
    processor = make_processor(settings, state={})
    decoder = BatchDecoder(codec, settings.site_id)
    by_partition: dict[int, list[InRecord]] = defaultdict(list)
    for rec in site.records:
        by_partition[rec.partition].append(rec)
    wearable_rows = sample_rows = rejected = 0
    with connect_with_retry(settings) as conn:
        writer = StoreWriter(conn)
        for partition in sorted(by_partition):
            result = processor.process(by_partition[partition])
            decoded = decoder.decode(_as_inputs(result.out))
            rejected += len(decoded.rejected)
            wearable: list[dict[str, Any]] = [r for r in records_of(decoded.of_kind(WEARABLE))
                                              if r["window"] in window_kinds]
            samples: list[dict[str, Any]] = records_of(decoded.of_kind(SAMPLE))
            written = writer.write(wearable=wearable, samples=samples)
            wearable_rows += written.wearable_written
            sample_rows += written.sample_written
        conn.commit()
    return FillReport(settings.site_id, len(site.participants), len(site.truth), wearable_rows, sample_rows,
                      rejected, time.monotonic() - t0, site.truth)
