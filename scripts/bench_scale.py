"""Scale-out benchmark (not a test): rebalance pauses, features restore after SIGKILL, memory, 1-3 instances.

Runs against the configured stack (single broker or `stack up --brokers 3`); every figure is printed with the
load average, since the machine may be shared. Phases:

* rebalance: per stage, a second instance joins, then leaves by SIGTERM; then one instance is SIGKILLed. The
  pause is how long the consumer group is not Stable (join, SIGTERM) or how long the killed member's partitions
  have no owner (SIGKILL: until the group is Stable without it, which includes the session timeout).
* features state: pseudonymised heart-rate, RR and step blocks of `--participants` people over `--minutes`
  minutes (scripts/bench_features.py's generator) are produced onto the site's pseudo topic; one features
  instance drains them (throughput with 1 instance), its RSS growth per participant is reported; it is SIGKILLed,
  one more minute per participant is produced, and a new instance is started: restore time = start until every
  input partition is committed to its end (changelog recovery + the new minute), and until the group is Stable.
* throughput with 2 and 3 features instances on fresh sites with the same input;
* steady-state restore (`--restore-participants`): the feature processor computes, in-process, the state of 8
  template participants after `--state-minutes` of heart-rate, RR and step blocks; their entries are written to a
  fresh site's changelog under new pseudonyms for each cohort size, and a features instance is started: seconds
  to Stable and to caught up (one input block per partition waits behind the restore), and its resident memory
  above an idle instance per participant. This measures restore at cohorts too large to feed through the pipeline
  on this machine.

    .venv/bin/python scripts/bench_scale.py --participants 1000 --minutes 30
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition

import bench_features
from bench_e2e import Site, drop_site, make_site
from clinstream.core.config import Settings
from clinstream.core.constants import FEATURES_BATCH_MAX
from clinstream.core.records import InRecord
from clinstream.core.topic_admin import admin_client, changelog_prefix, group_state
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.features.processor import make_processor
from clinstream.features.worker import loads
from clinstream_devtools.pipeline.processes import SitePipeline

STAGES = ("pseudonymise", "features", "store")
POLL_S = 0.05


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])


def group_of(settings: Settings, stage: str) -> str:
    return f"clinstream-{settings.site_id}-{stage}"


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `pred` holds (RuntimeError after `timeout_s`)."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic() - t0


def stable_with(settings: Settings, group: str, members: int) -> Callable[[], bool]:
    return lambda: group_state(settings, group) == (members, ConsumerGroupState.STABLE)


STARTED: list[SitePipeline] = []  # every instance this run started: stopped at the end, whatever happens


def instance(settings: Settings, stage: str, n: int, log_dir: Path) -> SitePipeline:
    """One more instance of a stage (its own log file)."""
    proc = SitePipeline(settings, services=(stage,), log_dir=log_dir / f"{stage}-{n}")
    STARTED.append(proc)
    proc.start()
    return proc


def stop_all() -> None:
    """Stop every instance still running."""
    while STARTED:
        STARTED.pop().stop()


def unstable_pause(settings: Settings, group: str, members: int, timeout_s: float) -> float:
    """Seconds the group spends outside Stable until it is Stable with `members` (from its first unstable poll).

    A rebalance shorter than one describe round trip (POLL_S plus the admin request) is not seen and reads 0.0.
    """
    t0 = time.monotonic()
    left: float | None = None
    while True:
        count, state = group_state(settings, group)
        now = time.monotonic()
        if state != ConsumerGroupState.STABLE and left is None:
            left = now
        if (count, state) == (members, ConsumerGroupState.STABLE):
            return now - left if left is not None else 0.0  # 0.0: over between two polls (poll time = resolution)
        if now - t0 > timeout_s:
            raise RuntimeError(f"{group} not stable with {members} members within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def rebalance_pauses(site: Site, log_dir: Path, timeout_s: float) -> dict[str, dict[str, float]]:
    """Per stage: pause when a 2nd instance joins, when it leaves by SIGTERM, and when an instance is SIGKILLed."""
    settings = site.settings
    out: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        group = group_of(settings, stage)
        first = instance(settings, stage, 1, log_dir)
        wait_for(stable_with(settings, group, 1), timeout_s, f"{stage} instance 1")
        second = instance(settings, stage, 2, log_dir)
        join = unstable_pause(settings, group, 2, timeout_s)
        second.kill(stage, signal.SIGTERM, 60)
        term = unstable_pause(settings, group, 1, timeout_s)
        third = instance(settings, stage, 3, log_dir)
        wait_for(stable_with(settings, group, 2), timeout_s, f"{stage} instance 3")
        t0 = time.monotonic()
        first.kill(stage, signal.SIGKILL)
        wait_for(stable_with(settings, group, 1), timeout_s, f"{stage} without the killed member")
        kill = time.monotonic() - t0
        third.stop()
        out[stage] = {"join_s": round(join, 2), "sigterm_leave_s": round(term, 2), "sigkill_s": round(kill, 2)}
        print(f"  {stage:<12} join {join:5.2f} s  SIGTERM leave {term:5.2f} s  SIGKILL (until stable) "
              f"{kill:5.2f} s   load {loadavg()}", flush=True)
    return out


def produce(settings: Settings, records: list[InRecord]) -> None:
    """Produce records onto the site's pseudo telemetry topic, keyed as the pseudonymiser keys them."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 20, "partitioner": "murmur2_random", "compression.type": "lz4"})
    topic = PSEUDO_TELEMETRY.name(settings.site_id)
    for rec in records:
        while True:
            try:
                producer.produce(topic, key=rec.key, value=rec.value)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120) != 0:
        raise RuntimeError("records not acknowledged within 120 s")


