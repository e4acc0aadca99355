"""End-to-end benchmark: simulated devices -> gateway -> raw topic -> pseudonymise -> features -> store, plus baselines.

Per cohort (a fresh throw-away site `bench-<hex>` each: topics, DB schema, key file, device credentials):

1. start the site's pipeline (`SitePipeline`: gateway and the three workers as child processes);
2. grant consent for every participant through POST /v1/biobank/events;
3. warm up: one request per participant; wait until its 1-minute heart-rate rows are in TimescaleDB;
4. timed phase: the request bodies (heart-rate blocks, 1 Hz, 60 readings, one block per minute, `--blocks` blocks
   per request, each request one participant's device) are built and gzip-compressed BEFORE the clock starts;
   the lean loader (scripts/bench_load.py: forked processes, keep-alive http.client connections) sends them as
   fast as the gateway accepts them, for at most `--seconds`; then wait until every accepted block's MINUTE row
   is visible; sustained readings/s = accepted readings / (last row's stored_at - first send);
   latency of a 1-minute window = its row's stored_at - the wall time its block was sent (a block is sent once
   its minute is over, so this is the latency beyond the window);
   CPU seconds and peak RSS of every service (psutil, children included), this worktree's Kafka and PostgreSQL,
   and CPU-s per million readings per process; the loader's own CPU seconds (its share of a core);
5. paced phase at half the sustained rate: latency below saturation;
6. the check: every accepted reading stored once (one MINUTE row per accepted block, counts summing up);
7. on the same raw records, with the pipeline stopped: the passthrough limit (confluent-kafka copy of the raw
   topic's bytes) and the Quix Streams peer (scripts/bench_quix.py via bench_peer.py: readings/s, CPU-s per
   million with Kafka and PostgreSQL, its final minute rows compared with clinstream's); then the gateway-only
   limit (the gateway alone, the same pre-built requests, HTTP -> raw topic); `--naive`: the naive faust pipeline;
8. profile (the largest cohort, `--profile`): py-spy samples of every service for a few seconds of the timed phase.

After the cohorts, the replay benchmark (scripts/bench_replay.py, `--replay-participants` x `--replay-hours`):
`clinstream replay` of the features stage with a worker process per core, readings/s and its multiple of real time.
`--soak-minutes M`: a 10,000-participant site under load for M minutes; the features worker's RSS is sampled and
its slope (MB/min) reported. Results go to reports/bench-e2e-<time>/bench-e2e.json, .png (rewritten after each
cohort) and .md (the README table).

    scripts/bench                      # cohorts 100, 1000, 10000; soak 6 min (RSS flat after ~5 min)
    scripts/bench --quick              # cohorts 100, 1000; shorter phases; no soak
    scripts/bench --cohorts 100,1000 --seconds 30 --soak-minutes 0
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import psutil
import psycopg
from confluent_kafka import Consumer, ConsumerGroupState, Producer
from confluent_kafka.admin import NewTopic

import bench_peer
from bench_load import Loader, LoadResult, Request, build_requests
from bench_report import chart, table
from clinstream.core.avro import get_codec
from clinstream.core.config import Settings
from clinstream.core.db import connect, connect_with_retry
from clinstream.core.kafka import consumer_config, producer_config
from clinstream.core.topic_admin import admin_client, apply_topics, delete_site_topics
from clinstream.core.topics import RAW_TELEMETRY
from clinstream.ingest.credentials import register_device, register_lims
from clinstream.pseudonymise.keys import init_key_file, load_key_file
from clinstream.pseudonymise.pseudonyms import Pseudonymiser
from clinstream.store.migrate import migrate
from clinstream_devtools.pipeline.processes import SitePipeline
from clinstream_devtools.simulate.lims import lims_events
from clinstream_devtools.simulate.profiles import Participant, make_cohort

ROOT = Path(__file__).resolve().parents[1]
MINUTE_MS = 60_000
SAMPLES = 60  # 1 Hz heart rate, one block per minute
OFFSETS = list(range(0, MINUTE_MS, 1000))
SPAN_MIN = 115  # simulated minutes before now: below the 120-min MINUTE horizon, so no window turns final mid-run
ROW_SQL = ("SELECT participant_pseudonym, window_start, stored_at FROM {table} WHERE feature_set = "
           "'heart_rate' AND window_kind = 'MINUTE' AND window_start >= %s")
COUNT_SQL = ("SELECT count(*), max(stored_at) FROM {table} WHERE feature_set = 'heart_rate' "
             "AND window_kind = 'MINUTE' AND window_start >= %s")
FEATURES = "wearable_features"


def free_port() -> int:
    """A free local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- site ------------------------------------------------------------------------------------------------------
@dataclass
class Site:
    """A throw-away bench site with its credentials."""

    settings: Settings
    key_dir: Path
    cohort: list[Participant]
    tokens: dict[str, str]
    lims_token: str
    pseudonyms: dict[str, int]  # participant pseudonym -> cohort position


def make_site(participants: int) -> Site:
    """Create topics, schema, key file, device and LIMS credentials of a new bench site."""
    key_dir = Path(tempfile.mkdtemp(prefix="clinstream-bench-"))
    key_file = key_dir / "keys.json"
    init_key_file(key_file)
    settings = Settings(site_id="bench-" + uuid.uuid4().hex[:8], gateway_port=free_port(),
                        pseudonym_key_file=key_file, data_dir=key_dir / "data")
    apply_topics(settings)
    migrate(settings)
    cohort = make_cohort(7, participants)
    with connect(settings) as conn:
        tokens = {p.device_id: register_device(conn, p.device_id, p.participant_id).token for p in cohort}
        lims = register_lims(conn, "bench-lims").token
        conn.commit()
    pseudo = Pseudonymiser(load_key_file(key_file))
    pseudonyms = {pseudo.participant(p.participant_id): i for i, p in enumerate(cohort)}
    return Site(settings, key_dir, cohort, tokens, lims, pseudonyms)


