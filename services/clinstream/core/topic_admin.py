"""Creates or updates a site's topics idempotently through the Kafka Admin API; grows partitions only safely."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from clinstream.core.config import Settings
from clinstream.core.constants import GROWTH_SETTLE_S
from clinstream.core.topics import (
    ALL_TOPICS,
    STATE_TABLES,
    TopicSpec,
    changelog_configs,
    changelog_name,
    partitions_of,
    topic_configs,
)


@dataclass
class TopicChange:
    """What `apply_topics` did to one topic."""

    name: str
    action: str  # created | configs-updated | partitions-grown | unchanged


# Errors of a watermark read while a partition's leader moves (a broker restarted): the next try finds the new one.
_LEADER_MOVED = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                           KafkaError.UNKNOWN_TOPIC_OR_PART})


class PartitionLayoutError(RuntimeError):
    """A partition count that would break co-partitioning (the message says what to do)."""


def changelog_prefix(settings: Settings) -> str:
    """Prefix of the site's worker-made topics (state changelogs); they are co-partitioned with the inputs."""
    return f"clinstream-{settings.site_id}-"


def admin_client(settings: Settings) -> AdminClient:
    """An Admin API client for the site's broker."""
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "socket.connection.setup.timeout.ms": 3000})


def _new_changelog(settings: Settings, name: str) -> NewTopic:
    """A stage's state changelog: co-partitioned with the inputs, compacted with a short head."""
    return NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.replication_factor,
                    config=changelog_configs(settings.min_insync_replicas))


def ensure_changelog(settings: Settings, name: str, timeout_s: float = 30.0) -> None:
    """Create a stream host's state changelog if it is missing (`topics apply` normally made it already)."""
    admin = admin_client(settings)
    if name in admin.list_topics(timeout=timeout_s).topics:
        return
    for fut in admin.create_topics([_new_changelog(settings, name)], operation_timeout=timeout_s).values():
        try:
            fut.result(timeout_s)
        except Exception as exc:  # a concurrent creator (another instance) is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    _wait_until_visible(admin, [name], timeout_s)


def apply_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS,
                 timeout_s: float = 30.0) -> list[TopicChange]:
    """Create missing topics, grow partitions, and bring configs to the catalogue's values."""
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    changes: list[TopicChange] = []
    to_create: list[NewTopic] = []
    for spec in specs:
        name = spec.name(settings.site_id)
        want_parts = partitions_of(spec, settings)
        if name not in existing:
            to_create.append(NewTopic(name, num_partitions=want_parts, replication_factor=settings.replication_factor,
                                      config=topic_configs(spec, settings.min_insync_replicas)))
            changes.append(TopicChange(name, "created"))
            continue
        have_parts = len(existing[name].partitions)
        if have_parts != want_parts:
            raise PartitionLayoutError(
                f"{name} has {have_parts} partitions but CLINSTREAM_TOPIC_PARTITIONS is {want_parts}: a site's "
                "partition count changes only through `clinstream topics grow`, which keeps the pseudonymised "
                "topics and the state changelogs co-partitioned (or refuses); set the setting back to "
                f"{have_parts}")
        updated = _align_configs(admin, name, topic_configs(spec, settings.min_insync_replicas), timeout_s)
        changes.append(TopicChange(name, "configs-updated" if updated else "unchanged"))
    changelog_cfg = changelog_configs(settings.min_insync_replicas)
    worker_made = {"min.insync.replicas": str(settings.min_insync_replicas)}
    for name in sorted(n for n in existing if n.startswith(changelog_prefix(settings))):
        wanted = changelog_cfg if name.endswith("-changelog") else worker_made
        if _align_configs(admin, name, wanted, timeout_s):
            changes.append(TopicChange(name, "configs-updated"))
    if specs is ALL_TOPICS:  # the whole catalogue: the stages' state changelogs too
        for stage, table in STATE_TABLES.items():
            name = changelog_name(settings.site_id, stage, table)
            if name not in existing:
                to_create.append(_new_changelog(settings, name))
                changes.append(TopicChange(name, "created"))
    if to_create:
        for name, fut in admin.create_topics(to_create, operation_timeout=timeout_s).items():
            try:
                fut.result(timeout_s)
            except Exception as exc:  # a concurrent creator is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                for ch in changes:
                    if ch.name == name:
                        ch.action = "unchanged"
        _wait_until_visible(admin, [t.topic for t in to_create], timeout_s)
    return changes


def _align_configs(admin: AdminClient, name: str, wanted: dict[str, str], timeout_s: float) -> bool:
    """Set the topic configs that differ from `wanted`; True if any did."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    current = admin.describe_configs([resource])[resource].result(timeout_s)
    diffs = {k: v for k, v in wanted.items() if k not in current or current[k].value != v}
    if not diffs:
        return False
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diffs.items()]
    admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, name,
                                                    incremental_configs=entries)])[resource].result(timeout_s)
    return True


def co_partitioned_topics(settings: Settings, admin: AdminClient, timeout_s: float = 30.0) -> dict[str, int]:
    """Every existing topic whose partitions are keyed alike, with its partition count: the catalogue topics on
    the site's default count and the state changelogs (their keys carry the input partition)."""
    existing = admin.list_topics(timeout=timeout_s).topics
    names = [spec.name(settings.site_id) for spec in ALL_TOPICS if spec.partitions is None]
    names += [n for n in existing if n.startswith(changelog_prefix(settings))]
    return {n: len(existing[n].partitions) for n in sorted(set(names)) if n in existing}