def lag(settings: Settings, group: str) -> int:
    """Records of the features input not yet committed by the group."""
    topic = PSEUDO_TELEMETRY.name(settings.site_id)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = consumer.committed(parts, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        return sum(end - max(tp.offset, 0) for tp, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def changelog_records(settings: Settings) -> int:
    """Records on the features state changelog (high watermarks summed)."""
    admin = admin_client(settings)
    name = f"{changelog_prefix(settings)}features-feature-state-changelog"
    meta = admin.list_topics(name, timeout=10).topics[name]
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-scale-probe"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in meta.partitions)
    finally:
        consumer.close()


def rss_mb(pipeline: SitePipeline, stage: str) -> float:
    """Resident memory of an instance (the worker process and its children)."""
    proc = psutil.Process(pipeline.pid(stage))
    return float(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])) / 2**20


def records_for(site: Site, participants: int, minutes: int) -> tuple[list[InRecord], int]:
    bench_features.SITE = site.settings.site_id  # keys and values name the site they belong to
    return bench_features.make_records(participants, minutes)


def drain(site: Site, instances: int, records: list[InRecord], log_dir: Path, timeout_s: float,
          ) -> tuple[list[SitePipeline], dict[str, float]]:
    """Produce, then start `instances` features instances at once; seconds until the input is committed."""
    settings = site.settings
    produce(settings, records)
    group = group_of(settings, "features")
    procs = [instance(settings, "features", n, log_dir) for n in range(1, instances + 1)]
    stable = wait_for(stable_with(settings, group, instances), timeout_s, f"{instances} features instances")
    done = wait_for(lambda: lag(settings, group) == 0, timeout_s, "features input committed")
    elapsed = done + stable
    return procs, {"instances": instances, "group_stable_s": round(stable, 1), "drained_s": round(elapsed, 1),
                   "blocks_per_s": round(len(records) / done, 1)}


