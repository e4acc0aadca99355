"""Fills a site's feature store through its real pipeline: simulated LIMS and wearables over HTTP -> ... -> store.

Unlike `fill.py` (a synthetic pseudonymised cohort pushed through the feature processor in-process), this runs
the site as it runs in production, as child processes (`pipeline.processes.SitePipeline`): the gateway, the
pseudonymise, features and store workers, over the real broker and database. The simulators are the clients:

1. the site's topics and schema are applied, a pseudonym key file is created (kept under the work directory, so
   a second fill of the same site uses the same pseudonyms), devices and a LIMS are registered;
2. `simulate.client.run_lims` sends consent grants, visits with their sample lifecycles and CRP results, and the
   fill waits until the pseudonymiser has consumed them (it forwards nothing of a participant before the grant);
3. `simulate.client.run_devices` sends the cohort's wearable telemetry (the sparse device profile by default);
4. the fill waits until every stage's consumer group has committed every record of its input topics (the
   pipeline has caught up and the store holds the result), then stops the pipeline.

Timing: wearables cover `days` days that end at `end_ms`, by default the last point of a 28-day grid at
least a day before now, so a cohort's data stays the same for four weeks. The LIMS window opens `run_in_days`
later, so every blood sample has its 7-day lookback of wearable days (and a short personal baseline) before it.
An `end_ms` further back is a backfill: the fill's gateway then accepts blocks older than its usual limit
(`CLINSTREAM_INGEST_MAX_BLOCK_AGE_DAYS`), so a fixed historic window gives the same data on any day.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec

from clinstream.core import constants as c
from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.core.timeutil import DAY_MS, now_ms
from clinstream.core.topic_admin import admin_client, apply_topics
from clinstream.core.topics import (
    ERASURE,
    FEATURES,
    PSEUDO_BIOBANK,
    PSEUDO_TELEMETRY,
    RAW_BIOBANK,
    RAW_TELEMETRY,
    SAMPLE_FEATURES,
    Stage,
    TopicSpec,
    partitions_of,
)
from clinstream.pseudonymise.keys import init_key_file
from clinstream.store.migrate import migrate
from clinstream_devtools.federated.fill import FillReport
from clinstream_devtools.pipeline.processes import SitePipeline
from clinstream_devtools.simulate.client import GatewayClient, Pace, RunStats, run_devices, run_lims
from clinstream_devtools.simulate.lims import LimsOptions, SimEvent
from clinstream_devtools.simulate.profiles import FLARE_EPOCH_MS, Participant, make_cohort
from clinstream_devtools.simulate.provision import device_tokens, lims_token
from clinstream_devtools.simulate.telemetry import DeviceOptions

# The input topics of each stage's consumer group (clinstream-<site>-<stage>).
STAGE_INPUTS: dict[Stage, tuple[TopicSpec, ...]] = {
    Stage.PSEUDONYMISE: (RAW_TELEMETRY, RAW_BIOBANK),
    Stage.FEATURES: (PSEUDO_TELEMETRY, PSEUDO_BIOBANK, ERASURE),
    Stage.STORE: (FEATURES, SAMPLE_FEATURES, ERASURE),
}
_ADMIN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PipelineCohort:
    """Who is simulated at a site, over which days, with which devices and visit rhythm."""

    participants: int = 30
    days: int = c.FEDERATED_FILL_DAYS  # days of wearable telemetry
    seed: int = 0
    run_in_days: int = c.FEDERATED_FILL_RUN_IN_DAYS  # wearable days before the LIMS window opens
    visit_every_days: float = c.FEDERATED_FILL_VISIT_EVERY_DAYS
    prefix: str = "P"
    day_variability: float = c.FEDERATED_FILL_DAY_VARIABILITY  # see simulate.profiles (0: days alike but flares)
    flare_response: float = c.FEDERATED_FILL_FLARE_RESPONSE  # between-person spread of the flare response
    device: DeviceOptions = field(default_factory=DeviceOptions.sparse)
    end_ms: int | None = None  # None: the last anchor-grid instant at least a day before now; else a backfill

    def __post_init__(self) -> None:
        if self.participants < 1 or not 0 <= self.run_in_days < self.days:
            raise ValueError("need participants >= 1 and 0 <= run_in_days < days")

    def window(self, now: int | None = None) -> tuple[int, int]:
        """(start, end) epoch ms of the wearable telemetry; the LIMS window is [start + run_in_days, end)."""
        end = self.end_ms if self.end_ms is not None else anchored_end_ms(now if now is not None else now_ms())
        return end - self.days * DAY_MS, end


def anchored_end_ms(now: int) -> int:
    """The last instant of the fill grid (every FEDERATED_FILL_ANCHOR_DAYS days from the flare epoch) a day ago."""
    step = c.FEDERATED_FILL_ANCHOR_DAYS * DAY_MS
    return FLARE_EPOCH_MS + (now - DAY_MS - FLARE_EPOCH_MS) // step * step


@dataclass
class PipelineFillReport(FillReport):
    """What one fill through the pipeline did (FillReport's counts: sent assays as `samples`, rows stored)."""

    days: int = 0  # days of wearable telemetry per participant
    participants_stored: int = 0  # distinct pseudonyms with a CRP sample in the store
    blocks: int = 0  # telemetry blocks the gateway accepted
    readings: int = 0  # readings in them
    lims_events: int = 0  # LIMS events the gateway accepted
    requests: int = 0
    lims_seconds: float = 0.0
    devices_seconds: float = 0.0
    settle_seconds: float = 0.0


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pipeline_settings(settings: Settings, work_dir: Path) -> Settings:
    """The site's settings for a fill: its own pseudonym key file and data dir under work_dir, a free gateway port."""
    key_file = settings.pseudonym_key_file or work_dir / "secrets" / f"{settings.site_id}-pseudonym-keys.json"
    if not key_file.exists():
        init_key_file(key_file)
    return settings.model_copy(update={"pseudonym_key_file": key_file, "gateway_port": free_port(),
                                       "data_dir": work_dir / "pipeline" / settings.site_id})


def gateway_env(start_ms: int, now: int) -> dict[str, str]:
    """Environment for a backfill: raise the gateway's block-age limit when the window starts before it."""
    age_days = -(-(now - start_ms) // DAY_MS) + 1
    if age_days < c.INGEST_MAX_BLOCK_AGE_DAYS:
        return {}
    return {c.ENV_PREFIX + "INGEST_MAX_BLOCK_AGE_DAYS": str(age_days + 1)}


def group_of(settings: Settings, stage: Stage) -> str:
    """The consumer group of a stage's worker at a site."""
    return f"clinstream-{settings.site_id}-{stage.value}"


class LagProbe:
    """Counts the records of a site's stage inputs that the stages' consumer groups have not committed yet."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = admin_client(settings)

    def _partitions(self, stage: Stage) -> list[TopicPartition]:
        return [TopicPartition(spec.name(self.settings.site_id), p) for spec in STAGE_INPUTS[stage]
                for p in range(partitions_of(spec, self.settings))]

    def uncommitted(self, stages: Sequence[Stage] = tuple(STAGE_INPUTS)) -> int:
        """Records not yet committed by the stages' groups (a partition never committed counts in full).

        Committed offsets are read before the end offsets, so 0 means that every record that existed when the
        offsets were read had been processed, and its outputs written (the workers commit after that).
        """
        committed: dict[tuple[str, str, int], int] = {}
        wanted: set[TopicPartition] = set()
        for stage in stages:
            group = group_of(self.settings, stage)
            tps = self._partitions(stage)
            wanted.update(tps)
            futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)],
                                                             request_timeout=_ADMIN_TIMEOUT_S)
            for fut in futures.values():
                for tp in fut.result().topic_partitions or []:
                    committed[(group, tp.topic, tp.partition)] = int(tp.offset)
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends = {(tp.topic, tp.partition): int(fut.result().offset) for tp, fut in
                self.admin.list_offsets({tp: latest for tp in wanted}, request_timeout=_ADMIN_TIMEOUT_S).items()}
        return sum(max(0, ends[(tp.topic, tp.partition)] - max(committed.get((group_of(self.settings, stage),
                                                                               tp.topic, tp.partition), 0), 0))
                   for stage in stages for tp in self._partitions(stage))

    def wait(self, pipeline: SitePipeline, timeout_s: float, stages: Sequence[Stage] = tuple(STAGE_INPUTS),
             confirm_s: float = 1.0, poll_s: float = 0.2) -> float:
        """Wait until the stages have committed all their input (and still have `confirm_s` later); seconds waited.

        Raises if a process of the pipeline exited, or on timeout.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        zero_since: float | None = None
        lag = -1
        while time.monotonic() < deadline:
            for name in pipeline.services:
                if not pipeline.alive(name):
                    raise RuntimeError(f"{name} of site {self.settings.site_id} exited; log: "
                                       f"{pipeline.procs[name].log_path}")
            lag = self.uncommitted(stages)
            now = time.monotonic()
            if lag:
                zero_since = None
            else:
                zero_since = now if zero_since is None else zero_since
                if now - zero_since >= confirm_s:
                    return now - t0
            time.sleep(poll_s)
        raise TimeoutError(f"site {self.settings.site_id}: {lag} records still uncommitted after {timeout_s:.0f} s "
                           f"(logs in {pipeline.log_dir})")


async def _send_lims(url: str, people: Sequence[Participant], token: str, start: int, end: int,
                     cohort: PipelineCohort) -> tuple[RunStats, list[SimEvent]]:
    client = GatewayClient(url)
    try:
        return await run_lims(client, people, token, start, end, seed=cohort.seed,
                              options=LimsOptions(visit_every_days=cohort.visit_every_days))
    finally:
        await client.close()


async def _send_devices(url: str, people: Sequence[Participant], tokens: dict[str, str], start: int, end: int,
                        cohort: PipelineCohort, pace: Pace) -> RunStats:
    client = GatewayClient(url)
    try:
        return await run_devices(client, people, tokens, start, end, seed=cohort.seed, options=cohort.device,
                                 concurrency=4, step_days=c.FEDERATED_FILL_STEP_DAYS, pace=pace)
    finally:
        await client.close()


def _require_delivered(site_id: str, what: str, stats: RunStats) -> None:
    if stats.failed_requests:
        raise RuntimeError(f"site {site_id}: {stats.failed_requests} {what} requests failed ({stats.statuses})")


def _stored(settings: Settings) -> tuple[int, int, int]:
    """(day-window rows, CRP sample rows, participants with a CRP sample) in the store."""
    with connect_with_retry(settings, max_wait_s=30.0) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM wearable_features_current WHERE window_kind IN ('DAY', 'LOCAL_DAY')),"
            " count(*), count(DISTINCT participant_pseudonym) FROM sample_features_current WHERE assays ? %s",
            (c.LOINC_CRP,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def fill_site_via_pipeline(settings: Settings, cohort: PipelineCohort, work_dir: Path, *,
                           timeout_s: float = 600.0) -> PipelineFillReport:
    """Run the site's pipeline, drive the simulators through its gateway, wait until it caught up, stop it."""
    t0 = time.monotonic()
    work_dir = work_dir.resolve()
    site = pipeline_settings(settings, work_dir)
    apply_topics(site)
    migrate(site)
    people = make_cohort(cohort.seed, cohort.participants, prefix=cohort.prefix,
                         day_variability=cohort.day_variability, flare_response=cohort.flare_response)
    tokens = device_tokens(site, people)
    lims_key = lims_token(site, "federated-fill-lims")
    start, end = cohort.window()
    url = f"http://{site.gateway_host}:{site.gateway_port}"
    probe = LagProbe(site)

    async def pace(_sim_ms: int) -> None:
        # One simulated day at a time: the pseudonymiser re-keys participants from its input partitions onto the
        # features stage's partitions, whose watermarks are shared by several participants. A backlog consumed
        # unevenly across input partitions could move a watermark past the 36-h day horizon of another
        # participant's data, which would then be refused as late. Devices sending in real time never run
        # ahead like that; a fill at full speed must not either.
        await asyncio.to_thread(probe.wait, pipeline, timeout_s, (Stage.PSEUDONYMISE,), 0.0, 0.1)

    with SitePipeline(site, extra_env=gateway_env(start, now_ms())) as pipeline:
        pipeline.wait_ready()
        t1 = time.monotonic()
        lims_stats, events = asyncio.run(_send_lims(url, people, lims_key, start + cohort.run_in_days * DAY_MS,
                                                    end, cohort))
        _require_delivered(site.site_id, "LIMS", lims_stats)
        # Consent first: the pseudonymiser drops a participant's telemetry that it reads before the grant.
        probe.wait(pipeline, timeout_s, (Stage.PSEUDONYMISE,), confirm_s=0.0)
        t2 = time.monotonic()
        device_stats = asyncio.run(_send_devices(url, people, tokens, start, end, cohort, pace))
        _require_delivered(site.site_id, "telemetry", device_stats)
        t3 = time.monotonic()
        settle = probe.wait(pipeline, timeout_s)
    day_rows, sample_rows, stored_people = _stored(site)
    assays = sum(1 for e in events if e.valid and e.event["payload"]["kind"] == "assay")
    return PipelineFillReport(
        site.site_id, len(people), assays, day_rows, sample_rows, lims_stats.rejected + device_stats.rejected,
        time.monotonic() - t0, days=cohort.days, participants_stored=stored_people, blocks=device_stats.accepted,
        readings=device_stats.readings, lims_events=lims_stats.accepted,
        requests=lims_stats.requests + device_stats.requests, lims_seconds=t2 - t1, devices_seconds=t3 - t2,
        settle_seconds=settle)


def fill_sites_via_pipeline(fills: Sequence[tuple[Settings, PipelineCohort]], work_dir: Path, *,
                            parallel: int = c.FEDERATED_FILL_PARALLEL, timeout_s: float = 600.0,
                            ) -> list[PipelineFillReport]:
    """Fill several sites, `parallel` at a time (each site runs its own pipeline); reports in the given order."""
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="fill") as pool:
        futures = [pool.submit(fill_site_via_pipeline, site, cohort, work_dir, timeout_s=timeout_s)
                   for site, cohort in fills]
        return [f.result() for f in futures]