def drop_site(site: Site, attempts: int = 6) -> None:
    """Delete the site's topics, consumer groups, schema and key directory (retried while the broker is away)."""
    for attempt in range(attempts):
        try:
            _drop_site(site)
            return
        except Exception as exc:  # the broker or database may be restarting (others' fault tests)
            print(f"  cleanup of {site.settings.site_id} failed ({exc!r}); retry {attempt + 1}", flush=True)
            time.sleep(10)


def _drop_site(site: Site) -> None:
    settings = site.settings
    try:
        delete_site_topics(settings)
        admin = admin_client(settings)
        faust_topics = [t for t in admin.list_topics(timeout=30).topics
                        if t.startswith(settings.site_id + "-") or f"__{settings.site_id}-" in t]
        if faust_topics:  # the naive faust app's and the Quix peer's internal topics
            for fut in admin.delete_topics(faust_topics, operation_timeout=30).values():
                fut.result(30)
        groups = [g.group_id for g in admin.list_consumer_groups().result(30).valid
                  if settings.site_id in g.group_id]
        if groups:
            for fut in admin.delete_consumer_groups(groups, request_timeout=30).values():
                try:
                    fut.result(30)
                except Exception as exc:  # best effort: a group may still be leaving
                    print(f"  (consumer group not deleted: {exc})")
    finally:
        with connect_with_retry(settings, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
        shutil.rmtree(site.key_dir, ignore_errors=True)


# --- resources -------------------------------------------------------------------------------------------------
def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_s(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _rss(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def infrastructure() -> dict[str, psutil.Process]:
    """This worktree's Kafka broker and PostgreSQL postmaster (read-only, for CPU accounting).

    Several engineers' stacks may run on the machine: only processes whose command line names this worktree's
    `.clinstream` state directory count.
    """
    state = str(ROOT / ".clinstream")
    found: dict[str, psutil.Process] = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if state not in cmd:
            continue
        if p.info["name"] == "java" and "kafka" in cmd.lower():
            found.setdefault("kafka", p)
        elif p.info["name"] in ("postgres", "postmaster") and " -D " in f" {cmd} ":
            found.setdefault("postgres", p)
    return found


class Sampler(threading.Thread):
    """Samples RSS of named process trees; CPU seconds between start and stop."""

    def __init__(self, roots: Mapping[str, psutil.Process], interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots = dict(roots)
        self.interval_s = interval_s
        self.halt = threading.Event()
        self.peak: dict[str, int] = collections.defaultdict(int)
        self.series: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
        self.cpu0 = {n: _cpu_s(_tree(p)) for n, p in self.roots.items()}
        self.cpu1: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.t1 = self.t0

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.monotonic() - self.t0
            for name, root in self.roots.items():
                rss = _rss(_tree(root))
                self.peak[name] = max(self.peak[name], rss)
                self.series[name].append((now, rss))
            self.halt.wait(self.interval_s)

    def stop(self) -> dict[str, dict[str, float]]:
        """Stop sampling; per process: cpu_s, cpu_percent (of one core) and peak_rss_mb."""
        self.cpu1 = {n: _cpu_s(_tree(p)) for n, p in self.roots.items()}
        self.t1 = time.monotonic()
        self.halt.set()
        self.join(5)
        wall = max(self.t1 - self.t0, 1e-9)
        return {n: {"cpu_s": round(self.cpu1[n] - self.cpu0[n], 2),
                    "cpu_percent": round(100 * (self.cpu1[n] - self.cpu0[n]) / wall, 1), "wall_s": round(wall, 2),
                    "peak_rss_mb": round(self.peak[n] / 2**20, 1)} for n in self.roots}


# --- load ------------------------------------------------------------------------------------------------------
def participants_of(site: Site) -> list[tuple[str, str, int]]:
    """(participant id, device token, UTC offset) per cohort position, as the loader needs them."""
    return [(p.participant_id, site.tokens[p.device_id], p.utc_offset_minutes) for p in site.cohort]


def send(site: Site, requests: Sequence[Request], args: argparse.Namespace, seconds: float,
         rate_rps: float | None = None) -> LoadResult:
    """Send pre-built requests with the lean loader (not sampled: use Loader directly to sample around it)."""
    loader = Loader("127.0.0.1", site.settings.gateway_port, args.load_processes, args.load_threads)
    loader.prepare(requests, seconds, rate_rps)
    return loader.run()


async def grant_consent(site: Site, start_ms: int) -> None:
    """POST a consent GRANT of every participant through the gateway (before any telemetry)."""
    events = []
    for p in site.cohort:
        grants = [e.event for e in lims_events(p, start_ms, start_ms + 1, seed=7)
                  if e.event["payload"].get("kind") == "consent"]
        events.extend(grants[:1])
    headers = {"Authorization": f"Bearer {site.lims_token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{site.settings.gateway_port}") as session:
        for i in range(0, len(events), 500):
            async with session.post("/v1/biobank/events", data=orjson.dumps({"events": events[i:i + 500]}),
                                    headers=headers) as resp:
                body = await resp.read()
                if resp.status != 202:
                    raise SystemExit(f"consent batch refused: HTTP {resp.status} {body[:300]!r}")


def wait_ready(url: str, pipeline: SitePipeline, timeout_s: float = 90.0) -> None:
    """Wait for the gateway's /readyz."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in pipeline.services:
            if not pipeline.alive(name):
                raise SystemExit(f"{name} exited:\n{pipeline.log_text(name)[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("the gateway did not become ready")


def wait_rows(settings: Settings, since_ms: int, expected: int, timeout_s: float,
              table: str = FEATURES) -> tuple[int, float]:
    """Poll until `expected` MINUTE heart-rate rows from `since_ms` on are visible; (count, max stored_at)."""
    deadline = time.monotonic() + timeout_s
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    count, last = 0, 0.0
    while time.monotonic() < deadline:
        try:
            with connect_with_retry(settings, max_wait_s=max(deadline - time.monotonic(), 1.0),
                                    autocommit=True) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute(COUNT_SQL.format(table=table), (since,)).fetchone()
                    count = int(row[0]) if row else 0
                    last = row[1].timestamp() if row and row[1] else 0.0
                    if count >= expected:
                        return count, last
                    time.sleep(0.25)
        except psycopg.OperationalError:  # the database restarted (e.g. someone's fault test): poll again
            time.sleep(1.0)
    return count, last


def latencies(site: Site, since_ms: int, load: LoadResult, blocks: int, t0_ms: int,
              table: str = FEATURES) -> list[float]:
    """Seconds from a block's send to its 1-minute row's stored_at, for every accepted timed block."""
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    out = []
    with connect(site.settings, autocommit=True) as conn:
        for pseudonym, window_start, stored_at in conn.execute(ROW_SQL.format(table=table), (since,)):
            pos = site.pseudonyms.get(pseudonym)
            minute = (int(window_start.timestamp() * 1000) - t0_ms) // MINUTE_MS
            sent = load.send_times.get((pos, minute // blocks)) if pos is not None else None
            if sent is not None:
                out.append(stored_at.timestamp() - sent)
    return out


def paced_phase(site: Site, args: argparse.Namespace, t0_ms: int, first_round: int, last_round: int,
                readings_per_s: float) -> dict[str, Any]:
    """Latency below saturation: requests paced at `readings_per_s` for --paced-seconds; then drained."""
    if first_round >= last_round or args.paced_seconds <= 0:
        return {"skipped": "no simulated rounds left"}
    rate = readings_per_s / (args.blocks * SAMPLES)
    rounds_needed = max(1, math.ceil(rate * args.paced_seconds / len(site.cohort)))
    rounds = range(first_round, min(last_round, first_round + rounds_needed))
    load = send(site, build_requests(participants_of(site), t0_ms, args.blocks, rounds), args, args.paced_seconds,
                rate)
    since = t0_ms + first_round * args.blocks * MINUTE_MS
    count, _ = wait_rows(site.settings, since, load.accepted_requests * args.blocks, args.drain_timeout)
    lat = latencies(site, since, load, args.blocks, t0_ms)
    out = {"target_readings_per_s": round(readings_per_s), "sent_readings": load.readings,
           "send_seconds": round(load.seconds, 2), "visible_rows": count,
           "accepted_blocks": load.accepted_requests * args.blocks, "latency_s": percentiles(lat)}
    print(f"  paced at {readings_per_s:,.0f} readings/s: {load.readings:,} readings, latency (s) {out['latency_s']}",
          flush=True)
    return out


# --- baselines -------------------------------------------------------------------------------------------------
def _create_topic(settings: Settings, name: str) -> None:
    admin = admin_client(settings)
    for fut in admin.create_topics([NewTopic(name, settings.topic_partitions, 1)]).values():
        fut.result(30)


def passthrough(settings: Settings, expected: int) -> dict[str, float]:
    """The limit: consume the raw telemetry topic and produce every record's bytes unchanged (acks=all)."""
    source = RAW_TELEMETRY.name(settings.site_id)
    target = f"{settings.site_id}.bench.passthrough"
    _create_topic(settings, target)
    consumer = Consumer(consumer_config(settings, f"{settings.site_id}-bench-limit"))
    producer = Producer(producer_config(settings))
    consumer.subscribe([source])
    count = 0
    first = 0.0
    idle_until = time.monotonic() + 60
    try:
        while count < expected and time.monotonic() < idle_until:
            msgs = consumer.consume(min(2000, expected - count), 1.0)  # asking for more waits out the poll
            for m in msgs:
                if m.error():
                    continue
                first = first or time.monotonic()
                while True:
                    try:
                        producer.produce(target, m.value(), m.key(), headers=m.headers())
                        break
                    except BufferError:
                        producer.poll(0.05)
                count += 1
            producer.poll(0)
            if msgs:
                idle_until = time.monotonic() + 10
        producer.flush(60)
        elapsed = max(time.monotonic() - first, 1e-9)
    finally:
        consumer.close()
    return {"records": count, "seconds": round(elapsed, 3), "records_per_s": count / elapsed}


def naive(settings: Settings, cap: int, limit_s: float, log_dir: Path) -> dict[str, float]:
    """The naive pipeline on the same raw records: one record per reading, a faust agent per event."""
    source = RAW_TELEMETRY.name(settings.site_id)
    target = f"{settings.site_id}.bench.naive"
    _create_topic(settings, target)
    codec = get_codec()
    consumer = Consumer(consumer_config(settings, f"{settings.site_id}-bench-naive-prep"))
    producer = Producer(producer_config(settings, **{"compression.type": "none"}))
    consumer.subscribe([source])
    produced = 0
    idle_until = time.monotonic() + 30
    try:
        while produced < cap and time.monotonic() < idle_until:
            for m in consumer.consume(500, 1.0):
                if m.error() or produced >= cap:
                    continue
                idle_until = time.monotonic() + 5
                value = m.value()
                if value is None:
                    continue
                block = codec.decode(value)
                name, body = block["measurement"]
                if not name.endswith("HeartRateSamples"):
                    continue
                start = int(block["start"].timestamp() * 1000)
                pid = block["participant_id"].encode()
                for off, bpm in zip(body["offsets_ms"], body["bpm"], strict=True):
                    while True:
                        try:
                            producer.produce(target, orjson.dumps({"p": block["participant_id"], "t": start + off,
                                                                   "bpm": bpm}), pid)
                            break
                        except BufferError:
                            producer.poll(0.05)
                    produced += 1
            producer.poll(0)
        producer.flush(60)
    finally:
        consumer.close()
    result = log_dir / "naive-result.json"
    env = {**os.environ, "BENCH_NAIVE_TOPIC": target, "BENCH_NAIVE_APP": f"{settings.site_id}-bench-naive",
           "BENCH_NAIVE_EXPECTED": str(produced), "BENCH_NAIVE_LIMIT_S": str(limit_s),
           "BENCH_NAIVE_RESULT": str(result), "BENCH_NAIVE_DATADIR": str(log_dir / "naive-data"),
           "BENCH_NAIVE_PARTITIONS": str(settings.topic_partitions),
           "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    log = (log_dir / "naive.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_naive.py")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=log_dir)
    try:
        proc.wait(limit_s + 90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    finally:
        log.close()
    if not result.exists():
        return {"produced": produced, "processed": 0, "readings_per_s": 0.0, "error": 1.0}
    out: dict[str, float] = json.loads(result.read_text())
    out["produced"] = produced
    return out


# --- profile ---------------------------------------------------------------------------------------------------
def start_profiles(pipeline: SitePipeline, out_dir: Path, seconds: int) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """py-spy record (raw collapsed stacks) of every service, in the background."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return []
    procs = []
    for name in pipeline.services:
        target = out_dir / f"profile-{name}.txt"
        procs.append((name, subprocess.Popen(
            [spy, "record", "--pid", str(pipeline.pid(name)), "--duration", str(seconds), "--rate", "50",
             "--format", "raw", "--output", str(target), "--nonblocking", "--subprocesses"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return procs


def summarise_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Top self and inclusive frames of a collapsed-stack profile."""
    if not path.exists():
        return {}
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [f for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    pct = 100 / max(total, 1)
    return {"samples": total,
            "self": [(f, round(c * pct, 1)) for f, c in own.most_common(top)],
            "inclusive_clinstream": [(f, round(c * pct, 1)) for f, c in incl.most_common(400)
                                     if "clinstream" in f][:top]}


# --- one cohort ------------------------------------------------------------------------------------------------
def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max (NaN when empty)."""
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3), "n": len(values)}


STAGES = ("pseudonymise", "features", "store", "kafka", "postgres")


def per_million(resources: Mapping[str, Mapping[str, float]], readings: int,
                idle: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """CPU seconds per million readings: per process, the processing stages with Kafka and PostgreSQL, and all.

    With `idle` (Kafka's and PostgreSQL's CPU share with no client, measured before the run), their idle
    CPU over the run's wall time is subtracted first: what the readings cost them, not what they burn anyway.
    """
    scale = 1e6 / max(readings, 1)
    idle = idle or {}
    out = {name: round(max(r["cpu_s"] - idle.get(name, {}).get("cpu_percent", 0.0) / 100 * r.get("wall_s", 0.0),
                           0.0) * scale, 2) for name, r in resources.items()}
    out["stages_with_kafka_postgres"] = round(sum(out.get(n, 0.0) for n in STAGES), 2)
    out["pipeline_with_gateway"] = round(out["stages_with_kafka_postgres"] + out.get("gateway", 0.0), 2)
    return out


def stored_once(settings: Settings, since_ms: int, accepted_blocks: int, accepted_readings: int) -> dict[str, Any]:
    """Every accepted reading stored once: one MINUTE row per accepted block, their counts summing to the readings."""
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    with connect(settings, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), coalesce(sum((feature_values->>'count')::float8), 0), "
                           "coalesce(max((feature_values->>'count')::float8), 0) FROM wearable_features "
                           "WHERE feature_set = 'heart_rate' AND window_kind = 'MINUTE' AND window_start >= %s",
                           (since,)).fetchone()
    rows, readings, most = (round(x) for x in row) if row else (0, 0, 0)
    return {"accepted_blocks": accepted_blocks, "minute_rows": rows, "accepted_readings": accepted_readings,
            "stored_readings": readings, "max_readings_in_a_minute": most,
            "ok": rows == accepted_blocks and readings == accepted_readings and most <= SAMPLES}


def wait_group_stable(settings: Settings, group: str, timeout_s: float) -> bool:
    """Wait until a consumer group is Stable (its members hold their partitions)."""
    admin = admin_client(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the group does not exist yet
            if admin.describe_consumer_groups([group])[group].result(10).state == ConsumerGroupState.STABLE:
                return True
        time.sleep(0.5)
    return False


def quix_live_latency(site: Site, args: argparse.Namespace, t0_ms: int, readings_per_s: float,
                      log_dir: Path) -> dict[str, Any]:
    """The Quix peer's latency: the gateway alone and the live peer (rows on every window update), requests paced
    at clinstream's paced rate; latency = peer row's stored_at - the send time of its block."""
    settings = site.settings
    proc, group = bench_peer.start_live(settings, log_dir, int(time.time() * 1000))
    try:
        if not wait_group_stable(settings, group, 120):
            return {"error": "the live peer did not join its group"}
        rate = readings_per_s / (args.blocks * SAMPLES)
        rounds = range(1, 1 + max(1, math.ceil(rate * args.paced_seconds / len(site.cohort))))
        load = send(site, build_requests(participants_of(site), t0_ms, args.blocks, rounds), args,
                    args.paced_seconds, rate)
        accepted = load.accepted_requests * args.blocks
        count, _ = wait_rows(settings, t0_ms, accepted, args.drain_timeout, bench_peer.LIVE_TABLE)
        lat = latencies(site, t0_ms, load, args.blocks, t0_ms, bench_peer.LIVE_TABLE)
    finally:
        bench_peer.stop_live(proc)
    out = {"target_readings_per_s": round(readings_per_s), "sent_readings": load.readings, "accepted_blocks": accepted,
           "visible_rows": count, "latency_s": percentiles(lat)}
    print(f"  quix peer live (gateway + peer, paced at {readings_per_s:,.0f} readings/s): {count:,}/{accepted:,} rows;"
          f" latency (s) {out['latency_s']}", flush=True)
    return out


def gateway_only(site: Site, requests: Sequence[Request], args: argparse.Namespace, out_dir: Path, t0_ms: int,
                 paced_rate: float) -> dict[str, Any]:
    """The gateway-only limit: HTTP -> raw topic, no workers; the same pre-built requests, flat out.

    Then, with the same gateway, the Quix peer's live latency (`quix_live_latency`) at `paced_rate`.
    """
    settings = site.settings
    pipeline = SitePipeline(settings, services=("gateway",), log_dir=out_dir / "gateway-only",
                            extra_env={"CLINSTREAM_LOG_LEVEL": "WARNING"})
    try:
        pipeline.start()
        wait_ready(f"http://127.0.0.1:{settings.gateway_port}", pipeline)
        loader = Loader("127.0.0.1", settings.gateway_port, args.load_processes, args.load_threads)
        loader.prepare(requests, args.seconds)
        roots = {"gateway": psutil.Process(pipeline.pid("gateway")), **infrastructure()}
        sampler = Sampler(roots)
        sampler.start()
        load = loader.run()
        resources = sampler.stop()
        live = quix_live_latency(site, args, t0_ms, paced_rate, out_dir) if args.peer and paced_rate else {}
    finally:
        pipeline.stop()
    out = {"quix_live": live, "readings": load.readings, "seconds": round(load.seconds, 3),
           "readings_per_s": round(load.readings / load.seconds), "statuses": {str(k): v for k, v in
                                                                               load.statuses.items()},
           "resources": resources, "cpu_s_per_million": per_million(resources, load.readings),
           "loader_cpu_s": round(load.cpu_s, 2), "loader_percent_of_core": round(100 * load.cpu_s / load.seconds, 1)}
    print(f"  gateway-only limit: {out['readings_per_s']:,} readings/s over {load.seconds:.1f} s; loader "
          f"{out['loader_percent_of_core']} % of a core; statuses {load.statuses}", flush=True)
    return out


def quix_peer(site: Site, since_ms: int, log_dir: Path, idle: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The Quix Streams peer on the site's raw records; CPU with Kafka and PostgreSQL; its rows checked."""
    sampler = Sampler(infrastructure())
    sampler.start()
    out = bench_peer.run_peer(site.settings, log_dir)
    resources = sampler.stop()
    if "error" in out:
        print(f"  quix peer failed: {out['error']}\n{out.get('log_tail', '')}", flush=True)
        return out
    out["resources"] = {"quix": {"cpu_s": out["cpu_s"]}, **resources}
    scale = 1e6 / max(out["readings"], 1)
    out["cpu_s_per_million"] = {"quix": round(out["cpu_s"] * scale, 2),
                                **{n: round(r["cpu_s"] * scale, 2) for n, r in resources.items()}}
    out["cpu_s_per_million"]["total"] = round(sum(out["cpu_s_per_million"].values()), 2)
    net = per_million(resources, out["readings"], idle)
    out["cpu_s_per_million_net_of_idle"] = {"quix": out["cpu_s_per_million"]["quix"], "kafka": net.get("kafka", 0.0),
                                            "postgres": net.get("postgres", 0.0)}
    out["cpu_s_per_million_net_of_idle"]["total"] = round(sum(out["cpu_s_per_million_net_of_idle"].values()), 2)
    out["check"] = bench_peer.compare(site.settings, since_ms)
    print(f"  quix peer: {out['readings']:,} readings in {out['seconds']:.1f} s = {out['readings_per_s']:,}/s; "
          f"{out['cpu_s_per_million']['total']} CPU-s per million with Kafka and PostgreSQL "
          f"({out['cpu_s_per_million_net_of_idle']['total']} net of their idle CPU); rows "
          f"{out['check']['peer_rows']:,} final, equal to clinstream's: {out['check']['equal']} "
          f"(mismatched {out['check']['mismatched']}, still open in the peer {out['check']['not_final_in_peer']})",
          flush=True)
    return out


def run_cohort(n: int, args: argparse.Namespace, out_dir: Path, profile: bool,
               result: dict[str, Any]) -> dict[str, Any]:
    """The whole measurement of one cohort size."""
    print(f"\n== cohort {n:,} participants", flush=True)
    began = time.monotonic()
    site = make_site(n)
    settings = site.settings
    people = participants_of(site)
    print(f"  site {settings.site_id} (setup {time.monotonic() - began:.1f} s)", flush=True)
    log_dir = out_dir / f"logs-{settings.site_id}"
    pipeline = SitePipeline(settings, log_dir=log_dir, extra_env={"CLINSTREAM_LOG_LEVEL": "WARNING"})
    result.update({"participants": n, "site": settings.site_id, "blocks_per_request": args.blocks,
                   "readings_per_block": SAMPLES, "load_processes": args.load_processes,
                   "load_threads": args.load_threads, "load_avg_at_start": os.getloadavg()})
    t0_ms = (int(time.time() * 1000) // MINUTE_MS - SPAN_MIN) * MINUTE_MS
    last_round = (SPAN_MIN - 2) // args.blocks
    rounds_needed = math.ceil(args.seconds * args.max_rate / (n * args.blocks * SAMPLES))
    saturating_rounds = range(1, min(max(2, int(last_round * 0.7)), 1 + rounds_needed))
    built = time.monotonic()
    requests = build_requests(people, t0_ms, args.blocks, saturating_rounds)
    result["prebuilt"] = {"requests": len(requests), "gzip_bytes": sum(len(r.body) for r in requests),
                          "seconds": round(time.monotonic() - built, 1)}
    print(f"  pre-built {len(requests):,} gzip requests ({result['prebuilt']['gzip_bytes'] / 2**20:.1f} MB) in "
          f"{result['prebuilt']['seconds']} s", flush=True)
    warm = LoadResult()
    load = LoadResult()
    paced: dict[str, Any] = {}
    idle = Sampler(infrastructure())
    idle.start()
    time.sleep(args.idle_seconds)  # a measurement interval: Kafka's and PostgreSQL's CPU with no client
    result["infrastructure_idle"] = idle.stop()
    idle_text = ", ".join(f"{k} {v['cpu_percent']} % of a core" for k, v in result["infrastructure_idle"].items())
    print(f"  idle with no client: {idle_text}", flush=True)
    try:
        pipeline.start()
        wait_ready(f"http://127.0.0.1:{settings.gateway_port}", pipeline)
        asyncio.run(grant_consent(site, t0_ms))
        warm = send(site, build_requests(people, t0_ms, args.blocks, range(0, 1), min(n, args.warm_participants or n)),
                    args, 600)
        count, _ = wait_rows(settings, t0_ms, warm.accepted_requests * args.blocks, args.startup_timeout)
        print(f"  warm-up: {count}/{warm.accepted_requests * args.blocks} rows visible after "
              f"{time.monotonic() - began:.1f} s", flush=True)
        if count < warm.accepted_requests * args.blocks:
            for name in pipeline.services:
                print(f"  --- {name} log tail:\n{pipeline.log_text(name)[-1500:]}")
            raise SystemExit("the pipeline did not produce the warm-up rows")
        loader = Loader("127.0.0.1", settings.gateway_port, args.load_processes, args.load_threads)
        loader.prepare(requests, args.seconds)
        roots = {name: psutil.Process(pipeline.pid(name)) for name in pipeline.services}
        roots.update(infrastructure())
        sampler = Sampler(roots)
        sampler.start()
        spies = start_profiles(pipeline, out_dir, args.profile_seconds) if profile else []
        timed_from = t0_ms + args.blocks * MINUTE_MS
        load = loader.run()
        accepted_blocks = load.accepted_requests * args.blocks
        print(f"  sent {load.readings:,} readings in {load.seconds:.1f} s ({load.readings / load.seconds:,.0f}/s "
              f"accepted by the gateway); statuses {load.statuses}; loader {load.cpu_s:.1f} CPU-s = "
              f"{100 * load.cpu_s / load.seconds:.1f} % of a core", flush=True)
        count, last_stored = wait_rows(settings, timed_from, accepted_blocks, args.drain_timeout)
        resources = sampler.stop()
        for _, spy in spies:
            try:
                spy.wait(args.profile_seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
        lat = latencies(site, timed_from, load, args.blocks, t0_ms)
        e2e_s = max(last_stored - load.first_send, 1e-9)
        visible_readings = count * SAMPLES
        next_round = max((r for _, r in load.send_times), default=0) + 1
        paced = paced_phase(site, args, t0_ms, next_round, last_round, 0.5 * visible_readings / e2e_s)
        result["paced"] = paced
        result.update({
            "sent_readings": load.readings, "accepted_blocks": accepted_blocks, "visible_rows": count,
            "complete": count >= accepted_blocks, "statuses": {str(k): v for k, v in load.statuses.items()},
            "send_seconds": round(load.seconds, 3), "gateway_readings_per_s": round(load.readings / load.seconds),
            "e2e_seconds": round(e2e_s, 3), "readings_per_s": round(visible_readings / e2e_s),
            "latency_s": percentiles(lat),
            "resources": resources, "cpu_s_per_million": per_million(resources, visible_readings),
            "cpu_s_per_million_net_of_idle": per_million(resources, visible_readings, result["infrastructure_idle"]),
            "loader": {"cpu_s": round(load.cpu_s, 2), "percent_of_core": round(100 * load.cpu_s / load.seconds, 1),
                       "share_of_all_cpu": round(load.cpu_s / max(load.cpu_s + sum(
                           r["cpu_s"] for r in resources.values()), 1e-9), 3)},
        })
        print(f"  visible {count:,}/{accepted_blocks:,} minute rows; sustained {result['readings_per_s']:,} "
              f"readings/s end to end over {e2e_s:.1f} s", flush=True)
        print(f"  latency send -> row visible (s): {result['latency_s']}", flush=True)
        for name, r in resources.items():
            print(f"    {name:<13} cpu {r['cpu_s']:>7.1f} s ({r['cpu_percent']:>5.1f} % of a core)  "
                  f"{result['cpu_s_per_million'][name]:>6.2f} CPU-s per million readings  "
                  f"peak RSS {r['peak_rss_mb']:>7.1f} MB", flush=True)
        pm, net = result["cpu_s_per_million"], result["cpu_s_per_million_net_of_idle"]
        print(f"    CPU-s per million readings: stages + Kafka + PostgreSQL {pm['stages_with_kafka_postgres']}, "
              f"with the gateway {pm['pipeline_with_gateway']}; net of Kafka's and PostgreSQL's idle CPU "
              f"{net['stages_with_kafka_postgres']} and {net['pipeline_with_gateway']}", flush=True)
        if profile:
            result["profile"] = {name: summarise_profile(out_dir / f"profile-{name}.txt")
                                 for name in pipeline.services}
    finally:
        pipeline.stop()
    try:
        paced_blocks = paced.get("accepted_blocks", 0)
        paced_readings = paced.get("sent_readings", 0) if paced.get("accepted_blocks") else 0
        blocks_raw = (warm.accepted_requests + load.accepted_requests) * args.blocks + paced_blocks
        result["stored_once"] = stored_once(settings, t0_ms, blocks_raw, warm.readings + load.readings +
                                            paced_readings)
        print(f"  check, every accepted reading stored once: {result['stored_once']}", flush=True)
        lim = passthrough(settings, blocks_raw)
        lim["readings_per_s"] = round(lim["records_per_s"] * SAMPLES)
        result["limit"] = lim
        print(f"  limit (passthrough): {lim['records']:,} records in {lim['seconds']:.1f} s = "
              f"{lim['readings_per_s']:,} readings/s", flush=True)
        if args.peer:
            result["quix"] = quix_peer(site, t0_ms, log_dir, result["infrastructure_idle"])
        if args.gateway_only:
            result["gateway_only"] = gateway_only(site, requests, args, log_dir, t0_ms,
                                                  float(paced.get("target_readings_per_s", 0)))
            if "quix" in result:
                result["quix"]["live"] = result["gateway_only"].pop("quix_live")
        if args.naive:
            nv = naive(settings, args.naive_cap, args.naive_seconds, pipeline.log_dir)
            result["naive"] = nv
            print(f"  naive (faust, record per reading): {nv.get('processed', 0):,.0f} readings in "
                  f"{nv.get('seconds', 0):.1f} s = {nv.get('readings_per_s', 0):,.0f} readings/s", flush=True)
        result["ratio_limit"] = round(result.get("readings_per_s", 0) / max(lim["readings_per_s"], 1e-9), 4)
    finally:
        if not args.keep:
            drop_site(site)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    result["load_avg_at_end"] = os.getloadavg()
    return result


# --- soak ------------------------------------------------------------------------------------------------------
def run_soak(minutes: float, participants: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Features worker RSS under continuous load of a large cohort; slope in MB/min."""
    print(f"\n== soak: {participants:,} participants, {minutes} min", flush=True)
    site = make_site(participants)
    settings = site.settings
    # Short MINUTE/HOUR horizons, so that windows turn final (and leave the state) within the soak's simulated time.
    pipeline = SitePipeline(settings, log_dir=out_dir / f"logs-{settings.site_id}",
                            extra_env={"CLINSTREAM_LOG_LEVEL": "WARNING",
                                       "CLINSTREAM_FEATURES_HORIZON_MINUTE_MIN": str(args.soak_horizon_min),
                                       "CLINSTREAM_FEATURES_HORIZON_HOUR_MIN": str(args.soak_horizon_min)})
    try:
        pipeline.start()
        wait_ready(f"http://127.0.0.1:{settings.gateway_port}", pipeline)
        t0_ms = (int(time.time() * 1000) // MINUTE_MS - 24 * 60) * MINUTE_MS
        asyncio.run(grant_consent(site, t0_ms))
        per_block = 60 // args.soak_hr_period
        rate = args.soak_rate / (args.blocks * per_block)
        rounds = min((24 * 60 - 2) // args.blocks, math.ceil(rate * minutes * 60 / participants))
        requests = build_requests(participants_of(site), t0_ms, args.blocks, range(rounds),
                                  period_s=args.soak_hr_period)
        loader = Loader("127.0.0.1", settings.gateway_port, args.load_processes, args.load_threads)
        loader.prepare(requests, minutes * 60, rate)
        sampler = Sampler({"features": psutil.Process(pipeline.pid("features"))}, interval_s=5.0)
        sampler.start()
        load = loader.run()
        sim_minutes = load.readings / per_block / participants
        resources = sampler.stop()
        series = sampler.series["features"]
        t = np.asarray([s[0] / 60 for s in series])
        mb = np.asarray([s[1] / 2**20 for s in series])
        half = t >= t[-1] / 2 if len(t) else t.astype(bool)
        slope_all = float(np.polyfit(t, mb, 1)[0]) if len(t) > 2 else float("nan")
        slope_late = float(np.polyfit(t[half], mb[half], 1)[0]) if half.sum() > 2 else float("nan")
        out = {"participants": participants, "minutes": minutes, "sent_readings": load.readings,
               "paced_readings_per_s": args.soak_rate, "hr_period_s": args.soak_hr_period,
               "horizon_min": args.soak_horizon_min, "simulated_minutes_per_participant": round(sim_minutes, 1),
               "statuses": {str(k): v for k, v in load.statuses.items()},
               "rss_first_mb": round(float(mb[0]), 1) if len(mb) else None,
               "rss_last_mb": round(float(mb[-1]), 1) if len(mb) else None,
               "slope_mb_per_min": round(slope_all, 2), "slope_second_half_mb_per_min": round(slope_late, 2),
               "series": [(round(float(a), 3), round(float(b), 1)) for a, b in zip(t, mb, strict=True)],
               "resources": resources}
        print(f"  features RSS {out['rss_first_mb']} -> {out['rss_last_mb']} MB; slope {slope_all:.2f} MB/min "
              f"(second half {slope_late:.2f}); sent {load.readings:,} readings = {sim_minutes:.0f} simulated "
              f"minutes per participant", flush=True)
        return out
    finally:
        pipeline.stop()
        if not args.keep:
            drop_site(site)


# --- replay --------------------------------------------------------------------------------------------------
def run_replay(participants: int, hours: int, out_dir: Path) -> dict[str, Any]:
    """`clinstream replay` of the features stage (scripts/bench_replay.py): readings/s and multiple of real time."""
    print(f"\n== replay of the features stage: {participants:,} participants x {hours} h", flush=True)
    log = out_dir / "replay.log"
    with log.open("wb") as out:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_replay.py"), "--participants",
                        str(participants), "--hours", str(hours)], stdout=out, stderr=subprocess.STDOUT,
                       timeout=3600, check=False)
    text = log.read_text(errors="replace")
    rate = re.search(r"([\d,]+) readings/s;", text)
    speed = re.search(r"([\d,.]+)x faster than real time", text)
    workers = re.search(r"replay \((\d+) worker process", text)
    result: dict[str, Any] = {"participants": participants, "hours": hours, "output": text[-1500:],
                              "workers": int(workers.group(1)) if workers else 1}
    if rate and speed:
        result["readings_per_s"] = int(rate.group(1).replace(",", ""))
        result["times_real_time"] = float(speed.group(1).replace(",", ""))
        print(f"  {result['readings_per_s']:,} readings/s = {result['times_real_time']:,.1f}x real time", flush=True)
    else:
        print(f"  replay failed:\n{text[-1500:]}", flush=True)
    return result


# --- report ----------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", default="100,1000,10000", help="Participant counts (comma-separated).")
    parser.add_argument("--quick", action="store_true", help="Cohorts 100,1000 (unless given), short phases, no soak.")
    parser.add_argument("--seconds", type=float, default=None, help="Max seconds of the timed phase per cohort.")
    parser.add_argument("--blocks", type=int, default=10, help="One-minute heart-rate blocks per request.")
    parser.add_argument("--load-processes", type=int, default=2, help="Loader processes (forked, keep-alive).")
    parser.add_argument("--load-threads", type=int, default=8, help="Connections (threads) per loader process.")
    parser.add_argument("--max-rate", type=float, default=300_000,
                        help="Readings/s to pre-build requests for (times --seconds), at most the simulated span.")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="Skip the Quix Streams peer.")
    parser.add_argument("--no-gateway-only", dest="gateway_only", action="store_false",
                        help="Skip the gateway-only limit.")
    parser.add_argument("--idle-seconds", type=float, default=8.0,
                        help="Kafka's and PostgreSQL's idle CPU is measured so long before each cohort.")
    parser.add_argument("--naive", action="store_true", help="Also run the naive faust pipeline (record/reading).")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="Max wait for the warm-up rows.")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="Max wait for all rows after sending.")
    parser.add_argument("--warm-participants", type=int, default=None,
                        help="Participants of the warm-up round (default: all of them, so the timed phase meets a site "
                             "in steady state: every device's credential cached, every participant's windows open).")
    parser.add_argument("--paced-seconds", type=float, default=15.0,
                        help="Paced phase (half the measured sustained rate) for latency below saturation.")
    parser.add_argument("--naive-cap", type=int, default=400_000, help="Readings fed to the naive pipeline.")
    parser.add_argument("--naive-seconds", type=float, default=20.0, help="Time limit of the naive run.")
    parser.add_argument("--profile", choices=("largest", "all", "none"), default="largest",
                        help="py-spy profile of the services during the timed phase of which cohorts.")
    parser.add_argument("--profile-seconds", type=int, default=12)
    parser.add_argument("--soak-minutes", type=float, default=None, help="Soak duration (0: no soak).")
    parser.add_argument("--soak-participants", type=int, default=10_000)
    parser.add_argument("--soak-rate", type=float, default=20_000, help="Paced soak load, readings/s.")
    parser.add_argument("--soak-hr-period", type=int, default=5, help="Soak heart-rate period (s): 12 per block.")
    parser.add_argument("--soak-horizon-min", type=int, default=5, help="Soak MINUTE/HOUR window horizons (min).")
    parser.add_argument("--replay-participants", type=int, default=1000, help="Replay cohort (0: no replay).")
    parser.add_argument("--replay-hours", type=int, default=1, help="Hours of the replay cohort (0: no replay).")
    parser.add_argument("--keep", action="store_true", help="Keep the bench sites' topics and schemas.")
    args = parser.parse_args()
    if args.quick and "--cohorts" not in " ".join(sys.argv):
        args.cohorts = "100,1000"
    args.seconds = args.seconds or (20.0 if args.quick else 45.0)
    args.soak_minutes = (0.0 if args.quick else 6.0) if args.soak_minutes is None else args.soak_minutes
    if args.quick:
        args.naive_seconds = min(args.naive_seconds, 15.0)
    cohorts = [int(c) for c in args.cohorts.split(",") if c.strip()]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = ROOT / "reports" / f"bench-e2e-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    others = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
              if p.info["cmdline"] and any("pytest" in part for part in p.info["cmdline"][:3])]
    report: dict[str, Any] = {
        "started": stamp, "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "other_pytest_running_at_start": len(others)},
        "cohorts": [],
    }
    print(f"clinstream e2e bench: cohorts {cohorts}, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"{len(others)} pytest processes of others running; output {out_dir}", flush=True)
    began = time.monotonic()
    for n in cohorts:
        profile = args.profile == "all" or (args.profile == "largest" and n == max(cohorts))
        result: dict[str, Any] = {"participants": n}
        report["cohorts"].append(result)
        try:
            run_cohort(n, args, out_dir, profile, result)
        except (SystemExit, Exception) as exc:  # keep what was measured; the next cohort may still run
            print(f"  cohort {n} failed: {exc!r}", flush=True)
            result["error"] = repr(exc)
        _write(report, out_dir)
        chart(report, out_dir / "bench-e2e.png")
    if args.replay_hours > 0 and args.replay_participants > 0:
        try:
            report["replay"] = run_replay(args.replay_participants, args.replay_hours, out_dir)
        except (SystemExit, Exception) as exc:
            report["replay_error"] = repr(exc)
        _write(report, out_dir)
    if args.soak_minutes > 0:
        try:
            report["soak"] = run_soak(args.soak_minutes, args.soak_participants, args, out_dir)
        except (SystemExit, Exception) as exc:
            print(f"  soak failed: {exc!r}", flush=True)
            report["soak_error"] = repr(exc)
    report["wall_seconds"] = round(time.monotonic() - began, 1)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    _write(report, out_dir)
    chart(report, out_dir / "bench-e2e.png")
    (out_dir / "bench-e2e.md").write_text(table(report))
    print("\n" + table(report), flush=True)
    print(f"\nwrote {out_dir / 'bench-e2e.json'} and {out_dir / 'bench-e2e.png'} "
          f"({report['wall_seconds']:.0f} s)", flush=True)


def _write(report: Mapping[str, Any], out_dir: Path) -> None:
    (out_dir / "bench-e2e.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()