def restore(site: Site, procs: list[SitePipeline], participants: int, log_dir: Path, timeout_s: float,
            ) -> dict[str, float]:
    """SIGKILL the features instance, add one minute per participant, restart; seconds until caught up."""
    settings = site.settings
    group = group_of(settings, "features")
    rss = rss_mb(procs[0], "features")
    procs[0].kill("features", signal.SIGKILL)
    more, _ = records_for(site, participants, 1)
    produce(settings, more)
    t0 = time.monotonic()
    again = instance(settings, "features", 9, log_dir)
    stable = wait_for(stable_with(settings, group, 1), timeout_s, "features restarted")
    caught_up = wait_for(lambda: lag(settings, group) == 0, timeout_s, "restored and caught up") + stable
    rss_after = rss_mb(again, "features")
    again.stop()
    return {"rss_before_kill_mb": round(rss, 1), "rss_after_restore_mb": round(rss_after, 1),
            "restart_to_group_stable_s": round(stable, 1), "restart_to_caught_up_s": round(caught_up, 1),
            "changelog_records": changelog_records(settings), "elapsed_s": round(time.monotonic() - t0, 1)}


def steady_state_template(participants: int, minutes: int) -> tuple[list[dict[str, bytes]], bytes]:
    """Each template participant's feature state (key -> entry bytes) after `minutes` of heart-rate, RR and step
    blocks, computed in-process by the feature processor (what a worker holds per participant in steady state),
    and the watermark entry the processor reached."""
    state = bench_features.JsonState()
    processor = make_processor(Settings(site_id=bench_features.SITE), state)
    records, _ = bench_features.make_records(participants, minutes)
    for i in range(0, len(records), FEATURES_BATCH_MAX):
        processor.process(records[i:i + FEATURES_BATCH_MAX])
    people: dict[str, dict[str, bytes]] = {}
    watermark = b""
    for key, value in state.data.items():
        parts = key.split("/")
        if parts[0] == "__wm__":
            watermark = max(watermark, value, key=lambda v: loads(v)["wm"] if v else -1)
        else:
            people.setdefault(parts[2], {})[key] = value
    return list(people.values()), watermark


