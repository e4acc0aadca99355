"""Scale-out on a 3-broker cluster: several instances per stage, and a broker killed, lose and double nothing.

The module starts its own 3-node KRaft cluster (`clinstream_devtools.stack.kafka`, the code behind
`stack up --brokers 3`) on free loopback ports in a temporary data dir, so the shared stack is not disturbed; the
database is the shared one. Sites on it get replication factor 3 and min ISR 2 from the settings
(CLINSTREAM_KAFKA_BROKERS=3).

* Scale-out: under steady paced ingest, a second and a third instance of every stage join the stage's consumer
  group; then one instance per stage gets SIGTERM and another SIGKILL. The store must equal the gateway's 202 ledger
  (no reading lost or counted twice) and hold, for every feature set and window, what one clean single-instance
  pass of the feature processor computes from the same pseudonymised input (state moved with its partitions
  through the changelogs).
* Broker kill: under steady ingest a broker that leads a raw-telemetry partition (not the active controller: a
  production cluster runs its controllers apart from its brokers) is SIGKILLed. While 2 of 3 brokers run, the
  gateway keeps answering 202 (and nothing else); the node is restarted and rejoins every ISR; the store equals
  the ledger.
* Partition growth keeps the co-partitioned topics and changelogs equal, and is refused once they hold records.

Teardown is bounded: every process of a test gets SIGTERM at once and one shared grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from faults_harness import (
    MINUTE_MS,
    FaultSite,
    Ledger,
    Loader,
    diagnose,
    ensure_shared_stack,
    register_site,
    settle_and_check,
    stop_all,
    window_differences,
)
from test_faults import running

from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.core.topic_admin import (
    PartitionLayoutError,
    admin_client,
    apply_topics,
    changelog_prefix,
    co_partitioned_topics,
    group_state,
    grow_partitions,
)
from clinstream.core.topics import (
    PSEUDO_TELEMETRY,
    RAW_TELEMETRY,
    STATE_TABLES,
    changelog_configs,
    changelog_name,
)
from clinstream.pseudonymise.keys import init_key_file
from clinstream_devtools.pipeline.processes import SitePipeline
from clinstream_devtools.stack.common import port_in_use, stack_lock
from clinstream_devtools.stack.kafka import (
    KafkaNode,
    cluster_bootstrap,
    kafka_nodes,
    node_is_up,
    node_pid,
    quorum_leader,
    start_kafka,
    stop_kafka,
)
from condition_wait import wait_until
from ports import free_port, port_refuses

pytestmark = [pytest.mark.faults, pytest.mark.own_stack, pytest.mark.integration]  # the parallel phase

BROKERS = 3
PARTICIPANTS = 8  # twice the 4 partitions a site has by default: every instance of 3 has work
BLOCKS = 100  # per participant: windows span 100 min, inside the 2 h MINUTE horizon (no window turns final)
INTERVAL_S = 1.0  # steady pace while faults are injected; 0 once they are done
BROKER_INTERVAL_S = 2.0  # the broker test's pace: ingest outlasts the killed node's restart and ISR rejoin (>80 s)
STAGES = ("pseudonymise", "features", "store")
INSTANCES = 3
JOIN_S = 180.0  # three workers starting at once on a loaded 2-core machine
SETTLE_S = 240.0
STOP_S = 20.0  # the shared grace period of a test's processes at teardown
KAFKA_STOP_S = 10.0  # the module's cluster is thrown away: no long controlled shutdown
EXPLICIT_PORTS_FROM = 20_000  # above the suite's fixed ports (19092/19093, 15432, 18080, Flower's 19191 to 192xx)


def _free_port_block(size: int) -> int:
    """A base port such that base .. base+size-1 are all free on loopback, below the kernel's ephemeral range.

    A port the cluster is to bind must not be one the kernel may give meanwhile to an outgoing connection (any
    client of the other tests on a parallel worker): a node once failed to start with "Address already in use"
    on a port of a block checked free a moment before, inside the ephemeral range.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(EXPLICIT_PORTS_FROM, low - size)
        if not any(port_in_use("127.0.0.1", p) for p in range(base, base + size)):
            return base
    raise AssertionError(f"no {size} consecutive free ports found")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A 3-node cluster of this module; the process environment points every Settings() at it (its data dir too,
    so the fault suite's stack guard restarts a node of this cluster, never the shared single broker)."""
    ensure_shared_stack()  # the shared database (and broker), before the environment points at this cluster
    data = tmp_path_factory.mktemp("cluster")
    base = _free_port_block(2 * BROKERS)
    probe = Settings(data_dir=data, kafka_bootstrap=f"127.0.0.1:{base}", kafka_controller_port=base + 1,
                     kafka_brokers=BROKERS)
    env = {"CLINSTREAM_KAFKA_BOOTSTRAP": cluster_bootstrap(probe, BROKERS), "CLINSTREAM_DATA_DIR": str(data),
           "CLINSTREAM_KAFKA_CONTROLLER_PORT": str(base + 1), "CLINSTREAM_KAFKA_BROKERS": str(BROKERS)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings(data_dir=data)
        assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
        try:
            start_kafka(settings, brokers=BROKERS)
            _warm_up(settings)
            yield settings
        finally:
            stop_kafka(settings, timeout_s=KAFKA_STOP_S)


def _warm_up(settings: Settings) -> None:
    """Wait until an idempotent acks=all write succeeds: a new cluster first loads its producer-id coordinator."""
    name = "warm-up-" + uuid.uuid4().hex[:8]
    admin = admin_client(settings)
    for fut in admin.create_topics([NewTopic(name, 1, BROKERS)]).values():
        fut.result(60)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": 120_000})
    failed: list[object] = []
    producer.produce(name, b"x", on_delivery=lambda err, _msg: failed.append(err) if err else None)
    assert producer.flush(150) == 0 and not failed, f"the new cluster did not accept a write: {failed}"
    for fut in admin.delete_topics([name]).values():
        fut.result(60)


def _make_site(tmp: Path, key_file: Path, prefix: str) -> FaultSite:
    """A fresh site on the cluster (topics, schema, one device per participant, a LIMS key), sharing `key_file`."""
    from clinstream.store.migrate import migrate

    site_id = prefix + uuid.uuid4().hex[:9]
    settings = Settings(site_id=site_id, gateway_port=free_port(), pseudonym_key_file=key_file,
                        data_dir=tmp / site_id)
    apply_topics(settings)
    migrate(settings)
    return register_site(settings, PARTICIPANTS)


@contextmanager
def sites(tmp: Path, count: int) -> Iterator[list[FaultSite]]:
    """`count` sites with one shared pseudonym key (so equal inputs give equal pseudonyms); schemas dropped after."""
    key_file = tmp / "keys" / "site.json"
    init_key_file(key_file)
    made = [_make_site(tmp, key_file, f"so{i}") for i in range(count)]
    try:
        yield made
    finally:
        for site in made:
            with connect_with_retry(site.settings, max_wait_s=30, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{site.settings.db_schema}" CASCADE')


def wait_for_members(settings: Settings, group: str, members: int, timeout_s: float) -> None:
    """Wait until the group is stable with exactly `members` members (the rebalance is over)."""
    wait_until(lambda: group_state(settings, group) == (members, ConsumerGroupState.STABLE), timeout_s,
               f"{group} stable with {members} members")


def check_store(pipeline: SitePipeline, ledger: Ledger, loader: Loader) -> None:
    """The store holds exactly the ledger: one 60-reading MINUTE row per acknowledged block."""
    loader.join(SETTLE_S)
    assert not loader.errors, loader.errors[:5]
    assert len(ledger.blocks) == PARTICIPANTS * BLOCKS
    counts = settle_and_check(pipeline, ledger, SETTLE_S)
    sizes = diagnose(pipeline.settings) if counts.readings != ledger.readings else {}
    print(f"ledger={ledger.readings} readings ({len(ledger.blocks)} blocks, {ledger.reacks} re-acks), "
          f"store={counts.readings} in {counts.rows} rows, odd rows={counts.odd_rows}, statuses={loader.statuses}")
    assert counts.readings == ledger.readings and counts.odd_rows == 0 and counts.rows == len(ledger.blocks), (
        f"lost={ledger.readings - counts.readings} (negative = counted twice), odd rows={counts.odd_rows}, "
        f"rows={counts.rows}, topics={sizes}")


def first_window() -> int:
    """Start of the first block's MINUTE: every block lies in the past, within the MINUTE horizon."""
    return (int(time.time() * 1000) // MINUTE_MS - BLOCKS - 5) * MINUTE_MS


def test_three_instances_per_stage_then_sigterm_and_sigkill(cluster: Settings, tmp_path: Path) -> None:
    with sites(tmp_path, 1) as (scaled,), running(scaled) as pipeline, ExitStack() as stack:
        extra: dict[str, list[SitePipeline]] = {stage: [] for stage in STAGES}
        stack.callback(lambda: stop_all([pipeline, *(p for ps in extra.values() for p in ps)], STOP_S))
        ledger = Ledger()
        loader = Loader(scaled, ledger, BLOCKS, INTERVAL_S, first_window())
        loader.start()
        wait_until(lambda: len(ledger.blocks) >= 2 * PARTICIPANTS, 60, "ingest under way")

        for n in range(2, INSTANCES + 1):
            for stage in STAGES:
                instance = SitePipeline(scaled.settings, services=(stage,),
                                        log_dir=pipeline.log_dir / f"{stage}-{n}")
                extra[stage].append(instance)
                instance.start()
        groups = {stage: f"clinstream-{scaled.settings.site_id}-{stage}" for stage in STAGES}
        for stage in STAGES:
            wait_for_members(scaled.settings, groups[stage], INSTANCES, JOIN_S)

        for stage in STAGES:  # the first instance leaves cleanly, the second dies
            term = pipeline.kill(stage, signal.SIGTERM, timeout_s=60)
            assert term == 0, f"{stage} instance 1 ended with {term} after SIGTERM: {pipeline.log_text(stage)[-2000:]}"
            killed = extra[stage][0].kill(stage, signal.SIGKILL)
            assert killed == -signal.SIGKILL, f"{stage} instance 2 ended with {killed}"
        for stage in STAGES:
            wait_for_members(scaled.settings, groups[stage], 1, JOIN_S)
            assert extra[stage][1].alive(stage), extra[stage][1].log_text(stage)[-2000:]
        assert len(ledger.blocks) < PARTICIPANTS * BLOCKS, "ingest ended before the faults did: raise BLOCKS"
        loader.interval_s = 0.0

        survivors = SitePipeline(scaled.settings, services=("gateway", *STAGES))
        survivors.procs = {"gateway": pipeline.procs["gateway"]}
        survivors.procs.update({stage: extra[stage][1].procs[stage] for stage in STAGES})
        check_store(survivors, ledger, loader)
        differences = window_differences(scaled.settings, ledger)
        assert differences == [], f"{len(differences)} differences from a single-instance pass: {differences[:10]}"
        check_replication(scaled.settings)


def check_replication(settings: Settings) -> None:
    """The site's topics and its state changelogs have 3 replicas per partition and min ISR 2."""
    admin = admin_client(settings)
    topics = admin.list_topics(timeout=10).topics
    changelogs = [n for n in topics if n.startswith(changelog_prefix(settings)) and n.endswith("-changelog")]
    assert len(changelogs) >= 2, sorted(topics)  # consent and feature state
    for name in [RAW_TELEMETRY.name(settings.site_id), PSEUDO_TELEMETRY.name(settings.site_id), *changelogs]:
        assert {len(p.replicas) for p in topics[name].partitions.values()} == {3}, name
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        assert admin.describe_configs([resource])[resource].result(10)["min.insync.replicas"].value == "2", name


def leading_broker(admin: AdminClient, nodes: list[KafkaNode], topic: str) -> KafkaNode:
    """A node that leads a partition of `topic` and is not the active controller (every node is a voter)."""
    controller = {quorum_leader(n) for n in nodes} - {None}
    assert len(controller) == 1, f"the nodes disagree on the active controller: {controller}"
    leaders = {p.leader for p in admin.list_topics(topic, timeout=10).topics[topic].partitions.values()}
    return next(n for n in nodes if n.node_id in leaders - controller)


def fully_replicated(admin: AdminClient, prefix: str) -> bool:
    """Every partition of the topics named with `prefix` has all its replicas in sync."""
    topics = admin.list_topics(timeout=10).topics
    return all(len(p.isrs) == len(p.replicas) for name, meta in topics.items() if name.startswith(prefix)
               for p in meta.partitions.values())


def test_broker_sigkill_and_restart_under_ingest(cluster: Settings, tmp_path: Path) -> None:
    with sites(tmp_path, 1) as (site,), running(site) as pipeline:
        settings = site.settings
        admin = admin_client(settings)
        nodes = kafka_nodes(cluster, BROKERS)
        ledger = Ledger()
        loader = Loader(site, ledger, BLOCKS, BROKER_INTERVAL_S, first_window())
        loader.start()
        wait_until(lambda: len(ledger.blocks) >= 2 * PARTICIPANTS, 60, "ingest under way")
        victim = leading_broker(admin, nodes, RAW_TELEMETRY.name(settings.site_id))
        with stack_lock(cluster):  # nothing else starts or stops this cluster meanwhile
            pid = node_pid(victim)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: port_refuses(victim.host, victim.port), 30, f"node {victim.node_id} to die")
            before, statuses_before = len(ledger.blocks), dict(loader.statuses)
            wait_until(lambda: len(ledger.blocks) >= before + 10 * PARTICIPANTS, 120,
                       "202s from the gateway while 2 of 3 brokers run")
            assert port_refuses(victim.host, victim.port), "the killed broker came back by itself"
            during = {k: n - statuses_before.get(k, 0) for k, n in loader.statuses.items()
                      if n != statuses_before.get(k, 0)}
            assert set(during) == {"202"}, f"answers while a broker was down: {during}"
            start_kafka(cluster, brokers=BROKERS)
            assert node_is_up(victim, BROKERS)
            wait_until(lambda: fully_replicated(admin, settings.site_id + "."), 120,
                       f"node {victim.node_id} back in every ISR")
        assert len(ledger.blocks) < PARTICIPANTS * BLOCKS, "ingest ended before the broker came back"
        loader.interval_s = 0.0
        check_store(pipeline, ledger, loader)


def test_partition_growth_keeps_co_partitioning_or_refuses(cluster: Settings, tmp_path: Path) -> None:
    site_id = "sg" + uuid.uuid4().hex[:9]
    settings = Settings(site_id=site_id, data_dir=tmp_path, topic_partitions=4)
    admin = admin_client(settings)
    apply_topics(settings)  # with the stages' state changelogs
    changelog = f"{changelog_prefix(settings)}features-feature-state-changelog"
    try:
        wanted = changelog_configs(settings.min_insync_replicas)
        for stage, table in STATE_TABLES.items():  # created before any worker runs, compacted with a short head
            resource = ConfigResource(ConfigResource.Type.TOPIC, changelog_name(site_id, stage, table))
            configs = admin.describe_configs([resource])[resource].result(30)
            assert {k: configs[k].value for k in wanted} == wanted, resource.name
        changes = grow_partitions(settings, 6)
        assert {c.action for c in changes} == {"partitions-grown"}
        layout = co_partitioned_topics(settings, admin)
        assert changelog in layout and PSEUDO_TELEMETRY.name(site_id) in layout
        assert set(layout.values()) == {6}
        with pytest.raises(PartitionLayoutError, match="only through `clinstream topics grow`"):
            apply_topics(settings)  # still configured for 4: refused, not silently mixed
        grown = Settings(site_id=site_id, data_dir=tmp_path, topic_partitions=6)
        assert {c.action for c in apply_topics(grown)} == {"unchanged"}

        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
        producer.produce(RAW_TELEMETRY.name(site_id), key=b"P-1", value=b"x")
        assert producer.flush(30) == 0
        with pytest.raises(PartitionLayoutError, match="refused: 1 of"):
            grow_partitions(grown, 8)
        assert set(co_partitioned_topics(settings, admin).values()) == {6}  # nothing changed
    finally:
        names = [n for n in admin.list_topics(timeout=10).topics
                 if n.startswith((site_id + ".", changelog_prefix(settings)))]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(30)
