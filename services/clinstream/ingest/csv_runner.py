"""Runs a LIMS CSV import through BiobankIntake in chunks, with the real producer and the idempotency record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from clinstream.core.config import Settings
from clinstream.core.kafka import BrokerUnavailable
from clinstream.core.timeutil import now_ms
from clinstream.ingest.biobank_intake import BiobankIntake
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.csv_import import ImportReport, read_rows
from clinstream.ingest.gateway_db import DatabaseUnavailable, GatewayDb, LimsPrincipal
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.producer import AsyncDurableProducer

CSV_IMPORT_KEY = "csv-import"  # recorded as the source of imported event ids
CHUNK_ROWS = 500


async def import_csv(settings: Settings, limits: IngestSettings, path: Path,
                     progress: Callable[[int], None] | None = None, attempts: int = 5) -> ImportReport:
    """Validate and produce every row; rejected rows go to the ingest DLQ and into the report.

    A chunk that the broker or database does not take in time is sent again (the same event ids, so nothing
    doubles); after `attempts` tries BrokerUnavailable / DatabaseUnavailable propagate.
    """
    report = ImportReport()
    producer = AsyncDurableProducer(settings, deadline_s=limits.deadline_s)
    db = GatewayDb(settings, max_size=2, timeout_s=min(limits.deadline_s, 5.0), cache_ttl_s=0)
    await db.open()
    intake = BiobankIntake(settings.site_id, limits, producer, db, GatewayMetrics())
    principal = LimsPrincipal(CSV_IMPORT_KEY)
    try:
        rows = read_rows(path)
        while chunk := list(islice(rows, CHUNK_ROWS)):
            async for attempt in AsyncRetrying(retry=retry_if_exception_type((BrokerUnavailable, DatabaseUnavailable)),
                                               stop=stop_after_attempt(attempts),
                                               wait=wait_exponential(multiplier=0.5, max=5.0), reraise=True):
                with attempt:
                    outcome = await intake.submit_events(
                        [r.event for r in chunk], principal, now_ms(), originals=[r.original for r in chunk],
                        prefixes=[f"rows[{r.number}]" for r in chunk], content_type="text/csv")
            report.rows += len(chunk)
            report.accepted += len(outcome.accepted)
            report.duplicates += len(outcome.duplicates)
            for rejected in outcome.rejected:
                report.errors.append((chunk[rejected.index].number, rejected.event_id,
                                      rejected.rejection.field_path, rejected.rejection.reason))
            if progress:
                progress(len(chunk))
    finally:
        await db.close()
        await asyncio.get_running_loop().run_in_executor(None, producer.close_within, 5.0)
    report.errors.sort()
    return report