def produce_steady_state(settings: Settings, template: list[dict[str, bytes]], watermark: bytes,
                         participants: int) -> int:
    """Write the features changelog of `participants` people in steady state (template entries under new
    pseudonyms, spread over the partitions) and one watermark per partition; the records written."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 50, "compression.type": "lz4"})
    topic = f"{changelog_prefix(settings)}features-feature-state-changelog"
    count = 0

    def send(key: str, value: bytes, partition: int) -> None:
        nonlocal count
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, partition=partition)
                count += 1
                return
            except BufferError:
                producer.poll(0.1)

    for i in range(participants):
        pseudonym = hashlib.sha256(f"restore:{i}".encode()).hexdigest()
        partition = i % settings.topic_partitions
        for key, value in template[i % len(template)].items():
            kind, _p, _who, rest = key.split("/", 3)
            send(f"{kind}/{partition}/{pseudonym}/{rest}", value, partition)
    for partition in range(settings.topic_partitions):  # the template's watermark: no window is due yet
        send(f"__wm__/{partition}", watermark, partition)
    if producer.flush(300) != 0:
        raise RuntimeError("changelog records not acknowledged within 300 s")
    return count


def steady_restore(template: list[dict[str, bytes]], watermark: bytes, participants: int, idle_mb: float,
                   log_dir: Path, timeout_s: float) -> dict[str, float]:
    """A features instance started on a site whose changelog holds `participants` people in steady state (and one
    input block per partition): seconds to group Stable and to caught up, resident memory per participant."""
    site = make_site(0)
    try:
        settings = site.settings
        records = produce_steady_state(settings, template, watermark, participants)
        probe, _ = records_for(site, settings.topic_partitions, 1)
        produce(settings, probe[::3])  # one heart-rate block per partition: processed once restored
        group = group_of(settings, "features")
        t0 = time.monotonic()
        proc = instance(settings, "features", 20, log_dir)
        stable = wait_for(stable_with(settings, group, 1), timeout_s, "features started")
        caught_up = wait_for(lambda: lag(settings, group) == 0, timeout_s, "restored and caught up") + stable
        rss = rss_mb(proc, "features")
        return {"participants": participants, "changelog_records": records,
                "start_to_group_stable_s": round(stable, 1), "start_to_caught_up_s": round(caught_up, 1),
                "rss_mb": round(rss, 1), "kb_per_participant": round((rss - idle_mb) * 1024 / participants, 1),
                "elapsed_s": round(time.monotonic() - t0, 1), "load": loadavg()}  # type: ignore[dict-item]
    finally:
        stop_all()
        drop_site(site)


def idle_rss(site: Site, log_dir: Path, timeout_s: float) -> float:
    """RSS of a features instance on an empty site (the baseline for memory per participant)."""
    proc = instance(site.settings, "features", 0, log_dir)
    wait_for(stable_with(site.settings, group_of(site.settings, "features"), 1), timeout_s, "idle features")
    time.sleep(2.0)  # let start-up allocations settle before sampling
    rss = rss_mb(proc, "features")
    proc.stop()
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=30, help="minutes of blocks per participant")
    parser.add_argument("--instances", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--restore-participants", type=int, nargs="*", default=[],
                        help="steady-state restore at these cohort sizes (a changelog of --state-minutes each)")
    parser.add_argument("--state-minutes", type=int, default=120, help="minutes of data behind each participant's "
                        "steady-state entries (the MINUTE horizon is 2 h)")
    parser.add_argument("--skip-rebalance", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("reports/bench-scale"))
    args = parser.parse_args()
    settings = Settings()
    log_dir = args.out / "logs"
    report: dict[str, Any] = {"brokers": settings.kafka_brokers, "replication_factor": settings.replication_factor,
                              "partitions": settings.topic_partitions, "participants": args.participants,
                              "minutes": args.minutes, "load_before": loadavg()}
    print(f"stack: {settings.kafka_brokers} broker(s), RF {settings.replication_factor}, "
          f"{settings.topic_partitions} partitions; load {loadavg()}", flush=True)
    if not args.skip_rebalance:
        site = make_site(1)
        try:
            print("rebalance pauses (group not Stable / killed member's partitions unowned):", flush=True)
            report["rebalance"] = rebalance_pauses(site, log_dir, args.timeout)
        finally:
            stop_all()
            drop_site(site)
    throughput = []
    for n in args.instances:
        site = make_site(0)
        try:
            if n == 1:
                report["idle_rss_mb"] = round(idle_rss(site, log_dir, args.timeout), 1)
            records, readings = records_for(site, args.participants, args.minutes)
            procs, figures = drain(site, n, records, log_dir, args.timeout)
            figures["readings_per_s"] = round(readings / (figures["drained_s"] - figures["group_stable_s"]), 0)
            figures["load"] = loadavg()  # type: ignore[assignment]
            throughput.append(figures)
            print(f"  features x{n}: {figures}", flush=True)
            if n == 1:
                figures_restore = restore(site, procs, args.participants, log_dir, args.timeout)
                grown = figures_restore["rss_before_kill_mb"] - report["idle_rss_mb"]
                figures_restore["kb_per_participant"] = round(grown * 1024 / args.participants, 1)
                figures_restore["load"] = loadavg()  # type: ignore[assignment]
                report["restore"] = figures_restore
                print(f"  restore after SIGKILL at {args.participants} participants: {figures_restore}", flush=True)
        finally:
            stop_all()
            drop_site(site)
    report["throughput"] = throughput
    if args.restore_participants:
        site = make_site(0)
        try:
            idle_mb = report.get("idle_rss_mb") or round(idle_rss(site, log_dir, args.timeout), 1)
        finally:
            stop_all()
            drop_site(site)
        template, watermark = steady_state_template(8, args.state_minutes)
        print(f"steady-state restore ({len(template)} template participants, {args.state_minutes} min each, "
              f"{sum(map(len, template)) / len(template):.0f} entries per participant; idle RSS {idle_mb} MB):",
              flush=True)
        report["steady_restore"] = []
        for n in args.restore_participants:
            figures_steady = steady_restore(template, watermark, n, idle_mb, log_dir, args.timeout)
            report["steady_restore"].append(figures_steady)
            print(f"  {figures_steady}", flush=True)
    report["load_after"] = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