def records_held(settings: Settings, names: list[str], timeout_s: float = 30.0) -> dict[str, int]:
    """High watermarks summed over partitions: how many records each topic ever received (0: never written)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "clinstream-topics-grow",
                         "enable.auto.commit": False})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                meta = consumer.list_topics(timeout=timeout_s).topics
                return {n: sum(consumer.get_watermark_offsets(TopicPartition(n, p), timeout=timeout_s)[1]
                               for p in meta[n].partitions) for n in names}
            except KafkaException as exc:  # e.g. a leader that moved: metadata is refreshed on the next try
                moved = exc.args[0].code() in _LEADER_MOVED or exc.args[0].retriable()
                if not moved or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def grow_partitions(settings: Settings, partitions: int, timeout_s: float = 30.0) -> list[TopicChange]:
    """Grow every co-partitioned topic of the site to `partitions`, or refuse (PartitionLayoutError, nothing changed).

    Records are placed by hash(key) mod partitions, and the workers' state (changelogs) is keyed by the
    input partition; more partitions would send a participant's next records to another partition than its state
    and its earlier records. So growth is refused once any of these topics was ever written to; it is safe only
    before ingest starts, with every stage stopped (their state is empty).
    """
    admin = admin_client(settings)
    layout = co_partitioned_topics(settings, admin, timeout_s)
    if not layout:
        raise PartitionLayoutError(f"site {settings.site_id} has no topics yet: create them with "
                                   f"CLINSTREAM_TOPIC_PARTITIONS={partitions} `clinstream topics apply`")
    counts = set(layout.values())
    if len(counts) != 1:
        raise PartitionLayoutError(f"site {settings.site_id}'s co-partitioned topics disagree already: {layout}")
    (have,) = counts
    if partitions < have:
        raise PartitionLayoutError(f"Kafka cannot shrink partitions ({have} -> {partitions})")
    if partitions == have:
        return [TopicChange(n, "unchanged") for n in layout]
    written = {n: k for n, k in records_held(settings, list(layout), timeout_s).items() if k}
    if written:
        raise PartitionLayoutError(
            f"refused: {len(written)} of site {settings.site_id}'s co-partitioned topics hold records (e.g. "
            f"{next(iter(written))}). Growing them would move participants to other partitions than their "
            "state and earlier records. Choose the count before ingest starts: at least the most instances any "
            "stage will run (a partition is the unit of parallelism)")
    grow = [NewPartitions(n, partitions) for n in layout]
    for fut in admin.create_partitions(grow, operation_timeout=timeout_s).values():
        fut.result(timeout_s)
    _wait_until_grown(settings, admin, partitions, timeout_s)
    return [TopicChange(n, "partitions-grown") for n in layout]


def _wait_until_grown(settings: Settings, admin: AdminClient, partitions: int, timeout_s: float) -> None:
    """Return once every metadata read for GROWTH_SETTLE_S shows `partitions` for every co-partitioned topic.

    Each broker learns the new partitions from the metadata log on its own, and a metadata request goes to any
    broker: on a cluster, a first read with the new count was followed by one with the old count from a broker
    that lagged (the scale-out test's growth check failed that way once). So the count must hold for a while.
    """
    deadline = time.monotonic() + timeout_s
    since: float | None = None
    while True:
        now = time.monotonic()
        if set(co_partitioned_topics(settings, admin, timeout_s).values()) == {partitions}:
            since = now if since is None else since
            if now - since >= GROWTH_SETTLE_S:
                return
        else:
            since = None
        if now > deadline:
            raise PartitionLayoutError(f"the brokers did not show {partitions} partitions within {timeout_s:.0f} s")
        time.sleep(0.1)  # a metadata read per tenth of a second


def group_state(settings: Settings, group: str, timeout_s: float = 10.0) -> tuple[int, ConsumerGroupState]:
    """Members and state of a consumer group; (0, UNKNOWN) while its coordinator does not answer in time."""
    admin = admin_client(settings)  # referenced until the answer is in: a collected client drops its requests
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout_s)
    except (KafkaException, concurrent.futures.TimeoutError):  # a busy or moving coordinator: ask again later
        return 0, ConsumerGroupState.UNKNOWN
    return len(description.members), description.state


def _wait_until_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Return once the broker serves metadata and configs of new topics, so callers can use them at once."""
    if not names:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
            for fut in admin.describe_configs(resources).values():
                fut.result(timeout_s)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def delete_site_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Delete every topic of a site (tests and demos only)."""
    admin = admin_client(settings)
    prefix = settings.site_id + "."
    names = [t for t in admin.list_topics(timeout=timeout_s).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=timeout_s).values():
            fut.result(timeout_s)
