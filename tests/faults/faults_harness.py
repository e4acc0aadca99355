"""Fault-suite harness: a site with devices and consent, a ledger of 202-acknowledged readings, a paced loader."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream_devtools.pipeline.processes import SitePipeline
from condition_wait import wait_until
from topic_read import read_records, read_values

MINUTE_MS = 60_000
READINGS_PER_BLOCK = 60  # one block = one MINUTE window of 1 Hz heart rate
RETRY_S = 0.25
BLOCK_DEADLINE_S = 150.0  # a block is retried unchanged until acknowledged (covers the 30 s DB stop)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ensure_shared_stack() -> None:
    """Start the shared broker and database if a fault left either down, and wait until both answer."""
    from clinstream_devtools.stack.kafka import kafka_is_up, start_kafka
    from clinstream_devtools.stack.postgres import postgres_is_up, start_postgres

    base = Settings()
    if not postgres_is_up(base):
        start_postgres(base)
    if not kafka_is_up(base):
        start_kafka(base)
    wait_until(lambda: postgres_is_up(base) and kafka_is_up(base), 60, "the local stack to come back", step_s=0.5)


def keep_down(duration_s: float, still_down: Callable[[], bool], what: str) -> None:
    """Hold a fault for `duration_s` (its length is part of the test's design, not a wait for something),
    checking every half second that the service really stays down."""
    held = threading.Event()  # never set: wait() is the half-second step
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        assert still_down(), f"{what} came back before {duration_s:.0f} s"
        held.wait(min(0.5, max(deadline - time.monotonic(), 0.0)))


@dataclass(frozen=True)
class FaultSite:
    """A test site: settings (own gateway port, key file), device tokens per participant and a LIMS token."""

    settings: Settings
    participants: tuple[str, ...]
    device_tokens: dict[str, str]
    lims_token: str
    key_file: Path

    @property
    def url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"


def register_site(settings: Settings, participants: int) -> FaultSite:
    """One device per participant and a LIMS key for a site whose topics and schema exist."""
    from clinstream.core.db import connect_with_retry
    from clinstream.ingest.credentials import register_device, register_lims

    assert settings.pseudonym_key_file is not None
    people = tuple(f"P-9{i:05d}" for i in range(1, participants + 1))
    with connect_with_retry(settings, max_wait_s=30) as conn:
        tokens = {p: register_device(conn, f"SIM-FLT-{i:05d}", p).token for i, p in enumerate(people, 1)}
        lims = register_lims(conn, "faults-lims").token
        conn.commit()
    return FaultSite(settings, people, tokens, lims, settings.pseudonym_key_file)


class Ledger:
    """Every block the gateway acknowledged with 202: block_id -> readings (a re-acknowledged resend counts once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.blocks: dict[str, int] = {}
        self.reacks = 0

    def record(self, block_ids: list[str], readings: int) -> None:
        with self._lock:
            for bid in block_ids:
                if bid in self.blocks:
                    self.reacks += 1
                self.blocks[bid] = readings // max(len(block_ids), 1)

    @property
    def readings(self) -> int:
        with self._lock:
            return sum(self.blocks.values())


def hr_block(participant: str, seq: int, start_ms: int) -> dict[str, Any]:
    """One heart-rate block of 60 one-second samples filling the MINUTE window that starts at `start_ms`."""
    return {
        "block_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"faults/{participant}/{seq}/{start_ms}")),
        "participant_id": participant, "sequence": seq, "start": iso(start_ms), "utc_offset_minutes": 0,
        "schema": "heart-rate", "unit": "beats/min",
        "offsets_ms": [i * 1000 for i in range(READINGS_PER_BLOCK)],
        "values": [60.0 + (i + seq) % 23 for i in range(READINGS_PER_BLOCK)],
    }


def _answer(resp: httpx.Response) -> str:
    """The status code, and for a 503 its cause (broker_unavailable, database_unavailable, overloaded)."""
    if resp.status_code != 503:
        return str(resp.status_code)
    try:
        return f"503 {resp.json()['error']}"
    except (ValueError, KeyError, TypeError):
        return "503"


@dataclass
class Loader:
    """One thread per participant posts its blocks in order, each retried unchanged until a 202 (ledgered)."""

    site: FaultSite
    ledger: Ledger
    blocks_per_participant: int
    interval_s: float
    first_window_ms: int
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, what: str) -> None:
        with self._lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1

    def _post(self, client: httpx.Client, token: str, block: dict[str, Any]) -> None:
        deadline = time.monotonic() + BLOCK_DEADLINE_S
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            try:
                resp = client.post(f"{self.site.url}/v1/telemetry", json={"blocks": [block]}, headers=headers)
                self._count(_answer(resp))
                if resp.status_code == 202:
                    answer = resp.json()
                    if answer["rejected"]:
                        self.errors.append(f"rejected: {answer['rejected']}")
                    self.ledger.record(list(answer["accepted"]), int(answer["readings_accepted"]))
                    return
                if resp.status_code not in (429, 500, 502, 503, 504):
                    self.errors.append(f"unexpected {resp.status_code}: {resp.text[:300]}")
                    return
            except httpx.HTTPError as exc:
                self._count(type(exc).__name__)
            if time.monotonic() > deadline:
                self.errors.append(f"block {block['block_id']} not acknowledged within {BLOCK_DEADLINE_S} s")
                return
            time.sleep(RETRY_S)  # the device's back-off before it retries the same block, not synchronisation

    def _run(self, participant: str) -> None:
        token = self.site.device_tokens[participant]
        with httpx.Client(timeout=10.0) as client:
            for seq in range(1, self.blocks_per_participant + 1):
                start = self.first_window_ms + (seq - 1) * MINUTE_MS
                self._post(client, token, hr_block(participant, seq, start))
                time.sleep(self.interval_s)  # the device's pacing (one block a minute, compressed), not synchronisation

    def start(self) -> None:
        for p in self.site.participants:
            t = threading.Thread(target=self._run, args=(p,), name=f"loader-{p}", daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        assert not any(t.is_alive() for t in self._threads), f"loader still running after {timeout_s} s"


def send_consent(site: FaultSite, occurred_ms: int) -> None:
    """A consent GRANT per participant through the gateway's LIMS endpoint."""
    events = [{"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"faults/consent/{site.settings.site_id}/{p}")),
               "participant_id": p, "occurred_at": iso(occurred_ms), "recorded_at": iso(occurred_ms),
               "payload": {"kind": "consent", "action": "GRANT", "status": "ACTIVE", "scope": ["DUO:0000042"]}}
              for p in site.participants]
    deadline = time.monotonic() + BLOCK_DEADLINE_S
    while True:  # a 503 (broker slow to acknowledge) asks for the same events again, as the Loader does
        resp = httpx.post(f"{site.url}/v1/biobank/events", json={"events": events},
                          headers={"Authorization": f"Bearer {site.lims_token}"}, timeout=30.0)
        if resp.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(RETRY_S)  # the LIMS client's back-off before it retries, not synchronisation
    assert resp.status_code == 202, resp.text
    assert len(resp.json()["accepted"]) == len(events), resp.text


@dataclass(frozen=True)
class StoreCounts:
    """Heart-rate MINUTE rows of the feature store: rows, summed count, and rows whose count is not one block's."""

    rows: int
    readings: int
    odd_rows: int


def store_counts(settings: Settings) -> StoreCounts:
    with connect(settings, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum((feature_values->>'count')::numeric), 0),"
            " count(*) FILTER (WHERE (feature_values->>'count')::numeric <> %s)"
            " FROM wearable_features WHERE feature_set = 'heart_rate' AND window_kind = 'MINUTE' AND version = 1",
            (READINGS_PER_BLOCK,)).fetchone()
    assert row is not None
    return StoreCounts(int(row[0]), int(row[1]), int(row[2]))


def consent_states(settings: Settings) -> int:
    """Distinct keys on the site's consent-state topic."""
    from clinstream.core.topics import CONSENT

    return len({key or b"" for key, _ in read_records(settings, CONSENT.name(settings.site_id), 15.0)})


def settle_and_check(pipeline: SitePipeline, ledger: Ledger, timeout_s: float) -> StoreCounts:
    """Wait until the store holds every ledgered reading and every stage has committed all of its input (so no
    batch is in flight and none can be re-delivered), then return the MINUTE heart-rate counts."""
    from clinstream_devtools.federated.pipeline_fill import LagProbe

    expected = ledger.readings
    settings = pipeline.settings
    probe = LagProbe(settings)

    def settled() -> StoreCounts | None:
        for name in pipeline.services:
            assert pipeline.alive(name), f"{name} died: {pipeline.log_text(name)[-3000:]}"
        counts = store_counts(settings)
        return counts if counts.readings >= expected and probe.uncommitted() == 0 else None

    settled_counts = wait_until(settled, timeout_s, "the store to hold the ledger and every stage to commit",
                                step_s=0.5)
    assert settled_counts is not None
    return settled_counts


WindowKey = tuple[str, str, str, datetime, int]


def reference_windows(settings: Settings) -> tuple[set[str], dict[WindowKey, tuple[dict[str, float], float]]]:
    """The pseudonymised blocks' ids, and the features of every set and window that the pure feature processor
    computes from those blocks (each once, in a single clean pass): what the store must hold after any fault."""
    from clinstream.core.avro import get_codec
    from clinstream.core.records import InRecord
    from clinstream.core.topics import FEATURES, PSEUDO_TELEMETRY
    from clinstream.features.processor import FeatureProcessor

    codec = get_codec()
    topic = PSEUDO_TELEMETRY.name(settings.site_id)
    blocks: dict[str, tuple[tuple[str, int], bytes]] = {}
    for value in read_values(settings, topic):
        rec = _record(codec.decode(value))
        blocks.setdefault(str(rec["block_id"]), ((str(rec["participant_pseudonym"]), int(rec["sequence"])), value))
    ordered = sorted(blocks.values(), key=lambda item: item[0])
    out = FeatureProcessor(settings.site_id, {}).process(
        [InRecord(topic, 0, i, None, value, 0) for i, (_, value) in enumerate(ordered)]).out
    latest: dict[WindowKey, tuple[int, dict[str, float], float]] = {}
    for o in out:
        if o.topic != FEATURES.name(settings.site_id) or o.value is None:
            continue
        rec = _record(codec.decode(o.value))  # instants as datetimes, as the store's table returns them
        key: WindowKey = (rec["participant_pseudonym"], rec["feature_set"], str(rec["window"]).rsplit(".", 1)[-1],
                          rec["window_start"], rec["version"])
        if key not in latest or rec["revision"] >= latest[key][0]:
            latest[key] = (rec["revision"], dict(rec["values"]), rec["completeness"])
    return set(blocks), {k: (values, completeness) for k, (_, values, completeness) in latest.items()}


def stored_windows(settings: Settings) -> dict[WindowKey, tuple[dict[str, float], float]]:
    """Every feature set and window in the store: values and completeness."""
    with connect(settings, autocommit=True) as conn:
        rows = conn.execute("SELECT participant_pseudonym, feature_set, window_kind, window_start, version,"
                            " feature_values, completeness FROM wearable_features").fetchall()
    return {(r[0], r[1], r[2], r[3], r[4]): ({k: float(v) for k, v in r[5].items()}, float(r[6])) for r in rows}


def window_differences(settings: Settings, ledger: Ledger) -> list[str]:
    """Where the store differs from the clean reference (every set and window), and blocks lost in pseudonymise."""
    block_ids, expected = reference_windows(settings)
    problems = [f"{len(set(ledger.blocks) - block_ids)} acknowledged blocks never pseudonymised"] if (
        set(ledger.blocks) - block_ids) else []
    stored = stored_windows(settings)
    problems += [f"missing window {k}" for k in sorted(set(expected) - set(stored))]
    problems += [f"extra window {k}" for k in sorted(set(stored) - set(expected))]
    for key in sorted(set(expected) & set(stored)):
        (want, want_c), (got, got_c) = expected[key], stored[key]
        if set(want) != set(got) or any(not math.isclose(want[n], got[n], rel_tol=1e-9, abs_tol=1e-9)
                                        for n in want) or not math.isclose(want_c, got_c, rel_tol=1e-9):
            problems.append(f"window {key}: store {got} ({got_c}) != reference {want} ({want_c})")
    return problems


def topic_sizes(settings: Settings) -> dict[str, int]:
    """Records per topic of the site (high watermarks summed over partitions): a diagnosis aid for failures."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"faults-{uuid.uuid4().hex}"})
    try:
        topics = c.list_topics(timeout=10).topics
        sizes: dict[str, int] = {}
        for name, meta in topics.items():
            if settings.site_id in name:
                sizes[name.replace(settings.site_id, "")] = sum(
                    c.get_watermark_offsets(TopicPartition(name, p), timeout=5)[1] for p in meta.partitions)
        return sizes
    finally:
        c.close()


def diagnose(settings: Settings) -> dict[str, int]:
    """Where blocks went missing: distinct blocks on the raw and pseudo topics, MINUTE heart-rate windows emitted."""
    from clinstream.core.avro import get_codec
    from clinstream.core.topics import FEATURES, LATE_TELEMETRY, PSEUDO_TELEMETRY, RAW_TELEMETRY

    codec = get_codec()
    out: dict[str, int] = {}
    for label, spec in (("raw", RAW_TELEMETRY), ("pseudo", PSEUDO_TELEMETRY), ("late", LATE_TELEMETRY)):
        values = read_values(settings, spec.name(settings.site_id))
        out[f"{label}_records"] = len(values)
        out[f"{label}_blocks"] = len({str(_record(codec.decode(v))["block_id"]) for v in values})
    windows: set[tuple[str, str]] = set()
    for v in read_values(settings, FEATURES.name(settings.site_id)):
        rec = _record(codec.decode(v))
        if rec["feature_set"] == "heart_rate" and str(rec["window"]).endswith("MINUTE"):
            windows.add((str(rec["participant_pseudonym"]), str(rec["window_start"])))
    out["feature_minute_windows"] = len(windows)
    out.update({f"topic{k}": n for k, n in topic_sizes(settings).items()})
    return out


def _record(decoded: Any) -> dict[str, Any]:
    if isinstance(decoded, tuple):
        decoded = decoded[1]
    assert isinstance(decoded, dict)
    return decoded


def stop_all(pipelines: list[SitePipeline], timeout_s: float) -> None:
    """Stop every process of several pipelines at once: SIGTERM to all, one shared deadline, then SIGKILL.

    Teardown stays bounded however many instances run (one by one, each would get its own grace period)."""
    import signal
    import subprocess

    procs = [p for pipeline in pipelines for p in pipeline.procs.values() if p.popen.poll() is None]
    for proc in procs:
        proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.popen.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    for pipeline in pipelines:
        for proc in pipeline.procs.values():
            proc.log_file.close()
